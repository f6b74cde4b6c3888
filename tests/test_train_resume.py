"""Checkpoints and --resume: a run stopped (by a NaN, or killed outright) and resumed ends with
exactly the weights of an uninterrupted run; mismatched resumes are refused, losing nothing."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.train import train
from saease.train.config import TrainConfig
from saease.kinds.vaease import VAEase
from test_train_support import one_thread, small_store  # noqa: F401  (one_thread: autouse)

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("resume") / "store", shard_rows=100, dtype="float16")


def config(store, out, **kw) -> TrainConfig:
    # 12 shards mixed 2 at a time: a resume lands mid-group, with rows carried between groups
    kw = {"kind": "vaease", "d_latent": 24, "epochs": 2, "batch_size": 64, "buffer_shards": 2,
          "checkpoint_every": 5, "progress": False, "log_every": 4, "threads": 1, **kw}
    return TrainConfig.flat(data=str(store.path), out=str(out), **kw)


def assert_same_weights(a, b):
    wa, wb = Dictionary.load(a).state_dict(), Dictionary.load(b).state_dict()
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "d"
    _, summary = train(config(store, out))
    return out, summary


def poison_at(step: int):
    """VAEase.loss with a NaN loss at training step `step` (counting calls from 1)."""
    calls = {"n": 0}
    real = VAEase.loss

    def poisoned(self, x, generator=None):
        terms = real(self, x, generator)
        calls["n"] += 1
        if calls["n"] == step:
            terms["mse"] = terms["mse"] * float("nan")
        return terms

    return poisoned


def test_a_nan_stops_the_run_keeps_the_last_checkpoint_and_resume_finishes_it(store, tmp_path, uninterrupted,
                                                                              monkeypatch):
    out = tmp_path / "d"
    monkeypatch.setattr(VAEase, "loss", poison_at(13))
    with pytest.raises(SaeaseError, match=r"loss became nan at step 13.*checkpoint \(step 10\)"):
        train(config(store, out))
    monkeypatch.undo()  # the real loss again
    info = json.loads((out / "checkpoint.json").read_text())
    assert (info["step"], info["finished"]) == (10, False)
    assert not (out / "dictionary.safetensors").exists()

    with pytest.raises(SaeaseError, match="unfinished run.*--resume"):  # nothing is overwritten by accident
        train(config(store, out))
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 10

    _, summary = train(config(store, out, resume=str(out)))
    assert summary["steps"] == uninterrupted[1]["steps"]
    assert_same_weights(out, uninterrupted[0])
    assert summary["re"] == uninterrupted[1]["re"]


def test_a_resumed_run_re_opens_latents_as_an_uninterrupted_one(store, tmp_path, monkeypatch):
    """`--reopen-every`: the rows each latent has been shut are saved with the checkpoint, so a
    run stopped at step 10 and resumed re-opens the same latents at the same steps."""
    # σ² starts (and restarts) at 0.9, shut: every latent is re-opened every few steps, one of
    # them the step after the resume (34 steps, crossings of 0.1 every ~3.4)
    knobs = {"reopen_every": 0.1, "reopen_until": 1.0, "kl_peak": 1.5, "kl_warmup": 0.0, "sigma_init": 0.9}
    full = tmp_path / "full"
    train(config(store, full, **knobs))
    out = tmp_path / "d"
    monkeypatch.setattr(VAEase, "loss", poison_at(13))
    with pytest.raises(SaeaseError, match="loss became nan"):
        train(config(store, out, **knobs))
    monkeypatch.undo()  # the real loss again
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 10
    train(config(store, out, resume=str(out), **knobs))
    assert_same_weights(out, full)
    assert "rows_since_open" in Dictionary.load(out).state_dict()


def test_a_killed_process_resumes_to_the_same_weights(store, tmp_path, uninterrupted):
    out = tmp_path / "d"
    args = [sys.executable, "-m", "saease.cli", "train", "--data", str(store.path), "--out", str(out),
            "--kind", "vaease", "--d-latent", "24", "--batch-size", "64", "--buffer-shards", "2",
            "--checkpoint-every", "5", "--log-every", "4", "--threads", "1", "--no-progress"]
    # a longer run of the same settings, killed after its first checkpoints
    proc = subprocess.Popen([*args, "--epochs", "40"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    info, deadline = {}, time.time() + 120
    while time.time() < deadline and info.get("step", 0) < 10 and proc.poll() is None:
        time.sleep(0.02)
        try:
            info = json.loads((out / "checkpoint.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads((out / "checkpoint.json").read_text())
    assert 10 <= info["step"] < info["total_steps"] and not info["finished"]
    # resumed from the command line with only the changed setting: 2 epochs, as `uninterrupted`
    # (a checkpoint past 2 epochs' steps would end at once, so shorten only when still inside)
    if info["step"] >= uninterrupted[1]["steps"]:
        pytest.skip("the process outran the poll: its checkpoint is already past the reference run")
    # the schedule's horizon is the 40 epochs planned at the start (a resume keeps it), so the
    # reference is the same 40-epoch run cut at the same step count by --max-steps
    steps = uninterrupted[1]["steps"]
    _, reference = train(config(store, tmp_path / "ref", epochs=40, max_steps=steps))
    done = subprocess.run([sys.executable, "-m", "saease.cli", "train", "--resume", str(out), "--max-steps",
                           str(steps), "--json", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["steps"] == reference["steps"] == steps
    assert_same_weights(out, tmp_path / "ref")


SIGNAL_EPOCHS = 60  # ~1000 steps: the signal lands long before the end, however fast the machine


@pytest.fixture(scope="module")
def uninterrupted_long(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("full-long") / "d"
    _, summary = train(config(store, out, epochs=SIGNAL_EPOCHS, checkpoint_every=0))
    return out, summary


class StderrReader:
    """Collects a process's stderr on a thread; `wait_for(pattern)` polls it with a deadline."""

    def __init__(self, proc):
        self.proc, self.text, self.lock = proc, "", threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            with self.lock:
                self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = list(re.finditer(pattern, self.text))
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"no {pattern!r} in stderr before {timeout} s or the process's exit "
                             f"(exit {self.proc.poll()}):\n{self.text[-2000:]}")

    def finish(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        self.thread.join(timeout=timeout)
        return self.text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_current_step_and_the_printed_command_resumes_it(
        store, tmp_path, uninterrupted_long, sig):
    out = tmp_path / "d"
    # --checkpoint-every 0: the only checkpoint before the end is the one the signal writes
    proc = subprocess.Popen(
        [sys.executable, "-m", "saease.cli", "train", "--data", str(store.path), "--out", str(out),
         "--kind", "vaease", "--d-latent", "24", "--batch-size", "64", "--buffer-shards", "2",
         "--epochs", str(SIGNAL_EPOCHS), "--checkpoint-every", "0", "--log-every", "4", "--threads", "1",
         "--progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reader = StderrReader(proc)
        # the progress bar (tqdm, on stderr) shows the step; wait until the run is a few steps in
        seen = int(reader.wait_for(r"\b([5-9]|[1-9]\d+)/\d+ \[", timeout=240).group(1))
        assert not (out / "checkpoint.json").exists()  # no periodic checkpoint has been written
        proc.send_signal(sig)
        err = reader.finish(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    stopped = [line for line in err.splitlines() if "saease train --resume" in line]
    assert len(stopped) == 1, err
    said = re.fullmatch(rf"saease train: stopped: {sig.name} at step (\d+) of (\d+); a checkpoint is written "
                        rf"in (.+); continue with: (saease train --resume .+)", stopped[0])
    assert said, stopped[0]
    step, total = int(said.group(1)), int(said.group(2))
    assert said.group(3) == str(out) and shlex.split(said.group(4)) == ["saease", "train", "--resume", str(out)]
    assert total == uninterrupted_long[1]["steps"] and seen <= step < total
    info = json.loads((out / "checkpoint.json").read_text())
    assert (info["step"], info["finished"]) == (step, False)  # the step reached, not a periodic one
    assert not (out / "dictionary.safetensors").exists()

    # the printed command, as printed (saease → python -m saease.cli), finishes the run
    command = shlex.split(said.group(4))
    done = subprocess.run([sys.executable, "-m", "saease.cli", *command[1:], "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["steps"] == total
    assert_same_weights(out, uninterrupted_long[0])


def test_resume_refuses_a_store_or_kind_that_disagrees_and_changes_nothing(store, tmp_path):
    out = tmp_path / "d"
    train(config(store, out, max_steps=6))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = small_store(tmp_path / "other", n=300, d=12, shard_rows=100)
    with pytest.raises(SaeaseError, match="d_in 12.*d_in 16"):
        train(config(other, tmp_path / "x", resume=str(out)))
    with pytest.raises(SaeaseError, match="--kind 'sae-l1' disagrees with the checkpoint"):
        train(config(store, out, resume=str(out)).with_(kind="sae-l1"))
    with pytest.raises(SaeaseError, match="no checkpoint.pt"):
        train(config(store, tmp_path / "y", resume=str(tmp_path / "nowhere")))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
