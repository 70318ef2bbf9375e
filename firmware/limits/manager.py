"""The local limit sources around the arbiter, and the one API that shows and steers them.

The arbiter decides; this module feeds it the claims that belong to the charge point itself (hardware rating,
manual override, off-peak hold, site fuse, shared fuse, thermal) and answers ``evse limits``. Each source keeps its
own logic in its own module; here they are only built from the settings, started and described.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Protocol

from firmware.limits.arbiter import Arbiter
from firmware.limits.offpeak import OffPeakGate
from hal.clock import Clock

log = logging.getLogger("firmware.limits")

#: The most a manual override may last, so a forgotten one does not stand for ever.
MANUAL_MAX_S = 7 * 24 * 3600.0


class LimitsError(ValueError):
    """A request from the CLI/API that cannot be honoured; its text goes back to the user."""


class Source(Protocol):
    """A limit source with a background task and a view for ``evse limits``."""

    def run(self) -> Coroutine[Any, Any, None]: ...

    def describe(self) -> dict[str, Any]: ...


class Boostable(Protocol):
    def boost(self, until: datetime | None, now: datetime) -> None: ...

    def cancel_boost(self) -> None: ...


class OffPeakSource:
    """The off-peak gate as a managed source: a boost or a cancel changes the claim at once."""

    def __init__(self, gate: OffPeakGate, arbiter: Arbiter, clock: Clock) -> None:
        self.gate = gate
        self.arbiter = arbiter
        self.clock = clock
        self._woken = asyncio.Event()

    def run(self) -> Coroutine[Any, Any, None]:
        return self.gate.run(self.clock, self.arbiter, self._woken)

    def describe(self) -> dict[str, Any]:
        return self.gate.describe(self.clock.now())

    def boost(self, until: datetime | None, now: datetime) -> None:
        self.gate.boost(until, now)
        self._apply()

    def cancel_boost(self) -> None:
        self.gate.cancel_boost()
        self._apply()

    def _apply(self) -> None:
        self.gate.update(self.clock.now(), self.clock.monotonic(), self.arbiter)
        self._woken.set()  # the runner recomputes when to wake next


class Switchable(Protocol):
    def set_enabled(self, enabled: bool) -> None: ...


class LimitsManager:
    """Owns the manual override and the off-peak boost; lists every source's details beside the claims."""

    def __init__(self, arbiter: Arbiter, clock: Clock, *, rated_current_a: float, wake: Callable[[], None]) -> None:
        self.arbiter = arbiter
        self.clock = clock
        self._wake = wake
        self._sources: dict[str, Source] = {}
        self.offpeak: Boostable | None = None
        self.solar: Switchable | None = None
        arbiter.submit(
            "hardware", rated_current_a, clock.monotonic(), reason="hal.rated_current_a: pilot/relay board rating"
        )

    def add(self, name: str, source: Source) -> None:
        self._sources[name] = source

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let sources that can leave cleanly do so (the shared-fuse member publishes "left")."""
        for name, source in self._sources.items():
            stop = getattr(source, "stop", None)
            if stop is None:
                continue
            try:
                await stop(timeout_s)
            except Exception:
                log.exception("limit source %s did not stop cleanly", name)

    def tasks(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        return [(f"limits-{name}", source.run) for name, source in self._sources.items()]

    # ---- manual override -----------------------------------------------------------------------------
    def set_manual(self, amps: float, for_s: float | None, who: str = "evse limits set") -> str:
        if not (isinstance(amps, int | float) and not isinstance(amps, bool)) or not math.isfinite(amps) or amps < 0:
            raise LimitsError(f"manual limit {amps!r}: expected 0 or more amperes")
        if for_s is not None and not (math.isfinite(for_s) and 0 < for_s <= MANUAL_MAX_S):
            raise LimitsError(f"manual limit duration {for_s!r} s: expected more than 0 and at most 7 days")
        ttl = MANUAL_MAX_S if for_s is None else for_s
        until = self.clock.now() + timedelta(seconds=ttl)
        reason = f"{who}, until {until.isoformat(timespec='minutes')}"
        self.arbiter.submit("manual", float(amps), self.clock.monotonic(), reason=reason, ttl_s=ttl)
        log.warning("manual current limit %.1f A (%s)", amps, reason)
        return f"manual limit {amps:g} A until {until.isoformat(timespec='minutes')}"

    def clear_manual(self) -> str:
        if self.arbiter.get("manual") is None:
            return "no manual limit was set"
        self.arbiter.withdraw("manual")
        log.warning("manual current limit cleared")
        return "manual limit cleared"

    # ---- off-peak boost ------------------------------------------------------------------------------
    def boost(self, for_s: float | None) -> str:
        gate = self.offpeak
        if gate is None:
            raise LimitsError("no off-peak windows are configured ([offpeak] windows): there is nothing to boost")
        now = self.clock.now()
        if for_s is not None and not (math.isfinite(for_s) and 0 < for_s <= MANUAL_MAX_S):
            raise LimitsError(f"boost duration {for_s!r} s: expected more than 0 and at most 7 days")
        until = None if for_s is None else now + timedelta(seconds=for_s)
        try:
            gate.boost(until, now)
        except ValueError as exc:
            raise LimitsError(str(exc)) from exc
        self._wake()
        shown = "until the off-peak window opens" if until is None else f"until {until.isoformat(timespec='minutes')}"
        log.warning("off-peak boost %s", shown)
        return f"boost {shown}"

    def cancel_boost(self) -> str:
        gate = self.offpeak
        if gate is None:
            raise LimitsError("no off-peak windows are configured ([offpeak] windows)")
        gate.cancel_boost()
        self._wake()
        log.warning("off-peak boost cancelled")
        return "boost cancelled"

    # ---- solar ---------------------------------------------------------------------------------------
    def switch_solar(self, on: Any) -> str:
        if not isinstance(on, bool):
            raise LimitsError(f"solar: expected true or false, got {on!r}")
        if self.solar is None:
            raise LimitsError("solar surplus charging is not configured ([solar] enabled = true)")
        self.solar.set_enabled(on)
        self._wake()
        log.warning("solar surplus charging switched %s", "on" if on else "off")
        return f"solar surplus charging {'on' if on else 'off: the charger no longer waits for the sun'}"

    # ---- API -----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        view = self.arbiter.describe(self.clock.monotonic())
        view["sources"] = {name: source.describe() for name, source in self._sources.items()}
        return view

    async def handle(self, args: dict[str, Any]) -> Any:
        """The ``limits`` API command: no action shows; set/clear the manual override; boost/unboost."""
        action = args.get("action") or "show"
        if action == "show":
            return self.describe()
        if action == "set":
            return self.set_manual(_number(args.get("value_a"), "value_a"), _optional(args.get("for_s"), "for_s"))
        if action == "clear":
            return self.clear_manual()
        if action == "boost":
            return self.boost(_optional(args.get("for_s"), "for_s"))
        if action == "unboost":
            return self.cancel_boost()
        if action == "solar":
            return self.switch_solar(args.get("on"))
        raise LimitsError(f"unknown limits action {action!r} (show, set, clear, boost, unboost, solar)")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LimitsError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _optional(value: Any, name: str) -> float | None:
    return None if value is None else _number(value, name)
