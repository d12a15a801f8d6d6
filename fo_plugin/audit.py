"""``audit_subgroups``: is a subgroup over- or under-represented among the influential, hard, outlier, duplicate
or pruned samples? Each group's share among the samples a run scored vs its share of that run's selection, the
ratio, Fisher's exact test and Holm-corrected p-values; stored with the run so it can be reloaded, and drawn as a bar chart in the App."""

from __future__ import annotations

import time

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import params, runs
from .core.images import iter_decoded
from .core.properties import PROPERTIES, image_properties, quartile_bins
from .features import canonical, categorical_values

METHOD = runs.METHOD_PREFIX + "subgroup_audit"


def default_selections(samples, top_fraction: float = 0.05) -> dict[str, tuple[list[str], list[str]]]:
    """Selections from the complete runs on the dataset, each with the population its run scored (within
    ``samples``): top influence and hardest (augmentation loss), outliers, duplicates to drop, CL-Core pruned.
    Returns name -> (selected ids, scored ids)."""
    dataset = samples._dataset
    out = {}
    pct = f"{100 * top_fraction:g}%"

    def add(name, scored_field, selected_view):
        scored = samples.exists(scored_field)
        out[name] = (selected_view(scored).values("id"), scored.values("id"))

    for key in _complete(dataset, "ssl_influence"):
        for field, what in ((f"{key}_self_influence", f"top {pct} influence"),
                            (f"{key}_aug_loss", f"hardest {pct} (augmentation loss)")):
            add(f"{what} [{key}]", field,
                lambda v, f=field: v.sort_by(f, reverse=True).limit(max(1, int(round(top_fraction * len(v))))))
    for key in _complete(dataset, "outliers"):
        add(f"outliers [{key}]", f"{key}_flag", lambda v, k=key: v.match(F(f"{k}_flag") == True))
    for key in _complete(dataset, "near_duplicates"):
        add(f"duplicates to drop [{key}]", f"{key}_keep", lambda v, k=key: v.match(F(f"{k}_keep") == False))
    for key in _complete(dataset, "clcore"):
        add(f"CL-Core pruned [{key}]", f"{key}_selected", lambda v, k=key: v.match(F(f"{k}_selected") == False))
    return {k: v for k, v in out.items() if v[0]}


def _complete(dataset, method: str) -> list[str]:
    return [k for k in runs.list_runs(dataset, method) if runs.get_config(dataset, k).get("status") == "complete"]


def audit_table(groups: dict[str, str], selections: dict[str, tuple[list[str], list[str]]]) -> list[dict]:
    """One row per (selection, group): is the group's share among the selected samples different from its share
    among the samples the selection's run scored? Fisher's exact test (two-sided) on the 2x2 table
    (in group / not) x (selected / not), with Holm's correction over every row (``p_adjusted``).

    Args:
        groups: sample id -> group name (samples without a usable group value are left out).
        selections: name -> (selected ids, scored ids).
    """
    from scipy.stats import fisher_exact

    rows = []
    for sel_name, (sel_ids, pop_ids) in selections.items():
        pop = [i for i in pop_ids if i in groups]
        chosen = set(sel_ids) & set(pop)
        if not chosen or len(chosen) == len(pop):
            continue
        g_pop = np.array([groups[i] for i in pop])
        in_sel = np.array([i in chosen for i in pop])
        for name in np.unique(g_pop):
            in_g = g_pop == name
            a, b = int((in_g & in_sel).sum()), int((~in_g & in_sel).sum())
            c, d = int((in_g & ~in_sel).sum()), int((~in_g & ~in_sel).sum())
            base, share = in_g.mean(), a / len(chosen)
            rows.append({"selection": sel_name, "group": str(name), "n_group": int(in_g.sum()),
                         "n_scored": len(pop), "n_selected": len(chosen), "n_group_selected": a,
                         "share_overall": float(base), "share_selected": float(share),
                         "ratio": float(share / base) if base > 0 else None,
                         "p_value": float(fisher_exact([[a, b], [c, d]]).pvalue)})
    for r, p in zip(rows, holm([r["p_value"] for r in rows])):
        r["p_adjusted"] = p
    return rows


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over every test of one audit)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def audit_subgroups(samples: fo.core.collections.SampleCollection, group_field: str, run_key: str = "audit", *,
                    selections: dict | None = None, top_fraction: float = 0.05,
                    overwrite: bool = False) -> dict:
    """Audit how the groups of ``group_field`` are represented among selections of samples.

    Args:
        samples: a dataset or view (the population).
        group_field: a categorical field, or an image property (``"brightness"``, ``"contrast"``, ``"sharpness"``,
            ``"background_uniformity"``): it is computed, stored as ``<run_key>_<property>`` and binned into
            ``<run_key>_<property>_bin`` quartiles (images that cannot be read get no value and are left out).
        selections (None): name -> selected ids, or name -> (selected ids, scored ids); default: every selection
            the complete runs on the dataset define (see :func:`default_selections`), each compared with the
            samples its run scored.
        top_fraction (0.05): size of the "top influence" and "hardest" selections.
        overwrite (False): allow replacing a field of the user's named ``<run_key>_<property>``.

    Returns:
        a summary with ``rows`` (selection, group, counts, shares, ratio, p-value, Holm-adjusted p-value), also
        stored with the run.
    """
    runs.validate_run_key(run_key)
    top_fraction = params.number("top_fraction", top_fraction, 0, 1, open_min=True)
    prop = group_field in PROPERTIES
    if not prop:
        schema = samples.get_field_schema()
        if group_field not in schema:
            raise ValueError(f"group_field {group_field!r} is neither a field of this dataset nor an image property "
                             f"({', '.join(PROPERTIES)})")
    fields = {}
    if prop:
        fields = {"value": (f"{run_key}_{group_field}", fo.FloatField, {}),
                  "bin": (f"{run_key}_{group_field}_bin", fo.StringField, {})}
    run = runs.Run(samples, run_key, "subgroup_audit", fields, {"group_field": group_field,
                   "top_fraction": top_fraction}, overwrite=overwrite, minimum=2, what="subgroup audit")
    sel = selections if selections is not None else default_selections(samples, top_fraction)
    if not sel:
        raise ValueError("nothing to audit: run influence, outliers, near-duplicates or CL-Core first, or pass "
                         "selections")
    with run:
        t0 = time.perf_counter()
        ids, paths = canonical(samples)
        if prop:
            values, ok = [], []
            for _, images, good, _ in iter_decoded(paths, 64):
                values.append(image_properties(images)[group_field])
                ok.append(good)
            values, ok = np.concatenate(values), np.concatenate(ok)
            vids = [i for i, g in zip(ids, ok) if g]
            if len(vids) < 4:
                raise ValueError(f"only {len(vids)} images could be read: too few to bin {group_field} into quartiles")
            bins = quartile_bins(values[ok])
            run.write("value", vids, values[ok].astype(float).tolist())
            run.write("bin", vids, bins.tolist())
            groups = dict(zip(vids, bins.tolist()))
        else:
            vals = categorical_values(samples, group_field, ids)
            groups = {i: str(v) for i, v in zip(ids, vals) if v is not None}
        sel = {k: (v if isinstance(v, tuple) else (list(v), ids)) for k, v in sel.items()}
        rows = audit_table(groups, sel)
        if not rows:
            raise ValueError("nothing to audit: no selection has both selected and unselected samples with a group")
        return run.commit(group_field=group_field, num_samples=len(ids), num_grouped=len(groups),
                          selections={k: len(v[0]) for k, v in sel.items()}, rows=rows,
                          seconds=time.perf_counter() - t0)
