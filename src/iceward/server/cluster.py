"""A server's place in a fleet (``--cluster``): its :class:`FleetMember` and the issuer the
API asks, built from the plan; None without ``--cluster`` (nothing changes then)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from iceward import __version__
from iceward.config import parse_external_ip, parse_region_fallback
from iceward.fleet.regions import RegionFileError, RegionResolver
from iceward.net.sharedquota import FleetRow
from iceward.server.plan import ServerPlan, node_id_of, specific
from iceward.snapshot import Snapshot

if TYPE_CHECKING:
    from iceward.fleet.issuer import FleetIssuer


def check_region_files(plan: ServerPlan) -> RegionResolver:
    """The region map and GeoIP database, read; OSError naming the file (and line) otherwise."""
    try:
        return RegionResolver.from_files(plan.settings.region_map, plan.settings.geoip)
    except RegionFileError as exc:
        raise OSError(str(exc)) from None


async def join_fleet(
    plan: ServerPlan,
    public_uris: Callable[[], list[str]],
    snapshot: Callable[[], Awaitable[Snapshot]],
    store_changed: Callable[[], Awaitable[None]],
    quota_fd: int | None = None,
    workers: int = 1,
) -> FleetIssuer | None:
    """Join the fleet the settings name (claiming the node id), or None without one; OSError
    when the node id is taken or a region file cannot be read. ``store_changed`` reads the
    store again when another node announces a change. ``quota_fd`` is the quota memory of
    ``workers`` relaying processes (see iceward.net.sharedquota): with ``--user-quota`` it is
    shared with the fleet."""
    # Imported here: relaying workers import this module, and only a fleet needs Redis.
    from iceward.fleet.issuer import FleetIssuer
    from iceward.fleet.member import FleetMember, NodeIdTaken

    settings = plan.settings
    if settings.cluster is None:
        return None
    resolver = check_region_files(plan)
    public, _ = parse_external_ip(settings.external_ip)
    own_ips = [public] if public else (specific(settings.listen) or [plan.public_host])
    member = FleetMember(
        url=settings.cluster,
        node_id=node_id_of(plan.settings),
        region=settings.region,
        version=__version__,
        public_uris=public_uris,
        own_ips=own_ips,
        snapshot=snapshot,
        store_changed=store_changed,
        quota=FleetRow(quota_fd, workers) if quota_fd is not None else None,
    )
    try:
        await member.join()
    except NodeIdTaken as exc:
        raise OSError(str(exc)) from None
    return FleetIssuer(member, resolver, parse_region_fallback(settings.region_fallback))


def shares_quota(plan: ServerPlan) -> bool:
    """``--user-quota`` in a fleet: counted on every node."""
    return plan.settings.cluster is not None and plan.settings.max_allocations_per_user > 0
