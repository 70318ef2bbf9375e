"""The daemon with a real card reader driver (PN532 over a pty, speaking real frames) beside simulated hardware."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rfid_pn532_peer import FakePn532

from firmware.app import ChargePointApp, demo_settings
from firmware.backends import unsupported
from firmware.config import default_settings

UID = bytes.fromhex("04a1b2c3")


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[FakePn532]:
    fake = FakePn532(tmp_path / "ttyPN532")
    fake.plug()
    yield fake
    fake.unplug()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_a_card_on_the_pn532_starts_and_stops_a_session(peer: FakePn532) -> None:
    work = Path(tempfile.mkdtemp(prefix="evse-rfid-", dir="/tmp"))
    s = demo_settings(default_settings(), work)
    s = replace(
        s,
        rfid=replace(s.rfid, reader="pn532", port=str(peer.link)),
        auth=replace(s.auth, mode="local", allowlist=("04A1B2C3",)),
    )
    assert unsupported(s) == []
    app = ChargePointApp(s)
    assert app.sim is not None
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        app.sim.plug()
        for _ in range(2):  # the reader is up and polling (a card already there at start is not a tap)
            assert await asyncio.to_thread(peer.polls.acquire, True, 5.0), "the reader never polled"
        peer.card = UID
        await until(lambda: app.sessions.transaction_status() is not None)
        assert app.sessions.transaction_status()["id_tag"] == "04A1B2C3"  # type: ignore[index]
        peer.card = None  # lifted, then tapped again: the same card ends the session
        await asyncio.sleep(1.0)
        peer.card = UID
        await until(lambda: app.sessions.transaction_status() is None)
        assert "reader" not in app.controller.faults
    finally:
        stop.set()
        await task
