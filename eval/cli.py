"""`saease eval DICT [DICT ...] [--data STORE] [--out REPORT]`: RE, AD and the rest, the
latent masking curve, top activating tokens per feature, and loss recovered.

Metrics are computed on the rows a dictionary held out in training when `--data` is its
training store (or is not given), and on every row of any other store (`--all-rows`: always
every row). With `--out REPORT` the report is written there:

    REPORT/masking.csv, masking.png      the masking curves, every dictionary on one plot
    REPORT/features.json, features.html  the feature dashboard: per latent its top and quantile
                                         examples, density, histogram, logit effects
                                         (REPORT/<name>/features.* for each of several)
    REPORT/summary.json                  the printed summary
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saease.eval.evaluator import Evaluation, Options, add_loss, evaluate_store, feature_report, store_tokenizer
from saease.eval.html import write_html
from saease.eval.plots import plot_masking, write_masking_csv
from saease.eval.stream import Notes, open_store, training_store
from saease.cli import dataclass_args
from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.metrics import MaskingCurve
from saease.store import ActivationStore, atomic_write_bytes, atomic_write_json
from saease.train.devices import pick_device


@dataclass
class EvalConfig:
    dictionaries: list[str] = field(default_factory=list, metadata={
        "help": "dictionary folders written by `saease train` (several: overlaid masking curves)",
        "metavar": "DICT"})
    data: str | None = field(default=None, metadata={
        "help": "activation store (default: the first dictionary's training store)", "metavar": "STORE"})
    out: str | None = field(default=None, metadata={
        "help": "report folder for masking.csv/png and features.json/html (default: print the summary only)",
        "metavar": "REPORT"})
    all_rows: bool = field(default=False, metadata={"help": "evaluate every row, not only the held-out ones"})
    screenshot: str | None = field(default=None, metadata={
        "help": "also save a PNG of the dashboard (with --out; needs chromium), e.g. docs/figures/dashboard.png",
        "metavar": "PNG"})
    top_n: int = field(default=20, metadata={"help": "top activating examples kept per latent"})
    quantile_examples: int = field(default=20, metadata={
        "help": "examples drawn at random from each latent's positive activations, shown in 4 quantile bands"})
    logits: bool | None = field(default=None, metadata={
        "help": "logit effects of the decoder rows through the model's unembedding (default: when the store "
                "records a model with one; --model overrides)"})
    context_left: int = field(default=12, metadata={"help": "tokens of context shown before an example"})
    context_right: int = field(default=4, metadata={"help": "tokens of context shown after an example"})
    masking: bool = field(default=True, metadata={"help": "compute the latent masking curve"})
    masking_method: str = field(default="auto", metadata={
        "help": "how: gram (one pass), blockwise (two passes, wide), decode (MLP decoders)",
        "choices": list(MaskingCurve.METHODS)})
    loss: bool | None = field(default=None, metadata={
        "help": "loss recovered with the dictionary spliced into the model (default: when the store "
                "records its model and contexts)"})
    loss_seqs: int = field(default=32, metadata={"help": "context windows for loss recovered"})
    model: str | None = field(default=None, metadata={
        "help": "model for loss recovered (default: the one the store was harvested from)"})
    seed: int = field(default=0, metadata={"help": "seed for choosing the loss-recovered windows"})
    batch_size: int = field(default=8192, metadata={"help": "vectors per batch"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N (default: cuda when present)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


Config = EvalConfig


def add_arguments(parser) -> None:
    dataclass_args(parser, EvalConfig, positional=("dictionaries",))


def open_inputs(cfg) -> tuple[torch.device, list[tuple[str, Dictionary]], ActivationStore]:
    """Check the config, then the device, the dictionaries and the store (`saease eval` and
    `saease compare` share this)."""
    check_config(cfg)
    device = pick_device(cfg.device)
    dictionaries = load_dictionaries(cfg.dictionaries, device)
    return device, dictionaries, open_store(cfg.data or training_store(dictionaries[0][1], cfg.dictionaries[0]))


def load_dictionaries(paths: list[str], device) -> list[tuple[str, Dictionary]]:
    if not paths:
        raise SaeaseError("no dictionary given; pass one or more folders written by `saease train`")
    from saease.saelens import load_any  # our folders, or SAELens SAE folders (cfg.json)

    return [(p, load_any(p, device=device)) for p in paths]


def check_config(cfg: EvalConfig) -> None:
    if getattr(cfg, "screenshot", None) and not getattr(cfg, "out", None):
        raise SaeaseError(f"--screenshot {cfg.screenshot}: needs --out REPORT (the dashboard to photograph)")
    if getattr(cfg, "quantile_examples", 0) < 0:
        raise SaeaseError(f"--quantile-examples {cfg.quantile_examples}: expected 0 or more examples")
    for name in ("top_n", "batch_size", "loss_seqs"):
        if getattr(cfg, name, 1) < 1:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a positive integer")
    for name in ("context_left", "context_right"):
        if getattr(cfg, name, 0) < 0:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected 0 or more tokens")


def summary_of(e: Evaluation, store) -> dict:
    """The flat summary of one evaluation (the keys `saease eval` has always printed, then more)."""
    out = {"dictionary": e.path, "store": str(store.path), "kind": e.kind, "split": e.split, **e.result}
    curve = e.masking()
    if curve is not None:
        out["masking"] = {"method": curve["method"], "re_none_masked": curve["re"][0],
                          "re_all_masked": curve["re"][-1]}
    if e.loss is not None:
        out.update(e.loss)
    return out


def run(cfg: EvalConfig) -> dict:
    device, dictionaries, store = open_inputs(cfg)
    notes = Notes()
    out = Path(cfg.out) if cfg.out else None
    opts = Options(all_rows=cfg.all_rows, batch_size=cfg.batch_size, masking=cfg.masking,
                   masking_method=cfg.masking_method, features=out is not None, top_n=cfg.top_n,
                   sample_n=cfg.quantile_examples,
                   context_left=cfg.context_left, context_right=cfg.context_right, progress=cfg.progress)
    evals = evaluate_store(dictionaries, store, opts, notes)
    add_loss(evals, store, mode=cfg.loss, n_seqs=cfg.loss_seqs, seed=cfg.seed, model_override=cfg.model,
             device=device, notes=notes, progress=cfg.progress)

    summaries = [summary_of(e, store) for e in evals]
    summary = summaries[0] if len(evals) == 1 else {"store": str(store.path), "dictionaries": summaries}
    if out is not None:
        summary["report"] = str(out)
        summary["files"] = write_report(out, evals, store, opts, notes, logits=cfg.logits, model=cfg.model,
                                        device=device)
    if cfg.screenshot:
        from saease.eval.html import screenshot

        page = out / "features.html" if len(evals) == 1 else out / evals[0].name / "features.html"
        summary["screenshot"] = str(screenshot(page, Path(cfg.screenshot)))
    if notes.seen:
        summary["warnings"] = list(notes.seen)
    if out is not None:
        atomic_write_json(out / "summary.json", summary)
    return summary


def show(cfg: EvalConfig, summary: dict) -> dict:
    """Without --json: the warnings were printed to stderr as they came; several dictionaries
    read better as a table."""
    summary = {k: v for k, v in summary.items() if k != "warnings"}
    if "dictionaries" not in summary:
        return summary
    from saease.eval.compare import table
    from saease.eval.evaluator import labels_for

    rows = summary["dictionaries"]
    print(f"store: {summary['store']}")
    print(table([{**s, "dictionary": name} for s, name in zip(rows, labels_for([s["dictionary"] for s in rows]))]))
    return {k: v for k, v in summary.items() if k not in ("store", "dictionaries")}


def write_report(out: Path, evals: list[Evaluation], store, opts: Options, notes: Notes, *,
                 logits: bool | None = None, model: str | None = None, device="cpu") -> list[str]:
    """Build every report file in memory first, then write each atomically."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaeaseError(f"{out}: cannot create the report folder ({err.strerror})") from None
    files = []
    curves = [(e.name, e.kind, e.masking()) for e in evals if e.curve is not None]
    if curves:
        write_masking_csv(curves, out / "masking.csv")
        plot_masking(curves, out / "masking.png", title=f"latent masking on {store.path.name}")
        files += ["masking.csv", "masking.png"]
    tokenizer = store_tokenizer(store, notes)
    unembeddings: dict = {}
    for e in evals:
        folder = out if len(evals) == 1 else out / e.name
        folder.mkdir(exist_ok=True)
        W_U, why = unembedding_for(e, store, logits, model, device, notes, unembeddings)
        report = feature_report(e, store, opts, notes, tokenizer, W_U, no_logits=why)
        if e.loss is not None:
            report["metrics"].update({k: v for k, v in e.loss.items() if isinstance(v, (int, float))})
        if curves:
            report["masking"] = e.masking()
        atomic_write_bytes(folder / "features.json", (json.dumps(report, ensure_ascii=False) + "\n").encode())
        write_html(report, folder / "features.html")
        prefix = "" if folder == out else f"{e.name}/"
        files += [f"{prefix}features.json", f"{prefix}features.html"]
    return files


def unembedding_for(e: Evaluation, store, logits: bool | None, model: str | None, device, notes: Notes,
                    cache: dict):
    """(W_U for `e`'s logit effects, "") or (None, why not): not asked for, not possible (a
    warning too with --logits), or the model does not load (a warning, never an error)."""
    from saease.eval.logits import load_unembedding, why_no_logits

    if logits is False:
        return None, "--no-logits"
    source = {**store.source, **({"model": model} if model else {})}
    why = why_no_logits(e.dictionary, source)
    if why:
        if logits:
            notes.warn(f"logit effects skipped for {e.name}: {why}")
        return None, why
    processed = bool(store.source.get("processed", True))
    W_U = load_unembedding(source["model"], processed, e.dictionary.cfg.d_in, device, notes, cache)
    return W_U, "" if W_U is not None else f"model {source['model']!r} gave no unembedding (see the notes)"
