"""``[rfid] reader = "none"``: a charger without a card reader (free vend, or app / remote start only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hal.interfaces import CardTap


class NoCardReader:
    """Never yields a tap and never fails: there is nothing to read."""

    async def taps(self) -> AsyncIterator[CardTap]:
        await asyncio.Event().wait()
        return
        yield  # pragma: no cover - makes this an async generator
