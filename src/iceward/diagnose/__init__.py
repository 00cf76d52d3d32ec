"""Diagnosis shared by the doctor, the analyzer and the test page: one vocabulary of findings."""

from iceward.diagnose.findings import CODES, Finding, FindingSpec, make_finding, rank

__all__ = ["CODES", "Finding", "FindingSpec", "make_finding", "rank"]
