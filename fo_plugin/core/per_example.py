"""Per-example gradients of Linear / Conv2d weights and biases from ONE batched backward pass.

Why: ``torch.func.vmap(grad(...))`` runs a separate small backward per example and was ~3x the cost of plain
backward passes on CPU convs. Here forward hooks keep each tracked layer's input activation a and a tensor hook its
output gradient d; the weight gradient of one row is d^T a (for a conv, a unfolded into patches), so an example's
gradient summed over its ``group`` rows (the K + 1 views) is one batched matmul over the rows of that example: the
same FLOPs as the weight-gradient GEMM of a plain backward, with no weight gradient computed by autograd itself.

Exact for any model whose rows do not interact (BatchNorm in eval mode) and whose tracked layers use their weights
only through their own ``forward`` (kronfluence makes the same assumption: it hooks the same modules).

The same hooks (:func:`capture`) give EK-FAC its Kronecker factors (:func:`covariances`): the sums of a a^T and
d d^T over every row and position.
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


def _rotated_grads(m: nn.Module, a: torch.Tensor, d: torch.Tensor, out: torch.Tensor, add: bool, rows: int,
                   qg: torch.Tensor, qa: torch.Tensor) -> None:
    """Per-example gradients in a Kronecker basis, Q_G^T G Q_A (b, out * in'), written or added to ``out``.

    Where an example has few rows R (its views times the layer's positions: a late conv stage, a Linear), from the
    rotated inputs and output gradients, (d Q_G)^T (a Q_A) (cost R (in'^2 + out^2 + out in')); else the gradient
    is formed as usual and rotated (cost out in' (out + in')): for the proxy's last conv, 3x fewer multiplications."""
    b, cout, din = len(out), qg.shape[0], qa.shape[0]
    bias = m.bias is not None
    if isinstance(m, nn.Conv2d):
        r = rows // b * d.shape[2] * d.shape[3]
        direct = m.groups == 1
    else:
        r = d.numel() // d.shape[-1] // b
        direct = True
    if not direct or r * (din * din + cout * cout + cout * din) >= cout * din * (cout + din):
        g = torch.empty(b, m.weight.numel() + (cout if bias else 0), dtype=out.dtype, device=out.device)
        (_conv_grads if isinstance(m, nn.Conv2d) else _linear_grads)(m, a, d, g, False, rows)
        mat = g[:, :m.weight.numel()].view(b, cout, -1)
        if bias:
            mat = torch.cat([mat, g[:, m.weight.numel():, None]], 2)
        rot = torch.matmul(qg.t(), torch.matmul(mat, qa))  # (b, out, in')
    else:
        if isinstance(m, nn.Conv2d):
            x, pad = a.to(d.dtype), m.padding
            if isinstance(pad, str) or m.padding_mode != "zeros":  # as _conv_grads
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                x, pad = F.pad(x, m._reversed_padding_repeated_twice, mode=mode), 0
            cols = F.unfold(x, m.kernel_size, m.dilation, pad, m.stride)  # (N, Cin*k*k, L)
            x = cols.view(b, -1, *cols.shape[1:]).permute(0, 1, 3, 2).reshape(b, r, -1)  # (b, R, Cin*k*k)
            dd = d.flatten(2).view(b, -1, cout, d.shape[2] * d.shape[3]).transpose(2, 3).reshape(b, r, cout)
        else:
            if a.ndim > 2 and a.shape[0] != rows and a.shape[1] == rows:  # sequence-first tokens (T, N, in)
                a, d = a.transpose(0, 1), d.transpose(0, 1)
            x, dd = a.reshape(b, r, a.shape[-1]).to(d.dtype), d.reshape(b, r, cout)  # (b, R, in), (b, R, out)
        if bias:
            x = torch.cat([x, x.new_ones(b, r, 1)], 2)  # (b, R, in')
        rot = torch.bmm(torch.matmul(dd, qg).transpose(1, 2), torch.matmul(x, qa))  # (b, out, in')
    rot = rot.reshape(b, -1)
    out.add_(rot) if add else out.copy_(rot)


def capture(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            modules: list[tuple[str, nn.Module]]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One forward and one backward pass (to the input only: autograd computes no weight gradient) with hooks that
    keep, for each call of each module, its input a and the gradient d of the loss w.r.t. its output.

    Args:
        run: the forward pass, rows -> scalar loss (the sum of the per-example losses).
        x: the input rows.
        modules: (name, Linear or Conv2d) pairs; each may run any number of times in ``run``.

    Returns:
        per module name, an (a, d) pair per call that got a gradient (none where the layer did not run).
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
    out = {}
    for name, recs in seen.items():
        for a, version, _ in recs:
            if a._version != version:
                raise RuntimeError(f"the input of layer {name!r} was modified in place after the layer ran")
        out[name] = [(a, d) for a, _, d in recs if d is not None]
    return out


def per_example_grads(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      modules: list[tuple[str, nn.Module]], group: int, out: torch.Tensor,
                      bases: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Per-example gradient of a summed loss w.r.t. the weights (then bias) of ``modules``, in their order.

    Args:
        run: the forward pass, rows -> scalar loss (the sum of the per-example losses).
        x: (b * group, ...) the input rows, example-major (rows e * group .. e * group + group - 1 are example e's).
        modules: (name, Linear or Conv2d) pairs; each may run any number of times in ``run``.
        group: rows per example; an example's gradient is the sum over its rows.
        out: (b, P) float32, filled in place: for each module, weight.flatten() then bias, concatenated.
        bases: optional (Q_G (out, out), Q_A (in', in')) per module name: that module's columns then hold its
            gradient in that Kronecker basis, Q_G^T G Q_A (G the (out, in') gradient matrix, bias column last),
            flattened row-major (:func:`_rotated_grads`; EK-FAC).

    Returns:
        ``out``.
    """
    seen = capture(run, x, modules)
    b = len(out)
    if b > 1 and any(isinstance(m, nn.Linear) and a.ndim > 2 and a.shape[0] == a.shape[1] == len(x)
                     for name, m in modules for a, _ in seen[name]):
        # tokens (T, N, in) or (N, T, in) with T == N rows: the layout cannot be told from the shape; each half of
        # the batch has fewer rows than T, which tells it (rare: costs one more pass)
        seen.clear()
        h = b // 2
        per_example_grads(run, x[:h * group], modules, group, out[:h], bases)
        per_example_grads(run, x[h * group:], modules, group, out[h:], bases)
        return out
    s = 0
    for name, m in modules:
        n = sum(p.numel() for p in (m.weight, m.bias) if p is not None)
        part, add = out[:, s:s + n], False
        for a, d in seen[name]:
            if bases is not None and name in bases:
                _rotated_grads(m, a, d, part, add, len(x), *bases[name])
            else:
                (_conv_grads if isinstance(m, nn.Conv2d) else _linear_grads)(m, a, d, part, add, len(x))
            add = True
        if not add:  # the layer did not run or got no gradient here
            part.zero_()
        s += n
    return out


def _conv_input(m: nn.Conv2d, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The conv's input as its patches see it, (N, Cin / groups, H', W'), and the zero padding still to apply:
    other padding modes applied (as :func:`_conv_grads`), channel groups averaged (as kronfluence does)."""
    pad = m.padding
    if isinstance(pad, str) or m.padding_mode != "zeros":
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        a, pad = F.pad(a, m._reversed_padding_repeated_twice, mode=mode), (0, 0)
    if m.groups > 1:
        a = a.unflatten(1, (m.groups, -1)).mean(1)  # (N, Cin / groups, H, W)
    return a, tuple(pad)


def _patch_gram(m: nn.Conv2d, a: torch.Tensor, pad: tuple[int, int], bias: bool) -> torch.Tensor:
    """Sum of p p^T over the unfolded patches p of every row and output position (a ones column last when
    ``bias``), (D', D'), D = Cin * k * k: blocks of rows unfolded at a time (~64 MB of patches)."""
    step = max(1, (1 << 24) // max(a[:1].numel() * m.kernel_size[0] * m.kernel_size[1], 1))
    total = None
    for s in range(0, len(a), step):
        cols = F.unfold(a[s:s + step], m.kernel_size, m.dilation, pad, m.stride)  # (n, D, L)
        g = _gram(cols.transpose(1, 2).reshape(-1, cols.shape[1]), bias)  # (n * L, D) -> (D', D')
        total = g if total is None else total.add_(g)
    return total


def _shift_gram(m: nn.Conv2d, a: torch.Tensor, pad: tuple[int, int], bias: bool) -> torch.Tensor:
    """:func:`_patch_gram` of a stride-1 conv without unfolding, float64 (D', D').

    Why: the block of A for kernel offsets o1, o2 is the sum over a window of output positions of
    x(u) x(u + o2 - o1)^T, so it depends on the offsets only through their difference Delta and the window. Per Delta
    (13 of the 81 offset pairs of a 3x3 kernel, the other half are transposes) one batched product gives
    M(u) = sum over rows of x(u) x(u + Delta)^T at every position, and each block is a window's sum of M: ~6x fewer
    multiplications than the (rows * positions, D) Gram matrix (measured 1.5-2x faster on CPU)."""
    xp = F.pad(a, (pad[1], pad[1], pad[0], pad[0]))  # (N, C, Hp, Wp)
    n, c, hp, wp = xp.shape
    kh, kw = m.kernel_size
    dh, dw = m.dilation
    ho, wo = hp - dh * (kh - 1), wp - dw * (kw - 1)
    out = torch.zeros(c, kh, kw, c, kh, kw, dtype=torch.float64, device=a.device)
    pairs: dict[tuple[int, int], list] = {}
    for i in range(kh):
        for j in range(kw):
            for i2 in range(kh):
                for j2 in range(kw):
                    delta = (dh * (i2 - i), dw * (j2 - j))
                    if delta >= (0, 0):  # the other half: transposes
                        pairs.setdefault(delta, []).append((i, j, i2, j2))
    xt = xp.permute(2, 3, 1, 0).contiguous().view(hp * wp, c, n)  # (positions, C, N): contiguous blocks for bmm
    buf = torch.zeros(hp * wp, c, c, dtype=xt.dtype, device=a.device)
    for (du, dv), blocks in pairs.items():
        # positions flattened row-major, so a shift by Delta is one offset and both operands are views; products
        # across a row's end land at positions no window of this Delta uses
        off = du * wp + dv
        torch.bmm(xt[:hp * wp - off], xt[off:].transpose(1, 2), out=buf[:hp * wp - off])  # M(u), (positions, C, C)
        m_grid = buf.view(hp, wp, c, c)
        cols = {}
        for i, j, i2, j2 in blocks:
            if j not in cols:  # sums over the window's columns, (Hp, C, C)
                cols[j] = m_grid[:, dw * j:dw * j + wo].sum(1)
            blk = cols[j][dh * i:dh * i + ho].sum(0, dtype=torch.float64)
            out[:, i, j, :, i2, j2] = blk
            out[:, i2, j2, :, i, j] = blk.t()
    out = out.reshape(c * kh * kw, c * kh * kw)
    if not bias:
        return out
    col = torch.zeros(hp + 1, wp + 1, c, dtype=torch.float64, device=a.device)
    col[1:, 1:] = xp.sum(0).permute(1, 2, 0)
    col = col.cumsum_(0).cumsum_(1)
    sums = torch.stack([col[dh * i + ho, dw * j + wo] - col[dh * i, dw * j + wo] - col[dh * i + ho, dw * j]
                        + col[dh * i, dw * j] for i in range(kh) for j in range(kw)], 1).reshape(1, -1)  # (1, D)
    corner = torch.full((1, 1), float(n * ho * wo), dtype=torch.float64, device=a.device)
    return torch.cat([torch.cat([out, sums.t()], 1), torch.cat([sums, corner], 1)], 0)


def _conv_gram(m: nn.Conv2d, a: torch.Tensor, bias: bool) -> torch.Tensor:
    """Sum of p p^T over the conv's patches (kronfluence's activation covariance, unnormalised), (D', D'):
    :func:`_shift_gram` for stride-1 convs with a kernel larger than 1x1, else the unfolded patches' Gram matrix."""
    a, pad = _conv_input(m, a)
    if tuple(m.stride) == (1, 1) and m.kernel_size[0] * m.kernel_size[1] > 1:
        return _shift_gram(m, a, pad, bias)
    return _patch_gram(m, a, pad, bias)


def _gram(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """X^T X for rows x (M, D), with a ones column appended when ``bias``: (D', D'), D' = D + bias."""
    g = x.t() @ x
    if not bias:
        return g
    s = x.sum(0, keepdim=True)  # (1, D): the ones column's products
    corner = torch.full((1, 1), float(len(x)), dtype=x.dtype, device=x.device)
    return torch.cat([torch.cat([g, s.t()], 1), torch.cat([s, corner], 1)], 0)


def covariances(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                modules: list[tuple[str, nn.Module]], sums: dict[str, list[torch.Tensor]]) -> None:
    """Adds each module's Kronecker-factor sums over every row of ``x`` and every position (conv output pixel,
    token): A += sum a a^T over its inputs (conv: unfolded patches; a ones column last where it has a bias) and
    G += sum d d^T over its output gradients. kronfluence's covariances, unnormalised (only their eigenvectors are
    used).

    Args:
        run, x, modules: as :func:`per_example_grads` (rows need not be grouped: every row counts alike).
        sums: per module name, [A (in', in'), G (out, out)] float64 (created on first use), added to in place.
    """
    seen = capture(run, x, modules)
    for name, m in modules:
        bias = m.bias is not None
        for a, d in seen[name]:
            a = a.to(d.dtype)
            if isinstance(m, nn.Conv2d):
                ga = _conv_gram(m, a, bias)
                d = d.transpose(0, 1).flatten(1)  # (Cout, N * Ho * Wo)
            else:
                ga = _gram(a.reshape(-1, a.shape[-1]), bias)
                d = d.reshape(-1, d.shape[-1]).t()  # (out, rows)
            gg = d @ d.t()
            if name not in sums:
                sums[name] = [torch.zeros_like(ga, dtype=torch.float64), torch.zeros_like(gg, dtype=torch.float64)]
            sums[name][0] += ga
            sums[name][1] += gg
