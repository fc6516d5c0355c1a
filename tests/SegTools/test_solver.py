"""The optimizer switch: Detectron2's SGD unchanged, AdamW over the same parameter groups."""

import torch
from detectron2.config import get_cfg
from torch import nn

from segtools.projects import add_segtools_config
from segtools.solver import build_optimizer


def _cfg(optimizer: str, *opts):
    cfg = get_cfg()
    add_segtools_config(cfg)
    cfg.merge_from_list(["SEGTOOLS.SOLVER.OPTIMIZER", optimizer, *opts])
    return cfg


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))


def test_sgd_is_detectron2s_optimizer():
    optimizer = build_optimizer(_cfg("SGD", "SOLVER.MOMENTUM", "0.8"), _model())
    assert isinstance(optimizer, torch.optim.SGD)
    assert {group["momentum"] for group in optimizer.param_groups} == {0.8}


def test_adamw_keeps_detectron2s_parameter_groups():
    cfg = _cfg(
        "AdamW",
        *("SOLVER.BASE_LR", "0.002", "SOLVER.WEIGHT_DECAY", "0.05"),
        *("SOLVER.WEIGHT_DECAY_NORM", "0.0", "SEGTOOLS.SOLVER.ADAMW_BETAS", "(0.8, 0.99)"),
    )
    model = _model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    assert decay[id(model[0].weight)] == 0.05 and decay[id(model[2].bias)] == 0.05
    assert decay[id(model[1].weight)] == 0.0 and decay[id(model[1].bias)] == 0.0
    assert len(decay) == sum(1 for _ in model.parameters())
    assert {group["betas"] for group in optimizer.param_groups} == {(0.8, 0.99)}
    assert {group["lr"] for group in optimizer.param_groups} == {0.002}


def test_adamw_with_gradient_clipping_clips_and_learns():
    cfg = _cfg(
        "AdamW",
        *("SOLVER.BASE_LR", "0.05", "SOLVER.CLIP_GRADIENTS.ENABLED", "True"),
        *("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1e-3"),
    )
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = build_optimizer(cfg, model)
    inputs, targets = torch.randn(32, 4), torch.randn(32, 1)
    first = None
    for _ in range(60):
        loss = nn.functional.mse_loss(model(inputs), targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Detectron2 clips each parameter's gradient, in step(), before using it.
        assert max(p.grad.norm() for p in model.parameters()) <= 1e-3 * 1.001
    assert loss.item() < 0.8 * first
