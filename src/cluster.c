/*
 * cluster.c — `blueprint serve --kafka`: several nodes, one delivery
 * service, on Kafka (librdkafka).  Modelled on Kafka Connect's distributed
 * mode: every node serves the whole API, configuration lives in a
 * compacted topic, work is spread by a consumer group, and a node's death
 * is a rebalance.
 *
 * Topics (NAME = --cluster, "blueprint" by default):
 *
 *   delivery-{integration_id}   intake -> delivery (Signal's naming; with
 *   or delivery-{vendor}        --topic-mode per_vendor, one per vendor).
 *                               One message per intake request (the
 *                               accepted events as a JSON array: Kafka
 *                               writes a message whole or not at all, so a
 *                               request is accepted whole or not at all);
 *                               a single event object, as Signal's Event
 *                               Processor writes, is read too.  Keyed by
 *                               the account (rate_limit.scope), header
 *                               integration_id.
 *   NAME.integrations           compacted: one record per integration, key
 *                               its id, value its head and every revision
 *                               with secrets sealed (configrecord.c); and
 *                               one per blueprint, key "blueprint:VENDOR",
 *                               value its files (blueprintrecord.c).
 *   NAME.outcomes               every outcome, final or "retrying", of
 *                               every node: Live Events, /metrics and the
 *                               record of what was delivered.
 *   NAME.dead-letters           each dead letter, for tools (kcat).
 *   NAME.sessions               console token ids spent (a sign-in link
 *                               taken, a session signed out), key the
 *                               jti: the first record of a jti wins, so a
 *                               link works once in the whole cluster.
 *                               Kept SESSIONS_RETENTION_MS.
 *
 * Delivery.  One consumer group (group.id NAME, cooperative-sticky).  The
 * node that owns a partition stores what it reads in its local events.db,
 * tagged with the partition's slot (a lease that names one ownership of
 * one partition by this process), and its delivery loops (deliver.c) pace,
 * retry and dead-letter them as in single-node mode.  A retry waits in
 * that store, on disk, so it never blocks another account of the same
 * partition.  The offset committed for a partition is its lowest
 * unfinished event (or the next one when all are finished), and only once
 * every outcome recorded before is acknowledged by the broker.
 *
 * Nothing delivered twice beyond what was in flight: every node applies
 * NAME.outcomes to its store, and an event whose outcome is stored there
 * is not stored again (events_by_source), so a node taking a partition
 * over skips what its previous owner finished after the committed offset.
 * Before it reads a partition it is given, a node waits until it has
 * applied NAME.outcomes up to the end as of that moment.  A node giving
 * a partition up stops new requests for it, waits for those in flight,
 * commits, and forgets its unfinished events (their new owner reads them).
 * A batch the vendor queued (serve --batch) is told on NAME.outcomes too
 * (batch_queued below): every node keeps it until an outcome of one of its
 * events closes it, and the partition's next owner resumes it with status
 * requests instead of sending it again (batchstore.c, deliver_batch.c).
 *
 * Threads: the poller (producer delivery reports, broker probe), the
 * consumer (group: read, store, commit, rebalance), the viewer (config and
 * outcomes of every node: applied to the registry and the store).
 *
 * Files: this one (life cycle, producing, /healthz and /metrics, and the
 * hooks it installs in the registry: the registry tells the cluster what
 * changed through bp_registry_hooks and never names it), clusterconsumer.c
 * (the consumer), clusterview.c (the viewer), clusterslots.c (partition
 * leases), kafkaconf.c (settings, logs, health, topics); cluster.h is
 * theirs alone.
 */
#include "cluster.h"

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- producing ------------------------------------------------------------------------------- */

/* Delivery reports: a waiter's pointer (aligned, low bit 0), or an
 * outcome's epoch tagged with the low bit. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    bp_cluster *c = opaque;
    uintptr_t tag = (uintptr_t)m->_private;
    if (m->err) {
        atomic_fetch_add_explicit(&c->produce_failures, 1, memory_order_relaxed);
    } else {
        cluster_set_health(c, 1, NULL);
    }
    if (tag & 1) {
        if (m->err) cluster_log_kafka("error", "kafka: an outcome record was not written; other nodes will not show it",
                              rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_err2str(m->err));
        atomic_fetch_sub_explicit(&c->outstanding[(tag >> 1) % EPOCHS], 1, memory_order_acq_rel);
        return;
    }
    waiter *w = (waiter *)tag;
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->err = m->err;
    w->partition = m->partition;
    w->offset = m->offset;
    w->maybe_written = m->err && rd_kafka_message_status(m) == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED;
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Produce one message and wait for the broker's acknowledgement (acks=all,
 * idempotent).  librdkafka reports every message within its timeout, so the
 * wait is bounded. */
