"""The API work behind each task: provision, refresh, retire, harvest, adopt, delete an orphan.

Each operation takes a record name (or a container id), reads the record, does the API calls and
moves the record with compare-and-set transitions. Every one is idempotent: run twice, or after a
crash anywhere in the middle, it ends in the same place. Temporary errors propagate (the task
retries them); permanent ones mark the record FAILED so the reconcile replaces the container.

A create that no retry can mend (the pool's spec or its environment is at fault) opens the pool's
breaker at once and for good, with the reason, until the planner sees the spec or the variables
change; a created container that lacks what its spec asks is deleted before it is seeded or leased.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hearth.api.models import Container, ContainerFile, CreateContainerRequest
from hearth.errors import (
    APIError,
    BadRequest,
    Busy,
    ConfigError,
    Conflict,
    ContainerExpired,
    HearthError,
    NotFound,
)
from hearth.events import log_event, redact_text
from hearth.files.harvest import HarvestPolicy, HarvestProgress, HarvestReport, ProgressCallback
from hearth.files.inputs import InputItem, glob_literal, input_paths, split_file_ids, sync_inputs
from hearth.files.lock import HarvestLock, TokenFactory
from hearth.files.staging import (
    InputRefused,
    StagedFile,
    file_ids_refused,
    in_use_keys,
    missing_copies,
    refused_index,
    stage_key,
    stageable,
)
from hearth.files.storage import StorageTarget
from hearth.pool.model import ContainerRecord, State
from hearth.runtime import Runtime
from settings.pools import ContainerOptions, NetworkPolicyAllowlist, OutputRules, PoolsFileError, PoolSpec

log = logging.getLogger(__name__)

E = TypeVar("E", bound=HearthError)
LIVE = (State.READY, State.LEASED)
MAX_HARVEST_ATTEMPTS = 20  # failed harvest tries (each a task retry with backoff) before a retire gives up


@dataclass(frozen=True)
class Outcome:
    """What an operation did, as JSON for the task result."""

    name: str
    action: str
    state: str | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "state": self.state, "detail": self.detail}


def reason(exc: BaseException) -> str:
    """An operator-facing reason for Redis and `hearth status`: the error's kind, status and param,
    and its message with anything secret-looking masked (backends may echo request fields)."""
    parts = [type(exc).__name__]
    if isinstance(exc, APIError):
        parts += [str(v) for v in (exc.status, exc.param, exc.code) if v is not None]
    return " ".join(parts) + ": " + redact_text(str(exc))[:200]


def spec_hash(spec: PoolSpec) -> str:
    """A short digest of the pool's spec as loaded (secret values are never in it, only variable
    names): a create refused for the pool's own spec is retried once this changes."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def missing_secret_vars(options: ContainerOptions, env: Mapping[str, str]) -> list[str]:
    """The ``value_env`` variables of the pool's domain secrets that are unset or empty in ``env``."""
    policy = options.network_policy
    if not isinstance(policy, NetworkPolicyAllowlist):
        return []
    return sorted({ref.value_env for ref in policy.domain_secrets if not env.get(ref.value_env)})


# What the API does when a create field is left out (SEMANTICS.md §2): asking for exactly that needs
# no forwarding, so a backend that drops the field still makes the container the pool wants.
_API_DEFAULT_MEMORY = "1g"
_API_DEFAULT_EXPIRES_MINUTES = 20
# The fix, when a route drops create fields: LiteLLM's /v1 routes drop them, its /openai
# pass-through forwards every field (GATEWAYS.md §2.6).
ROUTE_FIX = ("use a route that forwards every create field (for LiteLLM its /openai pass-through, "
             "HEARTH_GATEWAY_ROUTES=passthrough), or ask for less in the pool")


def asked_create_fields(options: ContainerOptions, file_ids: list[str]) -> dict[str, str]:
    """The create fields the pool relies on (those that differ from the API's default when left
    out), each with a secret-free description of what is asked."""
    asked: dict[str, str] = {}
    if options.memory_limit != _API_DEFAULT_MEMORY:
        asked["memory_limit"] = options.memory_limit
    if options.expires_after_minutes != _API_DEFAULT_EXPIRES_MINUTES:
        asked["expires_after"] = f"{options.expires_after_minutes} minutes"
    policy = options.network_policy
    if policy is not None and policy.type != "disabled":  # disabled is the API's default
        asked["network_policy"] = policy.type
    if options.skills:
        asked["skills"] = f"{len(options.skills)} skill(s)"
    if file_ids:
        asked["file_ids"] = f"{len(file_ids)} file id(s)"
    return asked


