import functools
import logging
import os

import torch
import torchvision
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import nn

__all__ = ["MobileNetV3Small", "load_torchvision_mobilenet_weights"]

logger = logging.getLogger(__name__)

# Index of the last torchvision `features` block of each stage, its stride and its channels.
# res5 is taken after the final 1x1 conv (96 -> 576), as the authors do.
_STAGES = {
    "res2": (1, 4, 16),
    "res3": (3, 8, 24),
    "res4": (8, 16, 48),
    "res5": (12, 32, 576),
}


class MobileNetV3Small(Backbone):
    """
    torchvision's MobileNetV3-Small (width 1.0) feature extractor as a Detectron2 backbone.

    Only the `features` blocks up to the deepest requested stage are built; the classifier is not.
    Parameter names equal torchvision's (`features.<i>....`), so its ImageNet state dict loads
    directly (see :func:`load_torchvision_mobilenet_weights`).
    """

    def __init__(self, out_features=("res3", "res4", "res5")):
        super().__init__()
        unknown = set(out_features) - set(_STAGES)
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.MOBILENET_V3.OUT_FEATURES={list(out_features)}: choose from {list(_STAGES)}"
            )
        self._out_features = sorted(out_features, key=lambda name: _STAGES[name][0])
        self._tap_to_name = {_STAGES[name][0]: name for name in self._out_features}
        last_block = _STAGES[self._out_features[-1]][0]
        # torchvision's BN momentum of 0.01 suits its long ImageNet schedule; over a detection
        # schedule the running statistics would trail the weights, so use the usual 0.1.
        norm_layer = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
        network = torchvision.models.mobilenet_v3_small(norm_layer=norm_layer)
        self.features = network.features[: last_block + 1]
        self._out_feature_strides = {name: _STAGES[name][1] for name in self._out_features}
        self._out_feature_channels = {name: _STAGES[name][2] for name in self._out_features}

    def forward(self, x):
        """
        Args:
            x: (N, 3, H, W) normalised images.

        Returns:
            dict[str, Tensor]: each requested stage, (N, C, H / stride, W / stride).
        """
        outputs = {}
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self._tap_to_name:
                outputs[self._tap_to_name[index]] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def load_torchvision_mobilenet_weights(backbone: MobileNetV3Small, path: str) -> None:
    """
    Load a torchvision-format MobileNetV3-Small state dict from a local file into `backbone`.

    Accepts a plain state dict or one wrapped under "state_dict" or "model", with or without a
    "module." prefix (DataParallel). Classifier weights are ignored.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not a PyTorch state dict, or it lacks keys / has other shapes than
            the backbone (the message names the file and the keys).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.MOBILENET_V3.WEIGHTS: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch weights file: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}

    expected = backbone.state_dict()
    missing = sorted(key for key in expected if key not in state)
    if missing:
        raise ValueError(
            f"{path} is not a torchvision MobileNetV3-Small state dict: {len(missing)} of "
            f"{len(expected)} backbone keys are missing, e.g. {missing[:5]}"
        )
    mismatched = [key for key in expected if state[key].shape != expected[key].shape]
    if mismatched:
        raise ValueError(
            f"{path}: shapes differ from MobileNetV3-Small for {mismatched[:5]}, e.g. "
            f"{mismatched[0]} is {tuple(state[mismatched[0]].shape)}, expected "
            f"{tuple(expected[mismatched[0]].shape)} (a different width multiplier?)"
        )
    backbone.load_state_dict({key: state[key] for key in expected})
    logger.info(f"Loaded MobileNetV3-Small ImageNet weights from {path}")
