"""Near-duplicate verification (aligned pair scores), planted-duplicate transforms and exact hashing on real CIFAR-10
images (no FiftyOne)."""

import functools
import io
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fo_plugin.core import transforms
from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD
from fo_plugin.core.hashing import file_hash, hash_groups
from fo_plugin.core.knn import knn
from fo_plugin.core.verify import aligned_pair_scores, gray_thumbnails

ZIP = os.path.join(os.environ.get("FO_SSL_SHARED_DATA", "/work/shared/data"), "cifar10", "cifar10-jpeg.zip")


@functools.lru_cache(maxsize=1)
def _zip() -> zipfile.ZipFile:
    return zipfile.ZipFile(ZIP)  # opened once: reading the 60k-entry directory takes seconds on a busy machine


def _cifar(cls: str, start: int, n: int) -> np.ndarray:
    z = _zip()
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
    # crops were the weakest kind (15 of these 20 before the local x / y scale refinement: crops of another aspect
    # ratio); now 19 of 20 (the miss scores 0.66), 0.95-0.97 of bench_duplicates.py's 100
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


def test_pixel_candidates_find_reframed_copies_that_fixed_pixels_miss():
    """Shifted, cropped, rescaled and combined copies among 200 real CIFAR-10 images are among each other's 5 best
    pixel-window candidates (the warp search: 9 shifts x 2 zooms x mirror), which a fixed-position kNN misses."""
    if not os.path.exists(ZIP):
        pytest.skip("CIFAR-10 zip not available")
    from fo_plugin.core.duplicates import candidate_pairs
    from fo_plugin.core.verify import pixel_candidates

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    pop = np.concatenate([_cifar(c, 200, 20) for c in classes])  # (200, 32, 32, 3)
    rng = np.random.default_rng(3)
    kinds = np.repeat(["shift", "crop", "rescale", "combo"], 10)
    src = rng.choice(len(pop), len(kinds), replace=False)
    images = np.concatenate([pop, np.stack([transforms.apply(pop[s], k, rng) for s, k in zip(src, kinds)])])
    truth = {(int(s), len(pop) + n) for n, s in enumerate(src)}
    cand = pixel_candidates(images, k=5)
    assert len(cand) <= 5 * len(images) and np.all(cand[:, 0] < cand[:, 1]) and np.all(cand[:, 2] <= 1 + 1e-5)
    found = {(int(i), int(j)) for i, j in cand[:, :2]} & truth
    gray = gray_thumbnails(images)
    emb = torch.nn.functional.interpolate(gray[:, None], size=(8, 8), mode="area").flatten(1)
    idx, sim = knn(emb - emb.mean(1, keepdim=True), 5)  # the same cells at fixed positions
    fixed = {(int(i), int(j)) for i, j in candidate_pairs(idx, sim, -1.0)[:, :2]} & truth
    print(f"pixel candidates hold {len(found)} of 40 planted pairs, fixed-position 8 x 8 luma {len(fixed)}")
    assert len(found) >= 38, sorted(truth - found)  # measured: 40 of 40
    approx = pixel_candidates(images, k=5, method="ivf")  # the index used at scale: the same planted pairs
    assert len({(int(i), int(j)) for i, j in approx[:, :2]} & truth) >= len(found) - 1
    assert len(fixed) <= 36  # measured: 35 of 40 (the 5 shifted or cropped furthest)


def test_embedding_candidates_unite_extra_pairs_with_their_cosine():
    from fo_plugin.core.duplicates import embedding_candidates

    rng = np.random.default_rng(0)
    emb = torch.as_tensor(rng.normal(size=(50, 8)), dtype=torch.float32)
    base = embedding_candidates(emb, 3, -1.0)
    extra = np.array([[7, 3], [3, 7], [10, 10], [int(base[0, 1]), int(base[0, 0])]])  # repeated, self, already there
    both = embedding_candidates(emb, 3, -1.0, extra=extra)
    keys = [tuple(p) for p in both[:, :2].astype(int)]
    assert len(keys) == len(set(keys)) and keys == sorted(keys)
    assert set(keys) == {tuple(p) for p in base[:, :2].astype(int)} | {(3, 7)}
    z = torch.nn.functional.normalize(emb - emb.mean(0), dim=1)
    row = keys.index((3, 7))
    assert abs(both[row, 2] - float(z[3] @ z[7])) < 1e-5
    np.testing.assert_allclose(both[[keys.index(tuple(p)) for p in base[:, :2].astype(int)], 2], base[:, 2], atol=1e-5)
    own = emb.clone()
    np.testing.assert_array_equal(embedding_candidates(own, 3, -1.0, extra=extra, in_place=True), both)
    assert torch.allclose(own, z, atol=1e-6)  # centred and normalised in place: no (N, D) copy at a million rows


def test_unit_rows_copies_only_what_is_not_unit():
    from fo_plugin.core.knn import unit_rows

    t = torch.nn.functional.normalize(torch.randn(100, 16), dim=1)
    x = t.numpy()
    assert unit_rows(x) is x
    assert np.shares_memory(unit_rows(t), x)  # a CPU tensor is read in place, as an array
    y = x * 3
    assert unit_rows(y) is not y and np.allclose(unit_rows(y), x, atol=1e-6)
    assert np.array_equal(unit_rows(np.zeros((2, 4), np.float32)), np.zeros((2, 4)))  # zero rows stay zero
    c = unit_rows(y, centre=True)
    assert np.allclose(c, torch.nn.functional.normalize(torch.as_tensor(y - y.mean(0)), dim=1).numpy(), atol=1e-6)
