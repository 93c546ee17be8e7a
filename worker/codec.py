"""Payload encryption: an AES-GCM ``PayloadCodec``, the data converter that uses it, and the Web UI codec server.

Message bodies and replies cross Temporal as activity results and inputs, so without a codec they sit in history in
clear text. With ``MOLECULE_CODEC_KEYS`` set, every payload a client or worker of this project writes is encrypted
before it leaves the process (Temporal docs, "Payload codec"); failure messages and stack traces too, since an error
can quote a message.

- Keys: ``MOLECULE_CODEC_KEYS`` is ``keyid:base64key[,keyid:base64key...]`` with 16-, 24- or 32-byte AES keys
  (``openssl rand -base64 32``). The first key encrypts; every listed key decrypts, so a key is rotated by putting
  the new one first and dropping the old one once no history that needs it is kept.
- Format: the encoded payload's metadata is ``encoding: binary/encrypted`` and ``encryption-key-id: <key id>``; its
  data is a 12-byte random nonce followed by the AES-GCM ciphertext of the whole original payload (metadata
  included), the layout of temporalio/samples-python ``encryption/``, so other SDKs' sample codecs interoperate.
- Payloads without that encoding pass through ``decode`` untouched: a workflow started with plain JSON (``temporal
  workflow start``) still decodes. An unknown key id or a payload that fails authentication raises
  :class:`CodecError` naming the key id (never key material).
- ``molecule-connect codec-server`` serves :func:`codec_app`: the Web UI's ``POST /encode`` and ``POST /decode``
  (body ``{"payloads": [...]}`` in proto JSON) with CORS for the UI's origin. Anyone who can reach it can decrypt,
  so it listens on loopback by default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

if TYPE_CHECKING:
    from fastapi import FastAPI

KEYS_ENV = "MOLECULE_CODEC_KEYS"
"""Environment variable holding the codec keys (module docstring)."""
ENCODING = b"binary/encrypted"
"""``encoding`` metadata of an encrypted payload."""
KEY_ID_METADATA = "encryption-key-id"
"""Metadata naming the key a payload was encrypted with."""
NONCE_BYTES = 12
"""AES-GCM's standard nonce size; a fresh random nonce per payload."""
KEY_SIZES = (16, 24, 32)
DEFAULT_CORS_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")
"""The Web UI of ``temporal server start-dev``."""


class CodecError(ValueError):
    """The codec keys are misconfigured, or a payload cannot be decrypted; one line, never key material."""


@dataclass(frozen=True)
class CodecKey:
    """One AES key and the id stamped on what it encrypts.

    Attributes:
        key_id: Short name, e.g. ``2026-05``; written in every payload's metadata.
        key: 16, 24 or 32 raw bytes.
    """

    key_id: str
    key: bytes = dataclasses.field(repr=False)


