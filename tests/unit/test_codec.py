"""The AES-GCM payload codec: round trip, key rotation, plain pass-through, clear errors, key parsing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from activities.messages import PlatformTarget
from worker import cli
from worker.codec import (
    ENCODING,
    KEY_ID_METADATA,
    KEYS_ENV,
    CodecError,
    CodecKey,
    EncryptionCodec,
    data_converter,
    parse_keys,
    with_codec,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
SECRET = "the launch code is 7781"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def codec(*keys: tuple[str, bytes]) -> EncryptionCodec:
    return EncryptionCodec([CodecKey(key_id=key_id, key=key) for key_id, key in keys])


async def test_codec_round_trip_encrypts_and_stamps_key_id() -> None:
    converter = with_codec(codec(("a", KEY_A)))
    target = PlatformTarget(workspace_id="ws-1", platform_url=f"https://x.test/{SECRET}")
    [payload] = await converter.encode([target])
    assert payload.metadata["encoding"] == ENCODING
    assert payload.metadata[KEY_ID_METADATA] == b"a"
    assert SECRET.encode() not in payload.SerializeToString()
    assert await converter.decode([payload], [PlatformTarget]) == [target]


async def test_codec_same_value_twice_gives_different_ciphertexts() -> None:
    converter = with_codec(codec(("a", KEY_A)))
    first, second = await converter.encode([SECRET, SECRET])
    assert first.data != second.data  # a fresh nonce per payload


async def test_codec_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old = with_codec(codec(("2026-04", KEY_A)))
    rotated = with_codec(codec(("2026-05", KEY_B), ("2026-04", KEY_A)))
    [before] = await old.encode([SECRET])
    [after] = await rotated.encode([SECRET])
    assert after.metadata[KEY_ID_METADATA] == b"2026-05"
    assert await rotated.decode([before, after], [str, str]) == [SECRET, SECRET]


async def test_codec_plain_payload_passes_through_decode() -> None:
    """A workflow started with plain JSON (temporal workflow start) still decodes with the codec on."""
    [plain] = await pydantic_data_converter.encode([{"workspace_id": "ws-1"}])
    enc = codec(("a", KEY_A))
    assert await enc.decode([plain]) == [plain]
    assert await with_codec(enc).decode([plain], [dict]) == [{"workspace_id": "ws-1"}]


async def test_codec_unknown_key_id_raises_clear_error() -> None:
    [payload] = await codec(("retired", KEY_A)).encode([Payload(data=b"x")])
    with pytest.raises(CodecError, match=r"key id 'retired'.*MOLECULE_CODEC_KEYS.*holds: current"):
        await codec(("current", KEY_B)).decode([payload])


async def test_codec_wrong_key_under_same_id_fails_authentication() -> None:
    [payload] = await codec(("a", KEY_A)).encode([Payload(data=b"x")])
    with pytest.raises(CodecError, match="fails authentication"):
        await codec(("a", KEY_B)).decode([payload])


async def test_codec_failure_message_encrypted_and_restored() -> None:
    converter = with_codec(codec(("a", KEY_A)))
    failure = Failure()
    await converter.encode_failure(ApplicationError(SECRET, type="Permanent"), failure)
    assert SECRET.encode() not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError) and decoded.message == SECRET and decoded.type == "Permanent"


def test_parse_keys_first_encrypts_all_listed() -> None:
    keys = parse_keys(f" new:{b64(KEY_B)} , old:{base64.urlsafe_b64encode(KEY_A).decode()}")
    assert [k.key_id for k in keys] == ["new", "old"]
    assert keys[1].key == KEY_A
    assert codec(*((k.key_id, k.key) for k in keys)).key_id == "new"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nocolon", "keyid:base64key"),
        (f":{b64(KEY_A)}", "keyid:base64key"),
        ("a:!!!notbase64", "not valid base64"),
        (f"a:{b64(b'short')}", "5 bytes"),
        (f"a:{b64(KEY_A)},a:{b64(KEY_B)}", "listed twice"),
        (" , ", "holds no key"),
    ],
)
def test_parse_keys_bad_value_one_line_without_key_material(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as info:
        parse_keys(text)
    assert b64(KEY_A) not in str(info.value) and "\n" not in str(info.value)


def test_data_converter_plain_without_keys_encrypting_with_keys() -> None:
    assert data_converter({}) is pydantic_data_converter
    converter = data_converter({KEYS_ENV: f"a:{b64(KEY_A)}"})
    assert isinstance(converter.payload_codec, EncryptionCodec)
    with pytest.raises(CodecError):
        data_converter({KEYS_ENV: "garbage"})


# --- CLI wiring ------------------------------------------------------------------------------------------------

PLAIN_HISTORY = str(Path(__file__).resolve().parent.parent / "histories" / "plain_delivery.json")


def test_cli_replay_with_codec_keys_still_replays_plain_history(monkeypatch, capsys) -> None:
    monkeypatch.setenv(KEYS_ENV, f"a:{b64(KEY_A)}")
    cli.main(["replay", "--history", PLAIN_HISTORY])
    assert capsys.readouterr().out.startswith("OK ")


@pytest.mark.parametrize(
    ("keys", "args", "needle"),
    [
        ("garbage", ["replay", "--history", PLAIN_HISTORY], "keyid:base64key"),
        (None, ["codec-server"], "MOLECULE_CODEC_KEYS is not set"),
    ],
    ids=["malformed-keys", "codec-server-without-keys"],
)
def test_cli_codec_misconfiguration_exits_2_one_line(monkeypatch, capsys, keys, args, needle) -> None:
    if keys is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, keys)
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and needle in err[0]
