"""The Trio side of the lifecycle: tasks wait here for the machine to reach a state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from ._lifecycle import Lifecycle, State, StateChange

T = TypeVar("T")


@attrs.define(eq=False)
class LifecycleWatch:
    """Wakes waiting tasks after every transition of ``lifecycle``.

    The machine's listeners are synchronous; this one just sets a :class:`trio.Event` and
    replaces it, so any number of tasks can wait for "the next change" without polling.
    """

    lifecycle: Lifecycle
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    listeners: list[Callable[[StateChange], None]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        self.lifecycle.subscribe(self._on_change)

    def _on_change(self, change: StateChange) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[State], bool]) -> State:
        """Return the current state once ``predicate`` holds for it."""
        while True:
            changed = self._changed
            state = self.lifecycle.current
            if predicate(state):
                return state
            await changed.wait()

    async def wait_state(self, *states: State) -> State:
        """Return once the lifecycle is in one of ``states``."""
        return await self.wait_for(lambda s: s in states)

    async def wait_leave(self, state: State) -> State:
        """Return once the lifecycle is no longer in ``state``."""
        return await self.wait_for(lambda s: s is not state)

    async def run_while(self, state: State, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``await fn()`` while in ``state``; cancel it if the state is left.

        Returns:
            What ``fn`` returned, or None if the state was left before it finished.
        """
        results: list[T] = []
        async with trio.open_nursery() as nursery:

            async def guard() -> None:
                await self.wait_leave(state)
                nursery.cancel_scope.cancel()

            nursery.start_soon(guard)
            results.append(await fn())
            nursery.cancel_scope.cancel()
        if results and self.lifecycle.current is state:
            return results[0]
        return None
