"""Leaky splits through FiftyOne's operator execution: real CIFAR-10 images in a train / test split with planted
byte-identical copies of some test images in train; the duplicate groups that cross the split are marked, saved as
a view, and each split's leaky fraction is reported."""

import os
import shutil

import fiftyone as fo
import numpy as np
import pytest
from conftest import run_op
from fiftyone import ViewField as F
from PIL import Image

import fo_plugin


@pytest.fixture()
def split_dataset(cifar_files, tmp_images):
    """40 train + 20 test real images, 4 test images copied (same bytes) into train and one saved again as PNG (same
    pixels, other bytes); a random vector field (no near-duplicate survives the pixel confirmation, so every group
    found is an exact one)."""
    folder = os.path.join(tmp_images, "leaky")
    os.makedirs(folder, exist_ok=True)
    paths = [p for p, _, _ in cifar_files[:60]]
    split = ["train"] * 40 + ["test"] * 20
    leaked = paths[40:44]
    copies = []
    for k, p in enumerate(leaked):
        copies.append(os.path.join(folder, f"leak_{k}.jpg"))
        shutil.copyfile(p, copies[-1])
    Image.open(paths[44]).convert("RGB").save(os.path.join(folder, "leak_png.png"))
    copies.append(os.path.join(folder, "leak_png.png"))
    leaked = leaked + [paths[44]]
    rng = np.random.default_rng(0)
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, split=s, tags=[s], emb=rng.normal(size=32))
                    for p, s in zip(paths + copies, split + ["train"] * 5)], progress=False)
    yield ds, set(leaked) | set(copies)
    ds.delete()


@pytest.mark.parametrize("split", ["split", "tags", "auto"])
def test_cross_split_groups_are_marked_viewed_and_counted(split_dataset, split):
    ds, leaked = split_dataset
    res = run_op("find_near_duplicates", ds, {"view_target": "DATASET", "embeddings_field": "emb", "split": split})
    assert res.error is None, res.error
    out = res.result
    assert out["split"] == ("split" if split == "auto" else split)
    assert set(ds.match(F("dups_leaky") == True).values("filepath")) == leaked  # noqa: E712
    assert out["num_leaky_groups"] == 5 and out["num_leaky_samples"] == 10
    assert out["leaky_fraction"] == pytest.approx({"test": 5 / 20, "train": 5 / 45})
    assert out["num_exact_groups"] == 5  # the PNG copy is found by its decoded pixels
    assert set(ds.match(F("dups_leaky") == True).values("dups_kind")) == {"exact"}  # noqa: E712
    view = ds.load_saved_view("leaky split pairs")
    assert set(view.values("filepath")) == leaked
    groups = view.values("dups_group")
    assert groups == sorted(groups)  # members of a group side by side


def test_without_a_split_there_is_no_leaky_field(split_dataset):
    ds, _ = split_dataset
    fo_plugin.find_near_duplicates(ds, embeddings_field="emb", split="split")
    assert ds.has_saved_view("leaky split pairs")
    ds.untag_samples(["train", "test"])
    ds.delete_sample_field("split")
    out = fo_plugin.find_near_duplicates(ds, embeddings_field="emb", overwrite=True)  # the re-run drops them
    assert out["split"] is None and "leaky_fraction" not in out
    assert "dups_leaky" not in ds.get_field_schema()
    assert not ds.has_saved_view("leaky split pairs")


def test_split_field_of_the_wrong_type_is_refused(split_dataset):
    ds, _ = split_dataset
    with pytest.raises(ValueError, match="not a string field"):
        fo_plugin.find_near_duplicates(ds, embeddings_field="emb", split="emb")
