"""`kv_get` and `kv_set`: a small key-value store kept in the world as `kv` resources."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thymos.core import Delta, Effect, Risk, ToolSpec

from ._contract import ToolContext, ToolOutcome

KV_KIND = "kv"
KV_KEY_CHARS_MAX = 256

_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": KV_KEY_CHARS_MAX}


class KvGet:
    spec = ToolSpec(
        name="kv_get",
        description="Read a value from the run's key-value store (null when the key is absent).",
        input_schema={
            "type": "object",
            "properties": {"key": _KEY_SCHEMA},
            "required": ["key"],
            "additionalProperties": False,
        },
        effect=Effect.READ,
        risk=Risk.LOW,
        idempotent=True,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        resource = ctx.world.get(KV_KIND, args["key"])
        if resource is None:
            return ToolOutcome({"key": args["key"], "found": False, "value": None})
        return ToolOutcome(
            {
                "key": args["key"],
                "found": True,
                "value": resource.value,
                "version": resource.version,
            }
        )


class KvSet:
    spec = ToolSpec(
        name="kv_set",
        description="Set a key in the run's key-value store to any JSON value.",
        input_schema={
            "type": "object",
            "properties": {"key": _KEY_SCHEMA, "value": {}},
            "required": ["key", "value"],
            "additionalProperties": False,
        },
        effect=Effect.WRITE,
        risk=Risk.LOW,
        idempotent=True,
        compensable=True,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        key, value = args["key"], args["value"]
        current = ctx.world.get(KV_KIND, key)
        if current is None:
            delta = Delta("create", KV_KIND, key, value)
            version = 1
        else:
            delta = Delta("replace", KV_KIND, key, value, expected_version=current.version)
            version = current.version + 1
        return ToolOutcome({"key": key, "version": version}, (delta,))
