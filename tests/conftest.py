"""Test environment: real FiftyOne with its embedded MongoDB, this folder registered as a plugin, real images.

One database and one set of datasets per pytest session (starting mongod costs ~10-20 s).
"""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FIFTYONE_DATABASE_DIR", os.path.join(ROOT, ".fiftyone", "db"))
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FO_SSL_CACHE_DIR", os.path.join(ROOT, ".cache", "fo-ssl"))
_plugins = os.path.join(ROOT, ".fiftyone", "test-plugins")
os.makedirs(_plugins, exist_ok=True)
if not os.path.islink(os.path.join(_plugins, "ssl-curation")):
    os.symlink(ROOT, os.path.join(_plugins, "ssl-curation"))
os.environ["FIFTYONE_PLUGINS_DIR"] = _plugins
sys.path.insert(0, ROOT)

import numpy as np
import pytest
from PIL import Image

PLUGIN = "@fo-ssl/ssl-curation"


def run_op(name, dataset, params, **ctx):
    """Execute our operator through FiftyOne's operator execution; returns the ExecutionResult."""
    import types

    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    from fo_plugin.demo import shown_outputs

    try:
        res = foo.execute_operator(f"{PLUGIN}/{name}", ctx={"dataset": dataset.name, "params": params, **ctx})
    except ExecutionError as e:  # validation (form) errors are raised rather than returned
        return types.SimpleNamespace(error=str(e), result=None)
    res.result = shown_outputs(res)  # a generator operator's outputs are what it showed in the App
    return res


@pytest.fixture(scope="session")
def tmp_images():
    with tempfile.TemporaryDirectory(prefix="fo-ssl-test-") as d:
        yield d


@pytest.fixture(scope="session")
def cifar_files():
    """40 CIFAR-10 training images per class (400 real images), extracted once."""
    from fo_plugin.data import cifar10_files

    return cifar10_files("train", per_class=40)


def _perturb(arr: np.ndarray, k: int) -> np.ndarray:
    """A near-identical copy: small brightness shift plus JPEG re-encoding (done by the caller's save)."""
    return np.clip(arr.astype(np.int16) + (2 + k % 3), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def cifar_dataset(cifar_files, tmp_images):
    """400 real CIFAR-10 images + 20 near-identical copies (tag ``copy``, field ``copy_of`` = the original's id)."""
    import fiftyone as fo

    ds = fo.Dataset()
    samples = [fo.Sample(filepath=p, ground_truth=fo.Classification(label=str(lab))) for p, lab, _ in cifar_files]
    ds.add_samples(samples, progress=False)
    originals = ds.select([s.id for s in samples[::20]])
    copies = []
    for k, s in enumerate(originals):
        arr = _perturb(np.asarray(Image.open(s.filepath).convert("RGB")), k)
        path = os.path.join(tmp_images, f"copy_{k}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        copies.append(fo.Sample(filepath=path, tags=["copy"], copy_of=s.id,
                                ground_truth=s.ground_truth.copy()))
    ds.add_samples(copies, progress=False)
    del samples, copies, originals, s  # live Sample objects would be reloaded on every set_values
    yield ds
    ds.delete()


@pytest.fixture(scope="session")
def proxy_ckpt(cifar_files, tmp_images):
    """A SimCLR proxy trained 6 epochs on the 400 CIFAR-10 images with keys fixed by file order, so every clone
    and machine trains the same model (operator-trained proxies key augmentations by sample id, which differ)."""
    import torch

    from fo_plugin.core.images import iter_decoded
    from fo_plugin.core.models import save_proxy
    from fo_plugin.core.rng import sample_keys
    from fo_plugin.core.train import TrainConfig, train_proxy

    images = next(iter_decoded([p for p, _, _ in cifar_files], 32, batch_size=len(cifar_files)))[1]
    model, _ = train_proxy(images, sample_keys(range(len(images))), TrainConfig(epochs=6, batch_size=128),
                           torch.device("cpu"))
    path = os.path.join(tmp_images, "proxy.pt")
    save_proxy(model, path)
    return path


@pytest.fixture(scope="session")
def embedded(cifar_dataset, proxy_ckpt):
    """The cifar dataset with embeddings of the session's proxy, computed once via the operator."""
    res = run_op("compute_ssl_embeddings", cifar_dataset,
                 {"view_target": "DATASET", "checkpoint": proxy_ckpt, "batch_size": 128})
    assert res.error is None, res.error
    return cifar_dataset, res.result


@pytest.fixture(scope="session")
def curation_dataset(cifar_files, tmp_images, proxy_ckpt):
    """300 real CIFAR-10 images + 20 planted near-duplicates (4 of each kind) + 20 planted MNIST outliers
    (10 scattered, 10 grouped), embedded with the session's proxy."""
    import fiftyone as fo

    import fo_plugin
    from fo_plugin.planted import plant_duplicates, plant_outliers

    paths = [p for p, _, _ in cifar_files if int(os.path.basename(p)[:4]) < 30]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, ground_truth=fo.Classification(label=p.split("/")[-2]), planted="none")
                    for p in paths], progress=False)
    ids = ds.values("id")
    dups = plant_duplicates(paths, os.path.join(tmp_images, "planted-dups"), per_kind=4)
    ds.add_samples([fo.Sample(filepath=r["filepath"], planted="duplicate", dup_kind=r["kind"],
                              dup_source=ids[r["source"]]) for r in dups], progress=False)
    ood = plant_outliers(os.path.join(tmp_images, "planted-ood"), scattered=10, grouped=10)
    ds.add_samples([fo.Sample(filepath=r["filepath"], planted=r["kind"]) for r in ood], progress=False)
    fo_plugin.compute_ssl_embeddings(ds, checkpoint=proxy_ckpt)
    yield ds
    ds.delete()


@pytest.fixture(scope="session")
def utk_dataset(proxy_ckpt):
    """300 UTKFace faces (balanced subset) with age / gender / race, embedded with the session's proxy and scored
    by identity-curvature influence, so the audit has real selections."""
    import fo_plugin

    ds = fo_plugin.load_utkface("utk-test", balanced=True, limit=None, overwrite=True)
    keep = ds.sort_by("filepath").values("id")[:: len(ds) // 300][:300]  # the same faces on every clone
    ds.delete_samples(ds.exclude(keep))
    fo_plugin.compute_ssl_embeddings(ds, checkpoint=proxy_ckpt)
    fo_plugin.compute_ssl_influence(ds, curvature="identity", num_augs=2, project_dim=0)
    yield ds
    ds.delete()
