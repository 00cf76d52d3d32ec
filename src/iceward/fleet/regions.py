"""A client address's region: from a region map file (``--region-map``: lines ``CIDR REGION``)
or a MaxMind database (``--geoip``, read with the ``maxminddb`` library).

Both files are read once at start; a line or a file that cannot be read is an error naming
the file (and the line), before the server starts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class RegionFileError(ValueError):
    """A region map or GeoIP database that cannot be used; the message names the file."""


def parse_ip(text: str) -> IP | None:
    """An address as a backend saw it (``::ffff:a.b.c.d`` read as IPv4); None if not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class RegionMap:
    """Networks and their regions; the longest matching prefix wins."""

    def __init__(self, entries: list[tuple[Network, str]]) -> None:
        # Longest prefixes first: the first network containing an address is the most specific.
        self.entries = sorted(entries, key=lambda e: -e[0].prefixlen)

    @classmethod
    def load(cls, path: Path) -> RegionMap:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RegionFileError(f"region map {path}: {reason}") from None
        entries: list[tuple[Network, str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise RegionFileError(
                    f"region map {path} line {number}: expected 'CIDR REGION', got {line!r}"
                )
            try:
                network = ipaddress.ip_network(parts[0], strict=False)
            except ValueError:
                raise RegionFileError(
                    f"region map {path} line {number}: {parts[0]!r} is not a CIDR network"
                ) from None
            entries.append((network, parts[1]))
        return cls(entries)

    def lookup(self, ip: IP) -> str | None:
        for network, region in self.entries:
            if ip.version == network.version and ip in network:
                return region
        return None


class GeoIp:
    """A MaxMind database. A record's region candidates, in order: its ``region`` (a database
    made for the fleet), its country's ISO code, its continent's code, lower-cased; the first
    that is a region of the fleet (or has a fallback) is taken."""

    def __init__(self, path: Path) -> None:
        self.path = path
        import maxminddb  # here: only a server given --geoip loads it (every worker would)

        try:
            self.reader = maxminddb.open_database(str(path))
        except FileNotFoundError:
            raise RegionFileError(f"GeoIP database {path}: no such file") from None
        except (OSError, ValueError) as exc:  # InvalidDatabaseError is a RuntimeError subclass
            raise RegionFileError(f"GeoIP database {path}: {exc}") from None
        except RuntimeError as exc:
            raise RegionFileError(f"GeoIP database {path}: not a MaxMind database: {exc}") from None

    def candidates(self, ip: IP) -> list[str]:
        try:
            record: Any = self.reader.get(str(ip))
        except (ValueError, RuntimeError):  # an IPv6 address in an IPv4-only database; corrupt
            return []
        if not isinstance(record, dict):
            return []
        found: list[str] = []
        region = record.get("region")
        if isinstance(region, str):
            found.append(region)
        for section, key in (("country", "iso_code"), ("continent", "code")):
            part = record.get(section)
            value = part.get(key) if isinstance(part, dict) else None
            if isinstance(value, str):
                found.append(value.lower())
        return found

    def close(self) -> None:
        self.reader.close()


class RegionResolver:
    """The region of a client address, from the region map first, then the GeoIP database."""

    def __init__(self, region_map: RegionMap | None = None, geoip: GeoIp | None = None) -> None:
        self.region_map = region_map
        self.geoip = geoip

    @classmethod
    def from_files(cls, region_map: Path | None, geoip: Path | None) -> RegionResolver:
        """RegionFileError naming the file (and line) that cannot be read."""
        return cls(
            RegionMap.load(region_map) if region_map is not None else None,
            GeoIp(geoip) if geoip is not None else None,
        )

    def region_of(self, address: str, known: Callable[[str], bool]) -> str | None:
        """The region of ``address``, None when no file places it (or it is no address).
        ``known(region)`` says whether the fleet can serve a region (GeoIP's candidates)."""
        ip = parse_ip(address)
        if ip is None:
            return None
        if self.region_map is not None:
            region = self.region_map.lookup(ip)
            if region is not None:
                return region
        if self.geoip is not None:
            candidates = self.geoip.candidates(ip)
            for candidate in candidates:
                if known(candidate):
                    return candidate
            return candidates[0] if candidates else None
        return None
