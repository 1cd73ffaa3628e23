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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from redis.asyncio import Redis
from rich.console import Console
from rich.markup import escape

from ragstream import allinone
from ragstream.child_processes import watch_parent
from ragstream.evaluation.arguments import (
    add_cv_parser,
    add_eval_arguments,
    add_train_arguments,
    add_train_embedder_arguments,
)
from ragstream.output import START_HINT, CommandFailed, Output, redacted
from shared.errors import REDIS_DOWN
from shared.generations import GenerationError
from shared.logging import FORMAT_CHOICES, FORMAT_ENV, configure_logging, resolve_format

if TYPE_CHECKING:
    from ragstream.sync import SyncState

DATA_DIR = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
err = Console(stderr=True)
out = Console()
Command = Callable[[argparse.Namespace, Output], int]
STATE_HELP = (
    "the sync state file: doc id -> version and content hash (default: "
    "<data dir>/sync/<hash of the folder's absolute path>.json)"
)


def _redis_url() -> str:
    return allinone.configured_redis_url(DATA_DIR) or "redis://127.0.0.1:6379/0"


def _redis() -> Redis:
    return Redis.from_url(_redis_url())


def cmd_run(args: argparse.Namespace, say: Output) -> int:
    """One stage (or the gateway) in the foreground: what a Kubernetes Deployment starts."""
    structlog.contextvars.bind_contextvars(stage=args.stage)  # on each of its log lines
    watch_parent()  # started by `up`: stop (as on SIGTERM) if `up` is gone
    if args.stage == "gateway":
        from services.gateway.serve import main as serve_gateway

        serve_gateway()
        return 0
    module = importlib.import_module(f"services.{args.stage}.app")
    asyncio.run(module.app.run())
    return 0


def cmd_up(args: argparse.Namespace, say: Output) -> int:
    # Until `_up` is up and handles it, SIGTERM stops the start as Ctrl-C does: what was
    # started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if args.llm == "local":
            from ragstream.local_llm import start_local_llm

            try:
                llm = start_local_llm()
            except (RuntimeError, TimeoutError) as exc:
                raise CommandFailed("local llm unavailable", f"local LLM: {exc}") from None
            stack.callback(llm.stop)
            say.ok("llm ready", f"local LLM (SmolLM2 on llama.cpp) at {llm.base_url}")
            env |= llm.env()
        from shared.settings import StoreSettings

        if (args.store or StoreSettings().backend) == "weaviate":
            env |= _weaviate_env(stack, say)
        else:
            env["RAG_STORE_BACKEND"] = "lancedb"
        return _up(env, say)
    raise AssertionError("unreachable")


def _weaviate_env(stack: contextlib.ExitStack, say: Output) -> dict[str, str]:
    """`WEAVIATE_URL` if set (an existing cluster), else a local server, started here."""
    from ragstream.weaviate_server import configured_or_local
    from shared.settings import store_env

    with say.status("Weaviate: WEAVIATE_URL, else a local server (a first run builds it)…"):
        settings = stack.enter_context(configured_or_local(DATA_DIR / "weaviate"))
    say.ok("weaviate ready", f"Weaviate at {settings.weaviate_url}", url=settings.weaviate_url)
    return store_env(settings)


def _up(extra_env: dict[str, str], say: Output) -> int:
    pipeline = allinone.start_pipeline(DATA_DIR, allinone.env_redis_url(), extra_env=extra_env)
    url = redacted(pipeline.redis_url)
    try:
        if pipeline.server is not None:
            say.ok("redis ready", f"Redis (embedded) at {url}", url=url)
        with say.status("starting the stages…"):
            pipeline.wait_ready(
                allinone.STAGES,
                on_ready=lambda stage: say.stage_ready(stage, pipeline.http_ports.get(stage)),
            )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        text = f"ragstream is up on {url}: Ctrl-C stops it, `ragstream status` looks in"
        say.ok("up", text, url=url)
        while not stop.wait(1.0):
            for stage, child in pipeline.children.items():
                if child.poll() is not None:
                    text = f"{stage} exited with code {child.returncode}; restarting"
                    say.warn("stage restarted", text, stage=stage, code=child.returncode)
                    pipeline.start_stage(stage, extra_env)
    except allinone.StageFailed as exc:
        say.fail("stage failed", str(exc))
        return 1
    finally:
        with say.status("stopping…"):
            pipeline.stop()
        say.ok("stopped", "stopped")
    return 0


