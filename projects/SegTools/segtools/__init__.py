"""
Tools shared by every project in this repository: dataset registration (ore, synthetic ore,
Cityscapes street subset), ore tiling, synthetic ore, evaluator choice, tiled inference and
particle-size analysis.

Importing the package registers its datasets in Detectron2's catalog.
"""

from . import data  # noqa: F401  (registers the datasets)
