"""The environment of backend commands: the allowlist, ``-o pass_env`` parsing, secrets never passed, redaction."""

from __future__ import annotations

import pytest

from activities.backends.process.environment import (
    BASE_VARIABLES,
    METADATA_VARIABLES,
    child_env,
    never_passed,
    parse_pass_env,
    redact,
)

WORKER = {
    "PATH": "/usr/bin",
    "HOME": "/home/w",
    "LC_ALL": "C.UTF-8",
    "LCX": "not a locale variable",
    "MOLECULE_CODEC_KEYS": "k",
    "MOLECULE_API_URL": "http://p",
    "MOLECULE_WORKSPACE_TOKEN": "t",
    "TEMPORAL_NAMESPACE": "default",
    "TEMPORAL_TLS": "true",
    "TEMPORAL_TLS_CLIENT_KEY_DATA": "-----BEGIN",
    "TEMPORAL_API_KEY": "a",
    "AWS_REGION": "eu-west-1",
}


def test_child_env_copies_allowed_names_and_prefixes_only():
    assert child_env(WORKER, BASE_VARIABLES) == {"PATH": "/usr/bin", "HOME": "/home/w", "LC_ALL": "C.UTF-8"}


def test_child_env_prefixes_skip_worker_secrets():
    env = child_env(WORKER, ("MOLECULE_*", "TEMPORAL_*"))

    assert env == {"MOLECULE_API_URL": "http://p", "TEMPORAL_NAMESPACE": "default"}


def test_never_passed_is_case_insensitive_and_covers_the_worker_secrets():
    secrets = ["molecule_codec_keys", "MOLECULE_TOKENS_FILE", "MOLECULE_INBOUND_SECRET", "TEMPORAL_TLS"]
    secrets += ["TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_GRPC_META_X", "TEMPORAL_CONFIG_FILE", "MOLECULE_X_KEY"]

    assert [name for name in secrets if not never_passed(name)] == []
    assert not [name for name in (*METADATA_VARIABLES, "MOLECULE_API_URL", "TEMPORAL_ADDRESS") if never_passed(name)]


def test_parse_pass_env_keeps_order_drops_blanks_and_duplicates():
    assert parse_pass_env(" A ,, B_*, A,") == ("A", "B_*")
    assert parse_pass_env("") == ()


@pytest.mark.parametrize("entry", ["TEMPORAL_TLS*", "TEMPORAL_TLS_CLIENT_*", "TEMPORAL_GRPC_META_*"])
def test_parse_pass_env_refuses_prefixes_only_secrets_can_match(entry: str):
    with pytest.raises(ValueError, match="is a secret of the worker"):
        parse_pass_env(entry)


def test_redact_replaces_secret_looking_values_longest_first_and_keeps_the_rest():
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-0123456789",
        "SHORT_TOKEN": "abc",  # too short to redact without mangling ordinary text
        "PROXY_AUTH": "sk-ant-0123456789-extended",
        "HOME": "/home/worker-directory",
    }
    text = "keys sk-ant-0123456789-extended and sk-ant-0123456789 abc in /home/worker-directory"

    assert redact(text, env) == "keys [PROXY_AUTH] and [ANTHROPIC_API_KEY] abc in /home/worker-directory"
