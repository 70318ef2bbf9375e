"""Control-pilot levels -> IEC 61851 state letters, and the EV diode check. Pure.

Bands are nominal ±1 V (standards digest §1.2). Hysteresis: a reading that has left the band
of the previous state by no more than ``HYSTERESIS_V`` keeps that state, so a level sitting on
a band edge cannot chatter between two states. A reading in no band at all takes the nearest
nominal level (the hal backend filters noise; anything left is a real transition in flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from hal.iec61851 import LEVEL_TOLERANCE_V, NOMINAL_LEVEL_V
from hal.interfaces import PilotLevels

Letter = Literal["A", "B", "C", "D", "E", "F"]
LETTERS: Final[tuple[Letter, ...]] = ("A", "B", "C", "D", "E", "F")
EV_PRESENT: Final = frozenset({"B", "C", "D"})
HYSTERESIS_V: Final = 0.5
#: The negative PWM half must be at least this negative for the EV's diode to count as present.
DIODE_OK_BELOW_V: Final = -11.0


def classify(high_v: float, previous: Letter | None = None) -> Letter:
    """State letter for a positive pilot level, keeping ``previous`` within the hysteresis margin."""
    if previous is not None and abs(high_v - NOMINAL_LEVEL_V[previous]) <= LEVEL_TOLERANCE_V + HYSTERESIS_V:
        return previous
    for letter in LETTERS:
        if abs(high_v - NOMINAL_LEVEL_V[letter]) <= LEVEL_TOLERANCE_V:
            return letter
    return min(LETTERS, key=lambda letter: abs(high_v - NOMINAL_LEVEL_V[letter]))


@dataclass(frozen=True, slots=True)
class PilotReading:
    """What the controller concludes from one sample of the pilot."""

    letter: Letter
    #: True/False when the PWM was running with an EV present; None when it cannot be judged.
    diode_ok: bool | None


def interpret(levels: PilotLevels, pwm_running: bool, previous: Letter | None) -> PilotReading:
    """Letter plus diode verdict. The diode can only be judged on the PWM's negative half."""
    letter = classify(levels.high_v, previous)
    diode_ok: bool | None = None
    if pwm_running and letter in EV_PRESENT:
        diode_ok = levels.low_v <= DIODE_OK_BELOW_V
    return PilotReading(letter, diode_ok)
