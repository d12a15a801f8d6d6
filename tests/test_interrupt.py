"""Real interruptions: a subprocess running one stage is killed with SIGKILL inside the stage (proxy training,
embedding, influence, CL-Core); the dataset then holds no partial new values (the final fields are absent, or still
the previous complete run's), an interrupted first run is refused by readers, and a re-run in this process gives
the same fields as an uninterrupted run of the same stage under another key, reusing what the killed attempt did.

The worker (tests/interrupt_worker.py) stops at a fixed point inside the stage and waits, so the kill always lands
at the same place; the kill itself is a real SIGKILL (no cleanup, no exception handler, no lock release but the
kernel's)."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import fiftyone as fo
import numpy as np
import pytest

import fo_plugin
from fo_plugin import runs

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interrupt_worker.py")
N = 300  # > 256: embedding writes a first chunk of 256 images, then the rest
SMALL = 128  # training and CL-Core run on the first 128 samples by filepath (CPU time), influence on the first 64
INF_N = 64
TRAIN = {"epochs": 3, "batch_size": 64, "proxy_width": 8, "device": "cpu"}
INFLUENCE = {"embeddings_run": "emb_ref", "curvature": "identity", "num_augs": 2, "project_dim": 0, "batch_size": 32,
             "device": "cpu"}
CLCORE = {"embeddings_run": "emb_ref", "num_classes": 3, "num_views": 2, "budget": 0.8, "device": "cpu"}


@pytest.fixture(scope="module")
def ds(cifar_files):
    """300 real CIFAR-10 images in a persistent dataset (the worker loads it by name)."""
    per_class = N // 10
    paths = [p for p, _, k in cifar_files if k < per_class]
    assert len(paths) == N
    dataset = fo.Dataset(f"interrupt-{uuid.uuid4().hex[:8]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    yield dataset
    folder = runs._dataset_dir(dataset)
    dataset.delete()
    shutil.rmtree(folder, ignore_errors=True)


def small(ds, n=SMALL):
    return ds.sort_by("filepath").limit(n)


@pytest.fixture(scope="module")
def ref(ds):
    """The uninterrupted reference: a proxy trained on the small view and embedded in this process under run key
    ``emb_ref``."""
    return fo_plugin.compute_ssl_embeddings(small(ds), "emb_ref", **TRAIN)


def kill_inside(ds, stage: str, kwargs: dict, pause: str, tmp_path) -> str:
    """Run ``stage`` in a subprocess until it pauses at ``pause`` (see the worker), SIGKILL it, wait for it to die;
    returns the line the worker wrote when it paused."""
    signal_file = tmp_path / f"{stage}.signal"
    log = open(tmp_path / f"{stage}.log", "w+")
    proc = subprocess.Popen([sys.executable, WORKER, ds.name, stage, json.dumps(kwargs), str(signal_file), pause],
                            env=os.environ, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            lines = signal_file.read_text().splitlines() if signal_file.exists() else []
            paused = [ln for ln in lines if ln.startswith("paused")]
            if paused:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the worker never reached {pause!r} (exit {proc.returncode}): {lines[-3:]}\n"
                            f"{log.read()[-3000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "finished" not in signal_file.read_text()
    ds.reload()
    return paused[0]


def values(ds, field: str) -> list:
    return ds.sort_by("filepath").values(field)


def assert_same(got: list, want: list, field: str) -> None:
    """Equal values per sample: allclose for floats and vectors, equal for ints, bools, strings and None."""
    assert len(got) == len(want), field
    for n, (a, b) in enumerate(zip(got, want)):
        if a is None or b is None or isinstance(a, (str, bool)):
            assert a == b, (field, n, a, b)
        elif isinstance(a, int) and isinstance(b, int):
            assert a == b, (field, n, a, b)
        else:
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{field}, sample {n}")


def decoded_leftovers(ds, key: str) -> list[str]:
    """Temporary decoded-image folders (proxy training, influence) in run ``key``'s artifact folders."""
    return glob.glob(os.path.join(runs.run_root(ds, key), "*", "decoded-*"))


def staged_fields(ds) -> list[str]:
    """What staging leaves until a commit: the dataset's staging collections (and an earlier version's fields)."""
    prefix = runs._scratch_name(ds, "")
    names = [n for n in ds._sample_collection.database.list_collection_names() if n.startswith(prefix)]
    return names + [f for f in ds.get_field_schema() if f.endswith(runs.STAGING)]


