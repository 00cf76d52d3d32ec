"""``iceward top``: a live terminal view of a running server, read from its admin API.

What coturn's telnet CLI and ``turnadmin`` show, from the HTTP API any ``iceward serve`` has:
allocations (``GET /admin/v1/allocations``), workers (``GET /admin/v1/workers``) and the counters
of ``GET /metrics``. Rates come from the difference between two samples: relayed bit/s each way
from ``iceward_relayed_bytes``, per user from each allocation's byte counters, authentication
failures and refusals per minute from ``iceward_auth_failures``, ``iceward_peer_refusals`` and
``iceward_quota_refusals``.

Exit codes: 0 after ``--once`` or Ctrl-C; 2 when the server cannot be read (down, wrong URL, a
key it refuses), in one line.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from iceward.cliutil import Opt, fail

#: Rows of the busiest-allocations table, and of the users table.
SHOWN = 15


class TopError(Exception):
    """The server could not be read; the message is the one line the user sees."""


# -- reading the server --------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Sample:
    """One reading of the admin API, at ``at`` (the monotonic clock)."""

    at: float
    #: Prometheus samples: (sample name, sorted labels) -> value.
    metrics: dict[tuple[str, Labels], float]
    allocations: list[dict[str, Any]]
    workers: list[dict[str, Any]]

    def total(self, name: str, **match: str) -> float:
        return sum(
            v
            for (n, labels), v in self.metrics.items()
            if n == name and all(dict(labels).get(k) == want for k, want in match.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in self.metrics.items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


#: The admin key option of every command that reads a server's admin API.
AdminKey = Annotated[
    str | None,
    Opt(
        "--admin-key",
        envvar="ICEWARD_ADMIN_KEY",
        metavar="KEY",
        show_envvar=True,
        help="An admin API key (`iceward keys add NAME --admin`).",
    ),
]


def admin_api(url: str, key: str | None, command: str, url_flag: str = "--admin-url") -> AdminApi:
    """The admin API at ``url`` with ``key``; exit 2 with one line when either is missing or
    the URL is no http(s) one."""
    if not key:
        raise fail("no admin key: give --admin-key or set ICEWARD_ADMIN_KEY", command)
    if not url.startswith(("http://", "https://")):
        raise fail(f"{url_flag} must be http:// or https://, not {url!r}", command)
    return AdminApi(url, key)


class AdminApi:
    """GETs on a server's HTTP API with an admin key."""

    def __init__(self, url: str, key: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def get(self, path: str) -> bytes:
        return self.call(path)

    def call(self, path: str, method: str = "GET") -> bytes:
        """The body of the answer to ``method path``; TopError in one line if there is none."""
        request = urllib.request.Request(self.url + path, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as err:
            detail = _detail(err.read())
            if err.code == 401:
                raise TopError(
                    f"{self.url} refused the admin key (401{detail}); "
                    "make one with `iceward keys add NAME --admin`"
                ) from None
            if err.code == 403:
                raise TopError(
                    f"{self.url} refused the admin API to this address (403{detail}); run it "
                    "on the server, or allow this address with --admin-allow"
                ) from None
            raise TopError(f"{self.url}{path} answered {err.code}{detail}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TopError(f"cannot reach {self.url}: {reason}") from None

    def get_json(self, path: str, method: str = "GET") -> Any:
        try:
            return json.loads(self.call(path, method))
        except ValueError:
            raise TopError(f"{self.url}{path} did not answer JSON: is it iceward?") from None

    def sample(self) -> Sample:
        allocations = self.get_json("/admin/v1/allocations")
        workers = self.get_json("/admin/v1/workers")
        text = self.get("/metrics").decode(errors="replace")
        try:
            metrics = {
                (s.name, tuple(sorted(s.labels.items()))): float(s.value)
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
        except ValueError:
            raise TopError(f"{self.url}/metrics is not Prometheus text: is it iceward?") from None
        if not isinstance(allocations, list) or not isinstance(workers, list):
            raise TopError(f"{self.url} answered something else than iceward's admin API")
        return Sample(time.monotonic(), metrics, allocations, workers)


def _detail(body: bytes) -> str:
    try:
        message = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if isinstance(message, str) else ""


# -- what one frame shows ------------------------------------------------------------------------


@dataclass(slots=True)
class UserRow:
    user: str
    allocations: int
    to_peer_bps: float
    to_client_bps: float


@dataclass(slots=True)
class AllocationRow:
    id: int
    user: str
    client: str
    transport: str
    age_s: float
    to_peer_bps: float
    to_client_bps: float
    relayed: list[str]


@dataclass(slots=True)
class Frame:
    """Figures of one view, from two samples ``interval_s`` apart (``--json`` prints this)."""

    url: str
    interval_s: float
    workers_up: int
    workers_total: int
    allocations: int
    relay_ports_in_use: int
    relay_ports_free: int
    #: Relayed bit/s: ``to_peer`` (from clients, out of the relays) and ``to_client``.
    relayed_bps: dict[str, float]
    #: Authentication failures a minute, by reason.
    auth_failures_per_min: dict[str, float]
    #: Refusals a minute: ``peer:<reason>`` (the peer policy), ``quota:<user|capacity>``.
    refusals_per_min: dict[str, float]
    users: list[UserRow] = field(default_factory=list)
    busiest: list[AllocationRow] = field(default_factory=list)
    #: The server drains (``iceward drain``): it takes no new allocation and exits once empty.
    draining: bool = False


def _per(delta: float, seconds: float) -> float:
    return max(0.0, delta) / seconds if seconds > 0 else 0.0


def _rates(name: str, label: str, before: Sample, after: Sample, scale: float) -> dict[str, float]:
    """Per ``label``: how fast counter ``name`` grew between the samples, times ``scale``."""
    seconds = after.at - before.at
    old, new = before.by_label(name, label), after.by_label(name, label)
    return {k: round(_per(v - old.get(k, 0.0), seconds) * scale, 2) for k, v in sorted(new.items())}


def build_frame(url: str, before: Sample, after: Sample) -> Frame:
    """The figures between two samples (a counter that went backwards, after a restart, counts
    as zero)."""
    seconds = after.at - before.at
    relayed = {"to_peer": 0.0, "to_client": 0.0}
    relayed.update(_rates("iceward_relayed_bytes_total", "direction", before, after, 8))
    refusals = {
        f"peer:{k}": v
        for k, v in _rates("iceward_peer_refusals_total", "reason", before, after, 60).items()
    }
    quota = _rates("iceward_quota_refusals_total", "quota", before, after, 60)
    refusals.update((f"quota:{k}", v) for k, v in quota.items())
    frame = Frame(
        url=url,
        interval_s=round(seconds, 3),
        workers_up=sum(1 for w in after.workers if w.get("up")),
        workers_total=len(after.workers),
        allocations=len(after.allocations),
        relay_ports_in_use=int(after.total("iceward_relay_ports", state="in_use")),
        relay_ports_free=int(after.total("iceward_relay_ports", state="free")),
        relayed_bps=relayed,
        auth_failures_per_min=_rates("iceward_auth_failures_total", "reason", before, after, 60),
        refusals_per_min=refusals,
        draining=after.total("iceward_draining") > 0,
    )
    earlier = {a.get("id"): a.get("traffic", {}) for a in before.allocations}
    users: dict[str, UserRow] = {}
    rows = []
    for alloc in after.allocations:
        traffic = alloc.get("traffic", {})
        old = earlier.get(alloc.get("id"), {})
        if any(old.get(k, 0) > traffic.get(k, 0) for k in old):
            old = {}  # not the same allocation: its id was given again after a restart
        bps = {
            d: round(_per(traffic.get(f"bytes_{d}", 0) - old.get(f"bytes_{d}", 0), seconds) * 8, 1)
            for d in ("to_peer", "to_client")
        }
        user = str(alloc.get("user", ""))
        client = alloc.get("client", {})
        row = AllocationRow(
            id=int(alloc.get("id", 0)),
            user=user,
            client=str(client.get("address", "")),
            transport=str(client.get("transport", "")),
            age_s=float(alloc.get("ageSeconds", 0.0)),
            to_peer_bps=bps["to_peer"],
            to_client_bps=bps["to_client"],
            relayed=[str(r) for r in alloc.get("relayed", [])],
        )
        rows.append(row)
        per_user = users.setdefault(user, UserRow(user, 0, 0.0, 0.0))
        per_user.allocations += 1
        per_user.to_peer_bps += row.to_peer_bps
        per_user.to_client_bps += row.to_client_bps
    frame.busiest = sorted(rows, key=lambda r: (-(r.to_peer_bps + r.to_client_bps), r.id))
    frame.users = sorted(
        users.values(), key=lambda u: (-(u.to_peer_bps + u.to_client_bps), -u.allocations, u.user)
    )
    return frame


# -- drawing it ----------------------------------------------------------------------------------


def bits(rate: float) -> str:
    """``1.2 Mbit/s``."""
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if rate >= size:
            return f"{rate / size:.1f} {unit}"
    return f"{rate:.0f} bit/s"


def _count(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _per_minute(rates: dict[str, float]) -> str:
    """``12 (bad_integrity 9.5, unknown_user 2.5)``."""
    parts = [f"{k} {_count(v)}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1]) if v > 0]
    return _count(sum(rates.values())) + (f" ({', '.join(parts)})" if parts else "")


def render(frame: Frame, error: str | None = None) -> RenderableType:
    head = Text.assemble(
        ("iceward top ", "bold"),
        f"{frame.url}   workers {frame.workers_up}/{frame.workers_total} up   ",
        (f"{frame.allocations}", "bold"),
        f" allocation{'' if frame.allocations == 1 else 's'}   relay ports "
        f"{frame.relay_ports_in_use} in use, {frame.relay_ports_free} free",
        ("   DRAINING" if frame.draining else "", "bold yellow"),
    )
    rates = Text.assemble(
        "relayed  to peers ",
        (bits(frame.relayed_bps.get("to_peer", 0.0)), "bold cyan"),
        "  to clients ",
        (bits(frame.relayed_bps.get("to_client", 0.0)), "bold cyan"),
        f"   (over {frame.interval_s:.1f} s)",
    )
    refused = Text.assemble(
        "auth failures/min ",
        (_per_minute(frame.auth_failures_per_min), "yellow"),
        "   refusals/min ",
        (_per_minute(frame.refusals_per_min), "yellow"),
    )
    users = Table(title="top users by bandwidth", title_justify="left", expand=False)
    for name in ("user", "allocations", "to peers", "to clients"):
        users.add_column(name, justify="left" if name == "user" else "right")
    for u in frame.users[:SHOWN]:
        users.add_row(u.user, str(u.allocations), bits(u.to_peer_bps), bits(u.to_client_bps))
    busiest = Table(title="busiest allocations", title_justify="left", expand=False)
    for name in ("id", "user", "client", "age", "to peers", "to clients", "relayed"):
        busiest.add_column(
            name,
            justify="right" if name in ("id", "age") else "left",
            overflow="fold",  # an address cut short is a wrong address
            no_wrap=name in ("age", "to peers", "to clients"),
        )
    for a in frame.busiest[:SHOWN]:
        busiest.add_row(
            str(a.id),
            a.user,
            f"{a.transport}:{a.client}",
            f"{a.age_s:.0f} s",
            bits(a.to_peer_bps),
            bits(a.to_client_bps),
            ", ".join(a.relayed),
        )
    parts: list[RenderableType] = [head, rates, refused, users, busiest]
    if error is not None:
        parts.append(Text(f"{error} (retrying)", style="bold red"))
    return Group(*parts)


# -- the command ---------------------------------------------------------------------------------


def _watch(api: AdminApi, interval: float, first: Sample) -> None:
    """Redraw every ``interval`` until Ctrl-C; a server that stops answering is shown as such
    over the last frame, and picked up again when it answers."""
    from rich.live import Live

    before = first
    time.sleep(interval)
    after = api.sample()
    frame = build_frame(api.url, before, after)
    with Live(render(frame), auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            try:
                before, after = after, api.sample()
            except TopError as exc:
                live.update(render(frame, str(exc)), refresh=True)
                continue
            frame = build_frame(api.url, before, after)
            live.update(render(frame), refresh=True)


def top(
    url: Annotated[
        str, Opt("--url", help="The server's HTTP API.", metavar="URL")
    ] = "http://127.0.0.1:8080",
    admin_key: AdminKey = None,
    interval: Annotated[
        float, Opt("--interval", min=0.2, metavar="SECONDS", help="Between two readings.")
    ] = 2.0,
    once: Annotated[
        bool, Opt("--once", help="Print one frame (two readings --interval apart) and exit.")
    ] = False,
    json_out: Annotated[bool, Opt("--json", help="With --once: the frame as JSON.")] = False,
) -> None:
    """Live view of a running server: allocations, relayed bit/s, top users by bandwidth,
    refusals and authentication failures a minute (from its admin API).

    Exit codes: 0 done (--once, or Ctrl-C), 2 the server cannot be read (one line)."""
    api = admin_api(url, admin_key, "top", "--url")
    try:
        first = api.sample()
        if not (once or json_out):
            _watch(api, interval, first)
            return
        time.sleep(interval)
        frame = build_frame(api.url, first, api.sample())
    except TopError as exc:
        raise fail(str(exc), "top") from None
    except KeyboardInterrupt:
        return
    if json_out:
        typer.echo(json.dumps(asdict(frame), indent=2))
    else:
        Console().print(render(frame))


def register(app: typer.Typer) -> None:
    app.command("top")(top)
