"""What every route module of the HTTP app shares: the :class:`AppContext` it is built
on, the request helpers more than one of them needs, and the API token rule.

``create_app`` (http.py) hands one AppContext to each ``routes_*.router(ctx)``; no route
reaches the registry, the metrics or the config any other way.

The API token: :func:`api_token_ok` is the one check (the body limits of limits.py ask it
before a write's body is read); :func:`require_api_token` makes it a route dependency,
which the read routes skip where ``[http] open_reads`` / ``open_metrics`` say so.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, HTTPException, Request

from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.limits import API_TOKEN_REQUIRED
from provisioner.boot.limits import bearer as bearer  # the routes' import of it stays here
from provisioner.boot.policy import BootSpec, boot_spec
from provisioner.config import Config, HttpConfig
from provisioner.enroll.matching import Enroller
from provisioner.image import ImageError
from provisioner.image.choice import image_for
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
    # Called with a node that just reported from its profile's image (serve: converge its
    # clusters, provisioner.clusters.converge.Converger.kick).
    on_image_report: Callable[[Node], object] | None = None

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
            self.registry.image_pins().get(node.mac),
        )
        return boot_spec(
            node,
            self.find_image,
            self.config.boot.kernel_args,
            image=image,
            profile_args=profile.kernel_args if profile else (),
            memory_bytes=inventory.memory_bytes if inventory else None,
        )


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def api_token_ok(ctx: AppContext, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the API token (in constant time)."""
    token = bearer(authorization)
    if token is None:
        return False
    # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
    return secrets.compare_digest(
        token.encode("utf-8", "surrogateescape"), ctx.api_token.encode("utf-8")
    )


def require_api_token(
    ctx: AppContext, *, unless: Callable[[HttpConfig], bool] | None = None
) -> Callable[[str | None], None]:
    """A route dependency: 401 (counted) without the API token, unless ``unless`` says
    this config opens the route (``open_reads``, ``open_metrics``)."""

    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if unless is not None and unless(ctx.config.http):
            return
        if not api_token_ok(ctx, authorization):
            ctx.metrics.inc("provisioner_http_refused_total", reason="api-token")
            raise HTTPException(401, API_TOKEN_REQUIRED, headers={"WWW-Authenticate": "Bearer"})

    return check


def open_reads(http: HttpConfig) -> bool:
    return http.open_reads


def open_metrics(http: HttpConfig) -> bool:
    return http.open_metrics
