"""The demo (`make demo`, `rtmo demo`): pose estimation on the bundled sample photo, drawn result and JSON
written to disk."""

from __future__ import annotations

import time
from pathlib import Path

SAMPLE = Path(__file__).with_name("assets") / "sample.jpg"


def run_demo(model: str = "rtmo-s-coco", image: str | Path = SAMPLE, output: str | Path = "outputs/demo"
             ) -> list[str]:
    """Run `model` (registry name or checkpoint path) on `image`, write `<stem>_pose.jpg` (the poses drawn)
    and `<stem>_pose.json` into `output`; returns the lines that report it (people found, time, files)."""
    from .hub.zoo import ModelManager
    from .infer.image import read_image
    from .utils.fileio import atomic_write_text

    net = ModelManager.get(model)
    pixels = read_image(image)
    net.infer(pixels)  # warm-up: the first CPU pass is slow
    t = time.perf_counter()
    result = net.infer(pixels)
    seconds = time.perf_counter() - t

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(image).stem
    drawn, as_json = out / f"{stem}_pose.jpg", out / f"{stem}_pose.json"
    result.save(drawn)  # the poses drawn on the photo (people and keypoints scoring >= 0.3)
    atomic_write_text(as_json, result.to_json(indent=1))

    lines = [f"{net.checkpoint_info.get('name', model)}: {len(result)} people in {image} "
             f"({pixels.shape[1]}x{pixels.shape[0]}), {seconds * 1000:.0f} ms"]
    for i, det in enumerate(result.detections[:10]):
        x1, y1, x2, y2 = det.bbox
        visible = int((det.keypoints[:, 2] > 0.3).sum())
        lines.append(f"  #{i}: {det.label} {det.conf:.2f} box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}), "
                     f"{visible}/{len(det.keypoints)} keypoints with score > 0.3")
    lines.append(f"wrote {drawn} and {as_json}")
    return lines
