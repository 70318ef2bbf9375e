"""Firmware packages: one tar file with a manifest and the wheels to install offline.

Why this format: a Pi in the field has no guarantee of PyPI access, so the package carries our wheel and every
dependency's wheel for the target (``pip install --no-index --find-links``). Wheels are already compressed, so
the tar is not. Members::

    manifest.json       {"format": 1, "name": "pievse", "version": "0.1.1", "requirement": "pievse==0.1.1",
                         "files": {"wheels/<file>.whl": {"sha256": ..., "size": ...}, ...}}
    manifest.sig        optional: base64 signature (RSA PKCS#1 v1.5 or ECDSA, SHA-256) over manifest.json's bytes
    signing-cert.pem    optional: the certificate (chain) of that signature
    wheels/*.whl

The manifest's sha256s bind every wheel; the detached signature binds the manifest, so a plain UpdateFirmware
(which carries no signature) can still require a manufacturer signature (``[update] require_signature``).
A SignedUpdateFirmware's own signature covers the whole package file (OCPP 1.6 security whitepaper).

Build one from built wheels (``pip wheel . -w dist`` gives ours and its dependencies)::

    python -m firmware.update.package build --wheel-dir dist --out pievse-0.1.1.fwpkg \\
        [--version 0.1.1] [--extras pi] [--sign-key key.pem --sign-cert cert.pem]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

NAME: Final = "pievse"
FORMAT: Final = 1
MAX_MEMBERS: Final = 500
_WHEEL = re.compile(r"^wheels/[A-Za-z0-9_.+-]+\.whl$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]{0,40}$")
_EXTRA = re.compile(r"^[A-Za-z0-9_-]{1,30}$")


class PackageError(Exception):
    """The package is malformed or does not match its manifest (nothing is installed)."""


@dataclass(frozen=True)
class Manifest:
    version: str
    requirement: str
    files: dict[str, dict[str, Any]]
    raw: bytes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_version(path: Path) -> str | None:
    parts = path.name.split("-")
    return parts[1] if len(parts) >= 5 and parts[0].lower() == NAME else None


def build(
    wheel_dir: Path,
    out: Path,
    *,
    version: str | None = None,
    extras: tuple[str, ...] = (),
    sign_key: Path | None = None,
    sign_cert: Path | None = None,
) -> Path:
    """Write a package of every wheel in ``wheel_dir``; ``version`` defaults to our wheel's."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    ours = [w for w in wheels if _wheel_version(w) is not None]
    if version is None:
        versions = sorted({v for w in ours if (v := _wheel_version(w))})
        if len(versions) != 1:
            raise PackageError(f"expected one {NAME} wheel in {wheel_dir}, found versions {versions}")
        version = versions[0]
    if not any(_wheel_version(w) == version for w in ours):
        raise PackageError(f"no {NAME} {version} wheel in {wheel_dir}")
    for extra in extras:
        if not _EXTRA.match(extra):
            raise PackageError(f"bad extra {extra!r}")
    requirement = f"{NAME}[{','.join(extras)}]=={version}" if extras else f"{NAME}=={version}"
    files = {f"wheels/{w.name}": {"sha256": sha256_file(w), "size": w.stat().st_size} for w in wheels}
    manifest = json.dumps(
        {"format": FORMAT, "name": NAME, "version": version, "requirement": requirement, "files": files},
        indent=1,
        sort_keys=True,
    ).encode()
    members: list[tuple[str, bytes | Path]] = [("manifest.json", manifest)]
    if sign_key is not None:
        if sign_cert is None:
            raise PackageError("--sign-key needs --sign-cert")
        signature = sign(manifest, sign_key.read_bytes())
        members += [("manifest.sig", base64.b64encode(signature)), ("signing-cert.pem", sign_cert.read_bytes())]
    members += [(f"wheels/{w.name}", w) for w in wheels]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            if isinstance(content, Path):
                tar.add(content, arcname=name, recursive=False)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    tmp.replace(out)
    return out


