"""The CSMS-initiated side of OCPP 1.6: one small handler per action, delegating to the service.

Handlers answer at once and never CALL from inside ``@on`` (that would deadlock the receive loop);
follow-up work runs in ``@after`` handlers, which the ``ocpp`` package schedules after the reply.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import FormationViolationError, FormatViolationError, NotSupportedError
from ocpp.exceptions import NotImplementedError as OcppNotImplementedError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action

from firmware.ocpp.v16.diagnostics import DiagnosticsHandlers
from firmware.ocpp.v16.firmware import FirmwareHandlers

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService

log = logging.getLogger("firmware.ocpp")
_ID = re.compile(r'^\s*\[\s*\d\s*,\s*"([^"\\]{1,36})"')


def _frame_id(raw: str) -> str | None:
    """The message id of a frame too large to parse, read from its first bytes."""
    match = _ID.match(raw[:100])
    return match.group(1) if match else None


#: Frames above this size are refused with a CALLERROR (the websocket itself takes up to 4 MiB).
MAX_FRAME_CHARS = 256 * 1024
_KNOWN_ACTIONS = frozenset(a.value for a in Action)


class CentralSystemLink(DiagnosticsHandlers, FirmwareHandlers, ChargePoint):  # type: ignore[misc]
    """One live connection to the CSMS; the service outlives it.

    The diagnostics and firmware-update handlers live beside their services (mixins); the ocpp package
    finds every ``@on`` method on the instance, inherited ones included.
    """

    def __init__(self, charge_point_id: str, connection: Any, service: OcppService, response_timeout: float) -> None:
        super().__init__(charge_point_id, connection, response_timeout=response_timeout)
        self.service = service

    async def route_message(self, raw_msg: str) -> None:
        """Refuse oversize frames before parsing them; everything else as the ocpp package does."""
        if len(raw_msg) > MAX_FRAME_CHARS:
            unique_id = _frame_id(raw_msg)
            log.warning("dropped a %d-character frame from the CSMS (limit %d)", len(raw_msg), MAX_FRAME_CHARS)
            if unique_id is not None and raw_msg.lstrip().startswith("[2"):
                error = [4, unique_id, "FormationViolation", f"frame larger than {MAX_FRAME_CHARS} characters", {}]
                await self._send(json.dumps(error))
            return
        await super().route_message(raw_msg)

    async def _send(self, message: str) -> None:
        """Every outgoing frame; a CALL (``[2,"id","Action",...]``) is counted as it goes on the wire."""
        observer = self.service.call_observer
        if observer is not None and message.startswith("[2,"):
            parts = message.split('"', 4)
            if len(parts) > 3:
                observer.sent(parts[3])
        await super()._send(message)

    async def _handle_call(self, msg: Any) -> Any:
        """OCPP-J 1.6 §4.2.3: NotImplemented = action not known; NotSupported = known but not supported.

        (The ocpp package answers the other way round.)
        """
        observer = self.service.call_observer
        if observer is not None:
            observer.received(msg.action)
        handlers = self.route_map.get(msg.action)
        if handlers is None or "_on_action" not in handlers:
            if msg.action in _KNOWN_ACTIONS:
                raise NotSupportedError(details={"cause": f"{msg.action} is not supported by this charge point"})
            raise OcppNotImplementedError(details={"cause": f"{msg.action} is not a known OCPP 1.6 action"})
        try:
            return await super()._handle_call(msg)
        except FormatViolationError as exc:  # the package's 2.0.1 code; OCPP-J 1.6 §4.2.3 says FormationViolation
            raise FormationViolationError(description=exc.description, details=exc.details) from exc

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, connector_id: int | None = None, **kw: Any) -> Any:
        return call_result.RemoteStartTransaction(
            status=self.service.remote_start(id_tag, connector_id, kw.get("charging_profile"))
        )

    @after(Action.remote_start_transaction)
    async def after_remote_start(self, id_tag: str, connector_id: int | None = None, **kw: Any) -> None:
        await self.service.remote_start_followup(id_tag)

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int, **kw: Any) -> Any:
        return call_result.RemoteStopTransaction(status=self.service.remote_stop(transaction_id))

    @on(Action.reset)
    def on_reset(self, type: str, **kw: Any) -> Any:
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    async def after_reset(self, type: str, **kw: Any) -> None:
        await self.service.reset(type)

    @on(Action.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **kw: Any) -> Any:
        return call_result.ChangeAvailability(status=self.service.change_availability(connector_id, type))

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **kw: Any) -> Any:
        return call_result.UnlockConnector(status=self.service.unlock_connector(connector_id))

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **kw: Any) -> Any:
        known, unknown = self.service.configuration.get_configuration(key)
        return call_result.GetConfiguration(configuration_key=known or None, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **kw: Any) -> Any:
        return call_result.ChangeConfiguration(status=self.service.change_configuration(key, value))

    @on(Action.clear_cache)
    def on_clear_cache(self, **kw: Any) -> Any:
        return call_result.ClearCache(status=self.service.clear_cache())

    @on(Action.data_transfer)
    def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **kw: Any
    ) -> Any:
        """California Pricing (vendorId org.openchargealliance.costmsg) is answered by the pricing service, at
        once and without a CALL; any other vendor is unknown."""
        pricing = self.service.pricing
        if pricing is None:
            return call_result.DataTransfer(status="UnknownVendorId")
        return call_result.DataTransfer(**pricing.data_transfer(vendor_id, message_id, data))

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **kw: Any) -> Any:
        return call_result.GetLocalListVersion(list_version=self.service.local_list_version())

    @on(Action.send_local_list)
    def on_send_local_list(self, list_version: int, update_type: str, **kw: Any) -> Any:
        entries = kw.get("local_authorization_list") or []
        return call_result.SendLocalList(status=self.service.send_local_list(list_version, update_type, entries))

    @on(Action.reserve_now)
    def on_reserve_now(self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int, **kw: Any) -> Any:
        status = self.service.reserve_now(connector_id, expiry_date, id_tag, reservation_id, kw.get("parent_id_tag"))
        return call_result.ReserveNow(status=status)

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int, **kw: Any) -> Any:
        return call_result.CancelReservation(status=self.service.cancel_reservation(reservation_id))

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **kw: Any) -> Any:
        status = self.service.smart_charging.set_profile(connector_id, cs_charging_profiles)
        return call_result.SetChargingProfile(status=status)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **kw: Any,
    ) -> Any:
        status = self.service.smart_charging.clear_profiles(id, connector_id, charging_profile_purpose, stack_level)
        return call_result.ClearChargingProfile(status=status)

    @on(Action.get_composite_schedule)
    async def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **kw: Any
    ) -> Any:
        answer = await self.service.smart_charging.composite(connector_id, duration, charging_rate_unit)
        if answer is None:
            return call_result.GetCompositeSchedule(status="Rejected")
        return call_result.GetCompositeSchedule(status="Accepted", **answer)

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **kw: Any) -> Any:
        return call_result.TriggerMessage(status=self.service.trigger_status(requested_message, connector_id))

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, connector_id: int | None = None, **kw: Any) -> None:
        await self.service.trigger(requested_message, connector_id)

    @on(Action.extended_trigger_message)
    def on_extended_trigger_message(self, requested_message: str, connector_id: int | None = None, **kw: Any) -> Any:
        status = self.service.trigger_status(requested_message, connector_id, extended=True)
        return call_result.ExtendedTriggerMessage(status=status)

    @after(Action.extended_trigger_message)
    async def after_extended_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **kw: Any
    ) -> None:
        await self.service.extended_trigger(requested_message, connector_id)
