"""The IEC 61851-1 control-pilot and proximity-pilot signal, as both ends of the cable see it.

Pure numbers and formulas (standards digest §1.2, §1.3, §1.6). They live in hal because the
signal is the physical interface: the controller encodes a current into a duty cycle and the
simulated EV decodes it, exactly as a real EV does.
"""

from __future__ import annotations

import math
from typing import Final

PWM_FREQUENCY_HZ: Final = 1000
PWM_PERIOD_NS: Final = 1_000_000

#: Nominal pilot high levels per state (V), EVSE side; tolerance ±1 V.
NOMINAL_LEVEL_V: Final = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0, "F": -12.0}
LEVEL_TOLERANCE_V: Final = 1.0

MIN_CURRENT_A: Final = 6.0
MAX_CURRENT_A: Final = 80.0

#: PWM "duty" of the two constant states: +12 V (x1, no PWM) and -12 V (state F).
DUTY_CONSTANT_HIGH: Final = 100.0
DUTY_CONSTANT_LOW: Final = 0.0


def duty_for_current(current_a: float) -> float:
    """Duty cycle (%) that offers ``current_a`` (6..80 A); §1.3 inverse formulas."""
    if not math.isfinite(current_a) or current_a < MIN_CURRENT_A or current_a > MAX_CURRENT_A:
        raise ValueError(f"offered current {current_a!r} A is outside {MIN_CURRENT_A:g}..{MAX_CURRENT_A:g} A")
    if current_a <= 51.0:
        return current_a / 0.6
    return current_a / 2.5 + 64.0


def current_for_duty(duty_percent: float) -> float | None:
    """Current (A) an EV may draw at ``duty_percent``; ``None`` when the duty allows no charging."""
    d = duty_percent
    if not math.isfinite(d) or d < 8.0 or d > 97.0:
        return None  # 0..3 % off, 3..7 % digital comms only, 7..8 % error, >97 % x1
    if d < 10.0:
        return 6.0
    if d <= 85.0:
        return d * 0.6
    if d <= 96.0:
        return (d - 64.0) * 2.5
    return 80.0


# Proximity pilot (Type 2, Annex B): accepted resistance ranges (EVerest bring-up table).
PP_RANGES_OHM: Final = (
    (80.0, 140.0, 63.0),
    (164.0, 308.0, 32.0),
    (400.0, 936.0, 20.0),
    (1100.0, 2460.0, 13.0),
)
PP_MIN_VALID_OHM: Final = 60.0
PP_MAX_VALID_OHM: Final = 4500.0


def cable_ampacity(resistance_ohm: float) -> float | None:
    """Cable rating coded by the PP resistor, or ``None`` for open/short (an error).

    A value between two coded ranges counts as the lower rating, as the standard asks.
    """
    r = resistance_ohm
    if math.isnan(r) or r < PP_MIN_VALID_OHM or r > PP_MAX_VALID_OHM:
        return None
    for low, high, amps in PP_RANGES_OHM:
        if low <= r <= high:
            return amps
    # Between ranges: take the rating of the next higher resistance band (the smaller cable).
    for low, _high, amps in PP_RANGES_OHM:
        if r < low:
            return amps
    return PP_RANGES_OHM[-1][2]


#: Nominal PP resistor per cable rating, for simulation and calibration.
PP_NOMINAL_OHM: Final = {13.0: 1500.0, 20.0: 680.0, 32.0: 220.0, 63.0: 100.0}
