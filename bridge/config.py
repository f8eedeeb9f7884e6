"""Configuration: one YAML file, validated once into frozen models.

``load()`` is the only entry point; ``serve`` and ``check-config`` both call it, so a
config that passes ``check-config`` is exactly a config ``serve`` accepts.

* Unknown keys are errors that name the key and its line, because a typo such as
  ``integraton_key`` must not silently fall back to a default.
* ``${VAR}`` in any string value is replaced from the environment (``$$`` is a
  literal ``$``). An unset variable expands to the empty string and is reported in
  ``Config.unset_variables`` so ``serve`` can warn about it; when the config is invalid,
  each problem names the unset variables in the value (or model) it is about, and any
  others are listed after the problems.
* ``FLASHDUTY_INTEGRATION_KEY`` fills ``flashduty.integration_key`` when the file
  does not set it (or when there is no file at all).
* Durations are numbers of seconds or strings such as ``500ms``, ``10s``, ``5m``, ``1h``, ``7d``, ``1w``.
* Values are normalised once, by their field types (:mod:`bridge.fields`): severity maps,
  durations, URLs, and templates, which are compiled here and nowhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.auth import AuthConfig, NoAuth
from bridge.contract import EVENT_STATUSES
from bridge.fields import (
    AbsolutePath,
    ByteSize,
    CompiledTemplate,
    Expression,
    FiringStatus,
    HttpUrl,
    NonNegativeDuration,
    SeverityMap,
    TemplateMap,
)
from bridge.fields import Duration as Duration  # re-exported: the admin API's older_than
from bridge.matchers import MatcherList
from bridge.patterns import RegexPattern

KEY_ENV_VAR = "FLASHDUTY_INTEGRATION_KEY"

DEFAULT_LISTEN = "0.0.0.0:9095"
DEFAULT_STORAGE_PATH = "data"
DEFAULT_FLASHDUTY_URL = "https://api.flashcat.cloud/event/push/alert/standard"
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_PENDING = 100_000
#: 4 MiB: a 1,000-alert Alertmanager group is 1.5-3 MB; with the worker and in-flight limits it fits a 256 Mi pod.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_WORKERS = 8
DEFAULT_RETRY_HORIZON = 24 * 3600.0
DEFAULT_PASSTHROUGH_MAX_KEYS = 100
DEFAULT_PASSTHROUGH_RETIRE_AFTER = 3600.0
#: The destination of ``flashduty.integration_key``.
DEFAULT_DESTINATION = "default"

#: Flashduty's own Prometheus integration table (lower-cased label value -> status).
DEFAULT_SEVERITY_MAP: dict[str, str] = {
    "critical": "Critical",
    "warning": "Warning",
    "warn": "Warning",
    "info": "Info",
    "acknowledged": "Info",
    "unknown": "Info",
    "unk": "Info",
}
DEFAULT_SEVERITY_LABELS = ("severity", "priority", "level")
#: Labels that identify an alert; they survive the 50-label cap first, in this order.
DEFAULT_IDENTITY_LABELS = (
    "alertname",
    "severity",
    "instance",
    "job",
    "service",
    "namespace",
    "cluster",
    "env",
    "team",
    "pod",
    "container",
    "priority",
    "level",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


POSTGRESQL_SCHEMES = ("postgresql", "postgres")


class HistoryConfig(_Frozen):
    """The event trail's retention: finished events (delivered, suppressed, coalesced, purged)
    are kept at most ``max_age`` after they finished and ``max_events`` events back from the newest."""

    max_age: Duration = 24 * 3600.0
    #: 0 keeps no finished event (pending events and dead letters are always kept).
    max_events: int = Field(100_000, ge=0, le=10_000_000, strict=True)


class StorageConfig(_Frozen):
    """Where the outbox lives: an SQLite directory (``path``, the default), or a PostgreSQL database
    shared by several replicas (``dsn``, or ``dsn_file`` naming a file that holds it, e.g. a mounted Secret).
    """

    path: AbsolutePath = Field(Path(DEFAULT_STORAGE_PATH), validate_default=True)
    #: ``postgresql://user:password@host:5432/db``: never logged, never in errors or metrics.
    dsn: SecretStr | None = None
    #: The DSN from a file instead, read at start (surrounding whitespace ignored).
    dsn_file: AbsolutePath | None = None
    #: Pending events above which senders get 503 (Alertmanager retries; nothing is dropped).
    max_pending: int = Field(DEFAULT_MAX_PENDING, gt=0, strict=True)
    history: HistoryConfig = HistoryConfig()

    @model_validator(mode="after")
    def _one_place(self) -> StorageConfig:
        given = ["path"] if "path" in self.model_fields_set else []
        given += [name for name in ("dsn", "dsn_file") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                "give one of storage.path (SQLite), storage.dsn or storage.dsn_file (PostgreSQL), not "
                + " and ".join(given)
            )
        if self.dsn is not None and urlsplit_scheme(self.dsn.get_secret_value()) not in POSTGRESQL_SCHEMES:
            # The value is not echoed: it carries the database password.
            raise ValueError("storage.dsn must be a postgresql:// URL")
        return self

    @property
    def postgresql(self) -> bool:
        """A DSN (inline or from a file) selects the PostgreSQL outbox."""
        return self.dsn is not None or self.dsn_file is not None


def urlsplit_scheme(value: str) -> str:
    """The scheme of a URL, lower-cased ('' when it has none); never raises."""
    scheme, sep, _ = value.partition("://")
    return scheme.strip().lower() if sep else ""


class RateLimitConfig(_Frozen):
    """Flashduty's documented per-integration-key limits; raise them if Flashduty raised yours."""

    per_second: int = Field(100, ge=1, strict=True)
    per_minute: int = Field(1000, ge=1, strict=True)


