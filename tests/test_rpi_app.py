"""The daemon on the Raspberry Pi backend, with only the lowest layers faked: the sysfs PWM tree, the I2C block
calls of smbus2 and the RPi.GPIO module. Also the board duties: watchdog kicks and the RCD self-test."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import test_rpi_gpio
from pytest_mock import MockerFixture
from rig import Rig
from test_rpi_analog import FakeChip
from test_rpi_gpio import HIGH, LOW, FakeGpio
from test_rpi_pwm import BCM_PI4, make_chip

from firmware import backends
from firmware.app import ChargePointApp, demo_settings
from firmware.backends import unsupported
from firmware.config import default_settings
from firmware.supervision import CLAIM, FAULT, BoardSupervisor

gpio = test_rpi_gpio.gpio  # the same fake RPi.GPIO module fixture


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_the_daemon_runs_the_reference_board_and_leaves_it_safe(
    gpio: FakeGpio,
    mocker: MockerFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    root = tmp_path / "class" / "pwm"
    make_chip(root, 0, BCM_PI4, exported={0: (0, 0, 0)})
    chip = FakeChip(mocker)
    chip.set_pilot(12.0, 12.0)  # state A: +12 V on both peak detectors
    chip.set_pp(math.inf)
    mocker.patch("smbus2.SMBus", return_value=chip.bus)
    gpio.levels[24] = test_rpi_gpio.HIGH  # the mirror contact is open (it pulls the input low when closed)
    real_config = backends.rpi_board_config
    monkeypatch.setattr(backends, "rpi_board_config", lambda s: replace(real_config(s), pwm_root=root))
    work = Path(tempfile.mkdtemp(prefix="evse-rpi-", dir="/tmp"))
    s = demo_settings(default_settings(), work)
    s = replace(
        s,
        hal=replace(s.hal, backend="rpi"),
        meter=replace(s.meter, model="sdm630", port=str(tmp_path / "no-rs485")),  # absent: a meter fault, not a crash
        rfid=replace(s.rfid, reader="none"),
        rpi=replace(s.rpi, rcd_test_pin=-1),
    )
    assert unsupported(s) == []
    app = ChargePointApp(s)
    assert app.sim is None and app.board is not None
    assert gpio.outputs[s.rpi.relay_pin] == LOW
    pwm = root / "pwmchip0" / "pwm0"
    assert (pwm / "period").read_text().strip() == "1000000"  # 1 kHz
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await until(lambda: app.controller.last_step_at is not None)
        kicks = [c for c in gpio.calls if c[:2] == ("output", s.rpi.watchdog_pin)]
        await asyncio.sleep(0.35)
        kicked = [c for c in gpio.calls if c[:2] == ("output", s.rpi.watchdog_pin)]
        assert len(kicked) - len(kicks) >= 2  # toggled every watchdog_kick_ms while the loop steps
        assert app.controller.letter == "A"
        assert app.controller.faults == frozenset()  # mirror contact open, RCD quiet, the ADC answers
        assert gpio.outputs[s.rpi.led_green_pin] == HIGH  # idle: green
        assert (pwm / "duty_cycle").read_text().strip() == "1000000"  # constant +12 V in state A
    finally:
        stop.set()
        await task
    assert gpio.outputs[s.rpi.relay_pin] == LOW
    assert (pwm / "duty_cycle").read_text().strip() == "0"  # pilot left at -12 V


# -- the board duties, on a fake board ------------------------------------------------------------
@dataclass
class Result:
    passed: bool
    reason: str


class FakeBoard:
    def __init__(self, result: Result | Exception) -> None:
        self.result = result
        self.kicks = 0
        self.started = False
        self.closed = False
        self.watchdog = self
        self.rcd = self
        self.arbiter_during_test: Any = None

    def kick(self) -> None:
        self.kicks += 1

    def self_test(self) -> Result:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


def supervised(result: Result | Exception) -> tuple[BoardSupervisor, FakeBoard, Rig]:
    rig = Rig()
    board = FakeBoard(result)
    return BoardSupervisor(board, rig.ctl, rig.arbiter, rig.clock, kick_s=0.01), board, rig


async def test_the_watchdog_is_kicked_only_while_the_control_loop_steps() -> None:
    sup, board, rig = supervised(Result(True, "ok"))
    sup.start()
    task = asyncio.create_task(sup.run())
    try:
        await rig.step()
        await asyncio.sleep(0.05)
        assert board.started and board.kicks >= 2
        rig.clock.advance(2.0)  # no step for 2 s: the loop is stuck
        before = board.kicks
        await asyncio.sleep(0.05)
        assert board.kicks == before  # the latch drops the relay by itself
        await rig.step()
        await asyncio.sleep(0.05)
        assert board.kicks > before
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_rcd_self_test_holds_the_current_then_releases_it() -> None:
    sup, board, rig = supervised(Result(True, "tripped in 12 ms"))
    seen: list[float | None] = []
    board.self_test = lambda: (seen.append(rig.arbiter.get(CLAIM).current_a), Result(True, "ok"))[1]  # type: ignore[method-assign,union-attr]
    assert await sup.test_rcd()
    assert seen == [0.0]  # 0 A while the module is tested: the contactor cannot close
    assert rig.arbiter.get(CLAIM) is None
    assert FAULT not in rig.ctl._device_faults


@pytest.mark.parametrize("result", [Result(False, "no trip within 300 ms"), OSError("GPIO gone")])
async def test_a_failed_rcd_self_test_trips_the_charger(result: Result | Exception) -> None:
    sup, _board, rig = supervised(result)
    assert not await sup.test_rcd()
    await rig.step()
    assert FAULT in rig.ctl.faults
    assert rig.status.value == "Faulted" and not rig.contactor_closed


async def test_the_self_test_runs_when_a_session_begins() -> None:
    sup, _board, rig = supervised(Result(True, "ok"))
    rig.bench.plug()
    await rig.step()
    await asyncio.sleep(0.05)
    assert rig.status.value == "Preparing"
    assert not sup._tests  # ran and finished
    assert rig.arbiter.get(CLAIM) is None
