"""Generator stage: `rag.reranked` → answers on the reply stream.
Run: `faststream run services.generator.app:app`."""

from functools import partial

from services.generator.answering import answer_batch
from services.generator.chat import ChatBackend
from services.generator.settings import GeneratorSettings
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
app = stage.app()
if chat is not None:
    app.after_shutdown(chat.aclose)