def cmd_weaviate(args: argparse.Namespace, say: Output) -> int:
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


def cmd_ingest(args: argparse.Namespace, say: Output) -> int:
    if args.sync:
        return cmd_ingest_sync(args, say)
    from ragstream.ingest import IngestReport, Published, ingest, load_documents
    from ragstream.stage_watch import watching
    from shared.settings import StreamSettings

    try:
        docs = load_documents(Path(args.path))
    except (OSError, ValueError) as exc:
        raise CommandFailed("unreadable input", str(exc), reason=str(exc)) from None
    if not docs:
        raise CommandFailed("no documents", f"no documents found in {args.path}")
    streams = StreamSettings()
    readers = [("chunker", streams.docs), ("embedder", streams.chunks)]

    def print_ids(published: Sequence[Published]) -> None:
        if args.print_ids:  # as soon as they are published: `ask --after DOC_ID=VERSION`
            sys.stdout.write("".join(f"{p.line()}\n" for p in published))
            sys.stdout.flush()

    async def run() -> IngestReport:
        redis = _redis()
        try:
            with say.progress("indexed", len(docs)) as advance:
                async with watching(redis, readers, say.stage_absent):
                    return await ingest(
                        redis, docs, streams=streams, timeout_s=args.timeout,
                        on_progress=advance, on_connection=say.connection,
                        on_published=print_ids,
                    )  # fmt: skip
        finally:
            await redis.aclose()

    report = asyncio.run(run())
    for letter in report.dead_letters:
        text = f"dead-lettered {letter.doc_id}: {letter.reason}"
        say.warn("dead-lettered", text, doc_id=letter.doc_id, reason=letter.reason)
    as_json = args.json or not out.is_terminal
    if as_json and not args.print_ids:  # with --print-ids, stdout holds the id lines only
        out.print_json(json.dumps(report.summary()))
    settled = len(report.outcomes)
    if settled < len(docs):
        raise CommandFailed(
            "ingest timed out",
            f"timed out after {args.timeout:g} s: {settled:,} of {len(docs):,} docs acknowledged "
            "(`ragstream status` shows where the rest are)",
            settled=settled, docs=len(docs),
        )  # fmt: skip
    if args.print_ids:
        say.ok("ingested", report.describe(), **report.summary())
    elif not as_json:
        out.print(f"[green]✓[/] {escape(report.describe())}", highlight=False, soft_wrap=True)
    return 0


def _sync_state(args: argparse.Namespace, folder: Path) -> "SyncState":
    """`--state FILE`, else `<data dir>/sync/<hash of the folder's absolute path>.json`."""
    from ragstream.sync import SyncState, default_state_path

    if not folder.is_dir():
        raise CommandFailed("not a folder", f"{args.command} needs a folder, got {folder}")
    path = Path(args.state) if args.state else default_state_path(DATA_DIR, folder)
    try:
        return SyncState.load(path)
    except (OSError, ValueError) as exc:
        raise CommandFailed("unreadable sync state", str(exc)) from None


