/*
 * iceward.net._fastpath: the native relay hot loop (Linux).
 *
 * One epoll set over the UDP listeners and relay sockets.  poll() drains what is ready with
 * recvmmsg (the GIL released), serves every forwarding-table hit without copying (a listener's
 * ChannelData goes out from its payload offset; a peer's datagram goes out behind a 4-byte
 * ChannelData header in a second iovec), sends per socket with sendmmsg, coalescing consecutive
 * datagrams to one destination of one size into a UDP GSO send (UDP_SEGMENT), and hands
 * everything else back to Python unchanged: (fd, bytes, (host, port)).  With UDP_GRO on the
 * sockets the kernel may hand over several same-size datagrams of one sender in one buffer;
 * they are split here and each one is served (or handed back) on its own.
 *
 * Two tables in one hash: (listener fd, client address, channel) -> (relay fd, peer address) and
 * (relay fd, peer address) -> (listener fd, client address, channel).  The control plane installs
 * and removes entries; each entry counts packets and payload bytes under a token, which collect()
 * hands back (and zeroes) so the control plane keeps the exact counters.  Removing a socket purges
 * every entry that reads or writes it; their counts wait in a pending list for collect().
 *
 * A STUN Binding request on a listener that needs nothing but an address (no attributes, or only
 * SOFTWARE and a valid FINGERPRINT) is answered here too, when the control plane switched that on
 * (answer_binding): XOR-MAPPED-ADDRESS and, if the request had one, FINGERPRINT, the very bytes
 * the Python core sends; take_bindings() hands back how many, for the same request counter.
 *
 * The 401 to an unauthenticated TURN request is answered here too (answer_challenges): a
 * well-formed request of a TURN method without MESSAGE-INTEGRITY(-SHA256) (nor RESERVATION-TOKEN:
 * workers may first hand the reserved port over) gets the core's challenge byte for byte: the
 * attributes the control plane encoded once around a NONCE made here as NonceManager makes it
 * (HMAC-SHA256, written below: the build needs nothing but the Python headers), FINGERPRINT if
 * the request had one. The core's rate of challenges per source IP holds (a second table beside
 * the source budget's; the requests left to the core spend it too); take_challenges() hands back
 * the requests by method, the 401s and the drops, for the core's counters. Anything else
 * (signed, malformed, a realm too long for the buffer) goes to Python as before.
 *
 * Bandwidth limits: an entry may draw on a token bucket (one per allocation and direction, shared
 * by its channels' entries, refcounted), filled lazily: a datagram subtracts its size, and only a
 * bucket gone short reads the clock (clock_gettime, a vDSO call, no syscall), adds what its rate
 * earned since, drawing it from the node's bucket of that direction when a capacity is set, and
 * drops (and counts on the entry) what it cannot pay for.
 *
 * TCP clients (streams): a plain TCP client connection's socket (a duplicate of it, so that its
 * number cannot be reused while an entry names it) is known to the engine as a stream, not polled
 * here: asyncio reads it. stream_input() serves the ChannelData frames at the front of what was
 * read for installed channels ((stream fd, client, channel) entries, as a listener's) and stops at
 * the first frame it does not serve, which Python handles as before. A peer's datagram whose
 * entry points at a stream is framed (padded to 4 bytes, RFC 8656 section 12.5); the frames of
 * one poll for one stream leave in one sendmsg at its end. If the socket takes less than all of
 * them, or the stream is held (its Python transport has bytes waiting), the rest of the frame cut
 * short and every later frame go back to Python (a list per stream per poll), which writes them
 * through the transport in order and releases the hold once its buffer is empty.
 *
 * Per-source budget (source_budget): every datagram a listener reads that is not ChannelData (a
 * STUN message, or garbage) first spends a token of its source's bucket, before the Binding
 * answer and before the hand-off to Python; without one it is dropped and counted (per source
 * for the log, in all for the metric). See fp_src_over.
 *
 * Compiled without Python (FP_NO_PYTHON) the core is driven by the sanitizer fuzz test.
 */
#define _GNU_SOURCE
#ifndef FP_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define FP_LISTENER 1
#define FP_RELAY 2
#define FP_STREAM 3      /* a TCP client's socket, written to, never polled here */
#define FP_STREAM_HELD 4 /* the same, while its frames go through Python */

#define FP_BATCH 64            /* buffers per recvmmsg */
#define FP_POOL 128            /* buffers per poll */
#define FP_MAXOUT 4096         /* datagrams sent or handed back per flush */
#define FP_DATA 65536          /* receive room per datagram */
#define FP_STRIDE (FP_DATA + 320) /* 4 bytes header room + data, staggered over cache sets */
#define FP_EVENTS 64
#define FP_GSO_SEGS 64
#define FP_GSO_BYTES 65000
#define FP_GSO_MAX_SEG 1472
#define FP_BINDING_MAX 52 /* header 20 + XOR-MAPPED-ADDRESS (IPv6) 24 + FINGERPRINT 8 */

typedef struct {
    int32_t fd;
    uint16_t chan;
    uint16_t port; /* network order */
    uint8_t family;
    uint8_t kind;
    uint8_t pad[2];
    uint8_t addr[16];
} fp_key;

/* A token bucket: bytes per second, at most burst bytes held. */
typedef struct fp_bucket {
    struct fp_bucket *next;
    uint64_t id;
    int refs;
    int dir; /* 0: to the peer, 1: to the client (the node bucket drawn on) */
    double rate, burst, tokens;
    double last; /* seconds, CLOCK_MONOTONIC */
} fp_bucket;

#define FP_BUCKET_HASH 1024
#define FP_BURST_SECONDS 0.25
#define FP_MIN_BURST 4500.0

typedef struct fp_entry {
    struct fp_entry *next;
    fp_key key;
    int out_fd;
    uint16_t out_chan;
    socklen_t dstlen;
    struct sockaddr_storage dst;
    uint64_t token;
    uint64_t packets;
    uint64_t bytes;
    fp_bucket *bucket; /* NULL: no bandwidth limit */
    uint64_t limited;  /* datagrams dropped by the bucket, since the last collect_limited */
} fp_entry;

typedef struct {
    uint64_t token, packets, bytes;
} fp_count;

typedef struct {
    int fd;
    int slot; /* the buffer, whose source address it is */
    char *data;
    int len;
    int skip;    /* stream frames: bytes of the frame already written */
    char hdr[4]; /* stream frames: the ChannelData header (data, then padding, follow) */
    uint8_t stream;
} fp_miss;

typedef struct {
    int fd;
    const fp_entry *entry; /* NULL for a STUN answer */
    const struct sockaddr_storage *dst;
    socklen_t dstlen;
    char *hdr; /* 4 bytes of ChannelData header, or NULL */
    char *data;
    int len;   /* of data */
} fp_out;

/* A frame for a stream, written when the poll ends. */
typedef struct {
    int fd;
    int slot;
    char *data;
    int len;
    char hdr[4];
} fp_sout;

/* One source's budget: a token bucket of STUN messages (rate = burst = the engine's src_rate). */
typedef struct {
    uint8_t addr[16];  /* IPv4 as ::ffff:a.b.c.d; IPv6: its /64, the rest zero */
    uint8_t used;
    uint32_t dropped;  /* since the last fp_take_source_drops */
    double tokens;
    double last;       /* seconds, CLOCK_MONOTONIC */
} fp_src;

#define FP_SRC_SLOTS 4096 /* direct-mapped by a keyed hash of the address; a power of 2 */

/* SHA-256 state (see fp_sha256_update). */
typedef struct {
    uint32_t h[8];
    uint64_t n; /* bytes hashed so far */
    unsigned char block[64];
} fp_sha256;

/* An HMAC-SHA256 key as the two hash states it starts from: a MAC costs no key schedule. */
typedef struct {
    fp_sha256 inner, outer;
} fp_hmac;

#define FP_CHALLENGE_MAX 1024    /* bytes of a 401 answered here; a longer one stays the core's */
#define FP_CHALLENGE_SLOTS 256   /* 401s written per flush */
#define FP_NONCE_PREFIX_MAX 64

/* What the core's 401 holds (see fp_set_challenge). */
typedef struct {
    uint16_t methods; /* bit m: requests of TURN method m are challenged here; 0: none */
    double rate;      /* answered per second per source IP, bursts of as many; 0: no limit */
    unsigned char attrs[FP_CHALLENGE_MAX]; /* the attributes before the NONCE, then after it */
    int nhead, ntail;
    char prefix[FP_NONCE_PREFIX_MAX];
    int nprefix;
    fp_hmac key;
} fp_challenge;

#define FP_STREAM_IOV 1020 /* iovecs per stream sendmsg (3 per frame), under IOV_MAX */

typedef struct fp_engine {
    int epfd;
    pthread_mutex_t lock;
    fp_entry **buckets;
    size_t nbuckets;
    size_t count;
    uint8_t *kinds;
    int nkinds;
    uint32_t *uses; /* per fd: entries that read or write it (see fp_count_use) */
    int nuses;
    int uses_lost;  /* a count could not be kept: remove_socket scans the whole table */
    fp_count *pending;
    size_t npending, cpending;
    char *pool;
    int gso;
    int gro;
    int nmiss;
    int nout;
    int binding; /* answer plain Binding requests on listeners */
    uint64_t stat_bindings, bindings_untaken;
    uint64_t stat_hits, stat_misses, stat_send_calls, stat_gso_sends, stat_send_errors;
    uint64_t stat_recv_calls, stat_gro_buffers, stat_dropped, stat_limited;
    fp_bucket *bhash[FP_BUCKET_HASH];
    fp_bucket node[2]; /* the node's capacity per direction; rate 0: none */
    double src_rate;   /* STUN messages per second per source; 0: no budget */
    uint64_t src_key;  /* the hash key of the source table, random per engine */
    double poll_now;   /* the clock, read once per poll when the budget first needs it; 0: not yet */
    uint64_t stat_src_dropped, src_dropped_untaken;
    fp_src src[FP_SRC_SLOTS];
    fp_challenge chal;
    fp_src chal_src[FP_SRC_SLOTS]; /* the challenges' rate per source IP (whole, not /64) */
    uint64_t chal_requests[16];    /* per method, answered or dropped, since the last take */
    uint64_t chal_answered, chal_dropped, stat_challenges, stat_challenge_drops;
    int nchal;
    unsigned char chal_out[FP_CHALLENGE_SLOTS][FP_CHALLENGE_MAX];
    struct mmsghdr rmsg[FP_POOL];
    struct iovec riov[FP_POOL];
    struct sockaddr_storage names[FP_POOL];
    uint64_t rcbuf[FP_POOL][4];
    fp_miss miss[FP_MAXOUT];
    fp_out out[FP_MAXOUT];
    fp_sout sout[FP_MAXOUT];
    int nsout;
    uint8_t sdone[FP_MAXOUT];
    struct iovec stiov[FP_STREAM_IOV];
    char hdrs[FP_MAXOUT][4];
    unsigned char answers[FP_MAXOUT][FP_BINDING_MAX];
    struct mmsghdr smsg[FP_MAXOUT];
    struct iovec siov[2 * FP_MAXOUT];
    uint64_t cbuf[FP_MAXOUT][4];
    int mseg[FP_MAXOUT];
    int mlen[FP_MAXOUT];
    uint8_t done[FP_MAXOUT];
} fp_engine;

