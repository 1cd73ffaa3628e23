"""The text a chunk is embedded and BM25-indexed as: its title and heading path, then its text.

The chunker sizes chunks so this whole text fits the embedding model's window; the embedder and
the index use it as is.
"""

from collections.abc import Sequence


def embedding_text(title: str, section_path: Sequence[str], text: str) -> str:
    """The text embedded and indexed for a chunk: "Title > Heading > Sub\\n\\ntext".

    Empty parts are omitted, and a heading repeating the part before it (typically a
    top heading equal to the title) is written once.
    """
    parts: list[str] = []
    for raw in (title, *section_path):
        part = raw.strip()
        if part and (not parts or parts[-1].casefold() != part.casefold()):
            parts.append(part)
    header = " > ".join(parts)
    return "\n\n".join(p for p in (header, text) if p)


def search_text(title: str, section_path: Sequence[str], text: str) -> str:
    """What BM25 indexes for a chunk: title, section path and text, one per line."""
    parts = (title, " / ".join(section_path), text)
    return "\n".join(part for part in parts if part)
