"""Parity of our h5 loader + torch model with the original Keras DenseDepth (built with tf_keras).

Needs `tensorflow-cpu` and `tf-keras` (the CI installs them). The released architecture is
rebuilt here with random weights, saved as a full-model `.h5` (~173 MB) once per session, read
back by our loader without TensorFlow, and both networks are run on the same random inputs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.keras_h5 import WeightsFileError
from smalldepthmask.depth.weights import load_state_dict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
try:
    import tensorflow as tf
    import tf_keras as keras
except ImportError as e:  # pragma: no cover - CI installs both
    pytest.skip(f"tf_keras parity tests need `pip install tensorflow-cpu tf-keras` ({e})", allow_module_level=True)


pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

SKIP_LAYERS = {"up1": "pool3_pool", "up2": "pool2_pool", "up3": "pool1", "up4": "conv1/relu"}


class BilinearUpSampling2D(keras.layers.Layer):
    """The released files' upsampling layer: bilinear, align_corners=True, factor `size`."""

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size)

    def call(self, x):
        shape = tf.shape(x)
        target = [shape[1] * self.size[0], shape[2] * self.size[1]]
        return tf.compat.v1.image.resize_bilinear(x, target, align_corners=True)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def build_keras_densedepth(full_width: bool = True, leaky_after_both: bool = False):
    """DenseDepth as released (defaults) or as in the final model.py (half width, two LeakyReLUs)."""
    base = keras.applications.DenseNet169(input_shape=(None, None, 3), include_top=False, weights=None)
    filters = int(base.layers[-1].output.shape[-1]) // (1 if full_width else 2)
    x = keras.layers.Conv2D(filters, 1, padding="same", name="conv2")(base.output)
    for k, skip in enumerate(SKIP_LAYERS.values(), start=1):
        width = filters // 2**k
        x = BilinearUpSampling2D((2, 2), name=f"up{k}_upsampling2d")(x)
        x = keras.layers.Concatenate(name=f"up{k}_concat")([x, base.get_layer(skip).output])
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"up{k}_convA")(x)
        if leaky_after_both:
            x = keras.layers.LeakyReLU(alpha=0.2)(x)
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"up{k}_convB")(x)
        x = keras.layers.LeakyReLU(alpha=0.2)(x)
    out = keras.layers.Conv2D(1, 3, padding="same", name="conv3")(x)
    return keras.Model(inputs=base.input, outputs=out)


def randomize_batchnorm(model, rng: np.random.Generator) -> None:
    """Non-trivial BN statistics so that the test exercises gamma/beta/mean/variance mapping."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                    rng.normal(0, 0.1, n).astype(np.float32),
                    rng.normal(0, 0.1, n).astype(np.float32),
                    rng.uniform(0.5, 1.5, n).astype(np.float32),
                ]
            )


@pytest.fixture(scope="session")
def keras_h5(tmp_path_factory):
    """(released-architecture Keras model, path of its saved full-model .h5)."""
    keras.utils.set_random_seed(0)
    model = build_keras_densedepth()
    randomize_batchnorm(model, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("keras") / "nyu.h5"
    model.save(path, include_optimizer=False)
    return model, path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    old = os.environ.get("SMALLDEPTHMASK_CACHE")
    os.environ["SMALLDEPTHMASK_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SMALLDEPTHMASK_CACHE", None)
    else:
        os.environ["SMALLDEPTHMASK_CACHE"] = old


def test_parameter_count_matches_keras(keras_h5):
    model, _ = keras_h5
    assert model.count_params() == 42_816_089


@pytest.mark.parametrize("height,width", [(64, 64), (96, 128)])
def test_parity_with_keras_fp32(keras_h5, height, width):
    keras_model, path = keras_h5
    state, _ = load_state_dict(path)
    net = DenseDepth().eval()
    net.load_state_dict(state)
    x = np.random.default_rng(1).uniform(0, 1, (2, height, width, 3)).astype(np.float32)
    expected = keras_model(x, training=False).numpy().transpose(0, 3, 1, 2)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert got.shape == (2, 1, height // 2, width // 2) == expected.shape
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert rel <= 1e-4, f"max error relative to output scale {rel:.2e}"


def test_converted_cache_reused(keras_h5):
    _, path = keras_h5
    state1, info1 = load_state_dict(path)
    state2, info2 = load_state_dict(path)
    assert info1.sha256 == info2.sha256 and info2.from_cache
    assert all(torch.equal(state1[k], state2[k]) for k in state1)


def test_wrong_architecture_refused(tmp_path):
    keras.utils.set_random_seed(0)
    path = tmp_path / "final_model_py.h5"
    build_keras_densedepth(full_width=False, leaky_after_both=True).save(path, include_optimizer=False)
    with pytest.raises(WeightsFileError) as e:
        load_state_dict(path)
    text = " | ".join([e.value.message, *e.value.details])
    assert "not the released DenseDepth architecture" in text
    assert "conv2 has 832 filters" in text and "8 LeakyReLU layers" in text


def test_truncated_file_refused(keras_h5, tmp_path):
    _, path = keras_h5
    bad = tmp_path / "nyu_truncated.h5"
    with open(path, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(path.stat().st_size // 2))
    with pytest.raises(WeightsFileError, match="truncated"):
        load_state_dict(bad)


def test_corrupted_header_refused(keras_h5, tmp_path):
    _, path = keras_h5
    bad = tmp_path / "nyu_corrupted.h5"
    shutil.copyfile(path, bad)
    with open(bad, "r+b") as f:
        f.write(b"\0" * 64)
    with pytest.raises(WeightsFileError, match="not a readable HDF5 file"):
        load_state_dict(bad)


def test_weights_only_file_refused(keras_h5, tmp_path):
    model, _ = keras_h5
    path = tmp_path / "weights_only.h5"
    model.save_weights(path)
    with pytest.raises(WeightsFileError, match="no model_config"):
        load_state_dict(Path(path))
