"""The lab's browser agent: Debian's Chromium in a LAN namespace, driven by Playwright.

Run as ``ip netns exec LAN python -m iceward.lab.browser --role ... --room ... --config ...``.
Chromium gets a private HOME whose NSS database trusts the lab CA (no certificate errors are
ignored), ``--no-proxy-server``, ``--disable-features=WebRtcHideLocalIpsWithMdns`` (real host
candidates), and host resolver rules that resolve only the lab names, so nothing leaks. It opens
chrome://webrtc-internals, then the call page from the signalling server on 443, runs the call,
prints a result line (the same shape as the aioice agent's) and saves the webrtc-internals dump.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIGNAL_NAME = "signal.lab.iceward.test"
TURN_NAME = "turn.lab.iceward.test"
#: Debian's Chromium headless on a machine with no internet: no background connections, no
#: sandbox (run as root), no QUIC, no GPU. Tests and fixture recording use these too.
HEADLESS_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: In a lab LAN: no proxy, and real host addresses in candidates rather than mDNS names.
CHROMIUM_ARGS = [
    *HEADLESS_ARGS,
    "--no-proxy-server",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def trust_ca(home: Path, ca_pem: Path) -> None:
    certutil = shutil.which("certutil")
    if certutil is None:
        raise RuntimeError("certutil is missing (Debian package libnss3-tools)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    db = f"sql:{nssdb}"
    if not (nssdb / "cert9.db").exists():
        subprocess.run([certutil, "-d", db, "-N", "--empty-password"], check=True)
    subprocess.run(
        [certutil, "-d", db, "-A", "-t", "C,,", "-n", "iceward-lab-ca", "-i", str(ca_pem)],
        check=True,
        capture_output=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    home = Path(args.home)
    trust_ca(home, Path(args.ca_file))
    env: dict[str, str | float | bool] = {
        k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CONFIG_HOME")
    }
    env["HOME"] = str(home)
    rules = f"MAP {SIGNAL_NAME} {args.signal_ip}, MAP {TURN_NAME} {args.turn_ip}, MAP * ~NOTFOUND"
    chromium = chromium_path()
    if chromium is None:
        raise RuntimeError("no chromium on PATH (Debian package chromium); set $CHROMIUM")
    result: dict[str, Any] = {"role": args.role, "connected": False}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules={rules}"],
            env=env,
            headless=True,
        )
        try:
            result["browser"] = browser.version
            context = browser.new_context(accept_downloads=True)
            internals = context.new_page()
            internals.goto("chrome://webrtc-internals")
            page = context.new_page()
            page.goto(f"https://{SIGNAL_NAME}/lab.html?room={args.room}&role={args.role}")
            page.wait_for_function("window.labReady === true")
            page.evaluate(
                "([servers, policy]) => startCall(servers, policy)",
                [json.loads(args.config), "relay" if args.relay_only else "all"],
            )
            deadline = time.monotonic() + args.deadline
            report: dict[str, Any] = {}
            while time.monotonic() < deadline:
                report = page.evaluate("callResult()")
                if report.get("connected"):
                    break
                time.sleep(0.25)
            time.sleep(1.0)  # the peer's message, and one more stats poll for the dump
            report = page.evaluate("callResult()")
            result.update(report)
            if not result.get("connected"):
                result["error"] = (
                    f"not connected within {args.deadline:g} s "
                    f"(connection {report.get('connection')}, ice {report.get('ice')})"
                )
            internals.bring_to_front()
            internals.click("summary:has-text('Create a WebRTC-Internals dump')")
            with internals.expect_download() as info:
                internals.click("#dump-click-target")
            tmp = Path(args.out).with_suffix(".part")
            info.value.save_as(tmp)
            data = tmp.read_bytes()
            tmp.unlink()
            if data[:2] != b"\x1f\x8b":
                data = gzip.compress(data, mtime=0)
            Path(args.out).write_bytes(data)
            result["dump"] = args.out
            page.evaluate("stopCall()")
        finally:
            browser.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iceward.lab.browser")
    parser.add_argument("--role", choices=["controlling", "controlled"], required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--config", required=True, help="iceServers JSON array")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--signal-ip", required=True)
    parser.add_argument("--turn-ip", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--out", required=True, help="where the webrtc-internals dump goes")
    parser.add_argument("--deadline", type=float, default=15.0)
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except Exception as exc:
        result = {"role": args.role, "connected": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps({"result": result}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
