"""`saease harvest` end to end on the tiny random GPT-NeoX (loaded through the same path as
pythia-70m), offline. Stored rows must equal the activations computed directly for the same
tokens; a SIGKILLed harvest must resume to byte-identical shards; two ranks must write the same
store as one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saease.harvest import data as hdata
from saease.harvest import writer as hwriter
from saease.harvest.cli import run as cli_run
from saease.harvest.config import HarvestConfig
from saease.harvest.loop import run_harvest
from saease.harvest.plan import Plan
from saease import models
from saease.errors import SaeaseError
from saease.store import ActivationStore

REPO = Path(__file__).resolve().parents[1]
LAYER = 1  # of the tiny model's 3
CTX = 32
BATCH = 4
SHARD = 500


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two cores shared with other work: one intra-op thread is both faster and steadier."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_cfg(model, dataset, out, **kw) -> HarvestConfig:
    base = dict(model=model, dataset=dataset, layer=LAYER, context_size=CTX, batch_size=BATCH,
                shard_rows=SHARD, max_rows=0, dtype="float32", out=None if out is None else str(out),
                device="cpu")
    base.update(kw)
    return HarvestConfig(**base)


def cli_args(cfg: HarvestConfig) -> list[str]:
    args = []
    for name, value in vars(cfg).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            args += [flag, str(value)]
    return args


def sub_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _child(cfg: HarvestConfig, env: dict) -> None:
    os.environ.update(env)
    try:
        run_harvest(cfg)
    except BaseException as err:  # noqa: BLE001 - reported through the exit code
        print(f"rank {env.get('RANK')}: {err}", file=sys.stderr)
        os._exit(1)
    os._exit(0)


def run_forked(cfg: HarvestConfig, envs: list[dict], timeout: float = 120) -> list[int]:
    """Run the harvest in forked processes (one per env), which inherit this process's imports
    (a fresh interpreter spends seconds importing transformer_lens); returns their exit codes."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child, args=(cfg, env)) for env in envs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_bytes(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(path).glob("shard-*.safetensors"))}


def direct_acts(model_path, windows, raw, batch=BATCH, layer=LAYER):
    """The activations computed directly, batch by batch as the harvest batches them."""
    model = models.load_model(model_path, raw=raw, device="cpu")
    hook = models.hook_name(model, layer, "resid_post")
    out = [models.run_to_hook(model, windows[i:i + batch], hook) for i in range(0, len(windows), batch)]
    return torch.cat(out).flatten(0, 1)


@pytest.fixture(scope="module")
def reference(tiny_pythia, tiny_text_dataset, tmp_path_factory):
    """An uninterrupted single-process float32 harvest, and its config."""
    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path_factory.mktemp("ref") / "store")
    summary = run_harvest(cfg)
    return cfg, summary


# ---------------------------------------------------------------------------------------------
# rows


