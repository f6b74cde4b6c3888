"""`saease quickstart`: the whole pipeline on a real (small) language model, offline, in minutes.

    harvest   blocks.L.hook_resid_post of the plays model (L = the middle block) over three
              training plays (the dictionaries' data) and over the two held-out plays (eval)
    train     VAEase and an SAE-TopK baseline on the training store (`saease train`)
    eval      RE, L0, AD, the HTML feature report and next-token loss recovered on the held-out
              plays (`saease eval`)
    splice    run the model on a held-out passage with each dictionary spliced in at its hook
              (`saease.lens.splice`) and print the next-token loss against the clean model's

The default model is the repository's own plays model (`saease.recipes.plays_model`: a 4-block
GPT-NeoX trained on Shakespeare's plays, shipped in ``recipes/assets/plays-neox``); the text is
shipped too (``recipes/assets/plays-text``), so nothing is downloaded. ``--model pythia-70m``
(or any hub id / local folder) runs the same pipeline on that model instead; offline, a model
missing from the local Hugging Face cache fails at once with a one-line error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saease.cli import dataclass_args, option
from saease.errors import SaeaseError

KINDS = ("vaease", "sae-topk")
LABELS = {"vaease": "VAEase", "sae-topk": "SAE-TopK"}
CONTEXT = 128  # the plays model's positions


@dataclass
class QuickstartConfig:
    """`saease quickstart`'s flags."""

    out: str = option("saease-quickstart", "folder for stores, dictionaries and report")
    model: str | None = option(None, "model to harvest (default: the shipped plays model); e.g. pythia-70m, "
                                     "a hub id or a local Hugging Face folder")
    layer: int | None = option(None, "block to hook (default: the middle block of a local model, 2 for a "
                                     "hub model)")
    rows: int = option(0, "training activation rows (0: every token of the three harvest plays, ~131k)")
    eval_rows: int = option(0, "held-out rows for RE/L0/features (0: every token of the held-out plays)")
    d_latent: int = option(512, "latent width κ of both dictionaries")
    k: int = option(16, "active latents of the SAE-TopK baseline")
    epochs: int = option(10, "training epochs per dictionary")
    loss_seqs: int = option(32, "held-out windows for loss recovered")
    quick: bool = option(False, "tiny budget for a smoke test (4,096 rows, κ 128, 2 epochs, 4 loss windows)")
    seed: int = option(0, "seed for training and the loss-recovered windows")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)")
    progress: bool = option(True, "progress bars and stage lines on stderr")


Config = QuickstartConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dataclass_args(parser, QuickstartConfig)


def run(cfg: QuickstartConfig) -> dict:
    if cfg.quick:
        cfg = dataclasses.replace(cfg, rows=cfg.rows or 4096, eval_rows=cfg.eval_rows or 2048, d_latent=128,
                                  epochs=2, loss_seqs=min(cfg.loss_seqs, 4))
    for name in ("d_latent", "k", "epochs", "loss_seqs"):
        if getattr(cfg, name) < 1:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a positive integer")
    for name in ("rows", "eval_rows"):
        if getattr(cfg, name) < 0:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected 0 (all) or a positive count")
    if cfg.threads is not None and cfg.threads < 1:
        raise SaeaseError(f"--threads {cfg.threads}: expected a positive integer")
    if cfg.k > cfg.d_latent:
        raise SaeaseError(f"--k {cfg.k}: expected at most --d-latent ({cfg.d_latent})")
    from saease.train.devices import torch_threads

    with torch_threads(cfg.threads):
        return _quickstart(cfg)


def show(cfg: QuickstartConfig, summary: dict) -> dict:
    """The results table, then the rest of the summary (without --json)."""
    print(table(summary))
    return {k: v for k, v in summary.items() if k != "results"}


def _quickstart(cfg: QuickstartConfig) -> dict:
    from saease.recipes import plays_model

    started = time.time()
    out = Path(cfg.out)
    say = _stage_printer(cfg.progress)
    model = cfg.model or str(plays_model.model_path(progress=cfg.progress))
    layer = cfg.layer if cfg.layer is not None else _middle_layer(model)
    harvest_text, heldout_text = plays_model.text_folder("harvest"), plays_model.text_folder("heldout")

    say(1, f"harvest blocks.{layer}.hook_resid_post of {Path(model).name} over {harvest_text}")
    train_store = _harvest(model, layer, harvest_text, out / "activations" / "train", cfg.rows, cfg.progress)
    say(1, f"harvest the held-out plays ({heldout_text})")
    eval_store = _harvest(model, layer, heldout_text, out / "activations" / "heldout", cfg.eval_rows, cfg.progress)

    dictionaries, trained = {}, {}
    for kind in KINDS:
        say(2, f"train {LABELS[kind]} (κ = {cfg.d_latent}, {cfg.epochs} epochs) on {train_store['n_rows']:,} rows")
        folder = out / "dictionaries" / kind
        flags = ["--data", train_store["store"], "--out", folder, "--kind", kind, "--d-latent", cfg.d_latent,
                 "--epochs", cfg.epochs, "--seed", cfg.seed, "--overwrite", "--checkpoint-every", 0]
        flags += ["--k", cfg.k] if kind == "sae-topk" else []
        flags += [] if cfg.progress else ["--no-progress"]
        trained[kind] = _cli("train", *flags)
        dictionaries[kind] = str(folder)

    say(3, "eval on the held-out plays: RE, L0, features.html, loss recovered")
    report = out / "report"
    evaluation = _cli("eval", *dictionaries.values(), "--data", eval_store["store"], "--out", report,
                      "--loss", "--loss-seqs", cfg.loss_seqs, "--seed", cfg.seed,
                      *([] if cfg.progress else ["--no-progress"]))
    evals = {Path(e["dictionary"]).name: e for e in evaluation["dictionaries"]}

    say(4, "splice each dictionary into the model on a held-out passage")
    spliced = splice_demo(model, dictionaries, eval_store["store"])

    results = {}
    for kind in KINDS:
        e = evals[kind]
        results[LABELS[kind]] = {
            "re": e["re"], "explained_variance": e.get("explained_variance"), "l0": e.get("l0"), "ad": e.get("ad"),
            "loss_recovered": e["loss_recovered"], "ce_clean": e["ce_clean"], "ce_spliced": e["ce_spliced"],
            "ce_zero_ablated": e["ce_zero_ablated"], "splice_passage_ce": spliced["spliced"][kind],
            "dictionary": dictionaries[kind], "train_seconds": trained[kind].get("train_seconds"),
            "features_html": str(report / kind / "features.html"),
        }
    summary = {
        "model": model, "hook": train_store["hook"], "out": str(out),
        "train_rows": train_store["n_rows"], "heldout_rows": eval_store["n_rows"],
        "d_latent": cfg.d_latent, "k": cfg.k, "epochs": cfg.epochs, "loss_seqs": cfg.loss_seqs,
        "splice_passage": spliced["passage"], "splice_passage_ce_clean": spliced["clean"],
        "results": results, "report": str(report), "seconds": round(time.time() - started, 1),
    }
    return summary


