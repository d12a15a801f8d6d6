"""Image decoding (no FiftyOne) on real CIFAR-10 images re-encoded in the awkward formats found in the wild: 16 and
32-bit grayscale, float, CMYK, palette, RGBA, 1x1, a 4000x3000 JPEG, and the files that must be refused."""

import numpy as np
import pytest
from PIL import Image

from fo_plugin.core import images
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


@pytest.fixture(scope="module")
def utk_paths():
    """200 real UTKFace faces (200x200 JPEGs), extracted once."""
    from fo_plugin.data import utkface_files

    return [r["filepath"] for r in utkface_files(balanced=True, limit=200)]


@pytest.fixture()
def fast_calls(monkeypatch):
    """Counts of files decoded by the fast JPEG path and by PIL, through whichever entry point."""
    counts = {"fast": 0, "pil": 0}
    fast, pil = images._load_plain_jpeg, images._load_pil

    def fast_spy(path, size):
        arr = fast(path, size)
        counts["fast"] += arr is not None
        return arr

    def pil_spy(path, size):
        counts["pil"] += 1
        return pil(path, size)

    monkeypatch.setattr(images, "_load_plain_jpeg", fast_spy)
    monkeypatch.setattr(images, "_load_pil", pil_spy)
    return counts


def _same_as_pil(paths, size):
    """Every file gives exactly PIL's array (or PIL's error message) through load_rgb."""
    for p in paths:
        (a, ea), (b, eb) = load_rgb(p, size), load_rgb(p, size, fast=False)
        assert ea == eb, p
        assert (a is None and b is None) or (a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)), p


def test_plain_jpegs_take_the_fast_path_with_pils_exact_pixels(cifar_files, utk_paths, fast_calls):
    cifar = [p for p, _, _ in cifar_files]
    _same_as_pil(cifar, 32)  # as stored: no resize
    assert fast_calls == {"fast": 400, "pil": 400}  # each file once fast, once through PIL (fast=False)
    _same_as_pil(cifar[::8], 20)  # bicubic fit down
    _same_as_pil(cifar[::8], 224)  # and up
    _same_as_pil(utk_paths, 64)  # 200x200 faces, resized
    assert fast_calls["fast"] == 400 + 50 + 50 + 200
    _same_as_pil(utk_paths[:20], 32)  # 200 >= 4 x 32: PIL decodes at half size (draft), so PIL it is
    assert fast_calls["fast"] == 700
    fast_calls.update(fast=0, pil=0)
    batches = list(iter_decoded(cifar, 32, batch_size=128, workers=2))
    assert fast_calls == {"fast": 400, "pil": 0}  # a silent fall-back to PIL would fail here
    assert np.array_equal(np.concatenate([b[1] for b in batches]), np.stack([load_rgb(p, 32, fast=False)[0]
                                                                              for p in cifar]))


def _odd_jpegs(real: np.ndarray, folder) -> dict[str, bool]:
    """JPEGs of a real image in the variants found in the wild -> whether the fast path may decode them."""
    im, big = Image.fromarray(real), Image.fromarray(real).resize((96, 72), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    cases = {
        "q95_444.jpg": (big, {"quality": 95, "subsampling": 0}, True),
        "q50_422.jpg": (big, {"quality": 50, "subsampling": 1}, True),
        "q20_420_optimized.jpg": (big, {"quality": 20, "subsampling": 2, "optimize": True}, True),
        "progressive.jpg": (big, {"progressive": True}, True),
        "restarts.jpg": (big, {"restart_marker_blocks": 3}, True),
        "gray.jpg": (big.convert("L"), {}, True),
        "gray_progressive.jpg": (im.convert("L"), {"progressive": True}, True),
        "icc_comment.jpg": (big, {"icc_profile": b"\0" * 128, "comment": b"hello"}, True),
        "wide_45x32.jpg": (im.resize((45, 32)), {}, True),
        "tall_17x127.jpg": (im.resize((17, 127)), {}, True),
        "one_pixel.jpg": (im.resize((1, 1)), {}, True),
        "jpeg_named.png": (big, {}, True),
        "just_below_draft_127x200.jpg": (im.resize((127, 200)), {}, True),
        "draft_192x192.jpg": (im.resize((192, 192)), {}, False),  # >= 4 x size: PIL decodes at reduced size
        "exif_rotated.jpg": (big, {"exif": exif}, False),
        "exif_upright.jpg": (big, {"exif": Image.Exif()}, False),
        "xmp.jpg": (big, {"xmp": b'<x:xmpmeta><tiff:Orientation>3</tiff:Orientation></x:xmpmeta>'}, False),
        "cmyk.jpg": (big.convert("CMYK"), {}, False),
        "rgb_not_ycbcr.jpg": (big, {"keep_rgb": True}, False),  # Adobe APP14
    }
    for name, (pic, kwargs, _) in cases.items():
        pic.save(folder / name, "JPEG", **kwargs)
    data = (folder / "q95_444.jpg").read_bytes()
    (folder / "trailing_bytes.jpg").write_bytes(data + b"\0" * 10)  # PIL ignores them; fast path leaves it to PIL
    mid = len(data) * 2 // 3
    (folder / "corrupt_scan.jpg").write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 40])
                                              + data[mid + 40:])  # libjpeg warns, both decode the same garbage
    (folder / "truncated.jpg").write_bytes(data[:mid])
    at = data.index(b"\xff\xc0") + 5  # SOF0 height, width
    (folder / "bomb.jpg").write_bytes(data[:at] + (30_000).to_bytes(2, "big") * 2 + data[at + 4:])

    def with_segment(marker: int, body: bytes) -> bytes:  # a segment right after SOI
        return data[:2] + bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body + data[2:]

    (folder / "short_icc.jpg").write_bytes(with_segment(0xE2, b"ICC_PROFILE\0\x01"))  # PIL refuses the file
    (folder / "broken_8bim.jpg").write_bytes(with_segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04"))
    return {**{n: fast for n, (_, _, fast) in cases.items()}, "trailing_bytes.jpg": False, "corrupt_scan.jpg": True,
            "truncated.jpg": False, "bomb.jpg": False, "short_icc.jpg": False, "broken_8bim.jpg": False}


def test_odd_jpegs_match_pil_and_only_plain_ones_go_fast(real, tmp_path, fast_calls):
    for name, fast in _odd_jpegs(real, tmp_path).items():
        for size in (32, 48):
            fast_calls.update(fast=0)
            _same_as_pil([str(tmp_path / name)], size)
            assert fast_calls["fast"] == fast, (name, size)
    assert load_rgb(str(tmp_path / "truncated.jpg"), 32)[1].startswith("cannot decode image (OSError: image file is")
    assert load_rgb(str(tmp_path / "bomb.jpg"), 32)[1].startswith("image too large")
    assert load_rgb(str(tmp_path / "exif_rotated.jpg"), 32)[0].shape == (32, 32, 3)
