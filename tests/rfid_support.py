"""Shared test helpers for the RFID drivers: a consumer that records taps and reader faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from hal.interfaces import CardReader, CardTap, DeviceError


class TapCollector:
    """Consumes ``reader.taps()`` like the firmware does: on DeviceError it records and retries."""

    def __init__(self, reader: CardReader, retry_s: float = 0.01) -> None:
        self.reader = reader
        self.retry_s = retry_s
        self.taps: list[CardTap] = []
        self.errors: list[DeviceError] = []
        #: True while the last taps() iteration has not raised.
        self.healthy = True
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.healthy = True
                async for tap in self.reader.taps():
                    self.taps.append(tap)
                    self._changed.set()
            except DeviceError as exc:
                self.healthy = False
                self.errors.append(exc)
                self._changed.set()
                await asyncio.sleep(self.retry_s)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds; fails the test on timeout."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
