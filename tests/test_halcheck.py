"""`evse hal check` and `evse hal calibrate` against real peers (Modbus RTU over socat, a PN532 on a pty) and,
for the board, the fake sysfs / I2C / GPIO layers the hal/rpi tests use."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import test_rpi_gpio
from modbus_server import MeterServer, SocatPair
from pytest_mock import MockerFixture
from rfid_pn532_peer import FakePn532
from test_rpi_analog import FakeChip
from test_rpi_gpio import FakeGpio
from test_rpi_pwm import BCM_PI4, make_chip

from firmware import backends, cli, halcheck
from firmware.config import MeterSettings, Settings, default_settings
from hal.interfaces import PilotConstant
from hal.meters import meter_map
from hal.rpi import RpiBoard

gpio = test_rpi_gpio.gpio


@pytest.fixture
async def meter_port(tmp_path: Path) -> AsyncIterator[tuple[str, MeterServer]]:
    pair = SocatPair(tmp_path / "ctrl", tmp_path / "meter")
    server = MeterServer(tmp_path / "meter", {1: meter_map("sdm630")})
    await server.start()
    try:
        yield str(tmp_path / "ctrl"), server
    finally:
        await server.stop()
        pair.close()


@pytest.fixture
def pn532(tmp_path: Path) -> Iterator[FakePn532]:
    fake = FakePn532(tmp_path / "ttyPN532")
    fake.plug()
    yield fake
    fake.unplug()


def sim_settings(**sections: object) -> Settings:
    s = default_settings()
    return replace(s, hal=replace(s.hal, backend="sim"), **sections)  # type: ignore[arg-type]


async def test_check_on_simulated_hardware_reads_a_real_meter_and_reader(
    meter_port: tuple[str, MeterServer], pn532: FakePn532
) -> None:
    port, server = meter_port
    for phase in (1, 2, 3):
        server.set(1, f"voltage_l{phase}", 230.0)
        server.set(1, f"current_l{phase}", 10.0)
    server.set(1, "total_power", 6900.0)
    server.set(1, "energy_import", 12.5)
    s = sim_settings(meter=MeterSettings(model="sdm630", port=port, address=1))
    s = replace(s, rfid=replace(s.rfid, reader="pn532", port=str(pn532.link)))
    lines = await halcheck.check(s)
    assert [str(line) for line in lines] == [
        "skip  board        simulated pilot, contactor and faults (not a Raspberry Pi)",
        f"ok    meter        sdm630 at address 1 on {port}: 230/230/230 V, 10.0/10.0/10.0 A, 6900 W, import 12.500 kWh",
        f"ok    card reader  pn532 on {pn532.link}: firmware 32010607",
    ]


async def test_a_meter_that_does_not_answer_and_a_missing_reader_fail(meter_port: tuple[str, MeterServer]) -> None:
    port, _server = meter_port
    s = sim_settings(meter=MeterSettings(model="sdm630", port=port, address=7))  # nobody at address 7
    s = replace(s, rfid=replace(s.rfid, reader="pn532", port="/dev/does-not-exist"))
    lines = await halcheck.check(s)
    assert [(line.device, line.verdict) for line in lines] == [
        ("board", "skip"),
        ("meter", "FAIL"),
        ("card reader", "FAIL"),
    ]


def test_the_cli_exits_1_when_a_device_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[hal]\nbackend = "sim"\n[rfid]\nreader = "pn532"\nport = "/dev/does-not-exist"\n')
    assert cli.main(["hal", "check", "--config", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("skip  board") and out[-1].startswith("FAIL  card reader  pn532 on /dev/does-not-exist")


# -- the reference board, on fakes at the lowest layer -------------------------------------------
@pytest.fixture
def board_factory(gpio: FakeGpio, mocker: MockerFixture, tmp_path: Path) -> Iterator[tuple[FakeChip, FakeGpio, object]]:
    root = tmp_path / "class" / "pwm"
    make_chip(root, 0, BCM_PI4, exported={0: (0, 0, 0)})
    chip = FakeChip(mocker)
    chip.set_pp(math.inf)
    mocker.patch("smbus2.SMBus", return_value=chip.bus)
    gpio.levels[24] = test_rpi_gpio.HIGH  # the mirror contact is open (it pulls the input low when closed)

    def open_board(settings: Settings) -> RpiBoard:
        board = RpiBoard(replace(backends.rpi_board_config(settings), pwm_root=root), gpio=gpio)
        drive = board.pwm.set_constant

        def set_constant(level: PilotConstant) -> None:  # the analog stage: the pilot level reaches the ADC
            drive(level)
            v = 12.0 if level is PilotConstant.PLUS_12V else -12.0
            chip.volts[0] = (v + 13.0) / 8.2  # a board whose divider differs a little from the defaults
            chip.volts[1] = (v + 13.0) / 8.2

        board.pwm.set_constant = set_constant  # type: ignore[method-assign]
        return board

    yield chip, gpio, open_board


def rpi_settings() -> Settings:
    s = default_settings()
    return replace(
        s,
        hal=replace(s.hal, backend="rpi"),
        meter=replace(s.meter, model="sim"),
        rfid=replace(s.rfid, reader="none"),
        rpi=replace(s.rpi, rcd_test_pin=-1),
    )


async def test_check_on_the_reference_board(board_factory: tuple[FakeChip, FakeGpio, object]) -> None:
    _chip, fake_gpio, open_board = board_factory
    s = rpi_settings()
    lines = await halcheck.check(s, open_board=open_board)  # type: ignore[arg-type]
    shown = {line.device: line for line in lines}
    assert shown["pilot PWM"].verdict == "ok" and "pwmchip0 channel 0 on GPIO18" in shown["pilot PWM"].found
    assert shown["pilot ADC"].reading.startswith("CP+ +11.2 V, CP- +11.2 V at constant +12 V")
    assert shown["pilot ADC"].verdict == "ok"
    assert (shown["proximity"].reading, shown["proximity"].verdict) == ("open (no cable)", "ok")
    assert (shown["contactor"].reading, shown["contactor"].verdict) == ("open", "ok")
    assert shown["RCD"].verdict == "ok" and shown["watchdog"].verdict == "ok"
    assert fake_gpio.outputs[s.rpi.relay_pin] == test_rpi_gpio.LOW  # nothing left switched on
    print("\n".join(str(line) for line in lines))


async def test_calibrate_prints_the_constants_that_map_the_board_back_to_12_v(
    board_factory: tuple[FakeChip, FakeGpio, object],
) -> None:
    _chip, _gpio, open_board = board_factory
    lines = await asyncio.to_thread(halcheck.calibrate, rpi_settings(), open_board=open_board)  # type: ignore[arg-type]
    values = dict(line.split(" = ") for line in lines)
    assert float(values["cp_high_gain"]) == pytest.approx(8.2, abs=0.01)
    assert float(values["cp_high_offset"]) == pytest.approx(-13.0, abs=0.02)
    assert float(values["cp_low_gain"]) == pytest.approx(8.2, abs=0.01)


async def test_calibrate_refuses_a_channel_without_swing(
    board_factory: tuple[FakeChip, FakeGpio, object],
) -> None:
    chip, _gpio, open_board = board_factory

    def flat(settings: Settings) -> RpiBoard:
        board: RpiBoard = open_board(settings)  # type: ignore[operator]
        board.pwm.set_constant = lambda level: None  # type: ignore[method-assign]  # an EV clamps the pilot
        chip.volts[0] = chip.volts[1] = 2.7
        return board

    with pytest.raises(ValueError, match="no pilot swing"):
        await asyncio.to_thread(halcheck.calibrate, rpi_settings(), open_board=flat)
