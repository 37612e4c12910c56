"""pydantic's validation errors as one short message each, at the key path (and line) the
user wrote, with "did you mean" for a misspelt key or choice."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Annotated, Any, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gradlab.errors import UserError, clip

from .base import KeyPath
from .schema import ExperimentConfig, _tag_of

if TYPE_CHECKING:
    from .loading import _Origins

def _one_line(text: str) -> str:
    """User text echoed in a message: newlines and control characters escaped, cut short."""
    return clip(text)


def _dotted(path: Sequence[Union[str, int]]) -> str:
    return _one_line(".".join(map(str, path)))


def _show(v: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if isinstance(v, bool) or v is None:
        return "null" if v is None else str(v).lower()
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, str):
        v = _one_line(v)
        return f"`{v if len(v) <= 40 else v[:37] + '...'}`"
    return str(v)


def _show_typed(v: Any) -> str:
    s = _show(v)
    return s if v is None or isinstance(v, (list, tuple, dict)) else f"{s} ({type(v).__name__})"



_TYPE_WORDS = {
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] and Optional[X] -> X."""
    while True:
        args = get_args(tp)
        if get_origin(tp) is Annotated:
            tp = args[0]
        elif get_origin(tp) is Union and type(None) in args:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _schema_at(loc: tuple) -> Any:
    """The schema type a pydantic loc points at; a union tag in the loc selects its member."""
    tp: Any = ExperimentConfig
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is Union:  # a discriminated union: `part` is the tag
            tp = next((m for m in get_args(tp) if part in get_args(m.model_fields[_tag_of(m)].annotation)), None)
        else:
            return None
    return _unwrap(tp)


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema model that a pydantic loc (with union tags) points at."""
    tp = _schema_at(loc)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _tags(loc: tuple, tag: str) -> list[str]:
    """The allowed values of the discriminator `tag` of the union at `loc`."""
    return [get_args(m.model_fields[tag].annotation)[0] for m in get_args(_schema_at(loc))]


def _data_path(loc: tuple, data: Any) -> KeyPath:
    """The pydantic loc as a key path of the data: without the union tags pydantic inserts."""
    path: list[Union[str, int]] = []
    cur = data
    for i, part in enumerate(loc):
        if get_origin(_schema_at(loc[:i])) is Union:
            continue
        path.append(part)
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            cur = None
    return tuple(path)


def _one_of(allowed: Sequence[str], got: Any) -> str:
    close = difflib.get_close_matches(got, allowed, n=1) if isinstance(got, str) else []
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"must be one of {', '.join(allowed)}; got {_show(got)}{hint}"


def _unknown_key(key: Any, fields: list[str]) -> str:
    close = difflib.get_close_matches(str(key), fields, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(fields)}"
    return f"unknown key {_show(str(key))}; {hint}"


def _describe(err: dict) -> tuple[str, list[KeyPath]]:
    """A short message for one pydantic error, and the sub-keys (if any) it is really about."""
    kind, v, ctx, loc = err["type"], err.get("input"), err.get("ctx") or {}, err["loc"]
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_show_typed(v)}", []
    if kind in _BOUNDS:
        op, bound = _BOUNDS[kind][0], ctx[_BOUNDS[kind][1]]
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {op} {bound}, got {_show(v)}", []
    if kind == "finite_number":
        return f"must be finite, got {_show(v)}", []
    if kind == "missing":
        return "required key is missing", []
    if kind == "extra_forbidden":
        return _unknown_key(loc[-1], _fields_at(loc[:-1])), []
    if kind == "literal_error":
        return _one_of(re.findall(r"'([^']*)'", ctx["expected"]), v), []
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx["discriminator"].strip("'")
        allowed = re.findall(r"'([^']*)'", ctx.get("expected_tags", "")) or _tags(loc, tag)
        if kind == "union_tag_invalid":
            return _one_of(allowed, ctx["tag"]), [(tag,)]
        return f"required key is missing; must be one of {', '.join(allowed)}", [(tag,)]
    if kind == "string_pattern_mismatch":  # NAME_PATTERN is the only pattern
        return f"must be 1-64 letters, digits, - or _; got {_show(v)}", []
    if kind in ("too_short", "too_long"):
        n = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        bound = "at least" if kind == "too_short" else "at most"
        return f"must have {bound} {n} item{'s' * (n != 1)}, got {ctx['actual_length']}", []
    if kind == "value_error":  # a check of ours: a field's own, or a model's (_Conflict) with its keys
        return str(ctx["error"]), getattr(ctx["error"], "keys", [])
    return err["msg"][:1].lower() + err["msg"][1:], []


def _about(base: KeyPath, subs: Sequence[KeyPath], origins: _Origins) -> KeyPath:
    """The key a model-level check is about: of the keys it names, the first one an option
    set (the option made the conflict), else the first one the file writes, else the first."""
    paths = [base + sub for sub in subs] or [base]
    return next((p for p in paths if origins.option(p) is not None),
                next((p for p in paths if p in origins.lines), paths[0]))


def _user_error(exc: ValidationError, data: dict, origins: _Origins) -> UserError:
    errors = exc.errors()
    message, subs = _describe(errors[0])
    path = _about(_data_path(errors[0]["loc"], data), subs, origins)
    where = origins.locate(path)
    option = origins.tag_option(path)
    if errors[0]["type"] == "extra_forbidden" and path in origins.lines and option:
        # The file wrote the key for the kind (or method) it named; an option changed that. Not
        # dropped: the user's value would vanish silently (a max_norm meant as the threshold).
        tag = next(t for t in ("kind", "method") if path[:-1] + (t,) in origins.sources)
        message = (f"{_show(str(path[-1]))} ({origins.file} line {origins.lines[path]}) does not apply to "
                   f"{tag} {_show(_get(data, path[:-1] + (tag,)))}, which {option} chose; remove it "
                   f"from the file or leave the {tag} as it is")
        where = {"file": option, "line": None}
    elif errors[0]["type"] == "value_error" and where.get("line") is None:
        # An option made a conflict with a key only the file writes (`--set ...loss_scale=none`
        # against the file's growth_interval): say where that key is, for the user to remove it.
        mine = next((s for s in subs if s and path[len(path) - len(s):] == tuple(s)), None)
        base = path[: len(path) - len(mine)] if mine is not None else None
        written = [base + tuple(s) for s in subs if base is not None and base + tuple(s) != path
                   and base + tuple(s) in origins.lines and origins.option(base + tuple(s)) is None]
        if written:
            message += f" ({_dotted(written[0])} is set in {origins.file} line {origins.lines[written[0]]})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})"
    return UserError(message, key=_dotted(path) or None, **where)


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data
