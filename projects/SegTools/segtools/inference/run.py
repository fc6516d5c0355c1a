"""
A prediction run over images, folders and videos, written to one output folder: the run's files
(summary.json, results.json, psd/all/) apart from each image's (images/<name>.png and .json,
psd/images/<name>/), so that no input's name collides with another output. The layout in full:
scripts/predict.py.
"""

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from tqdm import tqdm

from ..analysis import (
    DEFAULT_BOOTSTRAP,
    BootstrapOptions,
    ParticleTable,
    SizeCorrection,
    measure_instances,
    write_psd_report,
)
from ..atomic_io import atomic_write_image, atomic_write_json
from ..checkpoint import load_weights
from ..cli import UsageError
from .detections import detections_from_instances
from .inputs import Unreadable, read_frames
from .tiled import TiledPredictor
from .visualize import draw_detections

__all__ = ["PsdOptions", "TilingOptions", "build_predictor", "predict_to_folder"]

IMAGES_FOLDER = "images"
RUN_PSD_FOLDER = os.path.join("psd", "all")
IMAGES_PSD_FOLDER = os.path.join("psd", "images")


@dataclass(frozen=True)
class PsdOptions:
    """Particle-size reports of a run: the images' scale and how particles are measured."""

    mm_per_px: float
    measure: str = "ecd"
    edge_mode: str = "include"
    bootstrap: BootstrapOptions | None = DEFAULT_BOOTSTRAP
    # Size only the particles the model estimates at least this visible (None: all).
    min_visibility: float | None = None
    # The model's per-size detection efficiency, from its count calibration (None: unweighted).
    size_correction: SizeCorrection | None = None


@dataclass(frozen=True)
class TilingOptions:
    """Window-by-window prediction: the arguments of :class:`TiledPredictor`."""

    tile: int
    overlap: int
    merge_iou: float = 0.5
    max_per_window: int = 300
    max_per_photo: int = 200_000


def build_predictor(cfg, allow_partial_weights: bool = False, tiling: TilingOptions | None = None):
    """
    Args:
        cfg: a frozen config with MODEL.WEIGHTS and MODEL.DEVICE set.
        allow_partial_weights: load the parameters of MODEL.WEIGHTS that match the model and
            leave the others as initialised, instead of refusing a checkpoint that fits in part.
        tiling: predict window by window (:class:`TiledPredictor`) with these options.

    Returns:
        (image (H, W, 3) BGR -> list[Detection], metadata of the model's classes).

    Raises:
        CheckpointError: naming MODEL.WEIGHTS, if it is not a checkpoint (of this model, unless
            `allow_partial_weights`).
    """
    unloaded = cfg.clone()
    unloaded.defrost()
    # DefaultPredictor would load MODEL.WEIGHTS whatever model they belong to.
    unloaded.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(unloaded)
    load_weights(predictor.model, cfg.MODEL.WEIGHTS, allow_partial=allow_partial_weights)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if tiling is not None:
        return TiledPredictor(predictor, **asdict(tiling)), metadata

    def predict(image):
        return detections_from_instances(predictor(image)["instances"].to("cpu"))

    return predict, metadata


@dataclass
class _Record:
    """What a run has done so far; summary.json tells it whether or not the run completes."""

    settings: dict
    skipped: list
    remaining: list  # the input files not predicted in full yet
    images: list = field(default_factory=list)
    results: list = field(default_factory=list)
    particle_tables: list = field(default_factory=list)
    doing: str = "starting"

    def summary(self, failure: dict | None) -> dict:
        return {
            **self.settings,
            "complete": failure is None,
            "failure": failure,
            "images_predicted": len(self.images),
            "instances": len(self.results),
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "not_predicted": self.remaining,
            "images": self.images,
        }


def predict_to_folder(
    predict: Callable,
    metadata,
    files: list,
    skipped: list,
    output: str,
    every_nth_frame: int = 1,
    psd: PsdOptions | None = None,
    settings: dict | None = None,
) -> dict:
    """
    Predict every frame of `files` and write the run into `output` (see the module docstring).

    Args:
        predict, metadata: from :func:`build_predictor`.
        files: image and video paths; `skipped`: inputs already found unusable (Unreadable),
            extended with the frames that cannot be read.
        output: a new or empty folder.
        settings: recorded in summary.json.

    Returns:
        The summary written to summary.json.

    Raises:
        Whatever stops the run (a full disk, Ctrl-C, a bug), once summary.json and results.json
        of what was done, naming what failed, are written (if the disk still takes them). Every
        file is written whole or not at all.
    """
    # Before predicting: an output folder that cannot be written fails here.
    os.makedirs(os.path.join(output, IMAGES_FOLDER), exist_ok=True)
    record = _Record(dict(settings or {}), skipped, remaining=list(files))
    try:
        _predict_files(predict, metadata, files, output, every_nth_frame, psd, record)
        if psd is not None and record.images:
            record.doing = f"the run's particle-size report {RUN_PSD_FOLDER}"
            write_psd_report(
                ParticleTable.concatenate(record.particle_tables, psd.mm_per_px),
                os.path.join(output, RUN_PSD_FOLDER),
                measure=psd.measure,
                edge_mode=psd.edge_mode,
                title=f"all {len(record.images)} image(s)",
                bootstrap=psd.bootstrap,
                size_correction=psd.size_correction,
            )
    except BaseException as error:
        _write_failed_run(error, output, record)
        raise
    return _write_run_files(output, record, failure=None)


