"""Make an N-image benchmark set by replicating a Fruits-360 sample with light random changes.

Every copy of a source image is flipped (half the time), cropped by up to 8 % per side and resized back to the
source's size, and colour-jittered (brightness, contrast, saturation +-10 %), then saved as JPEG. Every file
is therefore different (no content cache, no feature-store reuse can shortcut the work) while still looking
like Fruits-360: same size, same labels, same Training/Test folders.

    .venv/bin/python benchmarks/make_dataset.py --source "$FRUITS_DATA" --count 5000 --output out/bench-data/n5000

A folder that is already complete (its ``.complete`` marker names the same source, count and seed) is kept.
The output belongs in a cache folder outside version control (``out/`` is ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SOURCE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MARKER = ".complete"  # a dot name: Spark's file listing and the job's catalog skip it


def source_images(root: Path) -> list[Path]:
    """Every image under ``root``, sorted, so that the same seed gives the same set."""
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_EXTENSIONS)
    if not found:
        raise SystemExit(f"no images under {root}")
    return found


def vary(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One light random change of ``image``: flip, crop back to size, colour jitter."""
    image = image.convert("RGB")
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    width, height = image.size
    left, top, right, bottom = (rng.uniform(0, 0.08, 4) * [width, height, width, height]).astype(int)
    image = image.crop((left, top, width - right, height - bottom)).resize((width, height), Image.BILINEAR)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.9, 1.1)))
    return image


def make(source: Path, count: int, output: Path, seed: int = 0) -> Path:
    """Write ``count`` varied copies of the images under ``source`` into ``output`` (kept if complete)."""
    marker = output / MARKER
    wanted = {"source": str(source.resolve()), "count": count, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return output
    if output.exists():
        shutil.rmtree(output)
    images = source_images(source)
    rng = np.random.default_rng(seed)
    for number in range(count):
        original = images[number % len(images)]
        relative = original.relative_to(source)
        target = output / relative.parent / f"{original.stem}_v{number:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(original) as image:
            buffer = io.BytesIO()
            vary(image, rng).save(buffer, format="JPEG", quality=int(rng.integers(88, 96)))
        target.write_bytes(buffer.getvalue())
    marker.write_text(json.dumps(wanted))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=os.environ.get("FRUITS_DATA"), help="sample folder (FRUITS_DATA)")
    parser.add_argument("--count", type=int, required=True, help="number of images to write")
    parser.add_argument("--output", required=True, help="folder to write (replaced unless complete)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.source:
        parser.error("give --source or set FRUITS_DATA")
    folder = make(Path(args.source), args.count, Path(args.output), args.seed)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