def dropped_create_fields(asked: Mapping[str, str], forwarded: frozenset[str] | None) -> list[str]:
    """The fields of ``asked`` that a backend forwarding only ``forwarded`` (None: all) would drop."""
    if forwarded is None:
        return []
    return sorted(set(asked) - forwarded)


def spec_mismatch(options: ContainerOptions, container: Container) -> list[str]:
    """How ``container`` differs from what the pool asks, where the backend echoes it (a field left
    out of the answer is not checked: older and gateway responses omit them)."""
    found: list[str] = []
    if container.memory_limit is not None and container.memory_limit != options.memory_limit:
        found.append(f"memory_limit (asked {options.memory_limit}, got {container.memory_limit})")
    policy = options.network_policy
    echoed = container.network_policy
    if policy is not None and echoed is not None and echoed.type != policy.type:
        found.append(f"network_policy (asked {policy.type}, got {echoed.type})")
    return found


def harvest_template(outputs: OutputRules, storage_url: str) -> str:
    """The harvest URL template of a pool; the default keeps every container under its pool and day."""
    return outputs.target or storage_url.rstrip("/") + "/{pool}/{date}/{container_id}"


def harvest_policy(outputs: OutputRules) -> HarvestPolicy:
    return HarvestPolicy(
        source=outputs.source,
        include=tuple(outputs.include),
        exclude=tuple(outputs.exclude),
        max_file_bytes=outputs.max_file_bytes,
        max_container_bytes=outputs.max_container_bytes,
    )


def all_but_inputs_policy(rt: Runtime, pool: str, files: list[ContainerFile]) -> HarvestPolicy:
    """The pool's harvest rules over every source (outputs and the app's uploads), minus the pool's
    own inputs: what a session or a reused container holds that is worth keeping."""
    outputs = OutputRules()
    items: list[InputItem] = []
    with contextlib.suppress(ConfigError):
        spec = rt.pool(pool)
        outputs = spec.outputs
        items, _ = rt.inputs(spec)
    base = harvest_policy(outputs)
    skip = tuple(glob_literal(p) for p in input_paths(files, items))
    return HarvestPolicy(
        source="any", include=base.include, exclude=base.exclude + skip, max_file_bytes=base.max_file_bytes,
        max_container_bytes=base.max_container_bytes, attempts=base.attempts,
    )


@contextlib.contextmanager
def harvest_lock(
    rt: Runtime, container_id: str, *, wait: float = 0.0, tokens: TokenFactory | None = None
) -> Iterator[HarvestLock]:
    """The container's harvest lock, held for the block; ``Busy`` when another harvest keeps it ``wait`` s."""
    lock = HarvestLock(rt.redis, rt.clock, rt.store.key("harvest", container_id, "lock"), tokens=tokens)
    lock.acquire(wait)
    with lock:
        yield lock


def harvest_under(
    rt: Runtime, lock: HarvestLock, container_id: str, target: StorageTarget, policy: HarvestPolicy, *,
    pool: str | None, lease_id: str | None, progress: ProgressCallback | None = None,
) -> HarvestReport:
    """Run the harvester while ``lock`` is held, renewing it as the copy progresses (per file, per MiB)."""
    warned: list[bool] = []

    def renewing(p: HarvestProgress) -> None:
        if not lock.renew() and not warned:
            warned.append(True)
            log.warning("harvest %s: its lock lapsed while copying (a stall longer than %ss)",
                        container_id, lock.ttl)
        if progress is not None:
            progress(p)

    return rt.harvester.harvest(container_id, target, policy, pool=pool, lease_id=lease_id, progress=renewing,
                                sweep_min_age=lock.ttl)


