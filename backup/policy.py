"""Backup policies: what to back up, where to, for whom, how often and for how long.

A TOML file holds one or more ``[[policy]]`` tables. Policies name age *recipients* only:
backing up never needs a secret key, so a machine that backs up holds nothing that can
read its own archives.

Every mistake becomes one :class:`~backup.errors.PolicyError` naming the file, the policy
and the field, so a broken file is fixed in one look.

Invariants:

- **A command pays for the policies it touches.** :func:`read_policies` parses the file
  once per content (a process re-reading an unchanged file gets the same
  :class:`PolicyFile`) and checks at once only what the whole file must get right: TOML,
  the ``[[policy]]`` tables, each name valid and unique. A policy is validated in full
  (recipients parsed, target URL opened, ...) on first access by name, once; its schedule
  fields alone (:class:`PolicySchedule`) are all a listing of every policy's runs
  validates. So ``backup run P`` refuses a broken P and runs P beside a broken Q, and no
  command builds a target for a policy it does not touch.
- :func:`load_policies` stays strict: every policy validated, the first mistake raised.
- Full validation and the schedule view share one validator per field, so they can never
  disagree about a field both read, and say the same about it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import PolicyError
from .times import parse_duration

__all__ = [
    "Drill",
    "Notify",
    "ObjectLockRule",
    "Policy",
    "PolicyFile",
    "PolicySchedule",
    "Retention",
    "get_policy",
    "load_policies",
    "parse_duration",
    "read_policies",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _duration(v: Any) -> Any:
    # a bare number would be read as seconds by pydantic: `full_every = 7` meant days
    if isinstance(v, str):
        return parse_duration(v)
    if isinstance(v, timedelta) and v > timedelta(0):
        return v
    if isinstance(v, timedelta):
        raise ValueError("must be a duration above zero")
    raise ValueError(
        f"{v!r} is not a duration; write a number and its unit in quotes, "
        'like "7d", "12h", "2w", "30m" or "90s"'
    )


#: a duration in a policy file: a quoted number and unit, above zero
Duration = Annotated[timedelta, BeforeValidator(_duration)]


NonNegative = Annotated[int, Field(ge=0)]


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return v


def _check_schedule(v: str) -> str:
    from .cron import parse_cron

    parse_cron(v)  # ValueError names the bad field; the policy keeps the text
    return v


def _check_timezone(v: str) -> str:
    from .cron import get_zone

    get_zone(v)
    return v


#: a policy's or a queue's name
Name = Annotated[str, AfterValidator(_check_name)]
#: cron text (backup/cron.py), kept as written
CronText = Annotated[str, AfterValidator(_check_schedule)]
#: an IANA zone name
ZoneName = Annotated[str, AfterValidator(_check_timezone)]


class Retention(BaseModel):
    """How many archives prune keeps: the newest ``keep_last``, and the newest archive of each
    of the last ``keep_daily`` days, ``keep_weekly`` ISO weeks, and so on. Unset means 0."""

    model_config = ConfigDict(extra="forbid")

    keep_last: NonNegative = 0
    keep_daily: NonNegative = 0
    keep_weekly: NonNegative = 0
    keep_monthly: NonNegative = 0
    keep_yearly: NonNegative = 0

    def is_empty(self) -> bool:
        """Returns: True when no rule keeps anything (prune then refuses to delete all)."""
        return not any(
            (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        )


class Notify(BaseModel):
    """Where a policy's run reports: Apprise URLs (``mailto://``, ``json://``, ``ntfy://``,
    Slack, Discord, ...) or names of targets defined in the environment (``ops`` for
    ``BACKUP_NOTIFY_OPS``), told when a run succeeds, when it fails, or both."""

    model_config = ConfigDict(extra="forbid")

    on_success: list[str] = []
    on_failure: list[str] = []

    @field_validator("on_success", "on_failure")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        from .settings import is_notify_target_name

        for url in v:
            if "://" not in url and not is_notify_target_name(url):
                raise ValueError(
                    f"{url!r} is neither an Apprise URL (scheme://...) nor a target name"
                )
        return v


class ObjectLockRule(BaseModel):
    """S3 Object Lock set on every archive and manifest of a policy (``[policy.object_lock]``):
    ``mode`` ``GOVERNANCE`` (users with a bypass permission may still delete) or
    ``COMPLIANCE`` (nobody can, not even the account root, until the period ends), and
    ``retain``, the period from the backup, e.g. ``"30d"``. The bucket must have been
    created with Object Lock enabled."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    retain: Duration

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v.upper() not in ("GOVERNANCE", "COMPLIANCE"):
            raise ValueError(f"{v!r} is not an Object Lock mode: use GOVERNANCE or COMPLIANCE")
        return v.upper()

    @field_validator("retain")
    @classmethod
    def _retain(cls, v: timedelta) -> timedelta:
        if v < timedelta(days=1):
            raise ValueError("must be at least one day (S3 retains in whole days)")
        return v


