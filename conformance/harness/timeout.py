"""A per-test time limit without extra dependencies (``--test-timeout``, docs/porting.md).

A port that hangs must not hang the run: the test is stopped and reported as a
failure of its requirement(s). On POSIX, in the main thread, an interval timer
(SIGALRM) interrupts the test; elsewhere (Windows, a worker thread) a watchdog
thread raises the same exception asynchronously in the test's thread. Both act
between Python bytecodes: a hang inside one long native call (a C kernel that
never returns) is stopped only by an outer limit (the self-test's subprocess
timeout, a CI job limit).

``TestTimeout`` derives from BaseException so that hypothesis does not catch it
and replay the hanging example again; pytest still records the test as failed.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from contextlib import contextmanager


class TestTimeout(BaseException):
    """The test ran past --test-timeout seconds."""

    __test__ = False  # not a test class for pytest's collector


@contextmanager
def time_limit(seconds: float, what: str):
    """Raise TestTimeout in the current thread if the block runs longer than ``seconds`` (0: no limit)."""
    if not seconds or seconds <= 0:
        yield
        return
    message = f"{what} ran past --test-timeout={seconds:g} s (a hang in the port?) and was stopped"
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        def on_alarm(signum, frame):
            raise TestTimeout(message)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    target = threading.get_ident()
    done = threading.Event()

    class _Timeout(TestTimeout):
        def __init__(self):
            super().__init__(message)

    def watchdog():
        if not done.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(_Timeout))

    thread = threading.Thread(target=watchdog, daemon=True, name="rac-test-timeout")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
