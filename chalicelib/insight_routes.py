"""Routes for exports, insights and the viewer, as a Chalice Blueprint that app.py registers. They parse
the request, call chalicelib.insight_services with the container's dependencies, and map errors as app.py does."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from chalice import Blueprint, Response

from . import insight_services
from .auth import NO_BODY, route_protection
from .config import auth_mode
from .runtime import runtime
from .services import PartCache, single_query_value

insight_routes = Blueprint(__name__)

PROTECTED = route_protection(auth_mode())

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


def query(name: str) -> str | None:
    return single_query_value(insight_routes.current_request.query_params, name)


@insight_routes.route("/jobs/{job_id}/export", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_export(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return insight_services.job_export(rt.jobs, rt.store, _RESULTS, rt.settings, job_id, query("format"), owner=who)


@insight_routes.route("/jobs/{job_id}/insights", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_insights(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return insight_services.job_insights(rt.jobs, rt.store, _RESULTS, job_id, owner=who)


@insight_routes.route("/jobs/{job_id}/viewer", methods=["GET"], content_types=NO_BODY)
@api
def get_viewer(job_id: str) -> Response:
    # public (see PUBLIC_PATHS): the page holds no data and asks the API for it with the caller's key
    page, page_headers = insight_services.viewer_page(runtime().store, job_id)
    headers: dict[str, str | list[str]] = {**page_headers}
    return Response(body=page, status_code=200, headers=headers)


@insight_routes.route("/jobs/{job_id}/viewer/config", methods=["GET"], content_types=NO_BODY, **PROTECTED)
@api
def get_viewer_config(job_id: str) -> dict[str, Any]:
    who, rt = owner(), runtime()
    return insight_services.viewer_config(rt.jobs, rt.videos, rt.store, rt.settings, job_id, owner=who)
