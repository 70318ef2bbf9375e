"""Injectable time sources, so every time rule can be tested without sleeping.

``monotonic()`` drives timers (seconds, never jumps back); ``now()`` gives wall-clock UTC for
records. ``FakeClock`` moves only when told; ``ScaledClock`` runs faster than real time for the
demo and benchmarks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only by :meth:`advance` or :meth:`jump`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono = 1000.0
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("monotonic time cannot go back")
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def jump(self, seconds: float) -> None:
        """Move only the wall clock (NTP step, DST, a wrong RTC); timers are unaffected."""
        self._wall += timedelta(seconds=seconds)


class ScaledClock:
    """Real time multiplied by ``speed`` (speed 60: one real second is one simulated minute)."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0 = time.monotonic()
        self._wall0 = start or datetime.now(UTC)

    def monotonic(self) -> float:
        return self._t0 + (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)
