"""Distributed DML: one member per process, probabilities exchanged by all-gather.

Launch with ``torchrun --nproc-per-node P -m peerlearn train CONFIG`` or with
``peerlearn train CONFIG --launcher local --nproc P``. With K trainable members, P must be a
multiple of K; R = P / K processes train each member as data parallel replicas:

    rank = k · R + r        member k = rank // R,  replica r = rank % R

* Every process draws the same batch order (the seeded BatchStream); replica r takes the r-th
  contiguous slice of each batch (B / R items).
* Replica group r (one process per member, same slice) all-gathers p_k = softmax(z_k / T) of
  that slice, so each member sees its peers' predictions on exactly its own items. Nothing else
  travels per step but the few loss numbers for the log. Labels and the labelled mask are known
  to every process already (same batches), so they are not sent.
* Member group k (the R replicas of member k) averages gradients with one all-reduce of a flat
  buffer after backward, as DistributedDataParallel does, then averages the floating-point
  buffers (BatchNorm running statistics) so the replicas stay identical.
* Before every evaluation and checkpoint each member's state (weights, optimizer, schedule) is
  broadcast from its owner (replica 0) to all processes; every process then holds the whole
  cohort, evaluates it, and rank 0 alone writes the run directory. A resumed run loads the
  checkpoint in every process.

With one process per member and no dropout this reproduces the single-process simultaneous update
(the members' gradients do not depend on each other's graphs). Dropout draws from each process's
own random stream, so runs with dropout match only in distribution.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from peerlearn.errors import ConfigError, DistributedError, PeerlearnError

# exit codes a process reports itself (with its own message); anything else is a crash the launcher names
REPORTED_CODES = (1, 2, 3, 4, 5, 130, 143)
COLLECTIVE_FAILURE_WORDS = ("connection closed", "connection reset", "timed out", "timeout", "gloo", "nccl",
                            "socket", "broken pipe", "peer")


@dataclass
class DistContext:
    rank: int
    world_size: int
    members: list[str]  # trainable member names, in config order
    device: torch.device
    backend: str
    replica_group: Any = None  # the processes of my replica index, one per member (member order)
    member_group: Any = None  # the replicas of my member
    groups: list = field(default_factory=list)

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def replicas(self) -> int:
        return self.world_size // self.num_members

    @property
    def member_index(self) -> int:
        return self.rank // self.replicas

    @property
    def member_name(self) -> str:
        return self.members[self.member_index]

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owner(self, member_index: int) -> int:
        """The rank of replica 0 of a member: the one whose state is authoritative."""
        return member_index * self.replicas

    def shard(self, batch):
        """This replica's contiguous slice of the (identical on every process) batch."""
        if self.replicas == 1:
            return batch
        size = len(batch.y) // self.replicas
        rows = slice(self.replica * size, (self.replica + 1) * size)
        return type(batch)(batch.x[rows], batch.y[rows], batch.index[rows])

    def sync_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm statistics) over the member's replicas."""
        if self.replicas == 1:
            return
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if buffers:
            _all_reduce_mean(buffers, self.member_group, self.replicas)

    def barrier(self) -> None:
        dist.barrier()


