"""
Ore particle-size analysis from instance masks: size measures per particle, size distributions
(sieve curves) by count and by mass, Rosin-Rammler and Swebrec fits, and written reports.
"""

from .accuracy import DValueComparison, psd_accuracy
from .bootstrap import BootstrapOptions
from .coco_particles import (
    CocoImageInstances,
    iter_particle_tables,
    load_coco_instances,
    resolve_image_paths,
)
from .coco_report import write_coco_psd_reports
from .distribution import (
    EDGE_MODES,
    WEIGHTINGS,
    CumulativeCurve,
    SizeDistribution,
    edge_weights,
    particle_weights,
    sieve_series,
    size_distribution,
)
from .fits import FitResult, fit_models, fit_rosin_rammler, fit_swebrec
from .report import DEFAULT_BOOTSTRAP, draw_size_overlay, write_psd_report
from .size_correction import SizeCorrection, fit_size_correction
from .size_measures import (
    LENGTH_MEASURES,
    PARTICLE_DTYPE,
    ParticleMeasures,
    ParticleTable,
    check_mm_per_px,
    measure_instances,
    measure_particle,
)

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "BootstrapOptions",
    "EDGE_MODES",
    "LENGTH_MEASURES",
    "PARTICLE_DTYPE",
    "WEIGHTINGS",
    "CocoImageInstances",
    "CumulativeCurve",
    "DValueComparison",
    "FitResult",
    "ParticleMeasures",
    "ParticleTable",
    "SizeCorrection",
    "SizeDistribution",
    "check_mm_per_px",
    "draw_size_overlay",
    "edge_weights",
    "fit_models",
    "fit_rosin_rammler",
    "fit_size_correction",
    "fit_swebrec",
    "iter_particle_tables",
    "load_coco_instances",
    "measure_instances",
    "measure_particle",
    "particle_weights",
    "psd_accuracy",
    "resolve_image_paths",
    "sieve_series",
    "size_distribution",
    "write_coco_psd_reports",
    "write_psd_report",
]
