/*
 * podmig lazywait: preloaded (LD_PRELOAD) into CRIU's lazy-pages daemon, and into nothing else.
 *
 * Once a lazy restore is over, CRIU 4.1's lazy-pages daemon (criu/uffd.c, handle_requests) polls
 * its descriptors with epoll_wait(..., timeout 0) in a loop while it waits for the page server to
 * answer a request: it spins on a whole core for as long as the pages take to come. Run at normal
 * priority that takes a core from the processes that bring the pages; run at the lowest, the
 * restored process's page faults wait behind every other process for the daemon to notice them.
 *
 * This turns the spinning into sleeping: a zero-timeout epoll_wait on a descriptor whose previous
 * zero-timeout wait found nothing ready waits up to WAIT_MS instead, and returns at once when a
 * descriptor becomes ready (a page fault on the userfaultfd, the page server's answer). The first
 * empty poll after activity still returns at once, so the daemon's own loop (which starts its next
 * background transfer on such a poll) is never delayed. Nothing else changes.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#define WAIT_MS 5

/* The system call itself (epoll_pwait with no signal mask, which every architecture has), so that
 * the library needs nothing of the C library but syscall(): it loads into a CRIU built against any glibc. */
static int wait_for(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	return (int)syscall(SYS_epoll_pwait, epfd, events, maxevents, timeout, NULL, (size_t)8);
}

static int idle_fd = -1; /* the descriptor whose last zero-timeout wait found nothing ready */

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
	int polling = timeout == 0;
	int ready = wait_for(epfd, events, maxevents, polling && epfd == idle_fd ? WAIT_MS : timeout);
	idle_fd = polling && ready == 0 ? epfd : -1;
	return ready;
}