@pytest.mark.parametrize("raw", [False, True])
def test_rows_equal_direct_activations(raw, reference, tiny_pythia, tiny_text_dataset, tmp_path):
    if raw:
        cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "raw", raw=True)
        summary = run_harvest(cfg)
    else:
        cfg, summary = reference
    store = ActivationStore(cfg.out)
    acts, cols = store.read_all(columns=True)
    windows = store.contexts()["tokens"].long()
    assert summary["status"] == "complete" and summary["n_rows"] == len(acts) == windows.numel()
    assert [s["rows"] for s in store.shards][:-1] == [SHARD] * (store.n_rows // SHARD)

    # exact, against the activations computed directly for the same tokens
    assert torch.equal(acts, direct_acts(tiny_pythia, windows, raw))
    assert torch.equal(cols["tokens"].long(), windows[cols["seq"].long(), cols["pos"].long()])
    assert torch.equal(cols["seq"].long() * CTX + cols["pos"].long(), torch.arange(len(acts)))

    # and against Hugging Face: raw = HF hidden states; processed = the same, centered
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(tiny_pythia).eval()
    with torch.no_grad():
        hidden = hf(windows[:8], output_hidden_states=True).hidden_states[LAYER + 1].flatten(0, 1)
    expect = hidden if raw else hidden - hidden.mean(-1, keepdim=True)
    torch.testing.assert_close(acts[: len(expect)], expect, atol=1e-4, rtol=1e-4)

    src = store.source
    assert src["tokenizer"] == str(Path(tiny_pythia).resolve())
    assert src["processed"] is (not raw) and src["hook"] == f"blocks.{LAYER}.hook_resid_post"
    assert src["layer"] == LAYER and src["context_size"] == CTX and src["text_column"] == "text"
    assert src["model_class"] == summary["model_class"] == ("HookedTransformer" if models.has_hooked_transformer()
                                                            else "TransformerBridge")
    assert src["architecture"] == "GPTNeoXForCausalLM" and src["windows"] == "tokens, documents joined with EOS"
    assert store.manifest["config"]["raw"] is raw


def test_windows_are_documents_joined_with_eos(reference, tiny_pythia, tiny_text_dataset):
    from transformers import AutoTokenizer

    cfg, _ = reference
    tok = AutoTokenizer.from_pretrained(tiny_pythia)
    docs = [json.loads(line)["text"] for line in open(tiny_text_dataset)]
    stream = []
    for i, doc in enumerate(docs):
        stream += ([tok.eos_token_id] if i else []) + tok(doc, add_special_tokens=False)["input_ids"]
    n = len(stream) // CTX
    expect = torch.tensor(stream[: n * CTX]).view(n, CTX)
    assert torch.equal(ActivationStore(cfg.out).contexts()["tokens"].long(), expect)


def test_bos_and_special_positions_left_out(tiny_pythia, tiny_text_dataset, tmp_path):
    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "s", prepend_bos=True, skip_special=True,
                   max_rows=1500, dtype="bfloat16")
    run_harvest(cfg)
    store = ActivationStore(cfg.out)
    acts, cols = store.read_all(columns=True)
    windows = store.contexts()["tokens"].long()
    model = models.load_model(tiny_pythia, device="cpu")
    bos, eos = model.tokenizer.bos_token_id, model.tokenizer.eos_token_id
    assert (windows[:, 0] == bos).all()
    keep = (windows != bos) & (windows != eos)
    assert store.n_rows == 1500 and keep.flatten().cumsum(0)[-CTX - 1] < 1500  # just enough windows
    assert not torch.isin(cols["tokens"], torch.tensor([bos, eos])).any() and (cols["pos"] > 0).all()
    flat = keep.flatten().nonzero().flatten()[:1500]
    assert torch.equal(cols["seq"].long() * CTX + cols["pos"].long(), flat)
    ref = direct_acts(tiny_pythia, windows, raw=False)[flat].to(torch.bfloat16)
    assert store.dtype == "bfloat16" and torch.equal(acts, ref.float())
    assert [s["rows"] for s in store.shards] == [500, 500, 500]


def test_max_rows_and_float16_storage(reference, tiny_pythia, tiny_text_dataset, tmp_path):
    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "h", max_rows=1234, dtype="float16")
    run_harvest(cfg)
    store = ActivationStore(cfg.out)
    assert [s["rows"] for s in store.shards] == [500, 500, 234]
    assert store.dtype == "float16" and store.read_shard(0).acts.dtype == torch.float16
    full = ActivationStore(reference[0].out).read_all()
    assert torch.equal(store.read_all(), full[:1234].half().float())
    assert len(store.contexts()["tokens"]) == -(-1234 // CTX)


def test_nothing_after_the_hooked_layer_runs(tiny_pythia, tiny_text_dataset, tmp_path, monkeypatch):
    real = models.load_model

    def load(*args, **kwargs):
        model = real(*args, **kwargs)

        def boom(*_):
            raise AssertionError("a block after the hooked layer ran")

        for block in model.blocks[LAYER + 1:]:
            block.register_forward_pre_hook(boom)
        model.ln_final.register_forward_pre_hook(boom)
        model.unembed.register_forward_pre_hook(boom)
        return model

    monkeypatch.setattr(models, "load_model", load)
    run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "s", max_rows=300))


# ---------------------------------------------------------------------------------------------
# resume, refusal, write errors


