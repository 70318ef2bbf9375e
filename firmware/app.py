"""Composition root: builds one charge point from its settings and runs it on one event loop.

Only this module picks hal backends. Nothing here is global, so several charge points can live
in one process (tests, and later the fleet simulator) without seeing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from firmware import sdnotify, version
from firmware.api import ApiError, ControlServer
from firmware.auth import AllowlistAuthorizer, Authorizer, FreeAuthorizer
from firmware.backends import build_hardware, unsupported
from firmware.charging.connector import Status
from firmware.charging.controller import ChargingController, ControllerSettings
from firmware.config import Settings
from firmware.ledger import SessionLedger
from firmware.limits.arbiter import Arbiter
from firmware.limits.manager import LimitsError, LimitsManager
from firmware.metering import MeterSampler
from firmware.payment.tariff import Tariff
from firmware.session import SessionManager
from firmware.store import Store
from firmware.supervision import BoardSupervisor
from hal.clock import Clock, SystemClock
from hal.interfaces import Hardware, MeterReading

if TYPE_CHECKING:
    from firmware.limits.mqtt_group import GroupMember
    from firmware.supervision import Board
    from hal.sim import SimBench

log = logging.getLogger("firmware.app")


def controller_settings(settings: Settings) -> ControllerSettings:
    c = settings.charger
    return ControllerSettings(
        max_current_a=c.max_current_a,
        phases=c.phases,
        tethered_cable=c.tethered_cable,
        ventilation_allowed=c.ventilation_allowed,
        connection_timeout_s=float(c.connection_timeout_s),
        feedback_timeout_s=settings.contactor.feedback_timeout_ms / 1000.0,
    )


def build_authorizer(settings: Settings) -> Authorizer:
    if settings.auth.mode == "free":
        return FreeAuthorizer()
    return AllowlistAuthorizer(settings.auth.allowlist)


class ChargePointApp:
    """One charge point: hardware, controller, sessions, metering and its control API."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        hardware: Hardware | None = None,
        sim_tick_s: float = 0.1,
        meter_interval_s: float = 1.0,
        control_tick_s: float | None = None,
        ocpp_response_timeout_s: float | None = None,
        ocpp_backoff: Any = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.hardware = hardware or build_hardware(settings, self.clock)
        self.sim = cast("SimBench | None", self.hardware.extras.get("sim"))
        self.board = cast("Board | None", self.hardware.extras.get("rpi"))
        self.sim_tick_s = sim_tick_s
        self.arbiter = Arbiter()
        control = controller_settings(settings)
        if control_tick_s is not None:
            control = replace(control, tick_s=control_tick_s, idle_tick_s=max(control_tick_s, 0.05))
        self.controller = ChargingController(self.hardware, self.arbiter, self.clock, control)
        self.limits = LimitsManager(
            self.arbiter, self.clock, rated_current_a=settings.hal.rated_current_a, wake=self.controller.wake
        )
        self.sampler = MeterSampler(
            self.hardware.meter,
            lambda active: self.controller.set_device_fault("meter", active),
            interval_s=meter_interval_s,
            idle_interval_s=max(meter_interval_s, 5.0),
            is_idle=lambda: self.controller.idle,
            monotonic=self.clock.monotonic,
        )
        self.controller.add_listener(lambda _event: self.sampler.wake())
        self._add_limit_sources()
        self.supervisor: BoardSupervisor | None = None
        if self.board is not None:
            self.supervisor = BoardSupervisor(
                self.board,
                self.controller,
                self.arbiter,
                self.clock,
                kick_s=settings.rpi.watchdog_kick_ms / 1000.0,
                rcd_test=settings.rpi.rcd_test_pin >= 0,
            )
        self._sim_changed = asyncio.Event()
        if self.sim is not None:
            self.sim.subscribe(self._sim_changed.set)
        self.sessions = SessionManager(
            self.controller,
            build_authorizer(settings),
            self.sampler,
            self.clock,
            free_vend_id_tag=settings.auth.free_id_tag if settings.auth.mode == "free" else None,
            uid_byte_order=cast(Literal["forward", "reverse"], settings.rfid.uid_byte_order),
            uid_case=cast(Literal["upper", "lower"], settings.rfid.uid_case),
        )
        self.restart_requested: str | None = None
        self._stop: asyncio.Event | None = None
        # One store per charger: the session ledger always, the OCPP queue, keys and profiles when a CSMS is set.
        self.store = Store(Path(settings.store.dir) / "evse.db")
        self.ocpp: Any = None
        if settings.ocpp.url:
            from firmware.ocpp.v16 import assembly

            self.ocpp = assembly.build(
                settings,
                self.store,
                self.clock,
                self.controller,
                self.sessions,
                self.sampler,
                firmware_version=version(),
                restart=self.request_restart,
                response_timeout_s=ocpp_response_timeout_s or settings.ocpp.call_timeout_s,
                backoff=ocpp_backoff,
            )
            if settings.auth.mode == "ocpp":
                self.sessions.authorizer = self.ocpp.authorizer
            self.sampler.add_reading_listener(self.ocpp.service.transactions.on_meter_reading)
        # After the OCPP reporter's listeners: a started session has its transaction ref by then.
        self.tariff = Tariff.from_config(**asdict(settings.tariff))
        self.ledger = SessionLedger(
            self.store,
            self.clock,
            self.tariff,
            update_every_s=settings.store.ledger_interval_s,
            evse_suspended=lambda: self.controller.connector.status is Status.SUSPENDED_EVSE,
        )
        if self.ocpp is not None:
            self.ocpp.service.transactions.power_loss_time = self.ledger.power_loss_stop
            self.ocpp.pricing.on_final_cost(
                lambda final, ref: self.ledger.set_backend_cost(
                    ref, final.cost, {"priceText": final.price_text, "transactionId": final.transaction_id}
                )
            )
        self.sessions.on_session_started(self.ledger.on_session_started)
        self.sessions.on_session_finished(self.ledger.on_session_finished)
        self.sampler.add_reading_listener(self.ledger.on_reading)

    def _add_limit_sources(self) -> None:
        """The local claims the settings ask for; each source lives in its own module under firmware.limits."""
        s = self.settings
        hw = self.hardware
        if s.site.fuse_a > 0:
            from firmware.limits.site import SiteFuseGuard, SiteFuseParams

            if hw.grid_meter is None:
                raise RuntimeError("site.fuse_a is set but the hardware has no grid meter")
            params = SiteFuseParams(
                fuse_a=s.site.fuse_a,
                margin_a=s.site.margin_a,
                fallback_a=s.site.fallback_a,
                stale_after_s=s.site.stale_after_s,
                rise_delay_s=s.site.rise_delay_s,
                poll_interval_s=s.site.poll_interval_s,
                phases=tuple(range(1, s.charger.phases + 1)),
            )
            site_guard = SiteFuseGuard(
                hw.grid_meter, self.arbiter, self.clock, self._own_reading, params, own_meter=hw.meter
            )
            self.limits.add("site", site_guard)
        if hw.thermometer is not None:
            from firmware.limits.thermal import ThermalGuard, ThermalParams

            thermal = ThermalParams(
                derate_start_c=s.thermal.derate_start_c,
                cutoff_c=s.thermal.cutoff_c,
                hysteresis_c=s.thermal.hysteresis_c,
                full_a=s.charger.max_current_a,
            )
            self.limits.add("thermal", ThermalGuard(hw.thermometer, self.arbiter, self.clock, thermal))
        if s.solar.enabled:
            from firmware.limits.solar import SolarGuard, SolarParams

            if hw.grid_meter is None:
                raise RuntimeError("solar.enabled is set but the hardware has no grid meter")
            solar = SolarParams(
                start_delay_s=s.solar.start_delay_s,
                stop_delay_s=s.solar.stop_delay_s,
                allow_import_w=s.solar.allow_import_w,
                poll_interval_s=s.solar.poll_interval_s,
                stale_after_s=s.solar.stale_after_s,
                phases=s.charger.phases,
                nominal_voltage_v=s.charger.nominal_voltage_v,
            )
            solar_guard = SolarGuard(
                hw.grid_meter, self.arbiter, self.clock, self._own_reading, solar, own_meter=hw.meter
            )
            self.limits.add("solar", solar_guard)
            self.limits.solar = solar_guard
        if s.sharing.broker:
            self.limits.add("shared", self._group_member())
        if s.offpeak.windows:
            from firmware.limits.manager import OffPeakSource
            from firmware.limits.offpeak import OffPeakGate

            source = OffPeakSource(
                OffPeakGate.from_config(s.offpeak.windows, s.offpeak.timezone), self.arbiter, self.clock
            )
            self.limits.add("offpeak", source)
            self.limits.offpeak = source

    def _group_member(self) -> GroupMember:
        """This charger's part in a fuse shared over MQTT (firmware.limits.mqtt_group)."""
        from urllib.parse import urlsplit

        from firmware.limits.fair_share import DemandEstimator
        from firmware.limits.mqtt_group import GroupMember, GroupSettings, cap_without_shared

        s, share = self.settings, self.settings.sharing
        broker = urlsplit(share.broker)
        group = GroupSettings(
            host=broker.hostname or "",
            port=broker.port or 1883,
            group=share.group,
            charger_id=s.charger.id,
            fuse_a=share.fuse_a,
            username=share.username or None,
            password=share.password or None,
            margin_a=share.margin_a,
            fallback_a=share.fallback_a,
            member_timeout_s=share.member_timeout_s,
            publish_interval_s=share.publish_interval_s,
        )
        estimator = DemandEstimator(s.charger.max_current_a)
        controller, sampler = self.controller, self.sampler

        def draw() -> float:
            reading = sampler.latest
            return max((a for a in reading.current_a if a is not None), default=0.0) if reading else 0.0

        def demand() -> float:
            now = self.clock.monotonic()
            return estimator.update(
                now,
                wants=controller.in_session,
                offered_a=controller.offered_a,
                draw_a=draw(),
                cap_a=cap_without_shared(self.arbiter, now),
            )

        def actual() -> tuple[float, float] | None:
            return None if sampler.latest_at is None else (draw(), sampler.latest_at)

        member = GroupMember(
            group, self.arbiter, self.clock, demand=demand, actual=actual, offered=lambda: controller.offered_a
        )
        controller.add_listener(lambda _event: member.poke())
        return member

    def _own_reading(self) -> MeterReading | None:
        return self.sampler.latest

    # ---- status API --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"charger_id": self.settings.charger.id, **self.controller.status()}
        decision = self.arbiter.decide(self.clock.monotonic())
        winner = decision.winner
        status["limit"] = {
            "winner": None if winner is None else winner.source,
            "value_a": round(decision.current_a, 1),
            "reason": None if winner is None else winner.reason,
        }
        status["limits"] = self.limits.describe()
        reading = self.sampler.latest
        status["meter"] = (
            None
            if reading is None
            else {
                "power_w": round(reading.total_power_w, 1),
                "energy_wh": round(reading.energy_import_wh, 1),
                "current_a": [None if v is None else round(v, 2) for v in reading.current_a],
                "voltage_v": [None if v is None else round(v, 1) for v in reading.voltage_v],
            }
        )
        status["transaction"] = self.sessions.transaction_status()
        if status["transaction"] is not None:
            status["transaction"]["cost"] = self._cost_status()
        status["payment"] = self._payment_status()
        status["ocpp"] = (
            self.ocpp.service.status() if self.ocpp is not None else {"enabled": False, "connected": False, "queued": 0}
        )
        status["auth_mode"] = self.settings.auth.mode
        if self.sim is not None:
            status["sim"] = self.sim.snapshot()
        return status

    def _cost_status(self) -> dict[str, Any] | None:
        """The running session's cost: the CSMS's when it sent one (California Pricing), else the local estimate."""
        record = self.sessions.current
        if self.ocpp is not None and record is not None and record.transaction_ref is not None:
            backend = self.ocpp.pricing.display(self.ocpp.outbox.transaction_id(record.transaction_ref))
            if backend is not None:  # the CSMS's figure, rounded as NumberOfDecimalsForCostValues says
                return {**backend, "total": backend.get("cost_rounded", backend.get("cost")), "currency": None}
        cost = self.ledger.running_cost()
        if cost is None:
            return None
        return {"source": "local", "total": str(cost.total), "currency": cost.currency, **cost.as_dict()}

    def _payment_status(self) -> dict[str, Any]:
        decision = self.sessions.last_decision
        template = self.settings.payment.adhoc_url
        return {
            "adhoc_url": template.format(charger_id=self.settings.charger.id, connector_id=1) if template else None,
            "tariff": None if self.ledger.tariff is None else self.tariff.describe(),
            "last_authorization": None
            if decision is None
            else {"id_tag": decision.id_tag, "status": decision.status.value, "source": decision.source},
        }

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        async def status(_: dict[str, Any]) -> Any:
            return self.status()

        async def limits(args: dict[str, Any]) -> Any:
            try:
                return await self.limits.handle(args)
            except LimitsError as exc:
                raise ApiError(str(exc)) from exc

        async def sim(args: dict[str, Any]) -> Any:
            return await self.sim_action(str(args.get("action", "")), args.get("value"))

        return {"status": status, "limits": limits, "sim": sim}

    async def sim_action(self, action: str, value: Any) -> str:
        bench = self.sim
        if bench is None:
            raise ApiError("this charger runs on real hardware: there is no simulated hardware to drive")
        try:
            if action == "plug":
                bench.plug()
            elif action == "unplug":
                bench.unplug()
            elif action == "tap":
                bench.tap(bytes.fromhex(str(value)))
            elif action == "ev.max_current":
                bench.set_ev_max_current(float(value))
            elif action == "ev.soc":
                bench.set_ev_soc(float(value))
            elif action == "ev.full":
                bench.ev_full()
            elif action == "ev.ventilation":
                bench.set_ev_ventilation(bool(value))
            elif action == "ev.request":
                bench.ev_request(bool(value))
            elif action == "house_load":
                load = tuple(float(v) for v in value) if isinstance(value, list) else float(value)
                bench.set_house_load(load)  # type: ignore[arg-type]  # the bench checks length and values
            elif action == "pv":
                power = tuple(float(v) for v in value) if isinstance(value, list) else float(value)
                bench.set_pv_power(power)  # type: ignore[arg-type]  # the bench checks length and values
            elif action == "temperature":
                bench.set_temperature_c(float(value))
            elif action == "ambient":
                bench.set_ambient_c(float(value))
            elif action == "fault":
                bench.inject(str(value))
            elif action == "clear":
                bench.clear(None if value is None else str(value))
            else:
                raise ApiError(f"unknown sim action {action!r}")
        except (TypeError, ValueError) as exc:
            raise ApiError(f"sim {action}: {exc}") from exc
        self.controller.wake()
        return "ok"

    def request_restart(self, kind: str) -> None:
        """A Reset from the CSMS: stop everything cleanly; the caller restarts the process."""
        self.restart_requested = kind
        if self._stop is not None:
            self._stop.set()

    # ---- running ------------------------------------------------------------------------
    async def _tick_sim(self, bench: SimBench) -> None:
        """Move the simulated EV along; an unplugged EV does nothing by itself, so tick rarely then."""
        loop = asyncio.get_running_loop()
        changed = self._sim_changed
        while True:
            bench.tick()
            changed.clear()
            interval = self.sim_tick_s if bench.ev.plugged else max(self.sim_tick_s, 1.0)
            # A bench change or the interval, whichever comes first. The event is ours alone, so the timer may set
            # it: cheaper than wait_event's timeout scope, and the next round clears it either way.
            timer = loop.call_later(interval, changed.set)
            try:
                await changed.wait()
            finally:
                timer.cancel()

    async def _announce_ready(self) -> None:
        """READY=1 once the first control step has put pilot and contactor in their safe state."""
        while self.controller.last_step_at is None:
            await asyncio.sleep(0.05)
        sdnotify.status(f"charge point {self.settings.charger.id} running")
        sdnotify.ready()

    async def run(self, stop: asyncio.Event, *, serve_api: bool = True) -> None:
        """Run until ``stop`` is set or a task fails; the charger is left safe either way."""
        if self.supervisor is not None:
            self.supervisor.start()  # a board whose ADC does not answer fails here, before anything is served
        if self.ledger.has_open_sessions():  # sessions a power cut left open; no meter read at a normal start
            self.ledger.recover(await self.sampler.register_wh())
        server = ControlServer(self.settings.control.socket, self.handlers()) if serve_api else None
        if server is not None:
            await server.start()
        tasks = [
            asyncio.create_task(self.controller.run(), name="control-loop"),
            asyncio.create_task(self.sampler.run(), name="meter"),
            asyncio.create_task(self.sessions.run(), name="sessions"),
            asyncio.create_task(self.sessions.run_reader(self.hardware.reader), name="card-reader"),
        ]
        if self.sim is not None:
            tasks.append(asyncio.create_task(self._tick_sim(self.sim), name="sim"))
        if self.supervisor is not None:
            tasks.append(asyncio.create_task(self.supervisor.run(), name="board-watchdog"))
        tasks.extend(asyncio.create_task(run(), name=name) for name, run in self.limits.tasks())
        if self.ocpp is not None:
            tasks.append(asyncio.create_task(self.ocpp.service.run(), name="ocpp"))
            transactions = self.ocpp.service.transactions
            tasks.append(asyncio.create_task(transactions.run_sampling(), name="ocpp-meter-values"))
            tasks.append(asyncio.create_task(transactions.run_clock_aligned(), name="ocpp-clock-aligned"))
        interval = sdnotify.watchdog_interval_s()
        if interval is not None:  # systemd's watchdog: pinged only while the control loop keeps stepping
            tasks.append(
                asyncio.create_task(sdnotify.run_watchdog(self.controller.healthy, interval), name="sd-watchdog")
            )
        announce = asyncio.create_task(self._announce_ready(), name="sd-ready")
        self._stop = stop
        stopper = asyncio.create_task(stop.wait(), name="stop")
        log.info(
            "charge point %s running (%s hardware)",
            self.settings.charger.id,
            "simulated" if self.sim is not None else "real",
        )
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise RuntimeError(f"task {task.get_name()} failed") from task.exception()
        finally:
            sdnotify.stopping()
            sdnotify.status("stopping: contactor opening")
            announce.cancel()
            await self.limits.close()  # e.g. tell the shared-fuse group we leave, while the control loop still runs
            for task in [*tasks, stopper]:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.controller.enter_safe_state()
            if self.supervisor is not None:
                self.supervisor.close()  # relay low, pilot -12 V, sampling stopped
            close_led = getattr(self.hardware.indicator, "close", None)
            if close_led is not None:
                close_led()
            if server is not None:
                await server.close()
            if self.ocpp is not None:
                diagnostics = self.ocpp.service.diagnostics
                if diagnostics is not None:
                    await diagnostics.close()  # a running upload stops and cleans up its partial file first
            self.store.close()
            hw = self.hardware
            for device in {id(d): d for d in (hw.meter, hw.grid_meter, hw.reader) if d is not None}.values():
                close = getattr(device, "aclose", None)  # Modbus meters release their bus, readers their thread
                if close is not None:
                    await close()
            log.info("charge point %s stopped; contactor open", self.settings.charger.id)


