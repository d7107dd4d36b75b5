"""Reading a pools file: YAML, ``${ENV}`` substitution, validation, and errors that name their place.

Users fix a pools file by line number, so every problem (YAML syntax, a duplicate key, an unset
variable, a typo, a broken invariant) becomes a ``PoolsFileIssue`` with file, line, column, pool and
field, and all of them are reported at once. Pydantic errors carry a ``loc`` (a path through the
data); the YAML node tree from ``yaml.compose`` maps that path back to a line. Values that pools
inherit from ``defaults`` are reported at the ``defaults`` line they came from.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from settings.pools import POOL_NAME_PATTERN, PoolsFile, PoolSpec, deep_merge
from settings.pools_errors import PoolsFileError, PoolsFileIssue

PathElem = str | int

__all__ = ["load_pools", "parse_pools", "substitute_env"]


def load_pools(path: Path | str, *, env: Mapping[str, str] | None = None) -> PoolsFile:
    """Load and validate the pools file at ``path``; relative paths inside it are read from its directory.

    ``env`` (default ``os.environ``) feeds ``${VAR}`` references. Raises ``PoolsFileError`` listing
    every problem found.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PoolsFileError([PoolsFileIssue(f"cannot read the pools file: {reason}", file=str(path))]) from None
    pools = parse_pools(text, file=str(path), base_dir=path.resolve().parent, env=env)
    pools._source = path.resolve()
    return pools


def parse_pools(
    text: str, *, file: str = "<pools>", base_dir: Path | str | None = None, env: Mapping[str, str] | None = None
) -> PoolsFile:
    """Validate pools-file ``text``; ``base_dir`` (default the current directory) anchors relative paths."""
    env = os.environ if env is None else env
    root, data, issues = _parse_yaml(text, file)
    if root is None:
        if not issues:
            issues.append(PoolsFileIssue("the pools file is empty (expected at least `version: 1`)", file=file))
        raise PoolsFileError(issues)
    if not isinstance(data, dict):
        issues.append(_issue_at(file, root, [], "the pools file must be a mapping (version, defaults, pools)"))
        raise PoolsFileError(issues)
    env_issues: list[PoolsFileIssue] = []
    data = _substitute_tree(data, env, [], lambda path, msg: env_issues.append(_issue_at(file, root, path, msg)))
    if env_issues:  # validating half-substituted data would only add confusing follow-up errors
        raise PoolsFileError(_ordered(issues + env_issues))
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd()}
    try:
        pools = PoolsFile.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        errors += _recheck_invariants(data, errors, context)
        issues.extend(_from_validation(errors, file, root))
    if issues:  # duplicate keys are errors even when the data they leave behind is valid
        raise PoolsFileError(_ordered(issues))
    return pools


# --- YAML ----------------------------------------------------------------------------------------


def _mark_issue(file: str, exc: yaml.YAMLError) -> PoolsFileIssue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML: {context + ': ' if context else ''}{problem}"
    if mark is None:
        return PoolsFileIssue(message, file=file)
    return PoolsFileIssue(message, file=file, line=mark.line + 1, column=mark.column + 1)


def _parse_yaml(text: str, file: str) -> tuple[yaml.Node | None, Any, list[PoolsFileIssue]]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None, []
        issues = _duplicate_keys(file, root)
        # construct_document flattens `<<` merge keys in the node tree too, so both stay in step.
        data = loader.construct_document(root)
        return root, data, issues
    except yaml.YAMLError as exc:
        return None, None, [_mark_issue(file, exc)]
    finally:
        loader.dispose()


def _duplicate_keys(file: str, node: yaml.Node) -> list[PoolsFileIssue]:
    # PyYAML silently keeps the last of two equal keys; two pools with one name would vanish into one.
    issues: list[PoolsFileIssue] = []
    seen_nodes: set[int] = set()

    def walk(n: yaml.Node) -> None:
        if id(n) in seen_nodes:  # aliases share nodes
            return
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in first:
                        prev = first[key.value].start_mark.line + 1
                        issues.append(PoolsFileIssue(
                            f"duplicate key {key.value!r} (first at line {prev})", file=file,
                            line=key.start_mark.line + 1, column=key.start_mark.column + 1,
                        ))
                    else:
                        first[key.value] = key
                walk(value)
        elif isinstance(n, yaml.SequenceNode):
            for item in n.value:
                walk(item)

    walk(node)
    return issues