def cmd_ingest_sync(args: argparse.Namespace, say: Output) -> int:
    """`ingest DIR --sync`: only what changed since the last sync, and deletes of what is gone."""
    from ragstream.ingest import Published
    from ragstream.stage_watch import watching
    from ragstream.sync import SyncResult, sync
    from shared.settings import StreamSettings

    folder = Path(args.path)
    state = _sync_state(args, folder)
    streams = StreamSettings()
    readers = [("chunker", streams.docs), ("embedder", streams.chunks)]

    def print_ids(published: Sequence[Published]) -> None:
        if args.print_ids:
            sys.stdout.write("".join(f"{p.line()}\n" for p in published))
            sys.stdout.flush()

    async def run() -> SyncResult:
        redis = _redis()
        try:
            with say.status(f"syncing {folder}…"):
                async with watching(redis, readers, say.stage_absent):
                    return await sync(
                        redis, folder, state, streams=streams, timeout_s=args.timeout,
                        on_connection=say.connection, on_published=print_ids,
                    )  # fmt: skip
        finally:
            await redis.aclose()

    result = asyncio.run(run())
    for letter in result.report.dead_letters:
        text = f"dead-lettered {letter.doc_id}: {letter.reason}"
        say.warn("dead-lettered", text, doc_id=letter.doc_id, reason=letter.reason)
    for doc_id, why in sorted(result.skipped.items()):
        say.warn("doc skipped", f"skipped {doc_id}: {why}", doc_id=doc_id, reason=why)
    summary = result.summary()
    as_json = args.json or not out.is_terminal
    if as_json and not args.print_ids:
        out.print_json(json.dumps(summary))
    if not result.settled:
        settled, total = len(result.report.outcomes), len(result.plan.events)
        raise CommandFailed(
            "ingest timed out",
            f"timed out after {args.timeout:g} s: {settled:,} of {total:,} changes acknowledged "
            "(the next sync sends the rest again)",
            settled=settled, docs=total,
        )  # fmt: skip
    text = (
        f"synced {folder}: {summary['upserted']:,} upserted, {summary['deleted']:,} deleted, "
        f"{summary['unchanged']:,} unchanged"
    )
    if args.print_ids:
        say.ok("synced", text, **summary)
    elif not as_json:
        out.print(f"[green]✓[/] {escape(text)}", highlight=False, soft_wrap=True)
    return 0


def doc_id_arg(value: str) -> str:
    if not 1 <= len(value) <= 512:
        raise argparse.ArgumentTypeError("a doc id is 1 to 512 characters")
    return value


def cmd_delete(args: argparse.Namespace, say: Output) -> int:
    """Publish a DocDelete per doc id and wait for the index to acknowledge each."""
    from ragstream.ingest import IngestReport, clock_ms, publish_and_wait
    from ragstream.stage_watch import watching
    from shared.contracts import DocDelete
    from shared.settings import StreamSettings

    version = args.version if args.version is not None else clock_ms()
    events = [DocDelete(doc_id=d, version=version) for d in dict.fromkeys(args.doc_ids)]
    streams = StreamSettings()
    readers = [("chunker", streams.docs), ("embedder", streams.chunks)]

    async def run() -> IngestReport:
        redis = _redis()
        try:
            async with watching(redis, readers, say.stage_absent):
                return await publish_and_wait(
                    redis, events, streams=streams, timeout_s=args.timeout,
                    on_connection=say.connection,
                )  # fmt: skip
        finally:
            await redis.aclose()

    report = asyncio.run(run())
    outcomes = [
        {"doc_id": e.doc_id, "version": e.version, "outcome": report.outcomes.get(key)}
        for e, key in ((e, (e.doc_id, e.version)) for e in events)
    ]
    for o in outcomes:
        name = f"{o['doc_id']} (v{o['version']})"
        if o["outcome"] == "deleted":
            say.ok("doc deleted", f"deleted {name}", **o)
        elif o["outcome"] == "stale":
            say.warn("doc stale", f"{name} not deleted: the index holds a newer version", **o)
        elif o["outcome"] == "dead_lettered":
            say.warn("dead-lettered", f"dead-lettered the delete of {name}", **o)
    if args.json or not out.is_terminal:
        out.print_json(json.dumps({**report.summary(), "outcomes": outcomes}))
    if len(report.outcomes) < len(events):
        settled = len(report.outcomes)
        raise CommandFailed(
            "delete timed out",
            f"timed out after {args.timeout:g} s: {settled:,} of {len(events):,} deletes "
            "acknowledged (`ragstream status` shows where the rest are)",
            settled=settled, docs=len(events),
        )  # fmt: skip
    return 0


