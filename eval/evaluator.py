"""Evaluate one or more dictionaries on one store, sharing the reads.

    pass 1  each shard read once; per dictionary and batch: encode once, then feed
            Metrics (RE, AD, …), MaskingCurve (usage; the whole curve for "gram") and
            FeatureStats (top-n, density, histogram)
    pass 2  only for masking curves that need the usage order first (wide or MLP decoders)
    loss    the model run over some of the store's context windows, dictionary spliced in

`evaluate_store` returns one `Evaluation` per dictionary; eval/cli.py and eval/compare.py
turn them into reports and tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saease.eval.features import HIST_EDGES, FeatureStats, feature_records, load_tokenizer
from saease.eval.stream import Notes, check_pairing, eval_rows, stream
from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.metrics import MaskingCurve, Metrics, encode_batch
from saease.store import ActivationStore


@dataclass
class Options:
    all_rows: bool = False
    batch_size: int = 8192
    masking: bool = True
    masking_method: str = "auto"
    features: bool = True
    top_n: int = 20
    sample_n: int = 20
    bands: int = 4
    logit_k: int = 10
    context_left: int = 12
    context_right: int = 4
    progress: bool = True


@dataclass
class Evaluation:
    """One dictionary evaluated on one store."""

    name: str  # label: the dictionary folder's name, made unique
    path: str
    dictionary: Dictionary
    split: str  # "held-out" or "all"
    rows: torch.Tensor | None  # mask of the evaluated rows, None = all
    metrics: Metrics
    curve: MaskingCurve | None
    stats: FeatureStats | None
    loss: dict | None = None
    result: dict = field(default_factory=dict)  # metrics.result() after the passes

    @property
    def kind(self) -> str:
        return self.dictionary.kind

    def masking(self) -> dict | None:
        return None if self.curve is None else self.curve.result()


def labels_for(paths: list[str]) -> list[str]:
    """Unique short names: the folder names, numbered where they repeat."""
    names = [Path(p).resolve().name or str(p) for p in paths]
    out = []
    for i, name in enumerate(names):
        out.append(name if names.count(name) == 1 else f"{name}-{i + 1}")
    return out


@torch.no_grad()
def evaluate_store(dictionaries: list[tuple[str, Dictionary]], store: ActivationStore, opts: Options,
                   notes: Notes) -> list[Evaluation]:
    """Run pass 1 (and pass 2 where a masking curve needs it) for every dictionary."""
    names = labels_for([p for p, _ in dictionaries])
    evals = []
    for (path, d), name in zip(dictionaries, names):
        check_pairing(d, path, store, notes)
        d.eval()
        mask, split = eval_rows(d, store, opts.all_rows)
        evals.append(Evaluation(
            name=name, path=str(path), dictionary=d, split=split, rows=mask, metrics=Metrics(from_variance=d.ad_from_variance),
            curve=MaskingCurve(d, opts.masking_method) if opts.masking else None,
            stats=FeatureStats(d.cfg.d_latent, opts.top_n, d.device, sample_n=opts.sample_n)
            if opts.features else None))
    if opts.features:
        _note_missing_columns(store, notes)

    second = [e for e in evals if e.curve is not None and e.curve.needs_second_pass]
    n_rows = sum(store.n_rows if e.rows is None else int(e.rows.sum()) for e in evals)
    n_rows2 = sum(store.n_rows if e.rows is None else int(e.rows.sum()) for e in second)
    bar = tqdm(total=n_rows + n_rows2, unit="vec", desc="eval", disable=not opts.progress, leave=False)
    for k, batch in stream(store, [e.rows for e in evals], opts.batch_size):
        e = evals[k]
        b = encode_batch(e.dictionary, batch.acts)
        e.metrics.update(b, batch.labels)
        if e.curve is not None:
            e.curve.update(b)
        if e.stats is not None:
            e.stats.update(b, batch)
        bar.update(len(batch.acts))
    for e in evals:
        e.result = e.metrics.result()
    if second:
        bar.set_description("eval: masking (pass 2)")
        for e in second:
            e.curve.fix_order()
        for k, batch in stream(store, [e.rows for e in second], opts.batch_size):
            e = second[k]
            e.curve.update_second(encode_batch(e.dictionary, batch.acts))
            bar.update(len(batch.acts))
    bar.close()
    return evals


def _note_missing_columns(store: ActivationStore, notes: Notes) -> None:
    from safetensors import safe_open

    with safe_open(str(store.path / store.shards[0]["file"]), "pt") as f:
        columns = set(f.keys())
    if not {"tokens", "seq", "pos"} <= columns:
        notes.warn(f"{store.path} has no token columns (not harvested from a model?); "
                   "features list their top rows without tokens")
    elif not store.has_contexts:
        notes.warn(f"{store.path} has no contexts.safetensors; top tokens are shown without their context")


def feature_report(e: Evaluation, store: ActivationStore, opts: Options, notes: Notes, tokenizer=None,
                   W_U=None, no_logits: str = "") -> dict:
    """The features.json content for one evaluation (`W_U`: the model's unembedding, for the
    logit effects; None: none, `no_logits` says why)."""
    contexts = store.contexts()["tokens"] if store.has_contexts else None
    records, segments = feature_records(e.stats, contexts=contexts, tokenizer=tokenizer, left=opts.context_left,
                                        right=opts.context_right, bands=opts.bands, progress=opts.progress)
    if W_U is not None:
        add_logit_effects(records, e.dictionary, W_U, tokenizer, opts)
    return {
        "format": "saease.features/2", "dictionary": e.name, "path": e.path, "kind": e.kind,
        "store": str(store.path), "split": e.split, "n": e.result["n"], "top_n": opts.top_n,
        "sample_n": opts.sample_n, "context": {"left": opts.context_left, "right": opts.context_right},
        "density": "fraction of evaluated rows where the latent's code is non-zero",
        "active": "fraction of evaluated rows where the AD split counts the latent active (sums to AD)",
        "score": "default sort: density weight × (0.25 + 0.75 × top-token concentration), docs/eval.md",
        "hist_edges": HIST_EDGES, "hist": "counts of log10(activation) for positive activations, "
                                          "bins hist_edges[lo + i] .. hist_edges[lo + i + 1]",
        "logits": ("direct-path logit effect of the decoder row: W_dec[j] / input_scale @ W_U" if W_U is not None
                   else f"none: {no_logits or 'no unembedding'}"),
        "metrics": {k: v for k, v in e.result.items() if not isinstance(v, dict)},
        "notes": list(notes.seen),
        "segments": segments,
        "features": records,
    }


def add_logit_effects(records: list[dict], d: Dictionary, W_U, tokenizer, opts: Options) -> None:
    """records[j]["logits"] = {"promoted": [[token, value], …], "suppressed": […]}."""
    from saease.eval.logits import logit_effects
    from saease.eval.tokens import id_strings

    up, up_ids, down, down_ids = logit_effects(d, W_U, opts.logit_k, progress=opts.progress)
    strings = id_strings(tokenizer, sorted(set(up_ids.flatten().tolist()) | set(down_ids.flatten().tolist())))
    for rec, uv, ui, dv, di in zip(records, up.tolist(), up_ids.tolist(), down.tolist(), down_ids.tolist()):
        rec["logits"] = {"promoted": [[strings[i], round(v, 4)] for i, v in zip(ui, uv)],
                         "suppressed": [[strings[i], round(v, 4)] for i, v in zip(di, dv)]}


def store_tokenizer(store: ActivationStore, notes: Notes):
    return load_tokenizer(store.source, notes)


# ---- loss recovered ---------------------------------------------------------------------

class ModelCache:
    """Loads each (model, processing) once for all dictionaries."""

    def __init__(self, device):
        self.device, self.models = device, {}

    def get(self, name: str, processed: bool):
        from saease.models import load_model

        key = (name, processed)
        if key not in self.models:
            self.models[key] = load_model(name, raw=not processed, device=str(self.device))
        return self.models[key]


def loss_source(e: Evaluation, store: ActivationStore, model_override: str | None) -> tuple[str | None, str | None, str]:
    """(model, hook, why-not) for splicing this dictionary; why-not is "" when both are known."""
    src = {**store.source, **{k: v for k, v in e.dictionary.cfg.source.items() if v is not None}}
    model = model_override or src.get("model")
    hook = src.get("hook")
    if not model:
        return None, None, f"{store.path} records no model (not harvested from one)"
    if not hook:
        return None, None, f"{e.path} records no hook to splice at"
    if src.get("encoder") or src.get("model_class") == "HookedEncoder":  # (older stores: the class)
        return None, None, f"{store.path} was harvested from an encoder (BERT): no next-token loss to recover"
    if not store.has_contexts:
        return None, None, f"{store.path} has no contexts.safetensors to take token windows from"
    return model, hook, ""


def add_loss(evals: list[Evaluation], store: ActivationStore, *, mode: bool | None, n_seqs: int, seed: int,
             model_override: str | None, device, notes: Notes, progress: bool, batch_size: int = 8) -> None:
    """Fill `e.loss` for each evaluation. mode None = where possible (else a warning), True = required."""
    from saease.eval.loss import loss_recovered, pick_sequences

    if mode is False:
        return
    cache = ModelCache(device)
    windows = None
    for e in evals:
        model_name, hook, why = loss_source(e, store, model_override)
        if why:
            if mode:
                raise SaeaseError(f"cannot compute loss recovered for {e.path}: {why}")
            notes.warn(f"loss recovered skipped: {why}")
            continue
        if windows is None:
            windows = pick_sequences(store.contexts()["tokens"], n_seqs, seed)
        processed = store.source.get("processed", e.dictionary.cfg.source.get("processed", True))
        try:
            model = cache.get(model_name, bool(processed))
        except SaeaseError as err:
            if mode:
                raise
            notes.warn(f"loss recovered skipped for {e.name}: {err} (pass --model PATH)")
            continue
        with warnings.catch_warnings(record=True) as caught:  # lens's model checks, as one-line notes
            warnings.simplefilter("always")
            e.loss = loss_recovered(model, e.dictionary.to(model.cfg.device), windows, hook,
                                    batch_size=batch_size, progress=progress)
        for w in caught:
            notes.warn(f"{e.name}: {w.message}")
