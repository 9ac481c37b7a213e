"""EventBridge event-pattern matching, for the tests: EventBridge's TestEventPattern needs AWS, so the app's rule
patterns are matched here against the events AWS documents.

The semantics are EventBridge's (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-patterns.html,
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html):

- a pattern is a JSON object; every field it names must match (AND), fields it does not name are ignored;
- a nested object matches the event's nested object field by field;
- a leaf is an array of matchers, any one of which may match (OR); a leaf matches an event array when any of the
  array's elements matches;
- a matcher is an exact value (string, number, boolean, null) or one operator object: ``prefix``, ``suffix``,
  ``equals-ignore-case``, ``anything-but`` (a value, a list, or ``{"prefix": ...}``), ``exists``, ``numeric``;
- a field missing from the event matches only ``{"exists": false}``.

An operator not listed raises: a pattern this module cannot judge never passes by accident.
"""

from __future__ import annotations

import operator
from typing import Any

_MISSING = object()
_NUMERIC = {"<": operator.lt, "<=": operator.le, "=": operator.eq, ">": operator.gt, ">=": operator.ge}


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """Whether ``event`` matches EventBridge ``pattern``."""
    if not isinstance(event, dict):
        return False
    for key, wanted in pattern.items():
        value = event.get(key, _MISSING)
        if isinstance(wanted, dict):
            if value is _MISSING or not matches(wanted, value):
                return False
        elif isinstance(wanted, list):
            if not _leaf(wanted, value):
                return False
        else:
            raise ValueError(
                f"pattern field {key!r} must be an object or an array of matchers, got {wanted!r}"
            )
    return True


def _leaf(matchers: list[Any], value: Any) -> bool:
    if value is _MISSING:
        return any(isinstance(m, dict) and m.get("exists") is False for m in matchers)
    values = value if isinstance(value, list) else [value]
    return any(_one(matcher, v) for matcher in matchers for v in values)


def _one(matcher: Any, value: Any) -> bool:
    if not isinstance(matcher, dict):
        return matcher == value and type(matcher) is type(value)
    ((name, argument),) = matcher.items()
    if name == "exists":
        return argument is True
    if name == "prefix":
        if isinstance(argument, dict):  # {"prefix": {"equals-ignore-case": "..."}}
            return isinstance(value, str) and value.lower().startswith(argument["equals-ignore-case"].lower())
        return isinstance(value, str) and value.startswith(argument)
    if name == "suffix":
        return isinstance(value, str) and value.endswith(argument)
    if name == "equals-ignore-case":
        return isinstance(value, str) and value.lower() == argument.lower()
    if name == "anything-but":
        if isinstance(argument, dict):
            return not _one(argument, value)
        excluded = argument if isinstance(argument, list) else [argument]
        return not any(_one(e, value) for e in excluded)
    if name == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        pairs = list(zip(argument[::2], argument[1::2], strict=True))
        return all(_NUMERIC[op](value, bound) for op, bound in pairs)
    raise ValueError(f"event pattern operator {name!r} is not implemented here")
