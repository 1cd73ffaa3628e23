"""Reranked candidates in; streamed deltas and one final Answer out, on the reply stream."""

from collections.abc import Awaitable, Callable, Sequence

import structlog

from services.generator.chat import ChatBackend
from services.generator.generation import generate
from services.generator.settings import GeneratorSettings
from shared import metrics
from shared.bounded import map_bounded
from shared.contracts import Answer, Reranked
from shared.contracts.base import utcnow
from shared.deadlines import is_past
from shared.errors import PermanentError
from shared.replies import deadline_answer_now, reply_stream
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication

Publish = Callable[[Sequence[Publication]], Awaitable[None]]


async def answer_one(
    reranked: Reranked,
    settings: GeneratorSettings,
    chat: ChatBackend | None,
    streams: StreamSettings,
    publish: Publish,
) -> Outcome:
    """Deltas are published as they come; the final Answer is returned, to be published in the
    same transaction that acks the entry."""
    query = reranked.query
    with structlog.contextvars.bound_contextvars(query_id=query.query_id):
        try:
            reply = reply_stream(query, streams)
        except PermanentError as exc:
            return exc
        if is_past(query.deadline):  # it may have waited for its turn
            return await deadline_answer_now(reranked, query, streams, "generator")
        final: Answer | None = None
        async for event in generate(reranked, settings, chat=chat):
            if isinstance(event, Answer):
                final = event
            else:
                await publish([Publication(reply, event)])
        if final is None:  # generate() always ends with an Answer
            raise RuntimeError("generator produced no answer")
        total_ms = (utcnow() - query.emitted_at).total_seconds() * 1000
        metrics.query_latency_seconds.labels("generator").observe(total_ms / 1000)
        metrics.llm_tokens.labels("prompt").inc(final.usage.prompt_tokens)
        metrics.llm_tokens.labels("completion").inc(final.usage.completion_tokens)
        final = final.model_copy(
            update={"timings": final.timings.model_copy(update={"total_ms": total_ms})}
        )
        return [Publication(reply, final)]


async def answer_batch(
    events: Sequence[Reranked],
    settings: GeneratorSettings,
    chat: ChatBackend | None,
    streams: StreamSettings,
    publish: Publish,
) -> list[Outcome]:
    """Queries of one batch are answered concurrently (an LLM call is mostly waiting), at most
    `settings.concurrency` at a time."""

    async def one(event: Reranked) -> Outcome:
        return await answer_one(event, settings, chat, streams, publish)

    return await map_bounded(one, events, settings.concurrency)