# --- ${ENV} substitution -------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def substitute_env(value: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``value`` with ``${VAR}`` / ``${VAR:-default}`` replaced and ``$$`` unescaped, plus problems found.

    Problems name variables, never their values.
    """
    problems: list[str] = []

    def replace(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "$$":
            return "$"
        body = m.group(1)
        if body is None:
            problems.append("unclosed '${' (write $$ for a literal $)")
            return whole
        name, sep, default = body.partition(":-")
        if not _ENV_NAME.match(name):
            problems.append(f"malformed reference ${{{body}}} (expected ${{NAME}} or ${{NAME:-default}})")
            return whole
        current = env.get(name)
        if current is None or (sep and current == ""):
            if sep:
                return default
            problems.append(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return whole
        return current

    return _REF.sub(replace, value), problems


def _substitute_tree(data: Any, env: Mapping[str, str], path: list[PathElem], report: Any) -> Any:
    if isinstance(data, str):
        if "$" not in data:
            return data
        value, problems = substitute_env(data, env)
        for problem in problems:
            report(path, problem)
        return value
    if isinstance(data, dict):
        return {k: _substitute_tree(v, env, [*path, k], report) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_tree(v, env, [*path, i], report) for i, v in enumerate(data)]
    return data


# --- mapping pydantic errors back to the YAML ------------------------------------------------------


def _strip(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _field_annotation(model: type[BaseModel], elem: PathElem) -> tuple[bool, Any]:
    for name, info in model.model_fields.items():
        if elem in (name, info.alias):
            return True, info.annotation
    return False, None


def _tag_member(union: Any, elem: PathElem) -> Any:
    """The member of a discriminated union whose ``type`` literal is ``elem`` (pydantic puts tags in loc)."""
    for member in get_args(union):
        member = _strip(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
            literal = _strip(member.model_fields["type"].annotation)
            if get_origin(literal) is Literal and elem in get_args(literal):
                return member
    return None


def _data_path(loc: tuple[PathElem, ...]) -> tuple[list[PathElem], type[BaseModel] | None]:
    """``loc`` without union tags (they are not in the file), and the model holding the last element."""
    tp: Any = PoolsFile
    path: list[PathElem] = []
    holder: type[BaseModel] | None = None
    for elem in loc:
        tp = _strip(tp) if tp is not None else None
        origin = get_origin(tp)
        if origin in (Union, types.UnionType) and (member := _tag_member(tp, elem)) is not None:
            tp = member
            continue
        path.append(elem)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            holder = tp
            _, tp = _field_annotation(tp, elem)
        elif origin is list:
            tp = get_args(tp)[0]
        elif origin is dict:
            tp = None if elem == "[key]" else get_args(tp)[1]
        else:
            tp = None
    return path, holder


def _find(root: yaml.Node, path: list[PathElem]) -> tuple[yaml.Node, int, yaml.Node | None]:
    """The deepest node along ``path``, how many elements of it were found, and that node's key node."""
    node, depth, key_node = root, 0, None
    for elem in path:
        if elem == "[key]":
            return (key_node or node), depth + 1, key_node
        nxt: yaml.Node | None = None
        nxt_key: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(elem):
                    nxt_key, nxt = key, value
        elif isinstance(node, yaml.SequenceNode) and isinstance(elem, int) and 0 <= elem < len(node.value):
            nxt = node.value[elem]
        if nxt is None:
            break
        node, depth, key_node = nxt, depth + 1, nxt_key
    return node, depth, key_node


def _dotted(path: list[PathElem]) -> str:
    out = ""
    for elem in path:
        if elem == "[key]":
            continue
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out


def _issue_at(
    file: str, root: yaml.Node, path: list[PathElem], message: str, *, missing: bool = False
) -> PoolsFileIssue:
    node, depth, key_node = _find(root, path)
    wanted = len(path) - (1 if missing else 0)
    if depth < wanted:
        # Not written where the error is: the value came from `defaults` (point there if it is written
        # there) or is a built-in default (point at the key of the innermost object that is written).
        d_node, d_depth, _ = _find(root, ["defaults", *path[2:]]) if path[:1] == ["pools"] else (node, 0, None)
        if len(path) > 2 and d_depth - 1 >= wanted - 2:
            node = d_node
        elif key_node is not None:
            node = key_node
    pool = str(path[1]) if len(path) > 1 and path[0] == "pools" else None
    field = _dotted(path[2:]) if pool is not None else _dotted(path)
    mark = node.start_mark
    return PoolsFileIssue(message, file=file, line=mark.line + 1, column=mark.column + 1, pool=pool,
                          field=field or None)


