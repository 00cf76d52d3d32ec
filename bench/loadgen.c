/* Closed-loop ChannelData load generator and echo peer for bench/relay_bench.py.
 *
 * Built on the fly by relay_bench.py (gcc -O2). It inherits sockets that the Python side has
 * already set up: one UDP socket per TURN client (connected to the server, with an allocation and
 * a channel bound to the echo socket's address) and the echo peer's UDP socket.
 *
 *   loadgen WARMUP_MS DURATION_MS WINDOW PAYLOAD SERVER_PID SERVER_CPU CLIENT_CPU ECHO_FD FD:CHANNEL...
 *
 * SERVER_PID and SERVER_CPU may be comma-separated lists (a server of several processes, pinned
 * to several CPUs): all are sampled, the first of each also under the single-value keys.
 *
 * Every client keeps WINDOW ChannelData messages in flight: each one echoed back by the peer
 * (through the server's relay, back to the client as ChannelData) is counted as a round trip and
 * replaced at once. A client that hears nothing for LOSS_MS is assumed to have lost what it had in
 * flight and refills its window in a new epoch (carried in the payload): late arrivals of an older
 * epoch still count as round trips but are not replaced, so the window stays WINDOW. Sends and
 * receives are batched with sendmmsg/recvmmsg. Payload: send time (8 bytes), epoch (4 bytes).
 *
 * Datagrams of one batch that go to the same address leave in one UDP GSO send (UDP_SEGMENT; the
 * kernel splits them back into the same datagrams before they reach the receiving socket), which
 * saves the generator some kernel work per datagram. LOADGEN_NO_GSO=1 in the environment turns
 * that off.
 *
 * The generator busy-polls (epoll_wait with a zero timeout): the server never has to wake it, as
 * it never has to wake a remote client or peer in real life, and the share of the time spent in
 * polls that found nothing ("idle") tells how much headroom the generator had: near 0, it may be
 * the bottleneck.
 * LOADGEN_SLEEP=1 makes it sleep in epoll_wait instead.
 *
 * After WARMUP_MS the counters are reset and /proc/stat (the server and client CPUs),
 * /proc/SERVER_PID/stat (each PID) and /proc/self/stat are sampled; DURATION_MS later they are
 * sampled again and one JSON object is printed on stdout. The process stops itself (alarm) if
 * anything hangs.
 *
 * A client given channel 0 sends STUN Binding requests instead (bench/control_bench.py): the
 * transaction id carries the send time and the epoch, each success answer counts as a round trip
 * and is replaced at once; PAYLOAD is then unused (but must still be valid).
 *
 * TURN over TCP or TLS (built with -DLOADGEN_STREAM -lssl -lcrypto; LOADGEN_STREAM=tcp|tls in
 * the environment): each FD is a TCP socket connected to the server and nothing more. The
 * generator makes the TLS handshake itself (TLS) and the TURN set-up on it, as the allocation
 * belongs to the connection: Allocate, 401, Allocate signed with the long-term credential, then
 * ChannelBind to the echo peer; LOADGEN_TURN="USER:REALM:PASSWORD:PEER_IP:PEER_PORT". The load is
 * then ChannelData framed on the stream, padded to 4 bytes (RFC 8656 section 12.5): a client's
 * window refill leaves in one write (one TLS record), and what comes back is parsed out of the
 * stream; STUN messages on it are skipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_CLIENTS 4096
#define MAX_PAYLOAD 65000
#define LOSS_MS 200
#define HIST_US 100000 /* RTT histogram: 1 us buckets up to 100 ms */
#define MAX_LIST 64      /* server PIDs / server CPUs */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

struct client {
    int fd;
    void *ssl;           /* TLS: its SSL object */
    unsigned char *rx;   /* stream: bytes received, not yet a whole frame */
    size_t rx_len;
    unsigned char *out;  /* stream: bytes not yet written */
    size_t out_len;
    uint16_t channel;
    int inflight;
    uint32_t epoch;
    uint64_t last_rx;
    int stun;          /* channel 0: STUN Binding requests, not ChannelData */
    unsigned char *tx; /* ChannelData template: header + payload, or a Binding request */
};

