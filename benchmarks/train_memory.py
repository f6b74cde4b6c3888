"""The trainer's peak memory does not grow with the store: a 1 GB store against a 4 GB one.

    python benchmarks/train_memory.py [--steps 300] [--gb 1 4] [--dir /tmp]

Writes two float16 stores of random d = 512 vectors (1 GB and 4 GB: 1 M and 4 M rows, in
65,536-row shards), trains VAEase (κ = 300, batch 2048, the default 4-shard
mixing buffer) for `--steps` steps on each in a fresh process, and reports each process's
peak resident memory (ru_maxrss: startup, the normalization sample, streaming, the final
held-out evaluation and saving). The stores are deleted afterwards. Ends with one JSON line.
Target: the 4 GB run's peak within 10% of the 1 GB run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saease.store import StoreWriter

D_IN, SHARD_ROWS = 512, 65536

CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(2)
from saease.train.config import TrainConfig
from saease.train.trainer import train
start = time.perf_counter()
_, s = train(TrainConfig.flat(data=sys.argv[1], out=sys.argv[2], max_steps=int(sys.argv[3]), checkpoint_every=0,
                         progress=False, overwrite=True, device="cpu"))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "steps": s["steps"], "seconds": time.perf_counter() - start, "vectors_per_s": s["vectors_per_s"]}))
"""


def make_store(path: Path, gigabytes: float) -> None:
    rows = int(gigabytes * 2 ** 30 / (2 * D_IN))
    writer = StoreWriter(path, d_in=D_IN, dtype="float16", overwrite=True)
    g = torch.Generator().manual_seed(0)
    for start in range(0, rows, SHARD_ROWS):
        writer.write_shard(torch.randn(min(SHARD_ROWS, rows - start), D_IN, generator=g).mul_(3))
    writer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, nargs=2, default=[1.0, 4.0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the stores are written (then deleted)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="saease-mem-", dir=args.dir))
    runs = []
    try:
        for gb in args.gb:
            store = root / f"store-{gb:g}gb"
            t = time.perf_counter()
            make_store(store, gb)
            print(f"{gb:g} GB store written in {time.perf_counter() - t:.0f} s", flush=True)
            done = subprocess.run([sys.executable, "-c", CHILD, str(store), str(root / f"dict-{gb:g}"), str(args.steps)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            run = {"store_gb": gb, **json.loads(done.stdout.strip().splitlines()[-1])}
            runs.append(run)
            print(f"{gb:g} GB: peak RSS {run['peak_rss_mb']:.0f} MB over {run['steps']} steps "
                  f"({run['seconds']:.0f} s)", flush=True)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    print(f"peak RSS ratio {args.gb[1]:g} GB / {args.gb[0]:g} GB: {ratio:.3f} (target ≤ 1.10)")
    print(json.dumps({"runs": runs, "peak_rss_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
