"""CL-Core through FiftyOne's operator execution on real CIFAR-10 images: fields, budgets, saved views,
fidelity on planted near-copies, order invariance, determinism, bad input."""

import os

import fiftyone as fo
import numpy as np
import pytest
from conftest import run_op
from fiftyone import ViewField as F
from PIL import Image

import fo_plugin
from fo_plugin.core.clcore import quotas


def test_operator_writes_scores_ranks_subset_and_views(embedded):
    ds, _ = embedded
    res = run_op("compute_clcore", ds, {"view_target": "DATASET", "embeddings_run": "ssl_embedding",
                                        "latent": "label_field", "label_field": "ground_truth", "budget": 0.5})
    assert res.error is None, res.error
    out = res.result
    assert out["num_scored"] == len(ds) and out["num_selected"] == round(0.5 * len(ds)) and out["num_classes"] == 10
    labels = np.array(ds.values("ground_truth.label"))
    sel = np.array(ds.values("clcore_selected"))
    sizes = np.array([np.sum(labels == c) for c in sorted(set(labels))])
    kept = np.array([sel[labels == c].sum() for c in sorted(set(labels))])
    assert np.array_equal(kept, quotas(sizes, out["num_selected"]))
    assert set(ds.values("clcore_class")) == set(labels)
    # within each class, the kept samples are exactly the best-ranked ones
    ranks = np.array(ds.values("clcore_rank"))
    scores = np.array(ds.values("clcore_score"))
    for c in set(labels):
        m = labels == c
        assert set(np.flatnonzero(m & sel)) == set(np.flatnonzero(m)[np.argsort(ranks[m])[: sel[m].sum()]])
        order = np.argsort(ranks[m])
        assert np.all(np.diff(scores[m][order]) <= 1e-9)  # released mode: rank follows score
    assert ds.load_saved_view("CL-Core subset (50%)").count() == out["num_selected"]
    worst = ds.load_saved_view("CL-Core least valuable")
    assert worst.count() == len(ds) - out["num_selected"]
    assert worst.first().clcore_rank_overall == max(ds.values("clcore_rank_overall"))
    cfg = fo_plugin.get_run_config(ds, "clcore")
    assert cfg["mode"] == "released" and cfg["budget"] == 0.5 and cfg["status"] == "complete"


def test_planted_cluster_of_near_copies_outscores_isolated_images_of_its_class(cifar_files, tmp_images, proxy_ckpt):
    cats = [p for p, lab, _ in cifar_files if lab == 3]
    d = os.path.join(tmp_images, "cluster")
    os.makedirs(d, exist_ok=True)
    base = np.asarray(Image.open(cats[0]).convert("RGB")).astype(np.int16)
    copies = []
    for k in range(6):
        p = os.path.join(d, f"near_{k}.jpg")
        Image.fromarray(np.clip(base + (k - 3), 0, 255).astype(np.uint8)).save(p, quality=85 + k)
        copies.append(p)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, cluster=False, copy=False, label="cat") for p in cats]
                   + [fo.Sample(filepath=p, cluster=True, copy=True, label="cat") for p in copies], progress=False)
    ds.match(F("filepath") == cats[0]).set_values("cluster", [True])
    fo_plugin.compute_ssl_embeddings(ds, checkpoint=proxy_ckpt)
    alone = ds.match(F("copy") == False)
    fo_plugin.compute_clcore(alone, "alone", latent="label_field", label_field="label", budget=0.5)
    base_alone = ds.match(F("filepath") == cats[0]).first()
    fo_plugin.compute_clcore(ds, latent="label_field", label_field="label", budget=0.5)
    cluster = np.array(ds.values("cluster"))
    scores = np.array(ds.values("clcore_score"))
    assert cluster.sum() == 7
    assert scores[cluster].min() > np.median(scores[~cluster])  # the cluster beats the typical isolated image
    assert scores[cluster].min() > base_alone.alone_score + 5.5  # each near-copy adds about 1 to its twins' scores
    base = ds.match(F("filepath") == cats[0]).first()
    assert base.clcore_rank < base_alone.alone_rank
    sel = np.array(ds.values("clcore_selected"))
    assert sel[cluster].mean() > sel[~cluster].mean()  # the cluster is kept more often than the rest
    ds.delete()


def test_scores_do_not_depend_on_sample_order_and_are_deterministic(embedded):
    ds, _ = embedded
    a = fo_plugin.compute_clcore(ds, "order_a", num_classes=5, num_views=2, budget=0.7)
    b = fo_plugin.compute_clcore(ds.sort_by("filepath", reverse=True), "order_b", num_classes=5, num_views=2,
                                 budget=0.7)
    assert a["num_selected"] == b["num_selected"]
    for f in ("score", "class", "rank", "selected"):
        va = dict(zip(ds.values("id"), ds.values(f"order_a_{f}")))
        vb = dict(zip(ds.values("id"), ds.values(f"order_b_{f}")))
        if f == "score":
            assert np.allclose([va[i] for i in va], [vb[i] for i in va], atol=1e-6)
        else:
            assert va == vb
    c = fo_plugin.compute_clcore(ds, "order_c", num_classes=5, num_views=2, budget=0.7, seed=1)
    assert not np.allclose(ds.values("order_a_score"), ds.values("order_c_score"))  # another augmentation draw
    assert c["num_selected"] == a["num_selected"]
    for key in ("order_a", "order_b", "order_c"):
        fo_plugin.delete_run(ds, key)


