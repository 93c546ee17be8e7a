"""The startup capability probe (docs/protocol.md §3.3): does this platform support poll mode's inbox cursor?

``GET /workspaces/{id}/activity?since_id=00000000-0000-0000-0000-000000000000&limit=1`` with the workspace token
(and the hosted-platform headers of docs/protocol.md §2). A platform that supports ``since_id`` cannot find that cursor
and answers ``410``; an older one ignores the parameter and answers ``200`` with rows, and a connector polling it
would deliver the newest rows again on every poll. The probe runs once, before a connector starts, so such a
platform, a rejected token or a missing tenant header is one clear line instead of a connector stuck ``blocked``.
"""

from __future__ import annotations

import httpx

from activities.errors import body_excerpt

ZERO_CURSOR = "00000000-0000-0000-0000-000000000000"
"""A cursor no platform has: ``410`` proves ``since_id`` support."""
PROBE_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)


class PlatformProbeError(Exception):
    """The platform cannot serve this connector; the message is one line saying what to do."""


async def probe_platform(
    platform_url: str,
    workspace_id: str,
    token: str,
    *,
    org_id: str | None = None,
    http: httpx.AsyncClient | None = None,
) -> None:
    """Check that the platform supports poll mode for this workspace and token (docs/protocol.md §3.3).

    Args:
        platform_url: The platform base URL, without trailing slash; also sent as ``Origin``.
        workspace_id: The workspace to probe.
        token: Its bearer token (only ever put in the ``Authorization`` header).
        org_id: Sent as ``X-Molecule-Org-Id`` when set (hosted platforms).
        http: A client to use (not closed); default: a short-lived one with :data:`PROBE_TIMEOUT`.

    Raises:
        PlatformProbeError: ``200`` (too old for poll mode), ``401``/``403`` (token), ``404`` (no such workspace,
            or tenant headers missing), any other status, or a network failure.
    """
    url = f"{platform_url}/workspaces/{workspace_id}/activity"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Origin": platform_url}
    if org_id:
        headers["X-Molecule-Org-Id"] = org_id
    params = {"since_id": ZERO_CURSOR, "limit": "1"}
    try:
        if http is not None:
            response = await http.get(url, params=params, headers=headers)
        else:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
                response = await client.get(url, params=params, headers=headers)
    except httpx.HTTPError as err:
        reason = str(err) or type(err).__name__
        raise PlatformProbeError(
            f"cannot reach the platform at {platform_url}: {reason}; check --platform-url / MOLECULE_API_URL"
        ) from None
    _judge(response, platform_url, workspace_id, org_id)


def _judge(response: httpx.Response, platform_url: str, workspace_id: str, org_id: str | None) -> None:
    """Turn the probe's answer into nothing (``410``) or the one-line refusal."""
    status = response.status_code
    if status == 410:
        return
    if status == 200:
        raise PlatformProbeError(
            f"platform at {platform_url} is too old for poll mode (no since_id cursor support); upgrade it"
        )
    if status == 401:
        raise PlatformProbeError(
            f"token rejected by platform at {platform_url} (HTTP 401) for workspace {workspace_id}; "
            "check MOLECULE_WORKSPACE_TOKEN or MOLECULE_TOKENS_FILE"
        )
    if status == 403:
        raise PlatformProbeError(
            f"token does not grant access to workspace {workspace_id} at {platform_url} (HTTP 403); "
            "use that workspace's own token"
        )
    if status == 404:
        hint = "check the workspace id" + ("" if org_id else ", or set MOLECULE_ORG_ID for a hosted platform")
        raise PlatformProbeError(f"workspace {workspace_id} not found at {platform_url} (HTTP 404); {hint}")
    answer = f"HTTP {status} {body_excerpt(response)}".rstrip()
    raise PlatformProbeError(
        f"platform at {platform_url} answered the capability probe with {answer}; "
        "try again, or pass --no-probe to skip the check"
    )
