"""Pilot/PP front end: a real Ads1115 over an SMBus whose block calls emulate the chip's registers."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import smbus2
from hypothesis import given
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from hal.iec61851 import PP_NOMINAL_OHM, cable_ampacity
from hal.interfaces import DeviceError, PilotConstant, PilotLevels
from hal.rpi.ads1115 import Ads1115, volts_to_code
from hal.rpi.analog import DEFAULT_CP_CALIBRATION, AnalogFrontEnd, Calibration, PpDivider
from hal.rpi.pilot import RpiControlPilot, RpiProximityPilot

PGA = 0b001  # ±4.096 V


class FakeChip:
    """Register-level ADS1115: the config write selects a channel; the conversion reads its voltage."""

    def __init__(self, mocker: MockerFixture) -> None:
        self.volts = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
        self.failing = False
        self.mux: int | None = None
        self.conversions: list[int] = []
        self.bus = smbus2.SMBus()
        mocker.patch.object(self.bus, "write_i2c_block_data", side_effect=self._write)
        mocker.patch.object(self.bus, "read_i2c_block_data", side_effect=self._read)

    def set_pilot(self, high_v: float, low_v: float) -> None:
        self.volts[0] = DEFAULT_CP_CALIBRATION.inverse(high_v)
        self.volts[1] = DEFAULT_CP_CALIBRATION.inverse(low_v)

    def set_pp(self, ohms: float) -> None:
        self.volts[2] = PpDivider().volts(ohms)

    def _write(self, addr: int, reg: int, data: list[int]) -> None:
        if self.failing:
            raise OSError(121, "Remote I/O error")
        assert (addr, reg) == (0x48, 0x01)
        word = (data[0] << 8) | data[1]
        self.mux = ((word >> 12) & 0b111) - 0b100

    def _read(self, addr: int, reg: int, length: int) -> list[int]:
        assert (addr, length) == (0x48, 2) and self.mux is not None
        if reg == 0x01:
            return [0x80 | ((0b100 | self.mux) << 4) | 0x03, 0xE3]
        self.conversions.append(self.mux)
        code = volts_to_code(self.volts[self.mux], PGA)
        return list(code.to_bytes(2, "big", signed=True))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def chip(mocker: MockerFixture) -> FakeChip:
    chip = FakeChip(mocker)
    chip.set_pilot(12.0, 12.0)
    chip.set_pp(math.inf)
    return chip


def frontend(chip: FakeChip, clock: Callable[[], float] | None = None, **kwargs: Any) -> AnalogFrontEnd:
    adc = Ads1115(chip.bus, sleep=lambda _s: None)
    return AnalogFrontEnd(adc, monotonic=clock or Clock(), **kwargs)


def poll(fe: AnalogFrontEnd, times: int) -> None:
    for _ in range(times):
        fe.poll()


def test_nothing_is_reported_before_the_window_fills(chip: FakeChip) -> None:
    fe = frontend(chip)
    poll(fe, 2)
    with pytest.raises(DeviceError, match="no settled sample"):
        fe.levels()


@pytest.mark.parametrize(("high", "low"), [(12.0, 12.0), (9.0, -12.0), (6.0, -12.0), (3.0, -12.0), (9.0, -9.0)])
def test_levels_map_back_to_pilot_volts(chip: FakeChip, high: float, low: float) -> None:
    chip.set_pilot(high, low)
    fe = frontend(chip)
    poll(fe, 3)
    levels = fe.levels()
    assert levels.high_v == pytest.approx(high, abs=0.01)
    assert levels.low_v == pytest.approx(low, abs=0.01)
    assert chip.conversions == [0, 1, 2] * 3


def test_minus_12v_reads_back_on_both_detectors(chip: FakeChip) -> None:
    chip.set_pilot(-12.0, -12.0)
    fe = frontend(chip)
    poll(fe, 3)
    assert fe.levels().high_v == pytest.approx(-12.0, abs=0.01)


def test_single_glitch_is_not_published_and_a_real_change_is_after_three_rounds(chip: FakeChip) -> None:
    chip.set_pilot(9.0, -12.0)
    fe = frontend(chip)
    poll(fe, 3)
    chip.set_pilot(0.0, -12.0)
    fe.poll()  # one glitch sample
    chip.set_pilot(9.0, -12.0)
    poll(fe, 2)
    assert fe.levels().high_v == pytest.approx(9.0, abs=0.01)
    chip.set_pilot(6.0, -12.0)
    poll(fe, 2)
    assert fe.levels().high_v == pytest.approx(9.0, abs=0.01)  # two new samples: not yet
    fe.poll()
    assert fe.levels().high_v == pytest.approx(6.0, abs=0.01)


def test_a_level_that_never_settles_is_published_as_the_median(chip: FakeChip) -> None:
    chip.set_pilot(12.0, 12.0)
    fe = frontend(chip, max_unsettled=3)
    poll(fe, 3)
    published = []
    for value in (11.0, 10.0, 9.0, 8.0, 7.0, 6.0):
        chip.set_pilot(value, -12.0)
        fe.poll()
        published.append(round(fe.levels().high_v, 2))
    # Held while unsettled, then the window's median every ``max_unsettled`` rounds (bounded latency).
    assert published == [12.0, 12.0, 10.0, 10.0, 10.0, 7.0]


@pytest.mark.parametrize("amps", sorted(PP_NOMINAL_OHM))
def test_pp_resistor_reads_back_as_the_cable_rating(chip: FakeChip, amps: float) -> None:
    chip.set_pp(PP_NOMINAL_OHM[amps])
    fe = frontend(chip)
    poll(fe, 3)
    ohms = RpiProximityPilot(fe).read_ohms()
    assert ohms == pytest.approx(PP_NOMINAL_OHM[amps], rel=0.005)
    assert cable_ampacity(ohms) == amps


@pytest.mark.parametrize(("volts", "expected"), [(3.3, math.inf), (3.299, math.inf), (0.0, 0.0), (-0.01, 0.0)])
def test_pp_open_and_short_are_invalid_for_iec61851(chip: FakeChip, volts: float, expected: float) -> None:
    chip.volts[2] = volts
    fe = frontend(chip)
    poll(fe, 3)
    assert fe.pp_ohms() == expected
    assert cable_ampacity(fe.pp_ohms()) is None


def test_repeated_i2c_failures_raise_and_recovery_clears(chip: FakeChip) -> None:
    fe = frontend(chip, max_failures=3)
    poll(fe, 3)
    chip.failing = True
    poll(fe, 2)
    assert fe.levels().high_v == pytest.approx(12.0, abs=0.01)  # two failures tolerated
    fe.poll()
    with pytest.raises(DeviceError, match="Remote I/O error") as info:
        fe.levels()
    assert info.value.kind == "pilot"
    with pytest.raises(DeviceError):
        fe.pp_ohms()
    chip.failing = False
    fe.poll()
    assert fe.levels().high_v == pytest.approx(12.0, abs=0.01)


def test_stale_samples_raise(chip: FakeChip) -> None:
    clock = Clock()
    fe = frontend(chip, clock, stale_after_s=0.25)
    poll(fe, 3)
    clock.now += 0.25
    assert fe.levels().high_v == pytest.approx(12.0, abs=0.01)
    clock.now += 0.01
    with pytest.raises(DeviceError, match="stale"):
        fe.levels()


def test_listeners_fire_on_real_changes_only(chip: FakeChip) -> None:
    fe = frontend(chip)
    calls: list[int] = []
    fe.subscribe(lambda: calls.append(1))
    poll(fe, 3)
    assert calls == [1]  # first settled value
    chip.set_pilot(12.1, 12.1)
    poll(fe, 3)
    assert calls == [1]  # below notify_delta_v
    chip.set_pilot(9.0, -12.0)
    poll(fe, 3)
    assert calls == [1, 1]


def test_pilot_delegates_pwm_and_reads() -> None:
    class Pwm:
        def __init__(self) -> None:
            self.calls: list[object] = []

        def set_duty_percent(self, duty: float) -> None:
            self.calls.append(duty)

        def set_constant(self, level: PilotConstant) -> None:
            self.calls.append(level)

    class Front:
        def levels(self) -> PilotLevels:
            return PilotLevels(9.0, -12.0)

    pwm = Pwm()
    pilot = RpiControlPilot(pwm, Front())  # type: ignore[arg-type]
    pilot.set_duty(26.5)
    pilot.set_constant(PilotConstant.MINUS_12V)
    assert pwm.calls == [26.5, PilotConstant.MINUS_12V]
    assert pilot.read() == PilotLevels(9.0, -12.0)


async def test_sampler_thread_notifies_on_the_event_loop(chip: FakeChip) -> None:
    fe = frontend(chip, time.monotonic, interval_s=0.002)  # real clock: the thread samples in real time
    loop_thread = threading.get_ident()
    changed = asyncio.Event()
    seen: list[int] = []

    def listener() -> None:
        seen.append(threading.get_ident())
        if fe.levels().high_v < 10.0:
            changed.set()

    fe.subscribe(listener)
    fe.start()
    try:
        chip.set_pilot(9.0, -12.0)
        await asyncio.wait_for(changed.wait(), timeout=5.0)
    finally:
        await fe.aclose()
    assert seen and set(seen) == {loop_thread}
    assert fe.levels().high_v == pytest.approx(9.0, abs=0.01)


def test_start_fails_when_the_adc_does_not_answer(chip: FakeChip) -> None:
    chip.failing = True
    fe = frontend(chip)
    with pytest.raises(DeviceError, match="pilot ADC failing"):
        fe.start()


@given(ohms=st.floats(min_value=1.0, max_value=50_000.0), pullup=st.floats(200.0, 10_000.0))
def test_pp_divider_round_trip(ohms: float, pullup: float) -> None:
    divider = PpDivider(pullup_ohm=pullup, supply_v=3.3)
    assert divider.ohms(divider.volts(ohms)) == pytest.approx(ohms, rel=1e-9)


@given(a=st.floats(0.0, 3.29), b=st.floats(0.0, 3.29))
def test_pp_ohms_rise_with_voltage(a: float, b: float) -> None:
    divider = PpDivider()
    lo, hi = sorted((a, b))
    assert divider.ohms(lo) <= divider.ohms(hi)


@given(
    adc_a=st.floats(0.0, 1.5),
    adc_b=st.floats(1.6, 3.3),
    pilot=st.floats(-12.6, 12.6),
)
def test_two_point_calibration_round_trip(adc_a: float, adc_b: float, pilot: float) -> None:
    cal = Calibration.from_points(adc_a, -12.0, adc_b, 12.0)
    assert cal.apply(adc_a) == pytest.approx(-12.0, abs=1e-9)
    assert cal.apply(adc_b) == pytest.approx(12.0, abs=1e-9)
    assert cal.apply(cal.inverse(pilot)) == pytest.approx(pilot, abs=1e-9)


def test_default_calibration_fits_the_adc_input_range() -> None:
    for pilot in (-12.6, 12.6):
        assert 0.0 < DEFAULT_CP_CALIBRATION.inverse(pilot) < 3.3
    with pytest.raises(ValueError):
        Calibration.from_points(1.0, -12.0, 1.0, 12.0)
