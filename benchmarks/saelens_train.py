"""SAELens's own training loop on given vectors: the baseline `benchmarks/train.py` compares to.

Runs in an environment with sae-lens installed (it pins transformer-lens<4, so a separate venv):

    python benchmarks/saelens_train.py VECTORS.pt --d-latent 8192 --batch-size 4096 --threads 2 \
        --architecture topk --k 32

Trains one of SAELens's training SAEs (standard ReLU-ℓ1, topk, batchtopk, jumprelu, gated,
matryoshka_batchtopk) with `SAETrainer.fit()` on the vectors, in fp32 on CPU, with no W&B and no
checkpoints, and prints one JSON line: vectors/s over every step but the first (the same
steady-state count as saease's trainer reports).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

# --architecture → (SAELens class prefix, config knobs)
ARCHITECTURES = {
    "standard": ("Standard", {"l1_coefficient": 5.0}),
    "topk": ("TopK", {}),
    "batchtopk": ("BatchTopK", {}),
    "jumprelu": ("JumpReLU", {}),
    "gated": ("Gated", {}),
    "matryoshka_batchtopk": ("MatryoshkaBatchTopK", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vectors", help="a .pt file holding a float32 tensor [rows, d_in]")
    parser.add_argument("--d-latent", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--architecture", default="standard", choices=sorted(ARCHITECTURES))
    parser.add_argument("--k", type=int, default=32, help="active latents (topk, batchtopk, matryoshka)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    x = torch.load(args.vectors)
    steps = len(x) // args.batch_size
    name, knobs = ARCHITECTURES[args.architecture]
    if args.architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
        knobs = {**knobs, "k": args.k}
    if args.architecture == "matryoshka_batchtopk":
        knobs = {**knobs, "matryoshka_widths": sorted({args.d_latent // f for f in (16, 8, 4, 2)} | {args.d_latent})}
    sae_class, cfg_class = getattr(sae_lens, f"{name}TrainingSAE"), getattr(sae_lens, f"{name}TrainingSAEConfig")
    sae = sae_class(cfg_class(d_in=x.shape[1], d_sae=args.d_latent, dtype="float32", device="cpu", **knobs))
    marks: list[float] = []

    def batches():
        for i in range(steps):
            marks.append(time.perf_counter())  # asked for batch i: step i - 1 is done
            yield x[i * args.batch_size:(i + 1) * args.batch_size]
        while True:  # never reached: fit() stops after `steps` batches
            yield x[:args.batch_size]

    cfg = SAETrainerConfig(total_training_samples=steps * args.batch_size, train_batch_size_samples=args.batch_size,
                           lr=args.lr, lr_end=args.lr / 10, device="cpu", logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, batches())
    trainer.fit()
    end = time.perf_counter()
    timed = steps - 1  # from the end of the first step to the end of the last
    print(json.dumps({"saelens_vectors_per_s": timed * args.batch_size / (end - marks[1]), "steps": steps,
                      "architecture": args.architecture, "d_latent": args.d_latent, "batch_size": args.batch_size,
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
