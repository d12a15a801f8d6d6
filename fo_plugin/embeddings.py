"""``compute_ssl_embeddings``: SSL embeddings as a sample field, recorded as a run.

The default backbone is a SimCLR proxy trained on the target images themselves (offline). Its checkpoint is saved
with the run and reused by later runs and by CL-Core and influence, so a model is never retrained when a run
already holds it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import fiftyone as fo
from fiftyone import ViewField as F

from . import runs
from .core import rng
from .core.augment import AugmentConfig
from .core.backbones import BackboneSpec, load_backbone
from .core.device import resolve_device
from .core.embed import embed_array
from .core.images import iter_decoded
from .core.models import ProxyConfig, save_proxy
from .core.train import TrainConfig, train_proxy
from .features import DecodedImages

METHOD = runs.METHOD_PREFIX + "ssl_embeddings"
Progress = Callable[[float, str], None]


def _noop(_f: float, _label: str) -> None:
    pass


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
    proxy_width: int = 32,
    augment: AugmentConfig | dict | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    run_key: str | None = None,
    retrain: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
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
        batch_size (256): images per forward / training step.
        device ("auto"): ``"auto"``, ``"cpu"`` or ``"cuda"``.
        run_key (None): defaults to ``embeddings_field``.
        retrain (False): train a new proxy even if the run already holds one with the same settings.
        resume (False): after an interrupted run with the same model, embed only the samples it did not reach
            (no embedding and no error yet).
        overwrite (False): allow replacing a field this run did not write.
        progress (None): ``callback(fraction, label)``.

    Returns:
        a summary dict (counts, timings, checkpoint, run key).
    """
    progress = progress or _noop
    dataset = samples._dataset
    run_key = runs.validate_name(run_key or embeddings_field, "run key")
    runs.validate_name(embeddings_field, "embeddings_field")
    if backbone not in ("proxy", "open_clip", "torchvision", "torchscript"):
        raise ValueError(f"unknown backbone {backbone!r}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    if len(samples) == 0:
        raise ValueError("the target view is empty: nothing to embed")
    dev = resolve_device(device)
    aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_dict(augment or {})
    if backbone == "proxy":
        image_size = image_size or aug.size
        aug = AugmentConfig.from_dict({**aug.to_dict(), "size": image_size})
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, augment=aug)
    error_field = embeddings_field + "_error"
    ids, paths = samples.values(["id", "filepath"])
    timings = {}

    old = runs.get_config(dataset, run_key)
    ckpt_path, trained = checkpoint, False
    if backbone == "proxy" and checkpoint is None:
        ckpt_path = os.path.join(runs.run_dir(dataset, run_key), "proxy.pt")
        reuse = (not retrain and old is not None and old.get("train") == _train_dict(train_cfg, proxy_width)
                 and os.path.isfile(ckpt_path))
        trained = not reuse
    spec = BackboneSpec(backbone, model_name, ckpt_path, pretrained, image_size)
    num_done = 0
    if resume and not trained and old is not None and old.get("backbone") == spec.to_dict() \
            and embeddings_field in dataset.get_field_schema():
        todo = samples.match((F(embeddings_field) == None) & (F(error_field) == None))  # noqa: E711
        num_done = len(ids) - len(todo)
        ids, paths = todo.values(["id", "filepath"])

    config = {"embeddings_field": embeddings_field, "error_field": error_field, "backbone": spec.to_dict(),
              "train": _train_dict(train_cfg, proxy_width) if backbone == "proxy" else None,
              "device": str(dev), "batch_size": batch_size, "view_stages": json.dumps(samples.view()._serialize())}
    runs.start_run(dataset, run_key, METHOD, [embeddings_field, error_field], config, overwrite=overwrite)

    runs.ensure_field(dataset, embeddings_field, fo.VectorField)
    runs.ensure_field(dataset, error_field, fo.StringField)
    history = []
    if trained:
        t0 = time.perf_counter()
        history = _train(dataset, ids, paths, train_cfg, proxy_width, dev, ckpt_path,
                         lambda f, s: progress(0.8 * f, s))
        timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    net = load_backbone(spec).to(dev)
    num_ok, num_failed, dim = 0, 0, None
    base = 0.8 if trained else 0.0
    for start, images, ok, errors in iter_decoded(paths, net.image_size, batch_size=max(batch_size, 256)):
        chunk_ids = ids[start:start + len(images)]
        emb = embed_array(net, images[ok], net.image_size, dev, batch_size) if ok.any() else None
        values, j = {}, 0
        for i, sid in enumerate(chunk_ids):
            values[sid] = emb[j] if ok[i] else None
            j += int(ok[i])
        dataset.set_values(embeddings_field, values, key_field="id")
        dataset.set_values(error_field, dict(zip(chunk_ids, errors)), key_field="id")
        num_ok += int(ok.sum())
        num_failed += int((~ok).sum())
        dim = dim or (emb.shape[1] if emb is not None else None)
        done = start + len(images)
        progress(base + (1 - base) * done / max(len(paths), 1), f"embedded {done}/{len(paths)} images")
    timings["embed_s"] = time.perf_counter() - t0

    summary = {"run_key": run_key, "embeddings_field": embeddings_field, "error_field": error_field,
               "num_samples": len(ids) + num_done, "num_embedded": num_ok, "num_failed": num_failed,
               "num_resumed_over": num_done, "embedding_dim": dim,
               "trained_proxy": trained, "checkpoint": ckpt_path, "device": str(dev), "timings": timings,
               "train_history": history}
    runs.finish_run(dataset, run_key, **summary)
    return summary


def _train_dict(cfg: TrainConfig, width: int) -> dict:
    d = asdict(cfg)
    d["augment"] = cfg.augment.to_dict()
    d["proxy_width"] = width
    return d


def _train(dataset, ids, paths, cfg: TrainConfig, width: int, dev, ckpt_path: str, progress: Progress) -> list:
    """Decode the target images once (bounded memory), train, save the checkpoint."""
    with DecodedImages(paths, ids, cfg.augment.size, runs.cache_root()) as pool:
        if len(pool.ids) < 2:
            raise ValueError(f"only {len(pool.ids)} of {len(paths)} images could be decoded: cannot train a proxy")
        model, history = train_proxy(pool.subset(), rng.sample_keys(pool.ids), cfg, dev,
                                     ProxyConfig(width=width, image_size=cfg.augment.size), progress)
    save_proxy(model.cpu(), ckpt_path, extra={"train": _train_dict(cfg, width), "history": history,
                                             "num_train_images": len(pool.ids), "dataset": dataset.name})
    return history
