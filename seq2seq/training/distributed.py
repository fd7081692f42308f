"""Training in several processes under ``torchrun``: one process group, decisions taken once.

``torchrun`` starts one process per rank and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
Without those variables training is one process, exactly as before, and every method of
:data:`SINGLE` is a no-op. With them, :func:`process_group` joins the group (``gloo`` on
the CPU, ``nccl`` on CUDA) and yields this process's :class:`Ranks`, through which the
trainer sums, broadcasts and gathers what the ranks must agree on.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seq2seq.devices import pick_device
from seq2seq.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes, and their collectives.

    Attributes:
        rank: this process's number, 0 to ``world - 1``; rank 0 writes the run.
        world: how many processes train together (1: this one alone).
        local_rank: its number on this machine (its GPU index on CUDA).
        device: where it trains, and where the collectives' tensors live.
        grouped: whether a process group was joined (under torchrun, even with world 1).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    grouped: bool = False

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, logs and curves (rank 0)."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """The process group's backend: ``nccl`` on CUDA, ``gloo`` on the CPU."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (float64; every rank gets the same numbers)."""
        if not self.grouped:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if not self.grouped:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.grouped:
            return [obj]
        boxes = [None] * self.world
        dist.all_gather_object(boxes, obj)
        return boxes

    def barrier(self) -> None:
        """Wait until every rank is here (rank 0 building what the others then read)."""
        if self.grouped:
            dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)


SINGLE = Ranks()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting ``RANK``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 when not launched)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def job_id() -> str | None:
    """torchrun's id of this job (``TORCHELASTIC_RUN_ID``), the same across its restarts."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def restarts() -> int:
    """How often torchrun has restarted this job so far (0 when not launched by it)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not a whole number") from None


def _store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of ``MASTER_ADDR:MASTER_PORT``, its keys under this attempt.

    torchrun keeps one store across ``--max-restarts``; without a prefix per attempt, the
    restarted ranks read their predecessors' addresses and fail to connect.
    """
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", 29500)
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host,
        port,
        world,
        is_master=rank == 0 and not agent_hosts,
        timeout=timeout,
        multi_tenant=not agent_hosts,
    )
    return dist.PrefixStore(f"seq2seq/attempt_{restarts()}", store)


@contextlib.contextmanager
def process_group(device_name: str, timeout: float) -> Iterator[Ranks]:
    """Join the launcher's process group for the length of the block; yield its Ranks.

    Args:
        device_name: ``train.device``; on CUDA each rank takes the GPU of its
            ``LOCAL_RANK`` and the backend is ``nccl``, else ``gloo``.
        timeout: seconds a collective may wait for the other ranks before failing
            (``train.dist_timeout``): a rank that stopped answering ends the job
            with an error instead of a hang.

    Yields :data:`SINGLE` (and joins nothing) when not launched by torchrun.
    """
    if not launched():
        yield SINGLE
        return
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(device_name, index=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ranks = Ranks(rank, world, local_rank, device, grouped=True)
    wait = datetime.timedelta(seconds=timeout)
    dist.init_process_group(
        ranks.backend, store=_store(rank, world, wait), rank=rank, world_size=world, timeout=wait
    )
    try:
        yield ranks
    except BaseException:
        dist.destroy_process_group()
        raise
    # Every rank is done with the group before any leaves it: a rank tearing gloo down
    # while another still talks to it could abort that one at exit.
    dist.barrier()
    dist.destroy_process_group()
