"""Near-duplicate verification (aligned pair scores), planted-duplicate transforms and exact hashing on real CIFAR-10
images (no FiftyOne)."""

import io
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fo_plugin.core import transforms
from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD, aligned_pair_scores, gray_thumbnails
from fo_plugin.core.hashing import file_hash, hash_groups
from fo_plugin.core.knn import knn

ZIP = os.path.join(os.environ.get("FO_SSL_SHARED_DATA", "/work/shared/data"), "cifar10", "cifar10-jpeg.zip")


def _cifar(cls: str, start: int, n: int) -> np.ndarray:
    with zipfile.ZipFile(ZIP) as z:
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(f"cifar10/train/{cls}/{k:04d}.jpg"))).convert("RGB"))
                         for k in range(start, start + n)])


@pytest.fixture(scope="module")
def mixed():
    if not os.path.exists(ZIP):
        pytest.skip("CIFAR-10 zip not available")
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return np.concatenate([_cifar(c, 100, 3) for c in classes])


@pytest.mark.parametrize("kind", transforms.KINDS)
def test_each_planted_kind_is_confirmed(mixed, kind):
    rng = np.random.default_rng(1)
    src = mixed[:20]
    copies = np.stack([transforms.apply(x, kind, rng) for x in src])
    assert copies.shape == src.shape and copies.dtype == np.uint8
    assert np.abs(copies.astype(int) - src).mean() > 1  # the copy really differs
    gray = gray_thumbnails(np.concatenate([src, copies]))
    s = aligned_pair_scores(gray, np.stack([np.arange(20), 20 + np.arange(20)], 1))["score"]
    assert (s >= DUPLICATE_THRESHOLD).mean() >= 0.9, (kind, np.round(s, 3))


def test_airplanes_against_sky_are_mostly_rejected():
    """Pairs of different airplanes (nearest neighbours on 16 x 16 luma: same composition) are not duplicates."""
    if not os.path.exists(ZIP):
        pytest.skip("CIFAR-10 zip not available")
    planes = _cifar("airplane", 0, 400)
    gray = gray_thumbnails(planes)
    emb = torch.nn.functional.interpolate(gray[:, None], size=(16, 16), mode="area").flatten(1)
    idx, sim = knn(emb - emb.mean(1, keepdim=True), 1)
    pairs = np.unique(np.sort(np.stack([np.arange(400), idx[:, 0]], 1), 1), axis=0)
    r = aligned_pair_scores(gray, pairs)
    assert np.median(r["layout"]) > 0.7  # they do share a layout
    assert (r["score"] >= DUPLICATE_THRESHOLD).mean() <= 0.05


def test_score_symmetric_and_one_for_identical(mixed):
    gray = gray_thumbnails(mixed)
    rng = np.random.default_rng(0)
    pairs = np.concatenate([rng.integers(0, len(mixed), (40, 2)), np.stack([np.arange(5)] * 2, 1)])
    a = aligned_pair_scores(gray, pairs)["score"]
    b = aligned_pair_scores(gray, pairs[:, ::-1].copy())["score"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.all(a[-5:] > 0.995)
    assert np.all((a >= 0) & (a <= 1))


def test_exact_hashing_groups_byte_identical_files(tmp_path, mixed):
    a, b = mixed[0], mixed[1]
    paths = []
    for name, im in [("a.png", a), ("b.png", b), ("a_again.png", a)]:
        Image.fromarray(im).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    shutil.copy(paths[1], tmp_path / "b_copy.png")
    paths.append(str(tmp_path / "b_copy.png"))
    Image.fromarray(a).save(tmp_path / "a.bmp")  # same pixels, different bytes
    paths.append(str(tmp_path / "a.bmp"))
    fh = [file_hash(p) for p in paths]
    assert hash_groups(fh).tolist() == [0, 1, 0, 1, -1]  # PNG encoding of a is deterministic; the BMP differs
    assert hash_groups(["x", None, "y", None]).tolist() == [-1, -1, -1, -1]
