"""The one run lifecycle: validation before anything is touched, failures that keep the previous results, re-runs
that leave nothing stale, user fields that are never deleted, bad vectors and media that are refused, locks, and
schema changes that survive two processes writing at once."""

import json
import os
import subprocess
import sys
import textwrap

import fiftyone as fo
import numpy as np
import pytest
from conftest import run_op
from fiftyone import ViewField as F

import fo_plugin
from fo_plugin import runs


@pytest.fixture()
def vecs(embedded):
    """A fresh copy of the embedded dataset holding only the embedding field (as a user's own field)."""
    ds, _ = embedded
    copy = ds.select_fields(["ssl_embedding", "ground_truth"]).clone()
    yield copy
    copy.delete()


def _state(ds, key, fields):
    return {f: ds.values(f) for f in fields}, sorted(ds.count_sample_tags().items()), sorted(ds.list_saved_views())


def test_failed_rerun_keeps_the_previous_fields_tags_views_and_record(vecs, monkeypatch):
    fo_plugin.find_outliers(vecs, "out", fraction=0.05)
    fields = ["out_score", "out_flag", "out_knn"]
    before = _state(vecs, "out", fields)

    import fo_plugin.outliers as mod

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(mod, "outlier_scores", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        fo_plugin.find_outliers(vecs.take(100, seed=1), "out", fraction=0.5)
    vecs.reload()
    assert _state(vecs, "out", fields) == before
    cfg = fo_plugin.get_run_config(vecs, "out")
    assert cfg["status"] == "complete" and cfg["fraction"] == 0.05
    assert cfg["attempt"]["status"] == "failed" and "disk on fire" in cfg["attempt"]["error"]
    assert not [f for f in vecs.get_field_schema() if f.endswith(runs.STAGING)]


def test_first_run_that_fails_is_recorded_failed_and_readers_refuse_it(vecs, monkeypatch):
    import fo_plugin.outliers as mod

    monkeypatch.setattr(mod, "outlier_scores", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fo_plugin.find_outliers(vecs, "bad")
    cfg = fo_plugin.get_run_config(vecs, "bad")
    assert cfg["status"] == "failed" and "ZeroDivisionError" in cfg["error"]
    with pytest.raises(ValueError, match="failed"):
        runs.require(vecs, "bad", "outliers", "find_outliers")
    with pytest.raises(ValueError, match="failed"):
        fo_plugin.export_curated(vecs, name="never-made", outliers_run="bad")
    assert not fo.dataset_exists("never-made")


def test_rerun_on_a_view_clears_values_tags_and_views_outside_it(vecs):
    fo_plugin.find_outliers(vecs, "outliers", fraction=0.1)
    assert len(vecs.match_tags("outlier")) == 42
    sub = vecs.take(100, seed=3)
    fo_plugin.find_outliers(sub, "outliers", fraction=0.1)
    sub_ids = set(sub.values("id"))
    scored = set(vecs.exists("outliers_score").values("id"))
    assert scored == sub_ids
    tagged = set(vecs.match_tags("outlier").values("id"))
    assert len(tagged) == 10 and tagged <= sub_ids
    assert set(vecs.load_saved_view("outliers").values("id")) == tagged


def _first(d, n):
    return d.sort_by("filepath").limit(n).values("id")


STAGES = {  # stage: (function, first settings, changed settings) as functions of (dataset, proxy)
    "outliers": (fo_plugin.find_outliers, lambda d, ck: dict(fraction=0.02), lambda d, ck: dict(threshold=0.9, fraction=None)),
    "near_duplicates": (fo_plugin.find_near_duplicates, lambda d, ck: dict(threshold=0.9, mutual=True),
                        lambda d, ck: dict(threshold=0.8)),
    "clcore": (fo_plugin.compute_clcore,
               lambda d, ck: dict(embeddings_field="ssl_embedding", num_classes=4, budget=0.5, mode="greedy"),
               lambda d, ck: dict(embeddings_field="ssl_embedding", num_classes=3, budget=0.7)),
    "quality": (fo_plugin.find_quality_issues, lambda d, ck: dict(thresholds={"blurry": 0.5}), lambda d, ck: dict()),
    "audit": (lambda s, k, group, **kw: fo_plugin.audit_subgroups(s, group, k, **kw),
              lambda d, ck: dict(group="brightness", selections={"first": _first(d, 40)}),
              lambda d, ck: dict(group="ground_truth", selections={"other": _first(d, 20)})),
    "embeddings": (fo_plugin.compute_ssl_embeddings, lambda d, ck: dict(batch_size=64, checkpoint=ck),
                   lambda d, ck: dict(batch_size=32, checkpoint=ck)),
    "influence": (fo_plugin.compute_ssl_influence,
                  lambda d, ck: dict(embeddings_run="e", curvature="identity", num_augs=2, project_dim=16),
                  lambda d, ck: dict(embeddings_run="e", curvature="diagonal", num_augs=1, project_dim=0)),
}
def _same(a, b) -> bool:
    if a is None or b is None or isinstance(a, (str, bool, int, list)):
        return a == b
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-4, atol=1e-6))


