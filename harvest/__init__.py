"""`saease harvest`: hook one layer of a language model over a text dataset and write an
activation store (docs/harvest.md).

    harvest.config   HarvestConfig, the dataclass that is the command line
    harvest.data     dataset loading and tokenization into context windows
    harvest.plan     which rows go to which shard, which windows to which batch
    harvest.writer   shard files and the background thread that writes them
    harvest.dist     torch.distributed helpers (torchrun)
    harvest.loop     the harvest itself: `run_harvest(cfg) -> summary`
    harvest.cli      `saease harvest` (add_arguments / run)
"""

from saease.harvest.config import HarvestConfig

__all__ = ["HarvestConfig"]