# ------------------------------------------------------------------ environment and setup
def world_from_env() -> Optional[tuple[int, int, int]]:
    """(rank, world size, local rank) from torchrun's variables, or None for a single-process run."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def check_distributed_config(config, world_size: int) -> list[str]:
    """Raise ConfigError unless ``config`` can run on ``world_size`` processes; return the member names.

    Whether the recipe runs distributed at all, and with which of its settings, is the recipe's rule
    (``Recipe.check_capabilities``, called by the api and the local launcher before this)."""
    if config.engine.fused:
        raise ConfigError("Invalid config: key 'engine.fused' is true in a distributed run; each process trains "
                          "one member, so there is nothing to fuse. Set engine.fused=false.")
    frozen = [m.name for m in config.members if not m.trainable]
    if frozen:
        raise ConfigError(f"Invalid config: members {', '.join(frozen)} are frozen; a distributed run trains "
                          "one member per process, every member trainable.")
    members = [m.name for m in config.members]
    if world_size % len(members):
        raise ConfigError(f"Invalid config: {world_size} processes for {len(members)} members; the number of "
                          f"processes must be a multiple of the number of members ({len(members)}, "
                          f"{2 * len(members)}, ...).")
    replicas = world_size // len(members)
    if config.data.batch_size % replicas:
        raise ConfigError(f"Invalid config: key 'data.batch_size' has the value {config.data.batch_size}, which "
                          f"does not split evenly over the {replicas} processes of each member.")
    return members


def init_distributed(config) -> Optional[DistContext]:
    """Join the process group described by the environment (torchrun) or return None."""
    env = world_from_env()
    if env is None:
        return None
    rank, world, local_rank = env
    members = check_distributed_config(config, world)
    use_cuda = torch.cuda.is_available() and config.train.device != "cpu"
    backend = config.engine.backend if config.engine.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ConfigError("Invalid config: key 'engine.backend' has the value 'nccl', which needs CUDA devices; "
                          "none is used here. Allowed on CPU: gloo (or auto).")
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=config.engine.dist_timeout)  # a dead or stalled peer ends the run in bounded time
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    ctx = DistContext(rank, world, members, device, backend)
    replicas = ctx.replicas
    # every process creates every group, in the same order
    replica_groups = [dist.new_group([k * replicas + r for k in range(len(members))], timeout=timeout)
                      for r in range(replicas)]
    member_groups = [dist.new_group([k * replicas + r for r in range(replicas)], timeout=timeout)
                     for k in range(len(members))]
    ctx.replica_group = replica_groups[ctx.replica]
    ctx.member_group = member_groups[ctx.member_index]
    ctx.groups = replica_groups + member_groups
    return ctx


def shutdown(ctx: Optional[DistContext], clean: bool = True) -> None:
    """Leave the process group (after a barrier when every process finished normally)."""
    if ctx is not None and dist.is_initialized():
        if clean:
            dist.barrier()
        try:
            dist.destroy_process_group()
        except Exception:  # the group may already be broken by a dead peer
            if clean:
                raise


def collective_failure(ctx: Optional[DistContext], error: BaseException) -> Optional[DistributedError]:
    """A ``DistributedError`` (exit 5) for an error that a dead or stalled peer caused, else None."""
    if ctx is None or isinstance(error, PeerlearnError) or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    if not (isinstance(error, getattr(dist, "DistError", ())) or
            any(word in text.lower() for word in COLLECTIVE_FAILURE_WORDS)):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return DistributedError(f"rank {ctx.rank} lost the other processes of the distributed run ({first}); another "
                            "process died or stalled. The launcher names it; resume from the last checkpoint.")


def shared_value(ctx: Optional[DistContext], value: Any) -> Any:
    """Rank 0's ``value`` on every process (e.g. the run directory rank 0 created)."""
    if ctx is None:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_object_device(ctx))
    return box[0]


def _object_device(ctx: DistContext) -> Optional[torch.device]:
    return ctx.device if ctx.backend == "nccl" else None


# ------------------------------------------------------------------ collectives of a step
def all_gather_rows(ctx: DistContext, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every member's ``tensor`` (same shape on all), in member order, over my replica group."""
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(ctx.num_members)]
    dist.all_gather(out, tensor, group=ctx.replica_group)
    return out


def _all_reduce_mean(tensors: list[torch.Tensor], group, count: int) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat /= count
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(ctx: DistContext, model: nn.Module) -> None:
    """Data parallel over the member's replicas: g ← (1/R) Σ_r g_r, one flat all-reduce."""
    if ctx.replicas == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        _all_reduce_mean(grads, ctx.member_group, ctx.replicas)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def sync_cohort(ctx: DistContext, cohort) -> None:
    """Broadcast every member's weights, optimizer and schedule from its owner to all processes."""
    for index, name in enumerate(ctx.members):
        member = cohort[name]
        state = None
        if ctx.rank == ctx.owner(index):
            state = {"model": member.model.state_dict(),
                     "optimizer": member.optimizer.state_dict() if member.optimizer else None,
                     "schedule": member.schedule.state_dict() if member.schedule else None}
            state = _to_cpu(state)
        box = [state]
        dist.broadcast_object_list(box, src=ctx.owner(index), device=_object_device(ctx))
        if ctx.rank != ctx.owner(index):
            state = box[0]
            member.model.load_state_dict(state["model"])
            if member.optimizer is not None and state["optimizer"] is not None:
                member.optimizer.load_state_dict(state["optimizer"])
            if member.schedule is not None and state["schedule"] is not None:
                member.schedule.load_state_dict(state["schedule"])


