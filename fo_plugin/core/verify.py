"""The pixel side of near-duplicate detection: pixel-window candidates (the best of 36 shifted, zoomed and mirrored
windows: for the re-framed copies an SSL embedding ranks too far) and the aligned comparison that confirms a candidate
pair. The pixel check (:func:`aligned_pair_scores`) searches the best alignment (shift, zoom, flip, small rotation,
then a local x / y scale for crops of another aspect ratio) of the two luma thumbnails and requires both the layout
and the local 5 x 5 detail to agree there: photos that merely share a composition (a plane against the sky, a ship on
the sea) agree on layout but not on detail."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .duplicates import DUPLICATE_THRESHOLD, PIXEL_K, candidate_pairs  # noqa: F401 (defaults, re-exported)
from .filters import blur_matrix, box_matrix, separable
from .knn import build_index, choose_method, exact_search, index_search

# Pixel candidates: a second, independent candidate source for the copies the embedding ranks too far (shifted,
# cropped, rescaled, combined). The central WINDOW x WINDOW of one luma thumbnail, averaged to 8 x 8 cells, is compared
# with windows of every other thumbnail at 9 shifts, 2 sizes (zoom 1 and 1.2) and both mirror images (36 warps); each
# sample's PIXEL_K best other samples (best warp) become candidates. Measured (bench_duplicates.py, 11,800 images):
# 5 pairs a sample added to the SSL 10-NN's 6.5 raise the candidate recall of shifted copies 0.86 -> 1.00, crops
# 0.88 -> 0.98, rescales 0.86 -> 1.00, combined kinds 0.82 -> 0.95.
WINDOW = 24  # side of the compared window at 32 px
WINDOW_SIZES = (24, 20)  # windows of the searched image: the same size, and zoomed 1.2x (the other direction of the
# pair covers zoom < 1)
WINDOW_SHIFTS = (-4, 0, 4)  # px at 32 px, in each axis (the 4 px cells tolerate +-2 px more)
WINDOW_CELLS = 8  # cells a side of the descriptor
PIXEL_EXACT_MAX_N = 2000  # above this many samples (CPU) the warp search uses the IVF index: on 11,800 CIFAR-10
# images (bench_duplicates.py) 10 s instead of 24 s exact, holding 95.8% of the planted pairs instead of 96.2%


def _window(g: torch.Tensor, cy: int, cx: int, w: int) -> torch.Tensor:
    """Zero-mean unit descriptors (N, C*C) of the w x w window centred at (cy, cx) of luma (N, 32, 32)."""
    s = g[:, None, cy - w // 2:cy - w // 2 + w, cx - w // 2:cx - w // 2 + w]
    d = F.interpolate(s, size=(WINDOW_CELLS, WINDOW_CELLS), mode="area").flatten(1)
    return F.normalize(d - d.mean(1, keepdim=True), dim=1)


def window_descriptors(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query descriptors (N, D) (the central WINDOW) and searched descriptors (N, V, D) (every warp) of luma
    thumbnails (N, 32, 32); D = WINDOW_CELLS ** 2, V = 36."""
    c = VERIFY_SIZE // 2
    warps = [_window(im, c + dy, c + dx, w) for w in WINDOW_SIZES for dy in WINDOW_SHIFTS for dx in WINDOW_SHIFTS
             for im in (g, g.flip(-1))]
    return _window(g, c, c, WINDOW), torch.stack(warps, 1)


