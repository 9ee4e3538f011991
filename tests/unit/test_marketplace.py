"""The marketplace's pure checks: names, SemVer precedence, each kind's content, content hashes,
and Ed25519 signatures over the publish body, each refusal with its stable code and field."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import blake3
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from thymos.marketplace import (
    CONTENT_BYTES_MAX,
    DESCRIPTION_CHARS_MAX,
    SKILL_INSTRUCTIONS_CHARS_MAX,
    SKILL_TOOL_SCOPES_MAX,
    VERSION_CHARS_MAX,
    Package,
    PackageError,
    PackageErrorCode,
    PackageKind,
    PackageRef,
    Version,
    check_content,
    check_name,
    content_hash,
    parse_reference,
    public_key_of,
    publish_body,
    sign,
    signing_bytes,
    verify_publish,
)

KEY_A = "01" * 32
KEY_B = "02" * 32
"""Fixed private keys (32-byte seeds): signatures are deterministic, so every run is the same."""

SKILL: dict[str, Any] = {
    "instructions": "Read the code before changing it.",
    "tool_scopes": ["fs_read", "grep", "fs_*"],
}
MANIFEST: dict[str, Any] = {
    "name": "echo_words",
    "version": "1.0.0",
    "description": "Echo the words given.",
    "effect_class": "write",
    "risk_class": "low",
    "input_schema": {
        "type": "object",
        "properties": {"words": {"type": "string"}},
        "required": ["words"],
    },
    "executor": {"kind": "shell", "command_template": "echo {words}"},
}
MCP_SERVER: dict[str, Any] = {"time": {"command": "uvx", "args": ["mcp-server-time"]}}
POLICY: dict[str, Any] = {"cedar": '@approval("ops")\npermit(principal, action, resource);\n'}


def _refusal(call: Any, *args: Any) -> PackageError:
    with pytest.raises(PackageError) as caught:
        call(*args)
    return caught.value


def _signed(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "careful-reader",
        "version": "1.2.3",
        "kind": "skill",
        "content": SKILL,
        "description": "Reads first.",
    }
    base.update(fields)
    return sign(publish_body(**base), KEY_A)


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["ab", "my-tool", "a1-b2-c3", "0x", "a" * 64, "@acme/my-tool", "@a1/b2", f"@{'s' * 64}/n1"],
)
def test_valid_names_are_accepted_unchanged(name: str) -> None:
    """Lowercase letters, digits and single inner hyphens, 2 to 64 per part, optionally scoped."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a",  # too short
        "a" * 65,  # too long
        "-ab",  # leading hyphen
        "ab-",  # trailing hyphen
        "a--b",  # double hyphen
        "My-tool",  # uppercase is refused, not folded
        "my_tool",
        "my.tool",
        "my tool",
        " ab",
        "ab\n",
        "\uff41\uff42",  # fullwidth letters are not a-z
        "ab/cd",  # a slash only after a scope
        "@ab",  # a scope needs a name
        "@ab/",
        "@/ab",
        "@a/bc",  # the scope follows the same length rule
        "@ab/c",
        "@-ab/cd",
        "@AB/cd",
        "@ab/cd/ef",
        "@@ab/cd",
        "ab@1.0.0",
    ],
)
def test_invalid_names_are_refused_with_their_code(name: str) -> None:
    """Every malformed name is `invalid_package_name` on the `name` field."""
    error = _refusal(check_name, name)
    assert (error.code, error.field) == (PackageErrorCode.INVALID_PACKAGE_NAME, "name")


def test_a_reference_splits_at_its_last_at_sign() -> None:
    """`name@version` and `@scope/name@version` parse; a reference without an exact version is
    `invalid_package_reference`."""
    assert parse_reference("my-skill@1.0.0") == PackageRef("my-skill", Version.parse("1.0.0"))
    ref = parse_reference("@acme/my-skill@2.0.0-rc.1")
    assert (ref.name, str(ref.version), str(ref)) == (
        "@acme/my-skill",
        "2.0.0-rc.1",
        "@acme/my-skill@2.0.0-rc.1",
    )
    for bad in ("my-skill", "@acme/my-skill", "my-skill@", "@1.0.0", "my-skill@^1.0.0", "M@1.0.0"):
        error = _refusal(parse_reference, bad)
        assert error.code == PackageErrorCode.INVALID_PACKAGE_REFERENCE, bad


# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "0.0.0",
        "1.2.3",
        "10.20.30",
        "1.0.0-0",
        "1.0.0-0a",
        "1.0.0-alpha.1",
        "1.0.0--",
        "1.0.0-x-y-z.--",
        "1.0.0+001",  # leading zeros are allowed in build metadata
        "1.0.0-alpha.1+build.007.sha-5114f85",
        "99999999999999999999.0.0",
    ],
)
def test_valid_versions_parse_and_print_back_exactly(text: str) -> None:
    """Every form the SemVer 2.0.0 grammar allows parses, and `str()` is the text parsed."""
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.0",
        "1.0.0.0",
        "01.0.0",
        "1.01.0",
        "1.0.01",
        "v1.0.0",
        "-1.0.0",
        "1.0.0-",
        "1.0.0+",
        "1.0.0-01",  # a numeric prerelease identifier has no leading zero
        "1.0.0-alpha..1",
        "1.0.0-al_pha",
        "1.0.0-\u03b1",  # a Greek alpha
        "1.0.0+build..1",
        "1.0.0+a+b",
        " 1.0.0",
        "1.0.0\n",
        "\u0661.0.0",  # an Arabic-Indic digit: `\d` would take it
        "^1.0.0",
        "1.0.0-" + "a" * VERSION_CHARS_MAX,
    ],
)
def test_invalid_versions_are_refused_with_their_code(text: str) -> None:
    """Anything outside the grammar, or longer than the bound, is `invalid_version`."""
    error = _refusal(Version.parse, text)
    assert (error.code, error.field) == (PackageErrorCode.INVALID_VERSION, "version")


def test_the_specs_precedence_example_chain_is_strictly_increasing() -> None:
    """SemVer item 11's example chain, and numeric (not string) order of each part."""
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "1.10.1",
        "2.0.0-0",
        "2.0.0",
        "10.0.0",
    ]
    versions = [Version.parse(text) for text in chain]
    for low, high in itertools.pairwise(versions):
        assert low < high and high > low and low <= high and low != high, (low, high)
    assert sorted(versions[1::2] + versions[::2]) == versions
    assert max(Version.parse(t) for t in ("1.9.0", "1.10.0", "1.2.0")) == Version.parse("1.10.0")


def test_build_metadata_is_ignored_for_precedence_and_equality() -> None:
    """`1.0.0+a` and `1.0.0+b` are one version (equal, same hash, neither lower), while each
    prints its own build."""
    a, b = Version.parse("1.0.0+a"), Version.parse("1.0.0+b.2")
    assert a == b and hash(a) == hash(b) and not a < b and not b < a and a <= b and a >= b
    assert (str(a), str(b)) == ("1.0.0+a", "1.0.0+b.2")
    assert Version.parse("1.0.0-rc.1+x") < Version.parse("1.0.0")


def _reference_compare(a: str, b: str) -> int:
    """SemVer 2.0.0 item 11, step by step, on the text: the oracle for the property test."""

    def split(text: str) -> tuple[list[int], list[str]]:
        text = text.split("+", 1)[0]
        core, _, pre = text.partition("-")
        return [int(part) for part in core.split(".")], pre.split(".") if pre else []

    (core_a, pre_a), (core_b, pre_b) = split(a), split(b)
    for x, y in zip(core_a, core_b, strict=True):
        if x != y:
            return -1 if x < y else 1
    if not pre_a or not pre_b:
        return (len(pre_b) > 0) - (len(pre_a) > 0)  # no prerelease ranks higher
    for id_a, id_b in zip(pre_a, pre_b, strict=False):
        if id_a == id_b:
            continue
        if id_a.isdigit() and id_b.isdigit():
            return -1 if int(id_a) < int(id_b) else 1
        if id_a.isdigit() != id_b.isdigit():
            return -1 if id_a.isdigit() else 1  # numeric identifiers rank lower
        return -1 if id_a < id_b else 1
    return (len(pre_a) > len(pre_b)) - (len(pre_a) < len(pre_b))


