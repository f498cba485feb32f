"""Reading ComfyUI's answers: a rejected workflow, a history entry's messages, timings and
output images, for :mod:`._run`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

_DETAIL_CHARS = 2000
_TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def snippet(response: httpx.Response) -> str:
    """The start of ``response``'s text, for an error's detail."""
    return response.text[:_DETAIL_CHARS]


def rejection(data: object, response: httpx.Response) -> dict[str, Any]:
    """The 422 body for a workflow ComfyUI's validation refused."""
    if not isinstance(data, dict):
        return {"error": "ComfyUI rejected the workflow", "detail": snippet(response)}
    error = data.get("error")
    body: dict[str, Any] = {}
    if isinstance(error, dict):
        message = str(error.get("message") or "invalid workflow")
        body["type"] = error.get("type")
        if error.get("details"):
            body["details"] = error["details"]
    else:
        # Builds before ~2024 sent a plain string.
        message = str(error or "invalid workflow")
    body["error"] = f"ComfyUI rejected the workflow: {message}"
    node_errors = data.get("node_errors")
    body["node_errors"] = node_errors if isinstance(node_errors, dict) else {}
    return body


def messages(status: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    messages = status.get("messages")
    if not isinstance(messages, list):
        return []
    return [
        (m[0], m[1])
        for m in messages
        if isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], dict)
    ]


def _timestamp(messages: list[tuple[str, dict[str, Any]]], events: set[str]) -> float | None:
    for event, data in messages:
        stamp = data.get("timestamp")
        if event in events and isinstance(stamp, int | float) and not isinstance(stamp, bool):
            return stamp / 1000.0
    return None


def timings(
    messages: list[tuple[str, dict[str, Any]]], submitted_at: float, total: float
) -> dict[str, float | None]:
    """Queue wait and run time from ComfyUI's own timestamps (same host, same clock)."""
    start = _timestamp(messages, {"execution_start"})
    end = _timestamp(messages, set(_TERMINAL_EVENTS))
    return {
        "queued_s": None if start is None else round(max(start - submitted_at, 0.0), 3),
        "run_s": None if start is None or end is None else round(max(end - start, 0.0), 3),
        "total_s": round(total, 3),
    }


def output_images(outputs: object) -> list[dict[str, str]]:
    """The ``{"filename", "subfolder", "type"}`` of every image in a history entry's outputs."""
    images: list[dict[str, str]] = []
    if not isinstance(outputs, dict):
        return images
    for node_output in outputs.values():
        items = node_output.get("images") if isinstance(node_output, dict) else None
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                images.append(
                    {
                        "filename": item["filename"],
                        "subfolder": str(item.get("subfolder") or ""),
                        "type": str(item.get("type") or "output"),
                    }
                )
    return images
