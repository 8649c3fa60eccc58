"""Datasets of the DIR benchmarks: ``images`` (AgeDB-DIR, IMDB-WIKI-DIR) and ``sts_b`` (STS-B-DIR).

A batch from any of their loaders is ``(inputs, labels)``: ``inputs`` a tuple of tensors that the
model takes as ``model(*inputs)``, ``labels`` a float tensor in label units.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError, UserError

DEMO_HINT = "or try the driver with --demo (a small synthetic dataset in this layout, about a minute on a CPU)"


class MissingDataError(FileNotFoundError, UserError):
    """A data file the run needs is not there; the message says in one line what is expected
    where, where to get it, and points to ``--demo``."""


def require_files(data_dir: str | Path, names: list[str], dataset: str, where_to_get: str) -> None:
    """Raise ``MissingDataError`` naming every missing file under ``data_dir`` and where to get them."""
    data_dir = Path(data_dir)
    missing = [name for name in names if not (data_dir / name).is_file()]
    if missing:
        found = [name for name in names if name not in missing]
        # A folder above the split (STS-B-DIR's dir-split/ and srl-split/, say): name the subfolders that hold it.
        below = sorted(str(sub) for sub in (data_dir.iterdir() if data_dir.is_dir() else ())
                       if sub.is_dir() and all((sub / name).is_file() for name in names))
        hint = f" Its subfolders {' and '.join(below)} hold them: pass one as --data_dir." if below else ""
        raise MissingDataError(
            f"{dataset}: data not found under --data_dir {str(data_dir)!r}: missing "
            f"{', '.join(str(data_dir / name) for name in missing)}"
            + (f" (found {', '.join(found)})" if found else "") + "." + (hint or f" {where_to_get} Or {DEMO_HINT[3:]}.")
        )


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 data file (a leading byte-order mark dropped); a file that is not UTF-8
    raises DataError naming the line."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is no part of the first field
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: expected UTF-8 text, got the byte 0x{raw[error.start]:02x} at column {column} "
            "(convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8)"
        ) from None


def text_lines(text: str) -> list[str]:
    """The lines of a data file: split at "\n" (its "\r\n" too) only. str.splitlines would also
    split at a lone "\r", a form feed, U+0085 or U+2028 inside a sentence, cutting its row in two."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
