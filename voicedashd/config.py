"""TOML configuration: parsed with tomllib, validated into typed, frozen config objects."""

from __future__ import annotations

import enum
import importlib.util
import ipaddress
import os
import re
import string
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .events import event_types
from .sip.refer_to import DEFAULT_TRANSFER_TARGET, check_transfer_target

SECRET_ENV = "VOICEDASHD_JWT_SECRET"
MIN_SECRET_BYTES = 32
# media.codecs: the codecs voicedashd speaks (media/codecs.py opens each), in the default
# preference order (sip/sdp.py answers by it).
MEDIA_CODECS = ("G722", "PCMU", "PCMA")


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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: Any) -> tuple[Network, ...]:
    """Parse a list of CIDRs (a bare address is a /32 or /128)."""
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of CIDRs such as [\"127.0.0.0/8\"]")
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"not a CIDR: {item!r}") from None
    return tuple(nets)


Networks = Annotated[tuple[Network, ...], BeforeValidator(parse_networks)]


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_public_address(value: Any) -> str | None:
    """An address we write for peers to reach us: an IP literal, not 0.0.0.0 or ::."""
    if value is None:
        return None
    address = _address(str(value)) if isinstance(value, str) else None
    if address is None:
        raise ValueError(f"must be an IP address (names are never looked up), got {value!r}")
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"must be an address peers can reach, not {value!r}")
    return str(address)


PublicAddress = Annotated[str | None, BeforeValidator(parse_public_address)]


class TrunkConfig(_Section):
    """[[sip.trunks]]: a PBX that sends calls from known addresses, optionally for one tenant."""

    name: str = Field(min_length=1)
    sources: Networks = Field(min_length=1)
    tenant: str | None = None

    def contains(self, host: str) -> bool:
        """Whether a source address belongs to this trunk."""
        address = _address(host)
        return address is not None and any(address in net for net in self.sources)


class SipConfig(_Section):
    """[sip]: where the PBX reaches us and who may call."""

    listen: Listen
    trusted: Networks = (
        ipaddress.ip_network("127.0.0.0/8"),
    )
    trunks: tuple[TrunkConfig, ...] = ()
    public_address: PublicAddress = None
    user_agent: str = "voicedashd"
    answer_delay: Duration = 0.0
    untrusted_rate_limit: float = Field(default=5.0, gt=0, le=100_000)
    untrusted_rate_burst: int = Field(default=20, ge=1, le=100_000)
    untrusted_max_transactions: int = Field(default=256, ge=1, le=1_000_000)
    max_tcp_connections: int = Field(default=256, ge=1, le=1_000_000)
    max_tcp_connections_per_source: int = Field(default=16, ge=1, le=1_000_000)
    tcp_idle_timeout: Duration = Field(default=300.0, gt=0)
    transfer_timeout: Duration = Field(default=30.0, ge=1.0, le=600.0)

    def trunk_for(self, host: str) -> TrunkConfig | None:
        """The first trunk whose sources contain a source address, or None."""
        return next((trunk for trunk in self.trunks if trunk.contains(host)), None)

    def is_trusted(self, host: str) -> bool:
        """Return whether a source address may send INVITE: sip.trusted or a trunk's sources."""
        address = _address(host)
        if address is None:
            return False
        return any(address in net for net in self.trusted) or self.trunk_for(host) is not None


