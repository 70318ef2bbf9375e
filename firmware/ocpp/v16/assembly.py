"""Builds the OCPP 1.6 side of one charge point from its settings and store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from firmware.auth.ocpp import IdTagTable, OcppAuthorizer
from firmware.charging.controller import ChargingController
from firmware.config import Settings
from firmware.metering import MeterSampler
from firmware.ocpp.connection import Backoff, OcppConnection
from firmware.ocpp.outbox import Outbox
from firmware.ocpp.v16.configuration import Configuration
from firmware.ocpp.v16.diagnostics import build_diagnostics
from firmware.ocpp.v16.firmware import build_firmware
from firmware.ocpp.v16.meter_values import SUPPORTED_MEASURANDS
from firmware.ocpp.v16.pricing import PricingService
from firmware.ocpp.v16.profiles import ProfileStore
from firmware.ocpp.v16.service import OcppService
from firmware.ocpp.v16.smart_charging import SmartCharging
from firmware.session import SessionManager
from firmware.store import Store
from hal.clock import Clock

log = logging.getLogger("firmware.ocpp")
_KEY_PREFIX = "ocpp.key."


class StoreKeyValue:
    """The store's ``kv`` table as a small string map (auth cache, local list)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> str | None:
        row = self.store.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )


class StoreKeyStorage:
    """OCPP configuration keys persisted in the store (only values the CSMS changed)."""

    def __init__(self, kv: StoreKeyValue) -> None:
        self.kv = kv

    def load(self) -> dict[str, str]:
        rows = self.kv.store.conn.execute("SELECT key, value FROM kv WHERE key LIKE ?", (_KEY_PREFIX + "%",))
        return {str(k)[len(_KEY_PREFIX) :]: str(v) for k, v in rows}

    def save(self, key: str, value: str) -> None:
        self.kv.put(_KEY_PREFIX + key, value)


@dataclass
class OcppParts:
    store: Store
    outbox: Outbox
    configuration: Configuration
    local_list: IdTagTable
    cache: IdTagTable
    service: OcppService
    authorizer: OcppAuthorizer
    #: California Pricing: the backend's prices and costs (display, FinalCost for the ledger).
    pricing: PricingService


def build(
    settings: Settings,
    store: Store,
    clock: Clock,
    controller: ChargingController,
    sessions: SessionManager,
    sampler: MeterSampler,
    *,
    firmware_version: str,
    restart: Callable[[str], None],
    response_timeout_s: float = 30.0,
    backoff: Backoff | None = None,
) -> OcppParts:
    kv = StoreKeyValue(store)
    configuration = Configuration(
        StoreKeyStorage(kv),
        supported_measurands=SUPPORTED_MEASURANDS,
        overrides={
            "NumberOfConnectors": "1",
            "SecurityProfile": str(settings.ocpp.security_profile),
            "ConnectionTimeOut": str(settings.charger.connection_timeout_s),
        },
    )
    controller.connection_timeout_s = float(configuration.get_int("ConnectionTimeOut"))

    def on_key_changed(key: str, value: object) -> None:
        if key == "ConnectionTimeOut" and isinstance(value, int):
            controller.connection_timeout_s = float(value)

    configuration.subscribe(on_key_changed)
    outbox = Outbox(
        store,
        wall=lambda: clock.now().timestamp(),
        attempts=lambda: configuration.get_int("TransactionMessageAttempts"),
        retry_interval=lambda: float(configuration.get_int("TransactionMessageRetryInterval")),
    )
    o = settings.ocpp

    def authorization_key() -> str:
        # A key set by the CSMS (ChangeConfiguration AuthorizationKey) wins over the installer's.
        return configuration.raw("AuthorizationKey") or o.authorization_key

    connection = OcppConnection(
        o.url,
        settings.charger.id,
        security_profile=o.security_profile,
        authorization_key=authorization_key,
        ca_file=o.ca_file,
        client_cert=o.client_cert,
        client_key=o.client_key,
        ping_interval=lambda: float(configuration.get_int("WebSocketPingInterval")),
        backoff=backoff or Backoff(initial_s=o.reconnect_min_s, maximum_s=max(o.reconnect_max_s, o.reconnect_min_s)),
    )
    local_list, cache = IdTagTable(kv, "ocpp.local_list"), IdTagTable(kv, "ocpp.auth_cache")
    charger = settings.charger
    smart_charging = SmartCharging(
        profiles=ProfileStore(store),
        configuration=configuration,
        arbiter=controller.arbiter,
        clock=clock,
        sessions=sessions,
        outbox=outbox,
        sampler=sampler,
        # The charger's own maximum: what a GetCompositeSchedule shows where no profile limits.
        max_current_a=min(charger.max_current_a, settings.hal.rated_current_a),
        wired_phases=charger.phases,
        nominal_voltage_v=charger.nominal_voltage_v,
    )
    service = OcppService(
        charge_point_id=settings.charger.id,
        controller=controller,
        sessions=sessions,
        sampler=sampler,
        outbox=outbox,
        configuration=configuration,
        local_list=local_list,
        cache=cache,
        connection=connection,
        clock=clock,
        firmware_version=firmware_version,
        restart=restart,
        smart_charging=smart_charging,
        response_timeout_s=response_timeout_s,
    )
    service.diagnostics = build_diagnostics(settings, store=store, clock=clock, sender=service)
    service.firmware = build_firmware(
        settings,
        clock=clock,
        sender=service,
        sessions=sessions,
        firmware_version=firmware_version,
        restart=restart,
    )
    service.firmware.security_event = service.security.record
    pricing = PricingService(
        configuration=configuration,
        transactions=service.transactions,
        sessions=sessions,
        outbox=outbox,
        store=store,
        sampler=sampler,
        controller=controller,
        clock=clock,
    )
    service.pricing = pricing  # the link's DataTransfer handler answers through it
    authorizer = OcppAuthorizer(
        service.authorize_with_csms, lambda: service.online, configuration, local_list, cache, clock.now
    )
    return OcppParts(store, outbox, configuration, local_list, cache, service, authorizer, pricing)
