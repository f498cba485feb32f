"""What the load sends: realistic payloads from the backend's own benchmark generator, each
weighed as the backend weighs it."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from .. import Backend, Job, PayloadError

__all__ = ["RequestMaker"]


@attrs.frozen(kw_only=True)
class RequestMaker:
    """Makes the load's requests for one route of a backend.

    Attributes:
        backend: the backend's name.
        route: the worker's route the requests go to.
        generate: makes a payload from a seeded random generator.
        parse: the route's own validation, which gives each payload's workload.
    """

    backend: str
    route: str
    generate: Callable[[random.Random], object]
    parse: Callable[[object], Job]

    @classmethod
    def for_backend(
        cls, backend: Backend, route: str | None = None, payload: object = None
    ) -> RequestMaker:
        """Requests for ``route`` (default: the backend's benchmark route).

        Args:
            backend: the backend the workers serve.
            route: one of its routes.
            payload: send this payload every time instead of generated ones (None: generate,
                with the route's ``benchmark_payload``, else the benchmark route's).

        Raises:
            ValueError: the backend has no such route, or refuses ``payload`` (the message
                says which fields).
        """
        route = route or backend.benchmark_route
        try:
            endpoint = backend.endpoint(route)
        except KeyError:
            routes = ", ".join(e.route for e in backend.endpoints)
            raise ValueError(
                f"backend {backend.name} has no route {route} (it has {routes})"
            ) from None
        generate = endpoint.benchmark_payload
        if payload is not None:
            try:
                endpoint.parse(payload)
            except PayloadError as exc:
                raise ValueError(
                    f"backend {backend.name} refuses the payload: {exc.errors}"
                ) from None
            fixed = payload

            def generate(rng: random.Random) -> object:
                return fixed

        elif generate is None:
            generate = backend.endpoint(backend.benchmark_route).benchmark_payload
        assert generate is not None  # a backend's benchmark route always has one
        return cls(backend=backend.name, route=route, generate=generate, parse=endpoint.parse)

    def make(self, rng: random.Random) -> tuple[object, float]:
        """A payload and its workload.

        Raises:
            PayloadError: the backend refuses its own generated payload (a bug in the backend).
        """
        payload = self.generate(rng)
        return payload, self.parse(payload).workload
