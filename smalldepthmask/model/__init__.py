"""The paper's baseline mask + depth network, its loss, metrics, augmentations and training loop."""

from .net import DEFAULT_WIDTHS, BaselineNet, ModelConfig, parameter_count

__all__ = ["BaselineNet", "ModelConfig", "DEFAULT_WIDTHS", "parameter_count"]
