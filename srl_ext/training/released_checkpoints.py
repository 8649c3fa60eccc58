"""The SRL authors' released checkpoints, mapped onto this project's models for evaluation.

The SRL code (github.com/yilei-wu/imbalanced-regression) writes two kinds of files:

- AgeDB-DIR and IMDB-WIKI-DIR (``agedb-dir/train.py``, ``imdb-wiki-dir/train.py``):
  ``ckpt.pth.tar`` / ``ckpt.best.pth.tar``, a dict ``{"epoch", "model": "resnet50", "best_loss",
  "state_dict", "optimizer"}``. ``state_dict`` is that of a ``DataParallel``-wrapped ResNet of the
  repository's own ``resnet.py`` (every name starts with ``module.``): ``conv1``, ``bn1``,
  ``layer1`` .. ``layer4`` (Bottleneck blocks, stride on the 3x3 conv, as torchvision's),
  ``linear`` (2048 -> 1, the regressor), ``projector`` (2048 -> 128) and, when trained with FDS
  (every SRL run: its surrogates are FDS's ``running_mean_last_epoch``), eight ``FDS.*``
  buffers of one row per age bin (AgeDB-DIR 102, IMDB-WIKI-DIR 187).
- STS-B-DIR (``sts-b-dir/trainer.py``): ``model_state.th`` / ``model_state_best.th``, the plain
  ``state_dict()`` of ``MultiTaskModel`` (PyTorch 0.4, no ``module.`` prefix):
  ``pair_encoder._text_field_embedder.token_embedder_words.weight`` (the V x 300 word vectors,
  rows in the order of the released vocabulary), ``pair_encoder._phrase_layer._module.*``
  (the 2-layer bidirectional ``nn.LSTM``), ``projector.0`` / ``projector.2``
  (Linear(12000, 128), ReLU, Linear(128, 128)), ``sts-b_pred_layer`` (Linear(12000, 1)) and
  ``FDS.*``. The trainer's ``training_state``, ``task_state`` and ``metric_state`` files hold no
  weights.

``load_released(path, benchmark)`` reads such a file without running pickled code, maps every
tensor onto ``ImageRegressor`` / ``SentencePairRegressor`` and refuses, naming them, tensors it
cannot place and parameters it cannot fill. ``evaluate_released`` is the drivers' ``--evaluate``
of such a file. docs/training.md, "The authors' released checkpoints", has the key mapping and
what is exact.

(This module will move to ``srl_ext.training.checkpoints`` with the package restructure.)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

BENCHMARKS = {"agedb": "AgeDB-DIR", "imdb_wiki": "IMDB-WIKI-DIR", "sts_b": "STS-B-DIR"}
IMAGE_BENCHMARKS = ("agedb", "imdb_wiki")
DRIVERS = {"agedb": "train/agedb.py", "imdb_wiki": "train/imdb_wiki.py", "sts_b": "train/sts_b.py"}
# Rows of the FDS buffers (bucket_num - bucket_start) in the released configurations: one per age
# of the benchmark (AgeDB-DIR also with bucket_start 3), one per score bin of STS-B-DIR.
FDS_ROWS = {"agedb": (102, 99), "imdb_wiki": (187,), "sts_b": (50,)}
RELEASED_IMAGE_SIZE = 224  # the released ResNet ends in AvgPool2d(7): global only on 7 x 7 maps
RELEASED_PADDING, RELEASED_UNKNOWN = "@@PADDING@@", "@@UNKNOWN@@"  # allennlp's ids 0 and 1
RELEASED_DROPOUT = 0.2  # the released encoder's one dropout rate (word vectors and LSTM outputs)

_STS_B_EMBEDDING = "pair_encoder._text_field_embedder.token_embedder_words.weight"
_STS_B_LSTM = "pair_encoder._phrase_layer._module."
_PRED_LAYER = re.compile(r"(?P<task>.+)_pred_layer\.(?P<param>weight|bias)")
_IMAGE_BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_EMBEDDING = "encoder.embedding.weight"
_LISTED = 12  # names shown per list in an error message (all of them are on the exception)


class ReleasedCheckpointError(ValueError):
    """A file that cannot be evaluated as the released checkpoint asked for; the message is one
    line naming the file, what was expected and what was found. ``unplaced`` (tensors of the
    file without a place in the model) and ``unfilled`` (parameters and buffers of the model the
    file does not fill) are complete lists."""

    def __init__(self, message: str, unplaced: Sequence[str] = (), unfilled: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unplaced = list(unplaced)
        self.unfilled = list(unfilled)


class UntrustedCheckpointError(ReleasedCheckpointError):
    """The file pickles Python objects besides tensors and plain data: loading it would run code
    the file names, which is done only with ``trust_checkpoint=True`` (``--trust_checkpoint``)."""


# ----- reading a file without running its pickled code -----

def _numpy_data_globals() -> list:
    """numpy's array, scalar and dtype reconstructors: data, allowed besides torch's own
    (``last.pt`` of this project holds numpy RNG states)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed: list = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # files written under numpy 1 name numpy.core.multiarray, under numpy 2 numpy._core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    allowed += sorted({type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"} - {np.dtype}, key=str)
    return allowed


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False):
    """The object ``torch.save`` wrote to ``path``, on the CPU.

    Loaded with ``weights_only=True`` (tensors, containers, numbers, strings, numpy arrays):
    nothing of the file runs. A file that pickles other objects (an argparse namespace, a model
    class) raises ``UntrustedCheckpointError`` naming them, unless ``trust_checkpoint``: then it
    is unpickled fully, which runs whatever code the file names. Legacy (PyTorch < 1.6) files load
    too. A file ``torch.load`` cannot read raises ``ReleasedCheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if not _is_torch_file(path):
        raise ReleasedCheckpointError(
            f"{path}: expected a PyTorch checkpoint (torch.save), found a file torch.load cannot read "
            "(neither a torch zip archive nor a legacy torch pickle)"
        )
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Weights only load failed" not in text and "WeightsUnpickler" not in text:
            raise ReleasedCheckpointError(
                f"{path}: expected a PyTorch checkpoint (torch.save), found a file torch.load cannot read ({_first_line(text)})"
            ) from None
        reason = _unsafe_content(path, text)
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{path}: expected tensors and plain data, found pickled Python objects ({reason}); loading them runs code "
                "that the file names, so it was not loaded. Pass --trust_checkpoint (trust_checkpoint=True) to load it "
                "fully, only if you trust where the file came from"
            ) from None
        print(f"note: {path} holds pickled Python objects ({reason}); loading it fully (--trust_checkpoint)", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, AttributeError, ImportError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ReleasedCheckpointError(
            f"{path}: expected a PyTorch checkpoint (torch.save), found a file torch.load cannot read "
            f"({type(error).__name__}: {_first_line(str(error))})"
        ) from None


def _is_torch_file(path: Path) -> bool:
    """A zip archive (torch.save since PyTorch 1.6) or a legacy file: a pickle of torch's magic
    number first."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        head = handle.read(64)
    magic = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:-1]  # the LONG1 opcode and its bytes
    return head[:1] == b"\x80" and magic in head


