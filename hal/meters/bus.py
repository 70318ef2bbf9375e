"""One RS-485 Modbus RTU bus: a serial port that several meters share, one transaction at a time.

minimalmodbus is synchronous, so every transaction runs on the bus's single worker thread: the
event loop never blocks, and the one thread is also what serializes the bus (a second request
while a reply is on the wire would collide on a half-duplex RS-485 line). The port is opened
lazily and reopened after a serial error, so an unplugged USB adapter recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import minimalmodbus
import serial

from hal.meters.registers import MAX_REGISTERS_PER_READ

_log = logging.getLogger(__name__)
T = TypeVar("T")

PARITIES: Final = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
#: Waiting for the meter to start answering, on top of the time the reply takes on the wire.
DEFAULT_RESPONSE_TIMEOUT_S: Final = 0.3


class TransactionError(Exception):
    """One request got no usable reply. ``retryable`` is False for a definite refusal by the meter."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def char_time_s(baudrate: int) -> float:
    """One RTU character on the wire: 11 bits (start, 8 data, parity or 2nd stop, stop)."""
    return 11.0 / baudrate


def read_timeout_s(baudrate: int, registers: int, response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S) -> float:
    """The whole-reply read timeout: the meter's response time plus the reply's time on the wire, +50 %."""
    return response_timeout_s + 1.5 * (5 + 2 * registers) * char_time_s(baudrate)


