"""Train the SimCLR proxy on the images being curated (the offline default backbone)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import distributed
from .augment import AugmentConfig, augment
from .device import autocast, memory_format
from .images import to_float
from .models import ProxyConfig, ProxyModel
from .ntxent import nt_xent


@dataclass
class TrainConfig:
    """SimCLR proxy training (defaults follow the SAS code, scaled down for CPU).

    Args:
        epochs (10): passes over the images.
        batch_size (256): images per step (2 views each).
        lr (1e-3), weight_decay (1e-6): Adam, as in the SAS code.
        temperature (0.5): NT-Xent temperature.
        seed (0): fixes initialisation, batch order and augmentations.
        precision ("auto"): ``"fp32"``, ``"bf16"`` (autocast, on CPU as on CUDA) or ``"auto"`` (bf16 on CUDA, fp32 on
            CPU); bf16 changes the weights, so callers record the resolved value.
        channels_last (False): NHWC model and batches (a speed option for tensor cores; same results up to rounding).
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: str = "auto"
    channels_last: bool = False


def train_proxy(images: np.ndarray, keys: torch.Tensor, cfg: TrainConfig, device: torch.device,
                model_cfg: ProxyConfig | None = None,
                progress: Callable[[float, str], None] | None = None,
                state_path: str | None = None) -> tuple[ProxyModel, list[dict]]:
    """SimCLR training on uint8 images (N, S, S, 3) (an array or a memmap; read batch by batch).

    Args:
        state_path (None): a file where the model, optimiser and history are saved after every epoch (atomically);
            when it exists, training resumes after its last epoch and ends with the same weights as an
            uninterrupted run (batch order and augmentations are pure functions of the seed and epoch).

    In a ``torch.distributed`` job (see :mod:`distributed`) every rank takes its contiguous slice of each global
    batch; batch norm and the NT-Xent negatives span the global batch and the gradients are summed over ranks, so
    the ranks train the one-process model (up to float rounding) for the same seed and ``batch_size``. Rank 0 alone
    saves the state file (and its saved state is what every rank resumes from).

    Returns:
        the model in eval mode, and one history row per epoch (loss, images/s).
    """
    n = len(images)
    if n < 2:
        raise ValueError(f"proxy training needs at least 2 images, got {n}")
    torch.manual_seed(cfg.seed)
    fmt = memory_format(cfg.channels_last)
    model = ProxyModel(model_cfg or ProxyConfig(image_size=cfg.augment.size))
    model = distributed.sync_batchnorm(model).to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = np.random.default_rng(cfg.seed)
    bs = min(cfg.batch_size, n)
    history, first = [], 0
    primary = distributed.is_primary()
    state = None
    if state_path and primary and os.path.isfile(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    state = distributed.broadcast(state)  # rank 0's saved state, on every rank
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, first = state["history"], len(state["history"])
    for epoch in range(cfg.epochs):
        order = gen.permutation(n)  # drawn for every epoch, so a resumed run sees the same batches
        if epoch < first:
            continue
        t0, losses = time.perf_counter(), []
        for start in range(0, n - bs + 1, bs):  # drop the last partial batch: BN and InfoNCE want full batches
            idx = np.sort(order[start:start + bs])
            mine = distributed.shard(len(idx))
            idx = idx[mine.start:mine.stop]  # this rank's slice of the global batch (all of it in one process)
            x = to_float(images[idx], device)
            k = keys[idx].to(device)
            with autocast(device, cfg.precision):
                v1 = augment(x, k, cfg.augment, cfg.seed + epoch, 0).contiguous(memory_format=fmt)
                v2 = augment(x, k, cfg.augment, cfg.seed + epoch, 1).contiguous(memory_format=fmt)
                z1 = distributed.gather_with_grad(model(v1))  # (B, D): the global batch's projections
                z2 = distributed.gather_with_grad(model(v2))
                loss = nt_xent(z1, z2, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_grads(model)  # the global batch's gradient on every rank
            opt.step()
            losses.append(loss.item())
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "images_per_s": (n // bs) * bs / dt}
        history.append(row)
        if state_path and primary:
            tmp = state_path + ".tmp"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": history}, tmp)
            os.replace(tmp, state_path)
        if progress:
            progress((epoch + 1) / cfg.epochs, f"proxy epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.3f}")
    return model.eval(), history
