"""Top activating tokens per feature: a running top-n per latent, merged batch by batch.

`FeatureStats` sees each batch once and keeps, per latent, its `top_n` largest activations
with their store rows, how often the latent is active (the SPEC §2 per-sample split, so the
densities add up to AD) or non-zero, and a histogram of log10 of its positive activations.
Memory is O(top_n·κ + bins·κ) plus three integers per evaluated row (token, seq, pos), never
the codes. `feature_records` turns the result into JSON-ready records: each example with its
token and its context window from the store's `contexts.safetensors`, decoded with the
store's tokenizer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saease.eval.stream import Batch, Notes
from saease.metrics import Encoded

# log10 |z| bin edges: 32 bins of 0.25 from 1e-4 to 1e4; values outside land in the end bins.
HIST_EDGES = [round(-4 + 0.25 * i, 2) for i in range(33)]


class FeatureStats:
    def __init__(self, d_latent: int, top_n: int = 20, device: torch.device | str = "cpu"):
        self.top_n, self.d_latent = top_n, d_latent
        self.n = 0
        self.values = torch.full((top_n, d_latent), -torch.inf, device=device)  # [top_n, κ], descending
        self.rows = torch.full((top_n, d_latent), -1, dtype=torch.int64, device=device)
        self.active = torch.zeros(d_latent, dtype=torch.int64, device=device)
        self.nonzero = torch.zeros(d_latent, dtype=torch.int64, device=device)
        self.total = torch.zeros(d_latent, dtype=torch.float64, device=device)
        self.n_bins = len(HIST_EDGES) - 1
        self.hist = torch.zeros(d_latent * self.n_bins, dtype=torch.int64, device=device)
        self._rows: list[Tensor] = []
        self._meta: list[Tensor] = []

    @torch.no_grad()
    def update(self, b: Encoded, batch: Batch) -> None:
        codes = b.codes.float()
        rows = batch.rows.to(codes.device)
        self.n += len(codes)
        # running top-n: this batch's top-n per latent, merged with the kept ones
        v, i = codes.topk(min(self.top_n, len(codes)), dim=0)
        values = torch.cat([self.values, v])
        cand = torch.cat([self.rows, rows[i]])
        self.values, pick = values.topk(self.top_n, dim=0)
        self.rows = cand.gather(0, pick)
        # density, non-zero fraction, mean
        self.active += b.active_per_latent
        self.nonzero += b.nonzero_per_latent
        self.total += codes.sum(0, dtype=torch.float64)
        # histogram of log10 of the positive activations, bins [edge_i, edge_i+1) like numpy's
        where = (codes > 0).nonzero()
        log10 = codes[where[:, 0], where[:, 1]].log10()
        step = HIST_EDGES[1] - HIST_EDGES[0]
        bins = ((log10 - HIST_EDGES[0]) / step).floor().clamp(0, self.n_bins - 1).long()
        self.hist += torch.bincount(where[:, 1] * self.n_bins + bins, minlength=len(self.hist))
        if batch.meta is not None:
            self._rows.append(batch.rows)
            self._meta.append(batch.meta.to(torch.int32))

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


def token_strings(tokenizer, ids: list[int]) -> dict[int, str]:
    if tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return dict(zip(ids, texts))


def feature_records(stats: FeatureStats, *, contexts: Tensor | None, tokenizer, left: int = 12,
                    right: int = 4) -> list[dict]:
    """One record per latent: id, density, nonzero, mean, max, hist, examples (act, row, and
    when the store has them: token, seq, pos, context [tokens], at = the token's index in it)."""
    n = max(stats.n, 1)
    values, rows = stats.values.cpu(), stats.rows.cpu()
    keep = (values > 0) & (rows >= 0)  # an example is a positive activation
    lat = keep.nonzero()[:, 1]  # latent of each kept example, in rank order per latent
    ex_values, ex_rows = values[keep], rows[keep]
    order = torch.sort(lat, stable=True).indices  # group by latent, keep rank order
    lat, ex_values, ex_rows = lat[order], ex_values[order], ex_rows[order]
    meta = stats.meta_of(ex_rows) if len(ex_rows) else None

    windows = at = None
    strings: dict[int, str] = {}
    if meta is not None:
        ids = set(meta[:, 0].tolist())
        if contexts is not None:
            ctx = contexts.shape[1]
            start = (meta[:, 2] - left).clamp(0, max(ctx - 1, 0))
            offsets = torch.arange(left + right + 1)
            grid = start[:, None] + offsets[None, :]
            covered = (meta[:, 1] < len(contexts)) & (meta[:, 2] < ctx)  # the row's window is there
            inside = (grid < ctx) & (grid <= meta[:, 2:3] + right) & covered[:, None]
            seq = meta[:, 1].clamp(0, len(contexts) - 1)
            windows = torch.where(inside, contexts[seq[:, None], grid.clamp_max(ctx - 1)], -1)
            at = meta[:, 2] - start
            ids |= set(windows[inside].tolist())
        strings = token_strings(tokenizer, sorted(ids))

    hist = stats.hist.view(stats.d_latent, stats.n_bins).cpu()
    active, nonzero, total = stats.active.cpu(), stats.nonzero.cpu(), stats.total.cpu()
    records = [{"id": j, "density": active[j].item() / n, "nonzero": nonzero[j].item() / n,
                "mean": total[j].item() / n, "max": None, "hist": hist[j].tolist(), "examples": []}
               for j in range(stats.d_latent)]
    for e in range(len(ex_rows)):
        example = {"act": round(ex_values[e].item(), 6), "row": int(ex_rows[e])}
        if meta is not None:
            token, seq, pos = meta[e].tolist()
            example.update(token_id=token, token=strings[token], seq=seq, pos=pos)
            if windows is not None and (windows[e] >= 0).any():
                window = [t for t in windows[e].tolist() if t >= 0]
                example.update(context=[strings[t] for t in window], at=int(at[e]))
        rec = records[int(lat[e])]
        rec["examples"].append(example)
        if rec["max"] is None:
            rec["max"] = example["act"]
    return records
