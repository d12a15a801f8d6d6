"""``compute_clcore``: CL-Core / SAS scores, ranks, latent classes and a budgeted subset, as fields and saved views.

See :mod:`fo_plugin.core.clcore` for the method (Joshi & Mirzasoleiman, ICML 2023) and the two selection modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fiftyone as fo
import numpy as np
import torch
from fiftyone import ViewField as F

from . import runs
from .core import rng
from .core.clcore import MODES, select
from .core.device import resolve_device
from .core.embed import embed_array
from .core.kmeans import estimate_k, kmeans
from .features import canonical, categorical_values, field_vectors, load_run_model, project_views

METHOD = runs.METHOD_PREFIX + "clcore"
LATENT = ("kmeans", "label_field", "clip_zero_shot")


def _noop(_f: float, _label: str) -> None:
    pass


def fields_for(run_key: str, mode: str) -> dict[str, str]:
    """The sample fields a CL-Core run writes (all prefixed with the run key)."""
    names = ("score", "rank", "rank_overall", "class", "selected") + (("gain",) if mode == "greedy" else ())
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
    progress: Callable[[float, str], None] | None = None,
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
        num_classes (None): k for k-means; None estimates it by silhouette.
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
    progress = progress or _noop
    dataset = samples._dataset
    runs.validate_name(run_key, "run key")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if latent not in LATENT:
        raise ValueError(f"latent must be one of {LATENT}, got {latent!r}")
    if latent == "label_field" and not label_field:
        raise ValueError("latent='label_field' needs label_field=<field name>")
    if latent == "clip_zero_shot" and (not class_names or len(set(class_names)) < 2):
        raise ValueError("latent='clip_zero_shot' needs at least two class_names")
    if not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views must be an integer >= 1, got {num_views!r}")
    if embeddings_field and num_views > 1:
        raise ValueError("augmented views need a model: use embeddings_run instead of embeddings_field")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if len(samples) == 0:
        raise ValueError("the target view is empty: nothing to score")
    dev = resolve_device(device)
    t0 = time.perf_counter()

    ids, paths = canonical(samples)
    keys = rng.sample_keys(ids)
    if embeddings_field:
        z, ok = field_vectors(samples, embeddings_field, ids)
        z = z.to(dev)
        source = {"embeddings_field": embeddings_field}
    else:
        net, aug = load_run_model(dataset, embeddings_run, dev)
        z, ok, _ = project_views(net, paths, keys, num_views, aug, seed, dev, batch_size,
                                 progress=lambda f, s: progress(0.5 * f, s))
        source = {"embeddings_run": embeddings_run, "backbone": net.spec.to_dict(), "augment": aug.to_dict()}
    t_proj = time.perf_counter() - t0

    names_of_classes = None
    if latent == "label_field":
        labels, names_of_classes = latent_labels_from_field(samples, label_field, ids)
        ok &= labels >= 0
    elif latent == "clip_zero_shot":
        labels, clip_ok = _clip_zero_shot(paths, class_names, clip_model, clip_pretrained, clip_checkpoint, dev,
                                          batch_size)
        names_of_classes = list(class_names)
        ok &= clip_ok
    valid = np.flatnonzero(ok)
    if len(valid) == 0:
        raise ValueError("no sample in the target view has a usable embedding" +
                         (" and label" if latent == "label_field" else ""))
    zv = z[:, torch.as_tensor(valid, device=dev)]
    if latent == "kmeans":
        pooled = torch.nn.functional.normalize(zv.float(), dim=-1).mean(0)
        k = num_classes or estimate_k(pooled, seed)
        progress(0.55, f"k-means with k={k}")
        labels = np.full(len(ids), -1)
        labels[valid] = kmeans(pooled, k, seed)[0].cpu().numpy()
    n_keep = budget_count(budget, len(valid))

    names = fields_for(run_key, mode)
    clip = ({"model": clip_model, "pretrained": clip_pretrained, "checkpoint": clip_checkpoint,
             "class_names": list(class_names)} if latent == "clip_zero_shot" else None)
    config = {"embeddings": source, "latent": latent, "num_classes": num_classes, "label_field": label_field,
              "clip": clip,
              "num_views": num_views, "budget": budget, "mode": mode, "seed": seed, "tile": tile,
              "device": str(dev), "saved_views": []}
    runs.start_run(dataset, run_key, METHOD, list(names.values()), config, overwrite=overwrite)
    for f in names.values():  # a re-run replaces its own fields (their types may change with the latent source)
        if f in dataset.get_field_schema():
            dataset.delete_sample_field(f)

    t1 = time.perf_counter()
    out = select(zv, labels[valid], n_keep, mode, tile, progress=lambda f, s: progress(0.6 + 0.35 * f, s))
    t_sel = time.perf_counter() - t1

    vid = [ids[i] for i in valid]
    cls = labels[valid]
    cls_values = [names_of_classes[c] for c in cls] if names_of_classes is not None else [int(c) for c in cls]
    columns = {"score": out["score"].tolist(), "rank": out["rank"].tolist(),
               "rank_overall": out["rank_overall"].tolist(), "class": cls_values,
               "selected": out["selected"].tolist()}
    if mode == "greedy":
        columns["gain"] = out["gain"].tolist()
    for k, values in columns.items():
        dataset.set_values(names[k], dict(zip(vid, values)), key_field="id")

    frac = n_keep / len(valid)
    views = _save_views(dataset, run_key, names, frac)
    cfg = dataset.get_run_info(run_key).config
    cfg.saved_views = views
    dataset.update_run_config(run_key, cfg)

    classes = names_of_classes or range(int(cls.max()) + 1)
    sizes = {str(c): int((cls == i).sum()) for i, c in enumerate(classes)}
    kept = {str(c): int(out["selected"][cls == i].sum()) for i, c in enumerate(classes)}
    summary = {"run_key": run_key, "fields": list(names.values()), "num_samples": len(ids),
               "num_scored": len(valid), "num_skipped": int(len(ids) - len(valid)), "num_selected": int(n_keep),
               "num_classes": len(sizes), "class_sizes": sizes, "class_selected": kept, "saved_views": views,
               "mode": mode, "device": str(dev), "timings": {"project_s": t_proj, "select_s": t_sel}}
    runs.finish_run(dataset, run_key, **summary)
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


def _save_views(dataset: fo.Dataset, run_key: str, names: dict, frac: float) -> list[str]:
    """"CL-Core subset (X%)" (the selection, best first) and "CL-Core least valuable" (the rest, worst first)."""
    suffix = "" if run_key == "clcore" else f" [{run_key}]"
    keep_name = f"CL-Core subset ({100 * frac:.0f}%){suffix}"
    drop_name = f"CL-Core least valuable{suffix}"
    for old in runs.get_config(dataset, run_key).get("saved_views", []):
        if dataset.has_saved_view(old):
            dataset.delete_saved_view(old)
    keep = dataset.match(F(names["selected"]) == True).sort_by(names["rank_overall"])
    drop = dataset.match(F(names["selected"]) == False).sort_by(names["rank_overall"], reverse=True)
    for name, view in ((keep_name, keep), (drop_name, drop)):
        dataset.save_view(name, view, description=f"CL-Core run {run_key!r}", overwrite=True)
    return [keep_name, drop_name]