class Monitor(BaseModel):
    """A dead-man's switch for the policy's runs (``[policy.monitor]``): ``ping_url`` is told
    when a run starts, succeeds, ends partial (exit 3) or fails, by the healthchecks.io
    protocol (``URL/start``, ``URL``, ``URL/3``, ``URL/fail``), or, for an Uptime Kuma push
    URL (``.../api/push/TOKEN``), with ``status=up`` or ``status=down`` (docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    ping_url: str

    @field_validator("ping_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


class Drill(BaseModel):
    """Restore drills of a bucket source (``[policy.drill]``): fork the source's latest
    snapshot into a bucket named by ``bucket`` (``{policy}``, ``{bucket}``, ``{date}``,
    ``{time}``), run the shell command ``check`` against it (``BACKUP_DRILL_URL`` names the
    fork), record the result, and remove the fork ``keep_for`` later (docs/snapshots.md)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = "{bucket}-drill-{date}{time}"
    check: str
    keep_for: Duration = timedelta(days=1)
    timeout: Duration = timedelta(hours=1)


class Policy(BaseModel):
    """One backup policy."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    sources: list[Path]  # empty when ``source`` names a bucket
    #: a bucket to back up instead of local sources: s3://bucket[/prefix] (docs/snapshots.md)
    source: str | None = None
    exclude: list[str] = []
    target: str
    recipients: list[str] = Field(min_length=1)
    schedule: CronText | None = None
    timezone: ZoneName = "UTC"
    full_every: Duration = timedelta(days=7)
    compression_level: int = Field(default=3, ge=1, le=22)
    retention: Retention = Retention()
    catch_up: bool = False
    notify: Notify = Notify()
    #: runs go to queue ``pack-<queue>`` instead of ``pack``: for sources that only the
    #: workers of some hosts can read (``backup worker --queues pack-<queue>`` there)
    queue: Name | None = None
    #: Object Lock on every archive and manifest (s3:// targets with Object Lock enabled)
    object_lock: ObjectLockRule | None = None
    #: default tier of cold-storage restores: Expedited, Standard or Bulk
    restore_tier: str = "Standard"
    #: extra object tags on every stored object (policy, kind and host are always added)
    tags: dict[str, str] = {}
    #: snapshot the s3:// target bucket after each archive lands, named after the archive
    target_snapshots: bool = False
    #: restore drills of the bucket source (the ``fork`` action)
    drill: Drill | None = None
    monitor: Monitor | None = None
    #: what a run of the policy does, in order: ``archive`` (pack the sources into an
    #: archive), and for a bucket source ``snapshot`` (take a named snapshot, prune the
    #: policy's snapshots by its retention) and ``fork`` (the restore drill of ``drill``)
    actions: list[Literal["snapshot", "archive", "fork"]] = Field(default=["archive"], min_length=1)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        from .crypto.age import AgeError, parse_recipient

        kinds = set()
        for n, r in enumerate(v, 1):
            if r.strip().startswith("AGE-SECRET-KEY-"):
                # never echo it back: this is a secret key pasted where a recipient belongs
                raise ValueError("holds a secret key; policies take recipients (age1...) only")
            try:
                kinds.add(parse_recipient(r.strip()).post_quantum)
            except Exception as e:
                why = e.args[0] if isinstance(e, AgeError) and e.args else str(e)
                r = r.strip()
                # a public key, so safe to show; shortened (post-quantum ones run to 1959
                # characters) and only when it looks like one
                shown = f" ({r[:12]}...{r[-6:]})" if r.lower().startswith("age1") else ""
                raise ValueError(f"recipient {n}{shown}: {why}") from None
        if len(kinds) > 1:
            # age refuses such a file: the classic stanza would undo the post-quantum one
            raise ValueError(
                "mixes post-quantum (age1pq1...) and classic (age1...) recipients; use one kind"
            )
        return [r.strip() for r in v]

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[Path]) -> list[Path]:
        out = [Path(p).expanduser() for p in v]
        for p in out:
            if not p.is_absolute():
                raise ValueError(f"{str(p)!r} is not an absolute path")
        return out

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        from .targets import check_target_url

        try:
            check_target_url(v)
        except Exception as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("restore_tier")
    @classmethod
    def _restore_tier(cls, v: str) -> str:
        if v.capitalize() not in ("Expedited", "Standard", "Bulk"):
            raise ValueError(f"{v!r} is not a retrieval tier: use Expedited, Standard or Bulk")
        return v.capitalize()

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        from .targets import WriteOptions

        reserved = {"policy", "kind", "host"} & set(v)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))}: set by backup itself")
        if len(v) > 7:
            raise ValueError(f"{len(v)} tags; at most 7 (S3 allows 10; backup sets 3)")
        WriteOptions(tags=v)  # raises naming a bad key or value
        return v

    @model_validator(mode="after")
    def _object_lock_target(self) -> Policy:
        from .targets import open_target

        if self.object_lock is not None and not open_target(self.target).supports_object_lock:
            raise ValueError(
                f"object_lock: target {self.target} has no Object Lock (use an s3:// bucket "
                "created with Object Lock enabled)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _bucket_source_needs_no_paths(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") is not None and "sources" not in data:
            return {**data, "sources": []}
        return data

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None:
            from .snapshots import parse_bucket_url

            try:
                parse_bucket_url(v)
            except Exception as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> Policy:
        if bool(self.sources) == (self.source is not None):
            raise ValueError(
                "give either sources (local paths) or source (a bucket, s3://bucket/prefix)"
                if self.sources
                else "sources: give at least one path, or source = an s3:// bucket"
            )
        if self.drill is not None and self.source is None:
            raise ValueError("drill: restore drills need a bucket source")
        if self.source is None and set(self.actions) != {"archive"}:
            raise ValueError("actions: snapshot and fork apply to a bucket source only")
        if "fork" in self.actions and self.drill is None:
            raise ValueError("actions: fork needs a [policy.drill] table")
        if len(set(self.actions)) != len(self.actions):
            raise ValueError("actions: each action once")
        return self

    @model_validator(mode="after")
    def _source_names(self) -> Policy:
        names = [p.name or "root" for p in self.sources]
        if len(self.sources) > 1 and len(set(names)) != len(names):
            raise ValueError(
                "sources: several sources share a final name "
                f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                "each source is stored under its own name, so they must differ"
            )
        return self

    def source_names(self) -> list[tuple[str, Path]]:
        """Returns: (name inside the archive, path) per source; ``""`` for a single source,
        whose contents sit at the archive's root so ``tar -x -C DIR`` fills DIR directly."""
        if len(self.sources) == 1:
            return [("", self.sources[0])]
        return [(p.name or "root", p) for p in self.sources]


