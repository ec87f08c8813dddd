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
 *                               with secrets sealed (registry.c).
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
 *
 * Threads: the poller (producer delivery reports, broker probe), the
 * consumer (group: read, store, commit, rebalance), the viewer (config and
 * outcomes of every node: applied to the registry and the store).
 */
#include "internal.h"

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOT_CHUNK 1024
#define SLOT_CHUNKS 16384        /* 16M partition ownerships per process */
#define EPOCHS 64
#define MAX_UNFINISHED 100000    /* events a node holds for one partition before it stops reading it */
#define BATCH 500
#define MAX_VIEW_PARTS 1024
#define CATCHUP_WAIT_MS 15000
#define SYNC_TIMEOUT_MS 5000     /* intake and config writes: 503 after this */
#define SESSIONS_RETENTION_MS "32400000"   /* 9 h: longer than any token a record spends (8 h sessions) */

typedef struct slot {
    char *topic;
    int partition;
    int owned;                   /* atomic: this node may deliver its events */
    long inflight;               /* atomic: requests in flight */
    int64_t next_offset;         /* [mu] last read + 1, -1 before any */
    int64_t committed;           /* [mu] last committed, -1 before any */
    int paused;                  /* consumer thread: too many unfinished */
} slot;

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    rd_kafka_resp_err_t err;
    int32_t partition;           /* where the broker put the message */
    int64_t offset;
} waiter;

/* A line of --kafka-config: librdkafka's own property, for every client. */
typedef struct kafka_setting {
    char *key, *value;
    int line;
} kafka_setting;

struct bp_cluster {
    bp_registry *reg;
    char *brokers, *name, *node;
    char *settings_file;         /* --kafka-config, or NULL */
    kafka_setting *settings; size_t nsettings;
    int per_vendor, session_timeout_ms;
    char t_config[256], t_outcomes[256], t_dead[256], t_sessions[256];
    rd_kafka_t *producer, *consumer, *viewer;
    pthread_t poller_thread, consumer_thread, viewer_thread;
    int threads_started;
    int stopping;                /* atomic */
    pthread_mutex_t mu;          /* slots table growth, assigned, health, view positions, counters */
    slot *chunks[SLOT_CHUNKS];   /* chunks never move: slot pointers stay valid */
    int64_t nslots, epoch_base;
    int64_t *assigned; size_t nassigned, capassigned;   /* [mu] slot ids owned */
    int brokers_up;              /* [mu] */
    char last_error[256];        /* [mu] */
    int nview;                   /* [mu] outcomes partitions */
    int64_t view_pos[MAX_VIEW_PARTS];   /* [mu] next outcomes offset applied, per partition */
    int config_parts;
    int64_t config_end[MAX_VIEW_PARTS]; /* config topic end at start (catch-up before serving) */
    int64_t config_pos[MAX_VIEW_PARTS]; /* [mu] */
    int sessions_parts;
    int64_t sessions_end[MAX_VIEW_PARTS];   /* NAME.sessions' end at start (catch-up before serving) */
    int64_t sessions_pos[MAX_VIEW_PARTS];   /* [mu] next NAME.sessions offset applied */
    pthread_cond_t applied;      /* [mu] broadcast when sessions_pos moves */
    bp_jti_set *won;             /* the claim ids (nonces) that were the first record of their jti */
    int topics_changed;          /* atomic: integrations came or went: subscribe again */
    char **topics; size_t ntopics;   /* consumer thread: the delivery topics subscribed */
    int can_create;              /* the brokers take CreateTopics (the mock cluster does not) */
    int partitions;              /* for the topics this service creates */
    rd_kafka_queue_t *admin_q;   /* CreateTopics results, read by the poller */
    unsigned epoch;              /* atomic: outcomes produced now count here */
    long outstanding[EPOCHS];    /* atomic */
    long bad_messages, duplicates, produce_failures, rebalances, commits;   /* atomic */
};

/* ---- small things ---------------------------------------------------------------- */

static void log_kafka(const char *level, const char *msg, const char *topic, int partition, const char *detail)
{
    bp_buf f;
    bp_buf_init(&f);
    if (topic) { bp_buf_adds(&f, "\"topic\":"); bp_json_write_text(&f, topic, strlen(topic)); }
    if (topic && partition >= 0) bp_buf_printf(&f, ",\"partition\":%d", partition);
    if (detail) {
        bp_buf_adds(&f, topic ? ",\"detail\":" : "\"detail\":");
        bp_json_write_text(&f, detail, strlen(detail));
    }
    bp_log(level, msg, f.data);
    bp_buf_free(&f);
}

static int stopping(bp_cluster *c) { return __atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE); }

static void set_health(bp_cluster *c, int up, const char *why)
{
    pthread_mutex_lock(&c->mu);
    int was = c->brokers_up;
    c->brokers_up = up;
    if (why) snprintf(c->last_error, sizeof c->last_error, "%s", why);
    pthread_mutex_unlock(&c->mu);
    if (was != up) bp_log(up ? "info" : "error", up ? "kafka: brokers reachable again" : "kafka: brokers unreachable", NULL);
}