class FlashdutyConfig(_Frozen):
    url: HttpUrl = DEFAULT_FLASHDUTY_URL
    integration_key: SecretStr = SecretStr("")
    #: The key from a file instead (a mounted Secret), read at start and at every reload.
    integration_key_file: Path | None = None
    #: Per-attempt timeout for one request to Flashduty.
    timeout: Duration = DEFAULT_TIMEOUT_SECONDS
    rate_limit: RateLimitConfig = RateLimitConfig()

    @model_validator(mode="after")
    def _one_key(self) -> FlashdutyConfig:
        if self.integration_key.get_secret_value() and self.integration_key_file is not None:
            raise ValueError("give integration_key or integration_key_file, not both")
        return self

    @property
    def dry_run(self) -> bool:
        """No key for the default destination."""
        return not self.integration_key.get_secret_value() and self.integration_key_file is None


class CircuitConfig(_Frozen):
    """Stop hammering a destination that keeps failing; probe it until it answers again."""

    failures: int = Field(5, ge=1, strict=True)
    cooldown: Duration = 5.0
    max_cooldown: Duration = 300.0


class DeliveryConfig(_Frozen):
    #: Events delivered concurrently (always one at a time per alert_key).
    workers: int = Field(DEFAULT_WORKERS, ge=1, le=256, strict=True)
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0
    #: Upper bound for a Retry-After header, so a bogus value cannot stall a key for hours.
    retry_after_max: Duration = 300.0
    #: An event still undelivered after this long becomes a dead letter ("expired").
    retry_horizon: Duration = DEFAULT_RETRY_HORIZON
    #: A repeat that says nothing new (same status, title, description, labels) is not sent
    #: again within this interval; after it, it is, so Flashduty sees the alert as fresh.
    refresh_interval: NonNegativeDuration = 300.0
    circuit: CircuitConfig = CircuitConfig()


