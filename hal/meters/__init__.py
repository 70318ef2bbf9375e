"""Energy meters over Modbus RTU (RS-485): data-driven register maps, a shared bus, a factory.

``open_meter("sdm630", "/dev/ttyUSB0", 9600, "N", 1)`` gives an :class:`hal.interfaces.EnergyMeter`.
Meters on the same port share one :class:`ModbusBus` (one serial port, one transaction at a time),
so the charger meter and the grid meter can sit on one RS-485 line at different addresses.
The shipped models are the TOML files in ``maps/``; ``model="custom"`` takes a map as a dict in the
shape documented in :mod:`hal.meters.registers`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping

from hal.meters.bus import DEFAULT_REGISTRY, DEFAULT_RESPONSE_TIMEOUT_S, BusRegistry, ModbusBus, TransactionError
from hal.meters.driver import ModbusEnergyMeter
from hal.meters.registers import MapError, MeterMap, builtin_maps, parse_map

__all__ = [
    "DEFAULT_REGISTRY",
    "BusRegistry",
    "MapError",
    "MeterMap",
    "ModbusBus",
    "ModbusEnergyMeter",
    "TransactionError",
    "available_models",
    "meter_map",
    "open_meter",
]


@functools.cache
def _builtin() -> Mapping[str, MeterMap]:
    return builtin_maps()


def available_models() -> list[str]:
    """Model names ``open_meter`` accepts: the shipped maps (with aliases) and ``custom``."""
    return sorted([*_builtin(), "custom"])


def meter_map(model: str, custom_map: Mapping[str, object] | None = None) -> MeterMap:
    """The register map for ``model``; ``custom`` needs ``custom_map`` and no other model takes one."""
    key = model.lower()
    if key == "custom":
        if custom_map is None:
            raise ValueError("model 'custom' needs a custom_map")
        return parse_map(custom_map)
    if custom_map is not None:
        raise ValueError(f"custom_map is only for model 'custom', not {model!r}")
    try:
        return _builtin()[key]
    except KeyError:
        raise ValueError(f"unknown meter model {model!r}; known: {', '.join(available_models())}") from None


def open_meter(
    model: str,
    port: str,
    baudrate: int,
    parity: str,
    address: int,
    custom_map: Mapping[str, object] | None = None,
    bus_registry: BusRegistry = DEFAULT_REGISTRY,
    *,
    kind: str = "meter",
    retries: int = 1,
    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> ModbusEnergyMeter:
    """A meter on the shared bus for ``port`` (created on first use; the port opens on the first read).

    ``kind`` is the :class:`DeviceError` kind its failures carry ("meter", or e.g. "grid-meter").
    Raises ValueError for an unknown model, a bad map, a bad address or a port already open with
    other line settings; never for an absent device (that is a failed read, which may recover).
    """
    mapping = meter_map(model, custom_map)
    if not 1 <= address <= 247:
        raise ValueError(f"Modbus address must be 1 to 247, got {address}")
    bus = bus_registry.acquire(port, baudrate, parity, response_timeout_s=response_timeout_s)
    return ModbusEnergyMeter(
        bus, mapping, address, kind=kind, retries=retries, clock=clock, on_close=bus_registry.release
    )
