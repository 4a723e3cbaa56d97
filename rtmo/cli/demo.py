"""`rtmo demo` (what `make demo` runs): the bundled sample photo through a model, drawn and as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_model_option


def add_demo(sub: Any) -> argparse.ArgumentParser:
    from ..demo import SAMPLE

    p = sub.add_parser("demo", help="poses on the bundled sample photo, drawn and as JSON",
                       description="Pose estimation on the photo shipped with the package (or --image); "
                                   "writes <stem>_pose.jpg and <stem>_pose.json.")
    add_model_option(p, help="registry name or checkpoint path")
    p.add_argument("--image", default=str(SAMPLE), help="photo to use (default: the packaged sample)")
    p.add_argument("-o", "--output", default="outputs/demo", metavar="DIR",
                   help="run folder (default: %(default)s); <stem>_pose.jpg and <stem>_pose.json")
    p.set_defaults(func=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    print("\n".join(demo(args.model, args.image, args.output)))
    return 0
