"""Request checks of the local API that answer like OpenAI: 400 with a message and the ``param`` path.

Pydantic error locations become OpenAI ``param`` paths (``expires_after.anchor``, ``skills[0].skill_id``,
``network_policy.type``), and error types become OpenAI-style messages. Messages never echo a value
that may be secret (only enum values and integers are quoted back).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from hearth.errors import BadRequest

# Tags of the discriminated unions: pydantic puts the tag into the location, OpenAI's param has none.
_UNION_TAGS = frozenset({"disabled", "allowlist", "skill_reference", "inline"})
_UNION_FIELDS = frozenset({"network_policy", "skills"})

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}

JSON_PARSE_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have "
    "trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def param_path(loc: tuple[int | str, ...]) -> str | None:
    out = ""
    prev: int | str | None = None
    in_union = False
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif in_union and item in _UNION_TAGS and (prev == "network_policy" or isinstance(prev, int)):
            prev = item
            continue
        else:
            out += f".{item}" if out else str(item)
            if item in _UNION_FIELDS:
                in_union = True
        prev = item
    return out or None


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"'{text[:200]}'"


def from_validation_error(exc: ValidationError, *, prefix: str = "") -> BadRequest:
    """The first pydantic error, as OpenAI would word it."""
    err = exc.errors(include_url=False)[0]
    kind = err["type"]
    loc = tuple(err.get("loc", ()))
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    param = param_path(loc)
    if prefix:
        param = f"{prefix}.{param}" if param else prefix
    shown = param or "body"
    if kind == "missing":
        msg = f"Missing required parameter: '{shown}'."
    elif kind == "extra_forbidden":
        msg = f"Unknown parameter: '{shown}'."
    elif kind == "literal_error":
        msg = f"Invalid value: {_quote(value)}. Supported values are: {ctx.get('expected', '')}."
    elif kind == "union_tag_invalid":
        param = f"{param}.type" if param else "type"
        msg = f"Invalid value: {_quote(ctx.get('tag'))}. Supported values are: {ctx.get('expected_tags', '')}."
    elif kind == "union_tag_not_found":
        param = f"{param}.type" if param else "type"
        msg = f"Missing required parameter: '{param}'."
    elif kind in _EXPECTED:
        if param is None:
            msg = f"Invalid type for request body: expected {_EXPECTED[kind]}, but got {describe(value)} instead."
        else:
            msg = f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got {describe(value)} instead."
    elif kind == "string_too_short":
        msg = (
            f"Invalid '{shown}': string too short. Expected a string with minimum length "
            f"{ctx.get('min_length')}, but got a string with length {len(value) if isinstance(value, str) else 0} "
            "instead."
        )
    elif kind == "string_too_long":
        msg = f"Invalid '{shown}': string too long. Expected a string with maximum length {ctx.get('max_length')}."
    elif kind == "too_short":
        msg = f"Invalid '{shown}': array too short. Expected an array with minimum length {ctx.get('min_length')}."
    elif kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        op = ">=" if kind == "greater_than_equal" else ">"
        msg = f"Invalid '{shown}': integer below minimum value. Expected a value {op} {bound}, but got {value} instead."
    elif kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        op = "<=" if kind == "less_than_equal" else "<"
        msg = f"Invalid '{shown}': integer above maximum value. Expected a value {op} {bound}, but got {value} instead."
    elif kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        msg = f"Invalid '{shown}': string does not match pattern. Expected a string that matches '{pattern}'."
    else:
        msg = f"Invalid '{shown}': {err.get('msg', 'invalid value')}."
    return BadRequest(msg, status=400, param=param)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; anything else is OpenAI's 400."""
    try:
        body = json.loads(raw)
        # A lone surrogate (``"\\ud800"``) parses, but cannot be stored or echoed as UTF-8.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise BadRequest(JSON_PARSE_MESSAGE, status=400) from None
    if not isinstance(body, dict):
        raise BadRequest(
            f"Invalid type for request body: expected an object, but got {describe(body)} instead.", status=400
        )
    return body


def parse_int(name: str, raw: str | None, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(
            f"Invalid '{name}': expected an integer, but got {_quote(raw)} instead.", status=400, param=name
        ) from None
    if value < low:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            status=400,
            param=name,
        )
    if value > high:
        raise BadRequest(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            status=400,
            param=name,
        )
    return value


def parse_choice(name: str, raw: str | None, *, default: str, choices: tuple[str, ...]) -> str:
    if raw is None:
        return default
    if raw not in choices:
        supported = ", ".join(f"'{c}'" for c in choices[:-1]) + f" and '{choices[-1]}'" if len(choices) > 1 else ""
        raise BadRequest(f"Invalid value: {_quote(raw)}. Supported values are: {supported}.", status=400, param=name)
    return raw
