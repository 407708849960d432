/*
 * Does a hardware breakpoint set through ptrace stop a traced process on this machine?
 *
 * CRIU (compel) stops a task leaving its parasite code with a hardware breakpoint on the
 * rt_sigreturn it is about to run (debug registers DR0/DR7 written with PTRACE_POKEUSER). Some
 * hypervisors accept those writes but never deliver the trap to a guest's user space (seen on a
 * PVM-based microVM with kernel 6.18): the task runs past the breakpoint and CRIU waits for a
 * stop that never comes, so every dump and restore hangs while `criu check` still says "Looks
 * good". hack/install-prereqs.sh runs this probe and, when it fails, makes the criu wrapper
 * select CRIU's per-syscall stepping instead of breakpoints.
 *
 * Exit status: 0 the breakpoint stopped the child; 1 it did not; 2 the probe itself failed.
 */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) static void breakpoint_here(void) { __asm__ volatile("nop"); }

int main(void)
{
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0) {
		ptrace(PTRACE_TRACEME, 0, 0, 0);
		raise(SIGSTOP);
		breakpoint_here();
		_exit(0);
	}

	int status;
	if (waitpid(child, &status, 0) != child || !WIFSTOPPED(status)) {
		fprintf(stderr, "hw-breakpoint: the child did not stop for tracing\n");
		return 2;
	}
	if (ptrace(PTRACE_POKEUSER, child, offsetof(struct user, u_debugreg[0]), (void *)breakpoint_here) != 0 ||
	    ptrace(PTRACE_POKEUSER, child, offsetof(struct user, u_debugreg[7]), (void *)1) != 0) {
		perror("hw-breakpoint: writing the debug registers");
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
		return 1;
	}
	ptrace(PTRACE_CONT, child, 0, 0);
	if (waitpid(child, &status, 0) != child) {
		perror("waitpid");
		return 2;
	}
	if (WIFSTOPPED(status) && WSTOPSIG(status) == SIGTRAP) {
		printf("hardware breakpoints work\n");
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
		return 0;
	}
	printf("hardware breakpoints do not stop a traced process (the child ran past it)\n");
	if (WIFSTOPPED(status)) {
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
	}
	return 1;
}
