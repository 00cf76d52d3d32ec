"""``iceward usage``, ``iceward cost`` and ``iceward quotas``: usage reports, the relay cost
model and byte quotas, over the data store the server writes (``--data-dir``/``--database``)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from iceward.cliutil import ConfigOpt, DatabaseOpt, DataDirOpt, JsonOpt, Opt, fail, print_rows
from iceward.storecli import open_store, store_call

if TYPE_CHECKING:
    from pathlib import Path

    from iceward.usage.store import UsageStore

BY = ("user", "label", "region", "node", "transport", "day")
REPORT_COLUMNS = (
    "gbToPeer", "gbToClient", "allocations", "allocationMinutes", "peakConcurrent",
    "transportShare", "cost",
)  # fmt: skip


def _open(
    config: Path | None, data_dir: Path | None, database: str | None
) -> tuple[UsageStore, dict[str, float]]:
    """The usage tables of the store the settings name, and the settings' region prices."""
    from iceward.usage.store import UsageStore

    store, settings = open_store(config, data_dir, database)
    try:
        return UsageStore(store), settings.region_prices
    except Exception as exc:
        raise fail(f"cannot open the data store: {exc}") from None


def _usage_store(config: Path | None, data_dir: Path | None, database: str | None) -> UsageStore:
    return _open(config, data_dir, database)[0]


def _shares(shares: dict[str, float]) -> str:
    return " ".join(f"{t} {share:.0%}" for t, share in shares.items())


