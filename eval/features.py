"""What the feature dashboard shows of each latent, collected in the one streaming pass.

`FeatureStats` sees each batch once and keeps, per latent: its `top_n` largest activations with
their store rows (a running top-n merged batch by batch), a uniform random sample of `sample_n`
of its positive activations (bottom-k of random keys, merged the same way; the dashboard's
quantile bands are cut from it), how many rows it is non-zero on (its density), its sum, and a
histogram of log10 of its positive activations. Memory is O((top_n + sample_n + bins)·κ) plus
three integers per evaluated row (token, seq, pos), never the codes.

`feature_records` turns that into JSON-ready records, and the context windows of their examples
into *segments*: for each store sequence an example comes from, the span of tokens any example
needs, rendered once with the store's tokenizer as it writes text (`saease.eval.tokens`).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saease.eval.stream import Batch, Notes
from saease.eval.tokens import id_strings, token_pieces
from saease.metrics import Encoded

# log10 |z| bin edges: 160 bins of 0.05 from 1e-4 to 1e4; values outside land in the end bins.
HIST_STEP = 0.05
HIST_EDGES = [round(-4 + HIST_STEP * i, 2) for i in range(161)]


class FeatureStats:
    def __init__(self, d_latent: int, top_n: int = 20, device: torch.device | str = "cpu", sample_n: int = 20,
                 seed: int = 0):
        self.top_n, self.sample_n, self.d_latent = top_n, sample_n, d_latent
        self.n = 0
        self.values = torch.full((top_n, d_latent), -torch.inf, device=device)  # [top_n, κ], descending
        self.rows = torch.full((top_n, d_latent), -1, dtype=torch.int64, device=device)
        self.sample_keys = torch.full((sample_n, d_latent), torch.inf, device=device)  # [sample_n, κ], ascending
        self.sample_values = torch.zeros((sample_n, d_latent), device=device)
        self.sample_rows = torch.full((sample_n, d_latent), -1, dtype=torch.int64, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.active = torch.zeros(d_latent, dtype=torch.int64, device=device)
        self.nonzero = torch.zeros(d_latent, dtype=torch.int64, device=device)
        self.total = torch.zeros(d_latent, dtype=torch.float64, device=device)
        self.n_bins = len(HIST_EDGES) - 1
        self.hist = torch.zeros(d_latent * self.n_bins, dtype=torch.int64, device=device)
        self._rows: list[Tensor] = []
        self._meta: list[Tensor] = []

    @torch.no_grad()
    def update(self, b: Encoded, batch: Batch) -> None:
        codes = b.codes.float()  # [batch, κ]
        rows = batch.rows.to(codes.device)
        self.n += len(codes)
        self._update_top(codes, rows)
        self._update_sample(codes, rows)
        self.active += b.active_per_latent
        self.nonzero += (codes != 0).sum(0)
        self.total += codes.sum(0, dtype=torch.float64)
        self._update_hist(codes)
        if batch.meta is not None:
            self._rows.append(batch.rows)
            self._meta.append(batch.meta.to(torch.int32))

    def _update_top(self, codes: Float[Tensor, "batch d_latent"], rows: Int[Tensor, " batch"]) -> None:
        v, i = codes.topk(min(self.top_n, len(codes)), dim=0)
        values, cand = torch.cat([self.values, v]), torch.cat([self.rows, rows[i]])
        self.values, pick = values.topk(self.top_n, dim=0)
        self.rows = cand.gather(0, pick)

    def _update_sample(self, codes: Float[Tensor, "batch d_latent"], rows: Int[Tensor, " batch"]) -> None:
        """Keep the positive activations with the smallest random keys: a uniform sample."""
        if not self.sample_n:
            return
        keys = torch.rand(codes.shape, generator=self.generator, device=codes.device)
        keys = torch.where(codes > 0, keys, torch.inf)
        k, i = keys.topk(min(self.sample_n, len(codes)), dim=0, largest=False)
        all_keys = torch.cat([self.sample_keys, k])
        all_values = torch.cat([self.sample_values, codes.gather(0, i)])
        all_rows = torch.cat([self.sample_rows, rows[i]])
        self.sample_keys, pick = all_keys.topk(self.sample_n, dim=0, largest=False)
        self.sample_values, self.sample_rows = all_values.gather(0, pick), all_rows.gather(0, pick)

    def _update_hist(self, codes: Float[Tensor, "batch d_latent"]) -> None:
        """Histogram of log10 of the positive activations, bins [edge_i, edge_i+1) like numpy's."""
        where = (codes > 0).nonzero()
        log10 = codes[where[:, 0], where[:, 1]].log10()
        bins = ((log10 - HIST_EDGES[0]) / HIST_STEP).floor().clamp(0, self.n_bins - 1).long()
        self.hist += torch.bincount(where[:, 1] * self.n_bins + bins, minlength=len(self.hist))

    def meta_of(self, rows: Tensor) -> Tensor | None:
        """[len(rows), 3] (token, seq, pos) of evaluated store rows, None if the store has none."""
        if not self._meta:
            return None
        all_rows = torch.cat(self._rows)  # ascending: the stream visits rows in store order
        at = torch.searchsorted(all_rows, rows).clamp_max(len(all_rows) - 1)
        return torch.cat(self._meta)[at].to(torch.int64)


