"""`saease harvest`: the HarvestConfig dataclass is the command line."""

from __future__ import annotations

import argparse

from saease.harvest.config import HarvestConfig

Config = HarvestConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from saease.cli import dataclass_args

    parser.epilog = ("On several GPUs: torchrun --nproc_per_node N --no-python saease harvest ... "
                     "(each rank writes its share of the shards into the same store).")
    dataclass_args(parser, HarvestConfig)


def run(cfg: HarvestConfig) -> dict | None:
    from saease.harvest.loop import run_harvest

    return run_harvest(cfg)
