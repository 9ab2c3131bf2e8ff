"""docs/images/layers.png: qvedit's folders as floors, each importing only from the floors below it.

A folder's floor is one above the highest folder it imports from (imports inside functions counted). An arrow
is a direct import between folders; arrows a longer path already implies are left out, so the picture shows
the shape, not every import. Run from the repository root after moving code between folders:

    python docs/images/make_layers.py
"""

import ast
import itertools
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qvedit"


def folder_of(path: Path) -> str:
    """The room a file is in: its first folder under qvedit/, or the file itself at the root (a command)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imports(path: Path) -> set[str]:
    """The qvedit folders/commands a file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module else []
        found |= {n.split(".")[1] for n in names if n.startswith("qvedit.")}
    return found


def graph() -> tuple[dict[str, set[str]], dict[str, tuple[int, int]]]:
    """({room: rooms it imports}, {room: (modules, lines)})."""
    edges, size = defaultdict(set), defaultdict(lambda: [0, 0])
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        room = folder_of(path)
        edges[room] |= {r for r in imports(path) if (PACKAGE / r).exists() or (PACKAGE / f"{r}.py").exists()} - {room}
        size[room][0] += 1
        size[room][1] += len(path.read_text().splitlines())
    return dict(edges), {k: tuple(v) for k, v in size.items()}


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    floor: dict[str, int] = {}

    def of(room: str, path: tuple = ()) -> int:
        if room in path:
            sys.exit(f"import circle: {' -> '.join(path + (room,))}")
        if room not in floor:
            floor[room] = 1 + max((of(r, path + (room,)) for r in edges.get(room, ())), default=0)
        return floor[room]

    for room in edges:
        of(room)
    return floor


def reduced(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each room's imports less those reachable through another import (the transitive reduction)."""
    def reach(room, seen=None):
        seen = set() if seen is None else seen
        for r in edges.get(room, ()):
            if r not in seen:
                seen.add(r)
                reach(r, seen)
        return seen
    return {room: {r for r in targets if not any(r in reach(o) for o in targets - {r})} for room, targets in edges.items()}


def x_of(rows: dict[int, list[str]]) -> dict[str, float]:
    return {room: (k - (len(rooms) - 1) / 2) * 2.3 for rooms in rows.values() for k, room in enumerate(rooms)}


def untangled(rows: dict[int, list[str]], arrows: dict[str, set[str]], floor: dict[str, int]) -> dict[int, list[str]]:
    """The order of each floor's rooms (every one tried: a floor holds a few) whose arrows pass through the fewest
    boxes of the floors between their ends, then run the shortest way sideways."""
    def cost(order: dict[int, list[str]]) -> tuple[int, float]:
        x, hits, sideways = x_of(order), 0, 0.0
        for room, targets in arrows.items():
            for target in targets:
                sideways += abs(x[room] - x[target])
                for f in range(floor[target] + 1, floor[room]):
                    at = x[target] + (x[room] - x[target]) * (f - floor[target]) / (floor[room] - floor[target])
                    hits += sum(abs(at - x[other]) < 0.75 for other in order[f])
        return hits, sideways
    floors_, choices = list(rows), [list(itertools.permutations(rows[f])) for f in rows]
    return min(({f: list(p) for f, p in zip(floors_, pick)} for pick in itertools.product(*choices)), key=cost)


def main(out: Path = Path(__file__).with_name("layers.png")) -> None:
    edges, size = graph()
    floor = floors(edges)
    rows = defaultdict(list)
    for room in sorted(floor):
        rows[floor[room]].append(room)
    arrows = reduced(edges)
    rows = untangled(rows, arrows, floor)
    top = max(rows)
    width = max(len(r) for r in rows.values())
    figure, axis = plt.subplots(figsize=(2.3 * width + 1, 0.95 * top + 0.6))
    x = x_of(rows)
    where = {room: (x[room], f) for f, rooms in rows.items() for room in rooms}
    for f, rooms in rows.items():
        for room in rooms:
            folder = (PACKAGE / room).is_dir()
            label = f"{room}/" if folder else f"{room}.py"
            modules, lines = size[room]
            axis.text(x[room], f, f"{label}\n{modules} files, {lines:,} lines" if folder else f"{label}\n(command)",
                      ha="center", va="center", fontsize=8.5,
                      bbox=dict(boxstyle="round,pad=0.35", fc="#dbe9f6" if folder else "#eeeeee", ec="#4a6fa5"))
    for room, targets in arrows.items():
        for target in targets:
            (x0, y0), (x1, y1) = where[room], where[target]
            axis.annotate("", (x1, y1 + 0.22), (x0, y0 - 0.22),
                          arrowprops=dict(arrowstyle="->", color="#777777", lw=0.8, shrinkA=2, shrinkB=2))
    for f in rows:
        axis.text(-1.15 * width - 0.4, f, f"floor {f}", ha="left", va="center", fontsize=8, color="#555555")
    axis.set_xlim(-1.15 * width - 0.5, 1.15 * width + 0.5)
    axis.set_ylim(0.4, top + 0.6)
    axis.axis("off")
    axis.set_title("qvedit's folders: each imports only from floors below (arrows: direct imports, implied ones left out)",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}: {len(floor)} rooms on {top} floors")


if __name__ == "__main__":
    main()
