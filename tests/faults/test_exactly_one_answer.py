"""Exactly one Answer per query, and one sequence of deltas, when generators freeze and siblings
reclaim: two generator stages in this process, wired like `services.generator.app` (the real
answering logic, the extractive backend, `ONE_ANSWER_PER_QUERY`), against a real Redis.

A slow step is injected into generation (`SlowStep`): the first generator stops mid-answer until
the test thaws it. Its background jobs are not started, so, as in a frozen process, its
heartbeat does not run either; after `reclaim_idle_ms` the other generator's reclaim loop takes
the entry over. What the client reads on the reply stream is then counted: Answers, and the
`seq` of the deltas (0, 1, ... without repeats: one generator's sequence).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from services.generator import answering
from services.generator.answering import answer_batch
from services.generator.generation import GeneratorEvent, generate
from services.generator.one_answer import ONE_ANSWER_PER_QUERY
from services.generator.settings import GeneratorSettings
from shared import wire
from shared.contracts import Answer, AnswerDelta, Reranked
from shared.contracts.answers import REPLY
from shared.contracts.queries import RERANKED
from shared.replies import error_answer
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Stage
from tests.generator import eiffel_candidates, reranked

RECLAIM_IDLE_MS = 300
FROZEN_S = 0.8
"""Longer than RECLAIM_IDLE_MS (and the lease, which lasts as long): only a lower bound."""
QUESTION = "When was the Eiffel Tower completed and how tall is the Eiffel Tower?"

MakeGenerator = Callable[[str], Awaitable[Stage]]


class SlowStep:
    """`generate` with a slow step: the first call stops before its event number `after` until
    `thaw` is set (`frozen` is set when it stops); later calls run through (`again` is set at
    the second)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.frozen = asyncio.Event()
        self.thaw = asyncio.Event()
        self.again = asyncio.Event()
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[GeneratorEvent]:
        self.calls += 1
        if self.calls > 1:
            self.again.set()
        return self._run(self.calls == 1, *args, **kwargs)

    async def _run(self, freeze: bool, *args: Any, **kwargs: Any) -> AsyncIterator[GeneratorEvent]:
        index = 0
        async for event in generate(*args, **kwargs):
            if freeze and index == self.after:
                self.frozen.set()
                await self.thaw.wait()
            yield event
            index += 1


@pytest.fixture
async def make_generator(
    redis_server: RedisServer, streams: StreamSettings
) -> AsyncIterator[MakeGenerator]:
    made: list[Stage] = []

    async def make(consumer: str) -> Stage:
        settings = GeneratorSettings(
            backend="extractive", consumer=consumer, reclaim_idle_ms=RECLAIM_IDLE_MS, http_port=0
        )
        redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
        stage = Stage("generator", settings, redis_settings, streams)
        stage.subscribe(  # as services.generator.app does
            streams.reranked,
            RERANKED,
            partial(
                answer_batch, settings=settings, chat=None, streams=streams, publish=stage.publish
            ),
            on_reject=lambda entry, reason: error_answer(entry, reason, streams),
            exclusive=ONE_ANSWER_PER_QUERY,
        )
        await stage.start()
        made.append(stage)
        return stage

    yield make
    for stage in made:
        await stage.redis.aclose()


def slow_step(monkeypatch: pytest.MonkeyPatch, after: int) -> SlowStep:
    step = SlowStep(after)
    monkeypatch.setattr(answering, "generate", step)
    return step


async def ask(redis: Redis, streams: StreamSettings, event: Reranked | None = None) -> bytes:
    """Publish a streaming query's reranked candidates, as the reranker would."""
    event = event or reranked(QUESTION, eiffel_candidates(), stream=True)
    entry_id: bytes = await redis.xadd(streams.reranked, wire.encode(event))
    return entry_id


async def read(redis: Redis, stream: str, consumer: str) -> list[Entry]:
    response = await redis.xreadgroup("generator", consumer, {stream: ">"}, count=10)
    return [Entry(i, f) for _, entries in response for i, f in entries]


