"""One charger of the fleet: the real charge point (``ChargePointApp``) on simulated hardware, and its driver.

Each charger has its own settings, store directory, event listeners and random stream; nothing is shared
with its siblings but the event loop and the traffic recorder. The driver acts the scenario on the
simulated EV: it arrives, presents a card, stays for its dwell time (the EV stops drawing once it has the
energy it wanted) and leaves.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from firmware.aio import wait_event
from firmware.app import ChargePointApp
from firmware.charging.connector import Status
from firmware.config import Settings
from firmware.fleet.scenario import Scenario
from firmware.fleet.stats import ChargerObserver, TrafficRecorder
from firmware.session import SessionRecord

log = logging.getLogger("firmware.fleet")

#: Coarser than a real charger's (0.25 s control tick, 0.1 s EV model): a fleet must fit on a core or two.
FLEET_TICK_S = 1.0
FLEET_METER_INTERVAL_S = 5.0


@dataclass
class DriverCounts:
    arrivals: int = 0
    rejected: int = 0
    sessions_started: int = 0
    sessions_completed: int = 0
    energy_wh: float = 0.0


def charger_settings(base: Settings, charger_id: str, url: str, store_dir: Path) -> Settings:
    """``base`` made into one fleet member: its own identity, store, simulated hardware and OCPP auth."""
    return replace(
        base,
        charger=replace(base.charger, id=charger_id),
        ocpp=replace(base.ocpp, url=url),
        auth=replace(base.auth, mode="ocpp"),
        hal=replace(base.hal, backend="sim"),
        meter=replace(base.meter, model="sim"),
        rfid=replace(base.rfid, reader="sim"),
        grid_meter=None,
        store=replace(base.store, dir=str(store_dir)),
        control=replace(base.control, socket=str(store_dir / "control.sock")),
    )


class FleetCharger:
    def __init__(
        self,
        index: int,
        settings: Settings,
        scenario: Scenario,
        recorder: TrafficRecorder,
        *,
        tick_s: float = FLEET_TICK_S,
        meter_interval_s: float = FLEET_METER_INTERVAL_S,
    ) -> None:
        self.index = index
        self.id = settings.charger.id
        self.scenario = scenario
        self.rng = scenario.rng(index)
        self.app = ChargePointApp(settings, sim_tick_s=tick_s, control_tick_s=tick_s, meter_interval_s=meter_interval_s)
        if self.app.ocpp is None:
            raise ValueError(f"{self.id}: a fleet charger needs an OCPP URL")
        self.app.ocpp.service.call_observer = ChargerObserver(recorder)
        self.counts = DriverCounts()
        self.app.sessions.on_session_started(self._started)
        self.app.sessions.on_session_finished(self._finished)

    # ---- what the fleet reads ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.app.ocpp is not None and self.app.ocpp.service.connection.state == "connected"

    @property
    def booted(self) -> bool:
        return self.app.ocpp is not None and self.app.ocpp.service.online

    @property
    def charging(self) -> bool:
        return self.app.controller.connector.status is Status.CHARGING

    @property
    def queued(self) -> int:
        return len(self.app.ocpp.outbox) if self.app.ocpp is not None else 0

    def _started(self, record: SessionRecord) -> None:
        self.counts.sessions_started += 1

    def _finished(self, record: SessionRecord) -> None:
        self.counts.sessions_completed += 1
        self.counts.energy_wh += record.energy_wh() or 0.0

    # ---- running --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, start_delay_s: float) -> None:
        """Boot after ``start_delay_s`` (the ramp), then drive EVs until ``stop``; the charger stops safe."""
        if start_delay_s > 0 and await _wait(stop, start_delay_s):
            return
        app_task = asyncio.create_task(self.app.run(stop, serve_api=False), name=f"{self.id}-app")
        driver = asyncio.create_task(self._drive(stop), name=f"{self.id}-driver")
        try:
            await app_task
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)

    async def _drive(self, stop: asyncio.Event) -> None:
        bench = self.app.sim
        assert bench is not None  # fleet chargers are always simulated
        s = self.scenario
        while not await _wait(stop, s.next_arrival_s(self.rng)):
            self.counts.arrivals += 1
            demand_kwh = s.energy_kwh(self.rng)
            bench.set_ev_max_current(self.rng.choice(s.ev_max_current_a))
            bench.set_ev_soc(max(0.0, 100.0 - 100.0 * demand_kwh / s.battery_kwh))
            bench.plug()
            id_tag, _known = s.card(self.rng)
            decision = await self.app.sessions.present_id_tag(id_tag)
            if decision is None or not decision.accepted:
                self.counts.rejected += 1
                dwell = min(30.0, s.dwell_s(self.rng))  # a refused driver leaves soon
            else:
                dwell = s.dwell_s(self.rng)
            stopped = await _wait(stop, dwell)
            bench.unplug()
            self.app.controller.wake()
            if stopped:
                return


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when stopping."""
    if stop.is_set():
        return True
    return await wait_event(stop, seconds if math.isfinite(seconds) else 365 * 86400.0)
