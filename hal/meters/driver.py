"""The Modbus RTU energy meter: a register map read over a shared bus, as a :class:`MeterReading`.

Failure policy: every :meth:`ModbusEnergyMeter.read` that does not yield a complete, sane reading
raises :class:`DeviceError` — after the bus's per-request retries, never a stale or partial value.
Deciding when failures amount to a fault is the caller's job (the firmware's ``MeterSampler``
counts failed reads in a row); the driver keeps its own count in :attr:`consecutive_failures`
and logs the first failure and the recovery once, not every read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from hal.interfaces import DeviceError, EnergyMeter, MeterReading
from hal.meters.bus import ModbusBus, TransactionError
from hal.meters.registers import MeterMap, is_all_ones, iter_values, scaled

_log = logging.getLogger(__name__)
_PHASED: Final = ("voltage", "current", "power")


class _Nonsense(Exception):
    """A reply that passed the CRC but holds no usable value (NaN, "not available")."""


class ModbusEnergyMeter:
    """One meter at one Modbus address on a :class:`ModbusBus`."""

    def __init__(
        self,
        bus: ModbusBus,
        meter_map: MeterMap,
        address: int,
        *,
        kind: str = "meter",
        retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[ModbusBus], Awaitable[None]] | None = None,
    ) -> None:
        if not 1 <= address <= 247:
            raise ValueError(f"Modbus address must be 1 to 247, got {address}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.bus = bus
        self.map = meter_map
        self.address = address
        self.kind = kind
        self.retries = retries
        self._clock = clock
        self._on_close = on_close
        #: Failed reads since the last good one.
        self.consecutive_failures = 0

    def __repr__(self) -> str:
        return f"<ModbusEnergyMeter {self.map.name} at {self.address} on {self.bus.port}>"

    async def read(self) -> MeterReading:
        """Read every block of the map in one bus job (a consistent snapshot) and decode it."""
        try:
            blocks = await self.bus.run(self._read_blocks)
            reading = self._decode(blocks)
        except (TransactionError, _Nonsense) as exc:
            raise self._failed(str(exc)) from exc
        if self.consecutive_failures:
            _log.warning("%r answers again after %d failed reads", self, self.consecutive_failures)
        self.consecutive_failures = 0
        return reading

    async def aclose(self) -> None:
        """Give the bus back (the registry closes it with its last meter)."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            await on_close(self.bus)

    def _read_blocks(self) -> list[list[int]]:
        """On the bus thread: the map's blocks in order; the first block that fails ends the read."""
        return [
            self.bus.read_registers(self.address, block.start, block.count, self.map.function_code, self.retries)
            for block in self.map.blocks
        ]

    def _decode(self, blocks: list[list[int]]) -> MeterReading:
        values: dict[str, float | None] = {}
        for quantity, reg, regs in iter_values(self.map, blocks):
            if self.map.unavailable_all_ones and is_all_ones(regs):
                if not quantity.startswith(_PHASED):
                    raise _Nonsense(f"{quantity} is not available (all bits set)")
                values[quantity] = None
                continue
            value = scaled(reg, regs)
            if not math.isfinite(value):
                raise _Nonsense(f"{quantity} reads {value!r}")
            values[quantity] = value
        powers = (values.get("power_l1"), values.get("power_l2"), values.get("power_l3"))
        total = values.get("total_power")
        if total is None:
            present = [p for p in powers if p is not None]
            if not present:
                raise _Nonsense("no power value available")
            total = sum(present)
        energy_kwh = values["energy_import"]
        assert energy_kwh is not None  # not per-phase: all-ones raised above
        return MeterReading(
            voltage_v=(values.get("voltage_l1"), values.get("voltage_l2"), values.get("voltage_l3")),
            current_a=(values.get("current_l1"), values.get("current_l2"), values.get("current_l3")),
            power_w=powers,
            total_power_w=total,
            energy_import_wh=energy_kwh * 1000.0,
            taken_at=self._clock(),
        )

    def _failed(self, message: str) -> DeviceError:
        self.consecutive_failures += 1
        if self.consecutive_failures == 1:
            _log.warning("%r: read failed: %s", self, message)
        else:
            _log.debug("%r: read failed (%d in a row): %s", self, self.consecutive_failures, message)
        return DeviceError(self.kind, f"{self.map.name} at address {self.address} on {self.bus.port}: {message}")


def _conforms(meter: ModbusEnergyMeter) -> EnergyMeter:
    """Never called: makes mypy prove that the driver satisfies the :class:`EnergyMeter` protocol."""
    return meter
