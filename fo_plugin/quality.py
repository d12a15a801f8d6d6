"""``find_quality_issues``: image-quality flags like cleanvision's (too dark, too bright, blurry, low information,
grayscale, odd aspect ratio, odd size): one statistic per flag as a field, a threshold per flag the user can change,
a tag per flag, a saved view of every flagged image and the counts."""

from __future__ import annotations

import time

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import params, runs
from .core.quality import THRESHOLDS, quality_flags
from .features import canonical, image_statistics
from .progress import ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "quality"
FLAGS = tuple(THRESHOLDS)


def quality_fields(run_key: str) -> dict[str, str]:
    """``<key>_<flag>`` (the flag's statistic, higher = worse), ``<key>_issues`` (the flags raised), ``_error``."""
    return {**{f: f"{run_key}_{f}" for f in FLAGS}, "issues": f"{run_key}_issues", "error": f"{run_key}_error"}


def tag_for(run_key: str, flag: str) -> str:
    return f"{run_key}:{flag}"


def find_quality_issues(samples: fo.core.collections.SampleCollection, run_key: str = "quality", *,
                        thresholds: dict[str, float] | None = None, overwrite: bool = False,
                        progress: ProgressArg = None) -> dict:
    """Flag images that are too dark, too bright, blurry, low in information, grayscale, or of an odd aspect
    ratio or size.

    Args:
        samples: a dataset or view.
        run_key ("quality"): names the run and prefixes its fields; tags are ``<key>:<flag>``.
        thresholds (None): flag -> threshold overriding :data:`fo_plugin.core.quality.THRESHOLDS` (a sample is
            flagged when the flag's statistic exceeds it; each constant's docstring gives the rule and the rates
            measured on CIFAR-10 and UTKFace).

    Returns:
        a summary with ``counts`` (flag -> number of samples flagged) and the thresholds used.
    """
    runs.validate_run_key(run_key)
    thresholds = dict(thresholds or {})
    for k, v in thresholds.items():
        params.choice("quality flag", k, FLAGS)
        params.number(f"threshold of {k}", v)
    used = {**THRESHOLDS, **thresholds}
    names = quality_fields(run_key)
    types = {**{f: fo.FloatField for f in FLAGS}, "issues": fo.ListField, "error": fo.StringField}
    kwargs = {"issues": {"subfield": fo.StringField}}
    run = runs.Run(samples, run_key, "quality", {k: (v, types[k], kwargs.get(k, {})) for k, v in names.items()},
                   {"thresholds": used}, overwrite=overwrite, what="image quality flags")
    with run, reporter(progress, "quality flags") as progress:
        t0 = time.perf_counter()
        ids, paths = canonical(samples)
        stats, ok, errors = image_statistics(paths, sizes=True, progress=lambda f, s: progress(0.9 * f, s))
        vids = [i for i, g in zip(ids, ok) if g]
        flags, values = quality_flags(stats=stats, thresholds=used) if vids else ({}, {})
        for flag in FLAGS:
            run.write(flag, vids, values[flag].astype(float).tolist() if vids else [])
        issues = [[f for f in FLAGS if flags[f][n]] for n in range(len(vids))]
        run.write("issues", vids, issues)
        bad = [(i, e or "the image could not be decoded") for i, g, e in zip(ids, ok, errors) if not g]
        run.write("error", [i for i, _ in bad], [e for _, e in bad])
        field = names["issues"]
        for flag in FLAGS:
            run.tag(tag_for(run_key, flag), lambda ds, f=flag: ds.match(F(field).contains(f)),
                    [vids[n] for n in np.flatnonzero(flags[flag])] if vids else [])
        view = f"quality issues [{run_key}]" if run_key != "quality" else "quality issues"
        run.save_view(view, lambda ds: ds.match(F(field).length() > 0), f"images flagged by run {run_key!r}")
        counts = {f: int(flags[f].sum()) if vids else 0 for f in FLAGS}
        summary = run.commit(num_samples=len(ids), num_scored=len(vids), num_skipped=len(bad), counts=counts,
                             num_flagged=sum(1 for x in issues if x), thresholds=used, saved_views=[view],
                             tags=[tag_for(run_key, f) for f in FLAGS], seconds=time.perf_counter() - t0)
    progress(1.0, "done")
    return summary
