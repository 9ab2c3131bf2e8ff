"""The one exception type users see as a one-line message instead of a traceback, and a library's
error put in one line."""

import re


class QveditError(Exception):
    """A problem the user can fix: the message names it and says how.

    ``python -m qvedit`` prints it as ``qvedit: error: <message>`` and exits with code 2.
    """


def short_reason(err: Exception, limit: int = 200) -> str:
    """The library's message in one line, without sentences that point at a traceback nobody is shown."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"[^.()]*\b(stacktrace|stack trace|traceback)\b[^.()]*\.?", "", text, flags=re.I).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