_numbers = st.integers(0, 12).map(str) | st.integers(0, 10**30).map(str)
_alnum = st.from_regex(r"[0-9]{0,2}[A-Za-z-][0-9A-Za-z-]{0,3}", fullmatch=True)
_pre_id = st.sampled_from(["alpha", "beta", "rc", "a", "A", "-", "0a"]) | _alnum | _numbers


@st.composite
def _versions(draw: st.DrawFn) -> str:
    core = ".".join(draw(st.integers(0, 3).map(str)) for _ in range(3))
    pre = draw(st.lists(_pre_id, max_size=4))
    build = draw(st.lists(st.from_regex(r"[0-9A-Za-z-]{1,4}", fullmatch=True), max_size=2))
    return core + ("-" + ".".join(pre) if pre else "") + ("+" + ".".join(build) if build else "")


@given(_versions(), _versions())
def test_version_order_matches_the_reference_comparison(a: str, b: str) -> None:
    """On random versions (small parts so ties and shared prefixes are common), every
    comparison operator agrees with a step-by-step reading of the spec, and text round-trips."""
    va, vb = Version.parse(a), Version.parse(b)
    expected = _reference_compare(a, b)
    assert (va < vb, va == vb, va > vb) == (expected < 0, expected == 0, expected > 0)
    assert (va <= vb, va >= vb, va != vb) == (expected <= 0, expected >= 0, expected != 0)
    assert (hash(va) == hash(vb)) or expected != 0
    assert str(va) == a


@given(st.lists(_versions(), max_size=12))
def test_sorting_versions_is_sorting_by_the_reference(texts: list[str]) -> None:
    """`sorted` on Versions yields the reference order (the order is total)."""
    mine = [str(v) for v in sorted(Version.parse(t) for t in texts)]
    theirs = sorted(texts, key=functools.cmp_to_key(_reference_compare))
    assert [Version.parse(t) for t in mine] == [Version.parse(t) for t in theirs]


# -- content, by kind -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        (PackageKind.SKILL, SKILL),
        (PackageKind.SKILL, {**SKILL, "effect_ceiling": "pure"}),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": ["mcp_time_*", "kv_?et", "search.api"]}),
        (PackageKind.TOOL_MANIFEST, MANIFEST),
        (PackageKind.TOOL_MANIFEST, {**MANIFEST, "executor": {"kind": "noop"}, "extra": 1}),
        (
            PackageKind.TOOL_MANIFEST,
            {
                **MANIFEST,
                "effect_class": "external",
                "executor": {
                    "kind": "http",
                    "url_template": "https://api.example.com/q?w={words}",
                    "allowlist": ["api.example.com"],
                },
            },
        ),
        (PackageKind.MCP_SERVER, MCP_SERVER),
        (
            PackageKind.MCP_SERVER,
            {"remote": {"url": "https://mcp.example.com/mcp", "effect": "read", "risk": "low"}},
        ),
        (PackageKind.MCP_SERVER, {"legacy": ["server-bin", "--stdio"]}),
        (PackageKind.POLICY, POLICY),
        (
            PackageKind.POLICY,
            {
                "cedar": '@id("no-irreversible")\nforbid(principal, action, resource)\n'
                'when { context.effect == "irreversible" };\n'
            },
        ),
    ],
)
def test_each_kinds_valid_content_passes(kind: PackageKind, content: dict[str, Any]) -> None:
    """Valid content passes its kind's check, which returns its RFC 8785 bytes."""
    assert check_content(kind, content) == rfc8785.dumps(content)