static int produce_sync(bp_cluster *c, const char *topic, const char *key, size_t keylen, const char *value, size_t len,
                        const char *integration, int replay, waiter *placed, bp_error *err)
{
    waiter w;
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.done = 0;
    w.err = 0;
    w.maybe_written = 0;
    char at[32];
    snprintf(at, sizeof at, "%lld", (long long)bp_wall_ms());
    const char *replayed = replay ? "1" : "0";   /* the header macro casts its argument unparenthesised */
    rd_kafka_resp_err_t e = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_VALUE((void *)value, len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADER("integration_id", integration, -1),
        RD_KAFKA_V_HEADER("received_at", at, -1), RD_KAFKA_V_HEADER("replay", replayed, 1),
        RD_KAFKA_V_OPAQUE(&w), RD_KAFKA_V_END);
    if (!e) {
        pthread_mutex_lock(&w.mu);
        while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        e = w.err;
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (placed) { placed->partition = w.partition; placed->offset = w.offset; placed->maybe_written = w.maybe_written; }
    if (!e) return 0;
    pthread_mutex_lock(&c->mu);
    int up = c->brokers_up;
    pthread_mutex_unlock(&c->mu);
    bp_error_set(err, "Kafka did not acknowledge the write to %s: %s%s%s", topic, rd_kafka_err2str(e),
                 up ? "" : " (no broker reachable)", w.maybe_written ? " (the brokers may have written it)" : "");
    if (e == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT || e == RD_KAFKA_RESP_ERR__TRANSPORT) cluster_set_health(c, 0, rd_kafka_err2str(e));
    return -1;
}

int bp_cluster_send_events(bp_cluster *c, const char *integration, const char *vendor, const char *account,
                           const char *events, size_t len, int replay, bp_error *err)
{
    char topic[256];
    cluster_topic_name(topic, sizeof topic, "delivery-", c->per_vendor ? vendor : integration);
    return produce_sync(c, topic, account, strlen(account), events, len, integration, replay, NULL, err);
}

/* An integration's delivery topic made ready before its install answers:
 * created (when the brokers take CreateTopics; else the metadata request
 * below auto-creates it, as the mock cluster does) and its partitions and
 * leaders in the producer's metadata, so that its first intake does not
 * wait for the topic to be found (it took seconds when 20 came at once). */
static void ready_topic(bp_cluster *c, const char *topic)
{
    if (c->can_create) cluster_create_topics(c, &topic, 1, 3000);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->producer, topic, NULL);
    for (int tries = 0; rkt && tries < 30; tries++) {   /* up to ~3 s */
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(c->producer, 0, rkt, &md, 1000);
        int ready = !e && md && md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
        for (int p = 0; ready && p < md->topics[0].partition_cnt; p++) ready = md->topics[0].partitions[p].leader >= 0;
        if (md) rd_kafka_metadata_destroy(md);
        if (ready) break;
        usleep(100 * 1000);
    }
    if (rkt) rd_kafka_topic_destroy(rkt);
}

/* The record goes out (acks=all) before the change commits here; an
 * integration's topic is made ready too, unless it is being deleted. */
static int publish_config(void *ctx, const char *integration, const char *record, size_t len, bp_error *err)
{
    bp_cluster *c = ctx;
    if (produce_sync(c, c->t_config, integration, strlen(integration), record, len, integration, 0, NULL, err) < 0) return -1;
    bp_config_record rec;
    if (bp_config_record_parse(&rec, record, len) == 0 && !rec.deleted && rec.vendor) {
        char topic[256];
        cluster_topic_name(topic, sizeof topic, "delivery-", c->per_vendor ? rec.vendor : integration);
        ready_topic(c, topic);
    }
    bp_config_record_free(&rec);
    return 0;
}

/* A blueprint revision for every node: keyed by BP_BLUEPRINT_KEY and the
 * vendor in the configuration topic (compaction keeps the newest per
 * vendor), acknowledged before the node that made it switches. */
