from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_config, read_dotenv


def test_defaults_are_the_seed_defaults() -> None:
    config = load_config({}, dotenv=None)
    assert config.port == 3000
    assert config.accounts == {"996-sdassds-86-asd": "secretkey-996"}
    assert config.enable_db is False
    assert config.switch_latency_threshold_ms == 500
    assert config.switch_failure_count == 3


def test_environment_values_are_parsed() -> None:
    config = load_config(
        {
            "PORT": "4000",
            "ACCOUNTS": "a=1, b=2",
            "ENABLE_DB": "true",
            "SWITCH_FAILURE_COUNT": "5",
            "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
        },
        dotenv=None,
    )
    assert (config.port, config.accounts, config.enable_db) == (4000, {"a": "1", "b": "2"}, True)
    assert config.switch_failure_count == 5
    assert config.provider_settings()["OPENAI_REALTIME_URL"] == "ws://127.0.0.1:9/v1/realtime"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("ENABLE_DB", "maybe"),
        ("ACCOUNTS", "no-secret"),
        ("ACCOUNTS", "=x"),
        ("SWITCH_LATENCY_THRESHOLD_MS", "-1"),
        ("NATS_URL", "localhost:4222"),
        ("OPENAI_REALTIME_URL", "https://api.openai.com"),
    ],
)
def test_invalid_values_fail_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value}, dotenv=None)


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nexport PORT=3100\nHOST='0.0.0.0'\nOPENAI_API_KEY=sk-1 # trailing\n")
    assert read_dotenv(dotenv) == {"PORT": "3100", "HOST": "0.0.0.0", "OPENAI_API_KEY": "sk-1"}
    config = load_config({"PORT": "3200"}, dotenv=dotenv)
    assert (config.port, config.host, config.openai_api_key) == (3200, "0.0.0.0", "sk-1")


def test_flags_override_everything(tmp_path: Path) -> None:
    assert load_config({"PORT": "3200"}, dotenv=None, port=3300).port == 3300
