"""
What every command-line tool of this repository shares: a user's mistake is one line on
stderr (exit code 2), never a traceback; SIGTERM stops a tool as SIGINT does, cleaning up its
staging folders; argument types check their range when the arguments are parsed; config
overrides are KEY VALUE pairs after the tool's own arguments (after `--` where an argument takes
several values).
"""

import argparse
import errno
import math
import os
import re
import signal
import sys
from collections.abc import Callable

from .analysis import BootstrapOptions
from .calibration import CountCalibrationError
from .checkpoint import CheckpointError
from .config import ConfigValueError
from .data.coco_input import CocoFormatError
from .data.images import ImageReadError
from .data.layout import DatasetLayoutError
from .training_curve import TrainingCurveError

__all__ = [
    "USER_ERRORS",
    "Terminated",
    "UsageError",
    "bounded_float",
    "bounded_int",
    "refuse_config_keys_as_paths",
    "run_tool",
    "split_overrides",
]


class UsageError(ValueError):
    """A mistake in what the user asked for; the message says what and how to fix it."""


class Terminated(KeyboardInterrupt):
    """The tool was asked to stop by a signal (SIGTERM); unwinds like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Mistakes of input, arguments or environment: reported in one line.
USER_ERRORS = (
    UsageError,
    CheckpointError,
    CocoFormatError,
    CountCalibrationError,
    ConfigValueError,
    DatasetLayoutError,
    ImageReadError,
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    TrainingCurveError,
)
# OSErrors of the machine rather than of the program: a full disk, a read-only file system.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        # The system's own errors: "path: reason", without Python's "[Errno N]".
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def run_tool(main: Callable, argv=None) -> int:
    """
    Run a tool's `main(argv)` and return its exit code: main's own, 2 after a user's mistake
    (printed as one line: "error: ..."), 128 + the signal number after SIGINT or SIGTERM (the
    `finally` blocks and atomic writers have then removed what was half written).
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return main(argv) or 0
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except USER_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def bounded_int(minimum: int, maximum: int | None = None) -> Callable:
    """An argparse type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    return parse


def bounded_float(minimum: float, maximum: float = math.inf, include_minimum=True) -> Callable:
    """An argparse type: a finite number in [minimum, maximum] (or (minimum, maximum])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < minimum or (not include_minimum and value == minimum)
        if not math.isfinite(value) or too_low or value > maximum:
            low = "[" if include_minimum else "("
            high = "]" if math.isfinite(maximum) else ")"
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {low}{minimum}, {maximum}{high}, got {text!r}"
            )
        return value

    return parse


def split_overrides(argv) -> tuple[list, list]:
    """(the tool's arguments, the KEY VALUE config overrides after the first `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


# A config key such as MODEL.ROI_HEADS.SCORE_THRESH_TEST.
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def refuse_config_keys_as_paths(paths, flag: str) -> None:
    """
    Raise UsageError if one of `paths` does not exist and reads as a config key: KEY VALUE
    overrides typed after an argument that takes several paths.
    """
    for path in paths:
        if _CONFIG_KEY.match(str(path)) and not os.path.exists(path):
            raise UsageError(
                f"{flag} {path}: that is a config key, not a file; give KEY VALUE overrides "
                "after --, e.g. ... -- MODEL.DEVICE cpu"
            )


def add_bootstrap_arguments(parser) -> None:
    """
    The particle-size reports' options shared by psd.py and predict.py: which particles are sized
    (--min-visibility) and the bootstrap (segtools.analysis.bootstrap).
    """
    parser.add_argument(
        "--min-visibility",
        type=bounded_float(0.0, 1.0),
        help="size only the particles estimated at least this visible, e.g. 0.9 (needs a LosNet "
        "with MODEL.LOSNET.VISIBILITY.ENABLED); the count keeps every particle",
    )
    parser.add_argument(
        "--bootstrap",
        type=bounded_int(0),
        default=1000,
        metavar="N",
        help="resamples of the D-values' and sieve curve's 95%% intervals (0: none; default "
        "1000); images are resampled, then particles within them",
    )
    parser.add_argument(
        "--bootstrap-seed", type=bounded_int(0), default=0, help="seed of the resampling"
    )


def bootstrap_options(args):
    """The :class:`BootstrapOptions` of arguments from :func:`add_bootstrap_arguments`."""
    if args.bootstrap == 0:
        return None
    if args.bootstrap < 2:
        raise UsageError(f"--bootstrap {args.bootstrap}: give 0 (no intervals) or at least 2")
    return BootstrapOptions(resamples=args.bootstrap, seed=args.bootstrap_seed)
