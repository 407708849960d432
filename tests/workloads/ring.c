/*
 * ring: one member of a TCP token ring, the test workload for a group of pods migrated together:
 * a token that is lost stops the ring, and one that is repeated (or skipped) is caught by the next
 * member it reaches.
 *
 *   ring --listen PORT (--next ADDR:PORT | --next-file PATH) --members N [--start] [--interval-ms MS]
 *
 * A member listens on PORT (all addresses) and accepts exactly one connection, from its
 * predecessor; it connects to its successor at ADDR:PORT, retrying every 200 ms until that
 * succeeds (the successor may not listen yet). With --next-file the address is read from PATH,
 * one line "A.B.C.D:PORT", once that file exists and is complete (polled every 100 ms).
 *
 * The token is an 8-byte big-endian counter. The member given --start sends 1 as soon as both its
 * connections are up. Each member, on receiving token T, checks it: the first token a member
 * receives may be anything, except at the starter, where it must be N (1 after one full circle of
 * N members); every later one must be the previous one plus N. It then waits MS (default 20)
 * milliseconds, receiving all the while, and sends T+1 to its successor.
 *
 * It prints "listening on port P", "connected pid P next ADDR:PORT" once both connections are up,
 * then one line per second, "hops H last T maxgap G" (H: tokens received, T: the last one, G: the
 * longest time in milliseconds between two received tokens). It stops with a line starting
 * "error:": exit status 2 for a wrong token ("error: expected X got Y"), 3 for the predecessor or
 * the successor connection closed or reset or any other socket error (the line names which one),
 * 1 for bad arguments or a port it cannot listen on.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static void sleep_ms(long long ms)
{
    struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

static void put_token(unsigned char *record, uint64_t value)
{
    for (int b = 7; b >= 0; b--, value >>= 8) {
        record[b] = (unsigned char)(value & 0xff);
    }
}

static uint64_t get_token(const unsigned char *record)
{
    uint64_t value = 0;
    for (int b = 0; b < 8; b++) {
        value = (value << 8) | record[b];
    }
    return value;
}

/* "A.B.C.D:PORT" into an address; 0 when it is one. */
static int parse_target(const char *target, struct sockaddr_in *a)
{
    char host[64];
    const char *colon = strrchr(target, ':');
    if (colon == NULL || colon == target || (size_t)(colon - target) >= sizeof host) {
        return -1;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port < 1 || port > 65535) {
        return -1;
    }
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

/* --next-file: the file's one line, once it exists and is complete (ends with a newline, or reads the same twice). */
static void read_next_file(const char *path, char *target, size_t size)
{
    char previous[128] = "";
    for (;;) {
        char text[128];
        size_t held = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        while (fd >= 0 && held < sizeof text - 1) {
            ssize_t n = read(fd, text + held, sizeof text - 1 - held);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                break;
            }
            held += (size_t)n;
        }
        if (fd >= 0) {
            close(fd);
        }
        text[held] = '\0';
        int complete = held > 0 && (text[held - 1] == '\n' || strcmp(text, previous) == 0);
        if (complete) {
            while (held > 0 && (text[held - 1] == '\n' || text[held - 1] == '\r' || text[held - 1] == ' ')) {
                text[--held] = '\0';
            }
            if (held == 0 || held >= size) {
                say("error: %s does not hold ADDR:PORT\n", path);
                exit(1);
            }
            memcpy(target, text, held + 1);
            return;
        }
        memcpy(previous, text, held + 1);
        sleep_ms(100);
    }
}

