"""``find_outliers``: a per-sample outlier score combining multi-scale kNN in the SSL embedding, multi-scale kNN
among image statistics, the two-sided tails of those statistics and optionally self-influence (each kept as its own field), a flag for the top fraction or a
threshold, a tag, a saved view and a histogram."""

from __future__ import annotations

import time

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import params, runs
from .core.outliers import SCALES, WEIGHTS, outlier_scores
from .features import canonical, field_vectors, image_statistics, take_rows
from .progress import ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "outliers"


def outlier_fields(run_key: str) -> dict[str, str]:
    return {k: f"{run_key}_{k}" for k in ("score", "flag", "reason", "ssl", "stats", "tails", "influence", "knn",
                                             "error")}


FIELD_TYPES = {"score": fo.FloatField, "flag": fo.BooleanField, "reason": fo.StringField, "ssl": fo.FloatField,
               "stats": fo.FloatField, "tails": fo.FloatField, "influence": fo.FloatField, "knn": fo.FloatField, "error": fo.StringField}


def _names(run_key: str) -> tuple[str, str]:
    """(tag, saved view) of a run."""
    return ("outlier", "outliers") if run_key == "outliers" else (f"{run_key}:outlier", f"outliers [{run_key}]")


def find_outliers(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "outliers",
    *,
    embeddings_field: str | None = "ssl_embedding",
    scales: tuple[int, ...] = SCALES,
    image_stats: bool = True,
    tightness: bool = True,
    weights: dict[str, float] | None = None,
    influence_run: str | None = None,
    fraction: float | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> dict:
    """Score every sample by how far it is from the rest of the data and flag the most unusual.

    Args:
        samples: a dataset or view.
        run_key ("outliers"): names the run; fields ``<key>_score`` (combined, in [0, 1]), ``<key>_flag``,
            ``<key>_reason`` (the component and scale that ranked the sample highest), each component's own score
            in [0, 1] (``<key>_ssl``: multi-scale kNN in the embedding; ``<key>_stats``: multi-scale kNN among
            image statistics such as colourfulness, exposure, sharpness, entropy, edge orientation;
            ``<key>_tails``: how far the sample's most extreme few statistics lie in their tails, either side, as a
            rank; its ``reason`` names the most extreme statistic, e.g. ``tails:exact_gray``; ``<key>_influence``:
            self-influence rank), ``<key>_knn`` (mean cosine distance to the 10 nearest
            neighbours in the embedding) and ``<key>_error`` (why a sample was not scored).
        embeddings_field ("ssl_embedding"): the embedding of the ``ssl`` component (None: image statistics only).
        scales: neighbour ranks of the multi-scale scores (see :mod:`fo_plugin.core.outliers`).
        image_stats (True): add the image-statistics components (``stats`` and ``tails``): they flag documents,
            textures, drawings, microscopy, screenshots and flat colour that an embedding trained on photos can place
            among the photos.
        tightness (True): add the group-tightness components (log of far / near neighbour distance) to each kNN
            component: they find tight groups of near-copies that plain distances miss (see
            :func:`fo_plugin.core.outliers.outlier_scores` for the measured trade-off).
        weights (None): weight of each component (``ssl``, ``stats``, ``tails``, ``influence``) in the combined
            score; None: ``ssl`` 0.3, ``tails`` 1.5, the others 1 (the embedding of a model trained on photos can rank a
            document as typical; see :data:`fo_plugin.core.outliers.WEIGHTS`); a component not named weighs 1. The
            same weights scale each kNN component's group term (tight groups far beyond the bulk).
        influence_run (None): also combine the self-influence of this influence run.
        fraction (None): flag this top fraction (0.02 when no threshold is given); or ``threshold``: flag scores
            >= threshold.
    """
    dataset = samples._dataset
    runs.validate_run_key(run_key)
    if fraction is not None and threshold is not None:
        raise ValueError("give one of fraction (top share to flag) or threshold (score cut-off), not both")
    if fraction is None and threshold is None:
        fraction = 0.02
    fraction = params.number("fraction", fraction, 0, 1, none_ok=True)
    threshold = params.number("threshold", threshold, 0, 1, none_ok=True)
    scales = tuple(params.integer("scales", s, 1) for s in scales)
    weights = {str(k): params.number(f"weights[{k}]", v, 0) for k, v in (WEIGHTS if weights is None else weights).items()}
    if influence_run:
        runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    if not embeddings_field and not image_stats:
        raise ValueError("outliers need an embeddings_field, image_stats=True, or both")
    names = outlier_fields(run_key)
    if not embeddings_field:
        names = {k: v for k, v in names.items() if k not in ("ssl", "knn")}
    if not image_stats:
        names.pop("stats")
        names.pop("tails")
    if not influence_run:
        names.pop("influence")
    tag, view_name = _names(run_key)
    config = {"embeddings_field": embeddings_field, "scales": list(scales), "image_stats": image_stats,
              "tightness": tightness, "weights": weights,
              "influence_run": influence_run, "fraction": fraction, "threshold": threshold}
    run = runs.Run(samples, run_key, "outliers", {k: (v, FIELD_TYPES[k], {}) for k, v in names.items()}, config,
                   overwrite=overwrite, minimum=3, what="outlier scores")
    with run, reporter(progress, "outliers") as progress:
        t0 = time.perf_counter()
        ids, paths = canonical(samples)
        rejected: dict[str, str] = {}
        z = None
        if embeddings_field:
            z, ok, rejected = field_vectors(samples, embeddings_field, ids)
        stats = None
        if image_stats:
            stats, readable, errors = image_statistics(paths, progress=lambda f, s: progress(0.5 * f, s))
            for i, good, e in zip(ids, readable, errors):
                if not good:
                    rejected.setdefault(i, e or "the image could not be decoded")
            row = np.cumsum(readable) - 1  # index into stats of each readable image
        if influence_run:
            field = f"{influence_run}_self_influence"
            by_id = dict(zip(*samples.values(["id", field])))
            for i in ids:
                if by_id.get(i) is None:
                    rejected.setdefault(i, f"no self-influence in {field!r}")
        valid = np.array([n for n, i in enumerate(ids) if i not in rejected], dtype=np.int64)
        vids = [ids[i] for i in valid]
        if len(vids) < 3:
            raise ValueError(f"outlier scores need at least 3 samples that can be scored; {len(vids)} can be")
        extra = {"influence": np.array([by_id[i] for i in vids], dtype=float)} if influence_run else None
        parts = outlier_scores(take_rows(z[0], valid) if z is not None else None, scales, extra,
                               stats={k: v[row[valid]] for k, v in stats.items()} if stats else None,
                               tightness=tightness, weights=weights, in_place=True)
        score = parts["score"]
        flag = score >= threshold if threshold is not None else _top(score, fraction)
        progress(0.8, f"{int(flag.sum())} outliers flagged")
        columns = {"score": score.tolist(), "flag": flag.tolist(), "reason": parts["scale"].tolist()}
        for short, key in (("ssl", "ssl_score"), ("stats", "stats_score"), ("tails", "tails_score"),
                           ("influence", "influence_score"), ("knn", "knn")):
            if short in names:
                columns[short] = np.asarray(parts[key], float).tolist()
        run.write_columns(vids, columns)  # one update per sample for all fields
        run.write("error", list(rejected), list(rejected.values()))
        f_, s_ = names["flag"], names["score"]
        run.tag(tag, lambda ds: ds.match(F(f_) == True), [vids[i] for i in np.flatnonzero(flag)])  # noqa: E712
        run.save_view(view_name, lambda ds: ds.match(F(f_) == True).sort_by(s_, reverse=True),
                      f"flagged by outlier run {run_key!r}, most unusual first")
        counts, edges = np.histogram(score, bins=20, range=(0, 1))
        cut = float(threshold if threshold is not None else (score[flag].min() if flag.any() else 1.0))
        reasons = {}
        for r in parts["scale"][flag]:
            family = str(r).split(":")[0]
            reasons[family] = reasons.get(family, 0) + 1
        summary = run.commit(num_samples=len(ids), num_scored=len(vids), num_skipped=len(ids) - len(vids),
                             num_flagged=int(flag.sum()), flagged_by_component=reasons, cutoff=cut,
                             histogram={"counts": counts.tolist(), "edges": edges.tolist()},
                             saved_views=[view_name], tags=[tag], seconds=time.perf_counter() - t0)
    progress(1.0, "done")
    return summary


def _top(score: np.ndarray, fraction: float) -> np.ndarray:
    n = int(round(fraction * len(score)))
    flag = np.zeros(len(score), bool)
    flag[np.lexsort((np.arange(len(score)), -score))[:n]] = True
    return flag
