"""The feature dashboard: token rendering for the three tokenizer families, quantile bands,
logit effects, the page in headless chromium (whole words, permalinks, a screenshot checked
for what a card must show), and the size of a 16k-latent report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli as saease
from conftest import _train_tokenizer, english_like_docs

from saease import Dictionary, StoreWriter
from saease.eval.evaluator import Options, evaluate_store, feature_report
from saease.eval.features import interpretability_score
from saease.eval.html import write_html
from saease.eval.stream import Notes
from saease.eval.tokens import token_pieces

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_SEQ, CTX, D_IN = 24, 32, 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---- tokenizers of the three families --------------------------------------------------------

TEXTS = english_like_docs(300, seed=1) + ["café naïve ζωή déjà-vu"] * 3


def wordpiece(vocab_size: int = 150):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                             show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", clean_up_tokenization_spaces=True)


def sentencepiece():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>",
                                                           show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


SENTENCE = "The old man remembers the blue door, again. café naïve ζωή"


@pytest.mark.parametrize("family,marker", [("wordpiece", "##"), ("byte-bpe", "Ġ"), ("sentencepiece", "▁")])
def test_token_pieces_read_as_the_tokenizer_writes(family, marker):
    tok = {"wordpiece": wordpiece, "byte-bpe": lambda: _train_tokenizer(TEXTS, 300),
           "sentencepiece": sentencepiece}[family]()
    ids = tok(SENTENCE, add_special_tokens=False)["input_ids"]
    raw = tok.convert_ids_to_tokens(ids)
    assert any(marker in t for t in raw)  # the family's marker is in its token strings
    windows = [ids, ids[1:], ids[5:17]]
    pieces = token_pieces(tok, windows)
    for window, p in zip(windows, pieces):
        assert len(p) == len(window)
        assert not any(marker in s for s in p)
        joined = "".join(p)
        # the text the tokenizer writes (a window is rendered as if it followed a word: one leading space)
        assert joined.lstrip() == tok.decode(window).lstrip().removeprefix("##")
    words = "".join(pieces[0]).split()
    expected = {"wordpiece": "the old man remembers the blue door [UNK] again. cafe naive ζωη",
                "byte-bpe": SENTENCE, "sentencepiece": SENTENCE.replace(",", "<unk>")}[family]  # no comma in its vocab
    assert " ".join(words) == expected
    if family == "wordpiece":  # a window that starts inside a word starts with the rest of the word
        inner = next(k for k, t in enumerate(raw) if t.startswith("##"))
        assert token_pieces(tok, [ids[inner:]])[0][0] == raw[inner][2:]
    if family == "byte-bpe":  # a UTF-8 character split over byte tokens lands whole on one token
        assert "é" in pieces[0] or any("é" in s for s in pieces[0])
    assert token_pieces(None, [[3, 4]]) == [["<3>", " <4>"]]


def test_interpretability_score_prefers_moderate_density_and_one_meaning():
    one_token = [" king"] * 20
    mixed = [f" w{i}" for i in range(20)]
    assert interpretability_score(500, 0.005, one_token, 20) == 1.0
    assert interpretability_score(500, 0.005, mixed, 20) == 0.25
    assert interpretability_score(500, 0.005, [" King", "king "] * 10, 20) == 1.0  # case and space ignored
    assert interpretability_score(5000, 0.1, one_token, 20) == 0.0  # ultra-dense
    assert interpretability_score(5000, 0.0316, one_token, 20) == pytest.approx(0.5, abs=0.01)
    assert interpretability_score(5, 1e-4, one_token[:5], 20) == pytest.approx(0.25)  # 5 examples of 20
    assert interpretability_score(0, 0.0, [], 20) == 0.0


# ---- a WordPiece store -------------------------------------------------------------------------

def write_store(path, acts, windows, source):
    """Rows seq-major with tokens/seq/pos and the contexts, like `saease harvest` writes them."""
    n_seq, ctx = windows.shape
    seq, pos = torch.arange(n_seq).repeat_interleave(ctx), torch.arange(ctx).repeat(n_seq)
    writer = StoreWriter(path, d_in=acts.shape[1], source=source, overwrite=True)
    for s in range(0, len(acts), 200):
        sl = slice(s, s + 200)
        writer.write_shard(acts[sl], tokens=windows.flatten()[sl], seq=seq[sl], pos=pos[sl])
    writer.write_contexts(windows)
    return writer.finish()


def token_acts(windows: torch.Tensor, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """One random vector per token id plus a little of the previous token's: features follow tokens."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(vocab_size, D_IN, generator=gen)
    prev = torch.roll(windows, 1, dims=1)
    return (emb[windows] + 0.3 * emb[prev]).reshape(-1, D_IN)


