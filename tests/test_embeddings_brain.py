"""The embeddings run registers FiftyOne Brain runs over its field (a similarity index for the App's "sort by
similarity" and a 2-D map for its Embeddings panel), through FiftyOne's operator execution on real CIFAR-10 images;
they belong to the run: replaced by a re-run, deleted with it, absent when the options are off."""

import numpy as np
import pytest
import torch
from conftest import run_op

import fo_plugin
from fo_plugin.core.knn import knn

SIM, MAP = "ssl_embedding_sim", "ssl_embedding_map"


def _ours(ds) -> set:
    return {k for k in ds.list_brain_runs() if k.startswith("ssl_embedding")}


def test_the_embeddings_operator_registers_both_brain_runs_with_the_run(embedded):
    ds, result = embedded
    assert {SIM, MAP} <= set(ds.list_brain_runs())
    assert result["similarity_brain_key"] == SIM and result["map_brain_key"] == MAP
    cfg = fo_plugin.get_run_config(ds, "ssl_embedding")
    assert sorted(cfg["brain_keys"]) == [MAP, SIM] and cfg["map_method"] == "pca"
    info = ds.get_brain_info(SIM).config
    assert info.embeddings_field == "ssl_embedding" and info.metric == "cosine" and info.method == "sklearn"


def test_sort_by_similarity_returns_our_knn_neighbours(embedded):
    ds, _ = embedded
    ids = ds.values("id")
    x = torch.as_tensor(np.stack(ds.values("ssl_embedding")))
    x = x - x.mean(dim=0)  # Brain's sklearn index centres the embeddings before its cosine (fiftyone-brain 0.25)
    idx, sim = knn(x, 10, method="exact")  # (N, 10), self excluded
    z = torch.nn.functional.normalize(x.double(), dim=1).numpy()
    row = {i: n for n, i in enumerate(ids)}
    exact = 0
    for q in [*ds.match_tags("copy").values("id")[:5], *ids[::37]]:
        got = ds.sort_by_similarity(q, k=11, brain_key=SIM).values("id")
        assert got[0] == q  # the query itself first (cosine distance 0)
        ours = [ids[j] for j in idx[row[q]]]
        # the same neighbours, in the same order up to float32 near-ties: identical cosines rank by rank
        assert np.allclose([z[row[q]] @ z[row[g]] for g in got[1:]], sim[row[q]], atol=1e-5)
        assert len(set(got[1:]) & set(ours)) >= 9
        exact += got[1:] == ours
    assert exact >= 10  # most of the 17 queries agree exactly, ties included
    copy = ds.match_tags("copy").first()
    assert ds.sort_by_similarity(copy.id, k=2, brain_key=SIM).values("id")[1] == copy.copy_of


def test_the_embeddings_map_has_one_2d_point_per_sample_and_keeps_copies_close(embedded):
    ds, _ = embedded
    res = ds.load_brain_results(MAP)
    pts = np.asarray(res.points)
    assert pts.shape == (len(ds), 2) and np.isfinite(pts).all()
    where = dict(zip(res.sample_ids, pts))
    assert set(where) == set(ds.values("id"))
    copies = ds.match_tags("copy")
    near = np.mean([np.linalg.norm(where[c] - where[o]) for c, o in zip(copies.values("id"), copies.values("copy_of"))])
    rand = np.mean(np.linalg.norm(pts[:, None] - pts[None], axis=2))
    assert near < 0.2 * rand, (near, rand)
    assert pts[:, 0].var() >= pts[:, 1].var()  # the first principal axis carries the most variance


@pytest.fixture
def small(cifar_dataset, proxy_ckpt):
    ds = cifar_dataset.select_fields().limit(60).clone()
    yield ds, {"view_target": "DATASET", "checkpoint": proxy_ckpt, "batch_size": 64}
    ds.delete()


def test_rerun_replaces_the_brain_runs_and_delete_removes_them(small):
    ds, params = small
    assert run_op("compute_ssl_embeddings", ds, params).error is None
    first = {k: ds.get_brain_info(k).timestamp for k in (SIM, MAP)}
    assert run_op("compute_ssl_embeddings", ds, params).error is None
    assert _ours(ds) == {SIM, MAP}
    assert all(ds.get_brain_info(k).timestamp > first[k] for k in (SIM, MAP))  # new Brain runs, not the old ones
    res = run_op("delete_ssl_run", ds, {"run_key": "ssl_embedding", "confirm": True})
    assert res.error is None, res.error
    assert _ours(ds) == set() and not ds.has_run("ssl_embedding")


def test_options_off_create_no_brain_runs_and_a_rerun_with_them_off_drops_the_old_ones(small):
    ds, params = small
    assert run_op("compute_ssl_embeddings", ds, {**params, "embeddings_map": False}).error is None
    assert _ours(ds) == {SIM}
    res = run_op("compute_ssl_embeddings", ds, {**params, "similarity_index": False, "embeddings_map": False})
    assert res.error is None and res.result.get("similarity_brain_key") is None
    assert _ours(ds) == set() and fo_plugin.get_run_config(ds, "ssl_embedding")["brain_keys"] == []
    assert len(ds.exists("ssl_embedding")) == len(ds)


def test_a_users_brain_run_of_the_same_key_is_never_replaced(small, proxy_ckpt):
    import fiftyone.brain as fob

    ds, _ = small
    ds.set_values("mine", [np.ones(4, np.float32) * (i + 1) + np.arange(4) for i in range(len(ds))])
    fob.compute_similarity(ds, embeddings="mine", brain_key="other_sim", backend="sklearn", progress=False)
    with pytest.raises(ValueError, match="Brain run 'other_sim'"):
        fo_plugin.compute_ssl_embeddings(ds, embeddings_field="other", checkpoint=proxy_ckpt)
    assert ds.get_brain_info("other_sim").config.embeddings_field == "mine" and "other" not in ds.get_field_schema()
