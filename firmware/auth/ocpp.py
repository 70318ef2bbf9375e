"""OCPP 1.6 authorization: the CSMS when it answers, the local list and the cache when it does not.

Order (1.6 §3.4, §3.5): with LocalPreAuthorize, or while offline, an idTag that the local list or
the cache knows as Accepted (and not expired) starts at once. Online, the CSMS decides and its
answer refreshes the cache. Offline, LocalAuthorizeOffline allows known idTags and
AllowOfflineTxForUnknownId allows everyone else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from firmware.auth import AuthDecision, AuthStatus

log = logging.getLogger("firmware.auth")


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    status: AuthStatus
    expiry: datetime | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_wire(cls, info: Mapping[str, Any]) -> IdTagInfo:
        """From an idTagInfo object (camelCase or snake_case keys); unknown statuses count as Invalid."""
        raw_status = str(info.get("status", "Invalid"))
        try:
            status = AuthStatus(raw_status)
        except ValueError:
            status = AuthStatus.INVALID
        expiry_text = info.get("expiryDate", info.get("expiry_date"))
        expiry = None
        if isinstance(expiry_text, str):
            try:
                expiry = datetime.fromisoformat(expiry_text.replace("Z", "+00:00"))
            except ValueError:
                expiry = None
        parent = info.get("parentIdTag", info.get("parent_id_tag"))
        return cls(status, expiry, parent if isinstance(parent, str) else None)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value}
        if self.expiry is not None:
            out["expiryDate"] = self.expiry.isoformat()
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    def accepted_at(self, now: datetime) -> bool:
        return self.status is AuthStatus.ACCEPTED and (self.expiry is None or self.expiry > now)


class KeyValue(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...


class IdTagTable:
    """idTag -> IdTagInfo, case-insensitive (CiString20), persisted as one JSON document."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv, self._name = kv, name
        raw = kv.get(name)
        data: dict[str, Any] = json.loads(raw) if raw else {}
        self.version: int = int(data.get("version", 0))
        self._entries: dict[str, IdTagInfo] = {
            tag.casefold(): IdTagInfo.from_wire(info) for tag, info in data.get("entries", {}).items()
        }

    def get(self, id_tag: str) -> IdTagInfo | None:
        return self._entries.get(id_tag.casefold())

    def put(self, id_tag: str, info: IdTagInfo) -> None:
        self._entries[id_tag.casefold()] = info
        self._save()

    def remove(self, id_tag: str) -> None:
        if self._entries.pop(id_tag.casefold(), None) is not None:
            self._save()

    def replace(self, entries: Mapping[str, IdTagInfo], version: int | None = None) -> None:
        self._entries = {tag.casefold(): info for tag, info in entries.items()}
        if version is not None:
            self.version = version
        self._save()

    def set_version(self, version: int) -> None:
        self.version = version
        self._save()

    def clear(self) -> None:
        self._entries.clear()
        self._save()

    def __len__(self) -> int:
        return len(self._entries)

    def _save(self) -> None:
        doc = {"version": self.version, "entries": {k: v.to_wire() for k, v in self._entries.items()}}
        self._kv.put(self._name, json.dumps(doc, separators=(",", ":")))


class AuthSettings(Protocol):
    def get_bool(self, name: str) -> bool: ...


CsmsAuthorize = Callable[[str], Awaitable[IdTagInfo | None]]


class OcppAuthorizer:
    def __init__(
        self,
        csms_authorize: CsmsAuthorize,
        online: Callable[[], bool],
        keys: AuthSettings,
        local_list: IdTagTable,
        cache: IdTagTable,
        now: Callable[[], datetime],
    ) -> None:
        self.csms_authorize = csms_authorize
        self.online = online
        self.keys = keys
        self.local_list = local_list
        self.cache = cache
        self.now = now

    def _local(self, id_tag: str) -> tuple[IdTagInfo | None, str]:
        if self.keys.get_bool("LocalAuthListEnabled"):
            info = self.local_list.get(id_tag)
            if info is not None:
                return info, "local-list"
        if self.keys.get_bool("AuthorizationCacheEnabled"):
            info = self.cache.get(id_tag)
            if info is not None:
                return info, "cache"
        return None, ""

    async def authorize(self, id_tag: str) -> AuthDecision:
        now = self.now()
        known, source = self._local(id_tag)
        online = self.online()
        if known is not None and known.accepted_at(now) and (not online or self.keys.get_bool("LocalPreAuthorize")):
            return AuthDecision(id_tag, AuthStatus.ACCEPTED, source, "pre-authorized locally")
        if online:
            info = await self.csms_authorize(id_tag)
            if info is not None:
                if self.keys.get_bool("AuthorizationCacheEnabled") and self.local_list.get(id_tag) is None:
                    self.cache.put(id_tag, info)
                return AuthDecision(id_tag, info.status, "csms", "Authorize.conf")
        # Offline (or the CSMS did not answer).
        if known is not None:
            if known.accepted_at(now) and self.keys.get_bool("LocalAuthorizeOffline"):
                return AuthDecision(id_tag, AuthStatus.ACCEPTED, source, "offline, known locally")
            status = AuthStatus.EXPIRED if known.status is AuthStatus.ACCEPTED else known.status
            return AuthDecision(id_tag, status, source, "offline, known locally but not accepted")
        if self.keys.get_bool("AllowOfflineTxForUnknownId"):
            return AuthDecision(id_tag, AuthStatus.ACCEPTED, "offline-unknown", "AllowOfflineTxForUnknownId")
        return AuthDecision(id_tag, AuthStatus.INVALID, "offline", "CSMS unreachable and idTag unknown locally")
