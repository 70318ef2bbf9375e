"""Wiring the reference board's devices together (deploy/hardware.md).

The composition root (firmware/app.py) opens an :class:`RpiBoard` and puts its ``pilot``,
``proximity``, ``contactor`` and ``faults`` into :class:`hal.interfaces.Hardware` next to the
meter, card reader and indicator backends, and kicks ``watchdog`` from its healthy control loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hal.interfaces import DeviceError, PilotConstant
from hal.rpi.ads1115 import DEFAULT_ADDRESS, Ads1115, SmbusLike
from hal.rpi.analog import DEFAULT_CP_CALIBRATION, AnalogFrontEnd, Calibration, Channels, PpDivider
from hal.rpi.gpio import GpioApi, GpioContactor, RcdInput, WatchdogLatch, load_gpio
from hal.rpi.pilot import RpiControlPilot, RpiProximityPilot
from hal.rpi.pwm import BCM_PWM_DEVICES, DEFAULT_SYSFS_ROOT, RP1_PWM_DEVICES, SysfsPwm


@dataclass(frozen=True, slots=True)
class RpiBoardConfig:
    """Reference-board defaults (BCM GPIO numbers); every value can be overridden from config."""

    pwm_gpio: int = 18
    pwm_root: Path = DEFAULT_SYSFS_ROOT
    #: Device names to look for under ``pwm_root`` (default: the Pi 3/4/Zero 2 W and Pi 5 PWM0 blocks).
    pwm_devices: tuple[str, ...] = BCM_PWM_DEVICES + RP1_PWM_DEVICES
    #: Force the Pi 5 (True) or BCM (False) channel map; None = decide from the chip found.
    pwm_rp1: bool | None = None
    i2c_bus: int = 1
    adc_address: int = DEFAULT_ADDRESS
    channels: Channels = field(default_factory=Channels)
    cp_high_cal: Calibration = DEFAULT_CP_CALIBRATION
    cp_low_cal: Calibration = DEFAULT_CP_CALIBRATION
    pp_divider: PpDivider = field(default_factory=PpDivider)
    relay_pin: int = 23
    feedback_pin: int | None = 24
    watchdog_pin: int = 25
    rcd_fault_pin: int = 5
    rcd_test_pin: int | None = 6


def open_smbus(bus: int) -> SmbusLike:
    """``smbus2.SMBus(bus)``, i.e. /dev/i2c-<bus>."""
    smbus2 = importlib.import_module("smbus2")
    try:
        return cast(SmbusLike, smbus2.SMBus(bus))
    except OSError as exc:
        raise DeviceError("adc", f"cannot open /dev/i2c-{bus} (dtparam=i2c_arm=on, group i2c): {exc}") from exc


class RpiBoard:
    """The opened devices of one reference board. ``close()`` leaves everything safe."""

    def __init__(
        self,
        config: RpiBoardConfig | None = None,
        *,
        gpio: GpioApi | None = None,
        smbus_factory: Callable[[int], SmbusLike] = open_smbus,
        pwm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        cfg = config or RpiBoardConfig()
        self.config = cfg
        gpio = gpio or load_gpio()
        self._closers: list[Callable[[], None]] = []
        try:
            # Safe outputs first: relay off, pilot at -12 V (F) until the controller says otherwise.
            self.contactor = GpioContactor(cfg.relay_pin, cfg.feedback_pin, gpio=gpio)
            self._closers.append(self.contactor.close)
            self.watchdog = WatchdogLatch(cfg.watchdog_pin, gpio=gpio)
            self._closers.append(self.watchdog.close)
            self.pwm = SysfsPwm.for_gpio(
                cfg.pwm_gpio, root=cfg.pwm_root, devices=cfg.pwm_devices, rp1=cfg.pwm_rp1, **(pwm_kwargs or {})
            )
            self.pwm.open(PilotConstant.MINUS_12V)
            self._closers.append(self.pwm.close)
            self.rcd = RcdInput(cfg.rcd_fault_pin, cfg.rcd_test_pin, gpio=gpio)
            self._closers.append(self.rcd.close)
            self.bus = smbus_factory(cfg.i2c_bus)
            self.adc = Ads1115(self.bus, address=cfg.adc_address)
            self.frontend = AnalogFrontEnd(
                self.adc,
                channels=cfg.channels,
                cp_high_cal=cfg.cp_high_cal,
                cp_low_cal=cfg.cp_low_cal,
                pp_divider=cfg.pp_divider,
            )
            self._closers.append(self.frontend.close)
        except BaseException:
            self.close()
            raise
        self.pilot = RpiControlPilot(self.pwm, self.frontend)
        self.proximity = RpiProximityPilot(self.frontend)
        self.faults = self.rcd

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the event loop for notifications, prime the ADC filters (a few ms, blocking), start sampling.

        ``loop`` defaults to the running loop; GPIO and sampler threads hand every notification to it,
        including to listeners that subscribed before it ran (the controller subscribes in ``__init__``).
        """
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("RpiBoard.start() needs the event loop: call it in the loop or pass loop=") from None
        self.contactor.bind_loop(loop)
        self.rcd.bind_loop(loop)
        self.frontend.bind_loop(loop)
        self.frontend.start()

    def close(self) -> None:
        """Relay off first, then the pilot to -12 V, then the rest; every step runs even if one fails."""
        errors: list[BaseException] = []
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise DeviceError("board", "; ".join(str(e) for e in errors))
