/*
 * The TCP client stream paths of the native engine, for fastpath_fuzz.c (included by it):
 *
 * Input: a byte stream of ChannelData frames for an installed channel, frames for a channel that
 * is not installed, STUN messages, then (sometimes) garbage or a lying length at the end, cut
 * into pieces at random places (and once at every byte) and fed as asyncio would: appended to a
 * buffer, fp_stream_input() from the last position, then the frame it stopped at handled as the
 * Python framing does (a whole STUN or foreign frame skipped, garbage ends the stream, a partial
 * frame waits). The payloads that reach the peer must be the installed channel's, all of them,
 * in order, intact; the engine must stop exactly at frame boundaries and never read past the
 * buffer (AddressSanitizer: the buffer is allocated to its exact size).
 *
 * Output: peer datagrams through the relay are framed onto a stream (so writes come up short) while the driver plays the Python transport: what the
 * engine hands back is queued and written in order, and the stream is released once the queue is
 * empty (a loopback TCP connection with small buffers). The bytes read at the other end must be whole frames (header, payload, zero padding), in
 * the order sent, none corrupted (UDP may lose one, never reorder on loopback).
 */
#include <fcntl.h>

static uint64_t sseq_sent, sseq_seen, s_partial, s_handed, s_frames_in, s_frames_out, s_pieces;

/* Python's framing of the frame at b[pos..len): 0 wait for more, 1 skipped (whole), -1 garbage. */
static int py_frame(const unsigned char *b, size_t len, size_t *pos) {
    size_t avail = len - *pos;
    if (avail < 4)
        return 0;
    const unsigned char *p = b + *pos;
    size_t total;
    if (p[0] >= 0x40 && p[0] <= 0x7F) {
        size_t l = ((size_t)p[2] << 8) | p[3];
        total = 4 + l + (-l & 3);
    } else if (p[0] < 0x40) {
        if (avail < 20)
            return 0;
        total = 20 + (((size_t)p[2] << 8) | p[3]);
    } else {
        return -1;
    }
    if (avail < total)
        return 0;
    *pos += total;
    return 1;
}

static size_t put_frame(unsigned char *out, uint16_t ch, const unsigned char *data, size_t n) {
    out[0] = (unsigned char)(ch >> 8), out[1] = (unsigned char)ch;
    out[2] = (unsigned char)(n >> 8), out[3] = (unsigned char)n;
    memcpy(out + 4, data, n);
    size_t pad = -n & 3;
    memset(out + 4 + n, 0, pad);
    return 4 + n + pad;
}

