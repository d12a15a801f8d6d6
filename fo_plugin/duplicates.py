"""``find_near_duplicates``: near-duplicate groups from SSL embeddings, confirmed by pixel (and optionally
influence-gradient) similarity, with one representative kept per group. Nothing is deleted: ``_keep`` flags,
tags and saved views say what an export would drop."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import fiftyone as fo
import numpy as np
import torch
from fiftyone import ViewField as F

from . import runs
from .core.duplicates import find_duplicates, pixel_signatures, representatives
from .core.images import iter_decoded
from .features import canonical, field_vectors

METHOD = runs.METHOD_PREFIX + "near_duplicates"
POLICIES = ("clcore", "influence", "largest_file", "first")


def duplicate_fields(run_key: str) -> dict[str, str]:
    return {k: f"{run_key}_{k}" for k in ("group", "keep", "score")}


def _names(run_key: str) -> tuple[str, str, str, str]:
    """(duplicate tag, representative tag, duplicates view, representatives view) of a run."""
    if run_key == "dups":
        return "near_duplicate", "duplicate_representative", "near duplicates", "duplicate representatives"
    return (f"{run_key}:near_duplicate", f"{run_key}:representative", f"near duplicates [{run_key}]",
            f"duplicate representatives [{run_key}]")


def _priority(samples, ids: list[str], paths: list[str], policy: str, clcore_run: str, influence_run: str
              ) -> np.ndarray:
    """Higher is kept: CL-Core score, minus self-influence, file size, or earlier position in the view."""
    if policy == "first":
        pos = {i: p for p, i in enumerate(samples.values("id"))}
        return -np.array([pos[i] for i in ids], dtype=float)
    if policy == "largest_file":
        return np.array([os.path.getsize(p) if os.path.exists(p) else -1 for p in paths], dtype=float)
    field = f"{clcore_run}_score" if policy == "clcore" else f"{influence_run}_self_influence"
    if field not in samples.get_field_schema():
        raise ValueError(f"keep={policy!r} needs field {field!r}: run "
                         f"{'compute_clcore' if policy == 'clcore' else 'compute_ssl_influence'} first")
    by_id = dict(zip(samples.values("id"), samples.values(field)))
    vals = np.array([by_id.get(i) if by_id.get(i) is not None else np.nan for i in ids], dtype=float)
    vals = vals if policy == "clcore" else -vals
    return np.nan_to_num(vals, nan=-np.inf)


def find_near_duplicates(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "dups",
    *,
    embeddings_field: str = "ssl_embedding",
    k: int = 10,
    threshold: float = 0.8,
    pixel_threshold: float | None = 0.8,
    detail_threshold: float | None = 0.5,
    influence_run: str | None = None,
    influence_threshold: float = 0.9,
    mutual: bool = False,
    keep: str = "first",
    clcore_run: str = "clcore",
    overwrite: bool = False,
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Group near-duplicates and flag one representative per group.

    A pair is reported when the two samples are among each other's ``k`` nearest SSL neighbours with cosine
    >= ``threshold`` and every confirming signal agrees: the correlation of their 32x32 grayscale thumbnails
    >= ``pixel_threshold`` (the layout) and of the thumbnails' fine detail >= ``detail_threshold`` (None skips a
    check; see :mod:`fo_plugin.core.duplicates`), and, with ``influence_run``, the cosine of their influence
    gradients >= ``influence_threshold``.

    Args:
        samples: a dataset or view.
        run_key ("dups"): names the run; fields ``<key>_group`` (None: no duplicate), ``<key>_keep`` (False: a
            duplicate an export would drop), ``<key>_score`` (best SSL cosine to another sample).
        embeddings_field ("ssl_embedding"): the embeddings to search.
        keep ("first"): which member represents a group: ``"clcore"`` (highest CL-Core score of ``clcore_run``),
            ``"influence"`` (lowest self-influence of ``influence_run``), ``"largest_file"`` or ``"first"`` (first
            in the view's order).
        mutual (False): require mutual nearest neighbours.

    Returns:
        a summary dict; the pairs (ids, cosines) are in the run results.
    """
    progress = progress or (lambda f, s: None)
    dataset = samples._dataset
    runs.validate_name(run_key, "run key")
    if keep not in POLICIES:
        raise ValueError(f"keep must be one of {POLICIES}, got {keep!r}")
    if not 0 < threshold <= 1 or any(t is not None and not -1 <= t <= 1
                                     for t in (pixel_threshold, detail_threshold, influence_threshold)):
        raise ValueError("thresholds are cosine similarities: threshold in (0, 1], the others in [-1, 1]")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(samples) == 0:
        raise ValueError("the target view is empty")
    t0 = time.perf_counter()
    ids, paths = canonical(samples)
    z, ok = field_vectors(samples, embeddings_field, ids)
    valid = np.flatnonzero(ok)
    vids, vpaths = [ids[i] for i in valid], [paths[i] for i in valid]
    checks = []
    if pixel_threshold is not None or detail_threshold is not None:
        thumbs = np.concatenate([b[1] for b in iter_decoded(vpaths, 32)]) if vpaths else np.zeros((0, 32, 32, 3))
        structure, detail = pixel_signatures(thumbs)
        checks += [(s, t) for s, t in ((structure, pixel_threshold), (detail, detail_threshold)) if t is not None]
    if influence_run:
        checks.append((_influence_signature(dataset, influence_run, vids), influence_threshold))
    progress(0.3, "signatures")
    found = find_duplicates(z[0, torch.as_tensor(valid)], checks, k, threshold, mutual)
    pairs = found["pairs"]
    group = found["group"]
    keep_mask = representatives(group, _priority(samples, vids, vpaths, keep, clcore_run, influence_run or ""))
    progress(0.7, f"{int((group >= 0).sum())} samples in {len(np.unique(group[group >= 0]))} groups")

    names = duplicate_fields(run_key)
    dup_tag, rep_tag, dup_view, rep_view = _names(run_key)
    config = {"embeddings_field": embeddings_field, "k": k, "threshold": threshold,
              "pixel_threshold": pixel_threshold, "detail_threshold": detail_threshold, "influence_run": influence_run,
              "influence_threshold": influence_threshold, "mutual": mutual, "keep": keep, "clcore_run": clcore_run,
              "tags": [dup_tag, rep_tag], "saved_views": [dup_view, rep_view]}
    runs.start_run(dataset, run_key, METHOD, list(names.values()), config, overwrite=overwrite)
    runs.ensure_field(dataset, names["group"], fo.IntField)
    dataset.untag_samples([dup_tag, rep_tag])
    grp = [int(g) if g >= 0 else None for g in group]
    dataset.set_values(names["group"], dict(zip(vids, grp)), key_field="id")
    dataset.set_values(names["keep"], dict(zip(vids, keep_mask.tolist())), key_field="id")
    dataset.set_values(names["score"], dict(zip(vids, np.asarray(found["score"], float).tolist())), key_field="id")
    in_group = dataset.select([i for i, g in zip(vids, group) if g >= 0])
    in_group.match(F(names["keep"]) == False).tag_samples(dup_tag)
    in_group.match(F(names["keep"]) == True).tag_samples(rep_tag)
    has_group = dataset.match(F(names["group"]) != None)  # noqa: E711
    dataset.save_view(dup_view, has_group.sort_by(names["group"]), overwrite=True,
                      description=f"near-duplicate groups of run {run_key!r}")
    dataset.save_view(rep_view, has_group.match(F(names["keep"]) == True).sort_by(names["group"]), overwrite=True,
                      description=f"the member kept in each near-duplicate group of run {run_key!r}")
    pair_list = [{"a": vids[int(r[0])], "b": vids[int(r[1])], "cosine": float(r[2]),
                  "checks": [float(v) for v in r[3:]]} for r in pairs]
    summary = {"run_key": run_key, "num_samples": len(ids), "num_scored": len(vids),
               "num_skipped": len(ids) - len(vids), "num_pairs": len(pair_list),
               "num_groups": int(len(np.unique(group[group >= 0]))), "num_in_groups": int((group >= 0).sum()),
               "num_to_drop": int((~keep_mask).sum()), "saved_views": [dup_view, rep_view],
               "tags": [dup_tag, rep_tag], "seconds": time.perf_counter() - t0, "pairs": pair_list}
    runs.finish_run(dataset, run_key, **summary)
    progress(1.0, "done")
    return {k_: v for k_, v in summary.items() if k_ != "pairs"}


def _influence_signature(dataset, influence_run: str, ids: list[str]) -> torch.Tensor:
    """Unit-norm influence gradient sketches of ``ids`` (zeros for samples the influence run did not score)."""
    cfg = runs.get_config(dataset, influence_run)
    if cfg is None or cfg.get("method") != runs.METHOD_PREFIX + "ssl_influence":
        raise ValueError(f"no influence run {influence_run!r}")
    path = os.path.join(cfg["artifacts"], "grad_sketch.npy")
    if not os.path.isfile(path):
        raise ValueError(f"influence run {influence_run!r} kept no gradient sketch (project_dim=0)")
    z = torch.nn.functional.normalize(torch.as_tensor(np.load(path)).float(), dim=1)
    with open(os.path.join(cfg["artifacts"], "grad_sketch_ids.txt")) as fh:
        row = {sid: i for i, sid in enumerate(fh.read().split("\n"))}
    out = torch.zeros(len(ids), z.shape[1])
    have = [n for n, i in enumerate(ids) if i in row]
    out[have] = z[[row[ids[n]] for n in have]]
    return out
