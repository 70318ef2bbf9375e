"""The Modbus RTU meter drivers against a real pymodbus RTU server over socat ptys (see modbus_server.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from modbus_server import MeterServer, RtuProxy, SocatPair
from pymodbus.constants import ExcCodes

from hal.interfaces import Closeable, DeviceError, MeterReading
from hal.meters import BusRegistry, ModbusEnergyMeter, meter_map, open_meter
from hal.meters.registers import MeterMap

#: Short enough to keep failure tests fast, long enough for a loaded CI machine to answer in.
RESPONSE_TIMEOUT_S = 0.08

#: Per shipped model: a value per mapped quantity, chosen so every quantity differs.
VALUES: Mapping[str, float] = {
    "voltage_l1": 229.5,
    "voltage_l2": 231.2,
    "voltage_l3": 0.0,
    "current_l1": 15.87,
    "current_l2": 6.02,
    "current_l3": 31.5,
    "power_l1": 3642.1,
    "power_l2": -1391.8,
    "power_l3": 2.5,
    "total_power": 2252.8,
    "energy_import": 12345.6,
}
MODELS = ("sdm630", "sdm120", "sdm72", "abb-b23", "em340")


class Rig:
    """socat ptys, the fault-injecting proxy and the pymodbus server; the driver opens ``ctrl``."""

    def __init__(self, tmp: Path, meters: Mapping[int, MeterMap]) -> None:
        self.tmp = tmp
        self.ctrl = str(tmp / "ctrl")
        self.pairs = [SocatPair(tmp / "ctrl", tmp / "proxy-ctrl"), SocatPair(tmp / "proxy-meter", tmp / "meter")]
        self.proxy = RtuProxy(tmp / "proxy-ctrl", tmp / "proxy-meter")
        self.server = MeterServer(tmp / "meter", meters)
        self.registry = BusRegistry()
        self.now = 100.0

    def open(self, model: str, address: int, **kwargs: Any) -> ModbusEnergyMeter:
        kwargs.setdefault("response_timeout_s", RESPONSE_TIMEOUT_S)
        return open_meter(
            model, self.ctrl, 9600, "N", address, bus_registry=self.registry, clock=lambda: self.now, **kwargs
        )

    async def start(self) -> None:
        self.proxy.start()
        await self.server.start()

    async def close(self) -> None:
        await self.registry.aclose()
        await self.server.stop()
        self.proxy.close()
        for pair in self.pairs:
            pair.close()


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[[Mapping[int, MeterMap]], Any]]:
    rigs: list[Rig] = []

    async def make(meters: Mapping[int, MeterMap]) -> Rig:
        rig = Rig(tmp_path, meters)
        rigs.append(rig)
        await rig.start()
        return rig

    yield make
    for rig in rigs:
        await rig.close()


def expect(meter_map: MeterMap, reading: MeterReading, values: Mapping[str, float]) -> None:
    """``reading`` holds ``values`` for every mapped quantity, to the register's resolution."""

    def close(quantity: str, got: float | None) -> None:
        reg = meter_map.registers.get(quantity)
        if reg is None:
            assert got is None, quantity
            return
        assert got is not None, quantity
        want = values[quantity] * (1000.0 if quantity == "energy_import" else 1.0)
        if reg.type.startswith("float"):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-9), quantity
        else:
            step = reg.scale * (1000.0 if quantity == "energy_import" else 1.0)
            assert abs(got - want) <= step / 2 + 1e-9, quantity

    for n, phase in enumerate(("l1", "l2", "l3")):
        close(f"voltage_{phase}", reading.voltage_v[n])
        close(f"current_{phase}", reading.current_a[n])
        close(f"power_{phase}", reading.power_w[n])
    close("energy_import", reading.energy_import_wh)
    if "total_power" in meter_map.registers:
        close("total_power", reading.total_power_w)


