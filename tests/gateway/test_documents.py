"""Doc changes through the gateway and the real chunker and embedder: 202 at once, then the
index's per-doc state shows the version, chunk count and deletion; a question finds the doc."""

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from shared.contracts import Answer, DocIndexed, IndexOutcome
from tests.gateway.conftest import Stack

pytestmark = pytest.mark.integration

LEAVE = (
    "# Leave policy\n\nStaff get 30 days of paid leave per year.\n\n## Carry-over\n\n"
    "Up to five unused days carry over into the next year, if approved by the quokka committee."
)


async def state_when(client: httpx.AsyncClient, doc_id: str, version: int) -> dict[str, object]:
    """The doc's state once the index serves `version` (or fails after 60 s)."""
    for _ in range(600):
        response = await client.get(f"/v1/documents/{doc_id}")
        if response.status_code == 200 and response.json()["version"] == version:
            return dict(response.json())
        assert response.status_code in (200, 404), response.text
        await asyncio.sleep(0.1)
    pytest.fail(f"{doc_id} v{version} was not indexed within 60 s")


async def outcome(redis: Redis, stack: Stack, doc_id: str, version: int) -> IndexOutcome:
    """The embedder's freshness ack of `doc_id` at `version` (fails after 60 s)."""
    for _ in range(600):
        for _, fields in await redis.xrange(stack.streams.indexed):
            ack = DocIndexed.model_validate_json(fields[b"event"])
            if (ack.doc_id, ack.version) == (doc_id, version):
                return ack.outcome
        await asyncio.sleep(0.1)
    pytest.fail(f"no ack of {doc_id} v{version} within 60 s")


async def test_upsert_is_indexed_answered_then_deleted(
    client: httpx.AsyncClient, redis: Redis, stack: Stack
) -> None:
    doc_id = "handbook/leave"
    assert (await client.get(f"/v1/documents/{doc_id}")).status_code == 404
    posted = await client.post(
        "/v1/documents", json={"doc_id": doc_id, "title": "Leave policy", "text": LEAVE}
    )
    assert posted.status_code == 202, posted.text
    accepted = posted.json()
    assert accepted["doc_id"] == doc_id and accepted["event_id"]

    state = await state_when(client, doc_id, accepted["version"])
    assert (
        state["deleted"] is False and isinstance(state["n_chunks"], int) and state["n_chunks"] >= 1
    )
    assert state["indexed_at"]

    answer = Answer.model_validate_json(
        (
            await client.post("/v1/query", json={"text": "Which committee approves carry-over?"})
        ).content
    )
    assert "quokka" in answer.text
    assert (answer.citations[0].doc_id, answer.citations[0].version) == (
        doc_id,
        accepted["version"],
    )

    deleted = await client.delete(f"/v1/documents/{doc_id}")
    assert deleted.status_code == 202
    assert deleted.json()["version"] > accepted["version"]
    state = await state_when(client, doc_id, deleted.json()["version"])
    assert state["deleted"] is True and state["n_chunks"] == 0

    # an upstream version older than the delete cannot bring the document back
    stale = await client.post("/v1/documents", json={"doc_id": doc_id, "text": LEAVE, "version": 3})
    assert stale.status_code == 202
    assert await outcome(redis, stack, doc_id, 3) == IndexOutcome.STALE
    state = await state_when(client, doc_id, deleted.json()["version"])
    assert state["deleted"] is True


async def test_explicit_versions_update_the_state(client: httpx.AsyncClient, stack: Stack) -> None:
    for version, text in (
        (5, "Version five mentions the narwhal."),
        (6, "Six: the walrus.\n\n" * 40),
    ):
        body = {"doc_id": "zoo", "text": text, "version": version}
        assert (await client.post("/v1/documents", json=body)).status_code == 202
        state = await state_when(client, "zoo", version)
        assert state["deleted"] is False and state["n_chunks"] >= 1