# ------------------------------------------------------------------ local launcher
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In a launched process (Linux): receive SIGTERM when the launcher dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch_local(train_args: list[str], nproc: int, poll_seconds: float = 0.1, grace_seconds: float = 10.0) -> int:
    """Start ``nproc`` processes of ``python -m peerlearn train ARGS`` on this machine (like torchrun).

    Each process runs in its own session, so Ctrl-C and SIGTERM reach the launcher alone, which
    forwards them once to every process (they checkpoint and stop together, exit 130 / 143). When a
    process fails, the others are sent SIGTERM, then SIGKILL after ``grace_seconds``. A process that
    reported its own error (exit codes 1-5, 130, 143) gives its code; one that crashed (a signal, any
    other code) ends the launch with ``DistributedError`` (exit 5) naming its rank.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}.")
    port = _free_port()
    processes = []
    forwarded: set[int] = set()

    def forward(signum, frame):
        if signum in forwarded:
            return
        forwarded.add(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(nproc):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            processes.append(subprocess.Popen([sys.executable, "-m", "peerlearn", "train", *train_args], env=env,
                                              start_new_session=True, preexec_fn=_die_with_parent))
        first_failure = None
        while any(p.poll() is None for p in processes):
            first_failure = next(((rank, p) for rank, p in enumerate(processes) if p.returncode not in (None, 0)),
                                 None)
            if first_failure:
                break
            time.sleep(poll_seconds)
        first_failure = first_failure or next(((rank, p) for rank, p in enumerate(processes) if p.returncode), None)
        stopped = _stop_all(processes, grace_seconds) if first_failure else []
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if first_failure is None:
        return 0
    # name a crashed process before the survivors that only reported losing it
    crashed = [(rank, p) for rank, p in enumerate(processes)
               if rank not in stopped and p.returncode not in (0, *REPORTED_CODES)]
    rank, process = crashed[0] if crashed else first_failure
    if process.returncode == DistributedError.exit_code and stopped:  # it gave up on a process that hung
        raise DistributedError(f"rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} stopped "
                               f"answering (rank {rank} gave up after engine.dist_timeout) and "
                               f"{'were' if len(stopped) > 1 else 'was'} stopped by the launcher.")
    if process.returncode in REPORTED_CODES:
        return process.returncode
    others = f"; stopped rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))}" if stopped else ""
    raise DistributedError(f"rank {rank} (pid {process.pid}) {_describe(process.returncode)}{others}. The run "
                           "directory keeps its last checkpoint; resume it with --resume RUN_DIR.")


def _stop_all(processes: list, grace_seconds: float) -> list[int]:
    """SIGTERM every running process, SIGKILL those still running after ``grace_seconds``; their ranks."""
    running = [rank for rank, p in enumerate(processes) if p.poll() is None]
    for rank in running:
        processes[rank].terminate()
    deadline = time.monotonic() + grace_seconds
    for rank in running:
        try:
            processes[rank].wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            processes[rank].kill()
            processes[rank].wait()
    return running


def local_train_args(config: Optional[str], overrides: list[str], out: str, resume: Optional[str],
                     changes: Optional[list[str]] = None, trust_code: bool = False) -> list[str]:
    """The ``peerlearn train`` arguments each launched process gets."""
    args = [config] if config else []
    args += list(overrides)
    args += ["--out", str(Path(out))]
    if resume:
        args += ["--resume", str(resume)]
    for change in changes or []:
        args += ["--change", change]
    if trust_code:
        args.append("--trust-code")
    return args
