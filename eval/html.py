"""The feature report as one self-contained static HTML page (inline CSS and JS, no network).

The page holds the feature data as JSON (token strings stored once, in a vocabulary) and
renders it in the browser: a feature index sortable by any column (density by default), a
search box over the activating tokens (or `#123` for a feature id), and for each feature
its histogram and top examples with the activating token highlighted. The URL's query sets
the initial state (`features.html?q=the&sort=max&dir=asc`), so a filtered view can be linked.
"""

from __future__ import annotations

import json
from pathlib import Path

from saease.store import atomic_write_bytes


def compact(report: dict) -> dict:
    """The report with every token string replaced by an index into one `vocab` list."""
    vocab: dict[str, int] = {}

    def ix(s: str) -> int:
        return vocab.setdefault(s, len(vocab))

    features = []
    for f in report["features"]:
        examples = []
        for e in f["examples"]:
            token = ix(e["token"]) if "token" in e else -1
            context = [ix(t) for t in e.get("context", [])]
            examples.append([e["act"], e["row"], token, e.get("at", -1), context])
        features.append([f["id"], f["density"], f["nonzero"], f["max"], f["mean"], f["hist"], examples])
    meta = {k: v for k, v in report.items() if k != "features"}
    return {"meta": meta, "vocab": list(vocab), "features": features}


def write_html(report: dict, path: Path) -> None:
    data = json.dumps(compact(report), ensure_ascii=False, separators=(",", ":"), default=str)
    data = data.replace("<", "\\u003c")  # nothing in the data can close the <script> element
    title = f"features of {report.get('dictionary', 'a dictionary')}"
    page = TEMPLATE.replace("__TITLE__", _escape(title)).replace("__DATA__", data)
    atomic_write_bytes(path, page.encode())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 12px 20px; background: #fff; border-bottom: 1px solid #ddd; position: sticky; top: 0; z-index: 1; }
