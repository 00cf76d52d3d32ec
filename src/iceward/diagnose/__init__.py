"""Diagnosis shared by the doctor, the analyzer and the test page: one vocabulary of findings, one
STUN/TURN URL parser, one answer to "is this address internal?"."""

from iceward.diagnose.address import internal_reason, is_internal
from iceward.diagnose.findings import CODES, Finding, FindingSpec, make_finding, rank
from iceward.diagnose.iceurl import IceUrl, UrlError, parse_url, read_url, safe_url

__all__ = [
    "CODES",
    "Finding",
    "FindingSpec",
    "IceUrl",
    "UrlError",
    "internal_reason",
    "is_internal",
    "make_finding",
    "parse_url",
    "rank",
    "read_url",
    "safe_url",
]
