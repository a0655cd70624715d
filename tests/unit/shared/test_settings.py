"""Settings: defaults, parsing, and the one-line fail-fast error naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from shared.settings import ConfigError, Settings, describe_validation_error


def test_defaults_match_the_protocol_table() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/herald"
    assert settings.jwt_algorithms == ("HS256",)
    assert (settings.gateway_host, settings.gateway_port) == ("127.0.0.1", 8765)
    assert settings.allowed_origins is None
    assert settings.retention_days == 90
    assert settings.worker_http_port == 8766


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_JWT_ALGORITHMS", "RS256, ES256")
    monkeypatch.setenv("HERALD_ALLOWED_ORIGINS", "https://a.example,https://b.example")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.jwt_algorithms == ("RS256", "ES256")
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize("algorithms", ["none", "HS256,none", "NONE", ""])
def test_alg_none_is_never_accepted(monkeypatch: pytest.MonkeyPatch, algorithms: str) -> None:
    monkeypatch.setenv("HERALD_JWT_ALGORITHMS", algorithms)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert describe_validation_error(info.value).startswith("HERALD_JWT_ALGORITHMS:")


def test_public_key_from_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    key = Path(str(tmp_path)) / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    monkeypatch.setenv("HERALD_JWT_PUBLIC_KEY", f"@{key}")
    assert Settings(_env_file=None).jwt_public_key == key.read_text()  # type: ignore[call-arg]
    monkeypatch.setenv("HERALD_JWT_PUBLIC_KEY", "@/nonexistent/key.pem")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "HERALD_JWT_PUBLIC_KEY" in describe_validation_error(info.value)


def test_gateway_requires_a_way_to_verify_tokens() -> None:
    with pytest.raises(ConfigError, match=r"^HERALD_JWT_SECRET"):
        Settings(_env_file=None).require_jwt_key()  # type: ignore[call-arg]
    Settings(_env_file=None, jwt_jwks_url="https://idp.test/jwks").require_jwt_key()  # type: ignore[call-arg]


def refusal(**settings: object) -> str:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, **settings)  # type: ignore[arg-type]
    return describe_validation_error(refused.value)


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        "x" * 31,
        "replace-me-with-at-least-32-random-bytes",
        "changeme-changeme-changeme-changeme",
        "CHANGEME-CHANGEME-CHANGEME-CHANGEME",
    ],
)
def test_short_and_placeholder_hs_secrets_are_refused_naming_the_variable(secret: str) -> None:
    message = refusal(jwt_secret=secret)
    assert message.startswith("HERALD_JWT_SECRET:")
    assert secret not in message  # the one line never echoes the secret


def test_a_random_32_byte_secret_is_accepted_and_an_empty_one_means_unset() -> None:
    assert Settings(_env_file=None, jwt_secret="k" * 16 + "Zq3vX9pL2mN8rT5w").jwt_secret is not None  # type: ignore[call-arg]
    assert Settings(_env_file=None, jwt_secret="").jwt_secret is None  # type: ignore[call-arg]


def test_plain_http_jwks_urls_are_refused_unless_allowed() -> None:
    assert refusal(jwt_jwks_url="http://idp.test/jwks").startswith("HERALD_JWT_JWKS_URL:")
    allowed = Settings(_env_file=None, jwt_jwks_url="http://idp.test/jwks", jwt_jwks_allow_http=True)  # type: ignore[call-arg]
    assert allowed.jwt_jwks_url == "http://idp.test/jwks"


def test_malformed_setting_stops_the_process_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "herald_ops.cli", "token", "--user", "u1"],
        env={"HERALD_RETENTION_DAYS": "soon", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("herald: configuration error: HERALD_RETENTION_DAYS:")
