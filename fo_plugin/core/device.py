"""Device selection and mixed precision, one place for both."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


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


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA (mixed precision, fast), ``"fp32"`` on CPU (exact; CPU bf16 is rarely faster).

    ``"bf16"`` is honoured on CPU too, so the CUDA numerics can be exercised (and tested) without a GPU.

    Raises:
        ValueError: an unknown precision.
    """
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported precision {precision!r}: use one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str | None = "auto"):
    """bfloat16 autocast on ``device`` (CUDA or CPU, same code path) when the precision resolves to ``"bf16"``;
    a no-op context for ``"fp32"``."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC (``channels_last``: faster convolutions on tensor cores, valid on CPU too) or the default NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format
