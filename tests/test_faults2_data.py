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


HEADER = "\t".join(sts_b.COLUMNS) + "\n"


def tsv_row(i, score, s1="a man", s2="a dog"):
    return f"{i}\tmain-news\tnews\t2012\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score}\n"


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    csv_path = tmp_path / "agedb.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfage,path,split\n30,a.jpg,train\n")
    assert images.read_age_csv(csv_path, images.AGEDB.num_bins)["train"] == [("a.jpg", 30)]
    tsv = tmp_path / "train_new.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + (HEADER + tsv_row(0, "1.5")).encode())
    assert [p.score for p in sts_b.read_pairs(tsv)] == [1.5]


def test_a_field_over_the_csv_size_limit_names_its_line(tmp_path):
    csv_path = tmp_path / "agedb.csv"
    csv_path.write_text("age,path,split\n30,a.jpg,train\n31,\"" + "x" * 200_000 + "\",val\n")
    with pytest.raises(DataError, match=r"agedb\.csv:3: field larger than field limit"):
        images.read_age_csv(csv_path, images.AGEDB.num_bins)


def test_an_unterminated_quote_is_reported_at_its_own_line(tmp_path):
    csv_path = tmp_path / "agedb.csv"
    rows = [f"{20 + i},a{i}.jpg,train" for i in range(4)] + ['30,"b.jpg,val'] + [f"{20 + i},c{i}.jpg,test" for i in range(60)]
    csv_path.write_text("age,path,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"agedb\.csv:6: a quoted field opens on this line and is not closed before "
                                        r"line 66 \(an unterminated quote\)"):
        images.read_age_csv(csv_path, images.AGEDB.num_bins)


@pytest.mark.parametrize("inside", ["\u2028", "\u0085", "\x0c", "\r", "\u2029", "\x1c"])
def test_unusual_line_breaks_inside_a_sentence_do_not_split_its_row(tmp_path, inside):
    tsv = tmp_path / "train_new.tsv"
    tsv.write_text(HEADER + tsv_row(0, "1.0", s1=f"a man{inside}runs") + tsv_row(1, "2.0"), newline="")
    pairs = sts_b.read_pairs(tsv)
    assert [p.score for p in pairs] == [1.0, 2.0] and pairs[0].sentence1 == f"a man{inside}runs"


def test_windows_line_ends_still_read(tmp_path):
    tsv = tmp_path / "train_new.tsv"
    tsv.write_bytes((HEADER + tsv_row(0, "1.0") + tsv_row(1, "2.0")).replace("\n", "\r\n").encode())
    assert [(p.sentence2, p.score) for p in sts_b.read_pairs(tsv)] == [("a dog", 1.0), ("a dog", 2.0)]
