/*
 * clusterpace.c — cluster mode, `--topic-mode per_integration`: the part of
 * a shared account's rate limit this node may use.
 *
 * Events are keyed by their account, so one integration's events of one
 * account sit in one partition of its delivery topic and are paced by the
 * node that owns it.  Two integrations on the same account (the same
 * ActiveCampaign api_url) are two topics: their partitions can be owned
 * by two nodes, which would each pace the account at its full limit.  So
 * each node paces such an account at m/k of its limit, where k is the
 * number of integrations on the account (every node knows them all: the
 * configuration topic) and m the number of them whose partition for the
 * account this node owns.  The parts of all nodes add up to at most the
 * limit, whatever the assignment, with no message between nodes; the cost
 * is that an idle integration's part is not lent to a busy one on another
 * node (on one node, owning both, it is all of the limit).  A node owning
 * none still gets 1/k for an install's checks.
 *
 * Which partition holds a key is the producer's partitioner (librdkafka's
 * default, consistent_random, or `partitioner` in --kafka-config) applied
 * to the topic's partition count, read once per topic from the brokers.
 * With a partitioner that ignores keys (random) an account is in every
 * partition: each node then takes 1/k.  per_vendor mode needs none of
 * this: one topic, one partition per account.
 */
#include "cluster.h"

#include <stdlib.h>
#include <string.h>

typedef int32_t partitioner_fn(const rd_kafka_topic_t *, const void *, size_t, int32_t, void *, void *);

typedef struct topic_parts { char *topic; int parts; } topic_parts;

/* A shared account's part as last computed: m of its k partitions here. */
typedef struct part { char *account; int m, k; } part;

struct cluster_paces {
    topic_parts *known;          /* partition counts read so far */
    size_t nknown, capknown;
    part *parts;                 /* the shared accounts, sorted, as last told */
    size_t nparts;
    double last_ms;
};

/* One integration's account and topic, gathered under the registry's lock. */
typedef struct route { char account[600]; char topic[256]; } route;
typedef struct routes { bp_cluster *c; route *v; size_t n, cap; } routes;

static void add_route(void *ctx, bp_integration *it)
{
    routes *rs = ctx;
    const bp_shared_bp *sbp = it->vendor->bp;
    if (!sbp || !it->cfg || it->deleted) return;
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? 2 * rs->cap : 64;
        rs->v = bp_realloc(rs->v, rs->cap * sizeof *rs->v);
    }
    route *r = &rs->v[rs->n++];
    bp_account_key(sbp->bp, it->cfg, it->id, r->account, sizeof r->account);
    cluster_topic_name(r->topic, sizeof r->topic, "delivery-", it->id);
}

static int by_account(const void *a, const void *b) { return strcmp(((const route *)a)->account, ((const route *)b)->account); }

static partitioner_fn *partitioner(const bp_cluster *c)
{
    const char *name = "consistent_random";
    for (size_t i = 0; i < c->nsettings; i++) if (!strcmp(c->settings[i].key, "partitioner")) name = c->settings[i].value;
    if (!strcmp(name, "consistent_random")) return rd_kafka_msg_partitioner_consistent_random;
    if (!strcmp(name, "consistent")) return rd_kafka_msg_partitioner_consistent;
    if (!strcmp(name, "murmur2_random")) return rd_kafka_msg_partitioner_murmur2_random;
    if (!strcmp(name, "murmur2")) return rd_kafka_msg_partitioner_murmur2;
    if (!strcmp(name, "fnv1a_random")) return rd_kafka_msg_partitioner_fnv1a_random;
    if (!strcmp(name, "fnv1a")) return rd_kafka_msg_partitioner_fnv1a;
    return NULL;   /* random: a key says nothing of its partition */
}

