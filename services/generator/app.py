"""Generator stage: `rag.reranked` → answers on the reply stream; `rag.indexed` →
`answer.invalidated` to subscribed answers (and their queries again, with `regenerate`).
Run: `faststream run services.generator.app:app`."""

from functools import partial

from pydantic import TypeAdapter

from services.generator.answering import answer_batch
from services.generator.chat import ChatBackend
from services.generator.invalidation import invalidate_batch
from services.generator.one_answer import ONE_ANSWER_PER_QUERY
from services.generator.settings import GeneratorSettings
from services.generator.subscribing import Subscriptions
from shared.contracts import DocIndexed, Query
from shared.contracts.answers import REPLY
from shared.contracts.queries import RERANKED
from shared.replies import deadline_answer, error_answer
from shared.stage import Stage

settings = GeneratorSettings()
stage = Stage("generator", settings)
chat = ChatBackend(settings) if settings.backend == "openai" else None
subscriptions = Subscriptions(stage.redis, settings, stage.streams)
stage.subscribe(
    stage.streams.reranked,
    RERANKED,
    subscriptions.answering(
        partial(
            answer_batch, settings=settings, chat=chat, streams=stage.streams, publish=stage.publish
        )
    ),
    on_reject=lambda entry, reason: error_answer(entry, reason, stage.streams),
    deadline_of=lambda reranked: reranked.query.deadline,
    on_expired=lambda reranked: deadline_answer(reranked.query, stage.streams, "generator"),
    exclusive=ONE_ANSWER_PER_QUERY,
)
stage.publishes(
    stage.streams.answers,
    REPLY,
    "Answers by `query_id`, on the query's `reply_to` (`rag.answers` or a stream under it), "
    "else on `rag.answers`: AnswerDelta pieces first when the query asked for `stream`, "
    "then one final Answer (with `error` set if the query was rejected or past its deadline).",
)
stage.subscribe(
    stage.streams.indexed,
    TypeAdapter(DocIndexed),
    partial(invalidate_batch, redis=stage.redis, streams=stage.streams),
)
stage.keep_history(stage.streams.indexed)  # its history is read by others (status, ingest)
stage.project_under(stage.streams.answers, subscriptions.on_reply)
stage.project(stage.streams.queries, subscriptions.on_query)
stage.publishes(
    stage.streams.queries,
    Query,
    "A subscribed query with `regenerate` again, after a doc its Answer cited changed: a new "
    "event, same `query_id`, `after` the changed versions; its Answer `supersedes` the old.",
)
app = stage.app()
if chat is not None:
    app.after_shutdown(chat.aclose)
