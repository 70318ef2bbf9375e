"""The simulated hardware backend: one simulated EV driving every simulated device."""

from hal.sim.bench import FAULT_KINDS, SimBench
from hal.sim.ev import EVParams, SimulatedEV
from hal.sim.thermal import ThermalModel, ThermalModelParams

__all__ = ["FAULT_KINDS", "EVParams", "SimBench", "SimulatedEV", "ThermalModel", "ThermalModelParams"]
