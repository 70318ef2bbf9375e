"""Thermal derating: the curve, the pause with hysteresis, a failing sensor, and the loop on the Rig.

On the Rig the simulated charger heats with the EV's current (first order, 600 s time constant), so
these tests show the derating reaching an equilibrium and the pause cooling off in believable time.
"""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rig import Rig

from firmware.charging.connector import Status
from firmware.limits.arbiter import Arbiter
from firmware.limits.thermal import ThermalCore, ThermalGuard, ThermalParams, derate_a
from hal.clock import FakeClock
from hal.interfaces import DeviceError, PilotConstant
from hal.sim import ThermalModelParams

P = ThermalParams()  # 60 °C start, 80 °C cutoff, resume below 75 °C, 32 A full, 1 A steps
LOG = "firmware.limits.thermal"


# -- the curve --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("celsius", "amps"),
    [(-10.0, 32.0), (60.0, 32.0), (60.01, 31.0), (70.0, 19.0), (79.0, 7.0), (80.0, 6.0), (80.01, 0.0), (120.0, 0.0)],
)
def test_curve_points(celsius: float, amps: float) -> None:
    assert derate_a(P, celsius) == pytest.approx(amps)


def test_curve_with_fine_steps_is_linear_to_6_a_at_the_cutoff() -> None:
    fine = ThermalParams(full_a=16.0, step_a=0.1)
    assert derate_a(fine, 65.0) == pytest.approx(13.5)  # 16 - 10 * 5/20
    assert derate_a(fine, 80.0) == pytest.approx(6.0)


temps = st.floats(-60.0, 200.0, allow_nan=False)
params_st = st.builds(
    ThermalParams,
    derate_start_c=st.floats(20.0, 70.0),
    cutoff_c=st.floats(71.0, 120.0),
    hysteresis_c=st.floats(0.0, 20.0),
    full_a=st.floats(6.0, 80.0),
    step_a=st.sampled_from([0.1, 0.5, 1.0, 2.0]),
    rise_deadband_c=st.floats(0.0, 3.0),
)


