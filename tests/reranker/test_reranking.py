"""The reranker's logic against real backends: a CrossEncoder fine-tuned here from the packaged
MiniLM weights, and a local HTTP server speaking Cohere's v2 rerank API that scores by term
overlap. Nothing asserts on a canned score: expectations are recomputed from the model or the
server's scoring rule."""

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.reranker.cohere_reranker import CohereReranker
from services.reranker.factory import build_reranker
from services.reranker.reranking import Reranker, rerank
from services.reranker.settings import RerankerSettings
from shared.contracts.queries import Candidate, Query


def candidate(chunk_id: str, title: str, text: str, fused: float) -> Candidate:
    return Candidate(
        chunk_id=chunk_id,
        doc_id=f"doc-{chunk_id}",
        version=1,
        title=title,
        text=text,
        char_start=0,
        char_end=len(text),
        fused_score=fused,
    )


def query(text: str) -> Query:
    return Query(query_id=f"q-{uuid.uuid4().hex[:6]}", text=text)


def reader_text(c: Candidate) -> str:
    """What the reranker is expected to read: title, blank line, text."""
    return f"{c.title}\n\n{c.text}" if c.title else c.text


def ids(candidates: Sequence[Candidate]) -> list[str]:
    return [c.chunk_id for c in candidates]


# --- the "none" backend ------------------------------------------------------------------


async def test_none_backend_keeps_fused_order_and_top_n() -> None:
    assert build_reranker(RerankerSettings(backend="none")) is None
    pool = [
        candidate(f"c{i}", "", f"text {i}", fused) for i, fused in enumerate([0.2, 0.9, 0.5, 0.9])
    ]

    outcome = await rerank(query("anything"), pool, None, top_n=3, budget_ms=250)

    assert ids(outcome.candidates) == ["c1", "c3", "c2"]  # by fused score; the tie keeps order
    assert all(c.rerank_score is None for c in outcome.candidates)
    assert outcome.reranker == "none"
    assert outcome.degraded is None


async def test_none_backend_with_fewer_candidates_than_top_n_and_none() -> None:
    pool = [candidate("a", "T", "x", 0.1)]
    assert ids((await rerank(query("q"), pool, None, top_n=5, budget_ms=250)).candidates) == ["a"]
    assert (await rerank(query("q"), [], None, top_n=5, budget_ms=250)).candidates == ()


async def test_wrong_score_count_degrades() -> None:
    class OneScore:
        name = "one-score"

        async def score(self, query: str, passages: Sequence[str]) -> list[float]:
            return [1.0]

        async def aclose(self) -> None:
            return None

    reranker: Reranker = OneScore()
    pool = [candidate(f"c{i}", "", "t", 1.0 - i / 10) for i in range(3)]

    outcome = await rerank(query("q"), pool, reranker, top_n=2, budget_ms=250)

    assert outcome.degraded == "one-score returned 1 scores for 3 passages"
    assert ids(outcome.candidates) == ["c0", "c1"]


# --- cross-encoder: fine-tuned here from the packaged MiniLM weights ---------------------

# Unseen wordings of the training topics: (query, relevant passage, distractors).
HELD_OUT: list[tuple[str, str, list[str]]] = [
    (
        "what is stored in a redis consumer group",
        "A consumer group tracks which stream entries each worker has read and acknowledged.",
        [
            "Roast the beans until they crack, then grind them fine.",
            "The knight jumps over pieces.",
            "Volcanic ash can ground aircraft.",
        ],
    ),
    (
        "how do I make a loaf rise",
        "Knead the dough, leave it somewhere warm for an hour, and the yeast will make it rise.",
        ["A tiebreak is played to seven points.", "Lava cools into basalt.", "Redis is fast."],
    ),
    (
        "how do the phases of the moon work",
        "As the moon orbits, we see a changing fraction of its lit side, from new moon to full.",
        ["Tennis balls are yellow.", "Espresso needs nine bars of pressure.", "Chess is old."],
    ),
    (
        "what makes a volcano explode",
        "Pressure from gas in magma builds up under the crust until the volcano explodes.",
        ["Espresso crema is an emulsion.", "The knight moves in an L.", "Starter needs flour."],
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(HELD_OUT)))
async def test_cross_encoder_puts_relevant_passage_first(
    case: int, cross_encoder: Reranker
) -> None:
    question, relevant, distractors = HELD_OUT[case]
    # The fused order puts the relevant passage last.
    pool = [candidate(f"d{i}", "", text, 0.9 - i / 10) for i, text in enumerate(distractors)]
    pool.append(candidate("relevant", "", relevant, 0.1))

    outcome = await rerank(query(question), pool, cross_encoder, top_n=2, budget_ms=60_000)

    assert outcome.degraded is None
    assert outcome.candidates[0].chunk_id == "relevant"
    assert len(outcome.candidates) == 2
    first, second = outcome.candidates
    assert first.rerank_score is not None and second.rerank_score is not None
    assert first.rerank_score >= second.rerank_score