def _format_error(path: Path, policy: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(policy)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return f"policy {policy!r}: " + "; ".join(parts)


class PolicySchedule(BaseModel):
    """The fields of a policy that say when and where its runs go, validated as
    :class:`Policy` validates them and nothing else: what ``backup schedule``, ``backup
    status`` and the scheduler read from every policy."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Name
    schedule: CronText | None = None
    timezone: ZoneName = "UTC"
    catch_up: bool = False
    queue: Name | None = None


class PolicyCost(BaseModel):
    """The fields of a policy its storage bill depends on (backup/economics.py), validated as
    :class:`Policy` validates them and nothing else, and the target as written (its storage
    class is in its query): what ``backup schedule``, ``status`` and the load-time warnings
    read from every cold policy without validating recipients or building targets."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Name
    target: str
    schedule: CronText | None = None
    timezone: ZoneName = "UTC"
    full_every: Duration = timedelta(days=7)
    retention: Retention = Retention()
    restore_tier: str = "Standard"


class _Named(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name


_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], path: Path, label: str, table: Any) -> _M:
    try:
        return model.model_validate(table)
    except ValidationError as e:
        raise PolicyError(str(path), _format_error(path, label, e)) from None
    except Exception as e:  # errors from recipient or target parsing
        raise PolicyError(str(path), f"policy {label!r}: {e}") from None