def load_tokenizer(source: dict, notes: Notes):
    """The store's tokenizer (hub name or folder recorded at harvest), or None with a warning."""
    name = source.get("tokenizer") or source.get("model")
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # OSError, ValueError, …: any failure means "show token ids"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        notes.warn(f"cannot load tokenizer {name!r} ({first}); tokens are shown as ids")
        return None


# ---- the records ---------------------------------------------------------------------------

def interpretability_score(count: int, density: float, tokens: list[str], top_n: int) -> float:
    """The dashboard's default sort key, in [0, 1]: a density weight times a token-concentration
    term (docs/eval.md, "How the index is sorted").

    weight: 1 for latents non-zero on at least `top_n` rows and at most 1% of them; falling
    linearly to 0 with the count below `top_n` (too few examples to judge) and with log10 of the
    density from 1% to 10% (ultra-dense latents rarely mean one thing).
    concentration: 1 − H/log n of the activating tokens of the n top examples (case and
    surrounding space ignored): 1 when they all share one token, 0 when all differ.
    """
    if count == 0:
        return 0.0
    rare = min(1.0, count / max(top_n, 1))
    dense = 1.0 if density <= 0.01 else max(0.0, 1.0 - math.log10(density / 0.01))
    concentration = 0.0
    if len(tokens) > 1:
        counts = Counter(t.strip().lower() for t in tokens).values()
        entropy = -sum(c / len(tokens) * math.log(c / len(tokens)) for c in counts)
        concentration = 1.0 - entropy / math.log(len(tokens))
    return round(rare * dense * (0.25 + 0.75 * concentration), 4)


def _grouped(values: Float[Tensor, "n d_latent"], rows: Int[Tensor, "n d_latent"]):
    """The positive entries as (latent, value, row), grouped by latent, in their rank order."""
    keep = (values > 0) & (rows >= 0)
    lat = keep.nonzero()[:, 1]
    order = torch.sort(lat, stable=True).indices
    return lat[order], values[keep][order], rows[keep][order]


def _segments(meta: Int[Tensor, "n 3"], contexts: Tensor, left: int, right: int) -> dict[int, tuple[int, list[int]]]:
    """seq -> (start, token ids): per sequence, the span of positions that any example's window
    [pos − left, pos + right] covers."""
    ctx = contexts.shape[1]
    ok = (meta[:, 1] < len(contexts)) & (meta[:, 2] < ctx)
    seq, pos = meta[ok, 1], meta[ok, 2]
    if not len(seq):
        return {}
    start, end = (pos - left).clamp_min(0), (pos + right).clamp_max(ctx - 1)
    lo = torch.full((len(contexts),), ctx, dtype=torch.int64).scatter_reduce(0, seq, start, "amin")
    hi = torch.full((len(contexts),), -1, dtype=torch.int64).scatter_reduce(0, seq, end, "amax")
    used = (hi >= 0).nonzero()[:, 0].tolist()
    return {s: (int(lo[s]), contexts[s, lo[s]: hi[s] + 1].tolist()) for s in used}