static void stream_input_round(fp_engine *e, int sfd, const struct sockaddr_in *ck, int peer_fd,
                               uint16_t ch, int every_byte) {
    static unsigned char stream[200000], expect[200000], got[70000];
    size_t slen = 0, elen = 0;
    int frames = (int)(rnd() % 40) + 1;
    for (int i = 0; i < frames && slen < sizeof(stream) - 70000; i++) {
        unsigned char data[1600];
        size_t n = (size_t)(rnd() % 1500);
        for (size_t j = 0; j < n; j++)
            data[j] = (unsigned char)rnd();
        unsigned r = (unsigned)(rnd() % 10);
        if (r < 6) { /* the installed channel: expected at the peer */
            slen += put_frame(stream + slen, ch, data, n);
            memcpy(expect + elen, data, n);
            elen += n;
            expect[elen++] = 0xEE; /* datagram boundary marker in the expected sequence */
        } else if (r < 8) { /* a channel not installed: Python's */
            slen += put_frame(stream + slen, (uint16_t)(ch + 1), data, n);
        } else { /* a STUN message: Python's */
            size_t l = n & ~(size_t)3;
            stream[slen] = 0x00, stream[slen + 1] = 0x01;
            stream[slen + 2] = (unsigned char)(l >> 8), stream[slen + 3] = (unsigned char)l;
            memcpy(stream + slen + 4, data, 16);
            memset(stream + slen + 20, 0xAB, l);
            slen += 20 + l;
        }
    }
    unsigned tail = (unsigned)(rnd() % 4);
    if (tail == 1) { /* garbage: the stream ends there */
        stream[slen++] = (unsigned char)(0x80 | rnd());
        for (int j = 0; j < 10; j++)
            stream[slen++] = (unsigned char)rnd();
    } else if (tail == 2) { /* a length that lies: more promised than ever comes */
        stream[slen++] = (unsigned char)(ch >> 8), stream[slen++] = (unsigned char)ch;
        stream[slen++] = 0xFF, stream[slen++] = 0xFF;
        for (int j = 0; j < 100; j++)
            stream[slen++] = (unsigned char)rnd();
    } else if (tail == 3) { /* cut off inside a header */
        stream[slen++] = (unsigned char)(ch >> 8);
    }
    unsigned char *held = NULL;
    size_t hlen = 0, fed = 0;
    int dead = 0;
    while (fed < slen && !dead) {
        size_t piece = every_byte ? 1 : 1 + (size_t)(rnd() % (rnd() % 2 ? 7 : 3000));
        if (piece > slen - fed)
            piece = slen - fed;
        unsigned char *nb = malloc(hlen + piece); /* exact size: ASan sees any overread */
        if (hlen)
            memcpy(nb, held, hlen);
        memcpy(nb + hlen, stream + fed, piece);
        free(held);
        held = nb;
        hlen += piece;
        fed += piece;
        s_pieces++;
        size_t pos = 0;
        for (;;) {
            size_t before = pos;
            pos = fp_stream_input(e, sfd, (const struct sockaddr *)ck, held, hlen, pos);
            if (pos < before || pos > hlen)
                FAIL("stream_input returned %zu from %zu of %zu", pos, before, hlen);
            for (size_t at = before; at < pos;) { /* it consumed only whole frames of ch */
                size_t f = fp_stream_frame(held + at, pos - at);
                if (f == 0 || ((held[at] << 8) | held[at + 1]) != ch) {
                    FAIL("stream_input consumed something other than frames of its channel");
                    break;
                }
                at += f;
                s_frames_in++;
            }
            int r = py_frame(held, hlen, &pos);
            if (r == 0)
                break;
            if (r < 0) {
                dead = 1;
                break;
            }
        }
        memmove(held, held + pos, hlen - pos);
        hlen -= pos;
    }
    free(held);
    /* Everything expected came to the peer, in order. */
    size_t at = 0;
    for (;;) {
        ssize_t n = recv(peer_fd, got, sizeof(got), MSG_DONTWAIT);
        if (n < 0)
            break;
        if (at + (size_t)n + 1 > elen || memcmp(expect + at, got, (size_t)n) != 0 ||
            expect[at + (size_t)n] != 0xEE) {
            FAIL("a stream frame reached the peer wrong or out of order");
            return;
        }
        at += (size_t)n + 1;
    }
    if (at != elen)
        FAIL("stream frames missing at the peer: %zu of %zu bytes", at, elen);
}

/* The driver as the Python transport: bytes handed back wait here, written in order. */
static unsigned char tq[1 << 21];
static size_t tq_len;

static void transport_flush(fp_engine *e, int sfd) {
    while (tq_len) {
        ssize_t w = send(sfd, tq, tq_len, MSG_DONTWAIT);
        if (w <= 0)
            return;
        memmove(tq, tq + w, tq_len - (size_t)w);
        tq_len -= (size_t)w;
    }
    fp_hold_stream(e, sfd, 0);
}

static unsigned char rbuf[1 << 20];
static size_t rlen;

static void read_frames(int rfd, uint16_t ch) {
    for (;;) {
        ssize_t n = recv(rfd, rbuf + rlen, sizeof(rbuf) - rlen, MSG_DONTWAIT);
        if (n <= 0)
            break;
        rlen += (size_t)n;
    }
    size_t at = 0;
    while (rlen - at >= 4) {
        unsigned char *p = rbuf + at;
        size_t l = ((size_t)p[2] << 8) | p[3];
        size_t total = 4 + l + (-l & 3);
        if (rlen - at < total)
            break;
        if (((p[0] << 8) | p[1]) != ch || l < 8) {
            FAIL("a frame to the stream has a wrong header");
            rlen = 0;
            return;
        }
        uint64_t seq;
        memcpy(&seq, p + 4, 8);
        if (seq <= sseq_seen && sseq_seen)
            FAIL("frames to the stream out of order: %llu after %llu", (unsigned long long)seq,
                 (unsigned long long)sseq_seen);
        sseq_seen = seq;
        for (size_t j = 8; j < l; j++)
            if (p[4 + j] != (unsigned char)(seq * 31 + j)) {
                FAIL("frame %llu to the stream corrupted", (unsigned long long)seq);
                break;
            }
        for (size_t j = 4 + l; j < total; j++)
            if (p[j])
                FAIL("padding not zero");
        s_frames_out++;
        at += total;
    }
    memmove(rbuf, rbuf + at, rlen - at);
    rlen -= at;
}

