/*
 * clusterslots.c — this node's leases on partitions.  A slot names one
 * ownership of one partition by this process (a rebalance that gives the
 * partition back and takes it again makes a new slot), so an event stored
 * under a slot is delivered only while the slot is owned: the delivery
 * loops ask through the lease (bp_lease), the consumer takes and gives
 * slots up, and a give-up waits for the slot's requests in flight.
 * Slots live in fixed chunks that never move: a slot pointer stays valid.
 */
#include "cluster.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- slots: this node's leases on partitions ------------------------------------------------- */

slot *cluster_slot_at(bp_cluster *c, int64_t id)
{
    int64_t i = id - c->epoch_base;
    if (i < 1 || i > atomic_load_explicit(&c->nslots, memory_order_acquire)) return NULL;
    slot *chunk = atomic_load_explicit(&c->chunks[(i - 1) / SLOT_CHUNK], memory_order_acquire);
    return chunk ? &chunk[(i - 1) % SLOT_CHUNK] : NULL;
}

/* A new lease (consumer thread). */
int64_t cluster_slot_new(bp_cluster *c, const char *topic, int partition)
{
    pthread_mutex_lock(&c->mu);
    int64_t i = c->nslots + 1;
    if ((i - 1) / SLOT_CHUNK >= SLOT_CHUNKS) abort();   /* 16M rebalances of one process */
    slot *_Atomic *chunk = &c->chunks[(i - 1) / SLOT_CHUNK];
    if (!*chunk) {
        slot *fresh = bp_calloc(SLOT_CHUNK, sizeof **chunk);
        atomic_store_explicit(chunk, fresh, memory_order_release);
    }
    slot *s = &(*chunk)[(i - 1) % SLOT_CHUNK];
    s->topic = bp_strdup(topic);
    s->partition = partition;
    s->next_offset = -1;
    s->committed = -1;
    atomic_store_explicit(&s->owned, 1, memory_order_release);
    atomic_store_explicit(&c->nslots, i, memory_order_release);
    if (c->nassigned == c->capassigned) {
        c->capassigned = c->capassigned ? c->capassigned * 2 : 64;
        c->assigned = bp_realloc(c->assigned, c->capassigned * sizeof *c->assigned);
    }
    c->assigned[c->nassigned++] = c->epoch_base + i;
    pthread_mutex_unlock(&c->mu);
    return c->epoch_base + i;
}

/* The owned slot of topic/partition, 0 if none (consumer thread, or mu held). */
int64_t cluster_slot_find_locked(bp_cluster *c, const char *topic, int partition)
{
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = cluster_slot_at(c, c->assigned[k]);
        if (s && s->partition == partition && !strcmp(s->topic, topic)) return c->assigned[k];
    }
    return 0;
}

int64_t cluster_slot_find(bp_cluster *c, const char *topic, int partition)
{
    pthread_mutex_lock(&c->mu);
    int64_t id = cluster_slot_find_locked(c, topic, partition);
    pthread_mutex_unlock(&c->mu);
    return id;
}

int cluster_lease_holds(void *ctx, int64_t id)
{
    slot *s = cluster_slot_at(ctx, id);
    return s && atomic_load_explicit(&s->owned, memory_order_acquire);
}

void cluster_lease_sending(void *ctx, int64_t id, int delta)
{
    slot *s = cluster_slot_at(ctx, id);
    if (s) atomic_fetch_add_explicit(&s->inflight, delta, memory_order_acq_rel);
}

void cluster_lease(bp_cluster *c, bp_lease *out)
{
    out->holds = cluster_lease_holds;
    out->sending = cluster_lease_sending;
    out->ctx = c;
}

void cluster_free_slots(bp_cluster *c)
{
    for (int i = 0; i < SLOT_CHUNKS; i++) {
        slot *chunk = atomic_load_explicit(&c->chunks[i], memory_order_acquire);
        if (!chunk) break;
        for (int k = 0; k < SLOT_CHUNK; k++) free(chunk[k].topic);
        free(chunk);
    }
    free(c->assigned);
}
