"""The exponential moving average of the weights: its rule, its swaps, checkpoints and resuming."""

import os
from types import SimpleNamespace

import pytest
import torch
from test_train_net import CONFIG, SMALL
from torch import nn

from segtools import engine
from segtools.config import ConfigValueError, get_project_cfg
from segtools.weight_average import WeightAverageHook

from helpers import register_four_synthetic_images

DATASET = "test_weight_average_ore"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def tiny_dataset(tmp_path_factory):
    register_four_synthetic_images(tmp_path_factory.mktemp("ore"), DATASET)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def hook_on(model, decay=0.9, checkpoint_period=3, eval_period=0, max_iter=7):
    hook = WeightAverageHook(decay, checkpoint_period, eval_period)
    hook.trainer = hook.restorer.trainer = SimpleNamespace(model=model, iter=0, max_iter=max_iter)
    return hook


def set_weights(model, value: float, batches: int):
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.fill_(batches if name.endswith("num_batches_tracked") else value)


def test_average_follows_the_warmed_up_exponential_rule():
    model = small_model()
    set_weights(model, 0.0, 0)
    hook = hook_on(model, decay=0.9, checkpoint_period=100, max_iter=100)
    hook.before_train()
    expected = 0.0
    for step in range(1, 31):
        set_weights(model, float(step), step)
        hook.trainer.iter = step - 1
        hook.after_step()
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18, 0.25, ... then 0.9 from step 80
        expected = decay * expected + (1 - decay) * step
    hook.swap_in()
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert tensor.item() == 30  # not averaged: the latest
        else:
            assert torch.allclose(tensor, torch.full_like(tensor, expected)), name
    # Warmed up, the average lags the weights by about 1 / (1 - decay) steps.
    assert 20 < expected < 28


def test_average_is_swapped_in_where_checkpoints_and_evaluations_see_it():
    model = small_model()
    hook = hook_on(model, checkpoint_period=3, eval_period=5, max_iter=7)
    hook.before_train()
    swapped = []
    for step in range(7):
        set_weights(model, float(step + 1), step + 1)
        training = {k: v.clone() for k, v in model.state_dict().items()}
        hook.trainer.iter = step
        hook.after_step()
        if hook._training is not None:
            swapped.append(step)
            # The checkpointer saves the training weights beside the average in the model.
            saved = hook.state_dict()["training_weights"]
            assert all(torch.equal(saved[k], training[k]) for k in training)
            assert not torch.equal(model[0].weight, training["0.weight"])
        hook.restorer.after_step()
        # Restored bit for bit.
        assert all(torch.equal(model.state_dict()[k], training[k]) for k in training)
    # Iterations 3 and 6 (checkpoints), 5 (evaluation) and the last, 7.
    assert swapped == [2, 4, 5, 6]
    hook.after_train()
    assert hook._training is not None  # the trained model is the average


def test_resuming_puts_the_training_weights_back_and_keeps_the_average():
    model = small_model()
    set_weights(model, 3.0, 5)  # the checkpoint's "model": the average
    training = small_model()
    set_weights(training, 7.0, 5)
    hook = hook_on(model)
    hook.load_state_dict({"updates": 40, "training_weights": training.state_dict()})
    hook.before_train()
    assert torch.equal(model[0].weight, torch.full((2, 2), 7.0))
    hook.swap_in()
    assert torch.equal(model[0].weight, torch.full((2, 2), 3.0)) and hook.updates == 40


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_out_of_range_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay must be in"):
        WeightAverageHook(decay, 10, 0)


def test_config_refuses_a_decay_of_one():
    with pytest.raises(ConfigValueError, match="EMA_DECAY = 1.0: expected a number in"):
        get_project_cfg(CONFIG, ["SEGTOOLS.SOLVER.EMA_DECAY", "1.0"])


def train(output_dir, *opts, period=2, flags=()):
    args = engine.argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *SMALL, "DATASETS.TRAIN", f"('{DATASET}',)",
         "DATASETS.TEST", f"('{DATASET}',)", "SOLVER.MAX_ITER", "4",
         "SOLVER.CHECKPOINT_PERIOD", str(period), "SEED", "3", "OUTPUT_DIR", str(output_dir),
         *opts]
    )  # fmt: skip
    return engine.main(args)


def checkpoint(output_dir, name):
    return torch.load(os.path.join(output_dir, name), map_location="cpu", weights_only=False)


def test_checkpoints_hold_the_average_and_the_training_weights(tmp_path):
    train(tmp_path, "SEGTOOLS.SOLVER.EMA_DECAY", "0.5", period=1)
    saved = [checkpoint(tmp_path, f"model_{i:07d}.pth") for i in range(4)]
    assert [c["weight_average"]["updates"] for c in saved] == [1, 2, 3, 4]
    for before, after in zip(saved[:-1], saved[1:], strict=True):
        updates = after["weight_average"]["updates"]
        decay = min(0.5, (1 + updates) / (10 + updates))
        training = after["weight_average"]["training_weights"]
        for name, average in after["model"].items():
            if average.is_floating_point():
                expected = decay * before["model"][name] + (1 - decay) * training[name]
                assert torch.allclose(average, expected, atol=1e-6), (updates, name)
            else:
                assert torch.equal(average, training[name])
    # The average is not the training weights: it lags them.
    final = checkpoint(tmp_path, "model_final.pth")
    training = final["weight_average"]["training_weights"]
    assert any(not torch.equal(v, training[k]) for k, v in final["model"].items())
    assert all(torch.equal(v, saved[3]["model"][k]) for k, v in final["model"].items())


def test_resumed_averaging_run_finishes_with_both_weights(tmp_path):
    train(tmp_path, "SEGTOOLS.SOLVER.EMA_DECAY", "0.5")
    first = checkpoint(tmp_path, "model_0000001.pth")
    with open(tmp_path / "last_checkpoint", "w") as f:
        f.write("model_0000001.pth")
    os.remove(tmp_path / "model_final.pth")
    train(tmp_path, "SEGTOOLS.SOLVER.EMA_DECAY", "0.5", flags=["--resume"])
    final = checkpoint(tmp_path, "model_final.pth")
    assert final["iteration"] == 3 and final["weight_average"]["updates"] == 4
    # Training went on from the saved training weights, not from the average.
    moved = [
        k
        for k, v in final["weight_average"]["training_weights"].items()
        if v.is_floating_point()
        and not torch.equal(v, first["weight_average"]["training_weights"][k])
    ]
    assert moved
