"""VAEase alone on synth_bench.py's data, with chosen knobs: the quick way to see what a VAEase
setting does on SAELens's SynthSAEBench generator without training every kind.

Runs in the SAELens environment, like synth_bench.py:

    python benchmarks/synth_vaease.py '{}' '{"kl_peak": 1.5}' '{"reopen_every": 0.05}'

Each argument is one run's VAEase knobs (JSON, the names of TrainConfig.flat; `"kind"` trains
another kind instead, e.g. '{"kind": "sae-batchtopk", "k": 11}' for a baseline); the data (drawn
once, the same rows and held-out split as synth_bench.py's full size), training and scores
(SAELens's EV, MCC, F1; saease's AD) are synth_bench.py's own. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth_bench  # noqa: E402


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("knobs", nargs="*", default=["{}"], help="one JSON object of VAEase knobs per run")
    p.add_argument("--seed", type=int, default=0, help="training seed (the held-out split too)")
    p.add_argument("--threads", type=int, default=1)
    own, rest = p.parse_known_args(argv)
    args = synth_bench.parse_args(rest + ["--seed", str(own.seed), "--threads", str(own.threads)])
    torch.set_num_threads(args.threads)
    import saease
    from saease.train.config import TrainConfig
    from saease.train.trainer import train

    print(f"synth_vaease: saease from {Path(saease.__file__).parent}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="saease-synthvaease-") as tmp:
        out = Path(tmp)
        store, test, x, acts, true_vectors = synth_bench.make_data(args, out)
        x_test, acts_test, x_train = x[test], acts[test], x[~test]
        steps = args.epochs * -(-len(x_train) // args.batch_size)
        base = TrainConfig.flat(data=str(store.path), d_latent=args.n_features, epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, t0=steps, t_mult=1, holdout=0.1,
                                seed=args.seed, device="cpu", progress=False, overwrite=True, checkpoint_every=0,
                                threads=args.threads)
        for i, raw in enumerate(own.knobs):
            knob = json.loads(raw)
            t = time.time()
            d, summary = train(base.with_(**{"kind": "vaease", **knob, "out": str(out / f"run{i}")}))
            with torch.no_grad():
                codes = d.encode(x_test)
                row = {"knob": knob, "ad": summary["ad"],
                       **synth_bench.score(codes, d.decode(codes), x_test, acts_test, d.W_dec.detach(), true_vectors),
                       "seconds": round(time.time() - t, 1)}
            rows.append(row)
            print(f"  {json.dumps(knob):51s} L0 {row['l0']:6.2f}  AD {row['ad']:6.2f}  EV {row['ev']:.3f}  "
                  f"MCC {row['mcc']:.3f}  F1 {row['f1']:.3f}  dead {row['dead']}  ({row['seconds']}s)", flush=True)
    print(json.dumps({"benchmark": "synth_vaease", "seed": args.seed, "runs": rows}))
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
