"""Several processes (GPUs or nodes) in one job through ``torch.distributed``, started by ``torchrun``.

Every rank reads the same samples in the same canonical order, works on its contiguous :func:`shard` of them and
:func:`gather_rows` puts the pieces back in the original order on every rank; only the primary rank (0) writes. In a
single process (no process group, or one this module did not join with :func:`init`) every function here is the
identity, so the library has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised: bool = False


_joined = False  # set by init(): a process group made by someone else (a user's own DDP script) is not ours to use
TIMEOUT = timedelta(hours=6)  # ranks wait for rank 0's database writes and commit: far longer than torch's default


def context() -> Context:
    """The job this process shares work in: a one-process context unless :func:`init` joined a process group."""
    if not (_joined and dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def init(backend: str = "auto", timeout: timedelta = TIMEOUT) -> Context:
    """Join the process group ``torchrun`` describes (env vars ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...), so
    that the library's stages share their work over it (``python -m fo_plugin.launch`` calls this; without it the
    library never joins a collective, even inside someone else's process group).

    ``backend="auto"``: nccl where CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo on CPU. ``timeout``:
    how long a collective may wait (the other ranks wait while rank 0 alone writes fields and commits). Joins an
    already initialised group as it is; a no-op when ``WORLD_SIZE`` is absent or 1.
    """
    global _joined
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timeout)
    _joined = True
    return context()


def is_primary() -> bool:
    """True on the rank that writes results (rank 0, or the only process)."""
    return context().rank == 0


def shard(n: int, rank: int | None = None, world: int | None = None) -> range:
    """Rank ``rank``'s contiguous rows of ``n``: the first ``n % world`` ranks get one more (deterministic)."""
    ctx = context()
    rank = ctx.rank if rank is None else rank
    world = ctx.world if world is None else world
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(x: torch.Tensor | np.ndarray, dim: int = 0) -> torch.Tensor | np.ndarray:
    """Concatenate every rank's block of rows (of any length; other dims equal) along ``dim`` in rank order, on
    every rank: with contiguous :func:`shard` blocks this is the full array in the original order.

    The blocks are padded to the longest for one ``all_gather``; the result has ``x``'s type, device and dtype.
    """
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return x
    is_np = isinstance(x, np.ndarray)
    t = torch.as_tensor(x)
    home = t.device
    t = t.movedim(dim, 0).contiguous().to(_comm_device())
    lengths = [torch.zeros(1, dtype=torch.int64, device=t.device) for _ in range(ctx.world)]
    dist.all_gather(lengths, torch.tensor([len(t)], dtype=torch.int64, device=t.device))
    sizes = [int(n.item()) for n in lengths]
    wire = t.view(torch.uint8) if t.dtype == torch.bool else t  # gloo has no bool all_gather
    pad = torch.zeros((max(sizes), *wire.shape[1:]), dtype=wire.dtype, device=wire.device)
    pad[:len(wire)] = wire
    parts = [torch.empty_like(pad) for _ in range(ctx.world)]
    dist.all_gather(parts, pad)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    out = (out.view(torch.bool) if t.dtype == torch.bool else out).movedim(0, dim).to(home)
    return out.numpy() if is_np else out


def gather_list(items: Sequence) -> list:
    """Concatenate every rank's list of Python objects (error messages, ids ...) in rank order, on every rank."""
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return list(items)
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, list(items))
    return [v for part in parts for v in part]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over ranks (a new tensor on ``x``'s device; ``x`` itself in a single process)."""
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return x
    t = x.detach().clone().to(_comm_device())
    dist.all_reduce(t)
    return t.to(x.device)


def broadcast(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (the object itself in a single process)."""
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    ctx = context()
    if ctx.initialised and ctx.world > 1:
        dist.barrier()


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``z`` (B_r, ...) concatenated in rank order, where only this rank's rows carry the
    gradient (the others are copies): a loss over the global batch computed from this on every rank, with the
    parameter gradients then summed over ranks (:func:`all_reduce_grads`), gives exactly the one-process gradient.
    """
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return z
    full = gather_rows(z.detach())
    sizes = gather_rows(torch.tensor([len(z)], device=z.device))
    start = int(sizes[:ctx.rank].sum())
    return torch.cat([full[:start], z, full[start + len(z):]])


def all_reduce_grads(model: nn.Module) -> None:
    """Sum every parameter's gradient over ranks (what DDP does after backward, here as one explicit step)."""
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (every rank's loss depends on
    the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch (every rank's rows), on CPU (gloo) as on CUDA; torch's own
    ``nn.SyncBatchNorm`` refuses CPU tensors. Statistics are summed with an autograd-aware all-reduce, so the
    gradient through them is the one-process gradient. Outside a process group (or in eval mode) it is the plain
    batch norm; its state dict is a BatchNorm's."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = context()
        if not (self.training and ctx.initialised and ctx.world > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device))
        n = float(n)
        mean = _SumOverRanks.apply(x.float().sum(dims)) / n  # (C,)
        var = _SumOverRanks.apply((x.float() - mean.view(shape)).pow(2).sum(dims)) / n  # (C,) biased, as batch norm uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / max(n - 1, 1))
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` by :class:`SyncBatchNorm` (same parameters and buffers), in place;
    the model itself, unchanged, outside a process group."""
    ctx = context()
    if not ctx.initialised or ctx.world == 1:
        return model
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            new = new.to(next(iter([*child.parameters(), *child.buffers()]), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            sync_batchnorm(child)
    return model
