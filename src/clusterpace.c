/*
 * clusterpace.c — an account's pace across the cluster in the default
 * topic mode (per_integration).  Intake messages are keyed by the account,
 * so within one topic one partition holds an account's events and one node
 * paces it.  But two integrations on one account are two topics, whose
 * partitions may land on two nodes, each pacing alone: up to twice the
 * vendor's limit.  Rerouting their events into one topic would break the
 * `delivery-{integration_id}` topology that other writers (Signal's Event
 * Processor) produce to, and a shared pace would need a round trip to
 * other nodes per request; so each node paces such an account at its share
 * instead: an account shared by m integrations (m topics, so at most m
 * nodes deliver it at once) is paced at 1/m of its limit (whole requests
 * per second; see bp_pool_set_shares), unless this node holds every
 * partition of those m topics, when it is the only one and paces it whole.
 * Every node knows m (the configuration is shared); its own assignment
 * says the rest.  Recomputed by the consumer thread after each rebalance,
 * subscription change and every few seconds (an update may move an
 * integration to another account).  per_vendor mode needs none of this:
 * one topic per vendor, one partition per account.
 */
#include "cluster.h"

#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

/* One integration's account and delivery topic. */
typedef struct pace_item { char account[600]; char topic[256]; } pace_item;
typedef struct pace_items { pace_item *v; size_t n, cap; } pace_items;

/* (the registry's lock held) */
static void add_item(void *ctx, bp_integration *it)
{
    pace_items *l = ctx;
    const bp_shared_bp *sbp = it->vendor->bp;
    if (it->deleted || !sbp || !it->cfg) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 32;
        l->v = bp_realloc(l->v, l->cap * sizeof *l->v);
    }
    pace_item *x = &l->v[l->n++];
    bp_account_key(sbp->bp, it->cfg, it->id, x->account, sizeof x->account);
    cluster_topic_name(x->topic, sizeof x->topic, "delivery-", it->id);
}

static int by_account(const void *a, const void *b)
{
    return strcmp(((const pace_item *)a)->account, ((const pace_item *)b)->account);
}

/* Partitions of topic this node holds, from the slots assigned. */
static int held(bp_cluster *c, const char *topic)
{
    int n = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = cluster_slot_at(c, c->assigned[k]);
        if (s && !strcmp(s->topic, topic)) n++;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* How many partitions topic has, from the consumer's metadata (-1: unknown). */
static int partitions_of(const struct rd_kafka_metadata *md, const char *topic)
{
    for (int i = 0; md && i < md->topic_cnt; i++)
        if (!strcmp(md->topics[i].topic, topic)) return md->topics[i].err ? -1 : md->topics[i].partition_cnt;
    return -1;
}

/* Does this node hold every partition of the topics of items[from, to)? */
static int holds_all(bp_cluster *c, const struct rd_kafka_metadata *md, const pace_item *items, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        int parts = partitions_of(md, items[i].topic);
        if (parts <= 0 || held(c, items[i].topic) < parts) return 0;
    }
    return 1;
}

void cluster_share_paces(bp_cluster *c)
{
    bp_pool *pool = bp_registry_pool(c->reg);
    if (c->per_vendor || !pool) return;
    pace_items l = { NULL, 0, 0 };
    bp_registry_each(c->reg, add_item, &l);
    if (l.n) qsort(l.v, l.n, sizeof *l.v, by_account);
    const struct rd_kafka_metadata *md = NULL;
    char **keys = bp_calloc(l.n + 1, sizeof *keys);
    int *div = bp_calloc(l.n + 1, sizeof *div);
    size_t n = 0;
    for (size_t i = 0, j; i < l.n; i = j) {
        for (j = i + 1; j < l.n && !strcmp(l.v[j].account, l.v[i].account); j++) {}
        if (j - i < 2) continue;
        /* the subscribed topics' metadata, once, when an account is shared */
        if (!md && rd_kafka_metadata(c->consumer, 0, NULL, &md, 2000) != RD_KAFKA_RESP_ERR_NO_ERROR) md = NULL;
        if (holds_all(c, md, l.v, i, j)) continue;
        keys[n] = l.v[i].account;
        div[n++] = (int)(j - i);
    }
    bp_pool_set_shares(pool, keys, div, n);
    if (md) rd_kafka_metadata_destroy(md);
    free(keys);
    free(div);
    free(l.v);
}