@pytest.mark.parametrize("model", MODELS)
async def test_every_map_reads_back_what_the_meter_holds(make_rig: Any, model: str) -> None:
    mapping = meter_map(model)
    rig: Rig = await make_rig({7: mapping})
    for quantity in mapping.registers:
        rig.server.set(7, quantity, VALUES[quantity])
    meter = rig.open(model, 7)
    assert isinstance(meter, Closeable)  # the composition root closes it at shutdown
    reading = await meter.read()
    expect(mapping, reading, VALUES)
    assert reading.taken_at == 100.0
    if "total_power" not in mapping.registers:  # SDM120: the total is the one phase
        assert reading.total_power_w == reading.power_w[0]
    # One request per planned block, each with the map's function code: contiguous values share a request.
    assert [(a, fc) for a, fc, _, _ in rig.server.reads] == [(7, mapping.function_code)] * len(mapping.blocks)
    assert [(s, c) for _, _, s, c in rig.server.reads] == [(b.start, b.count) for b in mapping.blocks]

    # The import register moves on: the next read follows it.
    rig.server.set(7, "energy_import", 12346.0)
    rig.now = 101.0
    again = await meter.read()
    assert again.energy_import_wh == pytest.approx(12346.0 * 1000.0, abs=mapping.registers["energy_import"].scale * 500)
    assert again.taken_at == 101.0


async def test_request_frame_is_the_documented_rtu_frame(make_rig: Any) -> None:
    """standards.md §5.1: reading V L1 of an SDM at address 1 is ``01 04 00 00 00 02 71 CB``."""
    rig: Rig = await make_rig({1: meter_map("sdm120")})
    rig.server.set(1, "energy_import", 1.0)
    await rig.open("sdm120", 1).read()
    assert rig.proxy.requests[0] == bytes.fromhex("01 04 00 00 00 02 71 CB")


CUSTOM_MAP: dict[str, object] = {
    "name": "odd meter",
    "function_code": 3,
    "defaults": {"type": "int32", "word_order": "little", "byte_order": "little", "scale": 0.1},
    "registers": {
        "voltage_l1": {"address": 100, "type": "uint16"},
        "voltage_l2": {"address": 101, "type": "int16", "byte_order": "big"},
        "current_l1": {"address": 102, "type": "float32", "scale": 1.0},
        "current_l3": {"address": 104, "type": "float64", "word_order": "big", "scale": 1.0},
        "power_l1": {"address": 200},
        "power_l2": {"address": 202, "type": "int64", "scale": 0.01},
        "energy_import": {"address": 300, "type": "uint64", "word_order": "big", "scale": 0.001},
    },
}


async def test_custom_map_from_a_dict(make_rig: Any) -> None:
    mapping = meter_map("custom", CUSTOM_MAP)
    assert [(b.start, b.count) for b in mapping.blocks] == [(100, 8), (200, 6), (300, 4)]
    rig: Rig = await make_rig({3: mapping})
    values = dict(VALUES, current_l1=15.875, power_l1=-3642.1, energy_import=987654.321)
    for quantity in mapping.registers:
        rig.server.set(3, quantity, values[quantity])
    reading = await rig.open("custom", 3, custom_map=CUSTOM_MAP).read()
    expect(mapping, reading, values)
    assert reading.total_power_w == pytest.approx(values["power_l1"] + values["power_l2"])
    assert reading.voltage_v[2] is None and reading.current_a[1] is None and reading.power_w[2] is None


async def test_illegal_address_exception_is_a_device_error_without_retries(make_rig: Any) -> None:
    """A map that spans registers the meter does not have gets exception 02; retrying would not help."""
    rig: Rig = await make_rig({1: meter_map("sdm630")})
    greedy = {
        "function_code": 4,
        "max_gap": 100,  # 0x12..0x33 do not exist on the server
        "registers": {"voltage_l1": {"address": 0}, "power_l1": {"address": 0x0C}, "energy_import": {"address": 0x48}},
    }
    meter = rig.open("custom", 1, custom_map=greedy, retries=3)
    with pytest.raises(DeviceError) as caught:
        await meter.read()
    assert caught.value.kind == "meter"
    assert "refused" in str(caught.value) and "illegal data address" in str(caught.value)
    assert len(rig.proxy.requests) == 1
    assert meter.consecutive_failures == 1


