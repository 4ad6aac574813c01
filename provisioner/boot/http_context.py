"""What every route module of the HTTP app shares: the :class:`AppContext` it is built
on, and the two request helpers more than one of them needs.

``create_app`` (http.py) hands one AppContext to each ``routes_*.router(ctx)``; no route
reaches the registry, the metrics or the config any other way.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.policy import BootSpec, boot_spec, image_for
from provisioner.config import Config
from provisioner.enroll.matching import Enroller
from provisioner.image import ImageError
from provisioner.image.store import ImageStore, StoredImage
from provisioner.metrics import Metrics
from provisioner.records import Node
from provisioner.registry import Registry


@dataclass
class AppContext:
    config: Config
    registry: Registry
    api_token: str
    metrics: Metrics
    renderer: ScriptRenderer
    enroller: Enroller | None = None
    authorized_keys: str | None = None  # the control node's public key(s), for images

    def __post_init__(self) -> None:
        self.images = ImageStore(self.config.image_dir)

    def find_image(self, ref: str) -> StoredImage | None:
        try:
            return self.images.find(ref)
        except ImageError:
            return None

    def boot_spec(self, node: Node) -> BootSpec:
        """The boot policy's answer for ``node``, with what the registry and profiles say."""
        profile = None
        if node.profile and self.enroller is not None:
            profile = self.enroller.profiles.get(node.profile)
        inventory = self.registry.inventory(node.mac)
        image = image_for(
            node.profile,
            profile.image if profile else None,
            self.registry.profile_images(),
            self.config.boot.image,
        )
        return boot_spec(
            node,
            self.find_image,
            self.config.boot.kernel_args,
            image=image,
            profile_args=profile.kernel_args if profile else (),
            memory_bytes=inventory.memory_bytes if inventory else None,
        )


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"
