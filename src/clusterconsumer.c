/*
 * clusterconsumer.c — the consumer: the delivery topics, read in one
 * consumer group (cooperative-sticky).  What it reads is stored in this
 * node's events.db under the partition's slot and woken in the delivery
 * pool; offsets are committed at each partition's lowest unfinished event
 * once the outcomes before are acknowledged; a rebalance takes or gives
 * partitions up (cluster.c's header says how nothing is delivered twice).
 */
#include "cluster.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- subscribing: the delivery topics of the integrations there are ------------------------------- */

static int cmp_text(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct topic_list { bp_cluster *c; char **names; size_t n, cap; } topic_list;

/* An integration's delivery topic (the registry's lock held). */
static void add_topic(void *ctx, bp_integration *it)
{
    topic_list *l = ctx;
    char t[256];
    cluster_topic_name(t, sizeof t, "delivery-", l->c->per_vendor ? it->vendor->key : it->id);
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->names = bp_realloc(l->names, l->cap * sizeof *l->names);
    }
    l->names[l->n++] = bp_strdup(t);
}

/* Subscribe to the delivery topics of the integrations this cluster has
 * (never to every "delivery-" topic: Signal's own pipeline may share the
 * brokers), creating the new ones (consumer thread). */
static void resubscribe(bp_cluster *c)
{
    topic_list list = { c, NULL, 0, 0 };
    bp_registry_each(c->reg, add_topic, &list);
    char **names = list.names;
    size_t n = list.n;
    if (n) qsort(names, n, sizeof *names, cmp_text);   /* names is NULL when there are none */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) { if (m && !strcmp(names[m - 1], names[i])) free(names[i]); else names[m++] = names[i]; }
    n = m;
    int same = n == c->ntopics;
    for (size_t i = 0; same && i < n; i++) same = !strcmp(names[i], c->topics[i]);
    if (same) { for (size_t i = 0; i < n; i++) free(names[i]); free(names); return; }
    /* new ones get created (their first intake would otherwise auto-create
     * them, if the brokers allow it, with the brokers' defaults) */
    const char **fresh = bp_calloc(n + 1, sizeof *fresh);
    int nfresh = 0;
    for (size_t i = 0; i < n; i++)
        if (!c->ntopics || !bsearch(&names[i], c->topics, c->ntopics, sizeof *c->topics, cmp_text)) fresh[nfresh++] = names[i];
    if (nfresh && c->can_create) cluster_create_topics(c, fresh, nfresh, 0);
    free(fresh);
    rd_kafka_resp_err_t e;
    if (n) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
        for (size_t i = 0; i < n; i++) rd_kafka_topic_partition_list_add(l, names[i], RD_KAFKA_PARTITION_UA);
        e = rd_kafka_subscribe(c->consumer, l);
        rd_kafka_topic_partition_list_destroy(l);
    } else {
        e = rd_kafka_unsubscribe(c->consumer);
    }
    if (e) cluster_log_kafka("error", "kafka: cannot subscribe to the delivery topics", NULL, -1, rd_kafka_err2str(e));
    for (size_t i = 0; i < c->ntopics; i++) free(c->topics[i]);
    free(c->topics);
    c->topics = names;
    c->ntopics = n;
}

/* ---- offsets and rebalances ------------------------------------------------------------------- */

typedef struct progress { bp_cluster *c; int64_t *slots; int64_t *min; long *count; size_t n; } progress;

static void on_progress(void *ctx, int64_t slot_id, int64_t min_offset, long n)
{
    progress *p = ctx;
    for (size_t i = 0; i < p->n; i++)
        if (p->slots[i] == slot_id) { p->min[i] = min_offset; p->count[i] = n; }
}

static int outcomes_settled(bp_cluster *c, unsigned current)
{
    for (unsigned e = 0; e < EPOCHS; e++)
        if (e != current % EPOCHS && atomic_load_explicit(&c->outstanding[e], memory_order_acquire) > 0) return 0;
    return 1;
}

/* A failed commit (a rebalance in progress, the broker away): commit those
 * partitions again at the next round. */
