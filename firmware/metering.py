"""Meter sampling: the latest reading for status and sessions, and the meter fault.

The meter is read on its own task so a slow or dead bus never stalls the control loop. Energy
for sessions always comes from the meter's import register, never from integrated power.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from firmware.aio import wait_event
from hal.interfaces import DeviceError, EnergyMeter, MeterReading

log = logging.getLogger("firmware.metering")


class MeterSampler:
    """Reads every ``interval_s``; ``failures_to_fault`` failed reads in a row raise the meter fault."""

    def __init__(
        self,
        meter: EnergyMeter,
        on_fault: Callable[[bool], None],
        *,
        interval_s: float = 1.0,
        failures_to_fault: int = 3,
        idle_interval_s: float | None = None,
        is_idle: Callable[[], bool] = lambda: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meter = meter
        self._now = monotonic
        self.on_fault = on_fault
        self.interval_s = interval_s
        self.failures_to_fault = failures_to_fault
        self._reading_listeners: list[Callable[[MeterReading], None]] = []
        self.idle_interval_s = idle_interval_s if idle_interval_s is not None else interval_s
        self.is_idle = is_idle
        self.latest: MeterReading | None = None
        #: When ``latest`` arrived (``monotonic()``); None before the first reading.
        self.latest_at: float | None = None
        self._wake = asyncio.Event()
        self.failures = 0
        self.faulted = False

    async def sample(self) -> MeterReading | None:
        """One read; returns None (and counts a failure) when the meter does not answer."""
        try:
            reading = await self.meter.read()
        except DeviceError as exc:
            self.failures += 1
            if self.failures >= self.failures_to_fault and not self.faulted:
                self.faulted = True
                log.error("meter fault after %d failed reads: %s", self.failures, exc)
                self.on_fault(True)
            else:
                log.warning("meter read failed (%d in a row): %s", self.failures, exc)
            return None
        if self.faulted:
            log.warning("meter answers again after %d failed reads", self.failures)
            self.faulted = False
            self.on_fault(False)
        self.failures = 0
        self.latest = reading
        self.latest_at = self._now()
        for listener in self._reading_listeners:
            listener(reading)
        return reading

    async def register_wh(self) -> float | None:
        """A fresh import-register value for a session boundary (falls back to the latest reading)."""
        reading = await self.sample()
        if reading is None and self.latest is not None:
            log.warning(
                "using the last good meter register (%.1f Wh) for a session boundary",
                self.latest.energy_import_wh,
            )
            return self.latest.energy_import_wh
        return None if reading is None else reading.energy_import_wh

    def add_reading_listener(self, listener: Callable[[MeterReading], None]) -> None:
        """Called with every good reading (session peaks, energy allowances)."""
        self._reading_listeners.append(listener)

    def wake(self) -> None:
        """Read now (a session boundary or a status change makes a fresh reading worth having)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.sample()
            interval = self.idle_interval_s if self.is_idle() else self.interval_s
            await wait_event(self._wake, interval)
            self._wake.clear()


async def fresh_reading(
    meter: EnergyMeter | None, latest: Callable[[], MeterReading | None], timeout_s: float
) -> MeterReading | None:
    """The charger's own reading taken now, for limits that set it against another meter's reading.

    Two readings a second apart while the EV ramps at 10 A/s misplace amperes between "own" and "other" load;
    read back to back they differ by what the EV changes during one bus transaction. Callers read this just
    before the grid meter, so a rising EV makes the other load look larger, never smaller. Falls back to the
    latest sample when the meter cannot be read.
    """
    if meter is not None:
        try:
            async with asyncio.timeout(timeout_s):
                return await meter.read()
        except (DeviceError, TimeoutError) as exc:
            log.debug("own meter read failed (%s): using the latest sample", exc)
    return latest()