def test_sigkill_mid_shard_then_rerun_is_byte_identical(reference, tmp_path):
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "killed")
    # SIGKILL while shard 2 is half written (harvest.writer's test hook), in a forked process
    assert run_forked(cfg, [{hwriter.KILL_ENV: "2"}]) == [-9]
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"]
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert list((tmp_path / "killed").glob(".shard-00002.safetensors.tmp-*"))  # the partial write
    with pytest.raises(SaeaseError, match="incomplete"):
        ActivationStore(cfg.out)

    summary = run_harvest(cfg)  # the same command again
    assert summary["status"] == "complete (resumed)" and summary["shards_reused"] == 2
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)
    assert not list((tmp_path / "killed").glob(".*tmp*"))
    assert ActivationStore(cfg.out).manifest["shards"] == ActivationStore(ref_cfg.out).manifest["shards"]


def test_finished_store_is_not_redone(reference, capsys):
    cfg, first = reference
    mtimes = {p: p.stat().st_mtime_ns for p in Path(cfg.out).iterdir()}
    t0 = time.perf_counter()
    summary = run_harvest(cfg)
    assert time.perf_counter() - t0 < 5
    assert summary["status"] == "already complete" and summary["n_rows"] == first["n_rows"]
    assert "already complete" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in Path(cfg.out).iterdir()} == mtimes


def test_other_configuration_refused_unless_overwrite(tiny_pythia, tiny_text_dataset, tmp_path):
    out = tmp_path / "s"
    run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, out, max_rows=600))
    with pytest.raises(SaeaseError, match=r"another configuration \(context_size: 32 there, 16 now.*--overwrite"):
        run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, out, max_rows=600, context_size=16))
    summary = run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, out, max_rows=600, context_size=16,
                                   overwrite=True))
    assert summary["status"] == "complete"
    store = ActivationStore(out)
    assert store.manifest["config"]["context_size"] == 16 and store.contexts()["tokens"].shape[1] == 16
    assert sorted(p.name for p in out.glob("shard-*")) == [s["file"] for s in store.shards]


def test_write_error_never_lists_a_partial_shard(reference, tmp_path, monkeypatch):
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "full")
    real = hwriter._store.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "shard-00001.safetensors":
            tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
            tmp.write_bytes(data[:100])  # what a full disk leaves, then the error
            tmp.unlink()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(hwriter._store, "atomic_write_bytes", full_disk)
    with pytest.raises(SaeaseError, match="writing a shard failed.*No space left"):
        run_harvest(cfg)
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.safetensors"] and not manifest["complete"]
    monkeypatch.setattr(hwriter._store, "atomic_write_bytes", real)
    assert run_harvest(cfg)["shards_reused"] == 1
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)


# ---------------------------------------------------------------------------------------------
# torchrun


def test_two_ranks_write_the_same_store_as_one(reference, tmp_path):
    """torch.distributed with gloo, two processes set up as torchrun sets them up."""
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "dist")
    port = str(free_port())
    envs = [dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
    assert run_forked(cfg, envs) == [0, 0]
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)
    ref, dist = ActivationStore(ref_cfg.out), ActivationStore(cfg.out)
    assert dist.manifest["shards"] == ref.manifest["shards"] and dist.n_rows == ref.n_rows
    assert dist.manifest["harvest"]["world_size"] == 2
    assert not list(Path(cfg.out).glob("progress-*"))


def test_two_ranks_resume_a_killed_rank(reference, tmp_path):
    """Rank 1 killed mid-shard: the rerun (here on one process) completes the same store."""
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "dist")
    port = str(free_port())
    envs = [dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SAEASE_DIST_TIMEOUT_S="20",
                 **{hwriter.KILL_ENV: "8"}) for r in range(2)]
    codes = run_forked(cfg, envs)
    assert codes[1] == -9 and codes[0] != 0
    progress = json.loads((tmp_path / "dist" / "progress-r1.json").read_text())
    assert [s["file"] for s in progress["shards"]] == ["shard-00005.safetensors", "shard-00006.safetensors",
                                                       "shard-00007.safetensors"]
    summary = run_harvest(cfg)
    assert summary["shards_reused"] >= 3 and summary["status"] == "complete (resumed)"
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)
    assert not list(Path(cfg.out).glob("progress-*"))


@pytest.mark.skipif(os.environ.get("SAEASE_TEST_TORCHRUN") != "1",
                    reason="spawns fresh interpreters (~15 s of imports); set SAEASE_TEST_TORCHRUN=1")
