/* TURN over TCP and TLS for bench/loadgen.c (included by it when built with -DLOADGEN_STREAM,
 * linked with -lssl -lcrypto): the TLS handshake, the TURN set-up on each connection, and
 * ChannelData framed on the stream. See loadgen.c's header comment. */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#define STREAM_RX (1 << 20)
#define STREAM_OUT (1 << 20)

static const char *turn_user, *turn_realm, *turn_pass;
static struct in_addr peer_ip;
static uint16_t peer_port;
static unsigned char turn_key[16];
static SSL_CTX *tls_ctx;

static void die_setup(const struct client *c, const char *what) {
    fprintf(stderr, "loadgen: set-up of fd %d: %s\n", c->fd, what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

/* Blocking I/O of the set-up. */
static void io_write(struct client *c, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = c->ssl ? SSL_write(c->ssl, p, (int)n) : send(c->fd, p, n, 0);
        if (w <= 0)
            die_setup(c, "write failed");
        p += w, n -= (size_t)w;
    }
}

static void io_read(struct client *c, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = c->ssl ? SSL_read(c->ssl, p, (int)n) : recv(c->fd, p, n, 0);
        if (r <= 0)
            die_setup(c, "connection closed during set-up");
        p += r, n -= (size_t)r;
    }
}

static size_t put_attr(unsigned char *m, size_t at, uint16_t type, const void *v, size_t len) {
    m[at] = (unsigned char)(type >> 8), m[at + 1] = (unsigned char)type;
    m[at + 2] = (unsigned char)(len >> 8), m[at + 3] = (unsigned char)len;
    memcpy(m + at + 4, v, len);
    size_t padded = (len + 3) & ~(size_t)3;
    memset(m + at + 4 + len, 0, padded - len);
    return at + 4 + padded;
}

static void set_length(unsigned char *m, size_t total) {
    m[2] = (unsigned char)((total - 20) >> 8), m[3] = (unsigned char)(total - 20);
}

/* One transaction: send the request of METHOD with ATTRS (plus the credential once a nonce is
 * known), read the answer; returns its type; REALM and NONCE of a 401 are kept in nonce/realm. */
static char nonce_buf[256], realm_buf[256];
static size_t nonce_len, realm_len;

static unsigned transact(struct client *c, uint16_t method, const unsigned char *attrs, size_t alen,
                         unsigned char *answer, size_t *answer_len) {
    unsigned char m[1024];
    memset(m, 0, 20);
    m[0] = (unsigned char)(method >> 8), m[1] = (unsigned char)method;
    m[4] = 0x21, m[5] = 0x12, m[6] = 0xA4, m[7] = 0x42;
    for (int i = 8; i < 20; i++)
        m[i] = (unsigned char)rand();
    memcpy(m + 20, attrs, alen);
    size_t at = 20 + alen;
    if (nonce_len) {
        at = put_attr(m, at, 0x0006, turn_user, strlen(turn_user));
        at = put_attr(m, at, 0x0014, realm_buf, realm_len);
        at = put_attr(m, at, 0x0015, nonce_buf, nonce_len);
        set_length(m, at + 24);
        unsigned mac_len = 20;
        unsigned char mac[EVP_MAX_MD_SIZE];
        HMAC(EVP_sha1(), turn_key, sizeof turn_key, m, at, mac, &mac_len);
        at = put_attr(m, at, 0x0008, mac, 20);
    }
    set_length(m, at);
    io_write(c, m, at);
    for (;;) { /* skip anything that is not the answer (none expected) */
        io_read(c, answer, 20);
        size_t len = ((size_t)answer[2] << 8) | answer[3];
        if (len > 1000)
            die_setup(c, "oversized answer");
        io_read(c, answer + 20, len);
        if (memcmp(answer + 8, m + 8, 12) == 0) {
            *answer_len = 20 + len;
            return ((unsigned)answer[0] << 8) | answer[1];
        }
    }
}

static void read_challenge(struct client *c, const unsigned char *a, size_t n) {
    for (size_t at = 20; at + 4 <= n;) {
        unsigned type = ((unsigned)a[at] << 8) | a[at + 1];
        size_t len = ((size_t)a[at + 2] << 8) | a[at + 3];
        if (at + 4 + len > n || len >= sizeof nonce_buf)
            die_setup(c, "bad attribute in a 401");
        if (type == 0x0015)
            memcpy(nonce_buf, a + at + 4, len), nonce_len = len;
        else if (type == 0x0014)
            memcpy(realm_buf, a + at + 4, len), realm_len = len;
        at += 4 + ((len + 3) & ~(size_t)3);
    }
    if (!nonce_len || !realm_len)
        die_setup(c, "401 without NONCE and REALM");
    char text[1024];
    int tl = snprintf(text, sizeof text, "%s:%.*s:%s", turn_user, (int)realm_len, realm_buf, turn_pass);
    unsigned kl = 16;
    EVP_Digest(text, (size_t)tl, turn_key, &kl, EVP_md5(), NULL);
}

/* Allocate (401, then signed) and ChannelBind to the echo peer, on one connection. */
static void turn_setup(struct client *c) {
    unsigned char attrs[64], answer[1100];
    size_t n, alen;
    nonce_len = 0; /* every connection is its own client address: its own nonce */
    unsigned char transport[4] = {17, 0, 0, 0};
    alen = put_attr(attrs, 0, 0x0019, transport, 4);
    unsigned type = transact(c, 0x0003, attrs, alen, answer, &n);
    if (type == 0x0113) {
        read_challenge(c, answer, n);
        type = transact(c, 0x0003, attrs, alen, answer, &n);
    }
    if (type != 0x0103)
        die_setup(c, "Allocate refused");
    unsigned char number[4] = {(unsigned char)(c->channel >> 8), (unsigned char)c->channel, 0, 0};
    alen = put_attr(attrs, 0, 0x000C, number, 4);
    unsigned char xpeer[8] = {0, 1};
    uint16_t xport = (uint16_t)(peer_port ^ 0x2112);
    xpeer[2] = (unsigned char)(xport >> 8), xpeer[3] = (unsigned char)xport;
    uint32_t xaddr = peer_ip.s_addr ^ htonl(0x2112A442);
    memcpy(xpeer + 4, &xaddr, 4);
    alen = put_attr(attrs, alen, 0x0012, xpeer, 8);
    if (transact(c, 0x0009, attrs, alen, answer, &n) != 0x0109)
        die_setup(c, "ChannelBind refused");
}

