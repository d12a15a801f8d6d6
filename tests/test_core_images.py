"""Image decoding (no FiftyOne) on real CIFAR-10 images re-encoded in the awkward formats found in the wild: 16 and
32-bit grayscale, float, CMYK, palette, RGBA, 1x1, a 4000x3000 JPEG, and the files that must be refused."""

import numpy as np
import pytest
from PIL import Image

from fo_plugin.core.images import iter_decoded, load_rgb


@pytest.fixture(scope="module")
def real(cifar_files):
    """One real CIFAR-10 image, uint8 (32, 32, 3)."""
    return np.asarray(Image.open(cifar_files[7][0]).convert("RGB"))


def _ok(path, size=32):
    arr, err = load_rgb(str(path), size)
    assert err is None, err
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    return arr.astype(int)


def test_16_bit_png_decodes_to_its_content_not_white(real, tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))  # (32, 32) gradient
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp16 / 257).round().astype(np.uint8), "L").save(tmp_path / "ramp8.png")
    assert Image.open(tmp_path / "ramp16.png").mode == "I;16"
    a16, a8 = _ok(tmp_path / "ramp16.png"), _ok(tmp_path / "ramp8.png")
    assert np.abs(a16 - a8).max() <= 1
    assert a16[:, 0].max() <= 1 and a16[:, -1].min() >= 254  # black to white, not solid white
    gray = np.asarray(Image.fromarray(real).convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "photo16.png")
    Image.fromarray(gray, "L").save(tmp_path / "photo8.png")
    assert np.abs(_ok(tmp_path / "photo16.png") - _ok(tmp_path / "photo8.png")).max() <= 1


def test_32_bit_integer_and_float_grayscale(real, tmp_path):
    gray = np.asarray(Image.fromarray(real).convert("L"))
    ref = np.repeat(gray[..., None].astype(int), 3, axis=2)
    Image.fromarray(gray.astype(np.int32) * 257, "I").save(tmp_path / "i32.tif")
    Image.fromarray(gray.astype(np.float32) / 255, "F").save(tmp_path / "f01.tif")
    Image.fromarray(gray.astype(np.float32), "F").save(tmp_path / "f255.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I" and Image.open(tmp_path / "f01.tif").mode == "F"
    for name in ("i32.tif", "f01.tif", "f255.tif"):
        assert np.abs(_ok(tmp_path / name) - ref).max() <= 1, name
    wide = gray.astype(np.int32) * 100_000 - 5_000_000  # outside every standard range: min-max stretched
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    stretched = (gray - gray.min()) * 255.0 / (gray.max() - gray.min())
    assert np.abs(_ok(tmp_path / "wide.tif")[..., 0] - stretched).max() <= 1


def test_cmyk_palette_rgba_and_tiny_images(real, tmp_path):
    Image.fromarray(real).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(_ok(tmp_path / "cmyk.jpg") - real.astype(int)).mean() < 6
    pal = Image.fromarray(real).quantize(64)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(_ok(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")).astype(int))
    rgba = np.dstack([real, np.where(np.arange(32) < 16, 255, 0)[None, :].repeat(32, 0)]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _ok(tmp_path / "rgba.png")
    assert np.array_equal(out[:, :16], real[:, :16]) and (out[:, 16:] == 255).all()  # transparent -> white
    Image.new("RGB", (1, 1), (200, 30, 90)).save(tmp_path / "one.png")
    assert (_ok(tmp_path / "one.png") == [200, 30, 90]).all()


def test_huge_jpeg_is_decoded_small(real, tmp_path):
    big = Image.fromarray(real).resize((4000, 3000), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=85)
    out = _ok(tmp_path / "big.jpg")
    ref = np.asarray(Image.fromarray(real).resize((43, 32)).crop((5, 0, 37, 32))).astype(int)  # same fit/crop
    assert np.abs(out.mean((0, 1)) - ref.mean((0, 1))).max() < 4
    assert np.abs(out - ref).mean() < 20


def test_unusable_files_get_clear_errors(real, tmp_path):
    Image.fromarray(real).resize((256, 256)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image at all\n")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    paths = [str(tmp_path / n) for n in ("full.jpg", "cut.jpg", "missing.png", "notes.jpg", "clip.mp4")]
    errors = [load_rgb(p, 32)[1] for p in paths]
    assert errors[0] is None
    assert "cannot decode" in errors[1] and "truncated" in errors[1]
    assert errors[2].startswith("missing file")
    assert errors[3].startswith("not an image") and errors[4].startswith("not an image (video")
    start, imgs, ok, errs = next(iter_decoded(paths, 32, batch_size=8, workers=2))
    assert start == 0 and ok.tolist() == [True, False, False, False, False] and errs == errors
    assert imgs[0].std() > 10 and not imgs[1:].any()
