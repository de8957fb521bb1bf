"""Settings from the environment (``CONVEYOR_*``) and an optional TOML file.

URLs pick backends: ``CONVEYOR_DATABASE_URL`` the database, ``CONVEYOR_ARCHIVE_URL`` the blob
store, ``CONVEYOR_CART_STORE_URL`` where built cart bundles are kept and
``CONVEYOR_BROKER_URL`` the executor (unset: in-process workers).
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss")
LOOPBACK_HOSTS = ("localhost",)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line a person can act on."""


def _config_file() -> Path | None:
    path = os.environ.get("CONVEYOR_CONFIG")
    return Path(path) if path else None


class Settings(BaseSettings):
    """Every knob Conveyor reads, with the defaults of the embedded single-machine mode."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )

    data_dir: Path = Path("conveyor-data")
    database_url: str = ""
    archive_url: str = ""
    broker_url: str = ""
    auth: Literal["token", "proxy-header", "none"] = "none"
    proxy_header: str = "X-Http-Authed-User"
    trusted_proxies: list[str] = Field(default_factory=list)
    admin_users: list[str] = Field(default_factory=list)
    default_user: str = "conveyor"
    policy: Literal["open", "strict"] = "open"
    move_roots: list[Path] = Field(default_factory=list)

    cart_store_url: str = ""
    cart_mode: Literal["stream", "build"] = "stream"
    cart_ttl_seconds: float = Field(7 * 86400.0, gt=0)
    motrpac_notify_url: str = ""
    motrpac_project: str = ""
    pacifica_archive_url: str = Field(
        "",
        validation_alias=AliasChoices("CONVEYOR_PACIFICA_ARCHIVE_URL", "ARCHIVE_INTERFACE_URL"),
    )
    cart_cache_url: str = ""
    cart_cache_high_bytes: int = Field(50 * 1024**3, ge=1)
    cart_cache_low_bytes: int = Field(40 * 1024**3, ge=0)
    lru_buffer_seconds: float = Field(
        3600.0,
        ge=0,
        validation_alias=AliasChoices("CONVEYOR_LRU_BUFFER_SECONDS", "LRU_BUFFER_TIME"),
    )
    remote_stage_timeout_seconds: float = Field(86400.0, gt=0)
    # Seals stored credentials (Fernet key, urlsafe base64 of 32 bytes); unset, a key file
    # in data_dir is made on first use. Every API and worker process needs the same key.
    secret_key: str = ""
    # Where mirror runs download before the archive takes the files (kept for resume).
    mirror_dir: Path | None = None
    # Worker processes that fetch mirror runs' small files (FTP, HTTP, SFTP, into a folder
    # archive), each on an event loop of its own; 0 fetches them in the job's process.
    mirror_processes: int = Field(0, ge=0, le=64)
    # The BioMAJ download service's Redis (sessions, progress, errors); unset, its web API
    # under /api/download answers 503.
    biomaj_redis_url: str = ""
    biomaj_redis_prefix: str = "biomaj"

    # Hosts the server may call for users (webhooks, notify URLs, brokers): networks,
    # addresses or names. Link-local and metadata hosts are always refused; with an allow
    # list, only what it names is reachable.
    target_allow: list[str] = Field(default_factory=list)
    target_deny: list[str] = Field(default_factory=list)
    # Event delivery: attempts and age before a delivery is dead-lettered, backoff bounds,
    # the circuit breaker, and how many sends run at once per dispatcher.
    delivery_max_attempts: int = Field(12, ge=1)
    delivery_max_age_seconds: float = Field(86400.0, gt=0)
    delivery_backoff_seconds: float = Field(1.0, gt=0)
    delivery_backoff_max_seconds: float = Field(3600.0, gt=0)
    delivery_timeout_seconds: float = Field(10.0, gt=0)
    delivery_concurrency: int = Field(16, ge=1, le=512)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_seconds: float = Field(30.0, gt=0)
    breaker_max_cooldown_seconds: float = Field(3600.0, gt=0)

    # Consumers: where their code and venvs are kept (per machine), how many run at once in
    # this process, and the defaults of their limits. ``public_url`` is the address a
    # consumer calls back (``CONVEYOR_URL``); ``serve`` fills it in from its own address.
    public_url: str = ""
    consumer_dir: Path | None = None
    consumer_workers: int = Field(2, ge=1, le=64)
    consumer_timeout_seconds: float = Field(3600.0, gt=0)
    consumer_memory_bytes: int = Field(4 * 1024**3, ge=64 * 1024**2)
    consumer_max_depth: int = Field(5, ge=1, le=100)
    # Every run's largest file, open files, and what ``DST/uploads`` may hold to publish.
    consumer_file_bytes: int = Field(16 * 1024**3, ge=1024**2)
    consumer_open_files: int = Field(1024, ge=64, le=1024**2)
    consumer_uploads_bytes: int = Field(64 * 1024**3, ge=1)
    # The longest life a caller may ask for its own consumer-run token (``consumer serve``
    # asks for its run timeout plus an hour): a leaked one ends by itself.
    run_token_max_seconds: float = Field(86400.0, gt=0)

    db_connect_attempts: int = Field(
        10,
        ge=1,
        validation_alias=AliasChoices("CONVEYOR_DB_CONNECT_ATTEMPTS", "DATABASE_CONNECT_ATTEMPTS"),
    )
    db_connect_wait: float = Field(
        2.0,
        ge=0,
        validation_alias=AliasChoices("CONVEYOR_DB_CONNECT_WAIT", "DATABASE_CONNECT_WAIT"),
    )

    workers: int = Field(2, ge=1, le=256)
    lease_seconds: float = Field(60.0, gt=0)
    sweep_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    upload_stall_seconds: float = Field(600.0, gt=0)
    temp_max_age_seconds: float = Field(86400.0, gt=0)
    # Blobs a failed or finished job made and no longer needs wait this long before they
    # are deleted (if nothing refers to them by then); 0 deletes them at once.
    spent_blob_grace_seconds: float = Field(900.0, ge=0)

    max_members: int = Field(1_000_000, ge=1)
    max_metadata_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_name_bytes: int = Field(4096, ge=255)

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    tracing: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment wins over the TOML file named by ``CONVEYOR_CONFIG``."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value

    @field_validator("move_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        for root in value:
            if not root.is_absolute():
                raise ValueError(f"{str(root)!r} is not an absolute path")
        return [root.resolve() for root in value]

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        data_dir = self.data_dir.expanduser().absolute()
        self.data_dir = data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'conveyor.db'}"
        if not self.archive_url:
            self.archive_url = f"file://{data_dir / 'archive'}"
        if not self.cart_store_url:
            self.cart_store_url = f"file://{data_dir / 'bundles'}"
        if not self.cart_cache_url:
            self.cart_cache_url = f"file://{data_dir / 'cache'}"
        if self.mirror_dir is None:
            self.mirror_dir = data_dir / "mirror"
        if self.consumer_dir is None:
            self.consumer_dir = data_dir / "consumers"
        if self.cart_cache_low_bytes > self.cart_cache_high_bytes:
            raise ValueError("CONVEYOR_CART_CACHE_LOW_BYTES must not exceed the high watermark")
        _check_scheme("database_url", self.database_url, DATABASE_SCHEMES)
        if self.broker_url:
            _check_scheme("broker_url", self.broker_url, BROKER_SCHEMES)
        if self.public_url:
            _check_scheme("public_url", self.public_url, ("http", "https"))
        if self.auth == "proxy-header" and not self.trusted_proxies:
            raise ValueError("auth 'proxy-header' needs CONVEYOR_TRUSTED_PROXIES")
        return self

    @cached_property
    def uses_broker(self) -> bool:
        """True when jobs go to Celery workers instead of the in-process pool."""
        return bool(self.broker_url)


def _check_scheme(name: str, url: str, allowed: tuple[str, ...]) -> None:
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in allowed:
        raise ValueError(f"{name} {redact_url(url)!r} must start with one of {', '.join(allowed)}")


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _describe(error: ValidationError) -> str:
    first: dict[str, Any] = dict(error.errors()[0])
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not location:
        return message
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"CONVEYOR_{location.upper()}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise :class:`ConfigError` with one line saying what is wrong."""
    path = _config_file()
    if path is not None and not path.is_file():
        raise ConfigError(f"configuration error: CONVEYOR_CONFIG names {path}, which is not a file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"configuration error: {_describe(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"configuration error: {exc}") from None