def cmd_watch(args: argparse.Namespace, say: Output) -> int:
    """Sync a folder now and on every change, until Ctrl-C."""
    from ragstream.stage_watch import watching
    from shared.settings import StreamSettings

    try:
        from ragstream.watch import stop_on_signals, tell_changes, watch
    except ImportError as exc:
        text = f"`ragstream watch` needs watchfiles: pip install -e '.[watch]' ({exc})"
        raise CommandFailed("watchfiles missing", text) from None

    folder = Path(args.path)
    state = _sync_state(args, folder)
    streams = StreamSettings()
    readers = [("chunker", streams.docs), ("embedder", streams.chunks)]

    def ready() -> None:
        say.ok("watching", f"watching {folder} (Ctrl-C stops)", folder=str(folder))

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        redis = _redis()
        try:
            async with watching(redis, readers, say.stage_absent):
                await watch(
                    redis, folder, state, stop=stop, streams=streams, timeout_s=args.timeout,
                    debounce_ms=args.debounce, on_ready=ready,
                    on_result=lambda result: tell_changes(say, result, args.timeout),
                )  # fmt: skip
        finally:
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    say.ok("stopped", "stopped watching", folder=str(folder))
    return 0


def cmd_ask(args: argparse.Namespace, say: Output) -> int:
    from ragstream.render import print_answer
    from ragstream.stage_watch import watching
    from shared.client import ask
    from shared.contracts import Answer, AnswerDelta
    from shared.settings import StreamSettings

    if args.subscribe or args.regenerate:
        return _ask_and_watch(args, say)

    streams = StreamSettings()
    readers = [
        ("retriever", streams.queries),
        ("reranker", streams.retrieved),
        ("generator", streams.reranked),
    ]

    def show_delta(delta: AnswerDelta) -> None:
        if not args.json:
            out.print(delta.text, end="", soft_wrap=True, highlight=False)

    async def run() -> Answer:
        redis = _redis()
        try:
            async with watching(redis, readers, say.stage_absent) as absent:
                try:
                    return await ask(
                        redis, args.question, timeout=args.timeout, top_n=args.top_n,
                        stream=args.stream, on_delta=show_delta, after=dict(args.after or ()),
                    )  # fmt: skip
                except TimeoutError:
                    why = f": no {absent[0]} is running ({START_HINT})" if absent else ""
                    text = f"no answer within {args.timeout:g} s{why}"
                    raise CommandFailed("no answer", text, timeout_s=args.timeout) from None
        finally:
            await redis.aclose()

    answer = asyncio.run(run())
    if args.stream and not args.json:
        out.print()
    if args.json:
        out.print_json(answer.model_dump_json())
    else:
        print_answer(out, args.question, answer)
    return 1 if answer.error else 0


