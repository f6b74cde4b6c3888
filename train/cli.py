"""`saease train`: fit a dictionary on an activation store."""

from __future__ import annotations

from saease.cli import dataclass_args, dataclass_from_args
from train.config import TrainConfig
from train.trainer import train


def add_arguments(parser) -> None:
    dataclass_args(parser, TrainConfig)


def run(args) -> dict:
    _, summary = train(dataclass_from_args(TrainConfig, args))
    return summary