/* ---- table -------------------------------------------------------------------------------- */

static uint64_t fp_hash(const fp_key *k) {
    const uint8_t *p = (const uint8_t *)k;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof(*k); i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* Fill a key from a socket address; -1 if the family is neither IPv4 nor IPv6. */
static int fp_make_key(fp_key *k, int kind, int fd, const struct sockaddr *sa, uint16_t chan) {
    memset(k, 0, sizeof(*k));
    k->fd = fd;
    k->kind = (uint8_t)kind;
    k->chan = chan;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        k->family = 4;
        k->port = s4->sin_port;
        memcpy(k->addr, &s4->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        k->family = 6;
        k->port = s6->sin6_port;
        memcpy(k->addr, &s6->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static fp_entry **fp_find(fp_engine *e, const fp_key *k) {
    fp_entry **pp = &e->buckets[fp_hash(k) & (e->nbuckets - 1)];
    while (*pp != NULL && memcmp(&(*pp)->key, k, sizeof(*k)) != 0)
        pp = &(*pp)->next;
    return pp;
}

static int fp_grow(fp_engine *e) {
    size_t n = e->nbuckets * 2;
    fp_entry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return -1;
    for (size_t i = 0; i < e->nbuckets; i++) {
        fp_entry *x = e->buckets[i];
        while (x != NULL) {
            fp_entry *next = x->next;
            size_t j = fp_hash(&x->key) & (n - 1);
            x->next = b[j];
            b[j] = x;
            x = next;
        }
    }
    free(e->buckets);
    e->buckets = b;
    e->nbuckets = n;
    return 0;
}

/* ---- entries per socket ------------------------------------------------------------------- */

/* Count (delta +1) or uncount (-1) one entry's use of fd, so that removing a socket that no
 * entry uses costs no scan of the whole table (a relay released at the end of every allocation,
 * while thousands of other allocations' entries stay). If the array cannot grow, counts are
 * given up for good and every removal scans, as it would without them. */
static void fp_count_use(fp_engine *e, int fd, int delta) {
    if (fd < 0 || e->uses_lost)
        return;
    if (fd >= e->nuses) {
        if (delta < 0) {
            e->uses_lost = 1; /* uncounting what was never counted: trust nothing */
            return;
        }
        int n = e->nuses ? e->nuses : 64;
        while (n <= fd)
            n *= 2;
        uint32_t *u = realloc(e->uses, (size_t)n * sizeof(*u));
        if (u == NULL) {
            e->uses_lost = 1;
            return;
        }
        memset(u + e->nuses, 0, (size_t)(n - e->nuses) * sizeof(*u));
        e->uses = u;
        e->nuses = n;
    }
    if (delta < 0 && e->uses[fd] == 0)
        e->uses_lost = 1;
    else
        e->uses[fd] += (uint32_t)delta;
}

/* 1 if some entry may read or write fd. */
static int fp_in_use(const fp_engine *e, int fd) {
    return e->uses_lost || (fd < e->nuses && e->uses[fd] > 0);
}

static int fp_push_pending(fp_engine *e, uint64_t token, uint64_t packets, uint64_t bytes) {
    if (packets == 0 && bytes == 0)
        return 0;
    if (e->npending == e->cpending) {
        size_t c = e->cpending ? e->cpending * 2 : 16;
        fp_count *p = realloc(e->pending, c * sizeof(*p));
        if (p == NULL)
            return -1;
        e->pending = p;
        e->cpending = c;
    }
    e->pending[e->npending].token = token;
    e->pending[e->npending].packets = packets;
    e->pending[e->npending].bytes = bytes;
    e->npending++;
    return 0;
}

typedef int (*fp_visit_fn)(void *ctx, uint64_t token, uint64_t a, uint64_t b);

/* ---- bandwidth ---------------------------------------------------------------------------- */

static double fp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double fp_burst(double rate) {
    double b = rate * FP_BURST_SECONDS;
    return b > FP_MIN_BURST ? b : FP_MIN_BURST;
}

/* Up to want bytes from bucket b, refilled for the time since its last refill. */
static double fp_take(fp_bucket *b, double want, double now) {
    double t = b->tokens + (now - b->last) * b->rate;
    if (t > b->burst)
        t = b->burst;
    b->last = now;
    double given = want < t ? want : (t > 0 ? t : 0);
    b->tokens = t - given;
    return given;
}

/* Whether entry x may send len bytes now; if not, counted as dropped. */
static int fp_pay(fp_engine *e, fp_entry *x, int len) {
    fp_bucket *b = x->bucket;
    b->tokens -= len;
    if (b->tokens >= 0)
        return 1;
    double now = fp_now();
    double earned = (now - b->last) * b->rate;
    if (earned > b->burst - b->tokens)
        earned = b->burst - b->tokens;
    b->last = now;
    fp_bucket *node = &e->node[b->dir];
    if (node->rate > 0 && earned > 0)
        earned = fp_take(node, earned, now);
    if (earned > 0)
        b->tokens += earned;
    if (b->tokens >= 0)
        return 1;
    b->tokens += len;
    x->limited++;
    e->stat_limited++;
    return 0;
}

static void fp_release_bucket(fp_engine *e, fp_bucket *b) {
    if (b == NULL || --b->refs > 0)
        return;
    fp_bucket **pp = &e->bhash[b->id % FP_BUCKET_HASH];
    while (*pp != NULL && *pp != b)
        pp = &(*pp)->next;
    if (*pp != NULL)
        *pp = b->next;
    free(b);
}

/* Caller holds the lock. Entry (kind, fd, src, chan) draws on bucket id (made at rate, for
 * direction dir, if new) from now on; rate 0 lifts its limit. -1 (ENOENT) with no such entry. */
static int fp_limit(fp_engine *e, int kind, int in_fd, const struct sockaddr *src, uint16_t chan,
                    uint64_t id, double rate, int dir) {
    fp_key k;
    fp_entry *x = fp_make_key(&k, kind, in_fd, src, chan) == 0 ? *fp_find(e, &k) : NULL;
    if (x == NULL) {
        errno = ENOENT;
        return -1;
    }
    fp_bucket *b = NULL;
    if (rate > 0) {
        fp_bucket **head = &e->bhash[id % FP_BUCKET_HASH];
        for (b = *head; b != NULL && b->id != id; b = b->next)
            ;
        if (b == NULL) {
            b = calloc(1, sizeof(*b));
            if (b == NULL) {
                errno = ENOMEM;
                return -1;
            }
            b->id = id;
            b->dir = dir ? 1 : 0;
            b->next = *head;
            *head = b;
        }
        if (b->rate != rate) {
            b->rate = rate;
            b->burst = fp_burst(rate);
            b->tokens = b->burst;
            b->last = fp_now();
        }
        if (x->bucket == b)
            return 0;
        b->refs++;
    }
    fp_release_bucket(e, x->bucket);
    x->bucket = b;
    return 0;
}

/* Caller holds the lock. The node's capacity, bytes per second each direction (0: none). */
static void fp_set_capacity(fp_engine *e, double rate) {
    double now = fp_now();
    for (int d = 0; d < 2; d++) {
        e->node[d].rate = rate;
        e->node[d].burst = fp_burst(rate);
        e->node[d].tokens = e->node[d].burst;
        e->node[d].last = now;
    }
}

/* Caller holds the lock. Hands each entry's nonzero drop count to visit (token, drops, 0),
 * zeroing it. */
static int fp_collect_limited(fp_engine *e, fp_visit_fn visit, void *ctx) {
    for (size_t i = 0; i < e->nbuckets; i++) {
        for (fp_entry *x = e->buckets[i]; x != NULL; x = x->next) {
            if (x->limited == 0)
                continue;
            if (visit(ctx, x->token, x->limited, 0) != 0)
                return -1;
            x->limited = 0;
        }
    }
    return 0;
}

/* ---- per-source budget for STUN messages -------------------------------------------------- */

/* The table's key of a source: IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d, IPv6 by its /64
 * (one subscriber's network: a host picks any address in it), or whole if whole (the core's
 * challenge limit keys the address). 0, or -1 for another family. */
static int fp_src_key(const struct sockaddr *sa, uint8_t k[16], int whole) {
    memset(k, 0, 16);
    if (sa->sa_family == AF_INET) {
        k[10] = k[11] = 0xFF;
        memcpy(k + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family != AF_INET6)
        return -1;
    const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    memcpy(k, a, whole || memcmp(a, mapped, 12) == 0 ? 16 : 8);
    return 0;
}

/* splitmix64's finaliser: every input bit reaches every output bit (the slot is the low bits). */
static uint64_t fp_mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static fp_src *fp_src_slot(const fp_engine *e, fp_src *table, const uint8_t k[16]) {
    uint64_t a, b;
    memcpy(&a, k, 8);
    memcpy(&b, k + 8, 8);
    return &table[fp_mix(fp_mix(a ^ e->src_key) ^ b) & (FP_SRC_SLOTS - 1)];
}

/* One token from source k's bucket in table (FP_SRC_SLOTS slots; rate a second, bursts of as
 * many): NULL if it had one, else its slot. A source whose slot holds another address evicts it
 * and starts with a full bucket (a collision never makes one source pay for another; the key is
 * random per engine, so a sender cannot pick colliding addresses). */
static fp_src *fp_src_spend(fp_engine *e, fp_src *table, double rate, const uint8_t k[16]) {
    if (e->poll_now == 0)
        e->poll_now = fp_now();
    double now = e->poll_now;
    fp_src *s = fp_src_slot(e, table, k);
    if (!s->used || memcmp(s->addr, k, 16) != 0) {
        memcpy(s->addr, k, 16);
        s->used = 1;
        s->dropped = 0;
        s->tokens = rate;
    } else {
        s->tokens += (now - s->last) * rate;
        if (s->tokens > rate)
            s->tokens = rate;
    }
    s->last = now;
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        return NULL;
    }
    return s;
}

/* The hook: 1 if datagram p[0..len) from sa, read on a listener, is dropped for its source's
 * budget. ChannelData (first byte 0x40-0x7F) never spends. */
static int fp_src_over(fp_engine *e, const struct sockaddr *sa, const unsigned char *p, int len) {
    if (e->src_rate <= 0 || (len > 0 && p[0] >= 0x40 && p[0] <= 0x7F))
        return 0;
    uint8_t k[16];
    if (fp_src_key(sa, k, 0) != 0)
        return 0;
    fp_src *s = fp_src_spend(e, e->src, e->src_rate, k);
    if (s == NULL)
        return 0;
    if (s->dropped < UINT32_MAX)
        s->dropped++;
    e->stat_src_dropped++;
    e->src_dropped_untaken++;
    return 1;
}

/* Caller holds the lock. The budget, messages per second per source (0: none); the table starts
 * empty. */
static void fp_set_source_budget(fp_engine *e, double rate) {
    e->src_rate = rate > 0 ? rate : 0;
    memset(e->src, 0, sizeof(e->src));
}

/* Caller holds the lock. Hands each source's nonzero drop count to visit (slot, drops, 0),
 * zeroing it; returns the drops of every source since the last call (those of evicted slots
 * included) and zeroes that too. */
static uint64_t fp_take_source_drops(fp_engine *e, fp_visit_fn visit, void *ctx) {
    for (size_t i = 0; i < FP_SRC_SLOTS; i++) {
        fp_src *s = &e->src[i];
        if (s->dropped == 0)
            continue;
        if (visit(ctx, i, s->dropped, 0) != 0)
            break;
        s->dropped = 0;
    }
    uint64_t n = e->src_dropped_untaken;
    e->src_dropped_untaken = 0;
    return n;
}

/* ---- engine ------------------------------------------------------------------------------- */

static fp_engine *fp_new(void) {
    fp_engine *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->nbuckets = 64;
    e->buckets = calloc(e->nbuckets, sizeof(*e->buckets));
    e->pool = malloc((size_t)FP_POOL * FP_STRIDE);
    e->gso = 1;
    e->gro = 1;
    if (getrandom(&e->src_key, sizeof(e->src_key), GRND_NONBLOCK) != sizeof(e->src_key))
        e->src_key = (uint64_t)fp_now() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)e;
    if (e->epfd < 0 || e->buckets == NULL || e->pool == NULL ||
        pthread_mutex_init(&e->lock, NULL) != 0) {
        if (e->epfd >= 0)
            close(e->epfd);
        free(e->buckets);
        free(e->pool);
        free(e);
        return NULL;
    }
    return e;
}

static void fp_free(fp_engine *e) {
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nbuckets; i++) {
        fp_entry *x = e->buckets[i];
        while (x != NULL) {
            fp_entry *next = x->next;
            free(x);
            x = next;
        }
    }
    for (size_t i = 0; i < FP_BUCKET_HASH; i++) {
        fp_bucket *b = e->bhash[i];
        while (b != NULL) {
            fp_bucket *next = b->next;
            free(b);
            b = next;
        }
    }
    free(e->buckets);
    free(e->kinds);
    free(e->uses);
    free(e->pending);
    free(e->pool);
    if (e->epfd >= 0)
        close(e->epfd);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* Caller holds the lock. The kinds table reaches fd (doubling; new slots 0). */
static int fp_cover_fd(fp_engine *e, int fd) {
    if (fd < e->nkinds)
        return 0;
    int n = e->nkinds ? e->nkinds : 64;
    while (n <= fd)
        n *= 2;
    uint8_t *k = realloc(e->kinds, (size_t)n);
    if (k == NULL) {
        errno = ENOMEM;
        return -1;
    }
    memset(k + e->nkinds, 0, (size_t)(n - e->nkinds));
    e->kinds = k;
    e->nkinds = n;
    return 0;
}

/* Caller holds the lock. */
static int fp_add_socket(fp_engine *e, int fd, int kind) {
    if (fd < 0 || (kind != FP_LISTENER && kind != FP_RELAY)) {
        errno = EINVAL;
        return -1;
    }
    if (fp_cover_fd(e, fd) != 0)
        return -1;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    if (e->gro) {
        int on = 1;
        setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)); /* best effort */
    }
    e->kinds[fd] = (uint8_t)kind;
    return 0;
}

/* Caller holds the lock. fd is a TCP client's socket: entries may write frames to it. */
static int fp_add_stream(fp_engine *e, int fd) {
    if (fd < 0) {
        errno = EINVAL;
        return -1;
    }
    if (fp_cover_fd(e, fd) != 0)
        return -1;
    e->kinds[fd] = FP_STREAM;
    return 0;
}

/* Caller holds the lock. Hold (1) or release (0) a stream's frames for Python's transport. */
static void fp_hold_stream(fp_engine *e, int fd, int held) {
    if (fd >= 0 && fd < e->nkinds && e->kinds[fd] >= FP_STREAM)
        e->kinds[fd] = held ? FP_STREAM_HELD : FP_STREAM;
}

/* Caller holds the lock. Purges every entry that reads or writes fd. */
static void fp_remove_socket(fp_engine *e, int fd) {
    if (fd < 0)
        return;
    if (fd < e->nkinds && e->kinds[fd]) {
        if (e->kinds[fd] < FP_STREAM)
            epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
        e->kinds[fd] = 0;
    }
    if (!fp_in_use(e, fd))
        return;
    for (size_t i = 0; i < e->nbuckets; i++) {
        fp_entry **pp = &e->buckets[i];
        while (*pp != NULL) {
            fp_entry *x = *pp;
            if (x->key.fd == fd || x->out_fd == fd) {
                *pp = x->next;
                fp_push_pending(e, x->token, x->packets, x->bytes);
                fp_count_use(e, x->key.fd, -1);
                fp_count_use(e, x->out_fd, -1);
                fp_release_bucket(e, x->bucket);
                free(x);
                e->count--;
            } else {
                pp = &x->next;
            }
        }
    }
}

/* Caller holds the lock. Installs or replaces; a replaced entry's counts go to pending. */
static int fp_install(fp_engine *e, int kind, int in_fd, const struct sockaddr *src, uint16_t chan,
                      int out_fd, const struct sockaddr *dst, socklen_t dstlen, uint16_t out_chan,
                      uint64_t token) {
    fp_key k;
    if (fp_make_key(&k, kind, in_fd, src, chan) != 0 || dstlen > sizeof(struct sockaddr_storage)) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    fp_entry **pp = fp_find(e, &k);
    fp_entry *x = *pp;
    if (x == NULL) {
        x = calloc(1, sizeof(*x));
        if (x == NULL) {
            errno = ENOMEM;
            return -1;
        }
        x->key = k;
        *pp = x;
        e->count++;
        fp_count_use(e, in_fd, 1);
    } else {
        fp_push_pending(e, x->token, x->packets, x->bytes);
        x->packets = x->bytes = 0;
        fp_count_use(e, x->out_fd, -1);
    }
    fp_count_use(e, out_fd, 1);
    x->out_fd = out_fd;
    x->out_chan = out_chan;
    memset(&x->dst, 0, sizeof(x->dst));
    memcpy(&x->dst, dst, dstlen);
    x->dstlen = dstlen;
    x->token = token;
    if (e->count > e->nbuckets)
        fp_grow(e); /* failure leaves a longer chain, nothing worse */
    return 0;
}

/* Caller holds the lock. 1 and the entry's uncollected counts if it was there, else 0. */
static int fp_uninstall(fp_engine *e, int kind, int in_fd, const struct sockaddr *src,
                        uint16_t chan, uint64_t *packets, uint64_t *bytes) {
    fp_key k;
    if (fp_make_key(&k, kind, in_fd, src, chan) != 0)
        return 0;
    fp_entry **pp = fp_find(e, &k);
    fp_entry *x = *pp;
    if (x == NULL)
        return 0;
    *pp = x->next;
    *packets = x->packets;
    *bytes = x->bytes;
    fp_count_use(e, x->key.fd, -1);
    fp_count_use(e, x->out_fd, -1);
    fp_release_bucket(e, x->bucket);
    free(x);
    e->count--;
    return 1;
}

/* Caller holds the lock. Hands every nonzero count (pending first) to visit, zeroing each one
 * visit accepted; stops at the first failure (-1). */
typedef fp_visit_fn fp_visit;

static int fp_collect(fp_engine *e, int pending_only, fp_visit visit, void *ctx) {
    size_t i;
    for (i = 0; i < e->npending; i++) {
        if (visit(ctx, e->pending[i].token, e->pending[i].packets, e->pending[i].bytes) != 0) {
            memmove(e->pending, e->pending + i, (e->npending - i) * sizeof(*e->pending));
            e->npending -= i;
            return -1;
        }
    }
    e->npending = 0;
    if (pending_only)
        return 0;
    for (i = 0; i < e->nbuckets; i++) {
        for (fp_entry *x = e->buckets[i]; x != NULL; x = x->next) {
            if (x->packets == 0 && x->bytes == 0)
                continue;
            if (visit(ctx, x->token, x->packets, x->bytes) != 0)
                return -1;
            x->packets = x->bytes = 0;
        }
    }
    return 0;
}

static void fp_flush(fp_engine *e);

static void fp_add_out(fp_engine *e, int fd, const fp_entry *x, char *hdr, char *data, int len) {
    if (e->nout == FP_MAXOUT)
        fp_flush(e);
    fp_out *o = &e->out[e->nout++];
    o->fd = fd;
    o->entry = x;
    o->dst = &x->dst;
    o->dstlen = x->dstlen;
    o->hdr = hdr;
    o->data = data;
    o->len = len;
}

static int fp_out_size(const fp_out *o) { return o->len + (o->hdr != NULL ? 4 : 0); }

static void fp_iov(fp_engine *e, int *iv, const fp_out *o) {
    if (o->hdr != NULL) {
        e->siov[*iv].iov_base = o->hdr;
        e->siov[*iv].iov_len = 4;
        (*iv)++;
    }
    e->siov[*iv].iov_base = o->data;
    e->siov[*iv].iov_len = (size_t)o->len;
    (*iv)++;
}

static int fp_same_dst(const fp_out *a, const fp_out *b) {
    return a->dst == b->dst || (a->dstlen == b->dstlen && memcmp(a->dst, b->dst, a->dstlen) == 0);
}

/* Send smsg[0..m) on fd; UDP semantics: a datagram the kernel refuses is lost. */
static void fp_send_msgs(fp_engine *e, int fd, int m) {
    int i = 0;
    while (i < m) {
        int r = sendmmsg(fd, &e->smsg[i], (unsigned)(m - i), MSG_DONTWAIT);
        e->stat_send_calls++;
        if (r > 0) {
            i += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        int err = errno;
        e->stat_send_errors++;
        if (e->mseg[i] > 1 && err != EAGAIN && err != EWOULDBLOCK && err != ENOBUFS) {
            /* The device or route refused segmentation: send the segments one by one. */
            if (err == EIO || err == ENOPROTOOPT || err == EOPNOTSUPP)
                e->gso = 0;
            struct msghdr *h = &e->smsg[i].msg_hdr;
            size_t per = h->msg_iovlen / (size_t)e->mseg[i]; /* 1 or 2 iovecs per datagram */
            for (size_t s = 0; s + per <= h->msg_iovlen; s += per) {
                struct msghdr one;
                memset(&one, 0, sizeof(one));
                one.msg_name = h->msg_name;
                one.msg_namelen = h->msg_namelen;
                one.msg_iov = &h->msg_iov[s];
                one.msg_iovlen = per;
                sendmsg(fd, &one, MSG_DONTWAIT);
                e->stat_send_calls++;
            }
            i++;
            continue;
        }
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS)
            return; /* the socket buffer is full: the rest for this socket is dropped */
        i++;        /* this datagram is refused (unreachable, too big...): go on */
    }
}

static void fp_flush(fp_engine *e) {
    int nout = e->nout;
    memset(e->done, 0, (size_t)nout);
    for (int i = 0; i < nout; i++) {
        if (e->done[i])
            continue;
        int fd = e->out[i].fd;
        int m = 0, iv = 0;
        const fp_out *last = NULL;
        for (int j = i; j < nout; j++) {
            fp_out *o = &e->out[j];
            if (e->done[j] || o->fd != fd)
                continue;
            e->done[j] = 1;
            int size = fp_out_size(o);
            if (e->gso && m > 0 && e->mlen[m - 1] == size && size > 0 && size <= FP_GSO_MAX_SEG &&
                e->mseg[m - 1] < FP_GSO_SEGS && (e->mseg[m - 1] + 1) * size <= FP_GSO_BYTES &&
                fp_same_dst(last, o)) {
                int before = iv;
                fp_iov(e, &iv, o);
                e->smsg[m - 1].msg_hdr.msg_iovlen += (size_t)(iv - before);
                e->mseg[m - 1]++;
                continue;
            }
            struct msghdr *h = &e->smsg[m].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = (void *)o->dst;
            h->msg_namelen = o->dstlen;
            h->msg_iov = &e->siov[iv];
            int before = iv;
            fp_iov(e, &iv, o);
            h->msg_iovlen = (size_t)(iv - before);
            e->mseg[m] = 1;
            e->mlen[m] = size;
            last = o;
            m++;
        }
        for (int k = 0; k < m; k++) {
            if (e->mseg[k] < 2)
                continue;
            struct msghdr *h = &e->smsg[k].msg_hdr;
            h->msg_control = e->cbuf[k];
            h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)e->mlen[k];
            memcpy(CMSG_DATA(c), &seg, sizeof(seg));
            e->stat_gso_sends++;
        }
        fp_send_msgs(e, fd, m);
    }
    e->nout = 0;
    e->nchal = 0;
}

