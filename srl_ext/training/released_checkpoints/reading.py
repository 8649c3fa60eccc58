"""Reading a released SRL checkpoint: safely (no pickled code runs unless asked), and its layout.

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

``read_checkpoint`` reads any torch file (this project's ``best.pt`` and ``last.pt`` too) without
running pickled code; ``inspect_released`` recognises a released file and names its tensors as
this project's models do (``ReleasedLayout``). ``mapping`` builds our model from a layout.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..benchmarks import BENCHMARKS

STS_B_EMBEDDING = "pair_encoder._text_field_embedder.token_embedder_words.weight"
STS_B_LSTM = "pair_encoder._phrase_layer._module."
_PRED_LAYER = re.compile(r"(?P<task>.+)_pred_layer\.(?P<param>weight|bias)")
_IMAGE_BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
EMBEDDING = "encoder.embedding.weight"  # our model's word vectors
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
    """Whether ``obj`` is a checkpoint of this project's engine (``best.pt``, ``last.pt``), of
    this version or another (``checkpoint.read_checkpoint`` refuses a newer one, naming it)."""
    version = obj.get("format") if isinstance(obj, Mapping) else None
    return isinstance(version, int) and not isinstance(version, bool) and "model" in obj and "config" in obj


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
    record = BENCHMARKS[benchmark]
    expected = (
        f"a released {record.title} checkpoint (the SRL train.py's ckpt.best.pth.tar: a ResNet-50 state_dict with "
        "conv1, layer1-4, linear, projector)"
        if record.family == "image"
        else "a released STS-B-DIR model_state_best.th (the SRL trainer's state_dict: pair_encoder.*, sts-b_pred_layer, "
        "projector)"
    )
    if is_srl_ext_checkpoint(obj):
        raise ReleasedCheckpointError(
            f"{path}: expected {expected}, found a checkpoint of this project (srl-ext, preset "
            f"{obj['config'].get('preset')!r}): --evaluate it as a run, without conversion"
        )
    state, metadata, ignored, container = _state_dict_of(obj, path, expected)
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        hint = ""
        if isinstance(obj, Mapping) and {"epoch", "iter", "should_stop"} <= set(obj):
            hint = " (the released STS-B trainer's training_state file: the weights are in model_state_best.th)"
        raise ReleasedCheckpointError(f"{path}: expected {expected}, found {_describe(obj)}{hint}")
    ignored += [f"{key} (not a tensor)" for key in state if key not in tensors]
    prefix = "module." if all(key.startswith("module.") for key in tensors) else ""
    plain = {key[len(prefix):]: value for key, value in tensors.items()}
    found = _check_family(plain, path, record, expected)
    mapped, sources, unplaced, task = _our_names(plain, found, prefix, ignored)
    description = (
        f"the SRL {record.title} train.py checkpoint ({container}" + (", DataParallel module. names" if prefix else "") + ")"
        if found == "image"
        else f"the SRL STS-B-DIR trainer's model_state ({container}, task {task!r})"
    )
    return ReleasedLayout(path, benchmark, description, mapped, sources, _settings(found, mapped), metadata, ignored,
                          unplaced)


def _state_dict_of(obj, path: Path, expected: str) -> tuple[Mapping, dict, list[str], str]:
    """(the state_dict, the file's plain metadata, the entries that are no weights, what held it)."""
    metadata: dict = {}
    ignored: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        for key, value in obj.items():
            if key == "state_dict":
                continue
            if isinstance(value, (int, float, str, bool)) or value is None:
                metadata[key] = value
            else:
                ignored.append(key)  # the optimizer state and anything else that is no weight
        return obj["state_dict"], metadata, ignored, "dict with state_dict"
    if isinstance(obj, Mapping):
        return obj, metadata, ignored, "state_dict"
    raise ReleasedCheckpointError(f"{path}: expected {expected}, found {_describe(obj)}")


def _check_family(plain: dict, path: Path, record, expected: str) -> str:
    """The released code that wrote the tensors ("image" or "sts_b"); another benchmark's file
    is refused, naming the driver that takes it."""
    found = _family(plain)
    if found is None:
        raise ReleasedCheckpointError(
            f"{path}: expected {expected}, found tensors named {listed(list(plain))} (not a released SRL model)"
        )
    if found != record.family:
        what = ("the SRL STS-B-DIR model (pair_encoder.*)" if found == "sts_b"
                else "a ResNet checkpoint of the SRL image code (conv1, layer1-4, linear)")
        drivers = " or ".join(b.driver for b in BENCHMARKS.values() if b.family == found)
        raise ReleasedCheckpointError(f"{path}: expected {expected}, found {what}: evaluate it with {drivers}")
    fds_rows = plain["FDS.running_mean"].shape[0] if "FDS.running_mean" in plain else None
    if fds_rows is not None and fds_rows not in record.released_fds_rows:
        owner = next((b for b in BENCHMARKS.values() if b.family == found and fds_rows in b.released_fds_rows), None)
        where = f", as {owner.title}'s: evaluate it with {owner.driver}" if owner else ""
        raise ReleasedCheckpointError(
            f"{path}: expected a released {record.title} checkpoint, found FDS statistics for {fds_rows} label bins "
            f"({record.title} has {record.released_fds_rows[0]}){where}"
        )
    return found


def _our_names(plain: dict, found: str, prefix: str, ignored: list[str]) -> tuple[dict, dict, list[str], str | None]:
    """(our name -> tensor, our name -> the file's name, the file's tensors without a place, the
    STS-B task whose prediction layer is the regressor); training-only entries go to ``ignored``."""
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
    return mapped, sources, unplaced, task


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
    if key == STS_B_EMBEDDING:
        return EMBEDDING
    if key.startswith(STS_B_LSTM):
        return "encoder.lstm." + key[len(STS_B_LSTM):]  # nn.LSTM inside both: the same names
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
    if EMBEDDING in tensors:
        settings["released_vocabulary_size"], settings["embedding_dim"] = tuple(tensors[EMBEDDING].shape)
    return settings


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with the keys {listed([str(key) for key in obj])} and no model tensors"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


