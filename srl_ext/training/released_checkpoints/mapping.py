"""Mapping a released SRL checkpoint onto this project's models, and the settings of its evaluation.

``build_released_model`` fills ``ImageRegressor`` / ``SentencePairRegressor`` from a
``ReleasedLayout`` (``reading.inspect_released``) and refuses, naming them, tensors it cannot place
and parameters it cannot fill; ``load_released`` reads and maps a file in one call;
``released_run_settings`` and ``released_model_for`` are what the drivers' ``--evaluate`` of such a
file (``srl_ext.training.run.evaluate_released``) needs. docs/training.md, "The authors' released
checkpoints", has the key mapping and what is exact.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..benchmarks import BENCHMARKS, Benchmark
from ..models import ImageRegressor, SentencePairRegressor
from .. import ddp
from .reading import (EMBEDDING, STS_B_EMBEDDING, STS_B_LSTM, ReleasedCheckpointError, ReleasedLayout, inspect_released,
                      listed, read_checkpoint)

RELEASED_IMAGE_SIZE = 224  # the released ResNet ends in AvgPool2d(7): global only on 7 x 7 maps
RELEASED_PADDING, RELEASED_UNKNOWN = "@@PADDING@@", "@@UNKNOWN@@"  # allennlp's ids 0 and 1
RELEASED_DROPOUT = 0.2  # the released encoder's one dropout rate (word vectors and LSTM outputs)


# ----- the STS-B vocabulary -----

def read_released_vocabulary(path: str | Path) -> list[str]:
    """The released vocabulary's tokens in row order, from a text file of one token per line:
    either every row (``@@PADDING@@`` and ``@@UNKNOWN@@`` first) or allennlp's ``tokens.txt``
    (``Vocabulary.save_to_files``: the padding token left out, newlines in tokens written as
    ``@@NEWLINE@@``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--released_vocab: no vocabulary file at {str(path)!r}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.removesuffix("\r").replace("@@NEWLINE@@", "\n") for line in lines]
    if tokens[:1] == [RELEASED_UNKNOWN]:
        tokens.insert(0, RELEASED_PADDING)
    return tokens


def map_vocabulary(words: Sequence[str], released: Sequence[str]) -> tuple[torch.Tensor, dict]:
    """For each of our words (id 0 padding, id 1 unknown) the row of the released embedding
    matrix it takes, and how each was found: ``exact`` (the same token), ``case`` (only another
    casing: the released tokenizer keeps the case, ours lowercases; the most frequent casing,
    which comes first in the released order), ``unknown`` (the released ``@@UNKNOWN@@`` row, as the
    released code gives every token outside its vocabulary)."""
    index = {token: row for row, token in enumerate(released)}
    folded: dict[str, int] = {}
    for row, token in enumerate(released):
        if token not in (RELEASED_PADDING, RELEASED_UNKNOWN):
            folded.setdefault(token.lower(), row)
    unknown_row = index[RELEASED_UNKNOWN]
    rows = [index[RELEASED_PADDING], unknown_row]
    found: dict[str, list[str]] = {"exact": [], "case": [], "unknown": []}
    for word in words[2:]:
        if word in index:
            rows.append(index[word])
            found["exact"].append(word)
        elif word.lower() in folded:
            rows.append(folded[word.lower()])
            found["case"].append(word)
        else:
            rows.append(unknown_row)
            found["unknown"].append(word)
    return torch.tensor(rows, dtype=torch.int64), found