@pytest.mark.parametrize("stage", list(STAGES))
def test_rerun_with_changed_settings_equals_a_fresh_run(vecs, stage, proxy_ckpt):
    """Settings A on the dataset, A on a view, then B == B on a fresh copy: fields, tags, views (values compared
    per image, by file path)."""
    fn, first, second = STAGES[stage]
    fresh = vecs.clone()
    try:
        if stage == "influence":
            for d in (vecs, fresh):
                fo_plugin.compute_ssl_embeddings(d, "e", checkpoint=proxy_ckpt)
        fn(vecs, "r", **first(vecs, proxy_ckpt))
        fn(vecs.sort_by("filepath").limit(300), "r", **first(vecs, proxy_ckpt))  # and once on a view
        fn(vecs, "r", **second(vecs, proxy_ckpt))
        fn(fresh, "r", **second(fresh, proxy_ckpt))
        fields = fo_plugin.get_run_config(vecs, "r")["fields"]
        assert fields == fo_plugin.get_run_config(fresh, "r")["fields"]
        assert set(vecs.get_field_schema()) == set(fresh.get_field_schema())  # no leftover field (e.g. r_gain)
        for f in fields:
            ours = dict(zip(*vecs.values(["filepath", f])))
            theirs = dict(zip(*fresh.values(["filepath", f])))
            bad = [p for p in ours if not _same(ours[p], theirs[p])]
            assert not bad, (f, len(bad), ours[bad[0]], theirs[bad[0]])
        assert sorted(vecs.count_sample_tags().items()) == sorted(fresh.count_sample_tags().items())
        assert sorted(vecs.list_saved_views()) == sorted(fresh.list_saved_views())
    finally:
        fresh.delete()


def test_a_users_field_is_never_deleted_without_overwrite(vecs):
    vecs.add_sample_field("audit_brightness", fo.StringField)
    vecs.set_values("audit_brightness", ["mine"] * len(vecs))
    fo_plugin.find_outliers(vecs, "outliers")
    with pytest.raises(ValueError, match="was not written by this run"):
        fo_plugin.audit_subgroups(vecs, "brightness", "audit")
    res = run_op("audit_subgroups", vecs, {"view_target": "DATASET", "group_field": "brightness", "run_key": "audit"})
    assert res.error
    assert vecs.values("audit_brightness") == ["mine"] * len(vecs)
    out = fo_plugin.audit_subgroups(vecs, "brightness", "audit", overwrite=True)  # asked for explicitly
    assert out["rows"] and isinstance(vecs.first()["audit_brightness"], float)
    with pytest.raises(ValueError, match="belongs to run 'outliers'"):  # another run's field: never, even asked
        runs.Run(vecs, "other", "outliers", {"x": ("outliers_score", fo.FloatField, {})}, {}, overwrite=True)


