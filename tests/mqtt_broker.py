"""A real mosquitto for tests, on a free loopback port, plus a TCP relay that can cut one client off.

:class:`Mosquitto` starts the broker with its own config (loopback only, anonymous, no persistence),
kills it like a crash (SIGKILL) and restarts it on the same port. :class:`Cutter` sits between one
client and the broker: :meth:`Cutter.cut` resets the connection without an MQTT goodbye, so the
broker publishes that client's Last Will, and refuses new connections until :meth:`Cutter.heal`.
Use :func:`running_broker` from a fixture in the test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
        )
        if binary is None:
            pytest.fail("mosquitto is not installed (apt-get install -y mosquitto); the shared-fuse tests need it")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    log = self.log.read_text()[-2000:]
                    raise RuntimeError(f"mosquitto did not listen on {self.port}: {log}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """Like a crash or a power cut of the broker: no goodbye to anyone."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(5)

    def freeze(self) -> None:
        """The broker hangs (SIGSTOP): connections stay open, nothing is answered."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)


@contextlib.contextmanager
def running_broker(workdir: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Cutter:
    """A loopback TCP relay to ``port``: cut the client off abruptly (TCP reset), and let it back in."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.transport.abort()
            return
        pair = {client_w.transport, broker_w.transport}
        self._transports |= pair

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pump(client_r, broker_w), pump(broker_r, client_w))
        finally:
            self._transports -= pair

    def cut(self) -> None:
        """Reset every relayed connection (no MQTT DISCONNECT: the broker sends the Last Will) and refuse new ones."""
        self.refusing = True
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def heal(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