class LimitsConfig(_Frozen):
    """What one request, and all requests at once, may cost (README "Limits"). Read at start only.

    Requests of the built-in senders with bodies up to ``inline_bytes`` and no templates are
    handled in the server process (linear in their size, a few ms at most); every other request
    (template sources, template overrides, larger bodies) runs in one of ``workers`` processes,
    which is stopped once it used ``request_cpu`` of CPU or needs more than ``worker_memory``.
    """

    #: CPU time one request may take in a worker (decode, templates, mapping); over it: 422, refused for good.
    #: A max_body_bytes Alertmanager group of ten thousand small alerts takes about 1.5 s on a slow CPU.
    request_cpu: Duration = 5.0
    #: Worker processes for template sources, template overrides and large bodies. One fits the shipped
    #: pod (1 CPU, 256 Mi); each more needs about worker_memory + 15 MiB, and a CPU to be of use.
    workers: int = Field(1, ge=1, le=32, strict=True)
    #: Requests that may wait for a worker; one more is answered 503 at once.
    queue: int = Field(16, ge=0, strict=True)
    #: How long a request waits for a worker, or for room under max_inflight_bytes, before it gets 503.
    queue_wait: Duration = 2.0
    #: Bodies of built-in senders (without template overrides) up to this size are handled in the server
    #: process; 0: every request goes to a worker.
    inline_bytes: ByteSize = 64 * 1024
    #: Memory a worker may allocate for one request, beyond what it holds idle; over it: 422.
    worker_memory: ByteSize = 64 * 1024 * 1024
    #: Request bodies being read or handled at once, summed; beyond it new requests wait, then get 503.
    max_inflight_bytes: ByteSize = 12 * 1024 * 1024
    #: The request line and headers of one request; over it: 431.
    max_header_bytes: ByteSize = 32 * 1024
    #: Header fields of one request; more: 431.
    max_headers: int = Field(100, ge=1, strict=True)
    #: From connecting (or from the first byte of the next request) to the end of the headers; then 408.
    header_timeout: Duration = 10.0
    #: From the end of the headers to the end of the body; then 408.
    body_timeout: Duration = 30.0
    #: An idle connection between requests is closed after this long.
    keepalive_timeout: Duration = 5.0
    #: Open connections; one more is answered 503 and closed (each may hold up to max_header_bytes).
    max_connections: int = Field(256, ge=1, strict=True)


class AdminConfig(_Frozen):
    """The admin HTTP API (dead letters). Disabled while ``token`` is empty."""

    token: SecretStr = SecretStr("")


