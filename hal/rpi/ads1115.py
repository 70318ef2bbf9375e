"""TI ADS1115 16-bit I²C ADC over smbus2 (datasheet SBAS444; platform notes §4, §6).

Registers: conversion 0x00, config 0x01 (both big-endian 16-bit words). Each reading is one
single-shot conversion: write the config word with OS=1, wait for OS to read back 1, read the
conversion register. Block reads/writes are used because ``read_word_data`` is little-endian.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from hal.interfaces import DeviceError

REG_CONVERSION: Final = 0x00
REG_CONFIG: Final = 0x01

DEFAULT_ADDRESS: Final = 0x48  # ADDR pin to GND; 0x49 VDD, 0x4A SDA, 0x4B SCL

OS_START: Final = 0x8000  # write: start a single conversion; read: 1 = idle (conversion done)
MUX_SINGLE_ENDED: Final = 0b100  # 100..111 = AIN0..AIN3 against GND
MODE_SINGLE_SHOT: Final = 0x0100
COMPARATOR_DISABLED: Final = 0b00011  # COMP_QUE = 11, the other comparator bits at their reset values

#: PGA code (bits 11:9) -> full-scale range (V).
PGA_FULL_SCALE_V: Final = {0b000: 6.144, 0b001: 4.096, 0b010: 2.048, 0b011: 1.024, 0b100: 0.512, 0b101: 0.256}
#: Data-rate code (bits 7:5) -> samples per second.
DATA_RATE_SPS: Final = {0b000: 8, 0b001: 16, 0b010: 32, 0b011: 64, 0b100: 128, 0b101: 250, 0b110: 475, 0b111: 860}

CODE_MIN: Final = -32768
CODE_MAX: Final = 32767


class SmbusLike(Protocol):
    """The two smbus2.SMBus calls this driver uses."""

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...


def config_word(channel: int, *, pga: int = 0b001, data_rate: int = 0b111) -> int:
    """The config word that starts one single-shot conversion of AIN``channel`` against GND.

    Defaults: ±4.096 V, 860 SPS, comparator disabled; AIN0 gives 0xC3E3 (datasheet example).
    """
    if channel not in range(4):
        raise ValueError(f"ADS1115 channel must be 0..3, got {channel}")
    if pga not in PGA_FULL_SCALE_V:
        raise ValueError(f"PGA code must be 0..5, got {pga}")
    if data_rate not in DATA_RATE_SPS:
        raise ValueError(f"data-rate code must be 0..7, got {data_rate}")
    return (
        OS_START | ((MUX_SINGLE_ENDED | channel) << 12) | (pga << 9) | MODE_SINGLE_SHOT | (data_rate << 5)
    ) | COMPARATOR_DISABLED


def code_to_volts(code: int, pga: int) -> float:
    """Signed conversion code -> volts at the ADC pin for PGA setting ``pga``."""
    if not CODE_MIN <= code <= CODE_MAX:
        raise ValueError(f"ADS1115 code {code} out of range")
    return code * PGA_FULL_SCALE_V[pga] / 32768.0


def volts_to_code(volts: float, pga: int) -> int:
    """The code the ADC reports for ``volts`` (rounded, clipped to the 16-bit range)."""
    code = round(volts * 32768.0 / PGA_FULL_SCALE_V[pga])
    return max(CODE_MIN, min(CODE_MAX, code))


def decode_word(data: list[int]) -> int:
    """Two bytes from the bus, MSB first, as a signed 16-bit value."""
    if len(data) != 2 or not all(0 <= b <= 0xFF for b in data):
        raise ValueError(f"expected two bytes, got {data!r}")
    return int.from_bytes(bytes(data), "big", signed=True)


class Ads1115:
    """Single-shot reads of one ADS1115; blocking (about 1.2 ms per channel at 860 SPS).

    Call from a worker thread, never from the event loop.
    """

    def __init__(
        self,
        bus: SmbusLike,
        *,
        address: int = DEFAULT_ADDRESS,
        pga: int = 0b001,
        data_rate: int = 0b111,
        max_polls: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if address not in range(0x48, 0x4C):
            raise ValueError(f"ADS1115 address must be 0x48..0x4B, got {address:#x}")
        config_word(0, pga=pga, data_rate=data_rate)  # validates the codes
        self.bus = bus
        self.address = address
        self.pga = pga
        self.data_rate = data_rate
        self._max_polls = max_polls
        self._sleep = sleep
        self._conversion_s = 1.0 / DATA_RATE_SPS[data_rate]

    def read_code(self, channel: int) -> int:
        """One conversion of AIN``channel``: the signed raw code."""
        word = config_word(channel, pga=self.pga, data_rate=self.data_rate)
        try:
            self.bus.write_i2c_block_data(self.address, REG_CONFIG, [word >> 8, word & 0xFF])
            self._sleep(self._conversion_s)
            for _ in range(self._max_polls):
                status = decode_word(self.bus.read_i2c_block_data(self.address, REG_CONFIG, 2)) & 0xFFFF
                if status & OS_START:
                    return decode_word(self.bus.read_i2c_block_data(self.address, REG_CONVERSION, 2))
                self._sleep(self._conversion_s / 4)
        except OSError as exc:
            raise DeviceError("adc", f"ADS1115 at {self.address:#x}: I2C error on AIN{channel}: {exc}") from exc
        except ValueError as exc:
            raise DeviceError("adc", f"ADS1115 at {self.address:#x}: bad answer on AIN{channel}: {exc}") from exc
        raise DeviceError("adc", f"ADS1115 at {self.address:#x}: AIN{channel} conversion never completed")

    def read_volts(self, channel: int) -> float:
        """One conversion of AIN``channel`` in volts at the pin."""
        return code_to_volts(self.read_code(channel), self.pga)
