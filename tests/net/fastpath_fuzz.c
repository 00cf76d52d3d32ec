/*
 * Fuzz and malformed-flood driver for the native relay fast path, built with AddressSanitizer
 * (and UBSan) by tests/net/test_fastpath_asan.py:  fastpath_fuzz SECONDS SEED
 *
 * Real loopback sockets: 2 listeners, 8 relay sockets, 8 clients, peers made per binding on
 * addresses 127.1.x.y that are never reused.  In a random interleaving it sends valid ChannelData
 * and peer datagrams for live and removed bindings, malformed datagrams (truncated ChannelData,
 * length fields beyond the datagram, channel numbers out of range, random bytes, empty), polls,
 * unbinds and rebinds during traffic, replaces relay sockets under live entries, collects
 * counters, and puts bandwidth limits (buckets shared by slots, a node capacity) on entries and
 * lifts them.
 * It checks that nothing is ever forwarded for a binding removed before the last drain,
 * that every forwarded datagram reaches the right socket intact, that the counters never fall
 * short of what arrived, and (LeakSanitizer at exit) that nothing leaks.  Exit 0 means clean.
 *
 * STUN Binding (answered in the engine): clients also send Binding requests, valid ones (no
 * attributes, SOFTWARE, FINGERPRINT), lying ones (truncated, length fields too long or too short,
 * attributes running past the end, a wrong FINGERPRINT, attributes after it, unknown attributes,
 * no magic cookie) and randomly mutated ones, alone or as GSO bursts.  Every answer must be a
 * well-formed success for a request that deserved one, with the client's own address and a right
 * FINGERPRINT exactly when the request had one; a valid request must never come back as a miss,
 * a lying one never be answered.
 *
 * 401 challenges (answered in the engine, switched on throughout): a share of those requests are
 * TURN requests (every method) instead, lying or not the same ways, or signed (MESSAGE-INTEGRITY:
 * never answered here). Every answer must be a well-formed 401 of the request's method, its
 * attributes the template's in order, its NONCE the one the client's address and the second call
 * for, a right FINGERPRINT exactly when the request had one; a valid one is never handed back
 * (answered, or dropped over the challenge rate, which comes and goes: off, 3/s, 50/s, ample).
 *
 * Per-source budget: it comes and goes (off, a few a second, generous) during all of the above;
 * what it drops is neither answered nor handed back (the Binding checks stand), ChannelData never
 * pays for it, and the drops it reports per source never exceed what it counted in all.
 *
 * TCP client streams (fastpath_fuzz_stream.c): frames served from a stream cut anywhere, with
 * lying lengths and garbage, and peer datagrams framed onto a stream whose writes come up short.
 *
 * The engine's count of entries per socket (which spares remove_socket a scan of the table when
 * no entry uses the socket) is checked against the table now and then and at the end.
 */
#define FP_NO_PYTHON
#include "_fastpath.c"

#include <stdio.h>
#include <time.h>

#define SLOTS 8
#define MAXB 200000
#define STALE 3 /* removed bindings per slot whose peers keep sending */

typedef struct {
    int slot;
    uint16_t ch;
    int peer_fd;
    struct sockaddr_in peer;
    int live;
    uint64_t counted[2];
    uint64_t received[2];
} binding;

static binding B[MAXB];
static int nb;
static int listener[2];
static int relay[SLOTS];
static int client[SLOTS];
static int cur[SLOTS];
static int stale[SLOTS][STALE];
static uint16_t next_ch[SLOTS];
static struct sockaddr_in laddr[2], raddr[SLOTS], caddr[SLOTS];
static uint64_t rng_state;
static unsigned char buf[70000];
static unsigned char gbuf[140000];
static long failures, forwarded, misses_seen;

#define MAXQ (1 << 20)
enum { Q_VALID = 1, Q_LYING = 2, Q_UNKNOWN = 3, Q_FP = 4, Q_TURN = 8 };
static uint8_t query[MAXQ]; /* per request sent: what it deserves, Q_FP if it had one, Q_TURN */
static uint8_t qmethod[MAXQ];
static uint32_t nq;
static long answered, bindings_missed, challenged, challenges_missed;

/* The 401 template the engine is given: ERROR-CODE and REALM, then PASSWORD-ALGORITHMS and
 * SOFTWARE around the NONCE. */
static const unsigned char chal_head[] = {0x00, 0x09, 0x00, 0x13, 0, 0, 4, 1, 'U', 'n', 'a', 'u',
                                          't', 'h', 'e', 'n', 't', 'i', 'c', 'a', 't', 'e', 'd',
                                          0, 0x00, 0x14, 0x00, 0x04, 'f', 'u', 'z', 'z'};