/* ---- STUN Binding answered natively ------------------------------------------------------ */

#define FP_STUN_COOKIE 0x2112A442u
#define FP_STUN_FINGERPRINT_XOR 0x5354554Eu
#define FP_ATTR_XOR_MAPPED_ADDRESS 0x0020
#define FP_ATTR_SOFTWARE 0x8022
#define FP_ATTR_FINGERPRINT 0x8028

static uint32_t fp_crc_table[256];

/* zlib's CRC-32 (reflected 0xEDB88320), the table built on first use. */
static uint32_t fp_crc32(const unsigned char *p, size_t n) {
    if (fp_crc_table[1] == 0) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            fp_crc_table[i] = c;
        }
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = fp_crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint16_t fp_be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t fp_be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void fp_put16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void fp_put32(unsigned char *p, uint32_t v) {
    fp_put16(p, v >> 16);
    fp_put16(p + 2, v & 0xFFFF);
}

/* An answer to request p whose attributes fill out[20..n): its header (type, length, the
 * request's cookie and transaction id) and, if the request had one, FINGERPRINT. Its length. */
static int fp_finish_answer(unsigned char *out, int n, uint32_t type, const unsigned char *p,
                            int fingerprint) {
    int total = n + (fingerprint ? 8 : 0);
    fp_put16(out, type);
    fp_put16(out + 2, (uint32_t)(total - 20));
    memcpy(out + 4, p + 4, 16); /* cookie and transaction id */
    if (fingerprint) {
        fp_put16(out + n, FP_ATTR_FINGERPRINT);
        fp_put16(out + n + 2, 4);
        fp_put32(out + n + 4, fp_crc32(out, (size_t)n) ^ FP_STUN_FINGERPRINT_XOR);
    }
    return total;
}

