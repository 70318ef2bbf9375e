"""The limit arbiter: the only place that decides how much current the connector may offer.

Every source (hardware rating, cable, config, OCPP schedule, site fuse, shared fuse, off-peak,
thermal, manual) submits a claim; the lowest live claim wins and the arbiter remembers which
one and why, so "why is my car charging at 10 A?" always has an answer. Pure: time comes in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("firmware.limits")


@dataclass(frozen=True, slots=True)
class Claim:
    source: str
    #: Amperes per phase this source allows.
    current_a: float
    reason: str
    submitted_at: float
    #: Phases the claim assumes (None = any).
    phases: int | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    winner: Claim | None
    current_a: float


class Arbiter:
    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}
        self._last_winner: tuple[str, float] | None = None
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Called whenever a claim's value changes, so the control loop applies it now, not at its next tick."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def submit(
        self,
        source: str,
        current_a: float,
        now: float,
        *,
        reason: str = "",
        phases: int | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Add or replace ``source``'s claim. A claim that is not a finite number >= 0 is refused."""
        if not math.isfinite(current_a) or current_a < 0:
            raise ValueError(f"limit claim from {source}: {current_a!r} A is not a current")
        expires = None if ttl_s is None else now + ttl_s
        old = self._claims.get(source)
        same = old is not None and (old.current_a, old.reason, old.phases) == (current_a, reason, phases)
        # A repeated claim keeps its age: "age" says how long this value has stood.
        since = old.submitted_at if same and old is not None else now
        self._claims[source] = Claim(source, float(current_a), reason, since, phases, expires)
        if not same:
            log.debug("claim %s: %.1f A (%s)", source, current_a, reason or "no reason given")
            self._changed()

    def withdraw(self, source: str) -> None:
        if self._claims.pop(source, None) is not None:
            log.debug("claim %s withdrawn", source)
            self._changed()

    def get(self, source: str) -> Claim | None:
        return self._claims.get(source)

    def claims(self, now: float) -> list[Claim]:
        """Live claims, lowest first; expired ones are dropped here."""
        for source, claim in list(self._claims.items()):
            if claim.expires_at is not None and now >= claim.expires_at:
                log.info("limit claim %s expired (was %.1f A)", source, claim.current_a)
                del self._claims[source]
        return sorted(self._claims.values(), key=lambda c: (c.current_a, c.source))

    def decide(self, now: float) -> Decision:
        live = self.claims(now)
        if not live:
            return Decision(None, 0.0)
        winner = live[0]
        key = (winner.source, winner.current_a)
        if key != self._last_winner:
            log.info("current limit %.1f A set by %s (%s)", winner.current_a, winner.source, winner.reason)
            self._last_winner = key
        return Decision(winner, winner.current_a)

    def describe(self, now: float) -> dict[str, object]:
        """The status API's view: every claim with its age, and the winner."""
        decision = self.decide(now)
        rows = []
        for c in self.claims(now):
            rows.append(
                {
                    "source": c.source,
                    "value_a": round(c.current_a, 2),
                    "phases": c.phases,
                    "age_s": round(now - c.submitted_at, 1),
                    "expires_in_s": None if c.expires_at is None else round(c.expires_at - now, 1),
                    "reason": c.reason,
                    "winner": decision.winner is not None and c.source == decision.winner.source,
                }
            )
        w = decision.winner
        winner = None if w is None else {"source": w.source, "value_a": round(w.current_a, 2), "reason": w.reason}
        return {"winner": winner, "claims": rows}
