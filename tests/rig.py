"""A charge point on simulated hardware with a fake clock: the test bench for the control loop."""

from __future__ import annotations

import contextlib

from firmware.charging.connector import SessionStopped, Status
from firmware.charging.controller import ChargingController, ControllerEvent, ControllerSettings
from firmware.limits.arbiter import Arbiter
from firmware.limits.site import SiteFuseGuard, SiteFuseParams
from firmware.limits.thermal import ThermalGuard, ThermalParams
from hal.clock import FakeClock
from hal.iec61851 import current_for_duty
from hal.interfaces import DeviceError, MeterReading, PilotConstant
from hal.sim import EVParams, SimBench, ThermalModelParams
from hal.sim.bench import HouseLoad

_EPS = 1e-9


class Rig:
    def __init__(
        self,
        *,
        cable_a: float | None = 32.0,
        ventilation_allowed: bool = False,
        feedback: bool = True,
        max_current_a: float = 32.0,
        connection_timeout_s: float = 60.0,
        ev: EVParams | None = None,
        site: SiteFuseParams | None = None,
        thermal: ThermalParams | None = None,
        house_load_a: HouseLoad = 0.0,
        heat: ThermalModelParams | None = None,
        own_meter_interval_s: float = 1.0,
        site_reads_own_meter: bool = False,
    ) -> None:
        """``site`` / ``thermal`` add those limit sources, polled in simulated time like the app's tasks;
        the charger's own meter is sampled every ``own_meter_interval_s`` (as the app's MeterSampler)."""
        self.clock = FakeClock()
        self.bench = SimBench(
            self.clock,
            cable_a=cable_a,
            feedback=feedback,
            ev=ev or EVParams(),
            house_load_a=house_load_a,
            thermal=heat or ThermalModelParams(),
        )
        self.arbiter = Arbiter()
        self.ctl = ChargingController(
            self.bench.hardware(),
            self.arbiter,
            self.clock,
            ControllerSettings(
                max_current_a=max_current_a,
                tethered_cable=cable_a is None,
                ventilation_allowed=ventilation_allowed,
                connection_timeout_s=connection_timeout_s,
                feedback_timeout_s=0.5,
            ),
        )
        self.events: list[ControllerEvent] = []
        self.ctl.add_listener(self.events.append)
        self.ctl.enter_safe_state()
        hw = self.bench.hardware()
        self.own_reading: MeterReading | None = None
        self.own_meter_interval_s = own_meter_interval_s
        self.site: SiteFuseGuard | None = None
        self.thermal: ThermalGuard | None = None
        if site is not None:
            assert hw.grid_meter is not None
            self.site = SiteFuseGuard(
                hw.grid_meter,
                self.arbiter,
                self.clock,
                lambda: self.own_reading,
                site,
                own_meter=hw.meter if site_reads_own_meter else None,
            )
        if thermal is not None:
            assert hw.thermometer is not None
            self.thermal = ThermalGuard(hw.thermometer, self.arbiter, self.clock, thermal)
        now = self.clock.monotonic()
        self._due = {"own": now, "site": now, "thermal": now}

    def _is_due(self, task: str, interval: float) -> bool:
        """True once per ``interval`` of simulated time (at the first step on or after the due time)."""
        now = self.clock.monotonic()
        if now < self._due[task] - _EPS:
            return False
        while self._due[task] <= now + _EPS:
            self._due[task] += interval
        return True

    async def step(self) -> None:
        self.bench.tick()
        if self._is_due("own", self.own_meter_interval_s):
            with contextlib.suppress(DeviceError):  # the app's sampler keeps its last good reading too
                self.own_reading = await self.bench.meter.read()
        if self.site is not None and self._is_due("site", self.site.params.poll_interval_s):
            await self.site.poll_once()
        if self.thermal is not None and self._is_due("thermal", self.thermal.params.poll_interval_s):
            await self.thermal.poll_once()
        await self.ctl.step()

    async def run(self, seconds: float, dt: float = 0.05) -> None:
        """Advance time in steps of ``dt``, ticking the simulation and the control loop each time."""
        await self.step()
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end - 1e-9:
            self.clock.advance(min(dt, end - self.clock.monotonic()))
            await self.step()

    async def until(self, predicate: object, timeout: float, dt: float = 0.05) -> float:
        """Run until ``predicate()`` holds; returns the time it took (fails after ``timeout``)."""
        start = self.clock.monotonic()
        await self.step()
        while not predicate():  # type: ignore[operator]
            if self.clock.monotonic() - start > timeout:
                raise AssertionError(f"condition not met within {timeout} s (status {self.status})")
            self.clock.advance(dt)
            await self.step()
        return self.clock.monotonic() - start

    async def charging(self, tag: str = "CARD1") -> None:
        """Plug, authorize and wait until energy flows."""
        self.bench.plug()
        self.ctl.connector.authorize(tag)
        await self.until(lambda: self.status is Status.CHARGING and self.contactor_closed, 5.0)

    @property
    def status(self) -> Status:
        return self.ctl.connector.status

    @property
    def contactor_closed(self) -> bool:
        return self.bench.contactor.commanded

    @property
    def duty(self) -> float | None:
        return self.bench.pilot.duty

    @property
    def pilot_constant(self) -> PilotConstant | None:
        out = self.bench.pilot.output
        return out if isinstance(out, PilotConstant) else None

    @property
    def offered_a(self) -> float:
        duty = self.duty
        return 0.0 if duty is None else (current_for_duty(duty) or 0.0)

    def stops(self) -> list[SessionStopped]:
        return [e for e in self.events if isinstance(e, SessionStopped)]
