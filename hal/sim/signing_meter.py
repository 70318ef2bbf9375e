"""A simulated signing (Eichrecht) meter: the bench's meter, which signs its own import register as OCMF.

Real meters that sign (LEM DCBM, Isabellenhütte IEM-DCR, Carlo Gavazzi EM580, ...) produce a signed record at a
transaction's begin and end; the charger only asks for them and forwards them untouched. This one does the same
over :class:`hal.sim.devices.SimEnergyMeter`: the signed value is the meter's register, truncated to its 1 Wh
display resolution (0.001 kWh), and the time is the bench clock's wall time.

The signing itself is injected (a :class:`RecordSigner`, in practice ``firmware.payment.ocmf.OcmfSigner`` holding a
test key), so the HAL does not depend on the firmware. As an :class:`hal.interfaces.EnergyMeter` it reads like the
plain meter, with ``signed_data`` set to the last record it signed (None before the first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any, Protocol

from hal.interfaces import DeviceError, MeterReading

if TYPE_CHECKING:
    from hal.sim.bench import SimBench

_KWH_RESOLUTION = Decimal("0.001")


class RecordSigner(Protocol):
    """Signs one reading into an OCMF record (``firmware.payment.ocmf.OcmfSigner.sign``)."""

    def sign(self, tx: str, value_kwh: Decimal, at: datetime, **identification: Any) -> str: ...

    @property
    def public_key_hex(self) -> str:
        """The key to verify the records with (DER SubjectPublicKeyInfo, hex); it travels apart from them."""
        ...


class SimSigningMeter:
    """The bench's meter with an OCMF signer: begin/end records over its own import register."""

    def __init__(
        self,
        bench: SimBench,
        signer: RecordSigner,
        *,
        charge_point_id: str,
        tz: tzinfo = UTC,
        time_status: str = "S",
    ) -> None:
        self._bench = bench
        self.signer = signer
        self.charge_point_id = charge_point_id
        self.tz = tz
        self.time_status = time_status
        self._open: dict[str, Any] | None = None
        self.last_record: str | None = None

    @property
    def public_key_hex(self) -> str:
        """The meter's public key, for the ledger and the driver's transparency software."""
        return self.signer.public_key_hex

    @property
    def transaction_open(self) -> bool:
        """True between :meth:`sign_begin` and :meth:`sign_end`."""
        return self._open is not None

    async def read(self) -> MeterReading:
        """The plain meter's reading, carrying the last signed record."""
        reading = await self._bench.meter.read()
        return dataclasses.replace(reading, signed_data=self.last_record)

    def register_kwh(self) -> Decimal:
        """The import register as the meter shows it: kWh, truncated to 1 Wh."""
        self._bench.tick()
        if "meter" in self._bench.injected:
            raise DeviceError("meter", "simulated signing meter does not answer")
        wh = Decimal(repr(self._bench.meter.reading().energy_import_wh))
        return (wh / 1000).quantize(_KWH_RESOLUTION, rounding=ROUND_DOWN)

    def _sign(self, tx: str, identification: dict[str, Any]) -> str:
        value = self.register_kwh()
        at = self._bench.clock.now()
        record = self.signer.sign(
            tx,
            value,
            at,
            charge_point_id=self.charge_point_id,
            time_status=self.time_status,
            tz=self.tz,
            **identification,
        )
        self.last_record = record
        return record

    def sign_begin(
        self,
        id_tag: str | None,
        *,
        identified: bool = True,
        id_flags: Sequence[str] = (),
        id_level: str | None = None,
    ) -> str:
        """The transaction-begin record (TX B) for ``id_tag``; ``ValueError`` if one is already open."""
        if self._open is not None:
            raise ValueError("a signed transaction is already open on this meter; sign its end first")
        identification: dict[str, Any] = {
            "id_tag": id_tag,
            "identified": identified and bool(id_tag),
            "id_flags": tuple(id_flags),
            "id_level": id_level,
        }
        record = self._sign("B", identification)
        self._open = identification
        return record

    def sign_end(self, *, reason: str = "E") -> str:
        """The transaction-end record (TX ``reason``: E, or L/R/A/P) with the begin's identification."""
        if self._open is None:
            raise ValueError("no signed transaction is open on this meter")
        if reason not in ("E", "L", "R", "A", "P"):
            raise ValueError(f"end reason must be one of E, L, R, A, P, got {reason!r}")
        record = self._sign(reason, self._open)
        self._open = None
        return record
