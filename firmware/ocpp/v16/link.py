"""The CSMS-initiated side of OCPP 1.6: one small handler per action, delegating to the service.

Handlers answer at once and never CALL from inside ``@on`` (that would deadlock the receive loop);
follow-up work runs in ``@after`` handlers, which the ``ocpp`` package schedules after the reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action

if TYPE_CHECKING:
    from firmware.ocpp.v16.service import OcppService


class CentralSystemLink(ChargePoint):  # type: ignore[misc]
    """One live connection to the CSMS; the service outlives it."""

    def __init__(self, charge_point_id: str, connection: Any, service: OcppService, response_timeout: float) -> None:
        super().__init__(charge_point_id, connection, response_timeout=response_timeout)
        self.service = service

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
    def on_data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **kw: Any) -> Any:
        return call_result.GetLocalListVersion(list_version=self.service.local_list_version())

    @on(Action.send_local_list)
    def on_send_local_list(self, list_version: int, update_type: str, **kw: Any) -> Any:
        entries = kw.get("local_authorization_list") or []
        return call_result.SendLocalList(status=self.service.send_local_list(list_version, update_type, entries))

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **kw: Any) -> Any:
        return call_result.TriggerMessage(status=self.service.trigger_status(requested_message, connector_id))

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, connector_id: int | None = None, **kw: Any) -> None:
        await self.service.trigger(requested_message, connector_id)