async def replies(redis: Redis, streams: StreamSettings) -> tuple[list[int], list[Answer], str]:
    """What a client reads on the reply stream: the deltas' seq, the Answers, the deltas' text."""
    seqs: list[int] = []
    answers: list[Answer] = []
    text = ""
    for _, fields in await redis.xrange(streams.answers):
        event = REPLY.validate_json(fields[b"event"])
        if isinstance(event, AnswerDelta):
            seqs.append(event.seq)
            text += event.text
        elif isinstance(event, Answer):
            answers.append(event)
    return seqs, answers, text


async def expected() -> tuple[str, list[int]]:
    """The Answer's text and the deltas' seq of one uninterrupted generation."""
    settings = GeneratorSettings(backend="extractive")
    events = [
        e async for e in generate(reranked(QUESTION, eiffel_candidates(), stream=True), settings)
    ]
    answer = events[-1]
    assert isinstance(answer, Answer)
    return answer.text, [e.seq for e in events if isinstance(e, AnswerDelta)]


async def pending(redis: Redis, streams: StreamSettings) -> int:
    return int((await redis.xpending(streams.reranked, "generator"))["pending"])


async def wait_for(event: asyncio.Event, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        await event.wait()


@pytest.mark.parametrize("frozen_after", [0, 1], ids=["before-the-first-delta", "mid-stream"])
async def test_a_reclaim_during_a_slow_streamed_generation_answers_once(
    make_generator: MakeGenerator,
    redis: Redis,
    streams: StreamSettings,
    monkeypatch: pytest.MonkeyPatch,
    frozen_after: int,
) -> None:
    step = slow_step(monkeypatch, after=frozen_after)
    a, b = await make_generator("gen-a"), await make_generator("gen-b")
    await ask(redis, streams)
    answering_a = asyncio.create_task(
        a.deliver(a.subscriptions[0], await read(redis, streams.reranked, "gen-a"))
    )
    await wait_for(step.frozen)
    await asyncio.sleep(FROZEN_S)  # gen-a is frozen: no heartbeat, its lease runs out

    assert await b.reclaim(b.subscriptions[0]) == 1  # gen-b takes over and answers
    await a._heartbeat()  # gen-a thaws: the heartbeat finds the entry gone, takes nothing back
    step.thaw.set()
    await answering_a  # gen-a's remaining deltas and its Answer are withheld

    seqs, answers, text = await replies(redis, streams)
    assert len(answers) == 1
    answer, all_seqs = await expected()
    assert answers[0].text == answer
    assert seqs == list(range(len(seqs)))  # one sequence: no repeats, no interleaving
    if frozen_after == 0:  # gen-a streamed nothing: gen-b's deltas, complete
        assert seqs == all_seqs and text == answer
    else:  # gen-a streamed first: only its deltas, up to where it froze; the Answer is whole
        assert seqs == [0] and answer.startswith(text)
    assert await pending(redis, streams) == 0
    assert step.calls == 2


async def test_a_generator_that_thaws_before_the_reclaimer_finishes_keeps_the_stream(
    make_generator: MakeGenerator,
    redis: Redis,
    streams: StreamSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gen-a froze after its first delta; gen-b reclaims; gen-a thaws first and streams on:
    its deltas go out (it streamed first), its Answer does not (the entry is gen-b's), and
    gen-b's deltas do not; gen-b's Answer is the one."""
    step = slow_step(monkeypatch, after=1)
    a, b = await make_generator("gen-a"), await make_generator("gen-b")
    await ask(redis, streams)
    answering_a = asyncio.create_task(
        a.deliver(a.subscriptions[0], await read(redis, streams.reranked, "gen-a"))
    )
    await wait_for(step.frozen)
    await asyncio.sleep(FROZEN_S)
    b_gate = asyncio.Event()
    real_commit = b.commit

    async def commit_later(*args: Any, **kwargs: Any) -> None:  # gen-b is slow to commit
        await b_gate.wait()
        await real_commit(*args, **kwargs)

    monkeypatch.setattr(b, "commit", commit_later)
    reclaiming = asyncio.create_task(b.reclaim(b.subscriptions[0]))
    await wait_for(step.again)  # gen-b generates (its deltas are withheld: gen-a streamed first)
    step.thaw.set()
    await answering_a
    seqs, answers, _ = await replies(redis, streams)
    assert (seqs, answers) == ((await expected())[1], [])  # gen-a's deltas; its Answer withheld
    b_gate.set()
    assert await reclaiming == 1

    seqs, answers, text = await replies(redis, streams)
    answer, all_seqs = await expected()
    assert len(answers) == 1 and answers[0].text == answer
    assert seqs == all_seqs and text == answer
    assert await pending(redis, streams) == 0


async def test_two_generators_that_both_finish_a_duplicated_query_answer_once(
    make_generator: MakeGenerator,
    redis: Redis,
    streams: StreamSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same query event twice on the reranked stream (e.g. a retried upstream commit):
    gen-a freezes on the first past its lease, gen-b answers the second; gen-a thaws and
    finishes too. One Answer; gen-a's entry is acked without outputs."""
    step = slow_step(monkeypatch, after=0)
    a, b = await make_generator("gen-a"), await make_generator("gen-b")
    event = reranked(QUESTION, eiffel_candidates(), stream=True)
    await ask(redis, streams, event)
    answering_a = asyncio.create_task(
        a.deliver(a.subscriptions[0], await read(redis, streams.reranked, "gen-a"))
    )
    await wait_for(step.frozen)
    await asyncio.sleep(FROZEN_S)  # gen-a's lease on the query runs out
    await ask(redis, streams, event)
    await b.deliver(b.subscriptions[0], await read(redis, streams.reranked, "gen-b"))
    step.thaw.set()
    await answering_a

    seqs, answers, text = await replies(redis, streams)
    answer, all_seqs = await expected()
    assert len(answers) == 1 and answers[0].text == answer
    assert seqs == all_seqs and text == answer
    assert await pending(redis, streams) == 0
    assert step.calls == 2


async def test_a_duplicate_waits_while_a_live_sibling_answers_then_is_acked(
    make_generator: MakeGenerator,
    redis: Redis,
    streams: StreamSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gen-a is slow but alive (its heartbeat renews its lease): gen-b, handed a duplicate of
    the query, does not generate; it leaves the entry pending, and once gen-a has answered, the
    redelivered duplicate is acked without outputs."""
    step = slow_step(monkeypatch, after=1)
    a, b = await make_generator("gen-a"), await make_generator("gen-b")
    event = reranked(QUESTION, eiffel_candidates(), stream=True)
    await ask(redis, streams, event)
    answering_a = asyncio.create_task(
        a.deliver(a.subscriptions[0], await read(redis, streams.reranked, "gen-a"))
    )
    await wait_for(step.frozen)
    await a._heartbeat()
    await ask(redis, streams, event)
    duplicate = await read(redis, streams.reranked, "gen-b")
    await b.deliver(b.subscriptions[0], duplicate)
    assert step.calls == 1  # gen-b did not generate
    assert await pending(redis, streams) == 2  # its entry waits

    step.thaw.set()
    await answering_a
    await b.deliver(b.subscriptions[0], duplicate)  # its redelivery, as the reclaim loop would
    assert step.calls == 1

    seqs, answers, text = await replies(redis, streams)
    answer, all_seqs = await expected()
    assert len(answers) == 1 and answers[0].text == answer
    assert seqs == all_seqs and text == answer
    assert await pending(redis, streams) == 0


async def test_a_regenerated_query_is_answered_again(
    make_generator: MakeGenerator, redis: Redis, streams: StreamSettings
) -> None:
    """Same query id, a new query event (`regenerate`): a new request, answered."""
    gen = await make_generator("gen-a")
    first = reranked(QUESTION, eiffel_candidates(), stream=True)
    again = first.model_copy(update={"query": first.query.model_copy(update={"event_id": uuid4()})})
    for event in (first, again):
        await ask(redis, streams, event)
        await gen.deliver(gen.subscriptions[0], await read(redis, streams.reranked, "gen-a"))
    seqs, answers, _ = await replies(redis, streams)
    assert len(answers) == 2 and seqs == 2 * (await expected())[1]
    assert await pending(redis, streams) == 0
