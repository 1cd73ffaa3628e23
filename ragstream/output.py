"""How the CLI talks about what it does: concise rich lines for people on a terminal, structlog
JSON events for machines (stderr not a terminal, or `--log-format json`).

Each call names a stable event (the JSON `event`, with its fields) and the line a person reads.
Results (an answer, a summary, a table) are not this module's: commands print them on stdout.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from urllib.parse import urlsplit, urlunsplit

import structlog
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.logging import LogFormat

log = structlog.get_logger("ragstream.cli")
PROGRESS_LOG_INTERVAL_S = 5.0
START_HINT = "start the stages with `ragstream up`"


class CommandFailed(Exception):
    """An expected failure: reported as one line (`Output.fail`), the command exits nonzero."""

    def __init__(self, event: str, text: str, **fields: object) -> None:
        super().__init__(text)
        self.event, self.text, self.fields = event, text, fields


def redacted(url: str) -> str:
    """`url` without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Output:
    def __init__(self, fmt: LogFormat, err: Console) -> None:
        self.machine = fmt == "json"
        self.err = err

    def ok(self, event: str, text: str, **fields: object) -> None:
        self._say("[green]✓[/]", event, text, fields, log.info)

    def warn(self, event: str, text: str, **fields: object) -> None:
        self._say("[yellow]![/]", event, text, fields, log.warning)

    def fail(self, event: str, text: str, **fields: object) -> None:
        self._say("[red]✗[/]", event, text, fields, log.error)

    def stage_ready(self, stage: str, http_port: int | None = None) -> None:
        if http_port is None:
            self.ok("stage ready", f"{stage} ready", stage=stage)
            return
        text = f"{stage} ready (/livez /readyz /metrics on :{http_port})"
        self.ok("stage ready", text, stage=stage, http_port=http_port)

    def stage_absent(self, stage: str, stream: str) -> None:
        text = f"no {stage} is reading {stream}: {START_HINT}"
        self.warn("stage not running", text, stage=stage, stream=stream)

    def connection(self, lost_reason: str | None) -> None:
        """Redis went away (`lost_reason`) or came back (None) while a command waits."""
        if lost_reason is not None:
            text = f"lost the connection to Redis ({lost_reason}); reconnecting, still waiting"
            self.warn("redis connection lost", text, reason=lost_reason)
        else:
            self.ok("redis reconnected", "reconnected to Redis")

    def status(self, text: str) -> AbstractContextManager[object]:
        """A spinner while the block runs, for people only."""
        return self.err.status(text) if not self.machine else nullcontext()

    def _say(
        self,
        mark: str,
        event: str,
        text: str,
        fields: dict[str, object],
        emit: Callable[..., object],
    ) -> None:
        if self.machine:
            emit(event, **fields)
        else:
            self.err.print(f"{mark} {escape(text)}", highlight=False, soft_wrap=True)

    @contextmanager
    def progress(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar "indexed 1,234/5,183 docs" for people; an event every few seconds for machines.
        Yields the function that advances it."""
        if self.machine:
            done, logged = 0, time.monotonic()

            def advance_logged(n: int) -> None:
                nonlocal done, logged
                done += n
                if time.monotonic() - logged >= PROGRESS_LOG_INTERVAL_S:
                    logged = time.monotonic()
                    log.info("progress", what=what, done=done, total=total)

            yield advance_logged
            return
        columns = (
            TextColumn(f"{what} {{task.completed:,.0f}}/{{task.total:,.0f}} docs"),
            BarColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)
