/*
 * kafkaconf.c — cluster mode's plumbing to the brokers: every client's
 * settings (the brokers, this node's name, --kafka-config for TLS, SASL and
 * the rest of librdkafka's properties), librdkafka's errors and log lines as
 * ours, the brokers' health as this node sees it, topic names, and
 * creating the topics this service owns.
 */
#include "cluster.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- logs, health, names ------------------------------------------------------------------------- */

void cluster_log_kafka(const char *level, const char *msg, const char *topic, int partition, const char *detail)
{
    bp_buf f;
    bp_buf_init(&f);
    if (topic) bp_log_field(&f, "topic", topic);
    if (topic && partition >= 0) bp_log_field_int(&f, "partition", partition);
    if (detail) bp_log_field(&f, "detail", detail);
    bp_log(level, msg, f.data);
    bp_buf_free(&f);
}

int cluster_stopping(bp_cluster *c) { return atomic_load_explicit(&c->stopping, memory_order_acquire); }

void cluster_set_health(bp_cluster *c, int up, const char *why)
{
    pthread_mutex_lock(&c->mu);
    int was = c->brokers_up;
    c->brokers_up = up;
    if (why) snprintf(c->last_error, sizeof c->last_error, "%s", why);
    pthread_mutex_unlock(&c->mu);
    if (was != up) bp_log(up ? "info" : "error", up ? "kafka: brokers reachable again" : "kafka: brokers unreachable", NULL);
}

/* Kafka topic names: [A-Za-z0-9._-], at most 249 characters. */
void cluster_topic_name(char *out, size_t n, const char *prefix, const char *what)
{
    int w = snprintf(out, n, "%s%s", prefix, what);
    for (char *p = out + strlen(prefix); *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            *p = '_';
    if (w > 249) out[249] = '\0';
}

int cluster_set_conf(rd_kafka_conf_t *conf, const char *k, const char *v, bp_error *err)
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
        if (e == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) cluster_set_health(c, 0, reason);
        return;   /* librdkafka reconnects by itself; the probe says when it is back */
    }
    cluster_log_kafka("error", "kafka error", NULL, -1, reason);
}

/* librdkafka's own log lines, as ours (JSON on stderr), warnings and worse only. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level > 4) return;
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "facility", fac);
    bp_log_field(&f, "detail", buf);
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
int cluster_read_settings(bp_cluster *c, const char *path, bp_error *err)
{
    bp_buf text;
    bp_buf_init(&text);
    if (bp_read_file(path, &text, err) < 0) { bp_buf_free(&text); return -1; }
    c->settings_file = bp_strdup(path);
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
        c->settings = bp_realloc(c->settings, (c->nsettings + 1) * sizeof *c->settings);
        c->settings[c->nsettings++] = (kafka_setting){ bp_strdup(p), bp_strdup(value), line };
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

rd_kafka_conf_t *cluster_base_conf(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    if (cluster_set_conf(conf, "bootstrap.servers", c->brokers, err) < 0 || cluster_set_conf(conf, "client.id", c->node, err) < 0 ||
        cluster_set_conf(conf, "reconnect.backoff.max.ms", "1000", err) < 0 || apply_settings(c, conf, err) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

/* ---- creating topics ---------------------------------------------------------------------------- */

/* Ask the brokers to create topics (an existing one is fine).  `wait_ms` 0:
 * the answer is logged by the poller; else waited for, and 0 returned when
 * every topic exists.  NAME.integrations is compacted: it is the
 * configuration, and a broker's auto-created topic would expire it. */
int cluster_create_topics(bp_cluster *c, const char *const *names, int n, int wait_ms)
{
    char e[512];
    rd_kafka_NewTopic_t **nt = bp_calloc((size_t)n + 1, sizeof *nt);
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
        cluster_log_kafka("warn", "kafka: cannot create topics (the brokers will auto-create them if they allow it; create "
                  "NAME.integrations yourself with cleanup.policy=compact, see docs/cluster.md)", NULL, -1,
                  rd_kafka_event_error_string(ev));
    } else if (res) {
        size_t cnt;
        const rd_kafka_topic_result_t **t = rd_kafka_CreateTopics_result_topics(res, &cnt);
        rc = 0;
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(t[i]);
            if (!te || te == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) continue;
            cluster_log_kafka("warn", "kafka: cannot create a topic", rd_kafka_topic_result_name(t[i]), -1, rd_kafka_err2str(te));
            rc = -1;
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    return rc;
}

/* Answers to the topics created without waiting (poller thread). */
void cluster_read_admin_answers(bp_cluster *c)
{
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(c->admin_q, 0))) {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt = 0;
        const rd_kafka_topic_result_t **t = res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
        for (size_t i = 0; t && i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(t[i]);
            if (te && te != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                cluster_log_kafka("warn", "kafka: cannot create a topic", rd_kafka_topic_result_name(t[i]), -1, rd_kafka_err2str(te));
        }
        rd_kafka_event_destroy(ev);
    }
}

