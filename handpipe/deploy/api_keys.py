"""API keys for a stage with HANDPIPE_AUTH=api_key: the usage plan (per-key throttle and quota) that
Chalice does not make, the owner's first key written to a file only they can read, and their removal."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chalice_config import deployed_rest_api, stage_environment
from .errors import Problem
from .plan import (
    APP_NAME,
    DEFAULT_DAILY_QUOTA,
    DEFAULT_THROTTLE_BURST,
    DEFAULT_THROTTLE_RATE,
    DeployOptions,
    usage_plan_name,
)


def api_key_path(project: Path, stage: str) -> Path:
    """Where deploy leaves the key it made for a stage (.handpipe/ is git-ignored)."""
    return project / ".handpipe" / f"api-key-{stage}"


def write_secret(path: Path, value: str) -> None:
    """Write a secret readable by its owner only: created 0600, so it is never readable by others,
    not even between the write and a chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


class UsagePlans:
    """The stage's usage plan and the keys deploy made for it, in API Gateway."""

    def __init__(self, apigateway: Any, say: Callable[[str], None]) -> None:
        self._gateway = apigateway
        self.say = say

    def ensure(self, project: Path, stage: str, options: DeployOptions) -> str | None:
        """With HANDPIPE_AUTH=api_key (the default) API Gateway admits only keys of a usage plan of the API's
        stage, and Chalice makes neither: make the plan, and on the first deploy one key for its owner."""
        config = json.loads((project / ".chalice" / "config.json").read_text())
        mode = stage_environment(config, stage).get("HANDPIPE_AUTH", "api_key")  # chalicelib.config's default
        if mode != "api_key":
            self.say(f"  HANDPIPE_AUTH={mode}: the API takes no keys")
            return None
        api_id = deployed_rest_api(project, stage).get("rest_api_id")
        if not api_id:
            raise Problem(f"chalice recorded no REST API for stage {stage} in .chalice/deployed/{stage}.json")
        api_stage = config["stages"][stage].get("api_gateway_stage") or config.get("api_gateway_stage") or "api"
        gateway = self._gateway
        name = usage_plan_name(stage)
        plan = self.find(name)
        throttle = plan.get("throttle", {}) if plan else {}
        quota = plan.get("quota", {}) if plan else {}
        rate = options.throttle_rate or float(throttle.get("rateLimit") or DEFAULT_THROTTLE_RATE)
        burst = options.throttle_burst or int(throttle.get("burstLimit") or DEFAULT_THROTTLE_BURST)
        daily = options.daily_quota or int(quota.get("limit") or DEFAULT_DAILY_QUOTA)
        if plan is None:
            plan = gateway.create_usage_plan(
                name=name,
                description=f"handpipe {stage}: callers of the API (x-api-key)",
                apiStages=[{"apiId": api_id, "stage": api_stage}],
                throttle={"rateLimit": rate, "burstLimit": burst},
                quota={"limit": daily, "period": "DAY"},
            )
        else:
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[
                    {"op": "replace", "path": "/throttle/rateLimit", "value": f"{rate:g}"},
                    {"op": "replace", "path": "/throttle/burstLimit", "value": str(burst)},
                    {"op": "replace", "path": "/quota/limit", "value": str(daily)},
                    {"op": "replace", "path": "/quota/period", "value": "DAY"},
                ],
            )
        self.say(f"  each key: {rate:g} requests/s (bursts of {burst}), {daily} a day")
        if {"apiId": api_id, "stage": api_stage} not in [
            {"apiId": s.get("apiId"), "stage": s.get("stage")} for s in plan.get("apiStages", [])
        ]:
            # Chalice made a new REST API (e.g. after a delete); the plan must cover it.
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[{"op": "add", "path": "/apiStages", "value": f"{api_id}:{api_stage}"}],
            )
        keys = gateway.get_usage_plan_keys(usagePlanId=plan["id"]).get("items", [])
        if keys:
            self.say(f"  usage plan {name} ({plan['id']}) has {len(keys)} key(s); docs/deploy.md shows how to add one")
            return None
        key = gateway.create_api_key(
            name=f"{APP_NAME}-{stage}-owner", description=f"handpipe {stage}: the deployer's key", enabled=True
        )
        gateway.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
        # Written to a file only the user can read: a key printed to stdout ends up in CI logs and scrollback.
        path = api_key_path(project, stage)
        write_secret(path, str(key["value"]))
        self.say(f"  API key {key['id']} for the x-api-key header: written to {path} (mode 0600)")
        self.say(f"  (shown again by: aws apigateway get-api-key --api-key {key['id']} --include-value)")
        return str(key["value"])

    def find(self, name: str) -> dict[str, Any] | None:
        for page in self._gateway.get_paginator("get_usage_plans").paginate():
            for plan in page.get("items", []):
                if plan.get("name") == name:
                    return dict(plan)
        return None

    def remove(self, stage: str) -> None:
        """Remove the stage's usage plan (API Gateway refuses to delete an API a plan still covers) and the
        keys deploy made for it; other keys are only detached."""
        gateway = self._gateway
        plan = self.find(usage_plan_name(stage))
        if plan is None:
            self.say(f"  no usage plan {usage_plan_name(stage)}")
            return
        for key in gateway.get_usage_plan_keys(usagePlanId=plan["id"]).get("items", []):
            gateway.delete_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"])
            if str(key.get("name", "")).startswith(f"{APP_NAME}-{stage}-"):
                gateway.delete_api_key(apiKey=key["id"])
            else:
                self.say(f"  detached API key {key.get('name', key['id'])}, which deploy did not make; it is kept")
        stages = [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])]
        if stages:
            gateway.update_usage_plan(
                usagePlanId=plan["id"],
                patchOperations=[{"op": "remove", "path": "/apiStages", "value": value} for value in stages],
            )
        gateway.delete_usage_plan(usagePlanId=plan["id"])
        self.say(f"  removed usage plan {usage_plan_name(stage)}")
