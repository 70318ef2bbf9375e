"""The status LED: one RGB LED on three GPIO outputs, a steady colour per pattern.

Colours (documented for drivers in deploy/hardware.md): idle green, waiting and reserved blue, authorized green,
rejected red, charging cyan (green + blue), suspended and finishing white, fault red, unavailable and off dark.
Steady colours need no timer thread; a blinking pattern would need one and is not worth it on a status LED.
"""

from __future__ import annotations

from typing import Final

from hal.interfaces import IndicatorPattern
from hal.rpi.gpio import GpioApi, _Output

#: (red, green, blue) per pattern.
COLOURS: Final[dict[IndicatorPattern, tuple[bool, bool, bool]]] = {
    IndicatorPattern.OFF: (False, False, False),
    IndicatorPattern.IDLE: (False, True, False),
    IndicatorPattern.WAITING: (False, False, True),
    IndicatorPattern.RESERVED: (False, False, True),
    IndicatorPattern.AUTHORIZED: (False, True, False),
    IndicatorPattern.REJECTED: (True, False, False),
    IndicatorPattern.CHARGING: (False, True, True),
    IndicatorPattern.SUSPENDED: (True, True, True),
    IndicatorPattern.FINISHING: (True, True, True),
    IndicatorPattern.FAULT: (True, False, False),
    IndicatorPattern.UNAVAILABLE: (False, False, False),
}


class GpioLedIndicator:
    """Pins of -1 are not wired (a board with a red/green LED only still shows faults and charging)."""

    def __init__(self, red_pin: int, green_pin: int, blue_pin: int, *, gpio: GpioApi) -> None:
        self._outputs = [None if pin < 0 else _Output(gpio, pin) for pin in (red_pin, green_pin, blue_pin)]
        self.pattern = IndicatorPattern.OFF

    def show(self, pattern: IndicatorPattern) -> None:
        self.pattern = pattern
        for output, on in zip(self._outputs, COLOURS[pattern], strict=True):
            if output is not None:
                output.set(on)

    def close(self) -> None:
        for output in self._outputs:
            if output is not None:
                output.close()
