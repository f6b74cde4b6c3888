"""Training dictionaries on activation stores."""

from saease.train.config import TrainConfig
from saease.train.trainer import train

__all__ = ["TrainConfig", "train"]