#define STUN_REQUEST 20 /* a Binding request without attributes */

/* Where the send time (8 bytes) and the epoch (4) sit in what a client sends. */
static size_t time_at(const struct client *c) { return c->stun ? 8 : 4; }
static size_t epoch_at(const struct client *c) { return c->stun ? 16 : 12; }

static struct client clients[MAX_CLIENTS];
static int nclients;
static int window_size;
static int payload;

static uint64_t round_trips, lost, bad, echoed, echo_drops, send_errors;
static uint64_t rtt_sum_ns;
static uint64_t idle_ns; /* time in polls that found nothing to do */
static int spin = 1;
static uint32_t *hist;
static uint64_t hist_over;

static unsigned char rxbuf[BATCH][MAX_PAYLOAD + 64];
static struct mmsghdr rxmsgs[BATCH];
static struct iovec rxiov[BATCH];
static struct sockaddr_in rxaddr[BATCH];
static struct mmsghdr txmsgs[BATCH];
static struct iovec txiov[BATCH];
static char txctl[BATCH][CMSG_SPACE(sizeof(uint16_t))];
static int use_gso = 1;
static int gso_max = 1; /* datagrams per GSO send */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Message i of txmsgs: n datagrams of seg bytes each from iov, one GSO send when n > 1. */
static void set_msg(int i, struct iovec *iov, int n, size_t seg, void *to, socklen_t tolen) {
    struct msghdr *m = &txmsgs[i].msg_hdr;
    memset(m, 0, sizeof *m);
    m->msg_iov = iov;
    m->msg_iovlen = (size_t)n;
    m->msg_name = to;
    m->msg_namelen = tolen;
    if (n > 1) {
        m->msg_control = txctl[i];
        m->msg_controllen = sizeof txctl[i];
        struct cmsghdr *cm = CMSG_FIRSTHDR(m);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)seg;
        memcpy(CMSG_DATA(cm), &size, sizeof size);
    }
}

/* Send txmsgs[0..n); returns datagrams sent (GSO messages count all their segments). */
static int send_msgs(int fd, int n) {
    int done = 0, datagrams = 0;
    while (done < n) {
        int s = sendmmsg(fd, txmsgs + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (s <= 0) {
            if (s < 0 && use_gso && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT ||
                                     errno == EOPNOTSUPP)) {
                fprintf(stderr, "loadgen: UDP GSO refused (%s), sending one by one\n",
                        strerror(errno));
                use_gso = 0;
                gso_max = 1;
            }
            send_errors++;
            break;
        }
        for (int i = done; i < done + s; i++)
            datagrams += (int)txmsgs[i].msg_hdr.msg_iovlen;
        done += s;
    }
    return datagrams;
}

/* Top up one client's window to WINDOW messages in flight. */
static int stream_mode; /* 0: UDP; 1: TCP; 2: TLS */
static void stream_refill(struct client *c, int want);
static void stream_read(struct client *c);

static void refill(struct client *c) {
    int want = window_size - c->inflight;
    if (want <= 0)
        return;
    uint64_t t = now_ns();
    memcpy(c->tx + time_at(c), &t, sizeof t);
    if (stream_mode) {
        stream_refill(c, want);
        return;
    }
    size_t seg = c->stun ? STUN_REQUEST : 4 + (size_t)payload;
    for (int i = 0; i < BATCH; i++) {
        txiov[i].iov_base = c->tx;
        txiov[i].iov_len = seg;
    }
    while (want > 0) {
        int msgs = 0, queued = 0;
        while (queued < want && msgs < BATCH) {
            int n = want - queued;
            if (n > gso_max)
                n = gso_max;
            /* every message may use all of txiov: they all point at the same template */
            set_msg(msgs++, txiov, n, seg, NULL, 0);
            queued += n;
        }
        int sent = send_msgs(c->fd, msgs);
        /* Buffer full or a transient ICMP error: the loss timer refills later. */
        c->inflight += sent;
        want -= sent;
        if (sent < queued)
            return;
    }
}

