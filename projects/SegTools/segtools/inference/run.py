"""
A prediction run over images, folders and videos, written to one output folder: per image its
picture and COCO results, for the run all results and a summary, and particle-size reports.
"""

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from tqdm import tqdm

from ..analysis import ParticleTable, measure_instances, write_psd_report
from ..atomic_io import atomic_write_image, atomic_write_json
from .detections import detections_from_instances
from .inputs import Unreadable, read_frames
from .tiled import TiledPredictor
from .visualize import draw_detections

__all__ = ["PsdOptions", "build_predictor", "predict_to_folder"]


@dataclass(frozen=True)
class PsdOptions:
    """Particle-size reports of a run: the images' scale and how particles are measured."""

    mm_per_px: float
    measure: str = "ecd"
    edge_mode: str = "include"


def build_predictor(cfg, tile: int | None = None, overlap: int = 0, merge_iou: float = 0.5):
    """
    Args:
        cfg: a frozen config with MODEL.WEIGHTS and MODEL.DEVICE set.
        tile, overlap, merge_iou: predict window by window (:class:`TiledPredictor`) if `tile`.

    Returns:
        (image (H, W, 3) BGR -> list[Detection], metadata of the model's classes).
    """
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if tile:
        return TiledPredictor(predictor, tile, overlap, merge_iou), metadata

    def predict(image):
        return detections_from_instances(predictor(image)["instances"].to("cpu"))

    return predict, metadata


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
    atomic_write_json(os.path.join(output, f"{frame.name}.json"), results)
    picture = draw_detections(frame.image, detections, metadata)
    atomic_write_image(os.path.join(output, f"{frame.name}.png"), picture)
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
    return detections, results, entry


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
    Predict every frame of `files` and write the run into `output` (see scripts/predict.py).

    Args:
        predict, metadata: from :func:`build_predictor`.
        files: image and video paths; `skipped`: inputs already found unusable (Unreadable),
            extended with the frames that cannot be read.
        settings: recorded in summary.json.

    Returns:
        The summary written to summary.json.
    """
    os.makedirs(output, exist_ok=True)
    images, all_results, particle_tables, used_names = [], [], [], set()
    for path in tqdm(files, desc="predicting", unit="file"):
        for frame in read_frames(path, used_names, every_nth_frame):
            if isinstance(frame, Unreadable):
                tqdm.write(f"skipped {frame.source}: {frame.reason}", file=sys.stderr)
                skipped.append(frame)
                continue
            image_id = len(images) + 1
            detections, results, entry = _predict_frame(predict, frame, image_id, output, metadata)
            all_results.extend(results)
            images.append(entry)
            if psd is not None:
                particle_tables.append(_write_image_psd(detections, entry, output, psd))

    if psd is not None and images:
        write_psd_report(
            ParticleTable.concatenate(particle_tables, psd.mm_per_px),
            os.path.join(output, "psd", "all"),
            measure=psd.measure,
            edge_mode=psd.edge_mode,
            title=f"all {len(images)} image(s)",
        )
    atomic_write_json(os.path.join(output, "results.json"), all_results)
    summary = {
        **(settings or {}),
        "images_predicted": len(images),
        "instances": len(all_results),
        "skipped": [{"source": s.source, "reason": s.reason} for s in skipped],
        "images": images,
    }
    atomic_write_json(os.path.join(output, "summary.json"), summary, indent=2)
    return summary


def _write_image_psd(detections, entry: dict, output: str, psd: PsdOptions) -> ParticleTable:
    table = measure_instances(
        detections,
        (entry["height"], entry["width"]),
        psd.mm_per_px,
        image_id=entry["id"],
        scores=[d.score for d in detections],
    )
    write_psd_report(
        table,
        os.path.join(output, "psd", entry["name"]),
        measure=psd.measure,
        edge_mode=psd.edge_mode,
        title=entry["name"],
    )
    return table
