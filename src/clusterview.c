/*
 * clusterview.c — the viewer: every node reads the whole cluster's
 * configuration (NAME.integrations: integrations and blueprint revisions,
 * applied through the registry), spent console
 * token ids (NAME.sessions) and outcomes (NAME.outcomes: stored, counted,
 * shown in Live Events), every partition, outside any consumer group.
 */
#include "cluster.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the viewer: configuration and outcomes of the whole cluster -------------------------------- */

static int partitions_of(bp_cluster *c, rd_kafka_t *rk, const char *topic, int *n, bp_error *err)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    double until = bp_monotonic_ms() + 30000;
    *n = 0;
    while (!*n && bp_monotonic_ms() < until && !cluster_stopping(c)) {
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

/* A batch some node got queued at the vendor (cluster.c's batch_queued):
 * kept until an outcome of one of its events closes it, so that whichever
 * node owns its partition next resumes it instead of sending it again. */
static void view_batch_queued(bp_cluster *c, const rd_kafka_message_t *m, bp_doc *d, uint32_t bq, bp_store *store)
{
    const char *id = bp_jscalar(d, bp_jget(d, 0, "integration_id"));
    const char *node = bp_jscalar(d, bp_jget(d, 0, "node"));
    const char *batch = bp_jscalar(d, bp_jget(d, bq, "id"));
    const char *polls = bp_jscalar(d, bp_jget(d, bq, "polls"));
    uint32_t ans = bp_jget(d, bq, "answer"), evs = bp_jget(d, bq, "events");
    const char *status = ans != BP_NONE ? bp_jscalar(d, bp_jget(d, ans, "status")) : NULL;
    const char *url = ans != BP_NONE ? bp_jscalar(d, bp_jget(d, ans, "url")) : NULL;
    uint32_t body = ans != BP_NONE ? bp_jget(d, ans, "body") : BP_NONE;
    if (!id || !node || !batch || !status || !url || body == BP_NONE || d->nodes[body].type != BP_JSTRING ||
        evs == BP_NONE || d->nodes[evs].type != BP_JARRAY) {
        cluster_log_kafka("error", "kafka: a queued batch record lacks a field; skipped (its events may be sent again "
                          "by the partition's next owner)", c->t_outcomes, m->partition, NULL);
        return;
    }
    size_t n = d->nodes[evs].len;
    bp_source *src = bp_calloc(n + 1, sizeof *src);
    int ok = n > 0;
    uint32_t e = evs + 1;
    for (size_t i = 0; ok && i < n; i++, e = d->nodes[e].next) {
        const char *topic = bp_jscalar(d, bp_jget(d, e, "topic")), *part = bp_jscalar(d, bp_jget(d, e, "partition"));
        const char *off = bp_jscalar(d, bp_jget(d, e, "offset")), *idx = bp_jscalar(d, bp_jget(d, e, "index"));
        ok = topic && part && off && idx;
        if (ok) src[i] = (bp_source){ topic, atoi(part), atoll(off), atoi(idx), 0 };
    }
    bp_handed h = { node, atoll(batch), id, src, n, atoi(status), url, bp_jtext(d, body),
                    d->nodes[body].len, polls ? atoi(polls) : 0 };
    if (ok && bp_store_handed_add(store, &h, (int64_t)bp_wall_ms()) < 0)
        cluster_log_kafka("error", "could not store a batch another node got queued; its events may be sent again",
                          c->t_outcomes, m->partition, NULL);
    free(src);
}

/* *handed: the store may hold batches queued for some node (then each
 * outcome looks for the one it closes). */
static void view_outcome(bp_cluster *c, const rd_kafka_message_t *m, bp_store *store, int *handed)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, m->payload, m->len, NULL, &err) < 0 || d.nodes[0].type != BP_JOBJECT) {
        cluster_log_kafka("error", "kafka: an outcome record is not JSON; skipped", c->t_outcomes, m->partition, err.msg);
        bp_doc_free(&d);
        return;
    }
    uint32_t bq = bp_jget(&d, 0, "batch_queued");
    if (bq != BP_NONE) {
        view_batch_queued(c, m, &d, bq, store);
        *handed = 1;
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
    /* any outcome of an event ends the batch another node had queued with
     * it (delivered, failed, or retried alone: that batch is over) */
    if (src != BP_NONE && *handed) {
        const char *topic = bp_jscalar(&d, bp_jget(&d, src, "topic"));
        const char *part = bp_jscalar(&d, bp_jget(&d, src, "partition"));
        const char *off = bp_jscalar(&d, bp_jget(&d, src, "offset"));
        const char *idx = bp_jscalar(&d, bp_jget(&d, src, "index"));
        bp_source s = { topic, part ? atoi(part) : 0, off ? atoll(off) : 0, idx ? atoi(idx) : 0, 0 };
        if (topic && part && off && idx && bp_store_handed_close(store, &s) < 0)
            cluster_log_kafka("error", "could not close a batch another node had queued", topic, s.partition, NULL);
    }
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
            const char *batch = bp_jscalar(&d, bp_jget(&d, bp_jget(&d, line, "batch"), "id"));
            row.batch = batch ? atoll(batch) : 0;
            if (bp_store_record(store, id, &s, &row) < 0)
                cluster_log_kafka("error", "could not store another node's outcome", topic, s.partition, NULL);
            bp_buf_free(&body);
        }
    }
    bp_registry_remote_outcome(c->reg, id, text.data, text.len, label, reason ? reason : "");
    bp_buf_free(&text);
    bp_doc_free(&d);
}

