"""Solar surplus charging: the pure core, properties over random PV traces, the guard, and the Rig.

The Rig tests measure what the hardware does (PWM offer, the simulated EV's draw, the simulated grid
meter's signed power) while the simulated PV system ramps up in the morning and clouds pass.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig

from firmware.charging.connector import Status
from firmware.limits.arbiter import Arbiter
from firmware.limits.solar import (
    STEP_A,
    SolarCore,
    SolarGuard,
    SolarParams,
    grid_voltage,
    phases_in_use,
    surplus,
)
from hal.clock import FakeClock
from hal.interfaces import DeviceError, MeterReading, PilotConstant

P = SolarParams(start_delay_s=60.0, stop_delay_s=300.0, stale_after_s=10.0)
LOG = "firmware.limits.solar"
V = 230.0

Triple = tuple[float | None, float | None, float | None]


def grid(total_w: float, volts: float = V) -> MeterReading:
    """A balanced grid reading: signed power, current magnitude (as an SDM630 reports them)."""
    w = total_w / 3
    return MeterReading((volts, volts, volts), (abs(w) / volts,) * 3, (w, w, w), total_w, 0.0)


def own(amps: float, phases: int = 3, volts: float = V) -> MeterReading:
    current: Triple = (amps, amps if phases > 1 else 0.0, amps if phases > 2 else 0.0)
    watts: Triple = tuple(None if a is None else volts * a for a in current)  # type: ignore[assignment]
    return MeterReading((volts, volts, volts), current, watts, volts * amps * phases, 0.0)


def feed(core: SolarCore, grid_w: float, t0: float, t1: float, every: float = 2.0, own_a: float = 0.0) -> float:
    """Readings every ``every`` seconds from t0 up to and including t1; returns the last claim."""
    t, claim = t0, 0.0
    while t <= t1 + 1e-9:
        claim = core.on_reading(grid(grid_w), own(own_a) if own_a else None, t).current_a
        t += every
    return claim


# -- the formula ---------------------------------------------------------------------------------------
def test_surplus_adds_the_chargers_own_power_back_and_the_allowed_import() -> None:
    s = surplus(P, grid(-2760.0), None)  # 2760 W export, charger idle: 2760 / (230 x 3) = 4 A
    assert s is not None and s.amps == pytest.approx(4.0) and s.phases == 3 and s.voltage_v == V
    s = surplus(P, grid(1380.0), own(6.0))  # charging 4140 W, 1380 W of it from the grid
    assert s is not None and s.amps == pytest.approx(4.0) and s.own_w == pytest.approx(4140.0)
    s = surplus(SolarParams(allow_import_w=690.0), grid(1380.0), own(6.0))
    assert s is not None and s.amps == pytest.approx(5.0) and s.watts == pytest.approx(3450.0)
    assert surplus(P, grid(math.nan), None) is None


def test_phases_in_use_come_from_the_chargers_own_meter() -> None:
    assert phases_in_use(P, None) == 3
    assert phases_in_use(P, own(0.0)) == 3  # nothing drawn: the configured phases
    assert phases_in_use(P, own(10.0, phases=1)) == 1
    assert phases_in_use(SolarParams(phases=1), own(10.0, phases=2)) == 2
    # A single-phase car taking 2300 W of a 2300 W surplus may have 10 A on its one phase.
    s = surplus(P, grid(0.0), own(10.0, phases=1))
    assert s is not None and s.amps == pytest.approx(10.0)


def test_voltage_is_the_grids_plausible_mean_else_nominal() -> None:
    assert grid_voltage(P, grid(0.0, volts=240.0)) == 240.0
    no_volts = MeterReading((None, None, None), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 0.0)
    assert grid_voltage(P, no_volts) == 230.0  # a meter without voltages
    mixed = MeterReading((240.0, None, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 0.0)
    assert grid_voltage(P, mixed) == 240.0
    s = surplus(P, grid(-7200.0, volts=240.0), None)
    assert s is not None and s.amps == pytest.approx(10.0)


# -- the state machine -----------------------------------------------------------------------------------
def test_starts_only_after_start_delay_then_follows_the_surplus_in_half_amps() -> None:
    core = SolarCore(P, now=0.0)
    assert core.claim.current_a == 0.0 and core.state == "starting"
    d = core.on_reading(grid(-5520.0), None, 0.0)  # 8 A surplus
    assert (d.current_a, d.reason) == (0.0, "solar surplus 8.0 A >= 6 A: starting in 60 s")
    assert feed(core, -5520.0, 2.0, 58.0) == 0.0
    assert core.describe(58.0)["start_in_s"] == 2.0
    d = core.on_reading(grid(-5520.0), None, 60.0)
    assert (d.current_a, d.reason) == (8.0, "solar surplus 8.0 A (5520 W export)")
    assert core.state == "running" and core.running
    # Charging at 8 A (5520 W) with 2553 W still exported: 11.7 A surplus, rounded down to 11.5 A.
    d = core.on_reading(grid(-2553.0), own(8.0), 62.0)
    assert d.current_a == 11.5 and d.reason == "solar surplus 11.7 A (2553 W export)"
    d = core.on_reading(grid(+345.0), own(11.5), 64.0)  # a kettle: 345 W import = 0.5 A less, at once
    assert d.current_a == 11.0 and d.reason == "solar surplus 11.0 A (345 W import)"


def test_a_dip_during_the_start_wait_starts_the_wait_over() -> None:
    core = SolarCore(P, now=0.0)
    feed(core, -5520.0, 0.0, 50.0)
    d = core.on_reading(grid(-3000.0), None, 52.0)  # 4.3 A: not enough
    assert d.current_a == 0.0 and d.reason == "solar surplus 4.3 A < 6 A for 0 s: waiting"
    assert feed(core, -5520.0, 54.0, 112.0) == 0.0
    assert core.on_reading(grid(-5520.0), None, 114.0).current_a == 8.0  # 60 s after 54


def test_short_surplus_holds_6_a_until_stop_delay_then_stops() -> None:
    core = SolarCore(P, now=0.0)
    feed(core, -5520.0, 0.0, 60.0)
    assert core.running
    # A cloud: the charger at 8 A (5520 W) now imports 3312 W, so the surplus is 3.2 A.
    d = core.on_reading(grid(3312.0), own(8.0), 100.0)
    assert (d.current_a, d.reason) == (6.0, "solar surplus 3.2 A < 6 A for 0 s: 6 A, stop in 5 min")
    for t in range(102, 400, 2):
        assert core.on_reading(grid(1932.0), own(6.0), float(t)).current_a == 6.0  # 3.2 A at 6 A
    assert core.describe(398.0)["stop_in_s"] == 2.0
    d = core.on_reading(grid(1932.0), own(6.0), 400.0)
    assert (d.current_a, d.reason) == (0.0, "solar surplus 3.2 A < 6 A for 5 min: waiting")
    assert core.state == "waiting" and not core.running
    d = core.on_reading(grid(-2208.0), None, 520.0)  # the charger paused: 2208 W export = 3.2 A
    assert d.reason == "solar surplus 3.2 A < 6 A for 7 min: waiting"


def test_a_short_recovery_during_the_stop_wait_starts_the_wait_over() -> None:
    core = SolarCore(P, now=0.0)
    feed(core, -5520.0, 0.0, 60.0)
    feed(core, 1932.0, 100.0, 350.0, own_a=6.0)  # 250 s short
    assert core.on_reading(grid(0.0), own(6.0), 352.0).current_a == 6.0  # exactly 6 A: enough again
    assert feed(core, 1932.0, 354.0, 652.0, own_a=6.0) == 6.0  # 298 s short
    assert core.on_reading(grid(1932.0), own(6.0), 654.0).current_a == 0.0


def test_stale_grid_data_holds_then_pauses_and_restarts_only_after_start_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = SolarCore(P, now=0.0)
    feed(core, -6900.0, 0.0, 60.0)  # running at 10 A
    assert core.claim.current_a == 10.0
    with caplog.at_level(logging.DEBUG, logger=LOG):
        for t in (62.0, 64.0, 66.0, 68.0, 69.9):
            assert core.on_failure("grid-meter: timeout", t).current_a == 10.0  # not stale yet: hold
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        d = core.on_failure("grid-meter: timeout", 70.0)
        assert (d.current_a, d.reason) == (0.0, "grid meter silent 10 s: paused, solar surplus unknown")
        assert core.state == "stale" and not core.running
        assert core.on_failure("grid-meter: timeout", 90.0) == d
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["grid meter silent 10 s (grid-meter: timeout): solar charging paused until it answers"]
    assert core.on_reading(grid(-6900.0), None, 100.0).current_a == 0.0
    assert feed(core, -6900.0, 102.0, 158.0) == 0.0
    assert core.on_reading(grid(-6900.0), None, 160.0).current_a == 10.0


def test_no_grid_data_at_start_and_a_reading_without_power_are_failures() -> None:
    core = SolarCore(P, now=100.0)
    d = core.on_failure("grid-meter: no answer", 100.0)
    assert (d.current_a, d.reason) == (0.0, "no grid meter reading yet: paused, solar surplus unknown")
    core = SolarCore(P, now=0.0)
    feed(core, -6900.0, 0.0, 60.0)
    assert core.on_reading(grid(math.inf), None, 62.0).current_a == 10.0
    assert core.last_error == "grid meter reading has no valid total power"


def test_params_are_checked() -> None:
    for bad in (
        {"start_delay_s": -1.0},
        {"stop_delay_s": math.nan},
        {"allow_import_w": -1.0},
        {"poll_interval_s": 0.0},
        {"stale_after_s": 0.0},
        {"nominal_voltage_v": 0.0},
        {"read_timeout_s": math.inf},
        {"phases": 0},
        {"phases": 4},
    ):
        with pytest.raises(ValueError):
            SolarParams(**bad)


# -- properties --------------------------------------------------------------------------------------------
params_st = st.builds(
    SolarParams,
    start_delay_s=st.floats(0.0, 120.0),
    stop_delay_s=st.floats(0.0, 600.0),
    allow_import_w=st.floats(0.0, 3000.0),
    stale_after_s=st.floats(1.0, 30.0),
    phases=st.integers(1, 3),
    nominal_voltage_v=st.sampled_from([120.0, 230.0, 240.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    params_st,
    st.lists(
        st.tuples(
            st.floats(0.1, 60.0),
            st.floats(-25000.0, 25000.0),
            st.floats(0.0, 40.0),
            st.integers(1, 3),
            st.floats(0.85, 1.15),
        ),
        max_size=50,
    ),
)
def test_property_running_claim_keeps_the_grid_within_the_allowed_import(
    params: SolarParams, steps: list[tuple[float, float, float, int, float]]
) -> None:
    """At the reading it was computed from, a running claim above the 6 A floor imports at most allow_import_w.

    (The brief allows one rounding step more; rounding down keeps it within the allowance itself.)
    """
    core = SolarCore(params, now=0.0)
    now = 0.0
    for dt, grid_w, own_a, own_phases, v_factor in steps:
        now += dt
        volts = params.nominal_voltage_v * v_factor
        mine = own(own_a, own_phases) if own_a else None
        d = core.on_reading(grid(grid_w, volts=volts), mine, now)
        used = own_phases if own_a >= 1.0 else params.phases
        own_w = V * own_a * own_phases
        import_after = grid_w - own_w + d.current_a * volts * used
        if not core.running:
            assert d.current_a == 0.0
            continue
        assert d.current_a >= 6.0
        assert d.current_a == math.floor(d.current_a / STEP_A) * STEP_A
        if d.current_a > 6.0:
            assert import_after <= params.allow_import_w + 1e-6
            assert import_after > params.allow_import_w - STEP_A * volts * used - 1e-6  # and takes what it may


Event = tuple[float, float | None]  # (seconds since the previous event, PV watts or None = failed read)


@settings(max_examples=300, deadline=None)
@given(
    params_st,
    st.floats(0.0, 3000.0),
    st.lists(
        st.tuples(st.floats(0.5, 90.0), st.one_of(st.floats(0.0, 15000.0), st.floats(3000.0, 6000.0), st.none())),
        max_size=80,
    ),
)
def test_property_start_and_stop_only_after_their_delays_under_any_pv_trace(
    params: SolarParams, house_w: float, events: list[Event]
) -> None:
    """Closed loop: the EV draws the claim on ``params.phases``; grid = house + EV - PV. Failed reads included.

    A start needs ``start_delay_s`` of enough surplus on fresh data (and happens once it has it); a stop needs
    ``stop_delay_s`` of too little (and happens once it has it), or stale data; so a session never toggles
    faster than the delays.
    """
    core = SolarCore(params, now=0.0)
    volts, phases = params.nominal_voltage_v, params.phases
    now, claim = 0.0, 0.0
    last_good: float | None = None
    enough_since: float | None = None
    short_since: float | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    for dt, pv_w in events:
        now += dt
        was_running = claim > 0
        if pv_w is None:
            d = core.on_failure("lost", now)
            stale = last_good is None or now - last_good >= params.stale_after_s - 1e-9
            if stale:
                assert d.current_a == 0.0
                enough_since = short_since = None
            else:
                assert d.current_a == claim  # a missed read changes nothing before the data is stale
        else:
            ev_w = claim * volts * phases
            ev = own(claim, phases, volts) if claim else None
            grid_w = house_w + ev_w - pv_w
            d = core.on_reading(grid(grid_w, volts=volts), ev, now)
            last_good = now
            enough = (pv_w - house_w + params.allow_import_w) / (volts * phases) >= 6.0 - 1e-9
            if enough:
                short_since = None
                enough_since = now if enough_since is None else enough_since
            else:
                enough_since = None
                short_since = now if short_since is None else short_since
            if not was_running:
                may_start = enough_since is not None and now - enough_since >= params.start_delay_s - 1e-9
                assert (d.current_a > 0) == may_start, "started too early or not when due"
            elif d.current_a == 0:
                assert short_since is not None and now - short_since >= params.stop_delay_s - 1e-9, "stopped early"
            else:
                assert not (short_since is not None and now - short_since >= params.stop_delay_s), "did not stop"
        running = d.current_a > 0
        if running and not was_running:
            if stopped_at is not None:
                assert now - stopped_at >= params.start_delay_s - 1e-9
            started_at = now
        if was_running and not running:
            if pv_w is not None:
                assert started_at is not None and now - started_at >= params.stop_delay_s - 1e-9
            stopped_at = now
        assert d.current_a == 0.0 or d.current_a >= 6.0
        claim = d.current_a


# -- the guard with a scripted meter -------------------------------------------------------------------------
class ScriptedMeter:
    """Answers with the queued readings or errors (the last one repeats); ``hang`` makes read() never return."""

    def __init__(self, *script: MeterReading | Exception) -> None:
        self.script = list(script)
        self.reads = 0
        self.hang = False

    async def read(self) -> MeterReading:
        self.reads += 1
        if self.hang:
            await asyncio.Event().wait()
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


async def test_guard_submits_solar_claims_and_counts_every_failure_kind(caplog: pytest.LogCaptureFixture) -> None:
    clock, arbiter = FakeClock(), Arbiter()
    meter = ScriptedMeter(grid(-6900.0))
    params = SolarParams(start_delay_s=6.0, stale_after_s=3.0, read_timeout_s=0.01)
    guard = SolarGuard(meter, arbiter, clock, lambda: None, params)
    claim = arbiter.get("solar")  # before the first poll: a car plugged in now must not charge from the grid
    assert claim is not None and claim.current_a == 0.0 and claim.reason == "no grid meter reading yet: waiting"
    for _ in range(3):
        await guard.poll_once()
        assert arbiter.get("solar").current_a == 0.0  # type: ignore[union-attr]
        clock.advance(2.0)
    await guard.poll_once()  # t = 6: enough since t = 0
    claim = arbiter.get("solar")
    assert claim is not None and claim.current_a == 10.0 and claim.reason == "solar surplus 10.0 A (6900 W export)"
    assert arbiter.decide(clock.monotonic()).winner == claim
    meter.script = [DeviceError("grid-meter", "no answer")]
    clock.advance(1.0)
    await guard.poll_once()
    assert guard.core.last_error == "grid-meter: no answer" and arbiter.get("solar").current_a == 10.0  # type: ignore[union-attr]
    meter.hang = True
    clock.advance(1.0)
    await asyncio.wait_for(guard.poll_once(), 1.0)
    assert guard.core.last_error == "no answer within 0.01 s"
    meter.hang = False
    meter.script = [RuntimeError("driver bug")]
    clock.advance(1.0)
    with caplog.at_level(logging.ERROR, logger=LOG):
        await guard.poll_once()  # 3 s without data: stale
    assert "unexpected error" in caplog.text
    assert arbiter.get("solar").current_a == 0.0  # type: ignore[union-attr]
    view = guard.describe()
    assert view["enabled"] is True and view["state"] == "stale" and view["claim_a"] == 0.0
    assert view["last_error"] == "RuntimeError: driver bug" and view["surplus_a"] == 10.0 and view["age_s"] == 3.0


async def test_guard_disabled_withdraws_and_enabling_starts_over_at_0_a() -> None:
    clock, arbiter = FakeClock(), Arbiter()
    meter = ScriptedMeter(grid(-6900.0))
    guard = SolarGuard(meter, arbiter, clock, lambda: None, SolarParams(start_delay_s=0.0))
    await guard.poll_once()
    assert arbiter.get("solar").current_a == 10.0  # type: ignore[union-attr]
    guard.set_enabled(False)  # e.g. the driver's boost
    assert arbiter.get("solar") is None
    assert await guard.poll_once() is None and meter.reads == 1  # disabled: no read, no claim
    assert arbiter.get("solar") is None and guard.describe()["enabled"] is False
    guard = SolarGuard(meter, arbiter, clock, lambda: None, SolarParams(start_delay_s=30.0, enabled=False))
    guard.set_enabled(True)
    claim = arbiter.get("solar")  # at once, before any poll: turning solar on never charges from the grid
    assert claim is not None and claim.current_a == 0.0 and claim.reason == "no grid meter reading yet: waiting"
    await guard.poll_once()
    clock.advance(29.0)
    assert (await guard.poll_once()).current_a == 0.0  # type: ignore[union-attr]
    clock.advance(1.0)
    assert (await guard.poll_once()).current_a == 10.0  # type: ignore[union-attr]


async def test_guard_run_polls_until_cancelled() -> None:
    clock, arbiter = FakeClock(), Arbiter()
    meter = ScriptedMeter(grid(-6900.0))
    guard = SolarGuard(meter, arbiter, clock, lambda: None, SolarParams(poll_interval_s=0.001))
    task = asyncio.create_task(guard.run())
    for _ in range(1000):
        await asyncio.sleep(0.001)
        if meter.reads >= 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert meter.reads >= 3
    assert arbiter.get("solar").current_a == 0.0  # type: ignore[union-attr]  # still waiting for the start delay


# -- the whole loop: Rig, real controller, simulated EV, grid meter and PV -------------------------------------
HOUSE_A = 1.0  # 690 W over three phases


class SolarRig(Rig):
    """The Rig with the solar guard polled in simulated time, like the app's task."""

    def __init__(self, solar: SolarParams = P, **kwargs: object) -> None:
        super().__init__(house_load_a=HOUSE_A, **kwargs)  # type: ignore[arg-type]
        self.solar = SolarGuard(self.bench.grid_meter, self.arbiter, self.clock, lambda: self.own_reading, solar)
        self._due["solar"] = self.clock.monotonic()

    async def step(self) -> None:
        await super().step()  # samples the charger's own meter first, as the app's MeterSampler does
        if self._is_due("solar", self.solar.params.poll_interval_s):
            await self.solar.poll_once()

    def grid_w(self) -> float:
        return self.bench.grid_meter.reading().total_power_w

    async def watch(self, seconds: float, check: Callable[[], None], dt: float = 0.1) -> None:
        """Run ``seconds`` in steps of ``dt``, calling ``check`` after every step."""
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end - 1e-9:
            self.clock.advance(min(dt, end - self.clock.monotonic()))
            await self.step()
            check()