static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    bp_cluster *c = opaque;
    if (!offsets) return;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < offsets->cnt; i++) {
        if (!err && !offsets->elems[i].err) continue;
        int64_t id = cluster_slot_find_locked(c, offsets->elems[i].topic, offsets->elems[i].partition);
        slot *s = id ? cluster_slot_at(c, id) : NULL;
        if (s && s->committed == offsets->elems[i].offset) s->committed = -1;
    }
    pthread_mutex_unlock(&c->mu);
}

/* Commit each partition's lowest unfinished offset (or its next one) for the
 * slots given (all owned when only == NULL).  Blocking (a revocation) waits
 * for the outcomes recorded so far to be acknowledged; otherwise a round
 * with outcomes still unacknowledged is skipped. */
static void commit_offsets(bp_cluster *c, const int64_t *only, size_t nonly, int blocking)
{
    progress p = { c, NULL, NULL, NULL, 0 };
    pthread_mutex_lock(&c->mu);
    size_t n = only ? nonly : c->nassigned;
    p.slots = bp_calloc(n + 1, sizeof *p.slots);
    p.min = bp_calloc(n + 1, sizeof *p.min);
    p.count = bp_calloc(n + 1, sizeof *p.count);
    for (size_t i = 0; i < n; i++) p.slots[i] = only ? only[i] : c->assigned[i];
    p.n = n;
    pthread_mutex_unlock(&c->mu);
    if (bp_store_slot_progress(c->store, on_progress, &p) == 0) {
        /* every event final in the store now had its outcome produced
         * before this: in an epoch before the one that starts here */
        unsigned current = atomic_fetch_add_explicit(&c->epoch, 1, memory_order_acq_rel) + 1;
        double until = bp_monotonic_ms() + (blocking ? SYNC_TIMEOUT_MS : 0);
        int settled;
        while (!(settled = outcomes_settled(c, current)) && bp_monotonic_ms() < until) usleep(5 * 1000);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n + 1);
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; settled && i < n; i++) {
            slot *s = cluster_slot_at(c, p.slots[i]);
            if (!s || s->next_offset < 0) continue;
            int64_t off = p.count[i] > 0 ? p.min[i] : s->next_offset;
            if (off <= s->committed) continue;
            rd_kafka_topic_partition_list_add(l, s->topic, s->partition)->offset = off;
            s->committed = off;
        }
        pthread_mutex_unlock(&c->mu);
        if (l->cnt) {
            rd_kafka_resp_err_t e = rd_kafka_commit(c->consumer, l, blocking ? 0 : 1);
            if (e && blocking) on_commit(c->consumer, e, l, c);
            if (e) cluster_log_kafka("error", "kafka: could not commit offsets; the events after them may be read again",
                             NULL, -1, rd_kafka_err2str(e));
            else atomic_fetch_add_explicit(&c->commits, 1, memory_order_relaxed);
        }
        rd_kafka_topic_partition_list_destroy(l);
        /* stop reading a partition whose unfinished events pile up here
         * (an integration paused for its credentials keeps them) */
        for (size_t i = 0; !blocking && i < n; i++) {
            slot *s = cluster_slot_at(c, p.slots[i]);
            if (!s || !atomic_load_explicit(&s->owned, memory_order_acquire)) continue;
            int full = p.count[i] >= MAX_UNFINISHED;
            if (full == s->paused) continue;
            rd_kafka_topic_partition_list_t *one = rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(one, s->topic, s->partition);
            if (full) rd_kafka_pause_partitions(c->consumer, one); else rd_kafka_resume_partitions(c->consumer, one);
            rd_kafka_topic_partition_list_destroy(one);
            s->paused = full;
            cluster_log_kafka(full ? "warn" : "info", full ? "kafka: partition paused: too many unfinished events on this node"
                      : "kafka: partition resumed", s->topic, s->partition, NULL);
        }
    }
    free(p.slots);
    free(p.min);
    free(p.count);
}

static void take(bp_cluster *c, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int cooperative)
{
    /* what the previous owners finished must be known before reading */
    if (parts->cnt) cluster_catch_up_outcomes(c);
    for (int i = 0; i < parts->cnt; i++) {
        int64_t id = cluster_slot_new(c, parts->elems[i].topic, parts->elems[i].partition);
        char detail[64];
        snprintf(detail, sizeof detail, "slot %lld", (long long)id);
        cluster_log_kafka("info", "kafka: partition assigned", parts->elems[i].topic, parts->elems[i].partition, detail);
    }
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_assign(rk, parts);
    else rd_kafka_assign(rk, parts);
    if (e) { cluster_log_kafka("error", "kafka: assign failed", NULL, -1, rd_kafka_error_string(e)); rd_kafka_error_destroy(e); }
}

