"""The generator's logic: one `Reranked` in; `AnswerDelta`s (if the query streams), one `Answer`.

Order of decisions:

1. Abstain ("Not found in the knowledge base.", `abstained=True`, no citations) when there are
   no candidates or `relevance.abstention_reason` says the context is too weak.
2. Answer with the configured backend. `extractive` abstains too when no sentence shares a
   term with the question; an LLM answer without citations that says "not found in the
   knowledge base" is marked `abstained=True` (its text is kept).
3. Provider failure (`ProviderError`: unreachable, timeout, HTTP error, empty answer): with
   `fallback_to_extractive` (default) the answer is extractive, `model="extractive"` and
   `error` reads "openai backend failed: <reason>; answered extractively". Without it the
   Answer has empty text and only the `error`. No provider exception escapes.

Streaming: deltas carry `seq` 0, 1, 2, ... and, concatenated, equal the final `Answer.text`
(markers are cleaned on the fly). The one exception: a stream that fails after some deltas
were sent ends with an extractive `Answer` that replaces them, and its `error` says so. The
final `Answer` is always authoritative.
"""

import time
from collections.abc import AsyncIterator, Sequence

from services.generator.chat import ChatBackend, ProviderError
from services.generator.citations import MarkerFilter, build_citations, clean_markers
from services.generator.extractive import EXTRACTIVE_MODEL, answer_extractively
from services.generator.prompting import build_messages
from services.generator.relevance import ABSTAIN_TEXT, abstention_reason, says_not_found
from services.generator.settings import GeneratorSettings
from shared.contracts.answers import Answer, AnswerDelta, Citation, Usage
from shared.contracts.queries import Reranked
from shared.logging import get_logger

log = get_logger(__name__)

GeneratorEvent = AnswerDelta | Answer


class _Run:
    """One generation: numbers the deltas and stamps the final Answer."""

    def __init__(self, reranked: Reranked) -> None:
        self.reranked = reranked
        self.query = reranked.query
        self.started = time.perf_counter()
        self.seq = 0

    def delta(self, text: str) -> AnswerDelta:
        delta = AnswerDelta(query_id=self.query.query_id, seq=self.seq, text=text)
        self.seq += 1
        return delta

    def answer(
        self,
        text: str,
        *,
        model: str,
        citations: Sequence[Citation] = (),
        abstained: bool = False,
        error: str | None = None,
        usage: Usage | None = None,
    ) -> Answer:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        return Answer(
            query_id=self.query.query_id,
            text=text,
            citations=tuple(citations),
            abstained=abstained,
            error=error,
            model=model,
            reranker=self.reranked.reranker,
            rerank_degraded=self.reranked.rerank_degraded,
            timings=self.reranked.timings.model_copy(update={"generate_ms": elapsed_ms}),
            usage=usage or Usage(),
            possibly_stale=self.reranked.possibly_stale,
        )


async def generate(
    reranked: Reranked, settings: GeneratorSettings, *, chat: ChatBackend | None = None
) -> AsyncIterator[GeneratorEvent]:
    """Answer `reranked.query` from `reranked.candidates`; see the module doc for the rules.

    `chat` is the LLM backend for `backend="openai"`; pass one long-lived `ChatBackend` per
    process. Without it a client is created for this call and closed after it.
    """
    run = _Run(reranked)
    reason = abstention_reason(reranked.candidates, settings)
    if reason is not None:
        log.info("generator.abstain", query_id=run.query.query_id, reason=reason)
        if run.query.stream:
            yield run.delta(ABSTAIN_TEXT)
        yield run.answer(ABSTAIN_TEXT, model="", abstained=True)
        return
    if settings.backend == "extractive":
        async for event in _extractive(run, settings):
            yield event
        return
    backend = chat or ChatBackend(settings)
    try:
        async for event in _llm(run, settings, backend):
            yield event
    finally:
        if chat is None:
            await backend.aclose()


async def _extractive(
    run: _Run, settings: GeneratorSettings, *, error: str | None = None, stream: bool = True
) -> AsyncIterator[GeneratorEvent]:
    found = answer_extractively(
        run.query.text, run.reranked.candidates, max_sentences=settings.extractive_sentences
    )
    if found is None:
        if stream and run.query.stream:
            yield run.delta(ABSTAIN_TEXT)
        yield run.answer(ABSTAIN_TEXT, model=EXTRACTIVE_MODEL, abstained=True, error=error)
        return
    if stream and run.query.stream:
        for index, part in enumerate(found.parts):
            yield run.delta(part if index == 0 else f" {part}")
    yield run.answer(found.text, model=EXTRACTIVE_MODEL, citations=found.citations, error=error)


async def _llm(
    run: _Run, settings: GeneratorSettings, backend: ChatBackend
) -> AsyncIterator[GeneratorEvent]:
    candidates = run.reranked.candidates
    messages = build_messages(
        run.query.text, candidates, max_context_chars=settings.max_context_chars
    )
    usage: Usage | None
    try:
        if run.query.stream:
            cleaner = MarkerFilter(len(candidates))
            stream = backend.stream(messages)
            async for raw in stream:
                piece = cleaner.feed(raw)
                if piece:
                    yield run.delta(piece)
            piece = cleaner.flush()
            if piece:
                yield run.delta(piece)
            text, model, usage = cleaner.text, stream.model, stream.usage
        else:
            completion = await backend.complete(messages)
            text = clean_markers(completion.text, len(candidates)).strip()
            model, usage = completion.model, completion.usage
        if not text:
            raise ProviderError("the model returned an empty answer")
    except ProviderError as exc:
        async for event in _fallback(run, settings, exc):
            yield event
        return
    citations = build_citations(text, candidates)
    yield run.answer(
        text,
        model=model or settings.model,
        citations=citations,
        abstained=not citations and says_not_found(text),
        usage=usage,
    )


async def _fallback(
    run: _Run, settings: GeneratorSettings, exc: ProviderError
) -> AsyncIterator[GeneratorEvent]:
    streamed = run.seq
    log.warning(
        "generator.provider_failed",
        query_id=run.query.query_id,
        error=str(exc),
        deltas_sent=streamed,
        fallback=settings.fallback_to_extractive,
    )
    error = f"openai backend failed: {exc}"
    if not settings.fallback_to_extractive:
        yield run.answer("", model=settings.model, error=error)
        return
    error += "; answered extractively"
    if streamed:
        error += f" (this answer replaces the {streamed} deltas already streamed)"
    async for event in _extractive(run, settings, error=error, stream=not streamed):
        yield event
