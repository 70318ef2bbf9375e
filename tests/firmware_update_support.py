"""Helpers for the firmware-update tests: builds of this package as wheels, packages, a test PKI, HTTP servers.

Wheels: each build copies the source tree (firmware/, hal/, pyproject.toml, README.md) to a temporary directory,
sets the version in pyproject.toml and builds with setuptools' PEP 517 backend in a small build venv. The
dependencies' wheels (and setuptools/wheel/pip) are fetched once with ``pip download`` into the pytest cache
(keyed by the requirement list), so only the first run on a machine needs the network.

Pending outside changes: until the lead applies them, a build copy gets (1) app.py's restart through the launcher
(``relaunch_command``) and (2) ``cryptography`` among the runtime dependencies. Each is applied only if the tree
does not have it yet, so these steps become no-ops once the real files change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILD_ONLY = ("setuptools", "wheel", "pip")

_APP_OLD = """        log.warning("restarting after a %s reset", app.restart_requested)
        os.execv(sys.executable, [sys.executable, "-m", "firmware", *sys.argv[1:]])"""
_APP_NEW = """        from firmware.update.launcher import relaunch_command

        log.warning("restarting after a %s reset", app.restart_requested)
        argv = relaunch_command() or [sys.executable, "-m", "firmware", *sys.argv[1:]]
        os.execv(argv[0], argv)"""


def runtime_requirements() -> list[str]:
    deps = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    if not any(d.startswith("cryptography") for d in deps):
        deps.append("cryptography>=42")
    return deps


def run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "EVSE_"))}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def dependency_wheels(cache: Path) -> Path:
    """Our runtime dependencies and the build tools as wheels, downloaded once per requirement list."""
    reqs = [*runtime_requirements(), "setuptools>=68", "wheel", "pip"]
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    out = cache / f"deps-{key}"
    marker = out / ".complete"
    if not marker.exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(out), *reqs])
        marker.write_text("\n".join(reqs))
    return out


def build_venv(cache: Path, deps: Path) -> Path:
    """A venv with setuptools and wheel, to build our wheel without pip's per-build isolation."""
    venv = cache / f"build-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        pip = [sys.executable, "-m", "pip", "--isolated", "--python", str(python), "install", "-q", "--no-index"]
        run([*pip, "--find-links", str(deps), "setuptools>=68", "wheel"])
        (venv / ".complete").write_text("ok")
    return python


def source_copy(dest: Path, version: str, *, broken: bool = False) -> Path:
    """This repository's package at ``version``; ``broken``: a realistic regression that passes the install
    checks (``evse --version``, ``evse config check``) but crashes ``evse run`` at start: app.py imports a module
    that is not a declared dependency."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("firmware", "hal"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "README.md", dest / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject, n = re.subn(r'(?m)^version = "[^"]+"$', f'version = "{version}"', pyproject, count=1)
    assert n == 1
    if "cryptography" not in pyproject.split("[project.optional-dependencies]")[0]:
        pyproject = pyproject.replace(
            '    "aiomqtt>=2.3,<3",\n', '    "aiomqtt>=2.3,<3",\n    "cryptography>=42",\n', 1
        )
    (dest / "pyproject.toml").write_text(pyproject)
    app = dest / "firmware" / "app.py"
    text = app.read_text()
    if "relaunch_command" not in text:
        assert _APP_OLD in text, "app.py restart path changed: update the test's pending patch"
        text = text.replace(_APP_OLD, _APP_NEW)
    if broken:
        text = text.replace(
            "from firmware import sdnotify, version\n",
            "from firmware import sdnotify, version\nimport cbor2  # noqa: F401  (new dependency, not declared)\n",
            1,
        )
    app.write_text(text)
    return dest


def build_wheel(python: Path, tree: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    code = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    name = run([str(python), "-c", code, str(out)], cwd=tree).strip().splitlines()[-1]
    return out / name


def make_factory(venv: Path, wheel: Path, deps: Path) -> Path:
    """The factory venv as deploy/install.sh makes it (with pip, which the slot installs use)."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [sys.executable, "-m", "pip", "--isolated", "--python", str(venv / "bin" / "python"), "install", "-q"]
    run([*pip, "--no-index", "--find-links", str(deps), str(wheel), "pip"])
    return venv


def package_dir(dest: Path, wheel: Path, deps: Path) -> Path:
    """Our wheel plus the runtime dependencies' wheels (no build tools): what a package carries."""
    dest.mkdir(parents=True)
    shutil.copy2(wheel, dest / wheel.name)
    for w in deps.glob("*.whl"):
        if w.name.split("-")[0].lower() not in BUILD_ONLY:
            shutil.copy2(w, dest / w.name)
    return dest


# ── a test PKI ─────────────────────────────────────────────────────────────────────────────────────────────


@dataclass
class Signer:
    key_pem: bytes
    cert_pem: bytes
    key: Any

    def sign(self, data: bytes) -> bytes:
        from firmware.update.package import sign

        return sign(data, self.key_pem)


@dataclass
class Pki:
    root_pem: bytes
    signer: Signer
    untrusted: Signer  # chains to another root


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: Any, issuer_key: Any, *, ca: bool, days: int = 30) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki() -> Pki:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def pem(cert: Any) -> bytes:
        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("pievse test manufacturer root", "pievse test manufacturer root", root_key, root_key, ca=True)
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing = _cert("pievse firmware signing", "pievse test manufacturer root", signing_key, root_key, ca=False)
    other_root_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("someone else's signing", "someone else's root", other_key, other_root_key, ca=False)
    return Pki(
        root_pem=pem(root),
        signer=Signer(pem_key(signing_key), pem(signing), signing_key),
        untrusted=Signer(pem_key(other_key), pem(other), other_key),
    )


# ── HTTP servers ───────────────────────────────────────────────────────────────────────────────────────────


class FileServer:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with Range support; knobs for the resume tests.

    ``drop_after``: close the connection after that many body bytes (once per request, while > 0 requests left
    in ``drops``); ``ignore_range``: always answer 200 with the whole file. ``requests`` records
    (path, Range header, status)."""

    def __init__(self, files: dict[str, bytes | Path]) -> None:
        self.files = files
        self.drop_after = 0
        self.drops = 0
        self.ignore_range = False
        self.etag: str | None = '"v1"'
        self.requests: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                body = server.files.get(name)
                if body is None:
                    server.requests.append((self.path, self.headers.get("Range"), 404))
                    self.send_error(404)
                    return
                data = body.read_bytes() if isinstance(body, Path) else body
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    m = re.fullmatch(r"bytes=(\d+)-", rng)
                    if m and int(m[1]) < len(data):
                        start, status = int(m[1]), 206
                    elif m:
                        server.requests.append((self.path, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                server.requests.append((self.path, rng, status))
                part = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(part)))
                if server.etag:
                    self.send_header("ETag", server.etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.drops > 0 and server.drop_after:
                    server.drops -= 1
                    self.wfile.write(part[: server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def gets(self, name: str) -> int:
        return sum(1 for p, _, _ in self.requests if p == f"/{name}")

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def serving(files: dict[str, bytes | Path]) -> Iterator[FileServer]:
    with FileServer(files) as server:
        yield server
