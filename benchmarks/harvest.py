"""How fast `saease harvest` runs, against the bare forward pass up to the same layer.

Builds a random-weight GPT-NeoX locally (pythia-70m's shape by default: d_model 512, 6 layers,
8 heads, vocab 50,304; nothing is downloaded) and a synthetic English-like text dataset, runs
one real harvest through the command's own code path (`harvest.loop.run_harvest`: model loaded
with saease.models.load_model, weights processed, dataset tokenized, store written), then, on
the same model and the same batches of the same windows, alternates

    forward   model(tokens, stop_at_layer=layer + 1) for each batch (nothing kept)
    harvest   harvest.loop.harvest_shards: hook + device->host copy + background shard writer,
              into a fresh store folder (fsync, sha256, manifest updates included)

`--repeats` times and reports the medians, the ratio harvest/forward (target >= 0.95) and the
disk throughput, ending with ONE JSON line holding tokens_per_s, forward_tokens_per_s, ratio and
disk_mb_per_s.

    python benchmarks/harvest.py                         # pythia-70m shape, layer 2, CPU
    python benchmarks/harvest.py --shape tiny            # the test suite's tiny model
    python benchmarks/harvest.py --device cuda --windows 4096 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from saease.harvest.config import HarvestConfig
from saease.harvest.loop import manifest_recorder, harvest_shards, run_harvest
from saease.harvest.plan import Plan
from saease import models
from saease.store import StoreWriter

SHAPES = {
    # pythia-70m(-deduped): GPTNeoX, d 512, 6 layers, 8 heads, MLP 2048, rotary 25%, parallel residual
    "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                       intermediate_size=2048, max_position_embeddings=2048, vocab_size=50304),
    "tiny": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                 max_position_embeddings=256, vocab_size=None),
}
WORDS = ("the a of and to in is was for on that with as by it from at his her they this be are "
         "which or an had not but were their has have one all been new more other some after also "
         "first two time city river model people world year state school music part family war "
         "house light water small great long number between during under against").split()


def synthetic_docs(n_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))).capitalize() + "."
                     for _ in range(rng.randint(2, 12))]
        docs.append(" ".join(sentences))
    return docs


def build_model(folder: Path, shape: str, docs: list[str]) -> None:
    """A random GPTNeoXForCausalLM of the given shape with a byte-level BPE tokenizer (locally)."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs[:2000], trainer=trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPTNeoXConfig(**dims, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
                           bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(model, plan: Plan, layer: int, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the bare forward pass over every batch."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        windows = plan.windows.to(device)  # as harvest_shards does: once, not per batch
        for j in range(plan.n_batches):
            w0, w1 = plan.batch_windows(j)
            model(windows[w0:w1], stop_at_layer=layer + 1)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def time_harvest(model, hook: str, plan: Plan, folder: Path, d_in: int, dtype: str, device: str):
    """(wall seconds, process CPU seconds, stats) of the harvest loop writing every shard."""
    writer = StoreWriter(folder, d_in=d_in, dtype=dtype, config={"benchmark": True}, overwrite=True)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = harvest_shards(model, hook, plan, list(range(plan.n_shards)), folder, d_in, dtype, device,
                           manifest_recorder(writer, {}))
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, stats


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="pythia-70m")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--hook", default="resid_post")
    p.add_argument("--context-size", type=int, default=256)
    p.add_argument("--windows", type=int, default=32, help="context windows harvested per repeat")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shard-rows", type=int, default=4096)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--workdir", default=None, help="where to build the model and stores (default: a temp dir)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        n_docs = max(200, args.windows * args.context_size // 60)
        docs = synthetic_docs(n_docs)
        with open(tmp / "docs.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        build_model(tmp / "model", args.shape, docs)

        # 1. one real harvest, end to end (also the warm-up)
        cfg = HarvestConfig(model=str(tmp / "model"), dataset=str(tmp / "docs.jsonl"), layer=args.layer,
                            hook=args.hook, context_size=args.context_size, batch_size=args.batch_size,
                            shard_rows=args.shard_rows, max_rows=args.windows * args.context_size,
                            dtype=args.dtype, device=args.device, out=str(tmp / "store"))
        t0 = time.perf_counter()
        summary = run_harvest(cfg)
        end_to_end = time.perf_counter() - t0
        print(f"end-to-end harvest (model load, tokenization, store): {end_to_end:.1f} s, "
              f"{summary['n_rows']} rows, loop {summary['tokens_per_s']:.0f} tok/s", file=sys.stderr)

        # 2. the same model and batches: bare forward vs harvest loop, interleaved
        model = models.load_model(cfg.model, device=args.device)
        hook = models.hook_name(model, args.layer, args.hook)
        from safetensors.torch import load_file

        windows = load_file(str(tmp / "store" / "contexts.safetensors"))["tokens"].long()
        plan = Plan.build(windows, None, max_rows=cfg.max_rows, shard_rows=cfg.shard_rows,
                          batch_size=cfg.batch_size)
        d_in = model.cfg.d_model
        n_tokens = plan.n_windows * plan.context_size
        time_forward(model, plan, args.layer, args.device)  # warm-up
        fwd, hv, fwd_cpu, hv_cpu, disk, write_busy = [], [], [], [], [], []
        for r in range(args.repeats):  # A B B A ... so that drifts in machine load cancel
            order = ("forward", "harvest") if r % 2 == 0 else ("harvest", "forward")
            for what in order:
                if what == "forward":
                    wall, cpu = time_forward(model, plan, args.layer, args.device)
                    fwd.append(wall), fwd_cpu.append(cpu)
                else:
                    wall, cpu, stats = time_harvest(model, hook, plan, tmp / f"bench-{r}", d_in, args.dtype,
                                                    args.device)
                    hv.append(wall), hv_cpu.append(cpu)
                    disk.append(stats["bytes"] / wall / 1e6)
                    write_busy.append(stats["write_seconds"] / wall)
            print(f"repeat {r}: forward {n_tokens / fwd[-1]:.0f} tok/s, harvest {n_tokens / hv[-1]:.0f} tok/s "
                  f"(ratio {fwd[-1] / hv[-1]:.3f}; CPU-time ratio {fwd_cpu[-1] / hv_cpu[-1]:.3f}), "
                  f"writer busy {write_busy[-1]:.1%}", file=sys.stderr)

    forward_tps = n_tokens / statistics.median(fwd)
    harvest_tps = n_tokens / statistics.median(hv)
    on_cpu = not args.device.startswith("cuda")
    result = {
        "benchmark": "harvest", "shape": args.shape, "device": args.device, "hook": hook,
        "tokens": n_tokens, "batch_size": args.batch_size, "context_size": args.context_size,
        "dtype": args.dtype, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "tokens_per_s": round(harvest_tps, 1), "forward_tokens_per_s": round(forward_tps, 1),
        "ratio": round(harvest_tps / forward_tps, 4), "disk_mb_per_s": round(statistics.median(disk), 2),
        "writer_busy_fraction": round(statistics.median(write_busy), 4),
        # on a CPU shared with other work, process CPU time is the steadier measure of the overhead
        "ratio_cpu_time": round(statistics.median(fwd_cpu) / statistics.median(hv_cpu), 4) if on_cpu else None,
        "ratio_per_repeat": [round(f / h, 4) for f, h in zip(fwd, hv)],
        "end_to_end_seconds": round(end_to_end, 2),
    }
    print(f"harvest {harvest_tps:.0f} tok/s vs bare forward {forward_tps:.0f} tok/s: ratio "
          f"{result['ratio']:.3f} (target >= 0.95); disk {result['disk_mb_per_s']:.1f} MB/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
