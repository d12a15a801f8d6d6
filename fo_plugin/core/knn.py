"""Cosine k-nearest neighbours at scale: exact in memory-budgeted tiles, or an approximate faiss index on CPU.

The exact path on a GPU tiles queries x database so one similarity block never exceeds ``max_block_bytes`` (a running
top-k is merged across database tiles), whatever N is; on CPU it is faiss's brute-force search (its own bounded
blocks; the torch tiles when faiss is missing). CPU work is done on numpy arrays (a CPU tensor is read in place,
without a copy), so the embedding-level stages never import torch. Exact search is quadratic in N, so on CPU for
large N ``method="auto"`` uses a faiss IVF-Flat index (k-means cells, ``nprobe`` cells searched per query), chosen
over HNSW by measurement (``bench/bench_knn.py``, 2 cores, N = 200k, 128-d clustered): IVF 96 s, recall@10 0.995,
every planted copy found; HNSW (M=32, ef=64) 229 s, recall 0.985, 99.4% of copies; also less memory. Built once
per embedding and shared by the duplicate and outlier scores.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

METHODS = ("auto", "exact", "ivf", "hnsw")
EXACT_MAX_N_CPU = 20_000  # auto: exact on CPU up to this N, IVF above (bench_knn, 2 cores, d=128: IVF 1.6x faster at
# 20k, 4x at 50k, recall@10 0.998, every planted copy found)
# IVF cell training (k-means on a sample): 64 points a cell and 25 iterations took 99 s at N = 200k (bench_knn's
# clustered 128-d data, 2 busy cores; the cost grows as N^1.5), 32 points and 10 iterations 16 s, with the same
# recall@10 against exact (0.995 at nprobe 16) and every planted copy found
IVF_TRAIN_POINTS = 32
IVF_TRAIN_ITERS = 10
MAX_BLOCK_BYTES = 256 * 2**20  # one float32 similarity block
_MIN_ROWS = 1024  # below this many query rows per full-width block, the database dimension is tiled too


def knn(x: np.ndarray | torch.Tensor, k: int, method: str = "auto", max_block_bytes: int = MAX_BLOCK_BYTES,
        nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of each row.

    Args:
        x: (N, D) embeddings (any scale; rows are normalised here): an array, or a tensor (a CUDA one is searched on
            its GPU).
        k: neighbours per row (clamped to N - 1).
        method ("auto"): ``"exact"`` (brute force: faiss's on CPU, memory-budgeted torch tiles on a GPU),
            ``"ivf"`` (faiss IVF-Flat, CPU), ``"hnsw"`` (faiss HNSW, CPU), or ``"auto"``: exact on a GPU, exact on
            CPU when N <= 20,000 or faiss is not installed, else IVF-Flat.
        max_block_bytes (256 MB): the most memory one exact similarity block of the torch tiles may take.
        nprobe (None): IVF cells searched per query (None: 16, recall@10 >= 0.99 on clustered data, see
            ``bench/bench_knn.py``; more when 16 cells hold fewer than ~4 k rows); for HNSW, the search breadth ``efSearch`` (None: max(64, 2 k)).

    Returns:
        ``(idx, sim)``: int64 (N, k) neighbour indices and float32 (N, k) cosine similarities, most similar first
        (self excluded; an approximate search that found fewer than k rows pads with index -1 and similarity -1).
    """
    n = len(x)
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    z = unit_rows(x)  # (N, D)
    method = choose_method(n, _device(z), method)
    if method == "exact":
        return exact_search(z, z, k, db_ids=None, max_block_bytes=max_block_bytes)
    index = build_index(z, method)
    return index_search(index, z, k, nprobe=nprobe, self_ids=np.arange(n))


