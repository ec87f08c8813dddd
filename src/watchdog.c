/*
 * watchdog.c — catches runaway Lua calls without slowing the normal ones.
 *
 * Lua enforces a count hook by trapping into the hook code before every VM
 * instruction, which cost ~10% of mapping time for a check that almost never
 * finds anything (a mapping takes microseconds).  So calls run unhooked, and
 * a watchdog thread looks at the running calls every WATCH_TICK_MS.  A call
 * seen running at two consecutive looks (so for at least one tick) gets a
 * signal on the thread that runs it, and another at every later look while
 * it runs; the handler calls the sandbox's `arm`
 * function, which installs the budget hook and turns on the meters of the
 * C loops (metered.c), and from then on the sandbox's instruction and time
 * budgets apply, inside C calls too.  lua_sethook is made to be
 * called from a signal handler (lua.c does it for ^C), and the handler runs
 * on the very thread that runs the call, so nothing is shared with the VM
 * across threads.
 *
 * A sandbox that cannot get a slot (all WATCH_SLOTS in use, no real-time
 * signals, the signal already taken by someone else's handler, or the
 * watchdog turned off with bp_watchdog_config(0)) is told so and keeps its
 * hook on for every call.
 *
 * What the process sees: one handler (SA_ONSTACK, as cgo requires of every
 * handler), installed only over the default disposition, and one detached
 * thread that blocks every signal in its own mask so that no signal meant
 * for the embedder's threads lands on it.  No caller's mask is touched.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WATCH_SLOTS 256
#define WATCH_TICK_MS 10

typedef struct watch_slot {
    bp_watch_arm_fn arm;                 /* NULL: slot free */
    _Atomic(lua_State *) running;        /* the state of the call in progress, or NULL */
    atomic_uint seq;                     /* bumped by each call */
    _Atomic pthread_t thread;            /* the thread running the call */
    unsigned seen_seq;                   /* watchdog thread only: seq at the previous look */
    int seen_running;
} watch_slot;

static watch_slot slots[WATCH_SLOTS];
static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond = PTHREAD_COND_INITIALIZER;
static int slots_used;
static int watch_started, watch_broken;
static int watch_signo = -1;           /* -1: the default, SIGRTMIN+2; 0: no watchdog */

/* Called with watch_mu held. */
static int watch_signal(void) { return watch_signo < 0 ? SIGRTMIN + 2 : watch_signo; }

int bp_watchdog_config(int signo, bp_error *err)
{
    if (err) err->msg[0] = '\0';
    if (signo < 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP) {
        bp_error_set(err, "watchdog: %d is not a signal a handler can take (0 for none, default SIGRTMIN+2 = %d)",
                     signo, SIGRTMIN + 2);
        return -1;
    }
    int rc = 0;
    pthread_mutex_lock(&watch_mu);
    if (watch_started && signo != watch_signal()) {
        bp_error_set(err, "watchdog: already running with signal %d; choose the signal before the first engine",
                     watch_signal());
        rc = -1;
    } else if (!watch_started) {
        watch_signo = signo;
        watch_broken = 0;
    }
    pthread_mutex_unlock(&watch_mu);
    return rc;
}

int bp_watchdog_signal(void)
{
    pthread_mutex_lock(&watch_mu);
    int signo = watch_signal();
    pthread_mutex_unlock(&watch_mu);
    return signo;
}

/* Runs on the thread the signal was sent to, the one running the call. */
static void on_watch_signal(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    (void)uctx;
    int saved_errno = errno;
    int i = si->si_value.sival_int;
    if (i >= 0 && i < WATCH_SLOTS) {
        watch_slot *s = &slots[i];
        lua_State *L = atomic_load(&s->running);
        bp_watch_arm_fn arm = s->arm;
        if (L && arm && pthread_equal(atomic_load(&s->thread), pthread_self())) arm(L);
    }
    errno = saved_errno;
}