def random_dictionary(d_in=D_IN, d_latent=48, seed=0, kind="sae-l1"):
    torch.manual_seed(seed)
    d = Dictionary.create(kind, d_in=d_in, d_latent=d_latent)
    with torch.no_grad():
        d.W_enc.normal_(0, 0.5)
        d.b_enc.normal_(-1.5, 0.3)  # most latents fire on a few tokens only
    return d


@pytest.fixture(scope="module")
def wordpiece_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("wp")
    tok = wordpiece()
    tok.save_pretrained(root / "tokenizer")
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids = tok(" ".join(english_like_docs(80, seed=5)), add_special_tokens=False)["input_ids"]
    body = torch.tensor(ids[:N_SEQ * (CTX - 2)]).view(N_SEQ, CTX - 2)
    windows = torch.cat([torch.full((N_SEQ, 1), cls), body, torch.full((N_SEQ, 1), sep)], 1)
    source = {"model": str(root / "tokenizer"), "tokenizer": str(root / "tokenizer"), "model_class": "HookedEncoder",
              "hook": "blocks.0.hook_normalized_resid_post"}
    store = write_store(root / "store", token_acts(windows, len(tok)), windows, source)
    d = random_dictionary()
    path = d.save(root / "dict")
    out = root / "rep"
    r = saease("eval", path, "--data", store.path, "--out", out, "--no-loss", "--no-progress", "--top-n", "8",
               "--quantile-examples", "12", "--no-masking")
    assert r.returncode == 0, r.stderr
    return {"tok": tok, "windows": windows, "store": store, "dict": d, "out": out,
            "report": json.loads((out / "features.json").read_text())}


def test_report_density_bands_and_no_logits_for_an_encoder(wordpiece_store):
    w = wordpiece_store
    report, d = w["report"], w["dict"]
    x = w["store"].read_all()
    with torch.no_grad():
        codes = d.encode(x)
    assert report["logits"].startswith("none: the model is an encoder")
    np.testing.assert_allclose([f["density"] for f in report["features"]], (codes != 0).double().mean(0), rtol=1e-9)
    with_bands = [f for f in report["features"] if f["count"] >= 12]
    assert len(with_bands) > 5
    for f in with_bands:
        j = f["id"]
        assert "logits" not in f
        assert [b["q"] for b in f["bands"]] == [[0.75, 1.0], [0.5, 0.75], [0.25, 0.5], [0.0, 0.25]]
        drawn = [ex for b in f["bands"] for ex in b["examples"]]
        assert len(drawn) == 12 and len({ex["row"] for ex in drawn}) == 12  # a sample without replacement
        acts = [ex["act"] for ex in drawn]
        assert acts == sorted(acts, reverse=True)
        np.testing.assert_allclose(acts, codes[[ex["row"] for ex in drawn], j], rtol=1e-3)
        positive = codes[:, j][codes[:, j] > 0]
        assert f["hist"]["counts"] and sum(f["hist"]["counts"]) == len(positive) == f["count"]


def dump_dom(url: str, tmp_path: Path) -> str:
    return subprocess.run([*_chromium(tmp_path), "--dump-dom", url], capture_output=True, text=True,
                          timeout=90, check=True).stdout


def _chromium(tmp_path: Path) -> list[str]:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


def card_text(dom: str, feature: int) -> str:
    section = re.search(rf'<section class="feature" id="f{feature}">(.*?)</section>', dom, re.S)
    assert section, f"card #{feature} is not in the page"
    return section.group(1)


def example_lines(card: str) -> list[str]:
    import html

    return [html.unescape(re.sub(r"<[^>]+>", "", li)) for li in re.findall(r'<span class="ctx">(.*?)</span></li>', card, re.S)]