def unit_rows(x: np.ndarray | torch.Tensor, centre: bool = False, in_place: bool = False) -> np.ndarray | torch.Tensor:
    """``x`` as float32 unit rows, centred on the mean row first when ``centre`` (cosines among centred rows:
    post-ReLU features all point one way): a numpy array for an array or a CPU tensor (sharing its memory), a tensor
    on a GPU. No (N, D) copy when it can be avoided: ``x`` itself when its rows are unit already (to 1e-5, above
    float32 rounding of normalised rows; cosines then within 2e-5) and no centring is asked; with ``in_place``, a
    float32 ``x`` is centred and normalised in place (for a caller that no longer needs it: 0.5 GB at 1M x 128).
    Zero rows stay zero."""
    x = _cpu_array(x)
    if isinstance(x, np.ndarray):
        if centre:
            mean = x.mean(0, keepdims=True, dtype=np.float64).astype(np.float32)
            x, in_place = (np.subtract(x, mean, out=x) if in_place else x - mean), True  # our own copy from here on
        elif len(x) and bool((np.abs(np.sqrt(np.einsum("ij,ij->i", x, x)) - 1) < 1e-5).all()):
            return x
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]  # no (N, D) temporary
        return np.divide(x, norms, out=x) if in_place else x / norms
    import torch
    import torch.nn.functional as F

    x = x.float()
    if centre:
        mean = x.mean(0, keepdim=True)
        x, in_place = (x.sub_(mean) if in_place else x - mean), True  # our own copy from here on
    elif len(x) and bool(((torch.linalg.vector_norm(x, dim=1) - 1).abs() < 1e-5).all()):
        return x
    if in_place:
        return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12))
    return F.normalize(x, dim=1)


def _cpu_array(x):
    """CPU data as a float32 numpy array (a float32 CPU tensor's own memory, no copy); a GPU tensor as it is."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    if x.device.type == "cpu":
        return x.detach().float().numpy()
    return x


def _device(x) -> str:
    return "cpu" if isinstance(x, np.ndarray) else x.device.type


def choose_method(n: int, device: torch.device | str = "cpu", method: str = "auto",
                  exact_max_n: int = EXACT_MAX_N_CPU) -> str:
    """What ``method="auto"`` resolves to for N rows on ``device`` (other methods are returned as given): exact on a
    GPU, or on CPU up to ``exact_max_n`` rows (lower for a search that queries every row many times)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method != "auto":
        return method
    if str(device).split(":")[0] != "cpu" or n <= exact_max_n:
        return "exact"
    if not _has_faiss():
        warnings.warn(f"faiss is not installed: exact kNN over {n:,} samples on CPU (quadratic in N; slow above "
                      f"{exact_max_n:,}). `pip install faiss-cpu` (a dependency of this package) restores the index.",
                      RuntimeWarning, stacklevel=2)  # Python shows it once per calling line
        return "exact"
    return "ivf"


