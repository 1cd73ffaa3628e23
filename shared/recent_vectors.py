"""The vectors a writer last wrote or read of each doc, so that the next version of a doc it
knows needs no read of its served rows: a bounded cache, one per index (so per model), keyed
by a hash of each embedding text."""

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from shared.store.records import Vector


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class KnownDoc:
    """A doc's rows as the index served them: their version, and a vector per embedding text."""

    rows_version: int
    vectors: dict[bytes, Vector]
    """`text_key` of each embedding text → its vector."""

    def vector(self, text: str) -> Vector | None:
        return self.vectors.get(text_key(text))


class RecentVectors:
    """`KnownDoc` per doc id, least recently used dropped first once more than `max_vectors`
    vectors are held (copies: ~1.5 KB each at dim 384). ``max_vectors=0`` holds none."""

    def __init__(self, max_vectors: int) -> None:
        self.max_vectors = max_vectors
        self._docs: OrderedDict[str, KnownDoc] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        """How many vectors are held."""
        return self._size

    def get(self, doc_id: str) -> KnownDoc | None:
        known = self._docs.get(doc_id)
        if known is not None:
            self._docs.move_to_end(doc_id)
        return known

    def put(self, doc_id: str, rows_version: int, texts: Sequence[str], vectors: Vector) -> None:
        """Remember `doc_id`'s rows of `rows_version`: one vector per text, in order."""
        self.forget(doc_id)
        if not 0 < len(texts) <= self.max_vectors:
            return
        copied = {text_key(t): v.copy() for t, v in zip(texts, vectors, strict=True)}
        self._docs[doc_id] = KnownDoc(rows_version, copied)
        self._size += len(copied)
        while self._size > self.max_vectors:
            _, dropped = self._docs.popitem(last=False)
            self._size -= len(dropped.vectors)

    def forget(self, doc_id: str) -> None:
        known = self._docs.pop(doc_id, None)
        if known is not None:
            self._size -= len(known.vectors)