class ModbusBus:
    """A serial port and the single thread that does every transaction on it."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        *,
        stopbits: int = 1,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        serial_factory: Callable[[], serial.Serial] = serial.Serial,
    ) -> None:
        if parity not in PARITIES:
            raise ValueError(f"parity must be one of {', '.join(PARITIES)}, got {parity!r}")
        if baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate}")
        if response_timeout_s <= 0:
            raise ValueError(f"response_timeout_s must be positive, got {response_timeout_s}")
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.response_timeout_s = response_timeout_s
        #: After a failed transaction, input is discarded until the line has been quiet this long.
        self.quiet_s = max(0.01, 8 * char_time_s(baudrate))
        self._serial_factory = serial_factory
        self._serial: serial.Serial | None = None
        self._instrument: minimalmodbus.Instrument | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"modbus-{port}")
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Transactions and failed transactions so far (for diagnostics).
        self.transactions = 0
        self.failures = 0

    @property
    def settings(self) -> tuple[int, str, int]:
        return self.baudrate, self.parity, self.stopbits

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the bus thread, after every job queued before it; ``job`` may transact freely."""
        if self._closed:
            raise TransactionError(f"bus {self.port} is closed", retryable=False)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_thread, job)

    def read_registers(self, address: int, start: int, count: int, function_code: int, retries: int = 1) -> list[int]:
        """One FC 0x03/0x04 read, retried up to ``retries`` times; only on the bus thread (inside :meth:`run`).

        Raises :class:`TransactionError` with the last attempt's failure.
        """
        if threading.current_thread() is not self._thread:
            raise RuntimeError("ModbusBus.read_registers runs only inside ModbusBus.run")
        last: TransactionError | None = None
        for _attempt in range(retries + 1):
            try:
                return self._read_once(address, start, count, function_code)
            except TransactionError as exc:
                self.failures += 1
                last = exc
                self._discard_late_bytes()
                if not exc.retryable:
                    break
        assert last is not None
        raise last

    async def aclose(self) -> None:
        """Close the port once queued transactions are done; later :meth:`run` calls fail."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_port)
        self._executor.shutdown(wait=True)

    def _in_thread(self, job: Callable[[], T]) -> T:
        self._thread = threading.current_thread()
        return job()

    def _read_once(self, address: int, start: int, count: int, function_code: int) -> list[int]:
        instrument = self._open()
        instrument.address = address
        self.transactions += 1
        timeout_s = read_timeout_s(self.baudrate, count, self.response_timeout_s)
        where = f"address {address} FC {function_code:#04x} {start:#06x}+{count}"
        assert self._serial is not None
        self._serial.timeout = timeout_s
        try:
            return list(instrument.read_registers(start, count, functioncode=function_code))
        except minimalmodbus.IllegalRequestError as exc:
            # Exception 01/02/03: the meter refuses this request and will again; the map is wrong.
            raise TransactionError(f"{where}: meter refused the request: {exc}", retryable=False) from exc
        except minimalmodbus.SlaveReportedException as exc:  # busy, device failure: may pass
            raise TransactionError(f"{where}: meter reported an error: {exc}") from exc
        except minimalmodbus.NoResponseError as exc:
            raise TransactionError(f"{where}: no reply within {timeout_s:.3f} s") from exc
        except minimalmodbus.InvalidResponseError as exc:
            raise TransactionError(f"{where}: invalid reply (CRC, framing or garbage): {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            self._close_port()  # reopened on the next transaction
            raise TransactionError(f"{where}: serial port error: {exc}") from exc
        except (ValueError, TypeError) as exc:  # minimalmodbus's payload checks on a malformed reply
            raise TransactionError(f"{where}: malformed reply: {exc}") from exc

    def _open(self) -> minimalmodbus.Instrument:
        if self._instrument is not None:
            return self._instrument
        try:
            ser = self._serial_factory()
            ser.port = self.port
            ser.baudrate = self.baudrate
            ser.parity = PARITIES[self.parity]
            ser.bytesize = serial.EIGHTBITS
            ser.stopbits = self.stopbits
            ser.timeout = read_timeout_s(self.baudrate, MAX_REGISTERS_PER_READ, self.response_timeout_s)
            ser.write_timeout = ser.timeout
            ser.exclusive = True  # flock: a second process on the same bus would garble both
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransactionError(f"cannot open {self.port}: {exc}") from exc
        instrument = minimalmodbus.Instrument(ser, 1)
        instrument.clear_buffers_before_each_transaction = True
        self._serial, self._instrument = ser, instrument
        _log.info("opened Modbus RTU bus %s at %d %s", self.port, self.baudrate, self.parity)
        return instrument

    def _discard_late_bytes(self) -> None:
        """Swallow a late or overlong reply so it cannot pass for the answer to the next request."""
        ser = self._serial
        if ser is None:
            return
        try:
            ser.timeout = self.quiet_s
            for _ in range(64):
                if not ser.read(256):
                    break
            ser.reset_input_buffer()
        except (serial.SerialException, OSError):
            self._close_port()

    def _close_port(self) -> None:
        ser, self._serial, self._instrument = self._serial, None, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as exc:
                _log.debug("closing %s: %s", self.port, exc)


class BusRegistry:
    """One :class:`ModbusBus` per serial port, so meters on the same RS-485 line share it."""

    def __init__(self, bus_factory: Callable[..., ModbusBus] = ModbusBus) -> None:
        self._bus_factory = bus_factory
        self._buses: dict[str, ModbusBus] = {}
        self._users: dict[str, int] = {}

    def acquire(self, port: str, baudrate: int, parity: str, **kwargs: object) -> ModbusBus:
        """The bus on ``port``, created on first use; a port has one line setting for all its meters."""
        bus = self._buses.get(port)
        if bus is None:
            bus = self._bus_factory(port, baudrate, parity, **kwargs)
            self._buses[port] = bus
            self._users[port] = 0
        elif (bus.baudrate, bus.parity) != (baudrate, parity):
            raise ValueError(
                f"{port} is already open at {bus.baudrate} baud parity {bus.parity}; "
                f"meters sharing a bus need the same settings (got {baudrate} {parity})"
            )
        self._users[port] += 1
        return bus

    async def release(self, bus: ModbusBus) -> None:
        """One user is done with ``bus``; the last one closes it."""
        if self._buses.get(bus.port) is not bus:
            return
        self._users[bus.port] -= 1
        if self._users[bus.port] <= 0:
            del self._buses[bus.port], self._users[bus.port]
            await bus.aclose()

    async def aclose(self) -> None:
        """Close every bus (at shutdown)."""
        buses = list(self._buses.values())
        self._buses.clear()
        self._users.clear()
        for bus in buses:
            await bus.aclose()

    def __contains__(self, port: object) -> bool:
        return port in self._buses


#: The process-wide registry that :func:`hal.meters.open_meter` uses by default.
DEFAULT_REGISTRY: Final = BusRegistry()