async def test_device_failure_exception_is_retried_and_recovers(make_rig: Any) -> None:
    rig: Rig = await make_rig({1: meter_map("sdm630")})
    rig.server.set(1, "energy_import", 5.0)
    meter = rig.open("sdm630", 1, retries=2, kind="grid-meter")
    rig.server.fail_with[1] = ExcCodes.DEVICE_FAILURE
    with pytest.raises(DeviceError) as caught:
        await meter.read()
    assert caught.value.kind == "grid-meter"
    assert "device failure" in str(caught.value)
    assert len(rig.server.reads) == 3  # first block, 1 + 2 retries; the other blocks are not tried
    del rig.server.fail_with[1]
    assert (await meter.read()).energy_import_wh == 5000.0
    assert meter.consecutive_failures == 0


async def test_silence_while_the_server_is_down_then_recovery(make_rig: Any) -> None:
    rig: Rig = await make_rig({1: meter_map("em340")})
    rig.server.set(1, "energy_import", 42.0)
    meter = rig.open("em340", 1)
    assert (await meter.read()).energy_import_wh == 42000.0
    await rig.server.stop()
    for n in range(1, 4):
        with pytest.raises(DeviceError, match="no reply"):
            await meter.read()
        assert meter.consecutive_failures == n
    await rig.server.start()
    rig.server.set(1, "energy_import", 42.5)
    assert (await meter.read()).energy_import_wh == 42500.0
    assert meter.consecutive_failures == 0


@pytest.mark.parametrize(("fault", "message"), [("bad_crc", "invalid reply"), ("garbage", "invalid reply")])
async def test_corrupt_replies_are_retried_then_fail_then_recover(make_rig: Any, fault: str, message: str) -> None:
    rig: Rig = await make_rig({1: meter_map("abb-b23")})
    rig.server.set(1, "energy_import", 77.7)
    meter = rig.open("abb-b23", 1, retries=1)
    blocks = len(meter.map.blocks)

    rig.proxy.inject(fault)  # one bad reply: the retry gets a good one
    assert (await meter.read()).energy_import_wh == pytest.approx(77700.0)
    assert len(rig.proxy.requests) == blocks + 1
    assert meter.consecutive_failures == 0

    rig.proxy.inject(fault, times=2)  # both attempts bad: the read fails, never half a reading
    with pytest.raises(DeviceError, match=message):
        await meter.read()
    assert meter.consecutive_failures == 1

    assert (await meter.read()).energy_import_wh == pytest.approx(77700.0)
    assert meter.consecutive_failures == 0


async def test_line_noise_before_a_reply(make_rig: Any) -> None:
    rig: Rig = await make_rig({1: meter_map("sdm630")})
    rig.server.set(1, "voltage_l1", 230.0)
    rig.server.set(1, "energy_import", 1.0)
    meter = rig.open("sdm630", 1, retries=0)
    rig.proxy.inject("noise")
    with pytest.raises(DeviceError):
        await meter.read()
    rig.proxy.write_raw(b"\x55\xaa\x00")  # stray bytes between transactions are flushed too
    await asyncio.sleep(0.02)
    assert (await meter.read()).voltage_v[0] == 230.0


async def test_a_late_reply_never_passes_for_a_later_answer(make_rig: Any) -> None:
    """The reply comes after the timeout, carrying old values: the next read must not take it."""
    rig: Rig = await make_rig({1: meter_map("sdm120")})
    rig.server.set(1, "voltage_l1", 111.0)
    rig.server.set(1, "energy_import", 1.0)
    meter = rig.open("sdm120", 1, retries=0)
    rig.proxy.late_s = 0.25
    rig.proxy.inject("late")
    with pytest.raises(DeviceError, match="no reply"):
        await meter.read()
    rig.server.set(1, "voltage_l1", 222.0)
    await asyncio.sleep(0.3)  # the stale frame (V = 111) is now waiting in the driver's input buffer
    assert (await meter.read()).voltage_v[0] == 222.0


