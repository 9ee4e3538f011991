"""Invalid policies stop start-up with the file, the position and the reason.

Unit tests build PolicySet directly; the last test starts the real `thymos serve` with a policy
folder holding a bad file and checks it exits 2 by itself with `FILE:LINE:COL` on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thymos.governance import PolicyError, PolicyFile, PolicySet

GOOD = "permit(principal, action, resource);\n"
SERVE_TIMEOUT_S = 30.0


def _error(*files: tuple[str, str]) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        PolicySet([PolicyFile(name, text) for name, text in files])
    return caught.value


def test_a_parse_error_names_the_file_line_and_column_of_the_bad_token() -> None:
    """A syntax error in a file's second policy reports that file, the line of the unexpected
    token and its column (1-based), and the parser's reason."""
    text = GOOD + "\n// a comment\n  permit(principal, action resource);\n"
    error = _error(("good.cedar", GOOD), ("bad.cedar", text))
    assert (error.file, error.line, error.column) == ("bad.cedar", 4, 28)
    assert "resource" in error.reason
    assert str(error).startswith("bad.cedar:4:28: ")


def test_a_parse_error_on_a_files_first_line_has_its_column() -> None:
    """An unexpected token on line 1 is reported at its own column."""
    error = _error(("one.cedar", "permit(principal, action resource);"))
    assert (error.file, error.line, error.column) == ("one.cedar", 1, 26)


def test_a_schema_validation_error_names_the_file_and_the_policys_line() -> None:
    """A policy that parses but does not validate against Thymos's schema (an unknown context
    attribute) is reported at the line where that policy starts (its first annotation), after
    comments, in its own file."""
    bad = GOOD + '// explains the next policy\n@id("x")\npermit(principal, action, resource)\n'
    bad += "when { context.nope == 1 };\n"
    error = _error(("a.cedar", GOOD), ("b.cedar", bad))
    assert (error.file, error.line, error.column) == ("b.cedar", 3, 1)
    assert "nope" in error.reason


def test_an_unknown_entity_type_fails_validation() -> None:
    """A policy naming an entity type the schema lacks is refused with the file and line."""
    error = _error(("t.cedar", '\n\npermit(principal == Thymos::User::"x", action, resource);'))
    assert (error.file, error.line, error.column) == ("t.cedar", 3, 1)
    assert "Thymos::User" in error.reason


def test_quorum_without_approval_is_refused() -> None:
    """@quorum on a policy without @approval is an error at that policy."""
    error = _error(("q.cedar", GOOD + '@quorum("2")\npermit(principal, action, resource);'))
    assert (error.file, error.line) == ("q.cedar", 2)
    assert "@quorum needs @approval" in error.reason


@pytest.mark.parametrize("quorum", ["0", "17", "two", "-1", "1.5", ""])
def test_a_quorum_that_is_not_a_whole_number_from_1_to_16_is_refused(quorum: str) -> None:
    """@quorum must be a whole number from 1 to 16."""
    text = f'@approval("ops") @quorum("{quorum}") permit(principal, action, resource);'
    error = _error(("q.cedar", text))
    assert (error.file, error.line, error.column) == ("q.cedar", 1, 1)
    assert "@quorum must be a whole number" in error.reason


def test_a_valid_quorum_suspends_on_its_channel_with_that_quorum() -> None:
    """@approval("ops") @quorum("16") loads, and is the most a quorum may be."""
    text = '@approval("ops") @quorum("16") permit(principal, action, resource);'
    assert PolicySet([PolicyFile("q.cedar", text)]).files == ("q.cedar",)


def test_approval_on_a_forbid_or_a_bad_channel_is_refused() -> None:
    """@approval only applies to permit policies, and its channel must be a lowercase name."""
    forbid = _error(("f.cedar", '@approval("ops") forbid(principal, action, resource);'))
    assert "@approval only applies to permit" in forbid.reason
    channel = _error(("c.cedar", '@approval("Ops!") permit(principal, action, resource);'))
    assert "channel" in channel.reason
    assert channel.file == "c.cedar"


def test_the_recovery_channel_is_reserved() -> None:
    """`recovery` is where crash recovery asks operators about unknown outcomes: a policy may
    not send its own proposals there."""
    error = _error(("r.cedar", '@approval("recovery") permit(principal, action, resource);'))
    assert (error.file, error.line) == ("r.cedar", 1)
    assert "reserved" in error.reason


def test_two_policies_with_the_same_id_are_refused() -> None:
    """Two policies sharing an @id (here across files) are refused, naming the id."""
    error = _error(
        ("a.cedar", '@id("same") permit(principal, action, resource);'),
        ("b.cedar", '@id("same") forbid(principal, action, resource);'),
    )
    assert "'same'" in error.reason


def test_an_empty_file_or_no_files_are_refused() -> None:
    """A file that holds only comments, and an empty set of files, are errors."""
    assert _error(("empty.cedar", "// nothing here\n")).file == "empty.cedar"
    with pytest.raises(PolicyError):
        PolicySet([])


@pytest.mark.blackbox
def test_thymos_serve_with_an_invalid_policy_exits_2_naming_file_line_and_column(
    tmp_path: Path,
) -> None:
    """`thymos serve` with THYMOS_POLICY_DIR holding a file that does not parse exits with code
    2 by itself, printing FILE:LINE:COL and the reason on stderr."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ok.cedar").write_text(GOOD)
    (policies / "broken.cedar").write_text(GOOD + "\npermit(principal, action resource);\n")
    env = dict(os.environ)
    env.pop("THYMOS_API_KEYS", None)
    env.update(
        {
            "THYMOS_POLICY_DIR": str(policies),
            "THYMOS_DATA_DIR": str(tmp_path / "data"),
            "THYMOS_WORKSPACE": str(tmp_path),
        }
    )
    thymos = Path(sys.executable).with_name("thymos")
    done = subprocess.run(
        [str(thymos), "serve", "--addr", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "broken.cedar:3:26:" in done.stderr, done.stderr
    assert "resource" in done.stderr
