"""mmpose's side of bench/bench_train.py. Runs ONLY with the mmpose-ref venv
(`bash ../shared/tools/mmpose-ref/setup.sh`; ~/.cache/mmpose-ref/venv/bin/python), never with rtmo's.

Times mmpose's own RTMO training step at one fixed input size: the config's model, `init_weights()`, its
optimiser wrapper (AdamW, grad clip), `model.train_step(batch, optim_wrapper)` on one batch of the 4
annotated COCO images from the config's stage-2 pipeline (fixed `input_size`, no mosaic). The data
preprocessor's `BatchSyncRandomResize` is removed so that every iteration runs at that size. Separately
times the stage-1 data pipeline (Mosaic, affine, MixUp, HSV, flip, targets) per batch of 4.
Prints one JSON object on the last line of stdout.
"""

import argparse
import json
import os.path as osp
import statistics
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="s")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tool", required=True, help="the mmpose-ref folder (for its config lookup)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.dont_write_bytecode = True
    sys.path.insert(0, args.tool)
    import mmpose_ref_common as ref
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmpose.registry import DATASETS, MODELS

    init_default_scope("mmpose")
    cfg = Config.fromfile(ref.resolve_config(args.variant, "coco"))
    size = (args.size, args.size)

    def dataset(pipeline: list) -> object:
        ds = cfg.train_dataloader.dataset.copy()
        ds.data_root = osp.join(ref.DATA_ROOT, "coco")
        ds.ann_file, ds.data_prefix, ds.pipeline = "test_coco.json", dict(img=""), pipeline
        return DATASETS.build(ds)

    for step in cfg.train_pipeline_stage2:
        if step["type"] == "BottomupRandomAffine":
            step["input_size"] = size
    for step in cfg.train_pipeline_stage1:
        if "img_scale" in step:
            step["img_scale"] = size
        if step["type"] == "BottomupRandomAffine":
            step["input_size"] = size
    stage1, stage2 = dataset(cfg.train_pipeline_stage1), dataset(cfg.train_pipeline_stage2)

    cfg.model.backbone.init_cfg = None  # no pretrained download
    cfg.model.data_preprocessor.batch_augments = None  # fixed size
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    hub = MessageHub.get_current_instance()
    hub.update_info("epoch", 0)

    batch = pseudo_collate([stage2[i % len(stage2)] for i in range(args.batch)])
    step_s = []
    for it in range(args.warmup + args.iters):
        hub.update_info("iter", it)
        t = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        if it >= args.warmup:
            step_s.append(time.perf_counter() - t)

    data_s = []
    for it in range(args.iters):
        t = time.perf_counter()
        pseudo_collate([stage1[(it * args.batch + i) % len(stage1)] for i in range(args.batch)])
        data_s.append(time.perf_counter() - t)
    shape = list(batch["inputs"][0].shape)
    print(json.dumps({"impl": "mmpose", "train_step_s": step_s, "step_median_s": statistics.median(step_s),
                      "data_median_s": statistics.median(data_s), "input_shape": shape,
                      "instances": [len(s.gt_instances.bboxes) for s in batch["data_samples"]],
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
