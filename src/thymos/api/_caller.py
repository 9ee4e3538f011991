"""Who is calling: identity, tenant and role.

With no API keys configured the server is open: every caller is `anonymous`, an admin of the
`default` tenant. API keys (a later issue) replace this dependency without touching routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from thymos.runtime import DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    tenant: str
    role: str

    @property
    def tenant_filter(self) -> str:
        return self.tenant


def current_caller() -> Caller:
    return Caller(name="anonymous", tenant=DEFAULT_TENANT, role="admin")