/* Caller holds the lock, and has made room in e->out. Answer data[0..n) to src, from listener
 * fd, leaves with the poll's other sends. */
static void fp_queue_answer(fp_engine *e, int fd, const struct sockaddr *src,
                            const unsigned char *data, int n) {
    fp_out *o = &e->out[e->nout++];
    o->fd = fd;
    o->entry = NULL;
    o->dst = (const struct sockaddr_storage *)src;
    o->dstlen = src->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                           : sizeof(struct sockaddr_in);
    o->hdr = NULL;
    o->data = (char *)data;
    o->len = n;
}

/* The answer to p[0..len) if it is a Binding request that needs no Python: a well-formed header
 * (type 0x0001, magic cookie, length a multiple of 4 covering exactly the datagram) and only
 * SOFTWARE and FINGERPRINT (last, 4 bytes, its CRC right) as attributes. Writes the success
 * response the Python core would send to out (FP_BINDING_MAX bytes) and returns its length;
 * returns 0 for anything else (CHANGE-REQUEST, RESPONSE-PORT, unknown attributes, a wrong
 * FINGERPRINT, a malformed message), which the Python path handles as before. */
static int fp_binding_answer(const unsigned char *p, int len, const struct sockaddr *src,
                             unsigned char *out) {
    if (len < 20 || p[0] != 0x00 || p[1] != 0x01 || fp_be32(p + 4) != FP_STUN_COOKIE)
        return 0;
    int length = fp_be16(p + 2);
    if ((length & 3) != 0 || 20 + length != len)
        return 0;
    int fingerprint = -1;
    for (int pos = 20; pos < len;) {
        if (len - pos < 4 || fingerprint >= 0)
            return 0; /* truncated, or something after FINGERPRINT */
        int type = fp_be16(p + pos), alen = fp_be16(p + pos + 2);
        int next = pos + 4 + ((alen + 3) & ~3);
        if (next > len)
            return 0;
        if (type == FP_ATTR_FINGERPRINT) {
            if (alen != 4)
                return 0;
            fingerprint = pos;
        } else if (type != FP_ATTR_SOFTWARE) {
            return 0;
        }
        pos = next;
    }
    if (fingerprint >= 0 &&
        (fp_crc32(p, (size_t)fingerprint) ^ FP_STUN_FINGERPRINT_XOR) != fp_be32(p + fingerprint + 4))
        return 0;
    int n = 20;
    fp_put16(out + n, FP_ATTR_XOR_MAPPED_ADDRESS);
    out[n + 4] = 0;
    if (src->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)src;
        const unsigned char *a = (const unsigned char *)&s4->sin_addr;
        fp_put16(out + n + 2, 8);
        out[n + 5] = 1;
        fp_put16(out + n + 6, ntohs(s4->sin_port) ^ (FP_STUN_COOKIE >> 16));
        for (int i = 0; i < 4; i++)
            out[n + 8 + i] = a[i] ^ p[4 + i]; /* the cookie */
        n += 12;
    } else if (src->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)src;
        const unsigned char *a = (const unsigned char *)&s6->sin6_addr;
        fp_put16(out + n + 2, 20);
        out[n + 5] = 2;
        fp_put16(out + n + 6, ntohs(s6->sin6_port) ^ (FP_STUN_COOKIE >> 16));
        for (int i = 0; i < 16; i++)
            out[n + 8 + i] = a[i] ^ p[4 + i]; /* the cookie, then the transaction id */
        n += 24;
    } else {
        return 0;
    }
    return fp_finish_answer(out, n, 0x0101, p, fingerprint >= 0);
}

/* 1 if p[0..len), received on listener fd from src, was a Binding request answered here. */
static int fp_serve_binding(fp_engine *e, int fd, const struct sockaddr *src,
                            const unsigned char *p, int len) {
    if (len < 20 || p[0] != 0x00 || p[1] != 0x01)
        return 0;
    if (e->nout == FP_MAXOUT)
        fp_flush(e);
    unsigned char *answer = e->answers[e->nout];
    int n = fp_binding_answer(p, len, src, answer);
    if (n == 0)
        return 0;
    fp_queue_answer(e, fd, src, answer, n);
    e->stat_bindings++;
    e->bindings_untaken++;
    return 1;
}

/* ---- SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104): the challenge's nonce ---------------- */

/* Written here rather than linked: the extension builds with nothing but the Python headers
 * (fp_sha256 and fp_hmac are declared with the engine). */

static const uint32_t fp_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static uint32_t fp_ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void fp_sha256_compress(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = fp_be32(p + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = fp_ror(w[i - 15], 7) ^ fp_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = fp_ror(w[i - 2], 17) ^ fp_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (fp_ror(e, 6) ^ fp_ror(e, 11) ^ fp_ror(e, 25)) + ((e & f) ^ (~e & g)) +
                      fp_sha256_k[i] + w[i];
        uint32_t t2 = (fp_ror(a, 2) ^ fp_ror(a, 13) ^ fp_ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

static void fp_sha256_init(fp_sha256 *s) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof(iv));
    s->n = 0;
}

static void fp_sha256_update(fp_sha256 *s, const unsigned char *p, size_t n) {
    size_t used = (size_t)(s->n & 63);
    s->n += n;
    if (used) {
        size_t take = 64 - used < n ? 64 - used : n;
        memcpy(s->block + used, p, take);
        p += take;
        n -= take;
        if (used + take < 64)
            return;
        fp_sha256_compress(s->h, s->block);
    }
    for (; n >= 64; p += 64, n -= 64)
        fp_sha256_compress(s->h, p);
    memcpy(s->block, p, n);
}

static void fp_sha256_final(fp_sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->n * 8;
    static const unsigned char pad[64] = {0x80};
    size_t used = (size_t)(s->n & 63);
    fp_sha256_update(s, pad, used < 56 ? 56 - used : 120 - used);
    unsigned char len[8];
    fp_put32(len, (uint32_t)(bits >> 32));
    fp_put32(len + 4, (uint32_t)bits);
    fp_sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++)
        fp_put32(out + 4 * i, s->h[i]);
}


static void fp_hmac_init(fp_hmac *m, const unsigned char *key, size_t n) {
    unsigned char k[64], pad[64];
    memset(k, 0, sizeof(k));
    if (n > 64) {
        fp_sha256 s;
        fp_sha256_init(&s);
        fp_sha256_update(&s, key, n);
        fp_sha256_final(&s, k);
    } else if (n > 0) {
        memcpy(k, key, n);
    }
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    fp_sha256_init(&m->inner);
    fp_sha256_update(&m->inner, pad, 64);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5C;
    fp_sha256_init(&m->outer);
    fp_sha256_update(&m->outer, pad, 64);
}

static void fp_hmac_sha256(const fp_hmac *m, const unsigned char *p, size_t n,
                           unsigned char out[32]) {
    fp_sha256 s = m->inner;
    unsigned char inner[32];
    fp_sha256_update(&s, p, n);
    fp_sha256_final(&s, inner);
    s = m->outer;
    fp_sha256_update(&s, inner, 32);
    fp_sha256_final(&s, out);
}

/* ---- the 401 to an unauthenticated TURN request, answered natively ------------------------ */

#define FP_ATTR_NONCE 0x0015
#define FP_ATTR_MESSAGE_INTEGRITY 0x0008
#define FP_ATTR_MESSAGE_INTEGRITY_SHA256 0x001C
#define FP_ATTR_RESERVATION_TOKEN 0x0022

/* Caller holds the lock. What the core's challenge holds, from the control plane: methods (bit m
 * for TURN method m, all below 16; 0 switches the answer off), the encoded attributes before the
 * NONCE (head) and after it (tail), the nonce's fixed prefix and its HMAC key, and how many are
 * answered per second per source IP (bursts of as many). -1 (EMSGSIZE) if an answer could
 * exceed FP_CHALLENGE_MAX: the core keeps answering. The rate table starts empty. */