static int publish_blueprint(void *ctx, const char *vendor, const char *record, size_t len, bp_error *err)
{
    bp_cluster *c = ctx;
    char key[300];
    snprintf(key, sizeof key, "%s%s", BP_BLUEPRINT_KEY, vendor);
    waiter placed = { 0 };
    if (produce_sync(c, c->t_config, key, strlen(key), record, len, "", 0, &placed, err) == 0) return 0;
    return placed.maybe_written ? -2 : -1;
}

/* Wait until the viewer has applied NAME.sessions past `offset` of `part`. */
static int sessions_applied(bp_cluster *c, int32_t part, int64_t offset)
{
    if (part < 0 || part >= MAX_VIEW_PARTS) return -1;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SYNC_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->sessions_pos[part] <= offset && rc == 0 && !cluster_stopping(c))
        rc = pthread_cond_timedwait(&c->applied, &c->mu, &until);
    int done = c->sessions_pos[part] > offset;
    pthread_mutex_unlock(&c->mu);
    return done ? 0 : -1;
}

/* A claim on the jti, keyed by it (so every claim on one jti lands in one
 * partition, in one order), with a random id of its own; the viewer marks
 * the first claim of each jti as won.  Reading our own claim back means
 * every earlier one was read, so the answer is the same on every node. */
static int spend_jti(void *ctx, const char *jti, int64_t expires_at)
{
    bp_cluster *c = ctx;
    if (bp_registry_jti_spent(c->reg, jti)) return 1;
    unsigned char raw[16];
    char claim[33];
    if (bp_random_bytes(raw, sizeof raw) < 0) return -1;
    for (int i = 0; i < 16; i++) snprintf(claim + 2 * i, 3, "%02x", raw[i]);
    bp_buf v;
    bp_buf_init(&v);
    bp_buf_adds(&v, "{\"jti\":");
    bp_json_write_string(&v, jti, strlen(jti));
    bp_buf_printf(&v, ",\"claim\":\"%s\",\"node\":", claim);
    bp_json_write_string(&v, c->node, strlen(c->node));
    bp_buf_printf(&v, ",\"expires_at\":%lld}", (long long)expires_at);
    waiter at;
    bp_error err;
    int rc = produce_sync(c, c->t_sessions, jti, strlen(jti), v.data, v.len, "", 0, &at, &err);
    bp_buf_free(&v);
    if (rc < 0) { cluster_log_kafka("error", "kafka: a console token id was not recorded", c->t_sessions, -1, err.msg); return -1; }
    if (sessions_applied(c, at.partition, at.offset) < 0) {
        cluster_log_kafka("error", "kafka: this node did not read its own claim on a console token id back in time",
                  c->t_sessions, at.partition, NULL);
        return -1;
    }
    return bp_jti_set_has(c->won, claim) ? 0 : 1;
}

static void produce_async(bp_cluster *c, const char *topic, const char *key, const bp_buf *value)
{
    unsigned e = atomic_load_explicit(&c->epoch, memory_order_acquire) % EPOCHS;
    atomic_fetch_add_explicit(&c->outstanding[e], 1, memory_order_acq_rel);
    rd_kafka_resp_err_t r = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(value->data, value->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE((void *)(((uintptr_t)e << 1) | 1)), RD_KAFKA_V_END);
    if (r) {
        atomic_fetch_sub_explicit(&c->outstanding[e], 1, memory_order_acq_rel);
        atomic_fetch_add_explicit(&c->produce_failures, 1, memory_order_relaxed);
        cluster_log_kafka("error", "kafka: could not queue an outcome record; other nodes will not show it", topic, -1,
                  rd_kafka_err2str(r));
    }
}

