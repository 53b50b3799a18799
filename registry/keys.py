"""Signing keys: PEM ECDSA P-256 key pairs, their identities, and the configured key.

A key's identity is `key:` and the first 16 hex digits of the sha256 of its public key
(DER SubjectPublicKeyInfo), the same for the private and the public half. This is the
name a policy's `actors` or `gate_signers` resolve to, and what events and gate runs
record as their signer (docs/design.md, "Trust").

P-256 is what OpenSSF model-signing's key mode takes, so one key signs bundles
(`registry sign`), gate-run attestations and audit events. Keys come from
`registry key generate` or `openssl ecparam -name prime256v1 -genkey -noout`.
Crypto is `cryptography`'s; nothing here is hand-written beyond the encodings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import UsageError

ENV_SIGNING_KEY = "REGISTRY_SIGNING_KEY"
KEY_PREFIX = "key:"
_ID_HEX = 16


def _ec() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


@dataclass(frozen=True)
class PublicKey:
    """A verifying key: its PEM bytes and identity."""

    pem: bytes
    key: Any  # cryptography EllipticCurvePublicKey

    @property
    def id(self) -> str:
        return key_id(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes

        try:
            self.key.verify(signature, data, _ec().ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded from a PEM file, with its public half."""

    path: Path
    key: Any  # cryptography EllipticCurvePrivateKey

    @property
    def public(self) -> PublicKey:
        ser = _serialization()
        pub = self.key.public_key()
        pem = pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey(pem, pub)

    @property
    def id(self) -> str:
        return key_id(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes

        return self.key.sign(data, _ec().ECDSA(hashes.SHA256()))


def key_id(public_key: Any) -> str:
    ser = _serialization()
    der = public_key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return KEY_PREFIX + hashlib.sha256(der).hexdigest()[:_ID_HEX]


def is_key_id(value: str) -> bool:
    rest = value[len(KEY_PREFIX) :]
    return (
        value.startswith(KEY_PREFIX)
        and len(rest) == _ID_HEX
        and all(c in "0123456789abcdef" for c in rest)
    )


def _check_curve(key: Any, where: str) -> None:
    ec = _ec()
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) or (
        key.curve.name != "secp256r1"
    ):
        raise UsageError(
            f"{where} is not an ECDSA P-256 key",
            "Make one with `registry key generate` or"
            " `openssl ecparam -name prime256v1 -genkey -noout`.",
        )


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise UsageError(f"{what} {path} is too large to be a PEM key")
    return data


def load_public(path: Path) -> PublicKey:
    """A PEM public key file (or the public half of a private key file)."""
    return public_from_pem(_read(path, "public key"), str(path))


def public_from_pem(data: bytes, where: str = "public key") -> PublicKey:
    ser = _serialization()
    try:
        if b"PRIVATE KEY" in data:
            priv = ser.load_pem_private_key(data, password=None)
            pub = priv.public_key()
        else:
            pub = ser.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where} is not a PEM key: {str(exc).splitlines()[0]}") from None
    _check_curve(pub, where)
    pem = pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(pem, pub)


def load_private(path: Path) -> SigningKey:
    data = _read(path, "signing key")
    ser = _serialization()
    try:
        key = ser.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(
            f"signing key {path} is encrypted; this version reads unencrypted PEM keys",
            "Keep the key in a protected file (mode 600) or a secrets mount.",
        ) from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM private key: {str(exc).splitlines()[0]}") from None
    _check_curve(key, str(path))
    return SigningKey(path, key)


def generate(private_path: Path, public_path: Path | None = None) -> SigningKey:
    """Write a new P-256 key pair: the private key (mode 600) and PRIVATE.pub beside it."""
    ser = _serialization()
    if public_path is None:
        public_path = private_path.with_name(private_path.name + ".pub")
        if private_path.suffix in (".key", ".pem"):
            public_path = private_path.with_suffix(".pub")
    if public_path == private_path:
        raise UsageError(f"{private_path}: the private and public key paths are the same")
    for p in (private_path, public_path):
        if p.exists():
            raise UsageError(f"{p} exists; refusing to overwrite a key", "Choose a new path.")
    key = _ec().generate_private_key(_ec().SECP256R1())
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    signing = SigningKey(private_path, key)
    public_path.write_bytes(signing.public.pem)
    return signing


def configured(path_setting: str | None) -> SigningKey | None:
    """The signing key in force: $REGISTRY_SIGNING_KEY, else `signing_key` in registry.toml."""
    path = os.environ.get(ENV_SIGNING_KEY) or path_setting
    if not path:
        return None
    return load_private(Path(path).expanduser())
