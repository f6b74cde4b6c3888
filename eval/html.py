"""The feature dashboard: one self-contained static HTML page (inline CSS and JS, no network).

Layout: a feature index on the left (sortable columns, a filter box, virtualised so 16k rows cost
what the visible ones cost), one feature card on the right. A card shows the latent's density,
max and mean activation, its interpretability score, a histogram of its positive activations,
its logit effect (top promoted / suppressed tokens, models with an unembedding), its top
examples and examples from its activation quantile bands, each in its context window rendered
as the tokenizer writes text with the activating token highlighted (shade ∝ activation / max).

Data: everything the index needs is one small JSON block parsed at load; the per-feature detail
sits in chunks of CHUNK features (one `<script type="application/json">` each) parsed only
when a card from that chunk is opened, and the context text (per store sequence, the span its
examples need, token strings stored once in a vocabulary) is parsed with the first card.

URL: `#f123` opens feature 123 (a permalink); the query sets the index view,
`features.html?q=king&sort=density&dir=asc#f7`.
"""

from __future__ import annotations

import json
from pathlib import Path

from saease.store import atomic_write_bytes

CHUNK = 256


class _Vocab:
    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        return self.ids.setdefault(s, len(self.ids))


def _example(e: dict, in_segment, vocab: _Vocab) -> list:
    """[act (3 digits), seq, pos] when the example's token is in a segment, else [act, -1, row, token]."""
    if "seq" in e and in_segment(e["seq"], e["pos"]):
        return [_sig(e["act"], 3), e["seq"], e["pos"]]
    return [_sig(e["act"], 3), -1, e["row"], vocab(e["token"]) if "token" in e else -1]


def _tops(f: dict, n: int = 3) -> list[str]:
    """The most frequent activating tokens of the top examples, most frequent first."""
    counts: dict[str, int] = {}
    for e in f["top"]:
        if "token" in e:
            counts[e["token"]] = counts.get(e["token"], 0) + 1
    return sorted(counts, key=lambda t: -counts[t])[:n]


def compact(report: dict) -> dict:
    """{meta, index, chunks, vocab, segments}: the report in the page's compact layout."""
    vocab = _Vocab()
    segments = [[s["seq"], s["start"], [vocab(p) for p in s["pieces"]]] for s in report.get("segments", [])]
    spans = {s: (start, start + len(p)) for s, start, p in segments}

    def in_segment(seq: int, pos: int) -> bool:
        return seq in spans and spans[seq][0] <= pos < spans[seq][1]

    features = report["features"]
    index = {"id": [f["id"] for f in features], "score": [f["score"] for f in features],
             "density": [_sig(f["density"]) for f in features], "count": [f["count"] for f in features],
             "max": [f["max"] or 0 for f in features], "mean": [_sig(f["mean_active"]) for f in features],
             "tops": [[vocab(t) for t in _tops(f)] for f in features]}
    details = []
    for f in features:
        logits = f.get("logits")
        details.append([
            f["hist"]["lo"], f["hist"]["counts"],
            [_example(e, in_segment, vocab) for e in f["top"]],
            [[b["q"][0], b["q"][1], [_example(e, in_segment, vocab) for e in b["examples"]]]
             for b in f["bands"]],
            None if logits is None else [[[vocab(t), v] for t, v in logits[side]] for side in ("promoted", "suppressed")],
        ])
    chunks = [details[s:s + CHUNK] for s in range(0, len(details), CHUNK)]
    meta = {k: v for k, v in report.items() if k not in ("features", "segments")}
    return {"meta": meta, "index": index, "chunks": chunks, "vocab": list(vocab.ids), "segments": segments}


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _json(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c")  # nothing in the data can close the <script> element


def write_html(report: dict, path: Path) -> None:
    data = compact(report)
    blocks = [f'<script type="application/json" id="d-meta">{_json(data["meta"])}</script>',
              f'<script type="application/json" id="d-index">{_json(data["index"])}</script>',
              f'<script type="application/json" id="d-text">{_json([data["vocab"], data["segments"]])}</script>']
    blocks += [f'<script type="application/json" id="d-chunk-{i}">{_json(c)}</script>'
               for i, c in enumerate(data["chunks"])]
    title = f"features of {report.get('dictionary', 'a dictionary')}"
    page = (TEMPLATE.replace("__TITLE__", _escape(title)).replace("__CHUNK__", str(CHUNK))
            .replace("__DATA__", "\n".join(blocks)))
    atomic_write_bytes(path, page.encode())


def screenshot(page: Path, png: Path, feature: int | None = None, size: tuple[int, int] = (1400, 1000)) -> Path:
    """A PNG of the dashboard (feature `feature`'s card, default the first in score order),
    taken with headless chromium."""
    import shutil
    import subprocess
    import tempfile

    from saease.errors import SaeaseError

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SaeaseError(f"--screenshot {png}: needs chromium on PATH (apt-get install -y chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    url = Path(page).resolve().as_uri() + ("" if feature is None else f"#f{feature}")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={png}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SaeaseError(f"--screenshot {png}: chromium failed ({last})")
    return png


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


TEMPLATE = (Path(__file__).parent / "dashboard.html").read_text(encoding="utf-8")
