"""What the simulated drivers of a fleet do: arrivals, dwell, energy, cards and the boot ramp.

A scenario is a small TOML file; every key has a default, so an empty file (or none) is the default
scenario. Bad values are reported all at once, each line naming its dotted key, like config.toml.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ScenarioError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class Scenario:
    #: EV arrivals per charger per hour (a Poisson process: exponential gaps).
    arrivals_per_hour: float = 6.0
    #: How long an EV stays plugged in: exponential with this mean, never below ``dwell_min_minutes``.
    dwell_mean_minutes: float = 4.0
    dwell_min_minutes: float = 1.0
    #: Energy each EV wants (normal, clipped at 1 kWh); the EV stops drawing when it has it.
    energy_mean_kwh: float = 12.0
    energy_sd_kwh: float = 5.0
    battery_kwh: float = 60.0
    #: Each arriving EV draws at most one of these (A per phase), picked at random.
    ev_max_current_a: tuple[float, ...] = (16.0, 32.0)
    #: Card pool: ``cards`` known cards; a share of arrivals present an unknown card instead.
    cards: int = 1000
    unknown_card_share: float = 0.05
    #: Boots spread uniformly over this many seconds, so a fleet restart is not a thundering herd.
    ramp_up_s: float = 30.0
    #: CSMS-initiated actions the run expects to see (e.g. "RemoteStartTransaction"): reported when missing.
    expect_csms_actions: tuple[str, ...] = ()
    seed: int = 1

    def rng(self, index: int) -> random.Random:
        """One independent, reproducible stream per charger."""
        return random.Random(self.seed * 1_000_003 + index)

    def next_arrival_s(self, rng: random.Random) -> float:
        rate_per_s = self.arrivals_per_hour / 3600.0
        if rate_per_s <= 0.0:  # also a rate so small that it underflows
            return math.inf
        return rng.expovariate(rate_per_s)

    def dwell_s(self, rng: random.Random) -> float:
        return 60.0 * max(self.dwell_min_minutes, rng.expovariate(1.0 / self.dwell_mean_minutes))

    def energy_kwh(self, rng: random.Random) -> float:
        return min(self.battery_kwh * 0.9, max(1.0, rng.gauss(self.energy_mean_kwh, self.energy_sd_kwh)))

    def card(self, rng: random.Random) -> tuple[str, bool]:
        """(idTag, known): known cards are 4-byte UIDs, unknown ones 7-byte UIDs starting FF."""
        if rng.random() < self.unknown_card_share:
            return "FF" + "".join(f"{rng.randrange(256):02X}" for _ in range(6)), False
        n = rng.randrange(max(1, self.cards))
        return f"{0xA0000000 + n:08X}", True

    def boot_delay_s(self, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ramp_up_s) if self.ramp_up_s > 0 else 0.0


_LIMITS: dict[str, tuple[float, float]] = {
    "arrivals_per_hour": (0, 3600),
    "dwell_mean_minutes": (0.1, 7 * 24 * 60),
    "dwell_min_minutes": (0, 24 * 60),
    "energy_mean_kwh": (0.1, 200),
    "energy_sd_kwh": (0, 100),
    "battery_kwh": (1, 250),
    "cards": (1, 10_000_000),
    "unknown_card_share": (0, 1),
    "ramp_up_s": (0, 86400),
    "seed": (0, 2**63 - 1),
}


def scenario_from_mapping(data: Mapping[str, Any]) -> Scenario:
    """Validated scenario; every problem reported at once, each naming its key."""
    errors: list[str] = []
    known = {f.name for f in fields(Scenario)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            errors.append(f"{key}: unknown key (known: {', '.join(sorted(known))})")
            continue
        default = getattr(Scenario(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list):
                errors.append(f"{key}: expected a list, got {type(value).__name__}")
                continue
            if key == "ev_max_current_a":
                bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int | float) or not 6 <= v <= 80]
                if bad or not value:
                    errors.append(f"{key}: expected a non-empty list of currents from 6 to 80 A")
                    continue
                values[key] = tuple(float(v) for v in value)
            else:
                if not all(isinstance(v, str) and v for v in value):
                    errors.append(f"{key}: expected a list of action names")
                    continue
                values[key] = tuple(value)
            continue
        kind = type(default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            errors.append(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
            continue
        low, high = _LIMITS[key]
        if not math.isfinite(value) or not low <= value <= high:
            errors.append(f"{key}: {value!r} is outside {low:g} to {high:g}")
            continue
        values[key] = kind(value)
    if errors:
        raise ScenarioError(errors)
    return Scenario(**values)


def load_scenario(path: str | Path | None) -> Scenario:
    if path is None:
        return Scenario()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"{path}: not valid TOML ({exc})"]) from None
    try:
        return scenario_from_mapping(data)
    except ScenarioError as exc:
        raise ScenarioError([f"{path}: {line}" for line in exc.errors]) from None
