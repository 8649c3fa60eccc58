"""Faults in the data, round two (issue 23): image modes other than 8-bit RGB, images that exist
but cannot be read (checked before training, remembered by size and time), and CSV/TSV files
with a byte-order mark, huge fields, unterminated quotes or line breaks inside a sentence."""

import os

import numpy as np
import pytest
import torch

from srl_ext.training.data import images, sts_b
from srl_ext.training.errors import DataError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def rgb_tensor(path):
    return torch.from_numpy(np.array(images.open_rgb(path))).long()


def test_16_bit_grey_images_are_scaled_not_saturated(tmp_path):
    levels = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in steps of 257
    Image.fromarray(levels).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as image:
        assert image.mode.startswith("I")  # PIL reads it as 16-bit (I;16) or 32-bit integer grey
    rgb = rgb_tensor(tmp_path / "wide.png")
    expected = torch.arange(256).reshape(16, 16)  # v * 255 / 65535 = the 8-bit level
    for channel in range(3):
        assert torch.equal(rgb[..., channel], expected)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "CMYK", "1", "I;16"])
def test_every_mode_gives_the_rgb_of_its_pixels(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        source, expected = Image.fromarray(grey), np.asarray(rgb.convert("L").convert("RGB"))
    else:
        source = rgb.convert(mode)
        expected = np.asarray(source.convert("RGB"))
    name = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    source.save(name)
    got = np.asarray(images.open_rgb(name))
    assert got.dtype == np.uint8 and got.shape == (8, 8, 3)
    assert np.array_equal(got, expected)
    assert got.max() < 255 or expected.max() == 255  # never the saturated white of a 16-bit image


def test_float_pixels_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((4, 4), 3.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"cannot read image .*float\.tif: 32-bit floating-point pixels"):
        images.open_rgb(tmp_path / "float.tif")
    assert "floating-point" in images.image_problem(tmp_path / "float.tif")


def write_layout(root, count=12):
    (root / "AgeDB").mkdir(parents=True)
    lines = ["age,path,split"]
    for i in range(count):
        split = ("train", "val", "test")[i % 3]
        Image.new("RGB", (32, 32), (i * 10, 0, 0)).save(root / f"AgeDB/{i}.jpg", quality=95)
        lines.append(f"{20 + i},AgeDB/{i}.jpg,{split}")
    (root / "agedb.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("damage, words", [
    ("empty", "cannot identify image file"),
    ("truncated", "truncated"),
    ("bomb", "too many pixels"),
    ("float", "floating-point"),
])
def test_unreadable_images_are_found_before_training(tmp_path, monkeypatch, damage, words):
    root = write_layout(tmp_path / "data")
    target = root / "AgeDB/5.jpg"  # row 2 of the test split
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(target)
        target.write_bytes(target.read_bytes()[:900])
    elif damage == "bomb":
        Image.new("RGB", (100, 100)).save(target)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # the others are 32 x 32
    else:
        Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(target, format="TIFF")
    with pytest.raises(DataError) as error:
        images.load_benchmark(images.AGEDB, root)
    text = str(error.value)
    assert "cannot be read" in text and f"{target} (row 2 of the test split)" in text and words in text, text
    assert "\n" not in text


def test_checked_images_are_remembered_by_size_and_time(tmp_path, monkeypatch):
    root = write_layout(tmp_path / "data")
    opened = []
    original = images.image_problem
    monkeypatch.setattr(images, "image_problem", lambda path: opened.append(path.name) or original(path))
    images.load_benchmark(images.AGEDB, root)
    assert sorted(opened) == sorted(f"{i}.jpg" for i in range(12))
    assert images.checked_images_cache(root).is_file()
    opened.clear()
    images.load_benchmark(images.AGEDB, root)  # a second run, or a resume: nothing read again
    assert opened == []
    target = root / "AgeDB/4.jpg"
    target.write_bytes(b"")  # changed since: read again, and refused
    with pytest.raises(DataError, match="4.jpg"):
        images.load_benchmark(images.AGEDB, root)
    assert opened == ["4.jpg"]
    Image.new("RGB", (8, 8)).save(target)
    os.utime(target, ns=(1, 1))
    opened.clear()
    images.load_benchmark(images.AGEDB, root)
    assert opened == ["4.jpg"]
