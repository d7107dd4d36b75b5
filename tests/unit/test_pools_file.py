"""The pools file: models, invariants, the loader's error places, ${ENV}, secrets, schedules, and the CLI.

Every test writes a real YAML file (or text) and goes through the same loader users hit; error
tests assert the exact line and field, because that is what users fix files by.
"""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from settings.config import Settings
from settings.pools import (
    ContainerOptions,
    InputSpec,
    NetworkPolicyAllowlist,
    PoolsFile,
    PoolSpec,
    Schedule,
)
from settings.pools_errors import PoolsFileError, PoolsFileIssue
from settings.pools_loader import load_pools, parse_pools, substitute_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pools.yaml"
SECRET = "s3cr3t-v4lue-never-shown"
PARIS = "Europe/Paris"


def parse(text: str, base: Path, env: dict[str, str] | None = None) -> PoolsFile:
    return parse_pools(textwrap.dedent(text), file="pools.yaml", base_dir=base, env=env or {})


def errors_of(text: str, base: Path, env: dict[str, str] | None = None) -> list[PoolsFileIssue]:
    with pytest.raises(PoolsFileError) as info:
        parse(text, base, env)
    return info.value.errors


def one_error(text: str, base: Path, env: dict[str, str] | None = None) -> PoolsFileIssue:
    errs = errors_of(text, base, env)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("x\n1\n")
    (tmp_path / "data" / "b.csv").write_text("x\n2\n")
    (tmp_path / "tool.py").write_text("print('hi')\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SKILL.md", "# skill\n")
    (tmp_path / "skill.zip").write_bytes(buf.getvalue())
    return tmp_path


# --- the example and the happy path ---------------------------------------------------------------


def test_example_pools_file_validates_with_real_inputs() -> None:
    pools = load_pools(EXAMPLE, env={})
    assert set(pools.pools) == {"analysts", "scratch"}
    assert pools.source == EXAMPLE.resolve()
    analysts = pools.pool("analysts")
    assert (analysts.min_ready, analysts.buffer, analysts.max_total) == (2, 1, 6)
    names = {i.name: Path(i.source) for i in analysts.resolved_inputs()}
    assert set(names) == {"sales.csv", "regions.csv", "helpers.py"}
    assert all(p.is_file() and p.is_relative_to(REPO / "examples") for p in names.values())
    scratch = pools.pool("scratch")
    assert scratch.min_ready == 1 and scratch.lease.on_release == "reuse"
    # inherited from defaults, overridden where the pool says so
    assert analysts.container.expires_after_minutes == 10 and scratch.container.expires_after_minutes == 5
    assert scratch.keepalive.margin_seconds == 60 and analysts.keepalive.margin_seconds == 90


def test_example_env_reference_is_substituted() -> None:
    assert load_pools(EXAMPLE, env={"ANALYSTS_MAX_TOTAL": "5"}).pool("analysts").max_total == 5


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    spec = parse("version: 1\npools:\n  p: {}\n", tmp_path).pool("p")
    assert (spec.name, spec.min_ready, spec.buffer, spec.max_total) == ("p", 1, 0, 10)
    assert spec.container.memory_limit == "1g" and spec.container.expires_after_minutes == 20
    assert spec.lease.ttl_seconds == 900 and spec.lease.min_remaining_on_claim_seconds == 300
    assert spec.lease.on_release == "retire" and spec.lease.wait_seconds == 10
    assert spec.outputs.source == "assistant" and spec.outputs.include == ["**"] and spec.outputs.target is None
    assert spec.outputs.max_file_bytes == 1 << 30 and spec.outputs.max_container_bytes == 10 << 30
    assert spec.keepalive.margin_seconds == 180 and spec.inputs == [] and spec.schedules == []


def test_empty_sections_are_empty_not_errors(tmp_path: Path) -> None:
    pools = parse("version: 1\ndefaults:\n  # nothing yet\npools:\n", tmp_path)
    assert pools.pools == {}