/* One message back (a datagram, or a frame out of a stream): a round trip, or a bad one. */
static void on_reply(struct client *c, const unsigned char *p, unsigned len, uint64_t t) {
    unsigned ch = ((unsigned)p[0] << 8) | p[1];
    unsigned dlen = ((unsigned)p[2] << 8) | p[3];
    if (c->stun ? len < STUN_REQUEST || ch != 0x0101
                : len < 4 + 12 || ch != c->channel || dlen != (unsigned)payload || len < 4 + dlen) {
        bad++;
        return;
    }
    uint64_t sent;
    memcpy(&sent, p + time_at(c), sizeof sent);
    uint64_t rtt = t - sent;
    rtt_sum_ns += rtt;
    uint64_t us = rtt / 1000;
    if (us < HIST_US)
        hist[us]++;
    else
        hist_over++;
    round_trips++;
    uint32_t epoch;
    memcpy(&epoch, p + epoch_at(c), sizeof epoch);
    if (epoch == c->epoch && c->inflight > 0)
        c->inflight--;
}

static void on_client(struct client *c) {
    if (stream_mode) {
        stream_read(c);
        return;
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rxiov[i].iov_base = rxbuf[i];
            rxiov[i].iov_len = sizeof rxbuf[i];
            memset(&rxmsgs[i].msg_hdr, 0, sizeof rxmsgs[i].msg_hdr);
            rxmsgs[i].msg_hdr.msg_iov = &rxiov[i];
            rxmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(c->fd, rxmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++)
            on_reply(c, rxbuf[i], rxmsgs[i].msg_len, t);
        c->last_rx = t;
        refill(c);
        if (n < BATCH)
            break;
    }
}

static void on_echo(int fd) {
    static struct iovec echo_iov[BATCH];
    static int group_of[BATCH], group_len[BATCH], group_head[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rxiov[i].iov_base = rxbuf[i];
            rxiov[i].iov_len = sizeof rxbuf[i];
            memset(&rxmsgs[i].msg_hdr, 0, sizeof rxmsgs[i].msg_hdr);
            rxmsgs[i].msg_hdr.msg_iov = &rxiov[i];
            rxmsgs[i].msg_hdr.msg_iovlen = 1;
            rxmsgs[i].msg_hdr.msg_name = &rxaddr[i];
            rxmsgs[i].msg_hdr.msg_namelen = sizeof rxaddr[i];
        }
        int n = recvmmsg(fd, rxmsgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        /* Group the datagrams by sender (and size) so that each group goes back in one send. */
        int groups = 0;
        for (int i = 0; i < n; i++) {
            int g = 0;
            for (; g < groups; g++) {
                int h = group_head[g];
                if (group_len[g] < gso_max && rxmsgs[h].msg_len == rxmsgs[i].msg_len &&
                    rxaddr[h].sin_port == rxaddr[i].sin_port &&
                    rxaddr[h].sin_addr.s_addr == rxaddr[i].sin_addr.s_addr)
                    break;
            }
            if (g == groups) {
                group_head[groups] = i;
                group_len[groups++] = 0;
            }
            group_len[g]++;
            group_of[i] = g;
        }
        int pos = 0;
        for (int g = 0; g < groups; g++) {
            int start = pos;
            for (int i = group_head[g]; i < n; i++) {
                if (group_of[i] == g) {
                    echo_iov[pos].iov_base = rxbuf[i];
                    echo_iov[pos++].iov_len = rxmsgs[i].msg_len;
                }
            }
            int h = group_head[g];
            set_msg(g, echo_iov + start, pos - start, rxmsgs[h].msg_len, &rxaddr[h],
                    rxmsgs[h].msg_hdr.msg_namelen);
        }
        int sent = send_msgs(fd, groups);
        echoed += (uint64_t)sent;
        echo_drops += (uint64_t)(n - sent);
        if (n < BATCH)
            break;
    }
}