/* Give partitions up: no new requests, wait for those in flight (their
 * outcomes recorded), commit, forget the unfinished events. */
static void give_up(bp_cluster *c, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int cooperative)
{
    int64_t *ids = bp_calloc((size_t)parts->cnt + 1, sizeof *ids);
    size_t n = 0;
    for (int i = 0; i < parts->cnt; i++) {
        int64_t id = cluster_slot_find(c, parts->elems[i].topic, parts->elems[i].partition);
        if (!id) continue;
        atomic_store_explicit(&cluster_slot_at(c, id)->owned, 0, memory_order_release);
        ids[n++] = id;
    }
    /* the HTTP timeout bounds a request in flight */
    double until = bp_monotonic_ms() + 35000;
    for (size_t i = 0; i < n; i++)
        while (atomic_load_explicit(&cluster_slot_at(c, ids[i])->inflight, memory_order_acquire) > 0 && bp_monotonic_ms() < until)
            usleep(5 * 1000);
    usleep(30 * 1000);   /* the loops save answered progress within 10 ms */
    commit_offsets(c, ids, n, 1);
    for (size_t i = 0; i < n; i++) {
        slot *s = cluster_slot_at(c, ids[i]);
        long forgotten = bp_store_release_slot(c->store, ids[i]);
        char detail[96];
        snprintf(detail, sizeof detail, "%ld unfinished events left to the next owner", forgotten > 0 ? forgotten : 0);
        cluster_log_kafka("info", "kafka: partition revoked", s->topic, s->partition, detail);
        pthread_mutex_lock(&c->mu);
        for (size_t k = 0; k < c->nassigned; k++)
            if (c->assigned[k] == ids[i]) { c->assigned[k] = c->assigned[--c->nassigned]; break; }
        pthread_mutex_unlock(&c->mu);
    }
    free(ids);
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_unassign(rk, parts);
    else rd_kafka_assign(rk, NULL);
    if (e) { cluster_log_kafka("error", "kafka: unassign failed", NULL, -1, rd_kafka_error_string(e)); rd_kafka_error_destroy(e); }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    bp_cluster *c = opaque;
    int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    atomic_fetch_add_explicit(&c->rebalances, 1, memory_order_relaxed);
    c->paces_stale = 1;   /* shared accounts' parts, once the rebalance is over (clusterpace.c) */
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        take(c, rk, parts, cooperative);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        give_up(c, rk, parts, cooperative);
    } else {
        cluster_log_kafka("error", "kafka: rebalance failed", NULL, -1, rd_kafka_err2str(err));
        give_up(c, rk, parts, cooperative);
    }
}

/* ---- reading: events into the store ------------------------------------------------------------ */

typedef struct intake_ctx {
    bp_cluster *c;
    const rd_kafka_message_t *m;
    const char *integration;
    int64_t slot;
    int replayed;                /* a replayed dead letter: delivered although its message id was seen */
    int ok;
    long stored;
} intake_ctx;

static int store_one(void *ctx, long index, const char *ev, size_t len, const char *message_id, const char *why)
{
    intake_ctx *k = ctx;
    const char *topic = rd_kafka_topic_name(k->m->rkt);
    if (why) {
        char detail[600];
        snprintf(detail, sizeof detail, "offset %lld, event %ld: %s; not delivered", (long long)k->m->offset, index, why);
        cluster_log_kafka("error", "kafka: an event in a delivery topic is not valid", topic, k->m->partition, detail);
        atomic_fetch_add_explicit(&k->c->bad_messages, 1, memory_order_relaxed);
        return 0;
    }
    bp_source src = { topic, k->m->partition, k->m->offset, (int)index, k->slot };
    int64_t id = bp_store_add_from(k->c->store, k->integration, ev, len, k->replayed ? NULL : message_id, &src,
                                   (int64_t)bp_wall_ms());
    if (id < 0) { k->ok = 0; return -1; }
    if (id == 0) atomic_fetch_add_explicit(&k->c->duplicates, 1, memory_order_relaxed);
    else k->stored++;
    return 0;
}

