"""Backends by name: the packages, the aliases people type, and the hints for typos."""

from __future__ import annotations

import pytest

from pyworker import Backend, UnknownBackendError, available_backends, load_backend


def test_the_backend_packages() -> None:
    assert available_backends() == ["comfyui", "hello_world", "openai", "tgi"]


@pytest.mark.parametrize(
    ("name", "backend", "flavour"),
    [
        ("hello-world", "hello_world", None),
        ("Hello_World", "hello_world", None),
        ("vllm", "openai", "vllm"),
        ("sglang", "openai", "sglang"),
        ("llamacpp", "openai", "llamacpp"),
        ("llama.cpp", "openai", "llamacpp"),
        ("llama-cpp-python", "openai", "llama-cpp-python"),
        ("text-generation-inference", "tgi", None),
    ],
)
def test_aliases(name: str, backend: str, flavour: str | None) -> None:
    loaded = load_backend(name)
    assert loaded.name == backend
    if flavour is not None:
        # The flavour decides the default port among other things: the alias's is in force.
        assert _server_facts(loaded) == _server_facts(
            load_backend("openai", {"OPENAI_SERVER": flavour})
        )


def test_an_alias_does_not_override_the_environment() -> None:
    chosen = load_backend("vllm", {"OPENAI_SERVER": "sglang"})
    assert _server_facts(chosen) == _server_facts(
        load_backend("openai", {"OPENAI_SERVER": "sglang"})
    )
    assert _server_facts(chosen) != _server_facts(load_backend("vllm"))


def _server_facts(backend: Backend) -> tuple[object, ...]:
    """What a flavour decides (the endpoints' hooks are fresh functions each time)."""
    return (
        backend.model_server_url,
        backend.health_path,
        backend.allow_parallel_requests,
        backend.log_rules,
    )


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("helloworld", "hello_world"), ("tgl", "tgi"), ("comfyiu", "comfyui"), ("vlm", "vllm")],
)
def test_a_typo_gets_a_did_you_mean(name: str, suggestion: str) -> None:
    with pytest.raises(UnknownBackendError, match=f"did you mean '{suggestion}'"):
        load_backend(name)


@pytest.mark.parametrize("name", ["", "../etc", "backends.tgi", "_fakekit", "zzz"])
def test_what_is_not_a_backend_is_refused(name: str) -> None:
    with pytest.raises(UnknownBackendError, match="unknown backend"):
        load_backend(name)


@pytest.mark.parametrize("name", available_backends())
def test_the_demo_examples_are_requests_the_backend_takes(name: str) -> None:
    backend = load_backend(name, {"OPENAI_SERVER": "vllm"})
    assert backend.demo is not None
    assert backend.demo.examples, "the demo suggests requests once ready"
    for route, payload in backend.demo.examples:
        job = backend.endpoint(route).parse(payload)
        assert 0 < job.workload < 10_000  # short ones
