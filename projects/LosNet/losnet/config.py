from detectron2.config import CfgNode as CN

__all__ = ["add_losnet_config", "check_choice"]


def check_choice(key: str, value, choices: tuple):
    """
    Raise a ValueError that names the config `key` and its allowed `choices` unless `value` is
    one of them (booleans and integers are told apart).

    Returns:
        `value`.
    """
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{key}={value!r}: use one of {allowed}")
    return value


def add_losnet_config(cfg):
    """
    Add the config keys of LosNet (Sun et al., Minerals 2022): its backbones, lightweight FPN,
    optimized detection head, mask branch and dynamic mask head. Defaults follow the paper;
    `projects/LosNet/README.md` lists where they differ from the authors' code and why.
    """
    # MobileNetV3-Small from torchvision, wrapped as a Detectron2 backbone.
    cfg.MODEL.MOBILENET_V3 = CN()
    # Stages to output: res2..res5 at strides 4, 8, 16, 32 (16, 24, 48, 576 channels).
    cfg.MODEL.MOBILENET_V3.OUT_FEATURES = ["res3", "res4", "res5"]
    # Optional ImageNet weights as a local torchvision state-dict file (e.g. the file that
    # torchvision's MobileNet_V3_Small_Weights.IMAGENET1K_V1 downloads); converted when the backbone
    # is built, never downloaded. Empty: random init (the authors train from scratch).
    cfg.MODEL.MOBILENET_V3.WEIGHTS = ""

    # Lightweight FPN (paper section 3.2).
    cfg.MODEL.LIGHTWEIGHT_FPN = CN()
    cfg.MODEL.LIGHTWEIGHT_FPN.IN_FEATURES = ["res3", "res4", "res5"]
    # Channels of the 1x1 laterals and of every output level (Table 2: 64, 96, 128, 256).
    cfg.MODEL.LIGHTWEIGHT_FPN.OUT_CHANNELS = 96
    # The 3x3 output convs of the original FPN (Table 2 "Convs."); the paper removes them.
    cfg.MODEL.LIGHTWEIGHT_FPN.OUTPUT_CONVS = False
    # Extra levels computed from P5: 0 (P3-P5, the paper) or 2 (P6, P7, Table 3).
    cfg.MODEL.LIGHTWEIGHT_FPN.TOP_LEVELS = 0
    # Norm of the laterals and output convs ("" = none, with bias).
    cfg.MODEL.LIGHTWEIGHT_FPN.NORM = ""

    cfg.MODEL.LOSNET = CN()
    cfg.MODEL.LOSNET.NUM_CLASSES = 1
    cfg.MODEL.LOSNET.IN_FEATURES = ["p3", "p4", "p5"]
    # Optimized detection head (section 3.3): convs per tower (Table 4) and their norm (Table 5).
    cfg.MODEL.LOSNET.NUM_CLS_CONVS = 2
    cfg.MODEL.LOSNET.NUM_BOX_CONVS = 2
    # "BN": one BatchNorm per pyramid level after each shared conv (the paper's "three BN layers",
    # foldable into the conv at inference); "GN": one GroupNorm(32) shared by the levels; "": none.
    cfg.MODEL.LOSNET.HEAD_NORM = "BN"
    # Where the controller (dynamic mask-head parameters) sits: "own_tower" (paper: same
    # architecture as the classification branch) or "box_tower" (authors' code: one conv on the
    # box tower).
    cfg.MODEL.LOSNET.CONTROLLER_INPUT = "own_tower"
    # Box quality branch: "centerness" (paper eq. 1) or "iou" (authors' code: BCE against the IoU
    # of the predicted box with its ground truth). Either one ranks detections by eq. 2.
    cfg.MODEL.LOSNET.BOX_QUALITY = "centerness"
    # Multiply each level's box regression (in strides, before the ReLU that keeps distances
    # >= 0) by a learnable scalar, initialised to 1: False (paper silent) or True (authors' code,
    # FCOS's per-level `Scale`).
    cfg.MODEL.LOSNET.BOX_REG_SCALE = False
    cfg.MODEL.LOSNET.PRIOR_PROB = 0.01
    # FCOS centre sampling: a location is positive only within CENTER_SAMPLING_RADIUS strides of
    # CENTER_SAMPLING_AROUND, "box_center" (FCOS, Detectron2) or "mask_centroid" (the mask's
    # centre of mass: CondInst, the authors' code); always inside the box.
    cfg.MODEL.LOSNET.CENTER_SAMPLING_RADIUS = 1.5
    cfg.MODEL.LOSNET.CENTER_SAMPLING_AROUND = "box_center"
    cfg.MODEL.LOSNET.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.LOSNET.FOCAL_LOSS_GAMMA = 2.0
    # lambda of eq. 3.
    cfg.MODEL.LOSNET.MASK_LOSS_WEIGHT = 1.0
    # Cap on the positive locations that train the mask head, per image; each ground-truth
    # instance keeps max(cap // #instances, 1) of its positives, the highest-scoring ones.
    # A negative value keeps every positive.
    cfg.MODEL.LOSNET.MASK_POSITIVES_PER_IMAGE = 64
    # When that quota applies: "over_cap" (only to an image with more positives than the cap;
    # with more instances than the cap, a random `cap` of their best positives) or "always"
    # (authors' code, CondInst's TOPK_PROPOSALS_PER_IM: every image, never trimmed further).
    cfg.MODEL.LOSNET.MASK_POSITIVES_QUOTA = "over_cap"
    # Inference: candidates scored by sqrt(cls x quality) (eq. 2) above this threshold, the
    # top-k per level, class-aware NMS; TEST.DETECTIONS_PER_IMAGE caps the final count.
    cfg.MODEL.LOSNET.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.LOSNET.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.LOSNET.NMS_THRESH_TEST = 0.6
    # Where each mask is pasted at output resolution: "box" (its box widened by one mask cell,
    # as Detectron2 pastes Mask R-CNN's) or "image" (the whole output: R x H x W samples).
    cfg.MODEL.LOSNET.MASK_PASTE_REGION = "box"
    # Per-detection visibility (not in the paper): a 3x3 conv on the box tower predicts the
    # visible fraction of the particle at each location, trained with BCE at the positive
    # locations against the annotations' "visible_fraction" where they have one. Particle-size
    # analysis can then size from the particles estimated nearly whole (psd --min-visibility).
    cfg.MODEL.LOSNET.VISIBILITY = CN()
    cfg.MODEL.LOSNET.VISIBILITY.ENABLED = False
    cfg.MODEL.LOSNET.VISIBILITY.LOSS_WEIGHT = 1.0

    # Mask branch: the levels are brought to a common width (LEVEL_CONVS), P4 and P5 upsampled
    # and added to P3, then NUM_CONVS 3x3 convs and a 1x1 conv give OUT_CHANNELS mask features
    # at P3's stride.
    cfg.MODEL.LOSNET.MASK_BRANCH = CN()
    cfg.MODEL.LOSNET.MASK_BRANCH.IN_FEATURES = ["p3", "p4", "p5"]
    # "1x1_linear": P3 as it is, P4 and P5 through a 1x1 conv without activation (our reading
    # of the paper's Fig. 2); "3x3_norm_relu": every level through a 3x3 conv + NORM + ReLU to
    # CHANNELS (CondInst, the authors' code).
    cfg.MODEL.LOSNET.MASK_BRANCH.LEVEL_CONVS = "1x1_linear"
    cfg.MODEL.LOSNET.MASK_BRANCH.CHANNELS = 128
    cfg.MODEL.LOSNET.MASK_BRANCH.NUM_CONVS = 4
    cfg.MODEL.LOSNET.MASK_BRANCH.OUT_CHANNELS = 8
    cfg.MODEL.LOSNET.MASK_BRANCH.NORM = "BN"

    # Dynamic mask head: NUM_LAYERS 1x1 convs whose weights come from the controller.
    cfg.MODEL.LOSNET.MASK_HEAD = CN()
    cfg.MODEL.LOSNET.MASK_HEAD.NUM_LAYERS = 3
    cfg.MODEL.LOSNET.MASK_HEAD.CHANNELS = 8
    # Concatenate coordinates relative to the location, normalised by the level's size of
    # interest (8 x its stride: 64, 128, 256 for P3-P5).
    cfg.MODEL.LOSNET.MASK_HEAD.REL_COORDS = True
    # Output stride of the mask logits: 2 (paper: upsampled by 4 from stride 8) or 4 (authors'
    # code). Ground-truth masks are downsampled to the same stride for the dice loss.
    cfg.MODEL.LOSNET.MASK_HEAD.OUT_STRIDE = 2
