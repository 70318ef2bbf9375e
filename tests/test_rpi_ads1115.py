"""ADS1115 driver over a real smbus2.SMBus whose two block-transfer calls are replaced by pytest-mock."""

from __future__ import annotations

from unittest.mock import call

import pytest
import smbus2
from hypothesis import given
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from hal.interfaces import DeviceError
from hal.rpi.ads1115 import (
    DATA_RATE_SPS,
    PGA_FULL_SCALE_V,
    Ads1115,
    code_to_volts,
    config_word,
    decode_word,
    volts_to_code,
)

codes = st.integers(min_value=-32768, max_value=32767)
pgas = st.sampled_from(sorted(PGA_FULL_SCALE_V))


class Bus:
    """An unopened SMBus (no /dev/i2c-*) with the lowest calls mocked."""

    def __init__(self, mocker: MockerFixture, reads: list[list[int]] | None = None) -> None:
        self.smbus = smbus2.SMBus()  # bus=None: nothing is opened
        self.write = mocker.patch.object(self.smbus, "write_i2c_block_data", autospec=True)
        self.read = mocker.patch.object(self.smbus, "read_i2c_block_data", autospec=True, side_effect=reads)


def adc_for(bus: Bus, sleeps: list[float] | None = None, **kwargs: int) -> Ads1115:
    record = sleeps if sleeps is not None else []
    return Ads1115(bus.smbus, sleep=record.append, **kwargs)


@pytest.mark.parametrize(
    ("channel", "word"),
    [(0, 0xC3E3), (1, 0xD3E3), (2, 0xE3E3), (3, 0xF3E3)],
)
def test_single_shot_config_word_per_channel_is_written_big_endian(
    mocker: MockerFixture, channel: int, word: int
) -> None:
    bus = Bus(mocker, reads=[[word >> 8, word & 0xFF], [0x12, 0x34]])
    adc = adc_for(bus)
    assert adc.read_code(channel) == 0x1234
    assert bus.write.call_args_list == [call(0x48, 0x01, [word >> 8, word & 0xFF])]
    assert bus.read.call_args_list == [call(0x48, 0x01, 2), call(0x48, 0x00, 2)]


def test_config_word_fields_match_the_datasheet() -> None:
    assert config_word(0) == 0xC3E3  # platform notes' worked example
    # ±6.144 V, 8 SPS on AIN3: OS | MUX 111 | PGA 000 | MODE 1 | DR 000 | COMP 00011
    assert config_word(3, pga=0b000, data_rate=0b000) == 0b1_111_000_1_000_00011
    # ±2.048 V (reset PGA), 128 SPS (reset DR) on AIN1
    assert config_word(1, pga=0b010, data_rate=0b100) == 0b1_101_010_1_100_00011
    for bad in ({"channel": 4}, {"channel": -1}):
        with pytest.raises(ValueError):
            config_word(bad["channel"])
    with pytest.raises(ValueError):
        config_word(0, pga=6)
    with pytest.raises(ValueError):
        config_word(0, data_rate=8)


def test_waits_for_the_conversion_then_polls_os_bit(mocker: MockerFixture) -> None:
    busy, done = [0x43, 0xE3], [0xC3, 0xE3]
    bus = Bus(mocker, reads=[busy, busy, done, [0x80, 0x00]])
    sleeps: list[float] = []
    adc = adc_for(bus, sleeps)
    assert adc.read_volts(0) == pytest.approx(-4.096)
    assert bus.read.call_args_list == [call(0x48, 0x01, 2)] * 3 + [call(0x48, 0x00, 2)]
    assert sleeps[0] == pytest.approx(1 / 860)
    assert len(sleeps) == 3


@pytest.mark.parametrize(
    ("raw", "code", "volts"),
    [
        ([0x7F, 0xFF], 32767, 4.096 * 32767 / 32768),
        ([0x00, 0x01], 1, 0.000125),
        ([0x00, 0x00], 0, 0.0),
        ([0xFF, 0xFF], -1, -0.000125),
        ([0xFF, 0x38], -200, -0.025),
        ([0x80, 0x00], -32768, -4.096),
    ],
)
def test_raw_codes_to_volts_including_negative(mocker: MockerFixture, raw: list[int], code: int, volts: float) -> None:
    bus = Bus(mocker, reads=[[0xE3, 0xE3], raw])
    adc = adc_for(bus)
    assert adc.read_volts(2) == pytest.approx(volts, abs=1e-12)
    assert decode_word(raw) == code


def test_pga_and_address_are_used(mocker: MockerFixture) -> None:
    bus = Bus(mocker, reads=[[0xD5, 0xE3], [0x40, 0x00]])
    adc = adc_for(bus, address=0x4A, pga=0b010, data_rate=0b111)
    assert adc.read_volts(1) == pytest.approx(1.024)  # 16384 codes at ±2.048 V
    assert bus.write.call_args_list == [call(0x4A, 0x01, [0xD5, 0xE3])]


def test_conversion_that_never_finishes_is_a_device_error(mocker: MockerFixture) -> None:
    bus = Bus(mocker, reads=[[0x43, 0xE3]] * 4)
    adc = adc_for(bus, max_polls=4)
    with pytest.raises(DeviceError, match="never completed") as info:
        adc.read_code(0)
    assert info.value.kind == "adc"
    assert bus.read.call_count == 4


def test_i2c_error_is_a_device_error(mocker: MockerFixture) -> None:
    bus = Bus(mocker)
    bus.write.side_effect = OSError(121, "Remote I/O error")
    with pytest.raises(DeviceError, match="Remote I/O error"):
        adc_for(bus).read_code(0)


def test_short_answer_is_a_device_error(mocker: MockerFixture) -> None:
    bus = Bus(mocker, reads=[[0xC3]])
    with pytest.raises(DeviceError, match="bad answer"):
        adc_for(bus).read_code(0)


def test_bad_address_is_refused(mocker: MockerFixture) -> None:
    with pytest.raises(ValueError):
        Ads1115(Bus(mocker).smbus, address=0x50)


@given(code=codes, pga=pgas)
def test_code_volts_round_trip(code: int, pga: int) -> None:
    volts = code_to_volts(code, pga)
    assert volts_to_code(volts, pga) == code
    assert -PGA_FULL_SCALE_V[pga] <= volts < PGA_FULL_SCALE_V[pga]


@given(volts=st.floats(min_value=-6.144, max_value=6.144), pga=pgas)
def test_volts_code_error_is_within_half_an_lsb_or_clipped(volts: float, pga: int) -> None:
    fs = PGA_FULL_SCALE_V[pga]
    lsb = fs / 32768
    back = code_to_volts(volts_to_code(volts, pga), pga)
    if -fs <= volts <= fs - lsb:
        assert abs(back - volts) <= lsb / 2 + 1e-12
    else:
        assert back == (-fs if volts < 0 else fs - lsb)


@given(code=codes)
def test_decode_word_is_signed_big_endian(code: int) -> None:
    assert decode_word(list(code.to_bytes(2, "big", signed=True))) == code


@given(channel=st.integers(0, 3), pga=pgas, rate=st.sampled_from(sorted(DATA_RATE_SPS)))
def test_config_word_decodes_back(channel: int, pga: int, rate: int) -> None:
    word = config_word(channel, pga=pga, data_rate=rate)
    assert word >> 15 == 1
    assert (word >> 12) & 0b111 == 0b100 | channel
    assert (word >> 9) & 0b111 == pga
    assert (word >> 8) & 1 == 1
    assert (word >> 5) & 0b111 == rate
    assert word & 0b11111 == 0b00011
