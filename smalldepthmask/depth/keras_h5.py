"""Read a Keras full-model `.h5` of DenseDepth with h5py alone (no TensorFlow).

The file's `model_config` is checked against the released architecture before any weight is
read, so a wrong or truncated file is refused with a reason. Weights are found by walking
`model_weights` with the layer and weight names stored in the file's own attributes, mapped to
the torch module names of `DenseDepth`, and kernels are transposed HWIO -> OIHW.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .densedepth import ENCODER_CHANNELS, KERAS_BN_EPS, LEAKY_SLOPE

DENSENET169_BLOCKS = (6, 12, 32, 32)
# Keras layer whose output each up-block concatenates (released files).
EXPECTED_SKIPS = {1: "pool3_pool", 2: "pool2_pool", 3: "pool1", 4: "conv1/relu"}
KERAS_WEIGHT_TO_TORCH = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
DENSE_LAYER_PARTS = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}


class WeightsFileError(UsageError):
    """A weights file that cannot be used: `path` plus one or more reasons."""

    def __init__(self, path: str | Path, reason: str, details: list[str] | None = None):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}", details)


# ---------------------------------------------------------------------------- names


def torch_module_name(layer: str) -> str | None:
    """Torch module path of a Keras DenseDepth layer that has weights; None if it has no match."""
    fixed = {"conv1/conv": "encoder.conv0", "conv1/bn": "encoder.norm0", "bn": "encoder.norm5"}
    if layer in fixed:
        return fixed[layer]
    if layer in ("conv2", "conv3"):
        return layer
    m = re.fullmatch(r"conv(\d)_block(\d+)_(0_bn|1_conv|1_bn|2_conv)", layer)
    if m:
        block = int(m.group(1)) - 1
        return f"encoder.denseblock{block}.denselayer{int(m.group(2))}.{DENSE_LAYER_PARTS[m.group(3)]}"
    m = re.fullmatch(r"pool(\d)_(bn|conv)", layer)
    if m:
        return f"encoder.transition{int(m.group(1)) - 1}.{'norm' if m.group(2) == 'bn' else 'conv'}"
    m = re.fullmatch(r"up(\d)_conv([AB])", layer)
    if m:
        return f"up{m.group(1)}.conv{m.group(2)}"
    return None


def short_weight_name(stored: str) -> str:
    """'conv1/conv/kernel:0' -> 'kernel'."""
    return stored.rsplit("/", 1)[-1].split(":", 1)[0]


def _decode(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- config checks


def _inbound_names(layer: dict) -> list[str]:
    """Names of the layers feeding `layer`, for the Keras 2 list format and the Keras 3 dict format."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "keras_history" in node:
                names.append(node["keras_history"][0])
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
                names.append(node[0])
                return
            for item in node:
                walk(item)

    walk(layer.get("inbound_nodes", []))
    return names


def architecture_problems(model_config: dict) -> list[str]:
    """Every way `model_config` differs from the released DenseDepth; empty when it matches."""
    layers = model_config.get("config", {}).get("layers")
    if not isinstance(layers, list):
        return ["model_config has no layer list"]
    by_name = {layer.get("config", {}).get("name", layer.get("name")): layer for layer in layers}
    problems: list[str] = []

    blocks = Counter(int(m.group(1)) for n in by_name if (m := re.fullmatch(r"conv(\d)_block\d+_concat", n)))
    found = tuple(blocks.get(i, 0) for i in range(2, 6))
    if found != DENSENET169_BLOCKS:
        problems.append(f"encoder dense blocks have {found} layers; DenseNet-169 has {DENSENET169_BLOCKS}")
    problems += _decoder_problems(by_name)
    problems += _batchnorm_problems(layers)
    problems += _activation_problems(layers)
    problems += _wiring_problems(by_name)
    return problems


def _decoder_problems(by_name: dict[str, dict]) -> list[str]:
    problems: list[str] = []
    widths = {"conv2": ENCODER_CHANNELS}
    for k in range(1, 5):
        widths[f"up{k}_convA"] = widths[f"up{k}_convB"] = ENCODER_CHANNELS >> k
    widths["conv3"] = 1
    for name, expected in widths.items():
        layer = by_name.get(name)
        if layer is None:
            problems.append(f"layer {name} is missing")
            continue
        filters = layer.get("config", {}).get("filters")
        if filters != expected:
            hint = " (a half-width decoder, as in the final model.py)" if name == "conv2" else ""
            problems.append(f"{name} has {filters} filters{hint}; the released files have {expected}")
    for k in range(1, 5):
        up = by_name.get(f"up{k}_upsampling2d")
        cls = up.get("class_name") if up else None
        if cls != "BilinearUpSampling2D":
            problems.append(
                f"up{k}_upsampling2d is {cls or 'missing'}; the released files use BilinearUpSampling2D "
                "(bilinear, align_corners=True)"
            )
    return problems


def _batchnorm_problems(layers: list[dict]) -> list[str]:
    bns = [layer.get("config", {}) for layer in layers if layer.get("class_name") == "BatchNormalization"]
    eps = sorted({float(cfg.get("epsilon", -1)) for cfg in bns})
    if any(abs(e - KERAS_BN_EPS) > 1e-9 for e in eps):
        return [f"BatchNormalization epsilons {eps}; the released files use {KERAS_BN_EPS}"]
    return []


