"""The Trio side of the lifecycle: waiting for states, and running services while in them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import trio

from ._lifecycle import Service, State, states_running
from ._machine import Lifecycle, StateChange


@attrs.define(eq=False)
class LifecycleWatch:
    """Wakes waiting tasks after every transition of ``lifecycle``.

    The machine's listeners are synchronous; this one just sets a :class:`trio.Event` and
    replaces it, so any number of tasks can wait for "the next change" without polling.
    """

    lifecycle: Lifecycle
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

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


async def run_in_states(
    watch: LifecycleWatch,
    service: Service,
    run: Callable[[], Awaitable[object]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``service`` as the lifecycle table says: a fresh ``run()`` for every stay in the
    states whose :attr:`~pyworker._lifecycle.StateInfo.services` name it.

    A stay begins when the lifecycle enters one of those states and ends with the first
    transition to a state that does not run the service; ``run()`` is then cancelled (if it has
    not returned already). A stay that ends and begins again between two checkpoints (ready →
    benchmarking → ready fired in one go, say) still ends the old run: the listener sees every
    transition, so a new model server never inherits the old one's run.

    Args:
        watch: the lifecycle to follow.
        service: which service this is.
        run: one run of the service (a new call per stay).
        task_status: ``started()`` at once, with no value.

    Never returns; cancel it to stop.
    """
    states = states_running(service)
    lifecycle = watch.lifecycle
    task_status.started()
    while True:
        await watch.wait_state(*states)
        # No checkpoint between the wait and the subscription: the stay cannot end unseen.
        stay = _Stay(states)
        unsubscribe = lifecycle.subscribe(stay.on_change)
        try:
            with stay.scope:
                await run()
                await stay.over.wait()
        finally:
            unsubscribe()


@attrs.define(eq=False)
class _Stay:
    """One stay in a service's states: over, and its run cancelled, on the first transition
    out of them."""

    states: frozenset[State]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    over: trio.Event = attrs.field(factory=trio.Event)

    def on_change(self, change: StateChange) -> None:
        if change.dest not in self.states:
            self.over.set()
            self.scope.cancel()


@attrs.define(eq=False)
class Finals:
    """The services that make a last delivery when the worker stops (the final report, the
    last records): :meth:`wait` returns once every tracked run has returned, so the worker
    cancels the rest only then."""

    _pending: int = 0
    _done: trio.Event = attrs.Factory(trio.Event)

    def track(self, run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``run``, tracked."""
        self._pending += 1

        async def tracked() -> None:
            try:
                await run()
            finally:
                self._pending -= 1
                if not self._pending:
                    self._done.set()

        return tracked

    async def wait(self) -> None:
        """Return once every tracked run has returned."""
        await self._done.wait()
