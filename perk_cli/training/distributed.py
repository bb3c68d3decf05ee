"""torch.distributed for meta-training under `torchrun` (gloo on CPU, nccl on GPU).

Tasks are sharded across ranks and the outer gradients summed with all-reduce, as DDP does; only
rank 0 writes files. Outside torchrun everything is a no-op with world size 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_rank() -> int:
    """This process's rank as torchrun announces it (0 outside torchrun), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def init() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def all_reduce_sum(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