def _ask_and_watch(args: argparse.Namespace, say: Output) -> int:
    """`ask --subscribe`: the answer, then each invalidation (and, with `--regenerate`, each
    new answer) as it comes, until Ctrl-C or `--watch-for` seconds."""
    from ragstream.render import print_answer, print_invalidation
    from ragstream.stage_watch import watching
    from ragstream.watch import stop_on_signals
    from shared.client import ask_and_watch
    from shared.contracts import Answer, AnswerDelta, AnswerInvalidated
    from shared.settings import StreamSettings

    streams = StreamSettings()
    readers = [
        ("retriever", streams.queries),
        ("reranker", streams.retrieved),
        ("generator", streams.reranked),
    ]
    first: list[Answer] = []

    def show_delta(delta: AnswerDelta) -> None:
        if not args.json and not first:
            out.print(delta.text, end="", soft_wrap=True, highlight=False)

    def show(event: Answer | AnswerInvalidated) -> None:
        if args.json:  # one event per line
            sys.stdout.write(event.model_dump_json() + "\n")
            sys.stdout.flush()
        elif isinstance(event, Answer):
            if args.stream and not first:
                out.print()
            print_answer(out, args.question, event)
        else:
            print_invalidation(out, event)
        if isinstance(event, Answer) and not first:
            first.append(event)

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)  # Ctrl-C ends the watch (not a cancel, which redis-py may swallow)
        redis = _redis()
        try:
            async with watching(redis, readers, say.stage_absent) as absent:
                replies = ask_and_watch(
                    redis, args.question, watch_for=args.watch_for, regenerate=args.regenerate,
                    timeout=args.timeout, top_n=args.top_n, stream=args.stream,
                    on_delta=show_delta, after=dict(args.after or ()), stop=stop,
                )  # fmt: skip
                async with contextlib.aclosing(replies):
                    try:
                        async for event in replies:
                            show(event)
                    except TimeoutError:
                        why = f": no {absent[0]} is running ({START_HINT})" if absent else ""
                        text = f"no answer within {args.timeout:g} s{why}"
                        raise CommandFailed("no answer", text, timeout_s=args.timeout) from None
        finally:
            await redis.aclose()

    asyncio.run(run())
    return 1 if first and first[0].error else 0


def parse_after(value: str) -> tuple[str, int]:
    """`DOC_ID=VERSION` (the doc id may itself hold `=`)."""
    doc_id, sep, version = value.rpartition("=")
    if not sep or not doc_id or not version.isdigit():
        raise argparse.ArgumentTypeError(f"expected DOC_ID=VERSION, got {value!r}")
    return doc_id, int(version)


def cmd_status(args: argparse.Namespace, say: Output) -> int:
    from ragstream import status_view
    from ragstream.status import gather

    async def run() -> None:
        redis = _redis()
        try:
            if args.watch is None:
                status = await gather(redis, minutes=args.minutes)
                status_view.show(status, out, as_json=args.json)
            else:
                await status_view.watch(
                    redis, out, interval_s=args.watch, minutes=args.minutes, as_json=args.json
                )
        finally:
            await redis.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def cmd_demo(args: argparse.Namespace, say: Output) -> int:
    from ragstream.demo import run_demo

    try:
        return run_demo(DATA_DIR / "demo", out, on_ready=say.stage_ready)
    except (allinone.StageFailed, TimeoutError) as exc:
        raise CommandFailed("demo failed", str(exc)) from None


def cmd_dlq(args: argparse.Namespace, say: Output) -> int:
    from ragstream import dlq

    async def run() -> int:
        redis = _redis()
        try:
            return await dlq.run(args, redis, out)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def cmd_eval(args: argparse.Namespace, say: Output) -> int:
    from ragstream.evaluation.commands import run_eval

    return run_eval(args, out, err)


def cmd_evaluate_cv(args: argparse.Namespace, say: Output) -> int:
    from ragstream.evaluation.cv_command import run_cv

    return run_cv(args, out, err)


def cmd_train_reranker(args: argparse.Namespace, say: Output) -> int:
    from ragstream.evaluation.commands import run_train_reranker

    return run_train_reranker(args, out, err)


def cmd_train_embedder(args: argparse.Namespace, say: Output) -> int:
    from ragstream.evaluation.embedder_command import run_train_embedder

    return run_train_embedder(args, out, err)


