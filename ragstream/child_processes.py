"""Child processes that end with the process that started them, however it ends.

`ragstream up` starts its servers and stages in sessions of their own (a Ctrl-C in the terminal
reaches `up` only, which stops them in order). Should `up` itself be killed (`kill -9`, an
exception that skipped its cleanup), nothing in it can stop them, so each child notices itself:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGTERM)` set in the forked child before `exec`
  (`popen_options`): the kernel sends the child SIGTERM when the thread that started it ends.
  It survives `exec`, so it covers servers that are not Python (redis-server, weaviate-server).
  Only set from the main thread: a worker thread that started a child and then ended would
  stop that child with it.
- a stage started with `PARENT_PID_ENV` also watches its parent (`watch_parent`): the same
  graceful SIGTERM when it has gone, on any OS and whichever thread started it.
"""

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

PARENT_PID_ENV = "RAG_PARENT_PID"
"""Set by `ragstream up` on each stage: the pid the stage watches (`watch_parent`)."""
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _prctl()  # loaded here, not in the forked child (no dlopen between fork and exec)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn`: the child gets SIGTERM when this process ends (None where that is not
    possible: off Linux, or off the main thread)."""
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = _PRCTL, os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def popen_options() -> dict[str, Any]:
    """`subprocess.Popen` keyword arguments for a child of `up`: a session of its own, and
    SIGTERM when `up` ends (`die_with_parent`)."""
    preexec = die_with_parent()
    return {"start_new_session": True} | ({"preexec_fn": preexec} if preexec else {})


def watch_parent(interval_s: float = 1.0) -> threading.Thread | None:
    """If `PARENT_PID_ENV` is set: a daemon thread that sends this process SIGTERM (its
    graceful stop) once that parent has gone (this process was re-parented)."""
    value = os.environ.get(PARENT_PID_ENV)
    if not value:
        return None
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
