"""payrail limits rule in Python (componentize-py).

Config (JSON, keys optional, amounts in minor units; unknown keys rejected):

    {"max_amount": 1000000}

Declines with `amount_too_large` when the payment amount is above
`max_amount`; otherwise approves with no postings. A config that is not a
JSON object, has unknown keys or a non-integer `max_amount` fails the call
with plugin-error `invalid_config`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

ALLOWED_KEYS = {"max_amount"}


def _invalid(message: str) -> Err:
    return Err(types.PluginError(code="invalid_config", message=message))


def parse_config(text: str):
    """Returns `max_amount` (int or None); raises Err(invalid_config)."""
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise _invalid(f"config is not JSON: {e}")
    if not isinstance(cfg, dict):
        raise _invalid("config must be a JSON object")
    unknown = sorted(set(cfg) - ALLOWED_KEYS)
    if unknown:
        raise _invalid(f"unknown config key(s): {', '.join(unknown)}")
    max_amount = cfg.get("max_amount")
    # bool is an int subclass in Python: refuse it explicitly
    if max_amount is not None and (
        not isinstance(max_amount, int) or isinstance(max_amount, bool)
    ):
        raise _invalid("max_amount must be an integer")
    return max_amount


class WitWorld(wit_world.WitWorld):
    def evaluate(self, input: types.Input) -> types.Decision:
        max_amount = parse_config(input.config)
        p = input.payment
        if max_amount is not None and p.amount > max_amount:
            return types.Decision_Decline(
                types.Decline(
                    code="amount_too_large",
                    message=f"amount {p.amount} {p.currency} is above the limit of {max_amount}",
                )
            )
        return types.Decision_Approve(
            types.Approval(postings=[], events=[], annotations=[])
        )
