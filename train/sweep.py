"""`saease sweep FILE`: hyperparameter sweeps from standard W&B sweep YAMLs.

    saease sweep vaease-lr                     # register online (W&B server), print the agent command
    wandb agent ENTITY/PROJECT/ID              # each run is `saease train` reading wandb.config
    saease sweep vaease-lr --local --count 4   # run it here, no server: grid or random, logged offline

FILE is a YAML path or the name of one shipped in `train/sweeps/`. Its `parameters` must name
`saease train` settings; `--set KEY=VALUE` fixes one for every run (e.g. the store). Local
runs write `OUT/<sweep>/run-NNN/` and log offline to `OUT/<sweep>/wandb/` (`wandb sync`
uploads them later). A sparse dictionary trades reconstruction for sparsity, so the local
summary answers with the RE–L0 Pareto set (the runs no other run beats on both held-out RE
and exact L0), printed as a table, plotted to `OUT/<sweep>/pareto.png` and written with every
run's metrics to `OUT/<sweep>/summary.json`; the single best run by the YAML's metric is
kept as `best`. The wandb client cannot run a sweep without the server, and the `sweeps`
package pins numpy<2, hence this small runner.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from saease.cli import dataclass_args
from saease.errors import SaeaseError
from saease.store import atomic_write_json
from saease.train.config import TrainConfig, config_from_mapping, field_names

SHIPPED = Path(__file__).parent / "sweeps"
TOP_KEYS = {"name", "description", "method", "metric", "parameters", "command", "program", "early_terminate",
            "run_cap", "entity", "project"}
SPEC_KEYS = {"value", "values", "distribution", "min", "max", "mu", "sigma", "q", "probabilities"}
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal")


@dataclass
class SweepConfig:
    """`saease sweep`'s flags."""

    file: str = field(metadata={
        "help": f"sweep YAML, or a shipped one by name ({', '.join(sorted(p.stem for p in SHIPPED.glob('*.yaml')))})"})
    local: bool = field(default=False, metadata={
        "help": "run the sweep here (grid or random), each run logged to W&B offline, no server needed"})
    count: int | None = field(default=None, metadata={"help": "runs to make (grid: the first N; random: needed)"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "fix a setting for every run, e.g. --set data=activations/pythia epochs=2", "metavar": "KEY=VALUE"})
    out: str = field(default="dictionaries/sweeps", metadata={"help": "local runs write OUT/<sweep>/run-NNN"})
    seed: int = field(default=0, metadata={"help": "seed for drawing random-sweep settings"})
    project: str | None = field(default=None, metadata={"help": "W&B project (default: the YAML's, else saease)"})
    entity: str | None = field(default=None, metadata={"help": "W&B entity (default: the YAML's, else your default)"})


Config = SweepConfig


def add_arguments(parser) -> None:
    dataclass_args(parser, SweepConfig, positional=("file",))


def run(cfg: SweepConfig) -> dict:
    path = locate(cfg.file)
    spec = read_spec(path)
    fixed = parse_sets(cfg.set)
    name = str(spec.get("name") or path.stem)
    project = cfg.project or spec.get("project") or "saease"
    entity = cfg.entity or spec.get("entity")
    if cfg.count is not None and cfg.count < 1:
        raise SaeaseError(f"--count {cfg.count}: expected a positive number of runs")
    if cfg.local:
        return run_local(spec, name, fixed, count=cfg.count, out=Path(cfg.out), seed=cfg.seed, project=project)
    return register(spec, name, fixed, project=project, entity=entity)


def show(cfg: SweepConfig, summary: dict) -> dict:
    """Without --json: a local sweep's RE–L0 Pareto set as a table, then the summary."""
    if "pareto" in summary:
        print(f"\nRE–L0 Pareto set of sweep {summary['sweep']} ({len(summary['pareto'])} of "
              f"{summary['runs']} runs):")
        print(pareto_table(summary["pareto"]) + "\n")
    return summary


# ---- reading and checking a sweep file ---------------------------------------------------------

def locate(file: str) -> Path:
    path = Path(file)
    if path.exists():
        return path
    shipped = SHIPPED / f"{file}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    raise SaeaseError(f"{file}: no such sweep file; pass a YAML path or one of {names}")


def read_spec(path: Path) -> dict:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SaeaseError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise SaeaseError(f"{path}: expected a W&B sweep: a mapping with `method` and `parameters`")
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise SaeaseError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a W&B sweep has "
                          f"{', '.join(sorted(TOP_KEYS))}")
    if spec.get("method") not in ("grid", "random", "bayes"):
        raise SaeaseError(f"{path}: method {spec.get('method')!r}; expected grid, random or bayes")
    for key, rule in spec["parameters"].items():
        check_rule(path, key, rule)
    return spec


