from detectron2.config import CfgNode as CN

__all__ = ["add_sbrcnn_config", "check_choice"]


def check_choice(key: str, value, choices: tuple):
    """
    Raise a ValueError that names the config `key` and its allowed `choices` unless `value` is
    one of them.

    Returns:
        `value`.
    """
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{key}={value!r}: use one of {allowed}")
    return value


def add_sbrcnn_config(cfg):
    """
    Add the config keys of SBR-CNN (Rossi et al., JVCIR 2022): the R3-CNN loops, the FCC box
    head, the Mask IoU branch and GRoIE. Defaults follow the paper and, where it is silent, the
    authors' code; `projects/SBRCNN/README.md` lists each choice.
    """
    cfg.MODEL.SBRCNN = CN()
    # R3-CNN (section 3.1, used by ROI_HEADS.NAME "R3ROIHeads").
    # IoU threshold u^t of each training loop (eq. 1); their number is L_t.
    cfg.MODEL.SBRCNN.LOOP_IOUS = [0.5, 0.6, 0.7]
    # Loss weight alpha_t of each training loop (eq. 6); one per entry of LOOP_IOUS.
    cfg.MODEL.SBRCNN.LOOP_WEIGHTS = [1.0, 0.75, 0.5]
    # L_e, the loops run at inference (Table 4); 0: as many as training loops (L_t).
    cfg.MODEL.SBRCNN.TEST_LOOPS = 0
    # Which of the H box/mask head pairs each loop uses (Table 5's "Alt."): one letter per loop,
    # "a" the first pair, "b" the second...; H is the number of letters used. Loops beyond the
    # string (training or test) use its last letter, so "a" is one pair for every loop.
    cfg.MODEL.SBRCNN.ALTERNATION = "a"
    # The mask head's internal loop (eq. 3) in training: loop t runs it t times. False: once
    # per loop, as the authors' R3-CNN configs train (inference always runs L_e iterations).
    cfg.MODEL.SBRCNN.MASK_LOOP_IN_TRAINING = True
    # Test-time class scores: "logits" (the authors: the loops' logits averaged, then softmax)
    # or "probs" (Detectron2's cascade: the loops' softmax probabilities averaged).
    cfg.MODEL.SBRCNN.TEST_SCORE_AVERAGE = "logits"

    # FCC box head (section 3.2, Fig. 4, ROI_BOX_HEAD.NAME "FCCBoxHead"): the two shared FC
    # layers become L2C, two convolutions.
    cfg.MODEL.SBRCNN.FCC = CN()
    # L2C kernels: "7x7" (Fig. 4b) or "7x3_3x7" (Fig. 4c: each conv becomes a 7x3 and a 3x7).
    cfg.MODEL.SBRCNN.FCC.L2C = "7x7"
    # Output channels of the two L2C convs (256 -> 128 -> 64 in the paper).
    cfg.MODEL.SBRCNN.FCC.CONV_DIMS = [128, 64]
    # Channels and padding of "7x3_3x7": "paper" (Table 1: 7x3 keeps the channels, 3x7
    # reduces them; padding keeps 7x7) or "authors" (their code: 7x3 reduces, 3x7 keeps; 7x3
    # with padding 1 gives 3x7, 3x7 with padding 3 gives 7x7 back).
    cfg.MODEL.SBRCNN.FCC.RECT_LAYOUT = "paper"
    # Non-local block before (NL_b, Fig. 4d-e) and after (NL_a, Table 6) L2C.
    cfg.MODEL.SBRCNN.FCC.NL_BEFORE = False
    cfg.MODEL.SBRCNN.FCC.NL_AFTER = False
    # Kernel of the non-local block's convs: 7 (the paper's block) or 1 (Wang et al. 2018).
    cfg.MODEL.SBRCNN.FCC.NL_KERNEL = 7

    # Mask IoU branch (Mask Scoring R-CNN; section 3.2, Table 7) of R3ROIHeads.
    cfg.MODEL.SBRCNN.MASKIOU = CN()
    cfg.MODEL.SBRCNN.MASKIOU.ENABLED = False
    # Convs on [RoI features, max-pooled mask]: NUM_CONV 3x3 convs, the last with stride 2.
    cfg.MODEL.SBRCNN.MASKIOU.NUM_CONV = 4
    cfg.MODEL.SBRCNN.MASKIOU.CONV_DIM = 256
    # "": the original two FC layers of FC_DIM; "7x7" or "7x3_3x7": L2C replaces them.
    cfg.MODEL.SBRCNN.MASKIOU.L2C = ""
    cfg.MODEL.SBRCNN.MASKIOU.FC_DIM = 1024
    cfg.MODEL.SBRCNN.MASKIOU.L2C_CONV_DIMS = [128, 64]
    cfg.MODEL.SBRCNN.MASKIOU.RECT_LAYOUT = "paper"
    cfg.MODEL.SBRCNN.MASKIOU.NL_BEFORE = False
    cfg.MODEL.SBRCNN.MASKIOU.NL_AFTER = False
    cfg.MODEL.SBRCNN.MASKIOU.NL_KERNEL = 7
    # Weight of the MSE loss on the mask IoU (last training loop only, not weighted by alpha).
    cfg.MODEL.SBRCNN.MASKIOU.LOSS_WEIGHT = 0.5
    # A predicted mask pixel counts for the IoU target where its logit exceeds this: 0.5 is the
    # authors' (Mask Scoring R-CNN's) value, 0.0 is probability 0.5.
    cfg.MODEL.SBRCNN.MASKIOU.TARGET_LOGIT_THRESH = 0.5

    # GRoIE (section 3.3, Fig. 5) in place of ROIPooler, in R3ROIHeads and GRoIEROIHeads.
    cfg.MODEL.SBRCNN.GROIE = CN()
    cfg.MODEL.SBRCNN.GROIE.BOX_ON = False
    cfg.MODEL.SBRCNN.GROIE.MASK_ON = False
    # Pre-processing of each level's pooled RoI (shared by the levels) and post-processing of
    # their sum: "conv3x3", "conv5x5", "conv7x7", "conv7x3_3x7", "nonlocal1x1",
    # "nonlocal7x7" or "none". Best (Table 10): conv7x7 before, nonlocal7x7 after.
    cfg.MODEL.SBRCNN.GROIE.PRE = "conv7x7"
    cfg.MODEL.SBRCNN.GROIE.POST = "nonlocal7x7"
