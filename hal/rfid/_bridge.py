"""The asyncio side shared by the RFID drivers whose I/O blocks (pyscard, pyserial).

Each driver runs its blocking loop in one worker thread and hands taps and health changes to
the event loop with ``call_soon_threadsafe``; the loop never waits on the hardware. The
``taps()`` contract mirrors the simulated reader: while the reader is faulty, iterating raises
``DeviceError("reader")`` at once, so the firmware can raise its fault and retry later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Final, TypeVar

from hal.interfaces import CardTap, DeviceError

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Taps kept while nobody consumes them; older ones are dropped (a stale tap is worse than none).
MAX_QUEUED_TAPS: Final = 8


class Debouncer:
    """Turns repeated "card seen / no card" observations into one tap per presentation.

    A card held on the reader is seen on every poll; it counts once. It counts again only after
    ``release_polls`` consecutive polls without it (lifted), or when another card replaces it.
    A card already there at the first poll (start-up, reconnect) is not a tap: a card left on
    the reader must not start a session at every restart.
    """

    def __init__(self, release_polls: int = 2) -> None:
        if release_polls < 1:
            raise ValueError("release_polls must be at least 1")
        self.release_polls = release_polls
        self._current: bytes | None = None
        self._misses = 0
        self._first = True

    def seen(self, uid: bytes | None) -> bytes | None:
        """Feed one poll result; returns the UID when it is a new presentation, else None."""
        if self._first:
            self._first = False
            self._current = uid
            if uid is not None:
                _log.info("card %s already on the reader: not a tap", uid.hex())
            return None
        if uid is None:
            self._misses += 1
            if self._misses >= self.release_polls:
                self._current = None
            return None
        self._misses = 0
        if uid == self._current:
            return None
        self._current = uid
        return uid

    def reset(self) -> None:
        """Start over (after a reconnect): the next poll only learns what is on the reader."""
        self._current = None
        self._misses = 0
        self._first = True


class ThreadedReader:
    """Base for drivers with a blocking worker loop; subclasses implement :meth:`_work`."""

    #: Failures of the device or bus: reported without a traceback. Anything else is a bug.
    expected_errors: tuple[type[Exception], ...] = (OSError,)

    def __init__(self, name: str, *, retry_s: float) -> None:
        self.name = name
        self.retry_s = retry_s
        self._loop: asyncio.AbstractEventLoop | None = None
        # None wakes waiting consumers when the reader fails; it is never yielded.
        self._queue: asyncio.Queue[CardTap | None] | None = None
        self._waiting = 0
        self._fault: DeviceError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Worker-thread view of the health last reported, so each change is logged and sent once.
        self._problem: str | None = None
        self._reported = False

    # ---- event-loop side ---------------------------------------------------------------
    @property
    def fault(self) -> DeviceError | None:
        """The current reader fault, None while the reader works."""
        return self._fault

    def _start(self) -> asyncio.Queue[CardTap | None]:
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._thread = threading.Thread(target=self._thread_main, name=f"rfid-{self.name}", daemon=True)
            self._thread.start()
        return self._queue

    def _check(self) -> None:
        if self._fault is not None:
            raise self._fault

    async def taps(self) -> AsyncIterator[CardTap]:
        """One CardTap per presentation; raises DeviceError("reader") while the reader is faulty."""
        if self._stop.is_set():
            raise DeviceError("reader", f"{self.name} reader is closed")
        queue = self._start()
        while True:
            self._check()
            self._waiting += 1
            try:
                item = await queue.get()
            finally:
                self._waiting -= 1
            self._check()
            if item is not None:
                yield item

    async def aclose(self) -> None:
        """Stop the worker thread (it exits within its own short I/O timeouts)."""
        self._stop.set()
        self._interrupt()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
            if thread.is_alive():
                _log.warning("%s reader worker did not stop in time", self.name)

    def _on_tap(self, uid: bytes) -> None:
        queue = self._queue
        if queue is None:
            return
        if queue.qsize() >= MAX_QUEUED_TAPS:
            dropped = queue.get_nowait()
            if dropped is not None:
                _log.warning("%s: tap %s dropped, nobody is reading taps", self.name, dropped.uid.hex())
        queue.put_nowait(CardTap(uid=uid, reader=self.name))

    def _on_health(self, problem: str | None) -> None:
        if problem is None:
            if self._fault is not None:
                _log.info("%s reader works again", self.name)
            self._fault = None
            return
        self._fault = DeviceError("reader", f"{self.name}: {problem}")
        queue = self._queue
        if queue is not None:
            for _ in range(self._waiting):
                queue.put_nowait(None)

    # ---- worker-thread side ------------------------------------------------------------
    def _call_in_loop(self, fn: Callable[[_T], None], arg: _T) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._stop.set()

    def _emit(self, uid: bytes) -> None:
        """Report one new presentation (worker thread)."""
        _log.info("%s: card %s", self.name, uid.hex())
        self._call_in_loop(self._on_tap, bytes(uid))

    def _healthy(self) -> None:
        """Report that the reader works (worker thread)."""
        if self._problem is not None or not self._reported:
            self._problem, self._reported = None, True
            self._call_in_loop(self._on_health, None)

    def _failed(self, problem: str) -> None:
        """Report a reader failure (worker thread); logged once per distinct problem, retried by the worker."""
        if problem != self._problem:
            _log.error("%s reader failed: %s", self.name, problem)
            self._problem, self._reported = problem, True
            self._call_in_loop(self._on_health, problem)

    def _thread_main(self) -> None:
        while not self._stop.is_set():
            try:
                self._work()
            except self.expected_errors as exc:
                if self._stop.is_set():
                    break
                self._failed(str(exc))
            except Exception as exc:  # a bug must not kill the worker: log it whole, report, retry
                if self._stop.is_set():
                    break
                _log.exception("%s reader worker crashed", self.name)
                self._failed(f"internal error: {exc!r}")
            self._stop.wait(self.retry_s)

    def _work(self) -> None:
        """Connect and serve taps until stopped (return) or failed (raise)."""
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake the worker from a blocking wait so it sees the stop flag."""