/* An outcome record: what every node applies from NAME.outcomes. */
static void write_record(bp_cluster *c, bp_buf *v, const char *integration, const char *label, const char *state,
                         int final, int attempts, const char *topic, int partition, int64_t offset, long index,
                         const char *reason, const char *line, size_t len, const char *body, size_t body_len)
{
    bp_buf_adds(v, "{\"integration_id\":");
    bp_json_write_text(v, integration, strlen(integration));
    bp_buf_adds(v, ",\"node\":");
    bp_json_write_text(v, c->node, strlen(c->node));
    bp_buf_printf(v, ",\"label\":\"%s\",\"state\":\"%s\",\"final\":%s,\"attempts\":%d,\"at\":%lld", label, state,
                  final ? "true" : "false", attempts, (long long)bp_wall_ms());
    if (topic) {
        bp_buf_adds(v, ",\"source\":{\"topic\":");
        bp_json_write_text(v, topic, strlen(topic));
        bp_buf_printf(v, ",\"partition\":%d,\"offset\":%lld,\"index\":%ld}", partition, (long long)offset, index);
    }
    bp_buf_adds(v, ",\"reason\":");
    bp_json_write_text(v, reason ? reason : "", reason ? strlen(reason) : 0);
    bp_buf_adds(v, ",\"outcome\":");
    if (line && len) bp_buf_add(v, line, len); else bp_buf_adds(v, "{}");
    bp_buf_adds(v, ",\"event\":");
    if (body && body_len) bp_buf_add(v, body, body_len); else bp_buf_adds(v, "null");
    bp_buf_addc(v, '}');
}

/* A local delivery loop's outcome: to NAME.outcomes (and NAME.dead-letters);
 * every node, this one included, applies it from there. */
static void outcome(void *ctx, const char *integration, const bp_stored *ev, const char *line, size_t len,
                    enum bp_end end, const char *reason)
{
    bp_cluster *c = ctx;
    const char *label = bp_ends[end].label, *state = bp_ends[end].state;
    int final = bp_ends[end].final;
    slot *s = ev->ksrc ? cluster_slot_at(c, ev->ksrc) : NULL;
    bp_buf v;
    bp_buf_init(&v);
    write_record(c, &v, integration, label, state, final, ev->attempts, s ? s->topic : NULL, s ? s->partition : 0,
                 ev->koff, ev->idx, reason, line, len, ev->body, ev->body_len);
    produce_async(c, c->t_outcomes, integration, &v);
    if (end == BP_END_DEAD) produce_async(c, c->t_dead, integration, &v);
    bp_buf_free(&v);
}

/* A batch this node's delivery got queued at the vendor: a record on
 * NAME.outcomes, keyed like its events' outcomes (the integration), so that
 * every node reads it before those outcomes, which close it.  A node that
 * takes the partition over resumes it from there (clusterview.c,
 * deliver_batch.c).  Not acknowledged before the batch goes on: a node that
 * dies before the brokers have it leaves a batch nobody knows was queued,
 * whose events its next owner sends again (at least once, as a request in
 * flight).  A node giving the partition up commits only once every record
 * produced before is acknowledged, this one too. */
static void batch_queued(void *ctx, const char *integration, const bp_queued_batch *q)
{
    bp_cluster *c = ctx;
    bp_buf v;
    bp_buf_init(&v);
    bp_buf_adds(&v, "{\"integration_id\":");
    bp_json_write_text(&v, integration, strlen(integration));
    bp_buf_adds(&v, ",\"node\":");
    bp_json_write_text(&v, c->node, strlen(c->node));
    bp_buf_printf(&v, ",\"at\":%lld,\"batch_queued\":{\"id\":%lld,\"polls\":%d,\"answer\":{\"status\":%d,\"url\":",
                  (long long)bp_wall_ms(), (long long)q->id, q->polls, q->answer_status);
    bp_json_write_text(&v, q->answer_url ? q->answer_url : "", q->answer_url ? strlen(q->answer_url) : 0);
    bp_buf_adds(&v, ",\"body\":");
    bp_json_write_text(&v, q->answer_body ? q->answer_body : "", q->answer_len);
    bp_buf_adds(&v, "},\"events\":[");
    for (size_t i = 0; i < q->n; i++) {
        const bp_stored *ev = q->events[i];
        slot *s = ev->ksrc ? cluster_slot_at(c, ev->ksrc) : NULL;
        if (!s) { bp_buf_free(&v); return; }   /* not read from Kafka: nothing to hand over */
        bp_buf_adds(&v, i ? ",{\"topic\":" : "{\"topic\":");
        bp_json_write_text(&v, s->topic, strlen(s->topic));
        bp_buf_printf(&v, ",\"partition\":%d,\"offset\":%lld,\"index\":%ld}", s->partition, (long long)ev->koff, ev->idx);
    }
    bp_buf_adds(&v, "]}}");
    produce_async(c, c->t_outcomes, integration, &v);
    bp_buf_free(&v);
}

