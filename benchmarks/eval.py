"""How fast `saease eval` streams a store, against the bare encode on the same vectors.

For each dictionary width it measures, in vectors per second:

    encode      `Dictionary.encode` on the vectors already in memory (the baseline)
    metrics     RE/AD/L0/… streamed from the store (reading + sha256 + encode + AD split)
    full        metrics + masking curve + top-n/density/histogram (what `--out` computes)
    old_mask    the masking curve as κ + 1 decodes per batch (the previous implementation),
                timed on one batch with up to 24 decodes and extrapolated to κ + 1

and prints the ratios to the baseline, then ONE JSON line with every figure.

    python benchmarks/eval.py                      # 65,536 × 512, κ = 300 and 4096, CPU
    python benchmarks/eval.py --rows 1048576 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


from saease.eval.evaluator import Options, evaluate_store
from saease.eval.stream import Notes
from saease import Dictionary, StoreWriter
from saease.metrics import MaskingCurve, encode_batch


def make_store(path: Path, rows: int, d_in: int, ctx: int = 256, shard_rows: int = 16384):
    """Random activations with a harvest-like layout (tokens, seq, pos, contexts)."""
    gen = torch.Generator().manual_seed(0)
    writer = StoreWriter(path, d_in=d_in, dtype="float32", source={"synthetic": "benchmark"}, overwrite=True)
    n_seq = -(-rows // ctx)
    windows = torch.randint(0, 50_000, (n_seq, ctx), generator=gen)
    for s in range(0, rows, shard_rows):
        n = min(shard_rows, rows - s)
        idx = torch.arange(s, s + n)
        acts = torch.randn(n, d_in, generator=gen) * 3 + torch.randn(d_in, generator=gen)
        writer.write_shard(acts, tokens=windows.flatten()[idx], seq=idx // ctx, pos=idx % ctx)
    writer.write_contexts(windows)
    return writer.finish()


def make_dictionary(d_in: int, d_latent: int, device) -> Dictionary:
    torch.manual_seed(0)
    d = Dictionary.create("vaease", d_in=d_in, d_latent=d_latent)
    with torch.no_grad():
        d.b_enc.normal_(0, 0.5)
        d.W_sig.normal_(0, 0.05)
        d.b_sig.normal_(0, 1)
    return d.to(device).eval()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_encode(d: Dictionary, x: torch.Tensor, batch_size: int, device) -> float:
    batches = [x[s:s + batch_size].to(device) for s in range(0, len(x), batch_size)]
    d.encode(batches[0])  # warm-up
    sync(device)
    start = time.perf_counter()
    for b in batches:
        d.encode(b)
    sync(device)
    return len(x) / (time.perf_counter() - start)


def time_eval(d: Dictionary, store, opts: Options, device) -> float:
    sync(device)
    start = time.perf_counter()
    evaluate_store([("bench", d)], store, opts, Notes(quiet=True))
    sync(device)
    return store.n_rows / (time.perf_counter() - start)


@torch.no_grad()
def time_old_masking(d: Dictionary, x: torch.Tensor, device, batch_size: int, max_decodes: int = 24) -> float:
    """The previous masking curve: encode, then κ + 1 full decodes of the masked codes. Timed
    on one batch with at most `max_decodes` decodes, the rest extrapolated (each costs the same)."""
    x = x[:batch_size].to(device)
    sync(device)
    start = time.perf_counter()
    b = encode_batch(d, x)
    keep = torch.ones(d.cfg.d_latent, device=device)
    order = b.usage.sum(0).argsort()
    sync(device)
    mid = time.perf_counter()
    steps = min(d.cfg.d_latent + 1, max_decodes)
    for step in range(steps):
        if step:
            keep[order[step - 1]] = 0
        (d.decode(b.codes * keep) - b.x).pow(2).sum().item()
    sync(device)
    end = time.perf_counter()
    seconds = (mid - start) + (end - mid) * (d.cfg.d_latent + 1) / steps
    return len(x) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-latent", type=int, nargs="+", default=[300, 4096])
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    figures = {"rows": args.rows, "d_in": args.d_in, "device": args.device,
               "threads": torch.get_num_threads(), "widths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", args.rows, args.d_in)
        x = store.read_all()
        for kappa in args.d_latent:
            d = make_dictionary(args.d_in, kappa, args.device)
            base = dict(batch_size=args.batch_size, progress=False)
            encode = time_encode(d, x, args.batch_size, args.device)
            metrics = time_eval(d, store, Options(masking=False, features=False, **base), args.device)
            full = time_eval(d, store, Options(masking=True, features=True, **base), args.device)
            old = time_old_masking(d, x, args.device, min(args.batch_size, 2048))
            method = MaskingCurve(d).method
            row = {"encode_vps": round(encode), "metrics_vps": round(metrics), "full_vps": round(full),
                   "old_masking_vps": round(old), "full_over_encode": round(full / encode, 4),
                   "metrics_over_encode": round(metrics / encode, 4),
                   "full_over_old_masking": round(full / old, 2), "masking_method": method}
            figures["widths"][str(kappa)] = row
            print(f"κ={kappa:>6}: encode {encode:>10,.0f} vec/s | metrics {metrics:>9,.0f} "
                  f"({metrics / encode:.3f}× encode) | full eval {full:>9,.0f} ({full / encode:.3f}× encode) | "
                  f"old κ+1-decode masking alone {old:>8,.0f} vec/s (full eval is {full / old:.1f}× faster)",
                  flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
