"""A profile's kernel requirement, held against the image its nodes would boot.

A profile may say which kernel its hardware needs (``kernel: {min: "6.14", why: ...}``:
the Ryzen AI NPU's ``amdxdna`` is mainline since 6.14; Debian 12's image has 6.1). A node
of that profile is never enrolled into an image whose kernel is older (it would boot and
never drive its accelerator): enrollment is refused, with the reason, both at
``provisioner node enroll`` and at auto-enrollment (the node stays ``matched``, a
``refused`` event on its timeline says why and what to do).

The image is the one the node would boot (:func:`provisioner.image.choice.image_for`); its
kernel is its manifest's ``kernel_release`` (``6.1.0-41-amd64``). An image that is not
in the store yet (or has no kernel release: the discovery image) decides nothing here.
Pure: :func:`release_version`, :func:`refusal`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
MIN_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")


@dataclass(frozen=True)
class KernelNeed:
    """What a profile asks of its nodes' kernel."""

    min: str  # "6.14": the oldest kernel release that drives the hardware
    why: str  # for the user: which driver, since when


def release_version(release: str) -> tuple[int, int, int] | None:
    """``6.1.0-41-amd64`` -> (6, 1, 0); ``6.14`` -> (6, 14, 0); None if it is not one."""
    found = _RELEASE.match(release.strip())
    if found is None:
        return None
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


def refusal(profile: str, need: KernelNeed, image: str, release: str | None) -> str | None:
    """Why a node of ``profile`` must not be enrolled into ``image`` (whose kernel is
    ``release``), or None when the kernel is new enough or unknown."""
    if release is None:
        return None
    have, wanted = release_version(release), release_version(need.min)
    if have is None or wanted is None or have >= wanted:
        return None
    return (
        f"profile {profile} needs Linux {need.min} or newer ({need.why}); its image "
        f"{image} has {release}: give the profile an image with a newer kernel "
        f"(`provisioner image use IMAGE --profile {profile}`), then enroll it"
    )
