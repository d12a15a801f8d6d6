"""Device selection and mixed precision, one place for both."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; validate explicit choices.

    Raises:
        ValueError: ``"cuda"`` was requested on a machine without a usable GPU, or the name is unknown.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use 'auto', 'cpu' or 'cuda'")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA (mixed precision); a no-op context on CPU, where fp32 is exact and fast enough."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
