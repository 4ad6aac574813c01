"""The control node's module-signing pair: made once, kept private, handed to DKMS by a
layer's hooks and taken out of the root before it is packed. Signing determinism is checked
with the real openssl, the way the kernel's sign-file signs (CMS, no signed attributes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from provisioner.image import ImageError
from provisioner.image.layer_build import DKMS_LOG, layer_hooks
from provisioner.image.layer_recipe import Layer
from provisioner.image.module_signing import ensure_signing_key, signing_dir


def test_the_pair_is_made_once_private_and_a_code_signing_certificate(tmp_path: Path) -> None:
    keys = signing_dir(tmp_path / "state" / "images")
    assert keys == tmp_path / "state" / "module-signing"
    first = ensure_signing_key(keys)
    assert first.private.stat().st_mode & 0o777 == 0o600
    assert keys.stat().st_mode & 0o777 == 0o700
    cert = x509.load_der_x509_certificate(first.certificate.read_bytes())  # DER, as DKMS wants
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in usage
    again = ensure_signing_key(keys)
    assert again == first and again.fingerprint == first.fingerprint  # not remade
    first.private.chmod(0o644)
    with pytest.raises(ImageError, match="readable by others"):
        ensure_signing_key(keys)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_same_module_and_key_sign_to_the_same_bytes(tmp_path: Path) -> None:
    key = ensure_signing_key(tmp_path / "keys")
    module = tmp_path / "m.ko"
    module.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)

    def sign() -> bytes:  # what scripts/sign-file does: detached CMS, no attributes, sha256
        return subprocess.run(
            ["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER",
             "-md", "sha256", "-signer", str(key.certificate),
             "-inkey", str(key.private), "-keyform", "PEM", "-in", str(module), "-nosmimecap",
             "-keyid"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip

    pem = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(key.certificate), "-out", str(pem)],
        check=True,
    )
    key = type(key)(key.private, pem)  # openssl cms -signer reads PEM
    first = sign()
    assert first and sign() == first


NVIDIA = Layer(
    source=Path("/i/nv.toml"), base=Path("/i/base.toml"), description="d",
    packages=("nvidia-kernel-dkms",), components=("non-free",), suites=(), kernel_suite=None,
    dkms=True, modules=("nvidia-current",), max_bytes=None,
)  # fmt: skip


def test_the_hooks_place_the_pair_before_the_install_and_drop_the_private_key(
    tmp_path: Path,
) -> None:
    key = ensure_signing_key(tmp_path / "keys")
    hooks = layer_hooks(NVIDIA, Path("/w/reports"), key)
    place = next(i for i, h in enumerate(hooks) if str(key.private) in h)
    install = next(i for i, h in enumerate(hooks) if "apt-get install" in h)
    built = next(i for i, h in enumerate(hooks) if "dkms autoinstall" in h)
    assert place < install < built  # the package's own postinst build signs with it too
    assert '"$1"/var/lib/dkms/mok.key' in hooks[place] and "chmod 0600" in hooks[place]
    assert 'rm -f "$1"/var/lib/dkms/mok.key' in hooks[built]
    assert f"/w/reports/{DKMS_LOG}" in hooks[built]
    assert not any(str(key.private) in h for h in layer_hooks(NVIDIA, Path("/w/r")))
