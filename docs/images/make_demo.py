"""docs/images/demo.png from a finished ``python -m qvedit experiment=demo`` run: per frame, the source clip (the
truth the toy model never saw), the edge map, the frame made without guidance and the frame made with it.

    python docs/images/make_demo.py runs/2026-12-05/04-44-52
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from qvedit.core.files import cache_dir

SIDE, GAP, LABELS = 96, 4, 118  # pixels: a frame (64² shown at 1.5x), the gap, the label column


def frames(folder: Path) -> list:
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]


def main(run: Path, out: Path = Path(__file__).with_name("demo.png")) -> None:
    clip = cache_dir() / "shapes-1000000-9"  # experiment=demo's clip: io=shapes, io.length=9
    rows = [("source (truth)", frames(clip / "source")), ("edge map", [None, *frames(clip / "edges")]),
            ("ttlg=off", frames(run / "unguided" / "frames")), ("ttlg=edge_gram", frames(run / "frames"))]
    count = len(rows[0][1])
    picture = Image.new("RGB", (LABELS + count * (SIDE + GAP), 22 + len(rows) * (SIDE + GAP)), (240, 240, 240))
    draw = ImageDraw.Draw(picture)
    for k in range(count):
        draw.text((LABELS + k * (SIDE + GAP) + SIDE // 2 - 20, 5), f"frame {k}", fill=(0, 0, 0))
    for r, (name, images) in enumerate(rows):
        y = 22 + r * (SIDE + GAP)
        draw.text((6, y + SIDE // 2 - 6), name, fill=(0, 0, 0))
        for k, image in enumerate(images):
            x = LABELS + k * (SIDE + GAP)
            if image is None:  # frame 0 has no edge map: it is the input
                draw.rectangle([x, y, x + SIDE - 1, y + SIDE - 1], fill=(170, 170, 170))
                draw.text((x + 8, y + SIDE // 2 - 6), "(input)", fill=(0, 0, 0))
            else:
                picture.paste(image.resize((SIDE, SIDE), Image.Resampling.NEAREST), (x, y))
    picture.save(out, optimize=True)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "unguided" / "frames").is_dir():
        sys.exit("qvedit: error: give the folder of a finished python -m qvedit experiment=demo run "
                 "(it holds frames/ and unguided/frames/): python docs/images/make_demo.py RUN_FOLDER")
    main(Path(sys.argv[1]))