def pixel_candidates(gray: torch.Tensor | np.ndarray, k: int = PIXEL_K, chunk: int = 4096,
                     method: str = "auto") -> np.ndarray:
    """Candidate pairs (i, j, similarity) float64 (M, 3): each sample's ``k`` most similar other samples by the best
    warp of :func:`window_descriptors` (its central window against every warp of the other). ``gray``: luma
    thumbnails (N, 32, 32) or uint8 RGB images (N, H, W, 3), e.g. a memmap, read ``chunk`` rows at a time.

    The warped windows (36 N, D) are the database of the one kNN (:mod:`fo_plugin.core.knn`: exact brute force (bounded
    blocks), or a faiss IVF index, ``method`` as there; ``"auto"`` takes IVF above ``PIXEL_EXACT_MAX_N`` samples on
    CPU), queried with the central windows for the 36 k best warps, the best warp of each sample kept. Memory: the
    (36 N, D) warps, 9 kB a sample (D = 64 floats), held once (the IVF index keeps its own copy and the tensor is
    freed)."""
    n = len(gray)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((0, 3))
    v, d = 2 * len(WINDOW_SIZES) * len(WINDOW_SHIFTS) ** 2, WINDOW_CELLS ** 2
    central, warps = torch.empty(n, d), torch.empty(n, v, d)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        central[s:e], warps[s:e] = window_descriptors(_luma_rows(gray, np.arange(s, e)))
    warps = warps.view(n * v, d)  # row r is a warp of sample r // V
    method = choose_method(n, central.device, method, exact_max_n=PIXEL_EXACT_MAX_N)
    index = None
    if method != "exact":
        index = build_index(warps, method)
        del warps
    out_i = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
        if index is None:  # db_ids: the query row each database row is (its own warps are excluded)
            idx, sim = exact_search(central[rows], warps, k * v, db_ids=np.arange(n * v) // v - s)
        else:  # its own V warps may come back too: ask for V more
            idx, sim = index_search(index, central[rows], k * v + v)
        j = np.where(idx >= 0, idx // v, -1)  # (R, V k) samples
        sim = np.where((j >= 0) & (j != rows[:, None]), sim, -np.inf)
        r = np.repeat(np.arange(len(rows)), j.shape[1])
        j, val = j.reshape(-1), sim.reshape(-1)
        first = np.lexsort((-val, j, r))  # by row, then sample, best warp first
        r, j, val = r[first], j[first], val[first]
        keep = np.ones(len(r), bool)
        keep[1:] = (r[1:] != r[:-1]) | (j[1:] != j[:-1])  # one entry per (row, sample): its best warp
        r, j, val = r[keep], j[keep], val[keep]
        order = np.lexsort((-val, r))  # by row, best first
        r, j, val = r[order], j[order], val[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within its row
        top = (rank < k) & np.isfinite(val)
        out_i[rows[r[top]], rank[top]] = j[top]
        out_s[rows[r[top]], rank[top]] = val[top]
    ok = out_i >= 0
    return candidate_pairs(np.where(ok, out_i, 0), np.where(ok, np.minimum(out_s, 1.0), -np.inf), -2.0)


# ---------------------------------------------------------------------------------------------------------------------
# Aligned pair verification: the best normalised cross-correlation over a grid of shifts, zooms, flips and rotations.
# Coarse to fine: the alignment is searched on 16 x 16 layout maps (every shift, one batched matrix product), then the
# best 2 alignments are re-sampled at 32 x 32, refined by +-1 px, the better one refined locally (x and y scale,
# rotation, sub-pixel shift), and scored on layout and detail there.

VERIFY_SIZE = 32  # thumbnails are compared at 32 x 32 (CIFAR's native size; larger thumbnails are area-downsampled)
TEMPLATE = 20  # the central 20 x 20 of one image is searched for in the other: shifts up to +-6 px (19% of the side)
ZOOMS = (1.0, 1.12, 1.25, 1.4, 1.57, 1.76)  # magnifications of the searched image (the other direction covers < 1)
ROTATIONS = (-7.0, 0.0, 7.0)  # degrees
TOP_ALIGNMENTS = 2  # coarse alignments refined at full resolution
PATCH = 5  # side of the local patches compared at the chosen alignment
REFINE = 1  # +- px searched around each coarse alignment at full resolution
LOCAL_SCALES = (0.92, 1.0, 1.087)  # x and y scales, each, tried around the chosen alignment (then the best of)
LOCAL_ROTATIONS = (-3.5, 0.0, 3.5)  # degrees tried with them: half the grid's step
LOCAL_SHIFTS = (-0.5, 0.0, 0.5)  # px, x and y, tried last. Measured (bench_duplicates.py --candidates ssl, seeds 0
# and 1): planted copies, crops and combined ones most, score higher, so the threshold can rise 0.6 -> 0.7 with every
# kind still >= 0.93: false pairs per 10k images 263 / 258 -> 231 / 230, labelled-estimate precision 0.94 -> 0.97
# (``DUPLICATE_THRESHOLD``, kept with the torch-free defaults in :mod:`.duplicates`)


def gray_thumbnails(images: np.ndarray | torch.Tensor, size: int = VERIFY_SIZE) -> torch.Tensor:
    """Luma thumbnails float32 (N, size, size) in [0, 1] from uint8 (N, H, W, 3) images (area-resized): the
    verifier's input. Colour is dropped on purpose so recoloured and grayscale copies still match."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    g = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if g.shape[-1] != size or g.shape[-2] != size:
        g = F.interpolate(g, size=(size, size), mode="area")
    return g[:, 0]


class _Grid:
    """The alignment grid and the fixed linear filters at both resolutions."""

    def __init__(self, size: int = VERIFY_SIZE):
        thetas = []
        for z in ZOOMS:
            for fl in (1.0, -1.0):
                for deg in ROTATIONS:
                    a = np.deg2rad(deg)
                    c, s = np.cos(a) / z, np.sin(a) / z
                    thetas.append([[c * fl, -s], [s * fl, c]])
        self.a = torch.tensor(thetas, dtype=torch.float32)  # (V, 2, 2) sampling matrices; 0 = identity
        self.size, self.small = size, size // 2
        self.t_small = TEMPLATE // 2
        self.grid_small = F.affine_grid(torch.cat([self.a, torch.zeros(len(self.a), 2, 1)], 2),
                                        [len(self.a), 1, self.small, self.small], align_corners=False)
        self.blur_small = blur_matrix(self.small, 0.7)
        self.box_small = box_matrix(self.small, self.t_small)
        self.lay = blur_matrix(size, 1.0)
        self.fine, self.coarse = blur_matrix(size, 0.5), blur_matrix(size, 2.0)
        r, s = self.small - self.t_small + 1, self.small
        # partial inverse real DFT: only the R x R valid correlation offsets of an (s, s//2+1) spectrum
        ky = 2 * np.pi * np.outer(np.arange(r), np.arange(s)) / s
        self.ey = torch.complex(torch.tensor(np.cos(ky), dtype=torch.float32),
                                torch.tensor(np.sin(ky), dtype=torch.float32))  # (R, s)
        wx = np.full(s // 2 + 1, 2.0)
        wx[0] = wx[-1] = 1.0
        kx = 2 * np.pi * np.outer(np.arange(s // 2 + 1), np.arange(r)) / s
        self.cx = torch.tensor(wx[:, None] * np.cos(kx) / s ** 2, dtype=torch.float32)  # (s//2+1, R)
        self.sx = torch.tensor(wx[:, None] * np.sin(kx) / s ** 2, dtype=torch.float32)

    def signals(self, g: torch.Tensor) -> torch.Tensor:
        """(..., S, S) luma -> (..., 2, S, S): layout (blurred) and detail (band-pass) maps."""
        fine = separable(g, self.fine)
        return torch.stack([separable(g, self.lay), fine - separable(g, self.coarse)], -3)


def _unit_windows(x: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-norm rows over the last dim."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.norm(dim=-1, keepdim=True) + 1e-4)


def _window_ncc(templates: torch.Tensor, maps: torch.Tensor, group: torch.Tensor, w: int) -> torch.Tensor:
    """Normalised cross-correlation of each template (E, w*w) (zero-mean, unit-norm) with every w x w window of its
    map ``maps[group[e]]`` (U, C, H, H): (E, C * (H-w+1)^2). Edges sharing a map are batched into one matrix product
    (slots of up to 16 templates), so no map's windows are copied per edge."""
    u = maps.shape[0]
    win = maps.unfold(2, w, 1).unfold(3, w, 1).reshape(u, -1, w * w)  # (U, C*R*R, w*w)
    win = win - win.mean(2, keepdim=True)
    norm = win.norm(dim=2)  # (U, C*R*R)
    win = win.transpose(1, 2)  # (U, w*w, C*R*R)
    counts = torch.bincount(group, minlength=u)
    per = (counts + 15) // 16
    first_slot = torch.cumsum(per, 0) - per
    first_edge = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(group)) - first_edge[group]  # edges must be sorted by group
    slot, lane = first_slot[group] + pos // 16, pos % 16
    n_slots = int(per.sum())
    tm = torch.zeros(n_slots, 16, w * w)
    tm[slot, lane] = templates
    slot_map = torch.repeat_interleave(torch.arange(u), per)
    num = torch.bmm(tm, win[slot_map])[slot, lane]  # (E, C*R*R)
    return num / (norm[group] + 1e-3)


def _coarse(lay_small: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """Top alignments (E, K) as flat indices into (V, R, R): src's central window on warped dst, 16 px layout.
    ``dst`` must be sorted."""
    ub, inv = torch.unique_consecutive(dst, return_inverse=True)
    u, v, s, t = len(ub), len(grid.a), grid.small, grid.t_small
    w = F.grid_sample(lay_small[ub][:, None].expand(u, v, s, s).reshape(u * v, 1, s, s),
                      grid.grid_small.repeat(u, 1, 1, 1), mode="bilinear", padding_mode="reflection",
                      align_corners=False).view(u, v, s, s)
    o = (s - t) // 2
    tm = _unit_windows(lay_small[src][:, o:o + t, o:o + t].reshape(len(src), -1))
    return _window_ncc(tm, w, inv, t).topk(TOP_ALIGNMENTS, dim=1).indices


def _local_warps() -> tuple[torch.Tensor, torch.Tensor]:
    """The local refinement's perturbations of an alignment: (L, 2, 2) linear maps (x and y scale each in
    LOCAL_SCALES, rotation in LOCAL_ROTATIONS; identity included) and (H, 2) sub-pixel shifts (LOCAL_SHIFTS squared)
    in full-resolution pixels, x first."""
    lin = []
    for sx in LOCAL_SCALES:
        for sy in LOCAL_SCALES:
            for deg in LOCAL_ROTATIONS:
                a = np.deg2rad(deg)
                lin.append([[np.cos(a) * sx, -np.sin(a) * sy], [np.sin(a) * sx, np.cos(a) * sy]])
    shifts = [[dx, dy] for dy in LOCAL_SHIFTS for dx in LOCAL_SHIFTS]
    return torch.tensor(lin, dtype=torch.float32), torch.tensor(shifts, dtype=torch.float32)


def _sample_central(sig: torch.Tensor, theta: torch.Tensor, s: int) -> torch.Tensor:
    """The central TEMPLATE x TEMPLATE window of each map (E, C, S, S) resampled at each of its L alignments theta
    (E, L, 2, 3): (E, C, L, T*T). The L grids are stacked along the grid's height, so no map is copied per
    alignment."""
    e, n_l = theta.shape[:2]
    o, t = (s - TEMPLATE) // 2, TEMPLATE
    c = (2 * torch.arange(o, o + t, dtype=theta.dtype) + 1) / s - 1  # pixel centres, normalised (align_corners False)
    base = torch.stack([c[None, :].expand(t, t), c[:, None].expand(t, t), torch.ones(t, t)], -1)  # (T, T, 3): x, y, 1
    coords = torch.einsum("hwk,eljk->elhwj", base, theta)  # = affine_grid's central T x T only: (E, L, T, T, 2)
    coords = coords.reshape(e, n_l * t, t, 2)
    w = F.grid_sample(sig, coords, mode="bilinear", padding_mode="reflection", align_corners=False)
    return w.view(e, sig.shape[1], n_l, t * t)  # (E, C, L*T, T) -> (E, C, L, T*T)


def _fine(sig: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, best: torch.Tensor, grid: _Grid
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layout and detail correlations (E,) and the PATCH x PATCH patch correlations (E, 2, P) at the best of each
    edge's K coarse alignments refined by +-REFINE px on the full-resolution signal maps ``sig`` (N, 2, S, S), then
    locally: x and y scale, rotation (:func:`_local_warps`: a crop of another aspect ratio, or two transforms combined,
    falls between the grid's isotropic zooms and 7-degree rotations), then sub-pixel shift, each step keeping the
    best mean correlation."""
    e, k = best.shape
    s, r = grid.size, grid.small - grid.t_small + 1
    v_idx, off = best // (r * r), best % (r * r)
    dy = (off // r - (r - 1) // 2).float() * (s / grid.small)  # full-resolution pixels
    dx = (off % r - (r - 1) // 2).float() * (s / grid.small)
    a = grid.a[v_idx]  # (E, K, 2, 2)
    delta = torch.stack([dx, dy], -1) * (2.0 / s)  # normalised coordinates, x first
    theta = torch.cat([a, (a @ delta[..., None])], -1).view(e * k, 2, 3)
    o, p, t = (s - TEMPLATE) // 2, REFINE, TEMPLATE
    coords = F.affine_grid(theta, [e * k, 1, s, s], align_corners=False)[:, o - p:o + t + p, o - p:o + t + p]
    w = F.grid_sample(sig[dst].repeat_interleave(k, 0), coords, mode="bilinear", padding_mode="reflection",
                      align_corners=False)  # (E*K, 2, T+2p, T+2p)
    tm = _unit_windows(sig[src][..., o:o + t, o:o + t].flatten(-2))  # (E, 2, T*T)
    win = w.unfold(2, t, 1).unfold(3, t, 1).reshape(e * k, 2, -1, t * t)  # (E*K, 2, Q, T*T)
    win = win - win.mean(-1, keepdim=True)
    num = (win @ tm.repeat_interleave(k, 0)[..., None])[..., 0]  # (E*K, 2, Q)
    ncc = (num / (win.norm(dim=-1) + 1e-3)).view(e, k, 2, -1)  # (E, K, 2, Q)
    arg = ncc.mean(2).flatten(1).argmax(1)  # (E,) flat index over (K, Q)
    q = (2 * p + 1) ** 2
    kk, qq = arg // q, arg % q
    th = theta.view(e, k, 2, 3)[torch.arange(e), kk]  # (E, 2, 3) the chosen alignment, its px offset added:
    step = torch.stack([qq % (2 * p + 1) - p, qq // (2 * p + 1) - p], -1).float() * (2.0 / s)
    th = torch.cat([th[..., :2], th[..., 2:] + th[..., :2] @ step[..., None]], -1)
    # local refinement: sampling coordinates A (M x + d) + b for each linear map M, then each shift d
    lin, shifts = _local_warps()
    dst_sig, rows = sig[dst], torch.arange(e)

    def best_of(cand: torch.Tensor):  # (E, L, 2, 3) -> the best alignment, its windows (E, 2, T*T), correlations
        aw = _sample_central(dst_sig, cand, s)  # (E, 2, L, T*T)
        at = (_unit_windows(aw) * tm[:, :, None]).sum(-1)  # (E, 2, L)
        pick = at.mean(1).argmax(1)
        return cand[rows, pick], aw[rows, :, pick], at[rows, :, pick]

    th = best_of(torch.cat([th[:, None, :, :2] @ lin, th[:, None, :, 2:].expand(-1, len(lin), 2, 1)], -1))[0]
    _, aw, at = best_of(torch.cat([th[:, None, :, :2].expand(-1, len(shifts), 2, 2),
                                   th[:, None, :, 2:] + th[:, None, :, :2] @ (shifts * (2.0 / s))[None, :, :, None]],
                                  -1))  # each step perturbs the previous one's choice; aw, at: at the final alignment
    # local agreement at the chosen alignment: NCC of each PATCH x PATCH patch of both maps
    tr = sig[src][..., o:o + t, o:o + t]  # (E, 2, T, T)
    np_ = t // PATCH

    def patches(x):
        return x.reshape(e, 2, np_, PATCH, np_, PATCH).permute(0, 1, 2, 4, 3, 5).reshape(e, 2, np_ * np_, -1)
    pa, pb = _unit_windows(patches(tr)), _unit_windows(patches(aw.view(e, 2, t, t)))
    pn = (pa * pb).sum(-1)  # (E, 2, P)
    return at[:, 0], at[:, 1], pn


def _luma_rows(images: torch.Tensor | np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Float luma (R, 32, 32) of ``rows`` of either luma thumbnails (N, S, S) or uint8 RGB images (N, H, W, 3) (e.g.
    a memmap): only these rows are read and converted."""
    x = images[torch.as_tensor(rows)] if isinstance(images, torch.Tensor) else np.asarray(images[rows])
    if x.ndim == 4:
        return gray_thumbnails(x)
    g = torch.as_tensor(x).float()
    if g.shape[-1] != VERIFY_SIZE:
        g = F.interpolate(g[:, None], size=(VERIFY_SIZE, VERIFY_SIZE), mode="area")[:, 0]
    return g


def aligned_pair_scores(gray: torch.Tensor | np.ndarray, pairs: np.ndarray, chunk: int = 1024
                        ) -> dict[str, np.ndarray]:
    """Near-duplicate confirmation of candidate pairs, tolerant to re-framing, zoom, mirroring, small rotations,
    recolouring (luma only) and heavy JPEG.

    The central 20 x 20 window of one image is searched for in the other over shifts of +-6 px, zooms 1-1.76x,
    a horizontal flip and rotations of +-7 degrees, in both directions (so relative zooms 0.57-1.76 are covered):
    first on 16 x 16 blurred luma (normalised cross-correlation at every shift, one batched matrix product), then the
    2 best alignments are resampled at 32 x 32 and refined over +-1 px. At each refined alignment the normalised
    cross-correlations of a layout map (blurred luma) and a detail map (band-pass luma) are taken; the alignment
    maximising their mean wins and is refined locally, keeping the best mean: x and y scale each 0.92-1.087x with
    rotation +-3.5 degrees (27 warps: crops of another aspect ratio and two combined transforms fall between the
    grid's isotropic zooms), then +-0.5 px (9 shifts). Photos that merely share a composition agree on layout but
    not on detail.

    Args:
        gray: (N, 32, 32) luma thumbnails (:func:`gray_thumbnails`), or uint8 RGB images (N, H, W, 3), e.g. a
            memmap: only the rows a chunk of pairs needs are read and converted (bounded memory).
        pairs: (M, >=2) candidate pairs; columns 0 and 1 are the indices.
        chunk (1024): directed pairs per batch.

    Returns:
        ``score`` (M,) in [0, 1]: ``aligned * patch``, symmetric, 1 for identical images (confirm at
        :data:`DUPLICATE_THRESHOLD`); evidence (M,): ``aligned`` the mean of the layout and detail correlations at the
        best alignment of the better direction, ``layout``, ``detail``, and ``patch`` the mean correlation of the
        5 x 5 patches of both maps there (local agreement: different photos of one composition fail it).
    """
    m = len(pairs)
    if m == 0:
        z = np.zeros(0)
        return {"score": z, "aligned": z, "layout": z, "detail": z, "patch": z}
    grid = _Grid(VERIFY_SIZE)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int64)
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int64)
    order = np.argsort(dst, kind="stable")  # chunks share search images
    lay, det = torch.zeros(2 * m), torch.zeros(2 * m)
    npatch = (TEMPLATE // PATCH) ** 2
    pat = torch.zeros(2 * m, 2, npatch)
    with torch.no_grad():
        for c0 in range(0, 2 * m, chunk):
            sel = torch.as_tensor(order[c0:c0 + chunk])
            rows, local = np.unique(np.concatenate([src[sel.numpy()], dst[sel.numpy()]]), return_inverse=True)
            g = _luma_rows(gray, rows)  # (R, S, S): only this chunk's images
            lay_small = separable(F.avg_pool2d(g[:, None], 2)[:, 0], grid.blur_small)  # (R, 16, 16)
            sig = grid.signals(g)  # (R, 2, S, S)
            local = torch.as_tensor(local.reshape(2, -1))
            s_, d_ = local[0], local[1]  # monotone re-indexing: d_ stays sorted
            best = _coarse(lay_small, s_, d_, grid)
            lay[sel], det[sel], pat[sel] = _fine(sig, s_, d_, best, grid)
    both = (lay + det) / 2
    patch = pat.mean((1, 2))  # (2M,) mean local agreement of both maps at the chosen alignment
    fwd = both[:m] >= both[m:]

    def pick(v: torch.Tensor) -> np.ndarray:
        return torch.where(fwd, v[:m], v[m:]).double().numpy()

    aligned, patch_ = pick(both), pick(patch)
    return {"score": np.clip(aligned * patch_, 0, 1), "aligned": aligned, "layout": pick(lay),
            "detail": pick(det), "patch": patch_}
