"""OCPP 1.6 California Pricing: the backend's prices and costs, as DataTransfer messages the CSMS sends us.

vendorId ``org.openchargealliance.costmsg`` (OCA whitepaper "OCPP & California Pricing Requirements"; libocpp
``doc/common/california_pricing_requirements.md``). The CSMS sends, in DataTransfer.req ``data`` (a JSON text):

* **SetUserPrice** ``{idToken, priceText, priceTextExtra?}``: display only, per driver, may come before Authorize
  returns.
* **RunningCost** ``{transactionId, timestamp, meterValue (Wh), cost, state ("Charging"|"Idle"), chargingPrice?
  {kWhPrice, hourPrice, flatFee}, idlePrice? {graceMinutes, hourPrice}, nextPeriod? {atTime, chargingPrice,
  idlePrice?}, triggerMeterValue? {atTime, atEnergykWh, atPowerkW, atCPStatus[]}, priceText?, priceTextExtra?,
  qrCodeText?}``. ``chargingPrice`` is required while Charging and optional when Idle (the whitepaper lets the
  after-stop idle messages leave the charging fields out).
* **FinalCost** ``{transactionId, cost, priceText?, priceTextExtra?, qrCodeText?}``.

:func:`parse_data_transfer` validates one request and returns either the typed message or a :class:`Refusal` with
the DataTransfer.conf status (``UnknownVendorId``, ``UnknownMessageId``, ``Rejected``) and a reason; it never
raises, whatever arrives. Rules: amounts are JSON numbers read as exact Decimals (``1.00`` stays ``1.00``), never
floats; amounts and prices are 0 .. 10^9; integers may be written as integral numbers (``30.0``); ``null`` is not
a value (leave the key out); keys we do not know are ignored, so later additions by the CSMS do not break us;
vendorId and messageId compare case-insensitively (OCPP CiString). A ``data`` that is already a JSON object rather
than its text is tolerated.

:class:`TriggerWatch` decides when a ``triggerMeterValue`` asks for an extra MeterValues.req (pure: the caller
passes time, energy, power and status and sends the MeterValues when it answers True).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

_T = TypeVar("_T")

VENDOR_ID = "org.openchargealliance.costmsg"
MESSAGE_IDS = ("SetUserPrice", "RunningCost", "FinalCost")
#: Upper bound for a cost or a price (and for atEnergykWh / atPowerkW): beyond it the CSMS sent nonsense.
MAX_AMOUNT = Decimal(1_000_000_000)
#: Longest display text we keep (priceText, content, qrCodeText).
MAX_TEXT = 4096
MAX_EXTRA_TEXTS = 20
_INT32 = (-(2**31), 2**31 - 1)
_MAX_METER_WH = 10**15
_MAX_GRACE_MIN = 10**6
_MESSAGE_FORMATS = ("ASCII", "HTML", "URI", "UTF8")
#: OCPP 1.6 ChargePointStatus values (atCPStatus entries).
CHARGE_POINT_STATUSES = frozenset(
    {"Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing", "Reserved", "Unavailable",
     "Faulted"}
)  # fmt: skip


class DataTransferStatus(enum.StrEnum):
    """DataTransfer.conf status (OCPP 1.6 DataTransferStatus)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    UNKNOWN_MESSAGE_ID = "UnknownMessageId"
    UNKNOWN_VENDOR_ID = "UnknownVendorId"


@dataclass(frozen=True)
class Refusal:
    """Why a request was not accepted, and the status to answer with."""

    status: DataTransferStatus
    reason: str


@dataclass(frozen=True)
class MessageText:
    """One entry of priceTextExtra: the price text in another language or format."""

    format: str
    content: str
    language: str | None = None


@dataclass(frozen=True)
class ChargingPrice:
    kwh_price: Decimal | None = None
    hour_price: Decimal | None = None
    flat_fee: Decimal | None = None


@dataclass(frozen=True)
class IdlePrice:
    grace_minutes: int | None = None
    hour_price: Decimal | None = None


@dataclass(frozen=True)
class NextPeriod:
    at_time: datetime
    charging_price: ChargingPrice
    idle_price: IdlePrice | None = None


