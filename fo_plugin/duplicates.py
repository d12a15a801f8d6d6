"""``find_near_duplicates``: near-duplicate groups from SSL embeddings, confirmed by an aligned pixel comparison
(and optionally influence-gradient similarity), with one representative kept per group. Nothing is deleted:
``_keep`` flags, tags and saved views say what an export would drop."""

from __future__ import annotations

import os
import time
import uuid

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from . import params, runs
from .core.duplicates import DUPLICATE_THRESHOLD, PIXEL_K, embedding_candidates, groups, representatives
from .core.hashing import array_hash, file_hash, hash_groups, pixel_hash
from .core.knn import unit_rows
from .core.splits import leaky_fractions, leaky_groups
from .features import DecodedImages, canonical, field_vectors, take_rows
from .progress import ProgressArg, reporter

METHOD = runs.METHOD_PREFIX + "near_duplicates"
POLICIES = ("clcore", "influence", "largest_file", "first")
SPLIT_TAGS = ("train", "test", "val", "validation")
PAIRS_PREFIX = "pairs-"  # the run's confirmed pairs and their evidence, columnar (see load_duplicate_pairs)


def duplicate_fields(run_key: str) -> dict[str, str]:
    return {k: f"{run_key}_{k}" for k in ("group", "kind", "keep", "score", "error")}


FIELD_TYPES = {"group": fo.IntField, "kind": fo.StringField, "keep": fo.BooleanField, "score": fo.FloatField,
               "error": fo.StringField}


def _names(run_key: str) -> tuple[str, str, str, str, str]:
    """(duplicate tag, representative tag, duplicates view, representatives view, leaky-split view) of a run."""
    if run_key == "dups":
        return ("near_duplicate", "duplicate_representative", "near duplicates", "duplicate representatives",
                "leaky split pairs")
    return (f"{run_key}:near_duplicate", f"{run_key}:representative", f"near duplicates [{run_key}]",
            f"duplicate representatives [{run_key}]", f"leaky split pairs [{run_key}]")


def split_source(samples, split: str | None) -> str | None:
    """Where the split labels come from: a string field, ``"tags"`` (train / test / val / validation tags), or None.
    ``split=None`` detects: a string field named "split", else those tags if any sample has one; "none" is off."""
    if split == "none":
        return None
    schema = samples.get_field_schema()
    if split is None:
        if isinstance(schema.get("split"), fo.StringField):
            return "split"
        return "tags" if set(samples.distinct("tags")) & set(SPLIT_TAGS) else None
    if split == "tags":
        return split
    if split not in schema:
        raise ValueError(f"split field {split!r} does not exist (give a string field, 'tags' or 'none')")
    if not isinstance(schema[split], fo.StringField):
        raise ValueError(f"split field {split!r} is a {type(schema[split]).__name__}, not a string field")
    return split


def _split_labels(samples, source: str, ids: list[str]) -> np.ndarray:
    """(N,) split label of each of ``ids`` (None where a sample has none; with tags, the first split tag)."""
    sids, vals = samples.values(["id", source])
    if source == "tags":
        vals = [next((t for t in SPLIT_TAGS if t in (tags or [])), None) for tags in vals]
        vals = ["val" if v == "validation" else v for v in vals]  # one split, two spellings
    by_id = dict(zip(sids, vals))
    return np.array([by_id.get(i) for i in ids], dtype=object)


def _priority(samples, ids: list[str], paths: list[str], pos: np.ndarray, policy: str, clcore_run: str,
              influence_run: str, rows: np.ndarray) -> np.ndarray:
    """Higher is kept: CL-Core score, minus self-influence, file size, or earlier position in the view (``pos``).
    Only ``rows`` (the group members: the only samples compared) get a value; the others get -inf."""
    out = np.full(len(ids), -np.inf)
    if len(rows) == 0:
        return out
    if policy == "first":
        out[rows] = -pos[rows]
        return out
    if policy == "largest_file":
        out[rows] = [_size(paths[r]) for r in rows]
        return out
    field = f"{clcore_run}_score" if policy == "clcore" else f"{influence_run}_self_influence"
    if field not in samples.get_field_schema():
        raise ValueError(f"keep={policy!r} needs field {field!r}: run "
                         f"{'compute_clcore' if policy == 'clcore' else 'compute_ssl_influence'} first")
    members = [ids[r] for r in rows]
    by_id = {}
    for s in range(0, len(members), runs.ID_CHUNK):  # (an id list in one query is capped by MongoDB's 16 MB)
        by_id.update(zip(*samples.select(members[s:s + runs.ID_CHUNK]).values(["id", field])))
    vals = np.array([by_id.get(ids[r]) if by_id.get(ids[r]) is not None else np.nan for r in rows], dtype=float)
    out[rows] = np.nan_to_num(vals if policy == "clcore" else -vals, nan=-np.inf)
    return out


