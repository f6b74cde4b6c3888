"""Just enough torch.distributed for `torchrun --nproc_per_node N saease harvest ...`.

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it there is
one rank and nothing is initialised. Errors are agreed on: `Dist.agree(fn)` runs `fn` and then
tells every rank whether any rank failed, so that all stop with the same one-line error instead
of some waiting forever for a collective.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from saease.errors import SaeaseError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str | None = None) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
        use_cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=float(os.environ.get("SAEASE_DIST_TIMEOUT_S", "7200")))
        try:
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        except Exception as err:
            raise SaeaseError(f"torch.distributed could not start (rank {rank} of {world}): {err}") from None
        return cls(rank, world, local_rank, owns_group=True)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """`obj` from rank 0 to every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, fn, *, only_main: bool = False):
        """Run `fn` (on rank 0 only with `only_main`) and raise on every rank if it failed on any."""
        error, result = None, None
        try:
            if not only_main or self.is_main:
                result = fn()
        except SaeaseError as err:
            error = str(err)
            if not self.enabled:
                raise
        except Exception as err:
            if not self.enabled:
                raise
            error = f"{type(err).__name__}: {err} (on rank {self.rank})"
        if self.enabled:
            import torch.distributed as dist

            errors = [None] * self.world
            dist.all_gather_object(errors, error)
            failed = [e for e in errors if e]
            if failed:
                raise SaeaseError(failed[0] if error is None else error)
        return result
