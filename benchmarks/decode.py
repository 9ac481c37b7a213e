"""Section 2: decoding alone on one core (``fruits.decoding.decode_image``), at the job's decode size and, for
reference, decoded and resized in Pillow straight to the model's input size."""

from __future__ import annotations

import argparse

from benchmarks.common import loadavg, timed_rate


def measure(args: argparse.Namespace, images: list[bytes]) -> dict[str, object]:
    """Images/s per core of decoding ``images`` (at most 1,000 of them)."""
    from fruits.decoding import decode_image

    sample = images[:1000]
    before = loadavg()
    return {
        "images": len(sample),
        "decode_size": args.decode_size,
        "image_size": args.image_size,
        "per_core": timed_rate(
            lambda: [decode_image(d, args.decode_size) for d in sample], len(sample), args.repeats
        ),
        "resize_per_core": timed_rate(
            lambda: [decode_image(d, args.image_size) for d in sample], len(sample), args.repeats
        ),
        "load_before": before,
        "load_after": loadavg(),
    }
