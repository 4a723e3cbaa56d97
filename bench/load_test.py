"""Load test of `rtmo serve`: throughput and latency with dynamic batching on and off.

    python bench/load_test.py [--model PATH_OR_NAME] [--clients 1,4,16] [--requests 48] [--seconds 20]
                              [--rounds 2] [--threads 2] [--max-batch 8] [--batch-timeout-ms 10]

Starts two servers itself, on 127.0.0.1 only (free ports): `--max-batch N` (batching on) and `--max-batch 1`
(off, every request its own forward pass), both with the same torch thread count. For each number of
concurrent clients it sends at most --requests images (the shared COCO/CrowdPose photos, cycled) or stops
after --seconds, whichever comes first, once per server, alternating which goes first from round to round
(the machine may be shared: ratios from alternating rounds are fairer than absolute numbers). Each client
is a thread with its own keep-alive connection sending the next image as soon as the last one is answered.
Throughput = answered images / wall time of the level; latency = per-request time on the client.
Both servers are stopped (SIGTERM) at the end, also on errors or Ctrl-C. Before the servers start, the
model alone is timed in this process (a batch of --max-batch images vs one by one): the most batching can
gain here. Results go to bench/results/load_test.json.

Without --model the RTMO-t fixture checkpoint (../shared/fixtures) is served; its weights are random, so the
score threshold is raised (--threshold 0.5) to keep the number of people per image near a real model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from paths import ROOT, SHARED  # noqa: E402

FIXTURE = SHARED / "fixtures/rtmo-t_8xb32-600e_body7-416x416_seed0/rtmo-t_8xb32-600e_body7-416x416_seed0.pth"


class Server:
    def __init__(self, model: str, max_batch: int, timeout_ms: float, threads: int, threshold: float | None,
                 device: str | None) -> None:
        cmd = [sys.executable, "-m", "rtmo", "serve", "-m", model, "--host", "127.0.0.1", "--port", "0",
               "--max-batch", str(max_batch), "--batch-timeout-ms", str(timeout_ms), "--log-level", "warning"]
        if threshold is not None:
            cmd += ["--threshold", str(threshold)]
        if device:
            cmd += ["--device", device]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not m:
            self.stop()
            raise SystemExit(f"server did not start: {line!r}")
        self.url = m.group(0)
        self.max_batch = max_batch

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_level(url: str, images: list[bytes], clients: int, max_requests: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    t_end = time.perf_counter() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < t_end:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = c.post(url + "/predict", content=images[i % len(images)],
                           headers={"content-type": "image/jpeg"})
                dt = time.perf_counter() - t
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(f"{r.status_code}"))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))] * 1e3 if lat else float("nan")

    return {"clients": clients, "answered": len(lat), "errors": len(errors), "wall_s": round(wall, 3),
            "img_per_s": round(len(lat) / wall, 3), "p50_ms": round(pct(0.5), 1),
            "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(statistics.fmean(lat) * 1e3, 1) if lat else None}


def model_reference(model_path: str, images: list[bytes], max_batch: int, threads: int,
                    threshold: float | None, rounds: int = 3) -> dict:
    """The model alone, in this process, before the servers start: `infer_arrays` on `max_batch` images as
    one batch vs one by one (alternating, median of `rounds`) — the most batching can gain on this machine."""
    import torch

    from rtmo import ModelManager
    from rtmo.infer.api import infer_arrays
    from rtmo.serve.decode import decode_image

    torch.set_num_threads(threads)
    model = ModelManager.get(model_path, device="cpu")
    arrays = [decode_image(images[i % len(images)]) for i in range(max_batch)]
    infer_arrays(model, arrays[:2], threshold)
    batched, single = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        infer_arrays(model, arrays, threshold)
        batched.append((time.perf_counter() - t) / len(arrays))
        t = time.perf_counter()
        for a in arrays:
            infer_arrays(model, [a], threshold)
        single.append((time.perf_counter() - t) / len(arrays))
    b, s = statistics.median(batched) * 1e3, statistics.median(single) * 1e3
    return {"batch": max_batch, "ms_per_image_batched": round(b, 1), "ms_per_image_single": round(s, 1),
            "ratio": round(s / b, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(FIXTURE))
    ap.add_argument("--images", default=str(SHARED / "data"), help="folder searched for *.jpg")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="most requests per level and server")
    ap.add_argument("--seconds", type=float, default=20.0, help="longest time per level and server")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-timeout-ms", type=float, default=10.0)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench/results/load_test.json"))
    args = ap.parse_args()
    if args.threshold is None and args.model == str(FIXTURE):
        args.threshold = 0.5
    images = [p.read_bytes() for p in sorted(Path(args.images).rglob("*.jpg"))]
    if not images:
        raise SystemExit(f"no .jpg images under {args.images}")
    levels = [int(c) for c in args.clients.split(",")]

    ref = model_reference(args.model, images, args.max_batch, args.threads, args.threshold) \
        if args.device == "cpu" else None
    if ref:
        print(f"model alone: {ref['ms_per_image_batched']} ms/img in batches of {ref['batch']}, "
              f"{ref['ms_per_image_single']} ms/img one by one (x{ref['ratio']})", flush=True)
    servers: dict[str, Server] = {}
    try:
        servers["batched"] = Server(args.model, args.max_batch, args.batch_timeout_ms, args.threads,
                                    args.threshold, args.device)
        servers["sequential"] = Server(args.model, 1, args.batch_timeout_ms, args.threads, args.threshold,
                                       args.device)
        for s in servers.values():  # warm-up: first passes allocate and pick kernels
            run_level(s.url, images, 2, 4, 60)
        runs: list[dict] = []
        for rnd in range(args.rounds):
            for clients in levels:
                order = ["batched", "sequential"] if (rnd + clients) % 2 == 0 else ["sequential", "batched"]
                for mode in order:
                    s = servers[mode]
                    before = s.health()["batching"]
                    r = run_level(s.url, images, clients, args.requests, args.seconds)
                    after = s.health()["batching"]
                    passes = after["forward_passes"] - before["forward_passes"]
                    n = after["images"] - before["images"]
                    r.update(mode=mode, round=rnd, max_batch=s.max_batch,
                             mean_batch=round(n / passes, 2) if passes else None)
                    runs.append(r)
                    print(f"round {rnd} {mode:10s} clients {clients:2d}: {r['img_per_s']:6.2f} img/s  p50 "
                          f"{r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch']}  "
                          f"({r['answered']} ok, {r['errors']} errors)", flush=True)
    finally:
        for s in servers.values():
            s.stop()

    summary = []
    for clients in levels:
        row: dict = {"clients": clients}
        for mode in ("batched", "sequential"):
            rs = [r for r in runs if r["mode"] == mode and r["clients"] == clients]
            row[mode] = {k: round(statistics.median(r[k] for r in rs), 2)
                         for k in ("img_per_s", "p50_ms", "p99_ms", "mean_batch") if rs[0][k] is not None}
        row["ratio"] = round(row["batched"]["img_per_s"] / row["sequential"]["img_per_s"], 2)
        summary.append(row)
    print("\n| clients | batched img/s | p50 ms | p99 ms | mean batch | sequential img/s | p50 ms | p99 ms "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in summary:
        b, s = row["batched"], row["sequential"]
        print(f"| {row['clients']} | {b['img_per_s']:.2f} | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | "
              f"{b.get('mean_batch', 0):.2f} | {s['img_per_s']:.2f} | {s['p50_ms']:.0f} | "
              f"{s['p99_ms']:.0f} | {row['ratio']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "note": "shared machine: other jobs ran at the same time; compare ratios"},
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "model_alone": ref,
        "summary": summary, "runs": runs,
    }, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