class MediaConfig(_Section):
    """[media]: RTP address and ports, codecs, media timeout, jitter buffer, strict RTP,
    recording."""

    address: str = "127.0.0.1"
    public_address: PublicAddress = None
    rtp_ports: Annotated[tuple[int, int], BeforeValidator(parse_port_range)] = (20000, 20999)
    timeout: Duration = 30.0
    jitter_buffer: Duration = 0.06
    allowed_peers: Networks = ()
    relearn_after: Duration = 5.0
    record_dir: Path | None = None
    codecs: tuple[str, ...] = MEDIA_CODECS

    @field_validator("codecs", mode="before")
    @classmethod
    def _codecs(cls, value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a list of codec names ({', '.join(MEDIA_CODECS)})")
        names = tuple(name.upper() for name in value)
        if not names:
            raise ValueError(f"must name at least one codec of {', '.join(MEDIA_CODECS)}")
        unknown = [name for name in value if name.upper() not in MEDIA_CODECS]
        if unknown:
            raise ValueError(f"unknown codec {unknown[0]!r}; known: {', '.join(MEDIA_CODECS)}")
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"{twice} is listed twice")
        return names

    @field_validator("relearn_after")
    @classmethod
    def _relearn_after(cls, value: float) -> float:
        if not 0.1 <= value <= 3600:
            raise ValueError(f'must be between "100ms" and "1h", got {value:g}s')
        return value

    def is_allowed_peer(self, host: str) -> bool:
        """Whether host (an IP literal) lies in media.allowed_peers."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.allowed_peers)

    @field_validator("jitter_buffer")
    @classmethod
    def _jitter_buffer(cls, value: float) -> float:
        if not 0.02 <= value <= 0.2:
            raise ValueError(f'must be between "20ms" and "200ms", got {value * 1000:g}ms')
        return value

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
    trusted_proxies: Networks = ()

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


def normalize_origin(value: str) -> str:
    """Return an origin as browsers send it: lower-case scheme://host[:port], no default port."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected an origin such as "https://dash.example.com", got {value!r}')
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"an origin is scheme://host[:port] only, got {value!r}")
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port of origin {value!r} must be 1-65535") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class HubConfig(_Section):
    """[hub]: the live-event WebSocket server."""

    listen: Listen
    origins: tuple[str, ...] = ()
    max_subscriptions: int = Field(default=10, ge=1, le=1000)
    queue_size: int = Field(default=256, ge=1, le=100_000)
    max_message_size: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    rate_limit: float = Field(default=20.0, gt=0, le=10_000)
    rate_burst: int = Field(default=40, ge=1, le=100_000)
    ping_interval: Duration = Field(default=20.0, gt=0)
    ping_timeout: Duration = Field(default=10.0, gt=0)
    send_buffer: int = Field(default=262144, ge=0, le=64 * 1024 * 1024)
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.query \
                or parts.fragment or parts.username or not re.fullmatch(r"[\w.:\[\]-]+",
                                                                      parts.netloc):
            raise ValueError('expected the WebSocket URL browsers use, such as '
                             f'"wss://dash.example.com/ws", got {value!r}')
        return value.strip()

    @field_validator("origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError('expected a list of origins such as ["https://dash.example.com"]')
        return tuple(normalize_origin(v) for v in value)


class StoreConfig(_Section):
    """[store]: the SQLite database."""

    path: Path


class RecordingsConfig(_Section):
    """[recordings]: where the WAV files of recording tenants' calls are kept."""

    dir: Path | None = None  # resolved: store.path's folder / "recordings"


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
    dtmf_digits: bool = False  # the keys a caller pressed are often PINs or card numbers


def webhook_event_names() -> tuple[str, ...]:
    """The event names [[webhooks]] events may list, sorted."""
    return tuple(sorted(event_types()))


def check_webhook_url(value: str) -> str:
    """Accept an http(s) URL with a host and no credentials; the name is never looked up here."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected an http:// or https:// URL such as '
                         f'"https://hooks.example.com/voicedashd", got {value!r}')
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (user:password@): deliveries are signed "
                         "with secret_file instead")
    if parts.fragment or any(c.isspace() for c in text):
        raise ValueError(f"must have no fragment and no spaces, got {value!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"port of {value!r} must be 1-65535") from None
    return text


class WebhookConfig(_Section):
    """[[webhooks]]: an HTTP endpoint that is POSTed chosen call events, signed with a secret."""

    url: Annotated[str, AfterValidator(check_webhook_url)]
    secret_file: Path
    events: tuple[str, ...] = Field(min_length=1)
    tenant: str | None = None
    retry_base: Duration = 30.0
    # Read from secret_file when the file is loaded; never a key, never in a repr or a log.
    _secret: bytes = PrivateAttr(default=b"")

    @property
    def secret(self) -> bytes:
        """The HMAC key read from secret_file."""
        return self._secret

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = webhook_event_names()
        for name in value:
            if name not in known:
                raise ValueError(f"unknown event {name!r}; known: {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{next(n for n in value if value.count(n) > 1)!r} is listed twice")
        return value

    @field_validator("retry_base")
    @classmethod
    def _retry_base(cls, value: float) -> float:
        if not 0.1 <= value <= 3600:
            raise ValueError(f'must be between "100ms" and "1h", got {value:g}s')
        return value


TransferTarget = Annotated[str, AfterValidator(check_transfer_target)]
DEFAULT_RECORD_NOTICE = "This call is recorded."


class TenantConfig(_Section):
    """[[tenants]]: one organisation, found from the SIP domain."""

    name: str = Field(min_length=1)
    domains: tuple[str, ...] = ()
    default: bool = False
    transfer_target: TransferTarget = DEFAULT_TRANSFER_TARGET
    # Recordings (media/callrecord.py): opt-in; the notice is said before the greeting.
    record: bool = False
    record_notice: str = Field(default=DEFAULT_RECORD_NOTICE, min_length=1)
    retention_days: int = Field(default=30, ge=1, le=36500)

    @field_validator("record_notice")
    @classmethod
    def _record_notice(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say something (the caller hears it before the greeting)")
        return check_template(value)


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


_PLACEHOLDERS = frozenset({"extension", "tenant", "caller"})
DEFAULT_GREETING = ("Hello, you have reached extension {extension}. I am an automated assistant. "
                    "How can I help you?")
DEFAULT_FALLBACK = ("Sorry, I don't know the answer to that. I'll pass your message on to "
                    "extension {extension}.")
DEFAULT_FAREWELL = "Thank you for calling. Goodbye."
DEFAULT_TRANSFER_LINE = "One moment please, I am putting you through."
DEFAULT_TRANSFER_FAILED_LINE = ("Sorry, I could not put you through. I can take a message "
                                "instead.")
DEFAULT_SYSTEM_PROMPT = (
    "You are the telephone assistant of extension {extension}. Answer the caller in one or two "
    "short spoken sentences, using only the knowledge passages given. If they do not contain "
    "the answer, say you will pass the message on to extension {extension}. No lists, no "
    "markdown.")


def check_template(value: str) -> str:
    """Accept text whose {placeholders} are only extension, tenant and caller."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad placeholder syntax: {exc}") from None
    unknown = fields - _PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{extension}}, "
                         "{tenant} or {caller}")
    return value