/* A dead letter sent again (server.c): "replayed" on every node. */
void bp_cluster_replayed(bp_cluster *c, const char *integration, const bp_store_row *row)
{
    if (!row->ktopic) return;
    bp_buf v;
    bp_buf_init(&v);
    write_record(c, &v, integration, "replayed", "replayed", 1, row->attempts, row->ktopic, row->kpart, row->koff,
                 row->kidx, "replayed: sent to the delivery topic again", row->outcome,
                 row->outcome ? strlen(row->outcome) : 0, row->body, row->body ? strlen(row->body) : 0);
    produce_async(c, c->t_outcomes, integration, &v);
    bp_buf_free(&v);
}

/* ---- the poller: delivery reports and a broker probe ------------------------------------------- */

static void *poller_main(void *arg)
{
    bp_cluster *c = arg;
    double last_probe = 0;
    while (!cluster_stopping(c)) {
        rd_kafka_poll(c->producer, 100);
        cluster_read_admin_answers(c);
        if (bp_monotonic_ms() - last_probe < 2000) continue;
        last_probe = bp_monotonic_ms();
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(c->producer, 0, NULL, &md, 1500);
        if (!e && md && md->broker_cnt > 0) cluster_set_health(c, 1, NULL);
        else cluster_set_health(c, 0, e ? rd_kafka_err2str(e) : "no broker in the metadata");
        if (md) rd_kafka_metadata_destroy(md);
    }
    return NULL;
}

/* ---- life cycle, and the registry's hooks -------------------------------------------------------- */

static void stop(void *ctx);
static void release(void *ctx);

static void topics_changed(void *ctx)
{
    bp_cluster *c = ctx;
    atomic_store_explicit(&c->topics_changed, 1, memory_order_release);
}

static void lease(void *ctx, bp_lease *out) { cluster_lease(ctx, out); }

/* What the registry calls (bp_registry_hooks): it never names the cluster. */
static void plug_into(bp_cluster *c, bp_registry *reg)
{
    bp_registry_hooks h = { c, publish_config, topics_changed, lease, outcome, spend_jti, stop, release,
                            publish_blueprint, batch_queued };
    bp_registry_set_hooks(reg, &h);
}

bp_cluster *bp_cluster_new(bp_registry *reg, const bp_cluster_opts *o, bp_error *err)
{
    bp_cluster *c = bp_calloc(1, sizeof *c);
    c->reg = reg;
    c->store = bp_registry_store(reg);
    c->brokers = bp_strdup(o->brokers);
    c->name = bp_strdup(o->name && *o->name ? o->name : "blueprint");
    c->node = bp_strdup(o->node && *o->node ? o->node : "node");
    c->per_vendor = o->topic_mode && !strcmp(o->topic_mode, "per_vendor");
    c->session_timeout_ms = o->session_timeout_ms > 0 ? o->session_timeout_ms : 10000;
    c->partitions = o->partitions > 0 ? o->partitions : 12;
    /* slot ids of this process never meet those of an earlier one in the store */
    c->epoch_base = ((int64_t)(bp_wall_ms() / 1000.0)) << 24;
    pthread_mutex_init(&c->mu, NULL);
    c->brokers_up = 1;
    cluster_topic_name(c->t_config, sizeof c->t_config, c->name, ".integrations");
    cluster_topic_name(c->t_outcomes, sizeof c->t_outcomes, c->name, ".outcomes");
    cluster_topic_name(c->t_dead, sizeof c->t_dead, c->name, ".dead-letters");
    cluster_topic_name(c->t_sessions, sizeof c->t_sessions, c->name, ".sessions");
    pthread_cond_init(&c->applied, NULL);
    c->won = bp_jti_set_new();
    if (o->config_file && *o->config_file && cluster_read_settings(c, o->config_file, err) < 0) {
        release(c);
        return NULL;
    }
    rd_kafka_conf_t *conf = cluster_base_conf(c, err);
    if (!conf) { release(c); return NULL; }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    /* 202 only after every in-sync replica has the message, never twice */
    if (cluster_set_conf(conf, "enable.idempotence", "true", err) < 0 || cluster_set_conf(conf, "acks", "all", err) < 0 ||
        cluster_set_conf(conf, "linger.ms", "2", err) < 0 ||
        cluster_set_conf(conf, "message.timeout.ms", "5000", err) < 0) {
        rd_kafka_conf_destroy(conf);
        release(c);
        return NULL;
    }
    char e[512];
    if (!(c->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e))) {
        bp_error_set(err, "kafka%s%s: %s", c->settings_file ? ", with the settings of " : "",
                     c->settings_file ? c->settings_file : "", e);
        release(c);
        return NULL;
    }
    c->admin_q = rd_kafka_queue_new(c->producer);
    plug_into(c, reg);
    return c;
}

