"""Log format selection: JSON lines off a terminal, lines for people on one or when asked, and
what the stage processes `up` and `demo` start are told."""

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ragstream.allinone import STAGES, stage_log_env
from ragstream.redis_server import RedisServer
from shared.logging import FORMAT_ENV, resolve_format
from shared.settings import StreamSettings
from tests.conftest import stream_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOG_ONE_WARNING = (
    "from shared.logging import configure_logging, get_logger\n"
    "configure_logging('INFO')\n"
    "get_logger('t').warning('disk almost full', free_mb=12)\n"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_console_on_a_terminal_and_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORMAT_ENV, raising=False)
    assert resolve_format("auto", Terminal()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
    assert resolve_format("json", Terminal()) == "json"
    monkeypatch.setenv(FORMAT_ENV, "console")
    assert resolve_format("auto", io.StringIO()) == "console"
    assert resolve_format("json", Terminal()) == "json"  # the command line wins


def test_stages_started_from_a_terminal_log_warnings_for_people() -> None:
    env = stage_log_env({FORMAT_ENV: "console", "RAG_EMBEDDER_LOG_LEVEL": "DEBUG"})
    assert env[FORMAT_ENV] == "console"
    assert env["RAG_CHUNKER_LOG_LEVEL"] == "WARNING"
    assert "RAG_EMBEDDER_LOG_LEVEL" not in env  # the user's own level stays
    assert {f"RAG_{s.upper()}_LOG_LEVEL" for s in STAGES} - set(env) == {"RAG_EMBEDDER_LOG_LEVEL"}
    assert stage_log_env({FORMAT_ENV: "json"}) == {FORMAT_ENV: "json"}


def run_python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stderr


def test_a_stage_logs_json_off_a_terminal_and_for_people_when_told() -> None:
    base = {k: v for k, v in os.environ.items() if k != FORMAT_ENV}
    [line] = run_python(LOG_ONE_WARNING, base).splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"], record["free_mb"]) == (
        "disk almost full",
        "warning",
        12,
    )

    [line] = run_python(LOG_ONE_WARNING, {**base, FORMAT_ENV: "console"}).splitlines()
    assert "disk almost full" in line and "free_mb=12" in line
    with pytest.raises(ValueError):
        json.loads(line)


def ingest_args(tmp_path: Path) -> list[str]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nSome text.\n")
    return ["ingest", str(tmp_path / "docs"), "--timeout", "4"]


def cli_env(redis_server: RedisServer, streams: StreamSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FORMAT_ENV}
    return {**env, **stream_env(streams), "RAG_REDIS_URL": redis_server.url}


def test_cli_logs_json_lines_when_stderr_is_not_a_terminal(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ragstream", *ingest_args(tmp_path)],
        env=cli_env(redis_server, streams), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1  # nothing indexes: no stage runs
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["event"] for r in records] == [
        "stage not running", "stage not running", "ingest timed out"
    ]  # fmt: skip
    assert json.loads(result.stdout)["docs"] == 1  # the summary, for machines too


def test_cli_talks_to_people_on_a_terminal(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ragstream", *ingest_args(tmp_path)],
        env=cli_env(redis_server, streams), stdout=subprocess.PIPE, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(60) == 1
    os.close(primary)
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert f"no chunker is reading {streams.docs}: start the stages with `ragstream up`" in text
    assert "✗ timed out after 4 s: 0 of 1 docs acknowledged" in text
    assert '"event"' not in text
