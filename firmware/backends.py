"""Which hardware runs a charge point: the simulated bench, or the Raspberry Pi reference board; real meters and
card readers on either. The composition root's one place that names hal backends (firmware elsewhere sees only
hal/interfaces.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from firmware.config import MeterSettings, Settings
from hal.clock import Clock
from hal.interfaces import CardReader, EnergyMeter, Hardware

if TYPE_CHECKING:
    from hal.rpi import RpiBoardConfig


def on_raspberry_pi(model_file: str = "/proc/device-tree/model") -> bool:
    try:
        return "raspberry pi" in Path(model_file).read_text(errors="replace").lower()
    except OSError:
        return False


def resolve_backend(settings: Settings) -> str:
    backend = settings.hal.backend
    if backend == "auto":
        return "rpi" if on_raspberry_pi() else "sim"
    return backend


def unsupported(settings: Settings) -> list[str]:
    """Valid settings that cannot work together, one line per key (so nothing starts half-configured)."""
    errors: list[str] = []
    grid_signing = settings.grid_meter is not None and settings.grid_meter.model == "sim-signing"
    if grid_signing:
        errors.append('grid_meter.model: "sim-signing" is for the charger\'s own [meter]')
    if resolve_backend(settings) == "rpi":
        for name, meter in (("meter", settings.meter), ("grid_meter", settings.grid_meter)):
            if (
                meter is not None
                and meter.model in ("sim", "sim-signing")
                and not (name == "grid_meter" and grid_signing)
            ):
                errors.append(f'{name}.model: "{meter.model}" needs simulated hardware; name the meter (e.g. "sdm630")')
        if settings.rfid.reader == "sim":
            errors.append('rfid.reader: "sim" needs simulated hardware; use "pcsc", "pn532" or "none"')
    return errors


def build_hardware(settings: Settings, clock: Clock) -> Hardware:
    if resolve_backend(settings) == "rpi":
        return build_rpi_hardware(settings, clock)
    return build_sim_hardware(settings, clock)


def build_sim_hardware(settings: Settings, clock: Clock) -> Hardware:
    """The simulated bench; a real meter or card reader named in the settings replaces its simulated one (an
    installer testing the meter wiring or a reader needs no pilot board)."""
    from hal.sim import EVParams, SimBench

    sim = settings.sim
    bench = SimBench(
        clock,
        phases=settings.charger.phases,
        voltage_v=settings.charger.nominal_voltage_v,
        cable_a=None if settings.charger.tethered_cable else sim.cable_a,
        feedback=settings.contactor.feedback,
        ev=EVParams(
            battery_kwh=sim.ev_battery_kwh,
            soc_percent=sim.ev_soc_percent,
            max_current_a=sim.ev_max_current_a,
            phases=sim.ev_phases,
        ),
    )
    hardware = bench.hardware()
    if settings.meter.model == "sim-signing":
        from firmware import version
        from firmware.payment.ocmf import MeterIdentity, OcmfSigner
        from hal.sim.signing_meter import SimSigningMeter

        identity = MeterIdentity("pievse", "sim-signing", f"SIM-{settings.charger.id}", version())
        signer = OcmfSigner.generate(identity)
        hardware = replace(hardware, meter=SimSigningMeter(bench, signer, charge_point_id=settings.charger.id))
    elif settings.meter.model not in ("auto", "sim"):
        hardware = replace(hardware, meter=open_modbus_meter(settings.meter, "meter", clock))
    if settings.grid_meter is not None and settings.grid_meter.model not in ("auto", "sim", "sim-signing"):
        hardware = replace(hardware, grid_meter=open_modbus_meter(settings.grid_meter, "grid-meter", clock))
    if settings.rfid.reader in ("pcsc", "pn532", "none"):
        hardware = replace(hardware, reader=open_card_reader(settings))
    return hardware


def build_rpi_hardware(settings: Settings, clock: Clock) -> Hardware:
    """The reference board (deploy/hardware.md): pilot, PP, contactor, RCD and LED on GPIO/PWM/I2C; the meter on
    RS-485 ("auto" = SDM630); the card reader on PC/SC ("auto") or a PN532. ``extras["rpi"]`` is the board, for
    the watchdog kick, the RCD self-test and closing."""
    from hal.rpi import RpiBoard
    from hal.rpi.gpio import load_gpio
    from hal.rpi.indicator import GpioLedIndicator

    gpio = load_gpio()
    board = RpiBoard(rpi_board_config(settings), gpio=gpio)
    try:
        meter = replace(settings.meter, model="sdm630") if settings.meter.model == "auto" else settings.meter
        grid = settings.grid_meter
        if grid is not None and grid.model == "auto":
            grid = replace(grid, model="sdm630")
        pi = settings.rpi
        return Hardware(
            pilot=board.pilot,
            proximity=board.proximity,
            contactor=board.contactor,
            faults=board.faults,
            meter=open_modbus_meter(meter, "meter", clock),
            reader=open_card_reader(settings),
            indicator=GpioLedIndicator(pi.led_red_pin, pi.led_green_pin, pi.led_blue_pin, gpio=gpio),
            grid_meter=None if grid is None else open_modbus_meter(grid, "grid-meter", clock),
            extras={"rpi": board},
        )
    except BaseException:
        board.close()
        raise


def rpi_board_config(settings: Settings) -> RpiBoardConfig:
    from hal.rpi import Calibration, PpDivider, RpiBoardConfig

    pi = settings.rpi
    return RpiBoardConfig(
        pwm_gpio=pi.pwm_gpio,
        i2c_bus=pi.i2c_bus,
        adc_address=pi.adc_address,
        cp_high_cal=Calibration(gain=pi.cp_high_gain, offset=pi.cp_high_offset),
        cp_low_cal=Calibration(gain=pi.cp_low_gain, offset=pi.cp_low_offset),
        pp_divider=PpDivider(pullup_ohm=pi.pp_pullup_ohm, supply_v=pi.pp_supply_v),
        relay_pin=pi.relay_pin,
        feedback_pin=None if pi.feedback_pin < 0 or not settings.contactor.feedback else pi.feedback_pin,
        watchdog_pin=pi.watchdog_pin,
        rcd_fault_pin=pi.rcd_fault_pin,
        rcd_test_pin=None if pi.rcd_test_pin < 0 else pi.rcd_test_pin,
    )


def open_modbus_meter(meter: MeterSettings, kind: str, clock: Clock) -> EnergyMeter:
    """A meter on its RS-485 bus; meters naming the same port share one bus (one owner of the port)."""
    from hal.meters import open_meter

    return open_meter(
        meter.model,
        meter.port,
        meter.baudrate,
        meter.parity,
        meter.address,
        custom_map=meter.custom_map if meter.model == "custom" else None,
        kind=kind,
        clock=clock.monotonic,
    )


def open_card_reader(settings: Settings) -> CardReader:
    reader = settings.rfid.reader
    if reader == "none":
        from hal.no_reader import NoCardReader

        return NoCardReader()
    from hal.rfid import open_reader

    kind = cast(Literal["pcsc", "pn532"], "pcsc" if reader == "auto" else reader)
    return open_reader(kind, settings.rfid.port if kind == "pn532" else None)
