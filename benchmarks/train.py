"""Training throughput of `saease train`, kind by kind, against this machine's matmul peak and SAELens.

    python benchmarks/train.py                       # every kind at κ = 16·d, d = 512, B = 4096 (CPU)
    python benchmarks/train.py --kappas 300 8192 32768 --kinds sae-topk vaease
    python benchmarks/train.py --device cuda --precision bf16 --compile      # the GPU check

For each shape and kind, in the same run:

* vectors/s of the real training loop (`train()`: loader thread, autograd step, Adam, decoder
  norms, schedule), counted over every step but the first;
* `fraction_of_peak`: the FLOPs of the matmuls a dense step of that kind cannot avoid (10·B·d·κ
  for a ReLU SAE: 2 forward, 3 backward; 14·B·d·κ for the VAE kinds, whose spread head adds a
  forward and a gradient, and for the gated SAE, whose auxiliary decode adds two) over the FLOP/s
  of the same-shape matmul [B, d] @ [d, κ], measured before and after each run. The TopK family
  decodes sparsely (B·k·d instead of B·κ·d), so its figure is an *effective* FLOP/s over peak and
  may exceed 1: the dense step it replaces could not run faster than the peak;
* `vs_saelens`: over SAELens training the same architecture at the same shape on the same vectors
  (`benchmarks/saelens_train.py` in an environment with sae-lens: `--saelens-python`, else the
  first of $SAELENS_PYTHON and $TMPDIR/saease-saelens-venv that imports sae_lens; null when there
  is none, and for the kinds SAELens does not train: sae-log, vae, vaease);
* `loader_vs_step`: the loader's own rows/s streaming a float16 store over the kind's step rate.

Ends with one JSON line: a list with one object per (shape, kind).
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

from saease.dictionary import kind_names
from saease.store import StoreWriter, write_store
from saease.train.config import TrainConfig
from saease.train.loader import ShuffledBatches
from saease.train.trainer import train

D_IN = 512
DENSE_MATMULS = {"vaease": 7, "vae": 7, "sae-gated": 7}  # others: 5 (× 2·B·d·κ FLOPs)
SAELENS = {"sae-l1": "standard", "sae-topk": "topk", "sae-batchtopk": "batchtopk", "sae-jumprelu": "jumprelu",
           "sae-gated": "gated", "sae-matryoshka": "matryoshka_batchtopk"}
TOPK_FAMILY = ("sae-topk", "sae-batchtopk", "sae-matryoshka")


def matmul_gflops(batch: int, d: int, kappa: int, device: str, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of the same-shape matmul [batch, d] @ [d, kappa], in a loop of ~`seconds`."""
    x, w = torch.randn(batch, d, device=device, dtype=dtype), torch.randn(d, kappa, device=device, dtype=dtype)
    out = torch.mm(x, w)
    sync(device)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        torch.mm(x, w, out=out)
        n += 1
    sync(device)
    return 2 * batch * d * kappa * n / (time.perf_counter() - start) / 1e9


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trainer_rate(store, kind: str, kappa: int, batch: int, steps: int, args, out: Path) -> float:
    knobs = {"k": args.k} if kind in TOPK_FAMILY else {}
    cfg = TrainConfig.flat(data=str(store.path), out=str(out / f"{kind}-{kappa}"), kind=kind, d_latent=kappa,
                           batch_size=batch, epochs=1000, max_steps=steps + 1, holdout=0.01, checkpoint_every=0,
                           log_every=10 ** 9, progress=False, threads=args.threads, overwrite=True,
                           device=args.device, precision=args.precision, compile=args.compile, **knobs)
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
        os.environ.get("SAELENS_PYTHON"),
        str(Path(os.environ.get("TMPDIR", "/tmp")) / "saease-saelens-venv" / "bin" / "python")]
    for python in filter(None, candidates):
        if Path(python).exists() and subprocess.run([python, "-c", "import sae_lens"], capture_output=True).returncode == 0:
            return python
        if given:
            sys.exit(f"--saelens-python {given}: cannot import sae_lens there")
    return None


def saelens_rate(python: str, vectors: Path, architecture: str, kappa: int, batch: int, args) -> float:
    script = Path(__file__).with_name("saelens_train.py")
    done = subprocess.run([python, str(script), str(vectors), "--d-latent", str(kappa), "--batch-size", str(batch),
                           "--threads", str(args.threads), "--architecture", architecture, "--k", str(args.k)],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "WANDB_MODE": "disabled"})
    if done.returncode != 0:
        sys.exit(f"SAELens {architecture} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["saelens_vectors_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kappas", type=int, nargs="+", default=[16 * D_IN])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--kinds", nargs="+", default=list(kind_names()), choices=kind_names())
    parser.add_argument("--k", type=int, default=32, help="k of the TopK family")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--saelens-python", default=None, help="python of an environment with sae-lens")
    parser.add_argument("--no-saelens", action="store_true", help="skip the SAELens runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    saelens = None if args.no_saelens or args.device != "cpu" else find_saelens(args.saelens_python)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    print(f"threads {args.threads}, d = {D_IN}, B = {args.batch_size}, {args.device} {args.precision}"
          f"{' compile' if args.compile else ''}; SAELens: {saelens or 'not run (vs_saelens null)'}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="saease-bench-") as tmp:
        tmp = Path(tmp)
        loader = loader_rate(tmp / "loader-store", args.batch_size)
        print(f"loader: {loader:,.0f} rows/s from a float16 store", flush=True)
        for kappa in args.kappas:
            g = torch.Generator().manual_seed(kappa)
            x = torch.randn((args.steps + 1) * args.batch_size, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g)
            store = write_store(tmp / f"store-{kappa}", x, shard_rows=args.batch_size * 2, dtype="float32")
            if saelens:
                torch.save(x, tmp / "vectors.pt")
            for kind in args.kinds:
                before = matmul_gflops(args.batch_size, D_IN, kappa, args.device, dtype)
                rate = trainer_rate(store, kind, kappa, args.batch_size, args.steps, args, tmp)
                peak = (before + matmul_gflops(args.batch_size, D_IN, kappa, args.device, dtype)) / 2
                flops = 2 * DENSE_MATMULS.get(kind, 5) * D_IN * kappa
                theirs = saelens_rate(saelens, tmp / "vectors.pt", SAELENS[kind], kappa, args.batch_size, args) \
                    if saelens and kind in SAELENS else None
                row = {"kind": kind, "kappa": kappa, "d_in": D_IN, "batch_size": args.batch_size,
                       "device": args.device, "precision": args.precision, "compile": args.compile,
                       "threads": args.threads, "vectors_per_s": round(rate, 1),
                       "fraction_of_peak": round(rate * flops / 1e9 / peak, 3),
                       "effective": kind in TOPK_FAMILY, "peak_gflops": round(peak, 1),
                       "saelens_vectors_per_s": theirs and round(theirs, 1),
                       "vs_saelens": round(rate / theirs, 3) if theirs else None,
                       "loader_vs_step": round(loader / rate, 1)}
                results.append(row)
                print(f"κ = {kappa:6d} {kind:15s} {rate:9,.0f} vec/s  {row['fraction_of_peak']:5.2f} of "
                      f"{peak:6.0f} GFLOP/s{' (effective)' if row['effective'] else '            '}  "
                      f"SAELens ×{row['vs_saelens'] or float('nan'):.2f}  loader ×{row['loader_vs_step']:.0f}",
                      flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