@needs_chromium
def test_the_page_shows_whole_words_in_score_order_and_opens_permalinks(wordpiece_store, tmp_path):
    w = wordpiece_store
    report, tok = w["report"], w["tok"]
    page = (w["out"] / "features.html").resolve()
    assert "http" not in re.sub(r"http://www\.w3\.org/2000/svg", "", page.read_text())  # no network

    dom = dump_dom(page.as_uri(), tmp_path)
    by_score = sorted(report["features"], key=lambda f: (-f["score"], -(f["max"] or 0), f["id"]))
    rows = [int(i) for i in re.findall(r'<div class="row cols[^"]*" [^>]*data-id="(\d+)"', dom)]
    assert rows and rows == [f["id"] for f in by_score][:len(rows)]  # sorted by score, virtualised
    assert len(rows) < len(report["features"]) or len(report["features"]) < 40
    card_text(dom, by_score[0]["id"])  # no permalink: the first feature's card

    # a feature whose top examples hold a word that WordPiece splits into pieces
    split_words = {tok.decode(tok(wd, add_special_tokens=False)["input_ids"]): wd for wd in
                   " ".join(english_like_docs(80, seed=5)).lower().replace(".", " ").split()
                   if len(tok(wd, add_special_tokens=False)["input_ids"]) > 1}
    assert split_words  # e.g. "remembers" = rem ##ember ##s
    f = next(f for f in by_score if f["top"] and any(
        word in " ".join(example_text(report, ex) for ex in f["top"]) for word in split_words))
    dom = dump_dom(page.as_uri() + f"#f{f['id']}", tmp_path)
    lines = example_lines(card_text(dom, f["id"]))
    assert len(lines) == len(f["top"]) + sum(len(b["examples"]) for b in f["bands"])
    assert not any("##" in line for line in lines)
    shown = " ".join(lines).split()
    assert any(word in shown for word in split_words), lines[:3]
    assert 'class="row cols current"' in dom and f'data-id="{f["id"]}"' in dom
    marks = re.findall(r"<mark [^>]*>(.*?)</mark>", card_text(dom, f["id"]))
    assert [m.strip() for m in marks[:len(f["top"])]] == [ex["token"].strip() for ex in f["top"]]

    # the filter box, from the URL: features whose top tokens contain the query
    token = by_score[0]["top"][0]["token"].strip()
    dom = dump_dom(page.as_uri() + "?q=" + token + "&sort=density&dir=asc", tmp_path)
    count = re.search(r'<span id="count">(\d+) of (\d+) features</span>', dom)
    assert count and 0 < int(count.group(1)) < int(count.group(2))


def example_text(report: dict, ex: dict) -> str:
    """The words of an example's window as features.json gives them (segments)."""
    s = next(s for s in report["segments"] if s["seq"] == ex["seq"])
    a, b = max(ex["pos"] - 12, s["start"]), min(ex["pos"] + 4, s["start"] + len(s["pieces"]) - 1)
    return "".join(s["pieces"][a - s["start"]: b - s["start"] + 1])


@needs_chromium
def test_a_screenshot_of_a_card_shows_highlight_histogram_and_examples(wordpiece_store, tmp_path):
    from PIL import Image

    w = wordpiece_store
    f = max(w["report"]["features"], key=lambda f: (f["score"], f["count"]))
    page = (w["out"] / "features.html").resolve()
    png = tmp_path / "card.png"
    subprocess.run([*_chromium(tmp_path), "--window-size=1280,900", f"--screenshot={png}",
                    page.as_uri() + f"#f{f['id']}"], capture_output=True, timeout=90, check=True)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    card = rgb[:, 460:]  # right of the index column
    r, g, b = card[..., 0], card[..., 1], card[..., 2]
    highlight = (r > 235) & (g > 110) & (g < 215) & (b < 120)  # the orange mark behind activating tokens
    bars = (abs(r - 0x3d) < 14) & (abs(g - 0x7d) < 14) & (abs(b - 0xdb) < 14)  # histogram bars
    dark_text = (r < 90) & (g < 90) & (b < 90)
    assert highlight.sum() > 20 * len(f["top"]), "no highlighted tokens"
    rows_with_highlight = np.unique(np.nonzero(highlight)[0])
    assert len(rows_with_highlight) > 8 * len(f["top"])  # marks on many example lines, not one blob
    assert bars.sum() > 300, "no histogram bars"
    bar_columns = np.unique(np.nonzero(bars)[1])
    assert len(bar_columns) > 10  # more than one bar
    assert dark_text.sum() > 2000  # the example text


