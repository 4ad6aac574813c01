"""The image a node of a profile would boot, and that image's kernel release: what the
enroller holds against a profile's kernel requirement (provisioner/kernel_need.py)."""

from __future__ import annotations

from pathlib import Path

from provisioner.boot.policy import image_for
from provisioner.enroll.matching import ImageKernel
from provisioner.image import ImageError
from provisioner.image.store import ImageStore
from provisioner.profiles import Profile
from provisioner.records import Node
from provisioner.registry import Registry


def image_kernel(registry: Registry, image_dir: Path, default_image: str) -> ImageKernel:
    """For the enroller: (node, profile) -> (the ref it would boot: a roll's pin, the
    profile's chosen image, its own ``image:`` or the default; the kernel release in
    that image's manifest, None if the image is not in the store)."""

    def lookup(node: Node, profile: Profile) -> tuple[str, str | None]:
        ref = image_for(
            profile.name,
            profile.image,
            registry.profile_images(),
            default_image,
            registry.image_pins().get(node.mac),
        )
        try:
            image = ImageStore(image_dir).find(ref)
        except ImageError:
            return ref, None
        return ref, image.kernel_release if image is not None else None

    return lookup
