"""MeterReading -> OCPP 1.6 MeterValue (wire form, camelCase). Pure.

Only measurands the meter really provides are reported; per-phase quantities are reported for
every phase the meter has (1.6 §3.16.3). Energy is always the import register, in Wh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from hal.interfaces import MeterReading

#: Measurands this charge point can report (others are refused in ChangeConfiguration).
SUPPORTED_MEASURANDS: Final = frozenset(
    {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Voltage",
        "Current.Offered",
    }
)
_PHASES: Final = ("L1", "L2", "L3")


def iso(ts: datetime) -> str:
    """RFC 3339 with zone, millisecond precision (strict CSMS schemas need the zone)."""
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sampled_values(
    reading: MeterReading,
    measurands: Iterable[str],
    *,
    context: str = "Sample.Periodic",
    offered_a: float | None = None,
) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = []

    def add(measurand: str, value: float, unit: str, phase: str | None = None, fmt: str = "{:.1f}") -> None:
        item: dict[str, Any] = {
            "value": fmt.format(value),
            "context": context,
            "format": "Raw",
            "measurand": measurand,
            "location": "Outlet",
            "unit": unit,
        }
        if phase is not None:
            item["phase"] = phase
        values.append(item)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            add(measurand, reading.energy_import_wh, "Wh")
        elif measurand == "Power.Active.Import":
            add(measurand, max(0.0, reading.total_power_w), "W")
        elif measurand == "Current.Import":
            for phase, amps in zip(_PHASES, reading.current_a, strict=True):
                if amps is not None:
                    add(measurand, amps, "A", phase, "{:.2f}")
        elif measurand == "Voltage":
            for phase, volts in zip(_PHASES, reading.voltage_v, strict=True):
                if volts is not None:
                    add(measurand, volts, "V", f"{phase}-N")
        elif measurand == "Current.Offered" and offered_a is not None:
            add(measurand, offered_a, "A")
    if reading.signed_data:
        values.append(
            {
                "value": reading.signed_data,
                "context": context,
                "format": "SignedData",
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            }
        )
    return values


def meter_value(
    reading: MeterReading,
    measurands: Iterable[str],
    timestamp: datetime,
    *,
    context: str = "Sample.Periodic",
    offered_a: float | None = None,
) -> dict[str, Any] | None:
    """One MeterValue element, or None when none of the measurands can be reported."""
    sampled = sampled_values(reading, measurands, context=context, offered_a=offered_a)
    if not sampled:
        return None
    return {"timestamp": iso(timestamp), "sampledValue": sampled}


def transaction_meter_value(
    register_wh: float,
    reading: MeterReading | None,
    measurands: Iterable[str],
    at: datetime,
    context: str,
    *,
    signed: str | None = None,
    offered_a: float | None = None,
) -> dict[str, Any] | None:
    """A Transaction.Begin or Transaction.End MeterValue whose register is exactly meterStart or meterStop.

    The other measurands come from ``reading`` (the meter's latest); without one only the register can be
    reported. A signed record, when the meter made one, goes with its register value whatever the measurands.
    """
    names = list(measurands)
    if signed is not None and "Energy.Active.Import.Register" not in names:
        names.insert(0, "Energy.Active.Import.Register")
    if reading is None:
        reading = MeterReading((None, None, None), (None, None, None), (None, None, None), 0.0, register_wh)
        names = [n for n in names if n == "Energy.Active.Import.Register"]
    reading = replace(reading, energy_import_wh=round(register_wh), signed_data=signed)
    sampled = sampled_values(reading, names, context=context, offered_a=offered_a)
    if not sampled:
        return None
    return {"timestamp": iso(at), "sampledValue": sampled}