def test_defaults_deep_merge_objects_replace_lists_and_network_policy(files: Path) -> None:
    pools = parse(
        """
        version: 1
        defaults:
          min_ready: 2
          container:
            memory_limit: 4g
            network_policy: {type: allowlist, allowed_domains: [pypi.org]}
          inputs: [{path: tool.py}]
          lease: {ttl_seconds: 100, on_release: reuse}
        pools:
          a:
            container: {expires_after_minutes: 30, network_policy: {type: disabled}}
            inputs: [{path: data/a.csv}]
            lease: {ttl_seconds: 50}
          b: {}
        """,
        files,
    )
    a, b = pools.pool("a"), pools.pool("b")
    assert a.container.memory_limit == "4g" and a.container.expires_after_minutes == 30
    assert a.container.network_policy is not None and a.container.network_policy.type == "disabled"
    assert [i.name for i in a.resolved_inputs()] == ["a.csv"]  # the pool's list replaces the default's
    assert (a.lease.ttl_seconds, a.lease.on_release) == (50, "reuse")
    assert b.min_ready == 2 and [i.name for i in b.resolved_inputs()] == ["tool.py"]
    assert isinstance(b.container.network_policy, NetworkPolicyAllowlist)


def test_relative_paths_resolve_against_the_pools_file_directory(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (files / "pools.yaml").write_text("version: 1\npools:\n  p:\n    inputs: [{path: 'data/*.csv'}]\n")
    monkeypatch.chdir("/")
    spec = load_pools(files / "pools.yaml", env={}).pool("p")
    assert [Path(i.source) for i in spec.resolved_inputs()] == [files / "data/a.csv", files / "data/b.csv"]


def test_globs_are_evaluated_again_at_each_call(files: Path) -> None:
    spec = parse("version: 1\npools:\n  p:\n    inputs: [{path: 'data/*.csv'}]\n", files).pool("p")
    (files / "data" / "c.csv").write_text("x\n3\n")
    assert [i.name for i in spec.resolved_inputs()] == ["a.csv", "b.csv", "c.csv"]


def test_input_kinds_and_destination_names(files: Path) -> None:
    spec = parse(
        """
        version: 1
        pools:
          p:
            inputs:
              - {path: 'data/**/*.csv'}
              - {path: tool.py, as: helpers.py}
              - {url: 's3://bucket/dir/ref.parquet'}
              - {url: 'https://example.com/x?y=1', as: x.json}
              - {file_id: file-abc123}
        """,
        files,
    ).pool("p")
    got = [(i.kind, i.name) for i in spec.resolved_inputs()]
    assert got == [("path", "a.csv"), ("path", "b.csv"), ("path", "helpers.py"), ("url", "ref.parquet"),
                   ("url", "x.json"), ("file_id", None)]
    assert spec.inputs[1].as_ == "helpers.py"
    assert spec.inputs[1].model_dump(by_alias=True)["as"] == "helpers.py"


# --- invariants and error places ----------------------------------------------------------------

ERROR_CASES = [
    # (id, body under `pools:` at 2 spaces, line, pool, field, substring of the message)
    ("min_ready>max_total", "  p:\n    min_ready: 7\n    max_total: 5\n", 4, "p", "min_ready", "exceeds max_total 5"),
    ("buffer>=max_total", "  p:\n    buffer: 5\n    max_total: 5\n", 4, "p", "buffer", "must be below max_total"),
    ("schedule min_ready", "  p:\n    max_total: 3\n    schedules:\n      - {cron: '0 8 * * *', min_ready: 4}\n",
     6, "p", "schedules[0].min_ready", "exceeds max_total 3"),
    ("schedule buffer", "  p:\n    max_total: 3\n    schedules:\n      - {cron: '0 8 * * *'}\n"
     "      - {cron: '0 9 * * *', buffer: 3}\n", 7, "p", "schedules[1].buffer", "below max_total"),
    ("lease vs expiry", "  p:\n    container: {expires_after_minutes: 5}\n    lease:\n"
     "      min_remaining_on_claim_seconds: 300\n", 6, "p", "lease.min_remaining_on_claim_seconds", "idle expiry"),
    ("keepalive vs expiry", "  p:\n    container: {expires_after_minutes: 3}\n"
     "    lease: {min_remaining_on_claim_seconds: 0}\n"
     "    keepalive: {margin_seconds: 180}\n", 6, "p", "keepalive.margin_seconds", "idle expiry (3 min = 180 s)"),
    ("built-in default vs expiry", "  p:\n    container: {expires_after_minutes: 4}\n", 3, "p",
     "lease.min_remaining_on_claim_seconds", "300 s must be below the idle expiry (4 min = 240 s)"),
    ("harvest margin vs expiry", "  p:\n    container: {expires_after_minutes: 3}\n"
     "    lease: {min_remaining_on_claim_seconds: 0}\n"
     "    keepalive: {margin_seconds: 60}\n    outputs: {before_expiry_margin_seconds: 200}\n",
     7, "p", "outputs.before_expiry_margin_seconds", "idle expiry"),
    ("cron fields", "  p:\n    schedules:\n      - cron: '0 8 * *'\n", 5, "p", "schedules[0].cron", "5 fields"),
    ("cron invalid", "  p:\n    schedules:\n      - cron: '61 8 * * *'\n", 5, "p", "schedules[0].cron", "not a valid"),
    ("cron never", "  p:\n    schedules:\n      - cron: '0 0 30 2 *'\n", 5, "p", "schedules[0].cron", "never fires"),
    ("time zone", "  p:\n    schedules:\n      - {cron: '0 8 * * *', timezone: Mars/Olympus}\n",
     5, "p", "schedules[0].timezone", "unknown time zone"),
    ("pool name", "  Analysts: {}\n", 3, "Analysts", None, "must match"),
    ("pool name too long", "  " + "a" * 32 + ": {}\n", 3, "a" * 32, None, "must match"),
    ("memory limit", "  p:\n    container: {memory_limit: 3g}\n", 4, "p", "container.memory_limit", "'1g'"),
    ("typo", "  p:\n    container:\n      memry_limit: 4g\n", 5, "p", "container.memry_limit",
     "did you mean 'memory_limit'"),
    ("typo in pool", "  p:\n    min_redy: 1\n", 4, "p", "min_redy", "did you mean 'min_ready'"),
    ("negative", "  p:\n    buffer: -1\n", 4, "p", "buffer", "greater than or equal to 0"),
    ("on_release", "  p:\n    lease: {on_release: keep}\n", 4, "p", "lease.on_release", "'retire' or 'reuse'"),
    ("policy type", "  p:\n    container:\n      network_policy: {type: open}\n", 5, "p", "container.network_policy",
     "does not match any of the expected tags"),
    ("allowlist empty", "  p:\n    container:\n      network_policy:\n        type: allowlist\n"
     "        allowed_domains: []\n",
     7, "p", "container.network_policy.allowed_domains", "at least 1"),
    ("secret domain", "  p:\n    container:\n      network_policy:\n        type: allowlist\n"
     "        allowed_domains: [a.com]\n"
     "        domain_secrets:\n          - {domain: b.com, name: T, value_env: T}\n", 9, "p",
     "container.network_policy.domain_secrets[0].domain", "not in allowed_domains"),
    ("cron missing", "  p:\n    schedules:\n      - {timezone: UTC}\n", 5, "p", "schedules[0].cron",
     "missing required field 'cron'"),
    ("glob matches nothing", "  p:\n    inputs:\n      - path: 'nope/*.csv'\n", 5, "p", "inputs[0].path",
     "matches no file"),
    ("missing file", "  p:\n    inputs:\n      - path: missing.csv\n", 5, "p", "inputs[0].path", "does not exist"),
    ("directory", "  p:\n    inputs:\n      - path: data\n", 5, "p", "inputs[0].path", "is a directory"),
    ("as with slash", "  p:\n    inputs:\n      - path: tool.py\n        as: sub/x.py\n", 6, "p", "inputs[0].as",
     "plain file name"),
    ("as dotdot", "  p:\n    inputs:\n      - {path: tool.py, as: '..'}\n", 5, "p", "inputs[0].as", "plain file name"),
    ("as on many", "  p:\n    inputs:\n      - {path: 'data/*.csv', as: all.csv}\n", 5, "p", "inputs[0].as",
     "glob matches 2"),
    ("as on file_id", "  p:\n    inputs:\n      - {file_id: file-1, as: x.csv}\n", 5, "p", "inputs[0].as",
     "keeps the file's own name"),
    ("duplicate as", "  p:\n    inputs:\n      - {path: data/a.csv}\n      - {path: tool.py, as: a.csv}\n",
     6, "p", "inputs[1].as", "already used by inputs[0]"),
    ("duplicate glob name", "  p:\n    inputs:\n      - {path: tool.py, as: b.csv}\n      - {path: 'data/*.csv'}\n",
     6, "p", "inputs[1].path", "'b.csv' is already used"),
    ("none of path/url/file_id", "  p:\n    inputs:\n      - {as: x}\n", 5, "p", "inputs[0]", "exactly one of"),
    ("two of path/url", "  p:\n    inputs:\n      - {path: tool.py, file_id: f-1}\n", 5, "p", "inputs[0]",
     "exactly one"),
    ("url scheme", "  p:\n    inputs:\n      - {url: bucket/x.csv}\n", 5, "p", "inputs[0].url", "with a scheme"),
    ("url protocol", "  p:\n    inputs:\n      - {url: 'nosuchproto://x/y.csv'}\n", 5, "p", "inputs[0].url",
     "unknown storage protocol"),
    ("url without name", "  p:\n    inputs:\n      - {url: 's3://bucket/dir/'}\n", 5, "p", "inputs[0].as", "give `as`"),
    ("skill zip missing", "  p:\n    container:\n      skills:\n        - {type: inline, name: s, description: d, "
     "path: none.zip}\n", 6, "p", "container.skills[0].path", "does not exist"),
    ("skill not a zip", "  p:\n    container:\n      skills:\n        - {type: inline, name: s, description: d, "
     "path: tool.py}\n", 6, "p", "container.skills[0].path", "not a zip"),
    ("skill version", "  p:\n    container:\n      skills:\n        - {type: skill_reference, skill_id: x, "
     "version: '0'}\n", 6, "p", "container.skills[0].version", "pattern"),
    ("target placeholder", "  p:\n    outputs: {target: 's3://b/{pol}'}\n", 4, "p", "outputs.target",
     "unknown placeholder(s) pol"),
    ("name differs", "  p:\n    name: q\n", 4, "p", "name", "differs from the pool's key"),
]


@pytest.mark.parametrize(("body", "line", "pool", "field", "text"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_each_error_names_line_pool_and_field(
    files: Path, body: str, line: int, pool: str, field: str | None, text: str
) -> None:
    err = one_error("version: 1\npools:\n" + body, files)
    assert (err.file, err.line, err.pool, err.field) == ("pools.yaml", line, pool, field), str(err)
    assert text in err.message
    assert err.column is not None and err.column >= 1


def test_every_error_is_reported_at_once_in_file_order(files: Path) -> None:
    text = """\
    version: 1
    pools:
      a:
        min_ready: 9
        max_total: 4
        inputs:
          - path: missing.csv
        container: {memory_limit: 2g}
      b:
        schedules:
          - {cron: 'bad', timezone: Nowhere/City}
        lease: {on_release: never}
      c:
        buffer: 4
        max_total: 4
    """
    errs = errors_of(text, files)
    got = [(e.line, e.pool, e.field) for e in errs]
    assert got == [
        (4, "a", "min_ready"),  # an invariant, reported although other fields of `a` are broken
        (7, "a", "inputs[0].path"),
        (8, "a", "container.memory_limit"),
        (11, "b", "schedules[0].cron"),
        (11, "b", "schedules[0].timezone"),
        (12, "b", "lease.on_release"),
        (14, "c", "buffer"),
    ]
    rendered = str(PoolsFileError(errs))
    assert rendered.startswith("7 problems in the pools file")
    assert all(f"pools.yaml:{line}:" in rendered for line, _, _ in got)


def test_invariants_resting_on_a_broken_field_are_not_guessed(files: Path) -> None:
    # max_total is invalid: "min_ready exceeds max_total <the default>" would be a made-up error.
    errs = errors_of("version: 1\npools:\n  p:\n    min_ready: 50\n    max_total: many\n", files)
    assert [(e.line, e.field) for e in errs] == [(5, "max_total")]


def test_a_bad_default_is_reported_once_at_the_defaults_line(files: Path) -> None:
    errs = errors_of(
        "version: 1\ndefaults:\n  container:\n    memory_limit: 8g\npools:\n  a: {}\n  b: {}\n", files
    )
    assert [(e.line, e.pool, e.field) for e in errs] == [(4, None, "defaults.container.memory_limit")]


def test_an_invariant_broken_by_inherited_values_points_at_the_defaults_line(files: Path) -> None:
    errs = errors_of(
        "version: 1\ndefaults:\n  container: {expires_after_minutes: 2}\n  keepalive:\n    margin_seconds: 150\n"
        "  lease: {min_remaining_on_claim_seconds: 0}\n  outputs: {before_expiry_margin_seconds: 0}\n"
        "pools:\n  a: {}\n  b:\n    keepalive: {margin_seconds: 30}\n",
        files,
    )
    assert [(e.line, e.pool, e.field) for e in errs] == [(5, "a", "keepalive.margin_seconds")]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("version: 1\npools:\n  p: {min_ready: 1\n", 4, "YAML"),
        ("version: 1\npools:\n  p:\n    a: b\n   c: d\n", 5, "YAML"),
        ("version: 1\n---\nversion: 1\n", 2, "single document"),
        ("version: 1\npools:\n  p: {}\n  p: {}\n", 4, "duplicate key 'p' (first at line 3)"),
        ("version: 1\npools:\n  p:\n    min_ready: 1\n    min_ready: 2\n", 5, "duplicate key 'min_ready'"),
        ("- 1\n- 2\n", 1, "must be a mapping"),
        ("version: 2\npools: {}\n", 1, "Input should be 1"),
        ("pools: {}\n", 1, "missing required field 'version'"),
        ("version: 1\npool: {}\n", 2, "did you mean 'pools'"),
        ("version: 1\npools:\n  p: 3\n", 3, "valid dictionary"),
    ],
)
def test_syntax_and_shape_errors_have_lines(tmp_path: Path, text: str, line: int, needle: str) -> None:
    errs = errors_of(text, tmp_path)
    assert errs[0].line == line, [str(e) for e in errs]
    assert needle in errs[0].message


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    assert "empty" in one_error("", tmp_path).message
    with pytest.raises(PoolsFileError) as info:
        load_pools(tmp_path / "absent.yaml")
    assert info.value.errors[0].file == str(tmp_path / "absent.yaml")
    assert "cannot read" in str(info.value)


def test_models_built_in_code_check_the_same_invariants() -> None:
    with pytest.raises(ValidationError) as info:
        PoolSpec(name="p", min_ready=5, max_total=2, keepalive={"margin_seconds": 9999})  # type: ignore[arg-type]
    locs = {e["loc"] for e in info.value.errors()}
    assert locs == {("min_ready",), ("keepalive", "margin_seconds")}
    with pytest.raises(ValidationError):
        PoolsFile.model_validate({"version": 1, "pools": {"UPPER": {}}})


# --- ${ENV} substitution ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "env", "want"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-}", {}, ""),
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("cost $5", {}, "cost $5"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ],
)
def test_substitute_env(raw: str, env: dict[str, str], want: str) -> None:
    assert substitute_env(raw, env) == (want, [])