Template = Annotated[str, AfterValidator(check_template)]
# Which Python module each non-default engine needs (find_spec only: pipecat is not imported).
ENGINE_MODULES = {
    ("stt", "deepgram"): ("deepgram", "pipecat-ai[deepgram]"),
    ("stt", "openai"): ("openai", "pipecat-ai"),
    ("tts", "cartesia"): ("websockets", "pipecat-ai[cartesia]"),
    ("tts", "openai"): ("openai", "pipecat-ai"),
    ("tts", "deepgram"): ("deepgram", "pipecat-ai[deepgram]"),
    ("llm", "openai"): ("openai", "pipecat-ai"),
}


class _EngineSection(_Section):
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class SttConfig(_EngineSection):
    """[voicebot.stt]: speech recognition; whisper (bundled) and pocketsphinx run offline."""

    engine: Literal["whisper", "pocketsphinx", "deepgram", "openai"] = "whisper"
    language: str = "en"


class TtsConfig(_EngineSection):
    """[voicebot.tts]: speech synthesis; hibari (neural) and espeak-ng run offline with no key."""

    engine: Literal["hibari", "espeak", "cartesia", "openai", "deepgram"] = "hibari"
    voice: str | None = None
    speed: int = Field(default=170, ge=80, le=450)


class LlmConfig(_EngineSection):
    """[voicebot.llm]: answer generation; "none" answers from the knowledge extractively."""

    engine: Literal["none", "openai"] = "none"
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_tokens: int = Field(default=150, ge=16, le=4096)

    @model_validator(mode="after")
    def _model_named(self) -> LlmConfig:
        if self.engine != "none" and not self.model:
            raise ValueError("model: required when engine is not \"none\"")
        return self


