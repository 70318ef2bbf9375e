"""Raspberry Pi backend: hardware PWM pilot, ADS1115 pilot/PP sensing, relay, watchdog latch, RCD.

See deploy/hardware.md for the reference wiring and the config.txt lines it needs.
"""

from hal.rpi.ads1115 import Ads1115, code_to_volts, config_word, volts_to_code
from hal.rpi.analog import AnalogFrontEnd, Calibration, Channels, PpDivider
from hal.rpi.board import RpiBoard, RpiBoardConfig
from hal.rpi.gpio import (
    CombinedFaultInputs,
    GpioContactor,
    GpioFaultInput,
    RcdInput,
    SelfTestResult,
    WatchdogLatch,
    load_gpio,
)
from hal.rpi.pilot import RpiControlPilot, RpiProximityPilot
from hal.rpi.pwm import SysfsPwm, channel_for_gpio, find_pwm_chip

__all__ = [
    "Ads1115",
    "AnalogFrontEnd",
    "Calibration",
    "Channels",
    "CombinedFaultInputs",
    "GpioContactor",
    "GpioFaultInput",
    "PpDivider",
    "RcdInput",
    "RpiBoard",
    "RpiBoardConfig",
    "RpiControlPilot",
    "RpiProximityPilot",
    "SelfTestResult",
    "SysfsPwm",
    "WatchdogLatch",
    "channel_for_gpio",
    "code_to_volts",
    "config_word",
    "find_pwm_chip",
    "load_gpio",
    "volts_to_code",
]
