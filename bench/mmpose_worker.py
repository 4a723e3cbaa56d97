"""mmpose 1.3.2's own RTMO pipeline as a timing worker for bench/bench_all.py (runs in mmpose's venv).

    ~/.cache/mmpose-ref/venv/bin/python bench/mmpose_worker.py --tool ../shared/tools/mmpose-ref \
        --checkpoint CKPT --image IMG --input INPUT.npy --center CX CY --scale SW SH [--threads 2]

Imports nothing from rtmo (the venv has no rtmo). Loads the checkpoint with `mmpose.apis.init_model`
(config from the tool's `resolve_config`), then answers one command per stdin line with one JSON line,
timed here so that the pipe costs nothing:
  * `e2e`:   `inference_bottomup(model, IMG)` (decode, BottomupResize, data preprocessor, forward,
             RTMOHead.predict: score filter, NMS, DCC; mapping back to image pixels);
  * `model`: `model.predict(x, [sample])` on INPUT.npy, the letterboxed network input (forward +
             RTMOHead.predict + mapping back), the same work as rtmo's `predict_batch`;
  * `poses`: the e2e result's boxes / keypoints / scores (for the deviation figures);
  * `quit`.
"""

import argparse
import json
import os.path as osp
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True, help="shared/tools/mmpose-ref (for resolve_config)")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--variant", default="s")
    ap.add_argument("--family", default="coco")
    ap.add_argument("--image", required=True)
    ap.add_argument("--input", required=True, help="(1,3,H,W) float32 .npy: the letterboxed image")
    ap.add_argument("--center", type=float, nargs=2, required=True)
    ap.add_argument("--scale", type=float, nargs=2, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.dont_write_bytecode = True  # no __pycache__ in the shared, read-only tool folder
    sys.path.insert(0, osp.abspath(args.tool))
    import mmpose_ref_common as C
    from mmpose.apis import inference_bottomup, init_model
    from mmpose.structures import PoseDataSample

    model = init_model(C.resolve_config(args.variant, args.family), args.checkpoint, device="cpu")
    x = torch.from_numpy(np.load(args.input))
    size = (x.shape[3], x.shape[2])
    sample = PoseDataSample(metainfo=dict(input_size=size, input_center=np.array(args.center),
                                          input_scale=np.array(args.scale, dtype=np.float32)))

    def e2e():
        return inference_bottomup(model, args.image)[0].pred_instances

    def model_only():
        with torch.no_grad():
            return model.predict(x, [sample.clone()])[0].pred_instances

    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd in ("e2e", "model"):
            fn = e2e if cmd == "e2e" else model_only
            t = time.perf_counter()
            inst = fn()
            dt = time.perf_counter() - t
            print(json.dumps({"s": dt, "detections": len(inst.keypoints)}), flush=True)
        elif cmd == "poses":
            inst = e2e()
            print(json.dumps({"boxes": np.asarray(inst.bboxes).tolist(),
                              "keypoints": np.asarray(inst.keypoints).tolist(),
                              "scores": np.asarray(inst.bbox_scores).tolist()}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)


if __name__ == "__main__":
    main()
