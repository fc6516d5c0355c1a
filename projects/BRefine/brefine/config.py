from detectron2.config import CfgNode as CN

__all__ = ["add_brefine_config"]


def add_brefine_config(cfg):
    """
    Add the config keys of BRefine (Yu et al., Sensors 2022): the multistage fusion mask head,
    the mask losses and the BRank-and-Sort training of eq. 5. Defaults are the paper's where it
    gives them; `projects/BRefine/README.md` lists the choices made where it does not.
    """
    cfg.MODEL.BREFINE = CN()
    # Eq. 5: Rank & Sort for RPN objectness (k = 1; needs MODEL.PROPOSAL_GENERATOR.NAME
    # "RankSortRPN") and box classification (k = 2), score-weighted GIoU boxes (eq. 6) and the
    # mask loss (k = 3), each balanced to the RS value (lambda^k = L_RS^k / L^k). False: Mask
    # R-CNN's losses (softmax CE, smooth L1, the mask loss unweighted).
    cfg.MODEL.BREFINE.RANK_SORT_ON = True
    # delta of RS's smoothed step H (eq. 3-4).
    cfg.MODEL.BREFINE.RANK_SORT_DELTA = 0.5
    # At most this many positive regions of a process's batch, chosen at random, train the mask
    # head (the RS authors' 200; RS samples no regions, so there may be many). <= 0: all.
    cfg.MODEL.BREFINE.MASK_POSITIVES_PER_BATCH = 200

    # Multistage fusion mask head (section 3.1, Figures 4-5); MODEL.ROI_MASK_HEAD.NAME
    # "BRefineMaskHead" with MODEL.ROI_MASK_HEAD.POOLER_TYPE "" (it pools by itself, the main
    # line at MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION).
    cfg.MODEL.BREFINE.MASK_HEAD = CN()
    # Stages (Table 3): 1, 2 or 3, with mask outputs of 14, 28 or 56 pixels.
    cfg.MODEL.BREFINE.MASK_HEAD.NUM_STAGES = 3
    # Width of each stage (the first NUM_STAGES are used); halved from stage to stage so the 56 x
    # 56 stage stays cheap (the paper gives no widths).
    cfg.MODEL.BREFINE.MASK_HEAD.CHANNELS = [256, 128, 64]
    # The feature map of the auxiliary line: the finest FPN level, P2.
    cfg.MODEL.BREFINE.MASK_HEAD.DETAIL_FEATURE = "p2"
    # How the auxiliary line joins the main line: "sum", or "concat" followed by a 1x1 conv.
    cfg.MODEL.BREFINE.MASK_HEAD.FUSION = "sum"
    # Residual-aware module (Figure 5, Table 4): dilations of its parallel 3x3 convs ([1]: "1
    # single 3x3 conv", [1, 2]: 2 parallel, [1, 2, 3]: 3 parallel; []: no RAM) and whether its
    # residual branch (the halved features) joins their sum.
    cfg.MODEL.BREFINE.MASK_HEAD.RAM_DILATIONS = [1, 2, 3]
    cfg.MODEL.BREFINE.MASK_HEAD.RAM_RESIDUAL = True
    # Norm of every conv of the head ("" = none, with bias; e.g. "BN", "GN").
    cfg.MODEL.BREFINE.MASK_HEAD.NORM = ""
    # RoI pooler of both lines.
    cfg.MODEL.BREFINE.MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

    # The mask loss L^3 (section 3.2, Tables 5-6).
    cfg.MODEL.BREFINE.MASK_LOSS = CN()
    # "ce" (binary cross-entropy), "dice", "focal" or "ce_dice" (Table 5).
    cfg.MODEL.BREFINE.MASK_LOSS.TYPE = "ce"
    # lambda of eq. 2: per-pixel losses are weighted by 1 + lambda on the boundary region B of
    # eq. 1 (Table 6); 0 turns the boundary term off.
    cfg.MODEL.BREFINE.MASK_LOSS.BOUNDARY_WEIGHT = 1.0
    # Width of B: erosions of the M x M target, this fraction of its diagonal (at least 1):
    # 2 for 56 x 56, 1 for 28 x 28 and 14 x 14 (Boundary IoU's 2 %).
    cfg.MODEL.BREFINE.MASK_LOSS.BOUNDARY_RATIO = 0.02
    # alpha and gamma of the focal loss (TYPE "focal").
    cfg.MODEL.BREFINE.MASK_LOSS.FOCAL_ALPHA = 0.25
    cfg.MODEL.BREFINE.MASK_LOSS.FOCAL_GAMMA = 2.0
