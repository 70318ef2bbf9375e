"""Property tests for the PN532 frame codec: round trip, and corruption always rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rfid_pn532_peer import frame as peer_frame

from hal.rfid.pn532 import (
    ACK_FRAME,
    MAX_DATA,
    NACK_FRAME,
    Control,
    Frame,
    FrameError,
    decode_frame,
    encode_frame,
)

tfis = st.integers(0, 255)
datas = st.binary(max_size=MAX_DATA)


@given(tfis, datas)
def test_round_trip(tfi: int, data: bytes) -> None:
    raw = encode_frame(tfi, data)
    assert decode_frame(raw) == Frame(tfi, data)
    assert raw == peer_frame(tfi, data)  # the independent builder in the fake PN532 agrees


@given(tfis, datas, st.data())
def test_any_single_byte_corruption_is_rejected(tfi: int, data: bytes, draw: st.DataObject) -> None:
    raw = bytearray(encode_frame(tfi, data))
    index = draw.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(FrameError):
        decode_frame(bytes(raw))


@given(tfis, datas, st.data())
def test_truncated_or_extended_frames_are_rejected(tfi: int, data: bytes, draw: st.DataObject) -> None:
    raw = encode_frame(tfi, data)
    cut = draw.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(FrameError):
        decode_frame(raw[:cut])
    with pytest.raises(FrameError):
        decode_frame(raw + draw.draw(st.binary(min_size=1, max_size=4)))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_frame_error(raw: bytes) -> None:
    try:
        result = decode_frame(raw)
    except FrameError:
        return
    if isinstance(result, Frame):
        assert encode_frame(result.tfi, result.data) == raw
    else:
        assert raw == (ACK_FRAME if result is Control.ACK else NACK_FRAME)


def test_control_frames_and_limits() -> None:
    assert decode_frame(ACK_FRAME) is Control.ACK
    assert decode_frame(NACK_FRAME) is Control.NACK
    # the PN532's syntax-error frame decodes as TFI 0x7F
    assert decode_frame(bytes.fromhex("0000ff01ff7f8100")) == Frame(0x7F, b"")
    with pytest.raises(FrameError, match="extended"):
        decode_frame(bytes.fromhex("0000ffffff000501fad4020000"))
    with pytest.raises(ValueError):
        encode_frame(0xD4, bytes(MAX_DATA + 1))
    with pytest.raises(ValueError):
        encode_frame(0x100, b"")
