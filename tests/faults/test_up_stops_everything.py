"""`ragstream up` leaves nothing behind: stopped by SIGTERM, Ctrl-C or kill -9, while starting or
once up, every process it started (embedded Redis, the five stages) ends with it."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ragstream.allinone import STAGES

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc"
)]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
STARTED = 1 + len(STAGES)  # the embedded Redis and the stages
Process = tuple[int, int]  # pid, start time: a pid the kernel reused is another process


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> set[Process]:
    """Every live process under `root` (by parent pid, recursively; sessions do not matter)."""
    children: dict[int, list[Process]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append((int(entry.name), int(stat[19])))
    found: set[Process] = set()
    todo = [root]
    while todo:
        for process in children.get(todo.pop(), []):
            found.add(process)
            todo.append(process[0])
    return found


def alive(processes: set[Process]) -> set[Process]:
    """Those still running (a zombie nobody reaped has ended)."""
    return {
        (pid, start)
        for pid, start in processes
        if (stat := _stat(pid)) is not None and stat[0] != "Z" and int(stat[19]) == start
    }


def wait_until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def is_up(log: Path) -> bool:
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "up" and "url" in record:
            return True
    return False


def start_up(tmp_path: Path, log: Path) -> "subprocess.Popen[bytes]":
    env = {
        **os.environ,
        "RAGSTREAM_DATA_DIR": str(tmp_path / "data"),
        "RAG_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **{f"RAG_{stage.upper()}_GRACE_S": "10" for stage in STAGES},
    }
    for name in ("REDIS_URL", "RAG_REDIS_URL", "RAG_STORE_BACKEND", "WEAVIATE_URL"):
        env.pop(name, None)
    with log.open("wb") as stderr:
        # A session of its own, like a shell's job: a Ctrl-C is SIGINT to its process group.
        return subprocess.Popen(
            [sys.executable, "-m", "ragstream", "up"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip


def stop(up: "subprocess.Popen[bytes]", how: str) -> None:
    if how == "SIGTERM":
        up.send_signal(signal.SIGTERM)
    elif how == "SIGKILL":
        up.kill()
    else:  # Ctrl-C in the terminal: its foreground process group (the stages are not in it)
        os.killpg(up.pid, signal.SIGINT)
        if how == "Ctrl-C twice":
            time.sleep(0.2)  # an impatient user, while `up` is stopping what it started
            os.killpg(up.pid, signal.SIGINT)


@pytest.mark.parametrize(
    ("when", "how", "codes"),
    [
        ("up", "SIGTERM", {0}),
        ("up", "Ctrl-C", {0, 130}),
        ("up", "SIGKILL", {-signal.SIGKILL}),
        ("starting", "SIGTERM", {0, 130}),
        ("starting", "Ctrl-C twice", {0, 130, -signal.SIGINT}),  # the 2nd may end it
        ("starting", "SIGKILL", {-signal.SIGKILL}),
    ],
)
def test_stopping_up_ends_every_process_it_started(
    tmp_path: Path, when: str, how: str, codes: set[int]
) -> None:
    log = tmp_path / "up.log"
    up = start_up(tmp_path, log)
    started: set[Process] = set()
    try:
        wait_until(
            lambda: len(descendants(up.pid)) >= STARTED or up.poll() is not None,
            within_s=60, what="Redis and the stages did not start",
        )  # fmt: skip
        if when == "up":
            wait_until(lambda: is_up(log) or up.poll() is not None, 180, "up did not get ready")
        assert up.poll() is None, log.read_text()[-3000:]
        started = descendants(up.pid)
        assert len(started) >= STARTED
        assert is_up(log) == (when == "up")

        stop(up, how)
        code = up.wait(60)
        assert code in codes, log.read_text()[-3000:]
        wait_until(
            lambda: not alive(started), within_s=40,
            what=f"still running after `up` ended: {sorted(alive(started))}",
        )  # fmt: skip
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid, _ in alive(started):  # leave nothing running, even when the test fails
            os.kill(pid, signal.SIGKILL)