def _size(path: str) -> int:
    """The file's size in bytes; -1 if it is missing (one ``stat``)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def find_near_duplicates(
    samples: fo.core.collections.SampleCollection,
    run_key: str = "dups",
    *,
    embeddings_field: str = "ssl_embedding",
    k: int = 10,
    threshold: float = 0.8,
    pixel_k: int = PIXEL_K,
    verify_threshold: float | None = DUPLICATE_THRESHOLD,
    influence_run: str | None = None,
    influence_threshold: float = 0.9,
    mutual: bool = False,
    split: str | None = None,
    keep: str = "first",
    clcore_run: str = "clcore",
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> dict:
    """Group near-duplicates and flag one representative per group.

    Byte-identical files (and images with identical decoded pixels, when the pixel check runs) are found by
    hashing (group kind ``"exact"``; byte-identical files whether or not they have an embedding). A near-duplicate
    pair is reported when the two samples are candidates (among each other's ``k`` nearest SSL neighbours with
    cosine >= ``threshold``, or, with the pixel check, among each other's ``pixel_k`` nearest by aligned 8 x 8 luma
    windows: :func:`fo_plugin.core.verify.pixel_candidates`, for the shifted and cropped copies the embedding
    ranks too far) and the aligned comparison of their 32x32 luma thumbnails (best shift, zoom,
    flip and small rotation; layout and local detail must agree, see
    :func:`fo_plugin.core.verify.aligned_pair_scores`) scores >= ``verify_threshold`` (None: the embedding
    alone decides), and, with ``influence_run``, the cosine of their influence gradients >= ``influence_threshold``.

    Args:
        samples: a dataset or view.
        run_key ("dups"): names the run; fields ``<key>_group`` (None: no duplicate), ``<key>_kind`` ("exact":
            in a group of byte-identical files; "near": confirmed near-duplicates), ``<key>_keep`` (False: a
            duplicate an export would drop), ``<key>_score`` (the best score of the sample's confirmed pairs: how
            sure the match is, 1 for identical thumbnails; the SSL cosine without ``verify_threshold``; None when
            the sample is in no confirmed pair).
        embeddings_field ("ssl_embedding"): the embeddings to search.
        pixel_k (5): pixel-window candidates per sample, added to the SSL ones when ``verify_threshold`` is set
            (0: SSL candidates only).
        keep ("first"): which member represents a group: ``"clcore"`` (highest CL-Core score of ``clcore_run``),
            ``"influence"`` (lowest self-influence of ``influence_run``), ``"largest_file"`` or ``"first"`` (first
            in the view's order).
        mutual (False): require mutual nearest neighbours.
        split (None: detect): where each sample's split comes from: a string field, ``"tags"`` (train / test /
            val / validation tags), ``"none"``; detected from a string field named "split", else those tags. With
            a split, ``<key>_leaky`` is True on every member of a group that spans splits, the saved view "leaky
            split pairs" holds them, and the results give each split's fraction of samples with a duplicate in
            another split (``leaky_fraction``).

    Returns:
        a summary dict (also the run's stored results); the confirmed pairs and their evidence are in the run's
        pair table: :func:`load_duplicate_pairs`.
    """
    dataset = samples._dataset
    runs.validate_run_key(run_key)
    params.choice("keep", keep, POLICIES)
    k = params.integer("k", k, 1)
    pixel_k = params.integer("pixel_k", pixel_k, 0)
    threshold = params.number("threshold", threshold, 0, 1, open_min=True)
    verify_threshold = params.number("verify_threshold", verify_threshold, 0, 1, none_ok=True)
    influence_threshold = params.number("influence_threshold", influence_threshold, -1, 1)
    if influence_run:
        runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    if keep == "clcore":
        runs.require(dataset, clcore_run, "clcore", "compute_clcore (or choose another keep policy)")
    if keep == "influence" and not influence_run:
        raise ValueError("keep='influence' needs influence_run=<an influence run> (the lowest self-influence is kept)")
    names = duplicate_fields(run_key)
    dup_tag, rep_tag, dup_view, rep_view, leak_view = _names(run_key)
    source = split_source(samples, split)
    types = dict(FIELD_TYPES)
    if source is not None:
        names["leaky"], types["leaky"] = f"{run_key}_leaky", fo.BooleanField
    config = {"embeddings_field": embeddings_field, "k": k, "threshold": threshold,
              "pixel_k": pixel_k if verify_threshold is not None else 0,
              "verify_threshold": verify_threshold, "influence_run": influence_run,
              "influence_threshold": influence_threshold, "mutual": mutual, "keep": keep, "clcore_run": clcore_run,
              "split": source}
    run = runs.Run(samples, run_key, "near_duplicates", {k_: (v, types[k_], {}) for k_, v in names.items()},
                   config, overwrite=overwrite, minimum=2, what="near-duplicate search")
    with run, reporter(progress, "near-duplicates") as progress:
        t0 = time.perf_counter()
        ids, paths, pos = canonical(samples, positions=True)
        same_bytes = hash_groups([file_hash(p) if os.path.isfile(p) else None for p in paths])
        progress(0.1, f"{int((same_bytes >= 0).sum())} samples are byte-identical copies")
        pixel_keys: list[str | None] = [None] * len(ids)
        z, ok, rejected = field_vectors(samples, embeddings_field, ids)
        valid = np.flatnonzero(ok)
        vids, vpaths = [ids[i] for i in valid], [paths[i] for i in valid]
        if verify_threshold is None:
            cand = embedding_candidates(take_rows(z[0], valid), k, threshold, mutual, in_place=True) \
                if len(valid) > 1 else np.zeros((0, 3))
            progress(0.3, f"{len(cand)} candidate pairs")
            evidence = {"cosine": cand[:, 2]}
        else:
            from .core.verify import (  # (torch: not needed without the pixel check)
                aligned_pair_scores,
                pixel_candidates,
            )

            with DecodedImages(vpaths, vids, 32, run.artifacts) as thumbs:  # a uint8 memmap, read chunk by chunk
                for r, key in _identical_pixels(thumbs, vpaths).items():
                    pixel_keys[int(valid[r])] = key
                extra = None
                if pixel_k and len(valid) > 1:
                    progress(0.15, "pixel-window candidates")
                    extra = pixel_candidates(thumbs.images, pixel_k)
                if extra is not None:  # undecodable thumbnails (zeros) are no pixel candidates
                    decoded = np.isin(np.arange(len(valid)), thumbs.valid)
                    extra = extra[decoded[extra[:, 0].astype(np.int64)] & decoded[extra[:, 1].astype(np.int64)]]
                cand = embedding_candidates(take_rows(z[0], valid), k, threshold, mutual, extra, in_place=True) \
                    if len(valid) > 1 else np.zeros((0, 3))
                progress(0.3, f"{len(cand)} candidate pairs")
                evidence = {"cosine": cand[:, 2]}
                if len(cand):
                    evidence.update(aligned_pair_scores(thumbs.images, cand[:, :2].astype(np.int64)))
        score = evidence["score"] if "score" in evidence else evidence["cosine"]
        confirmed = score >= (verify_threshold if verify_threshold is not None else -np.inf)
        if influence_run:
            sig = _influence_signature(dataset, influence_run, vids)
            i, j = (cand[:, c].astype(np.int64) for c in (0, 1))
            evidence["influence"] = np.einsum("ij,ij->i", sig[i], sig[j]).astype(np.float64)
            confirmed &= evidence["influence"] >= influence_threshold
        pairs = cand[confirmed]
        evidence = {name: v[confirmed] for name, v in evidence.items()}
        score = score[confirmed]
        best = np.full(len(valid), -np.inf)  # each sample's best confirmed pair score
        for c in (0, 1):
            np.maximum.at(best, pairs[:, c].astype(np.int64), score)
        progress(0.6, f"{len(pairs)} confirmed pairs")
        near = np.column_stack([valid[pairs[:, 0].astype(np.int64)], valid[pairs[:, 1].astype(np.int64)]]) \
            if len(pairs) else np.zeros((0, 2), np.int64)
        exact = groups(len(ids), np.array(_chain(same_bytes) + _chain(hash_groups(pixel_keys)), np.float64
                                          ).reshape(-1, 2))  # identical bytes or identical decoded pixels
        chain = _chain(exact)
        group = groups(len(ids), np.array([*near.tolist(), *chain], dtype=np.float64).reshape(-1, 2))
        kind = np.where(exact >= 0, "exact", np.where(group >= 0, "near", None))
        priority = _priority(samples, ids, paths, pos, keep, clcore_run, influence_run or "",
                             np.flatnonzero(group >= 0))
        keep_mask = representatives(group, priority)
        progress(0.7, f"{int((group >= 0).sum())} samples in {len(np.unique(group[group >= 0]))} groups")
        scored = [ids[i] for i in np.union1d(valid, np.flatnonzero(exact >= 0))]
        where = {i: n for n, i in enumerate(ids)}

        best_of = {vids[r]: float(b) for r, b in enumerate(best) if np.isfinite(b)}
        run.write_columns(scored, {  # one update per sample for all fields
            "group": [int(group[where[i]]) if group[where[i]] >= 0 else None for i in scored],
            "kind": [kind[where[i]] for i in scored], "keep": [bool(keep_mask[where[i]]) for i in scored],
            "score": [best_of.get(i) for i in scored]},  # samples in no confirmed pair have no score
            defaults={"keep": True})  # (most samples: set in one pass at commit, not staged one by one)
        unscored = [i for i in rejected if exact[where[i]] < 0]
        run.write("error", unscored, [rejected[i] for i in unscored])
        g_, k_ = names["group"], names["keep"]
        member = group >= 0
        run.tag(dup_tag, lambda ds: ds.match((F(g_) != None) & (F(k_) == False)),  # noqa: E711
                [ids[i] for i in np.flatnonzero(member & ~keep_mask)])
        run.tag(rep_tag, lambda ds: ds.match((F(g_) != None) & (F(k_) == True)),  # noqa: E711
                [ids[i] for i in np.flatnonzero(member & keep_mask)])
        run.save_view(dup_view, lambda ds: ds.match(F(g_) != None).sort_by(g_),  # noqa: E711
                      f"near-duplicate groups of run {run_key!r}")
        run.save_view(rep_view, lambda ds: ds.match((F(g_) != None) & (F(k_) == True)).sort_by(g_),  # noqa: E711
                      f"the member kept in each near-duplicate group of run {run_key!r}")
        leak = {"split": source}
        if source is not None:
            labels = _split_labels(samples, source, ids)
            leaky = leaky_groups(group, labels)
            run.write("leaky", [ids[i] for i in np.flatnonzero(leaky)], [True] * int(leaky.sum()))
            l_ = names["leaky"]
            run.save_view(leak_view, lambda ds: ds.match(F(l_) == True).sort_by(g_),  # noqa: E712
                          f"duplicate groups of run {run_key!r} whose members lie in different splits ({source})")
            leak.update(leaky_fraction=leaky_fractions(leaky, labels), num_leaky_samples=int(leaky.sum()),
                        num_leaky_groups=int(len(np.unique(group[leaky]))))
        table = _save_pairs(run, ids, near, np.array(chain, np.int64).reshape(-1, 2), {**evidence, "score": score})
        try:
            summary = run.commit(num_samples=len(ids), num_scored=len(scored), num_skipped=len(ids) - len(scored),
                                 num_exact_groups=int(len(np.unique(exact[exact >= 0]))),
                                 num_exact_samples=int((exact >= 0).sum()),
                                 num_pairs=len(near) + len(chain), pair_table=os.path.basename(table),
                                 num_groups=int(len(np.unique(group[group >= 0]))),
                                 num_in_groups=int((group >= 0).sum()), num_to_drop=int((~keep_mask).sum()),
                                 saved_views=[dup_view, rep_view] + ([leak_view] if source else []),
                                 tags=[dup_tag, rep_tag], **leak,
                                 seconds=time.perf_counter() - t0)
        except BaseException:
            if not run.committed:
                os.remove(table)  # the previous run, if any, keeps its own table
            raise
        _keep_only(table)
    progress(1.0, "done")
    return summary


def _save_pairs(run: runs.Run, ids: list[str], near: np.ndarray, exact: np.ndarray, evidence: dict) -> str:
    """Write this attempt's pair table into the run's artifact folder: columns, not one record per pair, so
    millions of pairs cost tens of bytes each and never sit in the run record. ``near`` / ``exact``: (P, 2) rows
    into ``ids``; ``evidence``: one value per near pair (exact pairs get cosine and score 1, other evidence NaN).
    The file name is new for each attempt (a failed attempt never replaces the table a committed run points to);
    returns its path."""
    n_exact = len(exact)
    cols = {name: np.concatenate([np.asarray(v, np.float64),
                                  np.full(n_exact, 1.0 if name in ("cosine", "score") else np.nan)])
            for name, v in evidence.items()}
    both = np.concatenate([near.astype(np.int64).reshape(-1, 2), exact])
    path = os.path.join(run.artifacts, f"{PAIRS_PREFIX}{uuid.uuid4().hex[:12]}.npz")
    runs.save_arrays(path, {"ids": np.asarray(ids, dtype=np.bytes_), "a": both[:, 0], "b": both[:, 1],
                            "exact": np.arange(len(both)) >= len(near), **cols})
    return path


def _keep_only(path: str) -> None:
    """Remove the other attempts' pair tables beside ``path`` (the committed one)."""
    folder, name = os.path.split(path)
    for other in os.listdir(folder):
        if other.startswith(PAIRS_PREFIX) and other != name:
            os.remove(os.path.join(folder, other))


def load_duplicate_pairs(dataset: fo.Dataset, run_key: str = "dups", ids=None, columns: bool = False
                         ) -> list[dict] | dict[str, np.ndarray]:
    """The confirmed pairs of near-duplicates run ``run_key``: one dict per pair with ``a`` and ``b`` (sample ids),
    ``kind`` ("near" or "exact") and the evidence the run recorded (``score``: how sure the match is, ``cosine``,
    ``aligned``, ``layout``, ``detail``, ``patch``, ``influence``); only the pairs between two of ``ids`` when
    given (a group's members, say: the table's id and pair columns are scanned, and dicts are made for the matching
    pairs only). Pairs may name samples deleted since the run. The table is a file in this machine's run cache
    (``FO_SSL_CACHE_DIR``), recorded on the run; runs made before it existed kept their pairs in the results.

    ``columns=True``: the pairs as arrays, no dict per pair (for millions of pairs): ``ids`` (M,) str, ``a`` and
    ``b`` int64 rows into ``ids``, ``exact`` bool, and one float64 array per kind of evidence (NaN: none)."""
    cfg = runs.require(dataset, run_key, "near_duplicates", "find_near_duplicates")
    results = runs.load_results(dataset, run_key)
    wanted = None if ids is None else [ids] if isinstance(ids, str) else list(ids)
    if "pair_table" not in results:  # a run of an earlier version: its pairs are in the results
        if "pairs" not in results and results.get("num_pairs"):
            raise ValueError(f"near-duplicates run {run_key!r} kept its pairs in a form this version does not read; "
                             "run find_near_duplicates again")
        keep = None if wanted is None else set(wanted)
        pairs = [dict(p) for p in results.get("pairs", []) if keep is None or (p.get("a") in keep and p.get("b") in keep)]
        return _pair_columns(pairs) if columns else pairs
    folder = cfg.get("artifacts")
    path = os.path.join(runs.run_root(dataset, run_key), os.path.basename(folder or ""), results["pair_table"])
    if not folder or not os.path.isfile(path):
        raise ValueError(f"the pair table of near-duplicates run {run_key!r} is not in this machine's run cache "
                         f"({path}: removed, another FO_SSL_CACHE_DIR, or a cloned dataset); run "
                         "find_near_duplicates again")
    with np.load(path, allow_pickle=False) as f:
        table_ids, a, b, exact = f["ids"], f["a"], f["b"], f["exact"]
        rows = np.arange(len(a))
        if wanted is not None:
            member = np.isin(table_ids, np.asarray(wanted, dtype=np.bytes_))
            rows = np.flatnonzero(member[a] & member[b])
        cols = {k: f[k][rows] for k in f.files if k not in ("ids", "a", "b", "exact")}
    if columns:
        return {"ids": table_ids.astype(str), "a": a[rows].astype(np.int64), "b": b[rows].astype(np.int64),
                "exact": exact[rows].astype(bool), **{k: v.astype(np.float64) for k, v in cols.items()}}
    out = []
    for n, r in enumerate(rows):
        pair = {"a": table_ids[a[r]].decode(), "b": table_ids[b[r]].decode(), "kind": "exact" if exact[r] else "near"}
        # exact pairs have no pixel evidence (NaN in the table); a near pair keeps every value, NaN included
        pair.update({name: float(v[n]) for name, v in cols.items() if not (exact[r] and np.isnan(v[n]))})
        out.append(pair)
    return out


def _pair_columns(pairs: list[dict]) -> dict[str, np.ndarray]:
    """Pair dicts (an earlier version's results) as :func:`load_duplicate_pairs` columns."""
    ids = sorted({p[c] for p in pairs for c in ("a", "b")})
    row = {i: n for n, i in enumerate(ids)}
    names = sorted({k for p in pairs for k in p} - {"a", "b", "kind"})
    return {"ids": np.array(ids, dtype=str), "a": np.array([row[p["a"]] for p in pairs], np.int64),
            "b": np.array([row[p["b"]] for p in pairs], np.int64),
            "exact": np.array([p.get("kind") == "exact" for p in pairs], bool),
            **{k: np.array([p.get(k, np.nan) for p in pairs], np.float64) for k in names}}


def _chain(group: np.ndarray) -> list[tuple[int, int]]:
    """Pairs linking the members of each group in a chain (consecutive members after sorting): O(N log N)."""
    order = np.argsort(group, kind="stable")
    order = order[group[order] >= 0]
    return [(int(a), int(b)) for a, b in zip(order[:-1], order[1:]) if group[a] == group[b]]


def _identical_pixels(thumbs: DecodedImages, paths: list[str]) -> dict[int, str]:
    """{row: full-resolution pixel hash} for the decoded images whose thumbnail equals another's: only those can
    have identical pixels, so the full decode is paid for a handful of candidates, not for every image."""
    keys = {int(r): array_hash(thumbs.images[r]) for r in thumbs.valid}
    counts: dict[str, int] = {}
    for k in keys.values():
        counts[k] = counts.get(k, 0) + 1
    return {r: h for r, k in keys.items() if counts[k] > 1 and (h := pixel_hash(paths[r])) is not None}


def _influence_signature(dataset, influence_run: str, ids: list[str]) -> np.ndarray:
    """Unit-norm influence gradient sketches of ``ids`` (zeros for samples the influence run did not score)."""
    cfg = runs.require(dataset, influence_run, "ssl_influence", "compute_ssl_influence")
    path = os.path.join(cfg["artifacts"], "grad_sketch.npy")
    if not os.path.isfile(path):
        raise ValueError(f"influence run {influence_run!r} kept no gradient sketch (project_dim=0)")
    z = unit_rows(np.load(path))
    with open(os.path.join(cfg["artifacts"], "grad_sketch_ids.txt")) as fh:
        row = {sid: i for i, sid in enumerate(fh.read().split("\n"))}
    out = np.zeros((len(ids), z.shape[1]), np.float32)
    have = [n for n, i in enumerate(ids) if i in row]
    out[have] = z[[row[ids[n]] for n in have]]
    return out
