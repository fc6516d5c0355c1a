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
    Detectron2's checkpointer that names the file when it is missing or not a checkpoint, refuses
    a checkpoint that provides none of the model's parameters (surely another model's: the model
    would silently keep random weights), and, unless `allow_partial`, one whose parameters do not
    all match the model's. A refused checkpoint leaves the model as it was.
    """

    def __init__(self, model, save_dir="", *, allow_partial: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial

    def load(self, path, *args, **kwargs):
        # Detectron2 asserts on a missing file; URLs (detectron2://, https://) are downloaded.
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"weights file not found: {path}")
        try:
            return super().load(path, *args, **kwargs)
        except CheckpointError as e:
            message = str(e)
            raise CheckpointError(message if path in message else f"{path}: {message}") from None

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
        original = {k: v.clone() for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        problem = self._refusal(incompatible)
        if problem:
            self.model.load_state_dict(original)
            raise CheckpointError(problem)
        return incompatible

    def _refusal(self, incompatible) -> str | None:
        """Why the loaded checkpoint is refused, or None."""
        missing = {*incompatible.missing_keys, *(k for k, *_ in incompatible.incorrect_shapes)}
        unexpected = incompatible.unexpected_keys
        parameters = {name for name, _ in self.model.named_parameters()}
        if parameters and parameters <= missing:
            held = f" (it holds {_listed(unexpected)})" if unexpected else ""
            return (
                f"none of the model's {len(parameters)} parameters is in it with its shape"
                f"{held}: a checkpoint of another model. Check the weights and the config"
            )
        if self.allow_partial or not (missing or unexpected):
            return None
        problems = []
        if missing:
            problems.append(f"the model's {_listed(missing)} are missing or of another shape")
        if unexpected:
            problems.append(f"it holds {_listed(unexpected)}, unknown to the model")
        return (
            "the weights are not a checkpoint of this model: "
            + "; ".join(problems)
            + ". Check the config, or pass --allow-partial-weights to load what matches"
        )


def load_weights(model: torch.nn.Module, path: str, allow_partial: bool = False) -> dict:
    """
    Load the weights at `path` (a Detectron2 or PyTorch checkpoint, .pth or .pkl) into `model`.

    Args:
        allow_partial: load what matches and log the rest (deliberate fine-tuning) instead of
            refusing a checkpoint whose parameters do not all match the model's.

    Returns:
        What the checkpoint holds besides the weights (e.g. "iteration").

    Raises:
        CheckpointError: as :class:`CheckedCheckpointer` says, naming the file.
    """
    return CheckedCheckpointer(model, allow_partial=allow_partial).load(path)