def usage(
    since: Annotated[str, Opt("--since", help="30d, 12h, or a date (2026-11-01).")] = "30d",
    until: Annotated[str | None, Opt("--until", help="Default: now.")] = None,
    by: Annotated[str, Opt("--by", help="user, label, region, node, transport or day.")] = "user",
    price_per_gb: Annotated[
        float | None, Opt("--price-per-gb", min=0, help="Money per relayed GB (both ways).")
    ] = None,
    json_out: JsonOpt = False,
    csv_out: Annotated[bool, Opt("--csv")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """What was relayed: GB each way, allocation-minutes, peak concurrency, transport shares
    and cost, per user, label, region, node, transport or day."""
    from iceward.store import STORE_FAILURES, StoreError
    from iceward.usage.report import summarize, window

    if by not in BY:
        raise fail(f"--by: {by!r} is not one of {', '.join(BY)}", "usage")
    try:
        start, end = window(since, until, time.time())
    except ValueError as exc:
        raise fail(f"--since/--until: {exc}", "usage") from None
    store, prices = _open(config, data_dir, database)
    try:
        rows = store_call(store.rows, start, end)
    except STORE_FAILURES as exc:
        raise fail(f"data store: {exc}", "usage") from None
    except StoreError as exc:  # pragma: no cover - store_call turns it into an exit
        raise fail(str(exc), "usage") from None
    report = summarize(rows, by, start, end, price_per_gb, prices)  # type: ignore[arg-type]
    groups: list[dict[str, Any]] = [*report["groups"], {**report["total"], by: "total"}]
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    if csv_out:
        out = io.StringIO()
        fields = [by, "bytesToPeer", "bytesToClient", *REPORT_COLUMNS]
        writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for g in groups:
            writer.writerow({**g, "transportShare": _shares(g["transportShare"])})
        sys.stdout.write(out.getvalue())
        return
    shown = [
        {**g, by: g[by] or "-", "transportShare": _shares(g["transportShare"])} for g in groups
    ]
    columns = REPORT_COLUMNS if price_per_gb is not None or prices else REPORT_COLUMNS[:-1]
    print_rows(shown, False, (by, *columns))


def cost(
    calls: Annotated[int | None, Opt("--calls", min=0, help="Concurrent calls at peak.")] = None,
    kbps: Annotated[
        float | None, Opt("--kbps", min=0, help="Bitrate per direction per call.")
    ] = None,
    relay_share: Annotated[
        float | None, Opt("--relay-share", min=0, max=1, help="Share of calls relayed (0..1).")
    ] = None,
    price_per_gb: Annotated[
        float | None, Opt("--price-per-gb", min=0, help="Money per relayed GB.")
    ] = None,
    busy: Annotated[
        float, Opt("--busy", min=0, max=1, help="Share of the month at that peak (1: a ceiling).")
    ] = 1.0,
    from_usage: Annotated[
        str | None,
        Opt("--from-usage", help="Instead: the figures measured since then (30d, a date)."),
    ] = None,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Relay cost: before deployment from --calls, --kbps and --relay-share (Mbps through the
    relay at peak, GB per month, money), or measured from the usage records (--from-usage)."""
    from iceward.usage.cost import estimate

    if from_usage is not None:
        _measured_cost(from_usage, price_per_gb, json_out, config, data_dir, database)
        return
    if calls is None or kbps is None or relay_share is None:
        raise fail("give --calls, --kbps and --relay-share (or --from-usage)", "cost")
    est = estimate(calls, kbps, relay_share, price_per_gb, busy)
    doc = {
        "relayedCalls": est.relayed_calls,
        "mbpsPeak": round(est.mbps_peak, 3),
        "gbPerMonth": round(est.gb_per_month, 1),
        "costPerMonth": round(est.cost_per_month, 2) if est.cost_per_month is not None else None,
    }
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(
        f"{calls} calls x {relay_share:.0%} relayed = {est.relayed_calls:g} relayed calls, "
        f"{kbps:g} kbps each way"
    )
    typer.echo(f"at peak:   {est.mbps_peak:.3f} Mbps through the relay")
    typer.echo(f"per month: {est.gb_per_month:.1f} GB ({busy:.0%} of the month at that peak)")
    if est.cost_per_month is not None:
        typer.echo(f"cost:      {est.cost_per_month:.2f} per month at {price_per_gb:g} per GB")


def _measured_cost(
    since: str,
    price_per_gb: float | None,
    json_out: bool,
    config: Path | None,
    data_dir: Path | None,
    database: str | None,
) -> None:
    from iceward.usage.cost import measured
    from iceward.usage.report import window

    try:
        start, end = window(since, None, time.time())
    except ValueError as exc:
        raise fail(f"--from-usage: {exc}", "cost") from None
    rows = store_call(_usage_store(config, data_dir, database).rows, start, end)
    m = measured(rows, start, end, price_per_gb)  # type: ignore[arg-type]
    doc = {
        "days": round(m.seconds / 86400, 3),
        "gb": round(m.gb, 6),
        "mbpsAverage": round(m.mbps_average, 6),
        "mbpsPeak": round(m.mbps_peak, 6),
        "gbPerMonth": round(m.gb_per_month, 3),
        "costPerMonth": round(m.cost_per_month, 2) if m.cost_per_month is not None else None,
    }
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"measured over {doc['days']:g} days: {m.gb:.3f} GB relayed")
    typer.echo(f"average:   {m.mbps_average:.3f} Mbps; peak {m.mbps_peak:.3f} Mbps (per interval)")
    typer.echo(f"per month: {m.gb_per_month:.1f} GB at that average")
    if m.cost_per_month is not None:
        typer.echo(f"cost:      {m.cost_per_month:.2f} per month at {price_per_gb:g} per GB")


def _subject(label: str | None, user: str | None) -> tuple[str, str]:
    if (label is None) == (user is None):
        raise fail("name one of --label or --user", "quotas")
    return ("label", label) if label is not None else ("user", user)  # type: ignore[return-value]


LabelOpt = Annotated[str | None, Opt("--label", help="The label given to /api/v1/ice-servers.")]
UserOpt = Annotated[str | None, Opt("--user", help="The user (of a REST username, or static).")]


def quotas_set(
    nbytes: Annotated[str, Opt("--bytes", help="Relayed bytes both ways: 10GB, 500MB, 2GiB.")],
    label: LabelOpt = None,
    user: UserOpt = None,
    period: Annotated[str, Opt("--period", help="day or month (UTC).")] = "month",
    action: Annotated[str, Opt("--action", help="block or notify.")] = "block",
    webhook: Annotated[str | None, Opt("--webhook", help="URL notified at 80% and 100%.")] = None,
    webhook_secret: Annotated[
        str | None, Opt("--webhook-secret", help="HMAC key of the notices [random].")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Add or replace a byte quota: block (new allocations get 486, running ones end at the
    next usage check) or notify (a signed webhook POST at 80% and 100%)."""
    from iceward.units import parse_size

    kind, subject = _subject(label, user)
    try:
        limit = parse_size(nbytes)
    except ValueError as exc:
        raise fail(f"--bytes: {exc}", "quotas") from None
    if period not in ("day", "month"):
        raise fail(f"--period: {period!r} is not day or month", "quotas")
    if action not in ("block", "notify"):
        raise fail(f"--action: {action!r} is not block or notify", "quotas")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise fail(f"--webhook: {webhook!r} is not an http(s) URL", "quotas")
    store = _usage_store(config, data_dir, database)
    quota, new = store_call(
        store.set_quota, kind, subject, limit, period, action, webhook, webhook_secret
    )
    done = "added" if new else "replaced"
    typer.echo(f"{done} quota {quota.id}: {kind} {subject}, {nbytes} per {period}, {action}")
    if quota.webhook_secret and not webhook_secret:
        typer.echo(f"webhook secret (X-Iceward-Signature HMAC key): {quota.webhook_secret}")


def quotas_list(
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Byte quotas, with what each subject relayed in the current period."""
    from iceward.usage.quotas import quotas_with_use

    store = _usage_store(config, data_dir, database)
    rows = [
        {"subject": f"{'label' if 'label' in q else 'user'} {q.get('label') or q.get('user')}", **q}
        for q in quotas_with_use(store, time.time())
    ]
    print_rows(
        rows, json_out, ("id", "subject", "bytes", "usedBytes", "period", "action", "webhook")
    )


def quotas_remove(
    label: LabelOpt = None,
    user: UserOpt = None,
    period: Annotated[str | None, Opt("--period", help="Only this period's quota.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Remove the byte quotas on a user or label."""
    kind, subject = _subject(label, user)
    store = _usage_store(config, data_dir, database)
    removed = store_call(store.remove_quota, kind, subject, period)
    typer.echo(f"removed {removed} quota{'s' if removed != 1 else ''} on {kind} {subject}")


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
    app.command("cost")(cost)
    group = typer.Typer(help="Byte quotas per user or label: set, list, remove.")
    group.command("set")(quotas_set)
    group.command("list")(quotas_list)
    group.command("remove")(quotas_remove)
    app.add_typer(group, name="quotas")
