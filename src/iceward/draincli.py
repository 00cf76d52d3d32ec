"""``iceward drain``: tell a running node to drain, through its admin API.

``POST /admin/v1/drain`` (what SIGUSR1 does too): new allocations are sent to an alternate
server, existing ones go on, and the node exits once the last has ended or at its drain timeout.
With ``--wait`` the command returns only when the node has exited, as a Kubernetes ``preStop``
hook must (the kubelet sends SIGTERM, which stops at once, as soon as the hook returns).

Exit codes: 0 draining (with ``--wait``: drained and gone), 1 ``--wait`` gave up while the node
still answered, 2 the node cannot be asked (down, wrong URL, a key it refuses), in one line.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from iceward.cliutil import Opt, fail
from iceward.top import AdminApi, AdminKey, TopError, admin_api

#: Seconds between two questions while waiting, and beyond the node's own deadline to wait.
POLL = 1.0
GRACE = 60.0


def _line(url: str, status: dict[str, Any]) -> str:
    left = status.get("allocations")
    return (
        f"{url}: {status.get('state')}, {left} allocation{'' if left == 1 else 's'} left; "
        f"exits when the last ends, or at {status.get('deadline')}"
    )


def _wait(api: AdminApi, status: dict[str, Any]) -> bool:
    """Until the node stops answering (it exited): True; False when it outlives its deadline."""
    give_up = time.monotonic() + float(status.get("drainTimeoutSeconds") or 0) + GRACE
    shown = status.get("allocations")
    while time.monotonic() < give_up:
        time.sleep(POLL)
        try:
            status = api.get_json("/admin/v1/drain")
        except TopError:
            return True  # it no longer answers: exited
        if status.get("allocations") != shown:
            shown = status.get("allocations")
            typer.echo(_line(api.url, status))
    return False


def drain(
    admin_url: Annotated[
        str, Opt("--admin-url", help="The node's HTTP API.", metavar="URL")
    ] = "http://127.0.0.1:8080",
    admin_key: AdminKey = None,
    wait: Annotated[
        bool, Opt("--wait", help="Return once the node has drained and exited.")
    ] = False,
    json_out: Annotated[bool, Opt("--json", help="Print the node's drain status as JSON.")] = False,
) -> None:
    """Drain a running node: new allocations go to an alternate server (300 Try Alternate),
    existing ones go on; the node exits when the last ends or at its --drain-timeout.

    Exit codes: 0 draining (--wait: drained and exited), 1 --wait gave up, 2 cannot ask it."""
    api = admin_api(admin_url, admin_key, "drain")
    try:
        status = api.get_json("/admin/v1/drain", method="POST")
    except TopError as exc:
        raise fail(str(exc), "drain") from None
    if not isinstance(status, dict) or "state" not in status:
        raise fail(f"{api.url} answered something else than iceward's admin API", "drain")
    typer.echo(json.dumps(status, indent=2) if json_out else _line(api.url, status))
    if wait:
        if not _wait(api, status):
            typer.echo(f"iceward drain: {api.url} still answers past its drain deadline", err=True)
            raise typer.Exit(1)
        typer.echo(f"{api.url}: drained, the node has exited")


def register(app: typer.Typer) -> None:
    app.command("drain")(drain)
