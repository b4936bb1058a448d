"""Stopping on SIGINT or SIGTERM: within seconds, recorded, resumable.

The process that owns a run (the CLI, a sweep's worker process) wraps it in
`stop_on_signals()`. The first signal raises RunInterrupted in the main
thread wherever it is, in torch or blocked in ray.get (the Ray executor waits
in short slices for this); the driver records the run as `interrupted`, keeps
its checkpoint and shuts down a Ray it started. A second signal ends the
process at once with os._exit(128 + signal), skipping all clean-up: the user
asked twice, and clean-up is what was taking too long.

Handlers are process state, so this module is too: the signal received first
is remembered until the outermost `stop_on_signals()` block ends, and a
process told to stop starts no further run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the first stop signal this process received, until the outermost block ends


class RunInterrupted(KeyboardInterrupt):
    """A run (or a sweep) stopped by SIGINT or SIGTERM; `exit_code` is 128 + the signal.

    A KeyboardInterrupt rather than a bare BaseException because of Ray: a signal
    handler runs inside ray.get, and Ray's signal check turns a KeyboardInterrupt
    into a prompt return, but keeps waiting for the objects on any other exception
    (measured with Ray 2.60: 8 s, the whole task, instead of 1 s). Ray re-raises it
    as a plain KeyboardInterrupt, which `interruption()` maps back. It also passes
    through `except Exception` and reaches code that already handles Ctrl-C.
    The driver fills in which run stopped and how far it got.
    """

    def __init__(self, signum: int, run_id: str | None = None, out: str | None = None, epochs_done: int = 0):
        super().__init__(signum)
        self.signum = signum
        self.run_id = run_id  # None: stopped before a run was recorded (or between runs of a sweep)
        self.out = out
        self.epochs_done = epochs_done

    def __reduce__(self) -> tuple[Any, ...]:  # it travels back from a sweep's worker process
        return type(self), (self.signum, self.run_id, self.out, self.epochs_done)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def interruption(error: KeyboardInterrupt) -> RunInterrupted:
    """`error` as a RunInterrupted: itself, or a new one naming the signal this process
    received (SIGINT when none was: a KeyboardInterrupt raised by hand or by ray.cancel)."""
    if isinstance(error, RunInterrupted):
        return error
    return RunInterrupted(_received if _received is not None else signal.SIGINT)


def _exit_now(signum: int) -> None:
    """The second signal: end this process and, first, pass the signal on to our
    multiprocessing children (a sweep's workers), for which it is the second too."""
    try:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)
        log.warning("second %s: exiting without cleaning up", signal.Signals(signum).name)
    finally:  # even if logging fails: the handler may interrupt a write to the same stream
        os._exit(128 + signum)


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        _exit_now(signum)
    _received = signum
    raise RunInterrupted(signum)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        _exit_now(signum)
    _received = signum  # the next stop_on_signals() block refuses to start


_OURS = (_raise_on_signal, _note_signal)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set handlers


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise RunInterrupted; a second one exits at once.

    Raises RunInterrupted at once when this process was already told to stop. Outside
    the main thread it changes nothing (Python delivers signals to the main thread only).
    """
    global _received
    if _received is not None:
        raise RunInterrupted(_received)
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if previous[signal.SIGINT] not in _OURS:  # the outermost block: forget the signal
            _received = None


def note_signals() -> None:
    """For the rest of the process, remember a stop signal instead of raising it.

    For a sweep's worker process between runs: raising there would kill the
    worker from inside the process pool's own code.
    """
    if _in_main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, _note_signal)


@contextmanager
def keep_stop_handlers() -> Iterator[None]:
    """Put this module's handlers back if the block replaced them.

    ray.init sets SIGTERM to sys.exit (and its C++ core adds a stack dump), which
    would turn SIGTERM into a failed run; a run's SIGTERM must stop it like Ctrl-C.
    """
    if not _in_main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler in _OURS and signal.getsignal(s) is not handler:
                signal.signal(s, handler)