static void *watch_thread(void *unused)
{
    (void)unused;
    /* This thread is the library's own and never runs Lua: it takes no
     * signal at all, so that signals the process (or the embedder) means
     * for its threads are never delivered here. */
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct timespec tick = { 0, WATCH_TICK_MS * 1000000L };
    pthread_mutex_lock(&watch_mu);
    int signo = watch_signal();   /* fixed once started */
    for (;;) {
        while (slots_used == 0) pthread_cond_wait(&watch_cond, &watch_mu);
        pthread_mutex_unlock(&watch_mu);
        nanosleep(&tick, NULL);
        pthread_mutex_lock(&watch_mu);
        for (int i = 0; i < WATCH_SLOTS; i++) {
            watch_slot *s = &slots[i];
            if (!s->arm) continue;
            int running = atomic_load(&s->running) != NULL;
            unsigned seq = atomic_load(&s->seq);
            /* again at every look while it runs: each signal sets the hook
             * to the next instruction, so a run of slow operators after
             * cheap code (which let the hook's interval grow back to a
             * thousand) is seen within a tick */
            if (running && s->seen_running && seq == s->seen_seq) {
                union sigval v = { .sival_int = i };
                pthread_sigqueue(atomic_load(&s->thread), signo, v);
            }
            s->seen_running = running;
            s->seen_seq = seq;
        }
    }
    return NULL;
}

/* Called with watch_mu held. */
static int watch_start(void)
{
    if (watch_started) return 0;
    if (watch_broken || watch_signo == 0) return -1;
    int signo = watch_signal();
    /* Never replace a handler the embedder (or a runtime such as Go's) has
     * installed: without the signal the budget hook is simply on for every
     * call. */
    struct sigaction old;
    if (sigaction(signo, NULL, &old) != 0 ||
        (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL) ||
        ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction != on_watch_signal)) {
        watch_broken = 1;
        char f[160];
        snprintf(f, sizeof f, "\"signal\":%d", signo);
        bp_log("warn", "watchdog: the signal has a handler already; budgets are checked on every call instead "
                       "(choose another with bp_watchdog_config)", f);
        return -1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_watch_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    pthread_t t;
    if (sigaction(signo, &sa, NULL) != 0) {
        watch_broken = 1;
        return -1;
    }
    if (pthread_create(&t, NULL, watch_thread, NULL) != 0) {
        sigaction(signo, &old, NULL);
        watch_broken = 1;
        return -1;
    }
    pthread_detach(t);
    watch_started = 1;
    return 0;
}

int bp_watch_add(bp_watch_arm_fn arm)
{
    int slot = -1;
    pthread_mutex_lock(&watch_mu);
    if (watch_start() == 0)
        for (int i = 0; i < WATCH_SLOTS && slot < 0; i++)
            if (!slots[i].arm) {
                slot = i;
                atomic_store(&slots[i].running, NULL);
                slots[i].seen_running = 0;
                slots[i].arm = arm;
                slots_used++;
                pthread_cond_signal(&watch_cond);
            }
    pthread_mutex_unlock(&watch_mu);
    return slot;
}

void bp_watch_remove(int slot)
{
    if (slot < 0) return;
    pthread_mutex_lock(&watch_mu);
    atomic_store(&slots[slot].running, NULL);
    slots[slot].arm = NULL;
    slots_used--;
    pthread_mutex_unlock(&watch_mu);
}

void bp_watch_begin(int slot, lua_State *L)
{
    watch_slot *s = &slots[slot];
    atomic_store_explicit(&s->thread, pthread_self(), memory_order_relaxed);
    atomic_fetch_add_explicit(&s->seq, 1, memory_order_relaxed);
    atomic_store_explicit(&s->running, L, memory_order_release);
}

void bp_watch_end(int slot)
{
    /* After this store a late signal finds nothing to arm; the caller then
     * removes any hook that was armed before it. */
    atomic_store_explicit(&slots[slot].running, NULL, memory_order_release);
    atomic_signal_fence(memory_order_seq_cst);
}