/* Read the configuration topic to its end (a node with an empty state
 * directory rebuilds its integrations from it), then start reading. */
int bp_cluster_start(bp_cluster *c, bp_error *err)
{
    if (pthread_create(&c->poller_thread, NULL, poller_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
    c->threads_started = 1;
    bp_store_release_slot(c->store, 0);   /* unfinished events of an earlier run: their partitions' owners read them */
    const char *mine[] = { c->t_config, c->t_outcomes, c->t_dead, c->t_sessions };
    c->can_create = cluster_create_topics(c, mine, 4, 3000) == 0;
    if (cluster_start_viewer(c, err) < 0) return -1;
    if (pthread_create(&c->viewer_thread, NULL, cluster_viewer_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
    c->threads_started = 2;
    double until = bp_monotonic_ms() + 30000;
    for (;;) {
        int behind = 0;
        pthread_mutex_lock(&c->mu);
        for (int p = 0; p < c->config_parts; p++) if (c->config_pos[p] < c->config_end[p]) behind = 1;
        /* and the spent token ids: a signed-out session is refused from the start */
        for (int p = 0; p < c->sessions_parts; p++) if (c->sessions_pos[p] < c->sessions_end[p]) behind = 2;
        pthread_mutex_unlock(&c->mu);
        if (!behind) break;
        if (bp_monotonic_ms() > until) {
            bp_error_set(err, "kafka: could not read %s to its end within 30 s", behind == 2 ? c->t_sessions : c->t_config);
            return -1;
        }
        usleep(20 * 1000);
    }
    if (cluster_start_consumer(c, err) < 0) return -1;
    if (pthread_create(&c->consumer_thread, NULL, cluster_consumer_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
    c->threads_started = 3;
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "brokers", c->brokers);
    bp_log_field(&f, "cluster", c->name);
    bp_log_field(&f, "topic_mode", c->per_vendor ? "per_vendor" : "per_integration");
    bp_log("info", "kafka: cluster mode", f.data);
    bp_buf_free(&f);
    return 0;
}

/* Leave the group (its partitions go to the other nodes: the revocation
 * finishes what is in flight and commits), then stop. */
static void stop(void *ctx)
{
    bp_cluster *c = ctx;
    if (!c) return;
    atomic_store_explicit(&c->stopping, 1, memory_order_release);
    if (c->threads_started >= 3) {
        pthread_join(c->consumer_thread, NULL);
        rd_kafka_consumer_close(c->consumer);   /* revokes: runs on_rebalance here */
    }
    if (c->threads_started >= 2) {
        pthread_join(c->viewer_thread, NULL);
        cluster_save_view_positions(c);
    }
    if (c->threads_started >= 1) c->threads_started = 1;
}

/* After the delivery pool has stopped: its last outcomes are flushed. */
static void release(void *ctx)
{
    bp_cluster *c = ctx;
    if (!c) return;
    stop(c);
    if (c->producer) rd_kafka_flush(c->producer, 5000);
    if (c->threads_started >= 1) pthread_join(c->poller_thread, NULL);
    if (c->viewer) { rd_kafka_consumer_close(c->viewer); rd_kafka_destroy(c->viewer); }
    if (c->consumer) rd_kafka_destroy(c->consumer);
    if (c->admin_q) rd_kafka_queue_destroy(c->admin_q);
    if (c->producer) rd_kafka_destroy(c->producer);
    for (size_t i = 0; i < c->ntopics; i++) free(c->topics[i]);
    free(c->topics);
    cluster_free_held(&c->held_blueprints);
    cluster_free_held(&c->held_configs);
    cluster_free_slots(c);
    cluster_free_paces(c);
    pthread_cond_destroy(&c->applied);
    bp_jti_set_free(c->won);
    pthread_mutex_destroy(&c->mu);
    free(c->brokers);
    free(c->name);
    free(c->node);
    for (size_t i = 0; i < c->nsettings; i++) {
        free(c->settings[i].key);
        memset(c->settings[i].value, 0, strlen(c->settings[i].value));
        free(c->settings[i].value);
    }
    free(c->settings);
    free(c->settings_file);
    free(c);
}

/* ---- operations ---------------------------------------------------------------------------------- */

int bp_cluster_health(bp_cluster *c, bp_buf *out)
{
    pthread_mutex_lock(&c->mu);
    int up = c->brokers_up;
    bp_buf_printf(out, "{\"ok\":%s,\"brokers\":", up ? "true" : "false");
    bp_json_write_text(out, c->brokers, strlen(c->brokers));
    bp_buf_adds(out, ",\"cluster\":");
    bp_json_write_text(out, c->name, strlen(c->name));
    bp_buf_adds(out, ",\"node\":");
    bp_json_write_text(out, c->node, strlen(c->node));
    bp_buf_printf(out, ",\"topic_mode\":\"%s\",\"error\":", c->per_vendor ? "per_vendor" : "per_integration");
    if (up) bp_buf_adds(out, "null"); else bp_json_write_text(out, c->last_error, strlen(c->last_error));
    bp_buf_adds(out, ",\"assigned_partitions\":[");
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = cluster_slot_at(c, c->assigned[k]);
        if (k) bp_buf_addc(out, ',');
        bp_buf_adds(out, "{\"topic\":");
        bp_json_write_text(out, s->topic, strlen(s->topic));
        bp_buf_printf(out, ",\"partition\":%d,\"committed\":%lld}", s->partition, (long long)s->committed);
    }
    bp_buf_addc(out, ']');
    if (!up) bp_buf_adds(out, ",\"help\":\"no Kafka broker answers: intake answers 503 and accepts nothing; delivery "
                         "of what was accepted resumes when the brokers are back\"");
    bp_buf_addc(out, '}');
    pthread_mutex_unlock(&c->mu);
    return up;
}

void bp_cluster_metrics(bp_cluster *c, bp_buf *out)
{
    pthread_mutex_lock(&c->mu);
    int up = c->brokers_up;
    size_t n = c->nassigned;
    pthread_mutex_unlock(&c->mu);
    bp_buf_printf(out, "# HELP blueprint_kafka_up 1 when a Kafka broker answers.\n# TYPE blueprint_kafka_up gauge\n"
                  "blueprint_kafka_up %d\n", up);
    bp_buf_printf(out, "# HELP blueprint_kafka_assigned_partitions Delivery partitions this node reads.\n"
                  "# TYPE blueprint_kafka_assigned_partitions gauge\nblueprint_kafka_assigned_partitions %zu\n", n);
    static const struct { const char *name, *help; size_t off; } counters[] = {
        { "blueprint_kafka_bad_messages_total", "Events in delivery topics that could not be read (logged, not delivered).",
          offsetof(bp_cluster, bad_messages) },
        { "blueprint_duplicates_total", "Events not stored again: same message id, or already finished by a node.",
          offsetof(bp_cluster, duplicates) },
        { "blueprint_kafka_produce_failures_total", "Writes to Kafka that failed.", offsetof(bp_cluster, produce_failures) },
        { "blueprint_kafka_rebalances_total", "Partition assignments and revocations on this node.",
          offsetof(bp_cluster, rebalances) },
        { "blueprint_kafka_commits_total", "Offset commits.", offsetof(bp_cluster, commits) },
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        bp_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %ld\n", counters[i].name, counters[i].help,
                      counters[i].name, counters[i].name,
                      atomic_load_explicit((_Atomic long *)((char *)c + counters[i].off), memory_order_relaxed));
    bp_buf_adds(out, "# HELP blueprint_kafka_consumer_lag Messages in the partition after this node's committed "
                "offset.\n# TYPE blueprint_kafka_consumer_lag gauge\n");
    pthread_mutex_lock(&c->mu);
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = cluster_slot_at(c, c->assigned[k]);
        int64_t lo = 0, hi = 0;
        if (rd_kafka_get_watermark_offsets(c->consumer, s->topic, s->partition, &lo, &hi)) continue;
        int64_t from = s->committed >= 0 ? s->committed : lo;
        bp_buf_adds(out, "blueprint_kafka_consumer_lag{topic=");
        bp_json_write_text(out, s->topic, strlen(s->topic));
        bp_buf_printf(out, ",partition=\"%d\"} %lld\n", s->partition, (long long)(hi > from ? hi - from : 0));
    }
    pthread_mutex_unlock(&c->mu);
}
