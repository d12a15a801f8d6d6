"""compute_ssl_embeddings through FiftyOne's operator execution, on real CIFAR-10 images."""

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from conftest import PLUGIN, run_op
from PIL import Image

import fo_plugin


def _unit(x):
    x = np.stack(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_plugin_and_operators_are_discoverable():
    for name in ("compute_ssl_embeddings", "delete_ssl_run"):
        assert foo.get_operator(f"{PLUGIN}/{name}").name == name
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fiftyone"), "operators", "list"],
                         capture_output=True, text=True, env=os.environ, timeout=120)
    assert f"{PLUGIN}/compute_ssl_embeddings" in out.stdout


@pytest.fixture(scope="module")
def trained(cifar_dataset):
    """A proxy trained by the operator itself (3 epochs) on a copy of the cifar dataset."""
    ds = cifar_dataset.select_fields().clone()
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "epochs": 3, "batch_size": 128})
    assert res.error is None, res.error
    yield ds, res.result
    ds.delete()


def test_proxy_training_embeds_and_records_the_run(trained):
    ds, result = trained
    assert result["num_embedded"] == len(ds) == 420 and result["num_failed"] == 0 and result["trained_proxy"]
    emb = ds.values("ssl_embedding")
    assert all(e.shape == (256,) and np.isfinite(e).all() for e in emb)
    assert ds.get_field_schema()["ssl_embedding"].__class__ is fo.VectorField
    cfg = fo_plugin.get_run_config(ds, "ssl_embedding")
    assert cfg["method"] == "fo_plugin.ssl_embeddings" and cfg["status"] == "complete"
    assert cfg["backbone"]["kind"] == "proxy" and os.path.isfile(cfg["backbone"]["checkpoint"])
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["augment"]["strength"] == 0.5
    hist = fo_plugin.load_run_results(ds, "ssl_embedding")["train_history"]
    assert hist[-1]["loss"] < hist[0]["loss"]  # the proxy learned something


def test_near_identical_copies_embed_closer_than_unrelated_images(embedded):
    ds, _ = embedded
    ids = ds.values("id")
    emb = dict(zip(ids, _unit(ds.values("ssl_embedding"))))
    copies = ds.match_tags("copy")
    hits = 0
    for cid, oid in zip(copies.values("id"), copies.values("copy_of")):
        sims = {i: float(emb[cid] @ v) for i, v in emb.items() if i != cid}
        unrelated = np.array([s for i, s in sims.items() if i != oid])
        hits += sims[oid] > np.quantile(unrelated, 0.99)
    assert hits >= 18, f"only {hits}/20 copies had their original above the 99th percentile of unrelated images"


def test_rerun_reuses_the_runs_checkpoint_and_gives_the_same_embeddings(trained):
    ds, first = trained
    before = np.stack(ds.values("ssl_embedding"))
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "epochs": 3, "batch_size": 128})
    assert res.error is None
    assert res.result["trained_proxy"] is False and res.result["checkpoint"] == first["checkpoint"]
    assert np.allclose(np.stack(ds.values("ssl_embedding")), before, atol=1e-5)


def test_train_limit_trains_on_a_subset_and_embeds_every_image(trained):
    from fo_plugin.core.models import load_proxy

    ds, first = trained
    # a limit at or above the view's size changes nothing: same fingerprint, the run's proxy is reused
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "epochs": 3, "batch_size": 128,
                                                "train_limit": 1000})
    assert res.result["trained_proxy"] is False and res.result["checkpoint"] == first["checkpoint"]
    sub = ds.clone()
    try:
        res = run_op("compute_ssl_embeddings", sub, {"view_target": "DATASET", "epochs": 1, "batch_size": 64,
                                                     "train_limit": 100})
        assert res.result["trained_proxy"] and res.result["num_embedded"] == len(sub) == 420
        assert load_proxy(res.result["checkpoint"])[1]["num_train_images"] == 100
        assert fo_plugin.get_run_config(sub, "ssl_embedding")["train"]["train_limit"] == 100
        bad = run_op("compute_ssl_embeddings", sub, {"view_target": "DATASET", "train_limit": 1})
        assert bad.error and "train_limit" in bad.error
    finally:
        sub.delete()