static const unsigned char chal_tail[] = {0x80, 0x02, 0x00, 0x08, 0, 1, 0, 0, 0, 2, 0, 0,
                                          0x80, 0x22, 0x00, 0x05, 'f', 'u', 'z', 'z', '1', 0, 0, 0};
static const char chal_prefix[] = "obMatJos2gAAA";
static const unsigned char chal_key[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t turn_methods[] = {3, 4, 8, 9, 10, 11};

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

#define FAIL(...)                                                                                \
    do {                                                                                         \
        fprintf(stderr, "FAIL: " __VA_ARGS__);                                                   \
        fprintf(stderr, "\n");                                                                   \
        failures++;                                                                              \
    } while (0)

static int udp_socket(uint32_t ip, struct sockaddr_in *out) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    int size = 1 << 21;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(ip);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("bind");
        exit(2);
    }
    socklen_t len = sizeof(*out);
    getsockname(fd, (struct sockaddr *)out, &len);
    return fd;
}

static int visit(void *ctx, uint64_t token, uint64_t packets, uint64_t bytes) {
    (void)ctx;
    (void)bytes;
    uint64_t id = token >> 1;
    if (id >= (uint64_t)nb)
        FAIL("collect returned unknown token %llu", (unsigned long long)token);
    else
        B[id].counted[token & 1] += packets;
    return 0;
}

static int visit_limited(void *ctx, uint64_t token, uint64_t dropped, uint64_t unused) {
    (void)ctx;
    (void)unused;
    if (token >> 1 >= (uint64_t)nb || dropped == 0)
        FAIL("collect_limited returned token %llu with %llu drops", (unsigned long long)token,
             (unsigned long long)dropped);
    return 0;
}

static uint64_t source_drops;

static int visit_challenges(void *ctx, uint64_t method, uint64_t requests, uint64_t unused) {
    (void)ctx;
    (void)unused;
    if (method >= 16 || !(method == 3 || method == 4 || method >= 8) || requests == 0)
        FAIL("take_challenges returned method %llu with %llu requests",
             (unsigned long long)method, (unsigned long long)requests);
    return 0;
}

static int visit_source(void *ctx, uint64_t slot, uint64_t dropped, uint64_t unused) {
    (void)ctx;
    (void)unused;
    if (slot >= FP_SRC_SLOTS || dropped == 0)
        FAIL("take_source_drops returned slot %llu with %llu drops", (unsigned long long)slot,
             (unsigned long long)dropped);
    source_drops += dropped;
    return 0;
}

/* The budget's drops since the last call: per source never more than in all. */
static void take_source_drops(fp_engine *e) {
    source_drops = 0;
    uint64_t total = fp_take_source_drops(e, visit_source, NULL);
    if (source_drops > total)
        FAIL("%llu drops reported per source, %llu in all", (unsigned long long)source_drops,
             (unsigned long long)total);
}

static void bind_slot(fp_engine *e, int s) {
    if (nb >= MAXB || next_ch[s] >= 0x4000 + (s + 1) * 0x800)
        return;
    int id = nb++;
    binding *b = &B[id];
    memset(b, 0, sizeof(*b));
    b->slot = s;
    b->ch = next_ch[s]++;
    uint32_t ip = (127u << 24) | (1u << 16) | ((uint32_t)id + 1);
    b->peer_fd = udp_socket(ip, &b->peer);
    b->live = 1;
    int l = s % 2;
    if (fp_install(e, FP_LISTENER, listener[l], (struct sockaddr *)&caddr[s], b->ch, relay[s],
                   (struct sockaddr *)&b->peer, sizeof(b->peer), 0, (uint64_t)id * 2) != 0 ||
        fp_install(e, FP_RELAY, relay[s], (struct sockaddr *)&b->peer, 0, listener[l],
                   (struct sockaddr *)&caddr[s], sizeof(caddr[s]), b->ch,
                   (uint64_t)id * 2 + 1) != 0)
        FAIL("install failed: %s", strerror(errno));
    cur[s] = id;
}

/* ---- STUN Binding ---- */

static void send_gso(int fd, const struct sockaddr_in *to, const unsigned char *data, size_t total,
                     uint16_t seg);

static void stun_header(unsigned char *p, uint16_t type, int length, uint32_t q) {
    fp_put16(p, type);
    fp_put16(p + 2, (uint32_t)length);
    fp_put32(p + 4, FP_STUN_COOKIE);
    memcpy(p + 8, "BIND", 4);
    memcpy(p + 12, &q, 4);
    fp_put32(p + 16, (uint32_t)rnd());
}

/* A Binding request (or, one time in three, a TURN request) into p; returns its size and sets
 * *kind (Q_VALID/Q_LYING/Q_UNKNOWN | Q_FP | Q_TURN). */
