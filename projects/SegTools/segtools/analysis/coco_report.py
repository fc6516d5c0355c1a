"""
Particle-size reports of a COCO file, ground truth or predictions, written as one new folder:

    <out>/all/             the whole run: particles.csv, distribution.csv, summary.json, psd.png
    <out>/images/<name>/   the same for each image, plus overlay.png when the photos are given
    <out>/d_values.csv     the D-values of all these reports
    <out>/skipped.csv      the annotations left unmeasured (no pixel in the image), with why

<name> is the image's file name without extension, or image_<id> for predictions
(:attr:`CocoImageInstances.name`). Each particle is decoded over its box only.
"""

import os
from collections import Counter

import numpy as np

from ..atomic_io import (
    atomic_directory,
    atomic_write_image,
    atomic_write_text,
    check_new_or_empty_folder,
)
from ..data.coco_input import read_image
from .bootstrap import BootstrapOptions
from .coco_particles import (
    CocoImageInstances,
    iter_particle_tables,
    load_coco_instances,
    resolve_image_paths,
)
from .report import (
    DEFAULT_BOOTSTRAP,
    SKIPPED_CSV,
    d_values_csv,
    d_values_text,
    draw_size_overlay,
    skipped_csv,
    skipped_text,
    write_psd_report,
)
from .size_correction import SizeCorrection
from .size_measures import ParticleTable

__all__ = ["write_coco_psd_reports"]


def _size_overlay(
    photo_path: str, image: CocoImageInstances, table: ParticleTable, coco_json: str, **options
) -> np.ndarray:
    """(H, W, 3) BGR uint8 photo of `image` with its particles outlined by size."""
    where = f"image_id {image.image_id!r}"
    photo = read_image(photo_path, (image.height, image.width), coco_json, where)
    segmentations = dict(zip(image.annotation_ids, image.segmentations, strict=True))
    return draw_size_overlay(photo, table, segmentations, **options)


def write_coco_psd_reports(
    coco_json: str,
    out_dir: str,
    mm_per_px: float,
    image_dir: str | None = None,
    measure: str = "ecd",
    edge_mode: str = "include",
    score_thresh: float = 0.0,
    min_visibility: float | None = None,
    show_progress: bool = True,
    bootstrap: BootstrapOptions | None = DEFAULT_BOOTSTRAP,
    size_correction: SizeCorrection | None = None,
) -> str:
    """
    Measure every particle of `coco_json` and write its reports (see the module docstring).

    Args:
        coco_json: a COCO ground-truth file or results list (see :mod:`.coco_particles`).
        out_dir: the output folder, new or empty; it appears complete or not at all.
        mm_per_px: scale, > 0.
        image_dir: the photos (found as :func:`resolve_image_paths` says); when given, each
            image's report gets a size overlay (:func:`draw_size_overlay`).
        measure, edge_mode: as in :func:`size_distribution`.
        score_thresh: predictions scoring below it are left out.
        min_visibility: predictions estimated less visible are left out (see
            :func:`load_coco_instances`).
        show_progress: show a progress bar over the images.
        bootstrap: the reports' confidence intervals (None: none), as in
            :func:`write_psd_report`.
        size_correction: the predicting model's per-size factors, as in
            :func:`write_psd_report`.

    Returns:
        The D-values table of all reports, aligned for a terminal, and a line counting the
        annotations skipped by reason (if any), naming skipped.csv.

    Raises:
        FileExistsError: if `out_dir` is a file or a folder that is not empty.
        FileNotFoundError: if `coco_json`, `image_dir` or a photo is missing.
        CocoFormatError: if `coco_json` is not a COCO file (see :mod:`.coco_particles`), or a
            photo's size is not its own.
        ImageReadError: if a photo cannot be read whole.
    """
    check_new_or_empty_folder(out_dir)
    images = load_coco_instances(coco_json, score_thresh, min_visibility)
    photo_paths = resolve_image_paths(image_dir, images) if image_dir else {}
    options = {"measure": measure, "edge_mode": edge_mode}
    summaries, tables, skipped_rows = {}, [], []
    with atomic_directory(out_dir) as tmp_dir:
        for image, table, skipped in iter_particle_tables(images, mm_per_px, show_progress):
            report_dir = os.path.join(tmp_dir, "images", image.name)
            reasons = Counter(placement.value for _, placement in skipped)
            summaries[image.name] = write_psd_report(
                table,
                report_dir,
                title=image.name,
                skipped=reasons,
                bootstrap=bootstrap,
                size_correction=size_correction,
                **options,
            )
            skipped_rows += [(image.image_id, id_, placement.value) for id_, placement in skipped]
            if image.image_id in photo_paths:
                overlay = _size_overlay(
                    photo_paths[image.image_id], image, table, coco_json, **options
                )
                atomic_write_image(os.path.join(report_dir, "overlay.png"), overlay)
            tables.append(table)
        skipped = Counter(reason for *_, reason in skipped_rows)
        summaries["all"] = write_psd_report(
            ParticleTable.concatenate(tables, mm_per_px),
            os.path.join(tmp_dir, "all"),
            title=os.path.basename(coco_json),
            skipped=skipped,
            bootstrap=bootstrap,
            size_correction=size_correction,
            **options,
        )
        atomic_write_text(os.path.join(tmp_dir, "d_values.csv"), d_values_csv(summaries))
        atomic_write_text(os.path.join(tmp_dir, SKIPPED_CSV), skipped_csv(skipped_rows))
    if not skipped:
        return d_values_text(summaries)
    listed = os.path.join(out_dir, SKIPPED_CSV)
    return f"{d_values_text(summaries)}\n{skipped_text(skipped)} (listed in {listed})"
