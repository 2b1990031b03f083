/*
 * frakpy-pause: the pod's namespace holder, started by the guest agent on demand.
 *
 * It creates a new PID and IPC namespace, forks, and prints the child's pid (as seen by the
 * agent) on stdout; the child is PID 1 of the new PID namespace and does nothing but reap the
 * orphans of containers that share the pod PID namespace. The parent exits right away, so the
 * holder is re-parented to the agent. Containers join it via /proc/<pid>/ns/{pid,ipc}.
 *
 * Build (static, no libc dependencies at run time):
 *     cc -Os -static -o /usr/lib/frakpy/pause guest-agent/pause.c && strip /usr/lib/frakpy/pause
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
    if (unshare(CLONE_NEWPID | CLONE_NEWIPC) != 0) {
        perror("frakpy-pause: unshare");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("frakpy-pause: fork");
        return 1;
    }
    if (pid > 0) {
        printf("%d\n", (int)pid);
        return fflush(stdout) == 0 ? 0 : 1;
    }

    /* the holder: PID 1 of the new namespace */
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
    }
    prctl(PR_SET_NAME, "frakpy-pause", 0, 0, 0);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}