header h1 { font-size: 18px; margin: 0 0 4px; }
#summary { color: #555; font-size: 13px; }
#controls { margin-top: 8px; display: flex; gap: 12px; align-items: center; }
#search { width: 320px; padding: 5px 8px; font-size: 14px; }
main { display: grid; grid-template-columns: minmax(340px, 30%) 1fr; gap: 16px; padding: 12px 20px; }
#index-wrap { max-height: calc(100vh - 130px); overflow: auto; background: #fff; border: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; text-align: left; padding: 4px 6px; user-select: none; }
th.sorted::after { content: attr(data-arrow); }
td { padding: 2px 6px; border-top: 1px solid #eee; white-space: nowrap; }
tr.row:hover { background: #eef5ff; cursor: pointer; }
td.tops { white-space: normal; color: #444; }
.feature { background: #fff; border: 1px solid #ddd; margin-bottom: 12px; padding: 8px 12px; }
.feature h2 { font-size: 15px; margin: 0 0 4px; }
.stats { color: #555; font-size: 12px; margin-bottom: 4px; }
.examples { margin: 4px 0 0; padding-left: 0; list-style: none; }
.examples li { font-family: ui-monospace, monospace; font-size: 12.5px; white-space: pre; overflow-x: auto; }
.act { display: inline-block; width: 72px; color: #777; text-align: right; margin-right: 8px; }
.tok { border-radius: 2px; }
mark.tok { background: #ffd54f; font-weight: bold; }
.hist rect { fill: #64b5f6; }
#more { margin: 8px 0 24px; }
.empty { color: #999; font-style: italic; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div id="summary"></div>
  <div id="controls">
    <input id="search" type="search" placeholder="search activating tokens, or #id" autocomplete="off">
    <span id="count"></span>
  </div>
</header>
<main>
  <div id="index-wrap">
    <table id="index">
      <thead><tr>
        <th data-key="id">feature</th><th data-key="density">density</th>
        <th data-key="max">max act</th><th data-key="nonzero">non-zero</th><th>top tokens</th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div>
    <div id="cards"></div>
    <button id="more" type="button">show more</button>
  </div>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const V = D.vocab, M = D.meta, PAGE = 50;
// feature tuple: [id, density, nonzero, max, mean, hist, examples]; example: [act, row, token, at, context]
const F = D.features.map(f => ({id: f[0], density: f[1], nonzero: f[2], max: f[3] === null ? 0 : f[3],
  mean: f[4], hist: f[5], examples: f[6]}));
const state = {q: "", key: "density", dir: -1, shown: PAGE, list: F};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 1e-3 || x === 0 ? x.toPrecision(3) : x.toExponential(2)); }
function show(s) { return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192"); }
function tokensOf(f) { return f.examples.filter(e => e[2] >= 0).map(e => V[e[2]]); }
function topTokens(f) { return [...new Set(tokensOf(f))].slice(0, 6).map(s => JSON.stringify(show(s))).join(" "); }

function matches(f, q) {
  if (!q) return true;
  const id = q.match(/^#?(\d+)$/);
  if (id && q.startsWith("#")) return f.id === Number(id[1]);
  const ql = q.toLowerCase();
  return tokensOf(f).some(t => t.toLowerCase().includes(ql)) || (id !== null && f.id === Number(id[1]));
}

// the histogram bins that any feature uses, so every feature's histogram has the same axis
const LO = Math.min(...F.map(f => f.hist.findIndex(c => c > 0)).filter(i => i >= 0));
const HI = Math.max(...F.map(f => f.hist.length - 1 - [...f.hist].reverse().findIndex(c => c > 0)).filter(i => i < F[0].hist.length));
function histogram(f) {
  const ns = "http://www.w3.org/2000/svg", w = 160, h = 32;
  const lo = isFinite(LO) ? LO : 0, hist = f.hist.slice(lo, isFinite(HI) ? HI + 1 : f.hist.length), n = hist.length;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "hist");
  const top = Math.max(1, ...hist);
  hist.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, h * c / top) : 0;
    r.setAttribute("x", i * w / n); r.setAttribute("width", w / n - 0.5);
    r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    const t = document.createElementNS(ns, "title");
    t.textContent = "10^" + M.hist_edges[lo + i] + " .. 10^" + M.hist_edges[lo + i + 1] + ": " + c;
    r.appendChild(t); svg.appendChild(r);
  });
  return svg;
}

function card(f) {
  const c = el("section", "feature");
  c.id = "f-" + f.id; c.dataset.id = f.id;
  c.appendChild(el("h2", "", "#" + f.id));
  c.appendChild(el("div", "stats", "density " + fmt(f.density) + " \u00b7 non-zero " + fmt(f.nonzero) +
    " \u00b7 max " + fmt(f.max) + " \u00b7 mean " + fmt(f.mean) + "  (histogram: log10 of positive activations)"));
  c.appendChild(histogram(f));
  if (!f.examples.length) { c.appendChild(el("div", "empty", "no positive activation on the evaluated rows")); return c; }
  const ol = el("ol", "examples");
  for (const [act, row, tok, at, ctx] of f.examples) {
    const li = el("li", "example");
    li.appendChild(el("span", "act", fmt(act)));
    if (ctx.length) {
      ctx.forEach((t, i) => li.appendChild(el(i === at ? "mark" : "span", "tok", show(V[t]))));
    } else if (tok >= 0) {
      li.appendChild(el("mark", "tok", show(V[tok])));
      li.appendChild(el("span", "row", "  (row " + row + ")"));
    } else {
      li.appendChild(el("span", "row", "row " + row));
    }
    ol.appendChild(li);
  }
  c.appendChild(ol);
  return c;
}

function renderCards() {
  const cards = document.getElementById("cards");
  cards.replaceChildren(...state.list.slice(0, state.shown).map(card));
  document.getElementById("more").hidden = state.shown >= state.list.length;
}

function render() {
  const q = state.q.trim();
  state.list = F.filter(f => matches(f, q)).sort((a, b) => state.dir * (a[state.key] - b[state.key]) || a.id - b.id);
  const body = document.querySelector("#index tbody");
  body.replaceChildren(...state.list.map(f => {
    const tr = el("tr", "row");
    tr.dataset.id = f.id;
    [["#" + f.id], [fmt(f.density)], [fmt(f.max)], [fmt(f.nonzero)], [topTokens(f), "tops"]].forEach(
      ([t, cls]) => tr.appendChild(el("td", cls || "", t)));
    tr.addEventListener("click", () => reveal(f));
    return tr;
  }));
  document.querySelectorAll("#index th").forEach(th => {
    th.classList.toggle("sorted", th.dataset.key === state.key);
    th.dataset.arrow = state.dir < 0 ? " \u25bc" : " \u25b2";
  });
  document.getElementById("count").textContent = state.list.length + " of " + F.length + " features";
  state.shown = PAGE;
  renderCards();
}

function reveal(f) {
  const i = state.list.indexOf(f);
  if (i >= state.shown) { state.shown = i + 1; renderCards(); }
  document.getElementById("f-" + f.id).scrollIntoView();
}

document.getElementById("title").textContent = document.title;
document.getElementById("summary").textContent = [
  M.kind, "store " + M.store, M.split + " rows: " + M.n,
  ...Object.entries(M.metrics || {}).filter(([k, v]) => typeof v === "number").map(([k, v]) => k + " " + fmt(v)),
  ...(M.notes || [])].join(" \u00b7 ");
document.querySelectorAll("#index th[data-key]").forEach(th => th.addEventListener("click", () => {
  state.dir = state.key === th.dataset.key ? -state.dir : -1;
  state.key = th.dataset.key;
  render();
}));
const search = document.getElementById("search");
search.addEventListener("input", () => { state.q = search.value; render(); });
document.getElementById("more").addEventListener("click", () => { state.shown += PAGE; renderCards(); });

const params = new URLSearchParams(location.search);
if (["id", "density", "max", "nonzero"].includes(params.get("sort"))) state.key = params.get("sort");
if (params.get("dir") === "asc") state.dir = 1;
if (params.get("q")) { search.value = params.get("q"); search.dispatchEvent(new Event("input")); } else render();
</script>
</body>
</html>
"""