def test_delete_run_removes_exactly_what_the_run_made(vecs):
    vecs.save_view("my view", vecs.limit(3))
    fo_plugin.find_near_duplicates(vecs, "dups", threshold=0.8, verify_threshold=None)
    cfg = fo_plugin.get_run_config(vecs, "dups")
    assert cfg["tags"] == ["near_duplicate", "duplicate_representative"] and cfg["saved_views"]
    outside = vecs.match(F("dups_group") == None).limit(5)  # noqa: E711
    outside.tag_samples("near_duplicate")  # the user's own use of a tag with the run's name
    mine = set(outside.values("id"))
    tags_before = vecs.count_sample_tags()
    fo_plugin.find_near_duplicates(vecs, "dups", threshold=0.85, verify_threshold=None)
    assert mine <= set(vecs.match_tags("near_duplicate").values("id"))  # a re-run keeps the user's tags
    fo_plugin.delete_run(vecs, "dups")
    schema = vecs.get_field_schema()
    assert not [f for f in schema if f.startswith("dups_")] and "ssl_embedding" in schema
    assert set(vecs.match_tags("near_duplicate").values("id")) == mine  # only the run's own tags went
    assert vecs.count_sample_tags().get("duplicate_representative") is None
    assert vecs.count_sample_tags()["near_duplicate"] == 5 and tags_before["near_duplicate"] > 5
    assert vecs.list_saved_views() == ["my view"]
    assert not os.path.exists(runs.run_root(vecs, "dups"))


def test_a_users_saved_view_with_a_runs_view_name_is_never_replaced(vecs):
    vecs.save_view("outliers", vecs.limit(4), description="MY OWN VIEW")
    with pytest.raises(ValueError, match="saved view named 'outliers' exists .* not made by run 'outliers'"):
        fo_plugin.find_outliers(vecs)
    assert vecs.load_saved_view("outliers").count() == 4 and "outliers_score" not in vecs.get_field_schema()
    assert fo_plugin.get_run_config(vecs, "outliers")["status"] == "failed"
    fo_plugin.find_outliers(vecs, "o2")  # another key, other names: fine
    assert vecs.has_saved_view("outliers [o2]")


def test_an_interrupted_attempt_on_another_view_leaves_nothing_behind(vecs, monkeypatch):
    import fo_plugin.outliers as mod

    real = mod.outlier_scores

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # keeps the staged fields, as a kill would

    monkeypatch.setattr(mod, "outlier_scores", interrupted)
    view_a = vecs.sort_by("filepath").limit(50)
    with pytest.raises(KeyboardInterrupt):
        fo_plugin.find_outliers(view_a, "o", image_stats=False)
    monkeypatch.setattr(mod, "outlier_scores", real)
    view_b = vecs.sort_by("filepath", reverse=True).limit(50)
    fo_plugin.find_outliers(view_b, "o", image_stats=False)
    assert set(vecs.exists("o_score").values("id")) == set(view_b.values("id"))


def test_a_deleted_datasets_staging_is_dropped_and_an_overlong_run_key_refused(vecs):
    db = vecs._sample_collection.database
    gone = fo.Dataset()
    gone.add_sample(fo.Sample(filepath="/nowhere/a.jpg"))
    orphan, live = runs._scratch_name(gone, "o"), runs._scratch_name(vecs, "killed")
    tags_key = runs._scratch_name(vecs, "tags")  # a live run keyed "tags": its staging is not an orphan's guard
    for name in (orphan, orphan + ".part", orphan + runs.GUARD_SUFFIX, live, live + runs.GUARD_SUFFIX, tags_key):
        # what killed runs left: one on a dataset deleted since
        db[name].insert_one({"x": 1})
    gone.delete()
    fo_plugin.find_outliers(vecs, "o", image_stats=False)
    names = db.list_collection_names()
    assert orphan not in names and orphan + ".part" not in names and orphan + runs.GUARD_SUFFIX not in names
    assert tags_key in names
    db.drop_collection(tags_key)
    assert live in names and live + runs.GUARD_SUFFIX in names  # a live dataset's killed run keeps its staged
    db.drop_collection(live)  # values (a re-run may resume them) and the tags it has to remove
    db.drop_collection(live + runs.GUARD_SUFFIX)
    with pytest.raises(ValueError, match="at most 64 characters"):
        fo_plugin.find_outliers(vecs, "k" * 65, image_stats=False)
    assert not vecs.has_sample_field("k" * 65 + "_score")
    for coll in ("samples.2021.05.03.12.34.56", "patches.frames.6523f0", vecs._sample_collection_name):
        for key in ("key", "part", "tags"):  # (run keys may read like a suffix)
            for tail in ("", ".part", runs.GUARD_SUFFIX):
                name = runs.SCRATCH_PREFIX + coll + "." + key + tail
                assert coll in runs.staging_owners(name)  # dots in collection names


