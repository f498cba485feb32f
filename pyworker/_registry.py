"""Finding backends by name: the packages in ``backends/``, and the names people type for them.

A backend is a package ``backends/NAME/`` (see :func:`load_backend`). People also ask for the
model server they run (``vllm``, ``text-generation-inference``) or spell the name with a hyphen
(``hello-world``): :data:`ALIASES` maps those to a backend and the settings that make it that
server, and anything else close to a known name gets a "did you mean".
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
from collections.abc import Mapping

import attrs

from ._backend import Backend

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class UnknownBackendError(LookupError):
    """No backend of that name exists."""


@attrs.frozen(kw_only=True)
class Alias:
    """Another name for a backend, with the settings it implies."""

    backend: str
    env: Mapping[str, str] = attrs.field(factory=dict)
    """Variables set for the backend unless the environment sets them already."""


ALIASES: Mapping[str, Alias] = {
    "vllm": Alias(backend="openai", env={"OPENAI_SERVER": "vllm"}),
    "sglang": Alias(backend="openai", env={"OPENAI_SERVER": "sglang"}),
    "llamacpp": Alias(backend="openai", env={"OPENAI_SERVER": "llamacpp"}),
    "llama_cpp": Alias(backend="openai", env={"OPENAI_SERVER": "llamacpp"}),
    "llama_server": Alias(backend="openai", env={"OPENAI_SERVER": "llamacpp"}),
    "llama_cpp_python": Alias(backend="openai", env={"OPENAI_SERVER": "llama-cpp-python"}),
    "text_generation_inference": Alias(backend="tgi"),
    "comfy": Alias(backend="comfyui"),
}
"""Names people use for a backend, in their canonical form (lower case, ``_`` for ``-``)."""


def available_backends() -> list[str]:
    """The names of the backend packages in ``backends/`` (private ones start with ``_``)."""
    import backends

    return sorted(
        info.name
        for info in pkgutil.iter_modules(backends.__path__)
        if info.ispkg and _NAME.match(info.name) and not info.name.startswith("_")
    )


def resolve(name: str, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The backend package a name means, and its environment (an alias's settings added).

    Raises:
        UnknownBackendError: no backend is called that (the message suggests close names).
    """
    canonical = name.strip().lower().replace("-", "_").replace(".", "_")
    environment = dict(env or {})
    alias = ALIASES.get(canonical)
    if alias is not None:
        canonical = alias.backend
        for variable, value in alias.env.items():
            environment.setdefault(variable, value)
    known = available_backends()
    if canonical not in known:
        close = difflib.get_close_matches(canonical, [*known, *ALIASES], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownBackendError(
            f"unknown backend {name!r} (known: {', '.join(known) or 'none'}; also "
            f"{', '.join(sorted(ALIASES))}){hint}"
        )
    return canonical, environment


def load_backend(name: str, env: Mapping[str, str] | None = None) -> Backend:
    """Import ``backends.<name>`` and return its backend.

    A backend package defines either ``BACKEND``, a :class:`Backend`, or, when it has settings,
    ``make_backend(env)``, which builds one from the environment's variables (the worker reads
    the environment in one place and passes it here). ``name`` may also be an alias (see
    :data:`ALIASES`): ``vllm`` is the ``openai`` backend with ``OPENAI_SERVER=vllm`` (unless the
    environment says otherwise), ``hello-world`` is ``hello_world``.

    Args:
        name: the package's name, or an alias.
        env: the environment for ``make_backend`` (default: none set, so every default).

    Raises:
        UnknownBackendError: no such backend package, or it defines neither.
        ValueError: ``make_backend`` refused a setting (the message names it).
    """
    package, environment = resolve(name, env)
    module = importlib.import_module(f"backends.{package}")
    make = getattr(module, "make_backend", None)
    backend = make(environment) if callable(make) else getattr(module, "BACKEND", None)
    if not isinstance(backend, Backend):
        raise UnknownBackendError(f"backends.{package} defines no BACKEND nor make_backend(env)")
    return backend
