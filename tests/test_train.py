"""`saease train` end to end on small stores: defaults, units, the held-out split, the
command line's layers of settings, W&B offline logging and the one-line errors."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
import yaml

from saease.cli import main
from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.store import StoreWriter, holdout_mask
from saease.train.config import TrainConfig
from test_train_support import one_thread, small_store  # noqa: F401  (one_thread: autouse)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def quick(store, out, **kw) -> TrainConfig:
    kw = {"d_latent": 24, "epochs": 2, "batch_size": 128, "progress": False, "checkpoint_every": 0,
          "log_every": 5, **kw}
    return TrainConfig.flat(data=str(store.path), out=str(out), **kw)


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["train", *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, captured.err


def weights(path) -> dict[str, torch.Tensor]:
    return Dictionary.load(path).state_dict()


def test_defaults_are_the_papers_llm_settings():
    cfg = TrainConfig()
    assert (cfg.kind, cfg.dictionary.d_latent, cfg.batch_size, cfg.lr, cfg.epochs, cfg.t0, cfg.t_mult,
            cfg.holdout) == ("vaease", 300, 2048, 5e-3, 35, 5, 2, 0.1)
    l1 = TrainConfig.flat(kind="sae-l1").dictionary
    assert (l1.lambda1, l1.lambda2) == (0.32, 0.2)
    assert TrainConfig.flat(kind="sae-log").dictionary.lambda1 == 0.01
    assert TrainConfig.flat(kind="sae-topk").dictionary.k == 30
    assert TrainConfig.flat(kind="sae-l1", lambda1=0.05).dictionary.lambda1 == 0.05  # a given value wins
    # flat names round-trip, and a kind's own setting is refused for another kind
    topk = TrainConfig.flat(kind="sae-topk", k=7, lr=0.1)
    assert TrainConfig.flat(**topk.flat_values()) == topk
    with pytest.raises(SaeaseError, match="--k: not a setting of vaease"):
        TrainConfig.flat(kind="vaease", k=7)


def test_train_with_no_arguments_uses_the_newest_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = small_store(tmp_path / "activations" / "old", n=300, d=8)
    new = small_store(tmp_path / "activations" / "new", n=600, d=16)
    os.utime(old.path / "manifest.json", (1, 1))
    code, summary, _ = cli(capsys, "--json", "--no-progress")
    assert code == 0
    assert summary["out"] == os.path.join("dictionaries", "new-vaease-300")
    cfg = json.loads((tmp_path / summary["out"] / "config.json").read_text())
    assert (cfg["kind"], cfg["d_in"], cfg["d_latent"]) == ("vaease", 16, 300)
    t = cfg["training"]
    assert (t["batch_size"], t["lr"], t["epochs"], t["t0"], t["t_mult"], t["holdout"], t["holdout_seed"]) == \
        (2048, 0.005, 35, 5, 2, 0.1, 0)
    assert summary["steps"] == 35  # 540 training rows: one batch per epoch
    # normalization: a fixed mean norm, estimated from the store and recorded
    x = new.read_all()[~new.holdout_mask(0.1, 0)]  # the split is keyed by the store's content
    assert t["normalization"]["target_mean_norm"] == pytest.approx(4.0)
    assert cfg["input_scale"] == pytest.approx(4.0 / x.norm(dim=-1).mean().item(), rel=1e-5)
    assert summary["n"] == int(new.holdout_mask(0.1, 0).sum())  # metrics on the held-out rows
    assert os.path.samefile(summary["store"], new.path) and t["split_key"] == new.split_key


def test_reported_re_is_in_the_stores_units(tmp_path):
    from saease.train import train

    b = small_store(tmp_path / "b", scale=10.0)
    model, rb = train(quick(b, tmp_path / "db", kind="sae-l1"))
    # the summary's RE is ‖x − x̂‖² per held-out row in the store's units (the input scale undone)
    x = b.read_all()[b.holdout_mask(0.1, 0)]
    with torch.no_grad():
        by_hand = (Dictionary.load(tmp_path / "db")(x) - x).pow(2).sum(-1).mean().item()
    assert model.cfg.input_scale < 0.5  # the inputs were scaled down to mean norm √d …
    assert rb["re"] == pytest.approx(by_hand, rel=1e-4)  # … and RE is reported in the store's units


def test_config_file_supplies_settings_and_flags_override_it(tmp_path, capsys):
    s = small_store(tmp_path / "s")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"kind": "sae-topk", "k": 4, "d-latent": 20, "epochs": 1, "lr": "2e-3", "batch_size": 256, "progress": False}))
    code, summary, _ = cli(capsys, "--config", str(tmp_path / "c.yaml"), "--data", str(s.path),
                           "--out", str(tmp_path / "d"), "--k", "6", "--json")
    assert code == 0, capsys.readouterr()
    t = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (t["kind"], t["k"], t["d_latent"], t["training"]["lr"], t["training"]["batch_size"]) == \
        ("sae-topk", 6, 20, 0.002, 256)
    assert summary["l0"] <= 6


def test_wandb_offline_logs_training_and_eval_metrics(tmp_path, monkeypatch, capsys):
    import wandb

    if wandb.run is not None:  # a run left open by another test would receive this one's logs
        wandb.finish()
    wandb.teardown()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    s = small_store(tmp_path / "s")
    code, result, err = cli(capsys, "--data", str(s.path), "--out", str(tmp_path / "d"), "--d-latent", "24",
                            "--epochs", "2", "--batch-size", "128", "--log-every", "3", "--wandb",
                            "--wandb-project", "p", "--wandb-run-name", "r1", "--json", "--no-progress")
    assert code == 0, err
    wandb.teardown()  # the W&B service writes the run's record in the background: wait for it
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # the offline run's record
    data = log.read_bytes()
    for key in ("train/loss", "train/re", "train/ad", "train/l0", "train/dead", "train/gamma", "train/lr",
                "train/kl", "train/nll", "eval/re", "eval/ad"):
        assert key.encode() in data, key
    logged_re = float(re.search(rb"eval/re[^0-9]{1,4}([0-9.e+-]+)", data).group(1))
    assert logged_re == pytest.approx(result["re"])


def test_a_sweep_agents_wandb_config_sets_the_run(tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    s = small_store(tmp_path / "s")
    wandb.init(config={"kind": "sae-topk", "k": 3, "d_latent": 16, "epochs": 1})  # as the agent's run has it
    code, summary, err = cli(capsys, "--data", str(s.path), "--out", str(tmp_path / "d"), "--json", "--no-progress")
    assert code == 0, err
    assert summary["kind"] == "sae-topk" and summary["l0"] <= 3
    assert wandb.run is None  # the run was finished


def test_expansion_factor_sets_kappa_in_the_saved_config_and_the_default_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    small_store(tmp_path / "acts", n=300, d=16)
    code, summary, err = cli(capsys, "--data", "acts", "--kind", "sae-topk", "--k", "4", "--expansion-factor", "3",
                             "--epochs", "1", "--batch-size", "128", "--no-progress", "--json")
    assert code == 0, err
    assert summary["out"] == os.path.join("dictionaries", "acts-sae-topk-48")  # κ = 3 · d_in 16
    cfg = json.loads((tmp_path / summary["out"] / "config.json").read_text())
    assert (cfg["d_in"], cfg["d_latent"], cfg["training"]["expansion_factor"], cfg["training"]["d_latent"]) == \
        (16, 48, 3, 48)
    assert Dictionary.load(tmp_path / summary["out"]).W_dec.shape[0] == 48
    code, _, err = cli(capsys, "--data", "acts", "--expansion-factor", "3", "--d-latent", "40", "--no-progress")
    assert code == 2 and err == "saease train: error: --expansion-factor 3 and --d-latent 40: both set κ; give one\n"


@pytest.mark.parametrize("case", ["empty store", "unwritable out", "unknown yaml key", "bf16 on cpu", "bad yaml type"])
def test_bad_input_is_a_one_line_error_and_leaves_nothing(tmp_path, capsys, case):
    s = small_store(tmp_path / "s", n=200)
    out = tmp_path / "out"
    args = ["--data", str(s.path), "--out", str(out), "--epochs", "1", "--no-progress"]
    if case == "empty store":
        StoreWriter(tmp_path / "empty", d_in=8).finish()
        args[1] = str(tmp_path / "empty")
        expect = "no rows"
    elif case == "unwritable out":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        args[3] = str(out)
        expect = "not writable"
    elif case == "unknown yaml key":
        (tmp_path / "c.yaml").write_text("lr: 0.01\nlearning_rate: 0.01\n")
        args += ["--config", str(tmp_path / "c.yaml")]
        expect = "unknown setting.*learning_rate"
    elif case == "bad yaml type":
        (tmp_path / "c.yaml").write_text("epochs: many\n")
        args += ["--config", str(tmp_path / "c.yaml")]
        expect = "epochs: 'many' is not a valid int"
    else:
        args += ["--precision", "bf16", "--device", "cpu"]
        expect = "bf16: needs CUDA"
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("saease train: error:")
    assert re.search(expect, err), err
    assert not out.exists()


def test_threads_apply_to_the_run_only_and_max_steps_caps_it(tmp_path, monkeypatch):
    from saease.train import train

    s = small_store(tmp_path / "s")
    seen = []
    from saease.kinds.vaease import VAEase

    real_loss = VAEase.loss
    monkeypatch.setattr(VAEase, "loss", lambda self, x, generator=None: (seen.append(torch.get_num_threads()),
                                                                         real_loss(self, x, generator))[1])
    torch.set_num_threads(2)
    _, summary = train(quick(s, tmp_path / "d", max_steps=3, threads=1))
    assert summary["steps"] == 3 and seen == [1, 1, 1]
    assert torch.get_num_threads() == 2  # restored
    info = json.loads((tmp_path / "d" / "checkpoint.json").read_text())
    assert info["finished"] and info["step"] == 3
    assert math.isfinite(summary["re"])


def test_max_steps_far_short_of_the_epochs_plan_warns_for_a_scheduled_kind(tmp_path):
    """Schedules (VAEase's KL warm-up) count against the epochs planned: a --max-steps that ends
    the run early is worth a warning for a kind with a schedule, and only for one."""
    from saease.train import train

    s = small_store(tmp_path / "s")
    with pytest.warns(UserWarning, match=r"--max-steps 3 ends the run at \d+% .*lower --epochs"):
        train(quick(s, tmp_path / "v", epochs=20, max_steps=3, threads=1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(quick(s, tmp_path / "t", kind="sae-topk", k=4, epochs=20, max_steps=3, threads=1))
        train(quick(s, tmp_path / "w", epochs=1, max_steps=8, threads=1))  # 8 of the 9 steps planned