/* A claim on a console token id (cluster.c's spend_jti), of any node: the jti
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
        cluster_log_kafka("error", "kafka: a console token id record is not {jti, claim, expires_at}; skipped", c->t_sessions,
                  m->partition, NULL);
    } else {
        int first = bp_registry_spend_jti_here(c->reg, jti, atoll(exp));
        if (first == 0) bp_jti_set_add(c->won, claim, atoll(exp), (int64_t)(bp_wall_ms() / 1000));
        else if (first < 0) cluster_log_kafka("error", "kafka: could not store a spent console token id", c->t_sessions,
                                      m->partition, NULL);
    }
    bp_doc_free(&d);
}

typedef struct view_batch {
    rd_kafka_message_t *msgs[BATCH];
    int n;
} view_batch;

/* ---- the configuration topic: while catching up, the newest record of each key ------------------ */

static int is_config(bp_cluster *c, const rd_kafka_message_t *m)
{
    return !strcmp(rd_kafka_topic_name(m->rkt), c->t_config);
}

static int is_blueprint(const rd_kafka_message_t *m)
{
    size_t kn = strlen(BP_BLUEPRINT_KEY);
    return m->key && m->key_len > kn && !memcmp(m->key, BP_BLUEPRINT_KEY, kn);
}

/* A record the configuration topic held when the node started: the topic
 * is not compacted yet (or never, on the mock cluster), so a key may have
 * many, and applying each (for a blueprint a compile and a write) could
 * keep the node from listening; the newest stands for all, as compaction
 * would have it. */
static void hold(held_list *l, const rd_kafka_message_t *m)
{
    held_record *h = NULL;
    for (size_t i = 0; i < l->n && !h; i++)
        if (l->v[i].key_len == m->key_len && !memcmp(l->v[i].key, m->key, m->key_len)) h = &l->v[i];
    if (!h) {
        l->v = bp_realloc(l->v, (l->n + 1) * sizeof *l->v);
        h = &l->v[l->n++];
        h->key = bp_memdup(m->key ? m->key : "", m->key_len);
        h->key_len = m->key_len;
    } else {
        free(h->value);
    }
    h->value = bp_memdup(m->payload, m->len);
    h->len = m->len;
}