def test_kill_during_proxy_training_resumes_after_the_last_epoch_and_gives_the_uninterrupted_embeddings(
        ds, ref, tmp_path):
    kwargs = {"embeddings_field": "emb_a", "_first": SMALL, **TRAIN}
    paused = kill_inside(ds, "embeddings", kwargs, "epoch:1", tmp_path)
    assert paused == "paused epoch 1 batch 1"

    cfg = fo_plugin.get_run_config(ds, "emb_a")
    assert cfg["status"] != "complete" and cfg["attempt"]["status"] == "running"
    schema = ds.get_field_schema()
    assert "emb_a" not in schema and "emb_a_error" not in schema
    with pytest.raises(ValueError, match="'emb_a' was interrupted"):
        fo_plugin.compute_clcore(ds, "cl_of_interrupted", embeddings_run="emb_a")
    assert not ds.has_run("cl_of_interrupted")
    [state_path] = glob.glob(os.path.join(runs.run_root(ds, "emb_a"), "*", "train_state.pt"))
    assert not os.path.exists(os.path.join(os.path.dirname(state_path), "proxy.pt"))
    import torch

    saved = torch.load(state_path, weights_only=True)["history"]
    assert [row["epoch"] for row in saved] == [0]  # the first epoch finished; the second was killed mid-way
    assert decoded_leftovers(ds, "emb_a")  # the killed process could not remove its decoded images

    out = fo_plugin.compute_ssl_embeddings(small(ds), "emb_a", **TRAIN)
    assert out["trained_proxy"] and out["num_embedded"] == SMALL and out["num_resumed_over"] == 0
    history = out["train_history"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[0] == saved[0]  # epoch 0 was loaded from the state file (its measured speed too), not redone
    np.testing.assert_allclose([r["loss"] for r in history], [r["loss"] for r in ref["train_history"]], rtol=1e-4)
    assert fo_plugin.get_run_config(ds, "emb_a")["status"] == "complete"
    assert sum(v is not None for v in values(ds, "emb_a")) == SMALL  # nothing outside the view
    assert_same(values(ds, "emb_a"), values(ds, "emb_ref"), "emb_a")
    assert values(ds, "emb_a_error") == values(ds, "emb_ref_error")
    assert staged_fields(ds) == [] and decoded_leftovers(ds, "emb_a") == []


def test_kill_during_embedding_keeps_the_previous_run_and_the_rerun_embeds_only_the_rest(ds, ref, tmp_path):
    ckpt = ref["checkpoint"]
    fo_plugin.compute_ssl_embeddings(ds, "emb_ref_b", checkpoint=ckpt, batch_size=64, device="cpu")
    first = ds.sort_by("filepath").limit(100)
    fo_plugin.compute_ssl_embeddings(first, "emb_b", checkpoint=ckpt, device="cpu")
    ds.reload()
    before, before_cfg = values(ds, "emb_b"), fo_plugin.get_run_config(ds, "emb_b")
    assert sum(v is not None for v in before) == 100

    kwargs = {"embeddings_field": "emb_b", "checkpoint": ckpt, "batch_size": 64, "device": "cpu"}
    paused = kill_inside(ds, "embeddings", kwargs, "progress:0.01", tmp_path)
    assert paused.startswith("paused progress") and "embedded 256/300" in paused

    cfg = fo_plugin.get_run_config(ds, "emb_b")  # still the previous complete run, noting the running attempt
    assert cfg["status"] == "complete" and cfg["fingerprint"] == before_cfg["fingerprint"]
    assert cfg["attempt"]["status"] == "running" and cfg["attempt"]["fingerprint"] != before_cfg["fingerprint"]
    after = values(ds, "emb_b")
    assert [v is None for v in after] == [v is None for v in before]  # no new value leaked into the final field
    assert all(np.array_equal(a, b) for a, b in zip(after, before) if a is not None)
    staged = runs.staged_values(ds, "emb_b", "emb_b")
    assert len(staged) == 256  # the kill came after the first chunk was staged, before the rest
    assert runs._scratch_name(ds, "emb_b") in staged_fields(ds)
    assert all(v.shape == before[0].shape for v in staged.values())

    out = fo_plugin.compute_ssl_embeddings(ds, "emb_b", checkpoint=ckpt, batch_size=64, device="cpu")
    assert out["num_resumed_over"] == 256 and out["num_embedded"] == N and out["num_failed"] == 0
    cfg = fo_plugin.get_run_config(ds, "emb_b")
    assert cfg["status"] == "complete" and cfg["fingerprint"] != before_cfg["fingerprint"]
    assert_same(values(ds, "emb_b"), values(ds, "emb_ref_b"), "emb_b")
    assert values(ds, "emb_b_error") == values(ds, "emb_ref_b_error")
    assert staged_fields(ds) == []


INFLUENCE_FIELDS = ("self_influence", "rank", "percentile", "aug_loss", "dup_of", "dup_score", "error")


def test_kill_during_influence_leaves_no_fields_readers_refuse_it_and_the_rerun_matches(ds, ref, tmp_path):
    reference = fo_plugin.compute_ssl_influence(small(ds, INF_N), "inf_ref", **INFLUENCE)
    assert reference["num_scored"] == INF_N
    assert reference["chunks"] == {"computed": 3, "resumed": 0}  # losses 0-64, gradients 0-32 and 32-64

    paused = kill_inside(ds, "influence", {"run_key": "inf_c", "_first": INF_N, **INFLUENCE}, "progress:0.5", tmp_path)
    assert "per-example gradients" in paused and float(paused.split()[2]) < 0.7  # mid-way through the gradients

    cfg = fo_plugin.get_run_config(ds, "inf_c")
    assert cfg["status"] != "complete" and cfg["attempt"]["status"] == "running"
    schema = ds.get_field_schema()
    assert not [f for f in schema if f.startswith("inf_c_") and not f.endswith(runs.STAGING)]
    with pytest.raises(ValueError, match="'inf_c' was interrupted"):
        fo_plugin.find_influential_training_samples(ds, ds.limit(1).values("id"), "inf_c", "shaped_c")
    assert not ds.has_run("shaped_c")
    assert decoded_leftovers(ds, "inf_c")
    kept = sorted(os.path.basename(p) for p in glob.glob(os.path.join(runs.run_root(ds, "inf_c"), "*", "chunks", "*")))
    assert [k.split("-", 1)[1] for k in kept] == ["grads-0-32.npz", "loss-0-64.npz"]  # completed chunks only
    assert len({k.split("-", 1)[0] for k in kept}) == 1  # one decoded set and batch size

    out = fo_plugin.compute_ssl_influence(small(ds, INF_N), "inf_c", **INFLUENCE)
    assert out["num_scored"] == INF_N
    assert out["chunks"] == {"computed": 1, "resumed": 2}  # only the gradients of samples 32-64 were computed
    assert glob.glob(os.path.join(runs.run_root(ds, "inf_c"), "*", "chunks")) == []  # removed at commit
    assert fo_plugin.get_run_config(ds, "inf_c")["status"] == "complete"
    for f in INFLUENCE_FIELDS:
        assert_same(values(ds, f"inf_c_{f}"), values(ds, f"inf_ref_{f}"), f"inf_c_{f}")
    assert staged_fields(ds) == [] and decoded_leftovers(ds, "inf_c") == []


CLCORE_FIELDS = ("score", "rank", "rank_overall", "class", "selected", "error")


def test_kill_during_clcore_keeps_the_previous_run_and_the_rerun_matches(ds, ref, tmp_path):
    reference = fo_plugin.compute_clcore(small(ds), "cl_ref", **CLCORE)
    previous = {**CLCORE, "num_views": 1, "budget": 0.5, "mode": "greedy"}
    fo_plugin.compute_clcore(small(ds), "cl_d", **previous)
    ds.reload()
    prev_fields = [f"cl_d_{f}" for f in (*CLCORE_FIELDS, "gain")]
    before = {f: values(ds, f) for f in prev_fields}
    before_views = sorted(v for v in ds.list_saved_views() if "[cl_d]" in v)
    assert before_views == ["CL-Core least valuable [cl_d]", "CL-Core subset (50%) [cl_d]"]
    assert before["cl_d_score"] != values(ds, "cl_ref_score")  # the previous run differs from the new one

    paused = kill_inside(ds, "clcore", {"run_key": "cl_d", "_first": SMALL, **CLCORE}, "progress:0.55", tmp_path)
    assert "k-means" in paused  # the projections are done, the selection not

    cfg = fo_plugin.get_run_config(ds, "cl_d")
    assert cfg["status"] == "complete" and cfg["mode"] == "greedy" and cfg["budget"] == 0.5
    assert cfg["attempt"]["status"] == "running"
    for f in prev_fields:
        assert values(ds, f) == before[f], f  # exactly the previous run's values, no mix
    assert sorted(v for v in ds.list_saved_views() if "[cl_d]" in v) == before_views

    out = fo_plugin.compute_clcore(small(ds), "cl_d", **CLCORE)
    assert out["chunks"] == {"computed": 0, "resumed": 1}  # the projections of the killed attempt were kept
    assert out["num_selected"] == reference["num_selected"] == round(0.8 * SMALL)
    assert "cl_d_gain" not in ds.get_field_schema()  # the released mode writes no gain: the old field is gone
    for f in CLCORE_FIELDS:
        assert_same(values(ds, f"cl_d_{f}"), values(ds, f"cl_ref_{f}"), f"cl_d_{f}")
    assert sorted(v for v in ds.list_saved_views() if "[cl_d]" in v) == [
        "CL-Core least valuable [cl_d]", "CL-Core subset (80%) [cl_d]"]
    assert staged_fields(ds) == []


def test_kill_mid_projection_resumes_clcore_from_the_last_completed_chunk(ds, ref, tmp_path):
    """All 300 samples: projections go in chunks of 256 decoded images; the kill lands after the first chunk."""
    full = {**CLCORE, "num_views": 2}
    reference = fo_plugin.compute_clcore(ds, "cl_ref_f", **full)
    assert reference["chunks"] == {"computed": 2, "resumed": 0}
    paused = kill_inside(ds, "clcore", {"run_key": "cl_f", **full}, "progress:0.4", tmp_path)
    assert "projected 256/300" in paused
    assert "cl_f_score" not in ds.get_field_schema()

    out = fo_plugin.compute_clcore(ds, "cl_f", **full)
    assert out["chunks"] == {"computed": 1, "resumed": 1}  # only images 256-300 were projected again
    assert out["num_selected"] == reference["num_selected"] == round(0.8 * N)
    for f in CLCORE_FIELDS:
        assert_same(values(ds, f"cl_f_{f}"), values(ds, f"cl_ref_f_{f}"), f"cl_f_{f}")
    assert staged_fields(ds) == []


def test_kill_inside_the_swap_leaves_a_record_readers_refuse_and_the_rerun_repairs_it(ds, ref, tmp_path):
    """The one window where a run's fields are neither the old nor the new ones (inside the commit's swap) is
    recorded as an interrupted commit, so no reader accepts it; a re-run gives the uninterrupted fields."""
    fo_plugin.compute_clcore(small(ds), "cl_e", **{**CLCORE, "num_views": 1, "budget": 0.5, "mode": "greedy"})
    kill_inside(ds, "clcore", {"run_key": "cl_e", "_first": SMALL, **CLCORE}, "commit", tmp_path)
    cfg = fo_plugin.get_run_config(ds, "cl_e")
    assert cfg["status"] == "committing"
    assert any(v is not None for v in values(ds, "cl_e_score"))  # killed before the new values were merged in:
    # the old ones are still there, and no reader may take them for a complete run's
    with pytest.raises(ValueError, match="'cl_e' was interrupted"):
        runs.require(ds, "cl_e", "clcore", "compute_clcore")
    from fo_plugin.export import curation_plan

    with pytest.raises(ValueError, match="interrupted"):
        curation_plan(ds, clcore_run="cl_e")
    fo_plugin.compute_clcore(small(ds), "cl_e", **CLCORE)  # no overwrite needed: the fields are still the run's
    ref_out = fo_plugin.compute_clcore(small(ds), "cl_ref_e", **CLCORE)
    assert fo_plugin.get_run_config(ds, "cl_e")["status"] == "complete" and ref_out["num_selected"]
    for f in CLCORE_FIELDS:
        assert_same(values(ds, f"cl_e_{f}"), values(ds, f"cl_ref_e_{f}"), f"cl_e_{f}")
    assert "cl_e_gain" not in ds.get_field_schema() and staged_fields(ds) == []
