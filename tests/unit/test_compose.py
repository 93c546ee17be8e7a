"""docker-compose.temporal.yml: no Docker engine here, so the file is parsed and its shape checked."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.temporal.yml").read_text())


def test_compose_has_postgres_temporal_ui_and_worker_services() -> None:
    services = load()["services"]
    assert {"postgresql", "temporal", "temporal-ui", "worker"} <= set(services)
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert "7233:7233" in services["temporal"]["ports"]
    assert "8080:8080" in services["temporal-ui"]["ports"]


def test_compose_worker_is_built_here_and_reads_tokens_from_a_secret() -> None:
    compose = load()
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").is_file()
    env = worker["environment"]
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "MOLECULE_API_URL" in env
    assert env["MOLECULE_TOKENS_FILE"] == "/run/secrets/molecule_tokens"
    assert "molecule_tokens" in worker["secrets"] and "molecule_tokens" in compose["secrets"]
    assert not any("TOKEN" in key and key != "MOLECULE_TOKENS_FILE" for key in env), "no token in plain env"


def test_compose_registers_the_connector_search_attributes() -> None:
    command = " ".join(load()["services"]["temporal-admin-tools"]["command"])
    assert "--name WorkspaceId --type Keyword" in command
    assert "--name ConnectorPhase --type Keyword" in command
