"""The front door's HTTP routes: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` (the gateway's API keys), and
``/api/v1/gateway/status`` (the appliance's API token: it names replicas and addresses).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from provisioner.gateway.frontdoor import FrontDoor
from provisioner.gateway.wire import FORWARDED

STATUS_PATH = "/api/v1/gateway/status"


def router(door: FrontDoor, status_guard: Callable[..., object] | None = None) -> APIRouter:
    routes = APIRouter(tags=["gateway"])

    @routes.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return await door.models(request)

    def forwarder(endpoint: str) -> Callable[[Request], Awaitable[Response]]:
        async def forward(request: Request) -> Response:
            return await door.forward(endpoint, request)

        forward.__name__ = "front_door_" + endpoint.replace("/", "_")
        return forward

    for endpoint in FORWARDED:
        routes.add_api_route(f"/v1/{endpoint}", forwarder(endpoint), methods=["POST"])

    guards = [Depends(status_guard)] if status_guard is not None else []

    @routes.get(STATUS_PATH, dependencies=guards)
    async def status() -> JSONResponse:
        return JSONResponse(door.status())

    return routes
