"""`handpipe destroy`'s sequence: the usage plan, the Chalice app, the stacks and (unless --keep-data) the
bucket's objects, in the order AWS lets them go, each step telling what to do if it fails."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .api_keys import UsagePlans
from .clients import AwsClients, Runner
from .errors import error_code
from .network import Network
from .plan import DestroyOptions, DestroyResult, check_stage, ecr_stack_name, main_stack_name, usage_plan_name
from .stacks import Stacks, stack_outputs
from .steps import Steps
from .webhook_secret import delete_webhook_secret, secret_name


class Teardown:
    """Destroys one stage with the collaborators of the Deployment that made it."""

    def __init__(
        self,
        aws: AwsClients,
        runner: Runner,
        steps: Steps,
        stacks: Stacks,
        network: Network,
        usage_plans: UsagePlans,
        account: Callable[[], str],
        say: Callable[[str], None],
    ) -> None:
        self.aws = aws
        self.runner = runner
        self.steps = steps
        self.stacks = stacks
        self.network = network
        self.usage_plans = usage_plans
        self.account = account
        self.say = say

    def run(self, options: DestroyOptions) -> DestroyResult:  # noqa: C901 - the teardown steps in order, each skippable
        stage = options.stage
        project = options.project_dir.resolve()
        stack_name = main_stack_name(stage)
        result = DestroyResult()
        self.steps.begin(9)
        keep = "Retain" if options.keep_data else "Delete"

        with self.steps.step(
            f"checking the AWS account and the stacks of stage {stage!r}",
            "configure AWS credentials (aws configure, or AWS_PROFILE / --profile) for the account of the stage",
        ):
            check_stage(stage)
            self.say(f"  account {self.account()}, region {self.aws.region}")
            stack = self.stacks.describe(stack_name)
            outputs = stack_outputs(stack) if stack else {}
            resources = self.stacks.resources(stack_name) if stack else {}
            if stack is None:
                self.say(f"  no stack {stack_name}")

        with self.steps.step(
            f"removing usage plan {usage_plan_name(stage)} and its API keys",
            "remove the plan in the API Gateway console (Usage plans) and run again",
        ):
            self.usage_plans.remove(stage)

        deployed = project / ".chalice" / "deployed" / f"{stage}.json"
        with self.steps.step(
            f"chalice delete --stage {stage}",
            f"read chalice's message above; run `chalice delete --stage {stage}` in {project} to retry this step",
        ):
            if deployed.is_file():
                self.runner.chalice(["delete", "--stage", stage], cwd=project, env=self.aws.environment())
                result.removed.append(f"Chalice app (stage {stage})")
            else:
                self.say(f"  nothing recorded in {deployed.relative_to(project)}: no Chalice deployment to delete here")

        group = outputs.get("LambdaSecurityGroupId")
        with self.steps.step(
            "waiting for Lambda to release the functions' network interfaces",
            f"wait a while and run `handpipe destroy --stage {stage}` again (Lambda frees them within about 40 min)",
        ):
            if group:
                self.network.wait_for_interfaces_released(group, options.eni_timeout_s)
            else:
                self.say("  no security group of the stage's Lambdas; nothing to wait for")

        with self.steps.step(
            f"setting DataRetention={keep} on stack {stack_name}",
            f"run again; if the stack cannot be updated, delete it in the CloudFormation console ({stack_name})",
        ):
            if stack is not None:
                self.stacks.set_retention(stack, keep, options.keep_data)
            else:
                self.say("  no stack")

        bucket = outputs.get("BucketName")
        with self.steps.step(
            "emptying the bucket" if not options.keep_data else "keeping the bucket (--keep-data)",
            f"empty it yourself (aws s3 rm s3://{bucket} --recursive) and run again",
        ):
            if bucket and not options.keep_data:
                count = empty_bucket(self.aws.s3, bucket)
                self.say(f"  removed {count} object(s) from {bucket}")
                logs = outputs.get("LogBucketName")
                if logs:  # its access logs too, or the stack could not delete the log bucket
                    self.aws.s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})
                    self.say(f"  removed {empty_bucket(self.aws.s3, logs)} access log(s) from {logs}")
            elif bucket:
                self.say(f"  {bucket} stays, with its videos and results")

        with self.steps.step(
            f"deleting stack {stack_name}",
            f"look at the failed resources in the CloudFormation console ({stack_name}) and run again",
        ):
            if stack is not None:
                self.stacks.delete(stack_name)
                result.removed.append(f"stack {stack_name}")
            else:
                self.say("  no stack")

        with self.steps.step(
            f"deleting stack {ecr_stack_name(stage)} (the worker images)",
            f"look at the stack in the CloudFormation console ({ecr_stack_name(stage)}) and run again",
        ):
            if self.stacks.describe(ecr_stack_name(stage)) is not None:
                self.stacks.delete(ecr_stack_name(stage))
                result.removed.append(f"stack {ecr_stack_name(stage)}")
            else:
                self.say("  no stack")

        with self.steps.step(
            "deleting the webhook signing secret",
            f"delete the secret {secret_name(stage)} in the Secrets Manager console and run again",
        ):
            if options.keep_data:
                self.say(f"  {secret_name(stage)} stays")
            elif delete_webhook_secret(self.aws.secretsmanager, stage):
                result.removed.append(f"secret {secret_name(stage)}")
            else:
                self.say("  no secret")

        if options.keep_data:
            kept = {
                "bucket": bucket,
                "access log bucket": resources.get("LogBucket"),
                "database instance": resources.get("DbInstance"),
                "database secret": resources.get("DbSecret"),
                "webhook signing secret": secret_name(stage),
                "database subnet group": resources.get("DbSubnetGroup"),
                "database security group": resources.get("DbSecurityGroup"),
            }
            result.retained = {kind: value for kind, value in kept.items() if value}
        self.say(f"destroyed stage {stage}" + ("; kept:" if result.retained else ""))
        for kind, value in result.retained.items():
            self.say(f"  {kind}: {value}")
        if result.retained:
            self.say("  docs/deploy.md (Tearing down) shows how to delete them later")
        return result


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object of a bucket (versions and unfinished uploads too); 0 if it is gone already."""
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as error:
        if error_code(error) in ("404", "NoSuchBucket", "NotFound"):
            return 0
        raise
    count = 0
    # Versions and delete markers too, in case versioning was turned on by hand.
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        entries = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        for start in range(0, len(entries), 1000):
            batch = entries[start : start + 1000]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            count += len(batch)
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return count