def test_torchrun_two_processes_write_the_same_store_as_one(reference, tmp_path):
    ref_cfg, _ = reference
    cfg = make_cfg(ref_cfg.model, ref_cfg.dataset, tmp_path / "dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "saease.cli", "harvest", *cli_args(cfg), "--json"]
    proc = subprocess.run(cmd, env=sub_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["status"] == "complete"
    assert shard_bytes(cfg.out) == shard_bytes(ref_cfg.out)
    ref, dist = ActivationStore(ref_cfg.out), ActivationStore(cfg.out)
    assert dist.manifest["shards"] == ref.manifest["shards"] and dist.n_rows == ref.n_rows
    assert not list(Path(cfg.out).glob("progress-*"))


# ---------------------------------------------------------------------------------------------
# bad input


def test_unreachable_hub_model_fails_fast(tiny_text_dataset, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(SaeaseError, match=r"EleutherAI/pythia-70m.*local folder") as err:
        run_harvest(make_cfg("EleutherAI/pythia-70m", tiny_text_dataset, tmp_path / "x"))
    assert time.perf_counter() - t0 < 10 and "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kw, match", [
    (dict(layer=3), r"layer 3 is out of range.*0\.\.2"),
    (dict(hook="resid_foo"), r"unknown hook 'resid_foo'.*resid_pre, resid_mid, resid_post, attn_out, mlp_out"),
    (dict(text_column="body"), r"'body' is not in dataset.*columns found: text"),
    (dict(context_size=1000), r"--context-size 1000 exceeds"),
])
def test_bad_model_side_input(kw, match, tiny_pythia, tiny_text_dataset, tmp_path):
    with pytest.raises(SaeaseError, match=match):
        run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "x", **kw))
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_bad_datasets(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "rows0.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "two.jsonl").write_text('{"a": "x", "b": "y"}\n')
    (tmp_path / "nums.jsonl").write_text('{"n": 1}\n')
    (tmp_path / "data.xyz").write_text("x")
    cases = [
        ("empty.jsonl", None, r"empty.*columns found: none"),
        ("two.jsonl", None, r"several string columns.*--text-column \(columns found: a, b\)"),
        ("nums.jsonl", None, r"no string column.*columns found: n"),
        ("two.jsonl", "c", r"'c' is not in dataset.*columns found: a, b"),
        ("data.xyz", None, r"unsupported file type .xyz"),
        ("missing.jsonl", None, r"no such file or folder"),
    ]
    for name, column, match in cases:
        with pytest.raises(SaeaseError, match=match):
            hdata.load_documents(str(tmp_path / name), "train", column)
    import datasets

    datasets.Dataset.from_dict({"text": [], "id": []}, features=datasets.Features(
        {"text": datasets.Value("string"), "id": datasets.Value("int64")})).to_parquet(str(tmp_path / "e.parquet"))
    (tmp_path / "e.csv").write_text("body,id\n")
    for name, cols in [("e.parquet", "text, id"), ("e.csv", "body, id")]:
        with pytest.raises(SaeaseError, match=rf"is empty \(0 rows; columns found: {cols}\)"):
            hdata.load_documents(str(tmp_path / name), "train", None)
    with pytest.raises(SaeaseError, match="NeelNanda/pile-10k.*local file"):
        hdata.load_documents("NeelNanda/pile-10k", "train", None)


def test_local_dataset_formats(tmp_path):
    import datasets

    docs = ["first document here", "second one", "third"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    ds = datasets.Dataset.from_dict({"content": docs, "n": [1, 2, 3]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saveddict"))
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "txt" / f"{i}.txt").write_text(d + "\nmore lines\n")
    (tmp_path / "jl").mkdir()
    (tmp_path / "jl" / "a.jsonl").write_text((tmp_path / "d.jsonl").read_text())
    for name, split, col, n in [("d.jsonl", "train", "body", 3), ("d.parquet", "train", "content", 3),
                                ("saved", "train", "content", 3), ("saveddict", "test", "content", 1),
                                ("txt", "train", "text", 3), ("jl", "train", "body", 3)]:
        ds, column = hdata.load_documents(str(tmp_path / name), split, None)
        assert (column, len(ds)) == (col, n), name
    with pytest.raises(SaeaseError, match="splits found: train, test"):
        hdata.load_documents(str(tmp_path / "saveddict"), "validation", None)


def test_cli_json_and_exit_codes(tiny_pythia, tiny_text_dataset, tmp_path, capsys):
    from saease.cli import main

    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "c", max_rows=200)
    assert main(["harvest", *cli_args(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_rows"] == 200 and summary["hook"] == "blocks.1.hook_resid_post"
    assert main(["harvest", *cli_args(make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "d", layer=9))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' loading bar)
    assert err.startswith("saease harvest: error: layer 9") and "layers 0..2" in err


# ---------------------------------------------------------------------------------------------
# pieces


def test_config_defaults_and_paths():
    pythia = models.ModelRef("EleutherAI/pythia-70m", "EleutherAI--pythia-70m", encoder=False)
    cfg = HarvestConfig(model="pythia-70m", layer=3)
    assert cfg.out_path(pythia) == Path("activations/EleutherAI--pythia-70m/blocks.3.hook_resid_post")
    assert HarvestConfig().key()["layer"] == 2 and HarvestConfig().dtype == "float16"
    assert HarvestConfig(hook="blocks.4.hook_mlp_out").block == 4
    assert HarvestConfig(model="EleutherAI/pythia-70m", hook="attn_out").out_path(pythia) == \
        Path("activations/EleutherAI--pythia-70m/blocks.2.hook_attn_out")
    assert HarvestConfig(out="x").out_path() == Path("x")  # --out needs no model
    # --skip-special: on for encoders unless said otherwise, off for causal LMs
    bert = models.ModelRef("/m/bert", "bert-12345678", encoder=True)
    assert HarvestConfig().for_model(bert).skip_special is True
    assert HarvestConfig(skip_special=False).for_model(bert).skip_special is False
    assert HarvestConfig().for_model(pythia).skip_special is False
    with pytest.raises(SaeaseError, match="block 4, not --layer 1"):
        HarvestConfig(hook="blocks.4.hook_mlp_out", layer=1).validate()
    with pytest.raises(SaeaseError, match="--shard-rows 0"):
        HarvestConfig(shard_rows=0).validate()
    # the key ignores what does not change rows
    assert HarvestConfig(device="cuda", out="x").key() == HarvestConfig().key()


def test_plan_covers_every_row_once():
    torch.manual_seed(0)
    windows = torch.randint(0, 5, (23, 7))
    keep = windows != 0
    for mask in (None, keep):
        plan = Plan.build(windows, mask, max_rows=100, shard_rows=9, batch_size=4)
        rows = [plan.columns(*plan.shard_rows_range(k)) for k in range(plan.n_shards)]
        flat = torch.cat([r["seq"] * 7 + r["pos"] for r in rows])
        all_flat = torch.arange(23 * 7) if mask is None else keep.flatten().nonzero().flatten()
        assert torch.equal(flat, all_flat[:100])
        for k in range(plan.n_shards):
            a, b = plan.shard_rows_range(k)
            js = plan.batches_of_rows(a, b)
            assert plan.batch_rows(js[0])[0] <= a and plan.batch_rows(js[-1])[1] >= b
        shares = [plan.assign(list(range(plan.n_shards)), r, 3) for r in range(3)]
        assert sum(shares, []) == list(range(plan.n_shards))


def test_cli_flags_build_the_config_that_run_takes(tiny_pythia, tiny_text_dataset, tmp_path):
    import argparse

    from saease.cli import dataclass_from_args
    from saease.harvest.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", tiny_pythia, "--dataset", tiny_text_dataset, "--layer", "0",
                              "--context-size", "16", "--max-rows", "64", "--out", str(tmp_path / "n"),
                              "--hook", "mlp_out", "--device", "cpu"])
    cfg = dataclass_from_args(HarvestConfig, args)
    assert cfg == HarvestConfig(model=tiny_pythia, dataset=tiny_text_dataset, layer=0, context_size=16,
                                max_rows=64, out=str(tmp_path / "n"), hook="mlp_out", device="cpu")
    summary = cli_run(cfg)
    assert summary["hook"] == "blocks.0.hook_mlp_out" and summary["n_rows"] == 64
    assert ActivationStore(tmp_path / "n").dtype == "float16"


def test_full_hook_name_with_head_dimensions(tiny_pythia, tiny_text_dataset, tmp_path):
    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "z", layer=None, hook="blocks.0.attn.hook_z",
                   max_rows=64)
    summary = run_harvest(cfg)
    assert summary["hook"] == "blocks.0.attn.hook_z" and summary["d_in"] == 64  # 4 heads x 16
    store = ActivationStore(cfg.out)
    windows = store.contexts()["tokens"].long()
    model = models.load_model(tiny_pythia, device="cpu")
    z = models.run_to_hook(model, windows[:BATCH], "blocks.0.attn.hook_z").flatten(2).flatten(0, 1)
    assert torch.equal(store.read_all(), z[:64])


# ---------------------------------------------------------------------------------------------
# names


def _copy_model(src, dst: Path, name_or_path: str | None = None) -> str:
    import shutil

    shutil.copytree(src, dst)
    if name_or_path is not None:  # as older transformers' save_pretrained recorded it
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "_name_or_path": name_or_path}))
    return str(dst)