/* Kafka topic names: [A-Za-z0-9._-], at most 249 characters. */
static void topic_name(char *out, size_t n, const char *prefix, const char *what)
{
    int w = snprintf(out, n, "%s%s", prefix, what);
    for (char *p = out + strlen(prefix); *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            *p = '_';
    if (w > 249) out[249] = '\0';
}

static int set_conf(rd_kafka_conf_t *conf, const char *k, const char *v, bp_error *err)
{
    char e[512];
    if (rd_kafka_conf_set(conf, k, v, e, sizeof e) == RD_KAFKA_CONF_OK) return 0;
    bp_error_set(err, "kafka setting %s=%s: %s", k, v, e);
    return -1;
}

static void on_error(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    (void)rk;
    bp_cluster *c = opaque;
    rd_kafka_resp_err_t e = (rd_kafka_resp_err_t)code;
    if (e == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || e == RD_KAFKA_RESP_ERR__TRANSPORT ||
        e == RD_KAFKA_RESP_ERR__RESOLVE) {
        if (e == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) set_health(c, 0, reason);
        return;   /* librdkafka reconnects by itself; the probe says when it is back */
    }
    log_kafka("error", "kafka error", NULL, -1, reason);
}

/* librdkafka's own log lines, as ours (JSON on stderr), warnings and worse only. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level > 4) return;
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"facility\":");
    bp_json_write_text(&f, fac, strlen(fac));
    bp_buf_adds(&f, ",\"detail\":");
    bp_json_write_text(&f, buf, strlen(buf));
    bp_log(level <= 3 ? "error" : "warn", "librdkafka", f.data);
    bp_buf_free(&f);
}

/* ---- --kafka-config: TLS, SASL and the rest of librdkafka's settings ------------------------------ */

/* What the node's guarantees rest on (or a flag of its own sets): a file
 * may not change them. */
static const char *managed_by(const char *key)
{
    static const struct { const char *key, *by; } managed[] = {
        { "bootstrap.servers", "--kafka" }, { "metadata.broker.list", "--kafka" }, { "group.id", "--cluster" },
        { "session.timeout.ms", "--kafka-session-timeout-ms" }, { "enable.idempotence", "the node (202 after acks=all, never twice)" },
        { "acks", "the node (202 after acks=all, never twice)" }, { "request.required.acks", "the node (202 after acks=all, never twice)" },
        { "enable.auto.commit", "the node (offsets committed at the oldest unfinished event)" },
        { "enable.auto.offset.store", "the node (offsets committed at the oldest unfinished event)" },
        { "partition.assignment.strategy", "the node (cooperative-sticky)" },
    };
    for (size_t i = 0; i < sizeof managed / sizeof managed[0]; i++)
        if (!strcmp(key, managed[i].key)) return managed[i].by;
    return NULL;
}

/* Values never shown: a librdkafka message may quote the value it refused. */
static int secret_setting(const char *key)
{
    return strstr(key, "password") || strstr(key, "secret") || strstr(key, ".pem") || strstr(key, "jaas") ||
           strstr(key, "oauthbearer.config");
}

static int apply_settings(const bp_cluster *c, rd_kafka_conf_t *conf, bp_error *err)
{
    for (size_t i = 0; i < c->nsettings; i++) {
        const kafka_setting *s = &c->settings[i];
        char e[512];
        if (rd_kafka_conf_set(conf, s->key, s->value, e, sizeof e) == RD_KAFKA_CONF_OK) continue;
        if (secret_setting(s->key) && *s->value && strstr(e, s->value)) snprintf(e, sizeof e, "invalid value (not shown)");
        bp_error_set(err, "%s:%d: kafka setting %s: %s", c->settings_file, s->line, s->key, e);
        return -1;
    }
    return 0;
}

/* `key=value` lines (blank lines and # comments skipped), each checked by
 * librdkafka now, so that a mistake is named with its line before the node
 * connects anywhere. */
static int read_settings(bp_cluster *c, const char *path, bp_error *err)
{
    bp_buf text;
    bp_buf_init(&text);
    if (bp_read_file(path, &text, err) < 0) { bp_buf_free(&text); return -1; }
    c->settings_file = strdup(path);
    int rc = 0, line = 0;
    for (char *p = text.data ? text.data : "", *next; rc == 0 && *p; p = next) {
        line++;
        next = p + strcspn(p, "\n");
        if (*next) *next++ = '\0';
        char *end = p + strlen(p);
        while (end > p && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
        p += strspn(p, " \t");
        if (!*p || *p == '#') continue;
        char *eq = strchr(p, '=');
        if (!eq || eq == p) {
            bp_error_set(err, "%s:%d: expected key=value (librdkafka's settings, e.g. security.protocol=SASL_SSL)", path, line);
            rc = -1;
            break;
        }
        char *k_end = eq;
        while (k_end > p && (k_end[-1] == ' ' || k_end[-1] == '\t')) k_end--;
        *k_end = '\0';
        const char *value = eq + 1 + strspn(eq + 1, " \t");
        const char *by = managed_by(p);
        if (by) {
            bp_error_set(err, "%s:%d: %s is set by %s, not by --kafka-config", path, line, p, by);
            rc = -1;
            break;
        }
        c->settings = realloc(c->settings, (c->nsettings + 1) * sizeof *c->settings);
        if (!c->settings) abort();
        c->settings[c->nsettings++] = (kafka_setting){ strdup(p), strdup(value), line };
    }
    memset(text.data, 0, text.len);   /* it may hold a password */
    bp_buf_free(&text);
    if (rc == 0) {
        rd_kafka_conf_t *scratch = rd_kafka_conf_new();
        rc = apply_settings(c, scratch, err);
        rd_kafka_conf_destroy(scratch);
    }
    return rc;
}

static rd_kafka_conf_t *base_conf(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    if (set_conf(conf, "bootstrap.servers", c->brokers, err) < 0 || set_conf(conf, "client.id", c->node, err) < 0 ||
        set_conf(conf, "reconnect.backoff.max.ms", "1000", err) < 0 || apply_settings(c, conf, err) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

/* ---- slots: this node's leases on partitions ------------------------------------------------- */

static slot *slot_at(bp_cluster *c, int64_t id)
{
    int64_t i = id - c->epoch_base;
    if (i < 1 || i > __atomic_load_n(&c->nslots, __ATOMIC_ACQUIRE)) return NULL;
    slot *chunk = __atomic_load_n(&c->chunks[(i - 1) / SLOT_CHUNK], __ATOMIC_ACQUIRE);
    return chunk ? &chunk[(i - 1) % SLOT_CHUNK] : NULL;
}

/* A new lease (consumer thread). */
static int64_t slot_new(bp_cluster *c, const char *topic, int partition)
{
    pthread_mutex_lock(&c->mu);
    int64_t i = c->nslots + 1;
    if ((i - 1) / SLOT_CHUNK >= SLOT_CHUNKS) abort();   /* 16M rebalances of one process */
    slot **chunk = &c->chunks[(i - 1) / SLOT_CHUNK];
    if (!*chunk) {
        slot *fresh = calloc(SLOT_CHUNK, sizeof **chunk);
        if (!fresh) abort();
        __atomic_store_n(chunk, fresh, __ATOMIC_RELEASE);
    }
    slot *s = &(*chunk)[(i - 1) % SLOT_CHUNK];
    s->topic = strdup(topic);
    s->partition = partition;
    s->next_offset = -1;
    s->committed = -1;
    __atomic_store_n(&s->owned, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&c->nslots, i, __ATOMIC_RELEASE);
    if (c->nassigned == c->capassigned) {
        c->capassigned = c->capassigned ? c->capassigned * 2 : 64;
        c->assigned = realloc(c->assigned, c->capassigned * sizeof *c->assigned);
        if (!c->assigned) abort();
    }
    c->assigned[c->nassigned++] = c->epoch_base + i;
    pthread_mutex_unlock(&c->mu);
    return c->epoch_base + i;
}

/* The owned slot of topic/partition, 0 if none (consumer thread, or mu held). */
static int64_t slot_find_locked(bp_cluster *c, const char *topic, int partition)
{
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = slot_at(c, c->assigned[k]);
        if (s && s->partition == partition && !strcmp(s->topic, topic)) return c->assigned[k];
    }
    return 0;
}

static int64_t slot_find(bp_cluster *c, const char *topic, int partition)
{
    pthread_mutex_lock(&c->mu);
    int64_t id = slot_find_locked(c, topic, partition);
    pthread_mutex_unlock(&c->mu);
    return id;
}

static int lease_holds(void *ctx, int64_t id)
{
    slot *s = slot_at(ctx, id);
    return s && __atomic_load_n(&s->owned, __ATOMIC_ACQUIRE);
}

static void lease_sending(void *ctx, int64_t id, int delta)
{
    slot *s = slot_at(ctx, id);
    if (s) __atomic_fetch_add(&s->inflight, delta, __ATOMIC_ACQ_REL);
}

void bp_cluster_lease(bp_cluster *c, bp_lease *out)
{
    out->holds = lease_holds;
    out->sending = lease_sending;
    out->ctx = c;
}

/* ---- producing ------------------------------------------------------------------------------- */

/* Delivery reports: a waiter's pointer (aligned, low bit 0), or an
 * outcome's epoch tagged with the low bit. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    bp_cluster *c = opaque;
    uintptr_t tag = (uintptr_t)m->_private;
    if (m->err) {
        __atomic_fetch_add(&c->produce_failures, 1, __ATOMIC_RELAXED);
    } else {
        set_health(c, 1, NULL);
    }
    if (tag & 1) {
        if (m->err) log_kafka("error", "kafka: an outcome record was not written; other nodes will not show it",
                              rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_err2str(m->err));
        __atomic_fetch_sub(&c->outstanding[(tag >> 1) % EPOCHS], 1, __ATOMIC_ACQ_REL);
        return;
    }
    waiter *w = (waiter *)tag;
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->err = m->err;
    w->partition = m->partition;
    w->offset = m->offset;
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
    if (placed) { placed->partition = w.partition; placed->offset = w.offset; }
    if (!e) return 0;
    pthread_mutex_lock(&c->mu);
    int up = c->brokers_up;
    pthread_mutex_unlock(&c->mu);
    bp_error_set(err, "Kafka did not acknowledge the write to %s: %s%s", topic, rd_kafka_err2str(e),
                 up ? "" : " (no broker reachable)");
    if (e == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT || e == RD_KAFKA_RESP_ERR__TRANSPORT) set_health(c, 0, rd_kafka_err2str(e));
    return -1;
}

int bp_cluster_send_events(bp_cluster *c, const char *integration, const char *vendor, const char *account,
                           const char *events, size_t len, int replay, bp_error *err)
{
    char topic[256];
    topic_name(topic, sizeof topic, "delivery-", c->per_vendor ? vendor : integration);
    return produce_sync(c, topic, account, strlen(account), events, len, integration, replay, NULL, err);
}

int bp_cluster_publish_config(bp_cluster *c, const char *integration, const char *record, size_t len, bp_error *err)
{
    return produce_sync(c, c->t_config, integration, strlen(integration), record, len, integration, 0, NULL, err);
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
    while (c->sessions_pos[part] <= offset && rc == 0 && !stopping(c))
        rc = pthread_cond_timedwait(&c->applied, &c->mu, &until);
    int done = c->sessions_pos[part] > offset;
    pthread_mutex_unlock(&c->mu);
    return done ? 0 : -1;
}

/* A claim on the jti, keyed by it (so every claim on one jti lands in one
 * partition, in one order), with a random id of its own; the viewer marks
 * the first claim of each jti as won.  Reading our own claim back means
 * every earlier one was read, so the answer is the same on every node. */
int bp_cluster_spend_jti(bp_cluster *c, const char *jti, int64_t expires_at)
{
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
    if (rc < 0) { log_kafka("error", "kafka: a console token id was not recorded", c->t_sessions, -1, err.msg); return -1; }
    if (sessions_applied(c, at.partition, at.offset) < 0) {
        log_kafka("error", "kafka: this node did not read its own claim on a console token id back in time",
                  c->t_sessions, at.partition, NULL);
        return -1;
    }
    return bp_jti_set_has(c->won, claim) ? 0 : 1;
}

static void produce_async(bp_cluster *c, const char *topic, const char *key, const bp_buf *value)
{
    unsigned e = __atomic_load_n(&c->epoch, __ATOMIC_ACQUIRE) % EPOCHS;
    __atomic_fetch_add(&c->outstanding[e], 1, __ATOMIC_ACQ_REL);
    rd_kafka_resp_err_t r = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(value->data, value->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE((void *)(((uintptr_t)e << 1) | 1)), RD_KAFKA_V_END);
    if (r) {
        __atomic_fetch_sub(&c->outstanding[e], 1, __ATOMIC_ACQ_REL);
        __atomic_fetch_add(&c->produce_failures, 1, __ATOMIC_RELAXED);
        log_kafka("error", "kafka: could not queue an outcome record; other nodes will not show it", topic, -1,
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
void bp_cluster_outcome(bp_cluster *c, const char *integration, const bp_stored *ev, const char *line, size_t len,
                        enum bp_end end, const char *reason)
{
    const char *label = bp_ends[end].label, *state = bp_ends[end].state;
    int final = bp_ends[end].final;
    slot *s = ev->ksrc ? slot_at(c, ev->ksrc) : NULL;
    bp_buf v;
    bp_buf_init(&v);
    write_record(c, &v, integration, label, state, final, ev->attempts, s ? s->topic : NULL, s ? s->partition : 0,
                 ev->koff, ev->idx, reason, line, len, ev->body, ev->body_len);
    produce_async(c, c->t_outcomes, integration, &v);
    if (end == BP_END_DEAD) produce_async(c, c->t_dead, integration, &v);
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

/* ---- topics ------------------------------------------------------------------------------------- */

/* Ask the brokers to create topics (an existing one is fine).  `wait_ms` 0:
 * the answer is logged by the poller; else waited for, and 0 returned when
 * every topic exists.  NAME.integrations is compacted: it is the
 * configuration, and a broker's auto-created topic would expire it. */
static int create_topics(bp_cluster *c, const char *const *names, int n, int wait_ms)
{
    char e[512];
    rd_kafka_NewTopic_t **nt = calloc((size_t)n + 1, sizeof *nt);
    if (!nt) abort();
    for (int i = 0; i < n; i++) {
        int parts = !strcmp(names[i], c->t_config) || !strcmp(names[i], c->t_sessions) ? 1 : c->partitions;
        nt[i] = rd_kafka_NewTopic_new(names[i], parts, -1, e, sizeof e);
        if (nt[i] && !strcmp(names[i], c->t_config)) rd_kafka_NewTopic_set_config(nt[i], "cleanup.policy", "compact");
        if (nt[i] && !strcmp(names[i], c->t_sessions)) rd_kafka_NewTopic_set_config(nt[i], "retention.ms", SESSIONS_RETENTION_MS);
    }
    rd_kafka_AdminOptions_t *o = rd_kafka_AdminOptions_new(c->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(o, wait_ms > 0 ? wait_ms : 10000, e, sizeof e);
    rd_kafka_queue_t *q = wait_ms > 0 ? rd_kafka_queue_new(c->producer) : c->admin_q;
    rd_kafka_CreateTopics(c->producer, nt, (size_t)n, o, q);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_NewTopic_destroy_array(nt, (size_t)n);
    free(nt);
    if (!wait_ms) return 0;
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, wait_ms + 2000);
    int rc = -1;
    const rd_kafka_CreateTopics_result_t *res = ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
    if (ev && rd_kafka_event_error(ev)) {
        log_kafka("warn", "kafka: cannot create topics (the brokers will auto-create them if they allow it; create "
                  "NAME.integrations yourself with cleanup.policy=compact, see the README)", NULL, -1,
                  rd_kafka_event_error_string(ev));
    } else if (res) {
        size_t cnt;
        const rd_kafka_topic_result_t **t = rd_kafka_CreateTopics_result_topics(res, &cnt);
        rc = 0;
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(t[i]);
            if (!te || te == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) continue;
            log_kafka("warn", "kafka: cannot create a topic", rd_kafka_topic_result_name(t[i]), -1, rd_kafka_err2str(te));
            rc = -1;
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    return rc;
}

/* Answers to the topics created without waiting (poller thread). */
static void read_admin_answers(bp_cluster *c)
{
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(c->admin_q, 0))) {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt = 0;
        const rd_kafka_topic_result_t **t = res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
        for (size_t i = 0; t && i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(t[i]);
            if (te && te != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                log_kafka("warn", "kafka: cannot create a topic", rd_kafka_topic_result_name(t[i]), -1, rd_kafka_err2str(te));
        }
        rd_kafka_event_destroy(ev);
    }
}

void bp_cluster_topics_changed(bp_cluster *c) { if (c) __atomic_store_n(&c->topics_changed, 1, __ATOMIC_RELEASE); }

static int cmp_text(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Subscribe to the delivery topics of the integrations this cluster has
 * (never to every "delivery-" topic: Signal's own pipeline may share the
 * brokers), creating the new ones (consumer thread). */
static void resubscribe(bp_cluster *c)
{
    bp_registry *r = c->reg;
    pthread_mutex_lock(&r->mu);
    char **names = calloc(r->n + 1, sizeof *names);
    if (!names) abort();
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++) {
        char t[256];
        topic_name(t, sizeof t, "delivery-", c->per_vendor ? r->items[i]->vendor->key : r->items[i]->id);
        names[n++] = strdup(t);
    }
    pthread_mutex_unlock(&r->mu);
    qsort(names, n, sizeof *names, cmp_text);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) { if (m && !strcmp(names[m - 1], names[i])) free(names[i]); else names[m++] = names[i]; }
    n = m;
    int same = n == c->ntopics;
    for (size_t i = 0; same && i < n; i++) same = !strcmp(names[i], c->topics[i]);
    if (same) { for (size_t i = 0; i < n; i++) free(names[i]); free(names); return; }
    /* new ones get created (their first intake would otherwise auto-create
     * them, if the brokers allow it, with the brokers' defaults) */
    const char **fresh = calloc(n + 1, sizeof *fresh);
    if (!fresh) abort();
    int nfresh = 0;
    for (size_t i = 0; i < n; i++)
        if (!c->ntopics || !bsearch(&names[i], c->topics, c->ntopics, sizeof *c->topics, cmp_text)) fresh[nfresh++] = names[i];
    if (nfresh && c->can_create) create_topics(c, fresh, nfresh, 0);
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
    if (e) log_kafka("error", "kafka: cannot subscribe to the delivery topics", NULL, -1, rd_kafka_err2str(e));
    for (size_t i = 0; i < c->ntopics; i++) free(c->topics[i]);
    free(c->topics);
    c->topics = names;
    c->ntopics = n;
}

/* ---- the poller: delivery reports and a broker probe ------------------------------------------- */

static void *poller_main(void *arg)
{
    bp_cluster *c = arg;
    double last_probe = 0;
    while (!stopping(c)) {
        rd_kafka_poll(c->producer, 100);
        read_admin_answers(c);
        if (bp_monotonic_ms() - last_probe < 2000) continue;
        last_probe = bp_monotonic_ms();
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(c->producer, 0, NULL, &md, 1500);
        if (!e && md && md->broker_cnt > 0) set_health(c, 1, NULL);
        else set_health(c, 0, e ? rd_kafka_err2str(e) : "no broker in the metadata");
        if (md) rd_kafka_metadata_destroy(md);
    }
    return NULL;
}

/* ---- the viewer: configuration and outcomes of the whole cluster -------------------------------- */

static int partitions_of(bp_cluster *c, rd_kafka_t *rk, const char *topic, int *n, bp_error *err)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    double until = bp_monotonic_ms() + 30000;
    *n = 0;
    while (!*n && bp_monotonic_ms() < until && !stopping(c)) {
        rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t, &md, 2000);
        if (!e && md->topic_cnt == 1 && !md->topics[0].err) *n = md->topics[0].partition_cnt;
        else if (!e && md->topic_cnt == 1) bp_error_set(err, "%s", rd_kafka_err2str(md->topics[0].err));
        else bp_error_set(err, "%s", rd_kafka_err2str(e));
        if (md) { rd_kafka_metadata_destroy(md); md = NULL; }
        if (!*n) usleep(300 * 1000);
    }
    rd_kafka_topic_destroy(t);
    if (*n > MAX_VIEW_PARTS) *n = MAX_VIEW_PARTS;
    if (*n) return 0;
    char why[sizeof err->msg];
    snprintf(why, sizeof why, "%s", err->msg);
    bp_error_set(err, "Kafka at %s: no partitions for topic %s within 30 s (%s); are the brokers up, and may this "
                 "client create or read the topic?", c->brokers, topic, why);
    return -1;
}

static void view_outcome(bp_cluster *c, const rd_kafka_message_t *m, bp_store *store)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, m->payload, m->len, NULL, &err) < 0 || d.nodes[0].type != BP_JOBJECT) {
        log_kafka("error", "kafka: an outcome record is not JSON; skipped", c->t_outcomes, m->partition, err.msg);
        bp_doc_free(&d);
        return;
    }
    const char *id = bp_jscalar(&d, bp_jget(&d, 0, "integration_id"));
    const char *label = bp_jscalar(&d, bp_jget(&d, 0, "label"));
    const char *state = bp_jscalar(&d, bp_jget(&d, 0, "state"));
    uint32_t line = bp_jget(&d, 0, "outcome"), src = bp_jget(&d, 0, "source"), ev = bp_jget(&d, 0, "event");
    if (!id || !label || !state || line == BP_NONE) { bp_doc_free(&d); return; }
    bp_buf text;
    bp_buf_init(&text);
    bp_json_write_node(&text, &d, line);
    const char *reason = bp_jscalar(&d, bp_jget(&d, 0, "reason"));
    /* final outcomes are stored (Live Events, dead letters, and what a node
     * taking the partition over must not deliver again); the others are
     * only shown */
    if (d.nodes[bp_jget(&d, 0, "final")].type == BP_JTRUE && src != BP_NONE) {
        const char *topic = bp_jscalar(&d, bp_jget(&d, src, "topic"));
        const char *part = bp_jscalar(&d, bp_jget(&d, src, "partition"));
        const char *off = bp_jscalar(&d, bp_jget(&d, src, "offset"));
        const char *idx = bp_jscalar(&d, bp_jget(&d, src, "index"));
        if (topic && part && off && idx) {
            bp_buf body;
            bp_buf_init(&body);
            if (ev != BP_NONE) bp_json_write_node(&body, &d, ev);
            uint32_t resp = bp_jget(&d, line, "response");
            const char *rtext = resp != BP_NONE ? bp_jscalar(&d, resp) : NULL;
            const char *status = bp_jscalar(&d, bp_jget(&d, line, "status"));
            const char *attempts = bp_jscalar(&d, bp_jget(&d, 0, "attempts"));
            const char *at = bp_jscalar(&d, bp_jget(&d, 0, "at"));
            bp_source s = { topic, atoi(part), atoll(off), atoi(idx), 0 };
            bp_store_row row;
            memset(&row, 0, sizeof row);
            row.message_id = bp_jscalar(&d, bp_jget(&d, line, "message_id"));   /* any of bp_message_id_keys */
            row.attempts = attempts ? atoi(attempts) : 0;
            row.last_status = status ? atoi(status) : 0;
            row.reason = reason;
            row.response = rtext;
            row.outcome = text.data;
            row.updated_at = at ? atoll(at) : (int64_t)bp_wall_ms();
            row.body = body.len ? body.data : NULL;
            row.state = state;
            if (bp_store_record(store, id, &s, &row) < 0)
                log_kafka("error", "could not store another node's outcome", topic, s.partition, NULL);
            bp_buf_free(&body);
        }
    }
    bp_registry_remote_outcome(c->reg, id, text.data, text.len, label, reason ? reason : "");
    bp_buf_free(&text);
    bp_doc_free(&d);
}

/* A claim on a console token id (bp_cluster_spend_jti), of any node: the jti
 * is spent here too, and the claim marked won when it is the jti's first. */
static void view_session(bp_cluster *c, const rd_kafka_message_t *m)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *jti = NULL, *claim = NULL, *exp = NULL;
    if (bp_json_parse(&d, m->payload, m->len, NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT) {
        jti = bp_jscalar(&d, bp_jget(&d, 0, "jti"));
        claim = bp_jscalar(&d, bp_jget(&d, 0, "claim"));
        exp = bp_jscalar(&d, bp_jget(&d, 0, "expires_at"));
    }
    if (!jti || !claim || !exp) {
        log_kafka("error", "kafka: a console token id record is not {jti, claim, expires_at}; skipped", c->t_sessions,
                  m->partition, NULL);
    } else {
        int first = bp_registry_spend_jti_here(c->reg, jti, atoll(exp));
        if (first == 0) bp_jti_set_add(c->won, claim, atoll(exp), (int64_t)(bp_wall_ms() / 1000));
        else if (first < 0) log_kafka("error", "kafka: could not store a spent console token id", c->t_sessions,
                                      m->partition, NULL);
    }
    bp_doc_free(&d);
}

typedef struct view_batch {
    rd_kafka_message_t *msgs[BATCH];
    int n;
} view_batch;

static void view_apply(bp_cluster *c, view_batch *b)
{
    bp_store *store = c->reg->store;
    int has_outcomes = 0;
    for (int i = 0; i < b->n; i++)
        if (!strcmp(rd_kafka_topic_name(b->msgs[i]->rkt), c->t_outcomes)) has_outcomes = 1;
    int began = has_outcomes && bp_store_begin(store) == 0;
    for (int i = 0; i < b->n; i++) {
        rd_kafka_message_t *m = b->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (!strcmp(topic, c->t_config)) {
            if (m->payload) bp_registry_apply_config(c->reg, m->payload, m->len);
        } else if (!strcmp(topic, c->t_sessions)) {
            if (m->payload) view_session(c, m);
        } else if (began && m->payload) {
            view_outcome(c, m, store);
        }
    }
    /* a store that refuses writes: the outcomes are applied again from the
     * same offsets (positions do not move) */
    int ok = !has_outcomes || (began && bp_store_commit(store, 1) == 0);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < b->n; i++) {
        rd_kafka_message_t *m = b->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (m->partition < 0 || m->partition >= MAX_VIEW_PARTS) continue;
        if (!strcmp(topic, c->t_config)) c->config_pos[m->partition] = m->offset + 1;
        else if (!strcmp(topic, c->t_sessions)) c->sessions_pos[m->partition] = m->offset + 1;
        else if (ok) c->view_pos[m->partition] = m->offset + 1;
    }
    pthread_cond_broadcast(&c->applied);
    pthread_mutex_unlock(&c->mu);
    if (!ok) {
        /* read them again: seek each outcomes partition back to what was applied */
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(c->nview);
        pthread_mutex_lock(&c->mu);
        for (int p = 0; p < c->nview; p++)
            rd_kafka_topic_partition_list_add(l, c->t_outcomes, p)->offset =
                c->view_pos[p] >= 0 ? c->view_pos[p] : RD_KAFKA_OFFSET_BEGINNING;
        pthread_mutex_unlock(&c->mu);
        rd_kafka_error_t *e = rd_kafka_seek_partitions(c->viewer, l, 2000);
        if (e) rd_kafka_error_destroy(e);
        rd_kafka_topic_partition_list_destroy(l);
        usleep(200 * 1000);
    }
    for (int i = 0; i < b->n; i++) rd_kafka_message_destroy(b->msgs[i]);
    b->n = 0;
}

