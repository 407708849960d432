/*
 * seqstream: TCP connections carrying a sequence-numbered stream in both directions, checked on
 * both ends. The test workload for connections that must survive a checkpoint and restore.
 *
 *   seqstream --listen PORT [--connections N] [--interval-ms MS]   accept N connections, keep the listener open
 *   seqstream --connect ADDR:PORT [--connections N] [--interval-ms MS]
 *   seqstream --short ADDR:PORT [--connections N] [--interval-ms MS]   N short-lived connections, one after another
 *   seqstream --udp-echo PORT      a UDP socket bound to PORT that sends every datagram back to where it came from
 *   seqstream --udp-ask ADDR:PORT  the records 1 to 5 as datagrams, each echoed back (1 s to answer, 3 tries);
 *                                  prints "udp 5 ok", or an "error:" line and exits 3
 *
 * On each connection each side sends its counter 1, 2, 3, ... as 8-byte big-endian records, one
 * per interval, and checks that every record it receives is the previous one plus one. It prints
 * one line per second, "sent S received R maxgap G" (sums over the connections; G is the longest
 * time in milliseconds any connection went without receiving, since the start), and stops with a
 * line starting "error:" (exit status 2 for a gap or a repeat, 3 for a connection closed or reset)
 * as soon as anything is wrong.
 *
 * A listener also serves short-lived connections beyond its N: it echoes each 8-byte record it
 * receives until the client closes. The --short client opens N of them one after another (one
 * every MS), on each sends the records 1 to 5 and checks they come back, then closes; it prints
 * "short N ok O failed F longest L" (L: the longest any one took, connecting included, in ms)
 * when done, and an "error:" line for each one that failed, which does not stop it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void say(const char *format, ...)
{
    char line[256];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0) {
        _exit(4);
    }
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int open_listener(int port, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0) {
        say("error: listen on port %d: %s\n", port, strerror(errno));
        exit(1);
    }
    say("listening on port %d\n", port);
    return fd;
}

/* A connection to ADDR:PORT: retried for 5 s when "retry" (the server may not listen yet), else one try (-1 on failure). */
static int open_connection(const char *target, int retry)
{
    char host[64];
    const char *colon = strrchr(target, ':');
    if (colon == NULL || (size_t)(colon - target) >= sizeof host) {
        say("error: --connect wants ADDR:PORT, got %s\n", target);
        exit(1);
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)) };
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        say("error: %s is not an IPv4 address\n", host);
        exit(1);
    }
    for (int attempt = 0;; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            return fd;
        }
        if (!retry) {
            close(fd);
            return -1;
        }
        if (attempt == 100) {
            say("error: connect to %s: %s\n", target, strerror(errno));
            exit(1);
        }
        close(fd);
        usleep(50000);
    }
}

enum { SHORT_SLOTS = 64, SHORT_RECORDS = 5 };

static void put_record(unsigned char *record, uint64_t value)
{
    for (int b = 7; b >= 0; b--, value >>= 8) {
        record[b] = (unsigned char)(value & 0xff);
    }
}

static uint64_t get_record(const unsigned char *record)
{
    uint64_t value = 0;
    for (int b = 0; b < 8; b++) {
        value = (value << 8) | record[b];
    }
    return value;
}

/* One short-lived connection: records 1..SHORT_RECORDS out, each echoed back. 0 when all came back. */
static int short_exchange(const char *target, char *why, size_t why_size)
{
    int fd = open_connection(target, 0);
    if (fd < 0) {
        snprintf(why, why_size, "connect: %s", strerror(errno));
        return -1;
    }
    for (uint64_t value = 1; value <= SHORT_RECORDS; value++) {
        unsigned char record[8];
        put_record(record, value);
        if (send(fd, record, sizeof record, MSG_NOSIGNAL) != (ssize_t)sizeof record) {
            snprintf(why, why_size, "send %llu: %s", (unsigned long long)value, strerror(errno));
            close(fd);
            return -1;
        }
        size_t got = 0;
        while (got < sizeof record) {
            ssize_t n = recv(fd, record + got, sizeof record - got, 0);
            if (n <= 0) {
                snprintf(why, why_size, "record %llu: %s", (unsigned long long)value, n == 0 ? "closed by the peer" : strerror(errno));
                close(fd);
                return -1;
            }
            got += (size_t)n;
        }
        if (get_record(record) != value) {
            snprintf(why, why_size, "sent %llu, got %llu back", (unsigned long long)value, (unsigned long long)get_record(record));
            close(fd);
            return -1;
        }
    }
    close(fd);
    return 0;
}

static int run_short(const char *target, int count, int interval_ms)
{
    int ok = 0, failed = 0;
    long long longest = 0;
    for (int i = 1; i <= count; i++) {
        char why[160];
        long long began = now_ms();
        if (short_exchange(target, why, sizeof why) == 0) {
            ok++;
        } else {
            failed++;
            say("error: short connection %d: %s\n", i, why);
        }
        long long took = now_ms() - began;
        if (took > longest) {
            longest = took;
        }
        if (took < interval_ms) {
            usleep((useconds_t)(interval_ms - took) * 1000);
        }
    }
    say("short %d ok %d failed %d longest %lld\n", count, ok, failed, longest);
    return failed == 0 ? 0 : 3;
}

