"""`thymos package keygen|sign|publish`: a publisher's side of the marketplace.

    thymos package keygen --out publisher.key        # prints {"public_key": ...}
    thymos package sign --key publisher.key --name my-skill --version 1.0.0 \\
        --kind skill --content skill.json > body.json
    thymos package publish --url http://127.0.0.1:3001 body.json

Data (keys, the signed body, the server's answer) goes to stdout as JSON; messages go to
stderr. Bad input (an unreadable file, a package the marketplace checks refuse) exits 2; a
server that refuses the package, or cannot be reached, exits 1. `sign` checks the body it made
with `verify_publish`, the server's own check, so a package that would be refused is never
printed. The marketplace and HTTP modules are imported by the commands that use them: every
other `thymos` command starts without them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

package_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Sign and publish marketplace packages (Ed25519 publisher keys).",
)

PRIVATE_KEY_BYTES = 32
"""An Ed25519 private key is a 32-byte seed, written as 64 hex characters."""
INPUT_BYTES_MAX = 4 * 1024 * 1024
"""A content or body file larger than this is not a package (content is bounded far below)."""
PUBLISH_TIMEOUT_S = 30.0
URL_DEFAULT = "http://127.0.0.1:3001"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"thymos: {message}", err=True)
    return typer.Exit(code)


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as file:
            raw = file.read(INPUT_BYTES_MAX + 1)
    except OSError as exc:
        raise _fail(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None
    if len(raw) > INPUT_BYTES_MAX:
        raise _fail(f"the {what} {str(path)!r} is over {INPUT_BYTES_MAX} bytes")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; a package must mean one thing.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _json(raw: bytes, path: Path, what: str) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _fail(f"the {what} {str(path)!r} is not JSON: {exc}") from None


@package_app.command("keygen")
def keygen_command(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the private key to this new file (mode 0600) and print only the "
            "public key; it is never overwritten",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make a publisher key pair (Ed25519, hex).

    Prints {"private_key", "public_key"}, or with --out writes the private key to a new file
    and prints {"public_key"}. An admin trusts the public key with POST
    /marketplace/publishers."""
    from thymos.marketplace import public_key_of

    seed = secrets.token_bytes(PRIVATE_KEY_BYTES).hex()
    public = public_key_of(seed)
    if out is None:
        typer.echo(json.dumps({"private_key": seed, "public_key": public}, indent=2))
        typer.echo(
            "keep the private key secret; register the public key with "
            "POST /marketplace/publishers",
            err=True,
        )
        return
    try:
        # O_EXCL: an existing file (perhaps another key) is never replaced.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _fail(f"{str(out)!r} already exists; not overwriting it") from None
    except OSError as exc:
        raise _fail(f"cannot create {str(out)!r}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        os.fchmod(file.fileno(), 0o600)  # whatever the umask allowed, only the owner reads it
        file.write(seed + "\n")
    typer.echo(json.dumps({"public_key": public}, indent=2))
    typer.echo(
        f"wrote the private key to {str(out)!r} (mode 0600); register the public key with "
        "POST /marketplace/publishers",
        err=True,
    )


@package_app.command("sign")
def sign_command(
    key: Annotated[Path, typer.Option(help="The private key file (from keygen --out)")],
    name: Annotated[str, typer.Option(help="The package name: my-tool or @scope/my-tool")],
    version: Annotated[str, typer.Option(help="A semantic version: 1.0.0, 2.1.0-rc.1")],
    kind: Annotated[str, typer.Option(help="skill, tool_manifest, mcp_server or policy")],
    content: Annotated[
        Path,
        typer.Option(
            help="The content as a JSON file (for --kind policy, a *.cedar file is read as "
            'the policy text, {"cedar": TEXT})'
        ),
    ],
    description: Annotated[
        str | None, typer.Option(help="A line or two for listings", show_default=False)
    ] = None,
) -> None:
    """Print a signed publish body as JSON.

    The body is checked as the server will check it; a package it would refuse exits 2."""
    from thymos.marketplace import PackageError, publish_body, sign, verify_publish

    raw = _read(content, "content file")
    data: Any
    if kind == "policy" and content.suffix == ".cedar":
        try:
            data = {"cedar": raw.decode("utf-8")}
        except UnicodeDecodeError:
            raise _fail(f"the content file {str(content)!r} is not UTF-8 text") from None
    else:
        data = _json(raw, content, "content file")
    private = _read(key, "key file").decode("ascii", errors="replace")
    try:
        body = sign(
            publish_body(
                name=name, version=version, kind=kind, content=data, description=description
            ),
            private,
        )
        verify_publish(body)
    except PackageError as exc:
        raise _fail(f"{exc.field}: {exc.message} ({exc.code.value})") from None
    typer.echo(json.dumps(body, indent=2))


@package_app.command("publish")
def publish_command(
    body_file: Annotated[Path, typer.Argument(help="The signed publish body (from sign)")],
    url: Annotated[str, typer.Option(help="The Thymos server")] = URL_DEFAULT,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="THYMOS_API_KEY",
            help="An API key of the server (default THYMOS_API_KEY)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """POST a signed body to URL/marketplace/packages.

    Prints the server's answer; exits 1 with its error message when it refuses."""
    import httpx

    if not url.startswith(("http://", "https://")):
        raise _fail("--url must be an http:// or https:// URL")
    raw = _read(body_file, "body file")
    if not isinstance(_json(raw, body_file, "body file"), dict):
        raise _fail(f"the body file {str(body_file)!r} must hold a JSON object")
    endpoint = url.rstrip("/") + "/marketplace/packages"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        # The bytes as read: the server checks exactly what the publisher signed and kept.
        response = httpx.post(endpoint, content=raw, headers=headers, timeout=PUBLISH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {endpoint}: {exc}", 1) from None
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    if answer is not None:
        typer.echo(json.dumps(answer, indent=2))
    elif response.text:
        typer.echo(response.text)
    if response.is_success:
        return
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        reason = f"{error.get('code')}: {error.get('message')}"
    else:
        reason = response.reason_phrase or "no error message"
    raise _fail(f"the server refused the package ({response.status_code} {reason})", 1)