def exact_search(q: np.ndarray | torch.Tensor, db: np.ndarray | torch.Tensor, k: int, db_ids: np.ndarray | None = None,
                 max_block_bytes: int = MAX_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of each query row against the database: faiss's brute force on CPU (its own
    bounded blocks), torch tiles within a memory budget on a GPU or without faiss.

    Args:
        q: (Nq, D) queries, db: (Nd, D) database (unit rows for cosines): arrays, or tensors on one device.
        db_ids: (Nd,) the query row each database row is (its self-match is excluded); None when ``db is q``
            (row i excludes row i). Database rows that are no query: any id outside [0, Nq).
        max_block_bytes: (torch tiles) budget of one (rows x cols) float32 block: full database width while that leaves at least
            1024 query rows, else square-ish tiles in both dimensions with a running top-k merge.

    Returns:
        int64 (Nq, k) database indices and float32 (Nq, k) similarities, best first (k clamped to the candidates:
        the database less the most rows one query has in it).
    """
    nq, nd = len(q), len(db)
    if db_ids is None:
        db_ids = np.arange(nd)
    db_ids = np.asarray(db_ids)
    own = db_ids[(db_ids >= 0) & (db_ids < nq)]
    most = int(np.bincount(own).max()) if len(own) else 0  # the most database rows one query is
    k = min(k, nd - most)  # never a query's own row, however many
    if _device(q) == "cpu" and _has_faiss():
        return _faiss_exact(_cpu_array(q), _cpu_array(db), k, db_ids, most)
    import torch

    q, db = torch.as_tensor(q), torch.as_tensor(db)
    budget = max(max_block_bytes // 4, 1)  # floats per block
    rows = budget // nd
    if rows >= min(_MIN_ROWS, nq):
        rows, cols = min(rows, nq), nd
    else:  # tile both dimensions: the block no longer grows with N
        side = max(int(math.isqrt(budget)), 1)
        rows, cols = min(side, nq), min(max(budget // min(side, nq), 1), nd)
    ids = torch.as_tensor(db_ids, device=db.device)
    out_i = torch.empty((nq, k), dtype=torch.int64)
    out_s = torch.empty((nq, k), dtype=torch.float32)
    for qs in range(0, nq, rows):
        qe = min(qs + rows, nq)
        best_s = torch.full((qe - qs, k), -float("inf"), device=q.device)  # (rows, k) running top-k
        best_i = torch.full((qe - qs, k), -1, dtype=torch.int64, device=q.device)
        for ds in range(0, nd, cols):
            de = min(ds + cols, nd)
            block = q[qs:qe] @ db[ds:de].T  # (rows, cols)
            tid = ids[ds:de]
            own = ((tid >= qs) & (tid < qe)).nonzero().squeeze(1)  # database columns that are a query of the tile
            block[tid[own] - qs, own] = -float("inf")
            top = block.topk(min(k, de - ds), dim=1)
            del block  # free before the next block is computed: one block alive at a time
            if ds == 0 and de == nd:
                best_s, best_i = top.values, top.indices
                break
            cand_s = torch.cat([best_s, top.values], 1)
            cand_i = torch.cat([best_i, top.indices + ds], 1)
            merged = cand_s.topk(k, dim=1)
            best_s, best_i = merged.values, cand_i.gather(1, merged.indices)
        out_i[qs:qe], out_s[qs:qe] = best_i.cpu(), best_s.float().cpu()
    return out_i.numpy(), out_s.numpy()


def _faiss_exact(q: np.ndarray, db: np.ndarray, k: int, db_ids: np.ndarray, extra: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_search` on CPU by faiss's brute-force search (``faiss.knn``: BLAS blocks of bounded size, a heap
    per query; no copy of the database): 1.4-1.8x faster than the torch tiles on 2 cores at N = 10k-20k, k = 10 and
    300, same neighbours up to ties and similarities to 7e-7. A query's own database rows (one, or several: the
    warps of a window search; ``extra``: the most one query has) are searched past and dropped."""
    import faiss

    nq, nd = len(q), len(db)
    if k <= 0:
        return np.zeros((nq, 0), dtype=np.int64), np.zeros((nq, 0), dtype=np.float32)
    sim, idx = faiss.knn(np.ascontiguousarray(q), np.ascontiguousarray(db), min(k + extra, nd),
                         metric=faiss.METRIC_INNER_PRODUCT)
    if extra == 1:  # one row each: the fast path
        own = (db_ids >= 0) & (db_ids < nq)
        self_ids = np.full(nq, -1, dtype=np.int64)
        self_ids[db_ids[own]] = np.flatnonzero(own)
        idx, sim = _drop_self(idx, sim, self_ids, k)
    elif extra > 1:
        is_self = (idx >= 0) & (db_ids[np.maximum(idx, 0)] == np.arange(nq)[:, None])
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # the others first, in rank order
        idx, sim = np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1)
    return idx[:, :k].astype(np.int64, copy=False), sim[:, :k].astype(np.float32, copy=False)


def build_index(z: np.ndarray | torch.Tensor, method: str = "ivf", nlist: int | None = None, hnsw_m: int = 32):
    """A faiss inner-product index over the unit rows of ``z`` (N, D): ``"ivf"`` (IVF-Flat, ``nlist`` cells,
    default ~4 sqrt(N), k-means of ``IVF_TRAIN_ITERS`` iterations on at most ``IVF_TRAIN_POINTS`` points a cell)
    or ``"hnsw"`` (HNSW, ``hnsw_m`` links a node)."""
    import faiss

    zc = np.ascontiguousarray(to_numpy(z))  # (N, D)
    n, d = zc.shape
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(zc)
        return index
    if method != "ivf":
        raise ValueError(f"unknown index method {method!r}")
    nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = IVF_TRAIN_POINTS
    index.cp.niter = IVF_TRAIN_ITERS
    index.cp.seed = 0
    index.train(zc)
    index.add(zc)
    return index


