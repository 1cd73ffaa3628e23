"""Generator stage: `rag.reranked` → answers on the reply stream.
Run: `faststream run services.generator.app:app`."""

from functools import partial

from services.generator.answering import answer_batch
from services.generator.chat import ChatBackend
from services.generator.settings import GeneratorSettings
from shared.contracts.answers import REPLY
from shared.contracts.queries import RERANKED
from shared.replies import error_answer
from shared.stage import Stage

settings = GeneratorSettings()
stage = Stage("generator", settings)
chat = ChatBackend(settings) if settings.backend == "openai" else None
stage.subscribe(
    stage.streams.reranked,
    RERANKED,
    partial(
        answer_batch, settings=settings, chat=chat, streams=stage.streams, publish=stage.publish
    ),
    on_reject=lambda entry, reason: error_answer(entry, reason, stage.streams),
)
stage.publishes(
    stage.streams.answers,
    REPLY,
    "Answers by `query_id`, on the query's `reply_to` (`rag.answers` or a stream under it), "
    "else on `rag.answers`: AnswerDelta pieces first when the query asked for `stream`, "
    "then one final Answer (with `error` set if the query was rejected).",
)
app = stage.app()
if chat is not None:
    app.after_shutdown(chat.aclose)
