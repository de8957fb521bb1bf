"""Settings: defaults, environment, TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import ConfigError, is_loopback, load_settings, redact_url


def test_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'conveyor.db'}"
    assert settings.archive_url == f"file://{tmp_path / 'archive'}"
    assert settings.auth == "none"
    assert settings.policy == "open"
    assert settings.move_roots == []
    assert not settings.uses_broker


def test_environment_and_published_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("DATABASE_CONNECT_ATTEMPTS", "7")
    monkeypatch.setenv("CONVEYOR_MOVE_ROOTS", '["/srv/incoming"]')
    settings = load_settings()
    assert settings.uses_broker
    assert settings.db_connect_attempts == 7
    assert settings.move_roots == [Path("/srv/incoming")]


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conveyor.toml"
    config.write_text('policy = "strict"\nworkers = 7\n')
    monkeypatch.setenv("CONVEYOR_CONFIG", str(config))
    monkeypatch.setenv("CONVEYOR_WORKERS", "3")
    settings = load_settings()
    assert settings.policy == "strict"
    assert settings.workers == 3


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("CONVEYOR_AUTH", "maybe", "CONVEYOR_AUTH"),
        ("CONVEYOR_DATABASE_URL", "oracle://x", "must start with one of"),
        ("CONVEYOR_BROKER_URL", "kafka://x", "must start with one of"),
        ("CONVEYOR_WORKERS", "0", "CONVEYOR_WORKERS"),
        ("CONVEYOR_MOVE_ROOTS", '["relative/dir"]', "not an absolute path"),
        ("CONVEYOR_TRUSTED_PROXIES", '["not-an-ip"]', "not an IP address"),
        ("CONVEYOR_UNKNOWN_THING", "1", None),
    ],
)
def test_invalid_values_give_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str | None
) -> None:
    monkeypatch.setenv(variable, value)
    if words is None:
        load_settings()  # unknown environment variables are not ours to judge
        return
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("configuration error: ")
    assert words in message
    assert "\n" not in message


def test_proxy_header_needs_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_AUTH", "proxy-header")
    with pytest.raises(ConfigError, match="CONVEYOR_TRUSTED_PROXIES"):
        load_settings()


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


def test_passwords_are_redacted_and_loopback_is_recognised() -> None:
    assert redact_url("postgresql://u:secret@db/x") == "postgresql://u:***@db/x"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")
