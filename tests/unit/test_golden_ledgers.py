"""The governed golden ledger replays to its pinned world, and every forgery of it fails, naming
its seq and its reason, both in Thymos's replay and in the outside verifier (which uses only
blake3, rfc8785 and cryptography)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785

from tests.forgery import FORGERIES, Export, first_signed_at_or_after, reseal
from thymos.governance import PolicyFile, PolicySet
from thymos.runtime._replay import read_bundle, replay_bundle

from ._golden import GOVERNED_EXPECTED, GOVERNED_LEDGER, golden_root

VERIFIER = Path(__file__).resolve().parents[2] / "scripts" / "verify_ledger.py"


def _expected() -> dict[str, Any]:
    expected: dict[str, Any] = orjson.loads(GOVERNED_EXPECTED.read_bytes())
    return expected


def _replay(data: bytes, *, require_policy: str | None = None) -> dict[str, Any]:
    return replay_bundle(
        read_bundle(data.splitlines()),
        root=golden_root().public_key,
        require_policy=require_policy,
    )


def _outside(tmp_path: Path, data: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(data)
    key = _expected()["root_public_key"]
    return subprocess.run(
        [sys.executable, str(VERIFIER), str(path), "--key", key, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_governed_golden_ledger_replays_to_its_pinned_world() -> None:
    """Writ, quorum approvals, a veto, a policy denial, invalid arguments, an out-of-scope call
    and a tool failure: every decision re-runs to what was recorded, the world hash is pinned,
    and the head is signed."""
    expected = _expected()
    report = _replay(GOVERNED_LEDGER.read_bytes())
    assert report["verified"] is True, report["failures"]
    assert report["world_hash"] == expected["world_hash"]
    assert report["kinds"] == expected["kinds"]
    assert (report["head_seq"], report["head_id"]) == (expected["head_seq"], expected["head_id"])
    assert report["signed_through"] == expected["head_seq"]
    assert report["ledger_format"] == 2
    # Every decision entry was decided again: suspensions, rejections, commits, the failure.
    kinds = expected["kinds"]
    assert report["decisions_checked"] == (
        kinds["suspension"] + kinds["rejection"] + kinds["commit"] + kinds["tool_failure"]
    )


def test_the_outside_verifier_accepts_the_golden_ledger(tmp_path: Path) -> None:
    done = _outside(tmp_path, GOVERNED_LEDGER.read_bytes())
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"signed through seq {_expected()['head_seq']}" in done.stdout


def _forged(name: str, *, keep_heads: bool = True) -> tuple[bytes, int, str]:
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    if not keep_heads:
        export.heads = []
    envelopes, seq, code = FORGERIES[name](copy.deepcopy(export.envelopes))
    if code == "signed_head_mismatch":
        seq = first_signed_at_or_after(export.heads, seq)
    if code == "truncated":
        # The server knows its later heads; an export cut short just ends unsigned.
        seq, code = seq - 1, "head_unsigned"
    return export.assemble(reseal(envelopes)), seq, code


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_each_forgery_fails_replay_naming_its_seq_and_reason(name: str) -> None:
    """The forgery's own failure is named at its seq (the kept signatures may fail earlier,
    where the re-sealed chain first differs from what the server signed)."""
    data, seq, code = _forged(name)
    report = _replay(data)
    assert report["verified"] is False
    assert (seq, code) in {(f["seq"], f["code"]) for f in report["failures"]}, report["failures"]


@pytest.mark.parametrize("name", sorted(set(FORGERIES) - {"value-changed"}))
def test_each_forgery_is_named_first_when_the_forger_drops_the_signatures(name: str) -> None:
    """A forger who knows the signatures would betray the re-sealing drops them: the decision
    the forgery broke is then the first failure, and the unsigned end is named too."""
    data, seq, code = _forged(name, keep_heads=False)
    failures = _replay(data)["failures"]
    assert (failures[0]["seq"], failures[0]["code"]) == (seq, code), failures
    assert failures[-1]["code"] == "head_unsigned"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_the_outside_verifier_rejects_each_resealed_forgery(tmp_path: Path, name: str) -> None:
    """Every forgery re-seals the chain without the root key, so the signatures give it away."""
    data, _, _ = _forged(name)
    done = _outside(tmp_path, data)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("not verified: seq ")


def _with_policy(export: Export, text: str, *, readdress: bool) -> bytes:
    """The export with its policy set's text replaced; with `readdress`, the forger also gives
    it its true hash, rewrites every decision to name it and re-seals the chain."""
    export = copy.deepcopy(export)
    document = next(d for d in export.documents if d["kind"] == "policy_set")
    old = document["hash"]
    document["body"] = [["governed.cedar", text]]
    if not readdress:
        return export.assemble()
    new = PolicySet([PolicyFile("governed.cedar", text)]).hash
    document["hash"] = new
    for envelope in export.envelopes:
        if envelope["body"].get("policy_hash") == old:
            envelope["body"]["policy_hash"] = new
    return export.assemble(reseal(export.envelopes))


PERMISSIVE = '@id("permit-all")\npermit(principal, action, resource);\n'


def test_a_swapped_policy_text_fails_at_the_first_decision(tmp_path: Path) -> None:
    """The stored text of the policy set is replaced (its address kept): the first decision
    naming it fails `document_mismatch`; the outside verifier sees the text does not hash."""
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    data = _with_policy(export, PERMISSIVE, readdress=False)
    report = _replay(data)
    first_decision = next(e["seq"] for e in export.envelopes if "policy_hash" in e["body"])
    assert (report["failures"][0]["seq"], report["failures"][0]["code"]) == (
        first_decision,
        "document_mismatch",
    )
    assert _outside(tmp_path, data).returncode == 1


def test_a_replaced_policy_readdressed_and_resealed_fails_at_the_first_suspension() -> None:
    """A forger who writes a permissive policy, addresses it correctly and rewrites every
    decision to name it is caught where the permissive policy would not have suspended."""
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    report = _replay(_with_policy(export, PERMISSIVE, readdress=True))
    suspension = next(e["seq"] for e in export.envelopes if e["kind"] == "suspension")
    failures = {(f["seq"], f["code"]) for f in report["failures"]}
    assert (suspension, "decision_mismatch") in failures, report["failures"]


def test_require_policy_names_every_decision_under_another_set() -> None:
    report = _replay(GOVERNED_LEDGER.read_bytes(), require_policy="0" * 64)
    assert report["verified"] is False
    assert {f["code"] for f in report["failures"]} == {"policy_mismatch"}


def test_a_missing_policy_text_is_a_named_failure_not_a_pass(tmp_path: Path) -> None:
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    export.documents = [d for d in export.documents if d["kind"] != "policy_set"]
    data = export.assemble()
    report = _replay(data)
    assert report["failures"][0]["code"] == "document_missing"
    assert _outside(tmp_path, data).returncode == 1


def test_a_cut_export_is_refused_by_the_outside_verifier_unless_the_tail_may_be_unsigned(
    tmp_path: Path,
) -> None:
    """Entries and heads cut off at the end: the last entry is not signed. A run still running
    legitimately has an unsigned tail, which `--allow-unsigned-tail` accepts."""
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    export.heads = [h for h in export.heads if h["seq"] < 20]
    cut = export.assemble(export.lines[:25])
    assert _outside(tmp_path, cut).returncode == 1
    assert _outside(tmp_path, cut, "--allow-unsigned-tail").returncode == 0


def test_a_head_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    export = Export.parse(GOVERNED_LEDGER.read_bytes())
    export.heads[-1]["signature"] = "00" * 64
    data = export.assemble()
    report = _replay(data)
    assert (report["failures"][0]["seq"], report["failures"][0]["code"]) == (
        export.heads[-1]["seq"],
        "signature_invalid",
    )
    assert _outside(tmp_path, data).returncode == 1


def test_envelopes_in_the_golden_export_are_canonical() -> None:
    for line in Export.parse(GOVERNED_LEDGER.read_bytes()).lines:
        assert rfc8785.dumps(orjson.loads(line)) == line