async def test_two_meters_share_one_bus(make_rig: Any) -> None:
    """Charger meter and grid meter on one RS-485 line: one port, one transaction at a time."""
    sdm, em = meter_map("sdm630"), meter_map("em340")
    rig: Rig = await make_rig({1: sdm, 2: em})
    charger, grid = rig.open("sdm630", 1), rig.open("em340", 2, kind="grid-meter")
    assert charger.bus is grid.bus
    for i in range(3):  # alternately, values changing between reads
        rig.server.set(1, "energy_import", 100.0 + i)
        rig.server.set(2, "energy_import", 200.0 + i)
        assert (await charger.read()).energy_import_wh == pytest.approx((100.0 + i) * 1000)
        assert (await grid.read()).energy_import_wh == pytest.approx((200.0 + i) * 1000)
    # Concurrent reads from two tasks queue on the bus; each meter's blocks stay together.
    rig.server.reads.clear()
    results = await asyncio.gather(*[m.read() for _ in range(4) for m in (charger, grid)])
    assert [r.energy_import_wh for r in results] == pytest.approx([102000.0, 202000.0] * 4)
    runs = [(address, len(list(group))) for address, group in groupby(a for a, *_ in rig.server.reads)]
    assert runs == [(1, len(sdm.blocks)), (2, len(em.blocks))] * 4
    # One meter failing does not take the other down.
    rig.server.fail_with[2] = ExcCodes.DEVICE_BUSY
    with pytest.raises(DeviceError):
        await grid.read()
    assert (await charger.read()).energy_import_wh == pytest.approx(102000.0)


async def test_reads_never_block_the_event_loop(make_rig: Any) -> None:
    rig: Rig = await make_rig({1: meter_map("sdm630")})
    meter = rig.open("sdm630", 1, retries=1)
    await rig.server.stop()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeviceError):
        await meter.read()
    elapsed = loop.time() - started
    task.cancel()
    assert elapsed >= 2 * RESPONSE_TIMEOUT_S
    assert ticks >= elapsed / 0.01 / 3  # the loop kept running while the bus thread waited


async def test_absent_port_fails_each_read_and_recovers_when_it_appears(make_rig: Any, tmp_path: Path) -> None:
    """An unplugged USB-RS485 adapter: no exception at start-up, failed reads, recovery on re-plug."""
    rig: Rig = await make_rig({1: meter_map("sdm630")})
    registry = BusRegistry()
    port = tmp_path / "usb"
    meter = open_meter("sdm630", str(port), 9600, "N", 1, bus_registry=registry, response_timeout_s=RESPONSE_TIMEOUT_S)
    with pytest.raises(DeviceError, match="cannot open"):
        await meter.read()
    port.symlink_to(rig.ctrl)  # the adapter appears
    rig.server.set(1, "energy_import", 9.0)
    assert (await meter.read()).energy_import_wh == 9000.0
    await registry.aclose()


async def test_abb_not_available_and_nan_values(make_rig: Any) -> None:
    abb, sdm = meter_map("abb-b23"), meter_map("sdm630")
    rig: Rig = await make_rig({1: abb, 2: sdm})
    for quantity in abb.registers:
        rig.server.set(1, quantity, VALUES[quantity])
    rig.server.set_raw(1, abb.registers["voltage_l3"].address, [0xFFFF, 0xFFFF])  # single-phase variant
    rig.server.set_raw(1, abb.registers["power_l3"].address, [0xFFFF, 0xFFFF])
    meter = rig.open("abb-b23", 1)
    reading = await meter.read()
    assert reading.voltage_v[2] is None and reading.power_w[2] is None
    assert reading.voltage_v[0] == pytest.approx(229.5)
    rig.server.set_raw(1, abb.registers["energy_import"].address, [0xFFFF] * 4)
    with pytest.raises(DeviceError, match="energy_import is not available"):
        await meter.read()

    rig.server.set(2, "energy_import", math.nan)
    with pytest.raises(DeviceError, match="energy_import reads nan"):
        await rig.open("sdm630", 2).read()