static int make_binding(unsigned char *p, uint32_t q, int *kind) {
    int n = 20, fp = 0, lie = (int)(rnd() % 12);
    int turn = rnd() % 3 == 0;
    qmethod[q] = turn ? turn_methods[rnd() % sizeof(turn_methods)] : 1;
    stun_header(p, qmethod[q], 0, q);
    if (rnd() & 1) { /* SOFTWARE of any length, zero padded */
        int len = (int)(rnd() % 40);
        fp_put16(p + n, FP_ATTR_SOFTWARE);
        fp_put16(p + n + 2, (uint32_t)len);
        memset(p + n + 4, 'a', (size_t)len);
        memset(p + n + 4 + len, 0, (size_t)((4 - len % 4) % 4));
        n += 4 + ((len + 3) & ~3);
    }
    if (lie == 1) { /* an unknown attribute (comprehension-required or not) */
        fp_put16(p + n, rnd() & 1 ? 0x7F01 : 0xC0DE);
        fp_put16(p + n + 2, 4);
        fp_put32(p + n + 4, 0);
        n += 8;
    }
    if (lie == 9) { /* signed (MESSAGE-INTEGRITY or -SHA256): the core's */
        int sha = (int)(rnd() & 1);
        fp_put16(p + n, sha ? 0x001C : 0x0008);
        fp_put16(p + n + 2, sha ? 32 : 20);
        memset(p + n + 4, 0x5A, sha ? 32 : 20);
        n += sha ? 36 : 24;
    }
    if (rnd() & 1 || lie == 2 || lie == 3) {
        fp = n;
        fp_put16(p + 2, (uint32_t)(n + 8 - 20));
        fp_put16(p + n, FP_ATTR_FINGERPRINT);
        fp_put16(p + n + 2, 4);
        fp_put32(p + n + 4, fp_crc32(p, (size_t)n) ^ FP_STUN_FINGERPRINT_XOR);
        n += 8;
        if (lie == 2) /* a wrong FINGERPRINT */
            p[n - 1 - (int)(rnd() % 4)] ^= (unsigned char)(1 + rnd() % 255);
        if (lie == 3) { /* something after it */
            fp_put16(p + n, FP_ATTR_SOFTWARE);
            fp_put16(p + n + 2, 0);
            n += 4;
        }
    }
    fp_put16(p + 2, (uint32_t)(n - 20));
    /* (the 401 comes before an unknown attribute's 420: a TURN request with one is valid) */
    *kind = (lie == 1 && !turn) || lie == 2 || lie == 3 || lie == 9 ? Q_LYING : Q_VALID;
    switch (lie) {
    case 4: /* truncated anywhere */
        n = (int)(rnd() % (unsigned)n);
        *kind = Q_LYING;
        break;
    case 5: /* the length field says more, or less (4-aligned), than there is */
        fp_put16(p + 2, (uint32_t)(n - 20 + (rnd() & 1 ? 4 : -4) * (int)(1 + rnd() % 3)));
        *kind = Q_LYING;
        break;
    case 6: /* the last attribute claims more than remains */
        if (n > 20) {
            fp_put16(p + 22, 0xFFF0 + (uint32_t)(rnd() % 16));
            *kind = Q_LYING;
        }
        break;
    case 7: /* no magic cookie, or not a Binding request */
        if (rnd() & 1)
            p[4 + rnd() % 4] ^= 0x10;
        else
            fp_put16(p, rnd() & 1 ? 0x0011 : 0x0101);
        *kind = Q_LYING;
        break;
    case 8: { /* a random mutation: may or may not stay valid */
        int flips = 1 + (int)(rnd() % 3);
        for (int i = 0; i < flips && n > 0; i++) {
            unsigned at = (unsigned)(rnd() % (unsigned)n);
            if (at < 8 || at >= 16) /* the marker and the request number stay readable */
                p[at] ^= (unsigned char)(1u << (rnd() % 8));
        }
        *kind = Q_UNKNOWN;
        break;
    }
    default:
        break;
    }
    if (*kind == Q_VALID && fp)
        *kind |= Q_FP;
    if (turn)
        *kind |= Q_TURN;
    return n;
}

static void send_binding(int s) {
    int burst = rnd() % 4 == 0 ? 2 + (int)(rnd() % 6) : 1;
    int l = (int)(rnd() % 2);
    size_t total = 0;
    int size = -1;
    for (int i = 0; i < burst && nq < MAXQ; i++) {
        int kind;
        uint32_t q = nq++;
        int n = make_binding(buf, q, &kind);
        query[q] = (uint8_t)kind;
        if (burst == 1) {
            sendto(client[s], buf, (size_t)n, 0, (struct sockaddr *)&laddr[l], sizeof(laddr[0]));
            return;
        }
        if (size < 0)
            size = n;
        if (n != size) /* a GSO burst needs one size but the last: send this one alone */
            sendto(client[s], buf, (size_t)n, 0, (struct sockaddr *)&laddr[l], sizeof(laddr[0]));
        else {
            memcpy(gbuf + total, buf, (size_t)n);
            total += (size_t)n;
        }
    }
    if (total > 0 && size > 0)
        send_gso(client[s], &laddr[l], gbuf, total, (uint16_t)size);
}

/* One STUN answer at client s: a well-formed success for a request that deserved one. */
static void check_answer(int s, const unsigned char *p, ssize_t n) {
    uint32_t q;
    memcpy(&q, p + 12, 4);
    if (n < 20 || memcmp(p + 8, "BIND", 4) != 0 || q >= nq) {
        FAIL("client %d: answer to no request", s);
        return;
    }
    answered++;
    int kind = query[q];
    if ((kind & 3) == Q_LYING)
        FAIL("client %d: request %u lies and was answered", s, q);
    int fp = (kind & 3) == Q_VALID ? (kind & Q_FP) != 0 : n == 40;
    if (n != (fp ? 40 : 32) || fp_be16(p) != 0x0101 || fp_be16(p + 2) != n - 20 ||
        fp_be32(p + 4) != FP_STUN_COOKIE) {
        FAIL("client %d: malformed answer to %u (%zd bytes)", s, q, n);
        return;
    }
    uint16_t port = (uint16_t)(fp_be16(p + 26) ^ (FP_STUN_COOKIE >> 16));
    uint32_t ip = fp_be32(p + 28) ^ FP_STUN_COOKIE;
    if (fp_be16(p + 20) != FP_ATTR_XOR_MAPPED_ADDRESS || fp_be16(p + 22) != 8 || p[25] != 1 ||
        port != ntohs(caddr[s].sin_port) || ip != ntohl(caddr[s].sin_addr.s_addr))
        FAIL("client %d: wrong XOR-MAPPED-ADDRESS in the answer to %u", s, q);
    if (fp && (fp_be16(p + 32) != FP_ATTR_FINGERPRINT || fp_be16(p + 34) != 4 ||
               fp_be32(p + 36) != (fp_crc32(p, 32) ^ FP_STUN_FINGERPRINT_XOR)))
        FAIL("client %d: wrong FINGERPRINT in the answer to %u", s, q);
}

/* One 401 at client s: well-formed, for a TURN request that deserved one, the engine's nonce
 * for this client at this second (or the one before: a poll may straddle the tick). */
static void check_challenge(int s, const unsigned char *p, ssize_t n) {
    uint32_t q;
    memcpy(&q, p + 12, 4);
    if (n < 20 || memcmp(p + 8, "BIND", 4) != 0 || q >= nq) {
        FAIL("client %d: 401 to no request", s);
        return;
    }
    challenged++;
    int kind = query[q], fp = (kind & Q_FP) != 0;
    if ((kind & 3) != Q_VALID && (kind & 3) != Q_UNKNOWN) /* a mutation may stay valid */
        FAIL("client %d: request %u lies and was challenged", s, q);
    if ((kind & 3) == Q_UNKNOWN)
        fp = n >= 8 && fp_be16(p + n - 8) == FP_ATTR_FINGERPRINT;
    if (!(kind & Q_TURN) && (kind & 3) != Q_UNKNOWN)
        FAIL("client %d: Binding request %u challenged", s, q);
    int nonce = (int)strlen(chal_prefix) + 34, at = 20;
    int size = 20 + (int)sizeof(chal_head) + 4 + ((nonce + 3) & ~3) + (int)sizeof(chal_tail) +
               (fp ? 8 : 0);
    if (n != size || fp_be16(p + 2) != n - 20 || fp_be32(p + 4) != FP_STUN_COOKIE ||
        ((kind & 3) == Q_VALID && fp_be16(p) != (0x0110 | qmethod[q]))) {
        FAIL("client %d: malformed 401 to %u (%zd bytes)", s, q, n);
        return;
    }
    if (memcmp(p + at, chal_head, sizeof(chal_head)) != 0)
        FAIL("client %d: the 401's head is not the template's", s);
    at += (int)sizeof(chal_head);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    fp_challenge c;
    memset(&c, 0, sizeof(c));
    memcpy(c.prefix, chal_prefix, strlen(chal_prefix));
    c.nprefix = (int)strlen(chal_prefix);
    fp_hmac_init(&c.key, chal_key, sizeof(chal_key));
    char want[2][FP_NONCE_PREFIX_MAX + 34];
    fp_nonce(&c, (const struct sockaddr *)&caddr[s], (long long)now.tv_sec, want[0]);
    fp_nonce(&c, (const struct sockaddr *)&caddr[s], (long long)now.tv_sec - 1, want[1]);
    if (fp_be16(p + at) != FP_ATTR_NONCE || fp_be16(p + at + 2) != nonce ||
        (memcmp(p + at + 4, want[0], (size_t)nonce) != 0 &&
         memcmp(p + at + 4, want[1], (size_t)nonce) != 0))
        FAIL("client %d: wrong NONCE in the 401 to %u", s, q);
    at += 4 + ((nonce + 3) & ~3);
    if (memcmp(p + at, chal_tail, sizeof(chal_tail)) != 0)
        FAIL("client %d: the 401's tail is not the template's", s);
    at += (int)sizeof(chal_tail);
    if (fp && (fp_be16(p + at) != FP_ATTR_FINGERPRINT || fp_be16(p + at + 2) != 4 ||
               fp_be32(p + at + 4) != (fp_crc32(p, (size_t)at) ^ FP_STUN_FINGERPRINT_XOR)))
        FAIL("client %d: wrong FINGERPRINT in the 401 to %u", s, q);
}

/* A datagram handed back to Python: a valid Binding or TURN request must not be one (a TURN
 * request is answered or dropped over the rate). */
static void check_miss(const fp_miss *m) {
    const unsigned char *d = (const unsigned char *)m->data;
    uint32_t q;
    if (m->len < 20 || memcmp(d + 8, "BIND", 4) != 0)
        return;
    memcpy(&q, d + 12, 4);
    if (q < nq && (query[q] & 3) == Q_VALID && fp_be16(d) == qmethod[q])
        FAIL("valid %s request %u handed back", qmethod[q] == 1 ? "Binding" : "TURN", q);
    if (q < nq && (query[q] & Q_TURN))
        challenges_missed++;
    else
        bindings_missed++;
}

/* Read everything that arrived at clients and peers and check it. */
static void drain(void) {
    for (int s = 0; s < SLOTS; s++) {
        ssize_t n;
        while ((n = recv(client[s], buf, sizeof(buf), MSG_DONTWAIT)) >= 0) {
            if (n >= 2 && buf[0] == 0x01 && buf[1] == 0x01) {
                check_answer(s, buf, n);
                continue;
            }
            if (n >= 2 && buf[0] == 0x01 && (buf[1] & 0xF0) == 0x10) {
                check_challenge(s, buf, n);
                continue;
            }
            if (n < 9) {
                FAIL("short datagram at client %d", s);
                continue;
            }
            int ch = (buf[0] << 8) | buf[1], len = (buf[2] << 8) | buf[3];
            uint32_t id;
            memcpy(&id, buf + 4, 4);
            if (id >= (uint32_t)nb || buf[8] != 1) {
                FAIL("garbage at client %d", s);
                continue;
            }
            binding *b = &B[id];
            if (!b->live)
                FAIL("client %d got data of removed binding %u", s, id);
            if (b->slot != s || b->ch != ch || len != n - 4)
                FAIL("client %d: wrong channel/length (ch %x/%x len %d/%zd)", s, ch, b->ch, len,
                     n - 4);
            b->received[1]++;
            forwarded++;
        }
    }
    for (int id = 0; id < nb; id++) {
        binding *b = &B[id];
        if (b->peer_fd < 0)
            continue;
        ssize_t n;
        while ((n = recv(b->peer_fd, buf, sizeof(buf), MSG_DONTWAIT)) >= 0) {
            uint32_t got;
            if (n < 5) {
                FAIL("short datagram at peer %d", id);
                continue;
            }
            memcpy(&got, buf, 4);
            if (got != (uint32_t)id || buf[4] != 0)
                FAIL("peer %d got data of binding %u", id, got);
            else if (!b->live)
                FAIL("peer %d got data after its binding was removed", id);
            b->received[0]++;
            forwarded++;
        }
    }
}

/* The engine's per-socket entry counts must be exactly what its table holds: a count short of
 * it would let remove_socket skip entries that still use a closed socket. */
static void check_uses(fp_engine *e) {
    static uint32_t seen[65536];
    if (e->uses_lost) {
        FAIL("entry counts were given up");
        return;
    }
    memset(seen, 0, sizeof(seen));
    for (size_t i = 0; i < e->nbuckets; i++)
        for (fp_entry *x = e->buckets[i]; x != NULL; x = x->next) {
            if (x->key.fd >= 0 && x->key.fd < 65536)
                seen[x->key.fd]++;
            if (x->out_fd >= 0 && x->out_fd < 65536)
                seen[x->out_fd]++;
        }
    for (int fd = 0; fd < 65536; fd++) {
        uint32_t have = fd < e->nuses ? e->uses[fd] : 0;
        if (have != seen[fd])
            FAIL("fd %d: %u entries counted, %u in the table", fd, have, seen[fd]);
    }
}

static void kill_binding(int id) {
    binding *b = &B[id];
    b->live = 0;
    int s = b->slot;
    /* keep its peer sending for a while, then close the oldest stale peer */
    if (stale[s][0] >= 0 && B[stale[s][0]].peer_fd >= 0) {
        close(B[stale[s][0]].peer_fd);
        B[stale[s][0]].peer_fd = -1;
    }
    memmove(&stale[s][0], &stale[s][1], sizeof(int) * (STALE - 1));
    stale[s][STALE - 1] = id;
    if (cur[s] == id)
        cur[s] = -1;
}

static int pick_binding(int s) {
    int k = (int)(rnd() % (STALE + 1));
    return k == STALE ? cur[s] : stale[s][k];
}

/* One UDP GSO send: the receiver (UDP_GRO on) may get it as one buffer of same-size datagrams. */
static void send_gso(int fd, const struct sockaddr_in *to, const unsigned char *data, size_t total,
                     uint16_t seg) {
    struct iovec iov = {(void *)data, total};
    uint64_t control[4];
    struct msghdr h;
    memset(&h, 0, sizeof(h));
    h.msg_name = (void *)to;
    h.msg_namelen = sizeof(*to);
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = control;
    h.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    sendmsg(fd, &h, MSG_DONTWAIT);
}

/* burst copies of buf[0..size) back to back, sometimes a shorter (still valid) last one */
static size_t gso_burst(int burst, size_t size, size_t header, size_t *seg) {
    size_t total = 0;
    for (int i = 0; i < burst; i++) {
        memcpy(gbuf + total, buf, size);
        total += size;
    }
    *seg = size;
    if (rnd() & 1 && size > header + 9) { /* a shorter tail segment */
        size_t tail = header + 5 + rnd() % (size - header - 9);
        memcpy(gbuf + total, buf, tail);
        if (header == 4) { /* fix its ChannelData length */
            gbuf[total + 2] = (unsigned char)((tail - 4) >> 8);
            gbuf[total + 3] = (unsigned char)((tail - 4) & 0xFF);
        }
        total += tail;
    }
    return total;
}

static void send_valid(int s) {
    int id = pick_binding(s);
    if (id < 0)
        return;
    binding *b = &B[id];
    int len = 5 + (int)(rnd() % (rnd() & 1 ? 1300 : 120));
    if (rnd() & 1) { /* client -> listener */
        buf[0] = (unsigned char)(b->ch >> 8);
        buf[1] = (unsigned char)(b->ch & 0xFF);
        buf[2] = (unsigned char)(len >> 8);
        buf[3] = (unsigned char)(len & 0xFF);
        memcpy(buf + 4, &id, 4);
        buf[8] = 0;
        int pad = (int)(rnd() % 4);
        memset(buf + 9, 0xAB, (size_t)(len - 5 + pad));
        int burst = 1 + (int)(rnd() % 8); /* same size, same destination: GSO candidates */
        if (burst > 1 && rnd() % 3 == 0) {
            size_t seg, total = gso_burst(burst, (size_t)(4 + len + pad), 4, &seg);
            send_gso(client[s], &laddr[s % 2], gbuf, total, (uint16_t)seg);
            return;
        }
        for (int i = 0; i < burst; i++)
            sendto(client[s], buf, (size_t)(4 + len + pad), 0, (struct sockaddr *)&laddr[s % 2],
                   sizeof(laddr[0]));
    } else if (b->peer_fd >= 0) { /* peer -> relay */
        memcpy(buf, &id, 4);
        buf[4] = 1;
        memset(buf + 5, 0xCD, (size_t)(len - 5));
        int burst = 1 + (int)(rnd() % 8);
        if (burst > 1 && rnd() % 3 == 0) {
            size_t seg, total = gso_burst(burst, (size_t)len, 0, &seg);
            send_gso(b->peer_fd, &raddr[s], gbuf, total, (uint16_t)seg);
            return;
        }
        for (int i = 0; i < burst; i++)
            sendto(b->peer_fd, buf, (size_t)len, 0, (struct sockaddr *)&raddr[s],
                   sizeof(raddr[0]));
    }
}