static void *viewer_main(void *arg)
{
    bp_cluster *c = arg;
    view_batch b = { { 0 }, 0 };
    while (!stopping(c)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->viewer, 100);
        double until = bp_monotonic_ms() + 5;
        while (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    log_kafka("warn", "kafka: reading the cluster's topics", NULL, -1, rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
            } else {
                b.msgs[b.n++] = m;
            }
            if (b.n == BATCH || bp_monotonic_ms() > until) break;
            m = rd_kafka_consumer_poll(c->viewer, 0);
        }
        if (b.n) view_apply(c, &b);
    }
    return NULL;
}

/* The viewer reads NAME.integrations and NAME.sessions from their beginning
 * and NAME.outcomes from where this node's store has applied it (from the
 * beginning on an empty store), every partition, no consumer group. */
static int start_viewer(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = base_conf(c, err);
    if (!conf) return -1;
    char gid[300];
    snprintf(gid, sizeof gid, "%s.viewer.%s", c->name, c->node);   /* never joins: assign only */
    if (set_conf(conf, "group.id", gid, err) < 0 || set_conf(conf, "enable.auto.commit", "false", err) < 0 ||
        set_conf(conf, "enable.auto.offset.store", "false", err) < 0 ||
        set_conf(conf, "fetch.wait.max.ms", "50", err) < 0 || set_conf(conf, "enable.partition.eof", "false", err) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    char e[512];
    if (!(c->viewer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e))) { bp_error_set(err, "kafka: %s", e); return -1; }
    int nout;
    if (partitions_of(c, c->viewer, c->t_config, &c->config_parts, err) < 0 ||
        partitions_of(c, c->viewer, c->t_outcomes, &nout, err) < 0 ||
        partitions_of(c, c->viewer, c->t_sessions, &c->sessions_parts, err) < 0)
        return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(c->config_parts + nout + c->sessions_parts);
    for (int p = 0; p < c->config_parts; p++) {
        rd_kafka_topic_partition_list_add(l, c->t_config, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        int64_t lo = 0, hi = 0;
        rd_kafka_query_watermark_offsets(c->viewer, c->t_config, p, &lo, &hi, 5000);
        c->config_end[p] = hi;
        c->config_pos[p] = 0;
    }
    for (int p = 0; p < c->sessions_parts; p++) {
        rd_kafka_topic_partition_list_add(l, c->t_sessions, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        int64_t lo = 0, hi = 0;
        rd_kafka_query_watermark_offsets(c->viewer, c->t_sessions, p, &lo, &hi, 5000);
        c->sessions_end[p] = hi;
    }
    pthread_mutex_lock(&c->mu);
    c->nview = nout;
    for (int p = 0; p < nout; p++) {
        char key[300];
        snprintf(key, sizeof key, "kafka.view.%s.%d", c->t_outcomes, p);
        char *v = bp_store_meta_get(c->reg->store, "", key);
        c->view_pos[p] = v ? atoll(v) : 0;
        free(v);
        rd_kafka_topic_partition_list_add(l, c->t_outcomes, p)->offset =
            c->view_pos[p] > 0 ? c->view_pos[p] : RD_KAFKA_OFFSET_BEGINNING;
    }
    pthread_mutex_unlock(&c->mu);
    rd_kafka_resp_err_t r = rd_kafka_assign(c->viewer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (r) { bp_error_set(err, "kafka: cannot read %s: %s", c->t_outcomes, rd_kafka_err2str(r)); return -1; }
    return 0;
}

/* Save how far the viewer has applied NAME.outcomes (restart resumes there). */
static void save_view_positions(bp_cluster *c)
{
    int64_t pos[MAX_VIEW_PARTS];
    pthread_mutex_lock(&c->mu);
    int n = c->nview;
    memcpy(pos, c->view_pos, sizeof pos);
    pthread_mutex_unlock(&c->mu);
    for (int p = 0; p < n; p++) {
        if (pos[p] <= 0) continue;
        char key[300], v[32];
        snprintf(key, sizeof key, "kafka.view.%s.%d", c->t_outcomes, p);
        snprintf(v, sizeof v, "%lld", (long long)pos[p]);
        bp_store_meta_set(c->reg->store, "", key, v);
    }
}

/* Wait until the viewer has applied NAME.outcomes up to its end as of now
 * (a node about to read partitions another node delivered from). */
static void catch_up_outcomes(bp_cluster *c)
{
    int64_t hi[MAX_VIEW_PARTS];
    pthread_mutex_lock(&c->mu);
    int n = c->nview;
    pthread_mutex_unlock(&c->mu);
    for (int p = 0; p < n; p++) {
        int64_t lo = 0;
        hi[p] = 0;
        if (rd_kafka_query_watermark_offsets(c->producer, c->t_outcomes, p, &lo, &hi[p], 3000))
            hi[p] = 0;   /* unknown: nothing to wait for (the broker is away; reading waits anyway) */
    }
    double until = bp_monotonic_ms() + CATCHUP_WAIT_MS;
    for (;;) {
        int behind = 0;
        pthread_mutex_lock(&c->mu);
        for (int p = 0; p < n; p++) if (c->view_pos[p] < hi[p]) behind = 1;
        pthread_mutex_unlock(&c->mu);
        if (!behind) return;
        if (bp_monotonic_ms() > until || stopping(c)) {
            log_kafka("warn", "kafka: outcomes not caught up before reading new partitions; events finished by "
                      "their previous owner after its last commit may be delivered again", c->t_outcomes, -1, NULL);
            return;
        }
        usleep(20 * 1000);
    }
}

/* ---- the consumer: delivery topics ------------------------------------------------------------- */

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
        if (e != current % EPOCHS && __atomic_load_n(&c->outstanding[e], __ATOMIC_ACQUIRE) > 0) return 0;
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
        int64_t id = slot_find_locked(c, offsets->elems[i].topic, offsets->elems[i].partition);
        slot *s = id ? slot_at(c, id) : NULL;
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
    p.slots = calloc(n + 1, sizeof *p.slots);
    p.min = calloc(n + 1, sizeof *p.min);
    p.count = calloc(n + 1, sizeof *p.count);
    if (!p.slots || !p.min || !p.count) abort();
    for (size_t i = 0; i < n; i++) p.slots[i] = only ? only[i] : c->assigned[i];
    p.n = n;
    pthread_mutex_unlock(&c->mu);
    if (bp_store_slot_progress(c->reg->store, on_progress, &p) == 0) {
        /* every event final in the store now had its outcome produced
         * before this: in an epoch before the one that starts here */
        unsigned current = __atomic_add_fetch(&c->epoch, 1, __ATOMIC_ACQ_REL);
        double until = bp_monotonic_ms() + (blocking ? SYNC_TIMEOUT_MS : 0);
        int settled;
        while (!(settled = outcomes_settled(c, current)) && bp_monotonic_ms() < until) usleep(5 * 1000);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n + 1);
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; settled && i < n; i++) {
            slot *s = slot_at(c, p.slots[i]);
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
            if (e) log_kafka("error", "kafka: could not commit offsets; the events after them may be read again",
                             NULL, -1, rd_kafka_err2str(e));
            else __atomic_fetch_add(&c->commits, 1, __ATOMIC_RELAXED);
        }
        rd_kafka_topic_partition_list_destroy(l);
        /* stop reading a partition whose unfinished events pile up here
         * (an integration paused for its credentials keeps them) */
        for (size_t i = 0; !blocking && i < n; i++) {
            slot *s = slot_at(c, p.slots[i]);
            if (!s || !__atomic_load_n(&s->owned, __ATOMIC_ACQUIRE)) continue;
            int full = p.count[i] >= MAX_UNFINISHED;
            if (full == s->paused) continue;
            rd_kafka_topic_partition_list_t *one = rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(one, s->topic, s->partition);
            if (full) rd_kafka_pause_partitions(c->consumer, one); else rd_kafka_resume_partitions(c->consumer, one);
            rd_kafka_topic_partition_list_destroy(one);
            s->paused = full;
            log_kafka(full ? "warn" : "info", full ? "kafka: partition paused: too many unfinished events on this node"
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
    if (parts->cnt) catch_up_outcomes(c);
    for (int i = 0; i < parts->cnt; i++) {
        int64_t id = slot_new(c, parts->elems[i].topic, parts->elems[i].partition);
        char detail[64];
        snprintf(detail, sizeof detail, "slot %lld", (long long)id);
        log_kafka("info", "kafka: partition assigned", parts->elems[i].topic, parts->elems[i].partition, detail);
    }
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_assign(rk, parts);
    else rd_kafka_assign(rk, parts);
    if (e) { log_kafka("error", "kafka: assign failed", NULL, -1, rd_kafka_error_string(e)); rd_kafka_error_destroy(e); }
}

/* Give partitions up: no new requests, wait for those in flight (their
 * outcomes recorded), commit, forget the unfinished events. */
static void give_up(bp_cluster *c, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int cooperative)
{
    int64_t *ids = calloc((size_t)parts->cnt + 1, sizeof *ids);
    if (!ids) abort();
    size_t n = 0;
    for (int i = 0; i < parts->cnt; i++) {
        int64_t id = slot_find(c, parts->elems[i].topic, parts->elems[i].partition);
        if (!id) continue;
        __atomic_store_n(&slot_at(c, id)->owned, 0, __ATOMIC_RELEASE);
        ids[n++] = id;
    }
    /* the HTTP timeout bounds a request in flight */
    double until = bp_monotonic_ms() + 35000;
    for (size_t i = 0; i < n; i++)
        while (__atomic_load_n(&slot_at(c, ids[i])->inflight, __ATOMIC_ACQUIRE) > 0 && bp_monotonic_ms() < until)
            usleep(5 * 1000);
    usleep(30 * 1000);   /* the loops save answered progress within 10 ms */
    commit_offsets(c, ids, n, 1);
    for (size_t i = 0; i < n; i++) {
        slot *s = slot_at(c, ids[i]);
        long forgotten = bp_store_release_slot(c->reg->store, ids[i]);
        char detail[96];
        snprintf(detail, sizeof detail, "%ld unfinished events left to the next owner", forgotten > 0 ? forgotten : 0);
        log_kafka("info", "kafka: partition revoked", s->topic, s->partition, detail);
        pthread_mutex_lock(&c->mu);
        for (size_t k = 0; k < c->nassigned; k++)
            if (c->assigned[k] == ids[i]) { c->assigned[k] = c->assigned[--c->nassigned]; break; }
        pthread_mutex_unlock(&c->mu);
    }
    free(ids);
    rd_kafka_error_t *e = NULL;
    if (cooperative) e = rd_kafka_incremental_unassign(rk, parts);
    else rd_kafka_assign(rk, NULL);
    if (e) { log_kafka("error", "kafka: unassign failed", NULL, -1, rd_kafka_error_string(e)); rd_kafka_error_destroy(e); }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    bp_cluster *c = opaque;
    int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    __atomic_fetch_add(&c->rebalances, 1, __ATOMIC_RELAXED);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        take(c, rk, parts, cooperative);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        give_up(c, rk, parts, cooperative);
    } else {
        log_kafka("error", "kafka: rebalance failed", NULL, -1, rd_kafka_err2str(err));
        give_up(c, rk, parts, cooperative);
    }
}

typedef struct intake_ctx {
    bp_cluster *c;
    const rd_kafka_message_t *m;
    const char *integration;
    int64_t slot;
    int replay;                  /* a replayed dead letter: delivered although its message id was seen */
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
        log_kafka("error", "kafka: an event in a delivery topic is not valid", topic, k->m->partition, detail);
        __atomic_fetch_add(&k->c->bad_messages, 1, __ATOMIC_RELAXED);
        return 0;
    }
    bp_source src = { topic, k->m->partition, k->m->offset, (int)index, k->slot };
    int64_t id = bp_store_add_from(k->c->reg->store, k->integration, ev, len, k->replay ? NULL : message_id, &src,
                                   (int64_t)bp_wall_ms());
    if (id < 0) { k->ok = 0; return -1; }
    if (id == 0) __atomic_fetch_add(&k->c->duplicates, 1, __ATOMIC_RELAXED);
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
    bp_store *store = c->reg->store;
    woken w;
    w.n = 0;
    int began = bp_store_begin(store) == 0, ok = began;
    int64_t *slots = calloc((size_t)n + 1, sizeof *slots);
    if (!slots) abort();
    for (int i = 0; ok && i < n; i++) {
        rd_kafka_message_t *m = msgs[i];
        pthread_mutex_lock(&c->mu);
        slots[i] = slot_find_locked(c, rd_kafka_topic_name(m->rkt), m->partition);
        pthread_mutex_unlock(&c->mu);
        if (!slots[i]) continue;   /* revoked while this batch was read */
        char id[40];
        if (integration_of(c, m, id, sizeof id) < 0 || !m->payload) {
            char detail[160];
            snprintf(detail, sizeof detail, "offset %lld: no integration_id header (and the topic does not name one); "
                     "not delivered", (long long)m->offset);
            log_kafka("error", "kafka: a message in a delivery topic names no integration", rd_kafka_topic_name(m->rkt),
                      m->partition, detail);
            __atomic_fetch_add(&c->bad_messages, 1, __ATOMIC_RELAXED);
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
            slot *s = slots[i] ? slot_at(c, slots[i]) : NULL;
            if (s && msgs[i]->offset + 1 > s->next_offset) s->next_offset = msgs[i]->offset + 1;
        }
        pthread_mutex_unlock(&c->mu);
        for (int i = 0; i < w.n; i++) if (c->reg->pool) bp_pool_wake(c->reg->pool, w.ids[i]);
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
    bp_store_waiting_integrations(c->reg->store, (int64_t)bp_wall_ms() - 60000, on_waiting, &s);
    for (int i = 0; i < s.n; i++) {
        char why[200];
        snprintf(why, sizeof why, "no integration with id '%s' in this cluster's configuration (deleted, or never "
                 "installed); not delivered", ids[i]);
        long n = bp_store_end_sourced(c->reg->store, ids[i], "error", why);
        if (n > 0) log_kafka("error", why, NULL, -1, NULL);
    }
}

static void *consumer_main(void *arg)
{
    bp_cluster *c = arg;
    rd_kafka_message_t *msgs[BATCH];
    double last_commit = bp_monotonic_ms(), last_sweep = last_commit, last_save = last_commit;
    while (!stopping(c)) {
        if (__atomic_exchange_n(&c->topics_changed, 0, __ATOMIC_ACQ_REL)) resubscribe(c);
        int n = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->consumer, 100);
        double until = bp_monotonic_ms() + 10;
        while (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF && m->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                    log_kafka("warn", "kafka: reading delivery topics", m->rkt ? rd_kafka_topic_name(m->rkt) : NULL,
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
        if (now - last_save >= 5000) { save_view_positions(c); last_save = now; }
        if (now - last_sweep >= 10000) { sweep_unknown(c); last_sweep = now; }
    }
    return NULL;
}

static int start_consumer(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = base_conf(c, err);
    if (!conf) return -1;
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%d", c->session_timeout_ms);
    if (set_conf(conf, "group.id", c->name, err) < 0 ||
        set_conf(conf, "partition.assignment.strategy", "cooperative-sticky", err) < 0 ||
        set_conf(conf, "enable.auto.commit", "false", err) < 0 ||
        set_conf(conf, "auto.offset.reset", "earliest", err) < 0 ||
        set_conf(conf, "session.timeout.ms", timeout, err) < 0 ||
        set_conf(conf, "heartbeat.interval.ms", c->session_timeout_ms < 9000 ? "1000" : "3000", err) < 0 ||
        /* a delivery topic just created shows in the metadata soon */
        set_conf(conf, "topic.metadata.refresh.interval.ms", "5000", err) < 0 ||
        set_conf(conf, "fetch.wait.max.ms", "50", err) < 0 ||
        set_conf(conf, "enable.partition.eof", "false", err) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    char e[512];
    if (!(c->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e))) { bp_error_set(err, "kafka: %s", e); return -1; }
    rd_kafka_poll_set_consumer(c->consumer);
    bp_cluster_topics_changed(c);   /* the first subscription, by the consumer thread */
    return 0;
}

/* ---- life cycle -------------------------------------------------------------------------------- */

bp_cluster *bp_cluster_new(bp_registry *reg, const bp_cluster_opts *o, bp_error *err)
{
    bp_cluster *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->reg = reg;
    c->brokers = strdup(o->brokers);
    c->name = strdup(o->name && *o->name ? o->name : "blueprint");
    c->node = strdup(o->node && *o->node ? o->node : "node");
    c->per_vendor = o->topic_mode && !strcmp(o->topic_mode, "per_vendor");
    c->session_timeout_ms = o->session_timeout_ms > 0 ? o->session_timeout_ms : 10000;
    c->partitions = o->partitions > 0 ? o->partitions : 12;
    /* slot ids of this process never meet those of an earlier one in the store */
    c->epoch_base = ((int64_t)(bp_wall_ms() / 1000.0)) << 24;
    pthread_mutex_init(&c->mu, NULL);
    c->brokers_up = 1;
    topic_name(c->t_config, sizeof c->t_config, c->name, ".integrations");
    topic_name(c->t_outcomes, sizeof c->t_outcomes, c->name, ".outcomes");
    topic_name(c->t_dead, sizeof c->t_dead, c->name, ".dead-letters");
    topic_name(c->t_sessions, sizeof c->t_sessions, c->name, ".sessions");
    pthread_cond_init(&c->applied, NULL);
    c->won = bp_jti_set_new();
    if (o->config_file && *o->config_file && read_settings(c, o->config_file, err) < 0) {
        bp_cluster_free(c);
        return NULL;
    }
    rd_kafka_conf_t *conf = base_conf(c, err);
    if (!conf) { bp_cluster_free(c); return NULL; }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    /* 202 only after every in-sync replica has the message, never twice */
    if (set_conf(conf, "enable.idempotence", "true", err) < 0 || set_conf(conf, "acks", "all", err) < 0 ||
        set_conf(conf, "linger.ms", "2", err) < 0 ||
        set_conf(conf, "message.timeout.ms", "5000", err) < 0) {
        rd_kafka_conf_destroy(conf);
        bp_cluster_free(c);
        return NULL;
    }
    char e[512];
    if (!(c->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e))) {
        bp_error_set(err, "kafka%s%s: %s", c->settings_file ? ", with the settings of " : "",
                     c->settings_file ? c->settings_file : "", e);
        bp_cluster_free(c);
        return NULL;
    }
    c->admin_q = rd_kafka_queue_new(c->producer);
    return c;
}

/* Read the configuration topic to its end (a node with an empty state
 * directory rebuilds its integrations from it), then start reading. */
int bp_cluster_start(bp_cluster *c, bp_error *err)
{
    if (pthread_create(&c->poller_thread, NULL, poller_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
    c->threads_started = 1;
    bp_store_release_slot(c->reg->store, 0);   /* unfinished events of an earlier run: their partitions' owners read them */
    const char *mine[] = { c->t_config, c->t_outcomes, c->t_dead, c->t_sessions };
    c->can_create = create_topics(c, mine, 4, 3000) == 0;
    if (start_viewer(c, err) < 0) return -1;
    if (pthread_create(&c->viewer_thread, NULL, viewer_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
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
    if (start_consumer(c, err) < 0) return -1;
    if (pthread_create(&c->consumer_thread, NULL, consumer_main, c) != 0) { bp_error_set(err, "cannot start a thread"); return -1; }
    c->threads_started = 3;
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"brokers\":");
    bp_json_write_text(&f, c->brokers, strlen(c->brokers));
    bp_buf_adds(&f, ",\"cluster\":");
    bp_json_write_text(&f, c->name, strlen(c->name));
    bp_buf_printf(&f, ",\"topic_mode\":\"%s\"", c->per_vendor ? "per_vendor" : "per_integration");
    bp_log("info", "kafka: cluster mode", f.data);
    bp_buf_free(&f);
    return 0;
}

/* Leave the group (its partitions go to the other nodes: the revocation
 * finishes what is in flight and commits), then stop. */
void bp_cluster_stop(bp_cluster *c)
{
    if (!c) return;
    __atomic_store_n(&c->stopping, 1, __ATOMIC_RELEASE);
    if (c->threads_started >= 3) {
        pthread_join(c->consumer_thread, NULL);
        rd_kafka_consumer_close(c->consumer);   /* revokes: runs on_rebalance here */
    }
    if (c->threads_started >= 2) {
        pthread_join(c->viewer_thread, NULL);
        save_view_positions(c);
    }
    if (c->threads_started >= 1) c->threads_started = 1;
}

/* After the delivery pool has stopped: its last outcomes are flushed. */
void bp_cluster_free(bp_cluster *c)
{
    if (!c) return;
    bp_cluster_stop(c);
    if (c->producer) rd_kafka_flush(c->producer, 5000);
    if (c->threads_started >= 1) pthread_join(c->poller_thread, NULL);
    if (c->viewer) { rd_kafka_consumer_close(c->viewer); rd_kafka_destroy(c->viewer); }
    if (c->consumer) rd_kafka_destroy(c->consumer);
    if (c->admin_q) rd_kafka_queue_destroy(c->admin_q);
    if (c->producer) rd_kafka_destroy(c->producer);
    for (size_t i = 0; i < c->ntopics; i++) free(c->topics[i]);
    free(c->topics);
    for (int i = 0; i < SLOT_CHUNKS && c->chunks[i]; i++) {
        for (int k = 0; k < SLOT_CHUNK; k++) free(c->chunks[i][k].topic);
        free(c->chunks[i]);
    }
    free(c->assigned);
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
        slot *s = slot_at(c, c->assigned[k]);
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
                      __atomic_load_n((long *)((char *)c + counters[i].off), __ATOMIC_RELAXED));
    bp_buf_adds(out, "# HELP blueprint_kafka_consumer_lag Messages in the partition after this node's committed "
                "offset.\n# TYPE blueprint_kafka_consumer_lag gauge\n");
    pthread_mutex_lock(&c->mu);
    for (size_t k = 0; k < c->nassigned; k++) {
        slot *s = slot_at(c, c->assigned[k]);
        int64_t lo = 0, hi = 0;
        if (rd_kafka_get_watermark_offsets(c->consumer, s->topic, s->partition, &lo, &hi)) continue;
        int64_t from = s->committed >= 0 ? s->committed : lo;
        bp_buf_adds(out, "blueprint_kafka_consumer_lag{topic=");
        bp_json_write_text(out, s->topic, strlen(s->topic));
        bp_buf_printf(out, ",partition=\"%d\"} %lld\n", s->partition, (long long)(hi > from ? hi - from : 0));
    }
    pthread_mutex_unlock(&c->mu);
}