static int is_replay(const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;
    return rd_kafka_message_headers(m, &h) == 0 && rd_kafka_header_get_last(h, "replay", &v, &len) == 0 && len == 1 &&
           *(const char *)v == '1';
}

/* The integration a delivery message is for: its header, else the topic's
 * name (delivery-{id}, per-integration mode). */
static int integration_of(bp_cluster *c, const rd_kafka_message_t *m, char *out, size_t n)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;
    if (rd_kafka_message_headers(m, &h) == 0 && rd_kafka_header_get_last(h, "integration_id", &v, &len) == 0 && len > 0 &&
        len < n) {
        memcpy(out, v, len);
        out[len] = '\0';
        return 0;
    }
    const char *topic = rd_kafka_topic_name(m->rkt);
    if (!c->per_vendor && !strncmp(topic, "delivery-", 9) && topic[9]) { snprintf(out, n, "%s", topic + 9); return 0; }
    return -1;
}

typedef struct woken { char ids[BATCH][40]; int n; } woken;

static void remember(woken *w, const char *id)
{
    for (int i = 0; i < w->n; i++) if (!strcmp(w->ids[i], id)) return;
    if (w->n < BATCH) snprintf(w->ids[w->n++], sizeof w->ids[0], "%s", id);
}

/* Store a batch of delivery messages in one transaction.  On a store
 * failure nothing is kept and every partition is sought back. */
static void consume_batch(bp_cluster *c, rd_kafka_message_t **msgs, int n)
{
    bp_store *store = c->store;
    woken w;
    w.n = 0;
    int began = bp_store_begin(store) == 0, ok = began;
    int64_t *slots = bp_calloc((size_t)n + 1, sizeof *slots);
    for (int i = 0; ok && i < n; i++) {
        rd_kafka_message_t *m = msgs[i];
        pthread_mutex_lock(&c->mu);
        slots[i] = cluster_slot_find_locked(c, rd_kafka_topic_name(m->rkt), m->partition);
        pthread_mutex_unlock(&c->mu);
        if (!slots[i]) continue;   /* revoked while this batch was read */
        char id[40];
        if (integration_of(c, m, id, sizeof id) < 0 || !m->payload) {
            char detail[160];
            snprintf(detail, sizeof detail, "offset %lld: no integration_id header (and the topic does not name one); "
                     "not delivered", (long long)m->offset);
            cluster_log_kafka("error", "kafka: a message in a delivery topic names no integration", rd_kafka_topic_name(m->rkt),
                      m->partition, detail);
            atomic_fetch_add_explicit(&c->bad_messages, 1, memory_order_relaxed);
            continue;
        }
        intake_ctx k = { c, m, id, slots[i], is_replay(m), 1, 0 };
        bp_intake_each(m->payload, m->len, store_one, &k);
        ok = k.ok;
        if (k.stored) remember(&w, id);
    }
    if (began) ok = bp_store_commit(store, ok) == 0 && ok;
    if (ok) {
        pthread_mutex_lock(&c->mu);
        for (int i = 0; i < n; i++) {
            slot *s = slots[i] ? cluster_slot_at(c, slots[i]) : NULL;
            if (s && msgs[i]->offset + 1 > s->next_offset) s->next_offset = msgs[i]->offset + 1;
        }
        pthread_mutex_unlock(&c->mu);
        bp_pool *pool = bp_registry_pool(c->reg);
        for (int i = 0; i < w.n; i++) if (pool) bp_pool_wake(pool, w.ids[i]);
    } else {
        bp_log("error", "kafka: could not store events read from Kafka; reading them again", NULL);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
        for (int i = 0; i < n; i++) {
            if (!slots[i]) continue;
            const char *topic = rd_kafka_topic_name(msgs[i]->rkt);
            if (!rd_kafka_topic_partition_list_find(l, topic, msgs[i]->partition))
                rd_kafka_topic_partition_list_add(l, topic, msgs[i]->partition)->offset = msgs[i]->offset;
        }
        rd_kafka_error_t *e = rd_kafka_seek_partitions(c->consumer, l, 2000);
        if (e) rd_kafka_error_destroy(e);
        rd_kafka_topic_partition_list_destroy(l);
        usleep(500 * 1000);
    }
    free(slots);
}