def _released_tokens(released_vocabulary, layout: ReleasedLayout) -> list[str]:
    rows = layout.settings["released_vocabulary_size"]
    if released_vocabulary is None:
        raise ReleasedCheckpointError(
            f"{layout.path}: expected the released vocabulary with it (--released_vocab FILE), found none: the rows of "
            f"its {rows}-word embedding matrix follow the vocabulary the released code builds in memory and does not save "
            "(docs/training.md shows how to write it)"
        )
    source = f"{released_vocabulary}" if isinstance(released_vocabulary, (str, Path)) else "the released vocabulary"
    if isinstance(released_vocabulary, (str, Path)):
        tokens = read_released_vocabulary(released_vocabulary)
    else:
        tokens = list(released_vocabulary)
    if len(tokens) != rows or tokens[:2] != [RELEASED_PADDING, RELEASED_UNKNOWN] or len(set(tokens)) != len(tokens):
        duplicates = len(tokens) - len(set(tokens))
        raise ReleasedCheckpointError(
            f"{source}: expected the vocabulary of {layout.path.name}: {rows} distinct tokens (one per row of its "
            f"embedding matrix), {RELEASED_PADDING} and {RELEASED_UNKNOWN} first; found {len(tokens)} tokens starting "
            f"{tokens[:2]}" + (f", {duplicates} of them repeated" if duplicates else "")
        )
    return tokens


# ----- our model from a released file -----

@dataclass
class ReleasedModel:
    """``model``: this project's model holding the released weights, in eval mode; ``notes``: what
    was left out or approximated, one line each."""

    model: nn.Module
    layout: ReleasedLayout
    notes: list[str]
    vocabulary: dict | None = None  # STS-B: counts of the words found exactly, by case, unknown


def build_released_model(
    layout: ReleasedLayout,
    *,
    vocabulary=None,
    released_vocabulary: str | Path | Sequence[str] | None = None,
    reference_embeddings: torch.Tensor | None = None,
) -> ReleasedModel:
    """This project's model with the weights of ``layout``, every parameter and buffer filled.

    Images: ``ImageRegressor`` with the ResNet of the file (``resnet50``, or ``resnet18`` for a
    BasicBlock file). STS-B: ``SentencePairRegressor`` with the released recipe (``regressor=
    "linear"``, dropout 0.2 on the word vectors and on the BiLSTM outputs), the file's hidden size
    and layers, and an embedding matrix of our ``vocabulary`` (a ``srl_ext.training.data.sts_b.Vocabulary``
    or its words, id 0 padding and 1 unknown) whose rows are taken from the file by
    ``released_vocabulary`` (see ``map_vocabulary``). ``reference_embeddings`` (our GloVe matrix
    for the same vocabulary) only adds a note: how many words found by name carry the same vector.

    Raises ``ReleasedCheckpointError`` listing the file's tensors without a place and the model's
    entries without a value (or with another shape); nothing is loaded then."""
    tensors = dict(layout.tensors)
    notes: list[str] = []
    matched = None
    if _is_image(layout):
        settings = layout.settings
        feature_dim = {"feature_dim": settings["feature_dim"]} if "feature_dim" in settings else {}
        model = ImageRegressor(settings["backbone"], **feature_dim)
    else:
        model, matched = _sentence_model(layout, tensors, notes, vocabulary, released_vocabulary, reference_embeddings)
    _fill(model, layout, tensors, notes)
    if layout.ignored:
        notes.insert(0, f"training state, not part of the model, left out: {listed(layout.ignored)}")
    return ReleasedModel(model, layout, notes, matched)


def _is_image(layout: ReleasedLayout) -> bool:
    return BENCHMARKS[layout.benchmark].family == "image"