/* One connection attempt, given up after 1 s (an address nobody answers must not block for minutes): the socket, or -1. */
static int try_connect(const struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int failed = 1;
    if (connect(fd, (const struct sockaddr *)a, sizeof *a) == 0) {
        failed = 0;
    } else if (errno == EINPROGRESS || errno == EINTR) {
        long long deadline = now_ms() + 1000;
        struct pollfd wait = { .fd = fd, .events = POLLOUT };
        int ready;
        do {
            long long left = deadline - now_ms();
            ready = poll(&wait, 1, left > 0 ? (int)left : 0);
        } while (ready < 0 && errno == EINTR);
        int error = 0;
        socklen_t length = sizeof error;
        failed = ready <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 || error != 0;
    }
    if (failed) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static void no_delay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* All 8 bytes of a token to the successor; exits 3 when it cannot. */
static void send_token(int fd, uint64_t value, uint64_t hops, uint64_t last)
{
    unsigned char record[8];
    put_token(record, value);
    size_t sent = 0;
    while (sent < sizeof record) {
        ssize_t n = send(fd, record + sent, sizeof record - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            say("error: successor connection: send %llu: %s (hops %llu last %llu)\n", (unsigned long long)value,
                n == 0 ? "nothing sent" : strerror(errno), (unsigned long long)hops, (unsigned long long)last);
            exit(3);
        }
        sent += (size_t)n;
    }
}

enum { PENDING_SLOTS = 16 };

int main(int argc, char **argv)
{
    int port = -1, members = 0, interval_ms = 20, start = 0;
    const char *next = NULL, *next_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--start") == 0) {
            start = 1;
            continue;
        }
        if (i + 1 >= argc) {
            say("error: %s wants a value\n", argv[i]);
            return 1;
        }
        if (strcmp(argv[i], "--listen") == 0) {
            port = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--next") == 0) {
            next = argv[++i];
        } else if (strcmp(argv[i], "--next-file") == 0) {
            next_file = argv[++i];
        } else if (strcmp(argv[i], "--members") == 0) {
            members = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--interval-ms") == 0) {
            interval_ms = atoi(argv[++i]);
        } else {
            say("error: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (port < 1 || port > 65535 || (next != NULL) + (next_file != NULL) != 1 || members < 1 || interval_ms < 0) {
        say("error: usage: ring --listen PORT (--next ADDR:PORT | --next-file PATH) --members N [--start] [--interval-ms MS]\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in local = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (listener < 0 || bind(listener, (struct sockaddr *)&local, sizeof local) < 0 || listen(listener, 4) < 0) {
        say("error: listen on port %d: %s\n", port, strerror(errno));
        return 1;
    }
    say("listening on port %d\n", port);

    /* the successor first: the predecessor's connection completes in the listen backlog meanwhile */
    char target[128];
    if (next_file != NULL) {
        read_next_file(next_file, target, sizeof target);
    } else {
        snprintf(target, sizeof target, "%s", next);
    }
    struct sockaddr_in successor_address;
    if (parse_target(target, &successor_address) != 0) {
        say("error: --next wants A.B.C.D:PORT, got %s\n", target);
        return 1;
    }
    int successor;
    while ((successor = try_connect(&successor_address)) < 0) {
        sleep_ms(200);
    }
    no_delay(successor);

    int predecessor;
    while ((predecessor = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) < 0) {
        if (errno != EINTR && errno != ECONNABORTED) {
            say("error: predecessor connection: accept: %s\n", strerror(errno));
            return 3;
        }
    }
    no_delay(predecessor);
    close(listener); /* exactly one predecessor */
    say("connected pid %d next %s\n", (int)getpid(), target);

    uint64_t hops = 0, last = 0;
    long long last_arrival = 0, max_gap = 0;
    /* tokens received and not yet passed on, each with the time it is due */
    uint64_t pending[PENDING_SLOTS];
    long long due[PENDING_SLOTS];
    int pending_first = 0, pending_count = 0;
    unsigned char buffer[512];
    size_t held = 0;

    if (start) {
        send_token(successor, 1, hops, last);
    }
    long long next_report = now_ms() + 1000;
    struct pollfd polls[2] = { { .fd = predecessor, .events = POLLIN }, { .fd = successor, .events = POLLIN } };
    for (;;) {
        long long now = now_ms();
        while (pending_count > 0 && due[pending_first] <= now) {
            send_token(successor, pending[pending_first], hops, last);
            pending_first = (pending_first + 1) % PENDING_SLOTS;
            pending_count--;
        }
        if (now >= next_report) {
            say("hops %llu last %llu maxgap %lld\n", (unsigned long long)hops, (unsigned long long)last, max_gap);
            next_report += 1000;
            if (next_report <= now) {
                next_report = now + 1000; /* after a freeze (a checkpoint): one line, not a burst of them */
            }
        }

        long long wake = next_report;
        if (pending_count > 0 && due[pending_first] < wake) {
            wake = due[pending_first];
        }
        long long wait = wake - now_ms();
        int ready = poll(polls, 2, wait > 0 ? (int)wait : 0);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            say("error: poll: %s\n", strerror(errno));
            return 3;
        }

        if (polls[0].revents != 0) {
            ssize_t n = recv(predecessor, buffer + held, sizeof buffer - held, MSG_DONTWAIT);
            if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
                continue;
            }
            if (n <= 0) {
                say("error: predecessor connection %s (hops %llu last %llu)\n", n == 0 ? "closed by the peer" : strerror(errno),
                    (unsigned long long)hops, (unsigned long long)last);
                return 3;
            }
            held += (size_t)n;
            size_t used = 0;
            for (; held - used >= 8; used += 8) {
                uint64_t token = get_token(buffer + used);
                int first = hops == 0;
                if ((first && start && token != (uint64_t)members) || (!first && token != last + (uint64_t)members)) {
                    say("error: expected %llu got %llu\n", (unsigned long long)(first ? (uint64_t)members : last + (uint64_t)members),
                        (unsigned long long)token);
                    return 2;
                }
                long long arrived = now_ms();
                if (!first && arrived - last_arrival > max_gap) {
                    max_gap = arrived - last_arrival;
                }
                last_arrival = arrived;
                hops++;
                last = token;
                if (pending_count == PENDING_SLOTS) {
                    say("error: %d tokens waiting to be passed on: more than one token circles (last %llu)\n", PENDING_SLOTS,
                        (unsigned long long)token);
                    return 2;
                }
                int slot = (pending_first + pending_count) % PENDING_SLOTS;
                pending[slot] = token + 1;
                due[slot] = arrived + interval_ms;
                pending_count++;
            }
            memmove(buffer, buffer + used, held - used);
            held -= used;
        }

        if (polls[1].revents != 0) {
            /* the successor never sends: readable means closed, reset, or a broken peer */
            unsigned char stray;
            ssize_t n = recv(successor, &stray, 1, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
                say("error: successor connection %s (hops %llu last %llu)\n", n == 0 ? "closed by the peer" : strerror(errno),
                    (unsigned long long)hops, (unsigned long long)last);
                return 3;
            }
            if (n > 0) {
                say("error: successor connection sent data, which a successor never does (hops %llu last %llu)\n",
                    (unsigned long long)hops, (unsigned long long)last);
                return 3;
            }
        }
    }
}
