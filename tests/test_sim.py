"""The simulated bench: what a controller observes through the simulated devices."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal.clock import FakeClock
from hal.iec61851 import current_for_duty, duty_for_current
from hal.interfaces import CardTap, DeviceError, IndicatorPattern, PilotConstant, PilotLevels
from hal.sim import FAULT_KINDS, EVParams, SimBench, SimulatedEV, ThermalModelParams


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bench(clock: FakeClock) -> SimBench:
    return SimBench(clock)


def run(bench: SimBench, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    bench.tick()


def charging(bench: SimBench, clock: FakeClock, amps: float = 16.0) -> None:
    """Plug, offer ``amps``, wait for C, close the contactor, wait for full current."""
    bench.plug()
    bench.pilot.set_duty(duty_for_current(amps))
    run(bench, clock, 1.0)
    assert bench.ev.state == "C"
    bench.contactor.command(True)
    run(bench, clock, 0.02 + 1.0 + 10.0)


# -- pilot -------------------------------------------------------------------------------------
def test_pilot_levels_for_every_state(bench: SimBench, clock: FakeClock) -> None:
    pilot = bench.pilot
    assert pilot.read() == PilotLevels(12.0, 12.0)  # A, +12 V
    pilot.set_duty(50.0)
    assert pilot.read() == PilotLevels(12.0, -12.0)  # A2: no EV, no diode to check
    pilot.set_constant(PilotConstant.PLUS_12V)
    bench.plug()
    assert pilot.read() == PilotLevels(9.0, 9.0)  # B1
    pilot.set_duty(50.0)
    assert pilot.read() == PilotLevels(9.0, -12.0)  # B2
    run(bench, clock, 1.0)
    assert pilot.read() == PilotLevels(6.0, -12.0)  # C2
    bench.set_ev_ventilation(True)
    assert pilot.read() == PilotLevels(3.0, -12.0)  # D2
    pilot.set_constant(PilotConstant.MINUS_12V)
    assert pilot.read() == PilotLevels(-12.0, -12.0)  # F
    bench.inject("cp-short")
    assert pilot.read() == PilotLevels(0.0, 0.0)  # E
    bench.clear("cp-short")
    assert pilot.read() == PilotLevels(-12.0, -12.0)


def test_shorted_diode_shows_in_the_pwm_low_half(bench: SimBench) -> None:
    bench.inject("diode")
    bench.pilot.set_duty(50.0)
    assert bench.pilot.read().low_v == -12.0  # no EV plugged: nothing to short
    bench.plug()
    assert bench.pilot.read() == PilotLevels(9.0, -9.0)
    bench.pilot.set_constant(PilotConstant.PLUS_12V)
    assert bench.pilot.read() == PilotLevels(9.0, 9.0)
    bench.clear("diode")
    bench.pilot.set_duty(50.0)
    assert bench.pilot.read() == PilotLevels(9.0, -12.0)


def test_duty_outside_0_100_is_refused(bench: SimBench) -> None:
    for duty in (0.0, 100.0, -5.0, math.nan):
        with pytest.raises(ValueError):
            bench.pilot.set_duty(duty)


def test_ev_requests_only_after_request_delay_of_valid_pwm(bench: SimBench, clock: FakeClock) -> None:
    bench.plug()
    run(bench, clock, 10.0)
    assert bench.ev.state == "B"  # +12 V: no offer
    bench.pilot.set_duty(5.0)  # digital communication only: not an offer
    run(bench, clock, 10.0)
    assert bench.ev.state == "B"
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 0.99)
    assert bench.ev.state == "B"
    run(bench, clock, 0.01)
    assert bench.ev.state == "C"


def test_ev_returns_to_b_when_pwm_stops_or_it_declines(bench: SimBench, clock: FakeClock) -> None:
    charging(bench, clock)
    assert bench.ev.draw_a == pytest.approx(16.0)
    bench.pilot.set_constant(PilotConstant.PLUS_12V)
    assert bench.ev.draw_a == 0.0  # current stops with the PWM
    run(bench, clock, 0.4)
    assert bench.ev.state == "C"
    run(bench, clock, 0.1)
    assert bench.ev.state == "B"
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 1.0)
    assert bench.ev.state == "C"
    bench.ev_request(False)
    assert bench.ev.state == "B"
    run(bench, clock, 100.0)
    assert bench.ev.state == "B"
    bench.ev_request(True)
    run(bench, clock, 1.0)
    assert bench.ev.state == "C"


# -- current -----------------------------------------------------------------------------------
def test_current_onset_ramp_and_following_the_offer(bench: SimBench, clock: FakeClock) -> None:
    bench.plug()
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 1.0)
    bench.contactor.command(True)
    run(bench, clock, 0.02 + 0.99)
    assert bench.ev.draw_a == 0.0  # contacts closed, onset not over
    run(bench, clock, 0.51)
    assert bench.ev.draw_a == pytest.approx(5.0)  # 10 A/s for 0.5 s
    run(bench, clock, 5.0)
    assert bench.ev.draw_a == pytest.approx(16.0)
    bench.pilot.set_duty(duty_for_current(10.0))
    run(bench, clock, 0.3)
    assert bench.ev.draw_a == pytest.approx(13.0)  # ramps down too
    run(bench, clock, 1.0)
    assert bench.ev.draw_a == pytest.approx(10.0)
    bench.pilot.set_duty(duty_for_current(40.0))
    run(bench, clock, 10.0)
    assert bench.ev.draw_a == pytest.approx(32.0)  # the EV's own maximum
    bench.set_ev_max_current(12.0)
    assert bench.ev.draw_a == pytest.approx(12.0)
    bench.contactor.command(False)
    run(bench, clock, 0.01)
    assert bench.ev.draw_a == pytest.approx(12.0)  # contacts not open yet
    run(bench, clock, 0.01)
    assert bench.ev.draw_a == 0.0


def test_energy_over_an_hour_in_big_steps(bench: SimBench, clock: FakeClock) -> None:
    bench.plug()
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 1.0)
    bench.contactor.command(True)
    for _ in range(4):
        run(bench, clock, 900.0)
    reading = asyncio.run(bench.meter.read())
    # 16 A x 3 x 230 V for 1 h, less the onset (1.02 s) and half the ramp (0.8 s).
    assert reading.energy_import_wh == pytest.approx(11040.0 * (3600 - 1.82) / 3600, rel=1e-6)
    assert reading.energy_import_wh == pytest.approx(11040.0, rel=0.01)
    assert bench.ev.soc_percent == pytest.approx(40.0 + reading.energy_import_wh / 600.0)
    assert reading.current_a == (16.0, 16.0, 16.0)
    assert reading.total_power_w == pytest.approx(11040.0)


def test_big_steps_match_small_steps() -> None:
    results = []
    for step in (0.05, 7.0, 120.0):
        clock = FakeClock()
        bench = SimBench(clock, ev=EVParams(soc_percent=94.0, battery_kwh=10.0))
        charging(bench, clock, amps=32.0)
        for _ in range(round(600 / step)):
            run(bench, clock, step)
        results.append((bench.ev.energy_wh, bench.ev.soc_percent, bench.ev.draw_a))
    (e0, s0, d0), *others = results
    for energy, soc, draw in others:
        assert energy == pytest.approx(e0, rel=1e-3)
        assert soc == pytest.approx(s0, abs=0.01)
        assert draw == pytest.approx(d0, abs=0.05)


def test_taper_then_full_goes_to_b(clock: FakeClock) -> None:
    bench = SimBench(clock, ev=EVParams(soc_percent=97.0, battery_kwh=10.0))
    charging(bench, clock, amps=32.0)
    assert 6.0 < bench.ev.draw_a < 32.0
    soc = bench.ev.soc_percent
    run(bench, clock, 60.0)
    assert bench.ev.soc_percent > soc
    run(bench, clock, 3600.0)
    assert bench.ev.soc_percent == 100.0
    assert bench.ev.state == "B"
    assert bench.ev.draw_a == 0.0


def test_ev_full_stops_at_once(bench: SimBench, clock: FakeClock) -> None:
    charging(bench, clock)
    bench.ev_full()
    assert bench.ev.state == "B"
    assert bench.ev.draw_a == 0.0
    run(bench, clock, 60.0)
    assert bench.ev.state == "B"
    bench.set_ev_soc(80.0)
    run(bench, clock, 1.0)
    assert bench.ev.state == "C"


def test_single_phase_ev_and_single_phase_bench(clock: FakeClock) -> None:
    bench = SimBench(clock, ev=EVParams(phases=1))
    charging(bench, clock)
    reading = asyncio.run(bench.meter.read())
    assert reading.current_a == (16.0, 0.0, 0.0)
    assert reading.power_w == (3680.0, 0.0, 0.0)
    small = SimBench(FakeClock(), phases=1, voltage_v=240.0)
    reading = asyncio.run(small.meter.read())
    assert reading.voltage_v == (240.0, None, None)
    assert reading.current_a == (0.0, None, None)
    assert small.ev.phases == 1


def test_simulated_ev_on_its_own() -> None:
    ev = SimulatedEV(EVParams(current_onset_s=0.0, request_delay_s=0.0), now=0.0)
    ev.plug()
    ev.update(0.0, duty_for_current(10.0), True, 230.0)
    assert ev.state == "C"
    ev.update(3600.0, duty_for_current(10.0), True, 230.0)
    assert ev.energy_wh == pytest.approx(6900.0 * (3600 - 0.5) / 3600)
    with pytest.raises(ValueError):
        ev.update(10.0, None, False, 230.0)


# -- contactor ---------------------------------------------------------------------------------
def test_contactor_feedback_follows_after_switch_delay(bench: SimBench, clock: FakeClock) -> None:
    c = bench.contactor
    c.command(True)
    assert c.commanded and c.feedback() is False
    clock.advance(0.02)
    assert c.feedback() is True  # computed from the clock, no tick needed
    c.command(False)
    assert c.feedback() is True
    clock.advance(0.02)
    assert c.feedback() is False
    assert SimBench(FakeClock(), feedback=False).contactor.feedback() is None


def test_weld_and_stuck_open(bench: SimBench, clock: FakeClock) -> None:
    charging(bench, clock)
    bench.inject("weld")
    bench.contactor.command(False)
    run(bench, clock, 1.0)
    assert bench.contactor.feedback() is True
    assert bench.ev.draw_a == pytest.approx(16.0)  # welded contacts still conduct
    bench.clear("weld")
    assert bench.contactor.feedback() is False
    assert bench.ev.draw_a == 0.0
    bench.inject("stuck-open")
    bench.contactor.command(True)
    run(bench, clock, 10.0)
    assert bench.contactor.feedback() is False
    assert bench.ev.state == "C"
    assert bench.ev.draw_a == 0.0  # no power reaches the EV
    bench.clear()
    run(bench, clock, 0.02 + 1.0 + 2.0)
    assert bench.contactor.feedback() is True
    assert bench.ev.draw_a == pytest.approx(16.0)


# -- proximity, fault inputs -------------------------------------------------------------------
@pytest.mark.parametrize(("cable", "ohms"), [(13.0, 1500.0), (20.0, 680.0), (32.0, 220.0), (63.0, 100.0)])
def test_pp_per_cable(cable: float, ohms: float) -> None:
    bench = SimBench(FakeClock(), cable_a=cable)
    assert bench.proximity.read_ohms() == math.inf
    bench.plug()
    assert bench.proximity.read_ohms() == ohms
    bench.inject("pp-broken")
    assert bench.proximity.read_ohms() == math.inf


def test_pp_tethered_and_bad_cable() -> None:
    bench = SimBench(FakeClock(), cable_a=None)
    bench.plug()
    assert bench.proximity.read_ohms() == math.inf
    with pytest.raises(ValueError):
        SimBench(FakeClock(), cable_a=16.0)


def test_fault_inputs_and_kinds(bench: SimBench) -> None:
    assert bench.faults.active() == frozenset()
    bench.inject("rcd")
    bench.inject("meter")
    bench.inject("overtemp")
    assert bench.faults.active() == {"rcd", "overtemp"}
    bench.clear("rcd")
    assert bench.faults.active() == {"overtemp"}
    bench.clear()
    assert bench.injected == frozenset()
    with pytest.raises(ValueError, match="pp-broken"):
        bench.inject("flood")
    with pytest.raises(ValueError):
        bench.clear("flood")
    assert len(FAULT_KINDS) == 11
    bench.inject("grid-meter")
    bench.inject("thermometer")
    assert bench.faults.active() == frozenset()  # limit inputs, not hard-wired fault inputs


# -- meter, reader, indicator ------------------------------------------------------------------
async def test_meter_fault_raises(bench: SimBench, clock: FakeClock) -> None:
    bench.inject("meter")
    with pytest.raises(DeviceError) as info:
        await bench.meter.read()
    assert info.value.kind == "meter"
    bench.clear("meter")
    clock.advance(5.0)
    reading = await bench.meter.read()
    assert reading.taken_at == clock.monotonic()
    assert reading.voltage_v == (230.0, 230.0, 230.0)


async def test_reader_taps_and_fault(bench: SimBench) -> None:
    bench.tap(b"\x04\xa1\xb2")
    taps = bench.reader.taps()
    assert await anext(taps) == CardTap(uid=b"\x04\xa1\xb2", reader="sim")
    waiting = asyncio.ensure_future(anext(taps))
    await asyncio.sleep(0)
    assert not waiting.done()
    bench.inject("reader")  # wakes the waiting consumer
    with pytest.raises(DeviceError) as info:
        await asyncio.wait_for(waiting, 1.0)
    assert info.value.kind == "reader"
    with pytest.raises(DeviceError):
        await anext(bench.reader.taps())
    bench.clear("reader")
    bench.tap(b"\x01\x02\x03\x04")
    assert (await anext(bench.reader.taps())).uid == b"\x01\x02\x03\x04"


def test_indicator_records_changes() -> None:
    ind = SimBench(FakeClock()).indicator
    assert ind.pattern.value == "off" and ind.history == []
    for pattern in (IndicatorPattern.IDLE, IndicatorPattern.IDLE, IndicatorPattern.CHARGING):
        ind.show(pattern)
    assert ind.pattern is IndicatorPattern.CHARGING
    assert ind.history == [IndicatorPattern.IDLE, IndicatorPattern.CHARGING]
    for i in range(150):
        ind.show(IndicatorPattern.FAULT if i % 2 else IndicatorPattern.IDLE)
    assert len(ind.history) == 100


# -- bench -------------------------------------------------------------------------------------
def test_listeners(bench: SimBench, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def listener() -> None:
        calls.append(bench.ev.state)

    def broken() -> None:
        raise RuntimeError("boom")

    bench.pilot.subscribe(listener)
    bench.contactor.subscribe(listener)  # same list: registered once
    bench.faults.subscribe(broken)
    with caplog.at_level(logging.ERROR):
        bench.plug()
    assert calls == ["B"]
    assert "boom" in caplog.text
    bench.inject("rcd")
    bench.unplug()
    assert calls == ["B", "B", "A"]
    bench.plug()
    bench.pilot.set_duty(duty_for_current(16.0))  # output change: controller re-reads
    calls.clear()
    run(bench, clock, 0.5)
    assert calls == []  # nothing changed
    run(bench, clock, 0.5)
    assert calls == ["C"]  # letter change found by tick
    bench.contactor.command(True)
    calls.clear()
    run(bench, clock, 0.02)
    assert calls == ["C"]  # feedback change found by tick
    bench.tick()
    assert calls == ["C"]  # idempotent


def test_hardware_and_snapshot(bench: SimBench, clock: FakeClock) -> None:
    hw = bench.hardware()
    assert hw.pilot is bench.pilot and hw.contactor is bench.contactor
    assert bench.hardware().meter is hw.meter
    assert hw.extras == {"sim": bench}
    charging(bench, clock)
    bench.inject("overtemp")
    snap = bench.snapshot()
    json.dumps(snap)
    assert snap["plugged"] is True
    assert snap["ev_state"] == "C"
    assert snap["draw_a"] == 16.0
    assert snap["contactor_physical"] is True
    assert snap["faults"] == ["overtemp"]
    assert isinstance(snap["energy_wh"], float) and snap["energy_wh"] > 0
    assert hw.grid_meter is bench.grid_meter and hw.thermometer is bench.thermometer
    bench.set_house_load((1.0, 2.0, 3.0))
    bench.set_ambient_c(30.0)
    snap = bench.snapshot()
    json.dumps(snap)
    assert snap["house_load_a"] == [1.0, 2.0, 3.0]
    assert snap["grid_current_a"] == [17.0, 18.0, 19.0]
    assert snap["ambient_c"] == 30.0
    assert isinstance(snap["temperature_c"], float) and snap["temperature_c"] > 30.0  # heated by 16 A


# -- grid meter --------------------------------------------------------------------------------------
async def test_grid_meter_is_house_load_plus_the_ev_on_its_phases(clock: FakeClock) -> None:
    bench = SimBench(clock, ev=EVParams(phases=2), house_load_a=4.0)
    reading = await bench.grid_meter.read()
    assert reading.current_a == (4.0, 4.0, 4.0)
    assert reading.voltage_v == (230.0, 230.0, 230.0)
    assert reading.total_power_w == pytest.approx(3 * 230.0 * 4.0)
    charging(bench, clock, 16.0)
    bench.set_house_load((1.0, 10.0, 0.5))
    reading = await bench.grid_meter.read()
    assert reading.current_a == (17.0, 26.0, 0.5)  # the two-phase EV adds to L1 and L2 only
    assert reading.power_w == (230.0 * 17.0, 230.0 * 26.0, 230.0 * 0.5)
    assert reading.total_power_w == pytest.approx(230.0 * 43.5)
    assert reading.taken_at == clock.monotonic()
    own = await bench.meter.read()
    assert own.current_a == (16.0, 16.0, 0.0)


async def test_grid_register_integrates_house_and_ev_exactly(clock: FakeClock) -> None:
    bench = SimBench(clock)
    start = (await bench.grid_meter.read()).energy_import_wh
    assert start == 0.0
    bench.set_house_load(10.0)
    clock.advance(3600.0)  # no tick in between: the register still covers the whole hour
    reading = await bench.grid_meter.read()
    assert reading.energy_import_wh == pytest.approx(3 * 230.0 * 10.0)  # 6.9 kWh
    charging(bench, clock, 16.0)
    bench.set_house_load((0.0, 5.0, 0.0))
    run(bench, clock, 1800.0)
    house = 6900.0 + 230.0 * 10.0 * 3 * (12.02 / 3600.0) + 230.0 * 5.0 * 0.5
    grid_wh = (await bench.grid_meter.read()).energy_import_wh
    assert bench.house_energy_wh == pytest.approx(house)
    assert grid_wh == pytest.approx(house + (await bench.meter.read()).energy_import_wh)
    assert bench.meter.reading().energy_import_wh > 16.0 * 230.0 * 3 * 0.5 * 0.99  # the EV's half hour at 16 A


def test_grid_register_does_not_depend_on_the_tick_rate() -> None:
    coarse_clock, fine_clock = FakeClock(), FakeClock()
    coarse, fine = SimBench(coarse_clock, house_load_a=7.0), SimBench(fine_clock, house_load_a=7.0)
    for bench, clock in ((coarse, coarse_clock), (fine, fine_clock)):
        charging(bench, clock, 20.0)
        bench.set_house_load((3.0, 0.0, 9.0))
    run(coarse, coarse_clock, 600.0)
    for _ in range(6000):
        run(fine, fine_clock, 0.1)
    assert fine.grid_meter.reading().energy_import_wh == pytest.approx(coarse.grid_meter.reading().energy_import_wh)


async def test_grid_meter_fault_and_bad_house_loads(bench: SimBench) -> None:
    bench.inject("grid-meter")
    with pytest.raises(DeviceError) as info:
        await bench.grid_meter.read()
    assert info.value.kind == "grid-meter"
    assert (await bench.meter.read()).voltage_v == (230.0, 230.0, 230.0)  # the charger's own meter still answers
    bench.clear("grid-meter")
    assert (await bench.grid_meter.read()).current_a == (0.0, 0.0, 0.0)
    for bad in (-1.0, math.nan, math.inf, (1.0, 2.0), (1.0, -2.0, 3.0)):
        with pytest.raises(ValueError):
            bench.set_house_load(bad)  # type: ignore[arg-type]
    assert bench.house_load_a == (0.0, 0.0, 0.0)


# -- thermometer -------------------------------------------------------------------------------------
def test_thermometer_heats_with_current_squared_over_the_time_constant(clock: FakeClock) -> None:
    heat = ThermalModelParams(ambient_c=20.0, rise_k_per_a2=0.025, time_constant_s=600.0)
    bench = SimBench(clock, thermal=heat, ev=EVParams(battery_kwh=1000.0))  # never full in this test
    assert bench.thermometer.read_c() == 20.0
    charging(bench, clock, 32.0)  # current flows for the last 10 s of it (3.2 s of them ramping up)
    run(bench, clock, 590.0)
    rise = 0.025 * 32.0**2  # 25.6 K at steady state
    # One time constant after the current started: 63 % of the rise (the ramp costs a few hundredths).
    assert bench.thermometer.read_c() == pytest.approx(20.0 + rise * (1 - math.exp(-1.0)), abs=0.1)
    assert bench.thermometer.read_c() < 20.0 + rise * (1 - math.exp(-1.0))
    run(bench, clock, 6000.0)
    assert bench.thermometer.read_c() == pytest.approx(20.0 + rise, abs=1e-3)
    bench.set_ev_max_current(16.0)  # a quarter of the heat
    run(bench, clock, 6000.0)
    assert bench.thermometer.read_c() == pytest.approx(20.0 + rise / 4, abs=1e-3)


def test_thermometer_forced_value_relaxes_and_ambient_shifts(clock: FakeClock) -> None:
    bench = SimBench(clock)
    bench.set_temperature_c(85.0)
    assert bench.thermometer.read_c() == 85.0
    run(bench, clock, 600.0)  # no current: decays toward ambient with the time constant
    assert bench.thermometer.read_c() == pytest.approx(25.0 + 60.0 * math.exp(-1.0))
    bench.set_ambient_c(35.0)
    assert bench.thermometer.read_c() == pytest.approx(35.0 + 60.0 * math.exp(-1.0))
    with pytest.raises(ValueError):
        bench.set_ambient_c(math.nan)
    with pytest.raises(ValueError):
        bench.set_temperature_c(math.inf)


def test_thermometer_does_not_depend_on_the_tick_rate() -> None:
    coarse_clock, fine_clock = FakeClock(), FakeClock()
    coarse, fine = SimBench(coarse_clock), SimBench(fine_clock)
    for bench, clock in ((coarse, coarse_clock), (fine, fine_clock)):
        charging(bench, clock, 25.0)
        bench.pilot.set_duty(duty_for_current(10.0))  # a ramp down inside the next step
    run(coarse, coarse_clock, 900.0)
    for _ in range(9000):
        run(fine, fine_clock, 0.1)
    assert fine.thermometer.read_c() == pytest.approx(coarse.thermometer.read_c(), abs=1e-3)


def test_thermometer_fault(bench: SimBench) -> None:
    bench.inject("thermometer")
    with pytest.raises(DeviceError) as info:
        bench.thermometer.read_c()
    assert info.value.kind == "thermometer"
    bench.clear("thermometer")
    assert bench.thermometer.read_c() == 25.0


# -- PV behind the grid meter ------------------------------------------------------------------------
async def test_pv_total_is_spread_and_grid_power_is_signed_current_unsigned(clock: FakeClock) -> None:
    bench = SimBench(clock, house_load_a=2.0, pv_power_w=6900.0)
    assert bench.pv_power_w == (2300.0, 2300.0, 2300.0)
    reading = await bench.grid_meter.read()
    # 2 A of house load against 10 A of PV per phase: 8 A flow out on every phase.
    assert reading.current_a == pytest.approx((8.0, 8.0, 8.0))
    assert reading.power_w == pytest.approx((-1840.0, -1840.0, -1840.0))
    assert reading.total_power_w == pytest.approx(-5520.0)
    bench.set_pv_power(0.0)
    assert (await bench.grid_meter.read()).power_w == pytest.approx((460.0, 460.0, 460.0))


async def test_pv_per_phase_against_a_two_phase_ev(clock: FakeClock) -> None:
    bench = SimBench(clock, ev=EVParams(phases=2), house_load_a=2.0)
    charging(bench, clock, 16.0)
    bench.set_pv_power((0.0, 2300.0, 4600.0))
    reading = await bench.grid_meter.read()
    assert reading.current_a == pytest.approx((18.0, 8.0, 18.0))  # L3 exports 18 A: still a positive current
    assert reading.power_w == pytest.approx((4140.0, 1840.0, -4140.0))
    assert reading.total_power_w == pytest.approx(1840.0)
    assert all(a is not None and a >= 0 for a in reading.current_a)
    snap = bench.snapshot()
    json.dumps(snap)
    assert snap["pv_power_w"] == 6900.0 and snap["pv_phase_w"] == [0.0, 2300.0, 4600.0]
    assert snap["grid_power_w"] == [4140.0, 1840.0, -4140.0]
    assert snap["grid_current_a"] == [18.0, 8.0, 18.0]


def test_pv_import_and_export_registers_split_a_ramp_exactly(clock: FakeClock) -> None:
    # 6900 W of PV, no house load: the site exports until the EV's ramp (10 A/s on 3 phases, 690 W per A)
    # crosses 10 A, one second into it. One big step must give the piecewise-exact registers.
    bench = SimBench(clock, pv_power_w=6900.0)
    bench.plug()
    bench.pilot.set_duty(duty_for_current(16.0))
    run(bench, clock, 1.0)
    assert bench.ev.state == "C"
    import0, export0 = bench.grid_import_wh, bench.grid_export_wh
    assert import0 == 0.0 and export0 == pytest.approx(6900.0 / 3600.0)
    bench.contactor.command(True)
    run(bench, clock, 10.0)
    before_current = 6900.0 * 1.02  # switch delay + current onset, all exported (J)
    ramp_export = 6900.0 / 2  # net -6900 W rising linearly to 0 over 1 s
    ramp_import = 6900.0 * 0.6**2 / 2  # then 0 to +4140 W over 0.6 s
    steady_import = 4140.0 * (10.0 - 1.02 - 1.6)
    assert bench.grid_export_wh - export0 == pytest.approx((before_current + ramp_export) / 3600.0)
    assert bench.grid_import_wh - import0 == pytest.approx((ramp_import + steady_import) / 3600.0)
    assert bench.grid_meter.reading().energy_import_wh == bench.grid_import_wh
    assert bench.pv_energy_wh == pytest.approx(6900.0 * 11.0 / 3600.0)
    snap = bench.snapshot()
    assert snap["grid_export_wh"] == round(bench.grid_export_wh, 3)


def test_pv_registers_do_not_depend_on_the_tick_rate() -> None:
    coarse_clock, fine_clock = FakeClock(), FakeClock()
    coarse = SimBench(coarse_clock, house_load_a=3.0, pv_power_w=9000.0)
    fine = SimBench(fine_clock, house_load_a=3.0, pv_power_w=9000.0)
    for bench, clock in ((coarse, coarse_clock), (fine, fine_clock)):
        charging(bench, clock, 20.0)
        bench.pilot.set_duty(duty_for_current(6.0))  # ramps down through the zero crossing inside the next step
    run(coarse, coarse_clock, 60.0)
    for _ in range(600):
        run(fine, fine_clock, 0.1)
    assert fine.grid_import_wh == pytest.approx(coarse.grid_import_wh)
    assert fine.grid_export_wh == pytest.approx(coarse.grid_export_wh)
    assert coarse.grid_export_wh > 0 and coarse.grid_import_wh > 0


def test_bad_pv_powers_are_refused(bench: SimBench) -> None:
    bench.set_pv_power((100.0, 200.0, 300.0))
    for bad in (-1.0, math.nan, math.inf, (1.0, 2.0), (1.0, -2.0, 3.0), (1.0, math.nan, 3.0), "3000"):
        with pytest.raises(ValueError):
            bench.set_pv_power(bad)  # type: ignore[arg-type]
    assert bench.pv_power_w == (100.0, 200.0, 300.0)
    with pytest.raises(ValueError):
        SimBench(FakeClock(), pv_power_w=-5.0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 30.0),
            st.one_of(
                st.floats(0.0, 30000.0),
                st.tuples(st.floats(0.0, 10000.0), st.floats(0.0, 10000.0), st.floats(0.0, 10000.0)),
            ),
            st.floats(6.0, 32.0),
            st.sampled_from([0.0, 0.05, 0.7, 1.0, 30.0, 600.0]),
        ),
        max_size=15,
    )
)
def test_property_grid_meter_with_pv_is_house_plus_charger_minus_pv(
    steps: list[tuple[float, object, float, float]],
) -> None:
    clock = FakeClock()
    bench = SimBench(clock, ev=EVParams(soc_percent=50.0))
    charging(bench, clock, 16.0)
    imported, exported = bench.grid_import_wh, bench.grid_export_wh
    for house, pv, offer, pause in steps:
        bench.set_house_load(house)
        bench.set_pv_power(pv)  # type: ignore[arg-type]
        bench.pilot.set_duty(duty_for_current(offer))
        run(bench, clock, pause)
        g, own = bench.grid_meter.reading(), bench.meter.reading()
        for phase in range(3):
            watts = 230.0 * (bench.house_load_a[phase] + (own.current_a[phase] or 0.0)) - bench.pv_power_w[phase]
            assert g.power_w[phase] == pytest.approx(watts, abs=1e-6)
            assert g.current_a[phase] == pytest.approx(abs(watts) / 230.0, abs=1e-9)
        assert g.total_power_w == pytest.approx(sum(w for w in g.power_w if w is not None), abs=1e-6)
        # The registers only grow, and import - export is the net energy: house + EV - PV.
        assert bench.grid_import_wh >= imported - 1e-9 and bench.grid_export_wh >= exported - 1e-9
        imported, exported = bench.grid_import_wh, bench.grid_export_wh
        net = bench.house_energy_wh + own.energy_import_wh - bench.pv_energy_wh
        assert imported - exported == pytest.approx(net, abs=1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.floats(0.0, 60.0), st.tuples(st.floats(0.0, 60.0), st.floats(0.0, 60.0), st.floats(0.0, 60.0))
            ),
            st.floats(6.0, 40.0),
            st.sampled_from([0.0, 0.05, 1.0, 30.0, 600.0]),
        ),
        max_size=15,
    )
)
def test_property_grid_meter_is_house_plus_charger(steps: list[tuple[object, float, float]]) -> None:
    clock = FakeClock()
    bench = SimBench(clock, ev=EVParams(soc_percent=50.0))
    charging(bench, clock, 16.0)
    for load, offer, pause in steps:
        bench.set_house_load(load)  # type: ignore[arg-type]
        bench.pilot.set_duty(duty_for_current(offer))
        run(bench, clock, pause)
        g, own = bench.grid_meter.reading(), bench.meter.reading()
        for phase in range(3):
            assert g.current_a[phase] == pytest.approx(bench.house_load_a[phase] + (own.current_a[phase] or 0.0))
        assert g.energy_import_wh == pytest.approx(bench.house_energy_wh + own.energy_import_wh)
        assert bench.thermometer.read_c() >= bench.heat.ambient_c - 1e-9  # heating never cools below ambient


# -- property ----------------------------------------------------------------------------------
actions = st.one_of(
    st.tuples(st.sampled_from(["plug", "unplug", "plus12", "minus12", "wait"]), st.just(0.0)),
    st.tuples(st.just("duty"), st.floats(1.0, 99.0) | st.floats(8.0, 60.0)),
    st.tuples(st.sampled_from(["close", "request"]), st.sampled_from([0.0, 1.0])),
    st.tuples(st.just("max"), st.floats(0.0, 40.0)),
    st.tuples(st.just("soc"), st.floats(0.0, 100.0)),
)
pauses = st.sampled_from([0.0, 0.001, 0.02, 0.3, 0.5, 1.0, 1.7, 5.0, 60.0, 900.0])


def act(bench: SimBench, name: str, value: float) -> None:
    if name == "plug":
        bench.plug()
    elif name == "unplug":
        bench.unplug()
    elif name == "plus12":
        bench.pilot.set_constant(PilotConstant.PLUS_12V)
    elif name == "minus12":
        bench.pilot.set_constant(PilotConstant.MINUS_12V)
    elif name == "duty":
        bench.pilot.set_duty(value)
    elif name == "close":
        bench.contactor.command(bool(value))
    elif name == "request":
        bench.ev_request(bool(value))
    elif name == "max":
        bench.set_ev_max_current(value)
    elif name == "soc":
        bench.set_ev_soc(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(actions, pauses), max_size=30), st.floats(50.0, 100.0), st.floats(6.0, 40.0))
def test_energy_never_decreases_and_draw_respects_offer(
    steps: list[tuple[tuple[str, float], float]], soc: float, start_a: float
) -> None:
    clock = FakeClock()
    bench = SimBench(clock, ev=EVParams(soc_percent=soc, battery_kwh=5.0, request_delay_s=0.2))
    ramp = bench.ev.params.ramp_a_per_s
    bench.plug()  # start from a session about to charge, so the random steps reach current flow
    bench.pilot.set_duty(duty_for_current(start_a))
    bench.contactor.command(True)

    def limit() -> float:
        duty = bench.pilot.duty
        offered = None if duty is None else current_for_duty(duty)
        return min(offered or 0.0, bench.ev.max_current_a)

    energy = 0.0

    def check() -> None:
        nonlocal energy
        reading = bench.meter.reading()
        assert reading.energy_import_wh >= energy
        energy = reading.energy_import_wh
        draw = bench.ev.draw_a
        assert draw <= bench.ev.max_current_a + 0.01
        assert draw <= allowed + 0.01
        if limit() == 0.0 or not bench.contactor.physical():
            assert draw == 0.0

    # The offer, or a higher earlier one the EV is still ramping down from (it ramps both ways).
    allowed = limit()
    for (name, value), pause in steps:
        act(bench, name, value)
        allowed = max(limit(), allowed)
        check()
        clock.advance(pause)
        bench.tick()
        allowed = max(limit(), allowed - ramp * pause)
        check()
