"""Real bundled image sets from ``../shared/data`` as FiftyOne datasets (extracted once to the cache)."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import zipfile

import fiftyone as fo
import numpy as np
from PIL import Image

from .runs import cache_root

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
UTK_GENDERS = ("male", "female")


def shared_data_dir() -> str:
    """``FO_SSL_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("FO_SSL_SHARED_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(os.path.dirname(here), "shared", "data")


def _require(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"bundled data not found: {path} (set FO_SSL_SHARED_DATA to the shared/data folder)")
    return path


def _extract(zip_path: str, members: list[str], dest: str) -> list[str]:
    """Extract ``members`` of ``zip_path`` under ``dest`` unless already there; returns their paths."""
    out, missing = [], []
    for m in members:
        p = os.path.join(dest, m)
        out.append(p)
        if not os.path.exists(p):
            missing.append(m)
    if missing:
        with zipfile.ZipFile(zip_path) as z:
            for m in missing:
                z.extract(m, dest)
    return out


def _existing(name: str, overwrite: bool) -> fo.Dataset | None:
    """The dataset ``name`` if it exists and is to be kept; with ``overwrite`` it is deleted, with the artifacts
    (checkpoints, factors) its runs kept in the cache."""
    if not fo.dataset_exists(name):
        return None
    ds = fo.load_dataset(name)
    if not overwrite:
        return ds
    shutil.rmtree(os.path.join(cache_root(), str(ds._doc.id)), ignore_errors=True)
    ds.delete()
    return None


def cifar10_files(split: str = "train", per_class: int | None = None) -> list[tuple[str, int, int]]:
    """``(path, label, index_in_class)`` of CIFAR-10 JPEGs, extracted to the cache; the first ``per_class``
    images of each class in official order."""
    zip_path = _require(os.path.join(shared_data_dir(), "cifar10", "cifar10-jpeg.zip"))
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.startswith(f"cifar10/{split}/") and n.endswith(".jpg"))
    rows = []
    for n in names:
        cls, k = n.split("/")[2], int(n.split("/")[3][:4])
        if per_class is None or k < per_class:
            rows.append((n, CIFAR10_CLASSES.index(cls), k))
    paths = _extract(zip_path, [r[0] for r in rows], os.path.join(cache_root(), "data"))
    return [(p, lab, k) for p, (_, lab, k) in zip(paths, rows)]


def load_cifar10(name: str = "cifar10-ssl", split: str = "train", per_class: int | None = 500,
                 persistent: bool = False, overwrite: bool = False) -> fo.Dataset:
    """CIFAR-10 (Krizhevsky 2009) as a dataset with a ``ground_truth`` classification.

    Args:
        split ("train"): ``"train"``, ``"test"``, or ``"all"``: both, each sample's ``split`` field saying which
            (what :func:`~fo_plugin.find_near_duplicates` reads to report leaky splits).
        per_class (500): images per class (None: all 5,000 / 1,000); with ``"all"``, training images per class, and
            a fifth as many test images (CIFAR-10's own ratio).
        persistent (False): keep the dataset in the database across sessions.
        overwrite (False): replace an existing dataset of that name; otherwise an existing one is returned.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    existing = _existing(name, overwrite)
    if existing is not None:
        return existing
    ds = fo.Dataset(name, persistent=persistent)
    parts = [("train", per_class), ("test", None if per_class is None else max(1, per_class // 5))] \
        if split == "all" else [(split, per_class)]
    for part, count in parts:
        extra = {"split": part} if split == "all" else {}
        samples = [fo.Sample(filepath=p, ground_truth=fo.Classification(label=CIFAR10_CLASSES[lab]), cifar_index=k,
                             **extra) for p, lab, k in cifar10_files(part, count)]
        ds.add_samples(samples, progress=False)
    ds.info = {"source": "CIFAR-10 (Krizhevsky 2009), JPEG re-encoding", "split": split}
    ds.save()
    return ds


def utkface_files(balanced: bool = True, limit: int | None = None) -> list[dict]:
    """UTKFace (Zhang et al. 2017) aligned faces with age / gender / race, extracted to the cache."""
    root = os.path.join(shared_data_dir(), "utkface-subset")
    with open(_require(os.path.join(root, "labels.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r["parse_ok"] == "1" and (not balanced or r["in_balanced_2000"] == "1")]
    rows = rows[:limit] if limit else rows
    paths = _extract(_require(os.path.join(root, "utkface-9780.zip")), [r["file"] for r in rows],
                     os.path.join(cache_root(), "data"))
    return [{"filepath": p, "age": int(r["age"]), "gender": UTK_GENDERS[int(r["gender"])],
             "race": UTK_RACES[int(r["race"])]} for p, r in zip(paths, rows)]


def load_utkface(name: str = "utkface-ssl", balanced: bool = True, limit: int | None = None,
                 persistent: bool = False, overwrite: bool = False) -> fo.Dataset:
    """UTKFace faces with ``age`` (int), ``gender`` and ``race`` (str) fields, for subgroup audits."""
    existing = _existing(name, overwrite)
    if existing is not None:
        return existing
    ds = fo.Dataset(name, persistent=persistent)
    ds.add_samples([fo.Sample(**r) for r in utkface_files(balanced, limit)], progress=False)
    return ds


def mnist_images(n: int = 100, offset: int = 0) -> np.ndarray:
    """MNIST test digits (LeCun et al. 1998) as uint8 RGB (n, 32, 32, 3): out-of-domain images for natural sets."""
    path = _require(os.path.join(shared_data_dir(), "mnist-test", "t10k-images-idx3-ubyte.gz"))
    x = np.frombuffer(gzip.open(path).read(), np.uint8, offset=16).reshape(-1, 28, 28)[offset:offset + n]
    return np.pad(np.repeat(x[..., None], 3, -1), ((0, 0), (2, 2), (2, 2), (0, 0)))


def write_images(images: np.ndarray, folder: str, prefix: str = "img") -> list[str]:
    """Write uint8 (N, H, W, 3) arrays as PNG files; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = os.path.join(folder, f"{prefix}_{i:05d}.png")
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths
