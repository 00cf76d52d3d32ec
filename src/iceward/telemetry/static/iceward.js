// iceward browser SDK: what one RTCPeerConnection did about ICE, posted once, to be judged by
// iceward's analyzer rules. No dependencies; nothing private: the configuration's URLs only
// (never a username or credential), no address but a relay candidate's (the TURN server's).
//
//   import iceward from '/sdk/iceward.js';
//   const w = iceward.watch(pc, {endpoint, token, callId, tags});
//
// `token` is the `telemetryToken` of the POST /api/v1/ice-servers answer the iceServers came
// from. The record is posted when the connection fails or is closed (pc.close()), and with
// sendBeacon when the page is hidden for good (pagehide), whichever comes first.

const LIMITS = {states: 200, candidates: 100, errors: 50, selected: 20, samples: 30, pairs: 20};
const MAX_BYTES = 30000; // the server refuses records above 32 KiB
const POLL_MS = 2000;
const KINDS = {
  signalingState: 'signaling', iceGatheringState: 'iceGathering',
  iceConnectionState: 'iceConnection', connectionState: 'connection',
};

function push(list, item, limit) {
  if (list.length >= limit) list.splice(1, 1); // keep the first, drop the oldest after it
  list.push(item);
}

function clean(url) {
  return String(url).split('#')[0].slice(0, 300);
}

function configOf(pc) {
  const cfg = pc.getConfiguration ? pc.getConfiguration() : {};
  const servers = (cfg.iceServers || []).slice(0, 16).map((s) => ({
    urls: [].concat(s.urls || s.url || []).slice(0, 16).map(clean),
  }));
  const out = {iceServers: servers};
  if (cfg.iceTransportPolicy) out.iceTransportPolicy = cfg.iceTransportPolicy;
  if (cfg.bundlePolicy) out.bundlePolicy = cfg.bundlePolicy;
  return out;
}

function end(c) {
  if (!c) return undefined;
  const type = c.candidateType || c.type || 'unknown';
  const out = {type};
  if (c.protocol) out.protocol = c.protocol;
  if (type === 'relay') {
    if (c.relayProtocol) out.relayProtocol = c.relayProtocol;
    if (c.address || c.ip) out.address = c.address || c.ip;
    if (c.port) out.port = c.port;
  }
  if (c.url && (type === 'relay' || type === 'srflx')) out.url = clean(c.url);
  return out;
}

export function watch(pc, {endpoint = '/api/v1/telemetry', token, callId, tags} = {}) {
  const start = Date.now();
  const now = () => Date.now() - start;
  const rec = {
    v: 1, token, start, end: 0, reason: 'closed', config: configOf(pc),
    states: [], candidates: [], errors: [], selected: [], samples: [],
  };
  if (callId) rec.callId = String(callId).replace(/[\u0000-\u001f\u007f]/g, ' ').slice(0, 64);
  if (tags) rec.tags = Object.fromEntries(Object.entries(tags).slice(0, 8).map(([k, v]) => [
    String(k).replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 32) || '_',
    String(v).replace(/[\u0000-\u001f\u007f]/g, ' ').slice(0, 64)]));
  const seen = new Set();
  const pairs = new Map(); // id -> the pair as last seen: its checks, whether it is still there
  let connected = false;
  let sent = null;
  let lastPair = null;
  let timer = null;

  const state = (prop) => push(rec.states, [now(), KINDS[prop], pc[prop]], LIMITS.states);
  Object.keys(KINDS).forEach(state);

  function candidate(side, c, t) {
    const e = end(c);
    if (!e) return;
    const key = [side, e.type, e.protocol, e.relayProtocol, e.url, e.address, e.port].join('|');
    if (seen.has(key)) return;
    seen.add(key);
    if (rec.candidates.length < LIMITS.candidates) rec.candidates.push({t, side, ...e});
  }

  async function poll() {
    let stats;
    try { stats = await pc.getStats(); } catch (_) { return; }
    const byId = new Map();
    let transport = null;
    stats.forEach((s) => {
      byId.set(s.id, s);
      if (s.type === 'transport' && s.selectedCandidatePairId) transport = s;
      if (s.type === 'local-candidate') candidate('local', s, now());
      if (s.type === 'remote-candidate') candidate('remote', s, now());
    });
    for (const p of pairs.values()) p.vanished = true;
    byId.forEach((s) => {
      if (s.type !== 'candidate-pair' || (!pairs.has(s.id) && pairs.size >= LIMITS.pairs)) return;
      pairs.set(s.id, {local: end(byId.get(s.localCandidateId)), remote: end(byId.get(s.remoteCandidateId)),
        state: s.state, requestsSent: s.requestsSent || 0, responsesReceived: s.responsesReceived || 0,
        vanished: false});
    });
    const pair = transport ? byId.get(transport.selectedCandidatePairId)
      : [...byId.values()].find((s) => s.type === 'candidate-pair' && s.selected);
    if (pair && pair.id !== lastPair && pair.state === 'succeeded') {
      lastPair = pair.id;
      const sel = {t: now(), local: end(byId.get(pair.localCandidateId)),
        remote: end(byId.get(pair.remoteCandidateId))};
      if (typeof pair.currentRoundTripTime === 'number') sel.rtt = pair.currentRoundTripTime;
      push(rec.selected, sel, LIMITS.selected);
    }
    if (connected && (transport || pair)) {
      const src = transport || pair;
      const sample = {t: now()};
      for (const k of ['bytesSent', 'bytesReceived', 'packetsSent', 'packetsReceived']) {
        if (typeof src[k] === 'number') sample[k] = src[k];
      }
      if (pair && typeof pair.currentRoundTripTime === 'number') sample.rtt = pair.currentRoundTripTime;
      push(rec.samples, sample, LIMITS.samples);
    }
  }

  function body() {
    const copy = {...rec, end: now(), pairs: [...pairs.values()].map((p) => JSON.parse(JSON.stringify(p)))};
    let text = JSON.stringify(copy);
    for (const k of ['samples', 'candidates', 'states']) { // bounded: trim the bulkiest first
      while (text.length > MAX_BYTES && copy[k].length > 2) {
        copy[k] = copy[k].filter((_, i) => i % 2 === 0 || i === copy[k].length - 1);
        text = JSON.stringify(copy);
      }
    }
    return text;
  }

  function post(reason, beacon) {
    if (sent) return sent;
    rec.reason = reason;
    clearInterval(timer);
    const text = body();
    if (beacon && navigator.sendBeacon) {
      const ok = navigator.sendBeacon(endpoint, new Blob([text], {type: 'text/plain'}));
      sent = Promise.resolve({beacon: ok});
    } else {
      sent = fetch(endpoint, {method: 'POST', body: text, keepalive: true,
        headers: {'Content-Type': 'text/plain'}})
        .then((r) => r.json().then((doc) => ({status: r.status, ...doc})).catch(() => ({status: r.status})))
        .catch((err) => ({error: String(err)}));
    }
    return sent;
  }

  for (const prop of Object.keys(KINDS)) {
    pc.addEventListener(prop.toLowerCase().replace('state', 'statechange'), () => {
      state(prop);
      if (prop === 'iceConnectionState' && /connected|completed/.test(pc[prop]) && !connected) {
        connected = true;
        poll();
      }
      if (prop === 'connectionState' && pc[prop] === 'failed') poll().then(() => post('failed'));
    });
  }
  pc.addEventListener('icecandidate', (e) => { if (e.candidate) candidate('local', e.candidate, now()); });
  pc.addEventListener('icecandidateerror', (e) => {
    const err = {t: now(), url: clean(e.url || ''), code: e.errorCode || 0,
      text: String(e.errorText || '').slice(0, 200)};
    if (e.address) err.family = String(e.address).includes(':') ? 'ipv6' : 'ipv4';
    if (err.url && rec.errors.length < LIMITS.errors) rec.errors.push(err);
  });
  const close = pc.close.bind(pc);
  pc.close = () => { // close() fires no state event: record it, then post what was seen
    if (!sent) push(rec.states, [now(), 'connection', 'closed'], LIMITS.states);
    close();
    post('closed');
  };
  addEventListener('pagehide', (e) => { if (!e.persisted) post('pagehide', true); });
  timer = setInterval(poll, POLL_MS);

  return {
    record: () => JSON.parse(body()),
    flush: (reason = 'closed') => poll().then(() => post(reason)),
    get posted() { return sent; },
  };
}

export default {watch};
