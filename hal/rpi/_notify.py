"""Listener registry that hands calls to the subscriber's event loop from any thread."""

from __future__ import annotations

import asyncio
import logging
import threading

from hal.interfaces import Listener

_log = logging.getLogger(__name__)


class Notifier:
    """Listeners plus the loop each was subscribed from.

    ``fire()`` may be called from a GPIO callback or sampler thread: each listener runs on the
    loop that was running when it subscribed, else on the loop given to :meth:`bind`
    (``call_soon_threadsafe``). A listener with neither is called directly, on the firing thread;
    that is only safe for single-threaded use (tests), so the composition root binds the loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[tuple[Listener, asyncio.AbstractEventLoop | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop for listeners that subscribed while no loop was running (e.g. in a sync constructor)."""
        self._loop = loop

    def subscribe(self, listener: Listener) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._listeners.append((listener, loop))

    def fire(self) -> None:
        with self._lock:
            listeners = [(listener, loop or self._loop) for listener, loop in self._listeners]
        for listener, loop in listeners:
            if loop is None:
                listener()
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(listener)
                except RuntimeError:  # closed between the check and the call
                    _log.debug("listener loop closed; notification dropped")