def test_default_store_name_is_the_models_not_its_folders(tiny_pythia, tiny_text_dataset, tmp_path, monkeypatch):
    a = _copy_model(tiny_pythia, tmp_path / "a" / "model")
    b = _copy_model(tiny_pythia, tmp_path / "b" / "model")
    hub = _copy_model(tiny_pythia, tmp_path / "c" / "model", name_or_path="EleutherAI/pythia-70m")
    local = _copy_model(tiny_pythia, tmp_path / "d" / "model", name_or_path="/home/me/ckpt/model")
    ra, rb = models.identify(a), models.identify(b)
    assert ra.store_name != rb.store_name and ra.store_name.startswith("model-") and len(ra.store_name) == 14
    assert models.identify(a) == ra  # stable
    assert models.identify(hub).store_name == "EleutherAI--pythia-70m"
    assert models.identify(local).store_name.startswith("model-")  # a recorded path is no name

    monkeypatch.chdir(tmp_path)
    summaries = [run_harvest(make_cfg(m, tiny_text_dataset, None, max_rows=200)) for m in (a, b)]
    for ref, summary in zip((ra, rb), summaries):
        assert summary["store"] == str(Path("activations") / ref.store_name / "blocks.1.hook_resid_post")
        store = ActivationStore(tmp_path / summary["store"])
        assert summary["model_name"] == store.model_name == ref.store_name
        assert store.hook_name == "blocks.1.hook_resid_post"
        assert store.default_name("sae-topk", 512) == f"{ref.store_name}-blocks.1.hook_resid_post-sae-topk-512"
    # an older store, without source.model_name, gets the same name from source.model
    manifest = json.loads((tmp_path / summaries[0]["store"] / "manifest.json").read_text())
    del manifest["source"]["model_name"]
    (tmp_path / summaries[0]["store"] / "manifest.json").write_text(json.dumps(manifest))
    assert ActivationStore(tmp_path / summaries[0]["store"]).model_name == ra.store_name


