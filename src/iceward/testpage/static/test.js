"use strict";
// iceward browser connectivity test: the doctor's ladder inside the user's browser.
// 1. config (test-link token, pasted iceServers, or a credentials URL) and its lint;
// 2. one RTCPeerConnection per ICE server URL and transport: host/srflx/relay candidates and
//    icecandidateerror events, so every result is attributable to one URL;
// 3. per TURN URL: two relay-only peers, a data channel, timestamped messages echoed back;
// 4. a verdict in the findings vocabulary served by the server (/test/findings.json).
// No build step, no external resources. window.iceward exposes the state for tests.

const GATHER_TIMEOUT_MS = 10000;
const CONNECT_TIMEOUT_MS = 10000;
const MESSAGES = 20;
const ECHO_WAIT_MS = 2000;
// Warm-up messages sent (one every 100 ms) until one comes back, before the measured ones.
const WARMUP_TRIES = 20;
const MAX_RELAY_RTT_MS = 300;
// A turns: URL that fails fast is asked again without TLS (turn:HOST:PORT?transport=tcp) for
// this long: a connection refused arrives at once, a port that speaks only TLS stays silent.
const TLS_TWIN_WAIT_MS = 3000;

const STUN_ERRORS = {
  300: "try another server (300 Try Alternate)",
  400: "the server could not parse the request (400 Bad Request)",
  401: "wrong username or credential (401 Unauthorized)",
  403: "the server forbids this (403 Forbidden: peer address or policy)",
  420: "unknown attribute (420)",
  437: "allocation mismatch (437)",
  438: "stale nonce (438)",
  440: "address family not supported (440)",
  441: "wrong credentials (441)",
  442: "transport not supported by the server (442)",
  443: "peer address family mismatch (443)",
  486: "allocation quota reached (486)",
  487: "role conflict (487)",
  500: "server error (500)",
  508: "the server has no relay capacity left (508)",
};

function explainError(code, text) {
  if (code === 701) {
    const t = (text || "").toLowerCase();
    if (t.includes("dns") || t.includes("resolve") || t.includes("hostname")) {
      return "could not resolve the server name (701)";
    }
    if (t.includes("tcp") || t.includes("tls") || t.includes("connect")) {
      return "could not connect over TCP/TLS: port closed, filtered or certificate refused (701)";
    }
    return "no answer from the server: blocked, down or wrong port (701)";
  }
  return STUN_ERRORS[code] || `error ${code}${text ? ": " + text : ""}`;
}

const state = {
  specs: {},
  servers: null,
  source: null,
  sourceLabel: "",
  entries: [],
  rows: [],
  findings: [],
  summary: "",
  facts: { userAgent: navigator.userAgent, getUserMedia: "not-asked", mdnsHost: false,
    ipv6: false, hostCandidates: 0, widenedGathering: null },
  allPolicy: null,
  getStats: [],
  report: null,
  running: false,
  answer: "",
  // From the server (/test/policy.json): the doctor's thresholds and the peer policy's table.
  policy: { longLivedCredentialS: 7 * 86400, internalRanges: [] },
};
window.iceward = state;

const $ = (id) => document.getElementById(id);