def test_representative_policies_are_checked_before_anything_runs(vecs):
    with pytest.raises(ValueError, match="no CL-Core run 'clcore'"):
        fo_plugin.find_near_duplicates(vecs, "d", keep="clcore")
    with pytest.raises(ValueError, match="keep='influence' needs influence_run"):
        fo_plugin.find_near_duplicates(vecs, "d", keep="influence")
    assert not vecs.has_run("d")
    out = fo_plugin.find_outliers(vecs, "t", threshold=0.9)  # a threshold alone is enough
    assert out["num_flagged"] == sum(v >= 0.9 for v in vecs.values("t_score") if v is not None)


def test_nan_inf_zero_and_wrong_dimension_vectors_are_rejected_per_sample(vecs):
    ids = vecs.values("id")
    emb = vecs.values("ssl_embedding")
    emb[0] = np.full_like(emb[0], np.nan)
    emb[1] = np.full_like(emb[1], np.inf)
    emb[2] = np.zeros_like(emb[2])
    emb[3] = emb[3][:10]
    vecs.set_values("ssl_embedding", emb)
    bad = set(ids[:4])
    out = fo_plugin.find_outliers(vecs, "o")
    assert out["num_skipped"] == 4
    scores = dict(zip(ids, vecs.values("o_score")))
    assert all(scores[i] is None for i in bad) and all(np.isfinite(scores[i]) for i in ids[4:])
    errors = dict(zip(ids, vecs.values("o_error")))
    assert "NaN" in errors[ids[0]] and "NaN" in errors[ids[1]] and "dimension 10" in errors[ids[3]]
    dups = fo_plugin.find_near_duplicates(vecs, "d", verify_threshold=None)
    assert dups["num_skipped"] == 4 and not set(vecs.exists("d_group").values("id")) & bad
    cl = fo_plugin.compute_clcore(vecs, "c", embeddings_field="ssl_embedding", num_classes=5)
    assert cl["num_skipped"] == 4 and cl["num_classes"] == 5
    assert np.isfinite(np.array(vecs.exists("c_score").values("c_score"))).all()


def test_video_and_other_media_are_refused_before_anything_is_written(tmp_path):
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(tmp_path / f"v{i}.mp4")) for i in range(3)])
    try:
        for call in (lambda: fo_plugin.compute_ssl_embeddings(ds, epochs=1),
                     lambda: fo_plugin.find_outliers(ds), lambda: fo_plugin.audit_subgroups(ds, "brightness")):
            with pytest.raises(ValueError, match="image datasets; the target holds 'video'"):
                call()
        res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET"})
        assert res.error and "video" in str(res.error)
        assert ds.list_runs() == [] and set(ds.get_field_schema()) == set(fo.Dataset().get_field_schema())
    finally:
        ds.delete()