# ---- logit effects on a causal LM --------------------------------------------------------------

def test_logit_effects_are_decoder_rows_through_the_unembedding(tiny_pythia, tmp_path):
    from saease.models import load_model, run_to_hook

    model = load_model(tiny_pythia, device="cpu")
    ids = model.tokenizer("<|endoftext|>".join(english_like_docs(40, seed=5)))["input_ids"]
    windows = torch.tensor(ids[:10 * 24]).view(10, 24)
    hook = "blocks.1.hook_resid_post"
    acts = run_to_hook(model, windows, hook).reshape(-1, 64)
    store = write_store(tmp_path / "s", acts, windows,
                        {"model": tiny_pythia, "tokenizer": tiny_pythia, "hook": hook, "processed": True})
    d = random_dictionary(d_in=64, d_latent=24)
    d.cfg.input_scale = 0.5
    path = d.save(tmp_path / "d")
    r = saease("eval", path, "--data", store.path, "--out", tmp_path / "rep", "--no-loss", "--no-progress",
               "--no-masking")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "features.json").read_text())
    expect = (d.W_dec.detach() / 0.5) @ model.W_U.detach()  # processed weights: ln_final folded into W_U
    for f in report["features"]:
        up = expect[f["id"]].topk(10)
        down = expect[f["id"]].topk(10, largest=False)
        np.testing.assert_allclose([v for _, v in f["logits"]["promoted"]], up.values, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose([v for _, v in f["logits"]["suppressed"]], down.values, rtol=1e-3, atol=1e-4)
        assert [t for t, _ in f["logits"]["promoted"]][:3] == [model.tokenizer.decode([i]) for i in up.indices[:3]]
    # a model that cannot be loaded: a warning, and the report without logit effects
    r = saease("eval", path, "--data", store.path, "--out", tmp_path / "rep2", "--no-loss", "--no-progress",
               "--no-masking", "--model", str(tmp_path / "nowhere"))
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("warning: logit effects skipped: cannot load model") for line in r.stderr.splitlines())
    assert "logits" not in json.loads((tmp_path / "rep2" / "features.json").read_text())["features"][0]
    r = saease("eval", path, "--data", store.path, "--quantile-examples", "-1", "--no-progress")
    assert r.returncode == 2 and "--quantile-examples -1" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- 16k latents --------------------------------------------------------------------------------

@needs_chromium
def test_a_16k_latent_dashboard_stays_small_and_opens_any_card(wordpiece_store, tmp_path):
    w = wordpiece_store
    d = random_dictionary(d_latent=16384, seed=3)
    opts = Options(batch_size=256, masking=False, top_n=20, sample_n=20, progress=False)
    notes = Notes(quiet=True)
    (e,) = evaluate_store([("wide", d)], w["store"], opts, notes)
    report = feature_report(e, w["store"], opts, notes, tokenizer=w["tok"])
    page = tmp_path / "wide.html"
    write_html(report, page)
    n_examples = sum(len(f["top"]) + sum(len(b["examples"]) for b in f["bands"]) for f in report["features"])
    assert n_examples > 16384 * 10  # most latents have their examples
    size = page.stat().st_size
    assert size < 1024 * 16384, f"{size / 2**20:.1f} MiB"  # under 1 KiB per latent for 40 examples each
    index = re.search(r'<script type="application/json" id="d-index">(.*?)</script>', page.read_text(), re.S)
    assert len(index.group(1)) < 100 * 16384  # what is parsed at load
    dom = dump_dom(page.resolve().as_uri() + "#f16000", tmp_path)
    card_text(dom, 16000)
    assert len(re.findall(r'class="row cols', dom)) < 120  # only the visible index rows exist
