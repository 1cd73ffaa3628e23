"""Where `ragstream ingest` reads documents: a folder of .md/.txt, one such file, or a JSONL.

A JSONL row is `{"doc_id" (or "_id"), "text", "title"?, "version"?, "metadata"?, "source"?,
"deleted"?}`; other keys are ignored (BEIR corpora carry some). A row with `"deleted": true`
needs no text and becomes a `DocDelete`. A bad row is a `ValueError` naming `file:line`.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import JsonValue, TypeAdapter, ValidationError

from shared.contracts import DocDelete, DocUpsert
from shared.contracts.docs import content_hash

TEXT_SUFFIXES = {".md", ".markdown", ".txt"}
DEFAULT_SOURCE = "cli"
_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])


@dataclass(frozen=True)
class SourceDoc:
    """A document as read, before it becomes an event. `version` None: the publisher's clock."""

    doc_id: str
    title: str
    text: str
    version: int | None = None
    metadata: dict[str, JsonValue] = field(default_factory=dict)
    source: str = DEFAULT_SOURCE
    deleted: bool = False

    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.text)

    def event(self, default_version: int) -> DocUpsert | DocDelete:
        """The doc-change event: its own version if it has one, else `default_version`."""
        version = self.version if self.version is not None else default_version
        if self.deleted:
            return DocDelete(doc_id=self.doc_id, version=version)
        return DocUpsert(
            doc_id=self.doc_id, version=version, title=self.title, text=self.text,
            metadata=self.metadata, source=self.source,
        )  # fmt: skip


def load_documents(path: Path) -> list[SourceDoc]:
    """A folder of .md/.txt files (doc id = relative path) or a JSONL (see the module doc)."""
    if path.is_dir():
        return [read_file(f, path) for f in text_files(path)]
    if path.suffix == ".jsonl":
        return list(read_jsonl(path))
    if path.suffix in TEXT_SUFFIXES:
        return [read_file(path, path.parent)]
    raise ValueError(f"{path}: expected a folder, a .jsonl file or a .md/.txt file")


def is_text_file(path: Path) -> bool:
    return path.suffix in TEXT_SUFFIXES and path.is_file()


def text_files(folder: Path) -> list[Path]:
    """The .md/.txt files under `folder`, sorted."""
    return [f for f in sorted(folder.rglob("*")) if is_text_file(f)]


def doc_id_of(file: Path, root: Path) -> str:
    """A file's doc id: its path relative to the folder, with `/` on every platform."""
    return file.relative_to(root).as_posix()


def read_file(file: Path, root: Path) -> SourceDoc:
    text = file.read_text(encoding="utf-8")
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    title = first.lstrip("#").strip() if first.startswith("#") else file.stem.replace("-", " ")
    return SourceDoc(doc_id_of(file, root), title, text)


def read_jsonl(file: Path) -> Iterator[SourceDoc]:
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield parse_row(line)
                except ValueError as exc:
                    raise ValueError(f"{file}:{number}: {exc}") from None


def parse_row(line: str) -> SourceDoc:
    """One JSONL row; a `ValueError` saying what is wrong with it."""
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    doc_id = row.get("doc_id", row.get("_id"))
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError("needs doc_id (or _id), a non-empty string")
    deleted = row.get("deleted", False)
    if not isinstance(deleted, bool):
        raise ValueError("deleted must be true or false")
    version = row.get("version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 0
    ):
        raise ValueError("version must be an integer >= 0")
    text, title, source = row.get("text"), row.get("title", ""), row.get("source", DEFAULT_SOURCE)
    if not deleted and (not isinstance(text, str) or not text.strip()):
        raise ValueError("needs text, a non-empty string (or deleted: true)")
    for name, value in (("title", title), ("source", source)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    try:
        metadata = _METADATA.validate_python(row.get("metadata", {}))
    except ValidationError:
        raise ValueError("metadata must be a JSON object") from None
    return SourceDoc(
        doc_id, title, text if isinstance(text, str) else "", version, metadata, source, deleted
    )


__all__ = ["TEXT_SUFFIXES", "SourceDoc", "doc_id_of", "load_documents", "read_file", "text_files"]