static void send_junk(int s) {
    size_t n;
    switch (rnd() % 8) {
    case 0: /* truncated header */
        n = rnd() % 4;
        buf[0] = (unsigned char)(0x40 + rnd() % 0x40);
        buf[1] = (unsigned char)rnd();
        buf[2] = (unsigned char)rnd();
        break;
    case 1: /* length beyond the datagram, channel maybe live */
        n = 4 + rnd() % 64;
        buf[0] = cur[s] >= 0 ? (unsigned char)(B[cur[s]].ch >> 8) : 0x40;
        buf[1] = cur[s] >= 0 ? (unsigned char)(B[cur[s]].ch & 0xFF) : 0;
        buf[2] = 0xFF;
        buf[3] = (unsigned char)rnd();
        break;
    case 2: /* channel numbers out of range */
        n = 4 + rnd() % 64;
        buf[0] = (unsigned char)(rnd() & 1 ? 0x80 + rnd() % 0x80 : rnd() % 0x40);
        buf[1] = (unsigned char)rnd();
        buf[2] = 0;
        buf[3] = (unsigned char)(n - 4);
        break;
    case 3:
        n = 0;
        break;
    case 4: /* a large datagram, its length field one byte beyond it */
        n = 4 + rnd() % 60000;
        buf[0] = 0x40;
        buf[1] = (unsigned char)rnd();
        buf[2] = (unsigned char)((n - 3) >> 8);
        buf[3] = (unsigned char)((n - 3) & 0xFF);
        break;
    default:
        n = rnd() % 200;
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)rnd();
        break;
    }
    if (rnd() & 1) {
        sendto(client[s], buf, n, 0, (struct sockaddr *)&laddr[rnd() % 2], sizeof(laddr[0]));
    } else {
        /* a peer with a channel on another relay, or a stranger: never a table hit */
        int id = pick_binding(s);
        int fd = id >= 0 && B[id].peer_fd >= 0 ? B[id].peer_fd : client[s];
        int to = (s + 1 + (int)(rnd() % (SLOTS - 1))) % SLOTS;
        sendto(fd, buf, n, 0, (struct sockaddr *)&raddr[to], sizeof(raddr[0]));
    }
}

static void poll_once(fp_engine *e) {
    int n = fp_poll(e, 0);
    if (n < 0) {
        FAIL("poll: %s", strerror(errno));
        return;
    }
    for (int i = 0; i < n; i++) { /* touch every byte the misses hand back */
        fp_miss *m = &e->miss[i];
        unsigned char *d = (unsigned char *)m->data;
        volatile unsigned sum = 0;
        for (int j = 0; j < m->len; j++)
            sum += d[j];
        if (m->len < 0 || m->len > 65535)
            FAIL("miss length %d", m->len);
        if (m->fd == listener[0] || m->fd == listener[1])
            check_miss(m);
        misses_seen++;
    }
}

