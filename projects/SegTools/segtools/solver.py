"""Detectron2's optimizer, or AdamW with the same parameter groups (SEGTOOLS.SOLVER.OPTIMIZER)."""

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("SGD", "AdamW")


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    SGD exactly as Detectron2 builds it, or AdamW (betas SEGTOOLS.SOLVER.ADAMW_BETAS) over the
    same parameter groups: SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY (SOLVER.WEIGHT_DECAY_NORM for norm
    layers, SOLVER.WEIGHT_DECAY_BIAS for biases), with SOLVER.CLIP_GRADIENTS.
    """
    name = cfg.SEGTOOLS.SOLVER.OPTIMIZER
    if name == "SGD":
        return build_sgd_optimizer(cfg, model)
    if name != "AdamW":
        raise ValueError(f"SEGTOOLS.SOLVER.OPTIMIZER: {name!r} is not one of {OPTIMIZERS}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SEGTOOLS.SOLVER.ADAMW_BETAS),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)