static int fp_set_challenge(fp_engine *e, unsigned methods, const unsigned char *head, int nhead,
                            const unsigned char *tail, int ntail, const char *prefix, int nprefix,
                            const unsigned char *key, size_t nkey, double rate) {
    fp_challenge *c = &e->chal;
    if (methods == 0) {
        c->methods = 0;
        return 0;
    }
    if (nhead < 0 || ntail < 0 || nprefix < 0 || nprefix > FP_NONCE_PREFIX_MAX ||
        20 + nhead + 4 + ((nprefix + 34 + 3) & ~3) + ntail + 8 > FP_CHALLENGE_MAX ||
        (nhead & 3) || (ntail & 3)) {
        errno = EMSGSIZE;
        return -1;
    }
    memcpy(c->attrs, head, (size_t)nhead);
    memcpy(c->attrs + nhead, tail, (size_t)ntail);
    c->nhead = nhead;
    c->ntail = ntail;
    memcpy(c->prefix, prefix, (size_t)nprefix);
    c->nprefix = nprefix;
    fp_hmac_init(&c->key, key, nkey);
    c->rate = rate > 0 ? rate : 0;
    c->methods = (uint16_t)methods;
    memset(e->chal_src, 0, sizeof(e->chal_src));
    return 0;
}

/* The method of p[0..len) if the core would answer it with a 401 and nothing else: a request
 * (class bits 0) of a challenged method, the header right (magic cookie, length a multiple of 4
 * covering exactly the datagram), every attribute inside it, nothing after a FINGERPRINT of 4
 * bytes whose CRC is right, and no MESSAGE-INTEGRITY(-SHA256) (a signed request is the core's).
 * Sets *fingerprint when the request had one (the answer has one then), and *reservation when
 * it claims a RESERVATION-TOKEN (with workers the core may first fetch the reserved port from
 * another: it spends the source's challenge rate here, and is answered by the core). -1 for
 * anything else, which the core handles as before. */
static int fp_challenge_method(const fp_challenge *c, const unsigned char *p, int len,
                               int *fingerprint, int *reservation) {
    if (len < 20 || p[0] != 0 || p[1] >= 16 || !(c->methods & (1u << p[1])) ||
        fp_be32(p + 4) != FP_STUN_COOKIE)
        return -1;
    int length = fp_be16(p + 2);
    if ((length & 3) != 0 || 20 + length != len)
        return -1;
    int fp = -1;
    *reservation = 0;
    for (int pos = 20; pos < len;) {
        if (len - pos < 4 || fp >= 0)
            return -1; /* truncated, or something after FINGERPRINT */
        int type = fp_be16(p + pos), alen = fp_be16(p + pos + 2);
        int next = pos + 4 + ((alen + 3) & ~3);
        if (next > len)
            return -1;
        if (type == FP_ATTR_FINGERPRINT) {
            if (alen != 4)
                return -1;
            fp = pos;
        } else if (type == FP_ATTR_MESSAGE_INTEGRITY || type == FP_ATTR_MESSAGE_INTEGRITY_SHA256) {
            return -1;
        } else if (type == FP_ATTR_RESERVATION_TOKEN) {
            *reservation = 1;
        }
        pos = next;
    }
    if (fp >= 0 &&
        (fp_crc32(p, (size_t)fp) ^ FP_STUN_FINGERPRINT_XOR) != fp_be32(p + fp + 4))
        return -1;
    *fingerprint = fp >= 0;
    return p[1];
}

static void fp_hex(char *out, const unsigned char *p, int n) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
}

/* The nonce NonceManager.issue gives client src at Unix second wall: the prefix, the second as
 * 10 hex digits, and the first 24 hex digits of HMAC-SHA256(key, "<second>|<ip>|<port>"), the ip
 * written as the engine hands it to Python (inet_ntop). Writes prefix + 34 bytes to out. */
static int fp_nonce(const fp_challenge *c, const struct sockaddr *src, long long wall,
                    char *out) {
    char msg[11 + INET6_ADDRSTRLEN + 7], stamp[16];
    int port;
    snprintf(stamp, sizeof(stamp), "%010llx", wall);
    if (strlen(stamp) != 10)
        return -1; /* the year 36812 */
    memcpy(msg, stamp, 10);
    msg[10] = '|';
    if (src->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)src;
        inet_ntop(AF_INET, &s4->sin_addr, msg + 11, INET6_ADDRSTRLEN);
        port = ntohs(s4->sin_port);
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)src;
        inet_ntop(AF_INET6, &s6->sin6_addr, msg + 11, INET6_ADDRSTRLEN);
        port = ntohs(s6->sin6_port);
    }
    int n = 11 + (int)strlen(msg + 11);
    n += snprintf(msg + n, sizeof(msg) - (size_t)n, "|%d", port);
    unsigned char mac[32];
    fp_hmac_sha256(&c->key, (const unsigned char *)msg, (size_t)n, mac);
    memcpy(out, c->prefix, (size_t)c->nprefix);
    memcpy(out + c->nprefix, stamp, 10);
    fp_hex(out + c->nprefix + 10, mac, 12);
    return c->nprefix + 34;
}

/* The 401 to request p (of method, with a FINGERPRINT if fingerprint) from src at Unix second
 * wall, as the core's _challenge and _reply write it: ERROR-CODE, REALM, NONCE,
 * PASSWORD-ALGORITHMS, SOFTWARE, then FINGERPRINT if the request had one. Returns its length
 * (at most FP_CHALLENGE_MAX), 0 if it cannot be written. */
static int fp_challenge_answer(const fp_challenge *c, const unsigned char *p, int method,
                               int fingerprint, const struct sockaddr *src, long long wall,
                               unsigned char *out) {
    int n = 20;
    memcpy(out + n, c->attrs, (size_t)c->nhead);
    n += c->nhead;
    int nonce = fp_nonce(c, src, wall, (char *)out + n + 4);
    if (nonce < 0)
        return 0;
    fp_put16(out + n, FP_ATTR_NONCE);
    fp_put16(out + n + 2, (uint32_t)nonce);
    n += 4 + nonce;
    while (nonce++ & 3)
        out[n++] = 0;
    memcpy(out + n, c->attrs + c->nhead, (size_t)c->ntail);
    n += c->ntail;
    return fp_finish_answer(out, n, 0x0110 | (uint32_t)method, p, fingerprint); /* error class */
}

/* 1 if p[0..len), received on listener fd from src, was an unauthenticated TURN request
 * answered here with a 401, or dropped over its source's rate of challenges (as the core
 * drops it: counted for the request and for the drop). One rate for every challenge a source
 * gets: a request the core answers (a RESERVATION-TOKEN) spends it here too. */
static int fp_serve_challenge(fp_engine *e, int fd, const struct sockaddr *src,
                              const unsigned char *p, int len) {
    const fp_challenge *c = &e->chal;
    int fingerprint = 0, reservation = 0;
    int method = fp_challenge_method(c, p, len, &fingerprint, &reservation);
    if (method < 0)
        return 0;
    uint8_t k[16];
    if (c->rate > 0 && fp_src_key(src, k, 1) == 0 && fp_src_spend(e, e->chal_src, c->rate, k)) {
        e->chal_requests[method]++;
        e->chal_dropped++;
        e->stat_challenge_drops++;
        return 1;
    }
    if (reservation)
        return 0;
    if (e->nout == FP_MAXOUT || e->nchal == FP_CHALLENGE_SLOTS)
        fp_flush(e);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned char *answer = e->chal_out[e->nchal];
    int n = fp_challenge_answer(c, p, method, fingerprint, src, (long long)ts.tv_sec, answer);
    if (n == 0)
        return 0;
    e->nchal++;
    fp_queue_answer(e, fd, src, answer, n);
    e->chal_requests[method]++;
    e->chal_answered++;
    e->stat_challenges++;
    return 1;
}

/* Caller holds the lock. Hands each method's requests challenged here (answered or dropped)
 * to visit (method, requests, 0) and zeroes them; returns how many were answered and sets
 * *dropped to how many were dropped over the rate, since the last call. */
static uint64_t fp_take_challenges(fp_engine *e, fp_visit_fn visit, void *ctx, uint64_t *dropped) {
    for (int m = 0; m < 16; m++) {
        if (e->chal_requests[m] == 0)
            continue;
        if (visit(ctx, (uint64_t)m, e->chal_requests[m], 0) != 0)
            break;
        e->chal_requests[m] = 0;
    }
    uint64_t answered = e->chal_answered;
    *dropped = e->chal_dropped;
    e->chal_answered = e->chal_dropped = 0;
    return answered;
}

/* ---- TCP client streams ------------------------------------------------------------------- */

/* Bytes of the whole ChannelData frame at p[0..avail) (header, data, padding to 4), or 0 if
 * there is none there: too short, cut off, or not ChannelData (STUN, garbage: Python's). */
static size_t fp_stream_frame(const unsigned char *p, size_t avail) {
    if (avail < 4 || p[0] < 0x40 || p[0] > 0x7F)
        return 0;
    size_t length = ((size_t)p[2] << 8) | p[3];
    size_t total = (4 + length + 3) & ~(size_t)3;
    return total <= avail ? total : 0;
}

/* Caller holds the lock. Serves the frames of buf[pos..len), read from stream fd of client src,
 * while each is ChannelData on an installed channel (sent to the peer, batched); returns where
 * it stopped: at a frame for Python, or at what is not yet a whole frame. */
static size_t fp_stream_input(fp_engine *e, int fd, const struct sockaddr *src, unsigned char *buf,
                              size_t len, size_t pos) {
    fp_key k;
    size_t total;
    e->nout = 0;
    while (pos < len && (total = fp_stream_frame(buf + pos, len - pos)) != 0) {
        unsigned char *p = buf + pos;
        if (fp_make_key(&k, FP_LISTENER, fd, src, (uint16_t)((p[0] << 8) | p[1])) != 0)
            break;
        fp_entry *x = *fp_find(e, &k);
        if (x == NULL)
            break;
        int length = (p[2] << 8) | p[3];
        if (x->bucket == NULL || fp_pay(e, x, length)) {
            x->packets++;
            x->bytes += (uint64_t)length;
            e->stat_hits++;
            fp_add_out(e, x->out_fd, x, NULL, (char *)p + 4, length);
        }
        pos += total;
    }
    fp_flush(e);
    return pos;
}

/* Hands frame f (from byte skip on) back to Python, for the stream's transport. */
static void fp_stream_hand(fp_engine *e, const fp_sout *f, int skip) {
    fp_miss *m = &e->miss[e->nmiss++];
    m->fd = f->fd;
    m->slot = f->slot;
    m->data = f->data;
    m->len = f->len;
    m->skip = skip;
    memcpy(m->hdr, f->hdr, 4);
    m->stream = 1;
}

/* Caller holds the lock. A peer's datagram p[0..len) framed for entry x's stream: queued for
 * the end of the poll, or (the stream held) handed to Python. Room is kept in the miss list for
 * every queued frame, so that a frame cut short can always be finished; without room the whole
 * frame is dropped, which keeps the stream's framing. */