void cluster_free_held(held_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Has the viewer read the configuration topic up to its end at start, with
 * this batch?  (config_pos is written by the viewer alone.) */
static int caught_up_with(bp_cluster *c, const view_batch *b)
{
    for (int p = 0; p < c->config_parts; p++) {
        int64_t pos = c->config_pos[p];
        for (int i = 0; i < b->n; i++)
            if (is_config(c, b->msgs[i]) && b->msgs[i]->partition == p && b->msgs[i]->offset + 1 > pos)
                pos = b->msgs[i]->offset + 1;
        if (pos < c->config_end[p]) return 0;
    }
    return 1;
}

static int apply_blueprint(bp_cluster *c, const held_record *h)
{
    return bp_registry_apply_blueprint(c->reg, h->key, h->key_len, h->value, h->len);
}

/* The held records applied, once caught up (before the node listens): each
 * blueprint's newest revision first, so that the integrations' configs
 * saved against it are unsealed and checked by it (a secret field it adds
 * is known), then the configs; then each blueprint refused at first again
 * (its check met configs this node had stored before, which the records
 * just applied may have replaced). */
static void apply_held(bp_cluster *c)
{
    held_list *bl = &c->held_blueprints, *cl = &c->held_configs;
    int *refused = bp_calloc(bl->n + 1, sizeof *refused);
    for (size_t i = 0; i < bl->n; i++) refused[i] = apply_blueprint(c, &bl->v[i]) < 0;
    for (size_t i = 0; i < cl->n; i++) bp_registry_apply_config(c->reg, cl->v[i].value, cl->v[i].len);
    for (size_t i = 0; i < bl->n; i++)
        if (refused[i] && cl->n) apply_blueprint(c, &bl->v[i]);
    free(refused);
    cluster_free_held(bl);
    cluster_free_held(cl);
}

static void config_record(bp_cluster *c, const rd_kafka_message_t *m)
{
    if (!m->payload) return;
    int catching_up = m->partition >= 0 && m->partition < c->config_parts && m->offset < c->config_end[m->partition];
    if (catching_up) hold(is_blueprint(m) ? &c->held_blueprints : &c->held_configs, m);
    else if (is_blueprint(m)) bp_registry_apply_blueprint(c->reg, m->key, m->key_len, m->payload, m->len);
    else bp_registry_apply_config(c->reg, m->payload, m->len);
}

/* A batch: the configuration and the spent token ids first, in the topics'
 * order (a blueprint's apply compiles and writes files: not inside the
 * store's write transaction), then the outcomes in one transaction. */
static void view_apply(bp_cluster *c, view_batch *b)
{
    bp_store *store = c->store;
    int has_outcomes = 0;
    for (int i = 0; i < b->n; i++) {
        rd_kafka_message_t *m = b->msgs[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        if (!strcmp(topic, c->t_config)) config_record(c, m);
        else if (!strcmp(topic, c->t_sessions)) { if (m->payload) view_session(c, m); }
        else has_outcomes = 1;
    }
    if ((c->held_blueprints.n || c->held_configs.n) && caught_up_with(c, b))
        apply_held(c);   /* before the positions say so: start waits for them */
    int began = has_outcomes && bp_store_begin(store) == 0;
    int handed = began && bp_store_handed_any(store);
    for (int i = 0; began && i < b->n; i++)
        if (!strcmp(rd_kafka_topic_name(b->msgs[i]->rkt), c->t_outcomes) && b->msgs[i]->payload)
            view_outcome(c, b->msgs[i], store, &handed);
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

void *cluster_viewer_main(void *arg)
{
    bp_cluster *c = arg;
    view_batch b = { { 0 }, 0 };
    while (!cluster_stopping(c)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->viewer, 100);
        double until = bp_monotonic_ms() + 5;
        while (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    cluster_log_kafka("warn", "kafka: reading the cluster's topics", NULL, -1, rd_kafka_message_errstr(m));
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
int cluster_start_viewer(bp_cluster *c, bp_error *err)
{
    rd_kafka_conf_t *conf = cluster_base_conf(c, err);
    if (!conf) return -1;
    char gid[300];
    snprintf(gid, sizeof gid, "%s.viewer.%s", c->name, c->node);   /* never joins: assign only */
    if (cluster_set_conf(conf, "group.id", gid, err) < 0 || cluster_set_conf(conf, "enable.auto.commit", "false", err) < 0 ||
        cluster_set_conf(conf, "enable.auto.offset.store", "false", err) < 0 ||
        cluster_set_conf(conf, "fetch.wait.max.ms", "50", err) < 0 || cluster_set_conf(conf, "enable.partition.eof", "false", err) < 0) {
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
        char *v = bp_store_meta_get(c->store, "", key);
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
void cluster_save_view_positions(bp_cluster *c)
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
        bp_store_meta_set(c->store, "", key, v);
    }
}

/* Wait until the viewer has applied NAME.outcomes up to its end as of now
 * (a node about to read partitions another node delivered from). */
void cluster_catch_up_outcomes(bp_cluster *c)
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
        if (bp_monotonic_ms() > until || cluster_stopping(c)) {
            cluster_log_kafka("warn", "kafka: outcomes not caught up before reading new partitions; events finished by "
                      "their previous owner after its last commit may be delivered again", c->t_outcomes, -1, NULL);
            return;
        }
        usleep(20 * 1000);
    }
}
