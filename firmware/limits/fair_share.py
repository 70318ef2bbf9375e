"""How much each charger on a shared fuse gets, and how much it asks for. Pure policy, no protocol.

Sharing: water-filling of ``fuse - margin`` among the live members that want current; nobody gets
more than its demand (a demand below 6 A counts as 6 A: an offer below 6 A is no offer). When not
everyone can have 6 A, fewer chargers get at least 6 A each: those already holding 6 A or more keep
their place (a session is not paused for a newcomer), the rest in charger-id order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping
from typing import Final

from hal.iec61851 import MIN_CURRENT_A

#: Claims and allowances are rounded down to this step (PWM resolution, and no chatter on noise).
STEP_A: Final = 0.1


def floor_step(amps: float) -> float:
    return math.floor(amps / STEP_A + 1e-6) * STEP_A


def allocate(capacity_a: float, demands: Mapping[str, float], incumbents: Collection[str] = ()) -> dict[str, float]:
    """Fair shares of ``capacity_a`` (water-filling); members with demand <= 0 get 0.

    A demand below 6 A counts as 6 A. When ``capacity_a`` cannot give everyone 6 A, only
    ``floor(capacity / 6)`` members get a share: first the ``incumbents`` (already charging), then by id.
    """
    shares = dict.fromkeys(demands, 0.0)
    if not (math.isfinite(capacity_a) and capacity_a >= MIN_CURRENT_A):
        return shares
    wanting = sorted((cid for cid, d in demands.items() if d > 0), key=lambda cid: (cid not in incumbents, cid))
    admitted = wanting[: math.floor(capacity_a / MIN_CURRENT_A + 1e-9)]
    need = {cid: max(demands[cid], MIN_CURRENT_A) for cid in admitted}
    left = capacity_a
    order = sorted(admitted, key=lambda cid: (need[cid], cid))
    for i, cid in enumerate(order):
        give = min(need[cid], left / (len(order) - i))
        shares[cid] = give
        left -= give
    return shares


class DemandEstimator:
    """What this charger asks the group for: 0 without a session, else its cap, or the EV's recent draw plus a
    little once the EV has clearly drawn less than offered for ``settle_s`` (its own limit, or tapering)."""

    def __init__(self, cap_a: float, *, settle_s: float = 30.0, slack_a: float = 1.0, extra_a: float = 2.0) -> None:
        if extra_a <= slack_a:
            raise ValueError("extra_a must exceed slack_a, or an EV at its own limit would look like it wants more")
        self.cap_a = cap_a
        self.settle_s = settle_s
        self.slack_a = slack_a
        self.extra_a = extra_a
        self._low_since: float | None = None
        self._draws: deque[tuple[float, float]] = deque()

    def update(self, now: float, *, wants: bool, offered_a: float, draw_a: float, cap_a: float | None = None) -> float:
        """``cap_a``: the charger's other limits now (cable, schedule, ...), if lower than its own cap."""
        cap = self.cap_a if cap_a is None else min(self.cap_a, cap_a)
        if not wants or cap < MIN_CURRENT_A:
            self._low_since = None
            self._draws.clear()
            return 0.0
        if offered_a >= MIN_CURRENT_A and draw_a < offered_a - self.slack_a:
            if self._low_since is None:
                self._low_since = now
            self._draws.append((now, draw_a))
            while self._draws and self._draws[0][0] < now - self.settle_s:
                self._draws.popleft()
            if now - self._low_since >= self.settle_s:
                peak = max(d for _, d in self._draws)
                return min(cap, max(MIN_CURRENT_A, floor_step(peak + self.extra_a)))
            return cap
        self._low_since = None
        self._draws.clear()
        return cap
