"""
An exponential moving average (EMA) of a model's weights during training, which is what the run's
checkpoints, evaluations and final model hold (SEGTOOLS.SOLVER.EMA_DECAY).

A constant learning rate reaches a good model quickly but leaves it moving: on the synthetic ore
main job, one seed's mask AP50 on val went 70.0 / 49.6 / 73.5 at iterations 350 / 420 / 490. The
average of recent weights does not depend on where the last steps happened to land.

How the run sees the average. :class:`WeightAverageHook` updates the average after every step
and, at the steps where a checkpoint is saved or the model is evaluated, swaps it into the model
for the hooks after it (checkpointer, evaluation); its :attr:`~WeightAverageHook.restorer`,
placed after them, swaps the training weights back. So `model_XXXXXXX.pth` and
`model_final.pth` hold the average as their "model", which every tool loads, and the training
weights under "weight_average", which `--resume` puts back into the model. After training the
model holds the average. Every process keeps the same average (its weights are the same).
"""

import torch
from detectron2.engine import HookBase

__all__ = ["WeightAverageHook"]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model


def _copy_into(model: torch.nn.Module, state: dict) -> None:
    with torch.no_grad():
        for name, tensor in _unwrapped(model).state_dict().items():
            tensor.copy_(state[name])


def _state_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in _unwrapped(model).state_dict().items()}


class _Restorer(HookBase):
    """Puts the training weights back after the hooks that saw the average."""

    def __init__(self, owner: "WeightAverageHook"):
        self._owner = owner

    def after_step(self):
        self._owner.swap_out()


class WeightAverageHook(HookBase):
    """
    Args:
        decay: weight of the old average per step, in (0, 1); about 1 / (1 - decay) steps are
            averaged. Early steps use min(decay, (1 + n) / (10 + n)) after n updates, so that
            the random initial weights fade out fast.
        checkpoint_period, eval_period: SOLVER.CHECKPOINT_PERIOD and TEST.EVAL_PERIOD, the
            steps at which the average is swapped in (and the last one).
    """

    def __init__(self, decay: float, checkpoint_period: int, eval_period: int):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self._periods = [p for p in (checkpoint_period, eval_period) if p > 0]
        self.restorer = _Restorer(self)
        self.updates = 0
        self._average = None  # {name: tensor}, the model's state_dict keys
        self._training = None  # the training weights while the average is swapped in
        self._resumed_training = None  # training weights read from a checkpoint

    # ------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        training = self._training if self._training is not None else _state_copy(self.trainer.model)
        return {"updates": self.updates, "training_weights": training}

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint whose "model" is the average (see the module docstring)."""
        self.updates = int(state["updates"])
        self._resumed_training = state["training_weights"]

    # ------------------------------------------------------------ hooks

    def before_train(self):
        model = self.trainer.model
        self._average = _state_copy(model)  # the checkpoint's "model" when resuming
        if self._resumed_training is not None:
            _copy_into(model, self._resumed_training)
            self._resumed_training = None

    def after_step(self):
        self._update()
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or any(next_iter % p == 0 for p in self._periods):
            self.swap_in()

    def after_train(self):
        self.swap_in()  # the final evaluation and whoever uses the model next see the average

    # ------------------------------------------------------------ the average

    def _update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averages, weights = [], []
        with torch.no_grad():
            for name, tensor in _unwrapped(self.trainer.model).state_dict().items():
                average = self._average[name]
                if average.is_floating_point():
                    averages.append(average)
                    weights.append(tensor)
                else:  # e.g. BatchNorm's num_batches_tracked: the latest, not averaged
                    average.copy_(tensor)
            # One multi-tensor kernel, not two kernels per tensor (LosNet has about 400).
            torch._foreach_lerp_(averages, weights, 1 - decay)

    def swap_in(self) -> None:
        """Put the average into the model, keeping the training weights (no-op if done)."""
        if self._training is None:
            self._training = _state_copy(self.trainer.model)
            _copy_into(self.trainer.model, self._average)

    def swap_out(self) -> None:
        """Put the training weights back (no-op if the average is not in)."""
        if self._training is not None:
            _copy_into(self.trainer.model, self._training)
            self._training = None
