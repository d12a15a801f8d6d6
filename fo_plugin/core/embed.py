"""Batched forward passes: uint8 images -> float32 features, on the device, with mixed precision on CUDA (or where
asked)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .augment import AugmentConfig, augment, resize
from .device import autocast, memory_format
from .images import to_float


@torch.no_grad()
def embed_array(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, size: int, device: torch.device,
                batch_size: int = 256, keys: torch.Tensor | None = None, aug: AugmentConfig | None = None,
                seed: int = 0, view: int = 0, precision: str = "auto", channels_last: bool = True) -> np.ndarray:
    """Apply ``fn`` (a model taking [0, 1] images) to uint8 images (N, H, W, 3).

    With ``aug`` and ``keys``, each image is first replaced by its augmented view ``view`` (see
    :func:`augment.augment`), so views are identical whatever the batch size. ``precision`` (``"auto"``: bf16 on
    CUDA, fp32 on CPU; see :func:`device.resolve_precision`) and ``channels_last`` are honoured on any device.
    ``channels_last`` (default) gives the model NHWC input: the proxy's forward runs 1.3-1.6x faster on this
    project's CPU (``bench/bench_embeddings.py``), the same features up to float rounding (~1e-8); it is also
    PyTorch's advice for tensor cores (not measured here: no GPU). A model that reshapes its input with ``.view``
    needs ``channels_last=False``.

    Returns:
        float32 (N, D) numpy array.
    """
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size], device)
        if aug is not None:
            x = augment(x, keys[start:start + batch_size].to(device), aug, seed, view)
        x = resize(x, size).contiguous(memory_format=memory_format(channels_last))
        with autocast(device, precision):
            out.append(fn(x).float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