def test_unset_variable_is_an_error_naming_place_and_variable(tmp_path: Path) -> None:
    err = one_error("version: 1\npools:\n  p:\n    outputs:\n      target: 's3://${BUCKET}/out'\n", tmp_path)
    assert (err.line, err.pool, err.field) == (5, "p", "outputs.target")
    assert "BUCKET is not set" in err.message


@pytest.mark.parametrize(("value", "needle"), [("${1X}", "malformed"), ("${A", "unclosed")])
def test_malformed_references(tmp_path: Path, value: str, needle: str) -> None:
    err = one_error(f"version: 1\npools:\n  p:\n    outputs: {{target: '{value}'}}\n", tmp_path)
    assert err.line == 4 and needle in err.message


def test_substituted_values_are_validated_like_written_ones(tmp_path: Path) -> None:
    text = "version: 1\npools:\n  p:\n    min_ready: ${N}\n    max_total: ${M:-4}\n"
    spec = parse(text, tmp_path, {"N": "3"}).pool("p")
    assert (spec.min_ready, spec.max_total) == (3, 4)
    err = one_error(text, tmp_path, {"N": "9"})
    assert (err.line, err.field) == (4, "min_ready") and "exceeds max_total 4" in err.message


def test_env_defaults_to_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_TEST_MIN", "2")
    spec = parse_pools("version: 1\npools:\n  p: {min_ready: '${HEARTH_TEST_MIN}'}\n", base_dir=tmp_path)
    assert spec.pool("p").min_ready == 2