async def run(settings: Settings, config_path: str | Path | None = None) -> int:
    """``evse run``: the daemon. Exit codes: 0 after a clean stop, 1 on failure, 2 on configuration."""
    from firmware.logs import setup_logging

    errors = unsupported(settings)
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 2
    setup_logging(
        settings.logging.level,
        settings.store.dir,
        max_bytes=settings.logging.file_max_kb * 1024,
        backup_count=settings.logging.file_count,
    )
    if config_path is not None:
        log.info("configuration from %s", config_path)
    app = ChargePointApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.run(stop)
    except Exception:
        log.critical("charge point stopped on an error", exc_info=True)
        return 1
    if app.restart_requested is not None:
        from firmware.update.launcher import relaunch_command

        log.warning("restarting after a %s reset", app.restart_requested)
        # Through the firmware launcher when it started us (it picks the active slot), else the same command again.
        argv = relaunch_command() or [sys.executable, "-m", "firmware", *sys.argv[1:]]
        os.execv(argv[0], argv)
    return 0


def demo_settings(settings: Settings, work_dir: Path) -> Settings:
    """The demo's variant of ``settings``: simulated hardware, private store and socket."""
    return replace(
        settings,
        hal=replace(settings.hal, backend="sim"),
        meter=replace(settings.meter, model="sim"),
        rfid=replace(settings.rfid, reader="sim"),
        store=replace(settings.store, dir=str(work_dir)),
        control=replace(settings.control, socket=str(work_dir / "control.sock")),
    )
