/*
 * watchdog.c — catches runaway Lua calls without slowing the normal ones.
 *
 * Lua enforces a count hook by trapping into the hook code before every VM
 * instruction, which cost ~10% of mapping time for a check that almost never
 * finds anything (a mapping takes microseconds).  So calls run unhooked, and
 * a watchdog thread looks at the running calls every WATCH_TICK_MS.  A call
 * seen running at two consecutive looks (so for at least one tick) gets a
 * signal on the thread that runs it; the handler calls the sandbox's `arm`
 * function, which installs the count hook, and from then on the sandbox's
 * instruction and time budgets apply as before.  lua_sethook is made to be
 * called from a signal handler (lua.c does it for ^C), and the handler runs
 * on the very thread that runs the call, so nothing is shared with the VM
 * across threads.
 *
 * A sandbox that cannot get a slot (all WATCH_SLOTS in use, or no real-time
 * signals) is told so and keeps its hook on for every call.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
    unsigned signalled_seq;
} watch_slot;

static watch_slot slots[WATCH_SLOTS];
static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond = PTHREAD_COND_INITIALIZER;
static int slots_used;
static int watch_started, watch_broken;

static int watch_signal(void) { return SIGRTMIN + 2; }

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
    /* this thread never runs Lua: keep the signal away from it */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, watch_signal());
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct timespec tick = { 0, WATCH_TICK_MS * 1000000L };
    pthread_mutex_lock(&watch_mu);
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
            if (running && s->seen_running && seq == s->seen_seq && seq != s->signalled_seq) {
                union sigval v = { .sival_int = i };
                pthread_sigqueue(atomic_load(&s->thread), watch_signal(), v);
                s->signalled_seq = seq;
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
    if (watch_broken) return -1;
    struct sigaction sa;
    sa.sa_sigaction = on_watch_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    pthread_t t;
    if (sigaction(watch_signal(), &sa, NULL) != 0 || pthread_create(&t, NULL, watch_thread, NULL) != 0) {
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
