"""The worker's container image: built with the docker SDK for x86_64, tagged by content, and pushed to the
stage's ECR repository by digest. Docker is needed only here, and only when an image is built."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import Problem
from .plan import APP_NAME, DOCKERFILE


class WorkerImage:
    """Builds and pushes the worker image; `docker` is a factory for a docker SDK client, called on first use."""

    def __init__(self, ecr: Any, docker: Callable[[], Any] | None, say: Callable[[str], None]) -> None:
        self._ecr = ecr
        self._factory = docker
        self.say = say

    def docker(self) -> Any:
        if self._factory is None:
            raise Problem("no Docker client", "install Docker, or pass --image-uri with an image already in ECR")
        try:
            return self._factory()
        except Exception as error:
            raise Problem(
                f"cannot reach Docker: {error}",
                "start the Docker daemon (docker info must work), or pass --image-uri with an image already in ECR",
            ) from error

    def build(self, docker_client: Any, project: Path, repository: str, stage: str) -> str:
        image, logs = docker_client.images.build(
            path=str(project),
            dockerfile=DOCKERFILE,
            tag=f"{APP_NAME}-worker:{stage}",
            # Lambda runs the worker on x86_64 (the stack says so), whatever machine builds it.
            platform="linux/amd64",
            pull=True,
            rm=True,
        )
        steps = [entry["stream"].strip() for entry in logs if str(entry.get("stream", "")).startswith("Step ")]
        if steps:
            self.say(f"  {len(steps)} build steps, the last: {steps[-1][:100]}")
        # Tag by content, so an unchanged image keeps its tag and the worker is not updated for nothing.
        tag = "img-" + str(image.id).split(":")[-1][:16]
        image.tag(repository, tag=tag)
        self.say(f"  built {image.id}, tagged {repository}:{tag}")
        return tag

    def push(self, docker_client: Any, repository: str, tag: str) -> str:
        token = self._ecr.get_authorization_token()["authorizationData"][0]
        username, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
        docker_client.login(username=username, password=password, registry=token["proxyEndpoint"], reauth=True)
        digest = None
        for line in docker_client.images.push(
            repository,
            tag=tag,
            stream=True,
            decode=True,
            auth_config={"username": username, "password": password},
        ):
            if line.get("error"):
                raise RuntimeError(f"docker push: {line['error']}")
            aux = line.get("aux") or {}
            digest = aux.get("Digest", digest)
        # By digest, so the function runs exactly what was pushed even if the tag moves later.
        return f"{repository}@{digest}" if digest else f"{repository}:{tag}"
