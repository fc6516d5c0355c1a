from torch import nn

from segtools.batch_norm import BATCH_NORMS, folded_conv

from .head import LevelTower

__all__ = ["fold_level_tower"]


def fold_level_tower(module: nn.Module) -> bool:
    """
    LosNet's hook for :func:`segtools.batch_norm.fold_batch_norms`: in a head tower, a conv
    shared by the levels is followed by one BN per level, so each conv becomes one folded conv
    per level (the tower's `level_norms[i][level]` then holds that conv and `convs[i]` is an
    identity). Towers with a GroupNorm or no norm stay as they are.

    Returns:
        Whether `module` is a tower (folded in place where it has batch norms).
    """
    if not isinstance(module, LevelTower):
        return False
    for index, (conv, norms) in enumerate(zip(module.convs, module.level_norms, strict=True)):
        if isinstance(conv, nn.Conv2d) and all(isinstance(n, BATCH_NORMS) for n in norms):
            module.level_norms[index] = nn.ModuleList(folded_conv(conv, n) for n in norms)
            module.convs[index] = nn.Identity()
    return True
