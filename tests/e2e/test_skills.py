"""Binding published skills to a run over real HTTP (`POST /runs` `skills`).

One keyed server per module. An admin trusts a publisher; the publisher signs and publishes a
skill (and a policy package, which is not a skill); runs name them as `name@version`. A bound
skill narrows the run's writ to the tools its scopes cover (a call outside is rejected
`out_of_scope`), its instructions join the task, and the run's first entry records it by name,
version and content hash; the run replays. Unknown, non-skill and malformed references are 422,
each with its code.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind
from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory
from thymos.marketplace import public_key_of, publish_body, sign

pytestmark = pytest.mark.blackbox

INSTRUCTIONS = "Only ever read the notes; never write one."
SKILL = {"instructions": INSTRUCTIONS, "tool_scopes": ["kv_get"], "effect_ceiling": "pure"}
FINAL = {"final": "read the note"}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV})


def _publish(client: httpx.Client, private: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/marketplace/packages", json=sign(publish_body(**fields), private))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def published(server: ServerProcess) -> dict[str, Any]:
    """A trusted publisher's skill `reader@1.0.0` and policy package `open-policy@1.0.0`."""
    private = secrets.token_hex(32)
    trusted = as_key(server, "a-admin").post(
        "/marketplace/publishers", json={"name": "skills-co", "public_key": public_key_of(private)}
    )
    assert trusted.status_code == 201, trusted.text
    operator = as_key(server, "a1")
    skill = _publish(operator, private, name="reader", version="1.0.0", kind="skill", content=SKILL)
    _publish(
        operator,
        private,
        name="open-policy",
        version="1.0.0",
        kind="policy",
        content={"cedar": "permit(principal, action, resource);"},
    )
    return skill


def _body(**fields: Any) -> dict[str, Any]:
    return {
        "task": "keep a note",
        "tool_scopes": ["kv_*"],
        "cognition": {
            "script": [
                {"tool": "kv_set", "args": {"key": "note", "value": "hello"}},
                {"tool": "kv_get", "args": {"key": "note"}},
                FINAL,
            ]
        },
        **fields,
    }


def test_a_bound_skill_narrows_the_writ_joins_the_task_and_is_recorded(
    server: ServerProcess, published: dict[str, Any]
) -> None:
    client = as_key(server, "a1")
    run_id = create_run(client, _body(skills=["reader@1.0.0"]))
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == FINAL["final"]
    # The run's own scopes gave kv_get and kv_set; the skill covers kv_get only, and its `pure`
    # ceiling is read as `read`.
    assert record["tool_scopes"] == ["kv_get"]
    assert record["tools"] == ["kv_get"]
    assert record["effect_ceiling"] == "read"
    assert record["task"].startswith("keep a note")
    assert f"Skill reader@1.0.0:\n{INSTRUCTIONS}" in record["task"]

    items = entries(client, run_id)
    first = items[0]
    assert first["kind"] == "run_started"
    assert first["payload"]["skills"] == [
        {"name": "reader", "version": "1.0.0", "content_hash": published["content_hash"]}
    ]
    assert INSTRUCTIONS in first["payload"]["task"]
    rejections = of_kind(items, "rejection")
    assert [(r["payload"]["tool"], r["payload"]["reason"]) for r in rejections] == [
        ("kv_set", "out_of_scope")
    ]
    commits = of_kind(items, "commit")
    assert [c["payload"]["tool"] for c in commits] == ["kv_get"]

    replay = client.get(f"/runs/{run_id}/replay")
    assert replay.status_code == 200, replay.text
    assert replay.json()["verified"] is True, replay.json()


def test_without_skills_the_same_run_may_write(
    server: ServerProcess, published: dict[str, Any]
) -> None:
    """The control: the same request without the skill commits both calls."""
    client = as_key(server, "a1")
    run_id = create_run(client, _body())
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    items = entries(client, run_id)
    assert "skills" not in items[0]["payload"]
    assert [c["payload"]["tool"] for c in of_kind(items, "commit")] == ["kv_set", "kv_get"]


def test_a_skill_leaving_no_tool_still_answers(
    server: ServerProcess, published: dict[str, Any]
) -> None:
    """Scopes the skill does not share leave the run no tool: it can still answer."""
    client = as_key(server, "a1")
    body = _body(tool_scopes=["fs_read"], skills=["reader@1.0.0"])
    body["cognition"] = {"script": [FINAL]}
    run_id = create_run(client, body)
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    assert record["tool_scopes"] == [] == record["tools"]


@pytest.mark.parametrize(
    ("skills", "code"),
    [
        (["missing@1.0.0"], "skill_not_found"),
        (["reader@2.0.0"], "skill_not_found"),
        (["open-policy@1.0.0"], "not_a_skill"),
        (["reader"], "invalid_package_reference"),
        (["reader@1.0"], "invalid_package_reference"),
        (["Bad_Name@1.0.0"], "invalid_package_reference"),
        (["reader@1.0.0", "reader@1.0.0"], "invalid_request"),
        ([f"s{i}@1.0.0" for i in range(17)], "invalid_request"),
        ([7], "invalid_request"),
    ],
)
def test_each_bad_skill_reference_is_refused_with_its_code(
    server: ServerProcess, published: dict[str, Any], skills: list[Any], code: str
) -> None:
    response = as_key(server, "a1").post("/runs", json=_body(skills=skills))
    assert_error(response, 422, code)
