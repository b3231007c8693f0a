"""TOML configuration: parsed with tomllib, validated into typed, frozen config objects."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SECRET_ENV = "VOICEDASHD_JWT_SECRET"
MIN_SECRET_BYTES = 32


class ConfigError(Exception):
    """A configuration problem, worded as one line per problem naming the key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(f"config error: {p}" for p in problems))
        self.problems = problems


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Parse a duration such as "500ms", "30s", "15m", "8h" or "1h30m" into seconds."""
    if not isinstance(value, str):
        raise ValueError(f'durations are strings such as "30s", "15m" or "8h", got {value!r}')
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f'not a duration (use e.g. "30s", "15m", "8h"), got {value!r}')
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address: host (IPv4, IPv6 or name) and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: Any) -> HostPort:
    """Parse "HOST:PORT" or "[IPv6]:PORT"."""
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected "HOST:PORT", got {value!r}')
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\S+)|([^:\s\[\]]+):(\S+)", value.strip())
    if not match:
        raise ValueError(f'expected "HOST:PORT", got {value!r}')
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if not port_text.isdigit():
        raise ValueError(f"port must be a number, got {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    return HostPort(host, port)


Listen = Annotated[HostPort, BeforeValidator(parse_host_port)]


def parse_port_range(value: Any) -> tuple[int, int]:
    """Parse "LOW-HIGH" into an even-aligned RTP port range."""
    if not isinstance(value, str) or not re.fullmatch(r"\d+-\d+", value.strip()):
        raise ValueError(f'expected "LOW-HIGH", got {value!r}')
    low, high = (int(p) for p in value.strip().split("-"))
    if not (1024 <= low < high <= 65535):
        raise ValueError(f"ports must satisfy 1024 <= LOW < HIGH <= 65535, got {value!r}")
    if high - low < 3:
        raise ValueError(f"range must hold at least two RTP/RTCP pairs, got {value!r}")
    return low, high


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipConfig(_Section):
    """[sip]: where the PBX reaches us and who may call."""

    listen: Listen
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
    )
    public_address: str | None = None
    user_agent: str = "voicedashd"
    answer_delay: Duration = 0.0

    @field_validator("trusted", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError("expected a list of CIDRs such as [\"127.0.0.0/8\"]")
        nets = []
        for item in value:
            try:
                nets.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(f"not a CIDR: {item!r}") from None
        return tuple(nets)

    def is_trusted(self, host: str) -> bool:
        """Return whether a source address may send INVITE."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)


class MediaConfig(_Section):
    """[media]: RTP address and ports."""

    address: str = "127.0.0.1"
    rtp_ports: Annotated[tuple[int, int], BeforeValidator(parse_port_range)] = (20000, 20999)
    timeout: Duration = 30.0

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address, got {value!r}") from None
        return value


class ApiConfig(_Section):
    """[api]: REST API, dashboard page, health and metrics."""

    listen: Listen
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


class HubConfig(_Section):
    """[hub]: the live-event WebSocket server."""

    listen: Listen
    origins: tuple[str, ...] = ()
    max_subscriptions: int = Field(default=10, ge=1, le=1000)


class StoreConfig(_Section):
    """[store]: the SQLite database."""

    path: Path


class AuthConfig(_Section):
    """[auth]: token signing and lifetimes."""

    jwt_secret_file: Path | None = None
    issuer: str = "voicedashd"
    audience: str = "voicedashd-dashboard"
    access_token_ttl: Duration = 15 * 60.0
    refresh_token_ttl: Duration = 8 * 3600.0


class DaemonConfig(_Section):
    """[daemon]: process-wide behaviour."""

    shutdown_grace: Duration = 10.0


