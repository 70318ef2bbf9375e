"""The Pi's :class:`~hal.interfaces.ControlPilot` and :class:`~hal.interfaces.ProximityPilot`."""

from __future__ import annotations

from hal.interfaces import Listener, PilotConstant, PilotLevels
from hal.rpi.analog import AnalogFrontEnd
from hal.rpi.pwm import SysfsPwm


class RpiControlPilot:
    """Hardware PWM out, peak-detected levels in (volts; the firmware classifies the letters)."""

    def __init__(self, pwm: SysfsPwm, frontend: AnalogFrontEnd) -> None:
        self.pwm = pwm
        self.frontend = frontend

    def set_duty(self, duty_percent: float) -> None:
        self.pwm.set_duty_percent(duty_percent)

    def set_constant(self, level: PilotConstant) -> None:
        self.pwm.set_constant(level)

    def read(self) -> PilotLevels:
        """The latest debounced levels; raises DeviceError ("pilot") if the ADC failed or went stale."""
        return self.frontend.levels()

    def subscribe(self, listener: Listener) -> None:
        self.frontend.subscribe(listener)


class RpiProximityPilot:
    """PP-PE resistance from the divider on the front end's PP channel."""

    def __init__(self, frontend: AnalogFrontEnd) -> None:
        self.frontend = frontend

    def read_ohms(self) -> float:
        return self.frontend.pp_ohms()
