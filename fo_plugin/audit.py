"""``audit_subgroups``: is a subgroup over- or under-represented among the influential, hard, outlier, duplicate
or pruned samples? Each group's share of the whole vs its share of each selection, the ratio, and a two-sided
binomial test; stored with the run so it can be reloaded, and drawn as a bar chart in the App."""

from __future__ import annotations

import time

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import runs
from .core.images import iter_decoded
from .core.properties import PROPERTIES, image_properties, quartile_bins
from .features import canonical, categorical_values

METHOD = runs.METHOD_PREFIX + "subgroup_audit"


def default_selections(dataset: fo.Dataset, top_fraction: float = 0.05) -> dict[str, list[str]]:
    """Selections from the runs present: top influence, hardest (augmentation loss), outliers, duplicates to drop,
    CL-Core pruned. Returns name -> sample ids."""
    out = {}
    n_top = max(1, int(round(top_fraction * len(dataset))))
    pct = f"{100 * top_fraction:g}%"
    for key in runs.list_runs(dataset, "ssl_influence"):
        out[f"top {pct} influence [{key}]"] = dataset.exists(f"{key}_self_influence").sort_by(
            f"{key}_self_influence", reverse=True).limit(n_top).values("id")
        out[f"hardest {pct} (augmentation loss) [{key}]"] = dataset.exists(f"{key}_aug_loss").sort_by(
            f"{key}_aug_loss", reverse=True).limit(n_top).values("id")
    for key in runs.list_runs(dataset, "outliers"):
        out[f"outliers [{key}]"] = dataset.match(F(f"{key}_flag") == True).values("id")
    for key in runs.list_runs(dataset, "near_duplicates"):
        out[f"duplicates to drop [{key}]"] = dataset.match(F(f"{key}_keep") == False).values("id")
    for key in runs.list_runs(dataset, "clcore"):
        out[f"CL-Core pruned [{key}]"] = dataset.match(F(f"{key}_selected") == False).values("id")
    return {k: v for k, v in out.items() if v}


def audit_table(groups: list, selections: dict[str, list[str]], ids: list[str]) -> list[dict]:
    """One row per (selection, group): counts, shares, ratio (share in selection / share overall), p-value."""
    from scipy.stats import binomtest

    pos = {i: n for n, i in enumerate(ids)}
    g = np.array([str(v) if v is not None else "(none)" for v in groups])
    names, counts = np.unique(g, return_counts=True)
    rows = []
    for sel_name, sel_ids in selections.items():
        rows_sel = np.array([pos[i] for i in sel_ids if i in pos], dtype=np.int64)
        if len(rows_sel) == 0:
            continue
        in_sel = g[rows_sel]
        for name, total in zip(names, counts):
            k = int((in_sel == name).sum())
            base = total / len(g)
            share = k / len(rows_sel)
            rows.append({"selection": sel_name, "group": str(name), "n_group": int(total), "n_selected": int(len(rows_sel)),
                         "n_group_selected": k, "share_overall": float(base), "share_selected": float(share),
                         "ratio": float(share / base) if base > 0 else None,
                         "p_value": float(binomtest(k, len(rows_sel), base).pvalue)})
    return rows


def audit_subgroups(samples: fo.core.collections.SampleCollection, group_field: str, run_key: str = "audit", *,
                    selections: dict[str, list[str]] | None = None, top_fraction: float = 0.05,
                    overwrite: bool = False) -> dict:
    """Audit how the groups of ``group_field`` are represented among selections of samples.

    Args:
        samples: a dataset or view (the population).
        group_field: a categorical field, or an image property (``"brightness"``, ``"contrast"``, ``"sharpness"``,
            ``"background_uniformity"``): it is computed, stored as ``<run_key>_<property>`` and binned into
            ``<run_key>_<property>_bin`` quartiles.
        selections (None): name -> sample ids; default: every selection the runs on the dataset define
            (top influence, hardest, outliers, duplicates to drop, CL-Core pruned; see :func:`default_selections`).
        top_fraction (0.05): size of the "top influence" and "hardest" selections.

    Returns:
        a summary with ``rows`` (selection, group, counts, shares, ratio, p-value), also stored with the run.
    """
    dataset = samples._dataset
    runs.validate_name(run_key, "run key")
    if len(samples) == 0:
        raise ValueError("the target view is empty")
    t0 = time.perf_counter()
    ids, paths = canonical(samples)
    fields = []
    if group_field in PROPERTIES:
        fields = [f"{run_key}_{group_field}", f"{run_key}_{group_field}_bin"]
    runs.start_run(dataset, run_key, METHOD, fields, {"group_field": group_field, "top_fraction": top_fraction},
                   overwrite=overwrite)
    if group_field in PROPERTIES:
        images = np.concatenate([b[1] for b in iter_decoded(paths, 64)])
        values = image_properties(images)[group_field]
        bins = quartile_bins(values)
        dataset.set_values(fields[0], dict(zip(ids, values.astype(float).tolist())), key_field="id")
        dataset.set_values(fields[1], dict(zip(ids, bins.tolist())), key_field="id")
        groups = bins.tolist()
    else:
        groups = categorical_values(samples, group_field, ids)
    selections = selections if selections is not None else default_selections(samples, top_fraction)
    if not selections:
        raise ValueError("nothing to audit: run influence, outliers, near-duplicates or CL-Core first, or pass "
                         "selections")
    rows = audit_table(groups, selections, ids)
    summary = {"run_key": run_key, "group_field": group_field, "num_samples": len(ids),
               "selections": {k: len(v) for k, v in selections.items()}, "rows": rows,
               "seconds": time.perf_counter() - t0}
    runs.finish_run(dataset, run_key, **summary)
    return summary
