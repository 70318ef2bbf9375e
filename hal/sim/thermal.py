"""A first-order thermal model of the charger's hot spot (terminals, contactor, enclosure).

Resistive heating goes with the current squared and the temperature follows with one time
constant: at a steady current ``I`` the temperature settles at ``ambient + k·I²``, reaching 63 %
of a step after ``time_constant_s``. That is enough to exercise thermal derating with believable
timing (minutes, not seconds) and stays exact for any step length, so long simulated jumps and
many short ticks give the same temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThermalModelParams:
    ambient_c: float = 25.0
    #: Steady-state rise per ampere squared (per phase): 0.025 K/A² is +25.6 K at 32 A.
    rise_k_per_a2: float = 0.025
    time_constant_s: float = 600.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.ambient_c):
            raise ValueError(f"ambient_c must be a finite temperature, got {self.ambient_c!r}")
        if not (math.isfinite(self.rise_k_per_a2) and self.rise_k_per_a2 >= 0):
            raise ValueError(f"rise_k_per_a2 must be >= 0, got {self.rise_k_per_a2!r}")
        if not (math.isfinite(self.time_constant_s) and self.time_constant_s > 0):
            raise ValueError(f"time_constant_s must be positive, got {self.time_constant_s!r}")


class ThermalModel:
    """Temperature = ambient + rise; the rise relaxes toward ``k·I²`` with the time constant."""

    def __init__(self, params: ThermalModelParams | None = None) -> None:
        self.params = params or ThermalModelParams()
        self.ambient_c = self.params.ambient_c
        self._rise_k = 0.0

    @property
    def temperature_c(self) -> float:
        return self.ambient_c + self._rise_k

    def advance(self, seconds: float, mean_square_a2: float) -> None:
        """Integrate ``seconds`` with the current's mean square held (exact first-order step)."""
        if seconds <= 0:
            return
        target = self.params.rise_k_per_a2 * mean_square_a2
        self._rise_k = target + (self._rise_k - target) * math.exp(-seconds / self.params.time_constant_s)

    def set_ambient(self, celsius: float) -> None:
        """The surroundings change; the rise above them is kept (the hot spot is as far above as before)."""
        if not math.isfinite(celsius):
            raise ValueError(f"ambient must be a finite temperature, got {celsius!r}")
        self.ambient_c = celsius

    def set_temperature(self, celsius: float) -> None:
        """Force the hot spot to ``celsius`` now (tests); it relaxes from there as usual."""
        if not math.isfinite(celsius):
            raise ValueError(f"temperature must be finite, got {celsius!r}")
        self._rise_k = celsius - self.ambient_c