@dataclass(frozen=True)
class TriggerMeterValue:
    """When the CSMS wants an extra meter value; absent conditions are None / empty."""

    at_time: datetime | None = None
    at_energy_kwh: Decimal | None = None
    at_power_kw: Decimal | None = None
    at_cp_status: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class SetUserPrice:
    id_token: str
    price_text: str
    price_text_extra: tuple[MessageText, ...] = ()


@dataclass(frozen=True)
class RunningCost:
    transaction_id: int
    timestamp: datetime
    #: The register reading (Wh) this cost is based on.
    meter_value_wh: int
    cost: Decimal
    state: Literal["Charging", "Idle"]
    charging_price: ChargingPrice | None = None
    idle_price: IdlePrice | None = None
    next_period: NextPeriod | None = None
    trigger_meter_value: TriggerMeterValue | None = None
    price_text: str | None = None
    price_text_extra: tuple[MessageText, ...] = ()
    qr_code_text: str | None = None


@dataclass(frozen=True)
class FinalCost:
    transaction_id: int
    cost: Decimal
    price_text: str | None = None
    price_text_extra: tuple[MessageText, ...] = ()
    qr_code_text: str | None = None


CostMessage = SetUserPrice | RunningCost | FinalCost


# ── validation ─────────────────────────────────────────────────────────────────────────────────────────────────


