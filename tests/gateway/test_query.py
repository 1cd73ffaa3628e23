"""Queries through the gateway (started with the documented uvicorn command) and all five stage
processes: JSON answers with citations, streamed answers as SSE, answers on the gateway's own
reply stream."""

import httpx
import pytest
from redis.asyncio import Redis

from ragstream.ingest import publish_and_wait
from shared.contracts import Answer, AnswerDelta, DocUpsert
from tests.gateway.conftest import Stack, sse_events

pytestmark = pytest.mark.integration

DOCS = {
    "mars": "# Mars\n\nMars is the fourth planet from the Sun.\n\n## Moons\n\n"
    "Mars has two small moons, Phobos and Deimos. Both were discovered by Asaph Hall in 1877.",
    "webb": "# James Webb\n\nThe James Webb Space Telescope launched on 25 December 2021.",
    "saturn": "# Saturn\n\nTitan is Saturn's largest moon and has a dense atmosphere.",
}


@pytest.fixture
async def corpus(redis: Redis, stack: Stack) -> None:
    events = [DocUpsert(doc_id=d, version=1, title=d.title(), text=t) for d, t in DOCS.items()]
    report = await publish_and_wait(redis, events, streams=stack.streams, timeout_s=60)
    assert len(report.outcomes) == len(events), report.summary()


async def test_answer_cites_the_right_doc(
    client: httpx.AsyncClient, corpus: None, redis: Redis, stack: Stack
) -> None:
    response = await client.post("/v1/query", json={"text": "Who discovered the moons of Mars?"})
    assert response.status_code == 200, response.text
    answer = Answer.model_validate_json(response.content)
    assert answer.error is None and not answer.abstained
    assert "Asaph Hall" in answer.text
    assert answer.citations and answer.citations[0].doc_id == "mars"
    assert all(f"[{c.marker}]" in answer.text for c in answer.citations)
    assert answer.timings.total_ms

    # the answer came on the gateway's own stream, not the shared one every client reads
    assert await redis.xlen(stack.streams.answers) == 0
    own = [key async for key in redis.scan_iter(match=f"{stack.streams.answers}.gw.*")]
    assert len(own) == 1
    assert 0 < await redis.ttl(own[0]) <= 600


async def test_filters_and_top_n_reach_the_pipeline(
    client: httpx.AsyncClient, corpus: None
) -> None:
    body = {"text": "Which moon has a dense atmosphere?", "filters": {"doc_id": "webb"}, "top_n": 1}
    answer = Answer.model_validate_json((await client.post("/v1/query", json=body)).content)
    assert {c.doc_id for c in answer.citations} <= {"webb"}
    assert "Titan" not in answer.text


async def test_streamed_answer_is_deltas_then_the_answer(
    client: httpx.AsyncClient, corpus: None
) -> None:
    body = {"text": "When did the James Webb Space Telescope launch?", "stream": True}
    async with client.stream("POST", "/v1/query", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = (await response.aread()).decode()
    events = sse_events(text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "answer" and set(kinds[:-1]) == {"delta"}, kinds
    deltas = [AnswerDelta.model_validate_json(data) for _, data in events[:-1]]
    answer = Answer.model_validate_json(events[-1][1])
    assert [d.seq for d in deltas] == list(range(len(deltas)))
    assert {d.query_id for d in deltas} == {answer.query_id}
    assert "".join(d.text for d in deltas) == answer.text
    assert "25 December 2021" in answer.text
    assert answer.citations[0].doc_id == "webb"