def test_kmeans_estimates_classes_and_greedy_mode_writes_gains(embedded):
    ds, _ = embedded
    out = fo_plugin.compute_clcore(ds, "greedy_run", mode="greedy", budget=100, num_classes=None)
    assert out["num_selected"] == 100 and 2 <= out["num_classes"] <= 84
    gains = np.array(ds.values("greedy_run_gain"))
    scores = np.array(ds.values("greedy_run_score"))
    assert np.all(gains <= scores + 1e-6)  # a gain is the score minus a non-negative redundancy penalty
    assert (gains < scores - 1e-3).mean() > 0.5
    fo_plugin.delete_run(ds, "greedy_run")
    assert "greedy_run_gain" not in ds.get_field_schema()


def test_stored_embeddings_field_can_supply_f(embedded):
    ds, _ = embedded
    out = fo_plugin.compute_clcore(ds, "from_field", embeddings_field="ssl_embedding", embeddings_run=None,
                                   num_classes=3, budget=0.25)
    assert out["num_selected"] == round(0.25 * len(ds)) and out["num_classes"] == 3
    fo_plugin.delete_run(ds, "from_field")


def test_bad_input_gets_clear_messages(embedded):
    ds, _ = embedded
    res = run_op("compute_clcore", ds, {"view_target": "DATASET", "budget": 0})
    assert res.error and "Budget" in str(res.error)
    res = run_op("compute_clcore", ds, {"view_target": "DATASET", "budget": 2.5})
    assert res.error and "Budget" in str(res.error)
    with pytest.raises(ValueError, match="no SSL embeddings run 'nope'"):
        fo_plugin.compute_clcore(ds, embeddings_run="nope")
    with pytest.raises(ValueError, match="not a vector field|use a Classification"):
        fo_plugin.compute_clcore(ds, latent="label_field", label_field="ssl_embedding")
    with pytest.raises(ValueError, match="empty"):
        fo_plugin.compute_clcore(ds.match_tags("nothing"))
    ds.set_values("clcore_user_score", [1.0] * len(ds))
    res = run_op("compute_clcore", ds, {"view_target": "DATASET", "run_key": "clcore_user"})
    assert res.error and "already exists" in str(res.error)
    assert ds.values("clcore_user_score") == [1.0] * len(ds)
    ds.delete_sample_field("clcore_user_score")


def test_images_that_failed_to_decode_are_skipped_and_counted(cifar_dataset, proxy_ckpt, tmp_images):
    ds = cifar_dataset.limit(30).select_fields().clone()
    ds.add_sample(fo.Sample(filepath=os.path.join(tmp_images, "does-not-exist.jpg")))
    fo_plugin.compute_ssl_embeddings(ds, checkpoint=proxy_ckpt)
    out = fo_plugin.compute_clcore(ds, num_classes=2, budget=0.5)
    assert out["num_skipped"] == 1 and out["num_scored"] == 30
    assert ds.count("clcore_score") == 30
    ds.delete()


def test_clip_zero_shot_latent_classes_from_a_local_open_clip_checkpoint(cifar_dataset, tmp_path):
    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms("ViT-S-16", pretrained=None)  # random weights, offline
    ckpt = str(tmp_path / "vit-s-16.pt")
    torch.save(model.state_dict(), ckpt)
    ds = cifar_dataset.limit(12).select_fields().clone()
    emb = fo_plugin.compute_ssl_embeddings(ds, "clip_emb", "open_clip", model_name="ViT-S-16", checkpoint=ckpt,
                                           batch_size=12)
    assert emb["num_embedded"] == 12 and emb["embedding_dim"] == 384
    names = ["cat", "ship", "truck"]
    out = fo_plugin.compute_clcore(ds, embeddings_run="clip_emb", latent="clip_zero_shot", class_names=names,
                                   clip_model="ViT-S-16", clip_checkpoint=ckpt, budget=0.5)
    assert set(ds.values("clcore_class")) <= set(names) and out["num_scored"] == 12
    assert sum(out["class_sizes"].values()) == 12
    cfg = fo_plugin.get_run_config(ds, "clcore")
    assert cfg["clip"]["class_names"] == names and cfg["clip"]["checkpoint"] == ckpt
    first = ds.values("clcore_class")
    fo_plugin.compute_clcore(ds, embeddings_run="clip_emb", latent="clip_zero_shot", class_names=names,
                             clip_model="ViT-S-16", clip_checkpoint=ckpt, budget=0.5)
    assert ds.values("clcore_class") == first  # deterministic
    with pytest.raises(ValueError, match="two class_names"):
        fo_plugin.compute_clcore(ds, embeddings_run="clip_emb", latent="clip_zero_shot", class_names=["cat"])
    ds.delete()