function setStatus(text, percent) {
  $("status").textContent = text;
  if (percent !== undefined) $("progress").value = percent;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s (${what})`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// -- configuration ---------------------------------------------------------------------------

function normalise(doc) {
  // An iceServers array, an object with iceServers, or a TURN REST API answer.
  if (Array.isArray(doc)) return doc;
  if (doc && typeof doc === "object") {
    if (Array.isArray(doc.iceServers)) return doc.iceServers;
    if (Array.isArray(doc.uris)) {
      return [{ urls: doc.uris, username: doc.username, credential: doc.password }];
    }
  }
  throw new Error("expected an iceServers array, an object with iceServers, or {username, password, uris}");
}

const URL_RE = /^(stuns?|turns?):(\[[0-9a-fA-F:.]+\]|[^:?/\s]+)(?::(\d{1,5}))?(?:\?transport=(udp|tcp))?$/;

function parseUrl(url) {
  const m = URL_RE.exec(String(url).trim());
  if (!m) return null;
  const scheme = m[1];
  const kind = scheme.startsWith("turn") ? "turn" : "stun";
  const secure = scheme.endsWith("s");
  const transport = secure ? "tls" : kind === "turn" ? m[4] || "udp" : "udp";
  const port = m[3] ? Number(m[3]) : secure ? 5349 : 3478;
  return { url: String(url).trim(), scheme, kind, host: m[2], port, transport, secure };
}

// -- internal addresses: the server's peer-policy table (turn/policy.py DEFAULT_DENIED), IPv4
// hidden in IPv6 unwrapped as the server does; names are never addresses (fdn.example is public).

function parseIPv4(text) {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const bytes = [];
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || (part.length > 1 && part[0] === "0")) return null;
    const n = Number(part);
    if (n > 255) return null;
    bytes.push(n);
  }
  return bytes;
}

function parseIPv6(text) {
  let t = text.split("%")[0];
  let v4 = null;
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(t);
  if (dotted) {
    v4 = parseIPv4(dotted[2]);
    if (!v4) return null;
    t = dotted[1] + "0:0";
  }
  if (!/^[0-9a-f:]+$/.test(t)) return null;
  const halves = t.split("::");
  if (halves.length > 2) return null;
  const split = (x) => (x ? x.split(":") : []);
  const head = split(halves[0]);
  const tail = halves.length === 2 ? split(halves[1]) : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) return null;
  const groups = halves.length === 1 ? head
    : [...head, ...Array(8 - head.length - tail.length).fill("0"), ...tail];
  if (groups.some((g) => !/^[0-9a-f]{1,4}$/.test(g))) return null;
  const bytes = [];
  for (const g of groups) { const n = parseInt(g, 16); bytes.push(n >> 8, n & 255); }
  if (v4) bytes.splice(12, 4, ...v4);
  return bytes;
}

function parseIp(text) {
  const v4 = parseIPv4(text);
  if (v4) return { v: 4, b: v4 };
  const v6 = text.includes(":") ? parseIPv6(text) : null;
  return v6 ? { v: 6, b: v6 } : null;
}

function inPrefix(bytes, net, len) {
  for (let bit = 0; bit < len; bit++) {
    const mask = 0x80 >> (bit % 8);
    if ((bytes[bit >> 3] & mask) !== (net[bit >> 3] & mask)) return false;
  }
  return true;
}

const V6 = (text) => parseIPv6(text);
const EMBEDDING = { mapped: V6("::ffff:0:0"), nat64: V6("64:ff9b::"), nat64Local: V6("64:ff9b:1::"),
  siit: V6("::ffff:0:0:0"), sixToFour: V6("2002::"), teredo: V6("2001::") };
// RFC 6052 2.2: where the IPv4 address sits per prefix length (byte 8 is always skipped).
const RFC6052 = [[[6, 8], [9, 11]], [[7, 8], [9, 12]], [[9, 13]], [[12, 16]]];

// Every address a packet to ip may really reach, as the server's turn.policy.reached().
function reached(ip) {
  if (ip.v === 4) return [ip];
  const b = ip.b;
  const v4 = (bytes) => ({ v: 4, b: bytes });
  if (inPrefix(b, EMBEDDING.mapped, 96)) return [v4(b.slice(12))];
  if (inPrefix(b, EMBEDDING.nat64, 96) || inPrefix(b, EMBEDDING.siit, 96)) return [v4(b.slice(12))];
  if (inPrefix(b, EMBEDDING.nat64Local, 48)) {
    const found = RFC6052.map((parts) => v4(parts.flatMap(([from, to]) => b.slice(from, to))))
      .filter((a) => a.b[0] !== 0);
    return found.length ? found : [ip];
  }
  if (inPrefix(b, EMBEDDING.sixToFour, 16)) return [v4(b.slice(2, 6))];
  if (inPrefix(b, EMBEDDING.teredo, 32)) return [v4(b.slice(12).map((x) => x ^ 0xff)), v4(b.slice(4, 8))];
  const low = b.slice(12);
  if (b.slice(0, 12).every((x) => x === 0) && (low[0] || low[1] || low[2] || low[3] > 1)) {
    return [v4(low)]; // IPv4-compatible ::a.b.c.d
  }
  return [ip];
}

function internalRanges() {
  if (!state.ranges) {
    state.ranges = state.policy.internalRanges.map(([net, why]) => {
      const [addr, len] = net.split("/");
      const ip = parseIp(addr);
      return { v: ip.v, b: ip.b, len: Number(len), why };
    });
  }
  return state.ranges;
}

// Why peers elsewhere cannot reach host (an IP, bracketed or not, or a name), or null: the
// server's diagnose.address.internal_reason().
function internalReason(host) {
  if (!host) return null;
  const name = String(host).replace(/^\[+|\]+$/g, "").toLowerCase();
  if (name === "localhost" || name === "localhost.localdomain" || name.endsWith(".localhost")) {
    return "loopback";
  }
  if (name.endsWith(".local")) return "mDNS name (the local network only)";
  const ip = parseIp(name.split("%")[0]);
  if (!ip) return null;
  for (const addr of reached(ip)) {
    for (const r of internalRanges()) {
      if (r.v === addr.v && inPrefix(addr.b, r.b, r.len)) return r.why;
    }
  }
  return null;
}

function finding(code, evidence, subject, severity) {
  const spec = state.specs[code] || { severity: "error", title: code, fix: "" };
  const f = { code, severity: severity || spec.severity, title: spec.title,
    evidence: Array.isArray(evidence) ? evidence : [evidence], fix: spec.fix };
  if (subject) f.subject = subject;
  return f;
}

// Entries: one per URL (and so per transport); config findings for the lint step.
function lint(servers) {
  const findings = [];
  const entries = [];
  if (!Array.isArray(servers) || servers.length === 0) {
    findings.push(finding("bad-ice-config", "the configuration has no iceServers entry"));
    return { entries, findings };
  }
  servers.forEach((server, i) => {
    if (!server || typeof server !== "object" || server.urls === undefined) {
      findings.push(finding("bad-ice-config", `iceServers[${i}] has no urls`));
      return;
    }
    const urls = Array.isArray(server.urls) ? server.urls : [server.urls];
    urls.forEach((url) => {
      const parsed = parseUrl(url);
      if (!parsed) {
        findings.push(finding("bad-ice-config", `iceServers[${i}]: ${JSON.stringify(url)} is not a STUN/TURN URL`));
        return;
      }
      if (parsed.kind === "turn" && (!server.username || !server.credential)) {
        findings.push(finding("bad-ice-config", `${parsed.url}: TURN URL without username and credential`, parsed.url));
        return;
      }
      const ice = { urls: [parsed.url] };
      if (server.username !== undefined) ice.username = server.username;
      if (server.credential !== undefined) ice.credential = server.credential;
      entries.push({ ...parsed, ice, index: i });
    });
  });
  const turns = entries.filter((e) => e.kind === "turn");
  if (entries.length && turns.length === 0) {
    findings.push(finding("no-turn", "only STUN URLs: users behind symmetric NATs or UDP-blocking firewalls cannot connect"));
  } else if (turns.length && turns.every((e) => e.transport === "udp")) {
    findings.push(finding("turn-udp-only", `TURN URLs: ${turns.map((e) => e.url).join(", ")}`, null, "warning"));
  }
  if (turns.length && !turns.some((e) => e.secure && e.port === 443)) {
    findings.push(finding("no-tls-443", "no turns: URL on port 443", null, "warning"));
  }
  servers.forEach((server, i) => {
    const urls = turns.filter((e) => e.index === i).map((e) => e.url);
    const line = urls.length ? staticCredential(String(server.username)) : null;
    if (line) {
      findings.push(finding("static-credentials", line, `iceServers[${i}] (${urls.join(", ")})`, "warning"));
    }
  });
  return { entries, findings };
}

// The doctor's static-credentials rule: a username that is no TURN REST <expiry>:<user>, an
// expiry in milliseconds, or one further ahead than the server's threshold (7 days).
function staticCredential(username) {
  const head = username.split(":")[0];
  if (/^\d{13}$/.test(head)) {
    return `username '${username}': a 13-digit expiry is milliseconds; servers read seconds, so this credential never expires`;
  }
  if (!/^\d{1,12}$/.test(head)) {
    return `username '${username}' is not a TURN REST username (<expiry>:<user>): a fixed password handed to every browser can be copied and used by anyone`;
  }
  const left = Number(head) - Date.now() / 1000;
  if (left > state.policy.longLivedCredentialS) {
    return `username '${username}' is valid for ${duration(left)}: once copied it works for that long; mint per session with a TTL of hours`;
  }
  return null;
}

function duration(seconds) {
  const s = Math.floor(Math.abs(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return m ? `${m} min ${s % 60} s` : `${s} s`;
}

async function loadSpecs() {
  const [specs, policy] = await Promise.all(
    ["/test/findings.json", "/test/policy.json"].map((u) => fetch(u).then((r) => r.json())));
  for (const spec of specs) state.specs[spec.code] = spec;
  state.policy = policy;
  state.ranges = null;
}

async function configFromToken(token) {
  const response = await fetch(`/api/v1/test-ice-servers?t=${encodeURIComponent(token)}`);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return normalise(body);
}

async function configFromUrl(url) {
  const response = await fetch(url, { credentials: "include" });
  if (!response.ok) throw new Error(`${url} answered HTTP ${response.status}`);
  return normalise(await response.json());
}

// -- step 2: gathering, one peer connection per URL ------------------------------------------

function candidateInfo(c) {
  return { type: c.type, protocol: c.protocol, relayProtocol: c.relayProtocol || null,
    address: c.address || "", port: c.port, url: c.url || null };
}

async function gather(entry, timeoutMs = GATHER_TIMEOUT_MS) {
  const result = { candidates: [], errors: [], timedOut: false };
  const pc = new RTCPeerConnection({ iceServers: [entry.ice], iceTransportPolicy: "all" });
  try {
    pc.createDataChannel("gather");
    const done = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (!e.candidate) return resolve();
        if (e.candidate.candidate) result.candidates.push(candidateInfo(e.candidate));
      };
      pc.onicegatheringstatechange = () => {
        if (pc.iceGatheringState === "complete") resolve();
      };
    });
    pc.onicecandidateerror = (e) => {
      result.errors.push({ code: e.errorCode, text: e.errorText || "", url: e.url || entry.url,
        meaning: explainError(e.errorCode, e.errorText) });
    };
    await pc.setLocalDescription(await pc.createOffer());
    try {
      await withTimeout(done, timeoutMs, "gathering");
    } catch (err) {
      result.timedOut = true;
    }
  } finally {
    pc.close();
  }
  return result;
}

// A turns: URL that failed at once (701): is it the TLS layer? The same host and port without
// TLS tells: an allocation, a TURN error or a connection held open answer there, so TCP connects
// and the browser refused the TLS handshake (an untrusted, expired or misnamed certificate). A
// refused connection (701 again) means nothing listens: turn-unreachable, as before.
async function tlsTwin(entry) {
  const url = `turn:${entry.host}:${entry.port}?transport=tcp`;
  const g = await gather({ ...entry, url, ice: { ...entry.ice, urls: [url] } }, TLS_TWIN_WAIT_MS);
  const relay = g.candidates.some((c) => c.type === "relay");
  const answered = g.errors.find((e) => e.code !== 701);
  const refused = g.errors.some((e) => e.code === 701);
  if (!relay && !answered && refused) return null;
  const what = relay ? "allocates a relay" : answered ? `answers TURN (${answered.code})`
    : "accepts the connection";
  return `${url}, the same port without TLS, ${what}: the TLS handshake is what fails, so this ` +
    `browser refused the certificate (untrusted or self-signed, expired, or not for ${entry.host})`;
}

// -- step 3: the relay data path -------------------------------------------------------------

async function negotiate(pc1, pc2) {
  const offer = await pc1.createOffer();
  await pc1.setLocalDescription(offer);
  await pc2.setRemoteDescription(offer);
  const answer = await pc2.createAnswer();
  await pc2.setLocalDescription(answer);
  await pc1.setRemoteDescription(answer);
}

function channelOpen(channel) {
  if (channel.readyState === "open") return Promise.resolve(channel);
  return new Promise((resolve, reject) => {
    channel.addEventListener("open", () => resolve(channel), { once: true });
    channel.addEventListener("close", () => reject(new Error("channel closed")), { once: true });
  });
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  let pairId = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  if (!pairId) return null;
  const pair = byId.get(pairId) || {};
  const l = byId.get(pair.localCandidateId) || {};
  const r = byId.get(pair.remoteCandidateId) || {};
  const side = (c) => `${c.candidateType || "?"} ${c.protocol || ""}` +
    (c.relayProtocol ? ` (relay over ${c.relayProtocol})` : "");
  return { local: l.candidateType || null, remote: r.candidateType || null,
    text: `${side(l)} ↔ ${side(r)}` };
}

function statsArray(report) {
  const out = [];
  report.forEach((s) => out.push(JSON.parse(JSON.stringify(s))));
  return out;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

async function dataPath(iceServers, policy) {
  const out = { connected: false, sent: 0, delivered: 0, lost: 0, rttP50: null, rttP95: null,
    selected: null, error: null, stats: null };
  const config = { iceServers, iceTransportPolicy: policy };
  const pc1 = new RTCPeerConnection(config);
  const pc2 = new RTCPeerConnection(config);
  pc1.onicecandidate = (e) => e.candidate && pc2.addIceCandidate(e.candidate).catch(() => {});
  pc2.onicecandidate = (e) => e.candidate && pc1.addIceCandidate(e.candidate).catch(() => {});
  const rtts = [];
  try {
    const dc1 = pc1.createDataChannel("iceward", { ordered: false, maxRetransmits: 0 });
    const dc2Promise = new Promise((resolve) => { pc2.ondatachannel = (e) => resolve(e.channel); });
    await negotiate(pc1, pc2);
    const dc2 = await withTimeout(
      dc2Promise.then((dc) => channelOpen(dc)).then((dc) => channelOpen(dc1).then(() => dc)),
      CONNECT_TIMEOUT_MS, "relay connection");
    out.connected = true;
    dc2.onmessage = (e) => dc2.send(e.data); // echo
    const seen = new Set();
    let warm = false;
    dc1.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.warmup) {
        warm = true;
        return;
      }
      if (seen.has(msg.seq)) return;
      seen.add(msg.seq);
      rtts.push(performance.now() - msg.t);
    };
    // A channel that has just opened may still refuse sends for a few milliseconds (Chromium
    // drops them, logging "Send failed INVALID_STATE"): loss is measured from the first echo on.
    for (let i = 0; !warm && i < WARMUP_TRIES; i++) {
      dc1.send(JSON.stringify({ warmup: true }));
      await sleep(100);
    }
    for (let seq = 0; seq < MESSAGES; seq++) {
      dc1.send(JSON.stringify({ seq, t: performance.now(), pad: "x".repeat(seq % 2 ? 1000 : 100) }));
      out.sent += 1;
      await sleep(20);
    }
    const deadline = performance.now() + ECHO_WAIT_MS;
    while (rtts.length < MESSAGES && performance.now() < deadline) await sleep(50);
    const pair = await selectedPair(pc1);
    out.selected = pair ? pair.text : null;
    out.selectedLocal = pair ? pair.local : null;
  } catch (err) {
    out.error = String(err.message || err);
  }
  try {
    out.stats = statsArray(await pc1.getStats());
  } catch (err) {
    out.stats = null;
  }
  pc1.close();
  pc2.close();
  const sorted = rtts.slice().sort((a, b) => a - b);
  out.delivered = rtts.length;
  out.lost = out.sent - out.delivered;
  out.rttP50 = percentile(sorted, 50);
  out.rttP95 = percentile(sorted, 95);
  return out;
}

// -- the table -------------------------------------------------------------------------------

function newRow(entry) {
  return { url: entry.url, kind: entry.kind, transport: entry.transport, status: "skip",
    host: 0, srflx: 0, relay: 0, relayProtocol: null, relayAddress: null, errors: [],
    datapath: null, note: "waiting" };
}

const COLUMNS = ["URL", "Transport", "Status", "host", "srflx", "relay", "Relay data path", "Errors"];

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  td.dataset.label = COLUMNS[tr.children.length]; // the column's name on narrow screens
  tr.appendChild(td);
  return td;
}

const STATUS_TEXT = { ok: "works", warn: "warning", fail: "fails", skip: "not tested", run: "testing…" };

function renderRows(rows, running) {
  const tbody = $("results").querySelector("tbody");
  tbody.textContent = "";
  rows.forEach((row) => {
    const tr = document.createElement("tr");
    const status = running && row.note === "testing…" ? "run" : row.status;
    tr.className = status;
    tr.dataset.url = row.url;
    tr.dataset.kind = row.kind;
    tr.dataset.transport = row.transport;
    tr.dataset.status = row.status;
    cell(tr, row.url, "url");
    cell(tr, row.kind === "turn" ? `TURN ${row.transport.toUpperCase()}` : "STUN");
    const statusCell = cell(tr, "", `status ${status}`);
    const word = document.createElement("span");
    word.className = "state";
    word.textContent = STATUS_TEXT[status];
    statusCell.appendChild(word);
    if (row.note && row.note !== "testing…" && row.note !== "waiting") {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = row.note;
      statusCell.appendChild(note);
    }
    cell(tr, String(row.host));
    cell(tr, String(row.srflx));
    cell(tr, row.relay ? `${row.relay}${row.relayProtocol ? " (" + row.relayProtocol + ")" : ""}` : "0");
    const dp = row.datapath;
    let path = row.kind === "turn" ? "—" : "n/a";
    if (dp) {
      path = dp.connected ? `${dp.delivered}/${dp.sent} delivered, ${dp.lost} lost` : `no data: ${dp.error || "not connected"}`;
      if (dp.rttP50 !== null) path += `; RTT p50 ${Math.round(dp.rttP50)} ms, p95 ${Math.round(dp.rttP95)} ms`;
    }
    cell(tr, path);
    cell(tr, [...new Set(row.errors.map((e) => `${e.code}: ${e.meaning}`))].join("; ") || "none");
    tbody.appendChild(tr);
  });
  $("results-section").hidden = rows.length === 0;
}

function renderVerdict(summary, findings, answer) {
  $("answer").textContent = answer || "";
  $("answer").hidden = !answer;
  $("answer").className = "answer " + (!answer ? "" : answer.includes("will not connect") ? "fail"
    : answer.includes("only through") ? "warn" : "ok");
  $("summary").textContent = summary;
  const ul = $("findings");
  ul.textContent = "";
  findings.forEach((f) => {
    const li = document.createElement("li");
    li.className = f.severity;
    li.dataset.code = f.code;
    const head = document.createElement("div");
    const strong = document.createElement("strong");
    strong.textContent = `${f.severity === "error" ? "Problem" : f.severity === "warning" ? "Warning" : "Note"}: ${f.title}`;
    head.appendChild(strong);
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = ` [${f.code}]${f.subject ? " " + f.subject : ""}`;
    head.appendChild(code);
    li.appendChild(head);
    if (f.evidence.length) {
      const ev = document.createElement("ul");
      ev.className = "evidence";
      f.evidence.forEach((line) => {
        const item = document.createElement("li");
        item.textContent = line;
        ev.appendChild(item);
      });
      li.appendChild(ev);
    }
    if (f.fix && f.fix !== "—") {
      const fix = document.createElement("div");
      fix.textContent = `Fix: ${f.fix}`;
      li.appendChild(fix);
    }
    ul.appendChild(li);
  });
  $("verdict-section").hidden = false;
}

function renderFacts(facts) {
  const dl = $("facts");
  dl.textContent = "";
  const items = [
    ["Browser", facts.userAgent],
    ["Microphone permission", facts.getUserMedia],
    ["Microphone permission widened gathering", facts.widenedGathering === undefined ||
      facts.widenedGathering === null ? "not tested" : facts.widenedGathering ? "yes" : "no"],
    ["Host candidates", String(facts.hostCandidates)],
    ["Host addresses hidden behind mDNS (.local)", facts.mdnsHost ? "yes" : "no"],
    ["IPv6 candidates", facts.ipv6 ? "yes" : "no"],
  ];
  for (const [k, v] of items) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  $("facts-section").hidden = false;
}

function renderAllPolicy(all) {
  const p = $("all-policy");
  if (!all) { p.hidden = true; return; }
  p.hidden = false;
  p.textContent = all.connected
    ? `With every candidate allowed, the browser picked: ${all.selected || "unknown pair"}.`
    : `With every candidate allowed, the peers did not connect: ${all.error || "unknown"}.`;
}

// -- step 4: verdict -------------------------------------------------------------------------

function verdict(configFindings, rows) {
  const findings = configFindings.slice();
  const refused = []; // one turn-auth-failed for every URL that refused the credential
  for (const row of rows) {
    if (row.kind === "stun") {
      if (row.status !== "ok") {
        findings.push(finding("stun-unreachable", `${row.url}: no server-reflexive candidate` +
          (row.errors.length ? `; ${row.errors.map((e) => e.meaning).join("; ")}` : ""), row.url));
      }
      continue;
    }
    const evidence = [...new Set(row.errors.map((e) => `icecandidateerror ${e.code} (${e.meaning}) from ${e.url}`))];
    if (row.problem === "auth") {
      refused.push(row);
    } else if (row.problem === "tls") {
      findings.push(finding("tls-certificate-invalid", [...evidence, row.tls,
        "browsers refuse the connection, so this URL gives no relay"], row.url));
    } else if (row.problem === "unreachable") {
      findings.push(finding("turn-unreachable",
        [`${row.url}: no relay candidate${row.timedOut ? " within " + GATHER_TIMEOUT_MS / 1000 + " s" : ""}`, ...evidence], row.url));
    } else if (row.problem === "datapath") {
      const dp = row.datapath;
      findings.push(finding("relay-ports-blocked",
        [`${row.url}: relay candidate ${row.relayAddress || ""} allocated, but two relay-only peers ` +
          (dp.connected ? `delivered ${dp.delivered}/${dp.sent} messages` : `never connected (${dp.error})`)], row.url));
    }
    if (row.relayAddress && internalReason(row.relayAddress)) {
      const reachedPrivately = internalReason(parseUrl(row.url).host) !== null;
      findings.push(finding("private-relay-address", `${row.url}: relayed address ${row.relayAddress}`,
        row.url, reachedPrivately ? "warning" : "error"));
    }
    if (row.datapath && row.datapath.rttP50 !== null && row.datapath.rttP50 > MAX_RELAY_RTT_MS) {
      findings.push(finding("high-relay-latency", `${row.url}: RTT p50 ${Math.round(row.datapath.rttP50)} ms`, row.url));
    }
  }
  if (refused.length) {
    const lines = refused.flatMap((row) => {
      const errors = [...new Set(row.errors.filter((e) => e.code === 401 || e.code === 441)
        .map((e) => `icecandidateerror ${e.code} (${e.meaning})`))];
      return [`${row.url}: ${errors.join("; ") || "no relay candidate"}`];
    });
    findings.push(finding("turn-auth-failed", lines, refused.map((r) => r.url).join(", ")));
  }
  if (state.allPolicy && state.allPolicy.connected) {
    const relayed = state.allPolicy.selectedLocal === "relay";
    findings.push(finding(relayed ? "relay-in-use" : "direct-path", `selected pair: ${state.allPolicy.selected}`));
  }
  const order = Object.keys(state.specs);
  const sev = { error: 0, warning: 1, info: 2 };
  // Merge findings of one code with the same subject-less wording; keep rank order.
  findings.sort((a, b) => sev[a.severity] - sev[b.severity] || order.indexOf(a.code) - order.indexOf(b.code));
  const turnRows = rows.filter((r) => r.kind === "turn");
  const good = [...new Set(turnRows.filter((r) => r.status === "ok").map((r) => r.transport.toUpperCase()))];
  const bad = [...new Set(turnRows.filter((r) => r.status === "fail").map((r) => r.transport.toUpperCase()))];
  const errors = findings.filter((f) => f.severity === "error");
  let summary;
  if (!rows.length) summary = "Nothing could be tested: " + (errors[0] ? errors[0].title : "no usable URL");
  else if (!errors.length) summary = good.length ? `TURN over ${good.join(", ")} works and relays data.` : "STUN works; no TURN relay was tested.";
  else summary = `${errors[0].title}${errors[0].subject ? " (" + errors[0].subject + ")" : ""}` +
    (good.length ? `; TURN over ${good.join(", ")} works` : "") + (bad.length ? `; fails over ${bad.join(", ")}` : "");
  return { findings, summary, answer: answerFor(rows, findings) };
}

// The one sentence for the person at the keyboard: will calls from here connect?
function answerFor(rows, findings) {
  const relays = [...new Set(rows.filter((r) => r.kind === "turn" && (r.status === "ok" || r.status === "warn"))
    .map((r) => r.transport))];
  if (relays.includes("udp")) return "Calls from this network will connect.";
  if (relays.length) {
    const over = relays.map((t) => t.toUpperCase()).sort().join("/");
    return `Calls from this network will connect only through the relay (TURN over ${over}).`;
  }
  const error = findings.find((f) => f.severity === "error");
  return `Calls from this network will not connect: ${error ? error.title : "no relay works from here"}.`;
}

// -- the run ---------------------------------------------------------------------------------

async function run() {
  if (state.running) return;
  state.running = true;
  document.body.dataset.state = "running";
  setBusy(true);
  $("share-section").hidden = true;
  $("share-result").textContent = "";
  state.allPolicy = null;
  renderAllPolicy(null);
  try {
    setStatus("Reading the configuration…", 2);
    await resolveConfig();
    const { entries, findings: configFindings } = lint(state.servers);
    state.entries = entries;
    const rows = entries.map(newRow);
    state.rows = rows;
    renderRows(rows, true);
    const allCandidates = [];
    let finished = 0;
    const total = entries.length + entries.filter((e) => e.kind === "turn").length;
    const tick = (what) => {
      finished += 1;
      setStatus(`${what} (${finished}/${total})`, 5 + Math.round((85 * finished) / Math.max(total, 1)));
    };
    setStatus(`Gathering candidates from ${entries.length} URL(s)…`, 5);
    rows.forEach((r) => { r.note = "testing…"; });
    renderRows(rows, true);
    await Promise.all(entries.map(async (entry, i) => {
      const row = rows[i];
      const g = await gather(entry);
      allCandidates.push(...g.candidates);
      row.host = g.candidates.filter((c) => c.type === "host").length;
      row.srflx = g.candidates.filter((c) => c.type === "srflx").length;
      const relays = g.candidates.filter((c) => c.type === "relay");
      row.relay = relays.length;
      // One URL per peer connection: a relay candidate's protocol is that URL's transport
      // (Chromium leaves relayProtocol empty on some candidates; getStats() has it).
      const withProtocol = relays.find((c) => c.relayProtocol);
      row.relayProtocol = relays.length ? (withProtocol ? withProtocol.relayProtocol : entry.transport) : null;
      row.relayAddress = relays.length ? relays[0].address : null;
      row.errors = g.errors.filter((e) => !e.url || e.url === entry.url || entry.kind === "turn").slice(0, 50);
      row.timedOut = g.timedOut;
      if (entry.kind === "stun") {
        row.status = row.srflx ? "ok" : "warn";
        row.note = row.srflx ? "" : "no server-reflexive address";
      } else if (!row.relay) {
        const auth = row.errors.some((e) => e.code === 401 || e.code === 441);
        row.problem = auth ? "auth" : "unreachable";
        row.status = "fail";
        row.note = auth ? "credential refused" : "nothing answers";
        if (!auth && entry.secure && !row.timedOut && row.errors.some((e) => e.code === 701)) {
          row.tls = await tlsTwin(entry);
          if (row.tls) {
            row.problem = "tls";
            row.note = "certificate refused";
          }
        }
      } else {
        row.note = "testing…";
      }
      tick(`Candidates from ${entry.url}`);
      renderRows(rows, true);
    }));
    const hostCands = allCandidates.filter((c) => c.type === "host");
    state.facts.hostCandidates = hostCands.length;
    state.facts.mdnsHost = hostCands.some((c) => c.address.endsWith(".local"));
    state.facts.ipv6 = allCandidates.some((c) => c.address.includes(":") && !c.address.endsWith(".local"));
    setStatus("Testing the relay data path per TURN URL…");
    let statsFrom = null;
    await Promise.all(entries.map(async (entry, i) => {
      const row = rows[i];
      if (entry.kind !== "turn") return;
      if (row.status === "fail") { tick(`Skipped data path of ${entry.url}`); return; }
      const dp = await dataPath([entry.ice], "relay");
      const stats = dp.stats;
      delete dp.stats;
      delete dp.selectedLocal;
      row.datapath = dp;
      if (dp.connected && dp.delivered > 0) {
        row.status = dp.lost > 0 ? "warn" : "ok";
        row.note = dp.lost > 0 ? `${dp.lost} message(s) lost` : "";
      } else {
        row.status = "fail";
        row.problem = "datapath";
        row.note = "allocation works, data does not cross the relay";
      }
      if (stats && (!statsFrom || (row.status === "fail" && statsFrom.status !== "fail"))) {
        statsFrom = { status: row.status, stats };
      }
      tick(`Data path through ${entry.url}`);
      renderRows(rows, true);
    }));
    state.getStats = statsFrom ? statsFrom.stats : [];
    finishVerdict(configFindings);
    setStatus("Done.", 100);
    $("share-section").hidden = false;
  } catch (err) {
    const f = finding("bad-ice-config", String(err.message || err));
    state.configFindings = [f];
    state.rows = [];
    state.findings = [f];
    state.summary = `The configuration could not be used: ${err.message || err}`;
    state.answer = answerFor([], state.findings);
    renderRows([], false);
    renderVerdict(state.summary, state.findings, state.answer);
    renderFacts(state.facts);
    setStatus("Stopped: the configuration could not be used.", 100);
    $("share-section").hidden = false;
  } finally {
    state.running = false;
    setBusy(false);
    document.body.dataset.state = "done";
  }
}

// While a test runs (or the microphone prompt is open) no button starts another.
let busy = 0;
function setBusy(on) {
  busy += on ? 1 : -1;
  $("run").disabled = busy > 0;
  $("widen").disabled = busy > 0;
  $("run-all").disabled = busy > 0 || state.rows.length === 0;
}

function finishVerdict(configFindings) {
  state.configFindings = configFindings;
  const v = verdict(configFindings, state.rows);
  state.findings = v.findings;
  state.summary = v.summary;
  state.answer = v.answer;
  renderRows(state.rows, false);
  renderVerdict(v.summary, v.findings, v.answer);
  renderFacts(state.facts);
  renderAllPolicy(state.allPolicy);
}

async function runAllPolicy() {
  if (state.running || !state.entries.length) return;
  state.running = true;
  document.body.dataset.state = "running";
  setBusy(true);
  setStatus("Connecting two peers with every candidate allowed…", 50);
  try {
    const dp = await dataPath(state.servers, "all");
    state.allPolicy = { connected: dp.connected, selected: dp.selected, error: dp.error,
      selectedLocal: dp.selectedLocal };
    finishVerdict(state.configFindings || []);
    setStatus("Done.", 100);
  } finally {
    state.running = false;
    setBusy(false);
    document.body.dataset.state = "done";
  }
}

async function resolveConfig() {
  const pasted = $("ice-json").value.trim();
  const credUrl = $("cred-url").value.trim();
  if (pasted) {
    state.source = "pasted";
    state.sourceLabel = "the pasted iceServers JSON";
    state.servers = normalise(JSON.parse(pasted));
  } else if (credUrl) {
    state.source = "url";
    state.sourceLabel = `the credentials URL ${credUrl}`;
    state.servers = await configFromUrl(credUrl);
  } else {
    const token = new URLSearchParams(location.search).get("t");
    if (!token) throw new Error("no configuration: open the test link you were given, or paste an iceServers JSON");
    state.source = "token";
    state.sourceLabel = "this server's credential endpoint (test link)";
    state.servers = await configFromToken(token);
  }
  const urls = state.servers.flatMap((s) => (s && s.urls ? (Array.isArray(s.urls) ? s.urls : [s.urls]) : []));
  $("config-source").textContent = `Configuration from ${state.sourceLabel}: ${urls.join(", ") || "no URLs"}.`;
}

async function widen() {
  if (state.running || busy) return;
  setBusy(true);
  try {
    if (!state.rows.length) await run(); // the baseline, without permission
    const before = { host: state.facts.hostCandidates, mdns: state.facts.mdnsHost };
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      stream.getTracks().forEach((t) => t.stop());
      state.facts.getUserMedia = "granted";
    } catch (err) {
      state.facts.getUserMedia = navigator.mediaDevices ? "denied" : "unavailable";
    }
    await run();
    if (state.facts.getUserMedia === "granted") {
      // Browsers hide host addresses behind mDNS names until a page may capture media.
      state.facts.widenedGathering = state.facts.hostCandidates > before.host ||
        (before.mdns && !state.facts.mdnsHost);
      renderFacts(state.facts);
    }
  } finally {
    setBusy(false);
  }
}

// -- sharing and stored reports --------------------------------------------------------------

function buildReport() {
  const urls = state.entries.map((e) => e.url);
  const rows = state.rows.map((r) => ({ url: r.url, kind: r.kind, transport: r.transport,
    status: r.status, host: r.host, srflx: r.srflx, relay: r.relay, relayProtocol: r.relayProtocol,
    relayAddress: r.relayAddress, errors: r.errors, datapath: r.datapath,
    note: r.note === "testing…" || r.note === "waiting" ? "" : r.note }));
  const all = state.allPolicy ? { connected: state.allPolicy.connected,
    selected: state.allPolicy.selected, error: state.allPolicy.error } : null;
  return { format: "iceward-test-report", version: 1, createdAt: new Date().toISOString(),
    source: state.source || "pasted", summary: state.summary.slice(0, 500),
    answer: state.answer.slice(0, 300), urls,
    findings: state.findings, rows, facts: state.facts, allPolicy: all, getStats: state.getStats };
}

async function share() {
  $("share").disabled = true;
  const out = $("share-result");
  out.textContent = "Sending…";
  try {
    const response = await fetch("/api/v1/reports", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(buildReport()) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    out.textContent = "Give support this link: ";
    const a = document.createElement("a");
    a.href = body.url;
    a.id = "share-link";
    a.textContent = body.url;
    out.appendChild(a);
    state.sharedId = body.id;
  } catch (err) {
    out.textContent = `Could not share the report: ${err.message || err}`;
  } finally {
    $("share").disabled = false;
  }
}

async function showStored(id) {
  document.title = `iceward: report ${id}`;
  $("setup").hidden = true;
  $("progress-section").hidden = true;
  const h1 = document.querySelector("h1");
  h1.textContent = "Connectivity test report";
  document.querySelector(".lede").textContent =
    "A browser connectivity test shared with support: what that browser could reach, on its network.";
  const response = await fetch(`/api/v1/reports/${encodeURIComponent(id)}`);
  if (!response.ok) {
    $("report-section").hidden = false;
    $("report-meta").textContent = `No report ${id} (reports are kept 30 days).`;
    document.body.dataset.state = "missing";
    return;
  }
  const report = await response.json();
  state.report = report;
  $("report-section").hidden = false;
  $("report-meta").textContent = `Report ${report.id}, recorded ${report.createdAt}; configuration ` +
    `from ${report.source === "token" ? "the test link" : report.source === "url" ? "a credentials URL" : "a pasted iceServers JSON"}: ` +
    `${report.urls.join(", ")}.`;
  $("download").href = `/api/v1/reports/${encodeURIComponent(id)}?download=1`;
  renderVerdict(report.summary, report.findings, report.answer);
  renderRows(report.rows, false);
  renderFacts(report.facts);
  renderAllPolicy(report.allPolicy);
  document.body.dataset.state = "report";
}

async function main() {
  await loadSpecs();
  const stored = /^\/reports\/([^/]+)$/.exec(location.pathname);
  if (stored) {
    await showStored(decodeURIComponent(stored[1]));
    return;
  }
  $("run").addEventListener("click", run);
  $("run-all").addEventListener("click", runAllPolicy);
  $("widen").addEventListener("click", widen);
  $("share").addEventListener("click", share);
  if (new URLSearchParams(location.search).get("t")) {
    $("config-source").textContent = "Configuration: this server's credential endpoint (test link).";
    await run();
  } else {
    $("manual").open = true;
    setStatus("Paste a configuration, then run the test.");
  }
}

window.icewardReady = main().catch((err) => setStatus(`The page could not start: ${err}`));
