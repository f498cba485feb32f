"""Tests for :mod:`pyworker._statecharts`: the committed files are fresh and complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyworker import _statecharts
from pyworker._lifecycle import INITIAL, STATES, TRANSITIONS, State, Trigger

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "statecharts"

TABLE_EDGES = {
    (source.value, row.dest.value, row.trigger.value)
    for row in TRANSITIONS
    for source in row.sources
}
"""Every (source, destination, trigger) of the table (guards aside)."""

GUARD_LABEL = re.compile(r" \[[^]]*\]$")
"""A guard's bracketed condition after a trigger on an arrow."""


@pytest.mark.parametrize("name", ["lifecycle.mmd", "lifecycle.dot", "README.md"])
def test_committed_file_is_fresh(name: str) -> None:
    path = COMMITTED / name
    assert path.is_file(), f"{path} is missing: run python -m pyworker._statecharts"
    assert path.read_bytes() == _statecharts.generated_files()[name].encode("utf-8"), (
        f"statecharts/{name} is stale: run python -m pyworker._statecharts"
    )


def test_default_out_is_the_repo_statecharts_dir() -> None:
    assert COMMITTED.resolve() == _statecharts.DEFAULT_OUT


def test_check_passes_on_the_committed_files() -> None:
    assert _statecharts.stale_files(COMMITTED) == []


def test_mermaid_edges_are_the_table() -> None:
    text = _statecharts.mermaid_text()
    edges = set()
    for source, dest, label in re.findall(r"^  (\w+) --> (\w+): (.+)$", text, re.MULTILINE):
        edges |= {(source, dest, GUARD_LABEL.sub("", t)) for t in label.split(", ")}
    assert edges == TABLE_EDGES
    assert f"  [*] --> {INITIAL.value}\n" in text
    assert "  stopped --> [*]\n" in text
    assert text.count("[*]") == 2


def test_dot_edges_are_the_table() -> None:
    text = _statecharts.dot_text()
    edges = set()
    for source, dest, label in re.findall(
        r'^\t"(\w+)" -> "(\w+)" \[label="([^"]+)"\]$', text, re.M
    ):
        edges |= {(source, dest, GUARD_LABEL.sub("", t)) for t in label.split(", ")}
    assert edges == TABLE_EDGES
    assert f'\t"__initial__" -> "{INITIAL.value}"\n' in text
    assert '\t"stopped" -> "__final__"\n' in text
    assert text.startswith("digraph ")
    assert text.endswith("}\n")
    assert text.count("{") == text.count("}") == 1


@pytest.mark.parametrize("render", [_statecharts.mermaid_text, _statecharts.dot_text])
def test_diagram_mentions_every_state_and_trigger(render: Callable[[], str]) -> None:
    text = render()
    for state in State:
        assert re.search(rf"\b{state.value}\b", text), state
    for trigger in Trigger:
        assert re.search(rf"\b{trigger.value}\b", text), trigger


@pytest.mark.parametrize("render", [_statecharts.mermaid_text, _statecharts.dot_text])
def test_diagram_has_no_current_state_styling(render: Callable[[], str]) -> None:
    text = render()
    for marker in ("active", "previous", "darksalmon", "color=red", "classDef", "Class "):
        assert marker not in text


def test_readme_describes_every_state_and_transition() -> None:
    text = _statecharts.readme_text()
    assert "```mermaid\n" + _statecharts.mermaid_text() + "```\n" in text
    assert "python -m pyworker._statecharts" in text
    assert "do not edit by hand" in text.lower()
    for info in STATES:
        assert f"### `{info.state.value}`" in text
        assert info.meaning in text
        section = text.split(f"### `{info.state.value}`")[1].split("###")[0]
        assert info.cause in section
        for service in info.services:
            assert f"`{service.name.lower()}`" in section
        for effect in info.on_enter:
            assert effect.value in section
        if info.reports.max_silence is not None:
            assert f"every {info.reports.max_silence:g} s" in section
        if info.admits_requests:
            assert "admitted" in text.split(f"### `{info.state.value}`")[1].split("###")[0]
        else:
            assert f"503, reason `{info.refusal}" in text
    # The troubleshooting table: one row per state, with its symptoms, cause and remedy.
    table = text.split("## Troubleshooting")[1].split("## Transitions")[0]
    for info in STATES:
        rows = [line for line in table.splitlines() if f"| `{info.state.value}` |" in line]
        assert len(rows) == 1
        assert f'pyworker_state{{state="{info.state.value}"}} 1' in rows[0]
        assert info.remedy in rows[0]
    for row in TRANSITIONS:
        assert f"| `{row.trigger.value}` |" in text
        assert row.why in text
        for effect in row.effects:
            assert effect.value in text
        if row.guard is not None:
            assert f"only if {row.guard.value}" in text
    assert "### `loading` (initial)" in text
    assert "### `stopped` (final)" in text


def test_generation_is_deterministic() -> None:
    assert _statecharts.generated_files() == _statecharts.generated_files()
    for text in _statecharts.generated_files().values():
        assert text.endswith("\n")
        assert not text.endswith("\n\n")
        assert "\r" not in text
        assert all(line == line.rstrip() for line in text.splitlines())


def test_generation_is_deterministic_across_processes(tmp_path: Path) -> None:
    outputs = []
    for seed in ("0", "1", "12345"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "pyworker._statecharts", "--out", str(out)],
            check=True,
            cwd=REPO,
            env=env,
            capture_output=True,
        )
        outputs.append({path.name: path.read_bytes() for path in sorted(out.iterdir())})
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0] == {
        name: text.encode("utf-8") for name, text in _statecharts.generated_files().items()
    }


def test_main_writes_then_check_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "charts"
    assert _statecharts.main(["--check", "--out", str(out)]) == 1
    assert "lifecycle.mmd is stale" in capsys.readouterr().err
    assert _statecharts.main(["--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "README.md",
        "lifecycle.dot",
        "lifecycle.mmd",
    ]
    assert _statecharts.main(["--check", "--out", str(out)]) == 0
    # Writing again touches nothing.
    capsys.readouterr()
    assert _statecharts.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out == ""


def test_check_names_the_stale_file_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _statecharts.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "lifecycle.dot").write_text("digraph {}\n")
    capsys.readouterr()
    assert _statecharts.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "lifecycle.dot is stale" in err
    assert "lifecycle.mmd" not in err
    assert f"python -m pyworker._statecharts --out {tmp_path}" in err
    assert (tmp_path / "lifecycle.dot").read_text() == "digraph {}\n", "--check writes nothing"


def test_check_command_line_exit_status() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyworker._statecharts", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
