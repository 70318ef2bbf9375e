"""PC/SC readers (e.g. ACS ACR122U) through pcscd and pyscard.

The worker thread watches every reader and the PnP pseudo-reader with ``SCardGetStatusChange``
and reads each newly present card's UID with the GET DATA pseudo-APDU ``FF CA 00 00 00``.
pyscard's ``CardMonitor`` is not used: in pyscard 2.3.1 its monitoring thread stops for good
on ``SCARD_E_NO_SERVICE`` (pcscd restarted, or Debian's socket-activated pcscd auto-exiting)
and, being a process-wide singleton, cannot be started again; this loop instead releases the
context and establishes a new one, so an unplugged reader or a restarted pcscd recovers
without restarting the firmware.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from smartcard import scard

from hal.rfid._bridge import ThreadedReader

_log = logging.getLogger(__name__)

GET_UID_APDU: Final = [0xFF, 0xCA, 0x00, 0x00, 0x00]
PNP_READER: Final = "\\\\?PnP?\\Notification"
#: Results that mean the context is gone (pcscd stopped or restarted).
_CONTEXT_LOST: Final = frozenset(
    {
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_E_INVALID_HANDLE,
        scard.SCARD_F_COMM_ERROR,
    }
)
#: Results after which the reader list is read again.
_READERS_CHANGED: Final = frozenset(
    {scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_NO_READERS_AVAILABLE}
)


class PcscError(Exception):
    """A PC/SC call failed; the message carries pcsc-lite's text for the result code."""

    def __init__(self, what: str, hresult: int) -> None:
        super().__init__(f"{what}: {scard.SCardGetErrorMessage(hresult)} ({hresult & 0xFFFFFFFF:#010x})")
        self.hresult = hresult


def _check(what: str, hresult: int) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise PcscError(what, hresult)


def read_uid(context: Any, reader: str) -> bytes:
    """Connect to the card on ``reader`` and return its UID (GET DATA, SW 90 00 required)."""
    hresult, card, protocol = scard.SCardConnect(
        context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
    )
    _check(f"connect to card on {reader!r}", hresult)
    try:
        hresult, response = scard.SCardTransmit(card, protocol, GET_UID_APDU)
        _check(f"GET DATA (UID) on {reader!r}", hresult)
    finally:
        scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
    if len(response) < 2:
        raise PcscError(f"GET DATA (UID) on {reader!r}: short response {bytes(response).hex()}", 0)
    sw = bytes(response[-2:])
    if sw != b"\x90\x00":
        raise ValueError(f"card on {reader!r} refused GET DATA (UID): SW {sw.hex(' ').upper()}")
    uid = bytes(response[:-2])
    if not uid:
        raise ValueError(f"card on {reader!r} returned an empty UID")
    return uid


class PcscReader(ThreadedReader):
    """Cards on PC/SC readers: one tap per insertion, readers and pcscd may come and go.

    ``reader_filter`` (a substring of the reader name) picks the readers to watch; with no
    matching reader the reader is faulty. A card already on a reader when it is first seen
    is not a tap: a card left on the reader must not start a session at every reconnect.
    """

    def __init__(
        self,
        reader_filter: str | None = None,
        *,
        status_timeout_s: float = 1.0,
        retry_s: float = 1.0,
        name: str = "pcsc",
    ) -> None:
        super().__init__(name, retry_s=retry_s)
        self.expected_errors = (OSError, PcscError)
        self.reader_filter = reader_filter
        self.status_timeout_s = status_timeout_s
        self._context: Any = None
        self._watched: frozenset[str] = frozenset()  # snapshot for the event loop, replaced whole

    def _interrupt(self) -> None:
        context = self._context
        if context is not None:
            scard.SCardCancel(context)

    def _list_readers(self, context: Any) -> list[str]:
        hresult, readers = scard.SCardListReaders(context, [])
        if hresult in (scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_READER_UNAVAILABLE):
            return []
        _check("list readers", hresult)
        return [r for r in readers if self.reader_filter is None or self.reader_filter in r]

    def _work(self) -> None:
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check("establish PC/SC context (is pcscd running?)", hresult)
        self._context = context
        try:
            self._watch(context)
        finally:
            self._context = None
            self._watched = frozenset()
            scard.SCardReleaseContext(context)

    @property
    def watched_readers(self) -> frozenset[str]:
        """Readers whose state the worker knows and waits on; a card arriving there is a tap."""
        return self._watched

    def _watch(self, context: Any) -> None:
        states: dict[str, int] = {}  # reader -> last event state we acknowledged
        pnp_state = scard.SCARD_STATE_UNAWARE
        use_pnp = True
        readers = self._list_readers(context)
        while not self._stop.is_set():
            if not readers:
                self._failed("no PC/SC reader" + (f" matching {self.reader_filter!r}" if self.reader_filter else ""))
            else:
                self._healthy()
            for gone in set(states) - set(readers):
                _log.warning("%s: reader %r removed", self.name, gone)
                del states[gone]
            self._watched = frozenset(states)
            query = [(r, states.get(r, scard.SCARD_STATE_UNAWARE)) for r in readers]
            if use_pnp:
                query.append((PNP_READER, pnp_state))
            if not query:  # nothing to wait on: poll the reader list
                self._stop.wait(self.status_timeout_s)
                readers = self._list_readers(context)
                continue
            hresult, events = scard.SCardGetStatusChange(context, int(self.status_timeout_s * 1000), query)
            if hresult in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
                # pcsc-lite 1.9 does not flag every plug on the PnP pseudo-reader: poll the list too.
                readers = self._list_readers(context)
                continue
            if hresult in _READERS_CHANGED:
                readers = self._list_readers(context)
                continue
            if hresult in _CONTEXT_LOST:
                raise PcscError("wait for card events", hresult)
            _check("wait for card events", hresult)
            relist = False
            for reader, event, _atr in events:
                if reader == PNP_READER:
                    if event & scard.SCARD_STATE_UNKNOWN:
                        use_pnp = False  # this pcscd has no PnP notifications
                    relist = relist or bool(event & scard.SCARD_STATE_CHANGED)
                    pnp_state = event & ~scard.SCARD_STATE_CHANGED
                    continue
                relist = self._reader_event(context, reader, event, states) or relist
            if relist:
                readers = self._list_readers(context)
                _log.info("%s: readers now %s", self.name, readers)

    def _reader_event(self, context: Any, reader: str, event: int, states: dict[str, int]) -> bool:
        """Handle one reader's new state; True when the reader is gone (the list must be read again)."""
        previous = states.get(reader)
        states[reader] = event & ~scard.SCARD_STATE_CHANGED
        if event & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
            states.pop(reader, None)
            return True
        present = bool(event & scard.SCARD_STATE_PRESENT) and not event & scard.SCARD_STATE_MUTE
        if previous is None:
            _log.info("%s: reader %r found%s", self.name, reader, ", a card is on it (ignored)" if present else "")
            return False
        # pcsc-lite counts insertions and removals in the high word: the same count while present
        # means the same presentation (e.g. only the in-use bit changed); a new count means the card
        # was lifted and tapped again between two of our waits.
        same_presentation = bool(previous & scard.SCARD_STATE_PRESENT) and (previous >> 16) == (event >> 16)
        if not present or same_presentation:
            return False
        try:
            uid = read_uid(context, reader)
        except (PcscError, ValueError) as exc:
            _log.warning("%s: card on %r unreadable: %s", self.name, reader, exc)
            return False
        self._emit(uid)
        return False


__all__ = ["GET_UID_APDU", "PcscError", "PcscReader", "read_uid"]
