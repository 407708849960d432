/*
 * memcounter: the test workload for checkpoint/restore.
 *
 * Holds a buffer of known content (every 64-bit word derived from a seed), keeps a running
 * checksum of it, optionally rewrites a share of its pages every second, and prints one line per
 * tick:
 *
 *   tick=<n> pid=<ns pid> ppid=<ns ppid> mib=<size> checksum=<hex> verified=<ok|BAD|-> dirtied=<pages>
 *
 * After a restore the tick continues from where it was frozen and a full re-scan of the buffer
 * must still match the running checksum (printed as verified=ok on the first tick after start and
 * every --verify-every ticks, on the first tick after a pause of several intervals, which is
 * what a freeze or a checkpoint looks like from inside, and whenever the file named by
 * --verify-file exists, which it then removes). With --verify-on-resume 0 it does not verify after
 * a pause: a benchmark that times the pause then asks for the check through --verify-file once
 * the move is over, so that no full read of the buffer is under way when the freeze comes (a read
 * that a lazy restore would finish one fault at a time). Built static so it runs in a bare busybox
 * root file system.
 *
 * With --log-file PATH (up to 4 times) it opens each file once and writes the tick line to it
 * every tick through that one descriptor, never reopening it: after a restore the lines must
 * continue in order, which shows the open file and its offset came back.
 *
 * With --connect-unix PATH it connects a stream socket to PATH at start and holds it (a process
 * talking to a daemon outside its pod).
 *
 * With --children N it forks N children once its buffer is filled, as a pre-forking server does:
 * each shares the buffer with it copy-on-write, rewrites none of it, and prints the same tick lines
 * prefixed with "child " (verifying its own copy as the parent does). A child that ends makes the
 * parent print why and exit 1; a child ends with its parent (PR_SET_PDEATHSIG).
 *
 * With --fork-verify-on-resume 1, a tick that checks the buffer after a resume (--verify-on-resume 1) or on request
 * also forks a child that checks the whole buffer as it then is, discards (MADV_DONTNEED) a page range of its copy and checks that it
 * reads zeros there, then exits; the tick's verified= is ok only when the child's checks passed too.
 * After a lazy restore this runs while the memory still fills: the child's memory fills as well.
 *
 * The word at index i of page generation g is mix(seed ^ (g << 48) ^ i); the checksum is the sum
 * over all words of word * (2 * index + 1), modulo 2^64. Both are reproduced by the C# tests.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAGE_WORDS (4096 / 8)

static uint64_t mix(uint64_t x)
{
	/* splitmix64 finaliser */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t word_value(uint64_t seed, uint64_t generation, uint64_t index)
{
	return mix(seed ^ (generation << 48) ^ index);
}

static uint64_t page_contribution(const uint64_t *words, uint64_t first_index)
{
	uint64_t sum = 0;
	for (uint64_t i = 0; i < PAGE_WORDS; i++)
		sum += words[i] * (2 * (first_index + i) + 1);
	return sum;
}

static void fill_page(uint64_t *words, uint64_t seed, uint64_t generation, uint64_t first_index)
{
	for (uint64_t i = 0; i < PAGE_WORDS; i++)
		words[i] = word_value(seed, generation, first_index + i);
}

