"""How often the extractive answer contains the gold answer, on squad-mini.

    python -m bench.extractive [--data ../shared/datasets/squad-mini] [--top-n 5]

Each question's candidates are the top-n passages by dense similarity (the packaged MiniLM,
no index: the pool is 288 passages), in that order, as the reranker would hand them over. The
extractive generator answers from them; a hit is a gold answer string (case-insensitive) inside
the first sentence of the answer (`first_sentence`) or anywhere in it (`any_sentence`).
`retrieval_hit` is the share of questions whose gold passage is among the candidates, the
ceiling for both. Prints one JSON line.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from services.generator.extractive import answer_extractively
from shared.contracts import Candidate
from shared.embedding import SentenceTransformerEmbedder
from shared.settings import EmbeddingSettings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "squad-mini"


def load(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def candidate(passage: dict[str, object], score: float) -> Candidate:
    text = str(passage["text"])
    return Candidate(
        chunk_id=f"{passage['_id']}#0", doc_id=str(passage["_id"]), version=1,
        title=str(passage["title"]), text=text, char_start=0, char_end=len(text),
        dense_score=score, fused_score=score,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--top-n", type=int, default=5)
    args = parser.parse_args()
    passages = load(args.data / "passages.jsonl")
    questions = load(args.data / "qa.jsonl")
    embedder = SentenceTransformerEmbedder(EmbeddingSettings())
    passage_vectors = embedder.encode([f"{p['title']}\n{p['text']}" for p in passages])
    question_vectors = embedder.encode([str(q["question"]) for q in questions])
    scores = question_vectors @ passage_vectors.T
    first = anywhere = retrieved = answered = 0
    for question, row in zip(questions, scores, strict=True):
        top = np.argsort(-row)[: args.top_n]
        candidates = [candidate(passages[i], float(row[i])) for i in top]
        retrieved += any(c.doc_id == question["gold_passage_id"] for c in candidates)
        found = answer_extractively(str(question["question"]), candidates)
        if found is None:
            continue
        answered += 1
        golds = [str(a).lower() for a in question["answers"]]  # type: ignore[attr-defined]
        first += any(g in found.parts[0].lower() for g in golds)
        anywhere += any(g in found.text.lower() for g in golds)
    n = len(questions)
    result = {
        "questions": n,
        "top_n": args.top_n,
        "retrieval_hit": round(retrieved / n, 4),
        "answered": round(answered / n, 4),
        "first_sentence": round(first / n, 4),
        "any_sentence": round(anywhere / n, 4),
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
