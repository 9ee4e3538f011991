"""Policy texts shared by tests of every tier (plain strings: black-box tests import no Thymos)."""

GOVERNED_POLICY = """\
@id("permit-all")
permit(principal, action, resource);

@id("prod-needs-two")
@approval("ops") @quorum("2")
permit(principal, action, resource)
when { resource.name == "kv_set" && context.arguments like "*\\"key\\":\\"prod*" };

@id("no-secrets")
forbid(principal, action, resource)
when { context.arguments like "*secret*" };
"""
"""Writing a `prod*` key needs two approvers on `ops`; arguments mentioning a secret are
forbidden; everything else the writ allows is permitted."""

PERMISSIVE_POLICY = '@id("permit-all")\npermit(principal, action, resource);\n'
"""What a forger would put in its place."""