def test_store_of_an_older_harvest_without_the_new_fields_is_still_complete(tiny_pythia, tiny_text_dataset, tmp_path):
    cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "old", max_rows=300)
    run_harvest(cfg)
    path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(path.read_text())
    for k in ("shuffle_windows", "seed"):  # what a store harvested before these flags records
        del manifest["config"][k]
    path.write_text(json.dumps(manifest))
    assert run_harvest(cfg)["status"] == "already complete"
    with pytest.raises(SaeaseError, match=r"shuffle_windows: None there, True now"):
        run_harvest(make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "old", max_rows=300, shuffle_windows=True))


# ---------------------------------------------------------------------------------------------
# values the storage dtype cannot hold


@pytest.fixture(scope="module")
def loud_pythia(tiny_pythia, tmp_path_factory) -> str:
    """The tiny model with its token embeddings scaled by 1e6: raw residuals past float16's 65,504."""
    from transformers import GPTNeoXForCausalLM

    path = tmp_path_factory.mktemp("loud")
    hf = GPTNeoXForCausalLM.from_pretrained(tiny_pythia)
    with torch.no_grad():
        hf.gpt_neox.embed_in.weight.mul_(1e6)
    hf.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_pythia).save_pretrained(path)
    return str(path)


def test_values_past_float16_are_refused_before_the_cast(loud_pythia, tiny_text_dataset, tmp_path):
    cfg = make_cfg(loud_pythia, tiny_text_dataset, tmp_path / "h", raw=True, dtype="float16", max_rows=1200)
    with pytest.raises(SaeaseError) as err:
        run_harvest(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("hook blocks.1.hook_resid_post: max |value| ")
    assert "exceeds float16's range (±65504)" in message
    assert "--dtype bfloat16 or --dtype float32 --overwrite" in message
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["shards"] == []  # the first batch already overflows
    assert not list((tmp_path / "h").glob("shard-*"))
    with pytest.raises(SaeaseError, match="incomplete"):
        ActivationStore(tmp_path / "h")

    # what the message says works, and the values are indeed past float16's range
    summary = run_harvest(make_cfg(loud_pythia, tiny_text_dataset, tmp_path / "h", raw=True, dtype="bfloat16",
                                   max_rows=1200, overwrite=True))
    acts = ActivationStore(summary["store"]).read_all()
    assert summary["dtype"] == "bfloat16" and torch.isfinite(acts).all() and acts.abs().max() > 65504
    peak = float(message.split("max |value| ")[1].split(" ")[0])
    assert peak == pytest.approx(float(acts[:BATCH * CTX].abs().max()), rel=1e-2)


def test_range_check_names_nan_and_fits():
    from saease.harvest.loop import StoreRangeCheck

    check = StoreRangeCheck("blocks.0.hook_resid_post", "float16")
    check(torch.tensor(65504.0))  # the largest float16 passes
    with pytest.raises(SaeaseError, match=r"blocks.0.hook_resid_post: the model produced NaN"):
        check(torch.tensor(float("nan")))
    with pytest.raises(SaeaseError, match=r"produced inf"):
        StoreRangeCheck("h", "float32")(torch.tensor(float("inf")))
    with pytest.raises(SaeaseError, match=r"exceeds bfloat16's range.*rerun with --dtype float32 --overwrite"):
        StoreRangeCheck("h", "bfloat16")(torch.tensor(3.395e38))


def test_range_check_counts_only_stored_rows():
    from saease.harvest.loop import stored_peak

    windows = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 1]])
    plan = Plan.build(windows, windows != 0, max_rows=5, shard_rows=10, batch_size=2)
    acts = torch.ones(2, 4, 3)
    acts[0, 0] = 1e6    # a skipped position (token 0)
    acts[1, 3] = -7.0   # past max_rows (the 6th kept row)
    acts[1, 1] = -3.0   # stored
    assert float(stored_peak(plan, 0, acts)) == 3.0


