"""The file areas of the HTTP app, each a directory behind ``paths.confine``:

- ``GET|HEAD /images/{file}``: kernels, initrds, root images (Content-Length, Range);
- ``GET|HEAD /tftp/{file}``: the TFTP root over HTTP (UEFI HTTP boot fetches iPXE here);
- ``GET|HEAD /artifacts/{file}``: runtimes built once on the control node (llama.cpp);
- ``GET|HEAD /models/{file}``: model files from the model store.

In service, an existing file is answered before the app by the sendfile front
(http_files.py, same areas, same rule); these routes answer what it hands over (a GET
with a body, a refused path: 404) and the in-process tests.
:func:`record_file` counts every file handed out, by either path, and puts it on its
node's timeline.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from provisioner.boot.http_context import AppContext, client_ip
from provisioner.boot.http_files import FileServed, media_type
from provisioner.boot.paths import confine
from provisioner.config import normalize_mac
from provisioner.errors import TftpPathError
from provisioner.records import EventKind


def router(ctx: AppContext) -> APIRouter:
    """The four file areas, for ``app.include_router``.

    Not in the API's OpenAPI description: they are for nodes, and one route for GET and
    HEAD gives both operations the same id (a warning, /openapi.json a 500 in tests)."""
    routes = APIRouter(include_in_schema=False)

    def serve_file(root: Path, rel: str, area: str, request: Request) -> FileResponse:
        try:
            path = confine(root, rel)
        except TftpPathError as exc:
            ctx.metrics.inc("provisioner_http_refused_total", reason="path")
            raise HTTPException(404, f"not found: {rel}") from exc
        size = path.stat().st_size
        task = None
        if request.method == "GET":
            served = FileServed(
                area=area,
                rel=rel,
                size=size,
                sent=size,
                range=request.headers.get("range"),
                seconds=0.0,
                client=client_ip(request),
                mac_hint=request.query_params.get("mac"),
            )
            task = BackgroundTask(record_file, ctx, served, time.monotonic())
        return FileResponse(path, media_type=media_type(path.name), background=task)

    @routes.api_route("/images/{rel:path}", methods=["GET", "HEAD"])
    def image_file(rel: str, request: Request) -> FileResponse:
        return serve_file(ctx.config.image_dir, rel, "images", request)

    @routes.api_route("/artifacts/{rel:path}", methods=["GET", "HEAD"])
    def artifact_file(rel: str, request: Request) -> FileResponse:
        """Runtimes built once on the control node (llama.cpp), fetched by post-install."""
        return serve_file(ctx.config.state_dir / "artifacts", rel, "artifacts", request)

    @routes.api_route("/models/{rel:path}", methods=["GET", "HEAD"])
    def model_file(rel: str, request: Request) -> FileResponse:
        """Model files from the model store, fetched (and sha256-checked) by the head."""
        return serve_file(ctx.config.state_dir / "models", rel, "models", request)

    @routes.api_route("/tftp/{rel:path}", methods=["GET", "HEAD"])
    def tftp_file(rel: str, request: Request) -> FileResponse:
        return serve_file(ctx.config.tftp_root, rel, "tftp", request)

    return routes


def record_file(ctx: AppContext, served: FileServed, started: float | None = None) -> None:
    """Count a file handed out and put it on its node's timeline (by ?mac= or address)."""
    seconds = served.seconds if started is None else time.monotonic() - started
    ctx.metrics.file_served(served.area, served.sent, seconds)
    mac = normalize_mac(served.mac_hint or "")
    node = ctx.registry.node(mac) if mac else ctx.registry.node_by_ip(served.client)
    if node is None:
        return
    detail: dict[str, str | int | float | None] = {
        "area": served.area,
        "file": served.rel,
        "size": served.size,
        "sent": served.sent,
        "seconds": round(seconds, 4),
        "client": served.client,
    }
    if served.range:
        detail["range"] = served.range
    ctx.registry.add_event(node.mac, EventKind.HTTP_FILE, detail)