def _unsafe_content(path: Path, message: str) -> str:
    """The globals that kept ``path`` from a weights-only load, as far as torch tells them."""
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # zip files only
    except Exception:  # legacy format, or an older torch: fall back to the error message
        pass
    allowed = {item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}" for item in _numpy_data_globals()}
    names = [name for name in names if name not in allowed]
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", message)
    return ", ".join(dict.fromkeys(names)) if names else _first_line(message.split("WeightsUnpickler error:")[-1])


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"


def is_srl_ext_checkpoint(obj) -> bool:
    """Whether ``obj`` is a checkpoint of this project's engine (``best.pt``, ``last.pt``)."""
    from .checkpoint import CHECKPOINT_FORMAT

    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT and "model" in obj and "config" in obj


# ----- the layout of a released file -----

@dataclass
class ReleasedLayout:
    """What a released file holds, in this project's names.

    ``tensors``: this project's parameter and buffer names -> tensors (STS-B: the word vectors
    under ``encoder.embedding.weight`` still in the released vocabulary's row order);
    ``sources``: our name -> the file's name; ``settings``: the model settings the shapes imply;
    ``ignored``: the file's entries that are not part of the model (FDS statistics, optimizer
    state, ...); ``unplaced``: the file's tensors that have no place in our model."""

    path: Path
    benchmark: str
    description: str
    tensors: dict[str, torch.Tensor]
    sources: dict[str, str]
    settings: dict
    metadata: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