def pinned_target(rt: Runtime, record: ContainerRecord, *, lease_id: str | None = None) -> str:
    """The container's harvest URL: rendered once (``{date}`` on that day) and kept on its record, so a
    harvest after midnight, or a session's, lands in the same root and the same manifest."""
    if record.harvest_target:
        return record.harvest_target
    outputs = OutputRules()
    with contextlib.suppress(ConfigError):
        outputs = rt.pool(record.pool).outputs
    url = StorageTarget.from_url(
        harvest_template(outputs, rt.settings.resolved_storage_url), clock=rt.clock, pool=record.pool,
        container_id=record.container_id, lease_id=lease_id or record.lease_id,
    ).url
    with contextlib.suppress(Conflict):
        rt.store.update(record.name, tuple(State), harvest_target=url)
    return url


class Operations:
    """Worker-side operations over one :class:`Runtime`."""

    def __init__(
        self, runtime: Runtime, *, tokens: TokenFactory | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """``tokens``: randomness for lock tokens (default: ``hearth.files.lock.random_token``);
        ``env``: where domain-secret values are read at create (default ``os.environ``)."""
        self.tokens = tokens
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.rt = runtime
        self.store = runtime.store
        self.client = runtime.client
        self.clock = runtime.clock

    # --- provision ---------------------------------------------------------------------------------

    def provision(self, name: str) -> Outcome:
        """Create the container of intent ``name`` (or adopt it), copy its inputs, verify, mark READY.

        Where the backend copies ``file_ids``, the pool's inputs are staged once (``hearth.files.staging``)
        and the container is created with them: two requests, the create and one listing to verify.
        Otherwise (a dialect that cannot, a create refusing ``file_ids``, copies that do not appear)
        the pool falls back to streaming its inputs into each container, as before staging existed.
        """
        record = self.store.get(name)
        if record is None or record.state not in (State.CREATING, State.SEEDING):
            return Outcome(name, "provision", record.state.value if record else None, "nothing to do")
        try:
            spec = self.rt.pool(record.pool)
        except ConfigError as exc:
            self.store.fail(name, (State.CREATING, State.SEEDING), f"pool gone from the pools file: {reason(exc)}")
            raise
        items, digest = self.rt.inputs(spec)
        file_ids, _ = split_file_ids(items)
        copy = self._copies(record.pool, items, digest)
        created: Container | None = None
        staged: list[StagedFile] = []
        sent = False  # staged file ids went out in this provision's own create

        if record.state is State.CREATING:
            record, created, staged, sent = self._create(record, spec, items, file_ids, digest, copy=copy)
            if record.state is State.FAILED:
                return Outcome(name, "provision", State.FAILED.value, record.error or "")
            # Checked before any input is copied in: a container unlike its spec is never seeded.
            rejected = self._check_spec(record, spec, created)
            if rejected is not None:
                return rejected
        elif copy:
            staged = self._staged_now(items)  # a retried provision: verify what its create carried
        if record.container_id is None:
            raise Conflict(f"{name}: SEEDING without a container id")
        try:
            container = self._seed(record, items, file_ids, digest, copy=copy, created=created, staged=staged,
                                   sent=sent)
        except (ContainerExpired, NotFound) as exc:
            self.store.fail(name, State.SEEDING, f"container lost while seeding: {reason(exc)}")
            return Outcome(name, "provision", State.FAILED.value, reason(exc))
        except HearthError as exc:
            if exc.temporary:
                raise
            # Inputs that can never be copied: FAILED now (the reconcile replaces it), and counted by
            # the breaker so a pool whose inputs always fail stops creating containers.
            self.store.fail(name, State.SEEDING, f"seeding failed: {reason(exc)}")
            self.store.record_create_failure(record.pool, f"seeding: {reason(exc)}")
            raise
        if not container.usable:
            self.store.fail(name, State.SEEDING, f"container is {container.status!r} after seeding")
            return Outcome(name, "provision", State.FAILED.value, container.status)
        rejected = self._check_spec(record, spec, container)
        if rejected is not None:
            return rejected
        ready = self.store.transition(
            name, State.SEEDING, State.READY, deadline=self._deadline(container, record), error=None
        )
        self.store.record_create_success(record.pool)
        # Create-to-READY, queue wait included: what `buffer: auto` sizes its spares with.
        self.rt.costs.demand.observe_ready(record.pool, ready.updated_at - record.created_at)
        log_event(log, "container.ready", pool=record.pool, name=name, container_id=ready.container_id)
        self.rt.observer.event("container.ready", pool=record.pool, container_id=ready.container_id)
        return Outcome(name, "provision", ready.state.value, ready.container_id or "")

    def _copies(self, pool: str, items: list[InputItem], digest: str) -> bool:
        """Whether this pool's containers get their inputs copied server-side (else streamed)."""
        if not stageable(items):
            return True  # nothing to stage: the pool's own file ids go in the create either way
        if not self.client.copies_create_file_ids:
            self._fall_back(pool, digest, f"the {self.client.dialect} API route does not copy create file_ids")
            return False
        return self.rt.staging.fallback(pool, digest) is None

    def _fall_back(self, pool: str, digest: str, why: str) -> None:
        """Stream this pool's inputs from now on (until its inputs change); one warning per change."""
        if self.rt.staging.set_fallback(pool, digest, why):
            log_event(log, "pool.inputs_streamed", level=logging.WARNING, pool=pool, reason=why,
                      fix="inputs are uploaded into each container instead of copied by file_ids")
            self.rt.observer.event("pool.inputs_streamed", pool=pool)

    def _seed(
        self, record: ContainerRecord, items: list[InputItem], file_ids: list[str], digest: str, *, copy: bool,
        created: Container | None, staged: list[StagedFile], sent: bool,
    ) -> Container:
        """Make the container hold the pool's inputs; the container as last seen (for its deadline)."""
        cid = record.container_id
        assert cid is not None
        if copy:
            # One listing shows whether the copies are there (name and size); the create's answer
            # already carries last_active_at and the expiry, so no retrieve.
            expected = [(s.name, s.file_id, s.size) for s in staged]
            for fid in file_ids:
                filename, size = self.rt.staging.file_meta(fid)
                expected.append((filename, fid, size))
            missing = missing_copies(list(self.client.list_files(cid, order="asc")), expected) if expected else []
            if not missing and (staged or not stageable(items)):
                return created if created is not None else self.client.retrieve_container(cid)
            if missing and sent and staged:
                self._fall_back(record.pool, digest, f"create file_ids were not copied ({', '.join(missing)} "
                                                      "missing from the container)")
        # Streamed: what is already there is kept, the rest uploaded, then all verified.
        sync_inputs(self.client, cid, items, file_ids_at_create=bool(file_ids))
        return self.client.retrieve_container(cid)

    def _stage(self, record: ContainerRecord, spec: PoolSpec, items: list[InputItem]) -> list[StagedFile]:
        """The pool's inputs staged (uploaded once, by whichever process comes first)."""
        try:
            return self.rt.staging.stage_all(items)
        except InputRefused as exc:
            # The Files API will never take this input: the pool pauses (its live containers stay and
            # are kept alive), naming the input, until its spec changes; other pools go on.
            raise self._refuse(record, spec, exc) from None

    def _create(
        self, record: ContainerRecord, spec: PoolSpec, items: list[InputItem], file_ids: list[str], digest: str,
        *, copy: bool,
    ) -> tuple[ContainerRecord, Container | None, list[StagedFile], bool]:
        """The record SEEDING with its container (created or adopted), or FAILED with no container;
        with the staged files its create carried, and whether this call's own create sent them."""
        name = record.name
        staged: list[StagedFile] = []
        sent = False
        # A retried provision (crash after the create, before the record update) adopts by name.
        existing = self.client.find_container_by_name(name) if record.attempts > 0 else None
        self.store.update(name, State.CREATING, attempts=record.attempts + 1, inputs_digest=digest)
        if existing is None or not existing.usable:
            if not self.store.breaker_allows(record.pool):
                breaker = self.store.breaker_state(record.pool)
                if breaker.permanent:
                    # Paused until the spec or the environment changes: retrying this task cannot help.
                    return (self.store.fail(name, State.CREATING, f"not created: {breaker.describe()}"), None,
                            [], False)
                raise HearthError(f"pool {record.pool}: breaker open, create deferred", temporary=True)
            asked = asked_create_fields(spec.container, file_ids)
            dropped = dropped_create_fields(asked, self.client.create_fields)
            if dropped:
                what = ", ".join(f"{f} (asked {asked[f]})" for f in dropped)
                raise self._refuse(record, spec, ConfigError(
                    f"the {self.client.dialect} API route does not forward {what} on create, so its containers "
                    f"would not get it: {ROUTE_FIX}", where=f"pool {record.pool}"))
            try:
                body = spec.container.create_body(name, env=self.env)
            except PoolsFileError as exc:
                raise self._refuse(record, spec, ConfigError(str(exc), where=f"pool {record.pool}"),
                                   env=missing_secret_vars(spec.container, self.env)) from None
            if copy:
                staged = self._stage(record, spec, items)
            try:
                existing, staged = self._send_create(record, body, items, file_ids, staged, digest)
                sent = bool(staged)
            except HearthError as exc:
                if exc.temporary:
                    self.store.record_create_failure(record.pool, reason(exc))
                    raise
                self.store.fail(name, State.CREATING, f"create failed: {reason(exc)}")
                if isinstance(exc, BadRequest):
                    # The backend refuses the pool's own body: the same body would be refused again.
                    self.store.open_breaker(record.pool, f"create refused: {reason(exc)}", permanent=True,
                                            spec_hash=spec_hash(spec))
                else:
                    # A key or a route the backend refuses is about the deployment, which the planner
                    # cannot see change: pause for one cool-down, then the usual probe.
                    self.store.open_breaker(record.pool, f"create failed: {reason(exc)}", permanent=False)
                raise
        elif copy:
            staged = self._staged_now(items)  # adopted: what its create carried is verified
        seeding = self.store.transition(
            name,
            State.CREATING,
            State.SEEDING,
            container_id=existing.id,
            bound_at=self.clock.now(),
            deadline=self._deadline(existing, record),
        )
        return seeding, existing, staged, sent

    def _staged_now(self, items: list[InputItem]) -> list[StagedFile]:
        """The inputs' staged files as the registry has them ([] unless all are: then the seeding
        streams what is missing)."""
        want = stageable(items)
        staged = [s for s in (self.rt.staging.get(stage_key(i)) for i in want) if s is not None]
        return staged if len(staged) == len(want) else []

    def _send_create(
        self, record: ContainerRecord, body: dict[str, Any], items: list[InputItem], file_ids: list[str],
        staged: list[StagedFile], digest: str,
    ) -> tuple[Container, list[StagedFile]]:
        """``POST /containers`` with the pool's file ids and its staged ones.

        A staged file the API no longer has is staged again (once, for every process) and the create
        sent once more; a create refusing ``file_ids`` altogether is sent again without the staged
        ones and the pool falls back to streaming. Anything else is raised as it came.
        """
        for attempt in (1, 2):
            ids = file_ids + [s.file_id for s in staged]
            if ids:
                body["file_ids"] = ids
            else:
                body.pop("file_ids", None)
            try:
                return self.client.create_container(CreateContainerRequest.model_validate(body)), staged
            except (NotFound, BadRequest) as exc:
                if attempt == 2 or not staged or not file_ids_refused(exc):
                    raise
                gone = self._gone(exc, file_ids, staged)
                if gone is None:
                    raise  # the pool's own file id is at fault: as before staging
                if gone:
                    by_key = {stage_key(i): i for i in stageable(items)}
                    staged = [self.rt.staging.restage(by_key[s.key], s.file_id) if s in gone else s for s in staged]
                else:
                    self._fall_back(record.pool, digest, f"create refused file_ids: {reason(exc)}")
                    staged = []
        raise AssertionError("unreachable")

    def _gone(self, exc: APIError, file_ids: list[str], staged: list[StagedFile]) -> list[StagedFile] | None:
        """Which staged files a create refusal is about: those the API no longer has ([] when all are
        there: the backend refuses file_ids as such); None when it names one of the pool's own ids."""
        index = refused_index(exc)
        if index is not None and index < len(file_ids):
            return None
        if index is not None and index - len(file_ids) < len(staged) and isinstance(exc, NotFound):
            return [staged[index - len(file_ids)]]
        gone: list[StagedFile] = []
        for s in staged:
            try:
                self.client.retrieve_input_file(s.file_id)
            except NotFound:
                gone.append(s)
        return gone

    def _refuse(
        self, record: ContainerRecord, spec: PoolSpec, exc: E, *, env: list[str] | None = None
    ) -> E:
        """Nothing was sent: the pool's spec (or the environment it reads) cannot make a container.
        Fail the intent and pause the pool until its spec or those variables change."""
        self.store.fail(record.name, State.CREATING, f"not created: {reason(exc)}")
        status = self.store.open_breaker(record.pool, str(exc), permanent=True, spec_hash=spec_hash(spec),
                                         env=env or ())
        log_event(log, "pool.paused", level=logging.ERROR, pool=record.pool, name=record.name,
                  reason=status.reason, retry_on="pools file change" + (f" or {', '.join(env)} set" if env else ""))
        self.rt.observer.event("pool.paused", pool=record.pool)
        return exc

    def _check_spec(self, record: ContainerRecord, spec: PoolSpec, container: Container | None) -> Outcome | None:
        """Retire a container that lacks what its pool asks (a gateway that dropped a create field):
        never leased; the pool's breaker opens with the reason (the usual cool-down, then a probe)."""
        wrong = spec_mismatch(spec.container, container) if container is not None else []
        if container is None or not wrong:
            return None
        why = f"backend dropped {'; '.join(wrong)} on create: {ROUTE_FIX}"
        name, cid = record.name, container.id
        self.store.fail(name, State.SEEDING, f"rejected: {why}")
        self.store.open_breaker(record.pool, why, permanent=False)
        log_event(log, "container.rejected", level=logging.ERROR, pool=record.pool, name=name, container_id=cid,
                  reason=why)
        self.rt.observer.event("container.rejected", pool=record.pool, container_id=cid)
        try:
            with contextlib.suppress(NotFound, ContainerExpired):
                self.client.delete_container(cid)
        except HearthError as exc:  # the FAILED record keeps the id: the next tick retires it
            log.warning("could not delete rejected container %s yet: %s", cid, reason(exc))
            return Outcome(name, "provision", State.FAILED.value, why)
        self.store.transition(name, State.FAILED, State.GONE)
        self.store.forget(name, states=State.GONE)
        return Outcome(name, "provision", State.GONE.value, why)

    def _deadline(self, container: Container, record: ContainerRecord) -> float:
        at = container.expires_at()
        return at if at is not None else self.clock.now() + record.expires_minutes * 60

    # --- staged inputs ---------------------------------------------------------------------------

    def gc_staged(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Delete staged inputs no pool uses after the grace (``HEARTH_STAGED_GRACE``); what was found.

        While some pool's inputs cannot be read, what it uses is unknown, so nothing is marked or
        deleted (that pool's staged files must not go while it is being fixed).
        """
        staging = self.rt.staging
        by_pool: dict[str, list[InputItem]] = {}
        unknown: list[str] = []
        for name, spec in self.rt.pools().pools.items():
            try:
                by_pool[name] = self.rt.inputs(spec)[0]
            except HearthError as exc:
                unknown.append(f"{name}: {reason(exc)}")
        if unknown:
            log.warning("staged inputs not collected: the inputs of %s cannot be read", "; ".join(unknown))
            dry_run = True
        found = staging.collect(in_use_keys(by_pool), dry_run=dry_run)
        return {**found.to_json(), "grace": staging.grace, "dry_run": dry_run, "skipped_because": unknown}

    # --- refresh -----------------------------------------------------------------------------------

    def refresh(self, name: str) -> Outcome:
        """The keepalive call: retrieve the container (that touches it) and record its new deadline."""
        record = self.store.get(name)
        if record is None or record.state not in LIVE or record.container_id is None:
            return Outcome(name, "refresh", record.state.value if record else None, "nothing to do")
        try:
            container = self.client.retrieve_container(record.container_id)
        except (ContainerExpired, NotFound) as exc:
            return self._expired(record, str(exc))
        if container.expired or not container.usable:
            return self._expired(record, f"status {container.status!r}")
        try:
            updated = self.store.update(name, LIVE, deadline=self._deadline(container, record))
        except Conflict:
            return Outcome(name, "refresh", None, "record moved meanwhile")
        self.rt.observer.refresh(record.pool, True)
        return Outcome(name, "refresh", updated.state.value, f"deadline {updated.deadline}")

    def _expired(self, record: ContainerRecord, why: str) -> Outcome:
        self.rt.observer.refresh(record.pool, False)
        try:
            self.store.transition(record.name, record.state, State.EXPIRED, error=f"expired: {why}")
        except Conflict:
            return Outcome(record.name, "refresh", None, "record moved meanwhile")
        log_event(log, "container.expired", pool=record.pool, name=record.name, container_id=record.container_id)
        self.rt.observer.event("container.expired", pool=record.pool, container_id=record.container_id)
        return Outcome(record.name, "refresh", State.EXPIRED.value, why)

    # --- harvest -----------------------------------------------------------------------------------

    def harvest(
        self, container_id: str, *, to: str | None = None, lease_id: str | None = None,
        progress: ProgressCallback | None = None, wait: float = 0.0,
    ) -> HarvestReport:
        """Copy the container's outputs to storage (its pool's target, or ``to``).

        Runs under the container's harvest lock; raises ``Busy`` (temporary) when another harvest of
        it still runs after ``wait`` seconds.
        """
        with harvest_lock(self.rt, container_id, wait=wait, tokens=self.tokens) as lock:
            return self._harvest(lock, container_id, to, lease_id, progress)

    def _harvest(
        self, lock: HarvestLock, container_id: str, to: str | None, lease_id: str | None,
        progress: ProgressCallback | None,
    ) -> HarvestReport:
        record = self.store.by_container_id(container_id)  # read under the lock: its pinned target is current
        outputs = OutputRules()
        pool: str | None = None
        if record is not None:
            pool = record.pool
            lease_id = lease_id or record.lease_id
            # A pool that left the pools file is harvested with the defaults rather than lose files.
            with contextlib.suppress(ConfigError):
                outputs = self.rt.pool(record.pool).outputs
        if to is not None:
            target = StorageTarget.from_url(
                to, clock=self.clock, pool=pool, container_id=container_id, lease_id=lease_id
            )
        elif record is not None:
            target = StorageTarget.from_url(pinned_target(self.rt, record, lease_id=lease_id), clock=self.clock)
        else:
            target = StorageTarget.from_url(
                harvest_template(outputs, self.rt.settings.resolved_storage_url), clock=self.clock,
                container_id=container_id, lease_id=lease_id,
            )
        policy = harvest_policy(outputs)
        if record is not None and record.session_key_hash:
            # A session's container holds the app's uploads too, and a later lease restores them:
            # harvest every source but the pool's inputs, whoever triggers the harvest.
            try:
                files = list(self.client.list_files(container_id, order="asc"))
            except (ContainerExpired, NotFound):
                files = []
            policy = all_but_inputs_policy(self.rt, record.pool, files)
        report = harvest_under(self.rt, lock, container_id, target, policy, pool=pool, lease_id=lease_id,
                               progress=progress)
        if record is not None:
            with contextlib.suppress(Conflict):
                self.store.update(
                    record.name, (*LIVE, State.HARVESTING), last_harvest_at=self.clock.now()
                )
        self.rt.observer.harvest(pool or "-", report.files, report.bytes, report.failures)
        return report

    # --- retire ------------------------------------------------------------------------------------

    def retire(self, name: str) -> Outcome:
        """Harvest (when the record is HARVESTING and the pool wants it), delete, forget."""
        record = self.store.get(name)
        if record is None:
            return Outcome(name, "retire", None, "no record")
        if record.state is State.HARVESTING:
            if record.container_id is not None and self._wants_harvest(record):
                self._harvest_before_delete(record)
            record = self.store.transition(name, State.HARVESTING, State.DELETING)
        elif record.state in (State.READY, State.EXPIRED, State.FAILED, State.CREATING, State.SEEDING):
            record = self.store.transition(name, record.state, State.DELETING)
        if record.state is State.DELETING:
            if record.container_id is not None:
                with contextlib.suppress(NotFound, ContainerExpired):  # already gone: deleting is done
                    self.client.delete_container(record.container_id)
            self.store.transition(name, State.DELETING, State.GONE)
            self.store.forget(name, states=State.GONE)
            log_event(log, "container.retired", pool=record.pool, name=name, container_id=record.container_id)
            self.rt.observer.event("container.retired", pool=record.pool, container_id=record.container_id)
            return Outcome(name, "retire", State.GONE.value)
        return Outcome(name, "retire", record.state.value, "not retirable now")

    def recycle(self, name: str) -> Outcome:
        """A container released with ``reuse``: save what the lessee left, remove it, back to READY.

        The next lessee gets the pool's inputs only, never the previous lessee's files.
        """
        record = self.store.get(name)
        if record is None or record.state is not State.HARVESTING or record.container_id is None:
            return Outcome(name, "recycle", record.state.value if record else None, "nothing to do")
        cid = record.container_id
        try:
            if self._wants_harvest(record):
                self._harvest_before_delete(record)
            files = list(self.client.list_files(cid, order="asc"))
            keep = set(input_paths(files, self.rt.inputs(self.rt.pool(record.pool))[0]))
            for f in files:
                if f.path.removeprefix("/mnt/data/") not in keep:
                    with contextlib.suppress(NotFound):
                        self.client.delete_file(cid, f.id)
            container = self.client.retrieve_container(cid)
        except (ContainerExpired, NotFound, ConfigError) as exc:
            # Gone, expired, or its pool left the file: not reusable, retire it instead.
            self.store.transition(name, State.HARVESTING, State.DELETING, error=f"recycle: {reason(exc)}")
            return self.retire(name)
        ready = self.store.transition(
            name, State.HARVESTING, State.READY, deadline=self._deadline(container, record),
            lease_id=None, token=None, lease_expires_at=None, leased_at=None, holder=None, session_key_hash=None,
            harvest_target=None,  # the next lessee gets its own root (a {lease_id} template differs)
        )
        log_event(log, "container.recycled", pool=record.pool, name=name, container_id=cid)
        return Outcome(name, "recycle", ready.state.value, cid)

    def _harvest_before_delete(self, record: ContainerRecord) -> None:
        """Harvest, or raise a temporary error so the task retries while the files are still there.

        Bounded: after ``MAX_HARVEST_ATTEMPTS`` failed tries the container is let go (loudly), since a
        file that can never be copied (a store that refuses it, a bad target) would otherwise keep
        the container alive and its pool slot taken forever.
        """
        assert record.container_id is not None
        if record.harvest_attempts >= MAX_HARVEST_ATTEMPTS:
            log_event(log, "harvest.abandoned", level=logging.ERROR, pool=record.pool, name=record.name,
                      container_id=record.container_id, attempts=record.harvest_attempts, error=record.error)
            self.rt.observer.event("harvest.abandoned", pool=record.pool, container_id=record.container_id)
            return
        try:
            report = self.harvest(record.container_id)
            if report.complete or report.expired:
                return
            failure: HearthError = HearthError(
                f"harvest of {record.container_id} incomplete: {report.failures} failures", temporary=True
            )
        except Busy:
            raise  # another harvest of it is running: not a failed attempt, just retry later
        except HearthError as exc:
            failure = exc
        self.store.update(record.name, State.HARVESTING, harvest_attempts=record.harvest_attempts + 1,
                          error=f"harvest: {reason(failure)}")
        raise HearthError(str(failure), temporary=True) from failure

    def _wants_harvest(self, record: ContainerRecord) -> bool:
        try:
            return self.rt.pool(record.pool).outputs.on_release
        except ConfigError:
            return True

    # --- adopt and orphans -------------------------------------------------------------------------

    def adopt(self, name: str) -> Outcome:
        """A stale intent: look its name up remotely; adopt the container or forget the intent."""
        record = self.store.get(name)
        if record is None or record.state is not State.CREATING:
            return Outcome(name, "adopt", record.state.value if record else None, "nothing to do")
        found = self.client.find_container_by_name(name)
        if found is None:
            self.store.forget(name, states=State.CREATING)
            return Outcome(name, "adopt", None, "never created: intent forgotten")
        self.store.transition(name, State.CREATING, State.SEEDING, container_id=found.id,
                              bound_at=self.clock.now(), deadline=self._deadline(found, record))
        return self.provision(name)

    def delete_orphan(self, container_id: str, name: str) -> Outcome:
        """Delete a prefixed container no record owns (checked again right before deleting)."""
        if self.store.by_container_id(container_id) is not None or self.store.get(name) is not None:
            return Outcome(name, "delete_orphan", None, "owned after all")
        with contextlib.suppress(NotFound, ContainerExpired):
            self.client.delete_container(container_id)
        log_event(log, "orphan.deleted", name=name, container_id=container_id)
        self.rt.observer.event("orphan.deleted", container_id=container_id)
        return Outcome(name, "delete_orphan", State.GONE.value, container_id)