/* The topic's partition count (0: not known yet; asked again next time). */
static int partitions_of(bp_cluster *c, struct cluster_paces *ps, const char *topic)
{
    for (size_t i = 0; i < ps->nknown; i++) if (!strcmp(ps->known[i].topic, topic)) return ps->known[i].parts;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->consumer, topic, NULL);
    if (!rkt) return 0;
    const struct rd_kafka_metadata *md = NULL;
    int parts = 0;
    if (!rd_kafka_metadata(c->consumer, 0, rkt, &md, 2000) && md->topic_cnt == 1 && !md->topics[0].err)
        parts = md->topics[0].partition_cnt;
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    if (parts <= 0) return 0;
    if (ps->nknown == ps->capknown) {
        ps->capknown = ps->capknown ? 2 * ps->capknown : 16;
        ps->known = bp_realloc(ps->known, ps->capknown * sizeof *ps->known);
    }
    ps->known[ps->nknown++] = (topic_parts){ bp_strdup(topic), parts };
    return parts;
}

/* Does this node own the partition that holds `account` in r's topic? */
static int owns(bp_cluster *c, struct cluster_paces *ps, partitioner_fn *pick, const route *r)
{
    if (!pick) return 0;
    int parts = partitions_of(c, ps, r->topic);
    if (!parts) return 0;
    int32_t p = pick(NULL, r->account, strlen(r->account), parts, NULL, NULL);
    return cluster_slot_find(c, r->topic, p) != 0;
}

static void free_parts(struct cluster_paces *ps)
{
    for (size_t i = 0; i < ps->nparts; i++) free(ps->parts[i].account);
    free(ps->parts);
    ps->parts = NULL;
    ps->nparts = 0;
}

/* Say which shared accounts' parts changed (an operator reading a slow
 * drain sees why), then keep the new list. */
static void note_parts(struct cluster_paces *ps, part *now, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < ps->nparts && strcmp(ps->parts[j].account, now[i].account)) j++;
        if (j < ps->nparts && ps->parts[j].m == now[i].m && ps->parts[j].k == now[i].k) continue;
        char detail[700];
        snprintf(detail, sizeof detail, "%s: %d of its %d integrations' partitions here, %d/%d of its limit",
                 now[i].account, now[i].m, now[i].k, now[i].m ? now[i].m : 1, now[i].k);
        cluster_log_kafka("info", "kafka: an account shared by integrations is paced in part by this node", NULL, -1, detail);
    }
    free_parts(ps);
    ps->parts = now;
    ps->nparts = n;
}

void cluster_share_paces(bp_cluster *c, int now)
{
    bp_pool *pool = bp_registry_pool(c->reg);
    if (c->per_vendor || !pool) return;
    if (!c->paces) c->paces = bp_calloc(1, sizeof *c->paces);
    struct cluster_paces *ps = c->paces;
    double t = bp_monotonic_ms();
    if (!now && t - ps->last_ms < 5000) return;   /* a changed api_url is seen within 5 s */
    ps->last_ms = t;
    routes rs = { c, NULL, 0, 0 };
    bp_registry_each(c->reg, add_route, &rs);
    if (rs.n) qsort(rs.v, rs.n, sizeof *rs.v, by_account);
    partitioner_fn *pick = partitioner(c);
    const char **keys = bp_calloc(rs.n + 1, sizeof *keys);
    double *shares = bp_calloc(rs.n + 1, sizeof *shares);
    part *parts = bp_calloc(rs.n + 1, sizeof *parts);
    size_t n = 0;
    for (size_t i = 0, j; i < rs.n; i = j) {
        int k = 0, m = 0;
        for (j = i; j < rs.n && !strcmp(rs.v[j].account, rs.v[i].account); j++) {
            k++;
            m += owns(c, ps, pick, &rs.v[j]);
        }
        if (k < 2) continue;   /* one integration: one partition, one node */
        keys[n] = rs.v[i].account;
        parts[n] = (part){ bp_strdup(rs.v[i].account), m, k };
        shares[n++] = (double)(m ? m : 1) / k;
    }
    bp_pool_set_shares(pool, keys, shares, n);
    note_parts(ps, parts, n);
    free(keys);
    free(shares);
    free(rs.v);
}

void cluster_free_paces(bp_cluster *c)
{
    struct cluster_paces *ps = c->paces;
    if (!ps) return;
    for (size_t i = 0; i < ps->nknown; i++) free(ps->known[i].topic);
    free(ps->known);
    free_parts(ps);
    free(ps);
    c->paces = NULL;
}