def inspect_released(obj, path: str | Path, benchmark: str) -> ReleasedLayout:
    """Recognise ``obj`` (read from ``path``) as a released checkpoint of ``benchmark`` and name
    its tensors as this project's model does. A file of another kind or benchmark raises
    ``ReleasedCheckpointError`` with one line saying what was expected and what was found."""
    path = Path(path)
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(map(repr, BENCHMARKS))}, got {benchmark!r}")
    name = BENCHMARKS[benchmark]
    expected = (
        f"a released {name} checkpoint (the SRL train.py's ckpt.best.pth.tar: a ResNet-50 state_dict with conv1, "
        "layer1-4, linear, projector)"
        if benchmark in IMAGE_BENCHMARKS
        else "a released STS-B-DIR model_state_best.th (the SRL trainer's state_dict: pair_encoder.*, sts-b_pred_layer, "
        "projector)"
    )
    if is_srl_ext_checkpoint(obj):
        raise ReleasedCheckpointError(
            f"{path}: expected {expected}, found a checkpoint of this project (srl-ext, preset "
            f"{obj['config'].get('preset')!r}): --evaluate it as a run, without conversion"
        )
    metadata: dict = {}
    ignored: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
        for key, value in obj.items():
            if key == "state_dict":
                continue
            if isinstance(value, (int, float, str, bool)) or value is None:
                metadata[key] = value
            else:
                ignored.append(key)  # the optimizer state and anything else that is no weight
        container = "dict with state_dict"
    elif isinstance(obj, Mapping):
        state = obj
        container = "state_dict"
    else:
        raise ReleasedCheckpointError(f"{path}: expected {expected}, found {_describe(obj)}")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        hint = ""
        if isinstance(obj, Mapping) and {"epoch", "iter", "should_stop"} <= set(obj):
            hint = " (the released STS-B trainer's training_state file: the weights are in model_state_best.th)"
        raise ReleasedCheckpointError(f"{path}: expected {expected}, found {_describe(obj)}{hint}")
    ignored += [f"{key} (not a tensor)" for key in state if key not in tensors]
    prefix = "module." if all(key.startswith("module.") for key in tensors) else ""
    plain = {key[len(prefix):]: value for key, value in tensors.items()}
    found = _family(plain)
    if found is None:
        raise ReleasedCheckpointError(
            f"{path}: expected {expected}, found tensors named {_names(list(plain))} (not a released SRL model)"
        )
    if (found == "image") != (benchmark in IMAGE_BENCHMARKS):
        what = ("the SRL STS-B-DIR model (pair_encoder.*)" if found == "sts_b"
                else "a ResNet checkpoint of the SRL image code (conv1, layer1-4, linear)")
        drivers = DRIVERS["sts_b"] if found == "sts_b" else f"{DRIVERS['agedb']} or {DRIVERS['imdb_wiki']}"
        raise ReleasedCheckpointError(f"{path}: expected {expected}, found {what}: evaluate it with {drivers}")
    fds_rows = plain["FDS.running_mean"].shape[0] if "FDS.running_mean" in plain else None
    if fds_rows is not None and fds_rows not in FDS_ROWS[benchmark]:
        family = IMAGE_BENCHMARKS if found == "image" else ("sts_b",)
        owner = next((b for b in family if fds_rows in FDS_ROWS[b]), None)
        where = f", as {BENCHMARKS[owner]}'s: evaluate it with {DRIVERS[owner]}" if owner else ""
        raise ReleasedCheckpointError(
            f"{path}: expected a released {name} checkpoint, found FDS statistics for {fds_rows} label bins "
            f"({name} has {FDS_ROWS[benchmark][0]}){where}"
        )
    mapper = _image_name if found == "image" else _sts_b_name
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unplaced: list[str] = []
    tasks = sorted({m["task"] for key in plain if (m := _PRED_LAYER.fullmatch(key))})
    task = "sts-b" if "sts-b" in tasks else (tasks[0] if tasks else None)
    for key, value in plain.items():
        ours = mapper(key, task)
        if ours == "":
            ignored.append(prefix + key)
        elif ours is None or ours in mapped:
            unplaced.append(prefix + key)
        else:
            mapped[ours], sources[ours] = value, prefix + key
    settings = _settings(found, mapped)
    description = (
        f"the SRL {name} train.py checkpoint ({container}" + (", DataParallel module. names" if prefix else "") + ")"
        if found == "image"
        else f"the SRL STS-B-DIR trainer's model_state ({container}, task {task!r})"
    )
    return ReleasedLayout(path, benchmark, description, mapped, sources, settings, metadata, ignored, unplaced)


