"""Documents from plain text, JSON lines, Parquet and Hugging Face datasets saved to disk.

Every reader streams: documents are yielded one at a time, never all held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saelab.data.base import DataError

TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


def corpus_path() -> Path:
    """The bundled English corpus (generated, license-clean; ~320 KB; blank-line documents)."""
    path = Path(__file__).resolve().parent / "corpus" / "english.txt"
    if not path.exists():
        raise DataError(f"the bundled corpus {path} is missing; regenerate it with "
                        "python src/saelab/text/corpus/generate.py")
    return path


def read_documents(source: str | Path, *, text_field: str = "text",
                   split: str = "train") -> Iterator[str]:
    """Stream the documents of one source, chosen by its type:

    - ``.txt``/``.md``: documents separated by blank lines;
    - ``.jsonl``: one JSON object per line, text in ``text_field``;
    - ``.parquet``: column ``text_field``;
    - a folder written by ``datasets``' ``save_to_disk`` (a DatasetDict needs ``split``).
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"text source {path} does not exist")
    if path.is_dir():
        return _read_saved_dataset(path, text_field, split)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_plain_text(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, text_field)
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise DataError(f"{path}: unsupported text file type {suffix!r}; use .txt, .jsonl, .parquet "
                    "or a folder saved with datasets' save_to_disk")


def read_all(sources: Iterable[str | Path], *, text_field: str = "text",
             split: str = "train") -> Iterator[str]:
    """The documents of several sources, one after the other."""
    for source in sources:
        yield from read_documents(source, text_field=text_field, split=split)


def _read_plain_text(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {number} is not valid JSON ({err})") from err
            yield _text_of(record, text_field, f"{path} line {number}")


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where} has no {text_field!r} field (it has {keys}); set the text "
                        "field option to the right key")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} holds a {type(value).__name__}, not text")
    return value


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError("reading Parquet needs pyarrow: pip install 'saelab[models]'") from err
    file = pq.ParquetFile(path)
    columns = file.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{path} has no column {text_field!r} (columns: {columns}); set the text "
                        "field option to the right column")
    for batch in file.iter_batches(columns=[text_field], batch_size=1024):
        for i, value in enumerate(batch.column(0).to_pylist()):
            if value is None:
                continue
            yield _text_of({text_field: value}, text_field, f"{path} row {i}")


def _read_saved_dataset(path: Path, text_field: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise DataError("reading a saved dataset needs datasets: pip install 'saelab[models]'") from err
    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path} is a folder but not a dataset saved with save_to_disk "
                        f"({err})") from err
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{path} holds splits {sorted(data)}, not {split!r}; choose one with "
                            "the split option")
        data = data[split]
    if text_field not in data.column_names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {data.column_names}); set "
                        "the text field option to the right column")
    for i, value in enumerate(data.select_columns([text_field]).iter(batch_size=1024)):
        for j, text in enumerate(value[text_field]):
            if text is not None:
                yield _text_of({text_field: text}, text_field, f"{path} row {i * 1024 + j}")