@pytest.mark.slow
async def test_cross_encoder_order_is_the_models_own_predict_order(
    cross_encoder_path: Path, cross_encoder: Reranker
) -> None:
    from sentence_transformers import CrossEncoder

    question = "how do consumer groups share redis stream entries between workers"
    pool = [
        candidate("c0", "Coffee", "Espresso is brewed under pressure.", 0.95),
        candidate("c1", "Redis", "Consumer groups split a stream's entries across workers.", 0.9),
        candidate("c2", "Chess", "Castling moves the king and a rook.", 0.8),
        candidate("c3", "Redis streams", "XACK acknowledges an entry for the group.", 0.7),
        candidate("c4", "", "Tides follow the moon.", 0.6),
        candidate("c5", "Bread", "Sourdough rises slowly overnight.", 0.5),
        candidate("c6", "Volcanoes", "Magma rises through the crust.", 0.4),
        candidate("c7", "Tennis", "A tiebreak goes to seven points.", 0.3),
    ]
    model = CrossEncoder(str(cross_encoder_path))  # loaded independently of the service
    predicted = [float(s) for s in model.predict([(question, reader_text(c)) for c in pool])]
    expected = sorted(range(len(pool)), key=lambda i: -predicted[i])[:4]

    outcome = await rerank(query(question), pool, cross_encoder, top_n=4, budget_ms=60_000)

    assert outcome.degraded is None
    assert outcome.reranker == f"cross-encoder:{cross_encoder_path}"
    assert ids(outcome.candidates) == [pool[i].chunk_id for i in expected]
    assert [c.rerank_score for c in outcome.candidates] == pytest.approx(
        [predicted[i] for i in expected], abs=1e-5
    )
    assert outcome.candidates[0].chunk_id in {"c1", "c3"}
    # Every other field is the retriever's.
    for got in outcome.candidates:
        original = next(c for c in pool if c.chunk_id == got.chunk_id)
        assert got.model_copy(update={"rerank_score": None}) == original


@pytest.mark.slow
async def test_cross_encoder_over_budget_keeps_fused_order(cross_encoder: Reranker) -> None:
    pool = [candidate(f"c{i}", "", f"passage {i}", 1.0 - i / 10) for i in range(5)]

    outcome = await rerank(query("anything"), pool, cross_encoder, top_n=3, budget_ms=0.001)

    assert outcome.degraded == "rerank timed out after 0.001 ms"
    assert ids(outcome.candidates) == ["c0", "c1", "c2"]
    assert all(c.rerank_score is None for c in outcome.candidates)


# --- cohere: a local server speaking the v2 rerank API -----------------------------------


