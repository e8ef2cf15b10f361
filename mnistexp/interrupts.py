"""Ctrl-C and SIGTERM: remembered for the exit status, and raised only where no run is half opened or ended."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from mnistexp.errors import Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the first signal this process got: its exit status is 128 + it
_pending: int | None = None  # a signal held back, raised at the next safe point
_deferring = 0  # depth of `deferred()` sections: a first signal waits, a second one breaks through
_holding = 0  # depth of `held()` sections: every signal waits
_settled = False  # the outcome is written: later signals change nothing
_pause_at: tuple[str, int] | None = None  # the test hook: (phase, occurrence) to wait at for a signal
_phases_seen: dict[str, int] = {}


def _as_exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received, _pending
    if _settled:
        return
    _received = _received or signum
    first = _pending is None
    _pending = _pending or signum
    if _holding or (_deferring and first):
        return
    # Raised at once, and kept pending too: Python drops an exception raised inside a weakref
    # callback or __del__ (as "Exception ignored in"), and the next safe point raises it again.
    raise _as_exception(signum)


def _unraisable(unraisable: Any) -> None:
    """A signal dropped where Python cannot raise (a weakref callback, __del__) is still pending:
    the next safe point raises it, so Python's "Exception ignored" traceback would only confuse."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _pending is not None:
        return
    _python_unraisable_hook(unraisable)


_python_unraisable_hook = sys.unraisablehook


def install() -> dict[int, object]:
    """Route SIGINT and SIGTERM here (main thread only); returns the handlers it replaced. A signal
    the process was started ignoring (`nohup`, a shell's background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    sys.unraisablehook = _unraisable
    replaced: dict[int, object] = {}
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current not in (signal.SIG_IGN, None, _on_signal):
            replaced[signum] = signal.signal(signum, _on_signal)
    return replaced


def received() -> int | None:
    """The first SIGINT or SIGTERM this process got, if any."""
    return _received


def pending() -> int | None:
    """The signal held back for the next safe point, if any."""
    return _pending


def check() -> None:
    """A safe point: raise the signal held back, if any (KeyboardInterrupt, or Terminated for SIGTERM)."""
    global _pending
    if _pending is not None and not _holding:
        signum, _pending = _pending, None
        raise _as_exception(signum)


@contextlib.contextmanager
def _section(kind: str) -> Iterator[None]:
    global _deferring, _holding
    replaced = install()
    if kind == "held":
        _holding += 1
    else:
        _deferring += 1
    try:
        yield
    finally:
        if kind == "held":
            _holding -= 1
        else:
            _deferring -= 1
        for signum, handler in replaced.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    check()


def deferred() -> contextlib.AbstractContextManager[None]:
    """Work that a signal must not cut at an arbitrary point (a TensorFlow step can corrupt its native
    heap): the first signal waits for `check()` or the section's end; a second one interrupts at once."""
    return _section("deferred")


def held() -> contextlib.AbstractContextManager[None]:
    """Opening or ending a run, writing a sweep's summary: every signal waits for the section's end."""
    return _section("held")


def settle() -> int | None:
    """The outcome is about to be written: a signal from here on changes nothing and is ignored.
    Returns the signal received before, if any, which the outcome must show."""
    global _settled
    _settled = True
    return _received


def pause_at(moment: str | None) -> None:
    """The test hook: `phase NAME` (or `NAME@N`, its Nth time) says so on stderr and waits there, up to a
    minute, for a signal. The signal tests use it to know the phase a signal lands in from the code
    itself, not from timing. The CLI sets it from MNISTEXP_TEST_PAUSE_AT."""
    global _pause_at
    if not moment:
        _pause_at = None
        return
    name, _, count = moment.partition("@")
    if _pause_at != (name, int(count or 1)):  # each job of a sweep reads it again: the count goes on
        _pause_at = (name, int(count or 1))
        _phases_seen.clear()


def phase(name: str) -> None:
    """A named moment of a command's life (see pause_at); nothing happens unless a test asks for it."""
    if _pause_at is None or _pause_at[0] != name:
        return
    _phases_seen[name] = _phases_seen.get(name, 0) + 1
    if _phases_seen[name] != _pause_at[1]:
        return
    print(f"mnistexp-phase: {name}@{_pause_at[1]}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while _received is None and time.monotonic() < deadline:  # a signal here acts as it would at this point
        time.sleep(0.005)


def reset() -> None:
    """Forget every signal (for a process that runs several commands, such as a test session)."""
    global _received, _pending, _deferring, _holding, _settled
    _received = _pending = None
    _deferring = _holding = 0
    _settled = False
