"""Text sources: plain text, JSON lines, Parquet, datasets saved to disk; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saelab.data.base import DataError
from saelab.text import corpus_path, read_all, read_documents

DOCS = ["The first document.\nIt has two lines.", "Second one.", "Third, with 'quotes'."]


def test_plain_text_documents_are_blank_line_separated(tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(DOCS) + "\n\n\n")
    assert list(read_documents(path)) == DOCS


def test_jsonl_with_a_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    assert list(read_documents(path, text_field="body")) == DOCS
    with pytest.raises(DataError, match=r"line 1 has no 'text' field \(it has \['body', 'id'\]\)"):
        list(read_documents(path))


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        list(read_documents(path))


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": DOCS, "n": [1, 2, 3]}), path)
    assert list(read_documents(path, text_field="content")) == DOCS
    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['content', 'n'\]\)"):
        list(read_documents(path))


def test_saved_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(single))
    assert list(read_documents(single)) == DOCS
    multi = tmp_path / "multi"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS}),
                          "validation": datasets.Dataset.from_dict({"text": DOCS[:1]})}
                         ).save_to_disk(str(multi))
    assert list(read_documents(multi, split="validation")) == DOCS[:1]
    with pytest.raises(DataError, match=r"splits \['train', 'validation'\], not 'test'"):
        list(read_documents(multi, split="test"))


def test_unsupported_and_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"unsupported text file type '\.csv'"):
        read_documents(tmp_path / "x.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        list(read_documents(tmp_path / "folder"))


def test_bundled_corpus_is_substantial_english() -> None:
    docs = list(read_all([corpus_path()]))
    text = " ".join(docs)
    assert len(docs) > 500 and len(text) > 250_000
    assert text.count(" the ") > 1000
