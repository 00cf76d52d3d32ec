"""The lab's ICE agent: aioice in a LAN namespace, signalling through stdin/stdout.

Run by the orchestrator as ``ip netns exec LAN python -m iceward.lab.agent --role ...``.
Protocol (one JSON object per line): the agent prints its offer (candidates, ufrag, pwd), reads the
peer's offer, runs ICE within ``--deadline`` seconds, exchanges a message, prints its result.

Two changes to aioice's defaults make it behave like a browser: one relay candidate per TURN URL
(aioice takes one TURN server), with a local preference UDP > TCP > TLS; and the controlling agent
nominates the best valid pair (regular nomination after a short grace period) rather than the first
pair that happens to answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time
from typing import Any

import aioice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import CandidatePair, StunProtocol, candidate_pair_priority, relayed_candidate

from iceward.diagnose.iceurl import read_url

#: After the first valid pair, how long the controlling agent waits for a better one.
GRACE = 1.5
#: Local preference of relayed candidates by TURN transport (browsers prefer UDP relays).
RELAY_PREF = {"udp": 3, "tcp": 2, "tls": 1}


def parse_urls(config: list[dict[str, Any]]) -> tuple[tuple[str, int] | None, list[dict[str, Any]]]:
    """``(stun server, [turn {host, port, transport, tls, username, credential}])``."""
    stun_server: tuple[str, int] | None = None
    turns: list[dict[str, Any]] = []
    for server in config:
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        for url in urls:
            parsed = read_url(url)
            if parsed is None:
                continue
            if parsed.scheme == "stun":
                stun_server = stun_server or (parsed.host, parsed.port)
            elif parsed.is_turn:
                turns.append(
                    {
                        "url": url,
                        "host": parsed.host,
                        "port": parsed.port,
                        "transport": parsed.transport,
                        "username": server.get("username"),
                        "credential": server.get("credential"),
                    }
                )
    return stun_server, turns


class LabConnection(aioice.Connection):
    """aioice with regular nomination of the best valid pair (controlling side)."""

    def __init__(self, *args: Any, grace: float = GRACE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grace = grace
        self.started_at = 0.0
        self.first_valid_at: float | None = None
        self._valid: list[CandidatePair] = []
        self._decided = asyncio.Event()
        self._choice: CandidatePair | None = None
        self._decider: asyncio.Task[None] | None = None

    def _priority(self, pair: CandidatePair) -> int:
        return candidate_pair_priority(
            pair.local_candidate, pair.remote_candidate, self.ice_controlling
        )

    def _decide(self) -> None:
        if self._decided.is_set() or not self._valid:
            return
        self._choice = max(self._valid, key=self._priority)
        self._decided.set()

    def _maybe_decide(self) -> None:
        """Decide at once when no unfinished pair could beat the best valid one."""
        if not self._valid:
            return
        best = max(self._priority(p) for p in self._valid)
        pending = [
            p
            for p in self._check_list
            if p not in self._valid
            and p.state != CandidatePair.State.FAILED
            and self._priority(p) > best
        ]
        if not pending:
            self._decide()

    async def _decide_later(self) -> None:
        await asyncio.sleep(self.grace)
        self._decide()

    async def check_start(self, pair: CandidatePair) -> None:
        if not self.ice_controlling:
            await super().check_start(pair)
            return
        assert self.remote_password is not None
        key = self.remote_password.encode("utf8")
        self.check_state(pair, CandidatePair.State.IN_PROGRESS)
        try:
            _, addr = await pair.protocol.request(
                self.build_request(pair, nominate=False), pair.remote_addr, integrity_key=key
            )
        except stun.TransactionError:
            addr = None
        if addr != pair.remote_addr:
            self.check_state(pair, CandidatePair.State.FAILED)
            self.check_complete(pair)
            self._maybe_decide()
            return
        self._valid.append(pair)
        if self.first_valid_at is None:
            self.first_valid_at = time.monotonic()
            self._decider = asyncio.create_task(self._decide_later())
        self._maybe_decide()
        await self._decided.wait()
        if self._choice is pair:
            try:
                await pair.protocol.request(
                    self.build_request(pair, nominate=True), pair.remote_addr, integrity_key=key
                )
            except stun.TransactionError:
                self.check_state(pair, CandidatePair.State.FAILED)
                self.check_complete(pair)
                return
            pair.nominated = True
        self.check_state(pair, CandidatePair.State.SUCCEEDED)
        self.check_complete(pair)

    def selected(self) -> CandidatePair | None:
        return self._nominated.get(1)

    async def add_relays(
        self, turns: list[dict[str, Any]], ca_file: str | None, relay_only: bool
    ) -> tuple[dict[int, str], list[str]]:
        """One relayed candidate per TURN URL; ``({relayed port: transport}, errors)``."""
        context: ssl.SSLContext | None = None
        if any(t["transport"] == "tls" for t in turns):
            context = ssl.create_default_context(cafile=ca_file)

        async def one(turn: dict[str, Any]) -> tuple[Candidate, StunProtocol]:
            return await asyncio.wait_for(
                relayed_candidate(
                    component=1,
                    hide_related_address=relay_only,
                    protocol_factory=lambda: StunProtocol(self),
                    turn_server=(turn["host"], turn["port"]),
                    turn_username=turn["username"],
                    turn_password=turn["credential"],
                    turn_ssl=context if turn["transport"] == "tls" else False,  # type: ignore[arg-type]
                    turn_transport="udp" if turn["transport"] == "udp" else "tcp",
                ),
                5.0,
            )

        results = await asyncio.gather(*(one(t) for t in turns), return_exceptions=True)
        ports: dict[int, str] = {}
        errors: list[str] = []
        for turn, result in zip(turns, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"{turn['url']}: {type(result).__name__}: {result}")
                continue
            candidate, protocol = result
            transport = turn["transport"]
            candidate.foundation = candidate_foundation("relay", transport, candidate.host)
            candidate.priority = candidate_priority(
                1, "relay", local_pref=RELAY_PREF[transport] * 256
            )
            self._protocols.append(protocol)
            self._local_candidates.append(candidate)
            ports[candidate.port] = transport
        return ports, errors


async def _readline() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise EOFError("signalling closed")
    value: dict[str, Any] = json.loads(line)
    return value


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config = json.loads(args.config)
    stun_server, turns = parse_urls(config)
    relay_only = args.relay_only
    controlling = args.role == "controlling"
    conn = LabConnection(
        ice_controlling=controlling,
        components=1,
        stun_server=None if relay_only else stun_server,
        use_ipv6=False,
        transport_policy=aioice.TransportPolicy.RELAY if relay_only else aioice.TransportPolicy.ALL,
    )
    result: dict[str, Any] = {"role": args.role, "connected": False}
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(conn.gather_candidates(), 8.0)
        relay_ports, errors = await conn.add_relays(turns, args.ca_file, relay_only)
        result["gather_ms"] = round((time.monotonic() - t0) * 1000)
        result["gather_errors"] = errors
        result["candidates"] = [c.to_sdp() for c in conn.local_candidates]
        _emit(
            {
                "candidates": result["candidates"],
                "ufrag": conn.local_username,
                "pwd": conn.local_password,
            }
        )
        remote = await _readline()
        for sdp in remote["candidates"]:
            await conn.add_remote_candidate(Candidate.from_sdp(sdp))
        await conn.add_remote_candidate(None)
        conn.remote_username = remote["ufrag"]
        conn.remote_password = remote["pwd"]
        conn.started_at = time.monotonic()
        try:
            await asyncio.wait_for(conn.connect(), args.deadline)
        except (TimeoutError, ConnectionError) as exc:
            result["error"] = f"ICE: {type(exc).__name__} {exc}".strip()
            return result
        elapsed = time.monotonic() - conn.started_at
        result["connect_ms"] = round(elapsed * 1000)
        if conn.first_valid_at is not None:
            result["first_valid_ms"] = round((conn.first_valid_at - conn.started_at) * 1000)
        pair = conn.selected()
        if pair is not None:
            local, remote_c = pair.local_candidate, pair.remote_candidate
            result["local"] = {"type": local.type, "address": f"{local.host}:{local.port}"}
            if local.type == "relay":
                result["local"]["relay_protocol"] = relay_ports.get(local.port, "?")
            result["remote"] = {
                "type": remote_c.type,
                "address": f"{remote_c.host}:{remote_c.port}",
            }
        message = f"hello from {args.role}".encode()
        await conn.send(message)
        try:
            data = await asyncio.wait_for(conn.recv(), 5.0)
            result["data"] = data.decode(errors="replace")
            result["connected"] = data.startswith(b"hello from ")
        except TimeoutError:
            result["error"] = "ICE connected but no data arrived within 5 s"
        return result
    finally:
        try:
            await asyncio.wait_for(conn.close(), 5.0)
        except (TimeoutError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iceward.lab.agent")
    parser.add_argument("--role", choices=["controlling", "controlled"], required=True)
    parser.add_argument("--config", required=True, help="iceServers JSON array")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--ca-file", default=None)
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        result = asyncio.run(run(args))
    except Exception as exc:
        result = {"role": args.role, "connected": False, "error": f"{type(exc).__name__}: {exc}"}
    _emit({"result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
