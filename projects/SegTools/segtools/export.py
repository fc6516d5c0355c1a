"""
Export a Detectron2 model to TorchScript or ONNX by tracing (Detectron2's TracingAdapter), and
check that the exported model gives the PyTorch model's outputs.

The exported graph takes one image tensor (3, H, W), already resized to the export size and in
the config's channel order (INPUT.FORMAT), as float32 0-255; normalisation is inside the graph. It
returns the flattened Instances fields in the order of :func:`output_names`.
"""

import io
import json
import os
import statistics
from collections.abc import Callable

import cv2
import numpy as np
import torch
from detectron2.export import TracingAdapter
from detectron2.export.flatten import flatten_to_tuple
from detectron2.modeling import build_model
from scipy.optimize import linear_sum_assignment

from .atomic_io import atomic_directory, atomic_write_json, check_new_or_empty_folder
from .batch_norm import fold_batch_norms
from .checkpoint import load_weights
from .cli import UsageError
from .config import get_project_cfg
from .data.images import read_image
from .data.synthetic_ore import render_synthetic_ore_image
from .latency import measure_latency_ms

__all__ = [
    "EXPORT_FORMATS",
    "MIN_INPUT_SIZE",
    "TOLERANCES",
    "compare_outputs",
    "export_and_check",
    "export_from_config",
    "export_model",
    "exported_file",
    "load_exported",
    "output_names",
    "read_export_metadata",
    "reference_outputs",
    "sample_inputs",
]

EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
# The smallest side of an export's input: a stride-32 feature map is then at least 1 x 1.
MIN_INPUT_SIZE = 32
# ONNX opset of the export: the first with every op the models use (TopK with a tensor k, NMS).
ONNX_OPSET = 17
# Exported outputs must equal PyTorch's within these: box corners (pixels) and scores by the
# largest absolute difference, classes and mask pixels by the fraction of differing elements.
# Folding the BatchNorms and the runtime's kernels reorder float sums: boxes move by thousandths
# of a pixel and a few mask pixels whose probability is 0.5 may flip.
TOLERANCES = {
    "pred_boxes": 0.05,
    "scores": 1e-3,
    "pred_classes": 0.0,
    "pred_masks": 1e-3,
    "image_size": 0.0,
}
_LATENCY_RUNS = 5


def _adapter(model: torch.nn.Module, image: torch.Tensor) -> TracingAdapter:
    # A new module is in training mode, and the ONNX exporter applies the wrapper's mode to the
    # model inside it.
    return TracingAdapter(model, [{"image": image}]).eval()


def output_names(model: torch.nn.Module, image: torch.Tensor) -> list:
    """
    Names of the flattened outputs: the Instances fields in sorted order, then "image_size", as
    Detectron2's flattening lays them out.
    """
    with torch.no_grad():
        outputs = model([{"image": image}])
    fields = [*sorted(outputs[0]["instances"].get_fields()), "image_size"]
    flattened, _ = flatten_to_tuple(outputs)
    if len(flattened) != len(fields):
        raise ValueError(f"cannot name the {len(flattened)} flattened outputs from {fields}")
    return fields


