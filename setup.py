"""Packaging: every folder under projects/ is a package root, so a new paper needs no line here."""

from pathlib import Path

from setuptools import find_packages, setup

package_dir = {
    package: str(root / package.replace(".", "/"))
    for root in sorted(Path("projects").iterdir())
    if root.is_dir()
    for package in find_packages(str(root))
}
setup(packages=sorted(package_dir), package_dir=package_dir)
