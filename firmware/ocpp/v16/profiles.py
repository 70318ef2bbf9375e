"""The charging profiles the charge point holds (OCPP 1.6 §3.13), in memory and in the store.

Profiles are local: they must keep working offline and across a restart, so every change is committed to
SQLite (table ``charging_profiles``, store migration 2) before the caller answers the CSMS. Rows hold the
profile as OCPP JSON (``ChargingProfile.to_wire``) so a later firmware reads them with the same parser
it uses for the wire. This module only keeps the set; what may be installed is decided by the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from firmware.limits.schedule import ChargingProfile
from firmware.store import Store

log = logging.getLogger("firmware.ocpp.smart_charging")


@dataclass(frozen=True, slots=True)
class Installed:
    """One installed profile; a TxProfile also names the local transaction (outbox ref) it belongs to."""

    profile: ChargingProfile
    transaction_ref: int | None = None


def replaces(new: ChargingProfile, old: ChargingProfile) -> bool:
    """1.6 §5.16: the same chargingProfileId, or the same purpose and stackLevel on the same connector."""
    if new.profile_id == old.profile_id:
        return True
    return (new.purpose, new.stack_level, new.connector_id) == (old.purpose, old.stack_level, old.connector_id)


class ProfileStore:
    """The installed profiles by chargingProfileId, mirrored in the store's ``charging_profiles`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._profiles: dict[int, Installed] = {}
        self._load()

    def _load(self) -> None:
        rows = self.store.conn.execute(
            "SELECT profile_id, connector_id, transaction_ref, profile FROM charging_profiles ORDER BY profile_id"
        ).fetchall()
        unreadable: list[int] = []
        for profile_id, connector_id, transaction_ref, text in rows:
            try:
                profile = ChargingProfile.from_wire(json.loads(text), connector_id=int(connector_id))
            except (ValueError, TypeError) as exc:
                log.error("stored charging profile %s is unreadable and is dropped: %s", profile_id, exc)
                unreadable.append(int(profile_id))
                continue
            self._profiles[profile.profile_id] = Installed(profile, transaction_ref)
        if unreadable:
            self._delete(unreadable)
        if self._profiles:
            log.info("%d charging profile(s) loaded from the store", len(self._profiles))

    def all(self) -> list[Installed]:
        return list(self._profiles.values())

    def __len__(self) -> int:
        return len(self._profiles)

    def replaced_by(self, profile: ChargingProfile) -> list[int]:
        """Ids of the installed profiles that installing ``profile`` would replace."""
        return [pid for pid, item in self._profiles.items() if replaces(profile, item.profile)]

    def install(self, profile: ChargingProfile, transaction_ref: int | None, now: datetime) -> list[int]:
        """Add ``profile`` (replacing what it replaces) durably; returns the replaced ids. Raises on a store error."""
        gone = self.replaced_by(profile)
        text = json.dumps(profile.to_wire(), separators=(",", ":"), allow_nan=False)
        with self.store.transaction() as conn:
            conn.executemany("DELETE FROM charging_profiles WHERE profile_id = ?", [(pid,) for pid in gone])
            conn.execute(
                "INSERT INTO charging_profiles(profile_id, connector_id, purpose, stack_level, transaction_ref, "
                "profile, installed_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (
                    profile.profile_id,
                    profile.connector_id,
                    profile.purpose,
                    profile.stack_level,
                    transaction_ref,
                    text,
                    now.isoformat(),
                ),
            )
        for pid in gone:
            del self._profiles[pid]
        self._profiles[profile.profile_id] = Installed(profile, transaction_ref)
        return gone

    def remove(self, match: Callable[[Installed], bool]) -> list[int]:
        """Delete every profile ``match`` selects, durably; returns their ids. Raises on a store error."""
        gone = [pid for pid, item in self._profiles.items() if match(item)]
        if gone:
            self._delete(gone)
            for pid in gone:
                del self._profiles[pid]
        return gone

    def _delete(self, ids: list[int]) -> None:
        with self.store.transaction() as conn:
            conn.executemany("DELETE FROM charging_profiles WHERE profile_id = ?", [(pid,) for pid in ids])
