"""Datasets of the DIR benchmarks: ``images`` (AgeDB-DIR, IMDB-WIKI-DIR) and ``sts_b`` (STS-B-DIR).

A batch from any of their loaders is ``(inputs, labels)``: ``inputs`` a tuple of tensors that the
model takes as ``model(*inputs)``, ``labels`` a float tensor in label units.
"""

from __future__ import annotations

from pathlib import Path


class MissingDataError(FileNotFoundError):
    """A data file the run needs is not there; the message says what is expected where."""


def require_files(data_dir: str | Path, names: list[str], dataset: str, where_to_get: str) -> None:
    """Raise ``MissingDataError`` listing every missing file under ``data_dir`` and where to get them."""
    data_dir = Path(data_dir)
    missing = [name for name in names if not (data_dir / name).is_file()]
    if missing:
        expected = "\n".join(f"  {data_dir / name}" + ("   <- missing" if name in missing else "") for name in names)
        raise MissingDataError(
            f"{dataset}: data not found under --data_dir {str(data_dir)!r}.\nExpected files:\n{expected}\n{where_to_get}"
        )
