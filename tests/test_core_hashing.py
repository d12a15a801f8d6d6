"""Exact-duplicate hashes on real images (core, no FiftyOne): identical pixels in another format hash equal; a
lossy re-encode or a one-pixel change does not."""

import io
import shutil

import numpy as np
from PIL import Image

from fo_plugin.core.hashing import array_hash, file_hash, hash_groups, pixel_hash


def test_pixel_hash_sees_through_format_and_metadata(tmp_path):
    from fo_plugin.data import cifar10_files

    src = cifar10_files("train", per_class=1)[0][0]
    px = np.asarray(Image.open(src).convert("RGB"))
    Image.fromarray(px).save(tmp_path / "a.png")
    Image.fromarray(px).save(tmp_path / "b.bmp")
    Image.fromarray(px).save(tmp_path / "c.png", pnginfo=None, compress_level=1)  # other bytes, same pixels
    shutil.copyfile(src, tmp_path / "d.jpg")
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=50)
    (tmp_path / "e.jpg").write_bytes(buf.getvalue())
    changed = px.copy()
    changed[0, 0] ^= 1
    Image.fromarray(changed).save(tmp_path / "f.png")
    names = ["a.png", "b.bmp", "c.png", "d.jpg", "e.jpg", "f.png"]
    ph = [pixel_hash(str(tmp_path / n)) for n in names]
    assert len({ph[0], ph[1], ph[2], ph[3]}) == 1  # the JPEG original decodes to the pixels the PNGs hold
    assert ph[4] != ph[0] and ph[5] != ph[0]
    fh = [file_hash(str(tmp_path / n)) for n in names]
    assert len(set(fh)) == 6  # byte hashes see six different files
    assert hash_groups(ph).tolist() == [0, 0, 0, 0, -1, -1]
    (tmp_path / "g.png").write_bytes(b"not an image")
    assert pixel_hash(str(tmp_path / "g.png")) is None


def test_array_hash_depends_on_content_and_shape():
    x = np.arange(12, dtype=np.uint8)
    assert array_hash(x) == array_hash(x.copy())
    assert array_hash(x) != array_hash(x.reshape(3, 4))
    y = x.copy()
    y[5] += 1
    assert array_hash(x) != array_hash(y)


def test_pixel_hash_keeps_16_bit_and_alpha_apart(tmp_path):
    """Two 16-bit frames that differ by an offset would clip to the same 8-bit RGB; their hashes must differ."""
    a = np.full((8, 8), 1000, np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a + 4000).save(tmp_path / "b.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "c.png")
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "d.png")
    h = [pixel_hash(str(tmp_path / n)) for n in ("a.png", "b.png", "c.png", "d.png")]
    assert len(set(h)) == 4
