"""`make demo`: pose estimation on the bundled sample photo, drawn result and JSON written to disk."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).with_name("assets") / "sample.jpg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-m", "--model", default="rtmo-s-coco", help="registry name or checkpoint path")
    ap.add_argument("--image", default=str(SAMPLE))
    ap.add_argument("-o", "--output", default="outputs/demo", help="folder for <stem>_pose.jpg / .json")
    args = ap.parse_args(argv)

    from . import ModelManager
    from .hub.zoo import CheckpointError, DownloadError
    from .infer.image import ImageError, read_image

    try:
        model = ModelManager.get(args.model)
        image = read_image(args.image)
    except (DownloadError, CheckpointError, ImageError) as e:
        print(f"rtmo demo: {e}", file=sys.stderr)
        return 2
    model.infer(image)  # warm-up: the first CPU pass is slow
    t = time.perf_counter()
    result = model.infer(image)
    seconds = time.perf_counter() - t

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    drawn = out / f"{stem}_pose.jpg"
    result.save(drawn)  # the poses drawn on the photo (people and keypoints scoring >= 0.3)
    (out / f"{stem}_pose.json").write_text(result.to_json(indent=1))

    print(f"{model.checkpoint_info.get('name', args.model)}: {len(result)} people in {args.image} "
          f"({image.shape[1]}x{image.shape[0]}), {seconds * 1000:.0f} ms")
    for i, det in enumerate(result.detections[:10]):
        x1, y1, x2, y2 = det.bbox
        visible = int((det.keypoints[:, 2] > 0.3).sum())
        print(f"  #{i}: {det.label} {det.conf:.2f} box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}), "
              f"{visible}/{len(det.keypoints)} keypoints with score > 0.3")
    print(f"wrote {drawn} and {out / f'{stem}_pose.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
