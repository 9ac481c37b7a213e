"""Random weights with real-image BatchNorm statistics: a stand-in for ImageNet weights in int8 timing runs.

The benchmark times engines with random weights (`--weights none`): a float model's speed does not depend on
its weight values. An int8 model's speed does not either, but with random weights every int8 feature is 0
(the activations of a random network lie far below int8's resolution), and the job refuses features without
variance. Only MobileNet v1 0.25 has ImageNet weights on this machine, and on it the model is a small part of
a worker's CPU, so the int8 engine's gain cannot show there.

This writes seeded random weights for any Keras application whose every BatchNorm layer's moving mean and
variance are set, in network order, to the statistics of its input over real images (data-dependent
initialisation). Activations then have unit scale through the whole network, as trained weights give them,
and int8 calibration finds real ranges: the features vary, though they mean nothing. Use it for timing only.

    .venv/bin/python -m benchmarks.bn_weights --model mobilenet_v2 --alpha 1.0 --data "$FRUITS_DATA" \\
        --out out/bench/weights/mobilenet_v2-1.0-bn.weights.h5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import image_files  # also puts the job's package on the path


def sample_images(folder: Path, count: int, size: int) -> np.ndarray:
    """``count`` images under ``folder`` (every k-th of the sorted list), RGB uint8, resized to size x size."""
    from PIL import Image

    files = image_files(folder)
    if not files:
        raise SystemExit(f"no images under {folder}")
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in chosen])


def calibrate_batchnorm(backbone, inputs: np.ndarray) -> int:
    """Set each BatchNorm's moving statistics to those of its input on ``inputs``, in order; return their count.

    Each layer's input is computed with the layers before it already set, so every layer sees the
    distribution it will see at inference.
    """
    import keras

    layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        probe = keras.Model(backbone.inputs, layer.input)
        values = probe.predict(inputs, batch_size=32, verbose=0)
        axes = tuple(range(values.ndim - 1))
        mean, var = values.mean(axis=axes), values.var(axis=axes)
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(np.maximum(var, 1e-6).astype("float32"))
    return len(layers)


def main(argv: list[str] | None = None) -> int:
    """Write the weights file; print the features' spread on the images as a check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data", default=os.environ.get("FRUITS_DATA"), help="images to take statistics on")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--out", required=True, help="a .weights.h5 path")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("give --data or set FRUITS_DATA")
    if not args.out.endswith(".weights.h5"):
        parser.error("--out must end in .weights.h5 (the job loads it with load_weights)")

    from fruits import models

    spec = models.get_spec(args.model)
    weights = models.Weights(source="none", kind="random")
    backbone = models.build_backbone(spec, args.image_size, args.alpha, weights)
    images = sample_images(Path(args.data), args.images, args.image_size)
    inputs = np.asarray(models.preprocess_function(spec)(images.astype("float32")))
    count = calibrate_batchnorm(backbone, inputs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(args.out)
    features = backbone.predict(inputs, batch_size=32, verbose=0)
    print(
        f"{args.out}: {count} BatchNorm layers set on {len(images)} images; "
        f"features std {features.std():.3f}, zero fraction {(features == 0).mean():.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