# --- secrets ------------------------------------------------------------------------------------

ALLOWLIST = """\
version: 1
pools:
  p:
    container:
      network_policy:
        type: allowlist
        allowed_domains: [pypi.org]
        domain_secrets:
          - {domain: pypi.org, name: PYPI_TOKEN, value_env: PYPI_TOKEN}
"""


def test_domain_secret_values_come_from_env_at_use_time(tmp_path: Path) -> None:
    pools = parse(ALLOWLIST, tmp_path, {})  # loading does not need the secret
    opts = pools.pool("p").container
    body = opts.create_body("hearth-p-1", env={"PYPI_TOKEN": SECRET})
    assert body == {
        "name": "hearth-p-1",
        "memory_limit": "1g",
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
        "network_policy": {
            "type": "allowlist",
            "allowed_domains": ["pypi.org"],
            "domain_secrets": [{"domain": "pypi.org", "name": "PYPI_TOKEN", "value": SECRET}],
        },
    }
    assert pools.missing_secret_envs({}) == [("p", "PYPI_TOKEN")]
    assert pools.missing_secret_envs({"PYPI_TOKEN": SECRET}) == []
    with pytest.raises(PoolsFileError) as info:
        opts.create_body("hearth-p-1", env={})
    assert "PYPI_TOKEN" in str(info.value)


