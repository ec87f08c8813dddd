/*
 * alloc.c — the one out-of-memory policy: fatal.
 *
 * The runtime cannot make progress without memory, and carrying NULL checks
 * through every encoder and every list would only move the failure somewhere
 * harder to read (Redis's zmalloc makes the same choice).  So C code
 * allocates through bp_malloc and friends, which never return NULL: on
 * failure they report "out of memory" without allocating and abort.  Lua's
 * memory is capped separately, per blueprint state (sandbox.c): a mapping
 * that asks for too much gets a Lua error, not this.
 *
 * This file sits below everything, log.c included: log.c tells it where the
 * report goes (the embedder's log callback) with bp_set_oom_report, so the
 * doors open one way (log -> alloc, never back).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic(bp_oom_report_fn) oom_report;

void bp_set_oom_report(bp_oom_report_fn fn) { atomic_store(&oom_report, fn); }

void bp_oom(void)
{
    bp_oom_report_fn report = atomic_load(&oom_report);
    if (!report || !report()) fputs("blueprint: out of memory\n", stderr);
    abort();
}

void *bp_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) bp_oom();
    return p;
}

void *bp_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) bp_oom();
    return p;
}

void *bp_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) bp_oom();
    return q;
}

char *bp_strdup(const char *s)
{
    return bp_memdup(s, strlen(s) + 1);
}

char *bp_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = bp_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void *bp_memdup(const void *src, size_t n)
{
    void *p = bp_malloc(n);
    if (n) memcpy(p, src, n);
    return p;
}