static void fuzz_streams(double seconds) {
    fp_engine *e = fp_new();
    if (e == NULL) {
        FAIL("fp_new");
        return;
    }
    struct sockaddr_in ra, pa, ck;
    int rfd = udp_socket(0x7F000001, &ra);
    int pfd = udp_socket(0x7F000001, &pa);
    memset(&ck, 0, sizeof(ck));
    ck.sin_family = AF_INET;
    ck.sin_port = htons(5000);
    ck.sin_addr.s_addr = htonl(0x7F000009);
    int sv[2]; /* a TCP connection on loopback: sends come up short when its buffer fills */
    struct sockaddr_in la;
    socklen_t lal = sizeof(la);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&la, 0, sizeof(la));
    la.sin_family = AF_INET;
    la.sin_addr.s_addr = htonl(0x7F000001);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof(la)) != 0 || listen(lfd, 1) != 0 ||
        getsockname(lfd, (struct sockaddr *)&la, &lal) != 0 ||
        (sv[1] = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        connect(sv[1], (struct sockaddr *)&la, sizeof(la)) != 0 ||
        (sv[0] = accept(lfd, NULL, NULL)) < 0) {
        FAIL("loopback TCP connection: %s", strerror(errno));
        return;
    }
    close(lfd);
    int small = 32768;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    uint16_t ch = 0x4321;
    fp_add_socket(e, rfd, FP_RELAY);
    fp_add_stream(e, sv[0]);
    fp_install(e, FP_LISTENER, sv[0], (struct sockaddr *)&ck, ch, rfd, (struct sockaddr *)&pa,
               sizeof(pa), 0, 1);
    fp_install(e, FP_RELAY, rfd, (struct sockaddr *)&pa, 0, sv[0], (struct sockaddr *)&ck,
               sizeof(ck), ch, 2);
    stream_input_round(e, sv[0], &ck, pfd, ch, 1); /* split at every byte */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0;; i++) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
            break;
        if (i % 2 == 0) {
            stream_input_round(e, sv[0], &ck, pfd, ch, 0);
            continue;
        }
        int burst = 1 + (int)(rnd() % 12);
        for (int b = 0; b < burst; b++) {
            unsigned char d[1500];
            size_t n = 8 + (size_t)(rnd() % 1400);
            uint64_t seq = ++sseq_sent;
            memcpy(d, &seq, 8);
            for (size_t j = 8; j < n; j++)
                d[j] = (unsigned char)(seq * 31 + j);
            sendto(pfd, d, n, 0, (struct sockaddr *)&ra, sizeof(ra));
        }
        for (int k = 0; k < 4; k++) {
            int n = fp_poll(e, 0);
            for (int m = 0; m < n; m++) {
                fp_miss *x = &e->miss[m];
                if (!x->stream || x->fd != sv[0]) {
                    FAIL("a peer datagram for the stream came back as a plain miss");
                    continue;
                }
                int total = 4 + x->len + (-x->len & 3);
                s_handed++;
                if (x->skip)
                    s_partial++;
                if (tq_len + (size_t)total > sizeof(tq))
                    continue; /* the transport's backlog limit: a whole frame dropped */
                unsigned char frame[70000];
                memcpy(frame, x->hdr, 4);
                memcpy(frame + 4, x->data, (size_t)x->len);
                memset(frame + 4 + x->len, 0, (size_t)(total - 4 - x->len));
                memcpy(tq + tq_len, frame + x->skip, (size_t)(total - x->skip));
                tq_len += (size_t)(total - x->skip);
            }
            for (int w = 0; w < 20; w++) { /* the client reads now and then */
                if (rnd() % ((i >> 7) & 1 ? 60 : 3) == 0) /* phases of a slow reader */
                    read_frames(sv[1], ch);
                transport_flush(e, sv[0]);
                if (!tq_len)
                    break;
            }
        }
    }
    for (int k = 0; k < 200 && (tq_len || rlen); k++) {
        transport_flush(e, sv[0]);
        read_frames(sv[1], ch);
    }
    if (s_frames_out == 0 || s_frames_in == 0 || s_partial == 0)
        FAIL("the stream paths were never all exercised (%llu in, %llu out, %llu cut short)",
             (unsigned long long)s_frames_in, (unsigned long long)s_frames_out,
             (unsigned long long)s_partial);
    fprintf(stderr,
            "fastpath_fuzz: streams: %llu pieces, %llu frames served from streams, %llu frames "
            "to the stream (of %llu datagrams), %llu handed to the transport, %llu of them cut short\n",
            (unsigned long long)s_pieces, (unsigned long long)s_frames_in,
            (unsigned long long)s_frames_out, (unsigned long long)sseq_sent,
            (unsigned long long)s_handed, (unsigned long long)s_partial);
    fp_free(e);
    close(rfd);
    close(pfd);
    close(sv[0]);
    close(sv[1]);
}