def test_secret_never_in_repr_dumps_schema_or_errors(tmp_path: Path) -> None:
    pools = parse(ALLOWLIST, tmp_path, {"PYPI_TOKEN": SECRET})
    ref = pools.pool("p").container.network_policy.domain_secrets[0]  # type: ignore[union-attr]
    resolved = ref.resolve({"PYPI_TOKEN": SECRET})
    assert resolved.get_secret_value() == SECRET
    for text in (repr(pools), str(pools), pools.model_dump_json(), json.dumps(PoolsFile.model_json_schema()),
                 repr(resolved), str(resolved)):
        assert SECRET not in text


@pytest.mark.parametrize(
    "secret_entry",
    [
        "{domain: pypi.org, name: T, value: " + SECRET + "}",  # written inline: refused
        "{domain: pypi.org, name: T, valeu: " + SECRET + "}",  # a typo next to a secret
        "{domain: pypi.org, name: T, value_env: '${TOKEN}'}",  # a variable's value put where its name goes
    ],
)
def test_misplaced_secrets_never_reach_error_text(tmp_path: Path, secret_entry: str) -> None:
    text = ALLOWLIST.replace("{domain: pypi.org, name: PYPI_TOKEN, value_env: PYPI_TOKEN}", secret_entry)
    with pytest.raises(PoolsFileError) as info:
        parse(text, tmp_path, {"TOKEN": SECRET})
    assert info.value.errors[0].line == 9
    assert SECRET not in str(info.value) and SECRET not in json.dumps([e.to_dict() for e in info.value.errors])
    with pytest.raises(ValidationError) as raw:  # also when models are built in code
        PoolsFile.model_validate(yaml.safe_load(text.replace("${TOKEN}", SECRET)))
    assert SECRET not in str(raw.value)