def surplus_a(pv_w: float) -> float:
    return (pv_w - HOUSE_A * 3 * V) / (3 * V)


async def morning(rig: SolarRig) -> dict[str, float]:
    """PV rises 5 W/s (0 to 9 kW in 30 min) in 10 s steps, with the car plugged in and authorized at dawn."""
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    t0 = rig.clock.monotonic()
    marks: dict[str, float] = {}
    max_import_running = -math.inf

    def check() -> None:
        nonlocal max_import_running
        t = rig.clock.monotonic() - t0
        if "enough" not in marks and surplus_a(sum(rig.bench.pv_power_w)) >= 6.0:
            marks["enough"] = t
        if "start" not in marks and rig.offered_a > 0:
            marks["start"] = t
            marks["start_offer"] = rig.offered_a
        if "start" not in marks:
            assert rig.bench.ev.draw_a == 0.0 and not rig.contactor_closed
            assert rig.status is Status.SUSPENDED_EVSE
        elif rig.bench.ev.draw_a > 0:
            max_import_running = max(max_import_running, rig.grid_w())

    for k in range(181):
        rig.bench.set_pv_power(min(9000.0, 50.0 * k))
        await rig.watch(10.0, check)
    marks["max_import_w"] = max_import_running
    return marks


async def test_morning_ramp_starts_after_start_delay_and_follows_the_surplus() -> None:
    rig = SolarRig()
    marks = await morning(rig)
    # 4830 W of PV (6 A surplus over the 690 W house) arrive at 970 s; 60 s later, plus up to one 2 s poll.
    assert marks["enough"] == pytest.approx(970.0, abs=0.11)
    delay = marks["start"] - marks["enough"]
    print(f"PWM offered {delay:.1f} s after the surplus reached 6 A, at {marks['start_offer']:.1f} A")
    assert 60.0 <= delay <= 62.0 + 0.2
    assert marks["start_offer"] >= 6.0
    # Rising PV: the claim lags behind the surplus, so the grid never imports while the car charges.
    assert marks["max_import_w"] <= 1e-6
    await rig.run(30.0)
    assert rig.status is Status.CHARGING and rig.contactor_closed
    assert rig.offered_a == 12.0  # (9000 - 690) / 690 = 12.04 A, rounded down to 0.5 A
    assert rig.bench.ev.draw_a == pytest.approx(12.0)
    assert -0.5 * 3 * V < rig.grid_w() <= 0.0  # exporting less than one 0.5 A step
    claim = rig.arbiter.get("solar")
    assert claim is not None and claim.reason == "solar surplus 12.0 A (30 W export)"
    assert rig.arbiter.decide(rig.clock.monotonic()).winner == claim


