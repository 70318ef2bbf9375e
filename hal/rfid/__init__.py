"""RFID card reader drivers: PC/SC (pcscd + pyscard) and NXP PN532 over UART (pyserial).

Both yield raw UID bytes (ISO 14443-3 order); turning a UID into an idTag is the firmware's job.
The driver modules import their bus library lazily, so a PN532-only install needs no pyscard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hal.rfid.pcsc import PcscReader
    from hal.rfid.pn532 import Pn532Reader


def open_reader(kind: Literal["pcsc", "pn532"], port: str | None = None, **options: Any) -> PcscReader | Pn532Reader:
    """Build the configured reader; its worker starts when ``taps()`` is first iterated.

    ``port`` is the serial device for ``"pn532"`` (required) and an optional reader-name
    filter (substring) for ``"pcsc"``. ``options`` go to the driver's constructor.
    """
    if kind == "pcsc":
        from hal.rfid.pcsc import PcscReader

        return PcscReader(port, **options)
    if kind == "pn532":
        if not port:
            raise ValueError("a PN532 reader needs a serial port, e.g. /dev/serial0")
        from hal.rfid.pn532 import Pn532Reader

        return Pn532Reader(port, **options)
    raise ValueError(f"unknown card reader kind {kind!r} (expected 'pcsc' or 'pn532')")


__all__ = ["open_reader"]