def index_search(index, q: np.ndarray | torch.Tensor, k: int, nprobe: int | None = None,
                 self_ids: np.ndarray | None = None, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of unit query rows ``q`` (Nq, D) in a :func:`build_index` index; ``self_ids`` (Nq,) = the index row
    each query is (excluded). ``nprobe``: IVF cells per query (default: 16, or enough cells to hold ~4 k rows) or
    HNSW efSearch (default max(64, 2k)). Searched ``chunk`` queries at a time into the result arrays (faiss's
    per-query work tables stay that small). Returns int64 (Nq, k) indices (-1 = not found) and float32
    similarities, best first."""
    import faiss

    qc = to_numpy(q)
    extra = 0 if self_ids is None else 1
    if isinstance(index, faiss.IndexHNSWFlat):
        params = faiss.SearchParametersHNSW(efSearch=max(nprobe or 64, 2 * (k + extra)))
    else:
        nprobe = nprobe or max(16, math.ceil(4 * (k + extra) * index.nlist / max(index.ntotal, 1)))
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, index.nlist))
    self_ids = None if self_ids is None else np.asarray(self_ids)
    idx = np.empty((len(qc), k), np.int64)
    sim = np.empty((len(qc), k), np.float32)
    for s in range(0, len(qc), chunk):
        part_s, part_i = index.search(np.ascontiguousarray(qc[s:s + chunk]), k + extra, params=params)
        if self_ids is not None:
            part_i, part_s = _drop_self(part_i, part_s, self_ids[s:s + chunk], k)
        idx[s:s + chunk], sim[s:s + chunk] = part_i, part_s
    sim[idx < 0] = -1.0
    return idx, sim


def kth_neighbour_distances(x: np.ndarray | torch.Tensor, ks: tuple[int, ...] | list[int], method: str = "auto",
                            nprobe: int | None = None, chunk: int = 2048,
                            max_block_bytes: int = MAX_BLOCK_BYTES) -> dict[int, np.ndarray]:
    """Cosine distance of every row to its k-th nearest other row, for each k in ``ks`` (e.g. up to 300).

    Searched in chunks of ``chunk`` query rows, keeping only the requested columns: memory is O(N len(ks) +
    chunk max(ks)), never an (N, max(ks)) table (2048 rows: ~7 MB a result table at k = 300; 8192 rows added 70 MB
    to the outlier stage's peak at N = 50k, 32768 rows 0.3 GB). With an IVF index the cost hardly depends on k (each query scans
    ``nprobe`` cells either way); ``nprobe`` defaults to enough cells to hold about 4 max(ks) candidates (>= 16,
    see :func:`index_search`), which keeps the k=300 distances at Spearman >= 0.99 against exact (a random reference subsample of m rows,
    the (k m / N)-th neighbour among them, measured only 0.88 at m = N / 5: see ``bench/bench_knn.py``).

    Args:
        x: (N, D) embeddings (rows normalised here; centre them first when all features point one way).
        ks: neighbour ranks (each clamped to N - 1).
        method: as in :func:`knn` (``"auto"``: exact on GPU or N <= 20,000 on CPU, else IVF).

    Returns:
        ``{k: float32 (N,) distance 1 - cosine to the k-th neighbour}`` for each distinct clamped k.
    """
    n = len(x)
    ks = sorted({max(1, min(int(k), n - 1)) for k in ks})
    if n < 2:
        return {k: np.zeros(n, np.float32) for k in ks}
    kmax = ks[-1]
    z = unit_rows(x)  # (N, D)
    if isinstance(z, np.ndarray):
        z = np.ascontiguousarray(z)  # once, not per chunk
    method = choose_method(n, _device(z), method)
    index = None
    if method != "exact":
        index = build_index(z, method)
    out = {k: np.empty(n, np.float32) for k in ks}
    cols = np.array(ks) - 1
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        if index is None:
            ids = np.arange(n) - s  # database row j is query row j - s of this chunk
            _, sim = exact_search(z[s:e], z, kmax, db_ids=ids, max_block_bytes=max_block_bytes)  # (chunk, kmax)
        else:
            _, sim = index_search(index, z[s:e], kmax, nprobe=nprobe, self_ids=np.arange(s, e))
        for k, c in zip(ks, cols):
            out[k][s:e] = 1 - sim[:, c]
    return out


def _drop_self(idx: np.ndarray, sim: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first k results of each row that are not the row itself ((N, k + 1) -> (N, k)). Most rows find
    themselves first (similarity 1): those are one slice; only the others are re-ordered (a sort of the whole
    (N, k + 1) table was a second of every 50k rows at k = 300)."""
    out_i, out_s = idx[:, 1:k + 1].copy(), sim[:, 1:k + 1].copy()
    rest = np.flatnonzero(idx[:, 0] != self_ids)  # self later in the row, or not found
    if len(rest):
        is_self = idx[rest] == self_ids[rest, None]  # (R, k + 1)
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self first, in rank order
        out_i[rest] = np.take_along_axis(idx[rest], order, 1)
        out_s[rest] = np.take_along_axis(sim[rest], order, 1)
    return out_i, out_s


def to_numpy(x) -> np.ndarray:
    """float32 numpy rows of an array or a tensor on any device (faiss works on host memory)."""
    x = _cpu_array(x)
    return x if isinstance(x, np.ndarray) else x.detach().float().cpu().numpy()


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