def parse_keys(text: str) -> list[CodecKey]:
    """Parse ``keyid:base64key[,keyid:base64key...]`` (standard or URL-safe base64; spaces around items ignored).

    Raises:
        CodecError: An item without ``:``, an empty or repeated key id, bad base64, or a key that is not 16, 24
            or 32 bytes; the message names the key id only.
    """
    keys: list[CodecKey] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        if not sep or not key_id:
            raise CodecError(f"{KEYS_ENV}: each key must be keyid:base64key (comma-separated)")
        if any(k.key_id == key_id for k in keys):
            raise CodecError(f"{KEYS_ENV}: key id {key_id!r} is listed twice")
        try:
            decode = base64.urlsafe_b64decode if ("-" in encoded or "_" in encoded) else base64.b64decode
            key = decode(encoded.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise CodecError(f"{KEYS_ENV}: key {key_id!r} is not valid base64") from None
        if len(key) not in KEY_SIZES:
            raise CodecError(
                f"{KEYS_ENV}: key {key_id!r} is {len(key)} bytes; AES needs 16, 24 or 32 (openssl rand -base64 32)"
            )
        keys.append(CodecKey(key_id=key_id, key=key))
    if not keys:
        raise CodecError(f"{KEYS_ENV} is set but holds no key: write keyid:base64key")
    return keys


class EncryptionCodec(PayloadCodec):
    """AES-GCM encryption of whole payloads, with key rotation (format in the module docstring).

    Args:
        keys: The first encrypts; all decrypt.

    Raises:
        CodecError: No keys.
    """

    def __init__(self, keys: Sequence[CodecKey]) -> None:
        if not keys:
            raise CodecError("the payload codec needs at least one key")
        self.key_id = keys[0].key_id
        """Id of the key new payloads are encrypted with."""
        self._ciphers = {k.key_id: AESGCM(k.key) for k in keys}

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Encrypt every payload with the first key."""
        cipher = self._ciphers[self.key_id]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: self.key_id.encode()},
                    data=nonce + cipher.encrypt(nonce, payload.SerializeToString(), None),
                )
            )
        return encoded

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Decrypt encrypted payloads; pass any other payload through unchanged.

        Raises:
            CodecError: The key id is not configured, or the data fails authentication (wrong key, corrupted).
        """
        return [self._decrypt(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    def _decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(sorted(self._ciphers))
            raise CodecError(
                f"payload is encrypted with key id {key_id or '(none)'!r}, which {KEYS_ENV} does not hold "
                f"(it holds: {known}); add that key to decrypt it"
            )
        data = payload.data
        try:
            return Payload.FromString(cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None))
        except InvalidTag:
            raise CodecError(
                f"payload encrypted with key id {key_id!r} fails authentication: the key under that id differs "
                "from the one that encrypted it, or the data is corrupted"
            ) from None


def codec_from_env(environ: Mapping[str, str] = os.environ) -> EncryptionCodec | None:
    """The codec for ``MOLECULE_CODEC_KEYS``, or ``None`` when it is unset or empty.

    Raises:
        CodecError: The variable is set but malformed (:func:`parse_keys`).
    """
    text = environ.get(KEYS_ENV, "").strip()
    return EncryptionCodec(parse_keys(text)) if text else None


def data_converter(environ: Mapping[str, str] = os.environ) -> DataConverter:
    """The project's data converter: ``pydantic_data_converter``, with the codec when ``MOLECULE_CODEC_KEYS`` is set.

    With the codec, failures are converted with encoded attributes, so error messages and stack traces are
    encrypted as well (decoded again for the workflow, the client and the Web UI's codec server).

    Raises:
        CodecError: ``MOLECULE_CODEC_KEYS`` is set but malformed.
    """
    codec = codec_from_env(environ)
    return pydantic_data_converter if codec is None else with_codec(codec)


def with_codec(codec: PayloadCodec) -> DataConverter:
    """``pydantic_data_converter`` encoding payloads (and failure attributes) with ``codec``."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# --- codec server --------------------------------------------------------------------------------------------


def codec_app(codec: PayloadCodec, *, cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS) -> FastAPI:
    """The Temporal Web UI codec endpoint (Temporal docs, "Codec Server") as a FastAPI app.

    ``POST /encode`` and ``POST /decode`` take and return ``{"payloads": [...]}``, the proto JSON of ``Payloads``
    (metadata values and data base64). CORS admits ``cors_origins`` (the UI's address, not the codec server's),
    with the ``X-Namespace`` and ``Authorization`` headers the UI may send.

    Returns:
        The app. A body that is not ``Payloads`` JSON, or a payload the codec cannot decode, gets
        ``400 {"error": "..."}``.
    """
    # Imported here: every CLI command imports this module for the data converter, and FastAPI takes ~0.4 s.
    from fastapi import FastAPI, Request, Response
    from fastapi.middleware.cors import CORSMiddleware

    app = FastAPI(title="molecule-connect codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["POST"],
        allow_headers=["content-type", "x-namespace", "authorization"],
        allow_credentials=True,
    )

    def endpoint(transform: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Callable[..., Any]:
        # A plain Starlette endpoint: no parameters for FastAPI to inject, and the body is proto JSON, not a model.
        async def apply(request: Request) -> Response:
            try:
                payloads = json_format.Parse(await request.body(), Payloads())
                result = Payloads(payloads=await transform(payloads.payloads))
            except (json_format.ParseError, CodecError) as err:
                error = {"error": " ".join(str(err).split())[:300]}
                return Response(orjson.dumps(error), status_code=400, media_type="application/json")
            return Response(json_format.MessageToJson(result), media_type="application/json")

        return apply

    app.add_route("/encode", endpoint(codec.encode), methods=["POST"])  # signal and query input typed in the UI
    app.add_route("/decode", endpoint(codec.decode), methods=["POST"])  # display; plain payloads come back as is
    return app


def serve_codec(codec: PayloadCodec, *, host: str, port: int, cors_origins: Sequence[str]) -> None:
    """Serve :func:`codec_app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(codec_app(codec, cors_origins=cors_origins), host=host, port=port, log_level="info")
