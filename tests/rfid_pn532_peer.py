"""A fake PN532 on the far end of a pty, speaking the real HSU frame format.

Frames are built and checked here independently of hal.rfid.pn532, so a checksum bug in the
driver's codec cannot be mirrored by the peer. The port path is a symlink to the pty's slave,
so "the port disappears" (``unplug``) and "comes back" (``plug``) keep the same path.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from pathlib import Path

ACK = bytes.fromhex("0000ff00ff00")


def frame(tfi: int, data: bytes) -> bytes:
    """A PN532 normal information frame, checksums written out longhand."""
    length = len(data) + 1
    lcs = (0x100 - length) & 0xFF
    dcs = (0x100 - ((tfi + sum(data)) & 0xFF)) & 0xFF
    return b"\x00\x00\xff" + bytes([length, lcs, tfi]) + data + bytes([dcs, 0x00])


class FakePn532:
    """Answers SAMConfiguration, RFConfiguration, GetFirmwareVersion and InListPassiveTarget."""

    def __init__(self, link: Path) -> None:
        self.link = link
        #: The card in the field (UID bytes) or None.
        self.card: bytes | None = None
        #: When True the peer reads commands but never answers (a dead or unpowered PN532).
        self.silent = False
        #: When True the data checksum of every response frame is wrong.
        self.corrupt_dcs = False
        self.commands: list[int] = []
        self.polls = threading.Semaphore(0)  # released after each InListPassiveTarget answer
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- lifecycle -----------------------------------------------------------------------
    def plug(self) -> None:
        """Create the pty and the port symlink, and start answering."""
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._master, self._slave = master, slave
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(slave))
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(master,), daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        """Close the pty: the driver's reads fail and the port path is gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.link.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    # ---- protocol --------------------------------------------------------------------------
    def _serve(self, master: int) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.02)
            if not ready:
                continue
            try:
                chunk = os.read(master, 512)
            except OSError:
                return
            buf += chunk
            while True:
                start = buf.find(b"\x00\xff")
                if start < 0 or len(buf) < start + 4:
                    break
                length = buf[start + 2]
                end = start + 2 + 2 + length + 2  # LEN LCS, TFI+data, DCS, postamble
                if len(buf) < end:
                    break
                body = bytes(buf[start + 4 : start + 4 + length])
                del buf[:end]
                if body and body[0] == 0xD4 and len(body) >= 2:
                    self._answer(master, body[1], body[2:])

    def _answer(self, master: int, code: int, params: bytes) -> None:
        self.commands.append(code)
        if self.silent:
            return
        if code == 0x4A:
            # NbTg, then Tg, SENS_RES, SEL_RES (MIFARE 1K), NFCIDLength, NFCID
            card = self.card
            data = b"\x00" if card is None else b"\x01\x01\x00\x04\x08" + bytes([len(card)]) + card
        elif code == 0x02:
            data = b"\x32\x01\x06\x07"
        else:
            data = b""
        out = frame(0xD5, bytes([code + 1]) + data)
        if self.corrupt_dcs:
            out = out[:-2] + bytes([(out[-2] + 1) & 0xFF]) + out[-1:]
        os.write(master, ACK + out)
        if code == 0x4A:
            self.polls.release()