def test_training_is_deterministic_under_a_seed(cifar_files):
    from fo_plugin.core.images import iter_decoded
    from fo_plugin.core.rng import sample_keys
    from fo_plugin.core.train import TrainConfig, train_proxy

    imgs = next(iter_decoded([p for p, _, _ in cifar_files[:64]], 32, batch_size=64))[1]
    keys = sample_keys(range(64))
    outs = []
    for _ in range(2):
        m, _ = train_proxy(imgs, keys, TrainConfig(epochs=1, batch_size=32, seed=5), torch.device("cpu"))
        with torch.no_grad():
            outs.append(m(torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 255))
    m3, _ = train_proxy(imgs, keys, TrainConfig(epochs=1, batch_size=32, seed=6), torch.device("cpu"))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(outs[0], m3(torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 255), atol=1e-3)


@pytest.fixture(scope="module")
def messy_dataset(cifar_files, tmp_images):
    """Real images plus every kind of bad input a user's folder holds."""
    d = os.path.join(tmp_images, "messy")
    os.makedirs(d, exist_ok=True)
    src = Image.open(cifar_files[0][0]).convert("RGB")
    good = {}
    src.convert("L").save(p := os.path.join(d, "gray.png")); good["gray"] = p
    src.convert("CMYK").save(p := os.path.join(d, "cmyk.jpg")); good["cmyk"] = p
    src.resize((3, 3)).save(p := os.path.join(d, "tiny.png")); good["tiny"] = p
    src.resize((4000, 3000)).save(p := os.path.join(d, "huge.jpg")); good["huge"] = p
    src.convert("RGBA").save(p := os.path.join(d, "rgba.png")); good["rgba"] = p
    bad = {}
    with open(p := os.path.join(d, "text.jpg"), "w") as f:
        f.write("not an image"); bad["text"] = p
    data = open(cifar_files[1][0], "rb").read()
    with open(p := os.path.join(d, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 3]); bad["truncated"] = p
    bad["missing"] = os.path.join(d, "missing.jpg")
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, kind=k, ok=True) for k, p in good.items()]
                   + [fo.Sample(filepath=p, kind=k, ok=False) for k, p in bad.items()]
                   + [fo.Sample(filepath=p, kind="cifar", ok=True) for p, _, _ in cifar_files[:40]], progress=False)
    yield ds
    ds.delete()


def test_bad_files_are_recorded_and_do_not_stop_the_run(messy_dataset, proxy_ckpt):
    ds = messy_dataset
    ckpt = proxy_ckpt
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "checkpoint": ckpt})
    assert res.error is None, res.error
    assert res.result["num_failed"] == 3 and res.result["num_embedded"] == len(ds) - 3
    for s in ds:
        if s.ok:
            assert s.ssl_embedding is not None and np.isfinite(s.ssl_embedding).all() and s.ssl_embedding_error is None
        else:
            assert s.ssl_embedding is None and s.ssl_embedding_error
    errors = dict(zip(ds.values("kind"), ds.values("ssl_embedding_error")))
    assert errors["missing"].startswith("missing file") and errors["text"].startswith("not an image")


def test_a_users_field_is_never_overwritten_without_being_asked(cifar_dataset):
    ds = cifar_dataset.clone()
    ds.set_values("mine", ["user data"] * len(ds))
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "embeddings_field": "mine", "epochs": 1})
    assert res.error and "already exists" in str(res.error)
    assert ds.values("mine") == ["user data"] * len(ds)
    ds.delete()