# ---------------------------------------------------------------------------------------------
# --shuffle-windows


def test_shuffle_windows_samples_the_whole_corpus(reference, tiny_pythia, tiny_text_dataset, tmp_path):
    everything = ActivationStore(reference[0].out).contexts()["tokens"]  # every window, in order
    n = len(everything)
    first = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / "first", max_rows=10 * CTX)
    run_harvest(first)
    stores = {}
    for name, seed in (("s0", 0), ("s0again", 0), ("s1", 1)):
        cfg = make_cfg(tiny_pythia, tiny_text_dataset, tmp_path / name, max_rows=10 * CTX,
                       shuffle_windows=True, seed=seed)
        assert run_harvest(cfg)["n_rows"] == 10 * CTX
        stores[name] = ActivationStore(cfg.out)
    assert torch.equal(ActivationStore(first.out).contexts()["tokens"], everything[:10])  # the first files only
    windows = stores["s0"].contexts()["tokens"]
    # the windows are whole windows of the corpus, drawn by the seeded permutation
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:10]
    assert torch.equal(windows, everything[order]) and order.max() > n // 2
    assert torch.equal(windows, stores["s0again"].contexts()["tokens"])
    assert not torch.equal(windows, stores["s1"].contexts()["tokens"])
    # and the rows are those windows' activations
    full = ActivationStore(reference[0].out).read_all().view(n, CTX, -1)
    assert torch.equal(stores["s0"].read_all(), full[order].flatten(0, 1))
    assert stores["s0"].source["shuffle_windows"] is True and stores["s0"].manifest["config"]["seed"] == 0
