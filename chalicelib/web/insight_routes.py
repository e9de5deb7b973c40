"""Routes for exports, insights and the viewer, as a Chalice Blueprint that app.py registers. They parse
the request, call chalicelib.service.derived with the container's dependencies, and map errors with
chalicelib.web.errors, as app.py does (neither imports the other)."""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.config import auth_mode
from chalicelib.runtime import runtime
from chalicelib.service import derived as insight_services
from chalicelib.service.jobs import PartCache
from chalicelib.web.auth import NO_BODY, request_caller, route_protection
from chalicelib.web.errors import map_errors
from chalicelib.web.parsing import single_query_value

insight_routes = Blueprint(__name__)

PROTECTED = route_protection(auth_mode())

# Merged results recently read, per container: an export and the insights it needs read the result once.
_RESULTS = PartCache(capacity=2)


api = map_errors  # the same mapping as app.py's routes


def owner() -> str | None:
    """Who is calling (401/403 without valid credentials)."""
    return request_caller(insight_routes.current_request, runtime().settings).owner


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
