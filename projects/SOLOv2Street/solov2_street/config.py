from detectron2.config import CfgNode as CN

__all__ = ["add_solov2_street_config", "check_choice"]


def check_choice(key: str, value, choices: tuple):
    """
    Raise a ValueError that names the config `key`, its `value` and the allowed `choices` unless
    `value` is one of them.

    Returns:
        `value`.
    """
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{key} = {value!r}: use one of {allowed}")
    return value


def add_solov2_street_config(cfg):
    """
    Add the config keys of SOLOv2 (Wang et al., NeurIPS 2020) and of its street-scene variant
    (Liu & Kong, KSII TIIS 2024): the CSPAM backbone, the TWFPN neck (which reads Detectron2's
    MODEL.FPN keys), CSMF mask features and the AML loss. Defaults are SOLOv2's (the authors'
    code); `projects/SOLOv2Street/README.md` lists every choice made where the papers are vague.
    """
    cfg.MODEL.SOLOV2 = CN()
    cfg.MODEL.SOLOV2.NUM_CLASSES = 80

    # Category and kernel branches ("instance branch"): one S x S grid per input level. The
    # first level is downsampled x0.5 and the last resized to the one before it (strides 8, 8,
    # 16, 32, 32 for p2-p6), as in SOLOv2.
    cfg.MODEL.SOLOV2.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # S of each level.
    cfg.MODEL.SOLOV2.NUM_GRIDS = [40, 36, 24, 16, 12]
    # (lower, upper) sqrt(box area) of the objects each level learns, in input pixels; the
    # ranges overlap, and an object in two ranges is learned by both levels.
    cfg.MODEL.SOLOV2.SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    # sigma: the centre region of an object is sigma x its box around its mask's centre of mass
    # (at most the centre cell and its 8 neighbours are positive).
    cfg.MODEL.SOLOV2.SIGMA = 0.2
    # Width and depth of the two towers (3x3 convs + NORM + ReLU, shared by the levels).
    cfg.MODEL.SOLOV2.INSTANCE_CHANNELS = 512
    cfg.MODEL.SOLOV2.NUM_INSTANCE_CONVS = 4
    # Norm of the towers and of the mask feature branch ("GN": GroupNorm(32)).
    cfg.MODEL.SOLOV2.NORM = "GN"
    # Initial foreground probability of the category branch (its bias).
    cfg.MODEL.SOLOV2.PRIOR_PROB = 0.01

    # Unified mask feature branch: four levels fused at stride 4 into NUM_MASKS channels, the
    # length E of the dynamic 1x1 kernels predicted by the kernel branch.
    cfg.MODEL.SOLOV2.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SOLOV2.MASK_CHANNELS = 128
    cfg.MODEL.SOLOV2.NUM_MASKS = 256
    # How the four levels are fused: "sum" (SOLOv2: each level upsampled to stride 4 by its own
    # convs, CoordConv on the deepest, summed) or "csmf" (street variant, Fig. 4: the deepest
    # level, with coordinates, upsampled x2 and concatenated with the third; it is also
    # upsampled x8 as a global guide added at stride 4). "csmf" reads MASK_IN_FEATURES as
    # (N2, N3, N4, P5) of the TWFPN.
    cfg.MODEL.SOLOV2.MASK_FUSION = "sum"

    # Losses. "solov2": focal loss on categories (summed over cells, divided by the positive
    # cells + 1) + DICE_LOSS_WEIGHT x dice loss (mean over (cell, object) pairs); a cell in the
    # centre regions of several objects takes the class of the last one and learns every mask.
    # "aml" (street variant, section 2.3): sigmoid(L_cate) + sigmoid(lambda L_mask), L_mask the
    # dice of eq. 1 plus the centroid term epsilon of eq. 2, and each cell that several objects
    # claim learns only the object of smallest loss (adaptive minimum-loss matching).
    cfg.MODEL.SOLOV2.LOSS = "solov2"
    cfg.MODEL.SOLOV2.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.SOLOV2.FOCAL_LOSS_GAMMA = 2.0
    cfg.MODEL.SOLOV2.FOCAL_LOSS_WEIGHT = 1.0
    # lambda: weight of the mask loss (SOLOv2's 3; eq. 3's lambda).
    cfg.MODEL.SOLOV2.DICE_LOSS_WEIGHT = 3.0

    # Inference. Cells are local maxima of their class's score map (point NMS); a candidate
    # needs a category score above CANDIDATE_THRESH_FACTOR x SCORE_THRESH_TEST (SOLOv2's
    # score_thr, 0.1 = 2 x 0.05); at most CANDIDATE_TOPK_TEST of them (by category score) get
    # masks; masks are binarised at MASK_THRESH_TEST, those of at most stride pixels (at
    # stride 4) dropped, scores multiplied by the mean probability inside the mask; the
    # PRE_NMS_TOPK_TEST best go through Matrix NMS; the decayed scores must reach
    # SCORE_THRESH_TEST (SOLOv2's update_thr), and TEST.DETECTIONS_PER_IMAGE are kept.
    cfg.MODEL.SOLOV2.SCORE_THRESH_TEST = 0.05
    # 1.0 loses nothing: maskness and decay are <= 1, so a lower category score can never
    # reach SCORE_THRESH_TEST.
    cfg.MODEL.SOLOV2.CANDIDATE_THRESH_FACTOR = 2.0
    # A cap SOLOv2 does not have (its 0.1 threshold keeps a few hundred candidates when
    # trained); it bounds memory when the threshold is 0 (benchmarks, untrained models).
    cfg.MODEL.SOLOV2.CANDIDATE_TOPK_TEST = 1000
    cfg.MODEL.SOLOV2.PRE_NMS_TOPK_TEST = 500
    cfg.MODEL.SOLOV2.MASK_THRESH_TEST = 0.5
    # Matrix NMS decay: "gaussian", exp(-sigma x IoU^2) (sigma multiplies, as in the authors'
    # code), or "linear", 1 - IoU; each compensated by the suppressor's own largest IoU.
    cfg.MODEL.SOLOV2.NMS_KERNEL = "gaussian"
    cfg.MODEL.SOLOV2.NMS_SIGMA = 2.0

    # CSPAM backbone (section 2.1, Figs. 2-3): ResNet-50's stages made cross-stage partial,
    # Mish activations, a position attention module (PAM) after some stages.
    cfg.MODEL.CSPAM = CN()
    # Residual blocks per stage, res2-res5 (ResNet-50's).
    cfg.MODEL.CSPAM.DEPTHS = [3, 4, 6, 3]
    cfg.MODEL.CSPAM.STEM_OUT_CHANNELS = 64
    # Output channels of res2, doubled at each later stage (ResNet-50's 256 ... 2048).
    cfg.MODEL.CSPAM.RES2_OUT_CHANNELS = 256
    # Norm after every conv: "BN" (Fig. 2), "SyncBN" on several GPUs, "FrozenBN" to fine-tune.
    cfg.MODEL.CSPAM.NORM = "BN"
    cfg.MODEL.CSPAM.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Stages followed by a PAM, before the next stage reads them. After res2 (stride 4) the
    # N x N attention of a 1200 x 680 input would take 11 GB.
    cfg.MODEL.CSPAM.PAM_STAGES = ["res3", "res4"]
    # C1 = C / PAM_REDUCTION channels of P, A, M and T1 (the paper's 1/8).
    cfg.MODEL.CSPAM.PAM_REDUCTION = 8
    # True: the PAM's output T3 = concat(theta x T1, T2) is added to its input (DANet's
    # residual form); False: T3 replaces the input (every feature then passes C1 channels).
    cfg.MODEL.CSPAM.PAM_RESIDUAL = True