async def sunny(rig: SolarRig) -> None:
    """9 kW of PV from the start; the car plugs in and charges on the 12 A surplus after the start delay."""
    rig.bench.set_pv_power(9000.0)
    rig.bench.plug()
    rig.ctl.connector.authorize("CARD1")
    await rig.run(59.0)
    assert rig.offered_a == 0.0 and rig.status is Status.SUSPENDED_EVSE
    await rig.until(lambda: rig.bench.ev.draw_a == pytest.approx(12.0), 20.0)
    assert rig.offered_a == 12.0


async def test_a_cloud_shorter_than_stop_delay_holds_6_a_and_the_session_goes_on() -> None:
    rig = SolarRig()
    await sunny(rig)
    rig.bench.set_pv_power(2000.0)  # surplus (2000 - 690) / 690 = 1.9 A
    cloud_at = rig.clock.monotonic()
    seen: dict[str, float] = {}

    def check() -> None:
        assert rig.status is Status.CHARGING and rig.contactor_closed and rig.pilot_constant is None
        if "six" not in seen and rig.offered_a == 6.0:
            seen["six"] = rig.clock.monotonic() - cloud_at

    await rig.watch(240.0, check)
    assert seen["six"] <= 2.0 + 0.1  # a drop applies at the next poll
    assert rig.bench.ev.draw_a == pytest.approx(6.0)
    assert rig.grid_w() == pytest.approx(690.0 + 6.0 * 3 * V - 2000.0)  # 2830 W import while the cloud lasts
    reason = rig.arbiter.get("solar").reason  # type: ignore[union-attr]
    assert reason.startswith("solar surplus 1.9 A < 6 A for 4 min: 6 A, stop in 6"), reason
    assert 60.0 <= rig.solar.describe()["stop_in_s"] <= 62.0
    rig.bench.set_pv_power(9000.0)
    await rig.watch(15.0, check)
    assert rig.offered_a == 12.0 and rig.stops() == []
    await rig.run(10.0)
    assert rig.bench.ev.draw_a == pytest.approx(12.0) and rig.grid_w() <= 0.0


