"""Training throughput of `saease train`, against this machine's matmul peak and against SAELens.

    python benchmarks/train.py                                   # κ = 300 and κ = 16·d at d = 512
    python benchmarks/train.py --saelens-python /tmp/saelens-venv/bin/python

For each shape, with `--threads` CPU threads (2 by default), in fp32:

* vectors/s of the real training loop (`train()`: loader thread, step, Adam, schedule),
  for sae-l1 and VAEase, counted over every step but the first;
* as a fraction of the matmul FLOP/s measured here in the same run (a loop of the same-shape
  matmul [B, d] @ [d, κ], before and after each training run), counting only the matmuls the
  kind's step cannot avoid: 10·B·d·κ FLOPs for a ReLU SAE (2 forward, 3 backward), 14·B·d·κ
  for the VAE kinds (the spread head's forward and gradient on top);
* against SAELens training its standard SAE of the same shape on the same vectors
  (`benchmarks/saelens_train.py`, run by the interpreter of an environment with sae-lens:
  `--saelens-python`, else the first of $SAELENS_PYTHON, /tmp/saelens-venv and
  $TMPDIR/saease-saelens-venv that imports sae_lens; null when there is none);
* the loader's own rows/s streaming a float16 store, over what the step consumes.

Ends with one JSON line: a list with one object per shape (kappa, vectors_per_s and
fraction_of_peak of sae-l1, vs_saelens, and the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saease.store import StoreWriter, write_store
from saease.train.config import TrainConfig
from saease.train.loader import ShuffledBatches
from saease.train.trainer import train

D_IN = 512
FLOPS_PER_VECTOR = {"sae-l1": 10, "vaease": 14}  # × d·κ


def matmul_gflops(batch: int, d: int, kappa: int, seconds: float = 3.0) -> float:
    """FLOP/s of the same-shape matmul [batch, d] @ [d, kappa], in a loop of ~`seconds`."""
    x, w = torch.randn(batch, d), torch.randn(d, kappa)
    out = torch.empty(batch, kappa)
    torch.mm(x, w, out=out)
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        torch.mm(x, w, out=out)
        n += 1
    return 2 * batch * d * kappa * n / (time.perf_counter() - start) / 1e9


def trainer_rate(store, kind: str, kappa: int, batch: int, steps: int, threads: int, out: Path) -> float:
    cfg = TrainConfig.flat(data=str(store.path), out=str(out / f"{kind}-{kappa}"), kind=kind, d_latent=kappa,
                      batch_size=batch, epochs=1000, max_steps=steps + 1, holdout=0.01, checkpoint_every=0,
                      log_every=10 ** 9, progress=False, threads=threads, overwrite=True, device="cpu")
    _, summary = train(cfg)
    return summary["vectors_per_s"]


def loader_rate(path: Path, batch: int, rows: int = 131072, shard_rows: int = 16384) -> float:
    """Rows/s the loader streams from a float16 store of `rows` random vectors."""
    writer = StoreWriter(path, d_in=D_IN, dtype="float16", overwrite=True)
    for _ in range(rows // shard_rows):
        writer.write_shard(torch.randn(shard_rows, D_IN))
    store = writer.finish()
    batches = ShuffledBatches(store, batch, holdout=0.1, seed=0, buffer_shards=4)
    start, n = time.perf_counter(), 0
    for b in batches.batches(1):
        n += len(b.x)
    return n / (time.perf_counter() - start)


def find_saelens(given: str | None) -> str | None:
    candidates = [given] if given else [
        os.environ.get("SAELENS_PYTHON"), "/tmp/saelens-venv/bin/python",
        str(Path(os.environ.get("TMPDIR", "/tmp")) / "saease-saelens-venv" / "bin" / "python")]
    for python in filter(None, candidates):
        if Path(python).exists() and subprocess.run([python, "-c", "import sae_lens"], capture_output=True).returncode == 0:
            return python
        if given:
            sys.exit(f"--saelens-python {given}: cannot import sae_lens there")
    return None


def saelens_rate(python: str, vectors: Path, kappa: int, batch: int, threads: int) -> float:
    script = Path(__file__).with_name("saelens_train.py")
    done = subprocess.run([python, str(script), str(vectors), "--d-latent", str(kappa), "--batch-size", str(batch),
                           "--threads", str(threads)], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    if done.returncode != 0:
        sys.exit(f"SAELens run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["saelens_vectors_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kappas", type=int, nargs="+", default=[300, 16 * D_IN])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2048, 4096],
                        help="batch size for each κ (the paper's 2048 for κ = 300)")
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 4],
                        help="timed steps per run for each κ (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--saelens-python", default=None, help="python of an environment with sae-lens")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    saelens = find_saelens(args.saelens_python)
    print(f"threads {args.threads}, d = {D_IN}, fp32; SAELens: {saelens or 'not installed (vs_saelens null)'}",
          flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="saease-bench-") as tmp:
        tmp = Path(tmp)
        loader = loader_rate(tmp / "loader-store", max(args.batch_sizes))
        print(f"loader: {loader:,.0f} rows/s from a float16 store", flush=True)
        for kappa, batch, steps in zip(args.kappas, args.batch_sizes, args.steps):
            g = torch.Generator().manual_seed(kappa)
            x = torch.randn((steps + 1) * batch, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g)
            store = write_store(tmp / f"store-{kappa}", x, shard_rows=batch * 2, dtype="float32")
            peaks, row = [matmul_gflops(batch, D_IN, kappa)], {"kappa": kappa, "d_in": D_IN, "batch_size": batch}
            for kind in FLOPS_PER_VECTOR:
                rate = trainer_rate(store, kind, kappa, batch, steps, args.threads, tmp)
                peaks.append(matmul_gflops(batch, D_IN, kappa))
                row[kind] = {"vectors_per_s": rate, "gflops": rate * FLOPS_PER_VECTOR[kind] * D_IN * kappa / 1e9}
            peak = sum(peaks) / len(peaks)
            for kind in FLOPS_PER_VECTOR:
                row[kind]["fraction_of_peak"] = row[kind]["gflops"] / peak
            row["saelens_vectors_per_s"] = None
            if saelens:
                torch.save(x, tmp / "vectors.pt")
                row["saelens_vectors_per_s"] = saelens_rate(saelens, tmp / "vectors.pt", kappa, batch, args.threads)
            ours = row["sae-l1"]["vectors_per_s"]
            results.append({
                "kappa": kappa, "kind": "sae-l1", "vectors_per_s": round(ours, 1),
                "fraction_of_peak": round(row["sae-l1"]["fraction_of_peak"], 3),
                "vs_saelens": round(ours / row["saelens_vectors_per_s"], 3) if row["saelens_vectors_per_s"] else None,
                "saelens_vectors_per_s": row["saelens_vectors_per_s"] and round(row["saelens_vectors_per_s"], 1),
                "vaease": {k: round(v, 3) for k, v in row["vaease"].items()},
                "batch_size": batch, "d_in": D_IN, "threads": args.threads,
                "peak_gflops": round(peak, 1), "peak_gflops_each": [round(p, 1) for p in peaks],
                "loader_rows_per_s": round(loader), "loader_vs_step": round(loader / max(ours, row["vaease"]["vectors_per_s"]), 1),
            })
            r = results[-1]
            print(f"κ = {kappa:5d}  B = {batch}: sae-l1 {ours:9,.0f} vec/s ({r['fraction_of_peak']:.0%} of "
                  f"{peak:.0f} GFLOP/s)  vaease {row['vaease']['vectors_per_s']:9,.0f} vec/s "
                  f"({row['vaease']['fraction_of_peak']:.0%})  SAELens "
                  f"{r['saelens_vectors_per_s'] or 0:9,.0f} vec/s  ×{r['vs_saelens'] or float('nan'):.2f}  "
                  f"loader ×{r['loader_vs_step']:.0f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
