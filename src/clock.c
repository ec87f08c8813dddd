/*
 * clock.c — the two clocks the core uses: monotonic for budgets and
 * durations (never jumps), wall-clock for times stored across runs.
 */
#include "internal.h"

#include <time.h>

static double ms_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double bp_monotonic_ms(void) { return ms_of(CLOCK_MONOTONIC); }

double bp_wall_ms(void) { return ms_of(CLOCK_REALTIME); }
