"""``evse hal check`` and ``evse hal calibrate``: an installer's first look at the wiring, one line per device.

Run with the daemon stopped (``systemctl stop evse``): the checks open the same GPIO, I2C, serial and PC/SC devices.
Every probe reports what it found, what it read and a verdict; nothing here is left switched on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from firmware.backends import open_modbus_meter, resolve_backend, rpi_board_config
from firmware.config import MeterSettings, Settings
from hal.clock import SystemClock
from hal.iec61851 import cable_ampacity
from hal.interfaces import DeviceError, MeterReading, PilotConstant

if TYPE_CHECKING:
    from hal.rpi import RpiBoard

Verdict = Literal["ok", "FAIL", "skip"]


@dataclass(frozen=True)
class Line:
    device: str
    found: str
    reading: str
    verdict: Verdict

    def __str__(self) -> str:
        return f"{self.verdict:<4}  {self.device:<12} {self.found}" + (f": {self.reading}" if self.reading else "")


async def check(settings: Settings, *, open_board: Callable[[Settings], RpiBoard] | None = None) -> list[Line]:
    lines: list[Line] = []
    backend = resolve_backend(settings)
    if backend == "rpi":
        lines.extend(check_board(settings, open_board or _open_board))
    else:
        lines.append(Line("board", "simulated pilot, contactor and faults (not a Raspberry Pi)", "", "skip"))
    for name, meter in (("meter", settings.meter), ("grid meter", settings.grid_meter)):
        if meter is None:
            continue
        if meter.model == "auto" and backend == "rpi":
            meter = replace(meter, model="sdm630")
        lines.append(await check_meter(name, meter))
    lines.append(await check_reader(settings, backend))
    return lines


def _open_board(settings: Settings) -> RpiBoard:
    from hal.rpi import RpiBoard

    return RpiBoard(rpi_board_config(settings))


def check_board(settings: Settings, open_board: Callable[[Settings], RpiBoard]) -> list[Line]:
    try:
        board = open_board(settings)
    except DeviceError as exc:
        return [Line("board", "reference board", str(exc), "FAIL")]
    try:
        return _board_lines(settings, board)
    finally:
        board.close()


def _board_lines(settings: Settings, board: RpiBoard) -> list[Line]:
    pi = settings.rpi
    lines = [
        Line("pilot PWM", f"{board.pwm.chip.name} channel {board.pwm.channel} on GPIO{pi.pwm_gpio}", "1 kHz", "ok")
    ]
    board.pwm.set_constant(PilotConstant.PLUS_12V)
    time.sleep(0.2)  # the peak detectors follow within a few ms; the bleed resistor within ~100 ms
    try:
        adc = board.adc
        volts = [adc.read_volts(ch) for ch in (0, 1, 2)]
    except DeviceError as exc:
        lines.append(Line("pilot ADC", f"ADS1115 at {pi.adc_address:#04x} on /dev/i2c-{pi.i2c_bus}", str(exc), "FAIL"))
    else:
        high = settings.rpi.cp_high_gain * volts[0] + settings.rpi.cp_high_offset
        low = settings.rpi.cp_low_gain * volts[1] + settings.rpi.cp_low_offset
        plausible = 10.5 <= high <= 13.5 and 10.5 <= low <= 13.5
        hint = "" if plausible else " (expected about +12 V with no EV: calibrate with `evse hal calibrate`)"
        lines.append(
            Line(
                "pilot ADC",
                f"ADS1115 at {pi.adc_address:#04x} on /dev/i2c-{pi.i2c_bus}",
                f"CP+ {high:+.1f} V, CP- {low:+.1f} V at constant +12 V{hint}",
                "ok" if plausible else "FAIL",
            )
        )
        ohms = board.config.pp_divider.ohms(volts[2])
        amps = cable_ampacity(ohms)
        shown = "open (no cable)" if math.isinf(ohms) else f"{ohms:.0f} ohm"
        rating = "" if amps is None else f" = {amps:g} A cable"
        verdict: Verdict = "ok" if amps is not None or math.isinf(ohms) or settings.charger.tethered_cable else "FAIL"
        lines.append(Line("proximity", f"ADS1115 AIN2, pull-up {pi.pp_pullup_ohm:g} ohm", shown + rating, verdict))
    board.pwm.set_constant(PilotConstant.MINUS_12V)
    mirror = board.contactor.feedback()
    if mirror is None:
        lines.append(Line("contactor", f"relay GPIO{pi.relay_pin}, no mirror contact", "relay off", "ok"))
    else:
        verdict = "ok" if mirror is False else "FAIL"
        state = "open" if mirror is False else "CLOSED while the relay is off (welded or miswired)"
        lines.append(Line("contactor", f"relay GPIO{pi.relay_pin}, mirror GPIO{pi.feedback_pin}", state, verdict))
    active = board.rcd.active()
    lines.append(
        Line(
            "RCD",
            f"fault GPIO{pi.rcd_fault_pin}",
            "fault line active" if active else "fault line quiet",
            "FAIL" if active else "ok",
        )
    )
    if pi.rcd_test_pin >= 0:
        result = board.rcd.self_test()
        lines.append(Line("RCD test", f"test GPIO{pi.rcd_test_pin}", result.reason, "ok" if result.passed else "FAIL"))
    board.watchdog.kick()
    lines.append(Line("watchdog", f"latch GPIO{pi.watchdog_pin}", "kicked once", "ok"))
    return lines


async def check_meter(name: str, meter: MeterSettings) -> Line:
    where = f"{meter.model} at address {meter.address} on {meter.port}"
    if meter.model in ("auto", "sim"):
        return Line(name, "simulated", "", "skip")
    try:
        device = open_modbus_meter(meter, "meter" if name == "meter" else "grid-meter", SystemClock())
    except ValueError as exc:
        return Line(name, where, str(exc), "FAIL")
    try:
        reading = await device.read()
    except DeviceError as exc:
        return Line(name, where, str(exc), "FAIL")
    finally:
        close = getattr(device, "aclose", None)
        if close is not None:
            await close()
    return Line(name, where, _reading(reading), "ok")


def _reading(r: MeterReading) -> str:
    volts = "/".join("-" if v is None else f"{v:.0f}" for v in r.voltage_v)
    amps = "/".join("-" if a is None else f"{a:.1f}" for a in r.current_a)
    return f"{volts} V, {amps} A, {r.total_power_w:.0f} W, import {r.energy_import_wh / 1000:.3f} kWh"


async def check_reader(settings: Settings, backend: str) -> Line:
    kind = settings.rfid.reader
    if kind == "none" or (kind in ("auto", "sim") and backend == "sim"):
        return Line("card reader", "none" if kind == "none" else "simulated", "", "skip")
    if kind == "auto":
        kind = "pcsc"
    if kind == "pcsc":
        return await asyncio.to_thread(_pcsc_readers)
    return await asyncio.to_thread(_pn532_version, settings.rfid.port)


def _pcsc_readers() -> Line:
    try:
        from smartcard.System import readers
    except ImportError as exc:
        return Line("card reader", "pcsc", f"pyscard missing ({exc})", "FAIL")
    try:
        names = [str(r) for r in readers()]
    except Exception as exc:  # pyscard raises its own types when pcscd is absent
        return Line("card reader", "pcsc", f"pcscd not reachable: {exc}", "FAIL")
    if not names:
        return Line("card reader", "pcsc", "no reader connected", "FAIL")
    return Line("card reader", "pcsc", ", ".join(names), "ok")


def _pn532_version(port: str) -> Line:
    import serial

    from hal.rfid.pn532 import Pn532Error, Pn532Link

    try:
        with serial.Serial(port, 115200, timeout=0.05, write_timeout=1.0, exclusive=True) as handle:
            version = Pn532Link(handle, ack_timeout_s=0.1, response_timeout_s=1.0).setup()
    except (OSError, Pn532Error) as exc:  # pyserial's SerialException is an OSError
        return Line("card reader", f"pn532 on {port}", str(exc), "FAIL")
    return Line("card reader", f"pn532 on {port}", f"firmware {version.hex()}", "ok")


def calibrate(settings: Settings, *, open_board: Callable[[Settings], RpiBoard] | None = None) -> list[str]:
    """Two-point calibration of both pilot peak channels: drive +12 V, then -12 V, with no EV plugged in.

    Returns the config lines to paste into ``[rpi]``; raises ValueError when the readings cannot be a pilot.
    """
    from hal.rpi import Calibration

    board = (open_board or _open_board)(settings)
    try:
        points = {}
        for level, pilot_v in ((PilotConstant.PLUS_12V, 12.0), (PilotConstant.MINUS_12V, -12.0)):
            board.pwm.set_constant(level)
            time.sleep(0.3)
            points[pilot_v] = (board.adc.read_volts(0), board.adc.read_volts(1))
    finally:
        board.close()
    out = []
    for index, name in ((0, "cp_high"), (1, "cp_low")):
        hi, lo = points[12.0][index], points[-12.0][index]
        if abs(hi - lo) < 0.5:
            raise ValueError(
                f"{name}: the ADC reads {lo:.3f} V at -12 V and {hi:.3f} V at +12 V: no pilot swing "
                "(EV plugged in, or the channel is not wired)"
            )
        cal = Calibration.from_points(lo, -12.0, hi, 12.0)
        out += [f"{name}_gain = {cal.gain:.4f}", f"{name}_offset = {cal.offset:.4f}"]
    return out
