"""The image a node of a profile would boot, as the store has it: the enroller holds its
kernel release against a profile's kernel requirement (provisioner/kernel_need.py), and a
vLLM cluster takes its Python from it (the wheelhouse's Python tag follows the image)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from provisioner.enroll.matching import ImageKernel
from provisioner.image import ImageError
from provisioner.image.choice import image_for
from provisioner.image.store import ImageStore, StoredImage
from provisioner.profiles import Profile
from provisioner.records import Node
from provisioner.registry import Registry

# (node, its profile or None) -> (the ref it boots, that version in the store or None)
NodeImage = Callable[[Node, Profile | None], tuple[str, StoredImage | None]]


def node_image(registry: Registry, image_dir: Path, default_image: str) -> NodeImage:
    """(node, profile) -> (the ref it would boot: a roll's pin, the profile's chosen image,
    its own ``image:`` or the default; that image in the store, None if missing)."""

    def lookup(node: Node, profile: Profile | None) -> tuple[str, StoredImage | None]:
        ref = image_for(
            profile.name if profile else None,
            profile.image if profile else None,
            registry.profile_images(),
            default_image,
            registry.image_pins().get(node.mac),
        )
        try:
            return ref, ImageStore(image_dir).find(ref)
        except ImageError:
            return ref, None

    return lookup


def image_kernel(registry: Registry, image_dir: Path, default_image: str) -> ImageKernel:
    """For the enroller: (node, profile) -> (the ref it would boot, the kernel release in
    that image's manifest, None if the image is not in the store)."""
    find = node_image(registry, image_dir, default_image)

    def lookup(node: Node, profile: Profile) -> tuple[str, str | None]:
        ref, image = find(node, profile)
        return ref, image.kernel_release if image is not None else None

    return lookup
