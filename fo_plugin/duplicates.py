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

from . import params, runs
from .core.duplicates import find_duplicates, groups, pixel_signatures, representatives
from .core.hashing import file_hash, hash_groups
from .features import DecodedImages, canonical, field_vectors

METHOD = runs.METHOD_PREFIX + "near_duplicates"
POLICIES = ("clcore", "influence", "largest_file", "first")


def duplicate_fields(run_key: str) -> dict[str, str]:
    return {k: f"{run_key}_{k}" for k in ("group", "kind", "keep", "score", "error")}


FIELD_TYPES = {"group": fo.IntField, "kind": fo.StringField, "keep": fo.BooleanField, "score": fo.FloatField,
               "error": fo.StringField}


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

    Byte-identical files are found first by hashing (group kind ``"exact"``, whether or not they have an
    embedding). A near-duplicate pair is reported when the two samples are among each other's ``k`` nearest SSL neighbours with cosine
    >= ``threshold`` and every confirming signal agrees: the correlation of their 32x32 grayscale thumbnails
    >= ``pixel_threshold`` (the layout) and of the thumbnails' fine detail >= ``detail_threshold`` (None skips a
    check; see :mod:`fo_plugin.core.duplicates`), and, with ``influence_run``, the cosine of their influence
    gradients >= ``influence_threshold``.

    Args:
        samples: a dataset or view.
        run_key ("dups"): names the run; fields ``<key>_group`` (None: no duplicate), ``<key>_kind`` ("exact":
            in a group of byte-identical files; "near": confirmed near-duplicates), ``<key>_keep`` (False: a
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
    params.choice("keep", keep, POLICIES)
    k = params.integer("k", k, 1)
    threshold = params.number("threshold", threshold, 0, 1, open_min=True)
    pixel_threshold = params.number("pixel_threshold", pixel_threshold, -1, 1, none_ok=True)
    detail_threshold = params.number("detail_threshold", detail_threshold, -1, 1, none_ok=True)
    influence_threshold = params.number("influence_threshold", influence_threshold, -1, 1)
    if influence_run:
        runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    if keep == "clcore":
        runs.require(dataset, clcore_run, "clcore", "compute_clcore (or choose another keep policy)")
    if keep == "influence" and not influence_run:
        raise ValueError("keep='influence' needs influence_run=<an influence run> (the lowest self-influence is kept)")
    names = duplicate_fields(run_key)
    dup_tag, rep_tag, dup_view, rep_view = _names(run_key)
    config = {"embeddings_field": embeddings_field, "k": k, "threshold": threshold,
              "pixel_threshold": pixel_threshold, "detail_threshold": detail_threshold, "influence_run": influence_run,
              "influence_threshold": influence_threshold, "mutual": mutual, "keep": keep, "clcore_run": clcore_run}
    run = runs.Run(samples, run_key, "near_duplicates", {k_: (v, FIELD_TYPES[k_], {}) for k_, v in names.items()},
                   config, overwrite=overwrite, minimum=2, what="near-duplicate search")
    with run:
        t0 = time.perf_counter()
        ids, paths = canonical(samples)
        exact = hash_groups([file_hash(p) if os.path.isfile(p) else None for p in paths])  # identical bytes
        progress(0.1, f"{int((exact >= 0).sum())} samples are byte-identical copies")
        z, ok, rejected = field_vectors(samples, embeddings_field, ids)
        valid = np.flatnonzero(ok)
        vids, vpaths = [ids[i] for i in valid], [paths[i] for i in valid]
        checks = []
        if pixel_threshold is not None or detail_threshold is not None:
            with DecodedImages(vpaths, vids, 32, run.artifacts) as thumbs:  # a memmap: bounded memory
                structure, detail = pixel_signatures(thumbs.images)
            checks += [(s, t) for s, t in ((structure, pixel_threshold), (detail, detail_threshold)) if t is not None]
        if influence_run:
            checks.append((_influence_signature(dataset, influence_run, vids), influence_threshold))
        progress(0.3, "signatures")
        found = find_duplicates(z[0, torch.as_tensor(valid)], checks, k, threshold, mutual) if len(valid) > 1 \
            else {"pairs": np.zeros((0, 3 + len(checks))), "score": np.zeros(len(valid))}
        pairs = found["pairs"]
        near = np.column_stack([valid[pairs[:, 0].astype(np.int64)], valid[pairs[:, 1].astype(np.int64)]]) \
            if len(pairs) else np.zeros((0, 2), np.int64)
        order = np.argsort(exact, kind="stable")  # members of each hash group side by side: O(N log N)
        order = order[exact[order] >= 0]
        chain = [(int(a), int(b)) for a, b in zip(order[:-1], order[1:]) if exact[a] == exact[b]]
        group = groups(len(ids), np.array([*near.tolist(), *chain], dtype=np.float64).reshape(-1, 2))
        kind = np.where(exact >= 0, "exact", np.where(group >= 0, "near", None))
        keep_mask = representatives(group, _priority(samples, ids, paths, keep, clcore_run, influence_run or ""))
        progress(0.7, f"{int((group >= 0).sum())} samples in {len(np.unique(group[group >= 0]))} groups")
        scored = [ids[i] for i in np.union1d(valid, np.flatnonzero(exact >= 0))]
        where = {i: n for n, i in enumerate(ids)}
        best = dict(zip(vids, np.asarray(found["score"], float).tolist()))

        run.write_columns(scored, {  # one update per sample for all fields
            "group": [int(group[where[i]]) if group[where[i]] >= 0 else None for i in scored],
            "kind": [kind[where[i]] for i in scored], "keep": [bool(keep_mask[where[i]]) for i in scored],
            "score": [best.get(i) for i in scored]})  # byte-identical files without a vector have no score
        unscored = [i for i in rejected if exact[where[i]] < 0]
        run.write("error", unscored, [rejected[i] for i in unscored])
        g_, k_ = names["group"], names["keep"]
        run.tag(dup_tag, lambda ds: ds.match((F(g_) != None) & (F(k_) == False)))  # noqa: E711
        run.tag(rep_tag, lambda ds: ds.match((F(g_) != None) & (F(k_) == True)))  # noqa: E711
        run.save_view(dup_view, lambda ds: ds.match(F(g_) != None).sort_by(g_),  # noqa: E711
                      f"near-duplicate groups of run {run_key!r}")
        run.save_view(rep_view, lambda ds: ds.match((F(g_) != None) & (F(k_) == True)).sort_by(g_),  # noqa: E711
                      f"the member kept in each near-duplicate group of run {run_key!r}")
        pair_list = [{"a": vids[int(r[0])], "b": vids[int(r[1])], "kind": "near", "cosine": float(r[2]),
                      "checks": [float(v) for v in r[3:]]} for r in pairs]
        pair_list += [{"a": ids[a], "b": ids[b], "kind": "exact", "cosine": 1.0, "checks": []} for a, b in chain]
        summary = run.commit(num_samples=len(ids), num_scored=len(scored), num_skipped=len(ids) - len(scored),
                             num_exact_groups=int(len(np.unique(exact[exact >= 0]))),
                             num_exact_samples=int((exact >= 0).sum()),
                             num_pairs=len(pair_list), num_groups=int(len(np.unique(group[group >= 0]))),
                             num_in_groups=int((group >= 0).sum()), num_to_drop=int((~keep_mask).sum()),
                             saved_views=[dup_view, rep_view], tags=[dup_tag, rep_tag],
                             seconds=time.perf_counter() - t0, pairs=pair_list)
    progress(1.0, "done")
    return {k_: v for k_, v in summary.items() if k_ != "pairs"}


def _influence_signature(dataset, influence_run: str, ids: list[str]) -> torch.Tensor:
    """Unit-norm influence gradient sketches of ``ids`` (zeros for samples the influence run did not score)."""
    cfg = runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
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
