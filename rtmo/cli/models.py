"""`rtmo models [-m NAME]`: the registry of official checkpoints, or one entry in detail."""

from __future__ import annotations

import argparse
from typing import Any

from .common import CLIError, add_model_option


def add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the official checkpoints (name, input, keypoints, AP, cached)",
                       description="The registry of official checkpoints; with -m, one model's details "
                                   "(file, download address, cache path, training recipe).")
    add_model_option(p, default=None, help="show this registry model only")
    p.set_defaults(func=run_models)
    return p


def recipe_for_model(name: str) -> str | None:
    """The official training recipe of a registry model (`rtmo-s-coco` -> rtmo-s_8xb32-600e_coco-640x640):
    the published checkpoint's file name without its `-<sha256 prefix>_<date>.pth` tail."""
    import re

    from ..hub.zoo import REGISTRY

    entry = REGISTRY.get(name)
    return None if entry is None else re.sub(r"-[0-9a-f]{8}_\d{8}\.pth$", "", entry.filename)


def run_models(args: argparse.Namespace) -> int:
    from ..hub.zoo import REGISTRY, cache_dir, cached_path

    if args.model is not None:
        e = REGISTRY.get(args.model)
        if e is None:
            raise CLIError(f"{args.model!r} is not a registry name; choose from {', '.join(REGISTRY)}")
        cached = cached_path(e.name)
        for key, value in (("name", e.name), ("input", "x".join(map(str, e.input_size))),
                           ("keypoints", e.num_keypoints), ("AP", f"{e.ap:.3f} ({e.eval_data})"),
                           ("file", e.filename), ("url", e.url),
                           ("cached", cached or f"no (would go to {cache_dir() / e.filename})"),
                           ("recipe", recipe_for_model(e.name))):
            print(f"{key + ':':11} {value}")
        return 0
    rows = [("name", "input", "kpts", "AP", "measured on", "cached")]
    for name, e in REGISTRY.items():
        w, h = e.input_size
        rows.append((name, f"{w}x{h}", str(e.num_keypoints), f"{e.ap * 100:.1f}", e.eval_data,
                     "yes" if cached_path(name) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(f"cache: {cache_dir()}  (set RTMO_CACHE_DIR to move it)")
    return 0

