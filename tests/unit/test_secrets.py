"""TokenStore: tokens by workspace id from a private file and one workspace's variable, never echoed."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from worker.secrets import MissingTokenError, TokenError, TokenStore

SECRET = "tok-super-secret-value"


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def store_for(path: Path | None, default: str | None = None, owner: str = "ws-9") -> TokenStore:
    """A store from the environment; ``default`` is MOLECULE_WORKSPACE_TOKEN, the token of ``owner``."""
    environ = {}
    if path is not None:
        environ["MOLECULE_TOKENS_FILE"] = str(path)
    if default is not None:
        environ["MOLECULE_WORKSPACE_TOKEN"] = default
        environ["MOLECULE_WORKSPACE_ID"] = owner
    return TokenStore.from_env(environ)


def test_token_for_json_file_returns_mapped_token(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-1", "ws-2": "tok-2"}')
    store = store_for(path)
    assert store.token_for("ws-1") == "tok-1"
    assert store.token_for("ws-2") == "tok-2"


def test_token_for_toml_flat_returns_mapped_token(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.toml", 'ws-1 = "tok-1"\n"ws.2" = "tok-2"\n')
    store = store_for(path)
    assert store.token_for("ws-1") == "tok-1"
    assert store.token_for("ws.2") == "tok-2"


def test_token_for_toml_tokens_table_returns_mapped_token(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.toml", '[tokens]\nws-1 = "tok-1"\n')
    assert store_for(path).token_for("ws-1") == "tok-1"


def test_token_for_toml_flat_and_table_are_merged(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.toml", 'ws-1 = "tok-1"\n[tokens]\nws-2 = "tok-2"\n')
    store = store_for(path)
    assert (store.token_for("ws-1"), store.token_for("ws-2")) == ("tok-1", "tok-2")


def test_token_for_same_workspace_flat_and_in_table_is_error(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.toml", f'ws-1 = "{SECRET}"\n[tokens]\nws-1 = "{SECRET}"\n')
    with pytest.raises(TokenError, match="listed twice") as info:
        store_for(path).token_for("ws-1")
    assert SECRET not in str(info.value)


def test_token_for_unlisted_workspace_uses_env_token_of_its_own_workspace(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-1"}')
    store = store_for(path, default="tok-9", owner="ws-9")
    assert store.token_for("ws-1") == "tok-1"
    assert store.token_for("ws-9") == "tok-9"
    with pytest.raises(MissingTokenError):
        store.token_for("ws-2")


def test_token_for_env_token_serves_only_the_workspace_it_belongs_to() -> None:
    """MOLECULE_WORKSPACE_TOKEN is one workspace's identity: never sent for another workspace."""
    store = store_for(None, default="tok-1", owner="ws-1")
    assert store.token_for("ws-1") == "tok-1"
    assert store.token_workspace == "ws-1"
    with pytest.raises(MissingTokenError) as info:
        store.token_for("ws-2")
    assert str(info.value) == (
        "no token for workspace ws-2: MOLECULE_WORKSPACE_TOKEN is the token of ws-1; add ws-2 to MOLECULE_TOKENS_FILE"
    )
    assert isinstance(info.value, LookupError)


def test_from_env_binds_token_to_run_workspace_unless_workspace_id_names_another() -> None:
    run_store = TokenStore.from_env({"MOLECULE_WORKSPACE_TOKEN": "tok-1"}, workspace_id="ws-1")
    assert run_store.token_for("ws-1") == "tok-1"
    named = TokenStore.from_env(
        {"MOLECULE_WORKSPACE_TOKEN": "tok-1", "MOLECULE_WORKSPACE_ID": "ws-1"}, workspace_id="ws-2"
    )
    assert named.token_for("ws-1") == "tok-1"
    with pytest.raises(MissingTokenError, match="MOLECULE_WORKSPACE_TOKEN is the token of ws-1"):
        named.token_for("ws-2")


def test_from_env_token_without_workspace_id_is_error_for_a_worker_of_many() -> None:
    with pytest.raises(TokenError) as info:
        TokenStore.from_env({"MOLECULE_WORKSPACE_TOKEN": SECRET})
    assert str(info.value) == (
        "MOLECULE_WORKSPACE_TOKEN is one workspace's token: set MOLECULE_WORKSPACE_ID to that workspace's id, "
        "or list every workspace's token in MOLECULE_TOKENS_FILE"
    )