def _activation_problems(layers: list[dict]) -> list[str]:
    leaky = [layer for layer in layers if layer.get("class_name") == "LeakyReLU"]
    problems: list[str] = []
    if len(leaky) != 4:
        problems.append(f"{len(leaky)} LeakyReLU layers; the released files have 4 (one after each up-block's convB)")
    for layer in leaky:
        cfg = layer.get("config", {})
        slope = cfg.get("alpha", cfg.get("negative_slope"))
        if slope is None or abs(float(slope) - LEAKY_SLOPE) > 1e-6:
            problems.append(f"LeakyReLU {cfg.get('name')} has slope {slope}; expected {LEAKY_SLOPE}")
    return problems


def _wiring_problems(by_name: dict[str, dict]) -> list[str]:
    """Skips, LeakyReLU placement and bottleneck, from the inbound links of the layer graph."""
    problems: list[str] = []
    feeds = {name: _inbound_names(layer) for name, layer in by_name.items()}
    conv2_in = feeds.get("conv2", [])
    if conv2_in != ["relu"] or feeds.get("relu") != ["bn"]:
        problems.append(f"conv2 reads {conv2_in}; expected the encoder's final BN + ReLU ('bn' -> 'relu')")
    for k, skip in EXPECTED_SKIPS.items():
        concat = feeds.get(f"up{k}_convA", [])
        sources = feeds.get(concat[0], []) if concat else []
        if skip not in sources:
            problems.append(f"up{k} concatenates {sources}; the released files use skip '{skip}'")
        after_a = [n for n, ins in feeds.items() if f"up{k}_convA" in ins]
        if after_a != [f"up{k}_convB"]:
            problems.append(f"up{k}_convA feeds {after_a}; the released files feed up{k}_convB directly")
    return problems


# ---------------------------------------------------------------------------- reading


def _open(path: Path):
    import h5py

    if not path.is_file():
        raise WeightsFileError(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsFileError(
            path, f"not a readable HDF5 file ({e}); the file may be truncated or corrupted"
        ) from None


def read_model_config(f, path: Path) -> dict:
    """The parsed `model_config` attribute, or a WeightsFileError saying why there is none."""
    raw = f.attrs.get("model_config")
    if raw is None:
        raise WeightsFileError(path, "no model_config attribute: not a Keras full-model file (a weights-only .h5?)")
    try:
        return json.loads(_decode(raw))
    except ValueError as e:
        raise WeightsFileError(path, f"model_config is not valid JSON ({e})") from None


def iter_layer_weights(f, path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(layer name, short weight name, array) for every weight listed in the file's attributes."""
    if "model_weights" not in f:
        raise WeightsFileError(path, "no model_weights group: not a Keras full-model file")
    group = f["model_weights"]
    for layer in (_decode(n) for n in group.attrs.get("layer_names", [])):
        for stored in (_decode(n) for n in group[layer].attrs.get("weight_names", [])):
            try:
                data = np.asarray(group[layer][stored], dtype=np.float32)
            except (OSError, KeyError) as e:
                raise WeightsFileError(path, f"cannot read {layer}/{stored} ({e}); the file may be truncated") from None
            yield layer, short_weight_name(stored), data


def to_torch_layout(short: str, data: np.ndarray) -> np.ndarray:
    """Keras conv kernels are [kh, kw, in, out]; torch wants [out, in, kh, kw]."""
    if short == "kernel":
        return np.ascontiguousarray(data.transpose(3, 2, 0, 1))
    return data


def read_keras_h5(path: str | Path, expected_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """State dict (torch names -> float32 arrays) read from a released DenseDepth `.h5`.

    `expected_shapes` is the torch model's state dict shapes; every entry must be filled exactly
    once with the right shape, or the file is refused.
    """
    path = Path(path)
    with _open(path) as f:
        problems = architecture_problems(read_model_config(f, path))
        if problems:
            raise WeightsFileError(path, "not the released DenseDepth architecture", problems)
        tensors: dict[str, np.ndarray] = {}
        unknown: list[str] = []
        for layer, short, data in iter_layer_weights(f, path):
            module = torch_module_name(layer)
            if module is None or short not in KERAS_WEIGHT_TO_TORCH:
                unknown.append(f"{layer}/{short}")
                continue
            tensors[f"{module}.{KERAS_WEIGHT_TO_TORCH[short]}"] = to_torch_layout(short, data)
    _check_complete(path, tensors, expected_shapes, unknown)
    return tensors


def _check_complete(
    path: Path, tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], unknown: list[str]
) -> None:
    missing = sorted(set(expected) - set(tensors))
    wrong = [
        f"{name}: file {tuple(a.shape)} vs model {expected[name]}"
        for name, a in tensors.items()
        if name in expected and tuple(a.shape) != tuple(expected[name])
    ]
    details = [f"unexpected weight {n}" for n in unknown[:5]]
    details += [f"missing weight {n}" for n in missing[:5]] + wrong[:5]
    if details:
        counts = f"{len(unknown)} unexpected, {len(missing)} missing, {len(wrong)} with the wrong shape"
        raise WeightsFileError(path, f"weights do not match DenseDepth ({counts})", details)