def cmd_reindex(args: argparse.Namespace, say: Output) -> int:
    """Build a new index generation; with --switch, serve it once ready."""
    from ragstream import reindex
    from shared.settings import EmbeddingSettings, StoreSettings, StreamSettings

    streams, store_settings = StreamSettings(), StoreSettings()

    async def run() -> None:
        redis = _redis()
        try:
            if args.cancel:
                await reindex.cancel(redis, streams=streams, table=store_settings.table)
                say.ok("reindex cancelled", "cancelled: the partial generation will be dropped")
                return
            await reindex.reindex(
                redis, model=args.model, backend=args.backend, streams=streams,
                store_settings=store_settings, embedding=EmbeddingSettings(),
                timeout_s=args.timeout, on_progress=lambda event, figures: say.ok(
                    event, _progress(event, figures), **figures
                ),
            )  # fmt: skip
            if args.switch:
                table = store_settings.table
                serving = (await reindex.switch(redis, streams=streams, table=table)).serving
                say.ok("switched", f"serving {serving.table}", table=serving.table)
        finally:
            await redis.aclose()

    try:
        asyncio.run(run())
    except (GenerationError, TimeoutError) as exc:
        raise CommandFailed("reindex failed", str(exc)) from None
    return 0


def _progress(event: str, figures: dict[str, object]) -> str:
    return f"{event}: " + ", ".join(f"{k} {v}" for k, v in figures.items())


def cmd_switch(args: argparse.Namespace, say: Output) -> int:
    """Serve the generation `reindex` built."""
    from ragstream import reindex
    from shared.settings import StoreSettings, StreamSettings

    async def run() -> str:
        redis = _redis()
        try:
            registry = await reindex.switch(
                redis, streams=StreamSettings(), table=StoreSettings().table
            )
            return registry.serving.table
        finally:
            await redis.aclose()

    try:
        table = asyncio.run(run())
    except GenerationError as exc:
        raise CommandFailed("switch failed", str(exc)) from None
    say.ok("switched", f"serving {table}; the old generation is dropped after the grace period",
           table=table)  # fmt: skip
    return 0


def cmd_export_onnx(args: argparse.Namespace, say: Output) -> int:
    from ragstream.onnx_export import run_export

    return run_export(args, out, err)