class PolicyFile(Mapping[str, Policy]):
    """A policy file as read: its policies by name, in file order, each validated in full
    on first access (``pf[name]``, ``get``, ``values``) and kept; a broken one raises
    :class:`~backup.errors.PolicyError` naming the file, the policy and the field whenever
    it is accessed. ``name in pf`` and iterating the names validate nothing.

    Build it with :func:`read_policies`.
    """

    def __init__(self, path: Path, tables: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self._tables = tables
        self._valid: dict[str, Policy] = {}
        self._schedules: list[PolicySchedule] | None = None
        self._lock = threading.Lock()  # a worker's threads share one file

    def __getitem__(self, name: str) -> Policy:
        pol = self._valid.get(name)
        if pol is None:
            table = self._tables[name]  # KeyError: no such policy
            with self._lock:
                pol = self._valid.get(name)
                if pol is None:
                    pol = _validated(Policy, self.path, name, table)
                    self._valid[name] = pol
        return pol

    def __contains__(self, name: object) -> bool:
        return name in self._tables

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    def schedules(self) -> list[PolicySchedule]:
        """Returns: every policy's schedule fields, in file order.

        Raises:
            PolicyError: the first policy whose schedule fields are wrong.
        """
        if self._schedules is None:
            self._schedules = [
                _validated(PolicySchedule, self.path, name, table)
                for name, table in self._tables.items()
            ]
        return self._schedules

    def costed(self, keep: Callable[[str], bool]) -> list[PolicyCost]:
        """Returns: the cost fields of the policies whose target, as written, ``keep``
        accepts (a broken one is left out: the commands that use it say what is wrong)."""
        out = []
        for name, table in self._tables.items():
            target = table.get("target")
            if isinstance(target, str) and keep(target):
                try:
                    out.append(_validated(PolicyCost, self.path, name, table))
                except PolicyError:
                    continue
        return out

    def validate_all(self) -> dict[str, Policy]:
        """Returns: every policy, validated in full, by name in file order.

        Raises:
            PolicyError: the first broken policy in file order.
        """
        return {name: self[name] for name in self._tables}


def _parse(path: Path, data: bytes | None = None) -> PolicyFile:
    """The policy file's tables by name, with what the whole file must get right checked."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        doc = tomllib.loads(data.decode())
    except FileNotFoundError:
        raise PolicyError(
            str(path), "policy file not found (set BACKUP_CONFIG or --config)"
        ) from None
    except OSError as e:
        raise PolicyError(str(path), f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PolicyError(str(path), f"not valid TOML: not UTF-8 ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(str(path), f"not valid TOML: {e}") from None
    unknown = set(doc) - {"policy"}
    if unknown:
        raise PolicyError(
            str(path),
            f"unknown top-level key(s) {', '.join(sorted(unknown))}; expected [[policy]] tables",
        )
    tables = doc.get("policy", [])
    if not isinstance(tables, list) or not tables:
        raise PolicyError(str(path), "no [[policy]] table")
    out: dict[str, dict[str, Any]] = {}
    for i, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise PolicyError(str(path), f"policy '#{i}': not a table")
        label = str(table.get("name", f"#{i}"))
        name = _validated(_Named, path, label, table).name
        if name in out:
            raise PolicyError(str(path), f"policy {name!r}: name: defined twice")
        out[name] = table
    return PolicyFile(path, out)


_READ: dict[str, tuple[bytes, PolicyFile]] = {}
_READ_LOCK = threading.Lock()


def read_policies(path: Path) -> PolicyFile:
    """Read a policy file, validating each policy only when it is used.

    The file is read every call; it is parsed again only when its content changed, so a
    process (a worker, the scheduler, a command that opens it in two places) sees the
    current file and validates each policy of an unchanged one once.

    Args:
        path: a TOML file with one or more ``[[policy]]`` tables.

    Returns:
        The file's policies (see :class:`PolicyFile`).

    Raises:
        PolicyError: the file cannot be read, is not TOML, or a table has no valid, unique
            name.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return _parse(path)  # raises the clear error
    digest = hashlib.blake2b(data, digest_size=16).digest()
    key = str(path)
    with _READ_LOCK:
        cached = _READ.get(key)
        if cached is not None and cached[0] == digest:
            return cached[1]
    pf = _parse(path, data)
    with _READ_LOCK:
        _READ[key] = (digest, pf)
    return pf


def load_policies(path: Path) -> dict[str, Policy]:
    """Read and validate a whole policy file (strict: a command reads it with
    :func:`read_policies`, which validates only the policies it uses).

    Args:
        path: a TOML file with one or more ``[[policy]]`` tables.

    Returns:
        Policies by name, in file order.

    Raises:
        PolicyError: naming the file, the policy and the field of the first problem found.
    """
    return _parse(path).validate_all()


def get_policy(policies: Mapping[str, Policy], name: str, path: Path) -> Policy:
    """Returns: the named policy, or raises PolicyError listing the ones that exist."""
    try:
        return policies[name]
    except KeyError:
        raise PolicyError(
            str(path), f"no policy named {name!r} (policies: {', '.join(policies) or 'none'})"
        ) from None