class _Bad(Exception):
    """A validation failure; its text becomes the Refusal reason."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class _Obj:
    """Typed access to one JSON object's fields; every failure is a :class:`_Bad` naming the field's path."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise _Bad(f"{path or 'data'} must be a JSON object, got {_kind(value)}")
        self.value: Mapping[str, Any] = value
        self.path = path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, required: bool) -> object:
        if key not in self.value:
            if required:
                raise _Bad(f"{self._name(key)} is missing")
            return None
        value = self.value[key]
        if value is None:
            raise _Bad(f"{self._name(key)} is null (leave an absent value out)")
        return value

    def decimal(self, key: str, *, required: bool = False) -> Decimal | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise _Bad(f"{self._name(key)} must be a number, got {_kind(value)}")
        amount = Decimal(value)
        if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
            raise _Bad(f"{self._name(key)} must be between 0 and {MAX_AMOUNT}, got {value}")
        return amount

    def integer(self, key: str, lo: int, hi: int, *, required: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise _Bad(f"{self._name(key)} must be an integer, got {_kind(value)}")
        if isinstance(value, Decimal):
            if not value.is_finite() or not lo <= value <= hi or value != value.to_integral_value():
                raise _Bad(f"{self._name(key)} must be an integer {lo}..{hi}, got {value}")
            value = int(value)
        if not lo <= value <= hi:
            raise _Bad(f"{self._name(key)} must be an integer {lo}..{hi}, got {value}")
        return value

    def text(self, key: str, *, required: bool = False, max_len: int = MAX_TEXT, min_len: int = 0) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Bad(f"{self._name(key)} must be a string, got {_kind(value)}")
        if not min_len <= len(value) <= max_len:
            raise _Bad(f"{self._name(key)} must be {min_len}..{max_len} characters long, got {len(value)}")
        return value

    def timestamp(self, key: str, *, required: bool = False) -> datetime | None:
        value = self.text(key, required=required, max_len=64)
        if value is None:
            return None
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(f"{self._name(key)} is not an ISO 8601 date-time: {value!r}") from None
        if t.tzinfo is None or t.utcoffset() is None:
            raise _Bad(f"{self._name(key)} must carry a UTC offset or Z: {value!r}")
        return t

    def obj(self, key: str, *, required: bool = False) -> _Obj | None:
        value = self._get(key, required)
        return None if value is None else _Obj(value, self._name(key))

    def array(self, key: str, max_len: int) -> list[object]:
        value = self._get(key, False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _Bad(f"{self._name(key)} must be an array, got {_kind(value)}")
        if len(value) > max_len:
            raise _Bad(f"{self._name(key)} has {len(value)} entries, at most {max_len} allowed")
        return value


def _charging_price(o: _Obj | None) -> ChargingPrice | None:
    if o is None:
        return None
    return ChargingPrice(o.decimal("kWhPrice"), o.decimal("hourPrice"), o.decimal("flatFee"))


def _idle_price(o: _Obj | None) -> IdlePrice | None:
    if o is None:
        return None
    return IdlePrice(o.integer("graceMinutes", 0, _MAX_GRACE_MIN), o.decimal("hourPrice"))


def _extra_texts(o: _Obj) -> tuple[MessageText, ...]:
    out = []
    for i, item in enumerate(o.array("priceTextExtra", MAX_EXTRA_TEXTS)):
        entry = _Obj(item, f"{o._name('priceTextExtra')}[{i}]")
        fmt = _required(entry.text("format", required=True, max_len=10))
        if fmt not in _MESSAGE_FORMATS:
            raise _Bad(f"{entry.path}.format must be one of {', '.join(_MESSAGE_FORMATS)}, got {fmt!r}")
        content = _required(entry.text("content", required=True))
        out.append(MessageText(fmt, content, entry.text("language", max_len=8)))
    return tuple(out)


def _trigger(o: _Obj | None) -> TriggerMeterValue | None:
    if o is None:
        return None
    statuses = set()
    for i, item in enumerate(o.array("atCPStatus", len(CHARGE_POINT_STATUSES))):
        if not isinstance(item, str) or item not in CHARGE_POINT_STATUSES:
            shown = repr(item) if isinstance(item, str) else _kind(item)
            raise _Bad(f"{o._name('atCPStatus')}[{i}] must be a ChargePointStatus, got {shown}")
        statuses.add(item)
    return TriggerMeterValue(
        o.timestamp("atTime"), o.decimal("atEnergykWh"), o.decimal("atPowerkW"), frozenset(statuses)
    )


def _required(value: _T | None) -> _T:
    """For values read with required=True: present by construction (keeps mypy honest without asserts)."""
    if value is None:  # pragma: no cover - _Obj raised already
        raise _Bad("a required value is missing")
    return value


def _set_user_price(d: _Obj) -> SetUserPrice:
    return SetUserPrice(
        _required(d.text("idToken", required=True, min_len=1, max_len=20)),
        _required(d.text("priceText", required=True)),
        _extra_texts(d),
    )


def _running_cost(d: _Obj) -> RunningCost:
    transaction_id = _required(d.integer("transactionId", *_INT32, required=True))
    timestamp = _required(d.timestamp("timestamp", required=True))
    meter_value = _required(d.integer("meterValue", 0, _MAX_METER_WH, required=True))
    cost = _required(d.decimal("cost", required=True))
    state = _required(d.text("state", required=True, max_len=16))
    if state not in ("Charging", "Idle"):
        raise _Bad(f"state must be 'Charging' or 'Idle', got {state!r}")
    charging = _charging_price(d.obj("chargingPrice", required=state == "Charging"))
    next_obj = d.obj("nextPeriod")
    next_period = None
    if next_obj is not None:
        next_period = NextPeriod(
            _required(next_obj.timestamp("atTime", required=True)),
            _required(_charging_price(next_obj.obj("chargingPrice", required=True))),
            _idle_price(next_obj.obj("idlePrice")),
        )
    return RunningCost(
        transaction_id=transaction_id,
        timestamp=timestamp,
        meter_value_wh=meter_value,
        cost=cost,
        state="Charging" if state == "Charging" else "Idle",
        charging_price=charging,
        idle_price=_idle_price(d.obj("idlePrice")),
        next_period=next_period,
        trigger_meter_value=_trigger(d.obj("triggerMeterValue")),
        price_text=d.text("priceText"),
        price_text_extra=_extra_texts(d),
        qr_code_text=d.text("qrCodeText"),
    )


def _final_cost(d: _Obj) -> FinalCost:
    return FinalCost(
        transaction_id=_required(d.integer("transactionId", *_INT32, required=True)),
        cost=_required(d.decimal("cost", required=True)),
        price_text=d.text("priceText"),
        price_text_extra=_extra_texts(d),
        qr_code_text=d.text("qrCodeText"),
    )


_PARSERS: dict[str, Callable[[_Obj], CostMessage]] = {
    "setuserprice": _set_user_price,
    "runningcost": _running_cost,
    "finalcost": _final_cost,
}


def _no_constant(name: str) -> object:
    raise _Bad(f"data contains {name}, which is not a JSON number")


def parse_data_transfer(vendor_id: object, message_id: object, data: object) -> CostMessage | Refusal:
    """One inbound DataTransfer.req as a typed message, or the Refusal to answer with; never raises."""
    if not isinstance(vendor_id, str) or vendor_id.lower() != VENDOR_ID:
        return Refusal(DataTransferStatus.UNKNOWN_VENDOR_ID, f"vendorId {vendor_id!r} is not {VENDOR_ID}")
    parser = _PARSERS.get(message_id.lower()) if isinstance(message_id, str) else None
    if parser is None:
        return Refusal(
            DataTransferStatus.UNKNOWN_MESSAGE_ID,
            f"messageId {message_id!r} is not one of {', '.join(MESSAGE_IDS)}",
        )
    try:
        if isinstance(data, str):
            try:
                data = json.loads(data, parse_float=Decimal, parse_constant=_no_constant)
            except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so are 5000-digit ints
                raise _Bad(f"data is not valid JSON ({str(e)[:120]})") from None
        elif data is None:
            raise _Bad("data is missing")
        elif not isinstance(data, Mapping):
            raise _Bad(f"data must be a JSON text, got {_kind(data)}")
        return parser(_Obj(data, ""))
    except _Bad as e:
        return Refusal(DataTransferStatus.REJECTED, str(e))


def conf_payload(result: CostMessage | Refusal) -> dict[str, str]:
    """The DataTransfer.conf payload for a parse result (the refusal reason goes in ``data``)."""
    if isinstance(result, Refusal):
        return {"status": result.status.value, "data": result.reason}
    return {"status": DataTransferStatus.ACCEPTED.value}


# ── triggerMeterValue ──────────────────────────────────────────────────────────────────────────────────────────


class TriggerWatch:
    """Decides when a RunningCost's ``triggerMeterValue`` asks for an extra MeterValues.req.

    * ``atTime``: once, at the first check at or after that time (also if it had passed when the message came).
    * ``atEnergykWh``: once, when the meter's import register (kWh) first reaches it (as libocpp compares it).
    * ``atPowerkW``: at every crossing of the threshold, up or down, with a hysteresis band of
      ``±hysteresis_kw`` (at most half the threshold) so a power hovering at the level does not chatter. The first
      check only notes which side the power is on.
    * ``atCPStatus``: each time the status *enters* one of the listed statuses (the first check only notes it).

    A new RunningCost replaces the trigger: make a new watch. Pure: all inputs are passed to :meth:`check`.
    """

    def __init__(self, trigger: TriggerMeterValue, *, hysteresis_kw: Decimal = Decimal("0.05")) -> None:
        self.trigger = trigger
        self._time_done = False
        self._energy_done = False
        self._above: bool | None = None
        self._status: str | None = None
        threshold = trigger.at_power_kw
        self._band = Decimal(0) if threshold is None else min(Decimal(hysteresis_kw), threshold / 2)
        #: What fired at the last check ("atTime", "atEnergykWh", "atPowerkW", "atCPStatus").
        self.reasons: tuple[str, ...] = ()

    def check(self, now: datetime, energy_kwh: Decimal | float, power_kw: Decimal | float, status: str) -> bool:
        """True when a meter value must be sent now; each condition fires once per event."""
        t = self.trigger
        fired: list[str] = []
        if t.at_time is not None and not self._time_done and now >= t.at_time:
            self._time_done = True
            fired.append("atTime")
        if t.at_energy_kwh is not None and not self._energy_done and energy_kwh >= t.at_energy_kwh:
            self._energy_done = True
            fired.append("atEnergykWh")
        if t.at_power_kw is not None:
            level = t.at_power_kw
            if self._above is None:
                self._above = power_kw >= level
            elif self._above and power_kw < level - self._band:
                self._above = False
                fired.append("atPowerkW")
            elif not self._above and power_kw > level + self._band:
                self._above = True
                fired.append("atPowerkW")
        if t.at_cp_status:
            entered = self._status is not None and status != self._status and status in t.at_cp_status
            self._status = status
            if entered:
                fired.append("atCPStatus")
        self.reasons = tuple(fired)
        return bool(fired)