@pytest.mark.parametrize(
    ("kind", "content", "field"),
    [
        (PackageKind.SKILL, ["not", "an", "object"], "content"),
        (PackageKind.SKILL, {"tool_scopes": ["fs_read"]}, "content.instructions"),
        (PackageKind.SKILL, {**SKILL, "instructions": " \n "}, "content.instructions"),
        (
            PackageKind.SKILL,
            {**SKILL, "instructions": "x" * (SKILL_INSTRUCTIONS_CHARS_MAX + 1)},
            "content.instructions",
        ),
        (PackageKind.SKILL, {"instructions": "Go."}, "content.tool_scopes"),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": []}, "content.tool_scopes"),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": "fs_read"}, "content.tool_scopes"),
        (
            PackageKind.SKILL,
            {**SKILL, "tool_scopes": ["fs_read"] * (SKILL_TOOL_SCOPES_MAX + 1)},
            "content.tool_scopes",
        ),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": ["fs_read", ""]}, "content.tool_scopes.1"),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": ["fs read"]}, "content.tool_scopes.0"),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": ["fs_[rw]*"]}, "content.tool_scopes.0"),
        (PackageKind.SKILL, {**SKILL, "tool_scopes": [7]}, "content.tool_scopes.0"),
        (PackageKind.SKILL, {**SKILL, "effect_ceiling": "root"}, "content.effect_ceiling"),
        (PackageKind.SKILL, {**SKILL, "effect_ceiling": None}, "content.effect_ceiling"),
        (PackageKind.SKILL, {**SKILL, "writ": "all"}, "content.writ"),
        (
            PackageKind.TOOL_MANIFEST,
            {k: v for k, v in MANIFEST.items() if k != "name"},
            "content.name",
        ),
        (PackageKind.TOOL_MANIFEST, {**MANIFEST, "name": "a b"}, "content.name"),
        (PackageKind.TOOL_MANIFEST, {**MANIFEST, "effect_class": "huge"}, "content.effect_class"),
        (PackageKind.TOOL_MANIFEST, {**MANIFEST, "risk_class": "none"}, "content.risk_class"),
        (
            PackageKind.TOOL_MANIFEST,
            {**MANIFEST, "input_schema": {"type": "string"}},
            "content.input_schema",
        ),
        (
            PackageKind.TOOL_MANIFEST,
            {**MANIFEST, "executor": {"kind": "ftp"}},
            "content.executor.kind",
        ),
        (
            PackageKind.TOOL_MANIFEST,
            {**MANIFEST, "executor": {"kind": "shell", "command_template": "rm {path}"}},
            "content.executor.command_template",
        ),
        (PackageKind.MCP_SERVER, {}, "content"),
        (PackageKind.MCP_SERVER, {**MCP_SERVER, "other": {"command": "x"}}, "content"),
        (PackageKind.MCP_SERVER, {"bad name": {"command": "x"}}, "content.bad name"),
        (PackageKind.MCP_SERVER, {"s": "uvx"}, "content.s"),
        (PackageKind.MCP_SERVER, {"s": {}}, "content.s.command"),
        (PackageKind.MCP_SERVER, {"s": {"url": "ftp://host/x"}}, "content.s.url"),
        (PackageKind.MCP_SERVER, {"s": {"command": "x", "args": "-v"}}, "content.s.args"),
        (PackageKind.MCP_SERVER, {"s": {"command": "x", "env": {"A": 1}}}, "content.s.env"),
        (PackageKind.MCP_SERVER, {"s": {"command": "x", "effect": "pure"}}, "content.s.effect"),
        (PackageKind.MCP_SERVER, {"s": {"command": "x", "risk": "none"}}, "content.s.risk"),
        (
            PackageKind.MCP_SERVER,
            {"s": {"command": "x", "timeout_secs": 0}},
            "content.s.timeout_secs",
        ),
        (PackageKind.POLICY, {}, "content.cedar"),
        (PackageKind.POLICY, {"cedar": 3}, "content.cedar"),
        (PackageKind.POLICY, {"cedar": ""}, "content.cedar"),
        (PackageKind.POLICY, {"cedar": "// only a comment\n"}, "content.cedar"),
        (PackageKind.POLICY, {"cedar": "permit(principal, action resource);"}, "content.cedar"),
        (
            PackageKind.POLICY,
            {"cedar": "permit(principal, action, resource) when { context.nope == 1 };"},
            "content.cedar",
        ),
        (PackageKind.POLICY, {**POLICY, "name": "x"}, "content.name"),
        (PackageKind.POLICY, {"cedar": "x" * (64 * 1024 + 1)}, "content.cedar"),
        (PackageKind.SKILL, {**SKILL, "n": math.nan}, "content"),
        (PackageKind.SKILL, {**SKILL, "n": 2**60}, "content"),
        (PackageKind.SKILL, {**SKILL, "pad": "x" * CONTENT_BYTES_MAX}, "content"),
    ],
)
def test_each_kinds_invalid_content_is_refused_naming_the_field(
    kind: PackageKind, content: Any, field: str
) -> None:
    """Content that fails its kind's check is `invalid_package_content`, naming the field (a
    manifest's or MCP entry's field as their own loaders name it, under `content.`)."""
    error = _refusal(check_content, kind, content)
    assert (error.code, error.field) == (PackageErrorCode.INVALID_PACKAGE_CONTENT, field)