#include "fastpath_fuzz_stream.c"

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL);
    if (rng_state == 0)
        rng_state = 88172645463325252ULL;
    fprintf(stderr, "fastpath_fuzz: %.1fs seed %llu\n", seconds, (unsigned long long)rng_state);
    fp_engine *e = fp_new();
    if (e == NULL) {
        perror("fp_new");
        return 2;
    }
    e->binding = 1;
    unsigned methods = 0;
    for (size_t i = 0; i < sizeof(turn_methods); i++)
        methods |= 1u << turn_methods[i];
    if (fp_set_challenge(e, methods, chal_head, sizeof(chal_head), chal_tail, sizeof(chal_tail),
                         chal_prefix, (int)strlen(chal_prefix), chal_key, sizeof(chal_key), 0) != 0)
        FAIL("fp_set_challenge refused the template");
    for (int l = 0; l < 2; l++) {
        listener[l] = udp_socket(0x7F000001, &laddr[l]);
        fp_add_socket(e, listener[l], FP_LISTENER);
    }
    for (int s = 0; s < SLOTS; s++) {
        relay[s] = udp_socket(0x7F000001, &raddr[s]);
        fp_add_socket(e, relay[s], FP_RELAY);
        client[s] = udp_socket(0x7F000001, &caddr[s]);
        next_ch[s] = (uint16_t)(0x4000 + s * 0x800);
        cur[s] = -1;
        for (int k = 0; k < STALE; k++)
            stale[s][k] = -1;
        bind_slot(e, s);
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long iterations = 0;
    for (;;) {
        if ((iterations++ & 255) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
                break;
        }
        int s = (int)(rnd() % SLOTS);
        unsigned r = (unsigned)(rnd() % 1000);
        if (r < 480) {
            send_valid(s);
        } else if (r < 550) {
            send_binding(s);
        } else if (r < 750) {
            send_junk(s);
        } else if (r < 930) {
            poll_once(e);
            drain();
        } else if (r < 975) { /* unbind (and maybe rebind) during traffic */
            drain();
            if (cur[s] >= 0) {
                int id = cur[s];
                uint64_t p = 0, b = 0;
                int l = s % 2;
                if (fp_uninstall(e, FP_LISTENER, listener[l], (struct sockaddr *)&caddr[s],
                                 B[id].ch, &p, &b))
                    B[id].counted[0] += p;
                else
                    FAIL("client entry of binding %d missing", id);
                if (fp_uninstall(e, FP_RELAY, relay[s], (struct sockaddr *)&B[id].peer, 0, &p, &b))
                    B[id].counted[1] += p;
                else
                    FAIL("peer entry of binding %d missing", id);
                kill_binding(id);
            }
            if (rnd() % 4)
                bind_slot(e, s);
        } else if (r < 980) { /* the relay socket goes away under live entries */
            drain();
            if (cur[s] >= 0)
                kill_binding(cur[s]);
            fp_remove_socket(e, relay[s]);
            close(relay[s]);
            relay[s] = udp_socket(0x7F000001, &raddr[s]);
            fp_add_socket(e, relay[s], FP_RELAY);
            bind_slot(e, s);
        } else if (r < 985) {
            if (rnd() % 4 == 0) { /* the per-source budget comes, changes, goes */
                static const double budgets[] = {0, 3, 50, 100000};
                take_source_drops(e);
                fp_set_source_budget(e, budgets[rnd() % 4]);
            }
            if (rnd() % 4 == 0) { /* the challenge rate comes, changes, goes */
                static const double rates[] = {0, 3, 50, 100000};
                uint64_t dropped;
                fp_take_challenges(e, visit_challenges, NULL, &dropped);
                e->chal.rate = rates[rnd() % 4];
                memset(e->chal_src, 0, sizeof(e->chal_src));
            }
            fp_collect(e, (int)(rnd() & 1), visit, NULL);
            if (rnd() % 16 == 0)
                check_uses(e);
        } else if (r < 990) { /* bandwidth limits come, change, go; buckets shared by slots */
            static const double rates[] = {0, 3000, 100000, 1e9};
            if (cur[s] >= 0) {
                int id = cur[s];
                double rate = rates[rnd() % 4];
                uint64_t bucket = (uint64_t)(s % 3) * 2;
                fp_limit(e, FP_LISTENER, listener[s % 2], (struct sockaddr *)&caddr[s], B[id].ch,
                         bucket, rate, 0);
                fp_limit(e, FP_RELAY, relay[s], (struct sockaddr *)&B[id].peer, 0, bucket + 1,
                         rate, 1);
            }
            if (rnd() % 8 == 0)
                fp_set_capacity(e, rnd() & 1 ? 0 : 50000);
            fp_collect_limited(e, visit_limited, NULL);
        } else if (cur[s] >= 0) { /* reinstall over a live entry: counts move to pending */
            int id = cur[s];
            int l = s % 2;
            fp_install(e, FP_LISTENER, listener[l], (struct sockaddr *)&caddr[s], B[id].ch,
                       relay[s], (struct sockaddr *)&B[id].peer, sizeof(B[id].peer), 0,
                       (uint64_t)id * 2);
        }
    }
    for (int i = 0; i < 50; i++)
        poll_once(e);
    drain();
    fp_collect(e, 0, visit, NULL);
    check_uses(e);
    for (int id = 0; id < nb; id++)
        for (int d = 0; d < 2; d++)
            if (B[id].received[d] > B[id].counted[d])
                FAIL("binding %d dir %d: %llu arrived, %llu counted", id, d,
                     (unsigned long long)B[id].received[d], (unsigned long long)B[id].counted[d]);
    take_source_drops(e);
    fprintf(stderr, "fastpath_fuzz: %llu datagrams dropped by the per-source budget\n",
            (unsigned long long)e->stat_src_dropped);
    fprintf(stderr,
            "fastpath_fuzz: %ld iterations, %d bindings, %ld forwarded, %ld misses, %llu gso "
            "sends, %llu gro buffers, %u Binding requests (%ld answered, %llu counted, %ld handed "
            "back), %llu dropped by bandwidth limits, %ld failures\n",
            iterations, nb, forwarded, misses_seen, (unsigned long long)e->stat_gso_sends,
            (unsigned long long)e->stat_gro_buffers, nq, answered,
            (unsigned long long)e->stat_bindings, bindings_missed,
            (unsigned long long)e->stat_limited, failures);
    if (answered == 0 || bindings_missed == 0)
        FAIL("the Binding requests were never both answered and handed back");
    fprintf(stderr, "fastpath_fuzz: %ld 401s (%llu counted, %llu dropped over the rate), %ld TURN "
            "requests handed back\n", challenged, (unsigned long long)e->stat_challenges,
            (unsigned long long)e->stat_challenge_drops, challenges_missed);
    if (challenged == 0 || challenges_missed == 0)
        FAIL("the TURN requests were never both challenged and handed back");
    if ((uint64_t)challenged > e->stat_challenges)
        FAIL("%ld 401s arrived, %llu counted", challenged, (unsigned long long)e->stat_challenges);
    if ((uint64_t)answered > e->stat_bindings)
        FAIL("%ld Binding answers arrived, %llu counted", answered,
             (unsigned long long)e->stat_bindings);
    fp_free(e);
    fuzz_streams(seconds / 2);
    for (int id = 0; id < nb; id++)
        if (B[id].peer_fd >= 0)
            close(B[id].peer_fd);
    for (int s = 0; s < SLOTS; s++) {
        close(relay[s]);
        close(client[s]);
    }
    close(listener[0]);
    close(listener[1]);
    if (forwarded == 0)
        FAIL("nothing was forwarded at all");
    return failures ? 1 : 0;
}
