"""Process-group setup from torchrun's environment, teardown, and the few collectives we need.

torchrun (single node, multi-node, elastic) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; reading them (rather than spawning processes ourselves, as ffcv-imagenet does)
lets the same script run under any launcher. A plain ``python train_imagenet.py`` is one process.
"""
from __future__ import annotations

import datetime
import os
import shlex
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def torchrun_command(nproc: int, argv: list[str], script: str = "train_imagenet.py") -> str:
    """The command that launches this run as the config intends."""
    return shlex.join(["torchrun", f"--nproc_per_node={nproc}", script, *argv])


def pick_device(local_rank: int, single_gpu_index: int = 0) -> torch.device:
    """CUDA when present (this process's GPU), else CPU."""
    if torch.cuda.is_available():
        index = local_rank if under_torchrun() else single_gpu_index
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"GPU {index} requested but only {torch.cuda.device_count()} visible")
        return torch.device("cuda", index)
    return torch.device("cpu")


def init(single_gpu_index: int = 0, timeout_s: float | None = None) -> DistEnv:
    """Read torchrun's environment, bind this process to its GPU and join the process group.

    ``timeout_s``: how long a collective may wait for the other ranks before failing (a dead
    or hung rank then ends the run instead of holding every other rank forever)."""
    if under_torchrun():
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    else:
        rank, local_rank, world_size, local_world_size = 0, 0, 1, 1
    device = pick_device(local_rank, single_gpu_index)
    if device.type == "cuda":
        # Before the process group: NCCL and every later .cuda() must use this GPU, not GPU 0.
        torch.cuda.set_device(device)
    env = DistEnv(rank, local_rank, world_size, local_world_size, device)
    if env.distributed and not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if timeout_s:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=env.backend, rank=rank, world_size=world_size, **kwargs)
    return env


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over all processes (in place; a no-op for one process)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True when ``flag`` is true on any process; every process must call it at the same point."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP only broadcasts buffers at the start of a training forward, so after the last step each
    rank holds statistics updated by its own batch; evaluating with those would mix slightly
    different models across shards. Rank 0's are the ones the checkpoint saves.
    """
    if env.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every process (e.g. a freshly drawn run id)."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()