def test_inline_value_error_says_to_use_value_env(tmp_path: Path) -> None:
    text = ALLOWLIST.replace("value_env: PYPI_TOKEN", "value: x")
    assert "value_env" in one_error(text, tmp_path).message


def test_create_body_wraps_into_the_wire_model_with_skills(files: Path) -> None:
    from hearth.api.models import CreateContainerRequest

    spec = parse(
        """
        version: 1
        pools:
          p:
            container:
              memory_limit: 4g
              expires_after_minutes: 7
              network_policy: {type: allowlist, allowed_domains: [pypi.org],
                               domain_secrets: [{domain: pypi.org, name: T, value_env: TOK}]}
              skills:
                - {type: skill_reference, skill_id: openai-spreadsheets, version: latest}
                - {type: inline, name: mine, description: my skill, path: skill.zip}
        """,
        files,
    ).pool("p")
    req = CreateContainerRequest.model_validate(spec.container.create_body("hearth-p-x", env={"TOK": SECRET}))
    assert SECRET not in repr(req)
    wire = req.wire()
    assert wire["memory_limit"] == "4g" and wire["expires_after"]["minutes"] == 7
    assert wire["network_policy"]["domain_secrets"][0]["value"] == SECRET
    inline = wire["skills"][1]
    assert inline["source"]["media_type"] == "application/zip" and inline["name"] == "mine"
    import base64

    assert base64.b64decode(inline["source"]["data"]) == (files / "skill.zip").read_bytes()
    assert wire["skills"][0] == {"type": "skill_reference", "skill_id": "openai-spreadsheets", "version": "latest"}


def test_create_body_without_policy_or_skills_is_minimal() -> None:
    assert ContainerOptions().create_body("n") == {
        "name": "n", "memory_limit": "1g", "expires_after": {"anchor": "last_active_at", "minutes": 20}
    }


# --- schedules ----------------------------------------------------------------------------------


