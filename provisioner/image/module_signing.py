"""The key that signs the kernel modules DKMS builds into an image layer.

DKMS signs every module it builds (Secure Boot loads only signed modules). With no key at
``/var/lib/dkms/mok.key`` it makes a new random pair at each build, so two builds of the
NVIDIA layer from the same inputs gave different module bytes and squashfs files, and the
private key shipped inside the image that every node fetches over plain HTTP.

Instead the control node keeps one pair (made once, kept with its state, like its SSH key)::

    <state_dir>/module-signing/mok.key   RSA private key, PEM, mode 0600 (never in an image)
    <state_dir>/module-signing/mok.pub   its self-signed X.509 certificate, DER

The layer build copies both into the build root before the layer's packages install, and
removes the private key before the root is packed; ``mok.pub`` stays in the image at
``/var/lib/dkms/mok.pub`` for ``mokutil --import`` on Secure Boot nodes (once per node:
every later build signs with the same key). The kernel's ``sign-file`` writes a PKCS#7
signature without signed attributes (no signing time), and RSA PKCS#1 v1.5 signing is
deterministic: the same module and key give the same bytes.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.image import ImageError

KEY_DIR = "module-signing"
PRIVATE = "mok.key"
CERTIFICATE = "mok.pub"
IN_IMAGE = "/var/lib/dkms"  # where DKMS looks (mok_signing_key, mok_certificate)
# The extended key usage the kernel's own module-signing certificates carry (x509.genkey:
# "extendedKeyUsage = codeSigning"); shim's MokManager accepts it.
_EKU_CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class SigningKey:
    private: Path
    certificate: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate (what ``mokutil --list-enrolled`` shows)."""
        cert = x509.load_der_x509_certificate(self.certificate.read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex(":")


def signing_dir(image_store: Path) -> Path:
    """``<state_dir>/module-signing`` for an image store at ``<state_dir>/images``."""
    return image_store.parent / KEY_DIR


def ensure_signing_key(directory: Path) -> SigningKey:
    """The pair in ``directory``, made (key 0600, folder 0700) if there is none yet."""
    private, certificate = directory / PRIVATE, directory / CERTIFICATE
    try:
        if private.exists():
            mode = private.stat().st_mode & 0o777
            if mode & 0o077:
                raise ImageError(f"{private} is readable by others (mode {mode:o}): chmod 600 it")
            if not certificate.is_file():
                raise ImageError(f"{private} has no certificate beside it ({certificate})")
            return SigningKey(private, certificate)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME,
                    f"provisioner module signing key ({socket.gethostname()})",
                )
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=36500))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([_EKU_CODE_SIGNING]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        tmp = private.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        certificate.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        tmp.replace(private)
        return SigningKey(private, certificate)
    except OSError as exc:
        raise ImageError(f"module signing key in {directory}: {exc}") from exc
