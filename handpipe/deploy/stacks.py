"""The stage's CloudFormation stacks: reading templates, creating or updating a stack with every parameter
given explicitly, waiting while printing its events, deleting it, and the retention switch destroy flips."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import Problem, error_message
from .plan import CAPABILITIES


def load_template(text: str) -> dict[str, Any]:
    """A CloudFormation YAML template as data, its short-form tags (!Ref, !Sub, ...) read as their long forms."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        if suffix == "Ref":
            return {"Ref": value}
        if suffix == "GetAtt" and isinstance(value, str):
            return {"Fn::GetAtt": value.split(".", 1)}
        return {f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", intrinsic)
    document: dict[str, Any] = yaml.load(text, Loader=Loader)  # a SafeLoader plus tag constructors
    return document


def template_parameters(template_text: str) -> dict[str, dict[str, Any]]:
    return dict(load_template(template_text).get("Parameters", {}))


def stack_outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stack.get("Outputs", [])}


class Stacks:
    """CloudFormation for one account and region; `say` gets the progress, `sleep` paces the polling."""

    def __init__(
        self, cloudformation: Any, say: Callable[[str], None], sleep: Callable[[float], None], poll_s: float
    ) -> None:
        self._cloudformation = cloudformation
        self.say = say
        self.sleep = sleep
        self.poll_s = poll_s

    def describe(self, name: str) -> dict[str, Any] | None:
        try:
            stacks = self._cloudformation.describe_stacks(StackName=name)["Stacks"]
        except Exception as error:
            if "does not exist" in error_message(error):
                return None
            raise
        return stacks[0] if stacks else None

    def apply(self, name: str, template: Path, parameters: Mapping[str, str]) -> dict[str, str]:
        """Create or update a stack, wait for it, and return its outputs."""
        stack = self.describe(name)
        if stack is not None and stack["StackStatus"] == "ROLLBACK_COMPLETE":
            # A first creation that failed leaves a stack that can only be deleted.
            self.say(f"  {name} failed to create earlier (ROLLBACK_COMPLETE); deleting it before creating it again")
            self.delete(name)
            stack = None
        if stack is not None and stack["StackStatus"].endswith("_IN_PROGRESS"):
            raise Problem(
                f"stack {name} is busy ({stack['StackStatus']})",
                "wait until it settles (CloudFormation console) and run the command again",
            )
        arguments = {
            "StackName": name,
            "TemplateBody": template.read_text(),
            "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            "Capabilities": CAPABILITIES,
            "Tags": [{"Key": "handpipe:stage", "Value": parameters.get("Stage", "")}],
        }
        started = time.time()
        if stack is None:
            self.say(f"  creating {name}")
            self._cloudformation.create_stack(**arguments)
            goal = "CREATE_COMPLETE"
        else:
            self.say(f"  updating {name}")
            try:
                self._cloudformation.update_stack(**arguments)
            except Exception as error:
                if "No updates are to be performed" in error_message(error):
                    self.say("  no changes")
                    return stack_outputs(stack)
                raise
            goal = "UPDATE_COMPLETE"
        final = self.wait(name, started)
        if final["StackStatus"] != goal:
            reasons = self._failure_reasons(name, started)
            raise Problem(
                f"stack {name} ended in {final['StackStatus']}"
                + (": " + "; ".join(reasons) if reasons else f" ({final.get('StackStatusReason', 'no reason given')})")
            )
        return stack_outputs(final)

    def wait(self, name: str, started: float) -> dict[str, Any]:
        """Poll until the stack settles, printing its resources' progress as it goes."""
        seen: set[str] = set()
        last_note = time.time()
        while True:
            stack = self.describe(name)
            if stack is None:
                return {"StackStatus": "DELETE_COMPLETE", "StackName": name}
            self._print_events(stack["StackId"], started, seen)
            status = str(stack["StackStatus"])
            if not status.endswith("_IN_PROGRESS"):
                return stack
            if time.time() - last_note >= 60:
                last_note = time.time()
                self.say(f"  still {status} ({(last_note - started) / 60:.0f} min)")
            self.sleep(self.poll_s)

    def _events(self, stack: str) -> list[dict[str, Any]]:
        try:
            return list(self._cloudformation.describe_stack_events(StackName=stack).get("StackEvents", []))
        except Exception:  # progress output is a courtesy; never fail a deploy over it
            return []

    def _print_events(self, stack: str, started: float, seen: set[str]) -> None:
        for event in reversed(self._events(stack)):
            if event["EventId"] in seen or event["Timestamp"].timestamp() < started - 5:
                continue
            seen.add(event["EventId"])
            if event.get("ResourceType") == "AWS::CloudFormation::Stack":
                continue
            reason = f": {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
            self.say(f"  {event['ResourceStatus']:<20} {event['LogicalResourceId']}{reason}"[:240])

    def _failure_reasons(self, stack: str, started: float) -> list[str]:
        reasons = []
        for event in self._events(stack):
            if event["Timestamp"].timestamp() < started - 5 or not str(event.get("ResourceStatus")).endswith("FAILED"):
                continue
            reason = event.get("ResourceStatusReason", "")
            # CloudFormation reports every resource it cancelled because of the real failure; skip those.
            if "cancelled" not in reason.lower():
                reasons.append(f"{event['LogicalResourceId']}: {reason}")
        return reasons[:5]

    def delete(self, name: str) -> None:
        stack = self.describe(name)
        if stack is None:
            return
        started = time.time()
        self._cloudformation.delete_stack(StackName=name)
        final = self._wait_for_id(stack["StackId"], started)
        if final != "DELETE_COMPLETE":
            reasons = self._failure_reasons(stack["StackId"], started)
            raise Problem(f"stack {name} ended in {final}" + (": " + "; ".join(reasons) if reasons else ""))

    def _wait_for_id(self, stack_id: str, started: float) -> str:
        # A deleted stack is found only by its id, not by its name.
        seen: set[str] = set()
        while True:
            stack = self.describe(stack_id)
            if stack is None:
                return "DELETE_COMPLETE"
            self._print_events(stack_id, started, seen)
            status = str(stack["StackStatus"])
            if not status.endswith("_IN_PROGRESS"):
                return status
            self.sleep(self.poll_s)

    def previous_parameters(self, stack_name: str) -> dict[str, str]:
        stack = self.describe(stack_name)
        if stack is None:
            return {}
        return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}

    def full_parameters(
        self, template: Path, given: Mapping[str, Any], previous: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Every parameter, explicitly: template default < previous value < given. Sending them all keeps an
        update from silently reverting a setting to its default (CloudFormation applies defaults, not previous
        values, to parameters an update leaves out)."""
        declared = template_parameters(template.read_text())
        values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
        values.update({name: value for name, value in (previous or {}).items() if name in declared})
        values.update({name: str(value) for name, value in given.items() if value is not None})
        return values

    def resources(self, stack_name: str) -> dict[str, str]:
        listed = self._cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
        return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in listed if r.get("LogicalResourceId")}

    def set_retention(self, stack: Mapping[str, Any], value: str, required: bool) -> None:
        current = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        if current.get("DataRetention") == value:
            self.say(f"  already {value}")
            return
        if not str(stack["StackStatus"]).endswith("_COMPLETE") or stack["StackStatus"] == "DELETE_COMPLETE":
            message = f"stack {stack['StackName']} is {stack['StackStatus']} and cannot be updated"
            if required:  # never delete a stack whose data the user asked to keep while it says Delete
                raise Problem(
                    message, "fix the stack in the CloudFormation console, then run destroy --keep-data again"
                )
            self.say(f"  {message}; deleting it as it is")
            return
        current["DataRetention"] = value
        # The stack's own template, so destroy changes nothing but the retention.
        body = self._cloudformation.get_template(StackName=stack["StackName"], TemplateStage="Original")
        template = body["TemplateBody"]
        started = time.time()
        self._cloudformation.update_stack(
            StackName=stack["StackName"],
            TemplateBody=template if isinstance(template, str) else json.dumps(template),
            Parameters=[{"ParameterKey": key, "ParameterValue": val} for key, val in current.items()],
            Capabilities=CAPABILITIES,
        )
        final = self.wait(stack["StackName"], started)
        if final["StackStatus"] != "UPDATE_COMPLETE":
            raise Problem(f"stack {stack['StackName']} ended in {final['StackStatus']}")