def _family(names: dict) -> str | None:
    if any(key.startswith("pair_encoder.") for key in names):
        return "sts_b"
    if "conv1.weight" in names and any(key.startswith("layer1.") for key in names):
        return "image"
    return None


def _image_name(key: str, task: str | None) -> str | None:
    """Our name of a released ResNet tensor; "" for the FDS buffers (training only); None: no place."""
    top, _, rest = key.partition(".")
    if top == "FDS":
        return ""
    if top == "linear":
        return f"regressor.{rest}"
    if top == "projector":
        return key
    if top in _IMAGE_BACKBONE_MODULES:
        return f"backbone.{key}"  # torchvision's ResNet has the same module names below the top
    return None


def _sts_b_name(key: str, task: str | None) -> str | None:
    """Our name of a released STS-B tensor; "" for the FDS buffers (training only); None: no place."""
    if key.startswith("FDS."):
        return ""
    if key == _STS_B_EMBEDDING:
        return _EMBEDDING
    if key.startswith(_STS_B_LSTM):
        return "encoder.lstm." + key[len(_STS_B_LSTM):]  # nn.LSTM inside both: the same names
    if key.startswith("projector."):
        return key  # Sequential(Linear, ReLU, Linear) in both: indices 0 and 2
    match = _PRED_LAYER.fullmatch(key)
    if match and match["task"] == task:
        return f"regressor.{match['param']}"
    return None


