"""`saease compare DICT... --data STORE`: the paper's Table 3 layout, one row per dictionary.

RE and AD (the paper's two columns) then L0, explained variance, dead fraction and loss
recovered, all on the same store in one shared read. Prints a markdown table (or with --json
the rows as JSON); `--out FILE` also writes the table (FILE.md) and the JSON (FILE.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from saease.eval.cli import open_inputs
from saease.eval.evaluator import Options, add_loss, evaluate_store
from saease.eval.stream import Notes
from saease.cli import dataclass_args
from saease.store import atomic_write_bytes

COLUMNS = [  # (key, header, format)
    ("re", "RE", "{:.4g}"), ("ad", "AD", "{:.1f}"), ("l0", "L0", "{:.1f}"),
    ("explained_variance", "EV", "{:.3f}"), ("dead_fraction", "dead", "{:.3f}"),
    ("loss_recovered", "loss rec.", "{:.3f}"), ("kl_clean_spliced", "KL", "{:.3g}"),
]


@dataclass
class CompareConfig:
    dictionaries: list[str] = field(default_factory=list, metadata={
        "help": "dictionary folders written by `saease train`", "metavar": "DICT"})
    data: str | None = field(default=None, metadata={
        "help": "activation store (default: the first dictionary's training store)", "metavar": "STORE"})
    out: str | None = field(default=None, metadata={
        "help": "also write the table to OUT.md and the rows to OUT.json", "metavar": "OUT"})
    all_rows: bool = field(default=False, metadata={"help": "evaluate every row, not only the held-out ones"})
    loss: bool | None = field(default=None, metadata={
        "help": "loss recovered (default: when the store records its model and contexts)"})
    loss_seqs: int = field(default=32, metadata={"help": "context windows for loss recovered"})
    model: str | None = field(default=None, metadata={"help": "model for loss recovered (default: the store's)"})
    seed: int = field(default=0, metadata={"help": "seed for choosing the loss-recovered windows"})
    batch_size: int = field(default=8192, metadata={"help": "vectors per batch"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N (default: cuda when present)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


Config = CompareConfig


def add_arguments(parser) -> None:
    dataclass_args(parser, CompareConfig, positional=("dictionaries",))


def table(rows: list[dict]) -> str:
    """A markdown table: dictionary, kind, split, n, then COLUMNS."""
    head = ["dictionary", "kind", "split", "n"] + [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dictionary"], r["kind"], r["split"], str(r["n"])]
        cells += ["–" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: CompareConfig) -> dict:
    device, dictionaries, store = open_inputs(cfg)
    notes = Notes()
    opts = Options(all_rows=cfg.all_rows, batch_size=cfg.batch_size, masking=False, features=False,
                   progress=cfg.progress)
    evals = evaluate_store(dictionaries, store, opts, notes)
    add_loss(evals, store, mode=cfg.loss, n_seqs=cfg.loss_seqs, seed=cfg.seed, model_override=cfg.model,
             device=device, notes=notes, progress=cfg.progress)
    rows = []
    for e in evals:
        row = {"dictionary": e.name, "path": e.path, "kind": e.kind, "split": e.split, **e.result}
        row.update(e.loss or {"loss_recovered": None, "kl_clean_spliced": None})
        rows.append(row)
    summary = {"store": str(store.path), "rows": rows}
    if notes.seen:
        summary["warnings"] = list(notes.seen)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out.with_suffix(".md"), (table(rows) + "\n").encode())
        atomic_write_bytes(out.with_suffix(".json"), (json.dumps(summary, default=str) + "\n").encode())
    return summary


def show(cfg: CompareConfig, summary: dict) -> None:
    """Without --json: the store and the markdown table, nothing else."""
    print(f"store: {summary['store']}")
    print(table(summary["rows"]))