def sign(data: bytes, key_pem: bytes) -> bytes:
    """SHA-256 signature with an RSA (PKCS#1 v1.5) or EC (ECDSA) private key (needs ``cryptography``)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    raise PackageError(f"unsupported signing key type {type(key).__name__}")


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    out: dict[str, tarfile.TarInfo] = {}
    for count, info in enumerate(tar):
        if count >= MAX_MEMBERS:
            raise PackageError("too many members")
        if not info.isfile():
            raise PackageError(f"member {info.name!r} is not a regular file")
        if info.name in out:
            raise PackageError(f"member {info.name!r} appears twice")
        out[info.name] = info
    return out


def read_manifest(path: Path) -> tuple[Manifest, bytes | None, bytes | None]:
    """(manifest, detached signature or None, signing certificate PEM or None); PackageError if malformed."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = _members(tar)
            if "manifest.json" not in members:
                raise PackageError("no manifest.json")

            def read(name: str, limit: int) -> bytes | None:
                info = members.get(name)
                if info is None:
                    return None
                if info.size > limit:
                    raise PackageError(f"{name} is too large")
                f = tar.extractfile(info)
                return f.read() if f is not None else None

            raw = read("manifest.json", 1 << 20) or b""
            sig, cert = read("manifest.sig", 4096), read("signing-cert.pem", 16384)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"not a firmware package: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PackageError(f"manifest.json: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("name") != NAME:
        raise PackageError("manifest.json: not a pievse package manifest (format 1)")
    version, requirement, files = data.get("version"), data.get("requirement"), data.get("files")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise PackageError(f"manifest.json: bad version {version!r}")
    extras = r"(\[[A-Za-z0-9_,-]{1,60}\])?"
    if not isinstance(requirement, str) or not re.fullmatch(rf"{NAME}{extras}=={re.escape(version)}", requirement):
        raise PackageError(f"manifest.json: bad requirement {requirement!r}")
    if not isinstance(files, dict) or not files:
        raise PackageError("manifest.json: no files")
    for name, meta in files.items():
        if not _WHEEL.match(name) or not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise PackageError(f"manifest.json: bad entry {name!r}")
    return Manifest(version, requirement, files, raw), sig, cert


def verify(path: Path, *, require_signature: bool, root_ca: str, now: Any) -> Manifest:
    """The manifest of a package, with its detached signature checked when ``require_signature``.

    PackageError on any failure (malformed, unsigned, untrusted certificate, bad signature)."""
    manifest, sig, cert_pem = read_manifest(path)
    if not require_signature:
        return manifest
    from firmware.update import signing

    if sig is None or cert_pem is None:
        raise PackageError("the package is not signed (required: [update] require_signature)")
    try:
        roots = signing.load_roots(root_ca)
        cert = signing.check_certificate(cert_pem, roots, now)
        signing.verify_signature(cert, manifest.raw, signing.decode_signature(sig))
    except (signing.CertificateError, signing.SignatureError) as exc:
        raise PackageError(f"package signature: {exc}") from exc
    return manifest


def extract_wheels(path: Path, manifest: Manifest, dest: Path) -> list[Path]:
    """Extract exactly the manifest's wheels into ``dest``, checking each sha256 and size; PackageError if not."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    try:
        with tarfile.open(path, "r:") as tar:
            members = _members(tar)
            extra = {n for n in members if n.startswith("wheels/")} - set(manifest.files)
            if extra:
                raise PackageError(f"wheels not in the manifest: {sorted(extra)[:3]}")
            for name, meta in sorted(manifest.files.items()):
                info = members.get(name)
                if info is None:
                    raise PackageError(f"{name} is missing")
                if meta.get("size") is not None and info.size != meta["size"]:
                    raise PackageError(f"{name}: size {info.size}, manifest says {meta['size']}")
                src = tar.extractfile(info)
                if src is None:
                    raise PackageError(f"{name} is not readable")
                target = dest / name.split("/", 1)[1]
                digest = hashlib.sha256()
                with open(target, "wb") as f:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
                if digest.hexdigest() != meta["sha256"]:
                    raise PackageError(f"{name}: sha256 mismatch")
                out.append(target)
    except (tarfile.TarError, EOFError) as exc:
        raise PackageError(f"not a firmware package: {exc}") from exc
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.update.package", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="make a package from built wheels")
    b.add_argument("--wheel-dir", type=Path, required=True, help="our wheel and its dependencies' wheels")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--version", help="the pievse version to install (default: the one wheel's)")
    b.add_argument("--extras", action="append", default=[], help="extras to install, e.g. pi (repeatable)")
    b.add_argument("--sign-key", type=Path, help="PEM private key for manifest.sig")
    b.add_argument("--sign-cert", type=Path, help="PEM certificate (chain) of that key")
    s = sub.add_parser("show", help="print a package's manifest")
    s.add_argument("package", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            out = build(
                args.wheel_dir,
                args.out,
                version=args.version,
                extras=tuple(args.extras),
                sign_key=args.sign_key,
                sign_cert=args.sign_cert,
            )
            print(f"{out} sha256 {sha256_file(out)}")
        else:
            manifest, sig, _ = read_manifest(args.package)
            print(manifest.raw.decode())
            print(f"signed: {'yes' if sig else 'no'}")
    except (PackageError, OSError) as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
