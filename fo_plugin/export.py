"""``export_curated``: build the curated subset from the user's choices and write it to a NEW dataset or
directory, with a manifest of every removed sample and why. The source dataset is never modified."""

from __future__ import annotations

import csv
import json
import os

import fiftyone as fo
from fiftyone import ViewField as F

from . import runs

EXPORT_TYPES = {
    "fiftyone": "FiftyOneDataset",
    "image_directory": "ImageDirectory",
    "classification_tree": "ImageClassificationDirectoryTree",
    "coco": "COCODetectionDataset",
}


def curation_plan(samples, *, duplicates_run: str | None = None, outliers_run: str | None = None,
                  clcore_run: str | None = None, drop_least_fraction: float | None = None,
                  keep_tag: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Which samples to keep and why each other one goes.

    Args:
        duplicates_run: drop the duplicates this near-duplicates run did not keep (``<key>_keep == False``).
        outliers_run: drop the samples this outliers run flagged.
        clcore_run: keep this CL-Core run's subset (``<key>_selected``), or with ``drop_least_fraction`` drop only
            that fraction at the bottom of its overall ranking.
        keep_tag: keep only samples with this tag.

    Returns:
        ``(kept ids, {removed id: reason})``; the first reason that applies is recorded.
    """
    ids = samples.values("id")
    removed: dict[str, str] = {}

    def drop(view, reason):
        for i in view.values("id"):
            removed.setdefault(i, reason)

    if keep_tag:
        drop(samples.match_tags(keep_tag, bool=False), f"no tag {keep_tag!r}")
    if duplicates_run:
        _need(samples, f"{duplicates_run}_keep")
        drop(samples.match(F(f"{duplicates_run}_keep") == False), f"near-duplicate ({duplicates_run})")
    if outliers_run:
        _need(samples, f"{outliers_run}_flag")
        drop(samples.match(F(f"{outliers_run}_flag") == True), f"outlier ({outliers_run})")
    if clcore_run:
        if drop_least_fraction is None:
            _need(samples, f"{clcore_run}_selected")
            drop(samples.match(F(f"{clcore_run}_selected") == False), f"outside the CL-Core subset ({clcore_run})")
        else:
            if not 0 <= drop_least_fraction < 1:
                raise ValueError(f"drop_least_fraction must be in [0, 1), got {drop_least_fraction}")
            field = f"{clcore_run}_rank_overall"
            _need(samples, field)
            scored = samples.exists(field)
            n = int(round(drop_least_fraction * len(scored)))
            if n:
                drop(scored.sort_by(field, reverse=True).limit(n),
                     f"least valuable {100 * drop_least_fraction:g}% by CL-Core ({clcore_run})")
    return [i for i in ids if i not in removed], removed


def _need(samples, field: str) -> None:
    if field not in samples.get_field_schema():
        raise ValueError(f"field {field!r} not found: run the step that writes it first")


def export_curated(samples, *, name: str | None = None, export_dir: str | None = None,
                   export_type: str = "fiftyone", label_field: str | None = None, overwrite: bool = False,
                   **plan) -> dict:
    """Clone the curated subset to a new dataset ``name`` and/or export it to a new directory ``export_dir``
    with FiftyOne's exporters (``export_type``: fiftyone, image_directory, classification_tree, coco).
    ``plan`` takes the arguments of :func:`curation_plan`. Writes ``removed_manifest.csv`` (id, filepath,
    reason) beside the export, or into the cache for a clone, and records it in the new dataset's info.
    """
    if not name and not export_dir:
        raise ValueError("give a new dataset name, an export directory, or both")
    if export_type not in EXPORT_TYPES:
        raise ValueError(f"export_type must be one of {tuple(EXPORT_TYPES)}, got {export_type!r}")
    if name and fo.dataset_exists(name) and not overwrite:
        raise ValueError(f"dataset {name!r} already exists; choose a new name (the source is never overwritten)")
    if name and name == samples._dataset.name:
        raise ValueError("the curated dataset must be a new dataset, not the source")
    if export_dir and os.path.exists(export_dir) and os.listdir(export_dir) and not overwrite:
        raise ValueError(f"export directory {export_dir!r} is not empty; choose a new one")
    if export_type in ("classification_tree", "coco") and export_dir and not label_field:
        raise ValueError(f"export_type {export_type!r} needs label_field")
    kept, removed = curation_plan(samples, **plan)
    if not kept:
        raise ValueError("the curation removes every sample; nothing to export")
    view = samples.select(kept, ordered=True)
    paths = dict(zip(samples.values("id"), samples.values("filepath")))
    out = {"num_source": len(samples), "num_kept": len(kept), "num_removed": len(removed),
           "removed_by_reason": _count(removed), "plan": plan}
    if export_dir:
        os.makedirs(export_dir, exist_ok=True)
        kwargs = {"label_field": label_field} if label_field else {}
        view.export(export_dir=os.path.join(export_dir, "data") if export_type != "fiftyone" else export_dir,
                    dataset_type=getattr(fo.types, EXPORT_TYPES[export_type]), overwrite=overwrite, **kwargs)
        out["export_dir"] = export_dir
        manifest_dir = export_dir
    else:
        manifest_dir = os.path.join(runs.cache_root(), "manifests")
        os.makedirs(manifest_dir, exist_ok=True)
    if name:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        new = view.clone(name, persistent=samples._dataset.persistent)
        out["dataset"] = name
    manifest = os.path.join(manifest_dir, f"removed_manifest{'_' + name if name and not export_dir else ''}.csv")
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "filepath", "reason"])
        for i, reason in removed.items():
            w.writerow([i, paths[i], reason])
    out["manifest"] = manifest
    if name:
        new.info = {**new.info, "curated_from": samples._dataset.name,
                    "curation": json.loads(json.dumps(out, default=str))}
        new.save()
    return out


def _count(removed: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in removed.values():
        counts[r] = counts.get(r, 0) + 1
    return counts