def test_one_and_two_sample_views_get_a_clear_answer(vecs, embedded):
    ds, _ = embedded
    one, two = vecs.limit(1), vecs.limit(2)
    cases = [
        (lambda: fo_plugin.compute_ssl_embeddings(ds.limit(1), "e1", epochs=1), "at least 2 samples"),
        (lambda: fo_plugin.compute_clcore(one, "c1", embeddings_field="ssl_embedding"), "at least 2 samples"),
        (lambda: fo_plugin.compute_ssl_influence(ds.limit(1), "i1", curvature="identity"), "at least 2 samples"),
        (lambda: fo_plugin.find_near_duplicates(one, "d1"), "at least 2 samples"),
        (lambda: fo_plugin.find_outliers(two, "o1"), "at least 3 samples"),
        (lambda: fo_plugin.audit_subgroups(one, "ground_truth", "a1", selections={"s": [one.first().id]}),
         "at least 2 samples"),
        (lambda: fo_plugin.compute_clcore(two, "c2", embeddings_field="ssl_embedding", num_classes=3),
         "more than the 2 samples"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert not [k for k in vecs.list_runs() if k.endswith(("1", "2"))]
    assert fo_plugin.compute_clcore(two, "c3", embeddings_field="ssl_embedding", num_classes=2)["num_scored"] == 2


def test_typed_parameters_get_the_same_message_from_the_api_and_the_form(embedded):
    ds, _ = embedded
    cases = [("compute_ssl_embeddings", fo_plugin.compute_ssl_embeddings, {"epochs": 0}, "epochs must be an integer >= 1"),
             ("compute_clcore", fo_plugin.compute_clcore, {"num_classes": "3"}, "num_classes must be an integer >= 0"),
             ("find_near_duplicates", fo_plugin.find_near_duplicates, {"threshold": "abc"},
              "threshold must be a number in")]
    for op, fn, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            fn(ds, **kw)
        res = run_op(op, ds, {"view_target": "DATASET", **kw})
        assert res.error and message in str(res.error), (op, res.error)
    res = run_op("find_outliers", ds, {"view_target": "DATASET", "fraktion": 0.1})
    assert res.error and "unknown parameter(s) 'fraktion'" in str(res.error)


def test_a_zero_shot_run_without_clip_weights_is_refused(embedded):
    ds, _ = embedded
    with pytest.raises(ValueError, match="needs CLIP weights"):
        fo_plugin.compute_clcore(ds, "z", latent="clip_zero_shot", class_names=["cat", "dog"], clip_pretrained=None)
    with pytest.raises(ValueError, match="needs weights"):
        fo_plugin.compute_ssl_embeddings(ds, "clip_emb", backbone="open_clip", model_name="ViT-B-32")


def test_a_second_run_of_the_same_key_is_refused_while_the_first_holds_it(vecs):
    with runs.Run(vecs, "held", "outliers", {"score": ("held_score", fo.FloatField, {})}, {}):
        with pytest.raises(ValueError, match="'held' on dataset .* is already running"):
            fo_plugin.find_outliers(vecs, "held")
        with pytest.raises(ValueError, match="is running"):
            fo_plugin.delete_run(vecs, "held")
    fo_plugin.find_outliers(vecs, "held")  # free again
    assert fo_plugin.get_run_config(vecs, "held")["status"] == "complete"


def test_two_processes_writing_runs_on_one_dataset_lose_no_field_declaration(vecs):
    vecs.persistent = True
    script = textwrap.dedent(f"""
        import sys, fiftyone as fo, fo_plugin
        ds = fo.load_dataset({vecs.name!r})
        for r in range(3):
            fo_plugin.find_outliers(ds, sys.argv[1] + str(r), fraction=0.05)
    """)
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", script, key], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for key in ("alpha", "beta")]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    vecs.reload()
    schema = vecs.get_field_schema()
    for key in (f"{a}{r}" for a in ("alpha", "beta") for r in range(3)):
        assert fo_plugin.get_run_config(vecs, key)["status"] == "complete"
        for f in ("score", "flag", "knn", "error"):
            assert f"{key}_{f}" in schema, (key, f)
        assert vecs.has_saved_view(f"outliers [{key}]")
        assert len(vecs.match_tags(f"{key}:outlier")) == 21
    assert not [f for f in schema if f.endswith(runs.STAGING)]


def test_selections_and_exports_never_embed_id_lists_that_grow_with_n(vecs, tmp_path):
    """The views an export and the saved views use are match stages on stored fields: their serialized size is the
    same for 100 and for all samples (an id list would grow by ~28 bytes a sample: 32 MB at 1M)."""
    from fo_plugin.export import curation_plan

    sizes = []
    for view in (vecs.limit(100), vecs):
        fo_plugin.find_outliers(view, "o", fraction=0.5)
        fo_plugin.find_near_duplicates(view, "d", verify_threshold=None)
        kept, _ = curation_plan(view, outliers_run="o", duplicates_run="d")
        saved = [vecs._doc.saved_views[i] for i in range(len(vecs._doc.saved_views))]
        added = kept._serialize()[len(view.view()._serialize()):]  # the stages the plan adds to the target view
        sizes.append((len(json.dumps(added)), sum(len(json.dumps(v.view_stages)) for v in saved)))
    assert sizes[0] == sizes[1]


def test_export_deletes_nothing_it_did_not_create_and_a_failed_export_can_be_retried(vecs, tmp_path, monkeypatch):
    fo_plugin.find_outliers(vecs, "o", fraction=0.1)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        fo_plugin.export_curated(vecs, export_dir=str(folder), overwrite=True, outliers_run="o")
    assert (folder / "keep.txt").read_text() == "precious"
    user_ds = fo.Dataset("users-own-dataset")
    try:
        with pytest.raises(ValueError, match="was not created by export_curated"):
            fo_plugin.export_curated(vecs, name="users-own-dataset", overwrite=True, outliers_run="o")
        assert fo.dataset_exists("users-own-dataset")
    finally:
        user_ds.delete()

    import fiftyone.core.collections as foc

    real_export = foc.SampleCollection.export

    def failing_export(self, *a, **k):
        real_export(self.limit(3), *a, **k)  # some files written, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(foc.SampleCollection, "export", failing_export)
    os.chdir(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        fo_plugin.export_curated(vecs, export_dir="out", export_type="image_directory", outliers_run="o")
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no half-written folder blocks a retry
    monkeypatch.setattr(foc.SampleCollection, "export", real_export)
    # a missing file is left out and listed, not a crash
    first = vecs.match(F("o_flag") == False).first()  # noqa: E712 (a kept sample: only its missing file removes it)
    gone = str(tmp_path / "gone.jpg")
    first.filepath = gone
    first.save()
    out = fo_plugin.export_curated(vecs, export_dir="out", export_type="image_directory", outliers_run="o")
    assert out["export_dir"] == str(tmp_path / "out")  # relative paths are resolved and reported
    assert out["removed_by_reason"].get("missing file") == 1
    assert len(os.listdir(tmp_path / "out" / "data")) == out["num_kept"]
    manifest = (tmp_path / "out" / "removed_manifest.csv").read_text()
    assert manifest.count("\n") == out["num_removed"] + 1


@pytest.mark.slow
def test_a_million_samples_tags_views_and_export_plans_without_id_lists():
    """1M samples: a run's staged fields, swap, tag and saved view, and an export plan over them, with queries whose
    size does not grow with N (select(ids) would be ~32 MB here, over MongoDB's 16 MB document limit)."""
    import time

    from fiftyone import ViewField as F

    from fo_plugin.export import curation_plan

    n = 1_000_000
    ds = fo.Dataset()
    try:
        t0 = time.perf_counter()
        ds.add_samples((fo.Sample(filepath=f"/data/{i:07d}.jpg") for i in range(n)), progress=False)
        ids = ds.values("id")
        flag = (np.arange(n) % 50 == 0).tolist()
        run = runs.Run(ds, "big", "outliers", {"flag": ("big_flag", fo.BooleanField, {}),
                                               "score": ("big_score", fo.FloatField, {})}, {"fraction": 0.02})
        with run:
            run.write("flag", ids, flag)
            run.write("score", ids, (np.arange(n) / n).tolist())
            run.tag("big:outlier", lambda d: d.match(F("big_flag") == True))
            run.save_view("outliers [big]", lambda d: d.match(F("big_flag") == True).sort_by("big_score"))
            run.commit(num_flagged=sum(flag))
        kept, drops = curation_plan(ds, outliers_run="big")
        assert len(kept) == n - n // 50 and len(ds.match_tags("big:outlier")) == n // 50
        assert len(json.dumps(kept._serialize())) < 2000
        assert len(ds.load_saved_view("outliers [big]")) == n // 50
        print(f"1M samples: insert + run + plan in {time.perf_counter() - t0:.0f} s")
    finally:
        ds.delete()
