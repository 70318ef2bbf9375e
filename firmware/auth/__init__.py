"""Authorization: one interface for every source of "may this idTag charge?".

The session layer asks an :class:`Authorizer`; it never knows whether the answer came from an
allowlist, free vend, or (later) the CSMS, the local list or the cache.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol


class AuthStatus(enum.StrEnum):
    """OCPP 1.6 AuthorizationStatus."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"


@dataclass(frozen=True, slots=True)
class AuthDecision:
    id_tag: str
    status: AuthStatus
    #: Who decided: "free", "allowlist", later "csms", "local-list", "cache".
    source: str
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is AuthStatus.ACCEPTED


class Authorizer(Protocol):
    async def authorize(self, id_tag: str) -> AuthDecision: ...


class FreeAuthorizer:
    """Free vend: everyone charges."""

    async def authorize(self, id_tag: str) -> AuthDecision:
        return AuthDecision(id_tag, AuthStatus.ACCEPTED, "free", "free vend")


class AllowlistAuthorizer:
    """Cards listed in config; idTags are CiString20, so compared case-insensitively."""

    def __init__(self, allowlist: Iterable[str]) -> None:
        self._allowed = {tag.casefold() for tag in allowlist}

    async def authorize(self, id_tag: str) -> AuthDecision:
        if id_tag.casefold() in self._allowed:
            return AuthDecision(id_tag, AuthStatus.ACCEPTED, "allowlist", "card in auth.allowlist")
        return AuthDecision(id_tag, AuthStatus.INVALID, "allowlist", "card not in auth.allowlist")


def id_tag_from_uid(
    uid: bytes,
    byte_order: Literal["forward", "reverse"] = "forward",
    case: Literal["upper", "lower"] = "upper",
) -> str:
    """OCPP 1.6 §3.9: hex of the UID bytes, byte 0 first (or reversed for readers that report LSB first)."""
    if not 1 <= len(uid) <= 10:
        raise ValueError(f"card UID of {len(uid)} bytes: expected 1..10 (an idTag holds at most 20 hex digits)")
    data = uid if byte_order == "forward" else uid[::-1]
    text = data.hex()
    return text.upper() if case == "upper" else text
