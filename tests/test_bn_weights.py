"""The benchmark's stand-in weights: BatchNorm statistics set from the data give unit-scale activations."""

from __future__ import annotations

import numpy as np

from benchmarks import bn_weights


def test_calibrated_batchnorm_normalises_each_layer_on_the_data() -> None:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(inputs, x)
    data = np.random.default_rng(0).normal(5.0, 3.0, (64, 8, 8, 3)).astype("float32")

    assert bn_weights.calibrate_batchnorm(model, data) == 2

    for name in ("bn1", "bn2"):
        out = keras.Model(model.inputs, model.get_layer(name).output).predict(data, verbose=0)
        per_channel = out.reshape(-1, out.shape[-1])
        # bn2 is set after bn1, so it sees bn1's normalised output: both are standardised on this data
        np.testing.assert_allclose(per_channel.mean(axis=0), 0.0, atol=1e-3)
        np.testing.assert_allclose(per_channel.std(axis=0), 1.0, atol=1e-2)