class VoicebotOverride(_Section):
    """[[voicebot.overrides]]: knowledge and wording for one tenant, or one of its extensions."""

    tenant: str
    extension: str | None = None
    knowledge: Path | None = None
    greeting: Template | None = None
    fallback: Template | None = None
    farewell: Template | None = None
    system_prompt: Template | None = None
    transfer_line: Template | None = None
    transfer_failed_line: Template | None = None


class VoicebotConfig(_Section):
    """[voicebot]: the AI voice bot that answers every call."""

    knowledge: Path | None = None
    greeting: Template = DEFAULT_GREETING
    fallback: Template = DEFAULT_FALLBACK
    farewell: Template = DEFAULT_FAREWELL
    system_prompt: Template = DEFAULT_SYSTEM_PROMPT
    transfer_line: Template = DEFAULT_TRANSFER_LINE
    transfer_failed_line: Template = DEFAULT_TRANSFER_FAILED_LINE
    top_k: int = Field(default=3, ge=1, le=20)
    answer_sentences: int = Field(default=2, ge=1, le=10)
    vad_stop: Duration = Field(default=0.3, ge=0.1, le=3.0)
    barge_in: bool = True
    speech_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    processors: tuple[str, ...] = ()
    stt: SttConfig = SttConfig()
    tts: TtsConfig = TtsConfig()
    llm: LlmConfig = LlmConfig()
    overrides: tuple[VoicebotOverride, ...] = ()

    @field_validator("processors")
    @classmethod
    def _processor_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ref in value:
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
                raise ValueError(f'expected "package.module:factory", got {ref!r}')
        return value

    def for_call(self, tenant: str, extension: str) -> VoicebotOverride:
        """The knowledge and wording in force for a call: extension, else tenant, else global."""
        chosen = VoicebotOverride(tenant=tenant, extension=extension)
        matches = [o for o in self.overrides if o.tenant == tenant
                   and o.extension in (None, extension)]
        matches.sort(key=lambda o: o.extension is not None)  # the extension's own wins
        merged = {"knowledge": self.knowledge, "greeting": self.greeting,
                  "fallback": self.fallback, "farewell": self.farewell,
                  "system_prompt": self.system_prompt, "transfer_line": self.transfer_line,
                  "transfer_failed_line": self.transfer_failed_line}
        for override in matches:
            merged |= {k: v for k in merged if (v := getattr(override, k)) is not None}
        return chosen.model_copy(update=merged)

    def knowledge_paths(self) -> list[Path]:
        """Every knowledge folder the config names (global and overrides), once each."""
        paths = [self.knowledge, *(o.knowledge for o in self.overrides)]
        return list(dict.fromkeys(p for p in paths if p is not None))


def _check_voicebot(voicebot: VoicebotConfig, environ: Mapping[str, str],
                    tenants: list[str]) -> list[str]:
    """Problems a running bot would hit: missing folders, modules, API keys, tenants."""
    problems = []
    for path in voicebot.knowledge_paths():
        if not path.is_dir():
            problems.append(f"voicebot.knowledge: {path} is not a directory")
    for index, override in enumerate(voicebot.overrides):
        if override.tenant not in tenants:
            problems.append(f"voicebot.overrides[{index}].tenant: no tenant named "
                            f"{override.tenant!r}")
    for section in ("stt", "tts", "llm"):
        engine_config = getattr(voicebot, section)
        needed = ENGINE_MODULES.get((section, engine_config.engine))
        if needed and importlib.util.find_spec(needed[0]) is None:
            problems.append(f"voicebot.{section}.engine: {engine_config.engine} needs "
                            f"`pip install {needed[1]}`")
        env = engine_config.api_key_env
        if env and not environ.get(env):
            problems.append(f"voicebot.{section}.api_key_env: environment variable {env} "
                            "is not set")
    return problems


