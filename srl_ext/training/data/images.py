"""AgeDB-DIR and IMDB-WIKI-DIR: face images labelled with an integer age (docs/method.md,
"DIR protocol").

Layout (the DIR benchmark's): ``<data_dir>/<csv>`` with the columns ``age``, ``path`` and
``split`` (train / val / test), and the images at ``<data_dir>/<path>``. One age is one bin.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ... import metrics
from ...settings import NUM_BINS
from ..config import Task
from ..errors import DataError
from . import MissingDataError, read_text, require_files

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("age", "path", "split")
IMAGE_SIZE = 224  # ResNet-50 input of the released code
CROP_PADDING = 16
NORMALIZE_MEAN = NORMALIZE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ImageData:
    """Where an image benchmark's files are and what they hold (the benchmark's other facts are its
    ``srl_ext.training.benchmarks.Benchmark`` record)."""

    preset: str  # also the Task name
    csv_name: str
    num_bins: int  # ages 0 .. num_bins - 1
    image_folders: str  # where the CSV's paths point, for the help text
    where_to_get: str


AGEDB = ImageData(
    preset="agedb", csv_name="agedb.csv", num_bins=NUM_BINS["agedb"], image_folders="AgeDB/...",
    where_to_get=(
        "AgeDB-DIR: agedb.csv is agedb-dir/data/agedb.csv of the imbalanced-regression repository (YyzHarry/"
        "imbalanced-regression on GitHub); the AgeDB images (folder AgeDB/) are given by the AgeDB authors on request "
        "(ibug.doc.ic.ac.uk/resources/agedb). Put both in one folder and pass it as --data_dir."
    ),
)
IMDB_WIKI = ImageData(
    preset="imdb_wiki", csv_name="imdb_wiki.csv", num_bins=NUM_BINS["imdb_wiki"],
    image_folders="imdb_crop/..., wiki_crop/...",
    where_to_get=(
        "IMDB-WIKI-DIR: imdb_wiki.csv is imdb-wiki-dir/data/imdb_wiki.csv of the imbalanced-regression repository "
        "(YyzHarry/imbalanced-regression on GitHub); the face crops (folders imdb_crop/ and wiki_crop/) come from the "
        "IMDB-WIKI page (data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki). Put them in one folder and pass it as --data_dir."
    ),
)


def read_age_csv(path: str | Path, num_bins: int) -> dict[str, list[tuple[str, int]]]:
    """{"train", "val", "test"} -> [(relative image path, age)]; a malformed row, an age that is
    not a finite integer in range or a file that is not UTF-8 raises DataError (a ValueError)
    naming the file and line."""
    path = Path(path)
    rows: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = next(reader, None)
    if header is None or any(column not in header for column in CSV_COLUMNS):
        raise DataError(f"{path}:1: expected a header with the columns {', '.join(CSV_COLUMNS)}, got {header}")
    column = {name: header.index(name) for name in CSV_COLUMNS}
    line = reader.line_num
    while True:
        first = line + 1  # the row's first line: a quoted field may run over several
        try:
            fields = next(reader, None)
        except csv.Error as error:  # a field over csv's size limit, a NUL byte, ...
            raise DataError(f"{path}:{first}: {error}") from None
        if fields is None:
            break
        line = reader.line_num
        if line > first:
            raise DataError(f"{path}:{first}: a quoted field opens on this line and is not closed before line {line} "
                            "(an unterminated quote)")
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} comma-separated fields, got {len(fields)}")
        age_text, image, split = (fields[column[name]].strip() for name in CSV_COLUMNS)
        try:
            age = float(age_text)
        except ValueError:
            raise DataError(f"{path}:{line}: age {age_text!r} is not a number") from None
        if not math.isfinite(age):
            raise DataError(f"{path}:{line}: age {age_text!r} is not a finite number")
        if age != int(age) or not 0 <= age < num_bins:
            raise DataError(f"{path}:{line}: age {age_text!r} is not an integer in [0, {num_bins - 1}]")
        if split not in rows:
            raise DataError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if not image:
            raise DataError(f"{path}:{line}: empty image path")
        rows[split].append((image, int(age)))
    return rows


def check_images(benchmark: ImageData, data_dir: Path, rows: dict[str, list[tuple[str, int]]], shown: int = 5,
                 progress: bool = False) -> None:
    """Every image of every split is a file whose header and pixel data can be read, before any
    training: a missing, empty, truncated or oversized test image must not end a run after hours.
    MissingDataError counts the missing images and names the first few; DataError does the same
    for unreadable ones. The images are read in parallel; those that passed are remembered by
    size and modification time (``checked_images_cache``), so a resume or a second run on the
    same data reads only new or changed files."""
    missing, entries = [], []
    for split in SPLITS:
        for number, (relative, _) in enumerate(rows[split], start=1):
            path = data_dir / relative
            try:
                stat = path.stat()
            except OSError:
                stat = None
            if stat is None or not path.is_file():
                missing.append(f"{path} (row {number} of the {split} split)")
            else:
                entries.append((relative, f"row {number} of the {split} split", [stat.st_size, stat.st_mtime_ns]))
    total = sum(len(r) for r in rows.values())
    if missing:
        raise MissingDataError(
            f"{benchmark.preset}: {len(missing)} of the {total} images of {benchmark.csv_name} are missing: "
            f"{'; '.join(missing[:shown])}" + (f"; and {len(missing) - shown} more" if len(missing) > shown else "")
            + f"; the images are expected at --data_dir/<path of the CSV>. {benchmark.where_to_get}"
        )
    cache_file = checked_images_cache(data_dir)
    cached = _read_cache(cache_file)
    unchecked = [(relative, where, stamp) for relative, where, stamp in entries if cached.get(relative) != stamp]
    from ..reporting import progress as progress_bar

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda entry: image_problem(data_dir / entry[0]), unchecked)
        problems = []
        for (relative, where, stamp), problem in zip(unchecked, progress_bar(
                results, progress and len(unchecked) > 100, f"checking {len(unchecked)} images")):
            if problem is None:
                cached[relative] = stamp
            else:
                cached.pop(relative, None)
                problems.append(f"{data_dir / relative} ({where}): {problem}")
    if unchecked:
        _write_cache(cache_file, cached)
    if problems:
        raise DataError(
            f"{benchmark.preset}: {len(problems)} of the {total} images of {benchmark.csv_name} cannot be read: "
            f"{'; '.join(problems[:shown])}" + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")
            + "; replace or remove them (and their rows of the CSV)"
        )


# Integer grey levels wider than 8 bits (PNG and TIFF of 16 bits a sample): scaled to 8 bits as
# the PNG standard scales sample depths (v * 255 / 65535), not clipped at 255 as PIL's convert does.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
WIDE_GREY_MAX = 65535


def to_rgb(image):
    """The 8-bit RGB image of a PIL image of any mode that has a defined range: 8-bit modes
    (grey, palette, with alpha, CMYK, YCbCr, ...) by PIL's conversion, the alpha dropped as the
    released code's ``convert("RGB")`` does; 16-bit grey scaled to 8 bits. Pixels of no defined
    range (floats, 32-bit integers beyond 16 bits) raise ValueError."""
    from PIL import Image

    if image.mode in WIDE_GREY_MODES:
        pixels = np.asarray(image).astype(np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > WIDE_GREY_MAX):
            raise ValueError(f"{image.mode} pixels in [{pixels.min()}, {pixels.max()}]: expected 8 or 16-bit "
                             "unsigned levels")
        grey = ((pixels * 255 + WIDE_GREY_MAX // 2) // WIDE_GREY_MAX).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        raise ValueError("32-bit floating-point pixels (mode F) have no defined range: save the image with 8 or "
                         "16-bit levels")
    if image.mode in ("La", "RGBa"):  # premultiplied alpha
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"mode {image.mode} cannot be converted to RGB ({error})") from None


def open_rgb(path: Path):
    """The image at `path` as 8-bit RGB (``to_rgb``); an unreadable file raises DataError naming it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return to_rgb(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... by format
        raise DataError(f"cannot read image {path}: {_describe(error)}") from None


def image_problem(path: Path) -> str | None:
    """Why the image at `path` cannot be used, or None: its header, its size (PIL's decompression
    bomb limit), its pixel data to the end (a JPEG decoded at 1/8 scale: fast, and it still reads
    every byte) and its mode."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
                to_rgb(image)
    except Exception as error:
        return _describe(error)
    return None


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    if type(error).__name__.startswith("DecompressionBomb"):
        return f"too many pixels ({text})"
    return text or type(error).__name__


def checked_images_cache(data_dir: Path) -> Path:
    """The file remembering which images of `data_dir` passed ``check_images``: under
    $SRL_EXT_CACHE_DIR, else $XDG_CACHE_HOME/srl_ext, else ~/.cache/srl_ext."""
    root = os.environ.get("SRL_EXT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "srl_ext")
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:20]
    return Path(root) / "checked-images" / f"{key}.json"


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(path: Path, cached: dict) -> None:
    """Written whole or not at all; a cache that cannot be written only costs the next run a check."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cached))
        os.replace(temporary, path)
    except OSError:
        pass


def transforms(train: bool, image_size: int = IMAGE_SIZE):
    """Train: resize, random crop with padding 16, horizontal flip, normalise to [-1, 1]; eval:
    resize and normalise (the released code's)."""
    from torchvision import transforms as T

    steps = [T.Resize((image_size, image_size))]
    if train:
        steps += [T.RandomCrop(image_size, padding=CROP_PADDING), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
    return T.Compose(steps)


class AgeImageDataset(Dataset):
    """Items ``(image tensor, age)`` from (relative path, age) rows under ``root``; with
    ``views=2`` (ConR) ``(image, view 1, view 2, age)``: the transform drawn three times, as the
    released ConR code does."""

    def __init__(self, rows: Sequence[tuple[str, int]], root: str | Path, transform, views: int = 0) -> None:
        self.rows = list(rows)
        self.root = Path(root)
        self.transform = transform
        self.views = views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        relative, age = self.rows[index]
        image = open_rgb(self.root / relative)
        if self.views:
            return (self.transform(image), *(self.transform(image) for _ in range(self.views)), float(age))
        return self.transform(image), float(age)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([age for _, age in self.rows], dtype=np.float32)


def collate_images(items):
    """A batch ``((images,), ages)``; of items with two views ``((images, views), ages)``, the
    views 2B x C x H x W, all first views then all second views (ConR's layout)."""
    if len(items[0]) == 4:
        images, first, second, ages = zip(*items)
        views = torch.cat([torch.stack(first), torch.stack(second)])
        return (torch.stack(images), views), torch.tensor(ages, dtype=torch.float32)
    images, ages = zip(*items)
    return (torch.stack(images),), torch.tensor(ages, dtype=torch.float32)


class AgeBins:
    """labels -> bins: the integer age, clamped to [0, K) (picklable, unlike a lambda)."""

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(labels).long().clamp(0, self.num_bins - 1)


def load_benchmark(benchmark: ImageData, data_dir: str | Path, image_size: int = IMAGE_SIZE,
                   train_views: int = 0, progress: bool = False) -> tuple[Task, dict[str, Dataset]]:
    """The Task (bins, shot groups from the training counts) and the three datasets; with
    ``train_views`` = 2 (ConR) the training set yields two extra augmented views per image.
    Every image is checked first (``check_images``; ``progress``: with a progress bar)."""
    data_dir = Path(data_dir)
    require_files(data_dir, [benchmark.csv_name], benchmark.preset, benchmark.where_to_get)
    rows = read_age_csv(data_dir / benchmark.csv_name, benchmark.num_bins)
    for split in SPLITS:
        if not rows[split]:
            raise DataError(f"{data_dir / benchmark.csv_name}: the {split} split is empty (no row with split {split!r})")
    check_images(benchmark, data_dir, rows, progress=progress)
    datasets = {
        split: AgeImageDataset(rows[split], data_dir, transforms(split == "train", image_size),
                               views=train_views if split == "train" else 0)
        for split in SPLITS
    }
    train_labels = datasets["train"].labels
    bins = AgeBins(benchmark.num_bins)
    train_counts = np.bincount(bins(torch.from_numpy(train_labels)).numpy(), minlength=benchmark.num_bins)
    task = Task(
        name=benchmark.preset, num_bins=benchmark.num_bins, label_bins=bins,
        bin_groups=metrics.shot_groups_from_counts(train_counts), train_labels=train_labels, collate=collate_images,
        selection=("all", "mae"), label_name="age", bin_values=list(range(benchmark.num_bins)),
        data_files=(str(data_dir / benchmark.csv_name),),
    )
    return task, datasets
