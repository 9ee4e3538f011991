"""Who is calling: identity, tenant and role.

With no API keys configured the server is open: every caller is `anonymous`, an admin of the
`default` tenant. With keys, `current_caller` authenticates the bearer key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from fastapi import Request

from thymos.core import ErrorCode, ThymosError
from thymos.observability import note_caller
from thymos.runtime import DEFAULT_TENANT


class Role(StrEnum):
    """`admin` may do everything; `operator` creates runs, approves and cancels; `viewer` reads."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str | None
    name: str
    tenant: str
    role: Role

    def require(self, role: Role) -> None:
        """403 unless this caller's role is at least `role`."""
        if _RANK[self.role] < _RANK[role]:
            raise ThymosError(
                ErrorCode.FORBIDDEN,
                f"the {self.role.value} role cannot do this; it needs {role.value}",
                {"role": self.role.value, "required": role.value},
            )


ANONYMOUS = Caller(key_id=None, name="anonymous", tenant=DEFAULT_TENANT, role=Role.ADMIN)


class CallerSource(Protocol):
    """What decides who is calling: the gateway in `_auth`, built in the app's lifespan."""

    async def authenticate(self, request: Request) -> Caller: ...


async def current_caller(request: Request) -> Caller:
    """The dependency of every route that acts for a caller: authenticates the bearer key,
    applies its rate limit and counts the request (`_auth.Gateway.authenticate`). The OpenAPI
    document's security requirements are derived from which routes depend on this."""
    source: CallerSource = request.app.state.gateway
    caller = await source.authenticate(request)
    # Logged from here on (and in the request's access-log line): the key's id, never a secret.
    note_caller(caller.key_id, caller.tenant)
    return caller