class _FileModel(_Section):
    sip: SipConfig
    media: MediaConfig = MediaConfig()
    api: ApiConfig
    hub: HubConfig
    store: StoreConfig
    recordings: RecordingsConfig = RecordingsConfig()
    auth: AuthConfig = AuthConfig()
    daemon: DaemonConfig = DaemonConfig()
    log: LogConfig = LogConfig()
    tenants: tuple[TenantConfig, ...] = Field(min_length=1)
    users: tuple[UserConfig, ...] = ()
    voicebot: VoicebotConfig = VoicebotConfig()
    webhooks: tuple[WebhookConfig, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> _FileModel:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError("tenants: tenant names must be unique")
        trunk_names: set[str] = set()
        for index, trunk in enumerate(self.sip.trunks):
            if trunk.tenant is not None and trunk.tenant not in names:
                raise ValueError(f"sip.trunks[{index}].tenant: no tenant named {trunk.tenant!r}")
            if trunk.name in trunk_names:
                raise ValueError(f"sip.trunks[{index}].name: {trunk.name!r} appears twice")
            trunk_names.add(trunk.name)
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
        urls: set[str] = set()
        for index, hook in enumerate(self.webhooks):
            if hook.tenant is not None and hook.tenant not in names:
                raise ValueError(f"webhooks[{index}].tenant: no tenant named {hook.tenant!r}")
            if hook.url in urls:
                raise ValueError(f"webhooks[{index}].url: {hook.url!r} appears twice")
            urls.add(hook.url)
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
    voicebot: VoicebotConfig = field(default_factory=VoicebotConfig)
    webhooks: tuple[WebhookConfig, ...] = ()
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)

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

    def tenant_for_call(self, source: str, domain: str | None) -> TenantConfig:
        """A call's tenant: its trunk's (by source address) if set, else the callee's domain's."""
        trunk = self.sip.trunk_for(source)
        if trunk is not None and trunk.tenant is not None:
            return next(t for t in self.tenants if t.name == trunk.tenant)
        return self.tenant_for_domain(domain)

    @property
    def recordings_dir(self) -> Path:
        """Where call recordings live: [recordings] dir, else beside the database."""
        return self.recordings.dir or self.store.path.parent / "recordings"

    def tenant_named(self, name: str) -> TenantConfig | None:
        """The tenant of this name, if configured."""
        return next((t for t in self.tenants if t.name == name), None)

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


def _load_webhooks(base: Path, webhooks: tuple[WebhookConfig, ...]) -> tuple[WebhookConfig, ...]:
    """Resolve each webhook's secret_file and read its secret (at least MIN_SECRET_BYTES)."""
    loaded, problems = [], []
    for index, hook in enumerate(webhooks):
        path = _resolve(base, hook.secret_file)
        key = f"webhooks[{index}].secret_file"
        try:
            secret = path.read_bytes().strip() if path is not None else b""
        except OSError as exc:
            problems.append(f"{key}: cannot read {path}: {exc.strerror}")
            continue
        if len(secret) < MIN_SECRET_BYTES:
            problems.append(f"{key}: secret must be at least {MIN_SECRET_BYTES} bytes, "
                            f"got {len(secret)}")
            continue
        resolved = hook.model_copy(update={"secret_file": path})
        resolved._secret = secret
        loaded.append(resolved)
    if problems:
        raise ConfigError(problems)
    return tuple(loaded)


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
    store_path = _resolve(base, model.store.path) or base
    store = model.store.model_copy(update={"path": store_path})
    recordings = model.recordings.model_copy(update={"dir": _resolve(
        base, model.recordings.dir) or store_path.parent / "recordings"})
    auth = model.auth.model_copy(
        update={"jwt_secret_file": _resolve(base, model.auth.jwt_secret_file)}
    )
    media = model.media.model_copy(update={"record_dir": _resolve(base, model.media.record_dir)})
    api = model.api.model_copy(
        update={"tls_cert": _resolve(base, model.api.tls_cert),
                "tls_key": _resolve(base, model.api.tls_key)}
    )
    voicebot = _resolve_voicebot(base, model.voicebot)
    problems = _check_voicebot(voicebot, environ, [t.name for t in model.tenants])
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        sip=model.sip,
        media=media,
        api=api,
        hub=model.hub,
        store=store,
        auth=auth,
        daemon=model.daemon,
        log=model.log,
        tenants=model.tenants,
        users=model.users,
        jwt_secret=_load_secret(auth, environ),
        voicebot=voicebot,
        webhooks=_load_webhooks(base, model.webhooks),
        recordings=recordings,
    )


