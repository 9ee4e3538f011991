"""Logs never show a secret: every record is redacted as it is made."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from typing import Any

from thymos.core import Redactor


def redact_logs(secrets: Iterable[str]) -> Redactor:
    """Install a log record factory that redacts each record's message, arguments and
    traceback of the server's secrets and of credential-shaped values (the same rule as for
    tool outputs). Returns the redactor."""
    redactor = Redactor(secrets)
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return record
        clean = redactor.text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redactor.text(text)
        return record

    logging.setLogRecordFactory(factory)
    return redactor
