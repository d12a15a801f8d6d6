"""Read what earlier runs produced: the SSL model of an embeddings run, or a stored vector field, as tensors in a
canonical sample order (sorted by a hash of the sample id), so that every score is independent of view order."""

from __future__ import annotations

import io
import os
import tempfile
import zlib
from typing import TYPE_CHECKING

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np

from . import runs
from .core import rng
from .core.fingerprint import fingerprint
from .core.images import iter_decoded, to_float
from .core.vectors import valid_rows

if TYPE_CHECKING:  # the model-side helpers import torch when called: reading vectors and ids needs none
    import torch

    from .core.augment import AugmentConfig
    from .core.backbones import Backbone


class DecodedImages:
    """Target images decoded once into a temporary uint8 memmap (bounded memory), for jobs that pass over them
    several times (proxy training, influence). ``ids`` and ``valid`` name the images that could be decoded."""

    def __init__(self, paths: list[str], ids: list[str], size: int, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.tmp = tempfile.TemporaryDirectory(prefix=runs.DECODED_PREFIX, dir=folder)
        self.images = np.lib.format.open_memmap(os.path.join(self.tmp.name, "images.npy"), mode="w+",
                                                dtype=np.uint8, shape=(len(paths), size, size, 3))
        ok = np.zeros(len(paths), dtype=bool)
        for start, images, good, _ in iter_decoded(paths, size):
            self.images[start:start + len(images)] = images
            ok[start:start + len(images)] = good
        self.valid = np.flatnonzero(ok)
        self.ids = [ids[i] for i in self.valid]

    def subset(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The decoded images (all, or ``rows`` of them); all of them stay a memmap when every image decoded."""
        if rows is None:
            return self.images if len(self.valid) == len(self.images) else self.images[self.valid]
        return self.images[self.valid[rows]]

    def batches(self, device, batch_size: int, rows: np.ndarray | None = None):
        """Float batches (B, 3, S, S) in [0, 1] on ``device``."""
        rows = np.arange(len(self.valid)) if rows is None else rows
        for s in range(0, len(rows), batch_size):
            yield to_float(self.subset(rows[s:s + batch_size]), device)

    def close(self) -> None:
        del self.images
        self.tmp.cleanup()

    def __enter__(self) -> DecodedImages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def canonical(samples: fo.core.collections.SampleCollection, positions: bool = False) -> tuple:
    """``(ids, filepaths)`` of ``samples`` sorted by (hash of id, id): the same order for any view order; with
    ``positions``, also each one's position in the view (an int64 array)."""
    ids, paths = samples.values(["id", "filepath"])
    keys = np.fromiter((rng.sample_key(i) for i in ids), np.int64, len(ids))
    order = np.lexsort((np.array(ids, dtype=str), keys)) if ids else np.zeros(0, np.int64)
    out = [ids[i] for i in order], [paths[i] for i in order]
    return (*out, order) if positions else out


def embeddings_run_config(dataset: fo.Dataset, run_key: str) -> dict:
    """The config of a complete ssl_embeddings run ``run_key``, with a clear error if there is none."""
    return runs.require(dataset, run_key, "ssl_embeddings", "compute_ssl_embeddings")


def load_run_model(dataset: fo.Dataset, run_key: str, device: torch.device) -> tuple[Backbone, AugmentConfig]:
    """The backbone of an embeddings run (the proxy with its projection head) and the augmentations it was
    trained with (SimCLR defaults at the model's input size when the run trained nothing)."""
    from .core.augment import AugmentConfig
    from .core.backbones import load_backbone

    cfg = embeddings_run_config(dataset, run_key)
    net = load_backbone(cfg["backbone"]).to(device).eval()
    train = cfg.get("train") or {}
    aug = AugmentConfig.from_dict({**(train.get("augment") or {}), "size": net.image_size})
    return net, aug


def project_views(net: Backbone, paths: list[str], keys: torch.Tensor, num_views: int, aug: AugmentConfig,
                  seed: int, device: torch.device, batch_size: int = 256, project: bool = True,
                  progress=None, chunk=None) -> tuple[torch.Tensor, np.ndarray, list[str | None]]:
    """(V, N, D) outputs of ``net`` (its SSL projection if ``project``) for V views per image: V = 1 is the
    unaugmented image; V > 1 are independent augmentations keyed by (seed, sample, view).

    ``chunk`` (a :meth:`runs.Run.chunk`): keep each decoded chunk's outputs as it completes, so a re-run after a
    kill projects only the chunks not yet done.

    In a torchrun job each rank projects its contiguous share of ``paths`` and every rank gets all of them.

    Returns:
        ``(z, ok, errors)``: z on ``device`` with zero rows where decoding failed, the success mask, the messages.
    """
    import torch

    from .core import distributed
    from .core.embed import embed_array

    fn = net.project if project else net
    chunks, oks, errors = [], [np.zeros(0, dtype=bool)], []
    mine = distributed.shard(len(paths))
    for start, images, ok, errs in iter_decoded(paths[mine.start:mine.stop], net.image_size,
                                                batch_size=max(batch_size, 256)):
        start += mine.start  # rows of ``paths``
        k = keys[start:start + len(images)]

        def compute(images=images, k=k) -> dict[str, np.ndarray]:  # (V, B, D)
            if num_views == 1:
                return {"z": embed_array(fn, images, net.image_size, device, batch_size)[None]}
            return {"z": np.stack([embed_array(fn, images, net.image_size, device, batch_size, keys=k, aug=aug,
                                               seed=seed, view=v) for v in range(num_views)])}

        name = f"views-{start}-{start + len(images)}-{fingerprint(ok.tolist(), length=8)}"  # which rows decoded
        z = (chunk(name, compute) if chunk else compute())["z"]
        chunks.append(torch.as_tensor(z))
        oks.append(ok)
        errors += errs
        if progress:
            done = start + len(images) - mine.start
            progress(done / len(mine), f"projected {done}/{len(mine)} images")
    if not chunks:  # a rank with no rows (fewer images than processes): an empty block of the right width
        d = embed_array(fn, np.zeros((1, net.image_size, net.image_size, 3), np.uint8), net.image_size, device,
                        1).shape[-1]
        chunks.append(torch.zeros(num_views, 0, d))
    z = distributed.gather_rows(torch.cat(chunks, dim=1), dim=1).to(device)  # (V, N, D)
    ok = distributed.gather_rows(np.concatenate(oks))
    errors = distributed.gather_list(errors)
    z[:, ~torch.as_tensor(ok, device=device)] = 0
    return z, ok, errors


VALUES_CHUNK = 16_384  # samples per read: a chunk's Python objects stay small (50k: 24 MB more at the near-duplicate peak)


def iter_values(samples: fo.core.collections.SampleCollection, field: str, chunk: int = VALUES_CHUNK):
    """``(ids, values)`` of ``field`` over ``samples``, ``chunk`` samples at a time (bounded memory: only one
    chunk's Python objects are alive; a VectorField's values come as numpy arrays)."""
    all_ids = samples.values("id") if samples.count() > chunk else None  # (one read when it fits a chunk)
    for s in range(0, len(all_ids) if all_ids is not None else 1, chunk):
        part = samples if all_ids is None else samples.select(all_ids[s:s + chunk])
        ids, vals = part.values(["id", field], _raw=True)  # a VectorField's stored bytes: decoded below, fast
        cache: dict[bytes, tuple] = {}
        yield ids, [_decode(v, cache) if isinstance(v, bytes) else v for v in vals]


def _decode(data: bytes, cache: dict) -> np.ndarray:
    """A VectorField value as FiftyOne stores it (a zlib-compressed ``.npy``) -> the array. Same result as
    ``fiftyone.core.utils.deserialize_numpy_array``, ~20x faster: the header (dtype, shape) is parsed once per
    distinct header (``cache``) instead of once per sample (measured 0.45 ms a sample there: 7 min at 1M)."""
    raw = zlib.decompress(data)
    if raw[:6] != b"\x93NUMPY" or raw[6] != 1:  # only format 1.0 is decoded here
        return fou.deserialize_numpy_array(data)
    end = 10 + int.from_bytes(raw[8:10], "little")
    head = raw[:end]
    if head not in cache:
        f = io.BytesIO(head)
        np.lib.format.read_magic(f)
        cache[head] = np.lib.format.read_array_header_1_0(f)  # (shape, fortran order, dtype)
    shape, fortran, dtype = cache[head]
    if dtype.hasobject or fortran:
        return fou.deserialize_numpy_array(data)
    return np.frombuffer(raw, dtype=dtype, offset=end).reshape(shape)


def field_vectors(samples: fo.core.collections.SampleCollection, field: str, ids: list[str],
                  chunk: int = VALUES_CHUNK) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Stored vectors of ``field`` in the order of ``ids`` as a float32 array (1, N, D), the mask of usable rows, and why each
    unusable sample was rejected (no value, wrong dimension, NaN / inf, all zero): a bad vector is never
    propagated into a score. The field's run, when one of ours wrote it, must be complete. Read ``chunk``
    samples at a time into one float32 array: memory is the (N, D) array plus one chunk, whatever N is."""
    dataset = samples._dataset
    schema = samples.get_field_schema()
    if field not in schema:
        raise ValueError(f"field {field!r} does not exist")
    if not isinstance(schema[field], (fo.VectorField, fo.ArrayField, fo.ListField)):
        raise ValueError(f"field {field!r} is a {type(schema[field]).__name__}, not a vector field")
    owner = runs.field_owner(dataset, field)
    if owner is not None:
        cfg = runs.get_config(dataset, owner)
        runs.require(dataset, owner, cfg["method"][len(runs.METHOD_PREFIX):], f"the {owner!r} run")
    row = {i: n for n, i in enumerate(ids)}
    z = None  # (N, D) float32, allocated once the common dimension is known
    dims = np.full(len(ids), -1)  # -1: no value
    for part, vals in iter_values(samples, field, chunk):
        if z is None:  # the common dimension of the first chunk with vectors; others are rejected
            known = [len(v) for v in vals if v is not None and np.ndim(v) == 1 and len(v) > 0]
            if not known:
                continue
            dim = max(set(known), key=known.count)
            z = np.zeros((len(ids), dim), dtype=np.float32)
        for i, v in zip(part, vals):
            n = row.get(i)
            if n is None or v is None or np.ndim(v) != 1:
                continue
            dims[n] = len(v)
            if len(v) == dim:
                z[n] = v
    if z is None:
        raise ValueError(f"no sample in the target view has a vector in field {field!r}")
    rejected: dict[str, str] = {}
    for n in np.flatnonzero(dims != dim):
        rejected[ids[n]] = f"no value in {field!r}" if dims[n] < 0 else \
            f"{field!r} has dimension {dims[n]}, expected {dim}"
    ok = dims == dim
    bad = ok & ~valid_rows(z)
    for n in np.flatnonzero(bad):
        rejected[ids[n]] = f"{field!r} holds a NaN / inf or all-zero vector"
    ok &= ~bad
    z[~ok] = 0
    return z[None], ok, rejected


def take_rows(z: np.ndarray | torch.Tensor, rows: np.ndarray) -> np.ndarray | torch.Tensor:
    """Rows ``rows`` of (..., N, D) ``z`` (along the sample dimension); ``z`` itself when they are all N in order:
    no copy of an (N, D) array that may be gigabytes (the usual case: every sample has a vector)."""
    rows = np.asarray(rows)
    if len(rows) == z.shape[-2] and np.array_equal(rows, np.arange(len(rows))):
        return z
    if isinstance(z, np.ndarray):
        return z[..., rows, :]
    import torch

    return z[..., torch.as_tensor(rows, device=z.device), :]


STATS_SIZE = 32  # image statistics are compared at one decoded size (their defaults were chosen at 32 px)


def image_statistics(paths: list[str], sizes: bool = False, progress=None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str | None]]:
    """``core.image_stats`` of every image, decoded batch by batch at ``STATS_SIZE`` (bounded memory), with the
    original (H, W) geometry when ``sizes``; returns (stats of the readable images, success mask, error messages)."""
    from .core.image_stats import image_stats
    from .core.images import image_sizes

    parts, oks, errors = [], [], []
    for start, images, ok, errs in iter_decoded(paths, STATS_SIZE):
        hw = image_sizes(paths[start:start + len(images)])[ok] if sizes else None
        parts.append(image_stats(images[ok], hw))
        oks.append(ok)
        errors += errs
        if progress:
            progress((start + len(images)) / max(len(paths), 1), f"image statistics {start + len(images)}/{len(paths)}")
    ok = np.concatenate(oks) if oks else np.zeros(0, bool)
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return stats, ok, errors


def is_categorical(ftype) -> bool:
    """A Classification, or a string / int / bool field: something whose values name groups."""
    if isinstance(ftype, fo.EmbeddedDocumentField):
        return issubclass(ftype.document_type, fo.Classification)
    return isinstance(ftype, (fo.StringField, fo.IntField, fo.BooleanField))


def categorical_values(samples: fo.core.collections.SampleCollection, field: str, ids: list[str]) -> list:
    """Values of a categorical ``field`` (a Classification's label, or the field itself) in the order of ``ids``
    (None where a sample has none)."""
    schema = samples.get_field_schema()
    if field not in schema:
        raise ValueError(f"field {field!r} does not exist")
    ftype = schema[field]
    if not is_categorical(ftype):
        raise ValueError(f"field {field!r} is a {type(ftype).__name__}; use a Classification, string, int or "
                         "bool field")
    path = f"{field}.label" if isinstance(ftype, fo.EmbeddedDocumentField) else field
    by_id = dict(zip(samples.values("id"), samples.values(path)))
    return [by_id.get(i) for i in ids]
