"""A virtual contactless card for vsmartcard's vpcd: ``python rfid_vicc.py PORT UIDHEX [SW]``.

Runs Debian's python3-virtualsmartcard ``VirtualICC`` with a small card OS that answers the
PC/SC GET DATA pseudo-APDU ``FF CA 00 00 00`` with the UID and SW (default 9000), which the
stock card types do not. While this process is connected the card is on the reader; when it
exits the card is removed. Needs PYTHONPATH to include the virtualsmartcard package and PyPI
pycryptodome (VirtualICC imports ``Crypto``).
"""

from __future__ import annotations

import sys

from virtualsmartcard.VirtualSmartcard import SmartcardOS, VirtualICC  # type: ignore[import-not-found]

#: ATR of a MIFARE Classic 1K as PC/SC part 3 readers (e.g. ACR122U) report it.
ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")


class UidCardOS(SmartcardOS):  # type: ignore[misc]
    """Answers GET DATA (UID) only; everything else is "instruction not supported"."""

    def __init__(self, uid: bytes, sw: bytes) -> None:
        self.uid = uid
        self.sw = sw

    def getATR(self) -> bytes:  # vsmartcard's method name
        return ATR

    def execute(self, msg: bytes) -> bytes:
        if msg[:4] == b"\xff\xca\x00\x00":
            return (self.uid if self.sw == b"\x90\x00" else b"") + self.sw
        return b"\x6d\x00"


def main() -> None:
    port, uid = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
    sw = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else b"\x90\x00"
    icc = VirtualICC(None, "iso7816", "localhost", port)
    icc.os = UidCardOS(uid, sw)
    print("connected", flush=True)
    icc.run()


if __name__ == "__main__":
    main()
