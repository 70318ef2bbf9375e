"""The manual override, the hardware claim and `evse limits` end to end through the control socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from firmware import cli
from firmware.app import ChargePointApp, demo_settings
from firmware.config import Settings, default_settings
from firmware.limits.arbiter import Arbiter
from firmware.limits.manager import LimitsError, LimitsManager
from hal.clock import FakeClock


def manager() -> tuple[LimitsManager, Arbiter, FakeClock, list[int]]:
    clock = FakeClock()
    arbiter = Arbiter()
    woken: list[int] = []
    return LimitsManager(arbiter, clock, rated_current_a=25.0, wake=lambda: woken.append(1)), arbiter, clock, woken


def test_hardware_rating_is_a_claim() -> None:
    _m, arbiter, clock, _ = manager()
    decision = arbiter.decide(clock.monotonic())
    assert decision.winner is not None and decision.winner.source == "hardware"
    assert decision.current_a == 25.0


async def test_manual_override_caps_and_expires() -> None:
    m, arbiter, clock, _ = manager()
    answer = await m.handle({"action": "set", "value_a": 10, "for_s": 600})
    assert answer.startswith("manual limit 10 A until ")
    assert arbiter.decide(clock.monotonic()).current_a == 10.0
    clock.advance(599)
    assert arbiter.decide(clock.monotonic()).current_a == 10.0
    clock.advance(1)
    assert arbiter.decide(clock.monotonic()).winner.source == "hardware"  # type: ignore[union-attr]


async def test_manual_override_without_duration_still_ends_after_a_week() -> None:
    m, arbiter, clock, _ = manager()
    await m.handle({"action": "set", "value_a": 8})
    clock.advance(7 * 86400 - 1)
    assert arbiter.decide(clock.monotonic()).current_a == 8.0
    clock.advance(1)
    assert arbiter.decide(clock.monotonic()).current_a == 25.0


async def test_manual_clear() -> None:
    m, arbiter, clock, _ = manager()
    assert await m.handle({"action": "clear"}) == "no manual limit was set"
    await m.handle({"action": "set", "value_a": 6})
    assert await m.handle({"action": "clear"}) == "manual limit cleared"
    assert arbiter.decide(clock.monotonic()).current_a == 25.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"action": "set", "value_a": -1}, "expected 0 or more amperes"),
        ({"action": "set", "value_a": "ten"}, "value_a: expected a number"),
        ({"action": "set", "value_a": True}, "value_a: expected a number"),
        ({"action": "set", "value_a": float("nan")}, "expected 0 or more amperes"),
        ({"action": "set", "value_a": 10, "for_s": 0}, "at most 7 days"),
        ({"action": "set", "value_a": 10, "for_s": 8 * 86400}, "at most 7 days"),
        ({"action": "boost"}, "no off-peak windows are configured"),
        ({"action": "unboost"}, "no off-peak windows are configured"),
        ({"action": "fly"}, "unknown limits action"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(args: dict[str, object], message: str) -> None:
    m, arbiter, _clock, _ = manager()
    with pytest.raises(LimitsError, match=message):
        await m.handle(args)
    assert arbiter.get("manual") is None


# ── end to end: the daemon, its socket and the CLI ──────────────────────────────────────────────────────
def free_settings(**sections: Any) -> Settings:
    """Demo settings in free-vend mode with ``sections`` changed (each a function of the default section)."""
    work = Path(tempfile.mkdtemp(prefix="evse-lim-", dir="/tmp"))
    settings = demo_settings(default_settings(), work)
    settings = replace(settings, auth=replace(settings.auth, mode="free"))
    return replace(settings, **{name: change(getattr(settings, name)) for name, change in sections.items()})


@contextlib.asynccontextmanager
async def running(settings: Settings, clock: FakeClock) -> AsyncIterator[ChargePointApp]:
    charge_point = ChargePointApp(settings, clock=clock, sim_tick_s=0.005, meter_interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(charge_point.run(stop))
    try:
        await asyncio.sleep(0.05)
        yield charge_point
    finally:
        stop.set()
        await task


@pytest.fixture
async def app() -> AsyncIterator[tuple[ChargePointApp, FakeClock]]:
    clock = FakeClock()
    async with running(free_settings(), clock) as charge_point:
        yield charge_point, clock


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def advance(app: ChargePointApp, clock: FakeClock, seconds: float, dt: float = 0.05) -> None:
    assert app.sim is not None
    for _ in range(round(seconds / dt)):
        clock.advance(dt)
        app.sim.tick()
        app.controller.wake()  # the control loop's own timer runs in real time, not on the fake clock
        await asyncio.sleep(0.002)


async def test_evse_limits_set_reaches_the_pilot_and_clear_restores(
    app: tuple[ChargePointApp, FakeClock], capsys: pytest.CaptureFixture[str]
) -> None:
    charge_point, clock = app
    sock = charge_point.settings.control.socket
    assert charge_point.sim is not None
    charge_point.sim.plug()
    await advance(charge_point, clock, 6.0)
    assert charge_point.controller.offered_a == 32.0

    assert await run_cli("limits", "set", "10", "--for", "30m", "--socket", sock) == 0
    assert capsys.readouterr().out.startswith("manual limit 10 A until ")
    # The arbiter wakes the control loop: the pilot follows without waiting for a tick of simulated time.
    await asyncio.sleep(0.05)
    assert charge_point.controller.offered_a == 10.0
    assert charge_point.sim.pilot.duty == pytest.approx(10 / 0.6)

    assert await run_cli("limits", "--socket", sock) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("winner: manual 10.0 A (evse limits set, until ")
    rows = {line[1:].split()[0]: line for line in out[2:] if line.startswith(("*", "  "))}
    assert rows["manual"].startswith("*") and "30m00s" in rows["manual"]
    assert {"hardware", "config", "cable"} <= set(rows)

    assert await run_cli("limits", "clear", "--socket", sock) == 0
    assert capsys.readouterr().out.strip() == "manual limit cleared"
    await advance(charge_point, clock, 4.0)
    assert charge_point.controller.offered_a == 10.0  # a rise waits 5 s after the previous change
    await advance(charge_point, clock, 1.5)
    assert charge_point.controller.offered_a == 32.0

    assert await run_cli("status", "--json", "--socket", sock) == 0
    status = json.loads(capsys.readouterr().out)
    assert {c["source"] for c in status["limits"]["claims"]} >= {"hardware", "config", "cable"}


async def test_evse_limits_refusals_exit_1_or_2(
    app: tuple[ChargePointApp, FakeClock], capsys: pytest.CaptureFixture[str]
) -> None:
    charge_point, _ = app
    sock = charge_point.settings.control.socket
    assert await run_cli("limits", "boost", "--socket", sock) == 1
    assert "no off-peak windows are configured" in capsys.readouterr().err
    assert await run_cli("limits", "set", "-3", "--socket", sock) == 2
    assert await run_cli("limits", "set", "10", "--for", "forever", "--socket", sock) == 2
    assert "invalid duration 'forever'" in capsys.readouterr().err
    assert charge_point.arbiter.get("manual") is None


async def test_offpeak_holds_outside_the_window_and_boost_lifts_it(capsys: pytest.CaptureFixture[str]) -> None:
    settings = free_settings(offpeak=lambda o: replace(o, windows=("Mon-Fri 22:00-06:00",), timezone="Europe/Berlin"))
    clock = FakeClock()  # Thu 2026-01-01 00:00 UTC = 01:00 Berlin: inside the window
    clock.jump(3600 * 10)  # 11:00 Berlin: outside
    sock = settings.control.socket
    async with running(settings, clock) as charge_point:
        assert charge_point.sim is not None
        charge_point.sim.plug()
        await advance(charge_point, clock, 3.0)
        assert charge_point.controller.connector.status.value == "SuspendedEVSE"
        assert charge_point.controller.offered_a == 0.0
        assert await run_cli("limits", "--socket", sock) == 0
        out = capsys.readouterr().out
        assert "winner: offpeak 0.0 A (outside off-peak window (next opens Thu 22:00 Europe/Berlin))" in out

        assert await run_cli("limits", "boost", "--for", "2h", "--socket", sock) == 0
        assert capsys.readouterr().out.startswith("boost until 2026-01-01T12:00")
        await advance(charge_point, clock, 6.0)
        assert charge_point.controller.connector.status.value == "Charging"
        assert charge_point.controller.offered_a == 32.0

        assert await run_cli("limits", "unboost", "--socket", sock) == 0
        await asyncio.sleep(0.05)
        assert charge_point.controller.offered_a == 0.0
        assert charge_point.controller.connector.status.value == "SuspendedEVSE"


async def test_site_fuse_and_thermal_are_wired_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware.config import MeterSettings
    from firmware.limits.site import SiteFuseGuard

    settings = free_settings(
        grid_meter=lambda _g: MeterSettings(model="sim"),
        site=lambda site: replace(site, fuse_a=35.0, margin_a=2.0, fallback_a=6.0),
    )
    clock = FakeClock()
    sock = settings.control.socket
    async with running(settings, clock) as charge_point:
        assert charge_point.sim is not None
        guard = charge_point.limits._sources["site"]
        assert isinstance(guard, SiteFuseGuard)
        assert "thermal" in charge_point.limits._sources
        charge_point.sim.plug()
        await guard.poll_once()
        await advance(charge_point, clock, 8.0)
        await guard.poll_once()
        assert charge_point.controller.offered_a == 32.0

        assert await run_cli("sim", "house-load", "20", "--socket", sock) == 0
        await advance(charge_point, clock, 0.1)
        await guard.poll_once()
        await asyncio.sleep(0.05)
        assert charge_point.controller.offered_a == 13.0  # 35 - 20 - 2
        assert charge_point.arbiter.get("site").reason == "fuse 35 A - other load 20.0 A (L1) - margin 2 A = 13.0 A"  # type: ignore[union-attr]

        assert await run_cli("sim", "fault", "grid-meter", "--socket", sock) == 0
        await advance(charge_point, clock, 6.0)
        await guard.poll_once()
        await asyncio.sleep(0.05)
        assert charge_point.controller.offered_a == 6.0
        assert charge_point.controller.connector.status.value == "Charging"
        capsys.readouterr()
        assert await run_cli("limits", "--socket", sock) == 0
        out = capsys.readouterr().out
        assert "winner: site 6.0 A (grid meter silent" in out
        assert "\nsite: " in out and "\nthermal: " in out


async def test_solar_holds_until_surplus_and_can_be_switched_off(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware.config import MeterSettings
    from firmware.limits.solar import SolarGuard

    settings = free_settings(
        grid_meter=lambda _g: MeterSettings(model="sim"),
        solar=lambda solar: replace(solar, enabled=True, start_delay_s=0),
    )
    clock = FakeClock()
    sock = settings.control.socket
    async with running(settings, clock) as charge_point:
        assert charge_point.sim is not None
        guard = charge_point.limits._sources["solar"]
        assert isinstance(guard, SolarGuard)
        charge_point.sim.plug()
        await advance(charge_point, clock, 3.0)
        await guard.poll_once()
        await advance(charge_point, clock, 3.0)
        assert charge_point.controller.connector.status.value == "SuspendedEVSE"
        assert charge_point.arbiter.get("solar").current_a == 0.0  # type: ignore[union-attr]

        assert await run_cli("sim", "pv", "6900", "--socket", sock) == 0  # 10 A per phase of export
        await advance(charge_point, clock, 0.5)
        await guard.poll_once()
        await guard.poll_once()
        await advance(charge_point, clock, 6.0)
        assert charge_point.controller.connector.status.value == "Charging"
        assert charge_point.controller.offered_a == 10.0

        assert await run_cli("limits", "solar", "off", "--socket", sock) == 0
        assert "solar surplus charging off" in capsys.readouterr().out
        assert charge_point.arbiter.get("solar") is None
        await advance(charge_point, clock, 6.0)
        assert charge_point.controller.offered_a == 32.0
