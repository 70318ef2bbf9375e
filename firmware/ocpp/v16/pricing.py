"""OCPP 1.6 California Pricing on the charger: the backend's prices and costs, kept for display and the ledger.

The CSMS sends DataTransfer.req with vendorId ``org.openchargealliance.costmsg`` (parsed and validated by
:mod:`firmware.payment.costmsg`); :class:`PricingService` answers it at once (the link's ``@on`` handler calls
:meth:`PricingService.data_transfer`, which never raises and never CALLs) and keeps:

* **SetUserPrice**: the price text per idTag (display only; it may come before Authorize returns).
* **RunningCost**: the backend's running cost of the *current* transaction, with its timestamp. A
  ``triggerMeterValue`` is armed as a :class:`~firmware.payment.costmsg.TriggerWatch`, checked on every meter
  reading and every connector status change; when it fires, one MeterValues with context ``Trigger`` is queued
  through the durable outbox. ``atEnergykWh`` is compared with the meter's import *register* (as libocpp does:
  the RunningCost's ``meterValue`` is a register reading too). The watch ends with the transaction.
* **FinalCost**: the backend's final cost of a *finished* transaction, per transactionId, for the ledger
  (:meth:`PricingService.final_cost`, :meth:`PricingService.on_final_cost`).

A RunningCost for a transaction other than the running one, or a FinalCost for a transaction this charger does
not know or that is still running, is answered Rejected with the reason in ``data``. Money stays
:class:`~decimal.Decimal` throughout; the read model (:meth:`PricingService.display`) gives Decimal *strings*.

The configuration keys (CustomDisplayCostAndPrice, DefaultPrice, DefaultPriceText, NumberOfDecimalsForCostValues,
CustomIdleFeeAfterStop, CustomMultiLanguageMessages) live in :mod:`firmware.ocpp.v16.configuration`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final

from firmware.charging.connector import StatusChanged
from firmware.payment.costmsg import (
    VENDOR_ID,
    ChargingPrice,
    DataTransferStatus,
    FinalCost,
    IdlePrice,
    MessageText,
    Refusal,
    RunningCost,
    SetUserPrice,
    TriggerWatch,
    conf_payload,
    parse_data_transfer,
)

if TYPE_CHECKING:
    from firmware.charging.controller import ChargingController, ControllerEvent
    from firmware.metering import MeterSampler
    from firmware.ocpp.outbox import Outbox
    from firmware.ocpp.v16.configuration import Configuration
    from firmware.ocpp.v16.transactions import TransactionReporter
    from firmware.session import SessionManager
    from firmware.store import Store
    from hal.clock import Clock
    from hal.interfaces import MeterReading

log = logging.getLogger("firmware.ocpp.pricing")

#: How many idTags' SetUserPrice texts, transactions' running costs and final costs are kept in memory.
KEEP: Final = 64
SOURCE: Final = "backend"

#: ``listener(final_cost, ref)``: ``ref`` is the local transaction ref (``SessionRecord.transaction_ref``).
FinalCostListener = Callable[[FinalCost, int], None]


@dataclass(frozen=True)
class _Received:
    """A message and when it arrived (our clock)."""

    message: Any
    received_at: datetime


def _text(t: MessageText) -> dict[str, str | None]:
    return {"format": t.format, "language": t.language, "content": t.content}


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _charging_price(p: ChargingPrice | None) -> dict[str, str | None] | None:
    if p is None:
        return None
    return {"kwh_price": _amount(p.kwh_price), "hour_price": _amount(p.hour_price), "flat_fee": _amount(p.flat_fee)}


def _idle_price(p: IdlePrice | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"grace_minutes": p.grace_minutes, "hour_price": _amount(p.hour_price)}


def _remember(table: OrderedDict[Any, _Received], key: object, value: _Received) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > KEEP:
        table.popitem(last=False)


class PricingService:
    """The backend side of California Pricing for one charge point (one connector)."""

    def __init__(
        self,
        *,
        configuration: Configuration,
        transactions: TransactionReporter,
        sessions: SessionManager,
        outbox: Outbox,
        store: Store,
        sampler: MeterSampler,
        controller: ChargingController,
        clock: Clock,
    ) -> None:
        self.configuration = configuration
        self.transactions = transactions
        self.sessions = sessions
        self.outbox = outbox
        self.store = store
        self.sampler = sampler
        self.controller = controller
        self.clock = clock
        self._user_prices: OrderedDict[str, _Received] = OrderedDict()
        self._running: OrderedDict[int, _Received] = OrderedDict()
        self._final: OrderedDict[int, _Received] = OrderedDict()
        #: The armed triggerMeterValue: (local transaction ref, watch).
        self._watch: tuple[int, TriggerWatch] | None = None
        #: Extra MeterValues queued because a trigger fired (for status and tests).
        self.triggered = 0
        self._final_listeners: list[FinalCostListener] = []
        sampler.add_reading_listener(self.on_meter_reading)
        controller.add_listener(self.on_controller_event)
        transactions.on_transaction_ended(self.on_transaction_ended)

    # ── inbound DataTransfer ────────────────────────────────────────────────────────────────────────────
    def data_transfer(self, vendor_id: object, message_id: object, data: object) -> dict[str, str]:
        """The DataTransfer.conf payload (wire field names) for one DataTransfer.req; never raises, never CALLs."""
        try:
            result = parse_data_transfer(vendor_id, message_id, data)
            if not isinstance(result, Refusal):
                result = self._accept(result)
        except Exception:  # a bug here must not break the CSMS exchange
            log.exception("DataTransfer %r/%r could not be handled", vendor_id, message_id)
            result = Refusal(DataTransferStatus.REJECTED, "internal error handling the message")
        if isinstance(result, Refusal) and result.status is DataTransferStatus.UNKNOWN_VENDOR_ID:
            return {"status": result.status.value}  # another vendor's message: nothing of ours to explain
        if isinstance(result, Refusal):
            log.info("DataTransfer %s/%s: %s (%s)", VENDOR_ID, message_id, result.status.value, result.reason)
        return conf_payload(result)

    def _accept(
        self, message: SetUserPrice | RunningCost | FinalCost
    ) -> SetUserPrice | RunningCost | FinalCost | Refusal:
        now = self.clock.now()
        if isinstance(message, SetUserPrice):
            _remember(self._user_prices, message.id_token, _Received(message, now))
            log.info("SetUserPrice for %s: %s", message.id_token, message.price_text[:80])
            return message
        if isinstance(message, RunningCost):
            ref = self._running_ref(message.transaction_id)
            if ref is None:
                running = self._current_transaction_id()
                shown = "no transaction is running" if running is None else f"the running one is {running}"
                return Refusal(
                    DataTransferStatus.REJECTED, f"transactionId {message.transaction_id} is not running ({shown})"
                )
            _remember(self._running, message.transaction_id, _Received(message, now))
            trigger = message.trigger_meter_value
            self._watch = (ref, TriggerWatch(trigger)) if trigger is not None else None
            log.info("RunningCost for transaction %d: %s", message.transaction_id, message.cost)
            return message
        ref_or_reason = self._finished_ref(message.transaction_id)
        if isinstance(ref_or_reason, str):
            return Refusal(DataTransferStatus.REJECTED, ref_or_reason)
        _remember(self._final, message.transaction_id, _Received(message, now))
        log.info("FinalCost for transaction %d: %s", message.transaction_id, message.cost)
        for listener in list(self._final_listeners):
            try:
                listener(message, ref_or_reason)
            except Exception:
                log.exception("FinalCost listener failed for transaction %d", message.transaction_id)
        return message

    def _current_transaction_id(self) -> int | None:
        record = self.sessions.current
        if record is None or record.transaction_ref is None:
            return None
        return self.outbox.transaction_id(record.transaction_ref)

    def _running_ref(self, transaction_id: int) -> int | None:
        """The local ref of the running transaction if the CSMS gave it ``transaction_id``."""
        record = self.sessions.current
        if record is None or record.transaction_ref is None:
            return None
        return record.transaction_ref if self.outbox.transaction_id(record.transaction_ref) == transaction_id else None

    def _finished_ref(self, transaction_id: int) -> int | str:
        """The local ref of our finished transaction ``transaction_id``, or why a FinalCost cannot be taken."""
        row = self.store.conn.execute(
            "SELECT ref, stopped_at FROM transactions WHERE transaction_id = ? ORDER BY ref DESC LIMIT 1",
            (transaction_id,),
        ).fetchone()
        if row is None:
            return f"transactionId {transaction_id} is not a transaction of this charge point"
        if row[1] is None:
            return f"transactionId {transaction_id} is still running"
        return int(row[0])

    # ── triggerMeterValue ───────────────────────────────────────────────────────────────────────────────
    def on_meter_reading(self, reading: MeterReading) -> None:
        """Every meter reading: check the armed trigger (energy, power, time)."""
        self._check(reading)

    def on_controller_event(self, event: ControllerEvent) -> None:
        """Every connector status change: check the armed trigger (atCPStatus)."""
        if isinstance(event, StatusChanged):
            self._check(self.sampler.latest)

    def on_transaction_ended(self, ref: int) -> None:
        """A trigger belongs to its transaction (libocpp resets them at the stop); so does the driver's
        SetUserPrice (the next session of the same card must not show an old price)."""
        if self._watch is not None and self._watch[0] == ref:
            self._watch = None
        record = self.outbox.transaction(ref)
        if record is not None:
            self._user_prices.pop(record.id_tag, None)

    def _check(self, reading: MeterReading | None) -> None:
        armed = self._watch
        if armed is None or reading is None:
            return
        ref, watch = armed
        record = self.sessions.current
        if record is None or record.transaction_ref != ref:
            self._watch = None
            return
        try:
            fired = watch.check(
                self.clock.now(),
                Decimal(reading.energy_import_wh) / 1000,
                Decimal(reading.total_power_w) / 1000,
                self.controller.connector.status.value,
            )
        except Exception:  # a non-finite reading, say: drop the trigger rather than fail the meter loop
            log.exception("triggerMeterValue check failed; trigger dropped")
            self._watch = None
            return
        if fired:
            log.info("triggerMeterValue fired (%s): sending MeterValues", ", ".join(watch.reasons))
            self.triggered += 1
            self.transactions.sample_meter_values(context="Trigger", always=True)

    # ── read model ──────────────────────────────────────────────────────────────────────────────────────
    def on_final_cost(self, listener: FinalCostListener) -> None:
        """``listener(final_cost, ref)`` for every accepted FinalCost (the ledger records it; ``ref`` is the
        local transaction ref). Called inside the DataTransfer handler: it must be quick and must not CALL."""
        self._final_listeners.append(listener)

    def final_cost(self, transaction_id: int) -> Decimal | None:
        """The backend's final cost of a finished transaction, exact; None if none came (since the start)."""
        received = self._final.get(transaction_id)
        return None if received is None else Decimal(received.message.cost)

    def running_cost(self, transaction_id: int) -> RunningCost | None:
        """The backend's latest RunningCost of a transaction, or None."""
        received = self._running.get(transaction_id)
        return None if received is None else received.message

    def user_price(self, id_tag: str) -> SetUserPrice | None:
        """The latest SetUserPrice for an idTag (display only), or None."""
        received = self._user_prices.get(id_tag)
        return None if received is None else received.message

    def _decimals(self) -> int:
        return self.configuration.get_int("NumberOfDecimalsForCostValues")

    def _rounded(self, amount: Decimal) -> str:
        return str(amount.quantize(Decimal(1).scaleb(-self._decimals()), rounding=ROUND_HALF_UP))

    def display(self, transaction_id: int | None = None) -> dict[str, Any] | None:
        """What the backend says the driver pays, for the status API and the display; None if it said nothing.

        ``transaction_id`` None means the running transaction (or, before it has an id, the current session's
        idTag). The dict::

            source          "backend" (the lead's local estimate says "local")
            transaction_id  int | None
            id_tag          str | None        the session's idTag, when known
            final           bool              True once the FinalCost came (cost is then the final cost)
            cost            str | None        exact Decimal string as the backend sent it, no currency
            cost_rounded    str | None        cost rounded half-up to NumberOfDecimalsForCostValues
            decimals        int               NumberOfDecimalsForCostValues
            state           "Charging" | "Idle" | None   from the latest RunningCost
            meter_value_wh  int | None        the register reading the running cost is based on
            timestamp       str | None        the backend's timestamp of the running cost (ISO 8601)
            received_at     str | None        when the latest cost message arrived (our clock, ISO 8601)
            price_text      str | None        FinalCost / RunningCost priceText, else the idTag's SetUserPrice
            price_text_extra list[{format, language, content}]
            qr_code_text    str | None
            charging_price  {kwh_price, hour_price, flat_fee} (Decimal strings or None) | None
            idle_price      {grace_minutes, hour_price} | None
            next_period     {at_time, charging_price, idle_price} | None
        """
        id_tag: str | None = None
        record = self.sessions.current
        if transaction_id is None and record is not None:
            id_tag = record.id_tag
            if record.transaction_ref is not None:
                transaction_id = self.outbox.transaction_id(record.transaction_ref)
        elif transaction_id is not None:
            row = self.store.conn.execute(
                "SELECT id_tag FROM transactions WHERE transaction_id = ? ORDER BY ref DESC LIMIT 1",
                (transaction_id,),
            ).fetchone()
            id_tag = None if row is None else str(row[0])
        final = self._final.get(transaction_id) if transaction_id is not None else None
        running = self._running.get(transaction_id) if transaction_id is not None else None
        user = self._user_prices.get(id_tag) if id_tag is not None else None
        if final is None and running is None and user is None:
            return None
        out: dict[str, Any] = {
            "source": SOURCE,
            "transaction_id": transaction_id,
            "id_tag": id_tag,
            "final": final is not None,
            "cost": None,
            "cost_rounded": None,
            "decimals": self._decimals(),
            "state": None,
            "meter_value_wh": None,
            "timestamp": None,
            "received_at": None,
            "price_text": None,
            "price_text_extra": [],
            "qr_code_text": None,
            "charging_price": None,
            "idle_price": None,
            "next_period": None,
        }
        if user is not None:
            price: SetUserPrice = user.message
            out["price_text"] = price.price_text
            out["price_text_extra"] = [_text(t) for t in price.price_text_extra]
            out["received_at"] = user.received_at.isoformat()
        if running is not None:
            rc: RunningCost = running.message
            out.update(
                cost=str(rc.cost),
                cost_rounded=self._rounded(rc.cost),
                state=rc.state,
                meter_value_wh=rc.meter_value_wh,
                timestamp=rc.timestamp.isoformat(),
                received_at=running.received_at.isoformat(),
                charging_price=_charging_price(rc.charging_price),
                idle_price=_idle_price(rc.idle_price),
            )
            if rc.next_period is not None:
                out["next_period"] = {
                    "at_time": rc.next_period.at_time.isoformat(),
                    "charging_price": _charging_price(rc.next_period.charging_price),
                    "idle_price": _idle_price(rc.next_period.idle_price),
                }
            self._texts(out, rc.price_text, rc.price_text_extra, rc.qr_code_text)
        if final is not None:
            fc: FinalCost = final.message
            out.update(
                cost=str(fc.cost), cost_rounded=self._rounded(fc.cost), received_at=final.received_at.isoformat()
            )
            self._texts(out, fc.price_text, fc.price_text_extra, fc.qr_code_text)
        return out

    @staticmethod
    def _texts(out: dict[str, Any], text: str | None, extra: tuple[MessageText, ...], qr: str | None) -> None:
        """A later message's texts replace the earlier ones only where it has them."""
        if text is not None:
            out["price_text"] = text
            out["price_text_extra"] = [_text(t) for t in extra]
        if qr is not None:
            out["qr_code_text"] = qr

    def default_price(self, *, offline: bool = False) -> dict[str, Any] | None:
        """The backend-configured DefaultPrice / DefaultPriceText (ChangeConfiguration), or None if unset.

        ``{"source": "backend-default", "price_text": str | None, "charging_price": {...} | None}``;
        with ``offline`` the priceTextOffline is preferred. DefaultPriceText's text wins over DefaultPrice's.
        """
        price = _json_object(self.configuration.get_str("DefaultPrice"))
        text = _json_object(self.configuration.get_str("DefaultPriceText"))
        if price is None and text is None:
            return None
        key = "priceTextOffline" if offline else "priceText"
        shown = None
        for source in (text, price):
            if source is not None:
                shown = source.get(key) or source.get("priceText")
                if shown:
                    break
        charging = (price or {}).get("chargingPrice")
        return {
            "source": "backend-default",
            "price_text": shown or None,
            "charging_price": None
            if not isinstance(charging, dict)
            else {
                "kwh_price": _amount(charging.get("kWhPrice")),
                "hour_price": _amount(charging.get("hourPrice")),
                "flat_fee": _amount(charging.get("flatFee")),
            },
        }

    def status(self) -> dict[str, Any]:
        """For the status API: the current backend display (or None) and the trigger state."""
        return {"display": self.display(), "trigger_armed": self._watch is not None, "triggered": self.triggered}


def _json_object(raw: str) -> dict[str, Any] | None:
    """A configuration value validated as a JSON object (or empty = unset)."""
    if not raw:
        return None
    value = json.loads(raw, parse_float=Decimal)
    return value if isinstance(value, dict) else None
