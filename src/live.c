/*
 * live.c — Live Events' rings: the latest BP_LIVE_RING outcome lines of an
 * integration, kept only while a stream watches it (Live Events' list reads
 * the store, and 10,000 idle rings would cost ~300 MB).  The fields are the
 * integration's (live, live_seq, watchers) and the registry's lock guards
 * them: every function here is called by registry.c with that lock held.
 */
#include "service.h"

#include <stdlib.h>

int bp_live_push(bp_integration *it, const char *line, size_t len)
{
    if (it->watchers <= 0) return 0;
    if (!it->live) it->live = bp_calloc(BP_LIVE_RING, sizeof *it->live);
    size_t slot = (size_t)(it->live_seq % BP_LIVE_RING);
    free(it->live[slot]);
    it->live[slot] = bp_strndup(line, len);
    it->live_seq++;
    return 1;
}

uint64_t bp_live_watch(bp_integration *it)
{
    it->watchers++;
    return it->live_seq;
}

void bp_live_free(bp_integration *it)
{
    for (int i = 0; it->live && i < BP_LIVE_RING; i++) free(it->live[i]);
    free(it->live);
    it->live = NULL;
}

void bp_live_unwatch(bp_integration *it)
{
    if (--it->watchers == 0) bp_live_free(it);   /* the ring is for watchers only */
}

void bp_live_lines(bp_integration *it, uint64_t *next_seq, void (*fn)(void *ctx, const char *line), void *ctx)
{
    if (it->live_seq > *next_seq + BP_LIVE_RING) *next_seq = it->live_seq - BP_LIVE_RING;
    for (; *next_seq < it->live_seq; (*next_seq)++) fn(ctx, it->live ? it->live[*next_seq % BP_LIVE_RING] : NULL);
}