#ifdef LOADGEN_STREAM
#include "loadgen_stream.c"
#else
static void stream_refill(struct client *c, int want) { (void)c, (void)want; }
static void stream_read(struct client *c) { (void)c; }
static void stream_setup(void) {
    if (getenv("LOADGEN_STREAM") && *getenv("LOADGEN_STREAM")) {
        fprintf(stderr, "loadgen: built without -DLOADGEN_STREAM\n");
        exit(2);
    }
}
static void stream_flush_all(void) {}
#endif

struct snapshot {
    char stat[2][512];
    char server[1024];
    char self[1024];
    char cpus[MAX_LIST][512];     /* every server CPU */
    char procs[MAX_LIST][1024];   /* every server PID */
};

static int server_pids[MAX_LIST], n_server_pids;
static int server_cpus[MAX_LIST], n_server_cpus;

/* Comma-separated non-negative integers into out (at most MAX_LIST); returns the count. */
static int parse_list(const char *s, int *out) {
    int n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        out[n++] = (int)v;
        if (*end != ',')
            break;
        s = end + 1;
    }
    return n;
}

static void read_to(char *dst, size_t cap, const char *path, const char *prefix) {
    char buf[16384];
    dst[0] = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = 0;
    char *line = buf;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        if (prefix == NULL || strncmp(line, prefix, strlen(prefix)) == 0) {
            size_t len = strlen(line);
            if (len >= cap)
                len = cap - 1;
            memcpy(dst, line, len);
            dst[len] = 0;
            return;
        }
        line = nl ? nl + 1 : NULL;
    }
}

static void snap(struct snapshot *s, int server_pid, int server_cpu, int client_cpu) {
    char prefix[32], path[64];
    snprintf(prefix, sizeof prefix, "cpu%d ", server_cpu);
    read_to(s->stat[0], sizeof s->stat[0], "/proc/stat", prefix);
    snprintf(prefix, sizeof prefix, "cpu%d ", client_cpu);
    read_to(s->stat[1], sizeof s->stat[1], "/proc/stat", prefix);
    snprintf(path, sizeof path, "/proc/%d/stat", server_pid);
    read_to(s->server, sizeof s->server, path, NULL);
    read_to(s->self, sizeof s->self, "/proc/self/stat", NULL);
    for (int i = 0; i < n_server_cpus; i++) {
        snprintf(prefix, sizeof prefix, "cpu%d ", server_cpus[i]);
        read_to(s->cpus[i], sizeof s->cpus[i], "/proc/stat", prefix);
    }
    for (int i = 0; i < n_server_pids; i++) {
        snprintf(path, sizeof path, "/proc/%d/stat", server_pids[i]);
        read_to(s->procs[i], sizeof s->procs[i], path, NULL);
    }
}

static void json_str(const char *key, const char *v) {
    printf("\"%s\": \"", key);
    for (const char *q = v; *q; q++) {
        if (*q == '"' || *q == '\\')
            putchar('\\');
        putchar(*q);
    }
    printf("\"");
}

/* n strings, stride bytes apart from base, as a JSON array. */
static void json_list(const char *key, const char *base, int n, size_t stride) {
    printf("\"%s\": [", key);
    for (int i = 0; i < n; i++) {
        const char *q = base + (size_t)i * stride;
        printf("%s\"", i ? ", " : "");
        for (; *q; q++) {
            if (*q == '"' || *q == '\\')
                putchar('\\');
            putchar(*q);
        }
        printf("\"");
    }
    printf("]");
}

static uint64_t percentile(uint64_t total, double q) {
    if (total == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)total);
    uint64_t acc = 0;
    for (int i = 0; i < HIST_US; i++) {
        acc += hist[i];
        if (acc > target)
            return (uint64_t)i;
    }
    return HIST_US;
}