static void stream_setup(void) {
    const char *mode = getenv("LOADGEN_STREAM");
    if (!mode || !*mode || strcmp(mode, "udp") == 0)
        return;
    stream_mode = strcmp(mode, "tls") == 0 ? 2 : 1;
    static char spec[512];
    const char *turn = getenv("LOADGEN_TURN");
    if (!turn || strlen(turn) >= sizeof spec) {
        fprintf(stderr, "loadgen: LOADGEN_TURN=USER:REALM:PASSWORD:PEER_IP:PEER_PORT needed\n");
        exit(2);
    }
    strcpy(spec, turn);
    char *fields[5];
    char *p = spec;
    for (int i = 0; i < 5; i++) {
        fields[i] = p;
        p = i < 4 ? strchr(p, ':') : NULL;
        if (i < 4 && !p) {
            fprintf(stderr, "loadgen: bad LOADGEN_TURN\n");
            exit(2);
        }
        if (p)
            *p++ = 0;
    }
    turn_user = fields[0], turn_realm = fields[1], turn_pass = fields[2];
    if (inet_pton(AF_INET, fields[3], &peer_ip) != 1) {
        fprintf(stderr, "loadgen: bad peer IP in LOADGEN_TURN\n");
        exit(2);
    }
    peer_port = (uint16_t)atoi(fields[4]);
    if (stream_mode == 2) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx)
            die("SSL_CTX_new");
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL); /* the bench's own certificate */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    for (int i = 0; i < nclients; i++) {
        struct client *c = &clients[i];
        c->rx = malloc(STREAM_RX);
        c->out = malloc(STREAM_OUT);
        if (!c->rx || !c->out)
            die("malloc");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
        int flags = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK);
        if (stream_mode == 2) {
            SSL *ssl = SSL_new(tls_ctx);
            SSL_set_fd(ssl, c->fd);
            SSL_set_tlsext_host_name(ssl, "localhost");
            if (SSL_connect(ssl) != 1)
                die_setup(c, "TLS handshake failed");
            c->ssl = ssl;
        }
        turn_setup(c);
        fcntl(c->fd, F_SETFL, flags | O_NONBLOCK);
    }
}

/* Write what is pending, as much as the socket takes now. */
static void stream_flush(struct client *c) {
    size_t done = 0;
    while (done < c->out_len) {
        ssize_t w;
        if (c->ssl) {
            w = SSL_write(c->ssl, c->out + done, (int)(c->out_len - done));
            if (w <= 0) {
                int e = SSL_get_error(c->ssl, (int)w);
                if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
                    send_errors++;
                break;
            }
        } else {
            w = send(c->fd, c->out + done, c->out_len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w <= 0) {
                if (w < 0 && errno != EAGAIN)
                    send_errors++;
                break;
            }
        }
        done += (size_t)w;
    }
    if (done) {
        memmove(c->out, c->out + done, c->out_len - done);
        c->out_len -= done;
    }
}

static void stream_flush_all(void) {
    for (int i = 0; i < nclients; i++)
        if (clients[i].out_len)
            stream_flush(&clients[i]);
}

static void stream_refill(struct client *c, int want) {
    size_t frame = (4 + (size_t)payload + 3) & ~(size_t)3;
    while (want > 0 && c->out_len + frame <= STREAM_OUT) {
        memcpy(c->out + c->out_len, c->tx, frame); /* the template's tail is zeros: padding */
        c->out_len += frame;
        c->inflight++;
        want--;
    }
    stream_flush(c);
}

static void stream_read(struct client *c) {
    int got = 0;
    for (;;) {
        ssize_t r;
        if (c->rx_len == STREAM_RX)
            break;
        if (c->ssl) {
            r = SSL_read(c->ssl, c->rx + c->rx_len, (int)(STREAM_RX - c->rx_len));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, (int)r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    fprintf(stderr, "loadgen: TLS connection fd %d failed\n", c->fd);
                    exit(2);
                }
                break;
            }
        } else {
            r = recv(c->fd, c->rx + c->rx_len, STREAM_RX - c->rx_len, MSG_DONTWAIT);
            if (r <= 0) {
                if (r == 0 || errno != EAGAIN) {
                    fprintf(stderr, "loadgen: TCP connection fd %d closed\n", c->fd);
                    exit(2);
                }
                break;
            }
        }
        c->rx_len += (size_t)r;
        got = 1;
    }
    if (!got)
        return;
    uint64_t t = now_ns();
    size_t at = 0;
    while (c->rx_len - at >= 4) {
        unsigned char *p = c->rx + at;
        size_t len = ((size_t)p[2] << 8) | p[3];
        size_t total = p[0] >= 0x40 ? (4 + len + 3) & ~(size_t)3 : 20 + len;
        if (c->rx_len - at < total)
            break;
        if (p[0] >= 0x40)
            on_reply(c, p, (unsigned)(4 + len), t);
        at += total;
    }
    memmove(c->rx, c->rx + at, c->rx_len - at);
    c->rx_len -= at;
    c->last_rx = t;
    refill(c);
}