def _office_hours(**extra: object) -> PoolSpec:
    return PoolSpec(
        name="p", min_ready=2, buffer=1, max_total=10,
        schedules=[
            Schedule(cron="0 8 * * 1-5", timezone=PARIS, min_ready=6, buffer=3),
            Schedule(cron="0 19 * * 1-5", timezone=PARIS),  # no sizes: back to the base ones
        ],
        **extra,  # type: ignore[arg-type]
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "want"),
    [
        (utc(2025, 3, 10, 6, 59), (2, 1)),  # Monday 07:59 Paris (CET): Friday 19:00 is the latest fired
        (utc(2025, 3, 10, 7, 0), (6, 3)),  # Monday 08:00 Paris exactly: the morning schedule applies
        (utc(2025, 3, 10, 17, 59, 59), (6, 3)),  # 18:59:59 Paris
        (utc(2025, 3, 10, 18, 0), (2, 1)),  # 19:00 Paris
        (utc(2025, 3, 15, 12, 0), (2, 1)),  # Saturday
        (utc(2025, 3, 31, 5, 59), (2, 1)),  # Monday after the DST switch: 07:59 Paris (CEST)
        (utc(2025, 3, 31, 6, 0), (6, 3)),  # 08:00 Paris is now 06:00 UTC
        (utc(2025, 10, 27, 6, 30), (2, 1)),  # after DST ends: 07:30 Paris (CET)
        (utc(2025, 10, 27, 7, 0), (6, 3)),
    ],
)
def test_sizes_at_across_boundaries_and_dst(now: datetime, want: tuple[int, int]) -> None:
    assert _office_hours().sizes_at(now) == want


def test_sizes_at_is_the_same_in_any_time_zone_of_now() -> None:
    spec = _office_hours()
    instant = utc(2025, 3, 10, 7, 30)
    tokyo = instant.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert spec.sizes_at(tokyo) == spec.sizes_at(instant) == spec.sizes_at(instant.timestamp()) == (6, 3)


def test_schedules_in_different_time_zones_latest_fired_wins() -> None:
    spec = PoolSpec(
        name="p", max_total=10,
        schedules=[
            Schedule(cron="0 9 * * *", timezone="America/New_York", min_ready=5),  # 14:00 UTC in January (EST)
            Schedule(cron="0 9 * * *", timezone="Asia/Tokyo", min_ready=1),  # 00:00 UTC
        ],
    )
    assert spec.sizes_at(utc(2025, 1, 20, 13, 59)) == (1, 0)
    assert spec.sizes_at(utc(2025, 1, 20, 14, 0)) == (5, 0)
    assert spec.sizes_at(utc(2025, 1, 21, 0, 0)) == (1, 0)
    assert spec.sizes_at(utc(2025, 7, 21, 13, 0)) == (5, 0)  # EDT: 09:00 New York is 13:00 UTC


def test_same_instant_the_later_schedule_wins_and_no_schedule_means_base() -> None:
    both = PoolSpec(name="p", min_ready=1, schedules=[Schedule(cron="0 * * * *", min_ready=3),
                                                      Schedule(cron="0 * * * *", min_ready=4)])
    assert both.sizes_at(utc(2025, 1, 1, 12, 30)) == (4, 0)
    plain = PoolSpec(name="p", min_ready=3, buffer=2)
    assert plain.sizes_at(utc(2025, 1, 1)) == (3, 2)
    assert plain.next_schedule_change(utc(2025, 1, 1)) is None


def test_next_schedule_change() -> None:
    spec = _office_hours()
    assert spec.next_schedule_change(utc(2025, 3, 10, 9, 0)) == utc(2025, 3, 10, 18, 0)
    assert spec.next_schedule_change(utc(2025, 3, 10, 7, 0)) == utc(2025, 3, 10, 18, 0)  # strictly after
    assert spec.next_schedule_change(utc(2025, 3, 14, 20, 0)) == utc(2025, 3, 17, 7, 0)  # Friday night -> Monday
    assert spec.next_schedule_change(utc(2025, 3, 28, 20, 0)) == utc(2025, 3, 31, 6, 0)  # across DST
    nxt = spec.next_schedule_change(utc(2025, 3, 10, 9, 0))
    assert nxt is not None and nxt.utcoffset() == timedelta(0)
    # the sizes do change at the instant reported
    assert spec.sizes_at(nxt - timedelta(seconds=1)) != spec.sizes_at(nxt)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _office_hours().sizes_at(datetime(2025, 3, 10, 8, 0))


# --- public API odds and ends ----------------------------------------------------------------------