def export_model(
    model: torch.nn.Module, image: torch.Tensor, export_format: str, path: str
) -> None:
    """
    Trace `model` (in eval mode) on `image` and save it.

    Args:
        image: (3, H, W) float32 example input; the exported model takes this size.
        export_format: "torchscript" or "onnx".

    Raises:
        OSError: naming `path`, if it cannot be written (e.g. the disk is full).
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format {export_format!r}: choose from {list(EXPORT_FORMATS)}")
    adapter = _adapter(model, image)
    # Serialised in memory first: TorchScript's writer aborts the process on a full disk.
    buffer = io.BytesIO()
    with torch.no_grad():
        if export_format == "torchscript":
            torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), buffer)
        else:
            torch.onnx.export(
                adapter,
                (image,),
                buffer,
                opset_version=ONNX_OPSET,
                dynamo=False,
                input_names=["image"],
                output_names=output_names(model, image),
            )
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        # A failed write or close names no file.
        raise OSError(e.errno, e.strerror, path) from None


def load_exported(path: str) -> Callable:
    """
    Returns:
        A function from a (3, H, W) float32 image tensor to the tuple of output tensors.
    """
    if path.endswith(".ts"):
        module = torch.jit.load(path, map_location="cpu")

        def run_torchscript(image):
            with torch.no_grad():
                return tuple(module(image))

        return run_torchscript
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(image):
            outputs = session.run(None, {input_name: image.numpy()})
            return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)

        return run_onnx
    raise ValueError(f"{path}: expected a .ts (TorchScript) or .onnx file")


def reference_outputs(model: torch.nn.Module, image: torch.Tensor) -> tuple:
    """The PyTorch model's outputs, flattened as the exported model returns them."""
    with torch.no_grad():
        return _adapter(model, image)(image)


def _match_detections(names: list, expected: tuple, actual: tuple) -> tuple:
    """
    `actual` with its detections reordered to pair one to one with `expected` (least total L1
    distance between boxes): detections whose scores differ by a float rounding may come out of
    two runtimes in another order.
    """
    boxes = names.index("pred_boxes")
    want, got = expected[boxes], actual[boxes]
    if want.shape != got.shape or want.shape[0] < 2:
        return actual
    cost = torch.cdist(want.double(), got.double(), p=1).numpy()
    _, order = linear_sum_assignment(cost)
    order = torch.as_tensor(order)
    count = want.shape[0]
    return tuple(
        tensor[order]
        if tensor.dim() and tensor.shape[0] == count and name != "image_size"
        else tensor
        for name, tensor in zip(names, actual, strict=True)
    )


def compare_outputs(names: list, expected: tuple, actual: tuple) -> dict:
    """
    Compare the exported model's outputs with PyTorch's, after pairing their detections by box.

    Returns:
        Per output name: {"shape_equal": bool, "max_abs_diff": float} for floating outputs,
        {"shape_equal": bool, "mismatch_fraction": float} for integer and boolean ones.
    """
    actual = _match_detections(names, expected, actual)
    report = {}
    for name, want, got in zip(names, expected, actual, strict=True):
        got = got.to(want.dtype)
        entry = {"shape_equal": tuple(want.shape) == tuple(got.shape)}
        key = "max_abs_diff" if want.is_floating_point() else "mismatch_fraction"
        if entry["shape_equal"]:
            if want.numel() == 0:
                entry[key] = 0.0
            elif want.is_floating_point():
                entry[key] = float((want - got).abs().max())
            else:
                entry[key] = float((want != got).float().mean())
        report[name] = entry
    return report


def exported_file(output_dir: str, export_format: str) -> str:
    return os.path.join(output_dir, EXPORT_FORMATS[export_format])


def read_export_metadata(folder: str) -> dict:
    """
    The export.json of an export folder.

    Raises:
        UsageError: naming the folder, if it has no readable export.json.
    """
    try:
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder}: no readable export.json ({e})") from None


def sample_inputs(paths, size, input_format: str) -> list:
    """
    (3, H, W) float32 tensors of the images at `paths` (three synthetic ore images if none),
    resized to `size` = (H, W), in the model's channel order `input_format` ("BGR" or "RGB").

    Raises:
        ImageReadError: naming the image, if one cannot be read whole.
    """
    if paths:
        images = [read_image(path, input_format) for path in paths]
    else:
        synthetic = [render_synthetic_ore_image(seed=7, index=k).image for k in range(3)]
        images = [image[:, :, ::-1] if input_format == "RGB" else image for image in synthetic]
    return [
        torch.as_tensor(
            cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            .transpose(2, 0, 1)
            .astype("float32")
        )
        for image in images
    ]


def _within_tolerance(report: dict) -> bool:
    return all(
        entry["shape_equal"]
        and entry.get("max_abs_diff", entry.get("mismatch_fraction", 0.0)) <= TOLERANCES[name]
        for name, entry in report.items()
    )