static volatile sig_atomic_t stop_requested;
static void on_term(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: memcounter [--mib N] [--seed S] [--dirty-percent-per-second P]\n"
			"                  [--interval-ms MS] [--verify-every N] [--verify-on-resume 0|1] [--verify-file PATH] [--log-file PATH]... [--connect-unix PATH] [--ticks N]\n"
			"                  [--children N] [--fork-verify-on-resume 0|1]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t mib = 16, seed = 42, verify_every = 50, max_ticks = 0, children = 0, verify_on_resume = 1, fork_verify = 0;
	double dirty_pct = 0.0;
	long interval_ms = 100;
	const char *verify_file = "/verify-now";
	const char *connect_path = NULL;
	const char *log_paths[4];
	int log_count = 0;

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *name = argv[i], *value = argv[++i];
		if (!strcmp(name, "--mib"))
			mib = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--seed"))
			seed = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--dirty-percent-per-second"))
			dirty_pct = strtod(value, NULL);
		else if (!strcmp(name, "--interval-ms"))
			interval_ms = strtol(value, NULL, 10);
		else if (!strcmp(name, "--verify-every"))
			verify_every = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--verify-on-resume"))
			verify_on_resume = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--verify-file"))
			verify_file = value;
		else if (!strcmp(name, "--log-file") && log_count < 4)
			log_paths[log_count++] = value;
		else if (!strcmp(name, "--connect-unix"))
			connect_path = value;
		else if (!strcmp(name, "--ticks"))
			max_ticks = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--children"))
			children = strtoull(value, NULL, 10);
		else if (!strcmp(name, "--fork-verify-on-resume"))
			fork_verify = strtoull(value, NULL, 10);
		else
			usage();
	}
	if (interval_ms <= 0 || mib == 0)
		usage();

	int log_fds[4];
	for (int i = 0; i < log_count; i++) {
		log_fds[i] = open(log_paths[i], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (log_fds[i] < 0) {
			fprintf(stderr, "memcounter: cannot open %s: %s\n", log_paths[i], strerror(errno));
			return 1;
		}
	}

	if (connect_path) {
		struct sockaddr_un address = { .sun_family = AF_UNIX };
		int sk = socket(AF_UNIX, SOCK_STREAM, 0);
		strncpy(address.sun_path, connect_path, sizeof(address.sun_path) - 1);
		if (sk < 0 || connect(sk, (struct sockaddr *)&address, sizeof(address)) < 0) {
			fprintf(stderr, "memcounter: cannot connect to %s: %s\n", connect_path, strerror(errno));
			return 1;
		}
	}

	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	setvbuf(stdout, NULL, _IOLBF, 0);

	uint64_t pages = mib * 256;
	uint64_t *buf = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		fprintf(stderr, "memcounter: mmap of %llu MiB failed: %s\n", (unsigned long long)mib, strerror(errno));
		return 1;
	}
	/* one byte per page: the generation of each page (wraps at 256, harmless for the checksum) */
	uint8_t *generation = calloc(pages, 1);
	if (!generation)
		return 1;

	uint64_t checksum = 0;
	for (uint64_t p = 0; p < pages; p++) {
		fill_page(buf + p * PAGE_WORDS, seed, 0, p * PAGE_WORDS);
		checksum += page_contribution(buf + p * PAGE_WORDS, p * PAGE_WORDS);
	}

	/* a child: shares the buffer copy-on-write, writes none of it, says what it is on every line */
	const char *prefix = "";
	pid_t parent = getpid();
	for (uint64_t c = 0; c < children; c++) {
		pid_t child = fork();
		if (child < 0) {
			fprintf(stderr, "memcounter: fork failed: %s\n", strerror(errno));
			return 1;
		}
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if (getppid() != parent)
				return 0;
			prefix = "child ";
			dirty_pct = 0.0;
			log_count = 0;
			children = 0;
			break;
		}
	}

	double dirty_per_tick = (double)pages * dirty_pct / 100.0 * (double)interval_ms / 1000.0;
	double dirty_carry = 0.0;
	uint64_t next_page = 0, tick = 0, dirtied_total = 0;
	struct timespec delay = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
	struct timespec last = { 0, 0 };

	while (!stop_requested) {
		tick++;

		dirty_carry += dirty_per_tick;
		uint64_t to_dirty = (uint64_t)dirty_carry;
		dirty_carry -= (double)to_dirty;
		for (uint64_t k = 0; k < to_dirty; k++) {
			uint64_t p = next_page;
			next_page = (next_page + 7919) % pages; /* a prime stride spreads the writes */
			uint64_t *page = buf + p * PAGE_WORDS;
			checksum -= page_contribution(page, p * PAGE_WORDS);
			generation[p]++;
			fill_page(page, seed, generation[p], p * PAGE_WORDS);
			checksum += page_contribution(page, p * PAGE_WORDS);
		}
		dirtied_total += to_dirty;

		/* A gap of several intervals means the process was frozen or checkpointed and restored:
		 * re-scan the whole buffer on the first tick after it. */
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		long gap_ms = (now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000;
		int resumed = tick > 1 && gap_ms > 4 * interval_ms + 200;
		last = now;

		int requested = access(verify_file, F_OK) == 0;
		if (requested)
			unlink(verify_file);

		const char *verified = "-";
		if (tick == 1 || (resumed && verify_on_resume) || requested || (verify_every && tick % verify_every == 0)) {
			uint64_t full = 0;
			for (uint64_t p = 0; p < pages; p++)
				full += page_contribution(buf + p * PAGE_WORDS, p * PAGE_WORDS);
			verified = full == checksum ? "ok" : "BAD";
		}

		/* a check like the one above: on a resume only where checks on resume are asked for */
		if (((resumed && verify_on_resume) || requested) && fork_verify && pages > 32) {
			pid_t checker = fork();
			if (checker == 0) {
				uint64_t full = 0;
				for (uint64_t p = 0; p < pages; p++)
					full += page_contribution(buf + p * PAGE_WORDS, p * PAGE_WORDS);
				/* the last 16 pages discarded: private anonymous memory reads zeros afterwards */
				uint64_t *tail = buf + (pages - 16) * PAGE_WORDS;
				int zeros = madvise(tail, 16 * PAGE_WORDS * sizeof(uint64_t), MADV_DONTNEED) == 0;
				for (uint64_t w = 0; zeros && w < 16 * PAGE_WORDS; w++)
					zeros = tail[w] == 0;
				_exit(full == checksum && zeros ? 0 : 3);
			}
			int checker_status = 0;
			if (checker < 0 || waitpid(checker, &checker_status, 0) != checker || !WIFEXITED(checker_status) || WEXITSTATUS(checker_status) != 0)
				verified = "BAD";
		}

		/* at=: when this tick began (before any verification), in microseconds since the epoch:
		 * the longest gap between two ticks is the pause the process itself saw */
		char line[256];
		int length = snprintf(line, sizeof(line), "%stick=%llu pid=%d ppid=%d mib=%llu checksum=%016llx verified=%s dirtied=%llu at=%lld\n",
				      prefix, (unsigned long long)tick, (int)getpid(), (int)getppid(), (unsigned long long)mib,
				      (unsigned long long)checksum, verified, (unsigned long long)dirtied_total,
				      (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000);
		fputs(line, stdout);
		for (int i = 0; i < log_count; i++) {
			if (write(log_fds[i], line, (size_t)length) != length)
				fprintf(stderr, "memcounter: short write to %s\n", log_paths[i]);
		}

		if (children) {
			int child_status;
			pid_t ended = waitpid(-1, &child_status, WNOHANG);
			if (ended > 0) {
				printf("memcounter: child %d ended (%s %d)\n", (int)ended, WIFSIGNALED(child_status) ? "signal" : "exit",
				       WIFSIGNALED(child_status) ? WTERMSIG(child_status) : WEXITSTATUS(child_status));
				return 1;
			}
		}

		if (max_ticks && tick >= max_ticks)
			break;
		nanosleep(&delay, NULL);
	}
	return 0;
}
