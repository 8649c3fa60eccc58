"""Faults in the data files (issue 11, "Data"): bad labels, files that are not UTF-8, empty
splits, missing images anywhere in the CSV, GloVe files of uneven width or non-finite values;
each refused naming the file and line (or the split), before any training."""

import pytest
from helpers import load_driver
from test_drivers import text_args, text_data  # noqa: F401 (fixture)

from srl_ext.training import cli
from srl_ext.training.data import MissingDataError, images, sts_b
from srl_ext.training.errors import DataError

HEADER = "\t".join(sts_b.COLUMNS) + "\n"


def tsv_row(i, score, s1="a man", s2="a dog"):
    return f"{i}\tmain-news\tnews\t2012\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score}\n"


@pytest.mark.parametrize("age, message", [
    ("nan", "age 'nan' is not a finite number"),
    ("inf", "age 'inf' is not a finite number"),
    ("-inf", "age '-inf' is not a finite number"),
    ("-1", r"age '-1' is not an integer in \[0, 101\]"),
    ("", "age '' is not a number"),
])
def test_bad_ages_name_file_and_line(tmp_path, age, message):
    path = tmp_path / "agedb.csv"
    path.write_text(f"age,path,split\n30,a.jpg,train\n{age},b.jpg,val\n")
    with pytest.raises(DataError, match=r"agedb\.csv:3: " + message):
        images.read_age_csv(path, images.AGEDB.num_bins)


@pytest.mark.parametrize("score, message", [
    ("nan", "score 'nan' is not a finite number"),
    ("inf", "score 'inf' is not a finite number"),
    ("-0.5", r"score -0.5 is outside \[0, 5.0\]"),
])
def test_bad_scores_name_file_and_line(tmp_path, score, message):
    path = tmp_path / "dev_new.tsv"
    path.write_text(HEADER + tsv_row(0, "1.0") + tsv_row(1, score))
    with pytest.raises(DataError, match=r"dev_new\.tsv:3: " + message):
        sts_b.read_pairs(path)


def test_files_that_are_not_utf8_name_the_line(tmp_path):
    csv_path = tmp_path / "agedb.csv"
    csv_path.write_bytes(b"age,path,split\n30,a.jpg,train\n31,caf\xe9.jpg,val\n")
    with pytest.raises(DataError, match=r"agedb\.csv:3: expected UTF-8 text, got the byte 0xe9 at column 7"):
        images.read_age_csv(csv_path, images.AGEDB.num_bins)
    tsv = tmp_path / "train_new.tsv"
    tsv.write_bytes((HEADER + tsv_row(0, "1.0")).encode() + tsv_row(1, "2.0", s1="na\xefve").encode("latin-1"))
    with pytest.raises(DataError, match=r"train_new\.tsv:3: expected UTF-8 text"):
        sts_b.read_pairs(tsv)


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_an_empty_image_split_is_named(tmp_path, empty):
    rows = [f"{20 + i},AgeDB/{i}.jpg,{split}" for i, split in enumerate(("train", "val", "test")) if split != empty]
    (tmp_path / "agedb.csv").write_text("age,path,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"agedb.csv: the {empty} split is empty"):
        images.load_benchmark(images.AGEDB, tmp_path)


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_a_header_only_sts_b_file_is_refused_by_the_driver(text_data, tmp_path, capsys, empty):  # noqa: F811
    import shutil

    root, glove = text_data
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / sts_b.SPLIT_FILES[empty]).write_text(HEADER)
    capsys.readouterr()
    status = cli.command(load_driver("sts_b").main, text_args((data, glove), tmp_path / "runs"))
    err = capsys.readouterr().err
    assert status == 2 and f"error: {data / sts_b.SPLIT_FILES[empty]}: the {empty} split is empty" in err
    assert not (tmp_path / "runs").exists()


def test_every_image_of_every_split_is_checked_before_training(tmp_path):
    from PIL import Image

    (tmp_path / "AgeDB").mkdir()
    lines = ["age,path,split"]
    for i in range(30):
        split = "train" if i < 10 else "val" if i < 20 else "test"
        name = f"AgeDB/{i}.jpg"
        if i not in (12, 25, 26, 27, 28, 29, 21):  # one val image and six test images missing
            Image.new("RGB", (4, 4)).save(tmp_path / name)
        lines.append(f"30,{name},{split}")
    (tmp_path / "agedb.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MissingDataError) as error:
        images.load_benchmark(images.AGEDB, tmp_path)
    text = str(error.value)
    assert "7 of the 30 images of agedb.csv are missing" in text
    assert f"{tmp_path / 'AgeDB/12.jpg'} (row 3 of the val split)" in text
    assert f"{tmp_path / 'AgeDB/21.jpg'} (row 2 of the test split)" in text and "and 2 more" in text
    assert "\n" not in text


@pytest.mark.parametrize("content, message", [
    ("the 0.1 0.2\n" + "".join(f"w{i} 1 2 3 4\n" for i in range(5)), r"glove\.txt:1: expected 4 values after the word"),
    ("".join(f"w{i} 1 2 3 4\n" for i in range(5)) + "x 1 2 3\n", r"glove\.txt:6: expected 4 values after the word, got 3"),
    ("".join(f"w{i} 1 2 3 4\n" for i in range(5)) + "x 1 2 3 4 5\n", r"glove\.txt:6: expected 4 values after the word, got 5"),
    ("w0 1 2 3 4\nw1 1 nan 3 4\n", r"glove\.txt:2: the vector of 'w1' has a non-finite value"),
    ("w0 1 2 3 4\nw1 1 2 inf 4\n", r"glove\.txt:2: the vector of 'w1' has a non-finite value"),
])
def test_glove_width_and_values_are_checked_per_line(tmp_path, content, message):
    glove = tmp_path / "glove.txt"
    glove.write_text(content)
    with pytest.raises(DataError, match=message):
        sts_b.read_glove_text(glove)


def test_glove_words_with_spaces_still_read(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2 3\nb 4 5 6\n. . . 7 8 9\n")
    vectors = sts_b.read_glove_text(glove)
    assert vectors[". . ."].tolist() == [7.0, 8.0, 9.0] and len(vectors) == 3
