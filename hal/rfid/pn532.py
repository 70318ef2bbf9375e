"""NXP PN532 over UART (HSU, 115200 8N1) with pyserial.

Frame format (PN532 user manual §6.2): ``00 00 FF LEN LCS TFI PD0..PDn DCS 00`` where LEN counts
TFI + data, ``(LEN + LCS) & 0xFF == 0``, TFI is D4 host->PN532 and D5 PN532->host, and
``(TFI + ΣPD + DCS) & 0xFF == 0``. Every command is ACKed (``00 00 FF 00 FF 00``) before its
response. The PN532 never reports a card's removal, so the reader polls with
InListPassiveTarget (with few retries, so a poll without a card returns at once) and debounces.
All serial I/O runs in the worker thread; the event loop only receives taps.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import serial

from hal.rfid._bridge import Debouncer, ThreadedReader

_log = logging.getLogger(__name__)

TFI_HOST: Final = 0xD4
TFI_PN532: Final = 0xD5
#: TFI of the PN532's "syntax error" frame (``00 00 FF 01 FF 7F 81 00``).
TFI_ERROR: Final = 0x7F
ACK_FRAME: Final = bytes.fromhex("0000ff00ff00")
NACK_FRAME: Final = bytes.fromhex("0000ffff0000")
MAX_DATA: Final = 254  # LEN (one byte) counts TFI too; extended frames are not used

CMD_GET_FIRMWARE_VERSION: Final = 0x02
CMD_SAM_CONFIGURATION: Final = 0x14
CMD_RF_CONFIGURATION: Final = 0x32
CMD_IN_LIST_PASSIVE_TARGET: Final = 0x4A

#: HSU wake-up: 0x55 then enough idle bytes for the PN532 to leave power-down (datasheet §7.2.11).
WAKE_UP: Final = b"\x55\x55" + b"\x00" * 14
UID_LENGTHS: Final = frozenset({4, 7, 10})


class Pn532Error(Exception):
    """The PN532 did not answer, or answered something this driver cannot accept."""


class FrameError(Pn532Error, ValueError):
    """Bytes that are not a valid PN532 frame (bad preamble, length or checksum)."""


class Control(enum.Enum):
    """The two frames without data."""

    ACK = "ack"
    NACK = "nack"


@dataclass(frozen=True, slots=True)
class Frame:
    """One normal information frame: its TFI and data bytes (command code first)."""

    tfi: int
    data: bytes


def encode_frame(tfi: int, data: bytes) -> bytes:
    """The wire bytes of a normal information frame (preamble and postamble included)."""
    if not 0 <= tfi <= 0xFF:
        raise ValueError(f"TFI must be one byte, got {tfi!r}")
    if len(data) > MAX_DATA:
        raise ValueError(f"frame data too long: {len(data)} > {MAX_DATA} bytes")
    length = len(data) + 1
    dcs = (-(tfi + sum(data))) & 0xFF
    return bytes([0x00, 0x00, 0xFF, length, (-length) & 0xFF, tfi, *data, dcs, 0x00])


def decode_frame(raw: bytes) -> Frame | Control:
    """Parse exactly one frame; raises :class:`FrameError` naming what is wrong."""
    if len(raw) < 6:
        raise FrameError(f"frame too short ({len(raw)} bytes): {raw.hex()}")
    if raw[:3] != b"\x00\x00\xff":
        raise FrameError(f"bad preamble/start code {raw[:3].hex()}")
    if raw == ACK_FRAME:
        return Control.ACK
    if raw == NACK_FRAME:
        return Control.NACK
    length, lcs = raw[3], raw[4]
    if length == 0xFF and lcs == 0xFF:
        raise FrameError("extended information frames are not supported")
    if (length + lcs) & 0xFF:
        raise FrameError(f"length checksum mismatch: LEN {length:#04x} LCS {lcs:#04x}")
    if length == 0:
        raise FrameError("information frame without TFI")
    if len(raw) != length + 7:
        raise FrameError(f"frame is {len(raw)} bytes, LEN {length} needs {length + 7}")
    body = raw[5 : 5 + length]
    dcs = raw[5 + length]
    if (sum(body) + dcs) & 0xFF:
        raise FrameError(f"data checksum mismatch: DCS {dcs:#04x}")
    if raw[-1] != 0x00:
        raise FrameError(f"bad postamble {raw[-1]:#04x}")
    return Frame(tfi=body[0], data=bytes(body[1:]))


def parse_target_uid(params: bytes) -> bytes | None:
    """The UID from an InListPassiveTarget (106 kbps type A) answer; None when no card is there.

    ``params`` is ``NbTg [Tg SENS_RES(2) SEL_RES NFCIDLength NFCID... [ATS]]``.
    """
    if not params:
        raise Pn532Error("empty InListPassiveTarget answer")
    if params[0] == 0:
        return None
    if len(params) < 6:
        raise Pn532Error(f"truncated target data: {params.hex()}")
    uid_len = params[5]
    uid = params[6 : 6 + uid_len]
    if uid_len not in UID_LENGTHS or len(uid) != uid_len:
        raise Pn532Error(f"malformed UID (length {uid_len}) in target data {params.hex()}")
    return bytes(uid)


class Pn532Link:
    """Commands to one PN532 over an open serial port (blocking: worker thread only)."""

    def __init__(self, port: Any, *, ack_timeout_s: float, response_timeout_s: float) -> None:
        self.port = port
        self.ack_timeout_s = ack_timeout_s
        self.response_timeout_s = response_timeout_s

    def _read(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            if time.monotonic() >= deadline:
                raise Pn532Error(f"no answer from PN532 (got {bytes(out).hex() or 'nothing'})")
            out += self.port.read(n - len(out))
        return bytes(out)

    def read_frame(self, timeout_s: float) -> Frame | Control:
        """Read the next frame: sync on the ``00 FF`` start code, then validate it whole."""
        deadline = time.monotonic() + timeout_s
        previous = -1
        while True:
            byte = self._read(1, deadline)[0]
            if previous == 0x00 and byte == 0xFF:
                break
            previous = byte
        length, lcs = self._read(2, deadline)
        if (length, lcs) in ((0x00, 0xFF), (0xFF, 0x00)):
            rest = self._read(1, deadline)  # postamble of ACK / NACK
        elif (length + lcs) & 0xFF or length == 0:
            raise FrameError(f"length checksum mismatch: LEN {length:#04x} LCS {lcs:#04x}")
        else:
            rest = self._read(length + 2, deadline)
        return decode_frame(bytes([0x00, 0x00, 0xFF, length, lcs]) + rest)

    def command(self, code: int, params: bytes = b"", *, prefix: bytes = b"") -> bytes:
        """Send one command, wait for its ACK and response; returns the response parameters."""
        self.port.reset_input_buffer()  # late bytes from an earlier exchange must not pass as this answer
        self.port.write(prefix + encode_frame(TFI_HOST, bytes([code]) + params))
        self.port.flush()
        ack = self.read_frame(self.ack_timeout_s)
        if ack is not Control.ACK:
            raise Pn532Error(f"expected ACK for command {code:#04x}, got {ack}")
        answer = self.read_frame(self.response_timeout_s)
        if not isinstance(answer, Frame):
            raise Pn532Error(f"expected a response to command {code:#04x}, got {answer}")
        if answer.tfi == TFI_ERROR:
            raise Pn532Error(f"PN532 reported an application error for command {code:#04x}")
        if answer.tfi != TFI_PN532 or not answer.data or answer.data[0] != code + 1:
            raise Pn532Error(f"unexpected response {answer} to command {code:#04x}")
        return answer.data[1:]

    def setup(self) -> bytes:
        """Wake the PN532 from power-down, configure it; returns its firmware version bytes."""
        self.command(CMD_SAM_CONFIGURATION, b"\x01\x14\x01", prefix=WAKE_UP)  # normal mode, no SAM
        # MxRtyATR, MxRtyPSL, MxRtyPassiveActivation: few retries, so a poll without a card returns.
        self.command(CMD_RF_CONFIGURATION, b"\x05\xff\x01\x02")
        return self.command(CMD_GET_FIRMWARE_VERSION)

    def poll(self) -> bytes | None:
        """One InListPassiveTarget for a single 106 kbps type A card: its UID, or None."""
        return parse_target_uid(self.command(CMD_IN_LIST_PASSIVE_TARGET, b"\x01\x00"))


class Pn532Reader(ThreadedReader):
    """A PN532 on a serial port: polls for cards, one tap per presentation, reconnects on loss.

    A single bad frame is logged and the poll repeated; ``max_bad_polls`` failures in a row
    (no answer, corrupt frames) make the reader faulty and the port is reopened.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        poll_interval_s: float = 0.2,
        release_polls: int = 2,
        ack_timeout_s: float = 0.1,
        response_timeout_s: float = 1.0,
        max_bad_polls: int = 3,
        retry_s: float = 2.0,
        name: str = "pn532",
    ) -> None:
        super().__init__(name, retry_s=retry_s)
        self.expected_errors = (OSError, Pn532Error)  # pyserial's SerialException is an OSError
        self.port = port
        self.baudrate = baudrate
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.response_timeout_s = response_timeout_s
        self.max_bad_polls = max_bad_polls
        self._debounce = Debouncer(release_polls)

    def _open(self) -> Any:
        return serial.Serial(self.port, self.baudrate, timeout=0.05, write_timeout=1.0, exclusive=True)

    def _work(self) -> None:
        with self._open() as port:
            link = Pn532Link(port, ack_timeout_s=self.ack_timeout_s, response_timeout_s=self.response_timeout_s)
            version = link.setup()
            _log.info("%s on %s ready, firmware %s", self.name, self.port, version.hex())
            self._debounce.reset()
            self._healthy()
            bad = 0
            while not self._stop.is_set():
                try:
                    uid = link.poll()
                except (Pn532Error, serial.SerialTimeoutException) as exc:
                    bad += 1
                    _log.warning("%s: poll %d/%d failed: %s", self.name, bad, self.max_bad_polls, exc)
                    if bad >= self.max_bad_polls:
                        raise Pn532Error(f"{bad} polls in a row failed, last: {exc}") from exc
                    continue
                bad = 0
                new = self._debounce.seen(uid)
                if new is not None:
                    self._emit(new)
                self._stop.wait(self.poll_interval_s)


__all__ = [
    "ACK_FRAME",
    "NACK_FRAME",
    "TFI_HOST",
    "TFI_PN532",
    "Control",
    "Frame",
    "FrameError",
    "Pn532Error",
    "Pn532Link",
    "Pn532Reader",
    "decode_frame",
    "encode_frame",
    "parse_target_uid",
]
