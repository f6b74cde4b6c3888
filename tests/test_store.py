"""Activation stores: atomic shards, verification, import, synthetic data, bad input."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from saease import ActivationStore, SaeaseError, StoreWriter
from saease.store import holdout_mask, write_store


from cli_runner import run_cli as saease


def test_writer_lists_only_complete_shards_and_reader_verifies(tmp_path):
    w = StoreWriter(tmp_path / "s", d_in=3, dtype="float32", config={"a": 1})
    w.write_shard(torch.ones(4, 3), tokens=torch.arange(4), seq=torch.zeros(4), pos=torch.arange(4))
    # An unfinished store is not readable as a whole one.
    with pytest.raises(SaeaseError, match="incomplete"):
        ActivationStore(tmp_path / "s")
    # A stray temporary file (a write killed mid-shard) is never listed.
    (tmp_path / "s" / ".shard-00001.safetensors.tmp-1").write_bytes(b"partial")
    store = StoreWriter(tmp_path / "s", d_in=3, dtype="float32", config={"a": 1}).finish()
    assert store.n_rows == 4 and len(store.shards) == 1
    shard = store.read_shard(0)
    assert shard.columns["tokens"].dtype == torch.int32
    # Corrupt the shard: the sha256 check catches it.
    path = tmp_path / "s" / store.shards[0]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SaeaseError, match="sha256 does not match"):
        ActivationStore(tmp_path / "s").read_shard(0)


def test_writer_resumes_same_config_and_refuses_another(tmp_path):
    w = StoreWriter(tmp_path / "s", d_in=2, config={"layer": 1})
    w.write_shard(torch.zeros(3, 2))
    again = StoreWriter(tmp_path / "s", d_in=2, config={"layer": 1})
    assert again.n_rows == 3 and again.n_shards == 1
    with pytest.raises(SaeaseError, match="another configuration; pass --overwrite"):
        StoreWriter(tmp_path / "s", d_in=2, config={"layer": 2})
    fresh = StoreWriter(tmp_path / "s", d_in=2, config={"layer": 2}, overwrite=True)
    assert fresh.n_rows == 0 and not (tmp_path / "s" / "shard-00000.safetensors").exists()


def test_write_store_round_trip_and_float16(tmp_path):
    x = torch.randn(100, 7)
    labels = torch.arange(100) % 3
    store = write_store(tmp_path / "s", x, labels=labels, shard_rows=30, dtype="float16")
    assert [s["rows"] for s in store.shards] == [30, 30, 30, 10]
    acts, cols = store.read_all(columns=True)
    assert torch.equal(acts, x.half().float()) and torch.equal(cols["labels"], labels)
    assert store.has_labels and store.manifest["format"] == "saease.activations/1"


def test_holdout_mask_is_fixed_by_seed():
    a, b = holdout_mask(10_000, 0.1, 3), holdout_mask(10_000, 0.1, 3)
    assert torch.equal(a, b) and not torch.equal(a, holdout_mask(10_000, 0.1, 4))
    assert 0.08 < a.float().mean() < 0.12
    # key=None is the seed-only split of dictionaries trained before split keys
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(a, torch.rand(10_000, generator=gen) < 0.1)
    k = holdout_mask(10_000, 0.1, 3, key="abc")
    assert torch.equal(k, holdout_mask(10_000, 0.1, 3, key="abc")) and not torch.equal(k, a)
    assert not torch.equal(k, holdout_mask(10_000, 0.1, 3, key="abd"))


def test_split_is_keyed_by_content_so_a_moved_or_copied_store_keeps_it(tmp_path):
    import shutil

    from saease.store import training_split

    torch.manual_seed(0)
    x = torch.randn(1000, 4)
    store = write_store(tmp_path / "a" / "store", x, shard_rows=300)
    copy = ActivationStore(shutil.copytree(tmp_path / "a" / "store", tmp_path / "b" / "elsewhere"))
    moved = ActivationStore((tmp_path / "a" / "store").rename(tmp_path / "moved"))
    other = write_store(tmp_path / "other", x + 1, shard_rows=300)
    assert store.split_key == copy.split_key == moved.split_key != other.split_key
    assert len(store.split_key) == 16
    assert torch.equal(store.holdout_mask(0.2, 5), copy.holdout_mask(0.2, 5))
    assert torch.equal(copy.holdout_mask(0.2, 5), holdout_mask(1000, 0.2, 5, key=store.split_key))

    # a dictionary that records the key: its training store is found by content, wherever it is
    training = {"holdout": 0.2, "holdout_seed": 5, "split_key": store.split_key}
    for s in (copy, moved):
        mask, split = training_split(s, training, recorded_store=str(tmp_path / "a" / "store"))
        assert split == "held-out" and torch.equal(mask, store.holdout_mask(0.2, 5))
    assert training_split(other, training, str(tmp_path / "other")) == (None, "all")
    assert training_split(copy, training, all_rows=True) == (None, "all")
    # an older dictionary (no key): the recorded folder, and the seed-only split it trained with
    legacy = {"holdout": 0.2, "holdout_seed": 5}
    mask, split = training_split(copy, legacy, recorded_store=str(copy.path))
    assert split == "held-out" and torch.equal(mask, holdout_mask(1000, 0.2, 5))
    assert training_split(copy, legacy, recorded_store=str(tmp_path / "gone")) == (None, "all")


def test_store_names_for_the_trainer(tmp_path):
    synthetic = write_store(tmp_path / "synth", torch.randn(10, 3))
    assert synthetic.model_name is None and synthetic.hook_name is None
    assert synthetic.default_name("vaease", 64) == "synth-vaease-64"
    hub = write_store(tmp_path / "hub", torch.randn(10, 3),
                      source={"model": "EleutherAI/pythia-70m", "hook": "blocks.2.hook_resid_post"})
    assert hub.model_name == "EleutherAI--pythia-70m" and hub.hook_name == "blocks.2.hook_resid_post"
    assert hub.default_name("sae-topk", 512) == "EleutherAI--pythia-70m-blocks.2.hook_resid_post-sae-topk-512"
    gone = write_store(tmp_path / "gone", torch.randn(10, 3), source={"model": "/no/such/model", "hook": "h"})
    also = write_store(tmp_path / "also", torch.randn(10, 3), source={"model": "/other/model", "hook": "h"})
    assert gone.model_name.startswith("model-") and gone.model_name != also.model_name


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_import_command(tmp_path, suffix):
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    y = np.arange(50) % 2
    path, lab = tmp_path / f"x{suffix}", tmp_path / f"y{suffix}"
    if suffix == ".npy":
        np.save(path, x); np.save(lab, y)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(x), path); torch.save(torch.from_numpy(y), lab)
    else:
        safetensors.torch.save_file({"acts": torch.from_numpy(x)}, path)
        safetensors.torch.save_file({"labels": torch.from_numpy(y)}, lab)
    r = saease("import", path, "--out", tmp_path / "s", "--labels", lab, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["n"] == 50
    acts, cols = ActivationStore(tmp_path / "s").read_all(columns=True)
    assert torch.equal(acts, torch.from_numpy(x)) and cols["labels"].tolist() == y.tolist()


def _bad_inputs(tmp_path):
    nan = np.ones((5, 3), np.float32); nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ragged.npy", np.array([np.ones(3), np.ones(2)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok.npy", np.ones((5, 3), np.float32))
    np.save(tmp_path / "short.npy", np.arange(4))
    return [
        (["import", tmp_path / "nan.npy", "--out", tmp_path / "o1"], "NaN or inf"),
        (["import", tmp_path / "ragged.npy", "--out", tmp_path / "o2"], "expected one rectangular array"),
        (["import", tmp_path / "ok.npy", "--out", tmp_path / "o3", "--labels", tmp_path / "short.npy"],
         "expected 5 integers, one per row"),
        (["import", tmp_path / "missing.npy", "--out", tmp_path / "o4"], "no such file"),
        (["import", tmp_path / "ok.npy"], "required: --out"),
        (["train", "--data", tmp_path / "nowhere", "--epochs", "1"], "no such store"),
        (["train", "--data", tmp_path / "ok.npy", "--epochs", "1"], "is a file; a store folder"),
        (["train", "--kind", "sparse"], "invalid choice: 'sparse'"),
    ]


def test_bad_input_gives_one_line_errors_and_writes_nothing(tmp_path):
    for args, message in _bad_inputs(tmp_path):
        r = saease(*args, cwd=tmp_path)
        assert r.returncode != 0, args
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        assert message in lines[-1], (args, r.stderr)
        if "import" in args and args[-1] != tmp_path / "short.npy":
            out = args[args.index("--out") + 1] if "--out" in args else None
            assert out is None or not (out / "manifest.json").exists()
    assert not (tmp_path / "o3" / "manifest.json").exists()


@pytest.mark.parametrize("dataset, extra, d_in, n", [
    ("subspaces", ["--n", "300", "--dims", "2,3", "--ambient", "10"], 10, 300),
    ("manifolds", ["--n-per", "50", "--dims", "2,3,4", "--ambient", "12"], 12, 150),
    ("superposition", ["--n", "200", "--n-features", "64", "--ambient", "16"], 16, 200),
])
def test_synth_commands(tmp_path, dataset, extra, d_in, n):
    r = saease("synth", dataset, "--out", tmp_path / "s", "--json", *extra)
    assert r.returncode == 0, r.stderr
    store = ActivationStore(tmp_path / "s")
    assert (store.n_rows, store.d_in) == (n, d_in)
    x, cols = store.read_all(columns=True)
    if dataset == "superposition":
        assert "n_active" in cols and (cols["n_active"] >= 1).all()
    else:
        assert store.has_labels and len(cols["labels"].unique()) == len(extra[-3].split(","))


def test_subspace_points_lie_in_their_subspace():
    from saease.synth import subspaces
    x, labels = subspaces(600, (2, 3), ambient=8, seed=1)
    for g, r in enumerate((2, 3)):
        s = torch.linalg.svdvals(x[labels == g])
        assert s[r - 1] > 1 and s[r:].max() < 1e-4
