"""Data behind the curation panel (the App's workbench): our runs, the counts their results report, score
histograms with the threshold in use, the export plan, and a sample's near-duplicate group with its pair evidence.
Plain dicts, computed here so that they are tested without the App; the panel only renders them."""

from __future__ import annotations

import numpy as np

from . import runs

_BOOKKEEPING = {"method", "status", "fields", "tags", "saved_views", "tag_views", "fingerprint", "artifacts",
                "staging", "attempt", "type", "cls", "version", "timestamp"}

# method -> (label, results key) of the counts worth showing, in order
_COUNTS = {
    "near_duplicates": [("duplicate groups", "num_groups"), ("samples in groups", "num_in_groups"),
                        ("samples to drop", "num_to_drop"), ("exact-duplicate groups", "num_exact_groups"),
                        ("exact-duplicate samples", "num_exact_samples"), ("samples with a duplicate in another split", "num_leaky_samples")],
    "outliers": [("outliers flagged", "num_flagged"), ("samples scored", "num_scored")],
    "quality": [("images flagged", "num_flagged")],
    "clcore": [("CL-Core kept", "num_selected"), ("CL-Core scored", "num_scored")],
    "ssl_embeddings": [("samples embedded", "num_embedded"), ("samples embedded", "num_samples")],
}


def list_overview(dataset) -> list[dict]:
    """One dict per run of this plugin: key, method, status, when, settings (the run's own parameters), saved views
    and the counts its results report (see :func:`run_counts`)."""
    out = []
    for key in runs.list_runs(dataset):
        cfg = runs.get_config(dataset, key) or {}
        method = str(cfg.get("method", "")).removeprefix(runs.METHOD_PREFIX)
        info = dataset.get_run_info(key)
        out.append({"key": key, "method": method, "status": cfg.get("status"),
                    "when": str(getattr(info, "timestamp", "") or (cfg.get("attempt") or {}).get("started", "")),
                    "settings": {k: v for k, v in cfg.items() if k not in _BOOKKEEPING and not k.startswith("_")},
                    "saved_views": list(cfg.get("saved_views") or []),
                    "counts": run_counts(dataset, key) if cfg.get("status") == "complete" else {}})
    return out


def run_counts(dataset, key: str) -> dict[str, int]:
    """The counts that matter for run ``key``, read from its stored results (label -> number); quality runs add one
    count per flag."""
    cfg = runs.get_config(dataset, key) or {}
    method = str(cfg.get("method", "")).removeprefix(runs.METHOD_PREFIX)
    res = runs.load_results(dataset, key)
    out: dict[str, int] = {}
    for label, k in _COUNTS.get(method, []):
        if k in res and label not in out:
            out[label] = int(res[k])
    if method == "quality":
        for flag, n in (res.get("counts") or {}).items():
            out[f"flag {flag}"] = int(n)
    return out


def score_histograms(samples, bins: int = 20) -> list[dict]:
    """For each score field of our complete near-duplicates and outliers runs: ``{"run", "field", "counts",
    "edges", "threshold"}`` over ``samples`` (threshold: the cosine threshold of a duplicates run, the flag cutoff
    of an outliers run)."""
    ds = samples._dataset
    out = []
    for key in runs.list_runs(ds):
        cfg = runs.get_config(ds, key) or {}
        method = str(cfg.get("method", "")).removeprefix(runs.METHOD_PREFIX)
        field = f"{key}_score"
        if cfg.get("status") != "complete" or method not in ("near_duplicates", "outliers") \
                or field not in samples.get_field_schema():
            continue
        values = np.array([v for v in samples.values(field) if v is not None], dtype=np.float64)
        threshold = (cfg.get("verify_threshold") if cfg.get("verify_threshold") is not None else cfg.get("threshold")) \
            if method == "near_duplicates" else runs.load_results(ds, key).get("cutoff")
        lo, hi = (0.0, 1.0) if not len(values) else (min(0.0, values.min()), max(1.0, values.max()))
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        out.append({"run": key, "method": method, "field": field, "counts": counts.tolist(), "edges": edges.tolist(),
                    "threshold": None if threshold is None else float(threshold)})
    return out


def duplicate_group(dataset, run_key: str, sample_id: str) -> dict | None:
    """The near-duplicate group of ``sample_id`` in run ``run_key``: ``{"group", "ids"}`` (the kept member first,
    then the others by id), ``"keep"`` (the kept id) and ``"pairs"``: every confirmed pair of the run between two
    members, with its evidence (the keys are read as they come: cosine, checks, whatever a run records).
    None when the sample is in no group."""
    runs.require(dataset, run_key, "near_duplicates", "find_near_duplicates")
    g_, k_ = f"{run_key}_group", f"{run_key}_keep"
    group = dataset[sample_id][g_]
    if group is None:
        return None
    from fiftyone import ViewField as F

    ids, keep = dataset.match(F(g_) == group).values(["id", k_])
    kept = [i for i, k in zip(ids, keep) if k]
    order = kept + sorted(i for i in ids if i not in set(kept))
    members = set(ids)
    from .duplicates import load_duplicate_pairs

    pairs = load_duplicate_pairs(dataset, run_key, ids=members)
    return {"run": run_key, "group": group, "ids": order, "keep": kept[0] if kept else None, "pairs": pairs}


def format_evidence(pair: dict) -> str:
    """One line per pair for the panel: ``a ~ b: key=value, ...`` with every evidence key the pair has."""
    parts = []
    for k, v in pair.items():
        if k in ("a", "b"):
            continue
        if isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, (list, tuple)):
            v = "[" + ", ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v) + "]"
        parts.append(f"{k}={v}")
    return f"{pair.get('a')} ~ {pair.get('b')}: " + ", ".join(parts)


def default_plan(dataset) -> dict:
    """The export choices the panel starts from: the latest complete near-duplicates, outliers and CL-Core runs."""
    plan = {}
    for method, arg in (("near_duplicates", "duplicates_run"), ("outliers", "outliers_run"), ("clcore", "clcore_run")):
        keys = [k for k in runs.list_runs(dataset, method) if (runs.get_config(dataset, k) or {}).get("status")
                == "complete"]
        if keys:
            plan[arg] = keys[-1]
    return plan