def check_rule(path: Path, key: str, rule) -> None:
    where = f"{path}: parameter {key!r}"
    if str(key).replace("-", "_") not in field_names():
        raise SaeaseError(f"{where}: not a `saease train` setting; expected names such as kind, d_latent, "
                          "lr, lambda1, lambda2, k, epochs, batch_size")
    if not isinstance(rule, dict) or not rule or set(rule) - SPEC_KEYS:
        raise SaeaseError(f"{where}: expected a mapping of {', '.join(sorted(SPEC_KEYS))}")
    dist = distribution(rule)
    if dist not in DISTRIBUTIONS:
        raise SaeaseError(f"{where}: distribution {dist!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    for value in values_of(rule):
        config_from_mapping({key: value}, where)  # each listed value must fit the setting's type
    if dist not in ("constant", "categorical") and not {"min", "max"} <= set(rule) and not {"mu", "sigma"} <= set(rule):
        raise SaeaseError(f"{where}: distribution {dist} needs min and max (or mu and sigma)")


def distribution(rule: dict) -> str:
    if "distribution" in rule:
        return rule["distribution"]
    if "value" in rule:
        return "constant"
    if "values" in rule:
        return "categorical"
    if isinstance(rule.get("min"), int) and isinstance(rule.get("max"), int):
        return "int_uniform"
    return "uniform"


def values_of(rule: dict) -> list:
    if "value" in rule:
        return [rule["value"]]
    return list(rule.get("values") or [])


def parse_sets(items: list[str]) -> dict:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SaeaseError(f"--set {item!r}: expected KEY=VALUE, e.g. data=activations/pythia")
        pairs[key] = None if value.lower() in ("none", "null") else value
    return config_from_mapping(pairs, "--set")


# ---- the runs a sweep makes ---------------------------------------------------------------------

def grid(params: dict, where: str) -> list[dict]:
    names, choices = [], []
    for key, rule in params.items():
        if distribution(rule) not in ("constant", "categorical"):
            raise SaeaseError(f"{where}: grid sweeps need `value` or `values` for {key!r}; use method: random "
                              "for distributions")
        names.append(key)
        choices.append(values_of(rule))
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def draw(rule: dict, rng: random.Random):
    """One value from a W&B parameter rule."""
    dist = distribution(rule)
    lo, hi, q = rule.get("min"), rule.get("max"), rule.get("q", 1)
    if dist == "constant":
        return rule["value"]
    if dist == "categorical":
        return rng.choices(rule["values"], weights=rule.get("probabilities"))[0]
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist in ("uniform", "q_uniform"):
        v = rng.uniform(lo, hi)
    elif dist == "log_uniform":  # W&B: min/max are natural logs
        v = math.exp(rng.uniform(lo, hi))
    elif dist in ("log_uniform_values", "q_log_uniform_values"):
        v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif dist in ("normal", "q_normal"):
        v = rng.gauss(rule.get("mu", 0.0), rule.get("sigma", 1.0))
    else:  # log_normal, q_log_normal
        v = math.exp(rng.gauss(rule.get("mu", 0.0), rule.get("sigma", 1.0)))
    return round(v / q) * q if dist.startswith("q_") else v


def planned_runs(spec: dict, count: int | None, seed: int, where: str) -> list[dict]:
    if spec["method"] == "bayes":
        raise SaeaseError(f"{where}: bayes sweeps need the W&B server's optimiser; run it with `wandb agent` "
                          "(drop --local), or use method: grid or random here")
    if spec["method"] == "grid":
        runs = grid(spec["parameters"], where)
        return runs[:count] if count else runs
    if not count:
        raise SaeaseError(f"{where}: a random sweep runs until stopped; pass --count N to make N runs here")
    rng = random.Random(seed)
    return [{k: draw(rule, rng) for k, rule in spec["parameters"].items()} for _ in range(count)]


def run_local(spec: dict, name: str, fixed: dict, *, count: int | None, out: Path, seed: int,
              project: str) -> dict:
    import wandb

    from saease.train.trainer import train

    runs = planned_runs(spec, count, seed, name)
    metric = (spec.get("metric") or {}).get("name", "eval/re")
    goal = (spec.get("metric") or {}).get("goal", "minimize")
    results, logs = [], out / name  # offline W&B runs go to OUT/<sweep>/wandb/
    logs.mkdir(parents=True, exist_ok=True)
    for i, params in enumerate(runs):
        values = {**config_from_mapping(params, f"{name} run {i}"), **fixed}
        values.update(out=str(out / name / f"run-{i:03d}"), wandb=True, overwrite=True)
        cfg = TrainConfig.flat(**values)
        wandb.init(mode="offline", project=project, group=name, name=f"{name}-{i:03d}", config=params,
                   job_type="sweep-run", dir=str(logs))
        try:
            _, summary = train(cfg)
        finally:
            if wandb.run is not None:
                wandb.run.finish()
        results.append({"run": i, "out": summary["out"], "kind": cfg.kind, "settings": params,
                        metric: summary.get(metric.split("/", 1)[-1]),
                        **{key: summary.get(field) for key, field in METRICS.items()}})
    scored = [r for r in results if isinstance(r.get(metric), (int, float))]
    best = (min if goal == "minimize" else max)(scored, key=lambda r: r[metric]) if scored else None
    front = pareto_set(results)
    plot = plot_pareto(results, front, logs / "pareto.png", title=f"sweep {name}: RE against L0")
    summary = {"sweep": name, "method": spec["method"], "runs": len(results), "metric": metric, "goal": goal,
               "pareto": front, "best": best, "plot": plot, "results": results,
               "wandb": f"offline; upload with `wandb sync {logs / 'wandb'}/offline-run-*`"}
    atomic_write_json(logs / "summary.json", summary)
    return summary


# ---- what a local sweep reports: the RE–L0 trade-off ----------------------------------------------

# a run's row: our name → the trainer's summary key (held-out metrics; l0 is exact, not estimated)
METRICS = {"l0": "l0", "re": "re", "ev": "explained_variance", "ad": "ad"}


def pareto_set(results: list[dict]) -> list[dict]:
    """The runs no other run beats on both L0 and RE (lower is better for each), by L0. A run is
    dominated when another is at least as good on both and better on one; equal runs are all kept."""
    def finite(r):
        return all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("l0", "re"))

    points = [r for r in results if finite(r)]
    front = [r for r in points
             if not any(o["l0"] <= r["l0"] and o["re"] <= r["re"] and (o["l0"] < r["l0"] or o["re"] < r["re"])
                        for o in points)]
    return sorted(front, key=lambda r: (r["l0"], r["re"], r["run"]))


