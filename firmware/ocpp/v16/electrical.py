"""W <-> A for OCPP charging schedules: the voltage and phases a limit in watts is spread over.

W -> A per phase = W / (measured mean voltage of the phases in use, or nominal) / phases, where phases is the
period's numberPhases (capped at the wired phases), else the phases in use, else the wired phases. The EV
cannot be switched to fewer phases here, so a W limit is never spread over fewer phases than the EV uses:
a power limit stays a power limit. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from hal.interfaces import MeterReading

#: A phase carrying at least this much current is in use.
IN_USE_A: Final = 0.5


def floor_tenth(value: float) -> float:
    """Round down to 0.1 (OCPP limits are multiples of 0.1; a limit is never rounded up)."""
    return math.floor(value * 10 + 1e-6) / 10


@dataclass(frozen=True, slots=True)
class Electrical:
    """What W <-> A conversions use right now."""

    voltage_v: float
    phases_in_use: int | None
    wired_phases: int

    def phases(self, number_phases: int | None) -> int:
        """Phases a limit spreads over (see the module docstring)."""
        if number_phases is None:
            return self.phases_in_use or self.wired_phases
        return max(min(number_phases, self.wired_phases), self.phases_in_use or 0)

    def to_amps(self, value: float, unit: str, number_phases: int | None) -> float:
        return float(value) if unit == "A" else float(value) / (self.voltage_v * self.phases(number_phases))

    def to_watts(self, amps: float, number_phases: int | None) -> float:
        return amps * self.voltage_v * self.phases(number_phases)


def electrical(reading: MeterReading | None, nominal_v: float, wired_phases: int) -> Electrical:
    """Mean voltage of the phases in use (else of the live phases, else nominal) and how many are in use."""
    if reading is None:
        return Electrical(nominal_v, None, wired_phases)

    def plausible(v: float | None) -> bool:
        return v is not None and math.isfinite(v) and 0.5 * nominal_v <= v <= 1.5 * nominal_v

    pairs = list(zip(reading.voltage_v, reading.current_a, strict=True))
    in_use = [(v, i) for v, i in pairs if i is not None and math.isfinite(i) and i >= IN_USE_A]
    volts = [v for v, _ in in_use if plausible(v)] or [v for v, _ in pairs if plausible(v)]
    voltage = sum(v for v in volts if v is not None) / len(volts) if volts else nominal_v
    return Electrical(voltage, len(in_use) or None, wired_phases)
