"""Render docs/reference.md from the models: every setting and every pools-file field, with its default.

The descriptions in settings/config.py and settings/pools.py are the single source; this script
turns them into tables so the documentation cannot drift from the code (tests/unit/test_reference.py
fails when docs/reference.md differs from what this renders).

    .venv/bin/python scripts/gen_reference.py          # rewrite docs/reference.md
    .venv/bin/python scripts/gen_reference.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import enum
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"
sys.path.insert(0, str(ROOT))

from settings.config import Settings  # noqa: E402
from settings.faults import EndpointFaults, FaultConfig  # noqa: E402
from settings.pools import PoolDefaults, PoolsFile, PoolSpec  # noqa: E402


def _cell(text: str) -> str:
    text = text.replace("``", "`").replace("|", "\\|").replace("\n", " ").strip()
    # Outside code spans, <data_dir> would be taken for an HTML tag and vanish from the page.
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def type_name(tp: Any) -> str:
    """A reader's name for an annotation: ``int``, ``list of Schedule``, ``1g | 4g``, ``secret``."""
    origin = get_origin(tp)
    if origin is Annotated:
        return type_name(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        name = " or ".join(type_name(a) for a in members)
        return name + (" or none" if len(members) < len(get_args(tp)) else "")
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(tp))
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"map of name to {type_name(get_args(tp)[1])}"
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return " | ".join(str(m.value) for m in tp)
        if issubclass(tp, SecretStr):
            return "secret"
        if issubclass(tp, Path):
            return "path"
        return tp.__name__
    return str(tp)


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool | int | float | list | dict):
        return json.dumps(value)
    return str(value)


def _env_names(name: str, info: FieldInfo) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return [f"HEARTH_{name.upper()}"]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def settings_section() -> list[str]:
    rows = [
        (", ".join(f"`{e}`" for e in _env_names(name, info)), type_name(info.annotation), f"`{default_text(info)}`",
         info.description or "")
        for name, info in Settings.model_fields.items()
    ]
    fault_rows = [
        (f"`{name}`", type_name(info.annotation), f"`{default_text(info)}`", info.description or "")
        for name, info in FaultConfig.model_fields.items()
    ]
    return [
        "## Settings",
        "",
        "Every process reads these from the environment, then from `.env` in the working directory, then",
        "the defaults; arguments given in code win over all of them. Secrets are masked in `repr` and logs.",
        "",
        *_table(("Variable", "Type", "Default", "Description"), rows),
        "",
        "### `HEARTH_FAULTS` (JSON object)",
        "",
        "Fault injection of the local API. `endpoints` maps an endpoint name (e.g. `containers.create`) to",
        f"an object of the same keys except `seed` and `endpoints` ({EndpointFaults.__name__}).",
        "",
        *_table(("Key", "Type", "Default", "Description"), fault_rows),
        "",
    ]


def _models_in(tp: Any) -> list[type[BaseModel]]:
    origin = get_origin(tp)
    if origin is not None:
        return [m for a in get_args(tp) for m in _models_in(a)]
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _suffix(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated or origin in (Union, types.UnionType):
        for a in get_args(tp):
            if a is not type(None) and (s := _suffix(a)):
                return s
        return ""
    if origin is list:
        return "[]"
    if origin is dict:
        return ".<name>"
    return ""


def pools_section() -> list[str]:
    # Walk the models from the top in the order a reader meets them; `defaults` mirrors a pool.
    order: list[tuple[type[BaseModel], str]] = [(PoolsFile, "")]
    seen: set[type[BaseModel]] = {PoolsFile, PoolDefaults}
    i = 0
    while i < len(order):
        model, path = order[i]
        i += 1
        for name, info in model.model_fields.items():
            for child in _models_in(info.annotation):
                if child not in seen:
                    seen.add(child)
                    key = info.alias or name
                    order.append((child, f"{path}.{key}{_suffix(info.annotation)}".lstrip(".")))
    lines = [
        "## Pools file",
        "",
        "YAML, validated strictly (an unknown key is an error). `${VAR}` and `${VAR:-default}` in string",
        "values read the environment (`$$` is a literal `$`). Paths are relative to the pools file's",
        "directory. `defaults` takes any pool field; a pool's own values win and objects merge key by key",
        "(lists and `network_policy` are replaced whole). `hearth validate FILE` checks a file,",
        "`hearth schema` prints its JSON Schema.",
        "",
    ]
    for model, path in order:
        doc = _cell((model.__doc__ or "").strip().splitlines()[0])
        title = f"`{path}`" if path else "Top level"
        rows = [
            (f"`{info.alias or name}`", type_name(info.annotation), f"`{default_text(info)}`", info.description or "")
            for name, info in model.model_fields.items()
            if not (model is PoolSpec and name == "name")
        ]
        lines += [f"### {title} ({model.__name__})", "", doc, "", *_table(("Field", "Type", "Default", "Description"),
                                                                           rows), ""]
    return lines


def render() -> str:
    lines = [
        "# Hearth reference",
        "",
        "<!-- Generated by scripts/gen_reference.py from settings/config.py and settings/pools.py. Do not",
        "     edit: change the field descriptions and run `.venv/bin/python scripts/gen_reference.py`. -->",
        "",
        *settings_section(),
        *pools_section(),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_with_reference(readme: str, reference: str) -> str:
    """The README with the generated reference (headings one level down) between the markers."""
    start, stop = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    body = "\n".join(
        ("#" + line if line.startswith("#") else line) for line in reference.splitlines()[1:]
    ).strip("\n")
    return readme[:start] + "\n" + body + "\n" + readme[stop:]


def main(argv: list[str]) -> int:
    text = render()
    readme = README.read_text(encoding="utf-8")
    wanted = readme_with_reference(readme, text)
    if "--check" in argv:
        stale = [str(p) for p, ok in ((OUT, OUT.exists() and OUT.read_text(encoding="utf-8") == text),
                                      (README, readme == wanted)) if not ok]
        if stale:
            print(f"{', '.join(stale)} stale: run .venv/bin/python scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    README.write_text(wanted, encoding="utf-8")
    print(f"wrote {OUT} and the reference section of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