def test_a_policy_refusal_gives_the_position_in_the_text() -> None:
    """A Cedar error says where in the package's policy text it is."""
    error = _refusal(
        check_content, PackageKind.POLICY, {"cedar": "\n  permit(principal, action resource);"}
    )
    assert error.message.startswith("line 2, column ")


# -- content hash and signing bytes -----------------------------------------------------------


def test_content_hash_is_blake3_of_the_rfc8785_bytes() -> None:
    """Independently of the project's encoder: BLAKE3 over `rfc8785.dumps`, key order and
    whitespace of the input irrelevant."""
    content: dict[str, Any] = {"b": [1, 2.5, "\u00e9"], "a": {"y": None, "x": True}}
    assert content_hash(content) == blake3.blake3(rfc8785.dumps(content)).hexdigest()
    assert content_hash(content) == content_hash(dict(reversed(list(content.items()))))


def test_signing_bytes_are_the_body_without_its_signature() -> None:
    """The signed bytes are RFC 8785 of every field but `signature`."""
    body = _signed()
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    assert signing_bytes(body) == rfc8785.dumps(unsigned) == signing_bytes(unsigned)


# -- publish bodies ---------------------------------------------------------------------------


def test_sign_then_verify_round_trips() -> None:
    """A body made by `publish_body` and `sign` verifies to a `Package` holding its fields;
    `as_dict()` gives back that body, which verifies again; signing is deterministic and leaves
    its input alone."""
    unsigned = publish_body(
        name="@acme/careful-reader", version="1.2.3-rc.1+b7", kind="skill", content=SKILL
    )
    before = dict(unsigned)
    body = sign(unsigned, KEY_A)
    assert unsigned == before and "signature" not in unsigned
    assert sign(unsigned, KEY_A) == body
    package = verify_publish(body)
    assert package == Package(
        name="@acme/careful-reader",
        version=Version.parse("1.2.3-rc.1+b7"),
        kind=PackageKind.SKILL,
        description=None,
        content=SKILL,
        content_hash=content_hash(SKILL),
        publisher_key=public_key_of(KEY_A),
        signature=body["signature"],
    )
    assert package.as_dict() == body
    assert "description" not in package.as_dict()
    assert verify_publish(package.as_dict()) == package
    assert str(package.reference) == "@acme/careful-reader@1.2.3-rc.1+b7"
    described = verify_publish(_signed())
    assert described.description == "Reads first."
    assert described.as_dict()["description"] == "Reads first."


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("skill", SKILL),
        ("tool_manifest", MANIFEST),
        ("mcp_server", MCP_SERVER),
        ("policy", POLICY),
    ],
)
def test_every_kind_publishes(kind: str, content: dict[str, Any]) -> None:
    """A signed body of each kind verifies."""
    assert verify_publish(_signed(kind=kind, content=content)).kind == kind


def test_the_package_does_not_share_the_bodys_content() -> None:
    """Changing the body after verification does not change the package."""
    body = _signed()
    package = verify_publish(body)
    body["content"]["tool_scopes"].append("shell")
    assert package.content["tool_scopes"] == SKILL["tool_scopes"]
    package.as_dict()["content"]["instructions"] = "changed"
    assert package.content["instructions"] == SKILL["instructions"]


