"""docs/reference.md is generated from the models; this fails when it no longer matches them.

Fix a failure by running ``.venv/bin/python scripts/gen_reference.py`` and committing the result.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from settings import Settings
from settings.pools import PoolsFile

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_up_to_date() -> None:
    rendered = _generator().render()
    current = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert current == rendered, "docs/reference.md is stale: run .venv/bin/python scripts/gen_reference.py"


def test_readme_carries_the_generated_reference() -> None:
    gen = _generator()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == gen.readme_with_reference(readme, gen.render()), (
        "README.md's reference section is stale: run .venv/bin/python scripts/gen_reference.py"
    )
    assert "HEARTH_REDIS_URL" in readme.split(gen.BEGIN)[1]


def test_reference_lists_every_setting_and_pool_field() -> None:
    text = _generator().render()
    for name, info in Settings.model_fields.items():
        assert f"`HEARTH_{name.upper()}`" in text or any(f"`{c}`" in text for c in getattr(
            info.validation_alias, "choices", [])), name
    schema = PoolsFile.model_json_schema()
    for model in schema["$defs"].values():
        for field in model.get("properties", {}):
            assert f"| `{field}` |" in text, field


def test_check_mode_flags_a_stale_file(tmp_path: Path) -> None:
    gen = _generator()
    gen.OUT = tmp_path / "reference.md"
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    gen.OUT.write_text(gen.OUT.read_text() + "edited by hand\n")
    assert gen.main(["--check"]) == 1


def test_script_runs_as_a_command() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
