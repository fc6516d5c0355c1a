"""Writers that never leave half a file behind: write to a temporary name, then rename."""

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator

import cv2
import numpy as np

__all__ = [
    "check_new_or_empty_folder",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_image",
    "atomic_directory",
    "strict_json_value",
]


def check_new_or_empty_folder(path: str, what: str = "output folder") -> None:
    """
    Refuse to write into `path` unless it does not exist or is an empty folder, so that old
    results are never mixed with new ones.

    Args:
        what: how the message names `path` (e.g. "--output").

    Raises:
        FileExistsError: naming `what` and `path`.
    """
    if os.path.isdir(path) and os.listdir(path):
        raise FileExistsError(f"{what} {path} is not empty: give a new or empty folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{what} {path} is a file: give a new or empty folder")


@contextlib.contextmanager
def _errors_name(path: str, staging: str, within: bool) -> Iterator[None]:
    """
    Re-raise a system error of the block (a full disk, a read-only folder) naming `path`, which
    the user knows, instead of the staging path, or naming it at all when the error names no
    file (a failed write).

    Args:
        staging: the prefix of the staging paths the block uses.
        within: `staging` is a folder standing for `path`: a file in it is named as the same
            file in `path`. Else every staging path stands for `path` itself.
    """
    try:
        yield
    except OSError as e:
        name = None if e.filename is None else str(e.filename)
        if e.errno is None or (name is not None and not name.startswith(staging)):
            raise
        shown = path + name[len(staging) :] if within and name else path
        raise OSError(e.errno, e.strerror, shown) from e


@contextlib.contextmanager
def _temporary_sibling(path: str, suffix: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = None
    try:
        with _errors_name(path, os.path.join(directory, ".tmp-"), within=False):
            os.makedirs(directory, exist_ok=True)
            fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
            os.close(fd)
            # mkstemp makes the file private (0600); the result is an ordinary, shareable file.
            os.chmod(tmp_path, 0o644)
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_text(path: str, text: str) -> None:
    with _temporary_sibling(path, ".txt") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def strict_json_value(obj):
    """`obj` with NaN and infinities as None: JSON has no NaN, and strict parsers reject it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict_json_value(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(value) for value in obj]
    return obj


def atomic_write_json(path: str, obj, indent=None) -> None:
    """Write `obj` as strict JSON (NaN and infinities become null, e.g. COCO's AP of no object)."""
    with _temporary_sibling(path, ".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(strict_json_value(obj), f, indent=indent, allow_nan=False)


def atomic_write_image(path: str, image: np.ndarray) -> None:
    """Write an image (H, W) or (H, W, 3) BGR uint8 array with OpenCV; the format follows `path`."""
    ext = os.path.splitext(path)[1]
    ok, encoded = cv2.imencode(ext, image)
    if not ok:
        raise OSError(f"OpenCV could not encode an image as '{ext}' for {path}")
    with _temporary_sibling(path, ext) as tmp, open(tmp, "wb") as f:
        f.write(encoded.tobytes())


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """
    Yield a temporary directory that becomes `path` when the block succeeds.

    If `path` appears meanwhile (another process finished first), the new copy is discarded and
    the existing one kept, so concurrent writers of the same deterministic content are safe.
    """
    parent = os.path.dirname(os.path.abspath(path))
    with _errors_name(path, os.path.join(parent, ".tmp-"), within=False):
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
        # mkdtemp makes the folder private (0700); the result is an ordinary, shareable folder.
        os.chmod(tmp, 0o755)
    try:
        with _errors_name(path, tmp, within=True):
            yield tmp
            try:
                os.rename(tmp, path)
            except OSError:
                if not os.path.isdir(path):
                    raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
