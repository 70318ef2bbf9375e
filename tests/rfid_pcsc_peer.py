"""A real pcscd with vsmartcard's virtual reader (vpcd), and virtual cards (vicc), for tests.

pcscd always uses /run/pcscd, so each test daemon runs in its own mount namespace
(``unshare --mount``) with a private directory bound over /run/pcscd; the client library is
pointed at that socket with PCSCLITE_CSOCK_NAME. A system pcscd is left alone. Needs root,
util-linux ``unshare``, Debian ``pcscd``, ``vsmartcard-vpcd`` and ``python3-virtualsmartcard``,
and PyPI ``pyscard`` and ``pycryptodome`` in the test environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
VSMARTCARD_PYTHONPATH = Path("/usr/lib/python3/site-packages/virtualsmartcard")
VICC_SCRIPT = Path(__file__).with_name("rfid_vicc.py")


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the real PC/SC chain (empty when all is there)."""
    missing = []
    if shutil.which("pcscd") is None:
        missing.append("pcscd (apt: pcscd)")
    if shutil.which("unshare") is None:
        missing.append("unshare (apt: util-linux)")
    if not VPCD_DRIVER.exists():
        missing.append(f"{VPCD_DRIVER} (apt: vsmartcard-vpcd)")
    if not (VSMARTCARD_PYTHONPATH / "virtualsmartcard").is_dir():
        missing.append("virtualsmartcard (apt: python3-virtualsmartcard)")
    if os.geteuid() != 0:
        missing.append("root (for a private mount namespace over /run/pcscd)")
    for module, package in (("smartcard", "pyscard"), ("Crypto", "pycryptodome")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python module {module} (pip: {package})")
    return missing


def free_port_pair() -> int:
    """A free TCP port whose successor is free too (vpcd listens on both, one per slot)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


class Pcscd:
    """One private pcscd; ``start(with_reader=False)`` runs it with no reader configured."""

    def __init__(self, base: Path, port: int) -> None:
        self.run_dir = base / "run"
        self.conf_dir = base / "conf"
        self.log = base / "pcscd.log"
        self.port = port
        self.socket = self.run_dir / "pcscd.comm"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, with_reader: bool = True, timeout: float = 5.0) -> None:
        conf = self.conf_dir / "vpcd"
        if with_reader:
            conf.write_text(
                'FRIENDLYNAME "Virtual PCD"\n'
                f"DEVICENAME /dev/null:{self.port:#x}\n"
                f"LIBPATH {VPCD_DRIVER}\n"
                f"CHANNELID {self.port:#x}\n"
            )
        else:
            conf.unlink(missing_ok=True)
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
        script = 'mount --bind "$1" /run/pcscd && exec pcscd --foreground --debug -c "$2"'
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "sh", "-c", script, "sh", str(self.run_dir), str(self.conf_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while b"daemon ready" not in self.log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pcscd did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # A fresh daemon must not find our socket and pid file and think one still runs.
        for name in ("pcscd.comm", "pcscd.pid"):
            (self.run_dir / name).unlink(missing_ok=True)
        log = self.log.read_bytes()
        self.log.write_bytes(log.replace(b"daemon ready", b"daemon was ready"))


class VirtualCard:
    """A vicc process holding one card on the virtual reader (slot 0) while it runs."""

    def __init__(self, port: int, uid: bytes, sw: bytes = b"\x90\x00") -> None:
        self.port, self.uid, self.sw = port, uid, sw
        self._proc: subprocess.Popen[bytes] | None = None

    def insert(self) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(VSMARTCARD_PYTHONPATH), os.environ.get("PYTHONPATH", "")])
        )
        proc = subprocess.Popen(
            [sys.executable, str(VICC_SCRIPT), str(self.port), self.uid.hex(), self.sw.hex()],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._proc = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "connected" once VirtualICC is on the vpcd socket
        if line.strip() != b"connected":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"virtual card did not connect to vpcd on port {self.port} (got {line!r})")

    def remove(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            proc.wait(5)
