"""Loading trained weights into a model, refusing files that are not its checkpoint."""

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["CheckedCheckpointer", "CheckpointError", "load_weights"]

# Keys listed in a message before "and N more".
_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A weights file that is not a checkpoint, or not one of the model it is loaded into."""


def _listed(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def _unreadable_reason(error: Exception) -> str:
    """Why torch.load refused a file, in a few words."""
    text = str(error)
    if "Unsupported global" in text:
        global_name = text.split("GLOBAL ", 1)[1].split()[0]
        return (
            f"it holds Python objects besides tensors and numbers ({global_name}), which are "
            "not loaded from files of unknown origin: save a plain state dict, "
            "torch.save({'model': model.state_dict()}, path)"
        )
    return "neither a zip archive nor a pickle: corrupt, truncated or another kind of file"


class CheckedCheckpointer(DetectionCheckpointer):
    """
    Detectron2's checkpointer whose loading names the file when it is not a checkpoint, and
    refuses (unless `allow_partial`) one whose parameters do not all match the model's.
    """

    def __init__(self, model, save_dir="", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial

    def _load_file(self, filename):
        try:
            checkpoint = super()._load_file(filename)
        # torch.load and pickle raise many types on a file that is not what they expect.
        except Exception as e:
            raise CheckpointError(
                f"{filename} is not a PyTorch or Detectron2 checkpoint: {_unreadable_reason(e)}"
            ) from None
        if not isinstance(checkpoint.get("model"), dict):
            raise CheckpointError(f"{filename} holds no state dict of model weights")
        return checkpoint

    def _load_model(self, checkpoint):
        if self.allow_partial:
            return super()._load_model(checkpoint)
        original = {k: v.clone() for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        missing = {*incompatible.missing_keys, *(k for k, *_ in incompatible.incorrect_shapes)}
        problems = []
        if missing:
            problems.append(f"the model's {_listed(missing)} are missing or of another shape")
        if incompatible.unexpected_keys:
            problems.append(
                f"it holds {_listed(incompatible.unexpected_keys)}, unknown to the model"
            )
        if problems:
            self.model.load_state_dict(original)
            raise CheckpointError(
                "the weights are not a checkpoint of this model: "
                + "; ".join(problems)
                + ". Check the config, or pass --allow-partial-weights to load what matches"
            )
        return incompatible


def load_weights(model: torch.nn.Module, path: str, allow_partial: bool = False) -> dict:
    """
    Load the weights at `path` (a Detectron2 or PyTorch checkpoint, .pth or .pkl) into `model`.

    Args:
        allow_partial: load what matches and log the rest (deliberate fine-tuning) instead of
            refusing a checkpoint whose parameters do not all match the model's.

    Returns:
        What the checkpoint holds besides the weights (e.g. "iteration").

    Raises:
        CheckpointError: naming the file, if it is not a checkpoint; or, unless `allow_partial`,
            if some of the model's parameters are missing from it or have another shape, or it
            holds parameters the model does not have (the first keys are named); the model is
            then left as it was.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return CheckedCheckpointer(model, allow_partial=allow_partial).load(path)
    except CheckpointError as e:
        message = str(e)
        raise CheckpointError(message if path in message else f"{path}: {message}") from None
