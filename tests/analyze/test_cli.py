"""``iceward analyze`` from the command line: terminal, --json, --html, exit codes, bad input."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceward.cli import app
from tests.analyze import samples

FIXTURES = Path(__file__).with_name("fixtures")
RELAY_UDP = FIXTURES / "chromium156-relay-udp.internals.json.gz"
WRONG_PASSWORD = FIXTURES / "chromium156-wrong-password.internals.json.gz"
DIRECT = FIXTURES / "chromium156-direct-host.internals.json.gz"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analyze", *args])
    return result.exit_code, result.stdout, result.stderr


def test_terminal_report() -> None:
    code, out, _ = invoke(str(WRONG_PASSWORD))
    assert code == 1
    for text in ("turn-auth-failed", "PeerConnection 8-1", "icecandidateerror", "Unauthorized"):
        assert text in out
    assert "Traceback" not in out


def test_exit_code_zero_when_only_info() -> None:
    code, out, _ = invoke(str(DIRECT))
    assert code == 0
    assert "direct-path" in out and "mDNS" in out


def test_json_document() -> None:
    code, out, _ = invoke("--json", str(RELAY_UDP))
    assert code == 1
    doc = json.loads(out)
    assert doc["input"]["format"] == "webrtc-internals" and doc["input"]["gzip"] is True
    assert {f["code"] for f in doc["findings"]} == {
        "turn-udp-only",
        "private-relay-address",
        "relay-in-use",
    }
    for f in doc["findings"]:
        assert set(f) >= {"code", "severity", "title", "evidence", "fix"}
    assert [pc["id"] for pc in doc["peerConnections"]] == ["8-1", "8-2"]
    pc = doc["peerConnections"][0]
    assert pc["outcome"] == "connected" and pc["timeToConnectedMs"] > 0
    assert pc["configuration"]["iceTransportPolicy"] == "relay"
    assert pc["configuration"]["iceServers"][0].startswith("turn:127.0.0.1:")
    assert [s["state"] for s in pc["states"]["connection"]] == ["connecting", "connected"]
    assert pc["candidatesByType"]["local"]["relay"] == 1
    assert pc["selectedPair"]["local"]["relayProtocol"] == "udp"
    assert pc["pairs"][0]["selected"] is True and pc["pairs"][0]["responsesReceived"] > 0
    assert {f["code"] for f in pc["findings"]} == {f["code"] for f in doc["findings"]}
    assert any(s["unit"] == "bytes" and s["samples"] for s in pc["flow"])


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    code, _, err = invoke("--html", str(out), str(WRONG_PASSWORD))
    assert code == 1
    assert str(out) in err
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    for text in ("turn-auth-failed", "<svg", "Candidates", "icecandidateerror", "Timeline"):
        assert text in html
    # No script, no stylesheet or image to fetch: one file for a support ticket.
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert re.findall(r"https?://[^'\" <]+", html) == ["http://www.w3.org/2000/svg"] * html.count(
        "<svg"
    )


def test_html_for_a_failed_call_has_pairs_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "failed.html"
    code, _, _ = invoke(
        "--json", "--html", str(out), str(FIXTURES / "chromium156-ice-failed.internals.json.gz")
    )
    assert code == 1
    html = out.read_text()
    assert "Candidate pairs" in html and "polyline" in html and "ice-failed-unknown" in html


def test_html_chart_has_a_legend_and_no_empty_bytes_box(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    invoke("--html", str(out), str(WRONG_PASSWORD))  # no byte counters: it never connected
    html = out.read_text()
    legends = re.findall(r"<p class=legend>(.*?)</p>", html)
    assert len(legends) == html.count("<svg") == 2
    for state in ("have-local-offer", "stable", "gathering", "complete", "icecandidateerror"):
        assert f"</i>{state}</span>" in legends[0], legends[0]
    assert "fill='none' stroke='#d0d7de'" not in html  # the bytes plot's empty frame
    assert html.count("No byte counters in the input: no bytes chart.") == 2
    invoke("--html", str(out), str(RELAY_UDP))
    html = out.read_text()
    assert "polyline" in html and "no bytes chart" not in html
    assert "</i>connected</span>" in re.findall(r"<p class=legend>(.*?)</p>", html)[0]


def test_credentials_never_printed(tmp_path: Path) -> None:
    dump = samples.write(tmp_path / "d.rtcstats", samples.rtcstats_delta(), lines=True)
    html = tmp_path / "d.html"
    outputs = [invoke("--json", str(dump))[1], invoke("--html", str(html), str(dump))[1]]
    outputs.append(html.read_text())
    for text in outputs:
        for secret in ("s3cr3t-Credential-Value", "another-Secret-42", "static-user", ":alice"):
            assert secret not in text


def _broken_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    good = RELAY_UDP.read_bytes()
    cases: dict[str, tuple[bytes | None, list[str], str]] = {
        "truncated-gzip": (good[: len(good) // 2], [], "truncated gzip"),
        "gzip-garbage": (b"\x1f\x8b" + b"\x00garbage" * 10, [], "not valid gzip"),
        "not-json": (b"this is a log file, not a dump\n", [], "is not JSON"),
        "html": (b"<html><body>webrtc</body></html>", [], "is not JSON"),
        "other-json-object": (b'{"hello": "world", "version": 2}', [], "JSON but an object"),
        "json-number": (b"42", [], "JSON but a int"),
        "json-array": (b"[1, 2, 3]", [], "JSON but an array"),
        "empty": (b"", [], "is empty"),
        "binary": (bytes(range(256)) * 4, [], "not text"),
        "rtcstats-bad-line": (
            b'RTCStatsDump\n{"fileFormat":3}\nnot json\n["close","1",null,1]\n',
            [],
            "line 3 is not JSON",
        ),
        "rtcstats-not-array": (
            b'RTCStatsDump\n{"fileFormat":3}\n"just a string"\n["close","1",null,1]\n',
            [],
            "not a [method, id, value, time] array",
        ),
        "pcs-not-object": (b'{"PeerConnections": [1, 2]}', [], "not an object"),
        "pc-not-object": (b'{"PeerConnections": {"1-1": 5}}', [], "not an object"),
        "no-peerconnection": (
            b'{"PeerConnections": {}, "getUserMedia": []}',
            [],
            "no PeerConnection",
        ),
        "rtcstats-header-only": (b'RTCStatsDump\n{"fileFormat":3}\n', [], "no PeerConnection"),
        "over-size-limit": (good, ["--max-size", "1K"], "limit (--max-size)"),
        "plain-over-size-limit": (gzip.decompress(good), ["--max-size", "10K"], "over the"),
        "gzip-bomb": (
            gzip.compress(b"[" + b" " * (8 << 20) + b"]"),
            ["--max-size", "1M"],
            "decompresses to more than",
        ),
        "bad-max-size": (good, ["--max-size", "lots"], "--max-size"),
        "missing": (None, [], "no such file"),
    }
    out: dict[str, tuple[Path, list[str], str]] = {}
    for name, (content, extra, message) in cases.items():
        path = tmp_path / f"{name}.dump"
        if content is not None:
            path.write_bytes(content)
        out[name] = (path, extra, message)
    out["directory"] = (tmp_path, [], "is a directory")
    return out


BROKEN = [
    "truncated-gzip",
    "gzip-garbage",
    "not-json",
    "html",
    "other-json-object",
    "json-number",
    "json-array",
    "empty",
    "binary",
    "rtcstats-bad-line",
    "rtcstats-not-array",
    "pcs-not-object",
    "pc-not-object",
    "no-peerconnection",
    "rtcstats-header-only",
    "over-size-limit",
    "plain-over-size-limit",
    "gzip-bomb",
    "bad-max-size",
    "missing",
    "directory",
]


@pytest.mark.parametrize("case", BROKEN)
def test_broken_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    path, extra, message = _broken_inputs(tmp_path)[case]
    code, out, err = invoke(*extra, str(path))
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("iceward: error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def test_real_entry_point(tmp_path: Path) -> None:
    """The installed command as users run it: clean JSON on stdout, one line on bad input."""
    ok = subprocess.run(
        [sys.executable, "-m", "iceward", "analyze", "--json", str(WRONG_PASSWORD)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 1, ok.stderr
    assert json.loads(ok.stdout)["findings"][0]["code"] == "turn-auth-failed"
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(RELAY_UDP.read_bytes()[:1000])
    bad = subprocess.run(
        [sys.executable, "-m", "iceward", "analyze", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