/* --udp-echo: every datagram goes back to its sender, for ever. */
static int run_udp_echo(int port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in local = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&local, sizeof local) != 0) {
        say("error: udp bind %d: %s\n", port, strerror(errno));
        return 1;
    }
    say("udp echo on port %d\n", port);
    for (;;) {
        unsigned char datagram[512];
        struct sockaddr_in peer;
        socklen_t length = sizeof peer;
        ssize_t n = recvfrom(fd, datagram, sizeof datagram, 0, (struct sockaddr *)&peer, &length);
        if (n > 0) {
            sendto(fd, datagram, (size_t)n, 0, (struct sockaddr *)&peer, length);
        }
    }
}

/* --udp-ask: records 1..SHORT_RECORDS as datagrams, each must come back (1 s, 3 tries). */
static int run_udp_ask(const char *target)
{
    char host[64];
    const char *colon = strrchr(target, ':');
    struct sockaddr_in remote = { .sin_family = AF_INET };
    if (colon == NULL || (size_t)(colon - target) >= sizeof host) {
        say("error: udp target %s is not ADDR:PORT\n", target);
        return 1;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = 0;
    remote.sin_port = htons((uint16_t)atoi(colon + 1));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (inet_pton(AF_INET, host, &remote.sin_addr) != 1 || fd < 0 || connect(fd, (struct sockaddr *)&remote, sizeof remote) != 0) {
        say("error: udp target %s: %s\n", target, strerror(errno));
        return 1;
    }
    for (uint64_t value = 1; value <= SHORT_RECORDS; value++) {
        int answered = 0;
        for (int attempt = 0; attempt < 3 && !answered; attempt++) {
            unsigned char record[8];
            put_record(record, value);
            send(fd, record, sizeof record, 0);
            struct pollfd wait = { .fd = fd, .events = POLLIN };
            while (!answered && poll(&wait, 1, 1000) > 0) {
                ssize_t n = recv(fd, record, sizeof record, 0);
                answered = n == (ssize_t)sizeof record && get_record(record) == value;
            }
        }
        if (!answered) {
            say("error: udp record %llu was not echoed\n", (unsigned long long)value);
            return 3;
        }
    }
    say("udp %d ok\n", SHORT_RECORDS);
    return 0;
}

struct stream {
    int fd;
    uint64_t sent, received;
    unsigned char buffer[4096];
    size_t held;
    long long last_received;
};

int main(int argc, char **argv)
{
    int port = -1, interval_ms = 10, count = 1;
    int udp_port = -1;
    const char *target = NULL, *short_target = NULL, *udp_target = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0) {
            port = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--connect") == 0) {
            target = argv[i + 1];
        } else if (strcmp(argv[i], "--short") == 0) {
            short_target = argv[i + 1];
        } else if (strcmp(argv[i], "--udp-echo") == 0) {
            udp_port = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--udp-ask") == 0) {
            udp_target = argv[i + 1];
        } else if (strcmp(argv[i], "--interval-ms") == 0) {
            interval_ms = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--connections") == 0) {
            count = atoi(argv[i + 1]);
        } else {
            say("error: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if ((port >= 0) + (target != NULL) + (short_target != NULL) + (udp_port >= 0) + (udp_target != NULL) != 1 || interval_ms < 1 || count < 1 || count > 4096) {
        say("error: usage: seqstream --listen PORT | --connect ADDR:PORT | --short ADDR:PORT | --udp-echo PORT | --udp-ask ADDR:PORT [--connections 1..4096] [--interval-ms N]\n");
        return 1;
    }
    if (udp_port >= 0) {
        return run_udp_echo(udp_port);
    }
    if (udp_target != NULL) {
        return run_udp_ask(udp_target);
    }
    if (short_target != NULL) {
        return run_short(short_target, count, interval_ms);
    }
    struct rlimit files = { (rlim_t)count + SHORT_SLOTS + 64, (rlim_t)count + SHORT_SLOTS + 64 };
    setrlimit(RLIMIT_NOFILE, &files);

    struct stream *streams = calloc((size_t)count, sizeof *streams);
    /* the long connections, then (listening side) the listener and the short-lived connections' slots */
    struct pollfd *polls = calloc((size_t)count + 1 + SHORT_SLOTS, sizeof *polls);
    if (streams == NULL || polls == NULL) {
        say("error: out of memory\n");
        return 1;
    }
    int listener = target == NULL ? open_listener(port, count + 4) : -1; /* stays open: a listening socket must survive too */
    for (int c = 0; c < count; c++) {
        streams[c].fd = target != NULL ? open_connection(target, 1) : accept(listener, NULL, NULL);
        if (streams[c].fd < 0) {
            say("error: accept: %s\n", strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(streams[c].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        polls[c].fd = streams[c].fd;
        polls[c].events = POLLIN;
    }
    say("connected pid %d connections %d\n", (int)getpid(), count);
    nfds_t watched = (nfds_t)count;
    unsigned long long shorts_served = 0;
    if (listener >= 0) {
        polls[count].fd = listener;
        polls[count].events = POLLIN;
        for (int k = 0; k < SHORT_SLOTS; k++) {
            polls[count + 1 + k].fd = -1; /* poll skips negative descriptors */
            polls[count + 1 + k].events = POLLIN;
        }
        watched = (nfds_t)count + 1 + SHORT_SLOTS;
    }

    long long start = now_ms(), next_send = start, next_report = start + 1000, max_gap = 0;
    for (int c = 0; c < count; c++) {
        streams[c].last_received = start;
    }
    for (;;) {
        long long now = now_ms();
        if (now >= next_send) {
            for (int c = 0; c < count; c++) {
                struct stream *s = &streams[c];
                unsigned char record[8];
                uint64_t value = s->sent + 1;
                for (int b = 7; b >= 0; b--, value >>= 8) {
                    record[b] = (unsigned char)(value & 0xff);
                }
                if (send(s->fd, record, sizeof record, MSG_NOSIGNAL) != (ssize_t)sizeof record) {
                    say("error: send on connection %d: %s (sent %llu received %llu)\n", c, strerror(errno),
                        (unsigned long long)s->sent, (unsigned long long)s->received);
                    return 3;
                }
                s->sent++;
            }
            next_send += interval_ms;
        }
        if (now >= next_report) {
            uint64_t sent = 0, received = 0;
            for (int c = 0; c < count; c++) {
                sent += streams[c].sent;
                received += streams[c].received;
                if (now - streams[c].last_received > max_gap) {
                    max_gap = now - streams[c].last_received;
                }
            }
            if (listener >= 0 && shorts_served > 0) {
                say("sent %llu received %llu maxgap %lld short %llu\n", (unsigned long long)sent, (unsigned long long)received, max_gap, shorts_served);
            } else {
                say("sent %llu received %llu maxgap %lld\n", (unsigned long long)sent, (unsigned long long)received, max_gap);
            }
            next_report += 1000;
        }

        long long wait = next_send - now_ms();
        int ready = poll(polls, watched, wait > 0 ? (int)wait : 0);
        if (ready < 0 && errno != EINTR) {
            say("error: poll: %s\n", strerror(errno));
            return 3;
        }
        for (int c = 0; ready > 0 && c < count; c++) {
            if (polls[c].revents == 0) {
                continue;
            }
            struct stream *s = &streams[c];
            ssize_t n = recv(s->fd, s->buffer + s->held, sizeof s->buffer - s->held, 0);
            if (n <= 0) {
                say("error: connection %d %s (sent %llu received %llu)\n", c, n == 0 ? "closed by the peer" : strerror(errno),
                    (unsigned long long)s->sent, (unsigned long long)s->received);
                return 3;
            }
            long long arrived = now_ms();
            if (arrived - s->last_received > max_gap) {
                max_gap = arrived - s->last_received;
            }
            s->last_received = arrived;
            s->held += (size_t)n;
            size_t used = 0;
            for (; s->held - used >= 8; used += 8) {
                uint64_t value = 0;
                for (int b = 0; b < 8; b++) {
                    value = (value << 8) | s->buffer[used + b];
                }
                if (value != s->received + 1) {
                    say("error: connection %d expected record %llu, got %llu\n", c, (unsigned long long)(s->received + 1), (unsigned long long)value);
                    return 2;
                }
                s->received = value;
            }
            memmove(s->buffer, s->buffer + used, s->held - used);
            s->held -= used;
        }
        if (listener >= 0 && ready > 0) {
            if (polls[count].revents != 0) {
                int fd = accept(listener, NULL, NULL);
                int slot = -1;
                for (int k = 0; fd >= 0 && k < SHORT_SLOTS && slot < 0; k++) {
                    if (polls[count + 1 + k].fd < 0) {
                        slot = k;
                    }
                }
                if (fd >= 0 && slot < 0) {
                    close(fd); /* every slot busy: the client sees it closed */
                } else if (fd >= 0) {
                    polls[count + 1 + slot].fd = fd;
                    shorts_served++;
                }
            }
            for (int k = 0; k < SHORT_SLOTS; k++) {
                struct pollfd *p = &polls[count + 1 + k];
                if (p->fd < 0 || p->revents == 0) {
                    continue;
                }
                unsigned char record[64];
                ssize_t n = recv(p->fd, record, sizeof record, 0);
                if (n <= 0 || send(p->fd, record, (size_t)n, MSG_NOSIGNAL) != n) {
                    close(p->fd); /* the client is done (or gone): a short-lived connection ends normally */
                    p->fd = -1;
                }
            }
        }
    }
}
