"""The `ragstream` command: run a stage, run them all, ingest documents, ask questions."""

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ragstream import allinone
from ragstream.evaluation.arguments import add_eval_arguments, add_train_arguments

DATA_DIR = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
err = Console(stderr=True)
out = Console()


def _redis_url() -> str:
    return allinone.configured_redis_url(DATA_DIR) or "redis://127.0.0.1:6379/0"


def cmd_run(args: argparse.Namespace) -> int:
    """One stage in the foreground: what a Kubernetes Deployment starts."""
    module = importlib.import_module(f"services.{args.stage}.app")
    asyncio.run(module.app.run())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if args.llm == "local":
            from ragstream.local_llm import start_local_llm

            llm = start_local_llm()
            stack.callback(llm.stop)
            err.print(f"local LLM (SmolLM2 on llama.cpp) at {llm.base_url}")
            env |= llm.env()
        from shared.settings import StoreSettings

        if (args.store or StoreSettings().backend) == "weaviate":
            env |= _weaviate_env(stack)
        else:
            env["RAG_STORE_BACKEND"] = "lancedb"
        return _up(env)
    raise AssertionError("unreachable")


def _weaviate_env(stack: contextlib.ExitStack) -> dict[str, str]:
    """`WEAVIATE_URL` if set (an existing cluster), else a local server, started here."""
    from ragstream.weaviate_server import configured_or_local
    from shared.settings import store_env

    with err.status("Weaviate: WEAVIATE_URL, else a local server (a first run builds it)…"):
        settings = stack.enter_context(configured_or_local(DATA_DIR / "weaviate"))
    err.print(f"Weaviate at {settings.weaviate_url}")
    return store_env(settings)


def _up(extra_env: dict[str, str]) -> int:
    pipeline = allinone.start_pipeline(DATA_DIR, allinone.env_redis_url(), extra_env=extra_env)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        pipeline.wait_ready(allinone.STAGES)
        err.print(f"[green]ragstream is up[/] on {pipeline.redis_url} (Ctrl-C to stop)")
        while not stop.wait(1.0):
            for stage, child in pipeline.children.items():
                if child.poll() is not None:
                    err.print(f"[yellow]stage {stage} exited ({child.returncode}); restarting[/]")
                    pipeline.start_stage(stage, extra_env)
    finally:
        err.print("stopping…")
        pipeline.stop()
    return 0


def cmd_weaviate(args: argparse.Namespace) -> int:
    """`build`: the pinned server, once, into the cache; `serve`: run it until Ctrl-C."""
    from ragstream.weaviate_server import (
        WEAVIATE_TAG,
        WeaviateUnavailable,
        server_binary,
        start_weaviate,
    )

    try:
        if args.action == "build":
            with err.status(f"building weaviate-server {WEAVIATE_TAG} (minutes the first time)…"):
                binary = server_binary()
            err.print(f"weaviate-server {WEAVIATE_TAG}: {binary}")
            return 0
        server = start_weaviate(DATA_DIR / "weaviate")
    except WeaviateUnavailable as exc:
        err.print(f"[red]Weaviate unavailable:[/] {exc}", markup=True, highlight=False)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"Weaviate {WEAVIATE_TAG} at {server.url}, gRPC port {server.ports.grpc} (Ctrl-C)")
    for name, value in server.env().items():
        out.print(f"export {name}={value}", highlight=False)
    try:
        while not stop.wait(1.0) and server.process.poll() is None:
            pass
    finally:
        server.stop()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    from ragstream.ingest import ingest, load_documents

    docs = load_documents(Path(args.path))
    if not docs:
        err.print(f"[red]no documents found in {args.path}[/]")
        return 1

    async def run() -> dict[str, object]:
        redis = Redis.from_url(_redis_url())
        try:
            with Progress(
                TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=err,
            ) as progress:  # fmt: skip
                task = progress.add_task("indexing", total=len(docs))
                report = await ingest(
                    redis, docs, timeout_s=args.timeout,
                    on_progress=lambda n: progress.advance(task, n),
                )  # fmt: skip
        finally:
            await redis.aclose()
        for letter in report.dead_letters:
            err.print(f"[yellow]dead-lettered[/] {letter.doc_id}: {letter.reason}")
        return report.summary()

    summary = asyncio.run(run())
    out.print_json(json.dumps(summary))
    settled = int(summary["indexed"]) + int(summary["stale"]) + int(summary["dead_lettered"])  # type: ignore[call-overload]
    return 0 if settled == len(docs) else 1


def cmd_ask(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    from ragstream.render import print_answer
    from shared.client import ask
    from shared.contracts import AnswerDelta

    def show_delta(delta: AnswerDelta) -> None:
        if not args.json:
            out.print(delta.text, end="", soft_wrap=True, highlight=False)

    async def run() -> int:
        redis = Redis.from_url(_redis_url())
        try:
            answer = await ask(
                redis, args.question, timeout=args.timeout, top_n=args.top_n,
                stream=args.stream, on_delta=show_delta,
            )  # fmt: skip
        finally:
            await redis.aclose()
        if args.stream and not args.json:
            out.print()
        if args.json:
            out.print_json(answer.model_dump_json())
        else:
            print_answer(out, args.question, answer)
        return 1 if answer.error else 0

    return asyncio.run(run())


def cmd_demo(args: argparse.Namespace) -> int:
    from ragstream.demo import run_demo

    return run_demo(DATA_DIR / "demo", out)


def cmd_dlq(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    from ragstream import dlq

    async def run() -> int:
        redis = Redis.from_url(_redis_url())
        try:
            return await dlq.run(args, redis, out)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def cmd_eval(args: argparse.Namespace) -> int:
    from ragstream.evaluation.commands import run_eval

    return run_eval(args, out, err)


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from ragstream.evaluation.commands import run_train_reranker

    return run_train_reranker(args, out, err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one stage in the foreground")
    run.add_argument("stage", choices=allinone.STAGES)
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", help="run every stage; starts an embedded Redis if none is set")
    up.add_argument(
        "--llm", choices=("none", "local"), default="none",
        help="local: serve SmolLM2 with llama.cpp (the `llm` extra) and generate with it",
    )  # fmt: skip
    up.add_argument(
        "--store", choices=("lancedb", "weaviate"),
        help="the index (default: RAG_STORE_BACKEND, else lancedb); weaviate: WEAVIATE_URL, "
        "else a local server built from source",
    )  # fmt: skip
    up.set_defaults(func=cmd_up)

    weaviate = sub.add_parser("weaviate", help="build or run a local Weaviate server")
    weaviate.add_argument("action", choices=("build", "serve"))
    weaviate.set_defaults(func=cmd_weaviate)

    ingest = sub.add_parser("ingest", help="publish a folder of .md/.txt or a JSONL and wait")
    ingest.add_argument("path")
    ingest.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait")
    ingest.set_defaults(func=cmd_ingest)

    ask = sub.add_parser("ask", help="ask a question; prints the answer with its sources")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print the Answer event as JSON")
    ask.add_argument("--stream", action="store_true", help="show tokens as they arrive")
    ask.add_argument("--top-n", type=int, default=5, help="chunks given to the generator")
    ask.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser("demo", help="start everything, ingest the sample corpus, ask, stop")
    demo.set_defaults(func=cmd_demo)

    from ragstream.dlq import add_parser as add_dlq_parser

    add_dlq_parser(sub).set_defaults(func=cmd_dlq)

    evaluate = sub.add_parser("eval", help="retrieval quality on a BEIR dataset (JSON result)")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    train = sub.add_parser("train-reranker", help="fine-tune a cross-encoder reranker")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train_reranker)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
