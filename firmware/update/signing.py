"""Firmware signing certificates and signatures (OCPP 1.6 security whitepaper, SignedUpdateFirmware).

The signing certificate (PEM, optionally followed by intermediates) must chain to a certificate in
``[update] manufacturer_root_ca`` and every certificate on the path must be valid now; the leaf must allow
digital signatures (keyUsage) and code signing (extendedKeyUsage), when it says. The signature is over the
firmware file with SHA-256: RSA (PKCS#1 v1.5, or PSS) or ECDSA. Files are hashed in chunks and verified
pre-hashed, so a package is never read into memory whole.

Revocation (CRL/OCSP, status RevokedCertificate) is not checked: a charger often cannot reach a CRL, and the
whitepaper leaves it to the implementation. Needs the ``cryptography`` package (a runtime dependency).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

MAX_CHAIN = 4


class CertificateError(Exception):
    """The signing certificate is malformed, expired, or does not chain to the manufacturer root."""


class SignatureError(Exception):
    """The signature is malformed or does not match the file."""


def load_roots(path: str | Path) -> list[Certificate]:
    """The manufacturer root certificate(s); CertificateError if none can be read."""
    from cryptography import x509

    if not str(path):
        raise CertificateError("no manufacturer root certificate configured ([update] manufacturer_root_ca)")
    try:
        roots = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read the manufacturer root {path}: {exc}") from exc
    return roots


def _valid_now(cert: Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(
            f"{what} is not valid now ({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def _issued_by(cert: Certificate, issuer: Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_certificate(chain_pem: str | bytes, roots: list[Certificate], now: datetime) -> Certificate:
    """The leaf certificate, once its chain to one of ``roots`` checks out; CertificateError otherwise."""
    from cryptography import x509

    data = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"signing certificate is not PEM: {exc}") from exc
    if not chain or len(chain) > MAX_CHAIN:
        raise CertificateError(f"signing certificate chain has {len(chain)} certificates")
    leaf = chain[0]
    _valid_now(leaf, now, "the signing certificate")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise CertificateError("the signing certificate's keyUsage does not allow digital signatures")
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if x509.oid.ExtendedKeyUsageOID.CODE_SIGNING not in purposes:
            raise CertificateError("the signing certificate's extendedKeyUsage does not include code signing")
    except x509.ExtensionNotFound:
        pass
    current, intermediates = leaf, chain[1:]
    for _ in range(MAX_CHAIN):
        for root in roots:
            if root.subject == current.issuer and _issued_by(current, root):
                _valid_now(root, now, "the manufacturer root")
                return leaf
        step = next((c for c in intermediates if c.subject == current.issuer and _issued_by(current, c)), None)
        if step is None:
            break
        if not _is_ca(step):
            raise CertificateError(f"intermediate {step.subject.rfc4514_string()} is not a CA")
        _valid_now(step, now, f"intermediate {step.subject.rfc4514_string()}")
        current = step
    raise CertificateError("the signing certificate does not chain to the manufacturer root")


def decode_signature(text: str | bytes) -> bytes:
    """Base64 (whitespace tolerated) -> bytes; SignatureError if it is not base64 or empty."""
    try:
        raw = base64.b64decode(
            b"".join(text.split()) if isinstance(text, bytes) else "".join(text.split()), validate=True
        )
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"signature is not base64: {exc}") from exc
    if not raw:
        raise SignatureError("empty signature")
    return raw


def sha256_digest(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return hashlib.sha256(source).digest()
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def verify_signature(cert: Certificate, source: Path | bytes, signature: bytes) -> None:
    """SignatureError unless ``signature`` is the certificate key's SHA-256 signature of ``source``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    digest = sha256_digest(source)
    prehashed = utils.Prehashed(hashes.SHA256())
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, digest, padding.PKCS1v15(), prehashed)
            except InvalidSignature:
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                key.verify(signature, digest, pss, prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            raise SignatureError(f"unsupported signing key type {type(key).__name__}")
    except InvalidSignature as exc:
        raise SignatureError("the signature does not match the firmware") from exc
    except ValueError as exc:  # e.g. a DER-malformed ECDSA signature
        raise SignatureError(f"malformed signature: {exc}") from exc