def test_a_signature_by_another_key_is_refused() -> None:
    """Key B's signature of a body naming key A as publisher is `invalid_signature`, and so is
    A's body re-labelled with B's key."""
    body = _signed()
    forged = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEY_B)).sign(signing_bytes(body))
    error = _refusal(verify_publish, {**body, "signature": forged.hex()})
    assert (error.code, error.field) == (PackageErrorCode.INVALID_SIGNATURE, "signature")
    relabelled = {**body, "publisher_key": public_key_of(KEY_B)}
    assert _refusal(verify_publish, relabelled).code == PackageErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        {"name": "careless-reader"},
        {"version": "1.2.4"},
        {"version": "1.2.3+other-build"},
        {"kind": "policy", "content": POLICY, "content_hash": content_hash(POLICY)},
        {"description": "Reads never."},
        {"description": ""},
        {
            "content": {**SKILL, "tool_scopes": ["*"]},
            "content_hash": content_hash({**SKILL, "tool_scopes": ["*"]}),
        },
    ],
)
def test_a_field_changed_after_signing_breaks_the_signature(change: dict[str, Any]) -> None:
    """Every field is signed: a changed name, version (even only its build), kind, description
    or content (with its hash recomputed) is `invalid_signature`."""
    error = _refusal(verify_publish, {**_signed(), **change})
    assert error.code == PackageErrorCode.INVALID_SIGNATURE


def test_a_removed_description_breaks_the_signature() -> None:
    """Dropping the optional description is a change too."""
    body = _signed()
    del body["description"]
    assert _refusal(verify_publish, body).code == PackageErrorCode.INVALID_SIGNATURE


def test_content_changed_without_its_hash_is_a_hash_mismatch() -> None:
    """Content that is not what `content_hash` names is `content_hash_mismatch` (checked before
    the signature); so is a hash that is not 64 lowercase hex."""
    body = {**_signed(), "content": {**SKILL, "instructions": "Write first."}}
    error = _refusal(verify_publish, body)
    assert (error.code, error.field) == (PackageErrorCode.CONTENT_HASH_MISMATCH, "content_hash")
    upper = _signed()
    upper["content_hash"] = upper["content_hash"].upper()
    assert _refusal(verify_publish, upper).code == PackageErrorCode.CONTENT_HASH_MISMATCH


@pytest.mark.parametrize(
    "signature",
    ["", "zz" * 64, "ab" * 63, "ab" * 65, "AB" * 64, "ab" * 63 + "a", None],
)
def test_a_malformed_signature_is_refused(signature: str | None) -> None:
    """Not 128 lowercase hex characters is `invalid_signature` (a non-string is a body error)."""
    error = _refusal(verify_publish, {**_signed(), "signature": signature})
    expected = (
        PackageErrorCode.INVALID_PUBLISH_BODY
        if signature is None
        else PackageErrorCode.INVALID_SIGNATURE
    )
    assert (error.code, error.field) == (expected, "signature")


SMALL_ORDER_KEYS = [
    "00" * 32,
    "01" + "00" * 31,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ec" + "ff" * 30 + "7f",
]
"""Encodings of points of small order (libsodium's blocklist): no private key is needed to
sign for them."""


@pytest.mark.parametrize(
    "key",
    [
        *SMALL_ORDER_KEYS,
        "ed" + "ff" * 30 + "7f",  # y = p: not a canonical encoding
        "02" + "00" * 31,  # y = 2 has no x on the curve
        "ab" * 31,
        "ab" * 33,
        public_key_of(KEY_A).upper(),
        "g" * 64,
    ],
)
def test_an_unusable_publisher_key_is_refused(key: str) -> None:
    """Not 64 lowercase hex of a curve point outside the small-order subgroup is
    `invalid_publisher_key`, checked before the signature."""
    error = _refusal(verify_publish, {**_signed(), "publisher_key": key})
    assert (error.code, error.field) == (PackageErrorCode.INVALID_PUBLISHER_KEY, "publisher_key")