def _sentence_model(layout: ReleasedLayout, tensors: dict, notes: list[str], vocabulary, released_vocabulary,
                    reference_embeddings) -> tuple[nn.Module, dict]:
    """The STS-B model of the released recipe, its word vectors the file's rows for our words
    (``tensors``' embedding replaced by them); returns it and the counts of words found exactly,
    by case and not at all."""
    settings = layout.settings
    if EMBEDDING not in tensors or "hidden_size" not in settings:
        needed = (STS_B_EMBEDDING, STS_B_LSTM + "weight_hh_l0")
        missing = [name for name in needed if name not in layout.sources.values()]
        raise ReleasedCheckpointError(
            f"{layout.path}: expected the released word vectors and BiLSTM, found no {', '.join(missing)}",
            unfilled=missing,
        )
    if vocabulary is None:
        raise ValueError("the STS-B conversion needs our vocabulary (vocabulary=...: the words of the embedding rows)")
    words = list(vocabulary.words if hasattr(vocabulary, "words") else vocabulary)
    tokens = _released_tokens(released_vocabulary, layout)
    rows, found = map_vocabulary(words, tokens)
    released_matrix = tensors[EMBEDDING]
    if released_matrix[0].abs().sum() != 0:
        notes.append("the released padding row is not zero (unexpected for the released code)")
    embeddings = released_matrix.index_select(0, rows)
    tensors[EMBEDDING] = embeddings
    model = SentencePairRegressor(
        embeddings.clone(), hidden_size=settings["hidden_size"], num_layers=settings.get("num_layers", 1),
        embedding_dropout=RELEASED_DROPOUT, lstm_dropout=RELEASED_DROPOUT, regressor="linear",
        **({"feature_dim": settings["feature_dim"]} if "feature_dim" in settings else {}),
    )
    matched = {key: len(value) for key, value in found.items()}
    notes.append(
        f"vocabulary: {len(words) - 2} words of ours; {matched['exact']} found in the released vocabulary "
        f"({len(tokens) - 2} tokens) as they are, {matched['case']} only in another casing"
        + (f" (e.g. {', '.join(found['case'][:5])})" if found["case"] else "")
        + f", {matched['unknown']} not at all: they take the released {RELEASED_UNKNOWN} vector"
        + (f" (e.g. {', '.join(found['unknown'][:5])})" if found["unknown"] else "")
    )
    notes.append(
        "tokens: this project's tokenizer (lowercased) stands in for the released NLTK word_tokenize (cased); the "
        "network is the released one exactly, the test table can differ from the released code's where they split "
        "or case a sentence differently"
    )
    if reference_embeddings is not None:
        note = _vocabulary_check(reference_embeddings, embeddings, words, set(found["exact"]))
        if note is not None:
            notes.append(note)
    return model, matched


def _vocabulary_check(reference_embeddings: torch.Tensor, embeddings: torch.Tensor, words: list[str],
                      by_name: set[str]) -> str | None:
    """The note on how many words found by name carry the vector --glove gives them."""
    if tuple(reference_embeddings.shape) != tuple(embeddings.shape):
        return (f"vocabulary file not checked: our word vectors are {reference_embeddings.shape[1]}-d, the released "
                f"{embeddings.shape[1]}-d (--glove with the released vectors, glove.840B.300d.txt, checks it)")
    exact = torch.tensor([i + 2 for i, word in enumerate(words[2:]) if word in by_name], dtype=torch.int64)
    if not len(exact):
        return None
    same = torch.isclose(reference_embeddings[exact], embeddings[exact], rtol=0, atol=1e-6).all(dim=1)
    return (f"vocabulary check: {int(same.sum())} of the {len(exact)} words found as they are carry the vector "
            "that --glove gives them (an aligned vocabulary gives all those with a GloVe vector; a shifted one "
            "almost none)")