class LogConfig(_Section):
    """[log]: structured logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class TenantConfig(_Section):
    """[[tenants]]: one organisation, found from the SIP domain."""

    name: str = Field(min_length=1)
    domains: tuple[str, ...] = ()
    default: bool = False


class UserConfig(_Section):
    """[[users]]: an extension owner who may log in to the dashboard."""

    extension: str = Field(min_length=1, pattern=r"^[0-9A-Za-z*#+._-]+$")
    tenant: str
    role: Literal["user", "admin"] = "user"
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        if not value.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash from `voicedashd hash-password`")
        return value


class _FileModel(_Section):
    sip: SipConfig
    media: MediaConfig = MediaConfig()
    api: ApiConfig
    hub: HubConfig
    store: StoreConfig
    auth: AuthConfig = AuthConfig()
    daemon: DaemonConfig = DaemonConfig()
    log: LogConfig = LogConfig()
    tenants: tuple[TenantConfig, ...] = Field(min_length=1)
    users: tuple[UserConfig, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> _FileModel:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenants: tenant names must be unique")
        if sum(t.default for t in self.tenants) > 1:
            raise ValueError("tenants: at most one tenant may have default = true")
        seen: set[tuple[str, str]] = set()
        for index, user in enumerate(self.users):
            if user.tenant not in names:
                raise ValueError(f"users[{index}].tenant: no tenant named {user.tenant!r}")
            key = (user.tenant, user.extension)
            if key in seen:
                raise ValueError(
                    f"users[{index}]: extension {user.extension} appears twice in tenant "
                    f"{user.tenant}"
                )
            seen.add(key)
        return self


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration plus the resolved JWT secret."""

    path: Path
    sip: SipConfig
    media: MediaConfig
    api: ApiConfig
    hub: HubConfig
    store: StoreConfig
    auth: AuthConfig
    daemon: DaemonConfig
    log: LogConfig
    tenants: tuple[TenantConfig, ...]
    users: tuple[UserConfig, ...]
    jwt_secret: bytes

    def __repr__(self) -> str:
        return f"Config(path={str(self.path)!r})"

    @property
    def default_tenant(self) -> TenantConfig:
        """The tenant for unmatched domains: the one marked default, else the first."""
        return next((t for t in self.tenants if t.default), self.tenants[0])

    def tenant_for_domain(self, domain: str | None) -> TenantConfig:
        """Find the tenant that owns a SIP domain."""
        if domain:
            lowered = domain.lower()
            for tenant in self.tenants:
                if lowered in (d.lower() for d in tenant.domains):
                    return tenant
        return self.default_tenant

    def find_user(self, tenant: str, extension: str) -> UserConfig | None:
        """Look up a dashboard user."""
        return next(
            (u for u in self.users if u.tenant == tenant and u.extension == extension), None
        )


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown key (check the spelling against config/voicedashd.toml)"
    elif kind == "missing":
        message = "required key is missing"
    path = _key_path(loc)
    if not path and ":" in message:
        return message
    return f"{path}: {message}" if path else message


def _resolve(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    expanded = path.expanduser()
    return expanded if expanded.is_absolute() else base / expanded


def _load_secret(auth: AuthConfig, environ: Mapping[str, str]) -> bytes:
    from_env = environ.get(SECRET_ENV)
    if from_env is not None:
        secret, key = from_env.strip().encode(), SECRET_ENV
    elif auth.jwt_secret_file is None:
        raise ConfigError(
            [f"auth.jwt_secret_file: required key is missing (or set {SECRET_ENV})"]
        )
    else:
        key = "auth.jwt_secret_file"
        try:
            secret = auth.jwt_secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                [f"{key}: cannot read {auth.jwt_secret_file}: {exc.strerror}"]
            ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            [f"{key}: secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}"]
        )
    return secret


def parse_config(
    text: str, *, path: Path, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate TOML text into a Config; raise ConfigError with one line per problem."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    try:
        model = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None
    base = path.parent
    store = model.store.model_copy(update={"path": _resolve(base, model.store.path)})
    auth = model.auth.model_copy(
        update={"jwt_secret_file": _resolve(base, model.auth.jwt_secret_file)}
    )
    api = model.api.model_copy(
        update={"tls_cert": _resolve(base, model.api.tls_cert),
                "tls_key": _resolve(base, model.api.tls_key)}
    )
    return Config(
        path=path,
        sip=model.sip,
        media=model.media,
        api=api,
        hub=model.hub,
        store=store,
        auth=auth,
        daemon=model.daemon,
        log=model.log,
        tenants=model.tenants,
        users=model.users,
        jwt_secret=_load_secret(auth, environ),
    )


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_config(text, path=path, environ=environ)


RESTART_KEYS = ("sip.listen", "media.address", "media.rtp_ports", "api.listen", "api.tls_cert",
                "api.tls_key", "hub.listen", "store.path")


def restart_needed(old: Config, new: Config) -> list[str]:
    """List the changed settings that only take effect after a restart."""
    changed = []
    for key in RESTART_KEYS:
        section, name = key.split(".")
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name):
            changed.append(key)
    if old.jwt_secret != new.jwt_secret:
        changed.append("auth.jwt_secret_file")
    return changed