static void fp_stream_send(fp_engine *e, fp_entry *x, int slot, char *p, int len) {
    if (e->nmiss + e->nsout >= FP_MAXOUT) {
        e->stat_dropped++;
        return;
    }
    fp_sout f = {x->out_fd, slot, p, len,
                 {(char)(x->out_chan >> 8), (char)(x->out_chan & 0xFF), (char)(len >> 8),
                  (char)(len & 0xFF)}};
    if (e->kinds[x->out_fd] == FP_STREAM)
        e->sout[e->nsout++] = f;
    else
        fp_stream_hand(e, &f, 0);
}

/* Caller holds the lock. Writes the queued frames, one sendmsg per stream (in runs of
 * FP_STREAM_IOV iovecs); what a socket did not take goes to Python and holds the stream. */
static void fp_stream_flush(fp_engine *e) {
    static const char zeros[4];
    int n = e->nsout;
    memset(e->sdone, 0, (size_t)n);
    for (int i = 0; i < n; i++) {
        if (e->sdone[i])
            continue;
        int fd = e->sout[i].fd;
        int held = 0;
        for (int j = i; j < n;) {
            /* One run: the frames of fd from j on, as many as the iovecs hold. */
            int iv = 0, first = -1, last = j;
            size_t want = 0;
            for (int k = j; k < n && iv + 3 <= FP_STREAM_IOV; k++) {
                fp_sout *f = &e->sout[k];
                if (e->sdone[k] || f->fd != fd)
                    continue;
                if (first < 0)
                    first = k;
                int pad = -f->len & 3;
                e->stiov[iv++] = (struct iovec){f->hdr, 4};
                e->stiov[iv++] = (struct iovec){f->data, (size_t)f->len};
                if (pad)
                    e->stiov[iv++] = (struct iovec){(void *)zeros, (size_t)pad};
                want += (size_t)(4 + f->len + pad);
                last = k + 1;
            }
            if (first < 0)
                break;
            ssize_t r = 0;
            if (!held) {
                struct msghdr h;
                memset(&h, 0, sizeof(h));
                h.msg_iov = e->stiov;
                h.msg_iovlen = (size_t)iv;
                do {
                    r = sendmsg(fd, &h, MSG_DONTWAIT | MSG_NOSIGNAL);
                } while (r < 0 && errno == EINTR);
                e->stat_send_calls++;
                if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                    e->stat_send_errors++; /* the connection is going: Python hears of it */
                    for (int k = first; k < last; k++)
                        if (e->sout[k].fd == fd)
                            e->sdone[k] = 1;
                    j = last;
                    continue;
                }
                if (r < 0)
                    r = 0;
            }
            size_t taken = (size_t)r;
            for (int k = first; k < last; k++) {
                fp_sout *f = &e->sout[k];
                if (e->sdone[k] || f->fd != fd)
                    continue;
                e->sdone[k] = 1;
                size_t size = (size_t)(4 + f->len + (-f->len & 3));
                if (taken >= size) {
                    taken -= size;
                    continue;
                }
                fp_stream_hand(e, f, (int)taken); /* cut short, or after one that was */
                taken = 0;
                held = 1;
            }
            if ((size_t)r < want)
                held = 1;
            j = last;
        }
        if (held && fd < e->nkinds && e->kinds[fd] == FP_STREAM)
            e->kinds[fd] = FP_STREAM_HELD;
    }
    e->nsout = 0;
}

static char *fp_slot_data(fp_engine *e, int slot) { return e->pool + (size_t)slot * FP_STRIDE + 4; }

/* One received buffer: one datagram, or several of one size from one sender (UDP GRO). */
static void fp_serve(fp_engine *e, int fd, int kind, int s) {
    struct msghdr *h = &e->rmsg[s].msg_hdr;
    const struct sockaddr *src = (const struct sockaddr *)&e->names[s];
    int total = (int)e->rmsg[s].msg_len;
    if ((h->msg_flags & MSG_TRUNC) || total > FP_DATA ||
        (src->sa_family != AF_INET && src->sa_family != AF_INET6)) {
        e->stat_dropped++;
        return; /* cannot be relayed nor parsed: dropped */
    }
    int seg = total;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int g;
            memcpy(&g, CMSG_DATA(c), sizeof(g));
            if (g > 0 && g < total) {
                seg = g;
                e->stat_gro_buffers++;
            }
        }
    }
    char *base = fp_slot_data(e, s);
    fp_key k;
    fp_entry *peer_entry = NULL;
    if (kind == FP_RELAY) {
        fp_make_key(&k, FP_RELAY, fd, src, 0);
        peer_entry = *fp_find(e, &k);
    }
    for (int off = 0; off < total || (total == 0 && off == 0); off += seg) {
        unsigned char *p = (unsigned char *)base + off;
        int len = total - off < seg ? total - off : seg;
        if (kind == FP_LISTENER) {
            if (len >= 4 && p[0] >= 0x40 && p[0] <= 0x7F) {
                uint16_t chan = (uint16_t)((p[0] << 8) | p[1]);
                int length = (p[2] << 8) | p[3];
                if (4 + length <= len) {
                    fp_make_key(&k, FP_LISTENER, fd, src, chan);
                    fp_entry *x = *fp_find(e, &k);
                    if (x != NULL) {
                        if (x->bucket != NULL && !fp_pay(e, x, length))
                            goto next;
                        x->packets++;
                        x->bytes += (uint64_t)length;
                        e->stat_hits++;
                        fp_add_out(e, x->out_fd, x, NULL, (char *)p + 4, length);
                        goto next;
                    }
                }
            }
            if (fp_src_over(e, src, p, len))
                goto next; /* over its source's budget: dropped before any parsing */
            if (e->binding && fp_serve_binding(e, fd, src, p, len))
                goto next; /* a plain STUN Binding request, answered here */
            if (e->chal.methods && fp_serve_challenge(e, fd, src, p, len))
                goto next; /* an unauthenticated TURN request: its 401, or dropped over the rate */
        } else if (peer_entry != NULL && len <= 65535) {
            fp_entry *x = peer_entry;
            if (x->bucket != NULL && !fp_pay(e, x, len))
                goto next;
            if (e->nout == FP_MAXOUT)
                fp_flush(e);
            char *hdr = e->hdrs[e->nout];
            hdr[0] = (char)(x->out_chan >> 8);
            hdr[1] = (char)(x->out_chan & 0xFF);
            hdr[2] = (char)(len >> 8);
            hdr[3] = (char)(len & 0xFF);
            x->packets++;
            x->bytes += (uint64_t)len;
            e->stat_hits++;
            if (x->out_fd < e->nkinds && e->kinds[x->out_fd] >= FP_STREAM)
                fp_stream_send(e, x, s, (char *)p, len);
            else
                fp_add_out(e, x->out_fd, x, hdr, (char *)p, len);
            goto next;
        }
        if (e->nmiss + e->nsout >= FP_MAXOUT) { /* (room kept for queued stream frames) */
            e->stat_dropped++;
        } else {
            fp_miss *m = &e->miss[e->nmiss++];
            m->fd = fd;
            m->slot = s;
            m->data = (char *)p;
            m->len = len;
            m->stream = 0;
            e->stat_misses++;
        }
    next:
        if (total == 0)
            break;
    }
}

/* Wait up to timeout ms, drain what is ready, send the hits; returns the number of misses
 * (e->miss[0..n): data, length, source address names[slot]) or -1 with errno. Takes the lock. */

static int fp_poll(fp_engine *e, int timeout) {
    struct epoll_event ev[FP_EVENTS];
    int n = epoll_wait(e->epfd, ev, FP_EVENTS, timeout);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    pthread_mutex_lock(&e->lock);
    int used = 0;
    e->nmiss = 0;
    e->nout = 0;
    e->nsout = 0;
    e->poll_now = 0;
    for (int i = 0; i < n && used < FP_POOL; i++) {
        int fd = ev[i].data.fd;
        int kind = fd >= 0 && fd < e->nkinds ? e->kinds[fd] : 0;
        if (kind == 0)
            continue; /* removed since epoll_wait */
        int want = FP_POOL - used;
        if (want > FP_BATCH)
            want = FP_BATCH;
        for (int j = 0; j < want; j++) {
            int s = used + j;
            struct msghdr *h = &e->rmsg[s].msg_hdr;
            e->riov[s].iov_base = fp_slot_data(e, s);
            e->riov[s].iov_len = FP_DATA;
            memset(h, 0, sizeof(*h));
            h->msg_name = &e->names[s];
            h->msg_namelen = sizeof(e->names[s]);
            h->msg_iov = &e->riov[s];
            h->msg_iovlen = 1;
            h->msg_control = e->rcbuf[s];
            h->msg_controllen = sizeof(e->rcbuf[s]);
        }
        int r = recvmmsg(fd, &e->rmsg[used], (unsigned)want, MSG_DONTWAIT, NULL);
        e->stat_recv_calls++;
        if (r <= 0)
            continue;
        for (int j = 0; j < r; j++)
            fp_serve(e, fd, kind, used + j);
        used += r;
    }
    fp_flush(e);
    fp_stream_flush(e);
    pthread_mutex_unlock(&e->lock);
    return e->nmiss;
}

#ifndef FP_NO_PYTHON
/* ---- Python binding ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    fp_engine *e;
    int busy;
} Engine;

/* (host, port) -> sockaddr; -1 with a Python exception. */
static int parse_addr(PyObject *obj, struct sockaddr_storage *ss, socklen_t *len) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(obj, 0));
    if (host == NULL)
        return -1;
    long port = PyLong_AsLong(PyTuple_GET_ITEM(obj, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(ss, 0, sizeof(*ss));
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            goto bad;
        *len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            goto bad;
        *len = sizeof(*s4);
    }
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

static PyObject *make_addr(const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, (int)ntohs(s6->sin6_port));
    }
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
    return Py_BuildValue("(si)", host, (int)ntohs(s4->sin_port));
}

static int check_open(Engine *self) {
    if (self->e == NULL) {
        PyErr_SetString(PyExc_ValueError, "engine is closed");
        return -1;
    }
    return 0;
}

static void lock_engine(Engine *self) {
    if (pthread_mutex_trylock(&self->e->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->e->lock);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"gso", "gro", NULL};
    int gso = 1, gro = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pp", kwlist, &gso, &gro))
        return NULL;
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->e = fp_new();
    if (self->e == NULL) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->e->gso = gso;
    self->e->gro = gro;
    return (PyObject *)self;
}

static void Engine_dealloc(Engine *self) {
    fp_free(self->e);
    self->e = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_close(Engine *self, PyObject *noargs) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "engine is polling");
        return NULL;
    }
    fp_free(self->e);
    self->e = NULL;
    Py_RETURN_NONE;
}

static PyObject *Engine_fileno(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    return PyLong_FromLong(self->e->epfd);
}

static PyObject *Engine_add_socket(Engine *self, PyObject *args) {
    int fd, kind;
    if (!PyArg_ParseTuple(args, "ii", &fd, &kind) || check_open(self))
        return NULL;
    lock_engine(self);
    int r = fp_add_socket(self->e, fd, kind);
    int err = errno;
    pthread_mutex_unlock(&self->e->lock);
    if (r != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_remove_socket(Engine *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd) || check_open(self))
        return NULL;
    lock_engine(self);
    fp_remove_socket(self->e, fd);
    pthread_mutex_unlock(&self->e->lock);
    Py_RETURN_NONE;
}