def test_wrong_parameters_are_form_errors(cifar_dataset):
    res = run_op("compute_ssl_embeddings", cifar_dataset, {"view_target": "DATASET", "batch_size": 0})
    assert res.error and "batch_size" in str(res.error) and "Traceback" not in str(res.error)
    if not torch.cuda.is_available():
        res = run_op("compute_ssl_embeddings", cifar_dataset, {"view_target": "DATASET", "device": "cuda"})
        assert res.error and "CUDA" in str(res.error)


def test_empty_view_gives_a_clear_message(cifar_dataset):
    with pytest.raises(ValueError, match="empty"):
        fo_plugin.compute_ssl_embeddings(cifar_dataset.match_tags("no-such-tag"), "e_empty")


def test_torchvision_and_torchscript_backbones_from_local_files(cifar_dataset, tmp_images):
    import torchvision

    net = torchvision.models.get_model("resnet18", weights=None)
    path = os.path.join(tmp_images, "resnet18.pth")
    torch.save(net.state_dict(), path)
    view = cifar_dataset.limit(8)
    out = fo_plugin.compute_ssl_embeddings(view, "tv_emb", "torchvision", model_name="resnet18", checkpoint=path,
                                           image_size=64, batch_size=8)
    assert out["embedding_dim"] == 512 and out["num_embedded"] == 8
    net.fc = torch.nn.Identity()
    ts = os.path.join(tmp_images, "resnet18.ts")
    torch.jit.script(net.eval()).save(ts)
    fo_plugin.compute_ssl_embeddings(view, "ts_emb", "torchscript", checkpoint=ts, image_size=64, batch_size=8)
    a, b = np.stack(view.values("tv_emb")), np.stack(view.values("ts_emb"))
    assert np.allclose(a, b, atol=1e-4)  # same weights, two loaders, same features
    fo_plugin.delete_run(cifar_dataset, "tv_emb")
    fo_plugin.delete_run(cifar_dataset, "ts_emb")
    assert "tv_emb" not in cifar_dataset.get_field_schema()


def test_missing_pretrained_weights_fail_with_a_clear_message():
    from fo_plugin.core.backbones import BackboneSpec, BackboneUnavailable, load_backbone

    with pytest.raises(BackboneUnavailable, match="not available on this machine"):
        load_backbone(BackboneSpec("open_clip", "RN50", pretrained="openai"))
    with pytest.raises(BackboneUnavailable, match="not found"):
        load_backbone(BackboneSpec("torchvision", "resnet18", checkpoint="/nonexistent.pth"))


def test_delete_run_removes_fields_artifacts_and_record(cifar_dataset, proxy_ckpt):
    ds = cifar_dataset.clone()
    ckpt = proxy_ckpt
    fo_plugin.compute_ssl_embeddings(ds.limit(10), "tmp_emb", checkpoint=ckpt)
    assert "tmp_emb" in fo_plugin.list_runs(ds)
    res = run_op("delete_ssl_run", ds, {"run_key": "tmp_emb", "confirm": True})
    assert res.error is None
    assert "tmp_emb" not in ds.get_field_schema() and "tmp_emb" not in ds.list_runs()
    assert os.path.isfile(ckpt)  # the checkpoint belonged to another run and stays
    ds.delete()


def test_delegated_execution_queues_then_runs_with_progress(cifar_dataset, proxy_ckpt):
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = cifar_dataset.clone()
    ckpt = proxy_ckpt
    res = run_op("compute_ssl_embeddings", ds, {"view_target": "DATASET", "checkpoint": ckpt, "delegate": True,
                                                 "embeddings_field": "delegated_emb"})
    assert res.error is None and res.delegated
    assert "delegated_emb" not in ds.get_field_schema() or ds.count("delegated_emb") == 0  # only queued so far
    svc = DelegatedOperationService()
    done = svc.execute_queued_operations(dataset_name=ds.name)
    assert len(done) == 1 and done[0].error is None
    assert ds.count("delegated_emb") == len(ds)
    op = svc.list_operations(dataset_name=ds.name)[0]
    assert op.run_state == "completed" and op.status.progress == 1.0
    ds.delete()
