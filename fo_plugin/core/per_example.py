"""Per-example gradients of Linear / Conv2d weights and biases from ONE batched backward pass.

Why: ``torch.func.vmap(grad(...))`` runs a separate small backward per example and was ~3x the cost of plain
backward passes on CPU convs. Here forward hooks keep each tracked layer's input activation a and a tensor hook its
output gradient d; the weight gradient of one row is d^T a (for a conv, a unfolded into patches), so an example's
gradient summed over its ``group`` rows (the K + 1 views) is one batched matmul over the rows of that example: the
same FLOPs as the weight-gradient GEMM of a plain backward, with no weight gradient computed by autograd itself.

Exact for any model whose rows do not interact (BatchNorm in eval mode) and whose tracked layers use their weights
only through their own ``forward`` (kronfluence makes the same assumption: it hooks the same modules).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _linear_grads(m: nn.Linear, a: torch.Tensor, d: torch.Tensor, out: torch.Tensor, add: bool, rows: int) -> None:
    """a (N, ..., in) or sequence-first (T, N, in), d likewise with out, N = ``rows`` = b * group, example-major;
    writes (or adds) the (b, out * in) weight and (b, out) bias gradients into ``out`` (b, numel of weight and bias).
    """
    b, nw = len(out), m.weight.numel()
    if a.ndim > 2 and a.shape[0] != rows and a.shape[1] == rows:  # sequence-first tokens (T, N, in)
        a, d = a.transpose(0, 1), d.transpose(0, 1)
    a = a.reshape(b, -1, a.shape[-1]).to(d.dtype)  # (b, group * T, in)
    d = d.reshape(b, -1, d.shape[-1])  # (b, group * T, out)
    parts = [(out[:, :nw], torch.bmm(d.transpose(1, 2), a).reshape(b, nw))]  # (b, out * in)
    if m.bias is not None:
        parts.append((out[:, nw:], d.sum(1)))  # (b, out)
    for dst, src in parts:
        dst.add_(src) if add else dst.copy_(src)


def _conv_grads(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, out: torch.Tensor, add: bool, rows: int) -> None:
    """a (N, Cin, H, W), d (N, Cout, Ho, Wo), N = ``rows`` = b * group, example-major; writes (or adds) the
    per-example weight and bias gradients into ``out`` (b, numel of weight and bias).

    One weight-gradient convolution per example over its ``group`` rows (the backend's own kernel: on CPU about the
    cost of the batched weight gradient, where unfolding into patches and a batched matmul cost 2-4x more), except
    where an example has few output positions (group * Ho * Wo <= 128, e.g. the proxy's last 4x4 stage): there one
    batched matmul over unfolded patches is the faster (~1.5x) of the two."""
    b, nw, group, cout = len(out), m.weight.numel(), rows // len(out), d.shape[1]
    pad = m.padding
    if isinstance(pad, str) or m.padding_mode != "zeros":  # "same" / "valid", or reflect / replicate / circular
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        a, pad = F.pad(a, m._reversed_padding_repeated_twice, mode=mode), 0
    a = a.to(d.dtype)
    if m.groups == 1 and group * d.shape[2] * d.shape[3] <= 128:
        cols = F.unfold(a, m.kernel_size, m.dilation, pad, m.stride)  # (N, Cin*k*k, L)
        cols = cols.view(b, group, *cols.shape[1:]).transpose(1, 2).flatten(2)  # (b, Cin*k*k, group * L)
        dd = d.flatten(2).view(b, group, cout, -1).transpose(1, 2).flatten(2)  # (b, Cout, group * L)
        w = torch.bmm(dd, cols.transpose(1, 2)).view(b, nw)  # (b, Cout * Cin*k*k)
        out[:, :nw].add_(w) if add else out[:, :nw].copy_(w)
    else:
        a = a.reshape(b, group, *a.shape[1:])  # (b, group, Cin, H, W)
        dg = d.reshape(b, group, *d.shape[1:])  # (b, group, Cout, Ho, Wo)
        for i in range(b):
            w = torch.nn.grad.conv2d_weight(a[i], m.weight.shape, dg[i], m.stride, pad, m.dilation, m.groups)
            row = out[i, :nw].view(m.weight.shape)
            row.add_(w) if add else row.copy_(w)
    if m.bias is not None:
        bias = d.reshape(b, group, cout, -1).sum((1, 3))  # (b, Cout)
        out[:, nw:].add_(bias) if add else out[:, nw:].copy_(bias)


def per_example_grads(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      modules: list[tuple[str, nn.Module]], group: int, out: torch.Tensor) -> torch.Tensor:
    """Per-example gradient of a summed loss w.r.t. the weights (then bias) of ``modules``, in their order.

    Args:
        run: the forward pass, rows -> scalar loss (the sum of the per-example losses).
        x: (b * group, ...) the input rows, example-major (rows e * group .. e * group + group - 1 are example e's).
        modules: (name, Linear or Conv2d) pairs; each may run any number of times in ``run``.
        group: rows per example; an example's gradient is the sum over its rows.
        out: (b, P) float32, filled in place: for each module, weight.flatten() then bias, concatenated.

    Returns:
        ``out``.
    """
    seen: dict[str, list] = {n: [] for n, _ in modules}
    hooks = []

    def keep(name):
        def hook(_m, inputs, y):
            a = inputs[0].detach()
            rec = [a, a._version, None]
            seen[name].append(rec)
            if y.requires_grad:
                y.register_hook(lambda g: rec.__setitem__(2, g))  # d loss / d y (before any in-place op on y)
        return hook

    for name, m in modules:
        hooks.append(m.register_forward_hook(keep(name)))
    try:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)  # the backward runs to the input: every activation gradient, no
            loss = run(xr)                         # weight gradient (autograd computes only what the input needs)
            torch.autograd.grad(loss, xr)
    finally:
        for h in hooks:
            h.remove()
    b = len(out)
    if b > 1 and any(isinstance(m, nn.Linear) and a.ndim > 2 and a.shape[0] == a.shape[1] == len(x)
                     for name, m in modules for a, _, _ in seen[name]):
        # tokens (T, N, in) or (N, T, in) with T == N rows: the layout cannot be told from the shape; each half of
        # the batch has fewer rows than T, which tells it (rare: costs one more pass)
        seen.clear()
        h = b // 2
        per_example_grads(run, x[:h * group], modules, group, out[:h])
        per_example_grads(run, x[h * group:], modules, group, out[h:])
        return out
    s = 0
    for name, m in modules:
        n = sum(p.numel() for p in (m.weight, m.bias) if p is not None)
        part, add = out[:, s:s + n], False
        for a, version, d in seen[name]:
            if a._version != version:
                raise RuntimeError(f"the input of layer {name!r} was modified in place after the layer ran")
            if d is not None:
                (_conv_grads if isinstance(m, nn.Conv2d) else _linear_grads)(m, a, d, part, add, len(x))
                add = True
        if not add:  # the layer did not run or got no gradient here
            part.zero_()
        s += n
    return out