def _median_latency_ms(run, image) -> float:
    return statistics.median(measure_latency_ms(lambda: run(image), _LATENCY_RUNS))


def _parity(model, folded, exported: Callable, names: list, images: list, export_format: str):
    """The parity report of the exported model against the unfolded PyTorch `model`."""
    reports = [
        compare_outputs(names, reference_outputs(model, image), exported(image)) for image in images
    ]
    return {
        "tolerances": TOLERANCES,
        "passed": all(_within_tolerance(report) for report in reports),
        "images": reports,
        "latency": {
            "pytorch_ms": _median_latency_ms(lambda x: reference_outputs(model, x), images[0]),
            "pytorch_folded_ms": _median_latency_ms(
                lambda x: reference_outputs(folded, x), images[0]
            ),
            f"{export_format}_ms": _median_latency_ms(exported, images[0]),
            "threads": torch.get_num_threads(),
        },
    }


def export_and_check(
    cfg,
    config_file: str,
    weights: str,
    export_format: str,
    output_dir: str,
    size,
    samples=(),
    allow_partial: bool = False,
) -> dict:
    """
    Export the model of `cfg` with `weights`, BatchNorms folded, into `output_dir` (model file,
    export.json, parity.json), and compare its outputs with the unfolded PyTorch model's on the
    sample images. The files are written into a staging folder that becomes `output_dir` when
    all are written: a failure or a signal leaves nothing behind.

    Args:
        cfg: the model's config (on the CPU), read from `config_file`.
        size: (H, W) export input size.
        samples: paths of the parity-check images; default: three synthetic ore images.
        allow_partial: load the weights that match the model instead of refusing a checkpoint
            of another model (see :func:`segtools.checkpoint.load_weights`).

    Returns:
        The parity report: {"tolerances", "passed", "images": per-image comparisons,
        "latency": median ms of PyTorch, folded PyTorch and the exported model}.
    """
    with atomic_directory(output_dir) as staging:
        images = sample_inputs(samples, size, cfg.INPUT.FORMAT)
        model = build_model(cfg).eval()
        load_weights(model, weights, allow_partial)
        folded = fold_batch_norms(model)
        path = exported_file(staging, export_format)
        export_model(folded, images[0], export_format, path)
        metadata = {
            "format": export_format,
            "config_file": config_file,
            "weights": weights,
            "input_size": list(size),
            "input_format": cfg.INPUT.FORMAT,
            "outputs": output_names(model, images[0]),
        }
        atomic_write_json(os.path.join(staging, "export.json"), metadata, indent=2)
        exported = load_exported(path)
        parity = _parity(model, folded, exported, metadata["outputs"], images, export_format)
        atomic_write_json(os.path.join(staging, "parity.json"), parity, indent=2)
    return parity


def export_from_config(
    config_file: str,
    weights: str,
    export_format: str,
    output_dir: str,
    size=None,
    samples=(),
    opts=(),
    allow_partial: bool = False,
) -> dict:
    """
    :func:`export_and_check` of the model of `config_file` with KEY VALUE `opts`, on the CPU, as
    scripts/export.py runs it.

    Args:
        size: (H, W); default: the config's INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST.

    Raises:
        FileExistsError: if `output_dir` is neither new nor empty.
        UsageError: if the default size is below MIN_INPUT_SIZE.
        ConfigValueError, CheckpointError, ImageReadError: naming the key, weights or image.
    """
    check_new_or_empty_folder(output_dir, "--output")
    cfg = get_project_cfg(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"
    if size is None:
        size = [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST]
        if min(size) < MIN_INPUT_SIZE:
            raise UsageError(
                f"INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST = {size[0]} x {size[1]}: an export "
                f"needs sides of at least {MIN_INPUT_SIZE}; give --input-size H W"
            )
    return export_and_check(
        cfg, config_file, weights, export_format, output_dir, size, samples, allow_partial
    )
