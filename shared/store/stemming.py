"""English stemming for BM25 where the index has none (Weaviate tokenises words, no stems).

Documents and queries go through the same `stem_text`, so "mutations" finds "mutated"; the
index then splits, lowercases and drops stop words as usual. LanceDB's full-text index stems by
itself and does not use this.
"""

import re
from functools import cache

import Stemmer

_WORD = re.compile(r"[^\W_]+")


@cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stem_text(text: str) -> str:
    """Lowercased words, each replaced by its Snowball English stem, space-separated."""
    return " ".join(_stemmer().stemWords(_WORD.findall(text.lower())))
