"""The text a chunk is embedded and BM25-indexed as: its title and heading path, then its text."""

from collections.abc import Sequence


def context_prefix(title: str, section_path: Sequence[str]) -> str:
    return " > ".join(part for part in (title, *section_path) if part.strip())


def embedding_text(title: str, section_path: Sequence[str], text: str) -> str:
    prefix = context_prefix(title, section_path)
    return f"{prefix}\n\n{text}" if prefix else text
