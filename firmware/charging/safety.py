"""The safety rules that do not depend on the session: pure and clock-driven.

:func:`contactor_may_close` is the one place that says when the contactor may be closed. The
controller asks it before every close and on every step while closed; nothing else closes the
contactor. :class:`DutyGovernor` enforces the IEC 61851 5 s PWM update rule. :class:`ContactorSupervisor`
turns a mirror contact that disagrees with the coil into weld / stuck-open faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from hal.iec61851 import MIN_CURRENT_A

#: IEC 61851-1: the PWM duty may change at most every 5 s (EVerest IEC_PWM_MAX_UPDATE_INTERVAL).
DUTY_HOLD_S: Final = 5.0
#: After a fault the pilot stays in state F at least this long.
F_HOLD_S: Final = 0.3
#: Offered currents are quantised down to this step so noise in a limit cannot make the PWM chatter.
CURRENT_STEP_A: Final = 0.1


@dataclass(frozen=True, slots=True)
class InvariantInputs:
    authorized: bool
    pilot: str
    ventilation_allowed: bool
    diode_verified: bool
    trip_faults: frozenset[str]
    offered_a: float


def contactor_may_close(i: InvariantInputs) -> tuple[bool, str]:
    """The single contactor invariant: (allowed, reason when not).

    Closed only when authorized, the pilot is in C (or D with ventilation allowed) with the EV's
    diode verified on the PWM, no trip fault is active and the pilot offers at least 6 A.
    """
    if i.trip_faults:
        return False, "fault: " + ", ".join(sorted(i.trip_faults))
    if i.pilot == "D" and not i.ventilation_allowed:
        return False, "EV requires ventilation, not allowed here"
    if i.pilot not in ("C", "D"):
        return False, f"pilot in state {i.pilot}"
    if not i.diode_verified:
        return False, "EV diode not verified"
    if not (math.isfinite(i.offered_a) and i.offered_a >= MIN_CURRENT_A):
        return False, f"offered current {i.offered_a:g} A below {MIN_CURRENT_A:g} A"
    if not i.authorized:
        return False, "not authorized"
    return True, "ok"


def quantise_current(current_a: float) -> float:
    """Round a limit down to the PWM step; below 6 A (or not finite) means no offer (0)."""
    if not math.isfinite(current_a) or current_a < MIN_CURRENT_A:
        return 0.0
    return math.floor(current_a / CURRENT_STEP_A + 1e-9) * CURRENT_STEP_A


class DutyGovernor:
    """The 5 s rule on the offered current (0 = no PWM).

    A drop is a safety drop and applies at once: whatever lowered the limit (a fuse, the CSMS,
    temperature) must be obeyed now. A rise waits until 5 s after the previous change.
    """

    def __init__(self, hold_s: float = DUTY_HOLD_S) -> None:
        self.hold_s = hold_s
        self.offered_a = 0.0
        self.changed_at: float | None = None

    def apply(self, wanted_a: float, now: float) -> float:
        wanted = quantise_current(wanted_a)
        if wanted == self.offered_a:
            return self.offered_a
        if wanted < self.offered_a or self.changed_at is None or now - self.changed_at >= self.hold_s:
            self.offered_a = wanted
            self.changed_at = now
        return self.offered_a


class ContactorSupervisor:
    """Mirror contact vs coil command. Disagreement longer than the timeout is a fault.

    Closed while commanded open -> ``weld`` (the socket may be live). Open while commanded
    closed -> ``stuck-open``.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._disagree_since: float | None = None

    def observe(self, commanded: bool, feedback: bool | None, now: float) -> str | None:
        if feedback is None or feedback == commanded:
            self._disagree_since = None
            return None
        if self._disagree_since is None:
            self._disagree_since = now
        if now - self._disagree_since < self.timeout_s:
            return None
        return "weld" if feedback else "stuck-open"

    def deadline(self) -> float | None:
        return None if self._disagree_since is None else self._disagree_since + self.timeout_s
