"""``compute_ssl_embeddings``: SSL embeddings as a sample field, recorded as a run.

The default backbone is a SimCLR proxy trained on the target images themselves (offline). Its checkpoint is saved
with the run and reused by later runs and by CL-Core and influence, so a model is never retrained when a run
already holds it. By default the run also registers two FiftyOne Brain runs over its field, so the App's own tools use
our embeddings: a cosine similarity index (``<run key>_sim``, sklearn backend: "sort by similarity" on a selected
image) and a 2-D map (``<run key>_map``: the Embeddings panel); they belong to the run (replaced by a re-run,
deleted with it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import fiftyone as fo
import numpy as np

from . import params, runs
from .core import distributed, rng
from .core.augment import AugmentConfig
from .core.backbones import BackboneSpec, load_backbone
from .core.device import resolve_device, resolve_precision
from .core.embed import embed_array
from .core.embedding_map import embedding_map, resolve_method
from .core.hashing import file_hash
from .core.images import iter_decoded
from .core.models import ProxyConfig, save_proxy
from .core.train import TrainConfig, train_proxy
from .core.vectors import valid_rows
from .features import DecodedImages, canonical, field_vectors
from .progress import Progress, ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "ssl_embeddings"
BACKBONES = ("proxy", "open_clip", "torchvision", "torchscript")
TRAIN_STATE = "train_state.pt"  # per-epoch training state in the run's artifact folder (resumable training)
SIMILARITY_SUFFIX, MAP_SUFFIX = "_sim", "_map"  # Brain keys of a run's similarity index and embeddings map


def compute_ssl_embeddings(
    samples: fo.core.collections.SampleCollection,
    embeddings_field: str = "ssl_embedding",
    backbone: str = "proxy",
    *,
    model_name: str | None = None,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    image_size: int | None = None,
    epochs: int = 10,
    train_limit: int | None = None,
    proxy_width: int = 32,
    augment: AugmentConfig | dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    run_key: str | None = None,
    retrain: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    similarity_index: bool = True,
    embeddings_map: bool = True,
    map_method: str = "auto",
    progress: ProgressArg = None,
) -> dict:
    """Compute SSL embeddings for ``samples`` and store them in ``embeddings_field``.

    Args:
        samples: a dataset or view.
        embeddings_field ("ssl_embedding"): the vector field to write; failures go to ``<field>_error``.
        backbone ("proxy"): ``"proxy"`` (SimCLR proxy trained here, or ``checkpoint``), ``"open_clip"``,
            ``"torchvision"`` or ``"torchscript"`` (see :mod:`fo_plugin.core.backbones`).
        model_name (None): open_clip / torchvision architecture.
        checkpoint (None): weights file; for ``"proxy"`` an existing proxy checkpoint skips training.
        pretrained (None): open_clip pretrained tag.
        image_size (None): input side (proxy default 32).
        epochs (10), proxy_width (32), augment (SimCLR at s=0.5), seed (0): proxy training.
        train_limit (None): train the proxy on at most this many images of ``samples`` (a random subset drawn with
            ``seed``) and embed them all. Training costs epochs x images; on a large collection on CPU a proxy
            trained on 10,000 images is minutes instead of hours (``bench/bench_leaky_cifar.py`` embeds all 60,000
            CIFAR-10 images with one). None: all of them.
        batch_size (256): images per forward / training step.
        device ("auto"): ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision ("auto"): ``"fp32"``, ``"bf16"`` (autocast, on CPU as on CUDA) or ``"auto"`` (bf16 on CUDA, fp32 on
            CPU); the resolved value is part of the run's fingerprint (it changes the weights and embeddings).
        run_key (None): defaults to ``embeddings_field``.
        retrain (False): train a new proxy even if the run already holds one for the same images and settings.
        resume (True): after an interrupted attempt with identical inputs (model, images, settings), keep what it
            embedded and embed only the rest (an interrupted proxy training resumes after its last epoch).
        overwrite (False): allow replacing a field this run did not write.
        similarity_index (True): register a FiftyOne Brain cosine similarity index (sklearn backend, offline) on the
            field as Brain key ``<run_key>_sim``, so the App's "sort by similarity" uses these embeddings.
        embeddings_map (True): register a 2-D map of the embeddings as Brain key ``<run_key>_map`` for the App's
            Embeddings panel (:func:`fo_plugin.core.embedding_map.embedding_map`: fitted on at most 50,000 samples).
        map_method ("auto"): ``"umap"`` (needs ``umap-learn``), ``"pca"``, or ``"auto"`` (UMAP where importable).
        progress (None): True or False for a progress bar (None: FiftyOne's ``show_progress_bars``), or a
            ``callback(fraction, label)`` (what the operators pass).

    Returns:
        a summary dict (counts, timings, checkpoint, run key).
    """
    dataset = samples._dataset
    run_key = runs.validate_run_key(run_key or embeddings_field)
    runs.validate_name(embeddings_field, "embeddings_field")
    params.choice("backbone", backbone, BACKBONES)
    epochs = params.integer("epochs", epochs, 1)
    train_limit = params.integer("train_limit", train_limit, 2, none_ok=True)
    proxy_width = params.integer("proxy_width", proxy_width, 4)
    seed = params.integer("seed", seed, 0)
    batch_size = params.integer("batch_size", batch_size, 2)
    image_size = params.integer("image_size", image_size, 8, none_ok=True)
    if backbone == "open_clip" and not (checkpoint or pretrained):
        raise ValueError("an open_clip backbone needs weights: a pretrained tag (cached) or checkpoint=<file>; "
                         "a randomly initialised CLIP gives meaningless embeddings")
    if backbone in ("torchvision", "torchscript") and not checkpoint:
        raise ValueError(f"a {backbone} backbone needs checkpoint=<weights file>")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise ValueError(f"checkpoint file not found: {checkpoint}")
    map_method = resolve_method(map_method) if embeddings_map else None
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_dict(augment or {})
    if backbone == "proxy":
        image_size = image_size or aug.size
        aug = AugmentConfig.from_dict({**aug.to_dict(), "size": image_size})
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, augment=aug, precision=precision)
    error_field = embeddings_field + "_error"
    training = backbone == "proxy" and checkpoint is None
    ids, paths = canonical(samples)
    train = _train_dict(train_cfg, proxy_width) if training else None
    tsel = _train_subset(len(ids), train_limit, seed) if training else None
    if tsel is not None:
        train["train_limit"] = train_limit  # only when it drops images: a run over fewer keeps its fingerprint
    model_id = train if training else {**BackboneSpec(backbone, model_name, None, pretrained, image_size).to_dict(),
                                       "weights": file_hash(checkpoint) if checkpoint else None,
                                       "precision": precision}
    config = {"embeddings_field": embeddings_field, "error_field": error_field, "train": train,
              "device": str(dev), "precision": precision, "batch_size": batch_size,
              "view_stages": json.dumps(samples.view()._serialize()),
              "similarity_index": bool(similarity_index), "map_method": map_method}
    run = runs.Run(samples, run_key, "ssl_embeddings",
                   {"embedding": (embeddings_field, fo.VectorField, {}), "error": (error_field, fo.StringField, {})},
                   config, fingerprint_parts=(model_id, ids), overwrite=overwrite, minimum=2 if training else 1,
                   what="SSL embeddings" + (" (proxy training)" if training else ""), resumable=True)
    timings = {}
    brain_keys = {}
    if similarity_index:
        brain_keys["similarity_brain_key"] = run_key + SIMILARITY_SUFFIX
        run.brain_run(brain_keys["similarity_brain_key"],
                      lambda: _timed(timings, "similarity_s", progress, "building the similarity index",
                                     register_similarity, samples, embeddings_field, run_key + SIMILARITY_SUFFIX))
    if map_method:
        brain_keys["map_brain_key"] = run_key + MAP_SUFFIX
        run.brain_run(brain_keys["map_brain_key"],
                      lambda: _timed(timings, "map_s", progress, f"computing the embeddings map ({map_method})",
                                     register_map, samples, embeddings_field, run_key + MAP_SUFFIX, map_method, seed))
    with run, reporter(progress, "SSL embeddings") as progress:
        ckpt_path, trained, history = checkpoint, False, []
        if training:
            ckpt_path = os.path.join(run.artifacts, "proxy.pt")
            state = os.path.join(run.artifacts, TRAIN_STATE)
            for path in ((ckpt_path, state) if retrain else ()) + ((state,) if not resume else ()):
                if run.primary and os.path.isfile(path):
                    os.remove(path)  # ours: a new training from the first epoch
            if distributed.broadcast(not os.path.isfile(ckpt_path)):  # rank 0's answer: every rank trains or none
                t0 = time.perf_counter()
                tids, tpaths = (ids, paths) if tsel is None else ([ids[n] for n in tsel], [paths[n] for n in tsel])
                history = _train(dataset, tids, tpaths, train_cfg, proxy_width, dev, ckpt_path, run.artifacts,
                                 lambda f, s: progress(0.8 * f, s))
                timings["train_s"] = time.perf_counter() - t0
                trained = True
        spec = BackboneSpec(backbone, model_name, ckpt_path, pretrained, image_size)
        done, resumed_ok = {}, 0
        if resume and run.resumed:  # an interrupted attempt with identical inputs: keep what it embedded
            embedded = run.staged_values("embedding")
            done, resumed_ok = {**run.staged_values("error"), **embedded}, len(embedded)
        todo = [n for n, i in enumerate(ids) if i not in done]

        t0 = time.perf_counter()
        net = load_backbone(spec).to(dev)
        num_ok, dim = 0, None
        base = 0.8 if trained else 0.0
        tpaths = [paths[n] for n in todo]
        # a written chunk is `per` images from each rank (all of them in one process): a rank decodes its parts of
        # every chunk as one stream, so decoding the next batch overlaps the forward pass of this one
        per = max(batch_size, 256)
        step = per * distributed.context().world
        starts = range(0, len(tpaths), step)
        parts = [distributed.shard(min(step, len(tpaths) - s)) for s in starts]  # `per` each, but in the last chunk
        decoded = iter_decoded([p for s, part in zip(starts, parts) for p in tpaths[s + part.start:s + part.stop]],
                               net.image_size, batch_size=per)
        for start, part in zip(starts, parts):
            chunk_ids = [ids[n] for n in todo[start:start + step]]
            rows, errors = _embed_batch(net, *next(decoded)[1:], dev, batch_size, precision) if len(part) else ([], [])
            rows, errors = distributed.gather_list(rows), distributed.gather_list(errors)  # the chunk, in order
            run.write("embedding", chunk_ids, rows)
            run.write("error", chunk_ids, errors)
            num_ok += sum(r is not None for r in rows)
            dim = dim or next((len(r) for r in rows if r is not None), None)
            progress(base + (1 - base) * (start + len(chunk_ids)) / max(len(tpaths), 1),
                     f"embedded {start + len(chunk_ids)}/{len(tpaths)} images")
        decoded.close()
        timings["embed_s"] = time.perf_counter() - t0
        num_ok += resumed_ok
        run.config["backbone"] = spec.to_dict()
        return run.commit(embeddings_field=embeddings_field, error_field=error_field, num_samples=len(ids),
                          num_embedded=num_ok, num_failed=len(ids) - num_ok, num_resumed_over=len(done),
                          embedding_dim=dim, trained_proxy=trained, checkpoint=ckpt_path, device=str(dev),
                          timings=timings, train_history=history, **brain_keys)


def _embed_batch(net, images: np.ndarray, ok: np.ndarray, errs: list, dev, batch_size: int, precision: str
                 ) -> tuple[list, list]:
    """Embeddings of a decoded batch (images (B, S, S, 3), success mask, decoding errors): one (D,) float32 array
    per image (None where it failed) and one error message per image (None where it worked)."""
    emb, good = None, ok.copy()
    if ok.any():
        got = embed_array(net, images[ok], net.image_size, dev, batch_size, precision=precision)
        emb = np.zeros((len(images), got.shape[1]), np.float32)
        emb[ok] = got
        good &= valid_rows(emb)
    rows = [emb[i] if good[i] else None for i in range(len(images))]
    return rows, [e if e or g else "the model gave a non-finite or all-zero embedding" for e, g in zip(errs, good)]


def register_similarity(samples, field: str, brain_key: str):
    """A FiftyOne Brain cosine similarity index over vector ``field`` (sklearn backend: offline, exact); samples
    without a vector are left out of the index."""
    import fiftyone.brain as fob

    return fob.compute_similarity(samples, embeddings=field, brain_key=brain_key, backend="sklearn",
                                  metric="cosine", progress=False)


def register_map(samples, field: str, brain_key: str, method: str = "auto", seed: int = 0):
    """A FiftyOne Brain visualization of vector ``field`` for the App's Embeddings panel: 2-D points from
    :func:`~fo_plugin.core.embedding_map.embedding_map` (one per sample with a usable vector), registered as
    precomputed points."""
    import fiftyone.brain as fob

    view = samples.exists(field)
    ids = view.values("id")
    x, ok, _ = field_vectors(view, field, ids)  # (1, N, D)
    if ok.sum() < 2:
        raise ValueError(f"an embeddings map needs at least 2 samples with a vector in {field!r}")
    if not ok.all():
        view = view.select([i for i, good in zip(ids, ok) if good], ordered=True)
    points = embedding_map(x[0][ok], method, seed=seed)  # (N_ok, 2)
    return fob.compute_visualization(view, points=points, brain_key=brain_key, progress=False)


def _timed(timings: dict, name: str, progress: Progress, label: str, fn, *args):
    progress(1.0, label)
    t0 = time.perf_counter()
    out = fn(*args)
    timings[name] = time.perf_counter() - t0
    return out


def _train_dict(cfg: TrainConfig, width: int) -> dict:
    d = asdict(cfg)
    d["augment"] = cfg.augment.to_dict()
    d["proxy_width"] = width
    return d


def _train_subset(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Positions of the ``limit`` images (of ``n``, in canonical order) the proxy trains on; None: all."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _train(dataset, ids, paths, cfg: TrainConfig, width: int, dev, ckpt_path: str, folder: str,
           progress: Progress) -> list:
    """Decode the target images once (bounded memory), train (resuming an interrupted training of the same
    inputs from its last epoch), save the checkpoint atomically."""
    with DecodedImages(paths, ids, cfg.augment.size, folder) as pool:
        if len(pool.ids) < 2:
            raise ValueError(f"proxy training needs at least 2 readable images; {len(pool.ids)} of {len(paths)} "
                             "could be decoded (see the error field after embedding)")
        model, history = train_proxy(pool.subset(), rng.sample_keys(pool.ids), cfg, dev,
                                     ProxyConfig(width=width, image_size=cfg.augment.size), progress,
                                     state_path=os.path.join(folder, TRAIN_STATE))
    if distributed.is_primary():  # the ranks hold the same weights; the others read this file after the barrier
        save_proxy(model.cpu(), ckpt_path + ".tmp", extra={"train": _train_dict(cfg, width), "history": history,
                                                          "num_train_images": len(pool.ids), "dataset": dataset.name})
        os.replace(ckpt_path + ".tmp", ckpt_path)
    distributed.barrier()
    return history
