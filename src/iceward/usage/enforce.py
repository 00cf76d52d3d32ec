"""What the byte quotas say at an instant, and what that means for running allocations.

:func:`evaluate` reads the quotas and each one's use in its current period from the store (the
store every node of a fleet shares, so a quota holds over the fleet), at ``now``: a new day or
month starts from zero. :class:`Enforcer` turns the verdict into actions: a blocked user's or
label's allocations end, or are throttled with ``--quota-throttle-bps``; a throttled one whose
subject is no longer over quota (a new period, a raised or removed quota) gets its own limit
back. Neither reads a clock: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from iceward.turn.allocation import Allocation
from iceward.units import format_size
from iceward.usage.quotas import period_start
from iceward.usage.store import Quota, UsageStore


@dataclass(slots=True)
class Verdict:
    #: Users and labels over a block quota -> the reason phrase of their refusals.
    users: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    #: Notify quotas with their use and period key.
    notices: list[tuple[Quota, int, str]] = field(default_factory=list)


def evaluate(store: UsageStore, now: float) -> Verdict:
    """Every quota against its subject's use in the period containing ``now`` (Unix time)."""
    verdict = Verdict()
    for quota in store.quotas():
        start, key = period_start(quota.period, now)
        used = store.consumed(quota.kind, quota.subject, start)
        if quota.action == "block" and used >= quota.limit_bytes:
            reason = (
                f"Byte quota exceeded: {quota.kind} {quota.subject} relayed "
                f"{format_size(used)} of {format_size(quota.limit_bytes)} this {quota.period}"
            )
            subjects = verdict.users if quota.kind == "user" else verdict.labels
            subjects[quota.subject] = reason[:120]
        elif quota.action == "notify":
            verdict.notices.append((quota, used, key))
    return verdict


@dataclass(slots=True)
class Actions:
    end: list[Allocation] = field(default_factory=list)
    throttle: list[Allocation] = field(default_factory=list)
    #: Throttled earlier, no longer over quota: back to their own limit.
    release: list[Allocation] = field(default_factory=list)


class Enforcer:
    """Remembers which allocations it throttled, so it throttles each once and releases it
    when its subject is under quota again."""

    def __init__(self, throttle: int) -> None:
        """``throttle``: bytes/s for a blocked subject's running allocations; 0: they end."""
        self.throttle = throttle
        self.throttled: set[int] = set()

    def decide(
        self, allocations: Iterable[Allocation], blocked: Callable[[str, str], str | None]
    ) -> Actions:
        """``blocked(account, username)``: the refusal reason, or None when under quota."""
        actions = Actions()
        alive = set()
        for alloc in allocations:
            alive.add(alloc.id)
            over = blocked(alloc.account, alloc.username) is not None
            if over and not self.throttle:
                actions.end.append(alloc)
            elif over and alloc.id not in self.throttled:
                self.throttled.add(alloc.id)
                actions.throttle.append(alloc)
            elif not over and alloc.id in self.throttled:
                self.throttled.discard(alloc.id)
                actions.release.append(alloc)
        self.throttled &= alive
        return actions
