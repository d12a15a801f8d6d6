"""``compute_clcore``: CL-Core / SAS scores, ranks, latent classes and a budgeted subset, as fields and saved views.

See :mod:`fo_plugin.core.clcore` for the method (Joshi & Mirzasoleiman, ICML 2023) and the two selection modes.
"""

from __future__ import annotations

import time

import fiftyone as fo
import numpy as np
import torch
from fiftyone import ViewField as F

from . import params, runs
from .core import distributed, rng
from .core.clcore import MODES, select
from .core.device import resolve_device
from .core.embed import embed_array
from .core.kmeans import estimate_k, kmeans
from .features import canonical, categorical_values, field_vectors, load_run_model, project_views, take_rows
from .progress import ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "clcore"
LATENT = ("kmeans", "label_field", "clip_zero_shot")


def fields_for(run_key: str, mode: str) -> dict[str, str]:
    """The sample fields a CL-Core run writes (all prefixed with the run key)."""
    names = ("score", "rank", "rank_overall", "class", "selected", "error") + (("gain",) if mode == "greedy" else ())
    return {k: f"{run_key}_{k}" for k in names}


def budget_count(budget: float, n: int) -> int:
    """A fraction in (0, 1] of ``n``, or an absolute count >= 1."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"budget must be a fraction in (0, 1] or a positive count, got {budget!r}")
    if isinstance(budget, float) and budget <= 1:
        return int(round(budget * n))
    if float(budget) != int(budget):
        raise ValueError(f"a budget above 1 is a count and must be a whole number, got {budget!r}")
    return min(int(budget), n)


def latent_labels_from_field(samples, field: str, ids: list[str]) -> tuple[np.ndarray, list]:
    """Latent classes from a user's categorical field: (class index per sample, -1 where none; class names)."""
    vals = categorical_values(samples, field, ids)
    names = sorted({v for v in vals if v is not None}, key=str)
    index = {v: k for k, v in enumerate(names)}
    return np.array([index.get(v, -1) for v in vals]), names


