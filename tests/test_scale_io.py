"""Bulk FiftyOne I/O: vector fields read in chunks (decoded fast) give exactly the stored vectors, and a run's
several fields written in one pass read back as written (None left unset), and the embedding-level stages need no
torch."""

import json
import os
import subprocess
import sys
import textwrap

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np
import pytest

from fo_plugin import features, runs


@pytest.fixture()
def vec_dataset():
    """60 samples (no images needed) with a 16-d VectorField, a ListField copy of it, and bad rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(60)], progress=False)
    ids = ds.values("id")
    vec = [x[i] for i in range(60)]
    vec[3] = np.zeros(16, np.float32)  # all zero: rejected
    vec[7] = rng.standard_normal(9).astype(np.float32)  # wrong dimension
    vec[11] = None  # no value
    ds.add_sample_field("vec", fo.VectorField)
    ds.set_values("vec", vec)
    ds.set_values("lst", [None if v is None else v.astype(float).tolist() for v in vec])
    yield ds, ids, x
    ds.delete()


def test_decode_matches_fiftyones_deserialiser():
    cache = {}
    for a in (np.arange(128, dtype=np.float32) / 7, np.random.default_rng(1).random(5), np.arange(6).reshape(2, 3),
              np.ones(4, np.float16)):
        b = features._decode(fou.serialize_numpy_array(a), cache)
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(b, a)


@pytest.mark.parametrize("field", ["vec", "lst"])
def test_chunked_read_in_any_view_order_gives_the_stored_vectors_and_rejections(vec_dataset, field):
    ds, ids, x = vec_dataset
    order = ids[::-1]  # any requested order
    whole = features.field_vectors(ds, field, order)
    chunked = features.field_vectors(ds.sort_by("filepath", reverse=True), field, order, chunk=7)
    for z, ok, rejected in (whole, chunked):
        assert z.shape == (1, 60, 16)
        assert set(rejected) == {ids[3], ids[7], ids[11]}
        assert "dimension 9" in rejected[ids[7]] and "no value" in rejected[ids[11]]
        row = {i: n for n, i in enumerate(order)}
        good = [n for n in range(60) if n not in (3, 7, 11)]
        assert isinstance(z, np.ndarray) and z.dtype == np.float32
        assert np.allclose(z[0, [row[ids[n]] for n in good]], x[good], atol=1e-6)
        assert ok.sum() == 57 and not ok[row[ids[3]]]
    assert np.array_equal(whole[0], chunked[0])


def test_write_columns_stages_all_fields_in_one_pass_and_leaves_none_unset(vec_dataset):
    ds, ids, _ = vec_dataset
    run = runs.Run(ds, "cols", "cols_test", {"a": ("cols_a", fo.FloatField, {}), "b": ("cols_b", fo.IntField, {}),
                                             "c": ("cols_c", fo.StringField, {})}, {})
    a = [float(i) / 3 for i in range(60)]
    b = [i if i % 5 == 0 else None for i in range(60)]
    c = ["x" if i % 2 else None for i in range(60)]
    with run:
        run.write_columns(ids, {"a": a, "b": b, "c": c}, chunk=25)
        run.commit()
    got = dict(zip(ds.values("id"), zip(*[ds.values(f) for f in ("cols_a", "cols_b", "cols_c")])))
    assert [got[i] for i in ids] == list(zip(a, b, c))
    assert len(ds.exists("cols_b")) == 12  # the Nones were not written
    assert not any(f.endswith(runs.STAGING) for f in ds.get_field_schema())
    with pytest.raises(ValueError, match="values of"):
        with runs.Run(ds, "cols", "cols_test", {"a": ("cols_a", fo.FloatField, {})}, {}) as again:
            again.write_columns(ids, {"a": a[:5], "b": b})


def test_a_run_touches_only_samples_with_a_value_and_leaves_no_scratch_collection(vec_dataset):
    ds, ids, _ = vec_dataset
    before = dict(zip(ds.values("id"), ds.values("last_modified_at")))
    run = runs.Run(ds, "cols2", "cols_test", {"a": ("c2_a", fo.FloatField, {}), "b": ("c2_b", fo.StringField, {})},
                   {})
    a = [float(i) if i < 20 else None for i in range(60)]
    b = ["y" if i in (5, 40) else None for i in range(60)]
    with run:
        run.write_columns(ids, {"a": a}, chunk=7)
        run.write("b", ids, b)  # a second call for other fields of some of the same samples
        staged = dict(zip(ds.values("id"), ds.values("last_modified_at")))
        with pytest.raises(ValueError, match="twice"):
            run.write_columns(ids[:2] + ids[:1], {"a": [1.0, 2.0, 3.0]})
        run.commit()
    after = dict(zip(ds.values("id"), ds.values("last_modified_at")))
    assert staged == before  # nothing in the sample documents before the commit
    assert {n for n, i in enumerate(ids) if after[i] != before[i]} == set(range(20)) | {40}  # the others untouched
    assert ds.values("c2_a") == [float(i) if i < 20 else None for i in range(60)]  # dataset order == ids order
    assert ds.values("c2_b") == b
    names = ds._sample_collection.database.list_collection_names()
    assert not [n for n in names if n.startswith("fo_ssl_scratch.")]


def test_a_default_is_set_in_one_pass_only_exceptions_are_staged_and_tags_by_id_match_their_views(vec_dataset):
    from fiftyone import ViewField as F

    ds, ids, _ = vec_dataset
    ds.select(ids[50]).tag_samples("k_false")  # a user's own sample with the run's tag name, outside its selection
    fields = {"k": ("d_keep", fo.BooleanField, {}), "g": ("d_group", fo.IntField, {})}

    from bson import ObjectId

    ds._sample_collection.update_one({"_id": ObjectId(ids[21])}, {"$set": {"tags": None}})  # null tags, tagged below

    def run_on(view, view_ids, every=7):
        keep = [None if n == 0 else n % every != 0 for n in range(len(view_ids))]  # mostly True, a None, some False
        group = [n // 5 if n % 5 == 0 else None for n in range(len(view_ids))]  # staged, most keep the default
        false = [i for i, k in zip(view_ids, keep) if k is False]
        run = runs.Run(view, "defaults", "cols_test", fields, {})
        with run:
            run.write_columns(view_ids, {"k": keep, "g": group}, chunk=9, defaults={"k": True})
            # staged: the samples with a group or a non-default keep (the True ones are set at commit)
            assert run._staging.count_documents({}) == sum(k is not True or g is not None for k, g in zip(keep, group))
            with pytest.raises(ValueError, match="default"):
                run.write_columns(view_ids, {"k": keep}, defaults={"k": True})  # a second default for the field
            run.tag("k_false", lambda d: d.match(F("d_keep") == False), false)  # noqa: E712
            run.commit()
        return dict(zip(view_ids, keep)), dict(zip(view_ids, group)), set(false)

    # the whole dataset (one pass), again with other exceptions (False -> the default), then a view (by id)
    for view_ids, every in ((ids, 7), (ids, 3), (ids[10:40], 7)):
        keep, group, false = run_on(ds.select(view_ids) if view_ids is not ids else ds, view_ids, every)
        got = dict(zip(ds.values("id"), zip(ds.values("d_keep"), ds.values("d_group"))))
        assert {i: v for i, v in got.items()} == {i: (keep.get(i), group.get(i)) for i in ids}  # outside: cleared
        tagged = set(ds.match_tags("k_false").values("id"))
        assert tagged == false | {ids[50]}  # by id == the recorded view, and the user's own tag kept
        assert set(ds.match(F("d_keep") == False).values("id")) == false  # noqa: E712
        if every == 7 and view_ids is ids:
            assert ds[ids[21]].tags == ["k_false"]
    with runs.Run(ds, "defaults", "cols_test", fields, {}) as run:  # a later write's None beats the default
        run.write_columns(ids, {"k": [True] * len(ids)}, defaults={"k": True})
        run.write("k", ids[:2], [None, False])
        run.commit()
    assert ds.values("d_keep")[:3] == [None, False, True]
    with pytest.raises(ValueError, match="scalar"):
        with runs.Run(ds, "defaults2", "cols_test", {"v": ("d2_v", fo.ListField, {})}, {}) as run:
            run.write_columns(ids, {"v": [[1]] * len(ids)}, defaults={"v": [1]})


def test_a_rerun_keeps_tags_it_would_reapply_and_a_commit_killed_meanwhile_leaves_them_removable(vec_dataset,
                                                                                                  monkeypatch):
    from fiftyone import ViewField as F

    ds, ids, _ = vec_dataset
    fields = {"v": ("gt_v", fo.IntField, {})}

    def run(tagged):  # the samples ``tagged`` get v = 1 and the tag, the others v = 0
        with runs.Run(ds, "guarded", "cols_test", fields, {}) as r:
            r.write("v", ids, [int(i in tagged) for i in ids])
            r.tag("t", lambda d: d.match(F("gt_v") == 1), [i for i in ids if i in tagged])
            r.commit()

    first, second = set(ids[:20]), set(ids[10:30])
    run(first)
    ds.select(ids[50]).tag_samples("t")  # a user's own sample with the run's tag name

    def killed(self, coll, now):  # the new values not yet merged in
        raise RuntimeError("killed")

    monkeypatch.setattr(runs.Run, "_merge_staged", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run(second)
    guard = runs._guard(ds, "guarded")
    assert {str(d["_id"]) for d in guard.find({})} == first & second  # kept tagged, listed
    assert set(ds.match_tags("t").values("id")) == (first & second) | {ids[50]}  # the others untagged already
    assert runs.get_config(ds, "guarded")["tag_views"] == "{}"  # the record lists no view now: only the guard
    monkeypatch.undo()
    third = set(ids[40:45])
    run(third)  # the re-run (other results) removes what the guard lists, then tags afresh
    assert set(ds.match_tags("t").values("id")) == third | {ids[50]}
    assert guard.estimated_document_count() == 0
    run(second)
    assert set(ds.match_tags("t").values("id")) == second | {ids[50]}
    run(second)  # the same result again: every tag kept, none added twice
    assert set(ds.match_tags("t").values("id")) == second | {ids[50]}
    assert all(t.count("t") <= 1 for t in ds.values("tags"))
    runs.delete_run(ds, "guarded")
    assert ds.match_tags("t").values("id") == [ids[50]]


def test_a_sample_another_process_writes_during_the_commit_keeps_its_new_value_and_loses_a_stale_one(vec_dataset,
                                                                                                      monkeypatch):
    from datetime import datetime, timedelta

    from bson import ObjectId

    ds, ids, _ = vec_dataset
    fields = {"a": ("cw_a", fo.FloatField, {})}
    with runs.Run(ds, "cw", "cols_test", fields, {}) as run:
        run.write("a", ids, [1.0] * len(ids))
        run.commit()
    merge = runs.Run._merge_staged

    def merge_then_someone_writes(self, coll, now):
        merge(self, coll, now)
        later = datetime.utcnow() + timedelta(seconds=1)  # another process tags two samples meanwhile
        coll.update_many({"_id": {"$in": [ObjectId(ids[0]), ObjectId(ids[59])]}},
                         {"$set": {"last_modified_at": later}, "$addToSet": {"tags": "seen"}})

    monkeypatch.setattr(runs.Run, "_merge_staged", merge_then_someone_writes)
    with runs.Run(ds.select(ids[:30]), "cw", "cols_test", fields, {}) as run:  # a view: the rest is cleared
        run.write("a", ids[:30], [2.0] * 30)
        run.commit()
    assert ds.values("cw_a") == [2.0] * 30 + [None] * 30  # ids[0]: its new value kept; ids[59]: its stale one gone
    assert len(ds.match_tags("seen")) == 2


def test_a_resumed_attempts_none_clears_what_it_staged(vec_dataset):
    ds, ids, _ = vec_dataset
    run = runs.Run(ds, "cols3", "cols_test", {"a": ("c3_a", fo.FloatField, {})}, {})
    with run:
        run.write("a", ids, [1.0] * 60)
        run.resumed = True  # as an interrupted attempt with identical inputs is
        run.write("a", ids[:10], [None] * 10)
        assert run.staged_values("a") == {i: 1.0 for i in ids[10:]}
        run.commit()
    assert ds.values("c3_a") == [None] * 10 + [1.0] * 50


def test_an_earlier_versions_staged_field_is_removed_and_a_kept_staging_is_resumed(vec_dataset):
    ds, ids, _ = vec_dataset
    ds.add_sample_field("c4_a" + runs.STAGING, fo.FloatField)  # what a killed attempt of an earlier version left
    ds.set_values("c4_a" + runs.STAGING, [9.0] * len(ds))
    fields = {"a": ("c4_a", fo.FloatField, {})}
    with pytest.raises(KeyboardInterrupt):
        with runs.Run(ds, "cols4", "cols_test", fields, {}, resumable=True) as run:
            assert "c4_a" + runs.STAGING not in ds.get_field_schema()
            run.write("a", ids[:30], [2.0] * 30)
            raise KeyboardInterrupt  # a kill: the staged values are kept for a resume with the same inputs
    assert "c4_a" not in ds.get_field_schema()  # nothing reached the samples
    assert runs.staged_values(ds, "cols4", "c4_a", fo.FloatField()) == {i: 2.0 for i in ids[:30]}
    with runs.Run(ds, "cols4", "cols_test", fields, {}, resumable=True) as run:
        assert run.resumed and run.staged_values("a") == {i: 2.0 for i in ids[:30]}
        run.write("a", ids[30:], [3.0] * (len(ids) - 30))
        run.commit()
    assert ds.values("c4_a") == [2.0] * 30 + [3.0] * (len(ids) - 30)
    assert runs.staged_values(ds, "cols4", "c4_a") == {}  # the staging collection went with the commit


def test_a_first_run_that_fails_inside_its_commit_owns_its_fields_and_the_rerun_replaces_them(vec_dataset, monkeypatch):
    ds, ids, _ = vec_dataset
    fields = {"a": ("c5_a", fo.FloatField, {})}

    def fails(self, coll, now):  # after the field was declared, before the new values are merged
        raise RuntimeError("disk full")

    monkeypatch.setattr(runs.Run, "_merge_staged", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        with runs.Run(ds, "cols5", "cols_test", fields, {}) as run:
            run.write("a", ids, [1.0] * len(ids))
            run.commit()
    cfg = runs.get_config(ds, "cols5")
    assert cfg["status"] == "failed" and cfg["fields"] == ["c5_a"] and "c5_a" in ds.get_field_schema()
    monkeypatch.undo()
    with runs.Run(ds, "cols5", "cols_test", fields, {}) as run:  # no overwrite needed: the field is the run's
        run.write("a", ids, [2.0] * len(ids))
        run.commit()
    assert ds.values("c5_a") == [2.0] * len(ids)
    runs.delete_run(ds, "cols5")
    assert "c5_a" not in ds.get_field_schema()


def test_embedding_level_stages_run_without_torch(tmp_path):
    """Near-duplicates from an embedding and outliers never import torch (0.45 GB of a process's memory): run in a
    fresh process on a stored field with a planted copy and a planted outlier, both found."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 32))
    x = (centres[rng.integers(0, 8, 400)] + 0.3 * rng.standard_normal((400, 32))).astype(np.float32)
    x[1] = x[0] + 0.001 * rng.standard_normal(32).astype(np.float32)  # a near-copy of sample 0
    x[2] = 6 * rng.standard_normal(32).astype(np.float32)  # far from every cluster
    ds = fo.Dataset(persistent=True)
    try:
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg", emb=x[i]) for i in range(400)], progress=False)
        script = textwrap.dedent(f"""
            import json, sys
            import fiftyone as fo, fo_plugin
            ds = fo.load_dataset({ds.name!r})
            fo_plugin.find_near_duplicates(ds, "d", embeddings_field="emb", verify_threshold=None)
            fo_plugin.find_outliers(ds, "o", embeddings_field="emb", image_stats=False)
            print(json.dumps({{"torch": "torch" in sys.modules}}))
        """)
        out = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True,
                             timeout=300, check=True).stdout
        assert json.loads(out.strip().splitlines()[-1]) == {"torch": False}
        ds.reload()
        rows = ds.values("filepath")
        order = [int(os.path.basename(p).split(".")[0]) for p in rows]
        group, score = dict(zip(order, ds.values("d_group"))), dict(zip(order, ds.values("o_score")))
        assert group[0] is not None and group[0] == group[1]
        assert score[2] == max(score.values())
    finally:
        ds.delete()
