"""Look at connectors in the embedded Temporal Web UI the way a person would: in a real (headless) Chromium.

Starts, in a temporary state directory, the embedded Temporal dev server, a dev platform, two workers and two
connectors, one writing plain payloads and one encrypting them (``MOLECULE_CODEC_KEYS``), plus the codec server with
its default CORS origins (which must admit the embedded UI's random port). Then it opens each connector's page in
the Web UI and reports what the page shows: the static summary and the current details (``phase: ...``), for the
encrypted connector without and with the codec server set as the UI's codec endpoint.

Not part of ``make test`` (it needs a browser). Needs Debian's ``chromium`` (``apt-get install -y chromium``) and
the ``playwright`` package (``pip install playwright``; no browser download: it drives ``/usr/bin/chromium``):

    python scripts/ui_check.py [--chromium /usr/bin/chromium] [--timeout 60]

``UI_CHECK_DUMP=DIR`` writes each page's text and a screenshot into DIR.

Exit code 0 when every expectation holds: the phase is on the plain connector's page, hidden (encrypted) on the
encrypted connector's page without the codec server, and on it with the codec server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402

from activities.messages import BackendSpec  # noqa: E402
from devplatform.client import AsyncPlatformAdmin  # noqa: E402
from devplatform.server import RunningPlatform  # noqa: E402
from devplatform.settings import PlatformSettings  # noqa: E402
from worker.assemble import running_worker  # noqa: E402
from worker.cli.common import listen  # noqa: E402
from worker.cli.dev import default_cors_origins  # noqa: E402
from worker.codec import CodecKey, EncryptionCodec, codec_app, with_codec  # noqa: E402
from worker.control import connector_status, start_connector  # noqa: E402
from worker.devserver import ensure_embedded_server, stop_embedded_server  # noqa: E402
from worker.settings import workflow_id  # noqa: E402
from workflows.messages import ConnectInput, ConnectSettings  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CODEC_KEY = CodecKey(key_id="ui-check", key=os.urandom(32))
PHASE = re.compile(r"phase: [a-z_]+")


async def wait_connected(client: Client, workspace_id: str, timeout: float) -> None:
    """Wait until the connector's ``status`` says ``connected``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(Exception):
            if (await connector_status(client, workspace_id)).phase == "connected":
                return
        if asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"ui_check: {workflow_id(workspace_id)} did not connect within {timeout:g}s")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def codec_server(state_dir: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """The codec server on a free loopback port, with the CORS origins ``codec-server`` admits by default."""
    import uvicorn

    origins = default_cors_origins({**os.environ, "MOLECULE_CONNECT_STATE_DIR": str(state_dir), "TEMPORAL_UI_URL": ""})
    sock = listen("127.0.0.1", 0)
    app = codec_app(EncryptionCodec([CODEC_KEY]), cors_origins=origins)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", origins
    finally:
        server.should_exit = True
        await task


async def page_text(browser, url: str, *, codec_endpoint: str | None, expect_phase: bool, timeout: float) -> str:
    """The visible text of ``url`` once the workflow page has rendered (and shows a phase, when expected)."""
    context = await browser.new_context()
    if codec_endpoint:  # what the UI's "Codec Server" dialog stores in localStorage (JSON values)
        await context.add_init_script(
            f"localStorage.setItem('endpoint', JSON.stringify({codec_endpoint!r}));"
            "localStorage.setItem('overrideRemoteCodecConfiguration', 'true');"
        )
    page = await context.new_page()
    if codec_endpoint:  # show the UI's calls to the codec server
        page.on("response", lambda response: _codec_call(response, codec_endpoint))
    try:
        await page.goto(url)
        # Locators, not page.evaluate: the UI's Content-Security-Policy forbids eval, and it is kept as it is.
        await page.get_by_text("Workflow Type").first.wait_for(timeout=timeout * 1000)
        # Summary, details and current details are on the "User Metadata" tab.
        await page.get_by_role("tab", name="User Metadata").click()
        # The UI renders summary, details and current details (Markdown) in sandboxed iframes: read every frame.
        deadline = asyncio.get_running_loop().time() + (timeout if expect_phase else 5)
        while True:
            text = await all_text(page)
            if PHASE.search(text) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        if os.environ.get("UI_CHECK_DUMP"):
            dump = Path(os.environ["UI_CHECK_DUMP"])
            dump.mkdir(exist_ok=True)
            name = f"{url.rsplit('/', 1)[-1]}-{'codec' if codec_endpoint else 'plain'}"
            (dump / f"{name}.txt").write_text(text)
            await page.screenshot(path=str(dump / f"{name}.png"), full_page=True)
        return text
    finally:
        await context.close()


async def all_text(page) -> str:
    """The visible text of the page and of every frame in it."""
    texts = []
    for frame in page.frames:
        with contextlib.suppress(Exception):  # a frame may be gone or still loading
            texts.append(await frame.inner_text("body", timeout=1000))
    return "\n".join(texts)


def _codec_call(response, codec_endpoint: str) -> None:
    if response.url.startswith(codec_endpoint) and response.request.method != "OPTIONS":
        print(f"     codec server answered the UI: {response.request.method} {response.url} {response.status}")


def shown(text: str, summary: str) -> str:
    """What a page shows of a connector: its phase and its static summary."""
    phase = PHASE.search(text)
    parts = [f"phase {'shown: ' + repr(phase.group(0)) if phase else 'not shown'}"]
    parts.append(f"summary {'shown: ' + repr(summary) if summary in text else 'not shown'}")
    return "; ".join(parts)


async def main(chromium: str, timeout: float) -> int:
    """Start everything in a temporary state directory, look at the pages, stop the embedded server."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir(mode=0o700)
        server = await ensure_embedded_server(state_dir)
        try:
            return await check(server.address, server.ui_url, state_dir, Path(tmp), chromium, timeout, async_playwright)
        finally:
            stop_embedded_server(state_dir)


async def check(address, ui_url, state_dir, tmp, chromium, timeout, async_playwright) -> int:
    """Two connectors (plain, encrypted), the codec server, and a browser on their pages; 0 when all is as expected."""
    plain = await Client.connect(address, data_converter=pydantic_data_converter)
    encrypted = await Client.connect(address, data_converter=with_codec(EncryptionCodec([CODEC_KEY])))
    settings = PlatformSettings(db_path=tmp / "platform.db", rate_limit_per_min=0)
    with RunningPlatform(settings, log_level="warning") as platform:
        async with AsyncPlatformAdmin(platform.url, admin_token=settings.admin_token) as admin:
            ws_plain, ws_secret = await admin.create_workspace("ui-plain"), await admin.create_workspace("ui-secret")
            tokens = {ws_plain.id: ws_plain.token, ws_secret.id: ws_secret.token}
            fast = ConnectSettings(poll_interval_s=0.5)
            async with (
                running_worker(plain, task_queue="ui-check-plain", token_for=tokens.__getitem__),
                running_worker(encrypted, task_queue="ui-check-secret", token_for=tokens.__getitem__),
                codec_server(state_dir) as (codec_url, origins),
                async_playwright() as playwright,
            ):
                for client, ws, queue in (
                    (plain, ws_plain, "ui-check-plain"),
                    (encrypted, ws_secret, "ui-check-secret"),
                ):
                    spec = ConnectInput(
                        workspace_id=ws.id, platform_url=platform.url, backend=BackendSpec(), settings=fast
                    )
                    await start_connector(client, spec, task_queue=queue)
                    await wait_connected(client, ws.id, timeout)
                print(f"Web UI {ui_url}; codec server {codec_url} admits {', '.join(origins)}")
                # Playwright gives the browser a fresh temporary profile (--user-data-dir) itself.
                browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
                failures = 0
                cases = (
                    ("plain connector", ws_plain.id, None, True),
                    ("encrypted connector, no codec server", ws_secret.id, None, False),
                    ("encrypted connector, codec server", ws_secret.id, codec_url, True),
                )
                for label, ws_id, endpoint, expect in cases:
                    url = f"{ui_url}/namespaces/default/workflows/{workflow_id(ws_id)}"
                    text = await page_text(browser, url, codec_endpoint=endpoint, expect_phase=expect, timeout=timeout)
                    found = shown(text, f"{ws_id} · echo")
                    ok = bool(PHASE.search(text)) == expect
                    failures += not ok
                    print(f"{'OK  ' if ok else 'FAIL'} {label}: {url}: {found}")
                await browser.close()
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each page")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.chromium, arguments.timeout)))
