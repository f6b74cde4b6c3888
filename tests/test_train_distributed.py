"""Several processes (torchrun, gloo on CPU) train the same dictionary as one process at the
same global batch: each takes its own slice of every batch, gradients are all-reduced."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from saease.dictionary import Dictionary
from saease.store import write_store
from saease.train import train
from saease.train.config import TrainConfig
from test_train_support import one_thread  # noqa: F401  (autouse)


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


@pytest.mark.parametrize("kind", ["sae-topk", "sae-l1"])
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, kind):
    """DistributedDataParallel over gloo: the same weights as one process at the same global batch
    (TopK's dead-latent counts are kept over the global batch too)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1000, 6, generator=g) @ torch.randn(6, 16, generator=g)) * 3 + 1
    store = write_store(tmp_path / "store", x, shard_rows=250)
    # 101 rows a batch: the processes' slices differ in size (50 and 51), and so does the last batch
    settings = {"kind": kind, "d_latent": 24, "epochs": 2, "batch_size": 101, "k": 4 if kind == "sae-topk" else None,
                "checkpoint_every": 7, "progress": False}
    _, one = train(TrainConfig.flat(data=str(store.path), out=str(tmp_path / "one"), **settings))

    flags = ["--data", str(store.path), "--out", str(tmp_path / "two"), "--kind", kind, "--d-latent", "24",
             "--epochs", "2", "--batch-size", "101", "--checkpoint-every", "7", "--no-progress", "--json",
             ] + (["--k", "4"] if kind == "sae-topk" else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "saease.cli", "train", *flags, "--overwrite"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if done.returncode != 0 and GLOO_TEARDOWN_ABORT in done.stderr:
        # A known, rare (~1 in 35 launches) abort inside gloo as a process exits, after the run's
        # results are written; it is not this code's failure mode, so launch once more.
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (two,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]  # rank 0 reports
    assert two["processes"] == 2 and two["steps"] == one["steps"] == 2 * 9

    a, b = Dictionary.load(tmp_path / "one").state_dict(), Dictionary.load(tmp_path / "two").state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)
    assert two["re"] == pytest.approx(one["re"], rel=1e-4)
    ckpt = json.loads((tmp_path / "two" / "checkpoint.json").read_text())
    assert ckpt["finished"] and ckpt["step"] == one["steps"]
