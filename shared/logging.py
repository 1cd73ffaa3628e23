"""structlog logging with per-message context (event_id, doc_id, query_id) bound.

JSON lines for machines, or lines rendered for people: `RAG_LOG_FORMAT` is `json`, `console`
or `auto` (the default: console when stderr is a terminal, JSON otherwise, as in a pod).
"""

import logging
import os
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]
FORMAT_ENV = "RAG_LOG_FORMAT"
FORMAT_CHOICES = ("auto", "json", "console")


def resolve_format(choice: str | None = None, stream: TextIO | None = None) -> LogFormat:
    """`choice` if json/console, else `RAG_LOG_FORMAT` if so, else console iff `stream` (default
    stderr) is a terminal."""
    for wanted in (choice, os.environ.get(FORMAT_ENV)):
        if wanted in ("json", "console"):
            return "json" if wanted == "json" else "console"
    return "console" if (stream or sys.stderr).isatty() else "json"


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> LogFormat:
    """Route structlog (and stdlib logging, e.g. FastStream's) to stderr; JSON lines if `json`,
    else per `RAG_LOG_FORMAT` (see `resolve_format`). Returns the format chosen."""
    fmt: LogFormat = resolve_format() if json is None else ("json" if json else "console")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared_processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared_processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared_processors)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return fmt


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
