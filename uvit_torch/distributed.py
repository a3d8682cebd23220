"""Data parallelism for the trainer: the process group torchrun asks for, and each process's rows.

    torchrun --nproc_per_node 4 -m uvit_torch.train cifar10_uvit_small --device cuda --data ...

torchrun starts one copy of the command per process and tells each who it is through the
environment: `RANK` (0 .. WORLD_SIZE - 1 over all machines), `LOCAL_RANK` (on this machine, which
picks its GPU), `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`. `init` joins them into one
`torch.distributed` process group (nccl between GPUs, gloo on CPUs); a plain `python -m` start
has no such variables and stays one process, with no process group at all.

How the work is split (`shard_rows`). Every process draws the whole global batch of step n from
the seeded plan (`uvit_numpy.training`: a pure function of (seed, n), so no process needs another's
numbers) and keeps its own rows: with W processes and A accumulation micro-batches per step, rank
r takes rows [r B/W, (r + 1) B/W) and splits them into A consecutive micro-batches of B/(W A).
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Who this process is: rank (0 is the one that writes files), world (number of processes),
    local_rank (on this machine), device (a torch.device) and backend ("gloo", "nccl" or None)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = None


def env_world():
    """(rank, local_rank, world) from torchrun's environment variables; (0, 0, 1) without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def resolve_device(name, local_rank=0, world=1):
    """The torch.device of this process for `--device name`: "cuda" is GPU `local_rank` (one GPU
    per process under torchrun); an explicit "cuda:k" is only for a single process."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}, cuda {torch.version.cuda})")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        elif world > 1:
            raise ValueError(f"--device {name}: under torchrun each process takes the GPU of its "
                             f"LOCAL_RANK; pass --device cuda")
        torch.cuda.set_device(device)
    return device


def init(device="cpu"):
    """Join torchrun's process group (when there are several processes) and pick this process's
    device. Returns a `Context`; call `close()` at the end."""
    rank, local_rank, world = env_world()
    device = resolve_device(device, local_rank, world)
    if world == 1:
        return Context(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Context(rank, world, local_rank, device, backend)


def close(barrier=True):
    """Leave the process group, after a barrier (so that no process leaves while rank 0 still
    writes the exported model) unless this process failed: then it leaves at once, and torchrun
    stops the others. Nothing to do for one process."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def current():
    """(rank, world) of the process group this process belongs to; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_split(batch_size, world, accumulation):
    """The global batch must split into world x accumulation equal micro-batches: equal shards
    make DDP's average of the shards' gradients the gradient of the global mean."""
    if accumulation < 1:
        raise ValueError(f"--grad-accum: expected a positive number of micro-batches, got "
                         f"{accumulation}")
    if batch_size % (world * accumulation):
        raise ValueError(f"batch_size {batch_size} does not split into {world} process(es) x "
                         f"{accumulation} micro-batch(es); expected a multiple of "
                         f"{world * accumulation}")
    return batch_size // (world * accumulation)


def shard_rows(batch, rank, world, accumulation):
    """This process's micro-batches of the global `batch` ({name: (B, ...) tensor}): a list of
    `accumulation` dicts of B/(world accumulation) consecutive rows each, from row rank B/world."""
    B = len(next(iter(batch.values())))
    micro = check_split(B, world, accumulation)
    first = rank * (B // world)
    return [{k: v[first + a * micro:first + (a + 1) * micro] for k, v in batch.items()}
            for a in range(accumulation)]


def all_reduce_sum(value, device):
    """The sum over all processes of the float `value` (in float64); `value` for one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())