@settings(max_examples=500, deadline=None)
@given(params_st, temps, temps)
def test_property_curve_is_monotone_and_bounded(params: ThermalParams, a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    assert derate_a(params, high) <= derate_a(params, low)
    for t in (low, high):
        value = derate_a(params, t)
        if t > params.cutoff_c:
            assert value == 0.0
        else:
            assert 6.0 <= value <= params.full_a
            assert (
                value
                <= params.full_a
                - (params.full_a - 6.0)
                * max(0.0, t - params.derate_start_c)
                / (params.cutoff_c - params.derate_start_c)
                + 1e-9
            )


@settings(max_examples=300, deadline=None)
@given(params_st, st.lists(temps, min_size=1, max_size=60))
@example(  # resuming with no hysteresis: the rise deadband once reached past the cutoff and kept it paused
    ThermalParams(derate_start_c=20.0, cutoff_c=71.0, hysteresis_c=0.0, full_a=6.0, step_a=0.1, rise_deadband_c=1.0),
    [72.0, 70.5],
)
def test_property_claim_never_above_the_curve_and_pause_holds_until_below_hysteresis(
    params: ThermalParams, readings: list[float]
) -> None:
    core = ThermalCore(params, now=0.0)
    paused = False
    for i, t in enumerate(readings):
        value = core.on_reading(t, now=float(i)).current_a
        if not (params.plausible_min_c <= t <= params.plausible_max_c):
            continue  # a broken sensor: covered by its own test
        if t > params.cutoff_c:
            paused = True
        elif paused and t < params.cutoff_c - params.hysteresis_c:
            paused = False
        assert value <= derate_a(params, t) + 1e-9
        if paused:
            assert value == 0.0
        else:
            assert value >= 6.0


# -- the core ----------------------------------------------------------------------------------------
def test_pause_above_cutoff_until_below_cutoff_minus_hysteresis(caplog: pytest.LogCaptureFixture) -> None:
    core = ThermalCore(P, now=0.0)
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert core.on_reading(79.0, now=0.0).current_a == 7.0
        assert core.on_reading(81.0, now=1.0).current_a == 0.0
        assert core.state == "paused"
        for i, t in enumerate((80.0, 78.0, 75.0)):  # cooler than the cutoff, not cool enough to resume
            assert core.on_reading(t, now=2.0 + i).current_a == 0.0
        decision = core.on_reading(74.9, now=10.0)
    assert decision.current_a == 11.0  # curve at 74.9 + the 1 °C rise deadband
    assert decision.reason == "74.9 °C, derating 60-80 °C: 11.0 A"
    assert [r.getMessage() for r in caplog.records] == [
        "charger at 81.0 °C, above the 80 °C cutoff: charging paused",
        "charger cooled to 74.9 °C (below 75 °C): charging resumes",
    ]


def test_drops_at_once_and_rises_only_past_the_deadband() -> None:
    core = ThermalCore(P, now=0.0)
    assert core.on_reading(50.0, now=0.0).reason == "50.0 °C, below derate start 60 °C: full 32 A"
    assert core.on_reading(70.0, now=1.0).current_a == 19.0
    assert core.on_reading(70.1, now=2.0).current_a == 18.0  # hotter: down at once
    for i, t in enumerate((69.9, 70.1, 69.9, 69.5, 69.2)):  # noise around a step: no rise
        assert core.on_reading(t, now=3.0 + i).current_a == 18.0, t
    assert core.on_reading(68.2, now=10.0).current_a == 20.0  # a degree cooler than 20 A needs: rise
    assert core.on_reading(40.0, now=11.0).current_a == 32.0
    assert core.state == "ok"
    assert core.on_reading(61.0, now=12.0).current_a == 30.0
    assert core.state == "derating"


def test_failed_thermometer_holds_then_claims_6_a_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    core = ThermalCore(P, now=0.0)
    core.on_reading(40.0, now=0.0)
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert core.on_failure("thermometer: no answer", now=5.0).current_a == 32.0  # one glitch: hold
        decision = core.on_failure("thermometer: no answer", now=10.0)
        assert decision.current_a == 6.0
        assert decision.reason == "thermometer failed (thermometer: no answer): 6 A"
        assert core.on_failure("thermometer: no answer", now=60.0) == decision
        assert core.describe(60.0)["state"] == "failed"
        assert core.on_reading(41.0, now=61.0).current_a == 32.0
    assert [r.getMessage() for r in caplog.records] == [
        "thermometer failed (thermometer: no answer), no reading for 10 s: thermal limit 6 A until it reads again",
        "thermometer reads again (41.0 °C) after 61 s: derating follows it",
    ]


def test_failure_never_raises_the_claim_and_a_paused_charger_stays_paused() -> None:
    core = ThermalCore(P, now=0.0)
    core.on_reading(90.0, now=0.0)
    decision = core.on_failure("thermometer: gone", now=10.0)
    assert decision.current_a == 0.0
    assert decision.reason == "thermometer failed while paused (thermometer: gone): 0 A"
    assert core.on_reading(76.0, now=20.0).current_a == 0.0  # still paused: above 75 °C
    assert core.on_reading(70.0, now=21.0).current_a == 17.0  # resumes at the curve a deadband hotter (71 °C)


@pytest.mark.parametrize("bad", [-127.0, 200.0, math.nan, math.inf])
def test_implausible_readings_count_as_failures(bad: float) -> None:
    core = ThermalCore(P, now=0.0)
    decision = core.on_reading(bad, now=0.0)  # no good reading yet: failed at once
    assert decision.current_a == 6.0
    assert core.state == "failed" and core.last_error is not None and "implausible" in core.last_error


def test_params_are_checked() -> None:
    for bad in (
        {"cutoff_c": 60.0},
        {"derate_start_c": math.nan},
        {"hysteresis_c": -1.0},
        {"full_a": 5.0},
        {"failure_a": -1.0},
        {"stale_after_s": 0.0},
        {"poll_interval_s": 0.0},
        {"step_a": 0.0},
        {"rise_deadband_c": -0.5},
        {"plausible_min_c": 200.0},
    ):
        with pytest.raises(ValueError):
            ThermalParams(**bad)  # type: ignore[arg-type]


# -- the guard ---------------------------------------------------------------------------------------
class ScriptedThermometer:
    def __init__(self, value: float | Exception) -> None:
        self.value = value
        self.reads = 0

    def read_c(self) -> float:
        self.reads += 1
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


async def test_guard_submits_thermal_claims(caplog: pytest.LogCaptureFixture) -> None:
    clock, arbiter = FakeClock(), Arbiter()
    sensor = ScriptedThermometer(70.0)
    guard = ThermalGuard(sensor, arbiter, clock, P)
    await guard.poll_once()
    claim = arbiter.get("thermal")
    assert claim is not None and claim.current_a == 19.0 and claim.reason == "70.0 °C, derating 60-80 °C: 19.0 A"
    sensor.value = DeviceError("thermometer", "no answer")
    clock.advance(10.0)
    await guard.poll_once()
    assert arbiter.get("thermal").current_a == 6.0  # type: ignore[union-attr]
    sensor.value = RuntimeError("driver bug")
    with caplog.at_level(logging.ERROR, logger=LOG):
        await guard.poll_once()
    assert "unexpected error" in caplog.text
    view = guard.describe()
    assert view["state"] == "failed" and view["temperature_c"] == 70.0 and view["age_s"] == 10.0
    assert view["last_error"] == "RuntimeError: driver bug" and view["resume_below_c"] == 75.0


async def test_guard_run_polls_until_cancelled() -> None:
    sensor = ScriptedThermometer(20.0)
    guard = ThermalGuard(sensor, Arbiter(), FakeClock(), ThermalParams(poll_interval_s=0.001))
    task = asyncio.create_task(guard.run())
    for _ in range(1000):
        await asyncio.sleep(0.001)
        if sensor.reads >= 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sensor.reads >= 3


# -- the whole loop on the Rig -------------------------------------------------------------------------
async def charging_at_32(rig: Rig) -> None:
    await rig.charging()
    await rig.until(lambda: rig.bench.ev.draw_a >= 32.0 - 1e-6, 10.0)
    await rig.run(6.0)


async def test_overheated_charger_pauses_cools_and_resumes(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(thermal=ThermalParams(), heat=ThermalModelParams(ambient_c=25.0))
    await charging_at_32(rig)
    assert rig.offered_a == pytest.approx(32.0)
    with caplog.at_level(logging.WARNING, logger=LOG):
        rig.bench.set_temperature_c(85.0)
        hot_at = rig.clock.monotonic()
        took = await rig.until(lambda: rig.offered_a == 0.0, 2.1)
        assert rig.status is Status.SUSPENDED_EVSE
        assert rig.pilot_constant is PilotConstant.PLUS_12V and not rig.contactor_closed
        assert rig.bench.ev.draw_a == 0.0
        # No current: it cools as 25 + 60·exp(-t/600) and is below 75 °C after 600·ln(1.2) = 109.4 s.
        await rig.run(100.0 - took, dt=0.5)
        assert 75.0 < rig.bench.heat.temperature_c < 80.0  # below the cutoff, above the resume point
        assert rig.offered_a == 0.0 and rig.status is Status.SUSPENDED_EVSE
        await rig.until(lambda: rig.offered_a > 0.0, 15.0, dt=0.5)
        resumed_s = rig.clock.monotonic() - hot_at
        assert 109.4 <= resumed_s <= 109.4 + 2.0 + 0.5
        assert rig.offered_a == pytest.approx(11.0)
        await rig.until(lambda: rig.contactor_closed and rig.bench.ev.draw_a > 10.0, 10.0)
    assert rig.status is Status.CHARGING
    assert [r.getMessage() for r in caplog.records] == [
        "charger at 85.0 °C, above the 80 °C cutoff: charging paused",
        "charger cooled to 74.9 °C (below 75 °C): charging resumes",
    ]


async def test_hot_ambient_settles_at_a_derated_equilibrium() -> None:
    # 45 °C around the charger: at 32 A it would settle at 45 + 0.025·32² = 70.6 °C. Derating finds the
    # point where the curve and the heating meet (about 27 A at 63.5 °C) in few PWM steps.
    rig = Rig(thermal=ThermalParams(), heat=ThermalModelParams(ambient_c=45.0))
    await rig.charging()
    offers: list[float] = []
    for _ in range(3600):
        await rig.run(1.0, dt=1.0)
        if not offers or rig.offered_a != offers[-1]:
            offers.append(rig.offered_a)
    temperature = rig.bench.heat.temperature_c
    assert 62.0 < temperature < 65.0
    assert 26.0 <= rig.offered_a <= 28.0
    assert rig.bench.ev.draw_a == pytest.approx(rig.offered_a)
    assert offers == sorted(offers, reverse=True)  # only down, in 1 A steps, no hunting
    assert len(offers) <= 8
    assert rig.status is Status.CHARGING


async def test_lost_thermometer_derates_to_6_a_without_tripping() -> None:
    rig = Rig(thermal=ThermalParams())
    await charging_at_32(rig)
    rig.bench.inject("thermometer")
    await rig.run(7.0)
    assert rig.offered_a == pytest.approx(32.0)  # one missed poll is not a failure yet
    await rig.until(lambda: rig.offered_a == pytest.approx(6.0), 6.0)
    await rig.until(lambda: abs(rig.bench.ev.draw_a - 6.0) < 1e-6, 5.0)
    assert rig.ctl.faults == frozenset() and rig.status is Status.CHARGING and rig.contactor_closed
    rig.bench.clear("thermometer")
    await rig.until(lambda: rig.offered_a == pytest.approx(32.0), 8.0)