def compute_clcore(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "clcore",
    *,
    embeddings_run: str | None = "ssl_embedding",
    embeddings_field: str | None = None,
    latent: str = "kmeans",
    num_classes: int | None = None,
    label_field: str | None = None,
    class_names: list[str] | None = None,
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    clip_checkpoint: str | None = None,
    num_views: int = 1,
    budget: float = 0.8,
    mode: str = "released",
    seed: int = 0,
    batch_size: int = 256,
    tile: int = 2048,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> dict:
    """Score ``samples`` by expected augmentation similarity within latent classes and keep a budgeted subset.

    Args:
        samples: a dataset or view.
        run_key ("clcore"): the run's name and the prefix of its fields (``<key>_score``, ``_rank``,
            ``_rank_overall``, ``_class``, ``_selected``, and ``_gain`` in greedy mode).
        embeddings_run ("ssl_embedding"): an ssl_embeddings run whose model gives f (the proxy's projection head;
            the features of other backbones).
        embeddings_field (None): use a stored vector field as f instead (one view only).
        latent ("kmeans"): ``"kmeans"`` on f, ``"label_field"`` (an existing classification / string field), or
            ``"clip_zero_shot"`` (CLIP zero-shot over ``class_names``, the authors' ``clip_0shot_approx``).
        num_classes (None): k for k-means (>= 2); None or 0 estimates it by silhouette.
        label_field (None): the field for ``latent="label_field"``.
        class_names (None), clip_model ("ViT-B-32"), clip_pretrained ("openai"), clip_checkpoint (None): the classes
            and the open_clip model for ``latent="clip_zero_shot"`` (offline: a local checkpoint file).
        num_views (1): augmented views per image for s_ij; 1 = unaugmented (the authors' default).
        budget (0.8): fraction (<= 1) or count of samples to keep, stratified by latent class.
        mode ("released"): ``"released"`` (authors' code: sort by score) or ``"greedy"`` (paper objective).
        seed (0): k-means and augmentation seed.
        tile (2048): block side of the similarity computation (memory per block: tile^2 floats).
        device ("auto"), batch_size (256), overwrite (False), progress (None): as elsewhere.

    Returns:
        a summary dict.
    """
    dataset = samples._dataset
    runs.validate_run_key(run_key)
    params.choice("mode", mode, MODES)
    params.choice("latent", latent, LATENT)
    num_classes = params.integer("num_classes", num_classes, 0, none_ok=True) or None  # 0 / None: estimate k
    if num_classes == 1:
        raise ValueError("num_classes must be 0 (estimate it) or at least 2, got 1")
    if num_classes is not None and num_classes > len(samples):
        raise ValueError(f"num_classes={num_classes} is more than the {len(samples)} samples in the target view")
    num_views = params.integer("num_views", num_views, 1)
    seed = params.integer("seed", seed, 0)
    batch_size = params.integer("batch_size", batch_size, 1)
    tile = params.integer("tile", tile, 16)
    if latent == "label_field" and not label_field:
        raise ValueError("latent='label_field' needs label_field=<field name>")
    if latent == "clip_zero_shot":
        if not class_names or len(set(class_names)) < 2:
            raise ValueError("latent='clip_zero_shot' needs at least two class_names")
        if not clip_checkpoint and not clip_pretrained:
            raise ValueError("latent='clip_zero_shot' needs CLIP weights (clip_checkpoint=<file> or a cached "
                             "clip_pretrained tag): a randomly initialised CLIP gives meaningless classes")
    if embeddings_field and num_views > 1:
        raise ValueError("augmented views need a model: use embeddings_run instead of embeddings_field")
    budget_count(budget, 1)  # type and range only; the count is taken of the scored samples
    dev = resolve_device(device)
    ids, paths = canonical(samples)
    if embeddings_field:
        source = {"embeddings_field": embeddings_field}
        source_id = source
    else:
        ecfg = runs.require(dataset, embeddings_run, "ssl_embeddings", "compute_ssl_embeddings")
        source = {"embeddings_run": embeddings_run}
        source_id = ecfg.get("fingerprint")
    if latent == "label_field":
        categorical_values(samples, label_field, ids[:1])  # the field exists and is categorical
    clip = ({"model": clip_model, "pretrained": clip_pretrained, "checkpoint": clip_checkpoint,
             "class_names": list(class_names)} if latent == "clip_zero_shot" else None)
    config = {"embeddings": source, "latent": latent, "num_classes": num_classes, "label_field": label_field,
              "clip": clip, "num_views": num_views, "budget": budget, "mode": mode, "seed": seed, "tile": tile,
              "device": str(dev)}
    names = fields_for(run_key, mode)
    class_type = fo.IntField if latent == "kmeans" else fo.StringField
    types = {"score": fo.FloatField, "rank": fo.IntField, "rank_overall": fo.IntField, "class": class_type,
             "selected": fo.BooleanField, "error": fo.StringField, "gain": fo.FloatField}
    run = runs.Run(samples, run_key, "clcore", {k: (v, types[k], {}) for k, v in names.items()}, config,
                   fingerprint_parts=({k: v for k, v in config.items() if k != "device"}, source_id, ids),
                   overwrite=overwrite, minimum=2, what="CL-Core")
    with run, reporter(progress, "CL-Core") as progress:
        t0 = time.perf_counter()
        keys = rng.sample_keys(ids)
        errors: dict[str, str] = {}
        if embeddings_field:
            z, ok, errors = field_vectors(samples, embeddings_field, ids)
            z = torch.as_tensor(z).to(dev)
        else:
            net, aug = load_run_model(dataset, embeddings_run, dev)
            z, ok, errs = project_views(net, paths, keys, num_views, aug, seed, dev, batch_size,
                                        progress=lambda f, s: progress(0.5 * f, s), chunk=run.chunk)
            errors = {i: e for i, e in zip(ids, errs) if e}
            source.update(backbone=net.spec.to_dict(), augment=aug.to_dict())
        t_proj = time.perf_counter() - t0

        names_of_classes = None
        if latent == "label_field":
            labels, names_of_classes = latent_labels_from_field(samples, label_field, ids)
            for n in np.flatnonzero(ok & (labels < 0)):
                errors[ids[n]] = f"no value in {label_field!r}"
            ok &= labels >= 0
        elif latent == "clip_zero_shot":
            labels, clip_ok = _clip_zero_shot(paths, class_names, clip_model, clip_pretrained, clip_checkpoint,
                                              dev, batch_size)
            names_of_classes = list(class_names)
            ok &= clip_ok
        valid = np.flatnonzero(ok)
        if len(valid) < 2:
            raise ValueError(f"CL-Core needs at least 2 samples with a usable embedding"
                             f"{' and label' if latent == 'label_field' else ''}; {len(valid)} of {len(ids)} have one")
        zv = take_rows(z, valid)
        if latent == "kmeans":
            pooled = torch.nn.functional.normalize(zv.float(), dim=-1).mean(0)
            if num_classes is not None and num_classes > len(valid):
                raise ValueError(f"num_classes={num_classes} is more than the {len(valid)} samples scored")
            k = num_classes or estimate_k(pooled, seed)
            progress(0.55, f"k-means with k={k}")
            labels = np.full(len(ids), -1)
            labels[valid] = kmeans(pooled, k, seed)[0].cpu().numpy()
        labels = distributed.broadcast(labels)  # rank 0's classes on every rank (k-means on CUDA may differ)
        n_keep = budget_count(budget, len(valid))

        t1 = time.perf_counter()
        out = select(zv, labels[valid], n_keep, mode, tile, progress=lambda f, s: progress(0.6 + 0.35 * f, s))
        t_sel = time.perf_counter() - t1

        vid = [ids[i] for i in valid]
        cls = labels[valid]
        cls_values = [str(names_of_classes[c]) for c in cls] if names_of_classes is not None else cls.tolist()
        columns = {"score": out["score"].tolist(), "rank": out["rank"].tolist(),
                   "rank_overall": out["rank_overall"].tolist(), "class": cls_values,
                   "selected": out["selected"].tolist()}
        if mode == "greedy":
            columns["gain"] = out["gain"].tolist()
        run.write_columns(vid, columns)  # one update per sample for all fields
        scored = set(vid)
        bad = [i for i in ids if i not in scored]  # (a set built once: this was quadratic in N)
        run.write("error", bad, [errors.get(i, "could not be scored") for i in bad])

        frac = n_keep / len(valid)
        suffix = "" if run_key == "clcore" else f" [{run_key}]"
        keep_name, drop_name = f"CL-Core subset ({100 * frac:.0f}%){suffix}", f"CL-Core least valuable{suffix}"
        sel, rank = names["selected"], names["rank_overall"]
        run.save_view(keep_name, lambda ds: ds.match(F(sel) == True).sort_by(rank), f"CL-Core run {run_key!r}")
        run.save_view(drop_name, lambda ds: ds.match(F(sel) == False).sort_by(rank, reverse=True),
                      f"CL-Core run {run_key!r}, least valuable first")

        classes = names_of_classes or range(int(cls.max()) + 1)
        sizes = {str(c): int((cls == i).sum()) for i, c in enumerate(classes)}
        kept = {str(c): int(out["selected"][cls == i].sum()) for i, c in enumerate(classes)}
        summary = run.commit(fields=list(names.values()), num_samples=len(ids), num_scored=len(valid),
                             num_skipped=int(len(ids) - len(valid)), num_selected=int(n_keep),
                             num_classes=len(sizes), class_sizes=sizes, class_selected=kept,
                             saved_views=[keep_name, drop_name], mode=mode, device=str(dev),
                             timings={"project_s": t_proj, "select_s": t_sel})
    progress(1.0, f"kept {n_keep} of {len(valid)}")
    return summary


def _clip_zero_shot(paths, class_names, model, pretrained, checkpoint, dev, batch_size):
    """CLIP zero-shot class of every image (-1 where it cannot be decoded) and the success mask."""
    from .core.backbones import BackboneSpec, load_backbone
    from .core.images import iter_decoded
    from .core.zeroshot import class_text_embeddings, zero_shot_labels

    clip = load_backbone(BackboneSpec("open_clip", model, checkpoint, pretrained if not checkpoint else None))
    clip = clip.to(dev).eval()
    text = class_text_embeddings(clip, list(class_names), dev)
    labels, oks = [], []
    for _, images, ok, _ in iter_decoded(paths, clip.image_size, batch_size=max(batch_size, 64)):
        feats = torch.as_tensor(embed_array(clip, images, clip.image_size, dev, batch_size)).to(dev)
        lab = zero_shot_labels(feats, text).cpu().numpy()
        labels.append(np.where(ok, lab, -1))
        oks.append(ok)
    return np.concatenate(labels), np.concatenate(oks)
