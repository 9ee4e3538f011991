"""Manifest tools: the format loads (OpenThymos's files unchanged), every malformed file stops
start-up naming the file and the field, and arguments cannot inject commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thymos.core import World
from thymos.tools import (
    HttpFetch,
    ManifestError,
    Sandbox,
    ToolContext,
    ToolPool,
    Workspace,
    builtin_tools,
    load_manifests,
)

GOOD: dict[str, Any] = {
    "name": "echo_words",
    "version": "1.0.0",
    "description": "Echo the words given.",
    "effect_class": "write",
    "risk_class": "low",
    "input_schema": {
        "type": "object",
        "properties": {"words": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["words"],
        "additionalProperties": False,
    },
    "executor": {"kind": "shell", "command_template": "echo {words} {count}"},
}


def _folder(tmp_path: Path, **files: Any) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / f"{name}.json").write_text(text)
    return folder


def _load(folder: Path) -> list[Any]:
    return load_manifests([folder], builtin_tools().specs(), HttpFetch())


def test_the_three_executor_kinds_load_with_their_contract(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        a=GOOD,
        b={**GOOD, "name": "ping", "effect_class": "pure", "executor": {"kind": "noop"}},
        c={
            **GOOD,
            "name": "search.api",
            "effect_class": "external",
            "risk_class": "medium",
            "executor": {
                "kind": "http",
                "url_template": "https://api.example.com/search?q={words}",
                "method": "POST",
                "body_template": '{"q": "{words}"}',
                "allowlist": ["api.example.com"],
                "timeout_secs": 10,
            },
        },
    )
    tools = {tool.spec.name: tool for tool in _load(folder)}
    assert set(tools) == {"echo_words", "ping", "search.api"}
    assert tools["echo_words"].spec.source.value == "manifest"
    assert tools["echo_words"].spec.effect.value == "write"
    assert tools["ping"].spec.effect.value == "read"  # `pure` is governed as read
    assert tools["search.api"].executor.allowlist == ("api.example.com",)


BAD: dict[str, tuple[Any, str]] = {
    "not-json": ("{nope", "(file)"),
    "not-an-object": ([1, 2], "(file)"),
    "no-name": ({k: v for k, v in GOOD.items() if k != "name"}, "name"),
    "bad-name": ({**GOOD, "name": "has space"}, "name"),
    "no-version": ({k: v for k, v in GOOD.items() if k != "version"}, "version"),
    "bad-effect": ({**GOOD, "effect_class": "destructive"}, "effect_class"),
    "bad-risk": ({**GOOD, "risk_class": "extreme"}, "risk_class"),
    "schema-not-object": ({**GOOD, "input_schema": {"type": "string"}}, "input_schema"),
    "schema-invalid": (
        {**GOOD, "input_schema": {"type": "object", "properties": {"a": {"type": 7}}}},
        "input_schema",
    ),
    "unknown-placeholder": (
        {**GOOD, "executor": {"kind": "shell", "command_template": "echo {nothing}"}},
        "executor.command_template",
    ),
    "bad-kind": ({**GOOD, "executor": {"kind": "python"}}, "executor.kind"),
    "http-not-http": (
        {**GOOD, "executor": {"kind": "http", "url_template": "file:///etc/passwd"}},
        "executor.url_template",
    ),
    "builtin-name": ({**GOOD, "name": "shell"}, "name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_manifest_names_the_file_and_the_field(tmp_path: Path, case: str) -> None:
    content, field = BAD[case]
    folder = _folder(tmp_path, **{case: content})
    with pytest.raises(ManifestError) as failed:
        _load(folder)
    assert failed.value.file.name == f"{case}.json"
    assert failed.value.field == field


def test_two_manifests_with_one_name_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, first=GOOD, second=GOOD)
    with pytest.raises(ManifestError) as failed:
        _load(folder)
    assert (failed.value.file.name, failed.value.field) == ("second.json", "name")
    assert "first.json" in failed.value.reason


@pytest.mark.anyio
async def test_arguments_cannot_inject_a_command(tmp_path: Path) -> None:
    """Each argument is one shell word: `; touch pwned`, `$(...)` and backquotes are echoed,
    never run."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tool,) = _load(_folder(tmp_path, a=GOOD))
    confined = Workspace.of(workspace)
    context = ToolContext("run", confined, World(), ToolPool(1), Sandbox(confined))
    attack = "x; touch pwned; $(touch pwned2) `touch pwned3`"
    outcome = await tool.run({"words": attack, "count": 3}, context)
    assert outcome.output["exit_code"] == 0
    assert outcome.output["stdout"] == f"{attack} 3\n"
    assert sorted(p.name for p in workspace.iterdir()) == []