def test_pool_lookup_and_target_placeholders(tmp_path: Path) -> None:
    pools = parse("version: 1\npools:\n  a: {outputs: {target: 's3://b/{pool}/{lease_id}/{year}'}}\n  b: {}\n",
                  tmp_path)
    with pytest.raises(KeyError, match="pools: a, b"):
        pools.pool("zz")
    assert pools.pool("a").outputs.target == "s3://b/{pool}/{lease_id}/{year}"
    assert pools.pool("b").outputs.target is None


def test_target_placeholders_are_the_ones_harvest_fills() -> None:
    from hearth.files.storage import PLACEHOLDERS
    from settings.pools import TARGET_PLACEHOLDERS

    assert TARGET_PLACEHOLDERS == PLACEHOLDERS


def test_input_spec_accepts_as_by_alias_and_name() -> None:
    by_alias = InputSpec.model_validate({"file_id": "file-1"})
    assert by_alias.resolve()[0].kind == "file_id"
    with pytest.raises(ValidationError):
        InputSpec.model_validate({"url": "s3://b/k.csv", "as": "a/b"})


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def _app():  # type: ignore[no-untyped-def]
    from worker import cli as cli_module

    cli_module._load()
    return cli_module.app


def test_validate_ok_prints_one_line_per_pool(cli: CliRunner) -> None:
    result = cli.invoke(_app(), ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert any(line.startswith("analysts: min_ready 2, buffer 1, max_total 6") for line in lines)
    assert any(line.startswith("scratch: min_ready 1, buffer 0, max_total 3") for line in lines)


def test_validate_errors_exit_1_with_every_place(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npools:\n  a:\n    min_ready: 9\n    max_total: 2\n  B: {}\n")
    result = cli.invoke(_app(), ["validate", str(bad)])
    assert result.exit_code == 1
    assert "2 problems" in result.output
    assert f"{bad}:4:16" in result.output and f"{bad}:6:3" in result.output


def test_validate_json(cli: CliRunner, tmp_path: Path) -> None:
    ok = json.loads(cli.invoke(_app(), ["validate", "--json", str(EXAMPLE)]).output)
    assert ok["ok"] is True and [p["name"] for p in ok["pools"]] == ["analysts", "scratch"]
    assert ok["pools"][0]["inputs"] == 3 and ok["pools"][0]["schedules"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npools:\n  a: {min_ready: x}\n")
    result = cli.invoke(_app(), ["validate", "--json", str(bad)])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["ok"] is False
    assert out["errors"] == [{"message": "Input should be a valid integer, unable to parse string as an integer",
                              "file": str(bad), "line": 3, "column": 18, "pool": "a", "field": "min_ready"}]


def test_validate_warns_about_unset_secret_variables(cli: CliRunner, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYPI_TOKEN", raising=False)
    f = tmp_path / "p.yaml"
    f.write_text(ALLOWLIST)
    result = cli.invoke(_app(), ["validate", "--json", str(f)])
    assert result.exit_code == 0
    assert "PYPI_TOKEN" in json.loads(result.output)["warnings"][0]


def test_validate_defaults_to_hearth_pools(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_POOLS", str(EXAMPLE))
    result = cli.invoke(_app(), ["validate", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["file"] == str(EXAMPLE)


def test_schema_is_json_schema_that_accepts_the_example(cli: CliRunner) -> None:
    result = cli.invoke(_app(), ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    example = yaml.safe_load(EXAMPLE.read_text())
    example["pools"]["analysts"]["max_total"] = 6  # the ${...} reference, as substitution would leave it
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "pools": {"p": {"min_redy": 1}}}, schema)
    assert "name" not in schema["$defs"]["PoolSpec"]["properties"]
    assert "as" in schema["$defs"]["InputSpec"]["properties"]


@pytest.mark.parametrize("url", ["sftp://me:hunter2@host/out/{pool}", "s3://bucket/out?token=abc", "az://c/x?sig=zz"])
def test_storage_urls_with_credentials_are_refused_without_echoing_them(tmp_path: Path, url: str) -> None:
    with pytest.raises(PoolsFileError) as err:
        parse(f"version: 1\npools:\n  a: {{outputs: {{target: '{url}'}}}}\n", tmp_path)
    assert "must not carry a password" in str(err.value)
    for secret in ("hunter2", "abc", "zz"):
        assert f"{secret}@" not in str(err.value) and f"={secret}" not in str(err.value)
    with pytest.raises(ValueError, match="must not carry a password") as bad:
        Settings(storage_url=url, _env_file=None)  # type: ignore[call-arg]
    assert url not in str(bad.value)
