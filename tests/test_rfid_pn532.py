"""PN532 driver against a fake PN532 speaking real HSU frames over a pty."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from rfid_pn532_peer import FakePn532
from rfid_support import TapCollector

from hal.interfaces import CardReader, Closeable, DeviceError
from hal.rfid import open_reader
from hal.rfid._bridge import Debouncer
from hal.rfid.pn532 import Pn532Error, Pn532Reader, parse_target_uid

UID = bytes.fromhex("04a1b2c3d4e5f6")
OTHER = bytes.fromhex("deadbeef")


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[FakePn532]:
    fake = FakePn532(tmp_path / "ttyPN532")
    fake.plug()
    yield fake
    fake.unplug()


@pytest.fixture
async def reader(peer: FakePn532) -> AsyncIterator[Pn532Reader]:
    drv = Pn532Reader(
        str(peer.link), poll_interval_s=0.005, ack_timeout_s=0.1, response_timeout_s=0.2, retry_s=0.05, max_bad_polls=3
    )
    yield drv
    await drv.aclose()


async def wait_polls(peer: FakePn532, n: int) -> None:
    """Wait for ``n`` more answered InListPassiveTarget polls (drains earlier ones first)."""
    while peer.polls.acquire(blocking=False):
        pass
    for _ in range(n):
        assert await asyncio.to_thread(peer.polls.acquire, True, 3.0), "the driver stopped polling"


async def test_one_tap_per_presentation(peer: FakePn532, reader: Pn532Reader) -> None:
    taps = TapCollector(reader)
    await wait_polls(peer, 2)
    assert taps.taps == []
    assert peer.commands[:3] == [0x14, 0x32, 0x02]  # SAMConfiguration, RFConfiguration, firmware

    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)
    await wait_polls(peer, 10)  # held on the reader: no repeat
    assert [t.uid for t in taps.taps] == [UID]
    assert taps.taps[0].reader == "pn532"

    peer.card = None  # lifted ...
    await wait_polls(peer, 3)
    peer.card = UID  # ... and tapped again
    await taps.wait_until(lambda: len(taps.taps) == 2)
    peer.card = OTHER  # swapped for another card without a gap
    await taps.wait_until(lambda: len(taps.taps) == 3)
    assert [t.uid for t in taps.taps] == [UID, UID, OTHER]
    assert taps.errors == []
    await taps.stop()


async def test_bad_checksum_rejected_then_recovers(
    peer: FakePn532, reader: Pn532Reader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hal.rfid")
    taps = TapCollector(reader)
    await wait_polls(peer, 1)
    peer.corrupt_dcs = True
    peer.card = UID
    await taps.wait_until(lambda: bool(taps.errors))
    assert taps.taps == []  # the corrupt answers carried the card: none may pass as a tap
    assert taps.errors[0].kind == "reader"
    assert "data checksum mismatch" in caplog.text

    peer.corrupt_dcs = False
    await taps.wait_until(lambda: reader.fault is None)
    await wait_polls(peer, 3)
    assert taps.taps == []  # the card was there when the reader came back: not a new presentation
    peer.card = None
    await wait_polls(peer, 3)
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)
    assert taps.taps[0].uid == UID
    await taps.stop()


async def test_single_bad_frame_is_not_a_fault(peer: FakePn532, reader: Pn532Reader) -> None:
    taps = TapCollector(reader)
    await wait_polls(peer, 1)
    peer.corrupt_dcs = True
    await asyncio.to_thread(peer.polls.acquire, True, 3.0)
    peer.corrupt_dcs = False
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)
    assert taps.errors == []
    await taps.stop()


async def test_no_answer_is_an_error_then_recovers(peer: FakePn532, reader: Pn532Reader) -> None:
    peer.silent = True
    taps = TapCollector(reader)
    await taps.wait_until(lambda: bool(taps.errors))
    assert "no answer" in str(taps.errors[0])
    assert reader.fault is not None

    peer.silent = False
    await taps.wait_until(lambda: reader.fault is None)
    await wait_polls(peer, 1)
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)
    assert taps.taps[0].uid == UID
    assert reader.fault is None
    await taps.stop()


async def test_port_vanishes_and_comes_back(peer: FakePn532, reader: Pn532Reader) -> None:
    taps = TapCollector(reader)
    await wait_polls(peer, 1)
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)

    peer.unplug()
    await taps.wait_until(lambda: bool(taps.errors))
    with pytest.raises(DeviceError):  # while it is gone, a new iteration fails at once
        await anext(aiter(reader.taps()))

    peer.plug()  # same path, new pty, the card still lies there: not a new presentation
    await taps.wait_until(lambda: reader.fault is None)
    await wait_polls(peer, 3)
    assert len(taps.taps) == 1
    peer.card = None
    await wait_polls(peer, 3)
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 2)
    assert [t.uid for t in taps.taps] == [UID, UID]
    await taps.stop()


async def test_card_on_reader_at_start_is_not_a_tap(peer: FakePn532, reader: Pn532Reader) -> None:
    peer.card = UID
    taps = TapCollector(reader)
    await wait_polls(peer, 3)
    assert taps.taps == []
    peer.card = None
    await wait_polls(peer, 3)
    peer.card = UID
    await taps.wait_until(lambda: len(taps.taps) == 1)
    await taps.stop()


async def test_closed_reader_refuses_taps(reader: Pn532Reader) -> None:
    await reader.aclose()
    with pytest.raises(DeviceError):
        await anext(aiter(reader.taps()))


def test_debouncer() -> None:
    d = Debouncer(release_polls=2)
    assert d.seen(UID) is None  # already there at the first poll
    assert d.seen(None) is None
    assert d.seen(None) is None
    assert d.seen(UID) == UID
    assert d.seen(UID) is None
    assert d.seen(None) is None
    assert d.seen(UID) is None  # one missed poll is RF noise, not a lift
    assert d.seen(None) is None
    assert d.seen(None) is None
    assert d.seen(UID) == UID
    assert d.seen(OTHER) == OTHER
    d.reset()
    assert d.seen(None) is None
    assert d.seen(OTHER) == OTHER
    with pytest.raises(ValueError):
        Debouncer(0)


def test_parse_target_uid() -> None:
    assert parse_target_uid(b"\x00") is None
    assert parse_target_uid(b"\x01\x01\x00\x04\x08\x04" + OTHER) == OTHER
    for bad in (b"", b"\x01\x01\x00", b"\x01\x01\x00\x04\x08\x07" + OTHER, b"\x01\x01\x00\x04\x08\x05" + UID[:5]):
        with pytest.raises(Pn532Error):
            parse_target_uid(bad)


def test_open_reader() -> None:
    reader: CardReader = open_reader("pn532", "/dev/ttyAMA0", poll_interval_s=0.5)
    assert isinstance(reader, Pn532Reader) and isinstance(reader, Closeable)
    assert reader.port == "/dev/ttyAMA0" and reader.poll_interval_s == 0.5
    with pytest.raises(ValueError, match="serial port"):
        open_reader("pn532", None)
    with pytest.raises(ValueError, match="unknown"):
        open_reader("nfc", "x")  # type: ignore[arg-type]
