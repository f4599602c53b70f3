"""Data-parallel training under torchrun: DistributedDataParallel, gloo on CPUs, nccl on GPUs.

    torchrun --nproc_per_node=2 -m training train --out checkpoints/fashion-mlp.safetensors
    torchrun --nproc_per_node=2 -m training train --arch cnn

The command line is that of `python -m training train`; the variables torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) send it here. Every process:
- builds the same model from the same seed (DDP also broadcasts rank 0's weights) and draws the
  same shuffled order each epoch, then takes every world_size-th example of each global batch of
  --batch-size examples, as DistributedSampler does (and, like it, wraps the order around to a
  multiple of world_size: at most world_size - 1 examples count twice in an epoch);
- lets DDP average the gradients of its share's mean loss: the shares are equal (--batch-size
  must be a multiple of world_size), so a step is the step one process takes on the whole batch;
  except for a CNN's BatchNorm, which normalises each share by its own statistics (as DDP does
  unless the model is converted to SyncBatchNorm, which needs GPUs): its running statistics are
  rank 0's, which DDP broadcasts to the others before every forward;
- draws its own dropout masks, seeded from (seed, rank, epoch) before every epoch, so a resumed
  run repeats an uninterrupted one;
- leaves the files to rank 0: training state, history and checkpoint, and the test evaluation
  and calibration that go into it (train.run). --out must be on a filesystem every node shares.
"""

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training import train

log = logging.getLogger(__name__)


def launched() -> bool:
    """Whether torchrun (or a launcher that sets the same variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_and_device(local_rank: int, cuda: bool) -> tuple[str, torch.device]:
    """nccl and this process's own GPU where there are GPUs, gloo and the CPU elsewhere."""
    if cuda:
        return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A seed per (seed, rank, epoch); numpy's SeedSequence mixes them into independent streams."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


class DistributedReplica(train.Replica):
    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size, self.device = rank, world_size, device

    def wrap(self, model: nn.Module) -> nn.Module:
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def pad(self, order: torch.Tensor) -> torch.Tensor:
        # DistributedSampler's padding: the order wraps around to a multiple of world_size.
        missing = -len(order) % self.world_size
        repeats = -(-missing // len(order)) if missing else 0
        return torch.cat([order, order.repeat(repeats)[:missing]])

    def start_epoch(self, seed: int, epoch: int) -> None:
        # Seeds the CPU and every GPU generator: the dropout masks of this rank and epoch.
        torch.manual_seed(epoch_seed(seed, self.rank, epoch))

    def all_sum(self, values: list[float]) -> list[float]:
        # float64: sums of up to 60,000 losses and counts stay exact enough to compare.
        summed = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        result: list[float] = summed.tolist()
        return result


def run(cfg: train.TrainConfig, finalize: train.Finalize | None = None) -> Path:
    """train.run in each process torchrun started; rank 0 writes cfg.out."""
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.batch_size % world_size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be a multiple of the number of processes "
            f"({world_size}): each process takes batch_size / {world_size} examples of a batch"
        )
    backend, device = backend_and_device(
        int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.is_available()
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # env:// rendezvous: MASTER_ADDR and MASTER_PORT come from torchrun.
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        log.info("rank %d of %d: %s on %s", rank, world_size, backend, device)
        if rank != 0:  # one progress bar and one log: rank 0's
            cfg = replace(cfg, progress=False)
            logging.getLogger().setLevel(logging.WARNING)
        replica = DistributedReplica(rank, world_size, device)
        return train.run(cfg, finalize if rank == 0 else None, replica)
    finally:
        dist.destroy_process_group()