def add_sync_parsers(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]", ingest: argparse.ArgumentParser
) -> None:
    """`ingest --sync/--state`, `delete` and `watch`."""
    ingest.add_argument(
        "--sync", action="store_true",
        help="for a folder: send only new and changed files (each at a new version) and delete "
        "the docs of files that are gone; versions are kept per folder (see --state)",
    )  # fmt: skip
    ingest.add_argument("--state", metavar="FILE", help=STATE_HELP)

    delete = sub.add_parser("delete", help="delete documents from the index and wait")
    delete.add_argument("doc_ids", nargs="+", type=doc_id_arg, metavar="DOC_ID")
    delete.add_argument(
        "--version", type=int, help="the delete's version (default: the clock in ms, as ingest)"
    )
    delete.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    delete.add_argument(
        "--json", action="store_true", help="print the summary as JSON (the default off a terminal)"
    )
    delete.set_defaults(func=cmd_delete)

    watch = sub.add_parser("watch", help="keep the index in step with a folder as files change")
    watch.add_argument("path")
    watch.add_argument("--state", metavar="FILE", help=STATE_HELP)
    watch.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each change's ack"
    )
    watch.add_argument(
        "--debounce", type=int, default=100, metavar="MS",
        help="quiet time after a change before it is sent (default 100 ms)",
    )  # fmt: skip
    watch.set_defaults(func=cmd_watch)


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 (one line a subcommand)
    parser = argparse.ArgumentParser(prog="ragstream", description=__doc__)
    parser.add_argument(
        "--log-format", choices=FORMAT_CHOICES, default="auto",
        help="auto (default): lines for people on a terminal, JSON log lines otherwise; "
        "also how the stages `up` and `demo` start log",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one stage (or the HTTP gateway) in the foreground")
    run.add_argument("stage", choices=(*allinone.STAGES, "gateway"))
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
    ingest.add_argument(
        "--json", action="store_true", help="print the summary as JSON (the default off a terminal)"
    )
    ingest.add_argument(
        "--print-ids", action="store_true",
        help="print `doc_id version entry_id` per published doc on stdout (the summary goes to "
        "stderr): what `ask --after DOC_ID=VERSION` reads back",
    )  # fmt: skip
    ingest.set_defaults(func=cmd_ingest)
    add_sync_parsers(sub, ingest)

    ask = sub.add_parser("ask", help="ask a question; prints the answer with its sources")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print the Answer event as JSON")
    ask.add_argument("--stream", action="store_true", help="show tokens as they arrive")
    ask.add_argument("--top-n", type=int, default=5, help="chunks given to the generator")
    ask.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    ask.add_argument(
        "--after", type=parse_after, action="append", metavar="DOC_ID=VERSION",
        help="read your writes: answer from an index serving at least this doc version (as "
        "`ingest --print-ids` prints it); repeatable. If the index does not get there in time "
        "(RAG_RETRIEVER_AFTER_WAIT_S) the answer says it is possibly stale",
    )  # fmt: skip
    ask.add_argument(
        "--subscribe", action="store_true",
        help="after the answer, keep listening: print an invalidation when a doc it cited "
        "changes or is deleted (until Ctrl-C or --watch-for)",
    )  # fmt: skip
    ask.add_argument(
        "--regenerate", action="store_true",
        help="with --subscribe (implied): also answer again after each invalidation",
    )  # fmt: skip
    ask.add_argument(
        "--watch-for", type=float, metavar="SECONDS",
        help="with --subscribe: stop listening this many seconds after the answer",
    )  # fmt: skip
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser("demo", help="start everything, ingest the sample corpus, ask, stop")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="streams, lag, pending, dead letters, index, freshness")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )  # fmt: skip
    status.add_argument(
        "--minutes", type=float, default=5.0, help="freshness over the last N minutes (default 5)"
    )
    status.set_defaults(func=cmd_status)

    from ragstream.dlq import add_parser as add_dlq_parser

    add_dlq_parser(sub).set_defaults(func=cmd_dlq)

    from ragstream.reindex import add_parsers as add_generation_parsers

    build, flip = add_generation_parsers(sub)
    build.set_defaults(func=cmd_reindex)
    flip.set_defaults(func=cmd_switch)

    evaluate = sub.add_parser("eval", help="retrieval quality on a BEIR dataset (JSON result)")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    add_cv_parser(sub).set_defaults(func=cmd_evaluate_cv)

    train = sub.add_parser("train-reranker", help="fine-tune a cross-encoder reranker")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train_reranker)

    tune = sub.add_parser("train-embedder", help="fine-tune the embedding model (bi-encoder)")
    add_train_embedder_arguments(tune)
    tune.set_defaults(func=cmd_train_embedder)

    from ragstream.onnx_export import add_export_arguments

    export = sub.add_parser("export-onnx", help="export the embedding model or a cross-encoder "
                            "to ONNX (fp32, --int8) for the torch-free runtime")  # fmt: skip
    add_export_arguments(export)
    export.set_defaults(func=cmd_export_onnx)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.log_format != "auto":
        os.environ[FORMAT_ENV] = args.log_format  # also for the stages this starts
    fmt = resolve_format(args.log_format)
    configure_logging("INFO" if fmt == "json" else "WARNING", json=fmt == "json")
    say = Output(fmt, err)
    command: Command = args.func
    try:
        code = command(args, say)
    except CommandFailed as exc:
        say.fail(exc.event, exc.text, **exc.fields)
        code = 1
    except REDIS_DOWN as exc:
        url = redacted(_redis_url())
        text = f"Redis unreachable at {url} ({exc}): {START_HINT}, or set REDIS_URL"
        say.fail("redis unreachable", text, url=url, reason=str(exc))
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
