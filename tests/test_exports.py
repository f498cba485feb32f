"""The public API is exactly what ``__init__`` curates (as trio's ``test_exports`` holds it).

Every public name of ``pyworker`` and ``pyworker.devtools`` is in ``__all__``, every name in
``__all__`` resolves, and each class or function says it belongs to the public package. And the
backend API stays light: importing it loads none of the server stack.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import pyworker
import pyworker.devtools

PACKAGES = [pyworker, pyworker.devtools]


def _public_names(module: types.ModuleType) -> set[str]:
    """What ``dir()`` shows that is neither private nor a submodule."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and name not in {"annotations"}  # from __future__
    }


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_all_is_exactly_the_public_names(module: types.ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))
    assert set(module.__all__) == _public_names(module)


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_exported_names_belong_to_the_public_package(module: types.ModuleType) -> None:
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == module.__name__, name


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = pyworker.Nope


def test_the_backend_api_imports_light() -> None:
    """``import pyworker`` and loading a backend pull in no server (Quart, Hypercorn, Flask)
    nor the worker's own machinery; the worker loads on first use."""
    code = (
        "import json, sys, pyworker; pyworker.load_backend('hello_world'); "
        "before = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'quart', 'hypercorn', 'flask', 'trio', 'httpx', 'transitions', 'cryptography'} "
        "or m.startswith(('pyworker._worker', 'pyworker._pipeline', 'pyworker.devtools'))); "
        "pyworker.Worker; "
        "after = {m.split('.')[0] for m in sys.modules}; "
        "print(json.dumps([before, sorted(after & {'quart', 'hypercorn', 'trio'})]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = json.loads(result.stdout)
    assert before == []
    assert after == ["hypercorn", "quart", "trio"]


def test_the_readme_backend_example_works_as_written() -> None:
    """The README's "Write your own backend" example, run as written, makes a valid backend
    whose route validates, weighs and forwards a payload."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Write your own backend", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    backend = namespace["BACKEND"]
    assert isinstance(backend, pyworker.Backend)
    endpoint = backend.endpoint("/generate")
    job = endpoint.parse({"prompt": "hello there", "max_response_tokens": 8})
    assert job.workload == pyworker.estimate_tokens("hello there") + 8
    assert json.loads(job.body) == {"prompt": "hello there", "max_response_tokens": 8}
    with pytest.raises(pyworker.PayloadError):
        endpoint.parse({"max_response_tokens": 0})


def test_the_worker_never_imports_a_fake() -> None:
    """Fakes (``backends/_fakekit``, ``fake.py``, ``_fake_*`` modules, the demo server) run as
    their own processes: loading every backend and the worker imports none of them."""
    code = (
        "import json, sys, pyworker\n"
        "for name in pyworker.available_backends(): pyworker.load_backend(name, {})\n"
        "pyworker.Worker\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('backends'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    assert "backends.comfyui" in loaded
    fakes = [m for m in loaded if "fake" in m or m == "backends.hello_world.server"]
    assert fakes == []
