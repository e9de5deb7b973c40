"""Routes for exports, insights and the viewer, as a Chalice Blueprint that app.py registers. They parse
the request, call chalicelib.insight_services with the container's dependencies, and map errors as app.py does."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from chalice import Blueprint, IAMAuthorizer, Response

from . import insight_services
from .auth import authenticate
from .config import auth_mode
from .runtime import runtime
from .services import PartCache

insight_routes = Blueprint(__name__)

# What app.PROTECTED holds (app.py imports this module, so it cannot be read from there at import time):
# API Gateway checks keys or IAM signatures in AWS, the app checks them again for each request.
PROTECTED: dict[str, Any] = (
    {"api_key_required": True}
    if auth_mode() == "api_key"
    else {"authorizer": IAMAuthorizer()}
    if auth_mode() == "iam"
    else {}
)

# Merged results recently read, per container: an export and the insights it needs read the result once.
_RESULTS = PartCache(capacity=2)


def api(view: Callable[..., Any]) -> Callable[..., Any]:
    """app.api, the app's mapping of service errors to JSON responses, looked up on each call because
    app.py imports this module."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from app import api as map_errors

        return map_errors(view)(*args, **kwargs)

    return wrapper


def owner() -> str | None:
    """app.owner(): who is calling (401/403 without valid credentials), looked up on each call."""
    from app import owner as app_owner

    return app_owner()


def viewer_owner() -> str | None:
    """The caller of the viewer, whose page a browser opens without headers: the x-api-key header, or else
    the api_key query parameter (a credential, like the header: the document lists it as a security scheme),
    which works where the app itself checks keys (the local stack); API Gateway checks only the header."""
    request = insight_routes.current_request
    params: Mapping[str, str] = request.query_params or {}
    api_key = params.get("api_key")
    if request.headers.get("x-api-key") or not api_key:
        return owner()
    settings = runtime().settings
    headers = {**dict(request.headers), "x-api-key": api_key}
    return authenticate(settings.auth, headers, request.context, settings.api_keys, settings.scope_callers).owner


def query(name: str) -> str | None:
    params: Mapping[str, str] = insight_routes.current_request.query_params or {}
    return params.get(name)


@insight_routes.route("/jobs/{job_id}/export", methods=["GET"], **PROTECTED)
@api
def get_export(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return insight_services.job_export(rt.jobs, rt.store, _RESULTS, rt.settings, job_id, query("format"), owner=who)


@insight_routes.route("/jobs/{job_id}/insights", methods=["GET"], **PROTECTED)
@api
def get_insights(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return insight_services.job_insights(rt.jobs, rt.store, _RESULTS, job_id, owner=who)


@insight_routes.route("/jobs/{job_id}/viewer", methods=["GET"], **PROTECTED)
@api
def get_viewer(job_id: str) -> Response:
    who, rt = viewer_owner(), runtime()
    page, page_headers = insight_services.viewer_page(rt.jobs, rt.videos, rt.store, rt.settings, job_id, owner=who)
    headers: dict[str, str | list[str]] = {**page_headers}
    return Response(body=page, status_code=200, headers=headers)