def _settings(family: str, tensors: dict[str, torch.Tensor]) -> dict:
    """The model settings that the tensors' shapes imply."""
    settings: dict = {}
    if "projector.weight" in tensors:
        settings["feature_dim"] = tensors["projector.weight"].shape[0]
    elif "projector.2.weight" in tensors:
        settings["feature_dim"] = tensors["projector.2.weight"].shape[0]
    if family == "image":
        settings["backbone"] = "resnet50" if "backbone.layer1.0.conv3.weight" in tensors else "resnet18"
        return settings
    if "encoder.lstm.weight_hh_l0" in tensors:
        settings["hidden_size"] = tensors["encoder.lstm.weight_hh_l0"].shape[1]
    layers = [int(m[1]) for key in tensors if (m := re.fullmatch(r"encoder\.lstm\.weight_ih_l(\d+)", key))]
    if layers:
        settings["num_layers"] = max(layers) + 1
    if _EMBEDDING in tensors:
        settings["released_vocabulary_size"], settings["embedding_dim"] = tuple(tensors[_EMBEDDING].shape)
    return settings


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with the keys {_names([str(key) for key in obj])} and no model tensors"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


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
    and layers, and an embedding matrix of our ``vocabulary`` (a ``srl_ext.data.sts_b.Vocabulary``
    or its words, id 0 padding and 1 unknown) whose rows are taken from the file by
    ``released_vocabulary`` (see ``map_vocabulary``). ``reference_embeddings`` (our GloVe matrix
    for the same vocabulary) only adds a note: how many words found by name carry the same vector.

    Raises ``ReleasedCheckpointError`` listing the file's tensors without a place and the model's
    entries without a value (or with another shape); nothing is loaded then."""
    from .models import ImageRegressor, SentencePairRegressor

    tensors = dict(layout.tensors)
    notes: list[str] = []
    matched = None
    if layout.benchmark in IMAGE_BENCHMARKS:
        settings = layout.settings
        feature_dim = {"feature_dim": settings["feature_dim"]} if "feature_dim" in settings else {}
        model = ImageRegressor(settings["backbone"], **feature_dim)
    else:
        settings = layout.settings
        if _EMBEDDING not in tensors or "hidden_size" not in settings:
            needed = (_STS_B_EMBEDDING, _STS_B_LSTM + "weight_hh_l0")
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
        released_matrix = tensors[_EMBEDDING]
        if released_matrix[0].abs().sum() != 0:
            notes.append("the released padding row is not zero (unexpected for the released code)")
        embeddings = released_matrix.index_select(0, rows)
        tensors[_EMBEDDING] = embeddings
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
        if reference_embeddings is not None and tuple(reference_embeddings.shape) == tuple(embeddings.shape):
            by_name = set(found["exact"])
            exact = torch.tensor([i + 2 for i, word in enumerate(words[2:]) if word in by_name], dtype=torch.int64)
            if len(exact):
                same = torch.isclose(reference_embeddings[exact], embeddings[exact], rtol=0, atol=1e-6).all(dim=1)
                notes.append(
                    f"vocabulary check: {int(same.sum())} of the {len(exact)} words found as they are carry the vector "
                    "that --glove gives them (an aligned vocabulary gives all those with a GloVe vector; a shifted one "
                    "almost none)"
                )
        elif reference_embeddings is not None:
            notes.append(
                f"vocabulary file not checked: our word vectors are {reference_embeddings.shape[1]}-d, the released "
                f"{embeddings.shape[1]}-d (--glove with the released vectors, glove.840B.300d.txt, checks it)"
            )
    ours = model.state_dict()
    unplaced = list(layout.unplaced) + [layout.sources[name] for name in tensors if name not in ours]
    unfilled, counters = [], []
    for name, value in ours.items():
        if name in tensors:
            continue
        if name.endswith("num_batches_tracked"):
            counters.append(name)
        else:
            unfilled.append(name)
    reshaped = [
        f"{layout.sources[name]} {tuple(tensors[name].shape)} -> {name} {tuple(ours[name].shape)}"
        for name in tensors if name in ours and tensors[name].shape != ours[name].shape
    ]
    if unplaced or unfilled or reshaped:
        parts = []
        if unplaced:
            parts.append(f"{len(unplaced)} tensor(s) of the file have no place in our model: {_names(unplaced)}")
        if unfilled:
            parts.append(f"{len(unfilled)} of our model's entries are not in the file: {_names(unfilled)}")
        if reshaped:
            parts.append(f"{len(reshaped)} shape(s) differ: {_names(reshaped)}")
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
    if layout.ignored:
        notes.insert(0, f"training state, not part of the model, left out: {_names(layout.ignored)}")
    return ReleasedModel(model, layout, notes, matched)


def _model_name(layout: ReleasedLayout) -> str:
    if layout.benchmark in IMAGE_BENCHMARKS:
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


# ----- the drivers' --evaluate of a released file -----

def evaluate_released(config: dict, explicit: set[str], build: Callable[[dict], tuple], path: Path, obj) -> dict:
    """Test a released checkpoint like a run of this project: the DIR table printed, and
    ``test_metrics.json``, ``test_errors.png`` and ``config.json`` (with the file's path, SHA-256
    and the conversion notes) in a new run folder under ``--runs_dir`` (the download folder is
    left alone)."""
    from . import ddp as distributed
    from .checkpoint import make_run_dir
    from .engine import Engine
    from .reporting import TEST_METRICS, TEST_PLOT

    benchmark = config["preset"]
    layout = inspect_released(obj, path, benchmark)
    overrides: dict = {}
    if benchmark in IMAGE_BENCHMARKS:
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
    main_process = distributed.is_main_process()
    if changed and main_process:
        print("note: the released checkpoint sets " + ", ".join(f"--{key} {overrides[key]}" for key in changed)
              + " (given: " + ", ".join(f"--{key} {config[key]}" for key in changed) + ")", file=sys.stderr)
    settings = {**config, **overrides}
    task, built, datasets = build(settings)
    released = build_released_model(
        layout, vocabulary=getattr(built, "vocabulary", None), released_vocabulary=settings.get("released_vocab"),
        reference_embeddings=built.encoder.embedding.weight.detach() if benchmark == "sts_b" else None,
    )
    run_dir = None
    if main_process:
        name = config["run_name"] or f"{benchmark}-released-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = make_run_dir(config["runs_dir"], name)
        record = {
            **settings,
            "released_checkpoint": {
                "path": str(Path(path).resolve()), "sha256": _sha256(path), "layout": layout.description,
                "metadata": layout.metadata, "model_settings": layout.settings, "notes": released.notes,
            },
        }
        (run_dir / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        print(f"released checkpoint {path}: {layout.description}", flush=True)
        for note in released.notes:
            print(f"  {note}", flush=True)
    run_dir = Path(distributed.broadcast_object(None if run_dir is None else str(run_dir)))
    engine = Engine(settings, task, released.model, datasets, run_dir)
    epoch = layout.metadata.get("epoch")
    title = f"test, released {Path(path).name}" + (f" (epoch {epoch})" if epoch is not None else "")
    table = engine.report(title=title, out_dir=run_dir)
    if main_process:
        print(f"wrote {TEST_METRICS}, {TEST_PLOT} and config.json to {run_dir}", flush=True)
    return table


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