def terms(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def overlap(query_text: str, document: str) -> float:
    """The server's relevance: the share of the query's terms found in the document."""
    wanted = terms(query_text)
    return len(wanted & terms(document)) / len(wanted) if wanted else 0.0


@dataclass
class RerankServer:
    """`POST /v2/rerank`: scores each document by term overlap, answers best first."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    fail_first: int = 0
    fail_status: int = 500
    delay_s: float = 0.0
    cap_results: int | None = None  # answer at most this many results, whatever `top_n` says
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, body: dict[str, Any], auth: str | None) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(body)
            self.auth_headers.append(auth)
            attempt = len(self.requests)
        if self.delay_s:
            time.sleep(self.delay_s)
        if path != "/v2/rerank":
            return 404, {"message": f"no route {path}"}
        if attempt <= self.fail_first:
            return self.fail_status, {"message": f"simulated {self.fail_status}"}
        documents: list[str] = body["documents"]
        scored = [(overlap(body["query"], d), i) for i, d in enumerate(documents)]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        top_n = min(body.get("top_n") or len(documents), self.cap_results or len(documents))
        return 200, {
            "id": str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": s} for s, i in scored[:top_n]],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }


@pytest.fixture
def cohere_server() -> Iterator[RerankServer]:
    state = RerankServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            status, payload = state.handle(self.path, body, self.headers.get("authorization"))
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (budget); nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def cohere(url: str, *, max_retries: int = 2) -> CohereReranker:
    return CohereReranker(
        model="rerank-v3.5",
        api_key="test-key",
        base_url=url,
        timeout_s=5.0,
        max_retries=max_retries,
        retry_backoff_s=0.01,
    )


QUESTION = "how do redis consumer groups acknowledge stream entries"
POOL = [
    candidate("bread", "Baking", "Sourdough needs a starter and a hot oven.", 0.9),
    candidate("groups", "Redis", "Consumer groups acknowledge stream entries with XACK.", 0.8),
    candidate("chess", "", "The knight moves in an L shape.", 0.7),
    candidate("streams", "Redis streams", "Entries are appended to a stream.", 0.6),
    candidate("moon", "Moon", "How the moon's phases come and go.", 0.5),
    candidate("redis", "Redis", "An in-memory store.", 0.4),
]


async def test_cohere_orders_by_the_servers_scores(
    cohere_server: RerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_RERANKER_BACKEND", "cohere")
    monkeypatch.setenv("RAG_RERANKER_COHERE_BASE_URL", cohere_server.url)
    monkeypatch.setenv("RAG_RERANKER_COHERE_API_KEY", "test-key")
    monkeypatch.setenv("RAG_RERANKER_MODEL", "rerank-test")
    reranker = build_reranker(RerankerSettings())
    assert reranker is not None
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=3, budget_ms=5_000)
    finally:
        await reranker.aclose()

    scores = [overlap(QUESTION, reader_text(c)) for c in POOL]
    expected = sorted(range(len(POOL)), key=lambda i: -scores[i])[:3]
    assert outcome.degraded is None
    assert outcome.reranker == "cohere:rerank-test"
    assert ids(outcome.candidates) == [POOL[i].chunk_id for i in expected]
    assert ids(outcome.candidates)[:2] == ["groups", "streams"]
    assert [c.rerank_score for c in outcome.candidates] == pytest.approx(
        [scores[i] for i in expected]
    )
    (sent,) = cohere_server.requests
    assert sent["model"] == "rerank-test"
    assert sent["query"] == QUESTION
    assert sent["documents"] == [reader_text(c) for c in POOL]
    assert sent["top_n"] == len(POOL)
    assert cohere_server.auth_headers == ["Bearer test-key"]


async def test_depth_scores_only_the_head_and_keeps_the_tail_in_fused_order(
    cohere_server: RerankServer,
) -> None:
    reranker = cohere(cohere_server.url)
    try:
        outcome = await rerank(
            query(QUESTION), POOL, reranker, top_n=len(POOL), budget_ms=5_000, depth=3
        )
    finally:
        await reranker.aclose()
    head = POOL[:3]
    scores = [overlap(QUESTION, reader_text(c)) for c in head]
    expected_head = [head[i].chunk_id for i in sorted(range(3), key=lambda i: -scores[i])]
    assert outcome.degraded is None
    assert ids(outcome.candidates) == [*expected_head, *ids(POOL[3:])]
    (sent,) = cohere_server.requests
    assert sent["documents"] == [reader_text(c) for c in head]
    assert [c.rerank_score for c in outcome.candidates[3:]] == [None] * (len(POOL) - 3)


async def test_cohere_gets_passages_cut_to_max_chars(cohere_server: RerankServer) -> None:
    reranker = cohere(cohere_server.url)
    try:
        await rerank(
            query(QUESTION), POOL, reranker, top_n=2, budget_ms=5_000, max_passage_chars=12
        )
    finally:
        await reranker.aclose()

    assert cohere_server.requests[0]["documents"] == [reader_text(c)[:12] for c in POOL]


async def test_cohere_retries_a_503_then_uses_the_answer(cohere_server: RerankServer) -> None:
    cohere_server.fail_first, cohere_server.fail_status = 1, 503
    reranker = cohere(cohere_server.url)
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=2, budget_ms=5_000)
    finally:
        await reranker.aclose()

    assert outcome.degraded is None
    assert ids(outcome.candidates) == ["groups", "streams"]
    assert len(cohere_server.requests) == 2


async def test_cohere_http_500_retries_then_degrades(cohere_server: RerankServer) -> None:
    cohere_server.fail_first, cohere_server.fail_status = 100, 500
    reranker = cohere(cohere_server.url, max_retries=2)
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=3, budget_ms=5_000)
    finally:
        await reranker.aclose()

    assert len(cohere_server.requests) == 3
    assert outcome.degraded == "cohere rerank failed: HTTP 500 (simulated 500) after 3 attempts"
    assert ids(outcome.candidates) == ["bread", "groups", "chess"]  # fused order
    assert all(c.rerank_score is None for c in outcome.candidates)
    assert outcome.reranker == "cohere:rerank-v3.5"


async def test_cohere_client_error_is_not_retried(cohere_server: RerankServer) -> None:
    cohere_server.fail_first, cohere_server.fail_status = 100, 401
    reranker = cohere(cohere_server.url, max_retries=2)
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=2, budget_ms=5_000)
    finally:
        await reranker.aclose()

    assert len(cohere_server.requests) == 1
    assert outcome.degraded == "cohere rerank failed: HTTP 401 (simulated 401)"
    assert ids(outcome.candidates) == ["bread", "groups"]


async def test_cohere_incomplete_answer_degrades(cohere_server: RerankServer) -> None:
    cohere_server.cap_results = 4
    reranker = cohere(cohere_server.url)
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=2, budget_ms=5_000)
    finally:
        await reranker.aclose()

    assert len(cohere_server.requests) == 1  # not a transient failure: no retry
    assert outcome.degraded == "cohere rerank failed: malformed response (4 of 6 documents scored)"
    assert ids(outcome.candidates) == ["bread", "groups"]


async def test_cohere_slow_server_exceeds_budget(cohere_server: RerankServer) -> None:
    cohere_server.delay_s = 2.0
    reranker = cohere(cohere_server.url)
    started = time.perf_counter()
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=2, budget_ms=200)
    finally:
        await reranker.aclose()

    assert outcome.degraded == "rerank timed out after 200 ms"
    assert time.perf_counter() - started < 1.5
    assert ids(outcome.candidates) == ["bread", "groups"]
    assert all(c.rerank_score is None for c in outcome.candidates)


async def test_cohere_connection_refused_degrades() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` any more.
    reranker = cohere(f"http://127.0.0.1:{port}", max_retries=1)
    try:
        outcome = await rerank(query(QUESTION), POOL, reranker, top_n=2, budget_ms=5_000)
    finally:
        await reranker.aclose()

    assert outcome.degraded is not None
    assert outcome.degraded.startswith("cohere rerank failed: connection error (")
    assert outcome.degraded.endswith("after 2 attempts")
    assert "\n" not in outcome.degraded
    assert ids(outcome.candidates) == ["bread", "groups"]


def test_settings_read_the_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_RERANKER_BACKEND", "cross-encoder")
    monkeypatch.setenv("RAG_RERANKER_BUDGET_MS", "400")
    monkeypatch.setenv("RAG_RERANKER_TOP_N", "8")
    settings = RerankerSettings()
    assert (settings.backend, settings.budget_ms, settings.top_n) == ("cross-encoder", 400, 8)
    assert settings.cohere_api_key is None
    with pytest.raises(ValueError, match="RAG_RERANKER_MODEL"):
        build_reranker(settings)
