"""The pools file as typed models: what each warm pool holds, how it is sized, leased and harvested.

Every model forbids unknown keys (a typo is an error, never a silently ignored setting) and checks
its invariants itself, so a ``PoolSpec`` built in code is as safe as one loaded from YAML. Relative
paths are resolved against the pools file's directory (``base_dir`` in the validation context; the
loader in ``settings.pools_loader`` sets it) and stored absolute. Secrets are never held here:
``domain_secrets`` name environment variables, read only when a create body is built.
"""

from __future__ import annotations

import base64
import glob
import os
import posixpath
import string
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from settings.pools_errors import PoolsFileError, PoolsFileIssue

POOL_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}$"
MemoryLimit = Literal["1g", "4g", "16g", "64g"]


def _buffer_size(value: Any) -> Any:
    # One clear message for both forms, not one per member of the union.
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise _problem("Input should be greater than or equal to 0 (or `auto`)")
    raise _problem(f"buffer must be a number of containers (0 or more) or `auto`, not {value!r}")


BufferSize = Annotated[int | Literal["auto"], BeforeValidator(_buffer_size)]
# The placeholders hearth.files.storage.render_url fills (a test keeps the two sets equal).
TARGET_PLACEHOLDERS: frozenset[str] = frozenset({"pool", "container_id", "lease_id", "date", "year", "month", "day"})
PoolName = Annotated[str, Field(pattern=POOL_NAME_PATTERN)]
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


# --- helpers ------------------------------------------------------------------------------------


def _problem(message: str) -> PydanticCustomError:
    # The message goes through ctx so braces in it (target placeholders) are never re-formatted.
    return PydanticCustomError("pools_file", "{reason}", {"reason": message})


def _invalid(title: str, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """Several errors at precise fields from one validator; pydantic prefixes each loc with the caller's."""
    return ValidationError.from_exception_data(
        title,
        [InitErrorDetails(type=_problem(msg), loc=loc, input=None) for loc, msg in problems],
    )


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context if isinstance(info.context, Mapping) else {}
    base = ctx.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def _resolve(base: Path, raw: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(raw)))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _plain_file_name(name: str) -> str | None:
    """Why ``name`` cannot be a file name in /mnt/data, or None when it can."""
    if not name or name.strip() != name:
        return "must be a non-empty file name without leading or trailing spaces"
    if "/" in name or "\\" in name:
        return "must be a plain file name, without '/' or '\\'"
    if name in {".", ".."} or "\x00" in name:
        return "must be a plain file name, not '.', '..' or containing NUL"
    return None


