"""Runs recorded on the dataset: configuration, status, results, artifacts, and which fields each run owns.

Every score this library writes belongs to a run (FiftyOne's custom-run API), so runs can be listed, reused and
deleted, and a re-run with the same key replaces its own fields but never a field the user created.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable

import fiftyone as fo

METHOD_PREFIX = "fo_plugin."
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def cache_root() -> str:
    """Where checkpoints and other run artifacts live (``FO_SSL_CACHE_DIR``, default ``~/.cache/fo-ssl-curation``)."""
    return os.environ.get("FO_SSL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fo-ssl-curation")


def run_dir(dataset: fo.Dataset, key: str) -> str:
    """The artifact folder of run ``key`` on ``dataset`` (created)."""
    path = os.path.join(cache_root(), str(dataset._doc.id), key)
    os.makedirs(path, exist_ok=True)
    return path


def validate_name(name: str, what: str) -> str:
    """Field names and run keys: letters, digits and underscores, not starting with a digit."""
    if not isinstance(name, str) or not _KEY_RE.match(name):
        raise ValueError(f"{what} must be letters, digits and underscores (not starting with a digit), got {name!r}")
    return name


def get_config(dataset: fo.Dataset, key: str) -> dict | None:
    """The recorded configuration of run ``key`` (a plain dict), or None when there is no such run."""
    if not dataset.has_run(key):
        return None
    return dataset.get_run_info(key).config.serialize()


def owned_fields(dataset: fo.Dataset, exclude_key: str | None = None) -> dict[str, str]:
    """Map of field name -> run key for every field written by one of our runs."""
    owned = {}
    for key in dataset.list_runs():
        cfg = get_config(dataset, key)
        if key != exclude_key and str(cfg.get("method", "")).startswith(METHOD_PREFIX):
            for f in cfg.get("fields", []):
                owned[f] = key
    return owned


def field_conflict(dataset: fo.Dataset, key: str, field: str) -> str | None:
    """Why run ``key`` may not write ``field`` without ``overwrite`` (None when it may).

    A run may always rewrite its own fields; a field the user made, or another run owns, is protected.
    """
    if not isinstance(field, str) or not _KEY_RE.match(field):
        return f"field name must be letters, digits and underscores, got {field!r}"
    if field not in dataset.get_field_schema():
        return None
    if field in (get_config(dataset, key) or {}).get("fields", []):
        return None
    others = owned_fields(dataset, exclude_key=key)
    if field in others:
        return f"field {field!r} belongs to run {others[field]!r}; choose another name or delete that run"
    return (f"field {field!r} already exists on dataset {dataset.name!r} and was not written by this run; "
            "choose another name or pass overwrite=True to replace it")


def check_fields(dataset: fo.Dataset, key: str, fields: Iterable[str], overwrite: bool = False) -> None:
    """Raise ValueError if a field may not be written (see :func:`field_conflict`); with ``overwrite``, delete
    the conflicting user fields first (a wrong-typed field could not be written over)."""
    for f in fields:
        validate_name(f, "field name")
        problem = field_conflict(dataset, key, f)
        if problem and not overwrite:
            raise ValueError(problem)
        if problem:
            dataset.delete_sample_field(f)


def start_run(dataset: fo.Dataset, key: str, method: str, fields: list[str], config: dict,
              overwrite: bool = False) -> None:
    """Validate fields and (re)register run ``key`` with status ``running``."""
    validate_name(key, "run key")
    old = get_config(dataset, key)
    if old is not None and old.get("method") != method:
        raise ValueError(f"run key {key!r} is already used by a {old.get('method')!r} run; choose another key")
    check_fields(dataset, key, fields, overwrite=overwrite)
    cfg = dataset.init_run(method=method, fields=list(fields), status="running", **config)
    dataset.register_run(key, cfg, overwrite=True)


def ensure_field(dataset: fo.Dataset, name: str, ftype, **kwargs) -> None:
    """Declare field ``name`` of type ``ftype`` (e.g. ``fo.VectorField``) unless it exists, so that chunks of
    all-None values can be written."""
    if name not in dataset.get_field_schema():
        dataset.add_sample_field(name, ftype, **kwargs)


def finish_run(dataset: fo.Dataset, key: str, **results) -> None:
    """Mark run ``key`` complete and store its JSON-serialisable results."""
    info = dataset.get_run_info(key)
    cfg = info.config
    cfg.status = "complete"
    dataset.update_run_config(key, cfg)
    results = {k: v for k, v in results.items() if k != "run_key"}  # the key is the run's name, not a result
    dataset.save_run_results(key, dataset.init_run_results(key, **results))


def load_results(dataset: fo.Dataset, key: str) -> dict:
    """The stored results of run ``key`` as a dict."""
    res = dataset.load_run_results(key, cache=False)
    return {k: v for k, v in vars(res).items() if not k.startswith("_")}


def list_runs(dataset: fo.Dataset, method: str | None = None) -> list[str]:
    """Keys of our runs on ``dataset`` (optionally of one method, e.g. ``"ssl_embeddings"``)."""
    out = []
    for key in dataset.list_runs():
        m = str(get_config(dataset, key).get("method", ""))
        if m.startswith(METHOD_PREFIX) and (method is None or m == METHOD_PREFIX + method):
            out.append(key)
    return out


def delete_run(dataset: fo.Dataset, key: str, delete_fields: bool = True) -> None:
    """Delete run ``key``: its fields (if asked), tags, saved views, artifacts and the record."""
    cfg = get_config(dataset, key)
    if cfg is None:
        raise ValueError(f"no run {key!r} on dataset {dataset.name!r}")
    if delete_fields:
        schema = dataset.get_field_schema()
        for f in cfg.get("fields", []):
            if f in schema:
                dataset.delete_sample_field(f)
    if cfg.get("tags"):
        dataset.untag_samples(cfg["tags"])
    for view_name in cfg.get("saved_views", []):
        if dataset.has_saved_view(view_name):
            dataset.delete_saved_view(view_name)
    shutil.rmtree(os.path.join(cache_root(), str(dataset._doc.id), key), ignore_errors=True)
    dataset.delete_run(key)
