"""Training dictionaries on activation stores."""

from train.config import TrainConfig
from train.trainer import train

__all__ = ["TrainConfig", "train"]
