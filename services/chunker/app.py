"""Chunker stage: `rag.docs` → `rag.chunks`. Run: `faststream run services.chunker.app:app`."""

from functools import partial

from services.chunker.chunking import Chunker, load_tokenizer
from services.chunker.events import chunk_batch_async
from services.chunker.settings import ChunkerSettings
from shared.contracts import CHUNK_EVENT, DOC_EVENT
from shared.stage import Stage

settings = ChunkerSettings()
stage = Stage("chunker", settings)
chunker = Chunker(load_tokenizer(settings.tokenizer_path), settings.max_tokens)
stage.subscribe(
    stage.streams.docs,
    DOC_EVENT,
    partial(
        chunk_batch_async,
        chunker=chunker,
        max_chunks=settings.max_chunks_per_doc,
        out_stream=stage.streams.chunks,
        redis=stage.redis,
        indexed_stream=stage.streams.indexed,
    ),
)
stage.publishes(
    stage.streams.chunks,
    CHUNK_EVENT,
    "A doc version's complete, ordered chunk list (ChunkedDoc), or DocUnchanged when the index "
    "already serves the same content; a delete passes through.",
)
app = stage.app()
