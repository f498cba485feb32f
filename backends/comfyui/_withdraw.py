"""Withdrawing a prompt the client abandoned, so that ComfyUI does not run it to the end.

Closing an HTTP connection to ComfyUI cancels nothing: a prompt whose client left (or whose
request timed out) stays queued or running unless it is withdrawn. ``GET /queue`` tells where it
is; ``POST /queue {"delete"}`` takes it out while it is pending, ``POST /interrupt
{"prompt_id"}`` stops it while it runs, until ComfyUI no longer holds it.
"""

from __future__ import annotations

import logging

import httpx
import trio

from ._settings import CALL_TIMEOUT, api_url

log = logging.getLogger("backends.comfyui")


async def withdraw(
    http: httpx.AsyncClient,
    base: str,
    prompt_id: str,
    *,
    acknowledged: bool,
    cleanup_timeout: float,
) -> None:
    """Make sure ComfyUI no longer holds the prompt: delete it if pending, interrupt it if
    running. Shielded (it runs while the request is being cancelled), and bounded.

    ``acknowledged``: ComfyUI answered the submission (the prompt was queued), so a prompt no
    longer in its queue is gone rather than still on its way in.
    """
    interrupted_at = deleted_at = absent_since = -1.0
    with trio.move_on_after(cleanup_timeout, shield=True) as scope:
        try:
            while True:
                now = trio.current_time()
                where = await _where(http, base, prompt_id)
                if where == "running":
                    # Once, then again only if it is still running a second later.
                    if now - interrupted_at > 1.0:
                        log.info("prompt %s abandoned: interrupting it in ComfyUI", prompt_id)
                        await http.post(
                            api_url(base, "/interrupt"),
                            json={"prompt_id": prompt_id},
                            timeout=CALL_TIMEOUT,
                        )
                        interrupted_at = now
                elif where == "pending":
                    if now - deleted_at > 1.0:
                        log.info("prompt %s abandoned: deleting it from ComfyUI's queue", prompt_id)
                        await http.post(
                            api_url(base, "/queue"),
                            json={"delete": [prompt_id]},
                            timeout=CALL_TIMEOUT,
                        )
                        deleted_at = now
                elif acknowledged:
                    return
                else:
                    # The submission may still be on its way into the queue.
                    if absent_since < 0:
                        absent_since = now
                    elif now - absent_since > 0.5:
                        return
                await trio.sleep(0.05)
        except httpx.HTTPError as exc:
            log.warning("could not withdraw prompt %s from ComfyUI: %s", prompt_id, exc)
            return
    if scope.cancelled_caught:
        log.warning(
            "prompt %s: ComfyUI still holds it %g s after it was abandoned",
            prompt_id,
            cleanup_timeout,
        )


async def _where(http: httpx.AsyncClient, base: str, prompt_id: str) -> str | None:
    """``"running"``, ``"pending"``, or None (not in ComfyUI's queue)."""
    response = await http.get(api_url(base, "/queue"), timeout=CALL_TIMEOUT)
    try:
        queue = response.json()
    except ValueError:
        queue = None
    if not isinstance(queue, dict):
        raise httpx.HTTPError(f"GET /queue answered HTTP {response.status_code}")
    for where, key in (("running", "queue_running"), ("pending", "queue_pending")):
        items = queue.get(key)
        if isinstance(items, list) and any(
            isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items
        ):
            return where
    return None
