"""The search every diffusers check makes: do these fragments still appear, in order, in a function's source?"""

from __future__ import annotations

from typing import Optional


def missing_fragment(source: str, where: str, fragments: tuple[str, ...]) -> Optional[str]:
    """None if every fragment appears in ``source`` in this order, else the one line that names the first missing
    (``where``: what the source is, for the message)."""
    position = 0
    for fragment in fragments:
        found = source.find(fragment, position)
        if found < 0:
            return f"{where} no longer contains {fragment!r} (after the fragments before it)"
        position = found + len(fragment)
    return None
