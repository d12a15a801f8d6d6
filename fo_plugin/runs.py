"""The one run lifecycle every operator uses, and the run records it keeps on the dataset.

A run of one of our methods goes: validate (nothing touched) -> lock the run key -> compute -> stage every value in
the run's *staging collection* (a scratch database collection, one per dataset and run key; no sample document is
touched) -> commit (a server-side ``$merge`` of the staged values into the sample documents, the previous run's
values cleared where no new one came; then re-tag, save the views, record the run as ``complete``).
A failure at any point before the commit drops the staging collection (an interruption keeps it, for a resume) and
leaves the previous run's fields, tags, views and record as they were (the record notes the failed attempt); a run
with no previous result is recorded ``failed`` with the error. Fields are written only for the target view: after
the commit, samples outside it hold no value, so no reader ever mixes two runs. Every field, tag, saved view,
FiftyOne Brain run and artifact a run makes is recorded, so :func:`delete_run` removes exactly those, and a field
the user made is never written over or deleted unless ``overwrite=True`` was passed.

Artifacts (checkpoints, factors, sketches) live in a folder keyed by a fingerprint of what they depend on (model,
data ids, settings), so a changed input never reuses a stale artifact. A file lock per run key keeps two runs of one
key from interleaving, and a lock per dataset serialises changes to the dataset's schema, saved views and run records
across processes (each change reloads the dataset first, so no process writes back a stale schema).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator

import fiftyone as fo
import numpy as np

from .core.fingerprint import fingerprint

METHOD_PREFIX = "fo_plugin."
NAMES = {"ssl_embeddings": "SSL embeddings", "ssl_influence": "influence", "influence_query": "influence query",
         "near_duplicates": "near-duplicates", "clcore": "CL-Core", "outliers": "outliers",
         "subgroup_audit": "subgroup audit", "quality": "image quality"}
DECODED_PREFIX = "decoded-"  # temporary memmap folders (features.DecodedImages); a killed run's are removed
CHUNKS = "chunks"  # per-chunk results (Run.chunk) in the artifact folder; removed at commit
STAGING = "_ssl_staging"  # staged sample fields of earlier versions (removed where found); also a reserved suffix
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SCRATCH_PREFIX = "fo_ssl_scratch."  # + "<samples collection>.<run key>": a run's staging collection
GUARD_SUFFIX = ".tags"  # + after a staging collection's name: the samples a commit keeps tagged (Run._untag_changed)
ID_CHUNK = 100_000  # ids in one query (MongoDB caps a command at 16 MB)
MAX_KEY_LEN = 64  # a run's staging collection is named after its key, and MongoDB caps a namespace at 255 bytes


# ---------------------------------------------------------------------------------------------------------------- paths
def cache_root() -> str:
    """Where checkpoints and other run artifacts live (``FO_SSL_CACHE_DIR``, default ``~/.cache/fo-ssl-curation``)."""
    return os.path.abspath(os.environ.get("FO_SSL_CACHE_DIR")
                           or os.path.join(os.path.expanduser("~"), ".cache", "fo-ssl-curation"))


def _dataset_dir(dataset: fo.Dataset) -> str:
    return os.path.join(cache_root(), str(dataset._doc.id))


def run_root(dataset: fo.Dataset, key: str) -> str:
    """The folder holding every artifact of run ``key`` (one sub-folder per fingerprint)."""
    return os.path.join(_dataset_dir(dataset), key)


# ------------------------------------------------------------------------------------------------------------ validation
def validate_name(name: str, what: str) -> str:
    """Field names and run keys: letters, digits and underscores, starting with a letter."""
    if not isinstance(name, str) or not _KEY_RE.match(name) or STAGING in name:
        raise ValueError(f"{what} must be letters, digits and underscores (starting with a letter), got {name!r}")
    return name


def validate_run_key(key: str) -> str:
    """A run key: a valid name of at most ``MAX_KEY_LEN`` characters (checked by every stage and form up front)."""
    validate_name(key, "run key")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"run key must be at most {MAX_KEY_LEN} characters, got {len(key)}: {key[:24]}...")
    return key


def check_samples(samples, minimum: int = 1, what: str = "this operation") -> int:
    """Refuse non-image media and views too small for the method, before anything is touched."""
    media = samples.media_type
    if media != fo.core.media.IMAGE:
        raise ValueError(f"{what} works on image datasets; the target holds {media!r} samples")
    n = len(samples)
    if n == 0:
        raise ValueError(f"the target view is empty: nothing for {what}")
    if n < minimum:
        raise ValueError(f"{what} needs at least {minimum} samples in the target view, got {n}")
    return n


def get_config(dataset: fo.Dataset, key: str) -> dict | None:
    """The recorded configuration of run ``key`` (a plain dict), or None when there is no such run."""
    if not dataset.has_run(key):
        return None
    return dataset.get_run_info(key).config.serialize()


def list_runs(dataset: fo.Dataset, method: str | None = None) -> list[str]:
    """Keys of our runs on ``dataset`` (optionally of one method, e.g. ``"ssl_embeddings"``)."""
    out = []
    for key in dataset.list_runs():
        m = str(get_config(dataset, key).get("method", ""))
        if m.startswith(METHOD_PREFIX) and (method is None or m == METHOD_PREFIX + method):
            out.append(key)
    return out


def owned_fields(dataset: fo.Dataset, exclude_key: str | None = None) -> dict[str, str]:
    """Map of field name -> run key for every field written by one of our runs."""
    owned = {}
    for key in list_runs(dataset):
        if key != exclude_key:
            for f in get_config(dataset, key).get("fields", []):
                owned[f] = key
    return owned


def field_conflict(dataset: fo.Dataset, key: str, field: str) -> str | None:
    """Why run ``key`` may not write ``field`` without ``overwrite`` (None when it may).

    A run may always rewrite its own fields; a field the user made, or another run owns, is protected.
    """
    try:
        validate_name(field, "field name")
    except ValueError as e:
        return str(e)
    if field not in dataset.get_field_schema():
        return None
    if field in (get_config(dataset, key) or {}).get("fields", []):
        return None
    others = owned_fields(dataset, exclude_key=key)
    if field in others:
        return f"field {field!r} belongs to run {others[field]!r}; choose another name or delete that run"
    return (f"field {field!r} already exists on dataset {dataset.name!r} and was not written by this run; "
            "choose another name or pass overwrite=True to replace it")


def require(dataset: fo.Dataset, key: str, method: str, hint: str) -> dict:
    """The config of a ``complete`` run ``key`` of ``method``; a clear error for a missing, running, failed or
    interrupted one. ``hint`` names the step that makes it (e.g. ``"compute_ssl_embeddings"``)."""
    cfg = get_config(dataset, key)
    if cfg is None or cfg.get("method") != METHOD_PREFIX + method:
        have = list_runs(dataset, method)
        raise ValueError(f"no {NAMES.get(method, method)} run {key!r} on dataset {dataset.name!r} (runs: {have or 'none'}); "
                         f"run {hint} first")
    status = cfg.get("status")
    if status == "complete":
        return cfg
    if status in ("running", "committing") and _lock_held(dataset, key):
        raise ValueError(f"run {key!r} is still running; wait for it to finish")
    why = f": {cfg.get('error')}" if cfg.get("error") else ""
    state = "failed" if status == "failed" else "was interrupted"
    raise ValueError(f"run {key!r} {state}{why}; run {hint} again")


def field_owner(dataset: fo.Dataset, field: str) -> str | None:
    """The key of the run that wrote ``field`` (None: a user's field)."""
    return owned_fields(dataset).get(field)


# ------------------------------------------------------------------------------------------------------------------ locks
def _lock_path(dataset: fo.Dataset, name: str) -> str:
    d = os.path.join(cache_root(), "locks")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{dataset._doc.id}.{name}.lock")


def _lock_held(dataset: fo.Dataset, key: str) -> bool:
    with open(_lock_path(dataset, "run-" + key), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def dataset_lock(dataset: fo.Dataset) -> Iterator[fo.Dataset]:
    """Serialise changes to the dataset document (schema, saved views, run records) across processes, and reload
    the dataset first so a change never writes back another process's stale schema."""
    with open(_lock_path(dataset, "dataset"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            dataset.reload()
            yield dataset
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------------------ lifecycle
class Run:
    """One run of one of our methods (see the module docstring). Use as::

        run = Run(samples, key, METHOD, {"score": fo.FloatField}, config, overwrite=overwrite)  # validates only
        with run:                         # locks the key, records the attempt; on error: rolls back, records it
            ...compute...
            run.write("score", ids, values)           # staged (no sample document touched yet)
            run.tag("outlier", lambda ds: ds.match(F(run.field("flag")) == True))
            run.save_view("outliers", lambda ds: ...)
            run.brain_run("emb_sim", lambda: fob.compute_similarity(...))  # made after the commit
            return run.commit(num_flagged=...)        # move in, tag, save views, record "complete"

    Args:
        samples: the target view (its samples get values; every other sample of the dataset is cleared).
        key: the run key. method: our method name (without the prefix).
        fields: short name -> ``(field name, FieldType class, kwargs)`` or field name -> type: what the run writes.
        config: the settings to record (JSON-serialisable).
        fingerprint_parts: what the run's artifacts depend on (settings, ids, model hashes); keys the artifact
            folder and, with ``resumable``, lets an interrupted attempt with identical inputs keep its staged values.
        overwrite (False): allow replacing fields the user made (never another run's).
    """

    def __init__(self, samples, key: str, method: str, fields: dict, config: dict, *,
                 fingerprint_parts: tuple = (), overwrite: bool = False, minimum: int = 1, what: str | None = None,
                 resumable: bool = False):
        self.samples = samples
        self.dataset: fo.Dataset = samples._dataset
        self.key = validate_run_key(key)
        self.method = METHOD_PREFIX + method
        self.what = what or method.replace("_", " ")
        self.n = check_samples(samples, minimum, self.what)
        self.fields = {short: (spec if isinstance(spec, tuple) else (short, spec, {}))
                       for short, spec in fields.items()}
        for name, _, _ in self.fields.values():
            validate_name(name, "field name")
        self._field_objs = {short: _make_field(name, ftype, kwargs) for short, (name, ftype, kwargs)
                            in self.fields.items()}  # validate and serialise staged values as the fields will
        self.config = dict(config)
        self.overwrite = overwrite
        self.resumable = resumable
        self.fp = fingerprint(self.method, *(fingerprint_parts or (self.config,)))
        self._tags: list[tuple[str, Callable, list[str] | None]] = []
        self._defaults: dict[str, object] = {}  # short -> stored value, held by the samples _default_ids
        self._default_ids: list[str] = []
        self.chunks_computed = self.chunks_resumed = 0
        self._views: list[tuple[str, Callable, str]] = []
        self._brain: list[tuple[str, Callable]] = []
        self._lock = None
        self._committed = False
        old = get_config(self.dataset, key)
        if old is not None and old.get("method") != self.method:
            raise ValueError(f"run key {key!r} is already used by a {old.get('method')!r} run; choose another key")
        self.previous = old
        for name, _, _ in self.fields.values():
            problem = field_conflict(self.dataset, key, name)
            if problem and not (overwrite and field_owner(self.dataset, name) is None):
                raise ValueError(problem)

    # -- names
    def field(self, short: str) -> str:
        """The final name of field ``short``."""
        return self.fields[short][0]

    @property
    def _staging(self):
        """This run key's staging collection (see :meth:`write_columns`)."""
        return _staging_collection(self.dataset, self.key)

    @property
    def artifacts(self) -> str:
        """This attempt's artifact folder (keyed by the fingerprint; created)."""
        path = os.path.join(run_root(self.dataset, self.key), self.fp)
        os.makedirs(path, exist_ok=True)
        return path

    # -- lifecycle
    @property
    def committed(self) -> bool:
        """Whether the run stands (its record and results are saved), even if a step after that failed."""
        return self._committed

    @property
    def primary(self) -> bool:
        """True on the process that writes (rank 0 of a ``torch.distributed`` job, or the only process): the other
        ranks compute their share, and their writes, tags, views and commit are no-ops (the commit returns rank 0's
        results)."""
        job = _job()
        return job is None or job.is_primary()

    def __enter__(self) -> Run:
        if self.primary:
            self._enter_primary()
        self.resumed = _broadcast(getattr(self, "resumed", False))  # every rank waits for rank 0's begin
        return self

    def _enter_primary(self) -> None:
        path = _lock_path(self.dataset, "run-" + self.key)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ValueError(f"run {self.key!r} on dataset {self.dataset.name!r} is already running ({holder}); "
                             "wait for it to finish or use another run key") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._lock = fh
        _remove_leftovers(run_root(self.dataset, self.key))  # ours alone now: nothing else can be using them
        try:
            self._begin()
        except BaseException:
            self._release()
            raise

    def _begin(self) -> None:
        attempt = {"status": "running", "fingerprint": self.fp, "pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with dataset_lock(self.dataset) as ds:
            old = get_config(ds, self.key)
            resumable = self.resumable and old is not None and (old.get("attempt") or {}).get("fingerprint") == self.fp \
                and (old.get("attempt") or {}).get("status") in ("running", "failed", "committing")
            ours = {f for f, _, _ in self.fields.values()} | set((old or {}).get("fields", []))
            legacy = [n for n in ds.get_field_schema()
                      if n in {f + STAGING for f in ours} | set((old or {}).get("staging", []))]
            if legacy:  # staged sample fields of a killed attempt of an earlier version
                ds.delete_sample_fields(legacy)
            if legacy or not resumable:
                _drop_staging(ds, self.key)  # a killed attempt's staged values (for other inputs, or an earlier version's)
                resumable = False
            _drop_orphan_staging(ds)
            self.resumed = resumable
            if old is None or old.get("status") != "complete":
                staging: list[str] = []  # (earlier versions listed staged sample fields here; removed above)
                owned = {k: old[k] for k in ("fields", "tags", "saved_views", "tag_views", "brain_keys")
                         if old and k in old}
                cfg = ds.init_run(method=self.method, status="running", attempt=attempt, staging=staging,
                                  **{"fields": [], **owned})  # what a commit that a kill cut short still owns
                ds.register_run(self.key, cfg, overwrite=True)
            else:
                self._update_record(ds, attempt=attempt)

    def _update_record(self, ds: fo.Dataset, **changes) -> None:
        info = ds.get_run_info(self.key)
        cfg = info.config
        for k, v in changes.items():
            setattr(cfg, k, v)
        ds.update_run_config(self.key, cfg)

    def __exit__(self, etype, exc, tb) -> bool:
        if not self.primary:
            return False
        try:
            if exc is not None and not self.committed:
                self._rollback(exc)
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.seek(0)
            self._lock.truncate()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _rollback(self, exc: BaseException) -> None:
        """Drop the staged values (unless the failure was an interruption worth resuming); keep the previous
        results; record the failure."""
        error = f"{type(exc).__name__}: {exc}"
        keep_staged = isinstance(exc, KeyboardInterrupt)
        try:
            with dataset_lock(self.dataset) as ds:
                if not keep_staged:
                    _drop_staging(ds, self.key)
                attempt = {"status": "failed", "fingerprint": self.fp, "error": error,
                           "failed": time.strftime("%Y-%m-%d %H:%M:%S")}
                if ds.has_run(self.key) and get_config(ds, self.key).get("status") == "complete":
                    self._update_record(ds, attempt=attempt)
                elif ds.has_run(self.key):
                    self._update_record(ds, status="failed", error=error, attempt=attempt)
        except Exception:  # never hide the original error behind a bookkeeping one
            traceback.print_exc()

    # -- writing
    def write(self, short: str, ids: list[str], values: Iterable, chunk: int = 100_000) -> None:
        """Stage ``values`` of field ``short`` for samples ``ids`` (see :meth:`write_columns`)."""
        self.write_columns(ids, {short: values}, chunk)

    def write_columns(self, ids: list[str], columns: dict[str, Iterable], chunk: int = 100_000,
                      defaults: dict[str, object] | None = None) -> None:
        """Stage several fields of samples ``ids`` at once (``{short: values}``, each in the order of ``ids``).

        The values go into the run's staging collection, one small document per sample (a plain insert, ``chunk``
        documents at a time: bounded memory; a later call's values are merged into the same documents server-side).
        No sample document is touched before :meth:`commit`, which moves every staged value in with one server-side
        ``$merge`` and clears the old values of the samples that get none now (:meth:`_move_in`). Values are validated and
        serialised by their fields as ``set_values`` does. A None is not staged in a fresh attempt (a missing value
        reads as None, and most group / error fields are mostly None) and clears the value in a resumed one.

        ``defaults`` (``{short: scalar}``, in one call per run): the value most of these samples hold (a "keep" flag
        that is True but for the duplicates); a None written later for one of them still clears it. The commit sets it on all of ``ids`` in the same server-side update and
        only the other values are staged: one pass instead of a staged document per sample merged in."""
        if not self.primary:  # only rank 0 of a distributed job writes
            return
        from bson import ObjectId

        columns = {short: list(v) if not isinstance(v, list) else v for short, v in columns.items()}
        for short, values in columns.items():
            if len(values) != len(ids):
                raise ValueError(f"{len(values)} values of {short!r} for {len(ids)} samples")
        if len(set(ids)) != len(ids):
            raise ValueError("write_columns got a sample id twice")
        clear = getattr(self, "resumed", False)  # a resumed attempt's None must clear what it staged
        defaults = dict(defaults or {})
        if defaults and self._defaults:
            raise ValueError("defaults are given once per run, in one write_columns call")
        for short, value in defaults.items():
            if short not in columns or not isinstance(value, (bool, int, float, str)):
                raise ValueError(f"the default of {short!r} must be a scalar, for a column written in the same call")
            self._field_objs[short].validate(value)
        if defaults:
            self._defaults = {short: self._field_objs[short].to_mongo(v) for short, v in defaults.items()}
            self._default_ids = list(ids)
        # (name, field, values, skip values equal to this default, stage None: a default would otherwise stand)
        fields = [(self.field(short), self._field_objs[short], values, short in defaults and not clear,
                   defaults.get(short), clear or short in self._defaults) for short, values in columns.items()]
        staging = self._staging
        direct = staging.estimated_document_count() == 0  # nothing to merge with: insert straight in
        target = staging if direct else staging.database[staging.name + ".part"]
        if not direct:
            target.drop()  # a killed call's leftovers
        try:
            written = 0
            for s in range(0, len(ids), chunk):
                docs = []
                for n in range(s, min(s + chunk, len(ids))):
                    doc = {}
                    for name, field, values, skip, default, stage_none in fields:
                        v = values[n]
                        if v is None:
                            if stage_none:
                                doc[name] = None
                        elif not (skip and type(v) is type(default) and v == default):
                            field.validate(v)
                            doc[name] = field.to_mongo(v)
                    if doc:
                        docs.append({"_id": ObjectId(ids[n]), **doc})
                if docs:
                    target.insert_many(docs, ordered=False)
                    written += len(docs)
            if written and not direct:
                target.aggregate([{"$merge": {"into": staging.name, "on": "_id", "whenMatched": "merge",
                                              "whenNotMatched": "insert"}}])
        finally:
            if not direct:
                target.drop()

    def staged_values(self, short: str) -> dict:
        """``{id: value}`` already staged for field ``short`` (an interrupted attempt being resumed)."""
        return staged_values(self.dataset, self.key, self.field(short), self._field_objs[short])

    def chunk(self, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One chunk of this run's work, ``{name: array}``, kept as it completes so that a re-run after a kill
        (same inputs, so the same fingerprint and artifact folder) starts from the last completed chunk.

        Why: scoring a large collection takes hours; a killed worker should lose one chunk, not the run. The file
        ``<artifacts>/chunks/<name>.npz`` is written to a temporary name, fsynced and renamed (atomic: a kill leaves
        a whole chunk or none). ``name`` must say which samples and settings the chunk covers beyond the
        fingerprint (e.g. its sample range). Counts go to ``chunks_computed`` / ``chunks_resumed``; the folder is
        removed once the run is committed."""
        folder = os.path.join(self.artifacts, CHUNKS)
        path = os.path.join(folder, name + ".npz")
        if os.path.isfile(path):
            with np.load(path, allow_pickle=False) as f:
                out = {k: f[k] for k in f.files}
            self.chunks_resumed += 1
            return out
        out = {k: np.asarray(v) for k, v in compute().items()}
        save_arrays(path, out)
        self.chunks_computed += 1
        return out

    def tag(self, tag: str, select: Callable[[fo.Dataset], object], ids: list[str] | None = None) -> None:
        """At commit, ``tag`` goes on the samples ``select(dataset)`` returns (a view over the final fields; it is
        recorded, and a re-run or :func:`delete_run` untags exactly its samples). ``ids``: those samples, when the
        caller knows them: they are tagged by id, without a scan of the dataset to evaluate the view. They must be
        exactly the samples ``select`` returns over the final fields (a sample outside it would keep the tag)."""
        self._tags.append((tag, select, None if ids is None else list(ids)))

    def save_view(self, name: str, make: Callable[[fo.Dataset], object], description: str = "") -> None:
        """At commit, save the view ``make(dataset)`` as ``name`` (a view over the final fields)."""
        self._views.append((name, make, description))

    def brain_run(self, brain_key: str, make: Callable[[], object]) -> None:
        """After the commit, ``make()`` registers FiftyOne Brain run ``brain_key`` (e.g. a similarity index over the
        run's final field); it is recorded in the run's ``brain_keys``, replaced by a re-run and deleted with the
        run. A Brain run of that key that this run did not make is refused here, before anything is touched."""
        validate_name(brain_key, "brain key")
        if self.dataset.has_brain_run(brain_key) and brain_key not in (self.previous or {}).get("brain_keys", []):
            raise ValueError(f"a Brain run {brain_key!r} exists on dataset {self.dataset.name!r} and was not made by "
                             f"run {self.key!r}; delete it or use another run key")
        self._brain.append((brain_key, make))

    def commit(self, **results) -> dict:
        """Move the staged values in, drop the previous run's leftovers, apply tags and views, record the run as
        complete with ``results``; returns ``results``. Names are re-checked first, under the dataset lock: a field
        or saved view that someone else made in the meantime stops the commit with the previous results intact."""
        if not self.primary:
            self._committed = True
            return _broadcast(None)
        out = self._commit(results)
        return _broadcast(out)

    def _commit(self, results: dict) -> dict:
        final = [name for name, _, _ in self.fields.values()]
        with dataset_lock(self.dataset) as ds:
            old = get_config(ds, self.key) or {}
            self._check_names(ds, old)
            # readers refuse the run while its fields are being replaced: a kill in this window leaves a record
            # saying so ("interrupted"), never a complete record over a mix of old and new fields
            self._update_record(ds, status="committing", attempt={"status": "committing", "fingerprint": self.fp})
            kept = self._untag_changed(ds, old)  # while the previous run's fields are still in place
            self._update_record(ds, tags=[], tag_views="{}")  # untagged or guarded: a later attempt must not untag
            # again by these views
            old = {**old, "tags": [], "tag_views": "{}"}
            schema = ds.get_field_schema()
            drop = [name for name in set(old.get("fields", [])) - set(final)  # e.g. a _gain field not written now
                    if name in schema and field_owner(ds, name) == self.key]
            drop += [name for short, (name, _, _) in self.fields.items()  # of another type (e.g. a user's field)
                     if name in schema and not _same_type(schema[name], self._field_objs[short])]
            if drop:  # one pass over the samples for all fields (each field alone is a pass)
                ds.delete_sample_fields(sorted(set(drop)))
            for name, ftype, kwargs in self.fields.values():
                if not ds.has_sample_field(name):
                    ds.add_sample_field(name, ftype, **kwargs)  # the schema only: no sample is touched
            # the fields are the run's from here on: a kill or failure inside the commit leaves them recorded, so
            # the re-run replaces them and delete_run removes them
            self._update_record(ds, fields=sorted(set(old.get("fields", [])) | set(final)))
            self._move_in(ds, final)
            for view in old.get("saved_views", []):
                if ds.has_saved_view(view) and view not in [v[0] for v in self._views]:
                    ds.delete_saved_view(view)
            selections = {tag: select(ds) for tag, select, _ in self._tags}
            tag_views = {tag: view._serialize() for tag, view in selections.items()}
            views = []
            # owned before they are applied: a failure below leaves nothing that a re-run or delete_run cannot remove
            self._update_record(ds, tags=list(tag_views), tag_views=json.dumps(tag_views),
                                saved_views=sorted({*old.get("saved_views", []), *(v[0] for v in self._views)}))
            for tag, _, ids in self._tags:
                if ids is None:
                    selections[tag].tag_samples(tag)
                else:
                    _tag_ids(ds, [i for i in ids if i not in kept.get(tag, ())], tag)
            _guard(ds, self.key).drop()  # the kept tags are the new views' now
            for name, make, description in self._views:
                ds.save_view(name, make(ds), description=description, overwrite=True)
                views.append(name)
            cfg = ds.init_run(method=self.method, fields=final, tags=list(tag_views), saved_views=views,
                              brain_keys=list(old.get("brain_keys", [])),  # still owned until deleted below
                              tag_views=json.dumps(tag_views), status="complete", fingerprint=self.fp,
                              artifacts=self._artifact_dir_if_any(), **self.config)
            ds.register_run(self.key, cfg, overwrite=True)
            results = {k: v for k, v in results.items() if k != "run_key"}
            if self.chunks_computed or self.chunks_resumed:
                results["chunks"] = {"computed": self.chunks_computed, "resumed": self.chunks_resumed}
            ds.save_run_results(self.key, ds.init_run_results(self.key, **_jsonable(results)), overwrite=True)
            self._committed = True  # the run stands even if a Brain run below fails
            try:
                for brain_key in old.get("brain_keys", []):  # over the previous run's values: stale
                    if ds.has_brain_run(brain_key):
                        ds.delete_brain_run(brain_key)
                self._update_record(ds, brain_keys=[])
                made = []
                for brain_key, make in self._brain:
                    made.append(brain_key)
                    self._update_record(ds, brain_keys=list(made))  # owned before it exists: no orphan on failure
                    make()
            finally:  # the run stands: its artifacts are tidied even if a Brain run failed
                self._prune_artifacts()
                shutil.rmtree(os.path.join(run_root(self.dataset, self.key), self.fp, CHUNKS), ignore_errors=True)
        return {"run_key": self.key, **results}

    def _untag_changed(self, ds: fo.Dataset, old: dict) -> dict[str, set[str]]:
        """Remove the previous run's tags, except from the samples this run tags again with the same tag (given by
        id to :meth:`tag`): at a re-run that finds what the last one found, no sample document is rewritten twice
        for nothing. Those samples keep their tag through the commit and are listed in a guard collection (they
        match neither run's recorded views while the fields are replaced), so a kill in between leaves nothing
        that a later attempt or :func:`delete_run` cannot untag. Returns the ``{tag: ids}`` kept."""
        from bson import ObjectId

        _untag_guarded(ds, self.key)  # a killed commit's
        new = {tag: set(ids) for tag, _, ids in self._tags if ids is not None}
        tagged = _tagged(ds, json.loads(old.get("tag_views") or "{}"))
        kept = {tag: [i for i in ids if i in new.get(tag, ())] for tag, ids in tagged.items()}
        holders: dict[str, list[str]] = {}
        for tag, ids in kept.items():
            for i in ids:
                holders.setdefault(i, []).append(tag)
        items = list(holders.items())
        for s in range(0, len(items), ID_CHUNK):
            _guard(ds, self.key).insert_many([{"_id": ObjectId(i), "tags": t} for i, t in items[s:s + ID_CHUNK]])
        for tag, ids in tagged.items():
            _pull_tag(ds, [i for i in ids if i not in new.get(tag, ())], tag)
        return {tag: set(ids) for tag, ids in kept.items()}

    def _move_in(self, ds: fo.Dataset, final: list[str]) -> None:
        """Replace every sample's values of the ``final`` fields by the staged ones. Without :meth:`write_columns`
        defaults: one plain ``$merge`` of the staging collection into the sample documents (every run field of a
        staged sample set, null where nothing was staged, ``last_modified_at`` = the commit's time), then the
        samples holding an old value that the merge did not touch (outside the view, or no value now) are cleared
        (one written by another process meanwhile only if it was not staged): a re-run whose samples all get
        values rewrites each once. With defaults, the old values are cleared and the defaults set first (one
        update of every sample when they cover the dataset, else a clearing pass and an update by id), then the
        ``$merge``. The staging collection is dropped after. (Measured once at 50k: a single ``$merge`` whose
        per-document pipeline unsets and merges was 5x slower.)"""
        from datetime import datetime

        from fiftyone.core.sample import Sample

        if not final:
            return
        time.sleep(0.002)  # (``now`` is later than this commit's earlier writes: the untagging's)
        coll, now = ds._sample_collection, datetime.utcnow()
        clear = {"$unset": {name: "" for name in final}, "$set": {"last_modified_at": now}}
        if self._defaults:
            update = {"$set": {**{self.field(short): v for short, v in self._defaults.items()}, "last_modified_at": now}}
            unset = {name: "" for name in final if name not in update["$set"]}
            update.update({"$unset": unset} if unset else {})
            if len(self._default_ids) == coll.count_documents({}):  # every sample (the ids are distinct samples)
                coll.update_many({}, update)
            else:  # a view: every old value cleared first, then the defaults set on its samples
                coll.update_many(_holding(final), clear)
                _update_ids(coll, self._default_ids, {}, update)
            self._merge_staged(coll, now)
        else:
            self._merge_staged(coll, now)  # (the merged samples' last_modified_at is now)
            coll.update_many({**_holding(final), "last_modified_at": {"$not": {"$gte": now}}}, clear)  # untouched
            # a sample another process wrote meanwhile is cleared only if it was not staged
            stale = coll.aggregate([{"$match": {**_holding(final), "last_modified_at": {"$gt": now}}},
                                    {"$project": {"_id": 1}},
                                    {"$lookup": {"from": self._staging.name, "localField": "_id",
                                                 "foreignField": "_id", "as": "staged"}},
                                    {"$match": {"staged": {"$size": 0}}}, {"$project": {"_id": 1}}])
            _update_ids(coll, [doc["_id"] for doc in stale], {}, clear)
        _drop_staging(ds, self.key)
        Sample._reload_docs(coll.name)  # in-memory samples see the new values (as set_values)

    def _merge_staged(self, coll, now) -> None:
        """The staged documents into the sample documents: every run field set (null where the staged document
        has no value; a field with a default keeps the default already set) and ``last_modified_at`` = ``now``,
        the sample's other fields left alone."""
        fill = {name: {"$ifNull": ["$" + name, None]} for short, (name, _, _) in self.fields.items()
                if short not in self._defaults}
        self._staging.aggregate([{"$set": {**fill, "last_modified_at": now}},
                                 {"$merge": {"into": coll.name, "on": "_id", "whenMatched": "merge",
                                             "whenNotMatched": "discard"}}])

    def _check_names(self, ds: fo.Dataset, old: dict) -> None:
        """A field or saved view of the same name that this run did not make (the user's, or another run's) is
        never replaced (fields: unless ``overwrite`` was passed for a user's field)."""
        for name, _, _ in self.fields.values():
            problem = field_conflict(ds, self.key, name)
            if problem and not (self.overwrite and field_owner(ds, name) is None):
                raise ValueError(problem)
        for name, _, _ in self._views:
            if ds.has_saved_view(name) and name not in old.get("saved_views", []):
                raise ValueError(f"a saved view named {name!r} exists on dataset {ds.name!r} and was not made by run "
                                 f"{self.key!r}; rename or delete it, or use another run key")

    def _artifact_dir_if_any(self) -> str | None:
        path = os.path.join(run_root(self.dataset, self.key), self.fp)
        return path if os.path.isdir(path) else None

    def _prune_artifacts(self) -> None:
        """Artifacts of other fingerprints of this key are stale once this run is committed."""
        root = run_root(self.dataset, self.key)
        if os.path.isdir(root):
            for name in os.listdir(root):
                if name != self.fp:
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically (temporary name, fsync, rename): a kill leaves the
    whole file or none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _scratch_name(dataset: fo.Dataset, key: str) -> str:
    """The staging collection of run ``key`` (:meth:`Run.write_columns`; one per dataset and run key)."""
    return f"{SCRATCH_PREFIX}{dataset._sample_collection_name}.{key}"


def _staging_collection(dataset: fo.Dataset, key: str):
    return dataset._sample_collection.database[_scratch_name(dataset, key)]


def _job():
    """:mod:`core.distributed` in a process that may have joined a torchrun job; None in one that never imported
    torch, which cannot have (only ``distributed.init`` joins, and it imports torch): the embedding-level stages
    (near-duplicates from an embedding, outliers) run without torch, 0.45 GB lighter."""
    import sys

    if "torch" not in sys.modules:
        return None
    from .core import distributed

    return distributed


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank of a job (``obj`` itself in one process)."""
    job = _job()
    return obj if job is None else job.broadcast(obj)


def _drop_orphan_staging(dataset: fo.Dataset) -> None:
    """Drop the staging collections of datasets that no longer exist (a killed run's, whose dataset was deleted
    before any re-run could tidy it): nothing else would ever remove them."""
    db = dataset._sample_collection.database
    live = {d.get("sample_collection_name") for d in db.datasets.find({}, {"sample_collection_name": 1})}
    for name in db.list_collection_names():
        if name.startswith(SCRATCH_PREFIX) and not staging_owners(name) & live:
            db.drop_collection(name)


def staging_owners(name: str) -> set[str]:
    """The samples collections a staging collection may belong to: ``fo_ssl_scratch.<collection>.<key>`` with an
    optional ``.part`` / ``.tags`` suffix, any dots in the collection's name (``samples.<id>``, an old dataset's
    ``samples.2021.05.03...``, a frame-patches view's ``patches.frames.<id>``) and none in run keys. A run key may
    itself be ``part`` or ``tags``: each reading is a candidate, and a collection is an orphan only if none is live."""
    rest = name[len(SCRATCH_PREFIX):]
    owners = {rest.rsplit(".", 1)[0]}
    for suffix in (".part", GUARD_SUFFIX):
        if rest.endswith(suffix):
            owners.add(rest[:-len(suffix)].rsplit(".", 1)[0])
    return owners


def _drop_staging(dataset: fo.Dataset, key: str) -> None:
    """Drop run ``key``'s staging collection and the part a killed :meth:`Run.write_columns` call may have left."""
    for name in (_scratch_name(dataset, key), _scratch_name(dataset, key) + ".part"):
        dataset._sample_collection.database.drop_collection(name)


def staged_values(dataset: fo.Dataset, key: str, field_name: str, field=None) -> dict:
    """``{id: value}`` that the current attempt of run ``key`` has staged for ``field_name`` and not yet committed,
    read as ``field`` (default: the dataset's field of that name) reads them."""
    field = field if field is not None else dataset.get_field(field_name)
    if field is None:  # before a first run's commit the dataset does not declare it
        raise ValueError(f"field {field_name!r} is not declared on dataset {dataset.name!r} yet; pass field=")
    return {str(d["_id"]): field.to_python(d[field_name])
            for d in _staging_collection(dataset, key).find({field_name: {"$ne": None}}, {field_name: 1})}


def _make_field(name: str, ftype, kwargs: dict):
    """A field instance as ``add_sample_field(name, ftype, **kwargs)`` would declare it."""
    from fiftyone.core.odm.utils import create_field

    return create_field(name, ftype, **kwargs)


def _same_type(have, want) -> bool:
    """Whether a declared field ``have`` holds what ``want`` holds (its type, and the element type of a list)."""
    return type(have) is type(want) and type(getattr(have, "field", None)) is type(getattr(want, "field", None))


def _untag(ds: fo.Dataset, cfg: dict, key: str) -> None:
    """Remove run ``key``'s tags from exactly the samples it tagged (its recorded selections over its own fields,
    and the samples a killed commit kept tagged), so a user's own samples with a tag of the same name keep it."""
    _untag_guarded(ds, key)
    for tag, ids in _tagged(ds, json.loads(cfg.get("tag_views") or "{}")).items():
        _pull_tag(ds, ids, tag)


def _tagged(ds: fo.Dataset, tag_views: dict) -> dict[str, list[str]]:
    """``{tag: ids}``: the samples each recorded selection (a serialised view) selects that hold its tag. One scan
    finds the samples holding any of the tags; each selection is evaluated over those alone (by id)."""
    import fiftyone.core.stages as fost

    holders = ds.match_tags(list(tag_views)).values("id") if tag_views else []
    out: dict[str, list[str]] = {tag: [] for tag in tag_views}
    for s in range(0, len(holders), ID_CHUNK):  # (an id list in one query is capped by MongoDB's 16 MB)
        for tag, stages in tag_views.items():
            view = ds.select(holders[s:s + ID_CHUNK])
            for stage in stages:
                view = view.add_stage(fost.ViewStage._from_dict(stage))
            out[tag] += view.match_tags(tag).values("id")
    return out


def _guard(ds: fo.Dataset, key: str):
    """The collection listing the samples that keep run ``key``'s tags while a commit replaces its fields
    (:meth:`Run._untag_changed`): ``{_id, tags}``."""
    return ds._sample_collection.database[_scratch_name(ds, key) + GUARD_SUFFIX]


def _untag_guarded(ds: fo.Dataset, key: str) -> None:
    """Remove the tags a killed commit of run ``key`` kept on samples (its guard collection), then the guard."""
    guard = _guard(ds, key)
    by_tag: dict[str, list[str]] = {}
    for doc in guard.find({}):
        for tag in doc["tags"]:
            by_tag.setdefault(tag, []).append(str(doc["_id"]))
    for tag, ids in by_tag.items():
        _pull_tag(ds, ids, tag)
    guard.drop()


def _pull_tag(ds: fo.Dataset, ids: list[str], tag: str) -> None:
    """Remove ``tag`` from samples ``ids`` (server-side updates by id)."""
    from datetime import datetime

    _update_ids(ds._sample_collection, ids, {"tags": tag},
                {"$pull": {"tags": tag}, "$set": {"last_modified_at": datetime.utcnow()}})


def _tag_ids(ds: fo.Dataset, ids: list[str], tag: str) -> None:
    """Add ``tag`` to samples ``ids`` that lack it: server-side updates by id (no read of the samples first, as
    ``tag_samples`` does to evaluate its view; a sample whose tags are null gets a list)."""
    from datetime import datetime

    _update_ids(ds._sample_collection, ids, {"tags": {"$ne": tag}},
                [{"$set": {"tags": {"$concatArrays": [{"$ifNull": ["$tags", []]}, {"$literal": [tag]}]},
                           "last_modified_at": datetime.utcnow()}}])


def _holding(final: list[str]) -> dict:
    """The query of the samples holding a value of any of the fields ``final``."""
    return {"$or": [{name: {"$exists": True}} for name in final]}


def _update_ids(coll, ids: list, match: dict, update) -> None:
    """``update`` on the documents ``ids`` (str or ObjectId) that match ``match``, ``ID_CHUNK`` ids a query (an id
    list is capped by MongoDB's 16 MB a command); in-memory samples reloaded."""
    from bson import ObjectId
    from fiftyone.core.sample import Sample

    for s in range(0, len(ids), ID_CHUNK):
        coll.update_many({"_id": {"$in": [ObjectId(i) for i in ids[s:s + ID_CHUNK]]}, **match}, update)
    if ids:
        Sample._reload_docs(coll.name, sample_ids=ids)


def _remove_leftovers(root: str) -> None:
    """What a killed attempt left behind: temporary decoded-image folders (``DECODED_PREFIX``) and half-written
    files (:func:`save_arrays`' ``.tmp-<pid>`` names)."""
    if os.path.isdir(root):
        for fp in os.listdir(root):
            folder = os.path.join(root, fp)
            for name in os.listdir(folder) if os.path.isdir(folder) else []:
                if name.startswith(DECODED_PREFIX):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                elif ".tmp-" in name:
                    os.remove(os.path.join(folder, name))


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=_default))


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ----------------------------------------------------------------------------------------------------------- reading
def load_results(dataset: fo.Dataset, key: str) -> dict:
    """The stored results of run ``key`` as a dict."""
    res = dataset.load_run_results(key, cache=False)
    return {k: v for k, v in vars(res).items() if not k.startswith("_")}


def delete_run(dataset: fo.Dataset, key: str, delete_fields: bool = True) -> None:
    """Delete run ``key``: exactly the fields (if asked), tags, saved views, Brain runs and artifacts it recorded,
    and the record. Refused while the run is running."""
    cfg = get_config(dataset, key)
    if cfg is None or not str(cfg.get("method", "")).startswith(METHOD_PREFIX):
        raise ValueError(f"no SSL-curation run {key!r} on dataset {dataset.name!r}")
    with open(_lock_path(dataset, "run-" + key), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while deleting: no run of the key can start
        except BlockingIOError:
            raise ValueError(f"run {key!r} is running; wait for it to finish before deleting it") from None
        with dataset_lock(dataset) as ds:
            _untag(ds, cfg, key)  # before the fields its selections read are deleted
            schema = ds.get_field_schema()
            if delete_fields:
                for name in [*cfg.get("fields", []), *(f + STAGING for f in cfg.get("fields", [])),
                             *cfg.get("staging", [])]:
                    if name in schema:
                        ds.delete_sample_field(name)
                        schema = ds.get_field_schema()
            for view_name in cfg.get("saved_views", []):
                if ds.has_saved_view(view_name):
                    ds.delete_saved_view(view_name)
            for brain_key in cfg.get("brain_keys", []):
                if ds.has_brain_run(brain_key):
                    ds.delete_brain_run(brain_key)
            ds.delete_run(key)
            _drop_staging(ds, key)  # a killed attempt's leftovers
        shutil.rmtree(run_root(dataset, key), ignore_errors=True)
