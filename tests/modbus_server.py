"""A real Modbus RTU meter for tests: a pymodbus RTU server behind socat pty pairs, plus a fault injector.

Wiring (every arrow is a socat pty pair, i.e. a real tty that pyserial opens)::

    driver (minimalmodbus) <-> ctrl | proxy_ctrl <-> RtuProxy <-> proxy_meter | meter <-> pymodbus server

The proxy forwards whole frames and can, for the next N replies, drop them (silence), corrupt
their CRC, replace them with garbage, or deliver them late. Register values are encoded with
pymodbus's own converters (not the driver's decoder), so a wrong word or byte order shows.
Needs: ``socat`` (apt) and ``pymodbus==3.16.1`` (PyPI; its API changes between minor versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus import FramerType
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.meters.registers import MeterMap, Register

DATATYPE = ModbusClientMixin.DATATYPE
_PYMODBUS_TYPES = {
    "int16": DATATYPE.INT16,
    "uint16": DATATYPE.UINT16,
    "int32": DATATYPE.INT32,
    "uint32": DATATYPE.UINT32,
    "int64": DATATYPE.INT64,
    "uint64": DATATYPE.UINT64,
    "float32": DATATYPE.FLOAT32,
    "float64": DATATYPE.FLOAT64,
}


def socat_available() -> bool:
    return shutil.which("socat") is not None


class SocatPair:
    """Two linked ptys made by socat; bytes written to one end come out of the other."""

    def __init__(self, a: Path, b: Path) -> None:
        self.a, self.b = a, b
        self._proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while not (a.exists() and b.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("socat did not create its pty pair")
            time.sleep(0.005)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def encode(reg: Register, value: float) -> list[int]:
    """``value`` (in V, A, W or kWh) as the meter would hold it, encoded by pymodbus."""
    raw: float = value if reg.scale == 1.0 else value / reg.scale  # keep big integers exact
    if not reg.type.startswith("float"):
        raw = round(raw)
    words = ModbusClientMixin.convert_to_registers(raw, _PYMODBUS_TYPES[reg.type], word_order=reg.word_order)
    if reg.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def _frame_length(buf: bytes | bytearray) -> int | None:
    """Length of the RTU reply at the start of ``buf``, once known (FC 3/4 replies and exceptions)."""
    if len(buf) < 3:
        return None
    if buf[1] & 0x80:
        return 5
    if buf[1] in (3, 4):
        return 5 + buf[2]
    return len(buf)  # not expected from our server: pass it on as is


@dataclass
class RtuProxy:
    """Forwards requests to the server and replies back, applying the queued faults to replies."""

    ctrl_end: Path
    meter_end: Path
    late_s: float = 0.3
    faults: list[str] = field(default_factory=list)
    #: Every request as the driver sent it.
    requests: list[bytes] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray)

    def start(self) -> None:
        self._ctrl = self._open(self.ctrl_end)
        self._meter = self._open(self.meter_end)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._ctrl, self._on_request)
        self._loop.add_reader(self._meter, self._on_reply)

    def inject(self, fault: str, times: int = 1) -> None:
        """Apply ``fault`` ("silence", "bad_crc", "garbage", "late", "noise") to the next ``times`` replies."""
        assert fault in ("silence", "bad_crc", "garbage", "late", "noise"), fault
        self.faults.extend([fault] * times)

    def write_raw(self, data: bytes) -> None:
        """Unsolicited bytes towards the driver, as line noise would put them there."""
        os.write(self._ctrl, data)

    def close(self) -> None:
        for fd in (self._ctrl, self._meter):
            self._loop.remove_reader(fd)
            os.close(fd)

    @staticmethod
    def _open(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        return fd

    def _on_request(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._ctrl, 4096)
            self.requests.append(data)
            os.write(self._meter, data)

    def _on_reply(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._buf += os.read(self._meter, 4096)
        while (n := _frame_length(self._buf)) is not None and len(self._buf) >= n:
            frame, self._buf = bytes(self._buf[:n]), self._buf[n:]
            self._deliver(frame)

    def _deliver(self, frame: bytes) -> None:
        fault = self.faults.pop(0) if self.faults else None
        if fault is None:
            os.write(self._ctrl, frame)
        elif fault == "bad_crc":
            os.write(self._ctrl, frame[:-1] + bytes([frame[-1] ^ 0x5A]))
        elif fault == "garbage":
            os.write(self._ctrl, random.Random(len(frame)).randbytes(len(frame)))
        elif fault == "noise":  # stray bytes ahead of a good reply: the frame no longer lines up
            os.write(self._ctrl, b"\x00\xff\x13" + frame)
        elif fault == "late":
            self._loop.call_later(self.late_s, os.write, self._ctrl, frame)
        # "silence": drop it


class MeterServer:
    """pymodbus RTU server with one simulated meter per Modbus address, each laid out by a map.

    Only the map's registers exist: any other address answers exception 02 (illegal data address).
    """

    def __init__(self, port: Path, meters: Mapping[int, MeterMap]) -> None:
        self.port = port
        self.meters = dict(meters)
        #: (address, function code) -> {register: value}; applied to the server's memory on every read.
        self._values: dict[tuple[int, int], dict[int, int]] = {}
        #: A Modbus exception code to answer every request with, per address.
        self.fail_with: dict[int, ExcCodes] = {}
        self.reads: list[tuple[int, int, int, int]] = []
        self._server: ModbusSerialServer | None = None

    def set(self, address: int, quantity: str, value: float) -> None:
        meter_map = self.meters[address]
        reg = meter_map.registers[quantity]
        self.set_raw(address, reg.address, encode(reg, value))

    def set_raw(self, address: int, register: int, words: list[int]) -> None:
        values = self._values.setdefault((address, self.meters[address].function_code), {})
        for i, word in enumerate(words):
            values[register + i] = word

    async def start(self) -> None:
        devices = [self._device(address, meter_map) for address, meter_map in self.meters.items()]
        self._server = ModbusSerialServer(devices, framer=FramerType.RTU, port=str(self.port), baudrate=9600)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def _device(self, address: int, meter_map: MeterMap) -> SimDevice:
        spans = sorted({(r.address, r.count) for r in meter_map.registers.values()})
        regs = [SimData(start, count=count, values=0, datatype=DataType.REGISTERS) for start, count in spans]
        unused = [SimData(0xFFF0, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0xFFF0, values=False, datatype=DataType.BITS)]
        hr, ir = (regs, unused) if meter_map.function_code == 3 else (unused, regs)

        async def action(
            function_code: int,
            start_address: int,
            request_address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            self.reads.append((address, function_code, request_address, count))
            if address in self.fail_with:
                return self.fail_with[address]
            for register, word in self._values.get((address, function_code), {}).items():
                registers[register - start_address] = word
            return None

        return SimDevice(address, simdata=(list(bits), list(bits), hr, ir), action=action)