async def test_closing_meters_releases_the_shared_bus(make_rig: Any) -> None:
    rig: Rig = await make_rig({1: meter_map("sdm630"), 2: meter_map("sdm120")})
    first, second = rig.open("sdm630", 1), rig.open("sdm120", 2)
    await first.read()
    await first.aclose()
    assert rig.ctrl in rig.registry
    await second.read()
    await second.aclose()
    assert rig.ctrl not in rig.registry
    with pytest.raises(DeviceError, match="closed"):
        await second.read()


def test_factory_rejects_bad_arguments() -> None:
    registry = BusRegistry()
    with pytest.raises(ValueError, match="unknown meter model"):
        open_meter("sdm999", "/dev/null", 9600, "N", 1, bus_registry=registry)
    with pytest.raises(ValueError, match="needs a custom_map"):
        open_meter("custom", "/dev/null", 9600, "N", 1, bus_registry=registry)
    with pytest.raises(ValueError, match="only for model 'custom'"):
        open_meter("sdm630", "/dev/null", 9600, "N", 1, custom_map=CUSTOM_MAP, bus_registry=registry)
    with pytest.raises(ValueError, match="1 to 247"):
        open_meter("sdm630", "/dev/null", 9600, "N", 248, bus_registry=registry)
    with pytest.raises(ValueError, match="parity"):
        open_meter("sdm630", "/dev/null", 9600, "X", 1, bus_registry=registry)
    assert "/dev/null" not in registry
    open_meter("SDM630", "/dev/null", 9600, "E", 1, bus_registry=registry)
    open_meter("abb-b24", "/dev/null", 9600, "E", 2, bus_registry=registry)  # alias, same bus
    with pytest.raises(ValueError, match="same settings"):
        open_meter("sdm120", "/dev/null", 19200, "E", 3, bus_registry=registry)


@pytest.mark.parametrize(
    ("model", "register", "words", "quantity", "want"),
    [
        ("sdm630", 0x0000, [0x4366, 0x0000], "voltage_v", 230.0),  # float32, high word first
        ("sdm120", 0x0006, [0x417E, 0x0000], "current_a", 15.875),
        ("em340", 0x0000, [0x08FD, 0x0000], "voltage_v", 230.1),  # INT32 LSW first, ÷10
        ("em340", 0x000C, [0xE0C0, 0xFFFF], "current_a", -8.0),  # negative, ÷1000
        ("abb-b23", 0x5B00, [0x0000, 0x08FD], "voltage_v", 230.1),  # u32 high word first, x0.1
    ],
)
async def test_raw_registers_as_the_spec_lays_them_out(
    make_rig: Any, model: str, register: int, words: list[int], quantity: str, want: float
) -> None:
    """Hand-encoded words (not through any map), so a wrong order or scale in a map file shows here too."""
    mapping = meter_map(model)
    rig: Rig = await make_rig({1: mapping})
    rig.server.set_raw(1, register, words)
    reading = await rig.open(model, 1).read()
    assert getattr(reading, quantity)[0] == pytest.approx(want, rel=1e-9)


async def test_the_firmware_sampler_faults_after_n_failed_reads_and_clears_on_recovery(make_rig: Any) -> None:
    """The driver raises on every failed read; MeterSampler turns N in a row into the meter fault."""
    from firmware.metering import MeterSampler

    rig: Rig = await make_rig({1: meter_map("sdm630")})
    rig.server.set(1, "energy_import", 3.0)
    faults: list[bool] = []
    sampler = MeterSampler(rig.open("sdm630", 1, retries=0), faults.append, failures_to_fault=3)
    assert (await sampler.sample()) is not None
    await rig.server.stop()
    for _ in range(2):
        assert (await sampler.sample()) is None
    assert faults == []
    assert (await sampler.sample()) is None
    assert faults == [True]
    await rig.server.start()
    reading = await sampler.sample()
    assert reading is not None and reading.energy_import_wh == 3000.0
    assert faults == [True, False]