def test_token_for_unknown_workspace_raises_missing_token_error(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-1"}')
    with pytest.raises(MissingTokenError) as info:
        store_for(path).token_for("ws-9")
    assert str(info.value) == (
        "no token for workspace ws-9: set MOLECULE_WORKSPACE_TOKEN or add it to MOLECULE_TOKENS_FILE"
    )
    assert info.value.workspace_id == "ws-9"
    assert isinstance(info.value, ValueError) and isinstance(info.value, LookupError)


def test_token_for_group_readable_file_is_refused_with_chmod_hint(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", f'{{"ws-1": "{SECRET}"}}', mode=0o644)
    with pytest.raises(TokenError) as info:
        store_for(path, default="tok-any").token_for("ws-1")
    assert str(info.value) == f"tokens file {path} is readable by others (mode 0644): run chmod 600 {path}"


def test_token_for_after_chmod_600_heals(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-1"}', mode=0o640)
    store = store_for(path)
    with pytest.raises(TokenError, match="mode 0640"):
        store.token_for("ws-1")
    path.chmod(0o600)
    assert store.token_for("ws-1") == "tok-1"


def test_token_for_after_file_edit_returns_new_token(tmp_path: Path) -> None:
    """A connector blocked on a wrong token heals when the file is fixed, without a restart."""
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-old"}')
    store = store_for(path)
    assert store.token_for("ws-1") == "tok-old"
    write_private(path, '{"ws-1": "tok-new-and-longer"}')
    assert store.token_for("ws-1") == "tok-new-and-longer"


def test_token_for_after_same_size_edit_returns_new_token(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-aaa"}')
    store = store_for(path)
    assert store.token_for("ws-1") == "tok-aaa"
    st = path.stat()
    write_private(path, '{"ws-1": "tok-bbb"}')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert store.token_for("ws-1") == "tok-bbb"


def test_token_for_after_broken_file_is_fixed_heals(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": ')
    store = store_for(path, default="tok-any")
    with pytest.raises(TokenError):
        store.token_for("ws-1")
    write_private(path, '{"ws-1": "tok-1"}')
    assert store.token_for("ws-1") == "tok-1"


def test_token_for_unchanged_file_is_not_reread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_private(tmp_path / "tokens.json", '{"ws-1": "tok-1"}')
    store = store_for(path)
    store.token_for("ws-1")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("file re-read while unchanged"))
    assert store.token_for("ws-1") == "tok-1"


def test_token_for_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", f'{{\n  "ws-1": "{SECRET}"\n  "ws-2": "x"\n}}')
    with pytest.raises(TokenError) as info:
        store_for(path).token_for("ws-1")
    message = str(info.value)
    assert str(path) in message and "line 3" in message
    assert SECRET not in message and "\n" not in message
    # The parser's exception holds the whole document; it must not ride along as the cause or context.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_token_for_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.toml", f'ws-1 = "{SECRET}"\nws-2 = {SECRET}\n')
    with pytest.raises(TokenError) as info:
        store_for(path).token_for("ws-1")
    message = str(info.value)
    assert str(path) in message and "line 2" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("tokens.json", '{"ws-1": 42}', "must be a string, got int"),
        ("tokens.json", '["tok"]', "got a list at top level"),
        ("tokens.toml", "ws-1 = 42\n", "must be a string, got int"),
        ("tokens.toml", "[tokens]\nws-1 = true\n", "must be a string, got bool"),
        ("tokens.json", '{"ws-1": ""}', "is empty"),
        ("tokens.yaml", "ws-1: tok\n", "unsupported extension '.yaml'"),
        ("tokens", '{"ws-1": "tok"}', "has no .json or .toml extension"),
    ],
)
def test_token_for_invalid_file_raises_token_error(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write_private(tmp_path / name, text)
    with pytest.raises(TokenError, match=re.escape(expected)) as info:
        store_for(path, default="tok-any").token_for("ws-1")
    assert str(path) in str(info.value)


def test_token_for_missing_file_is_error_not_fallback(tmp_path: Path) -> None:
    """A configured but missing file must not silently send the fallback token to every workspace."""
    path = tmp_path / "nope.json"
    with pytest.raises(TokenError, match="does not exist") as info:
        store_for(path, default=SECRET).token_for("ws-1")
    assert SECRET not in str(info.value)


def test_validate_loads_file_eagerly(tmp_path: Path) -> None:
    path = write_private(tmp_path / "tokens.json", "{oops", mode=0o600)
    with pytest.raises(TokenError, match="not valid JSON"):
        store_for(path).validate()
    write_private(path, '{"ws-1": "tok-1"}')
    store_for(path).validate()


def test_validate_without_any_source_is_error() -> None:
    with pytest.raises(TokenError, match="MOLECULE_WORKSPACE_TOKEN"):
        store_for(None).validate()


def test_validate_env_only_passes() -> None:
    store_for(None, default="tok-any").validate()


def test_repr_and_logs_never_show_tokens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_private(tmp_path / "tokens.json", f'{{"ws-1": "{SECRET}"}}')
    store = store_for(path, default=SECRET + "-default")
    with caplog.at_level(logging.DEBUG, logger="worker.secrets"):
        store.validate()
        assert store.token_for("ws-1") == SECRET
        with pytest.raises(MissingTokenError):
            store_for(path).token_for("ws-2")
    assert SECRET not in repr(store)
    assert "workspace_token=set for ws-9" in repr(store) and str(path) in repr(store)
    assert caplog.records, "expected the file load to be logged"
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.__dict__)


def test_empty_env_values_count_as_unset() -> None:
    store = TokenStore.from_env({"MOLECULE_TOKENS_FILE": "", "MOLECULE_WORKSPACE_TOKEN": ""})
    assert store.tokens_file is None
    with pytest.raises(MissingTokenError):
        store.token_for("ws-1")
