"""Parity with mmpose for any fixture folder made by ../shared/tools/mmpose-ref (RTMO-m, -l, CrowdPose...).

    bash ../shared/tools/mmpose-ref/setup.sh
    ~/.cache/mmpose-ref/venv/bin/python ../shared/tools/mmpose-ref/make_ref.py --variant m --family coco \
        --out-root mmpose-ref-out
    python bench/parity_check.py mmpose-ref-out ../shared/fixtures

For every `<config>_seed*/` folder under the given roots: load its checkpoint with `ModelManager.get`
(architecture detected from the tensors), run `infer` on each image it has a dump for and the network on
its random input, and print the largest differences to mmpose's own numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from paths import SHARED  # noqa: E402

import rtmo


def find_image(stem: str) -> Path:
    for sub in ("coco", "crowdpose"):
        p = SHARED / "data" / sub / f"{stem}.jpg"
        if p.is_file():
            return p
    raise FileNotFoundError(stem)


def check(folder: Path) -> list[str]:
    ckpt = next(folder.glob("*.pth"))
    model = rtmo.ModelManager.get(ckpt)
    rows = []
    ref = np.load(folder / "random_input.npz")
    x = torch.from_numpy(ref["input_uint8"].astype(np.float32))[None]
    with torch.no_grad():
        maps = model.forward_maps(x)
    d = max(float(np.abs(getattr(maps, a)[lv].numpy() - ref[f"{k}_l{lv}"]).max())
            for a, k in (("cls", "cls_logits"), ("bbox", "bbox_raw"), ("vis", "vis_logits"))
            for lv in range(2))
    rows.append(f"{folder.name:52s} random_input  head maps max|diff| {d:.2e}")
    for npz in sorted(folder.glob("img_*.npz")):
        ref = np.load(npz)
        res = model.infer(find_image(npz.stem[4:]))
        same = len(res) == len(ref["bbox_scores"])
        kd = float(np.abs(res.keypoints - ref["keypoints"]).max()) if same and len(res) else 0.0
        bd = float(np.abs(res.boxes - ref["bboxes"]).max()) if same and len(res) else 0.0
        sd = float(np.abs(res.scores - ref["bbox_scores"]).max()) if same and len(res) else 0.0
        rows.append(f"{folder.name:52s} {npz.stem[4:]:13s} dets {len(res):3d}/{len(ref['bbox_scores']):3d} "
                    f"box {bd:.2e} px  kpt {kd:.2e} px  score {sd:.2e}  K={model.config.num_keypoints} "
                    f"variant={model.config.variant}")
    return rows


def main() -> None:
    torch.set_num_threads(2)
    roots = [Path(p) for p in sys.argv[1:]] or [Path("mmpose-ref-out"), SHARED / "fixtures"]
    folders = sorted(f for r in roots if r.is_dir() for f in r.glob("*_seed*") if any(f.glob("*.pth")))
    report = {}
    for folder in folders:
        for row in check(folder):
            print(row)
            report.setdefault(folder.name, []).append(row)
    Path("parity_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