def _aware(now: datetime | float) -> datetime:
    if isinstance(now, int | float):
        return datetime.fromtimestamp(now, UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware (or epoch seconds): a naive time is ambiguous")
    return now


class _Model(BaseModel):
    # Inputs stay out of error text: a misplaced secret must not be echoed back in a traceback.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True)


# --- network policy -----------------------------------------------------------------------------


class DomainSecretRef(_Model):
    """A domain-scoped secret whose value comes only from an environment variable."""

    domain: Annotated[str, Field(min_length=1, description="Allowlisted domain the secret is injected for.")]
    name: Annotated[str, Field(min_length=1, description="Name of the secret as the container sees it.")]
    value_env: Annotated[
        str,
        Field(
            pattern=_ENV_NAME_PATTERN,
            description="Environment variable holding the value; read when a container is created, never stored.",
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _no_inline_values(cls, data: Any) -> Any:
        # Checked before pydantic's own extra check so that the offending input (possibly the secret
        # itself) never lands in an error's ``input``.
        if not isinstance(data, Mapping):
            return data
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for key in data:
            if key == "value":
                problems.append(
                    ((key,), "secret values are never written in the pools file: name an environment "
                     "variable with value_env")
                )
            elif key not in cls.model_fields:
                problems.append(((str(key),), "unknown field (expected domain, name, value_env)"))
        if problems:
            raise _invalid(cls.__name__, problems)
        return data

    def resolve(self, env: Mapping[str, str] | None = None) -> SecretStr:
        """The secret's value from ``env`` (default ``os.environ``); PoolsFileError when unset or empty."""
        value = (os.environ if env is None else env).get(self.value_env)
        if not value:
            raise PoolsFileError(
                [PoolsFileIssue(f"environment variable {self.value_env} (secret {self.name!r} for "
                                f"{self.domain}) is not set", field="network_policy.domain_secrets")]
            )
        return SecretStr(value)


class NetworkPolicyDisabled(_Model):
    """No outbound network access."""

    type: Annotated[Literal["disabled"], Field(description="Always `disabled`.")]

    def wire(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {"type": "disabled"}


class NetworkPolicyAllowlist(_Model):
    """Outbound access only to the listed domains, optionally with domain-scoped secrets."""

    type: Annotated[Literal["allowlist"], Field(description="Always `allowlist`.")]
    allowed_domains: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1, description="Domains the container may reach (at least one)."),
    ]
    domain_secrets: Annotated[
        list[DomainSecretRef],
        Field(description="Secrets injected per domain; values from the environment only. Default none."),
    ] = []

    @model_validator(mode="after")
    def _secrets_for_allowed_domains(self) -> NetworkPolicyAllowlist:
        allowed = self.allowed_domains
        bad = [
            (("domain_secrets", i, "domain"), f"domain {s.domain!r} is not in allowed_domains")
            for i, s in enumerate(self.domain_secrets)
            if not any(s.domain == d or s.domain.endswith("." + d) for d in allowed)
        ]
        if bad:
            raise _invalid(type(self).__name__, bad)
        return self

    def wire(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The API's network_policy, with secret values read from ``env`` now (plain text: wire only)."""
        body: dict[str, Any] = {"type": "allowlist", "allowed_domains": list(self.allowed_domains)}
        if self.domain_secrets:
            issues: list[PoolsFileIssue] = []
            secrets: list[dict[str, str]] = []
            for ref in self.domain_secrets:
                try:
                    value = ref.resolve(env)
                except PoolsFileError as exc:
                    issues.extend(exc.errors)
                    continue
                secrets.append({"domain": ref.domain, "name": ref.name, "value": value.get_secret_value()})
            if issues:
                raise PoolsFileError(issues)
            body["domain_secrets"] = secrets
        return body


NetworkPolicy = Annotated[NetworkPolicyDisabled | NetworkPolicyAllowlist, Field(discriminator="type")]


# --- skills -------------------------------------------------------------------------------------


class SkillReference(_Model):
    """A skill created with the Skills API (or a built-in one), by id."""

    type: Annotated[Literal["skill_reference"], Field(description="Always `skill_reference`.")]
    skill_id: Annotated[str, Field(min_length=1, max_length=64, description="The skill's id.")]
    version: Annotated[
        str | None,
        Field(pattern=r"^([1-9][0-9]*|latest)$", description="A positive integer or `latest`. Default the skill's."),
    ] = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class InlineSkillFile(_Model):
    """A skill shipped with the pools file as a zip bundle, sent inline (base64) on create."""

    type: Annotated[Literal["inline"], Field(description="Always `inline`.")]
    name: Annotated[str, Field(min_length=1, description="The skill's name.")]
    description: Annotated[str, Field(min_length=1, description="What the skill does.")]
    path: Annotated[
        str, Field(description="Zip bundle, relative to the pools file's directory; stored absolute after loading.")
    ]

    @field_validator("path")
    @classmethod
    def _zip_exists(cls, raw: str, info: ValidationInfo) -> str:
        path = _resolve(_base_dir(info), raw)
        if not os.path.isfile(path):
            raise _problem(f"skill bundle {raw!r} does not exist (looked at {path})")
        if not zipfile.is_zipfile(path):
            raise _problem(f"skill bundle {raw!r} is not a zip file")
        return path

    def wire(self) -> dict[str, Any]:
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            raise PoolsFileError(
                [PoolsFileIssue(f"cannot read skill bundle {self.path}: {exc.strerror}", field="container.skills")]
            ) from exc
        source = {"type": "base64", "media_type": "application/zip", "data": base64.b64encode(data).decode()}
        return {"type": "inline", "name": self.name, "description": self.description, "source": source}


Skill = Annotated[SkillReference | InlineSkillFile, Field(discriminator="type")]


# --- container, inputs, lease, outputs, keepalive ----------------------------------------------


class ContainerOptions(_Model):
    """How each container of the pool is created."""

    memory_limit: Annotated[
        MemoryLimit, Field(description="Memory of each container: 1g | 4g | 16g | 64g. Default 1g.")
    ] = "1g"
    expires_after_minutes: Annotated[
        int, Field(ge=1, description="Idle expiry of each container, minutes after its last activity. Default 20.")
    ] = 20
    network_policy: Annotated[
        NetworkPolicy | None,
        Field(description="`{type: disabled}` or `{type: allowlist, allowed_domains, domain_secrets}`; replaced "
                          "whole, never merged with the defaults. Default none (the API's default)."),
    ] = None
    skills: Annotated[
        list[Skill],
        Field(description="Skills: `{type: skill_reference, skill_id, version}` or `{type: inline, name, "
                          "description, path}`. Default none."),
    ] = []

    @property
    def expires_after_seconds(self) -> int:
        return self.expires_after_minutes * 60

    def create_body(self, name: str, *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON body of ``POST /containers`` (no ``file_ids``: the provisioner adds those).

        Secret values are read from ``env`` (default ``os.environ``) now, so the returned dict holds
        them in plain text: wrap it in the API's request model at once and never log it.
        """
        body: dict[str, Any] = {
            "name": name,
            "memory_limit": self.memory_limit,
            "expires_after": {"anchor": "last_active_at", "minutes": self.expires_after_minutes},
        }
        if self.network_policy is not None:
            body["network_policy"] = self.network_policy.wire(env)
        if self.skills:
            body["skills"] = [skill.wire() for skill in self.skills]
        return body


@dataclass(frozen=True)
class ResolvedInput:
    """One file to put into a container: where it comes from and its name in /mnt/data."""

    kind: Literal["path", "url", "file_id"]
    source: str  # absolute local path, fsspec URL, or Files-API id
    name: str | None  # destination file name; None for a file_id (the copy keeps the file's own name)


class InputSpec(_Model):
    """One input of every container: a local path or glob, a storage URL, or a Files-API file id."""

    path: Annotated[
        str | None,
        Field(description="Local file or glob (`**` recurses), relative to the pools file's directory; must match "
                          "at least one file. Stored absolute after loading."),
    ] = None
    url: Annotated[
        str | None, Field(description="Any fsspec URL (s3://, gs://, https://, file://…), streamed in.")
    ] = None
    file_id: Annotated[
        str | None,
        Field(pattern=r"^[^\s/]+$", description="Files-API id (e.g. file-abc123), copied server-side."),
    ] = None
    as_: Annotated[
        str | None,
        Field(alias="as", description="Destination file name in /mnt/data. Default the source's base name."),
    ] = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, raw: str | None, info: ValidationInfo) -> str | None:
        # Resolved here so that later readers need no base directory; validating an already
        # absolute path again leaves it unchanged.
        return None if raw is None else _resolve(_base_dir(info), raw)

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        given = [k for k in ("path", "url", "file_id") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise _invalid(type(self).__name__, [((), f"give exactly one of path, url, file_id (got {got})")])
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.as_ is not None and (why := _plain_file_name(self.as_)):
            problems.append((("as",), f"`as` {why}"))
        if self.path is not None:
            problems.extend(self._check_path(self.path))
        elif self.url is not None:
            problems.extend(self._check_url(self.url))
        elif self.as_ is not None:
            problems.append((("as",), "a Files-API copy keeps the file's own name: `as` cannot rename a file_id"))
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self

    def _check_path(self, resolved: str) -> list[tuple[tuple[str | int, ...], str]]:
        if _is_glob(resolved):
            matches = self._glob(resolved)
            if not matches:
                return [(("path",), f"{resolved!r} matches no file")]
            if self.as_ is not None and len(matches) > 1:
                return [(("as",), f"`as` names one file but the glob matches {len(matches)}")]
            return []
        if os.path.isdir(resolved):
            return [(("path",), f"{resolved!r} is a directory: use a glob such as {resolved}/* or {resolved}/**")]
        if not os.path.isfile(resolved):
            return [(("path",), f"{resolved!r} does not exist")]
        return []

    def _check_url(self, url: str) -> list[tuple[tuple[str | int, ...], str]]:
        import fsspec  # imported here: only URL inputs need it

        scheme = url.split("://", 1)[0] if "://" in url else ""
        if not scheme:
            return [(("url",), "must be a URL with a scheme, e.g. s3://bucket/key (use `path` for local files)")]
        if scheme not in fsspec.available_protocols():
            return [(("url",), f"unknown storage protocol {scheme!r}")]
        if self.as_ is None and not posixpath.basename(urlsplit(url).path):
            return [(("as",), "the URL has no file name: give `as`")]
        return []

    @staticmethod
    def _glob(pattern: str) -> list[str]:
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))

    def resolve(self) -> list[ResolvedInput]:
        """The files this input stands for now (globs are evaluated at each call)."""
        if self.file_id is not None:
            return [ResolvedInput("file_id", self.file_id, None)]
        if self.url is not None:
            return [ResolvedInput("url", self.url, self.as_ or posixpath.basename(urlsplit(self.url).path))]
        assert self.path is not None
        files = self._glob(self.path) if _is_glob(self.path) else [self.path]
        return [ResolvedInput("path", f, self.as_ or os.path.basename(f)) for f in files]


class LeaseRules(_Model):
    """How applications lease the pool's containers."""

    ttl_seconds: Annotated[
        int, Field(gt=0, description="Default lease length, s; a lapsed lease is reclaimed. Default 900.")
    ] = 900
    min_remaining_on_claim_seconds: Annotated[
        int,
        Field(ge=0, description="Only containers with at least this much idle life left are leased, s; the "
                               "heartbeat refreshes READY ones before they have less. Default 300."),
    ] = 300
    on_release: Annotated[
        Literal["retire", "reuse"],
        Field(description="After release: `retire` (harvest, delete, replace) or `reuse` (back to ready). "
                          "Default retire."),
    ] = "retire"
    wait_seconds: Annotated[
        float, Field(ge=0, description="How long a lease waits for the pool to refill when empty, s. Default 10.")
    ] = 10.0
    session_idle_seconds: Annotated[
        float | None,
        Field(gt=0, description="Idle window of a session lease, s: unused this long, it lapses and its "
                                "container is harvested and retired. Default none (HEARTH_SESSION_IDLE)."),
    ] = None
    session_save_every_seconds: Annotated[
        float | None,
        Field(ge=0, description="While a session lease is active, its new files are saved this often, s; "
                                "0 = off. Default none (HEARTH_SESSION_SAVE_EVERY)."),
    ] = None


class OutputRules(_Model):
    """What is harvested from the pool's containers, where to, and when."""

    target: Annotated[
        str | None,
        Field(description="fsspec URL of the harvest directory; placeholders {pool}, {date}, {container_id}, "
                          "{lease_id}, {year}, {month}, {day} (UTC). "
                          "Default <HEARTH_STORAGE_URL>/{pool}/{date}/{container_id}."),
    ] = None
    source: Annotated[
        Literal["assistant", "user", "any"],
        Field(description="Harvest files the code wrote (`assistant`), uploads (`user`) or both (`any`). "
                          "Default assistant."),
    ] = "assistant"
    include: Annotated[
        list[str], Field(description="Globs of container paths (relative to /mnt/data) to harvest. Default [\"**\"].")
    ] = ["**"]
    exclude: Annotated[list[str], Field(description="Globs of container paths to skip. Default [].")] = []
    max_file_bytes: Annotated[
        int, Field(gt=0, description="Larger files are skipped (and reported), bytes. Default 1073741824 (1 GiB).")
    ] = 1 << 30
    max_container_bytes: Annotated[
        int, Field(gt=0, description="Most bytes harvested from one container. Default 10737418240 (10 GiB).")
    ] = 10 << 30
    every_seconds: Annotated[
        float | None,
        Field(gt=0, description="Also harvest leased containers this often, s; none = never. Default none."),
    ] = None
    on_release: Annotated[bool, Field(description="Harvest when a lease is released. Default true.")] = True
    before_expiry_margin_seconds: Annotated[
        int, Field(ge=0, description="Harvest a leased container this long before it would expire, s. Default 120.")
    ] = 120

    @field_validator("target")
    @classmethod
    def _known_placeholders(cls, target: str | None) -> str | None:
        if target is None:
            return None
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(target) if name is not None}
        except ValueError as exc:
            raise _problem(f"bad placeholder syntax in target: {exc}") from exc
        unknown = sorted(names - TARGET_PLACEHOLDERS)
        if unknown:
            known = ", ".join("{" + n + "}" for n in sorted(TARGET_PLACEHOLDERS))
            raise _problem(f"unknown placeholder(s) {', '.join(unknown)} in target (known: {known})")
        if url_has_credentials(target):
            raise _problem(CREDENTIALS_IN_URL)
        return target



CREDENTIALS_IN_URL = (
    "a storage URL must not carry a password or token (it would be stored and shown with every harvest); "
    "give credentials to the storage library instead (environment variables or its config file)"
)


def url_has_credentials(url: str) -> bool:
    """``scheme://user:secret@host/…`` or a ``?password=``/``token=``/``secret=``/``key=`` query parameter."""
    parts = urlsplit(url)
    if parts.password:
        return True
    return any(k.lower() in ("password", "pass", "token", "secret", "key", "access_token", "sig")
               for k, _ in parse_qsl(parts.query))


class Keepalive(_Model):
    """When wanted idle containers are touched so that they do not expire."""

    margin_seconds: Annotated[
        int, Field(gt=0, description="Refresh a wanted container this long before its idle expiry, s. Default 180.")
    ] = 180


class DemandRules(_Model):
    """How ``buffer: auto`` sizes the spares from observed demand (hearth/pool/sizing.py)."""

    target_wait_seconds: Annotated[
        float, Field(ge=0, description="A lease may wait this long for a container at no loss, s. Default 0.5.")
    ] = 0.5
    percentile: Annotated[
        float, Field(ge=0.5, lt=1, description="Share of leases served within the target wait. Default 0.99.")
    ] = 0.99


class Budget(_Model):
    """What a pool may spend per day (UTC); over it, no idle spares (hard: no new containers)."""

    usd_per_day: Annotated[float, Field(gt=0, description="Dollars per UTC day the pool may spend.")]
    hard: Annotated[
        bool, Field(description="Over budget, create nothing (leases get PoolEmpty) instead of keeping no spares. "
                                "Default false.")
    ] = False


# --- schedules ----------------------------------------------------------------------------------


class Schedule(_Model):
    """From each time ``cron`` fires (in ``timezone``) until another schedule fires, these sizes apply."""

    cron: Annotated[str, Field(description="Five-field cron expression (minute hour day month weekday).")]
    timezone: Annotated[str, Field(description="IANA time zone the cron is read in. Default UTC.")] = "UTC"
    min_ready: Annotated[
        int | None, Field(ge=0, description="min_ready while this schedule is the latest fired; none = the pool's.")
    ] = None
    buffer: Annotated[
        int | None, Field(ge=0, description="buffer while this schedule is the latest fired; none = the pool's.")
    ] = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, expr: str) -> str:
        if len(expr.split()) != 5:
            raise _problem(f"cron {expr!r} must have 5 fields (minute hour day month weekday)")
        if not croniter.is_valid(expr):
            raise _problem(f"cron {expr!r} is not a valid cron expression")
        try:
            croniter(expr, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
        except Exception as exc:  # croniter raises its own errors for dates that never come
            raise _problem(f"cron {expr!r} never fires") from exc
        return expr

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _problem(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from exc
        return name

    def last_fire(self, now: datetime | float) -> datetime:
        """The latest instant at or before ``now`` when the cron fired, in UTC."""
        at = _aware(now).astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        # Fires fall on whole minutes: the previous fire strictly before the next minute is <= now.
        prev: datetime = croniter(self.cron, at.astimezone(ZoneInfo(self.timezone))).get_prev(datetime)
        return prev.astimezone(UTC)

    def next_fire(self, now: datetime | float) -> datetime:
        """The first instant strictly after ``now`` when the cron fires, in UTC."""
        local = _aware(now).astimezone(ZoneInfo(self.timezone))
        nxt: datetime = croniter(self.cron, local).get_next(datetime)
        return nxt.astimezone(UTC)


# --- pool ---------------------------------------------------------------------------------------


def _drop_name_from_schema(schema: dict[str, Any]) -> None:
    # ``name`` comes from the key under ``pools``; the file itself never sets it.
    schema.get("properties", {}).pop("name", None)
    if "name" in schema.get("required", []):
        schema["required"].remove("name")


class PoolSpec(_Model):
    """One warm pool: sizes, container options, inputs, lease and harvest rules, schedules, keepalive."""

    model_config = ConfigDict(json_schema_extra=_drop_name_from_schema)

    name: Annotated[str, Field(pattern=POOL_NAME_PATTERN, description="The pool's key under `pools`.")]
    min_ready: Annotated[int, Field(ge=0, description="Ready (idle, loaded) containers kept at least. Default 1.")] = 1
    buffer: Annotated[
        BufferSize,
        Field(description="Ready containers kept above the number currently leased, or `auto`: spares sized from "
                          "the observed lease rate and time to ready, for `demand`'s wait target. Default 0."),
    ] = 0
    demand: Annotated[DemandRules, Field(description="Wait target of `buffer: auto`.")] = DemandRules()
    budget: Annotated[
        Budget | None, Field(description="Daily budget (`{usd_per_day, hard}`); none = HEARTH_BUDGET_USD_PER_DAY.")
    ] = None
    max_total: Annotated[
        int, Field(ge=1, description="Hard cap on the pool's containers in any state. Default 10.")
    ] = 10
    container: Annotated[ContainerOptions, Field(description="Container options.")] = ContainerOptions()
    inputs: Annotated[list[InputSpec], Field(description="Files every container gets in /mnt/data. Default [].")] = []
    lease: Annotated[LeaseRules, Field(description="Lease rules.")] = LeaseRules()
    outputs: Annotated[OutputRules, Field(description="Harvest rules.")] = OutputRules()
    schedules: Annotated[
        list[Schedule],
        Field(description="Cron schedules that change min_ready/buffer; the latest fired wins (the later one in "
                          "the list on a tie). Default [] (the base sizes always)."),
    ] = []
    keepalive: Annotated[Keepalive, Field(description="Keepalive rules.")] = Keepalive()

    @model_validator(mode="after")
    def _invariants(self) -> PoolSpec:
        # Each problem names the top-level fields it depends on ("involves", in the error's ctx), so
        # the loader can re-check invariants of a pool whose other fields are broken without
        # reporting one that rests on a value it had to replace.
        problems: list[tuple[tuple[str | int, ...], str, str]] = []
        cap = self.max_total
        if self.min_ready > cap:
            problems.append((("min_ready",), f"min_ready {self.min_ready} exceeds max_total {cap}",
                             "min_ready max_total"))
        if isinstance(self.buffer, int) and self.buffer and self.buffer >= cap:
            problems.append((("buffer",), f"buffer {self.buffer} must be below max_total {cap}, "
                             "or no container could be leased while the buffer is kept", "buffer max_total"))
        for i, s in enumerate(self.schedules):
            if s.min_ready is not None and s.min_ready > cap:
                problems.append((("schedules", i, "min_ready"), f"min_ready {s.min_ready} exceeds max_total {cap}",
                                 "schedules max_total"))
            if s.buffer and s.buffer >= cap:
                problems.append((("schedules", i, "buffer"), f"buffer {s.buffer} must be below max_total {cap}",
                                 "schedules max_total"))
        life = self.container.expires_after_seconds
        life_text = f"the idle expiry ({self.container.expires_after_minutes} min = {life} s)"
        if self.lease.min_remaining_on_claim_seconds >= life:
            problems.append((("lease", "min_remaining_on_claim_seconds"),
                             f"{self.lease.min_remaining_on_claim_seconds} s must be below {life_text}, "
                             "or no container could ever be leased", "lease container"))
        if self.keepalive.margin_seconds >= life:
            problems.append((("keepalive", "margin_seconds"),
                             f"{self.keepalive.margin_seconds} s must be below {life_text}", "keepalive container"))
        if self.outputs.before_expiry_margin_seconds >= life:
            problems.append((("outputs", "before_expiry_margin_seconds"),
                             f"{self.outputs.before_expiry_margin_seconds} s must be below {life_text}",
                             "outputs container"))
        problems.extend((loc, msg, "inputs") for loc, msg in self._duplicate_names())
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("pools_invariant", "{reason}", {"reason": msg, "involves": involves}),
                        loc=loc,
                        input=None,
                    )
                    for loc, msg, involves in problems
                ],
            )
        return self

    def _duplicate_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        seen: dict[str, int] = {}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, spec in enumerate(self.inputs):
            field = "as" if spec.as_ is not None else ("path" if spec.path is not None else "url")
            for item in spec.resolve():
                if item.name is None:
                    continue
                if item.name in seen and seen[item.name] != i:
                    problems.append((("inputs", i, field),
                                     f"destination name {item.name!r} is already used by inputs[{seen[item.name]}]"))
                seen.setdefault(item.name, i)
        return problems

    def active_schedule(self, now: datetime | float) -> Schedule | None:
        """The schedule in effect at ``now`` (the latest fired; the later in the list on a tie), or None."""
        best: tuple[datetime, int] | None = None
        for i, s in enumerate(self.schedules):
            key = (s.last_fire(now), i)
            if best is None or key > best:
                best = key
        return None if best is None else self.schedules[best[1]]

    def sizes_at(self, now: datetime | float) -> tuple[int, int | Literal["auto"]]:
        """``(min_ready, buffer)`` in effect at ``now`` (aware datetime or epoch seconds); a schedule's
        numeric buffer overrides ``auto``."""
        s = self.active_schedule(now)
        if s is None:
            return self.min_ready, self.buffer
        return (
            self.min_ready if s.min_ready is None else s.min_ready,
            self.buffer if s.buffer is None else s.buffer,
        )

    def next_schedule_change(self, now: datetime | float) -> datetime | None:
        """The next instant (UTC) strictly after ``now`` when a schedule fires; None without schedules."""
        if not self.schedules:
            return None
        return min(s.next_fire(now) for s in self.schedules)

    def resolved_inputs(self) -> list[ResolvedInput]:
        """Every file a container of this pool gets, globs evaluated now, in pools-file order."""
        return [item for spec in self.inputs for item in spec.resolve()]


class PoolDefaults(_Model):
    """Values every pool starts from; a pool's own values win, objects are merged key by key."""

    min_ready: Annotated[int | None, Field(ge=0, description="Default min_ready.")] = None
    buffer: Annotated[
        BufferSize | None, Field(description="Default buffer.")
    ] = None
    demand: Annotated[DemandRules | None, Field(description="Default wait target of `buffer: auto`.")] = None
    budget: Annotated[Budget | None, Field(description="Default daily budget of each pool.")] = None
    max_total: Annotated[int | None, Field(ge=1, description="Default max_total.")] = None
    container: Annotated[ContainerOptions | None, Field(description="Default container options.")] = None
    inputs: Annotated[list[InputSpec] | None, Field(description="Default inputs (a pool's list replaces it).")] = None
    lease: Annotated[LeaseRules | None, Field(description="Default lease rules.")] = None
    outputs: Annotated[OutputRules | None, Field(description="Default harvest rules.")] = None
    schedules: Annotated[
        list[Schedule] | None, Field(description="Default schedules (a pool's list replaces it).")
    ] = None
    keepalive: Annotated[Keepalive | None, Field(description="Default keepalive rules.")] = None


# Objects replaced whole rather than merged: merging a `disabled` policy into an allowlist is nonsense.
_REPLACED_WHOLE = frozenset({"network_policy"})


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge recursively, lists and scalars are replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key not in _REPLACED_WHOLE and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class PoolsFile(_Model):
    """The whole pools file: a format version, defaults, and the pools by name."""

    version: Annotated[Literal[1], Field(description="Format version of the pools file; always 1.")]
    defaults: Annotated[PoolDefaults, Field(description="Values every pool starts from.")] = PoolDefaults()
    pools: Annotated[
        dict[PoolName, PoolSpec],
        Field(description="The pools by name; a name is 1-31 of a-z, 0-9 and '-' (it goes into container names)."),
    ] = {}

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for key in ("defaults", "pools"):  # a section whose entries are all commented out is empty, not an error
            if key in out and out[key] is None:
                out[key] = {}
        pools, defaults = out.get("pools"), out.get("defaults") or {}
        if not isinstance(pools, Mapping):
            return out
        if isinstance(defaults, PoolDefaults):
            defaults = defaults.model_dump(exclude_unset=True, by_alias=True)
        merged: dict[Any, Any] = {}
        for name, raw in pools.items():
            if raw is None:
                raw = {}
            if isinstance(raw, Mapping):
                base = defaults if isinstance(defaults, Mapping) else {}
                raw = {"name": name, **deep_merge(base, raw)}
            merged[name] = raw
        out["pools"] = merged
        return out

    @model_validator(mode="after")
    def _names_match_keys(self) -> PoolsFile:
        bad = [(("pools", key, "name"), f"name {spec.name!r} differs from the pool's key {key!r}")
               for key, spec in self.pools.items() if spec.name != key]
        if bad:
            raise _invalid(type(self).__name__, bad)
        return self

    @property
    def source(self) -> Path | None:
        """The file these pools were loaded from (None when built in code)."""
        return self._source

    def pool(self, name: str) -> PoolSpec:
        """The pool called ``name``; KeyError naming the known pools otherwise."""
        try:
            return self.pools[name]
        except KeyError:
            known = ", ".join(sorted(self.pools)) or "none"
            raise KeyError(f"no pool {name!r} (pools: {known})") from None

    def missing_secret_envs(self, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """``(pool, variable)`` for every domain secret whose variable is unset in ``env`` (default os.environ)."""
        source = os.environ if env is None else env
        missing: list[tuple[str, str]] = []
        for name, spec in self.pools.items():
            policy = spec.container.network_policy
            if isinstance(policy, NetworkPolicyAllowlist):
                missing.extend((name, ref.value_env) for ref in policy.domain_secrets if not source.get(ref.value_env))
        return missing