/* ---- the consumer thread: read, store, commit, sweep ---------------------------------------------- */

typedef struct sweep { bp_cluster *c; char (*ids)[40]; int n; } sweep;

static void on_waiting(void *ctx, const char *integration)
{
    sweep *s = ctx;
    if (s->n >= 256) return;
    bp_integration *it = bp_registry_find(s->c->reg, integration);
    if (it) { bp_integration_release(it); return; }
    snprintf(s->ids[s->n++], 40, "%s", integration);
}

/* Events read for an integration this cluster does not have (deleted, or
 * never installed) end as errors after a minute (the config may arrive
 * after its events on a busy node), so that offsets move on. */
static void sweep_unknown(bp_cluster *c)
{
    char ids[256][40];
    sweep s = { c, ids, 0 };
    bp_store_waiting_integrations(c->store, (int64_t)bp_wall_ms() - 60000, on_waiting, &s);
    for (int i = 0; i < s.n; i++) {
        char why[200];
        snprintf(why, sizeof why, "no integration with id '%s' in this cluster's configuration (deleted, or never "
                 "installed); not delivered", ids[i]);
        long n = bp_store_end_sourced(c->store, ids[i], "error", why);
        if (n > 0) cluster_log_kafka("error", why, NULL, -1, NULL);
    }
}

void *cluster_consumer_main(void *arg)
{
    bp_cluster *c = arg;
    rd_kafka_message_t *msgs[BATCH];
    double last_commit = bp_monotonic_ms(), last_sweep = last_commit, last_save = last_commit;
    while (!cluster_stopping(c)) {
        if (atomic_exchange_explicit(&c->topics_changed, 0, memory_order_acq_rel)) { resubscribe(c); c->paces_stale = 1; }
        int n = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->consumer, 100);
        double until = bp_monotonic_ms() + 10;
        while (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && m->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                    cluster_log_kafka("warn", "kafka: reading delivery topics", m->rkt ? rd_kafka_topic_name(m->rkt) : NULL,
                              m->partition, rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
            } else {
                msgs[n++] = m;
            }
            if (n == BATCH || bp_monotonic_ms() > until) break;
            m = rd_kafka_consumer_poll(c->consumer, 0);
        }
        if (n) consume_batch(c, msgs, n);
        for (int i = 0; i < n; i++) rd_kafka_message_destroy(msgs[i]);
        double now = bp_monotonic_ms();
        if (now - last_commit >= 1000) { commit_offsets(c, NULL, 0, 0); last_commit = now; }
        if (now - last_save >= 5000) { cluster_save_view_positions(c); last_save = now; }
        if (now - last_sweep >= 10000) { sweep_unknown(c); last_sweep = now; }
        cluster_share_paces(c, c->paces_stale);
        c->paces_stale = 0;
    }
    return NULL;
}

int cluster_start_consumer(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = cluster_base_conf(c, err);
    if (!conf) return -1;
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%d", c->session_timeout_ms);
    if (cluster_set_conf(conf, "group.id", c->name, err) < 0 ||
        cluster_set_conf(conf, "partition.assignment.strategy", "cooperative-sticky", err) < 0 ||
        cluster_set_conf(conf, "enable.auto.commit", "false", err) < 0 ||
        cluster_set_conf(conf, "auto.offset.reset", "earliest", err) < 0 ||
        cluster_set_conf(conf, "session.timeout.ms", timeout, err) < 0 ||
        cluster_set_conf(conf, "heartbeat.interval.ms", c->session_timeout_ms < 9000 ? "1000" : "3000", err) < 0 ||
        /* a delivery topic just created shows in the metadata soon */
        cluster_set_conf(conf, "topic.metadata.refresh.interval.ms", "5000", err) < 0 ||
        cluster_set_conf(conf, "fetch.wait.max.ms", "50", err) < 0 ||
        cluster_set_conf(conf, "enable.partition.eof", "false", err) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    char e[512];
    if (!(c->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e))) { bp_error_set(err, "kafka: %s", e); return -1; }
    rd_kafka_poll_set_consumer(c->consumer);
    atomic_store_explicit(&c->topics_changed, 1, memory_order_release);   /* the first subscription, by the consumer thread */
    return 0;
}