def settings_text(settings: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in settings.items() if k != "kind") or "-"


def pareto_table(rows: list[dict]) -> str:
    """Markdown table of runs: run, kind, settings, L0, RE, EV, AD."""
    def num(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    lines = ["| run | kind | settings | L0 | RE | EV | AD |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']:03d} | {r['kind']} | {settings_text(r['settings'])} | {num(r['l0'], '.2f')} | "
                     f"{num(r['re'], '.4g')} | {num(r['ev'], '.3f')} | {num(r['ad'], '.2f')} |")
    return "\n".join(lines)


def plot_pareto(results: list[dict], front: list[dict], path: Path, title: str) -> str | None:
    """RE against L0, one point per run, the Pareto front drawn as a staircase and labelled; the
    PNG's path (None when no run has both numbers)."""
    points = [r for r in results if all(isinstance(r.get(k), (int, float)) for k in ("l0", "re"))]
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["l0"] for r in points], [r["re"] for r in points], s=18, color="0.6", label="run", zorder=2)
    ax.step([r["l0"] for r in front], [r["re"] for r in front], where="post", color="C3", lw=1.2, zorder=3)
    ax.scatter([r["l0"] for r in front], [r["re"] for r in front], s=36, color="C3", label="Pareto set", zorder=4)
    middle = (min(r["l0"] for r in points) + max(r["l0"] for r in points)) / 2
    for r in front:  # labels point inwards so none runs off the axes
        right = r["l0"] > middle
        ax.annotate(f"{r['kind']} {settings_text(r['settings'])}", (r["l0"], r["re"]), fontsize=7,
                    xytext=(-4 if right else 4, 4), textcoords="offset points", ha="right" if right else "left")
    if all(r["re"] > 0 for r in points) and max(r["re"] for r in points) > 10 * min(r["re"] for r in points):
        ax.set_yscale("log")
    ax.set(xlabel="L0 (mean non-zero codes per held-out vector)", ylabel="RE (held out)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---- registering online -------------------------------------------------------------------------

def register(spec: dict, name: str, fixed: dict, *, project: str, entity: str | None) -> dict:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise SaeaseError(f"registering sweep {name!r} needs the W&B server, but WANDB_MODE={mode}; "
                          "unset it and `wandb login`, or run the sweep here with --local")
    import wandb

    config = {k: v for k, v in spec.items() if k not in ("project", "entity")}
    config["name"] = name
    config["parameters"] = {**spec["parameters"], **{k: {"value": v} for k, v in fixed.items()}}
    config.setdefault("command", ["saease", "train"])
    try:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
    except Exception as err:  # network, login and server-side validation errors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SaeaseError(f"registering sweep {name!r} with W&B failed ({reason}); check `wandb login` and "
                          "the network, or run it here with --local") from None
    path = "/".join(p for p in (entity, project, sweep_id) if p)
    return {"sweep": name, "id": sweep_id, "project": project, "entity": entity,
            "agent": f"wandb agent {path}"}