static int check_channel(int chan) {
    if (chan < 0x4000 || chan > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "channel number out of range 0x4000-0x7FFF");
        return -1;
    }
    return 0;
}

/* install_client(listener_fd, client, channel, relay_fd, peer, token) */
static PyObject *Engine_install_client(Engine *self, PyObject *args) {
    int lfd, chan, rfd;
    PyObject *client, *peer;
    unsigned long long token;
    struct sockaddr_storage src, dst;
    socklen_t srclen, dstlen;
    if (!PyArg_ParseTuple(args, "iOiiOK", &lfd, &client, &chan, &rfd, &peer, &token) ||
        check_open(self) || check_channel(chan) || parse_addr(client, &src, &srclen) ||
        parse_addr(peer, &dst, &dstlen))
        return NULL;
    lock_engine(self);
    int r = fp_install(self->e, FP_LISTENER, lfd, (struct sockaddr *)&src, (uint16_t)chan, rfd,
                       (struct sockaddr *)&dst, dstlen, 0, token);
    int err = errno;
    pthread_mutex_unlock(&self->e->lock);
    if (r != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* install_peer(relay_fd, peer, listener_fd, client, channel, token) */
static PyObject *Engine_install_peer(Engine *self, PyObject *args) {
    int lfd, chan, rfd;
    PyObject *client, *peer;
    unsigned long long token;
    struct sockaddr_storage src, dst;
    socklen_t srclen, dstlen;
    if (!PyArg_ParseTuple(args, "iOiOiK", &rfd, &peer, &lfd, &client, &chan, &token) ||
        check_open(self) || check_channel(chan) || parse_addr(peer, &src, &srclen) ||
        parse_addr(client, &dst, &dstlen))
        return NULL;
    lock_engine(self);
    int r = fp_install(self->e, FP_RELAY, rfd, (struct sockaddr *)&src, 0, lfd,
                       (struct sockaddr *)&dst, dstlen, (uint16_t)chan, token);
    int err = errno;
    pthread_mutex_unlock(&self->e->lock);
    if (r != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *uninstall(Engine *self, int kind, int fd, PyObject *addr, int chan) {
    struct sockaddr_storage src;
    socklen_t srclen;
    uint64_t packets = 0, bytes = 0;
    if (check_open(self) || parse_addr(addr, &src, &srclen))
        return NULL;
    lock_engine(self);
    int found = fp_uninstall(self->e, kind, fd, (struct sockaddr *)&src, (uint16_t)chan, &packets,
                             &bytes);
    pthread_mutex_unlock(&self->e->lock);
    if (!found)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)packets, (unsigned long long)bytes);
}

/* uninstall_client(listener_fd, client, channel) -> (packets, bytes) | None */
static PyObject *Engine_uninstall_client(Engine *self, PyObject *args) {
    int lfd, chan;
    PyObject *client;
    if (!PyArg_ParseTuple(args, "iOi", &lfd, &client, &chan))
        return NULL;
    return uninstall(self, FP_LISTENER, lfd, client, chan);
}

/* uninstall_peer(relay_fd, peer) -> (packets, bytes) | None */
static PyObject *Engine_uninstall_peer(Engine *self, PyObject *args) {
    int rfd;
    PyObject *peer;
    if (!PyArg_ParseTuple(args, "iO", &rfd, &peer))
        return NULL;
    return uninstall(self, FP_RELAY, rfd, peer, 0);
}

static int append_count(void *list, uint64_t token, uint64_t packets, uint64_t bytes) {
    PyObject *t = Py_BuildValue("(KKK)", (unsigned long long)token, (unsigned long long)packets,
                                (unsigned long long)bytes);
    if (t == NULL)
        return -1;
    int r = PyList_Append((PyObject *)list, t);
    Py_DECREF(t);
    return r;
}

/* collect(pending_only=False) -> [(token, packets, bytes)], each count zeroed once returned. */
static PyObject *Engine_collect(Engine *self, PyObject *args) {
    int pending_only = 0;
    if (!PyArg_ParseTuple(args, "|p", &pending_only) || check_open(self))
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    lock_engine(self);
    int failed = fp_collect(self->e, pending_only, append_count, list);
    pthread_mutex_unlock(&self->e->lock);
    if (failed) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* Bytes of stream frame m handed back (from m->skip on). */
static Py_ssize_t stream_size(const fp_miss *m) {
    return 4 + m->len + (-m->len & 3) - m->skip;
}

/* Writes stream frame m (from m->skip on) at out; returns the end. */
static char *stream_copy(const fp_miss *m, char *out) {
    Py_ssize_t total = 4 + m->len + (-m->len & 3);
    Py_ssize_t i = m->skip; /* header, data, zeros: from i on */
    if (i < 4) {
        memcpy(out, m->hdr + i, (size_t)(4 - i));
        out += 4 - i;
        i = 4;
    }
    if (i < 4 + m->len) {
        memcpy(out, m->data + (i - 4), (size_t)(4 + m->len - i));
        out += 4 + m->len - i;
        i = 4 + m->len;
    }
    memset(out, 0, (size_t)(total - i));
    return out + (total - i);
}

/* (stream fd, [frame bytes...], None): every frame of misses[i..n) for the stream of misses[i],
 * in order (the first maybe the rest of one cut short), for one write of the transport (over
 * TLS, a record each: some clients read one message per record); each is marked in taken. */
static PyObject *stream_rest(const fp_miss *misses, int i, int n, uint8_t *taken) {
    int fd = misses[i].fd;
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    for (int j = i; j < n; j++) {
        if (!misses[j].stream || misses[j].fd != fd)
            continue;
        taken[j] = 1;
        PyObject *data = PyBytes_FromStringAndSize(NULL, stream_size(&misses[j]));
        if (data == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        stream_copy(&misses[j], PyBytes_AS_STRING(data));
        int failed = PyList_Append(frames, data);
        Py_DECREF(data);
        if (failed) {
            Py_DECREF(frames);
            return NULL;
        }
    }
    return Py_BuildValue("(iNO)", fd, frames, Py_None);
}

/* add_stream(fd): a TCP client's socket that entries may write ChannelData frames to. */
static PyObject *Engine_add_stream(Engine *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd) || check_open(self))
        return NULL;
    lock_engine(self);
    int r = fp_add_stream(self->e, fd);
    int err = errno;
    pthread_mutex_unlock(&self->e->lock);
    if (r != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* hold_stream(fd, held): frames for the stream go through Python (its transport has a backlog). */
static PyObject *Engine_hold_stream(Engine *self, PyObject *args) {
    int fd, held;
    if (!PyArg_ParseTuple(args, "ip", &fd, &held) || check_open(self))
        return NULL;
    lock_engine(self);
    fp_hold_stream(self->e, fd, held);
    pthread_mutex_unlock(&self->e->lock);
    Py_RETURN_NONE;
}

/* stream_input(fd, client, buffer, pos) -> where serving stopped (see the top). */
static PyObject *Engine_stream_input(Engine *self, PyObject *args) {
    int fd;
    PyObject *client;
    Py_buffer buf;
    Py_ssize_t pos;
    struct sockaddr_storage src;
    socklen_t srclen;
    if (!PyArg_ParseTuple(args, "iOy*n", &fd, &client, &buf, &pos))
        return NULL;
    if (check_open(self) || parse_addr(client, &src, &srclen)) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (pos < 0 || pos > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "pos outside the buffer");
        return NULL;
    }
    lock_engine(self);
    size_t end = fp_stream_input(self->e, fd, (struct sockaddr *)&src, (unsigned char *)buf.buf,
                                 (size_t)buf.len, (size_t)pos);
    pthread_mutex_unlock(&self->e->lock);
    PyBuffer_Release(&buf);
    return PyLong_FromSize_t(end);
}

/* poll(timeout_ms=0) -> [(fd, data, (host, port))]: the datagrams that were not table hits;
 * (stream fd, [frames], None): this poll's frames for a TCP/TLS client (the first maybe a rest),
 * for its transport. */
static PyObject *Engine_poll(Engine *self, PyObject *args) {
    int timeout = 0;
    if (!PyArg_ParseTuple(args, "|i", &timeout) || check_open(self))
        return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "poll() is not reentrant");
        return NULL;
    }
    self->busy = 1;
    fp_engine *e = self->e;
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = fp_poll(e, timeout);
    Py_END_ALLOW_THREADS
    if (n < 0) {
        self->busy = 0;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        self->busy = 0;
        return NULL;
    }
    uint8_t *taken = e->sdone; /* free once the poll has flushed */
    memset(taken, 0, (size_t)n);
    /* Streams' frames first: the rest of a frame the socket took only part of must reach the
     * transport before any other datagram's handler writes to that connection. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            fp_miss *m = &e->miss[i];
            if (taken[i] || m->stream != (pass == 0))
                continue;
            PyObject *item;
            if (m->stream) { /* (stream fd, [frames], None) */
                item = stream_rest(e->miss, i, n, taken);
            } else {
                PyObject *addr = make_addr(&e->names[m->slot]);
                item = addr == NULL ? NULL
                                    : Py_BuildValue("(iy#N)", m->fd, m->data,
                                                    (Py_ssize_t)m->len, addr);
            }
            if (item == NULL || PyList_Append(list, item) != 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                self->busy = 0;
                return NULL;
            }
            Py_DECREF(item);
        }
    }
    self->busy = 0;
    return list;
}

/* answer_binding(on): answer plain STUN Binding requests on listeners here (see the top). */
static PyObject *Engine_answer_binding(Engine *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on) || check_open(self))
        return NULL;
    lock_engine(self);
    self->e->binding = on;
    pthread_mutex_unlock(&self->e->lock);
    Py_RETURN_NONE;
}

static int append_limited(void *list, uint64_t token, uint64_t drops, uint64_t unused) {
    (void)unused;
    PyObject *t = Py_BuildValue("(KK)", (unsigned long long)token, (unsigned long long)drops);
    if (t == NULL)
        return -1;
    int r = PyList_Append((PyObject *)list, t);
    Py_DECREF(t);
    return r;
}

/* answer_challenges(methods, head, tail, nonce_prefix, nonce_key, per_second): answer the
 * unauthenticated requests of methods (a bit mask; 0: none) on listeners with the core's 401
 * (see fp_set_challenge); ValueError if such an answer could be too large for the engine. */
