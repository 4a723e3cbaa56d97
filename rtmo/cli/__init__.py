"""The `rtmo` command. Thin: parses arguments and calls the library; every argparse parser of the package
lives in this package, one module a subcommand.

Each subcommand module has an `add_<name>(subparsers)` that builds its parser and sets `func` (taking the
parsed args, returning an exit code); `COMMANDS` lists them. Known failures (missing source, bad model name,
unreadable file, bad option) print one line on stderr and exit with 2, never a traceback
(set RTMO_DEBUG=1 to see one). The modules import the library inside their functions, so `rtmo --help`
stays fast and a missing optional extra only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from .benchmark import add_benchmark
from .common import EXIT_USAGE, missing_extra_message, user_errors
from .demo import add_demo
from .export import add_export
from .models import add_models
from .predict import add_predict
from .serve import add_serve
from .train import add_train
from .val import add_val

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: list[Callable[[Any], argparse.ArgumentParser]] = [add_predict, add_models, add_val, add_train,
                                                            add_export, add_benchmark, add_serve, add_demo]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="rtmo", description="RTMO real-time multi-person pose estimation.")
    parser.add_argument("--version", action="version", version=f"rtmo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        try:
            add(sub)
        except ImportError as e:  # an optional part (e.g. export without onnx) must not break the rest
            print(f"rtmo: note: command from {add.__name__} unavailable ({e})", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("rtmo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into messages
        if os.environ.get("RTMO_DEBUG"):
            raise
        hint = missing_extra_message(e) if isinstance(e, ImportError) else None
        if hint is not None:  # an optional dependency: say which extra installs it
            print(f"rtmo: error: {args.command}: {hint}", file=sys.stderr)
            return EXIT_USAGE
        # ValueError covers bad values handed down to the library (CheckpointError, ImageError, ... derive
        # from it); anything else is a bug and says its type.
        known = isinstance(e, (ValueError, *user_errors()))
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, however the message was built
        if known:
            print(f"rtmo: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        print(f"rtmo: error: {type(e).__name__}: {msg} (set RTMO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