def _fill(model: nn.Module, layout: ReleasedLayout, tensors: dict, notes: list[str]) -> None:
    """Load ``tensors`` into ``model`` (eval mode), or refuse, listing every tensor without a
    place, every entry of the model without a value and every shape that differs."""
    ours = model.state_dict()
    unplaced = list(layout.unplaced) + [layout.sources[name] for name in tensors if name not in ours]
    unfilled, counters = [], []
    for name in ours:
        if name not in tensors:
            (counters if name.endswith("num_batches_tracked") else unfilled).append(name)
    reshaped = [
        f"{layout.sources[name]} {tuple(tensors[name].shape)} -> {name} {tuple(ours[name].shape)}"
        for name in tensors if name in ours and tensors[name].shape != ours[name].shape
    ]
    if unplaced or unfilled or reshaped:
        parts = []
        if unplaced:
            parts.append(f"{len(unplaced)} tensor(s) of the file have no place in our model: {listed(unplaced)}")
        if unfilled:
            parts.append(f"{len(unfilled)} of our model's entries are not in the file: {listed(unfilled)}")
        if reshaped:
            parts.append(f"{len(reshaped)} shape(s) differ: {listed(reshaped)}")
        raise ReleasedCheckpointError(
            f"{layout.path}: expected {layout.description} to fill our {_model_name(layout)} exactly, found "
            + "; ".join(parts) + "; refused (a partly loaded model would give wrong numbers)",
            unplaced=unplaced, unfilled=unfilled + reshaped,
        )
    for name in counters:  # BatchNorm step counters of files from PyTorch < 0.4.1: unused in evaluation
        tensors[name] = torch.zeros_like(ours[name])
    if counters:
        notes.append(
            f"{len(counters)} BatchNorm step counters are not in the file (PyTorch < 0.4.1): set to 0, unused in evaluation"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()


def _model_name(layout: ReleasedLayout) -> str:
    if _is_image(layout):
        return f"ImageRegressor({layout.settings.get('backbone')!r})"
    return "SentencePairRegressor(regressor='linear')"


def load_released(
    path: str | Path,
    benchmark: str,
    *,
    vocabulary=None,
    released_vocabulary: str | Path | Sequence[str] | None = None,
    trust_checkpoint: bool = False,
) -> ReleasedModel:
    """A released SRL checkpoint of ``benchmark`` ("agedb", "imdb_wiki" or "sts_b") as this
    project's model (``.model``, eval mode, CPU) with notes on what was left out.

    >>> released = load_released("ckpt.best.pth.tar", "agedb")
    >>> predictions, features = released.model(images)  # images: B x 3 x 224 x 224, in [-1, 1]

    STS-B also needs our ``vocabulary`` and the ``released_vocabulary`` (a file, see
    ``read_released_vocabulary``, or the token list): ``build_released_model``."""
    obj = read_checkpoint(path, trust_checkpoint)
    layout = inspect_released(obj, path, benchmark)
    return build_released_model(layout, vocabulary=vocabulary, released_vocabulary=released_vocabulary)


# ----- the settings of an --evaluate of a released file -----

def released_run_settings(config: dict, explicit: set[str], benchmark: Benchmark, path: Path,
                          obj) -> tuple[ReleasedLayout, dict]:
    """(the file's layout, the run's config with what the released model fixes): the ResNet of
    the file at 224 x 224, or the released STS-B recipe and the file's BiLSTM size. A flag given
    otherwise is overridden, with a note."""
    layout = inspect_released(obj, path, benchmark.name)
    overrides: dict = {}
    if benchmark.family == "image":
        if config["img_size"] != RELEASED_IMAGE_SIZE:
            raise ReleasedCheckpointError(
                f"{path}: expected --img_size {RELEASED_IMAGE_SIZE} for a released ResNet (it ends in AvgPool2d(7), "
                f"trained and tested at {RELEASED_IMAGE_SIZE} x {RELEASED_IMAGE_SIZE}), found --img_size {config['img_size']}"
            )
        overrides["backbone"] = layout.settings["backbone"]
    else:
        # The released recipe; the word vectors come from the file, so every word of the data
        # stays in our vocabulary (--oov random) to be looked up in the released one.
        overrides.update(regressor="linear", embedding_dropout=RELEASED_DROPOUT, lstm_dropout=RELEASED_DROPOUT, oov="random")
        overrides.update({key: layout.settings[key] for key in ("hidden_size", "num_layers") if key in layout.settings})
    changed = sorted(key for key in overrides if key in explicit and config[key] != overrides[key])
    if changed and ddp.is_main_process():
        print("note: the released checkpoint sets " + ", ".join(f"--{key} {overrides[key]}" for key in changed)
              + " (given: " + ", ".join(f"--{key} {config[key]}" for key in changed) + ")", file=sys.stderr)
    return layout, {**config, **overrides}


def released_model_for(layout: ReleasedLayout, settings: dict, built: nn.Module) -> ReleasedModel:
    """Our model with the file's weights, for the data that ``built`` (the model the run's
    benchmark builds from ``settings``) was built for: on STS-B its vocabulary and GloVe vectors."""
    text = not _is_image(layout)
    return build_released_model(
        layout, vocabulary=getattr(built, "vocabulary", None), released_vocabulary=settings.get("released_vocab"),
        reference_embeddings=built.encoder.embedding.weight.detach() if text else None,
    )
