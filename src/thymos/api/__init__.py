"""The HTTP surface: the app factory, one module per route group, one error envelope.

**Architecture Invariant:** route handlers parse, call one runtime method and map the result;
no handler holds business logic or writes the ledger.
"""

from ._app import check_storage, create_app
from ._body import parse_json
from ._connections import HEADER_BYTES_MAX, ConnectionLimits, limited_protocol
from ._errors import STATUS_OF
from ._limits import BODY_BYTES_MAX

__all__ = [
    "BODY_BYTES_MAX",
    "HEADER_BYTES_MAX",
    "STATUS_OF",
    "ConnectionLimits",
    "check_storage",
    "create_app",
    "limited_protocol",
    "parse_json",
]