def feature_records(stats: FeatureStats, *, contexts: Tensor | None, tokenizer, left: int = 12,
                    right: int = 4, bands: int = 4, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """(records, segments). One record per latent: id, density (non-zero rows / rows), count,
    active (its share of AD), mean (over all rows), mean_active, max, hist {lo, counts} (bins of
    HIST_EDGES from index lo), score, top [examples], bands [{q, min, max, examples}] (the random
    sample cut into `bands` equal-count bands, highest first). An example: act, row, and where
    the store has token columns token_id, token, seq, pos. segments: [{seq, start, pieces}]."""
    n = max(stats.n, 1)
    top = _grouped(stats.values.cpu(), stats.rows.cpu())
    sample = _grouped(stats.sample_values.cpu(), stats.sample_rows.cpu())
    all_rows = torch.cat([top[2], sample[2]])
    meta = stats.meta_of(all_rows) if len(all_rows) else None

    strings: dict[int, str] = {}
    segments: list[dict] = []
    if meta is not None:
        strings = id_strings(tokenizer, sorted(set(meta[:, 0].tolist())))
        if contexts is not None:
            spans = _segments(meta, contexts, left, right)
            pieces = token_pieces(tokenizer, [ids for _, ids in spans.values()], progress=progress)
            segments = [{"seq": s, "start": start, "pieces": p} for (s, (start, _)), p in zip(spans.items(), pieces)]

    def example(e: int) -> dict:
        out = {"act": _round(all_values[e]), "row": int(all_rows[e])}
        if meta is not None:
            token, seq, pos = meta[e].tolist()
            out.update(token_id=token, token=strings[token], seq=seq, pos=pos)
        return out

    all_values = torch.cat([top[1], sample[1]]).tolist()
    records = _base_records(stats, n)
    for e, j in enumerate(top[0].tolist()):
        records[j]["top"].append(example(e))
    samples: list[list[dict]] = [[] for _ in records]
    for e, j in enumerate(sample[0].tolist(), start=len(top[0])):
        samples[j].append(example(e))
    for rec, drawn in zip(records, samples):
        rec["max"] = rec["top"][0]["act"] if rec["top"] else None
        rec["bands"] = _bands(drawn, bands)
        tokens = [ex.get("token", str(ex["row"])) for ex in rec["top"]]
        rec["score"] = interpretability_score(rec["count"], rec["density"], tokens, stats.top_n)
    return records, segments


def _base_records(stats: FeatureStats, n: int) -> list[dict]:
    hist = stats.hist.view(stats.d_latent, stats.n_bins).cpu()
    used = hist > 0
    first = used.int().argmax(1).tolist()
    last = (stats.n_bins - 1 - used.flip(1).int().argmax(1)).tolist()
    active, nonzero, total = stats.active.cpu().tolist(), stats.nonzero.cpu().tolist(), stats.total.cpu().tolist()
    records = []
    for j in range(stats.d_latent):
        counts = hist[j, first[j]: last[j] + 1].tolist() if used[j, first[j]] else []
        records.append({"id": j, "density": nonzero[j] / n, "count": nonzero[j], "active": active[j] / n,
                        "mean": total[j] / n, "mean_active": total[j] / nonzero[j] if nonzero[j] else 0.0,
                        "max": None, "hist": {"lo": first[j] if counts else 0, "counts": counts},
                        "top": [], "bands": [], "score": 0.0})
    return records


def _bands(drawn: list[dict], bands: int) -> list[dict]:
    """The sampled examples sorted by activation and cut into `bands` equal-count bands (the
    sample is uniform over the positive activations, so band b spans about its b-th quantiles),
    highest band first."""
    drawn = sorted(drawn, key=lambda ex: ex["act"])
    if not drawn or bands < 1:
        return []
    out = []
    for b in range(bands):
        part = drawn[len(drawn) * b // bands: len(drawn) * (b + 1) // bands]
        if part:
            out.append({"q": [b / bands, (b + 1) / bands], "min": part[0]["act"], "max": part[-1]["act"],
                        "examples": part[::-1]})
    return out[::-1]


def _round(x: float) -> float:
    return float(f"{x:.4g}")
