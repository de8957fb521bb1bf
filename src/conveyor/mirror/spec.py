"""How to reach a remote source: protocol, server, folder, credentials and BioMAJ's options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from conveyor.mirror.errors import SourceError
from conveyor.mirror.listings import HttpParseRules
from conveyor.secrets import is_sealed

Protocol = Literal[
    "ftp",
    "ftps",
    "http",
    "https",
    "sftp",
    "s3",
    "gs",
    "local",
    "rsync",
    "directftp",
    "directftps",
    "directhttp",
    "directhttps",
]
DIRECT_PROTOCOLS = ("directftp", "directftps", "directhttp", "directhttps")
# The proxies the HTTP source speaks to (plain or TLS to the proxy; CONNECT for https).
PROXY_SCHEMES = ("http", "https")


class SourceOptions(BaseModel):
    """BioMAJ's download options (its README, "Download options"), typed and checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ssl_verifyhost: bool = True
    ssl_verifypeer: bool = True
    ssl_server_cert: str | None = None
    tcp_keepalive: int = Field(0, ge=0)
    ftp_method: Literal["default", "multicwd", "nocwd", "singlecwd"] = "default"
    ssh_hosts_file: str = "~/.ssh/known_hosts"
    ssh_new_host: Literal["reject", "accept", "add"] = "reject"
    allow_redirections: bool = True
    skip_check_uncompress: bool = False

    @field_validator("ftp_method", "ssh_new_host", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class Credentials(BaseModel):
    """A user name and a password, given in place or named in the environment or a file.

    A password given in place never shows in a repr, an answer or a log, and is sealed when
    stored; ``password_env`` and ``password_file`` keep it out of Conveyor altogether.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str
    password: SecretStr = SecretStr("")
    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        given = [self.password.get_secret_value(), self.password_env, self.password_file]
        if sum(1 for value in given if value) > 1:
            raise ValueError("give one of password, password_env and password_file")
        return self

    @field_validator("password", mode="before")
    @classmethod
    def _unseal(cls, value: object, info: ValidationInfo) -> object:
        if is_sealed(value):
            sealer = (info.context or {}).get("sealer")
            if sealer is None:
                raise ValueError("a sealed password needs the deployment's key to be read")
            return sealer.open(value)
        return value

    @field_serializer("password", when_used="json")
    def _seal(self, value: SecretStr, info: SerializationInfo) -> str:
        # Stored definitions carry the password sealed; every other dump shows stars.
        secret = value.get_secret_value()
        context = info.context or {}
        if not secret:
            return ""
        if context.get("reveal"):
            # A client sending a definition it read from a bank file to the server.
            return secret
        sealer = context.get("sealer")
        return sealer.seal(secret) if sealer is not None else "**********"

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """BioMAJ's ``user:password`` (the password may contain ``:``)."""
        user, _, password = text.partition(":")
        return cls(user=user, password=SecretStr(password))

    def secret(self) -> str:
        """The password, read from where it is kept."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise SourceError(
                    f"the password of {self.user} is in ${self.password_env}, which is not set",
                    permanent=True,
                )
            return value
        if self.password_file:
            try:
                return Path(self.password_file).read_text().strip()
            except OSError as error:
                raise SourceError(
                    f"the password file {self.password_file} cannot be read: {error.strerror}",
                    permanent=True,
                ) from None
        return self.password.get_secret_value()


class SourceSpec(BaseModel):
    """Everything needed to list and read one remote folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    # Host, or host:port; for s3 and gs the bucket; for local the folder (remote_dir may
    # then be empty); for rsync [user@]host, or empty for a local path in remote_dir.
    server: str = ""
    remote_dir: str = "/"
    credentials: Credentials | None = None
    proxy: str | None = None
    proxy_auth: Credentials | None = None
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str] = Field(default_factory=dict)
    options: SourceOptions = SourceOptions()
    http_parse: HttpParseRules | None = None
    # fsspec storage options of object stores (endpoint_url, region, anon, ...).
    storage_options: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(60.0, gt=0)
    # A transfer that moves no byte for this long is stalled (BioMAJ had none: biomaj#27).
    stall_timeout: float = Field(60.0, gt=0)

    @field_validator("proxy")
    @classmethod
    def _checked_proxy(cls, value: str | None) -> str | None:
        if value and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            # A login in the URL would show wherever the URL is shown; proxy_auth is sealed.
            raise ValueError("give the proxy's login in proxy_auth, not inside the proxy URL")
        scheme = value.split("://", 1)[0].lower() if value and "://" in value else "http"
        if scheme not in PROXY_SCHEMES:
            raise ValueError(f"a {scheme}:// proxy is not supported; use http:// or https://")
        return value or None

    @property
    def direct(self) -> bool:
        """Known file URLs rather than a folder to list."""
        return self.protocol in DIRECT_PROTOCOLS

    @property
    def host(self) -> str:
        """The host name without any port."""
        host = self.server.rsplit("@", 1)[-1]
        if host.startswith("["):
            return host[1:].split("]", 1)[0]
        return host.split(":", 1)[0]

    def port(self, default: int) -> int:
        """The port given in ``server``, or ``default``."""
        host = self.server.rsplit("@", 1)[-1]
        tail = host.rsplit("]", 1)[-1]
        if ":" in tail:
            return int(tail.rsplit(":", 1)[1])
        return default