def _resolve_voicebot(base: Path, voicebot: VoicebotConfig) -> VoicebotConfig:
    overrides = tuple(o.model_copy(update={"knowledge": _resolve(base, o.knowledge)})
                      for o in voicebot.overrides)
    return voicebot.model_copy(update={"knowledge": _resolve(base, voicebot.knowledge),
                                       "overrides": overrides})


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_config(text, path=path, environ=environ)


class Reload(enum.StrEnum):
    """When a changed key takes effect."""

    LIVE = "live"
    RESTART = "restart"


_LIVE, _RESTART = Reload.LIVE, Reload.RESTART
# The one table of what a reload (SIGHUP) does with each key; README's configuration table and
# tests/unit/test_reload_table.py check against it. RESTART keys are bound at start (sockets,
# the port pool, the database, the signing key, the speech worker limiter, the WebSocket
# server's message limit and buffer): a reload keeps their running value and logs each change.
# LIVE keys are read from LiveConfig per use, so the new value is in force for the next call,
# request or connection. A key inside [[tenants]], [[users]] or [[voicebot.overrides]] names
# that field of every entry.
RELOAD: Mapping[str, Reload] = MappingProxyType({
    "sip.listen": _RESTART,
    "sip.trusted": _LIVE,
    "sip.trunks.name": _LIVE,
    "sip.trunks.sources": _LIVE,
    "sip.trunks.tenant": _LIVE,
    "sip.public_address": _LIVE,
    "sip.user_agent": _LIVE,
    "sip.answer_delay": _LIVE,
    "sip.untrusted_rate_limit": _LIVE,
    "sip.untrusted_rate_burst": _LIVE,
    "sip.untrusted_max_transactions": _LIVE,
    "sip.max_tcp_connections": _LIVE,
    "sip.max_tcp_connections_per_source": _LIVE,
    "sip.tcp_idle_timeout": _LIVE,
    "sip.transfer_timeout": _LIVE,
    "media.address": _RESTART,
    "media.public_address": _LIVE,
    "media.rtp_ports": _RESTART,
    "media.timeout": _LIVE,
    "media.jitter_buffer": _LIVE,
    "media.allowed_peers": _LIVE,
    "media.relearn_after": _LIVE,
    "media.record_dir": _LIVE,
    "media.codecs": _LIVE,
    "api.listen": _RESTART,
    "api.cors_origins": _LIVE,
    "api.tls_cert": _RESTART,
    "api.tls_key": _RESTART,
    "api.trusted_proxies": _LIVE,
    "hub.listen": _RESTART,
    "hub.origins": _LIVE,
    "hub.max_subscriptions": _LIVE,
    "hub.queue_size": _LIVE,
    "hub.max_message_size": _RESTART,
    "hub.rate_limit": _LIVE,
    "hub.rate_burst": _LIVE,
    "hub.ping_interval": _LIVE,
    "hub.ping_timeout": _LIVE,
    "hub.send_buffer": _RESTART,
    "hub.public_url": _LIVE,
    "store.path": _RESTART,
    # Stored recordings are named relative to it: moving it is a restart (and a move of files).
    "recordings.dir": _RESTART,
    "auth.jwt_secret_file": _RESTART,
    "auth.issuer": _LIVE,
    "auth.audience": _LIVE,
    "auth.access_token_ttl": _LIVE,
    "auth.refresh_token_ttl": _LIVE,
    "daemon.shutdown_grace": _LIVE,
    "log.level": _LIVE,
    "log.format": _LIVE,
    "log.dtmf_digits": _LIVE,
    "tenants.name": _LIVE,
    "tenants.domains": _LIVE,
    "tenants.default": _LIVE,
    "tenants.transfer_target": _LIVE,
    "tenants.record": _LIVE,
    "tenants.record_notice": _LIVE,
    "tenants.retention_days": _LIVE,
    "users.extension": _LIVE,
    "users.tenant": _LIVE,
    "users.role": _LIVE,
    "users.password_hash": _LIVE,
    "voicebot.knowledge": _LIVE,
    "voicebot.greeting": _LIVE,
    "voicebot.fallback": _LIVE,
    "voicebot.farewell": _LIVE,
    "voicebot.system_prompt": _LIVE,
    "voicebot.transfer_line": _LIVE,
    "voicebot.transfer_failed_line": _LIVE,
    "voicebot.top_k": _LIVE,
    "voicebot.answer_sentences": _LIVE,
    "voicebot.vad_stop": _LIVE,
    "voicebot.barge_in": _LIVE,
    "voicebot.speech_workers": _RESTART,
    "voicebot.processors": _LIVE,
    "voicebot.stt.engine": _LIVE,
    "voicebot.stt.model": _LIVE,
    "voicebot.stt.language": _LIVE,
    "voicebot.stt.base_url": _LIVE,
    "voicebot.stt.api_key_env": _LIVE,
    "voicebot.tts.engine": _LIVE,
    "voicebot.tts.voice": _LIVE,
    "voicebot.tts.speed": _LIVE,
    "voicebot.tts.model": _LIVE,
    "voicebot.tts.base_url": _LIVE,
    "voicebot.tts.api_key_env": _LIVE,
    "voicebot.llm.engine": _LIVE,
    "voicebot.llm.model": _LIVE,
    "voicebot.llm.base_url": _LIVE,
    "voicebot.llm.api_key_env": _LIVE,
    "voicebot.llm.temperature": _LIVE,
    "voicebot.llm.max_tokens": _LIVE,
    "voicebot.overrides.tenant": _LIVE,
    "voicebot.overrides.extension": _LIVE,
    "voicebot.overrides.knowledge": _LIVE,
    "voicebot.overrides.greeting": _LIVE,
    "voicebot.overrides.fallback": _LIVE,
    "voicebot.overrides.farewell": _LIVE,
    "voicebot.overrides.system_prompt": _LIVE,
    "webhooks.url": _LIVE,
    "webhooks.secret_file": _LIVE,
    "webhooks.events": _LIVE,
    "webhooks.tenant": _LIVE,
    "webhooks.retry_base": _LIVE,
    "voicebot.overrides.transfer_line": _LIVE,
    "voicebot.overrides.transfer_failed_line": _LIVE,
})
# Config attributes resolved from a key rather than read from the file: they change, and are
# kept, with that key (the secret may also come from VOICEDASHD_JWT_SECRET).
_DERIVED: Mapping[str, str] = MappingProxyType({"auth.jwt_secret_file": "jwt_secret"})