def test_the_all_zero_key_cannot_be_used_to_forge_a_package() -> None:
    """With the all-zero key OpenSSL accepts the all-zero signature for any message; the key is
    refused before that signature is ever checked."""
    body = {**_signed(), "publisher_key": "00" * 32, "signature": "00" * 64}
    assert _refusal(verify_publish, body).code == PackageErrorCode.INVALID_PUBLISHER_KEY


@given(st.binary(min_size=32, max_size=32))
def test_every_generated_key_is_usable(seed: bytes) -> None:
    """The public key of any seed passes the key check and signs verifiable packages."""
    assert verify_publish(sign(publish_body(**_plain()), seed.hex())).publisher_key == (
        public_key_of(seed.hex())
    )


def _plain() -> dict[str, Any]:
    return {"name": "ab", "version": "0.0.1", "kind": "skill", "content": SKILL}


def test_a_private_key_must_be_a_hex_seed() -> None:
    """Signing with a key that is not 64 hex characters is `invalid_private_key`; surrounding
    whitespace (a key file's newline) is ignored."""
    assert sign(_plain(), KEY_A + "\n") == sign(_plain(), KEY_A)
    for bad in ("", "01" * 31, "xy" * 32, "01" * 33):
        assert _refusal(sign, _plain(), bad).code == PackageErrorCode.INVALID_PRIVATE_KEY


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "(body)"),
        ({k: v for k, v in _signed().items() if k != "name"}, "name"),
        ({k: v for k, v in _signed().items() if k != "content"}, "content"),
        ({k: v for k, v in _signed().items() if k != "content_hash"}, "content_hash"),
        ({k: v for k, v in _signed().items() if k != "publisher_key"}, "publisher_key"),
        ({k: v for k, v in _signed().items() if k != "signature"}, "signature"),
        ({**_signed(), "version": 1}, "version"),
        ({**_signed(), "kind": None}, "kind"),
        ({**_signed(), "description": None}, "description"),
        ({**_signed(), "description": "x" * (DESCRIPTION_CHARS_MAX + 1)}, "description"),
        ({**_signed(), "homepage": "https://example.com"}, "homepage"),
    ],
)
def test_missing_mistyped_or_unknown_fields_are_body_errors(body: Any, field: str) -> None:
    """The first check: each field present with its type, and no other field."""
    error = _refusal(verify_publish, body)
    assert (error.code, error.field) == (PackageErrorCode.INVALID_PUBLISH_BODY, field)


def test_checks_run_in_the_documented_order() -> None:
    """With everything wrong, fixing one field at a time reveals the next check: body, name,
    version, kind, content, content hash, publisher key, signature."""
    good = _signed()
    body: dict[str, Any] = {
        "name": "Bad_Name",
        "version": "1.0",
        "kind": "theme",
        "content": {"instructions": ""},
        "content_hash": "0" * 64,
        "publisher_key": "00" * 32,
        "signature": "nope",
        "extra": True,
    }
    seen = []
    for fix in (
        "extra",
        "name",
        "version",
        "kind",
        "content",
        "content_hash",
        "publisher_key",
        "signature",
    ):
        seen.append(_refusal(verify_publish, body).code.value)
        if fix == "extra":
            del body["extra"]
        else:
            body[fix] = good[fix]
    assert seen == [
        "invalid_publish_body",
        "invalid_package_name",
        "invalid_version",
        "invalid_package_kind",
        "invalid_package_content",
        "content_hash_mismatch",
        "invalid_publisher_key",
        "invalid_signature",
    ]
    body["description"] = good["description"]
    assert verify_publish(body).as_dict() == good


def test_every_error_code_is_listed_in_the_package_docstring() -> None:
    """The module docstring is the list of codes; a new code fails here until it is there."""
    import thymos.marketplace

    doc = thymos.marketplace.__doc__ or ""
    missing = [code.value for code in PackageErrorCode if f"`{code.value}`" not in doc]
    assert not missing