async def test_a_cloud_longer_than_stop_delay_pauses_then_restarts_after_start_delay() -> None:
    rig = SolarRig()
    await sunny(rig)
    rig.bench.set_pv_power(2000.0)
    cloud_at = rig.clock.monotonic()
    await rig.run(299.0)
    assert rig.offered_a == 6.0 and rig.status is Status.CHARGING
    await rig.until(lambda: rig.offered_a == 0.0, 5.0)
    paused_s = rig.clock.monotonic() - cloud_at
    print(f"paused {paused_s:.1f} s after the cloud came")
    assert 300.0 <= paused_s <= 302.0 + 0.1
    await rig.until(lambda: not rig.contactor_closed and rig.bench.ev.draw_a == 0.0, 5.0)
    assert rig.ctl.connector.status is Status.SUSPENDED_EVSE and rig.pilot_constant is PilotConstant.PLUS_12V
    assert rig.grid_w() == pytest.approx(690.0 - 2000.0)  # the house alone, under the cloud: export
    assert rig.arbiter.get("solar").reason == "solar surplus 1.9 A < 6 A for 5 min: waiting"  # type: ignore[union-attr]
    await rig.run(120.0)
    assert rig.offered_a == 0.0
    rig.bench.set_pv_power(9000.0)
    sun_at = rig.clock.monotonic()
    await rig.until(lambda: rig.offered_a > 0, 70.0)
    assert 60.0 <= rig.clock.monotonic() - sun_at <= 62.0 + 0.1
    await rig.until(lambda: rig.status is Status.CHARGING and rig.bench.ev.draw_a == pytest.approx(12.0), 15.0)
    assert rig.grid_w() <= 0.0


async def test_lost_grid_meter_pauses_after_stale_after_s_and_waits_for_the_start_delay() -> None:
    rig = SolarRig()
    await sunny(rig)
    rig.bench.inject("grid-meter")
    lost_at = rig.clock.monotonic()
    await rig.until(lambda: rig.offered_a == 0.0, 15.0)
    assert 10.0 - 2.0 <= rig.clock.monotonic() - lost_at <= 10.0 + 0.1  # data stale 10 s after the last good read
    await rig.until(lambda: not rig.contactor_closed, 5.0)
    assert rig.ctl.faults == frozenset() and rig.status is Status.SUSPENDED_EVSE  # a limit, not a charger fault
    assert rig.solar.describe()["state"] == "stale"
    rig.bench.clear("grid-meter")
    back_at = rig.clock.monotonic()
    await rig.until(lambda: rig.offered_a > 0, 70.0)
    assert 60.0 <= rig.clock.monotonic() - back_at <= 62.0 + 0.1