class SourceMapping(_Frozen):
    """How a built-in sender's alerts become Flashduty events (Alertmanager, Grafana)."""

    #: Prefix of every alert_key from this source; the fingerprint follows it.
    key_prefix: str = Field("alertmanager", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    severity_labels: tuple[str, ...] = DEFAULT_SEVERITY_LABELS
    severity_map: SeverityMap = Field(default_factory=lambda: dict(DEFAULT_SEVERITY_MAP))
    default_severity: FiringStatus = "Warning"
    identity_labels: tuple[str, ...] = DEFAULT_IDENTITY_LABELS
    #: Titles starting with "[TPL]" switch on Flashduty-side templating; off unless asked for.
    allow_tpl_titles: bool = False
    #: Templates replacing the built-in title / description (context: ``payload``, ``alert``).
    title: CompiledTemplate | None = None
    description: CompiledTemplate | None = None
    #: Inbound authentication of this sender's requests.
    auth: AuthConfig = NoAuth()


class AlertmanagerConfig(SourceMapping):
    """How Alertmanager alerts become Flashduty events."""


class GrafanaConfig(SourceMapping):
    """How Grafana alerts (unified and legacy) become Flashduty events."""

    key_prefix: str = Field("grafana", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    identity_labels: tuple[str, ...] = ("alertname", "rulename", "grafana_folder", *DEFAULT_IDENTITY_LABELS[1:])
    #: DatasourceNoData alerts (and legacy no_data): Flashduty's own Grafana integration says Critical.
    nodata_status: FiringStatus = "Critical"
    #: DatasourceError alerts: the rule could not be evaluated at all.
    error_status: FiringStatus = "Critical"
    #: Grafana's "Test" button notifications.
    test_status: FiringStatus = "Info"


SOURCE_NAME = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


class TemplateSourceConfig(_Frozen):
    """A sender mapped by templates, served at ``POST /webhook/{name}``.

    Templates see the body as ``payload`` with ``headers`` and ``query``; with ``alerts``
    they run once per item of that list, the item being ``alert``.
    """

    #: A Jinja expression (no braces) giving a list: one event per item.
    alerts: Expression | None = None
    title: CompiledTemplate
    #: None (or empty): no description.
    description: CompiledTemplate | None = None
    #: Must render to Critical/Warning/Info/Ok, or to a key of status_map.
    event_status: CompiledTemplate
    #: Rendered value -> status, e.g. {down: Critical, up: Ok}.
    status_map: dict[str, str] = Field(default_factory=dict)
    #: Rendered, prefixed with "<name>:"; None (or empty): a hash of the rendered labels.
    alert_key: CompiledTemplate | None = None
    labels: TemplateMap = Field(default_factory=dict)
    auth: AuthConfig = NoAuth()
    allow_tpl_titles: bool = False

    @field_validator("status_map")
    @classmethod
    def _statuses(cls, value: dict[str, str]) -> dict[str, str]:
        for name, status in value.items():
            if status not in EVENT_STATUSES:
                raise ValueError(f"{name!r} maps to {status!r}; use one of {', '.join(EVENT_STATUSES)}")
        return value


class LabelRules(_Frozen):
    """Label hygiene, applied in this order: rename, enrich, add, drop, keep.

    They work on the alert's labels and annotations (both become Flashduty labels),
    before keys are sanitised and the 50-label cap applies.
    """

    #: old name -> new name.
    rename: dict[str, str] = Field(default_factory=dict)
    #: Fill a label Flashduty groups on from the first present candidate, e.g.
    #: ``resource: [instance, host]``. An existing value is kept.
    enrich: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: Static labels, set on every event (they replace a value the alert had).
    add: dict[str, str] = Field(default_factory=dict)
    #: Names matching any of these (anchored, RE2) regexes are left out.
    drop: tuple[RegexPattern, ...] = ()
    #: When given, only names matching one of these (anchored, RE2) regexes are kept.
    keep: tuple[RegexPattern, ...] = ()
    #: Names that survive the 50-label cap first, before the identity labels.
    priority: tuple[str, ...] = ()


class DestinationConfig(_Frozen):
    """A Flashduty integration: its key (inline or from a file, e.g. a mounted Secret)."""

    integration_key: SecretStr = SecretStr("")
    #: Read at start and at every reload; surrounding whitespace is ignored.
    integration_key_file: Path | None = None
    #: Default: ``flashduty.url``.
    url: HttpUrl | None = None
    #: Default: ``flashduty.rate_limit``.
    rate_limit: RateLimitConfig | None = None

    @model_validator(mode="after")
    def _one_key(self) -> DestinationConfig:
        has_key, has_file = bool(self.integration_key.get_secret_value()), self.integration_key_file is not None
        if has_key == has_file:
            raise ValueError("give exactly one of integration_key and integration_key_file")
        return self


class RouteConfig(_Frozen):
    """One routing rule; routes are tried in order."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: Alertmanager matcher syntax on the alert's labels, e.g. ``team="db"``, ``severity=~"critical|warning"``.
    matchers: MatcherList = ()
    #: Only alerts from these sources (e.g. alertmanager); empty: any.
    sources: tuple[str, ...] = ()
    destination: str | None = None
    #: Also try the following routes after this one matched (fan-out).
    continue_: bool = Field(False, alias="continue")
    #: Matching alerts are not sent anywhere (counted).
    drop: bool = False
    #: Per-route label rules, applied after the global ones.
    labels: LabelRules = LabelRules()
    #: Per-route severity entries, overriding those of the source's table for these alerts.
    severity_map: SeverityMap | None = None

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if self.drop == (self.destination is not None):
            raise ValueError("a route needs either a destination or drop: true")
        return self


class Config(_Frozen):
    listen: str = DEFAULT_LISTEN
    storage: StorageConfig = Field(default_factory=StorageConfig)  # its path resolves at load, not import
    flashduty: FlashdutyConfig = FlashdutyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    alertmanager: AlertmanagerConfig = AlertmanagerConfig()
    grafana: GrafanaConfig = GrafanaConfig()
    #: Template sources by name, each served at POST /webhook/{name}.
    sources: dict[str, TemplateSourceConfig] = Field(default_factory=dict)
    #: Inbound authentication for POST /event/push/alert/standard.
    standard_auth: AuthConfig = NoAuth()
    admin: AdminConfig = AdminConfig()
    #: Named Flashduty integrations; ``flashduty.integration_key`` is the destination "default".
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    #: Global label hygiene (before any route's own rules).
    labels: LabelRules = LabelRules()
    #: ``?integration_key=K`` on a sender path sends to K directly (as Flashduty's own URLs do).
    passthrough: bool = True
    #: Keys from URLs with a destination at once; a new one beyond this is refused with 503.
    passthrough_max_keys: int = Field(DEFAULT_PASSTHROUGH_MAX_KEYS, ge=0, strict=True)
    #: A URL key unused this long, with no event stored for it, is forgotten (its lane and series go).
    passthrough_retire_after: Duration = DEFAULT_PASSTHROUGH_RETIRE_AFTER
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0, strict=True)
    #: What requests may cost: CPU, memory, header sizes, timeouts (see LimitsConfig).
    limits: LimitsConfig = LimitsConfig()
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error)$")
    #: Environment variables referenced as ${VAR} that were not set (not part of the file).
    unset_variables: tuple[str, ...] = Field(default=(), exclude=True)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, TemplateSourceConfig]) -> dict[str, TemplateSourceConfig]:
        for name in value:
            if not re.fullmatch(SOURCE_NAME, name) or name in ("alertmanager", "grafana", "standard"):
                raise ValueError(
                    f"source name {name!r}: lower-case letters, digits, _ and -, not alertmanager/grafana/standard"
                )
        return value

    @field_validator("destinations")
    @classmethod
    def _names(cls, value: dict[str, DestinationConfig]) -> dict[str, DestinationConfig]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name) or name == DEFAULT_DESTINATION:
                raise ValueError(
                    f"destination name {name!r}: use 1-64 letters, digits, _ . - (not {DEFAULT_DESTINATION!r})"
                )
        return value

    @model_validator(mode="after")
    def _body_fits_in_flight(self) -> Config:
        if self.max_body_bytes > self.limits.max_inflight_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) is larger than limits.max_inflight_bytes"
                f" ({self.limits.max_inflight_bytes}): such a body could never be admitted"
            )
        return self

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Config:
        has_default = not self.flashduty.dry_run or not self.destinations
        known = set(self.destinations) | ({DEFAULT_DESTINATION} if has_default else set())
        for index, route in enumerate(self.routes):
            if route.destination is not None and route.destination not in known:
                raise ValueError(
                    f"routes[{index}]: unknown destination {route.destination!r} (known: {', '.join(sorted(known))})"
                )
        return self

    @property
    def dry_run(self) -> bool:
        """No integration key anywhere: nothing is sent, events are listed at /-/dry-run."""
        return self.flashduty.dry_run and not self.destinations


def split_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9095`` for IPv6) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, each with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


#: Where an unset variable was expanded: its name and the path of the value that held it.
Unset = tuple[str, tuple[Any, ...]]


def _expand(value: Any, env: Mapping[str, str], unset: list[Unset], path: tuple[Any, ...] = ()) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            if name not in env:
                unset.append((name, path))
            return env.get(name, "")

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _expand(item, env, unset, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, env, unset, (*path, index)) for index, item in enumerate(value)]
    return value


def _key_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    """Record the 1-based line of every mapping key and sequence item, by its path."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _key_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _key_lines(item, (*path, index), lines)


def _describe(error: ValidationError, lines: Mapping[tuple[Any, ...], int], unset: list[Unset]) -> list[str]:
    problems = []
    explained: set[str] = set()
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"line {line}: " if line else ""
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}unknown key {dotted!r}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        # A variable expanded in this value, or inside the model this problem is about.
        causes = list(
            dict.fromkeys(name for name, path in unset if path[: len(loc)] == loc or loc[: len(path)] == path)
        )
        if causes:
            explained.update(causes)
            message += "; " + ", ".join(f"${{{name}}} is not set (it expanded to an empty string)" for name in causes)
        problems.append(f"{where}{dotted}: {message}")
    others = [name for name in dict.fromkeys(name for name, _ in unset) if name not in explained]
    if others:
        problems.append(f"environment variables not set (each expanded to an empty string): {', '.join(others)}")
    return problems


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without the quoted source line (it may hold the integration key)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"line {mark.line + 1} column {mark.column + 1}: invalid YAML: {error.problem}"
    return "invalid YAML"


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file (or the defaults when ``path`` is None).

    Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if env is None else env
    source = str(path) if path else "(defaults)"
    data: Any = {}
    lines: dict[tuple[Any, ...], int] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(source, [f"not valid UTF-8 (byte {exc.start})"]) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [_yaml_problem(exc)]) from None
        if node is not None:
            _key_lines(node, (), lines)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, ["the top level must be a mapping of keys"])
    unset: list[Unset] = []
    data = _expand(data, env, unset)
    flashduty = data.get("flashduty")
    if flashduty is None or isinstance(flashduty, dict):  # anything else is reported by validation
        flashduty = flashduty or {}
        if not flashduty.get("integration_key") and not flashduty.get("integration_key_file") and env.get(KEY_ENV_VAR):
            data["flashduty"] = {**flashduty, "integration_key": env[KEY_ENV_VAR]}
    data["unset_variables"] = tuple(dict.fromkeys(name for name, _ in unset))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _describe(exc, lines, unset)) from None