def file_keys() -> list[str]:
    """Every key the TOML file may set, as dotted paths (list entries by field name)."""
    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        keys = []
        for name, info in model.model_fields.items():
            nested = _section_model(info.annotation)
            keys += walk(nested, f"{prefix}{name}.") if nested else [prefix + name]
        return keys
    return walk(_FileModel, "")


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a [section] or [[list]] field, None for a plain value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_value(config: Config, key: str) -> Any:
    """The value of a dotted key; for a key inside a [[list]], that field of every entry."""
    value: Any = config
    for part in key.split("."):
        if isinstance(value, tuple):
            value = tuple(getattr(item, part) for item in value)
        else:
            value = getattr(value, part)
    return value


def _differs(a: Config, b: Config, key: str) -> bool:
    derived = _DERIVED.get(key)
    return config_value(a, key) != config_value(b, key) or (
        derived is not None and getattr(a, derived) != getattr(b, derived))


def changed_keys(a: Config, b: Config) -> list[str]:
    """The keys of the reload table whose values differ between two configs, in table order."""
    return [key for key in RELOAD if _differs(a, b, key)]


def _with_value(node: Any, path: list[str], value: Any) -> Any:
    """A copy of a frozen config node with the value at path replaced."""
    head, *rest = path
    if rest:
        value = _with_value(getattr(node, head), rest, value)
    if isinstance(node, BaseModel):
        return node.model_copy(update={head: value})
    if isinstance(node, Config):
        return replace(node, **{head: value})
    raise TypeError(f"{head}: a restart-only key cannot sit inside a [[list]]")


def apply_reload(running: Config, loaded: Config) -> Config:
    """The config to put in force after a reload: loaded, with restart-only keys as running."""
    applied = loaded
    for key, when in RELOAD.items():
        if when is Reload.RESTART:
            applied = _with_value(applied, key.split("."), config_value(running, key))
            if derived := _DERIVED.get(key):
                applied = replace(applied, **{derived: getattr(running, derived)})
    return applied
