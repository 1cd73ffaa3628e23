"""`ragstream demo`: start everything on an embedded server, ingest the bundled sample corpus,
ask a few questions, and stop."""

import asyncio
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis
from rich.console import Console
from rich.markup import escape

from ragstream.allinone import STAGES, env_redis_url, running
from ragstream.ingest import ingest, load_documents
from ragstream.render import print_answer
from shared.client import ask

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "sample-corpus"
QUESTIONS = (
    "Who discovered the moons of Mars?",
    "When did the James Webb Space Telescope launch?",
    "What is the capital of Australia?",
)


async def _ingest_and_ask(redis_url: str, console: Console) -> bool:
    redis = Redis.from_url(redis_url)
    try:
        report = await ingest(redis, load_documents(SAMPLE_CORPUS), timeout_s=300)
        console.print(f"[green]✓[/] {escape(report.describe())}", highlight=False)
        answered = True
        for question in QUESTIONS:
            answer = await ask(redis, question, timeout=60)
            print_answer(console, question, answer)
            answered = answered and answer.error is None
        return answered and report.indexed == report.docs
    finally:
        await redis.aclose()


def run_demo(
    data_dir: Path, console: Console, *, on_ready: Callable[[str], None] | None = None
) -> int:
    console.print(f"starting {', '.join(STAGES)} …")
    with running(data_dir, env_redis_url(), on_ready=on_ready) as pipeline:
        ok = asyncio.run(_ingest_and_ask(pipeline.redis_url, console))
    return 0 if ok else 1