static PyObject *Engine_answer_challenges(Engine *self, PyObject *args) {
    unsigned int methods;
    Py_buffer head, tail, prefix, key;
    double rate;
    if (!PyArg_ParseTuple(args, "Iy*y*y*y*d", &methods, &head, &tail, &prefix, &key, &rate))
        return NULL;
    PyObject *result = NULL;
    if (check_open(self) == 0) {
        if (methods > 0xFFFF || rate < 0 || rate != rate) {
            PyErr_SetString(PyExc_ValueError, "methods below 16, rate a non-negative number");
        } else if (head.len > FP_CHALLENGE_MAX || tail.len > FP_CHALLENGE_MAX ||
                   prefix.len > FP_NONCE_PREFIX_MAX) {
            PyErr_Format(PyExc_ValueError, "longer than the engine's %d bytes", FP_CHALLENGE_MAX);
        } else {
            lock_engine(self);
            int r = fp_set_challenge(self->e, methods, head.buf, (int)head.len, tail.buf,
                                     (int)tail.len, prefix.buf, (int)prefix.len, key.buf,
                                     (size_t)key.len, rate);
            pthread_mutex_unlock(&self->e->lock);
            if (r != 0) /* the whole answer, nonce and FINGERPRINT included */
                PyErr_Format(PyExc_ValueError, "longer than the engine's %d bytes",
                             FP_CHALLENGE_MAX);
            else
                result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&key);
    return result;
}

/* take_challenges() -> ([(method, requests)], answered, dropped) since the last call: the
 * requests challenged here by method, how many got their 401, how many were over the rate. */
static PyObject *Engine_take_challenges(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    uint64_t dropped = 0;
    lock_engine(self);
    uint64_t answered = fp_take_challenges(self->e, append_limited, list, &dropped);
    pthread_mutex_unlock(&self->e->lock);
    if (PyErr_Occurred()) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(NKK)", list, (unsigned long long)answered,
                         (unsigned long long)dropped);
}

/* limit(kind, fd, address, channel, bucket_id, rate, to_client): the entry draws on bucket
 * bucket_id (rate bytes/s; 0 lifts the limit). False if there is no such entry. */
static PyObject *Engine_limit(Engine *self, PyObject *args) {
    int kind, fd, chan, dir;
    PyObject *addr;
    unsigned long long id;
    double rate;
    struct sockaddr_storage src;
    socklen_t srclen;
    if (!PyArg_ParseTuple(args, "iiOiKdp", &kind, &fd, &addr, &chan, &id, &rate, &dir) ||
        check_open(self) || parse_addr(addr, &src, &srclen))
        return NULL;
    if (rate < 0 || rate != rate) {
        PyErr_SetString(PyExc_ValueError, "rate must be a non-negative number");
        return NULL;
    }
    lock_engine(self);
    int r = fp_limit(self->e, kind, fd, (struct sockaddr *)&src, (uint16_t)chan, id, rate, dir);
    int err = errno;
    pthread_mutex_unlock(&self->e->lock);
    if (r != 0 && err != ENOENT) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(r == 0);
}

/* One rate (a non-negative number) from args, handed to set under the engine's lock. */
static PyObject *set_rate(Engine *self, PyObject *args, void (*set)(fp_engine *, double)) {
    double rate;
    if (!PyArg_ParseTuple(args, "d", &rate) || check_open(self))
        return NULL;
    if (rate < 0 || rate != rate) {
        PyErr_SetString(PyExc_ValueError, "rate must be a non-negative number");
        return NULL;
    }
    lock_engine(self);
    set(self->e, rate);
    pthread_mutex_unlock(&self->e->lock);
    Py_RETURN_NONE;
}

/* set_capacity(rate): the node's bytes/s each direction, drawn on by every limited entry. */
static PyObject *Engine_set_capacity(Engine *self, PyObject *args) {
    return set_rate(self, args, fp_set_capacity);
}

/* take_bindings() -> how many Binding requests were answered here since the last call. */
static PyObject *Engine_take_bindings(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    lock_engine(self);
    uint64_t n = self->e->bindings_untaken;
    self->e->bindings_untaken = 0;
    pthread_mutex_unlock(&self->e->lock);
    return PyLong_FromUnsignedLongLong((unsigned long long)n);
}


/* collect_limited() -> [(token, datagrams dropped by its bucket)] since the last call. */
static PyObject *Engine_collect_limited(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    lock_engine(self);
    int failed = fp_collect_limited(self->e, append_limited, list);
    pthread_mutex_unlock(&self->e->lock);
    if (failed) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

/* source_budget(rate): STUN messages per second per source on the listeners (0: none). */
static PyObject *Engine_source_budget(Engine *self, PyObject *args) {
    return set_rate(self, args, fp_set_source_budget);
}

typedef struct {
    PyObject *list;
    const fp_engine *e;
} source_ctx;

/* The key of source slot i as text: an IPv4 address, or an IPv6 /64 ("2001:db8::/64"). */
static int append_source(void *ctx, uint64_t slot, uint64_t drops, uint64_t unused) {
    (void)unused;
    const source_ctx *c = ctx;
    const uint8_t *k = c->e->src[slot].addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    char host[INET6_ADDRSTRLEN + 4];
    if (memcmp(k, mapped, 12) == 0) {
        inet_ntop(AF_INET, k + 12, host, sizeof(host));
    } else {
        inet_ntop(AF_INET6, k, host, INET6_ADDRSTRLEN);
        strcat(host, "/64");
    }
    PyObject *t = Py_BuildValue("(sK)", host, (unsigned long long)drops);
    if (t == NULL)
        return -1;
    int r = PyList_Append(c->list, t);
    Py_DECREF(t);
    return r;
}

/* take_source_drops() -> (dropped in all, [(source, dropped)]) since the last call. */
static PyObject *Engine_take_source_drops(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    source_ctx ctx = {PyList_New(0), self->e};
    if (ctx.list == NULL)
        return NULL;
    lock_engine(self);
    uint64_t total = fp_take_source_drops(self->e, append_source, &ctx);
    pthread_mutex_unlock(&self->e->lock);
    if (PyErr_Occurred()) {
        Py_DECREF(ctx.list);
        return NULL;
    }
    return Py_BuildValue("(KN)", (unsigned long long)total, ctx.list);
}

/* hmac_sha256(key, data) -> the engine's own HMAC-SHA256 (what its nonces are made with). */
static PyObject *fastpath_hmac_sha256(PyObject *module, PyObject *args) {
    Py_buffer key, data;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &data))
        return NULL;
    fp_hmac m;
    unsigned char mac[32];
    fp_hmac_init(&m, key.buf, (size_t)key.len);
    fp_hmac_sha256(&m, data.buf, (size_t)data.len, mac);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)mac, 32);
}

static PyObject *Engine_stats(Engine *self, PyObject *noargs) {
    if (check_open(self))
        return NULL;
    fp_engine *e = self->e;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsKsnsisi}", "hits", (unsigned long long)e->stat_hits, "bindings",
        (unsigned long long)e->stat_bindings, "misses",
        (unsigned long long)e->stat_misses, "recv_calls", (unsigned long long)e->stat_recv_calls,
        "gro_buffers", (unsigned long long)e->stat_gro_buffers, "send_calls",
        (unsigned long long)e->stat_send_calls, "gso_sends", (unsigned long long)e->stat_gso_sends,
        "send_errors", (unsigned long long)e->stat_send_errors, "dropped",
        (unsigned long long)e->stat_dropped, "limited", (unsigned long long)e->stat_limited,
        "source_dropped", (unsigned long long)e->stat_src_dropped, "challenges",
        (unsigned long long)e->stat_challenges, "challenges_dropped",
        (unsigned long long)e->stat_challenge_drops,
        "entries", (Py_ssize_t)e->count, "gso", e->gso, "gro",
        e->gro);
}

static PyMethodDef Engine_methods[] = {
    {"fileno", (PyCFunction)Engine_fileno, METH_NOARGS, "The epoll fd, for the event loop."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "Free the tables and the epoll fd."},
    {"add_socket", (PyCFunction)Engine_add_socket, METH_VARARGS,
     "add_socket(fd, kind): watch a listener (1) or relay (2) socket."},
    {"remove_socket", (PyCFunction)Engine_remove_socket, METH_VARARGS,
     "remove_socket(fd): stop watching fd and purge every entry using it."},
    {"add_stream", (PyCFunction)Engine_add_stream, METH_VARARGS,
     "add_stream(fd): a TCP client's socket, for entries to write frames to."},
    {"hold_stream", (PyCFunction)Engine_hold_stream, METH_VARARGS,
     "hold_stream(fd, held): hand the stream's frames to Python (True) or write them (False)."},
    {"stream_input", (PyCFunction)Engine_stream_input, METH_VARARGS,
     "stream_input(fd, client, buffer, pos) -> where the served frames end."},
    {"install_client", (PyCFunction)Engine_install_client, METH_VARARGS,
     "install_client(listener_fd, client, channel, relay_fd, peer, token)"},
    {"install_peer", (PyCFunction)Engine_install_peer, METH_VARARGS,
     "install_peer(relay_fd, peer, listener_fd, client, channel, token)"},
    {"uninstall_client", (PyCFunction)Engine_uninstall_client, METH_VARARGS,
     "uninstall_client(listener_fd, client, channel) -> (packets, bytes) | None"},
    {"uninstall_peer", (PyCFunction)Engine_uninstall_peer, METH_VARARGS,
     "uninstall_peer(relay_fd, peer) -> (packets, bytes) | None"},
    {"collect", (PyCFunction)Engine_collect, METH_VARARGS,
     "collect(pending_only=False) -> [(token, packets, bytes)] since the last collect"},
    {"poll", (PyCFunction)Engine_poll, METH_VARARGS,
     "poll(timeout_ms=0) -> [(fd, data, (host, port))] not served by the tables"},
    {"answer_binding", (PyCFunction)Engine_answer_binding, METH_VARARGS,
     "answer_binding(on): answer plain STUN Binding requests on listeners natively"},
    {"take_bindings", (PyCFunction)Engine_take_bindings, METH_NOARGS,
     "take_bindings() -> Binding requests answered natively since the last call"},
    {"answer_challenges", (PyCFunction)Engine_answer_challenges, METH_VARARGS,
     "answer_challenges(methods, head, tail, nonce_prefix, nonce_key, per_second)"},
    {"take_challenges", (PyCFunction)Engine_take_challenges, METH_NOARGS,
     "take_challenges() -> ([(method, requests)], answered, dropped) since the last call"},
    {"limit", (PyCFunction)Engine_limit, METH_VARARGS,
     "limit(kind, fd, address, channel, bucket_id, rate, to_client) -> bool"},
    {"set_capacity", (PyCFunction)Engine_set_capacity, METH_VARARGS,
     "set_capacity(rate): the node's bytes/s each direction (0: none)"},
    {"collect_limited", (PyCFunction)Engine_collect_limited, METH_NOARGS,
     "collect_limited() -> [(token, dropped)] since the last call"},
    {"source_budget", (PyCFunction)Engine_source_budget, METH_VARARGS,
     "source_budget(rate): STUN messages per second per source on listeners (0: none)"},
    {"take_source_drops", (PyCFunction)Engine_take_source_drops, METH_NOARGS,
     "take_source_drops() -> (dropped, [(source, dropped)]) since the last call"},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "Counters of the engine itself."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "iceward.net._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native relay hot loop: epoll, recvmmsg/sendmmsg, forwarding tables.",
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static PyMethodDef fastpath_functions[] = {
    {"hmac_sha256", fastpath_hmac_sha256, METH_VARARGS,
     "hmac_sha256(key, data) -> the engine's HMAC-SHA256 of data"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "iceward's native relay fast path.", -1, fastpath_functions,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddIntConstant(m, "LISTENER", FP_LISTENER) < 0 ||
        PyModule_AddIntConstant(m, "RELAY", FP_RELAY) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", FP_BATCH) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
#endif /* FP_NO_PYTHON */