def _write_failed_run(error: BaseException, output: str, record: _Record) -> None:
    """Write the run files of what was done before `error`, naming it (best effort)."""
    message = " ".join(str(error).split())
    name = type(error).__name__
    failure = {"at": record.doing, "error": f"{name}: {message}" if message else name}
    # The error that stopped the run is the one reported; the same full disk refusing the
    # summary too would only repeat it.
    with contextlib.suppress(OSError):
        _write_run_files(output, record, failure)


def _write_run_files(output: str, record: _Record, failure: dict | None) -> dict:
    atomic_write_json(os.path.join(output, "results.json"), record.results)
    summary = record.summary(failure)
    atomic_write_json(os.path.join(output, "summary.json"), summary, indent=2)
    return summary


def _predict_files(predict, metadata, files, output, every_nth_frame, psd, record) -> None:
    """Predict and write every frame of `files`, keeping `record` up to date."""
    used_names = set()
    for index, path in enumerate(tqdm(files, desc="predicting", unit="file")):
        record.remaining = files[index:]
        for frame in read_frames(path, used_names, every_nth_frame):
            if isinstance(frame, Unreadable):
                tqdm.write(f"skipped {frame.source}: {frame.reason}", file=sys.stderr)
                record.skipped.append(frame)
                continue
            video_frame = "" if frame.frame_index is None else f" frame {frame.frame_index}"
            record.doing = f"predicting {frame.source}{video_frame}"
            image_id = len(record.images) + 1
            detections, results, entry = _predict_frame(predict, frame, image_id, output, metadata)
            if psd is not None:
                record.particle_tables.append(_write_image_psd(detections, entry, output, psd))
            record.results.extend(results)
            record.images.append(entry)
    record.remaining = []


def _predict_frame(predict, frame, image_id: int, output: str, metadata) -> tuple:
    """
    Predict one frame and write its picture and COCO results.

    Returns:
        (list[Detection], its COCO results, its summary entry).
    """
    height, width = frame.image.shape[:2]
    start = time.perf_counter()
    detections = predict(frame.image)
    seconds = time.perf_counter() - start
    results = [d.to_coco_result(image_id, height, width) for d in detections]
    atomic_write_json(os.path.join(output, IMAGES_FOLDER, f"{frame.name}.json"), results)
    picture = draw_detections(frame.image, detections, metadata)
    atomic_write_image(os.path.join(output, IMAGES_FOLDER, f"{frame.name}.png"), picture)
    entry = {
        "id": image_id,
        "name": frame.name,
        "source": frame.source,
        "frame_index": frame.frame_index,
        "height": height,
        "width": width,
        "instances": len(results),
        "seconds": round(seconds, 4),
    }
    if isinstance(predict, TiledPredictor):
        # Detections beyond the tiled predictor's caps, left out of this image's results.
        entry["dropped_by_caps"] = asdict(predict.last_dropped)
    return detections, results, entry


def _estimated_whole(detections: list, min_visibility: float | None) -> list:
    if min_visibility is None:
        return detections
    if any(d.visibility is None for d in detections):
        raise UsageError(
            "--min-visibility: the model estimates no visibility (train LosNet with "
            "MODEL.LOSNET.VISIBILITY.ENABLED True)"
        )
    return [d for d in detections if d.visibility >= min_visibility]


def _write_image_psd(detections, entry: dict, output: str, psd: PsdOptions) -> ParticleTable:
    detections = _estimated_whole(detections, psd.min_visibility)
    table = measure_instances(
        detections,
        (entry["height"], entry["width"]),
        psd.mm_per_px,
        image_id=entry["id"],
        scores=[d.score for d in detections],
    )
    write_psd_report(
        table,
        os.path.join(output, IMAGES_PSD_FOLDER, entry["name"]),
        measure=psd.measure,
        edge_mode=psd.edge_mode,
        title=entry["name"],
        bootstrap=psd.bootstrap,
        size_correction=psd.size_correction,
    )
    return table