def _message(err: Mapping[str, Any], path: list[PathElem], holder: type[BaseModel] | None) -> str:
    kind, last = err["type"], path[-1] if path else None
    if last == "[key]" and len(path) >= 2 and path[0] == "pools":
        return f"pool name {path[1]!r} must match {POOL_NAME_PATTERN} (it goes into container names)"
    if kind == "extra_forbidden":
        known = [info.alias or name for name, info in holder.model_fields.items()] if holder else []
        close = difflib.get_close_matches(str(last), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else (f" (known: {', '.join(known)})" if known else "")
        return f"unknown field {last!r}{hint}"
    if kind == "missing":
        return f"missing required field {last!r}"
    return str(err["msg"])  # never err["input"]: it may hold a secret


def _recheck_invariants(
    data: dict[str, Any], errors: list[ErrorDetails], context: dict[str, Any]
) -> list[ErrorDetails]:
    """Invariant errors of pools whose invariants did not run because some of their fields were invalid.

    Pydantic checks a model's invariants only once all its fields are valid. To still report every
    problem at once, each such pool is validated again with its broken top-level fields left to
    their defaults, and only the invariant errors that rest on none of those fields are kept.
    """
    pools, defaults = data.get("pools"), data.get("defaults")
    if not isinstance(pools, dict):
        return []
    broken: dict[str, set[str]] = {}
    checked: set[str] = set()
    for err in errors:
        loc = err["loc"]
        if len(loc) < 3 or loc[0] != "pools" or not isinstance(loc[1], str):
            continue
        if err["type"] == "pools_invariant":
            checked.add(loc[1])
        elif loc[2] != "[key]":
            broken.setdefault(loc[1], set()).add(str(loc[2]))
    extra: list[ErrorDetails] = []
    for name, fields in broken.items():
        raw = pools.get(name)
        if name in checked or not isinstance(raw, dict):
            continue
        merged = deep_merge(defaults, raw) if isinstance(defaults, dict) else dict(raw)
        trial = {k: v for k, v in merged.items() if k not in fields}
        trial["name"] = name if re.match(POOL_NAME_PATTERN, name) else "pool"
        try:
            PoolSpec.model_validate(trial, context=context)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                involves = set(str((err.get("ctx") or {}).get("involves", "")).split())
                if err["type"] == "pools_invariant" and not involves & fields:
                    extra.append({**err, "loc": ("pools", name, *err["loc"])})
    return extra


def _from_validation(errors: list[ErrorDetails], file: str, root: yaml.Node) -> list[PoolsFileIssue]:
    issues: list[PoolsFileIssue] = []
    bad_keys = {err["loc"][1] for err in errors if len(err["loc"]) == 3 and err["loc"][2] == "[key]"}
    for err in errors:
        if len(err["loc"]) == 3 and err["loc"][2] == "name" and err["loc"][1] in bad_keys:
            continue  # the name is the key, already reported as such
        path, holder = _data_path(tuple(err["loc"]))
        issues.append(_issue_at(file, root, path, _message(err, path, holder), missing=err["type"] == "missing"))
    # A bad value in `defaults` fails there and again in every pool that inherits it: report it once.
    from_defaults = {(i.line, i.column, i.message) for i in issues if i.pool is None}
    kept: list[PoolsFileIssue] = []
    seen: set[tuple[Any, ...]] = set()
    for issue in issues:
        key = (issue.line, issue.column, issue.message, issue.pool, issue.field)
        if key in seen or (issue.pool is not None and (issue.line, issue.column, issue.message) in from_defaults):
            continue
        seen.add(key)
        kept.append(issue)
    return kept


def _ordered(issues: list[PoolsFileIssue]) -> list[PoolsFileIssue]:
    return sorted(issues, key=lambda i: (i.line is None, i.line or 0, i.column or 0))
