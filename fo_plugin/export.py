"""``export_curated``: build the curated subset from the user's choices and write it to a NEW dataset or
directory, with a manifest of every removed sample and why. The source dataset is never modified."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile

import fiftyone as fo
from fiftyone import ViewField as F

from . import params, runs

EXPORT_TYPES = {
    "fiftyone": "FiftyOneDataset",
    "image_directory": "ImageDirectory",
    "classification_tree": "ImageClassificationDirectoryTree",
    "coco": "COCODetectionDataset",
}


def curation_plan(samples, *, duplicates_run: str | None = None, outliers_run: str | None = None,
                  clcore_run: str | None = None, drop_least_fraction: float | None = None,
                  keep_tag: str | None = None) -> tuple[object, list[tuple[str, object]]]:
    """Which samples to keep and why each other one goes, as views (match stages on the runs' fields, so the
    query stays the same size whatever the number of samples).

    Args:
        duplicates_run: drop the duplicates this near-duplicates run did not keep (``<key>_keep == False``).
        outliers_run: drop the samples this outliers run flagged.
        clcore_run: keep this CL-Core run's subset (``<key>_selected``), or with ``drop_least_fraction`` drop only
            that fraction at the bottom of its overall ranking.
        keep_tag: keep only samples with this tag.

    Returns:
        ``(kept view, [(reason, expression matching the samples it removes), ...])``; each run must be complete.
    """
    drops: list[tuple[str, object]] = []
    if keep_tag:
        drops.append((f"no tag {keep_tag!r}", ~F("tags").contains(keep_tag)))
    if duplicates_run:
        field = _need(samples, duplicates_run, "near_duplicates", "keep")
        drops.append((f"near-duplicate ({duplicates_run})", F(field) == False))
    if outliers_run:
        field = _need(samples, outliers_run, "outliers", "flag")
        drops.append((f"outlier ({outliers_run})", F(field) == True))
    if clcore_run:
        if drop_least_fraction is None:
            field = _need(samples, clcore_run, "clcore", "selected")
            drops.append((f"outside the CL-Core subset ({clcore_run})", F(field) == False))
        else:
            drop_least_fraction = params.number("drop_least_fraction", drop_least_fraction, 0, 1)
            if drop_least_fraction >= 1:
                raise ValueError(f"drop_least_fraction must be below 1, got {drop_least_fraction}")
            field = _need(samples, clcore_run, "clcore", "rank_overall")
            scored = samples.exists(field)
            n = int(round(drop_least_fraction * len(scored)))
            if n:
                worst = scored.sort_by(field, reverse=True).limit(n).values(field)
                drops.append((f"least valuable {100 * drop_least_fraction:g}% by CL-Core ({clcore_run})",
                              F(field) >= min(worst)))
    kept = samples
    for _, expr in drops:
        kept = kept.match(~expr)
    return kept, drops


def _need(samples, run_key: str, method: str, suffix: str) -> str:
    runs.require(samples._dataset, run_key, method, f"the {method.replace('_', ' ')} step")
    field = f"{run_key}_{suffix}"
    if field not in samples.get_field_schema():
        raise ValueError(f"field {field!r} not found: run the step that writes it first")
    return field


def removed_with_reasons(samples, drops) -> list[tuple[str, str, str]]:
    """(id, filepath, first reason) of every sample the plan removes, streamed view by view."""
    out, seen = [], set()
    for reason, expr in drops:
        for i, p in zip(*samples.match(expr).values(["id", "filepath"])):
            if i not in seen:
                seen.add(i)
                out.append((i, p, reason))
    return out


def export_plan(samples, **plan) -> dict:
    """Dry run of :func:`export_curated` with the same ``plan`` arguments: what it would keep and remove, and why
    (``num_source``, ``num_kept``, ``num_removed``, ``removed_by_reason``). Writes nothing."""
    return _plan(samples, plan)[2]


def _plan(samples, plan: dict):
    """(kept view, removed (id, filepath, reason) rows, summary): the selection shared by the export and its dry
    run; samples whose file is missing are removed too."""
    kept, drops = curation_plan(samples, **plan)
    removed = removed_with_reasons(samples, drops)
    ids, paths = kept.values(["id", "filepath"])
    missing = [(i, p) for i, p in zip(ids, paths) if not os.path.isfile(p)]
    if missing:
        removed += [(i, p, "missing file") for i, p in missing]
        kept = kept.match(~F("filepath").is_in([p for _, p in missing]))  # grows with the missing files only
    return kept, removed, {"num_source": len(samples), "num_kept": len(ids) - len(missing),
                           "num_removed": len(removed), "removed_by_reason": _count(removed), "plan": plan}


def export_curated(samples, *, name: str | None = None, export_dir: str | None = None,
                   export_type: str = "fiftyone", label_field: str | None = None, overwrite: bool = False,
                   **plan) -> dict:
    """Clone the curated subset to a new dataset ``name`` and/or export it to a NEW directory ``export_dir``
    with FiftyOne's exporters (``export_type``: fiftyone, image_directory, classification_tree, coco).
    ``plan`` takes the arguments of :func:`curation_plan`. Writes ``removed_manifest.csv`` (id, filepath, reason)
    beside the export, or into the cache for a clone, and records it in the new dataset's info.

    Nothing that exists is deleted: the directory is written under a temporary name beside ``export_dir`` and
    renamed into place when complete (a failure removes only that temporary folder, so a retry is never blocked);
    an existing non-empty ``export_dir`` is refused. ``overwrite=True`` only replaces a dataset that an earlier
    export of this plugin created. Samples whose file is missing are left out and listed in the manifest.
    """
    if not name and not export_dir:
        raise ValueError("give a new dataset name, an export directory, or both")
    params.choice("export_type", export_type, EXPORT_TYPES)
    if name:
        if fo.dataset_exists(name):
            if not overwrite:
                raise ValueError(f"dataset {name!r} already exists; choose a new name (the source is never "
                                 "overwritten)")
            if name == samples._dataset.name or "curated_from" not in fo.load_dataset(name).info:
                raise ValueError(f"dataset {name!r} was not created by export_curated: it is never replaced")
    if export_dir:
        export_dir = os.path.abspath(os.path.expanduser(export_dir))
        if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
            raise ValueError(f"export directory {export_dir!r} exists and is not empty; choose a new one")
    if export_type in ("classification_tree", "coco") and export_dir and not label_field:
        raise ValueError(f"export_type {export_type!r} needs label_field")
    kept, removed, out = _plan(samples, plan)
    if out["num_kept"] == 0:
        raise ValueError("the curation removes every sample; nothing to export")
    if export_dir:
        parent = os.path.dirname(export_dir)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.partial-", dir=parent)
        try:
            kwargs = {"label_field": label_field} if label_field else {}
            kept.export(export_dir=os.path.join(tmp, "data") if export_type != "fiftyone" else tmp,
                        dataset_type=getattr(fo.types, EXPORT_TYPES[export_type]), **kwargs)
            _write_manifest(os.path.join(tmp, "removed_manifest.csv"), removed)
            if os.path.isdir(export_dir):
                os.rmdir(export_dir)  # empty (checked above): the only thing we replace
            os.replace(tmp, export_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # only the folder this call created
            raise
        out["export_dir"] = export_dir
        out["manifest"] = os.path.join(export_dir, "removed_manifest.csv")
    if name:
        if not export_dir:
            manifest_dir = os.path.join(runs.cache_root(), "manifests")
            os.makedirs(manifest_dir, exist_ok=True)
            out["manifest"] = os.path.join(manifest_dir, f"removed_manifest_{name}.csv")
            _write_manifest(out["manifest"], removed)
        # clone under a temporary name first: an earlier curated copy (checked above) is replaced only once the
        # new one is complete
        new = kept.clone(f"{name}.partial-{os.getpid()}", persistent=samples._dataset.persistent)
        try:
            if fo.dataset_exists(name):
                fo.delete_dataset(name)
            new.name = name
        except BaseException:
            new.delete()
            raise
        out["dataset"] = name
        new.info = {**new.info, "curated_from": samples._dataset.name,
                    "curation": json.loads(json.dumps(out, default=str))}
        new.save()
    return out


def _write_manifest(path: str, removed) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "filepath", "reason"])
        w.writerows(removed)


def _count(removed) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, _, r in removed:
        counts[r] = counts.get(r, 0) + 1
    return counts