# ---------------------------------------------------------------------------------------------
# stages (each one an existing entry point)


def _harvest(model: str, layer: int, text: Path, out: Path, rows: int, progress: bool) -> dict:
    from saease.harvest.cli import run as harvest
    from saease.harvest.config import HarvestConfig

    cfg = HarvestConfig(model=model, layer=layer, hook="resid_post", dataset=str(text),
                        context_size=CONTEXT, max_rows=rows, out=str(out), overwrite=True)
    with _quiet_stdout(not progress):
        return harvest(cfg)


def _cli(command: str, *flags) -> dict:
    """`saease COMMAND FLAGS --json` in-process; returns its JSON summary."""
    from saease.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([command, *map(str, flags), "--json"])
    lines = buffer.getvalue().strip().splitlines()
    if code != 0 or not lines:
        raise SaeaseError(f"`saease {command}` failed (exit {code}; its error is above)")
    return json.loads(lines[-1])


@torch.no_grad()
def splice_demo(model_name: str, dictionaries: dict[str, str], store: str) -> dict:
    """Next-token loss on one held-out window, clean and with each dictionary spliced in."""
    from saease.dictionary import Dictionary
    from saease.eval.loss import next_token_ce
    from saease.lens import splice
    from saease.models import load_model
    from saease.store import ActivationStore

    model = load_model(model_name, device="cpu")
    tokens = _middle_window(ActivationStore(store)).to(model.cfg.device)
    clean = next_token_ce(model(tokens), tokens).mean().item()
    spliced = {}
    for kind, folder in dictionaries.items():
        with splice(model, Dictionary.load(folder)):
            spliced[kind] = next_token_ce(model(tokens), tokens).mean().item()
    passage = " ".join(model.tokenizer.decode(tokens[0, :32].tolist()).split())
    return {"passage": passage + " …", "clean": clean, "spliced": spliced}


def _middle_window(store) -> torch.Tensor:
    """The middle context window of a store (the first is a play's title page)."""
    windows = store.contexts()["tokens"]
    return windows[len(windows) // 2:len(windows) // 2 + 1].long()


def _middle_layer(model: str) -> int:
    """The middle block of a local model (from its config.json); 2 (the paper's) for a hub name."""
    from saease.harvest.config import DEFAULT_LAYER

    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        n_layers = json.loads(config.read_text()).get("num_hidden_layers")
        if isinstance(n_layers, int) and n_layers > 0:
            return n_layers // 2
    return DEFAULT_LAYER


def _stage_printer(enabled: bool):
    def say(stage: int, text: str) -> None:
        if enabled:
            print(f"[{stage}/4] {text}", file=sys.stderr, flush=True)
    return say


@contextlib.contextmanager
def _quiet_stdout(quiet: bool):
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        yield


def table(summary: dict) -> str:
    rows = ["| dictionary | RE | EV | L0 | AD | loss recovered | CE spliced (clean "
            f"{next(iter(summary['results'].values()))['ce_clean']:.3f}) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in summary["results"].items():
        rows.append(f"| {name} | {r['re']:.4g} | {_f(r['explained_variance'])} | {_f(r['l0'], 1)} | "
                    f"{_f(r['ad'], 1)} | {r['loss_recovered']:.3f} | {r['ce_spliced']:.3f} |")
    passage = [f"  {name}: {r['splice_passage_ce']:.3f}" for name, r in summary["results"].items()]
    return (f"\n{summary['model']} {summary['hook']}, held-out plays ({summary['heldout_rows']:,} rows; "
            f"loss recovered over {summary['loss_seqs']} held-out windows):\n" + "\n".join(rows) +
            f"\n\nspliced into the model on the held-out passage \"{summary['splice_passage']}\"\n"
            f"next-token loss (nats): clean {summary['splice_passage_ce_clean']:.3f}\n" + "\n".join(passage) + "\n")


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
