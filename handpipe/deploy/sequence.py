"""`handpipe deploy`'s sequence, step by step: checks, the image repository, the worker image, the main stack,
the Chalice stage files, `chalice deploy`, the migrations and the API keys. Each step's work is in the module
named for it; this one says in what order they run and what to do when one fails."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .api_keys import UsagePlans, api_key_path
from .chalice_config import api_url, check_auth_mode, current_db_connections, write_chalice_stage
from .clients import AwsClients, Runner
from .destroy import Teardown
from .errors import Problem
from .image import WorkerImage
from .network import Network
from .parameters import main_parameters
from .plan import (
    DOCKERFILE,
    ECR_TEMPLATE,
    MAIN_TEMPLATE,
    DeployOptions,
    DeployResult,
    DestroyOptions,
    DestroyResult,
    chalice_functions,
    check_stage,
    ecr_stack_name,
    function_name,
    main_stack_name,
    min_db_connections,
    split_db_connections,
    usage_plan_name,
)
from .stacks import Stacks
from .steps import Steps


class Deployment:
    """Deploys or destroys one stage. Every client is injected: boto3 clients, a docker SDK client factory
    (called only when an image is built), a runner for chalice and Lambda invocations, and the output."""

    def __init__(
        self,
        aws: AwsClients,
        runner: Runner,
        docker: Callable[[], Any] | None = None,
        *,
        say: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 10.0,
    ) -> None:
        self.aws = aws
        self.runner = runner
        self.say = say
        self.steps = Steps(say)
        self.stacks = Stacks(aws.cloudformation, say, sleep, poll_s)
        self.network = Network(aws.ec2, aws.region, say, sleep, poll_s)
        self.image = WorkerImage(aws.ecr, docker, say)
        self.usage_plans = UsagePlans(aws.apigateway, say)
        self._account: str | None = None

    @property
    def account(self) -> str:
        if self._account is None:
            self._account = str(self.aws.sts.get_caller_identity()["Account"])
        return self._account

    def deploy(self, options: DeployOptions) -> DeployResult:
        stage = options.stage
        project = options.project_dir.resolve()
        stack_name = main_stack_name(stage)
        self.steps.begin(9)

        with self.steps.step(
            f"checking the project, the AWS account and the network for stage {stage!r}",
            "configure AWS credentials (aws configure, or AWS_PROFILE / --profile) for the target account",
        ):
            check_stage(stage)
            check_auth_mode(project, stage, os.environ)
            for needed in ("app.py", ".chalice/config.json", DOCKERFILE, str(MAIN_TEMPLATE), str(ECR_TEMPLATE)):
                if not (project / needed).exists():
                    raise Problem(
                        f"{project / needed} is missing", "run from the handpipe project or pass --project-dir"
                    )
            functions = chalice_functions((project / "app.py").read_text())
            self.say(f"  account {self.account}, region {self.aws.region}")
            self.say(f"  Chalice functions in app.py: {', '.join(functions)}")
            previous = self.stacks.previous_parameters(stack_name)
            parameters = main_parameters(
                options,
                previous,
                project,
                stacks=self.stacks,
                network=self.network,
                secretsmanager=self.aws.secretsmanager,
            )
            reserve = parameters.get("ReserveConcurrency", "true") == "true"
            connections = options.max_db_connections or current_db_connections(project, stage)
            if reserve and connections < min_db_connections(functions):
                raise Problem(
                    f"--max-db-connections {connections} is too few for {len(functions)} functions",
                    f"pass at least {min_db_connections(functions)}, or --no-reserved-concurrency",
                )

        with self.steps.step(
            f"image repository (stack {ecr_stack_name(stage)})",
            f"look at the stack's events in the CloudFormation console ({ecr_stack_name(stage)})",
        ):
            ecr_outputs = self.stacks.apply(
                ecr_stack_name(stage),
                project / ECR_TEMPLATE,
                self.stacks.full_parameters(project / ECR_TEMPLATE, {"Stage": stage}),
            )
            repository = ecr_outputs["RepositoryUri"]

        if options.image_uri or options.skip_build:
            with self.steps.step("worker image: not building (--image-uri or --skip-build)", "check --image-uri"):
                image_uri = options.image_uri or previous.get("WorkerImageUri", "")
                if not image_uri:
                    raise Problem("the stage has no image yet", "deploy once without --skip-build")
                self.say(f"  {image_uri}")
            with self.steps.step("pushing the worker image: nothing to push", "check --image-uri"):
                pass
        else:
            docker_client = None
            with self.steps.step(
                f"building the worker image (docker build -f {DOCKERFILE} .)",
                f"start Docker and check that `docker build -f {DOCKERFILE} .` works in {project}",
            ):
                docker_client = self.image.docker()
                tag = self.image.build(docker_client, project, repository, stage)
            with self.steps.step(
                f"pushing the worker image to {repository}",
                "check that your credentials may push to ECR (ecr:GetAuthorizationToken, ecr:*Layer*, ecr:PutImage)",
            ):
                image_uri = self.image.push(docker_client, repository, tag)
                self.say(f"  {image_uri}")

        parameters["WorkerImageUri"] = image_uri
        creating_db = parameters["DatabaseMode"] == "create" and previous.get("DatabaseMode") != "create"
        with self.steps.step(
            f"stack {stack_name}: bucket, queues, worker, network, database"
            + (" (a new RDS database takes 10-20 minutes)" if creating_db else ""),
            f"look at the failed resources in the CloudFormation console (stack {stack_name}), fix, and run again",
        ):
            outputs = self.stacks.apply(stack_name, project / MAIN_TEMPLATE, parameters)

        reserved = split_db_connections(connections, functions) if reserve else None
        with self.steps.step(
            f"writing .chalice/config.json (stage {stage}) and .chalice/policy-{stage}.json",
            "check that .chalice/config.json is valid JSON and writable",
        ):
            config_path, policy_path = write_chalice_stage(
                project,
                stage,
                outputs,
                region=self.aws.region,
                account=self.account,
                functions=functions,
                reserved=reserved,
            )
            if reserved:
                shares = ", ".join(f"{name} {count}" for name, count in reserved.items())
                self.say(f"  reserved concurrency (at most {connections} DB connections): {shares}")
            else:
                self.say("  no reserved concurrency (--no-reserved-concurrency): DB connections are not capped")

        with self.steps.step(
            f"chalice deploy --stage {stage}",
            f"read chalice's message above; run `chalice deploy --stage {stage}` in {project} to retry this step",
        ):
            # Chalice imports app.py to find the consumers; their queue names come from this variable.
            env = {**self.aws.environment(), "HANDPIPE_QUEUE_PREFIX": outputs["QueuePrefix"]}
            self.runner.chalice(["deploy", "--stage", stage], cwd=project, env=env)

        migrate = function_name(stage, "migrate")
        with self.steps.step(
            f"migrating the database (invoking {migrate})",
            f"read the function's log (aws logs tail /aws/lambda/{migrate}); check that the database admits "
            f"security group {outputs['LambdaSecurityGroupId']}, that the subnets reach Secrets Manager (VPC "
            "endpoints or a NAT gateway), and that the secret holds host, port, username, password and dbname",
        ):
            result = self.runner.invoke(migrate, {})
            if result.function_error:
                payload = result.payload if isinstance(result.payload, dict) else {"errorMessage": result.payload}
                kind = payload.get("errorType", result.function_error)
                raise RuntimeError(f"{migrate} failed: {kind}: {payload.get('errorMessage')}")
            migration = result.payload
            applied = migration.get("applied") if isinstance(migration, dict) else None
            version = migration.get("version") if isinstance(migration, dict) else None
            self.say(f"  schema version {version}" + (f" (applied {applied})" if applied else " (already current)"))

        with self.steps.step(
            f"API keys: usage plan {usage_plan_name(stage)}",
            "look at the stage's API in the API Gateway console (Usage plans); run deploy again to retry",
        ):
            key = self.usage_plans.ensure(project, stage, options)

        url = api_url(project, stage)
        self.say(f"deployed stage {stage}" + (f": API at {url}" if url else ""))
        self.say(f"  bucket {outputs['BucketName']}, worker {outputs['WorkerFunctionName']}, image {image_uri}")
        return DeployResult(
            outputs=outputs,
            image_uri=image_uri,
            api_url=url,
            config_path=config_path,
            policy_path=policy_path,
            migration=migration,
            api_key=key,
            api_key_path=api_key_path(project, stage) if key else None,
        )

    def destroy(self, options: DestroyOptions) -> DestroyResult:
        teardown = Teardown(
            self.aws,
            self.runner,
            self.steps,
            self.stacks,
            self.network,
            self.usage_plans,
            account=lambda: self.account,
            say=self.say,
        )
        return teardown.run(options)
