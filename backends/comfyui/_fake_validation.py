"""The fake ComfyUI's validation of submitted prompts, and the order a valid one runs in.

Validation follows ComfyUI's ``validate_prompt``: every node needs a known ``class_type``; the
output nodes (``SaveImage``, ``PreviewImage``) are validated with everything they depend on;
literal inputs are converted (``"512"`` becomes 512) and checked against min/max and combo
lists; links (``[node_id, output_index]``) must point to an output of the input's type. Outputs
whose graph is invalid are dropped (listed in ``node_errors``); if none is left the prompt is
refused with ``prompt_outputs_failed_validation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._fake_nodes import InputSpec, NodeClass

_MAX_LISTED_CHOICES = 20
"""Like ComfyUI, a longer combo list is described by its length only."""


@attrs.frozen(kw_only=True)
class Verdict:
    """The outcome of validating a prompt.

    Attributes:
        error: the top-level error object when the prompt is refused (None: accepted).
        outputs: the output nodes to execute.
        node_errors: per node: ``{"errors", "dependent_outputs", "class_type"}``.
        log_lines: what ComfyUI logs about it.
    """

    error: dict[str, Any] | None
    outputs: tuple[str, ...] = ()
    node_errors: dict[str, Any] = attrs.field(factory=dict)
    log_lines: tuple[str, ...] = ()


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _sort_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


@attrs.define(eq=False)
class _Validator:
    prompt: dict[str, Any]
    classes: Mapping[str, NodeClass]
    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = attrs.field(factory=dict)
    _visiting: set[str] = attrs.field(factory=set)

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        if node_id in self._visiting:
            return False, [_error("dependency_cycle", "Dependency cycle detected", node_id)]
        self._visiting.add(node_id)
        try:
            result = self._check(node_id)
        finally:
            self._visiting.discard(node_id)
        self.validated[node_id] = result
        return result

    def _check(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        node = self.prompt[node_id]
        spec = self.classes[node["class_type"]]
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            inputs = node["inputs"] = {}
        errors: list[dict[str, Any]] = []
        valid = True
        for name, info in spec.required.items():
            if name not in inputs:
                errors.append(
                    _error(
                        "required_input_missing", "Required input is missing", name, input_name=name
                    )
                )
                continue
            value = inputs[name]
            if isinstance(value, list):
                linked_ok = self._link(name, info, value, errors)
                valid = valid and linked_ok
                continue
            if info.is_link:
                errors.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        input_name=name,
                        input_config=info.config(),
                        received_value=value,
                    )
                )
                continue
            converted = self._literal(name, info, value, errors)
            if converted is not None:
                inputs[name] = converted
        return (not errors and valid), errors

    def _link(
        self, name: str, info: InputSpec, value: list[Any], errors: list[dict[str, Any]]
    ) -> bool:
        """Check a link; False when the linked node is itself invalid (no error here)."""
        config = info.config()
        if len(value) != 2:
            errors.append(
                _error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=value,
                )
            )
            return True
        source_id, slot = str(value[0]), value[1]
        source = self.prompt.get(source_id)
        if (
            source is None
            or isinstance(slot, bool)
            or not isinstance(slot, int)
            or not 0 <= slot < len(self.classes[source["class_type"]].outputs)
        ):
            problem = f"'{source_id}'" if source is None else f"bad output index {slot!r}"
            errors.append(
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    problem,
                    input_name=name,
                    input_config=config,
                    exception_message=problem,
                    exception_type="KeyError" if source is None else "IndexError",
                    linked_node=value,
                )
            )
            return True
        received = self.classes[source["class_type"]].outputs[slot]
        if received != info.type:
            errors.append(
                _error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({info.type})",
                    input_name=name,
                    input_config=config,
                    received_type=received,
                    linked_node=value,
                )
            )
            return True
        linked_valid, _ = self.node(source_id)
        return linked_valid

    def _literal(self, name: str, info: InputSpec, value: Any, errors: list[dict[str, Any]]) -> Any:
        config = info.config()
        if isinstance(info.type, tuple):
            if value not in info.type:
                listed = (
                    f"(list of length {len(info.type)})"
                    if len(info.type) > _MAX_LISTED_CHOICES
                    else str(list(info.type))
                )
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {listed}",
                        input_name=name,
                        input_config=config if len(info.type) <= _MAX_LISTED_CHOICES else None,
                        received_value=value,
                    )
                )
            return None
        convert: Any = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}[info.type]
        try:
            converted = convert(value)
        except (TypeError, ValueError, OverflowError) as exc:
            errors.append(
                _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {info.type} value",
                    f"{name}, {value}, {exc}",
                    input_name=name,
                    input_config=config,
                    received_value=value,
                    exception_message=str(exc),
                )
            )
            return None
        minimum, maximum = info.options.get("min"), info.options.get("max")
        if minimum is not None and converted < minimum:
            errors.append(
                _error(
                    "value_smaller_than_min",
                    f"Value {converted} smaller than min of {minimum}",
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=converted,
                )
            )
        elif maximum is not None and converted > maximum:
            errors.append(
                _error(
                    "value_bigger_than_max",
                    f"Value {converted} bigger than max of {maximum}",
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=converted,
                )
            )
        return converted


def validate_prompt(prompt: object, classes: Mapping[str, NodeClass]) -> Verdict:
    """Validate a submitted prompt as ComfyUI does; literal inputs are converted in place.

    Args:
        prompt: the ``prompt`` of ``POST /prompt`` (a deep copy the caller may keep).
        classes: the node classes (see :func:`catalogue`).
    """
    if not isinstance(prompt, dict):
        return Verdict(
            error=_error(
                "invalid_prompt",
                "Cannot execute because the prompt is not an object of nodes.",
                type(prompt).__name__,
            )
        )
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return Verdict(
                error=_error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            )
        spec = classes.get(node["class_type"]) if isinstance(node["class_type"], str) else None
        if spec is None:
            return Verdict(
                error=_error(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
            )
        if spec.output_node:
            outputs.append(node_id)
    if not outputs:
        return Verdict(error=_error("prompt_no_outputs", "Prompt has no outputs"))
    validator = _Validator(prompt=prompt, classes=classes)
    good: list[str] = []
    node_errors: dict[str, Any] = {}
    lines: list[str] = []
    for output in sorted(outputs, key=_sort_key):
        valid, _ = validator.node(output)
        if valid:
            good.append(output)
            continue
        lines.append(f"Failed to validate prompt for output {output}:")
        for node_id, (node_valid, reasons) in validator.validated.items():
            # Nodes downstream of a bad one are invalid too, without errors of their own.
            if node_valid or not reasons:
                continue
            if node_id not in node_errors:
                class_type = prompt[node_id]["class_type"]
                node_errors[node_id] = {
                    "errors": reasons,
                    "dependent_outputs": [],
                    "class_type": class_type,
                }
                lines.append(f"* {class_type} {node_id}:")
                lines.extend(f"  - {r['message']}: {r['details']}" for r in reasons)
            if output not in node_errors[node_id]["dependent_outputs"]:
                node_errors[node_id]["dependent_outputs"].append(output)
        lines.append("Output will be ignored")
    if not good:
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        return Verdict(error=error, node_errors=node_errors, log_lines=tuple(lines))
    return Verdict(error=None, outputs=tuple(good), node_errors=node_errors, log_lines=tuple(lines))


def execution_order(prompt: Mapping[str, Any], outputs: Sequence[str]) -> list[str]:
    """The nodes to run for ``outputs``, each after the nodes it links to (validated input)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                visit(str(value[0]))
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order
