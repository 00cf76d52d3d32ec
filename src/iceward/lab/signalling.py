"""The lab's signalling server for browser agents: HTTPS on 443 in the internet namespace.

It serves the call page (``/lab.html``) and a mailbox per room: ``POST /msg/ROOM/TO`` appends a
JSON message for role TO, ``GET /msg/ROOM/ME?since=N`` returns ME's messages from index N. Port
443 with the lab CA's certificate, so it crosses the UDP-blocking firewall like a real app would.

Run as ``python -m iceward.lab.signalling --listen IP --cert C --key K``.
"""

from __future__ import annotations

import argparse
import json
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>iceward lab call</title></head>
<body><pre id="log"></pre>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const room = params.get("room"), role = params.get("role");
const peer = role === "controlling" ? "controlled" : "controlling";
const state = {done: false, connected: false, data: null, events: [], error: null};
let pc, dc, t0;
function log(m) { state.events.push(`${Math.round(performance.now() - t0)} ms ${m}`); }
async function send(msg) {
  await fetch(`/msg/${room}/${peer}`, {method: "POST", body: JSON.stringify(msg)});
}
function wireChannel(channel) {
  dc = channel;
  dc.onopen = () => { log("datachannel open"); dc.send(`hello from ${role}`); };
  dc.onmessage = e => { state.data = e.data; log(`received ${e.data}`); };
}
async function poll() {
  let since = 0;
  const pending = [];
  while (!state.done) {
    const r = await fetch(`/msg/${room}/${role}?since=${since}`);
    const msgs = await r.json();
    since += msgs.length;
    for (const m of msgs) {
      if (m.type === "sdp") {
        await pc.setRemoteDescription(m.sdp);
        if (m.sdp.type === "offer") {
          await pc.setLocalDescription(await pc.createAnswer());
          await send({type: "sdp", sdp: pc.localDescription});
        }
        for (const c of pending.splice(0)) await pc.addIceCandidate(c);
      } else if (m.type === "candidate") {
        if (pc.remoteDescription) await pc.addIceCandidate(m.candidate);
        else pending.push(m.candidate);
      }
    }
    await new Promise(res => setTimeout(res, 100));
  }
}
window.startCall = async (iceServers, policy) => {
  t0 = performance.now();
  pc = new RTCPeerConnection({iceServers, iceTransportPolicy: policy});
  pc.onicecandidate = e => {
    if (e.candidate) send({type: "candidate", candidate: e.candidate.toJSON()});
  };
  pc.onicecandidateerror = e => log(`candidate error ${e.errorCode} ${e.url}`);
  pc.oniceconnectionstatechange = () => log(`ice ${pc.iceConnectionState}`);
  pc.onconnectionstatechange = () => {
    log(`connection ${pc.connectionState}`);
    if (pc.connectionState === "connected" && !state.connected) {
      state.connected = true;
      state.connect_ms = Math.round(performance.now() - t0);
    }
  };
  if (role === "controlling") {
    wireChannel(pc.createDataChannel("lab"));
    await pc.setLocalDescription(await pc.createOffer());
    await send({type: "sdp", sdp: pc.localDescription});
  } else {
    pc.ondatachannel = e => wireChannel(e.channel);
  }
  poll().catch(e => { state.error = String(e); });
};
window.callResult = async () => {
  const out = {connected: state.connected && state.data !== null, data: state.data,
               connect_ms: state.connect_ms, events: state.events, error: state.error,
               connection: pc.connectionState, ice: pc.iceConnectionState, candidates: []};
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach(s => {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  stats.forEach(s => {
    if (s.type !== "local-candidate") return;
    const relay = s.relayProtocol ? ` relay ${s.relayProtocol}` : "";
    out.candidates.push(`${s.address}:${s.port} typ ${s.candidateType}${relay}`);
  });
  const pair = pairId ? stats.get(pairId) : null;
  if (pair) {
    const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
    out.local = {type: l.candidateType, address: `${l.address}:${l.port}`};
    if (l.candidateType === "relay") out.local.relay_protocol = l.relayProtocol;
    out.remote = {type: r.candidateType, address: `${r.address}:${r.port}`};
  }
  return out;
};
window.stopCall = () => { state.done = true; if (pc) pc.close(); };
window.labReady = true;
</script></body></html>
"""


class Mailboxes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.boxes: dict[tuple[str, str], list[object]] = {}

    def post(self, room: str, to: str, message: object) -> None:
        with self.lock:
            self.boxes.setdefault((room, to), []).append(message)

    def since(self, room: str, me: str, index: int) -> list[object]:
        with self.lock:
            return list(self.boxes.get((room, me), [])[index:])


def make_handler(boxes: Mailboxes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if url.path == "/lab.html":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif len(parts) == 3 and parts[0] == "msg":
                since = int(parse_qs(url.query).get("since", ["0"])[0])
                body = json.dumps(boxes.since(parts[1], parts[2], since)).encode()
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            parts = urlparse(self.path).path.strip("/").split("/")
            length = int(self.headers.get("Content-Length", "0"))
            if len(parts) != 3 or parts[0] != "msg" or length > 1 << 20:
                self._send(400, b"bad request", "text/plain")
                return
            boxes.post(parts[1], parts[2], json.loads(self.rfile.read(length)))
            self._send(204, b"", "text/plain")

        def log_message(self, format: str, *args: object) -> None:
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our name (getfqdn): no DNS in the lab.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iceward.lab.signalling")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    server = Server((args.listen, args.port), make_handler(Mailboxes()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"signalling on https://{args.listen}:{args.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