int main(int argc, char **argv) {
    if (argc < 10) {
        fprintf(stderr,
                "usage: loadgen WARMUP_MS DURATION_MS WINDOW PAYLOAD SERVER_PID SERVER_CPU CLIENT_CPU "
                "ECHO_FD FD:CHANNEL...\n");
        return 2;
    }
    long warmup_ms = atol(argv[1]);
    long duration_ms = atol(argv[2]);
    window_size = atoi(argv[3]);
    payload = atoi(argv[4]);
    n_server_pids = parse_list(argv[5], server_pids);
    n_server_cpus = parse_list(argv[6], server_cpus);
    if (n_server_pids < 1 || n_server_cpus < 1) {
        fprintf(stderr, "loadgen: bad SERVER_PID or SERVER_CPU list\n");
        return 2;
    }
    int server_pid = server_pids[0];
    int server_cpu = server_cpus[0];
    int client_cpu = atoi(argv[7]);
    int echo_fd = atoi(argv[8]);
    if (payload < 12 || payload > MAX_PAYLOAD || window_size < 1 || duration_ms < 1) {
        fprintf(stderr, "loadgen: payload must be 12..%d bytes, window >= 1\n", MAX_PAYLOAD);
        return 2;
    }
    /* Hard stop: never outlive the run by much, whatever happens. */
    alarm((unsigned)((warmup_ms + duration_ms) / 1000 + 15));
    const char *sleep_mode = getenv("LOADGEN_SLEEP");
    spin = !(sleep_mode && *sleep_mode && strcmp(sleep_mode, "0") != 0);
    const char *no_gso = getenv("LOADGEN_NO_GSO");
    use_gso = !(no_gso && *no_gso && strcmp(no_gso, "0") != 0);
    gso_max = use_gso ? 65000 / (4 + payload) : 1;
    if (gso_max > 64)
        gso_max = 64;
    if (gso_max < 1)
        gso_max = 1;
    hist = calloc(HIST_US, sizeof *hist);
    if (!hist)
        die("calloc");

    for (int i = 9; i < argc && nclients < MAX_CLIENTS; i++) {
        struct client *c = &clients[nclients++];
        char *colon = strchr(argv[i], ':');
        if (!colon) {
            fprintf(stderr, "loadgen: bad FD:CHANNEL %s\n", argv[i]);
            return 2;
        }
        c->fd = atoi(argv[i]);
        c->channel = (uint16_t)strtol(colon + 1, NULL, 0);
        c->tx = calloc(1, 4 + (size_t)payload + STUN_REQUEST);
        if (!c->tx)
            die("calloc");
        c->tx[0] = (unsigned char)(c->channel >> 8);
        c->tx[1] = (unsigned char)(c->channel & 0xFF);
        c->tx[2] = (unsigned char)(payload >> 8);
        c->tx[3] = (unsigned char)(payload & 0xFF);
        for (int j = 16; j < 4 + payload; j++)
            c->tx[j] = (unsigned char)(j * 7 + i);
        c->stun = c->channel == 0;
        if (c->stun) { /* type 0x0001, length 0, magic cookie; the rest is the transaction id */
            memset(c->tx, 0, STUN_REQUEST);
            c->tx[1] = 0x01;
            c->tx[4] = 0x21, c->tx[5] = 0x12, c->tx[6] = 0xA4, c->tx[7] = 0x42;
            c->tx[19] = (unsigned char)i;
        }
    }

    stream_setup();
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = UINT32_MAX;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, echo_fd, &ev) < 0)
        die("epoll_ctl echo");
    for (int i = 0; i < nclients; i++) {
        ev.data.u32 = (uint32_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, clients[i].fd, &ev) < 0)
            die("epoll_ctl client");
    }

    uint64_t start = now_ns();
    uint64_t t0 = start + (uint64_t)warmup_ms * 1000000ull;
    uint64_t t1 = t0 + (uint64_t)duration_ms * 1000000ull;
    for (int i = 0; i < nclients; i++) {
        clients[i].last_rx = start;
        refill(&clients[i]);
    }

    struct snapshot s0, s1;
    int measuring = 0;
    uint64_t next_scan = start + 10000000ull;
    uint64_t t_prev = now_ns();
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, spin ? 0 : 5);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            uint32_t id = events[i].data.u32;
            if (id == UINT32_MAX)
                on_echo(echo_fd);
            else
                on_client(&clients[id]);
        }
        stream_flush_all();
        uint64_t t = now_ns();
        if (n == 0)
            idle_ns += t - t_prev;
        t_prev = t;
        if (!measuring && t >= t0) {
            round_trips = lost = bad = echoed = echo_drops = send_errors = idle_ns = 0;
            rtt_sum_ns = 0;
            hist_over = 0;
            memset(hist, 0, HIST_US * sizeof *hist);
            snap(&s0, server_pid, server_cpu, client_cpu);
            t0 = now_ns();
            t1 = t0 + (uint64_t)duration_ms * 1000000ull;
            measuring = 1;
        } else if (measuring && t >= t1) {
            snap(&s1, server_pid, server_cpu, client_cpu);
            t1 = now_ns();
            break;
        }
        if (t >= next_scan) {
            next_scan = t + 10000000ull;
            for (int i = 0; i < nclients; i++) {
                struct client *c = &clients[i];
                if (t - c->last_rx > (uint64_t)LOSS_MS * 1000000ull) {
                    lost += (uint64_t)c->inflight;
                    c->inflight = 0;
                    c->epoch++;
                    memcpy(c->tx + epoch_at(c), &c->epoch, sizeof c->epoch);
                    c->last_rx = t;
                    refill(c);
                }
            }
        }
    }

    double secs = (double)(t1 - t0) / 1e9;
    printf("{\"seconds\": %.6f, \"round_trips\": %llu, \"lost\": %llu, \"bad\": %llu, "
           "\"echoed\": %llu, \"echo_drops\": %llu, \"send_errors\": %llu, "
           "\"gso\": %d, \"spin\": %d, \"idle\": %.4f, \"rtt_mean_us\": %.1f, \"rtt_p50_us\": %llu, \"rtt_p99_us\": %llu, ",
           secs, (unsigned long long)round_trips, (unsigned long long)lost,
           (unsigned long long)bad, (unsigned long long)echoed, (unsigned long long)echo_drops,
           (unsigned long long)send_errors, use_gso, spin,
           spin ? (double)idle_ns / 1e9 / secs : -1.0,
           round_trips ? (double)rtt_sum_ns / (double)round_trips / 1000.0 : 0.0,
           (unsigned long long)percentile(round_trips, 0.5),
           (unsigned long long)percentile(round_trips, 0.99));
    json_str("server_cpu_before", s0.stat[0]);
    printf(", ");
    json_str("server_cpu_after", s1.stat[0]);
    printf(", ");
    json_str("client_cpu_before", s0.stat[1]);
    printf(", ");
    json_str("client_cpu_after", s1.stat[1]);
    printf(", ");
    json_str("server_proc_before", s0.server);
    printf(", ");
    json_str("server_proc_after", s1.server);
    printf(", ");
    json_str("self_proc_before", s0.self);
    printf(", ");
    json_str("self_proc_after", s1.self);
    printf(", ");
    json_list("server_cpus_before", s0.cpus[0], n_server_cpus, sizeof s0.cpus[0]);
    printf(", ");
    json_list("server_cpus_after", s1.cpus[0], n_server_cpus, sizeof s1.cpus[0]);
    printf(", ");
    json_list("server_procs_before", s0.procs[0], n_server_pids, sizeof s0.procs[0]);
    printf(", ");
    json_list("server_procs_after", s1.procs[0], n_server_pids, sizeof s1.procs[0]);
    printf("}\n");
    fflush(stdout);
    return 0;
}
