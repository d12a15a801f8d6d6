"""``find_outliers``: a per-sample outlier score (multi-scale kNN distance in the SSL embedding space, optionally
combined with self-influence), a flag for the top fraction or a threshold, a tag, a saved view and a histogram."""

from __future__ import annotations

import time
from collections.abc import Callable

import fiftyone as fo
import numpy as np
import torch
from fiftyone import ViewField as F

from . import params, runs
from .core.outliers import SCALES, outlier_scores
from .features import canonical, field_vectors

METHOD = runs.METHOD_PREFIX + "outliers"


def outlier_fields(run_key: str) -> dict[str, str]:
    return {k: f"{run_key}_{k}" for k in ("score", "knn", "flag", "error")}


FIELD_TYPES = {"score": fo.FloatField, "knn": fo.FloatField, "flag": fo.BooleanField, "error": fo.StringField}


def _names(run_key: str) -> tuple[str, str]:
    """(tag, saved view) of a run."""
    return ("outlier", "outliers") if run_key == "outliers" else (f"{run_key}:outlier", f"outliers [{run_key}]")


def find_outliers(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "outliers",
    *,
    embeddings_field: str = "ssl_embedding",
    scales: tuple[int, ...] = SCALES,
    influence_run: str | None = None,
    fraction: float | None = 0.02,
    threshold: float | None = None,
    overwrite: bool = False,
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Score every sample by how far it is from the rest of the data and flag the most unusual.

    Args:
        samples: a dataset or view.
        run_key ("outliers"): names the run; fields ``<key>_score`` (in [0, 1]), ``<key>_knn`` (mean cosine
            distance to the 10 nearest neighbours), ``<key>_flag``.
        scales: neighbour ranks of the multi-scale score (see :mod:`fo_plugin.core.outliers`).
        influence_run (None): also combine the self-influence of this influence run.
        fraction (0.02): flag this top fraction; or ``threshold``: flag scores >= threshold.
    """
    progress = progress or (lambda f, s: None)
    dataset = samples._dataset
    runs.validate_name(run_key, "run key")
    if (fraction is None) == (threshold is None):
        raise ValueError("give exactly one of fraction (top share to flag) or threshold (score cut-off)")
    fraction = params.number("fraction", fraction, 0, 1, none_ok=True)
    threshold = params.number("threshold", threshold, 0, 1, none_ok=True)
    scales = tuple(params.integer("scales", s, 1) for s in scales)
    if influence_run:
        runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    names = outlier_fields(run_key)
    tag, view_name = _names(run_key)
    config = {"embeddings_field": embeddings_field, "scales": list(scales), "influence_run": influence_run,
              "fraction": fraction, "threshold": threshold}
    run = runs.Run(samples, run_key, "outliers", {k: (v, FIELD_TYPES[k], {}) for k, v in names.items()}, config,
                   overwrite=overwrite, minimum=3, what="outlier scores")
    with run:
        t0 = time.perf_counter()
        ids, _ = canonical(samples)
        z, ok, rejected = field_vectors(samples, embeddings_field, ids)
        extra = None
        if influence_run:
            field = f"{influence_run}_self_influence"
            by_id = dict(zip(*samples.values(["id", field])))
            for i in ids:
                if by_id.get(i) is None and i not in rejected:
                    rejected[i] = f"no self-influence in {field!r}"
            ok = np.array([i not in rejected for i in ids])
        valid = np.flatnonzero(ok)
        vids = [ids[i] for i in valid]
        if len(vids) < 3:
            raise ValueError(f"outlier scores need at least 3 samples with a usable embedding; {len(vids)} have one")
        if influence_run:
            extra = {"self_influence": np.array([by_id[i] for i in vids], dtype=float)}
        parts = outlier_scores(z[0, torch.as_tensor(valid)], scales, extra)
        score = parts["score"]
        flag = score >= threshold if threshold is not None else _top(score, fraction)
        progress(0.6, f"{int(flag.sum())} outliers flagged")
        run.write("score", vids, score.tolist())
        run.write("knn", vids, parts["knn"].astype(float).tolist())
        run.write("flag", vids, flag.tolist())
        run.write("error", list(rejected), list(rejected.values()))
        f_, s_ = names["flag"], names["score"]
        run.tag(tag, lambda ds: ds.match(F(f_) == True))
        run.save_view(view_name, lambda ds: ds.match(F(f_) == True).sort_by(s_, reverse=True),
                      f"flagged by outlier run {run_key!r}, most unusual first")
        counts, edges = np.histogram(score, bins=20, range=(0, 1))
        cut = float(threshold if threshold is not None else (score[flag].min() if flag.any() else 1.0))
        summary = run.commit(num_samples=len(ids), num_scored=len(vids), num_skipped=len(ids) - len(vids),
                             num_flagged=int(flag.sum()), cutoff=cut,
                             histogram={"counts": counts.tolist(), "edges": edges.tolist()},
                             saved_views=[view_name], tags=[tag], seconds=time.perf_counter() - t0)
    progress(1.0, "done")
    return summary


def _top(score: np.ndarray, fraction: float) -> np.ndarray:
    n = int(round(fraction * len(score)))
    flag = np.zeros(len(score), bool)
    flag[np.lexsort((np.arange(len(score)), -score))[:n]] = True
    return flag
