/*
 * health_api.c — the operations endpoints: GET /healthz (the state store,
 * the configurations this node could not open and, in cluster mode, the
 * brokers; 503 when any fails) and GET
 * /metrics (Prometheus text: the registry's counters, queue depth, health
 * per state, the cluster's own).  Open routes: no token, no secrets.
 */
#include "server.h"

#include <string.h>

void bp_write_retention(bp_buf *b, bp_store *store, const char *integration)
{
    bp_retention r = bp_store_retention(store);
    int64_t oldest = bp_store_oldest(store, integration);
    bp_buf_adds(b, "\"retention\":{\"delivered_s\":");
    if (r.delivered_ms > 0) bp_buf_printf(b, "%lld", (long long)(r.delivered_ms / 1000)); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"dead_letters_s\":");
    if (r.dead_ms > 0) bp_buf_printf(b, "%lld", (long long)(r.dead_ms / 1000)); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"oldest_event_at\":");
    if (oldest > 0) bp_buf_printf(b, "%lld", (long long)oldest); else bp_buf_adds(b, "null");
    bp_buf_addc(b, '}');
}

/* Cluster mode: each blueprint's running revision and the cluster's. */
typedef struct blueprints_json {
    bp_buf *b;
    int n, refused;
} blueprints_json;

static void blueprint_json(void *ctx, bp_vendor *v)
{
    blueprints_json *w = ctx;
    bp_buf_adds(w->b, w->n++ ? ",{\"vendor\":" : "{\"vendor\":");
    bp_json_write_string(w->b, v->key, strlen(v->key));
    bp_buf_adds(w->b, ",\"running\":");
    if (v->bp && v->bp->revision[0]) bp_json_write_string(w->b, v->bp->revision, strlen(v->bp->revision));
    else bp_buf_adds(w->b, "null");
    if (v->cluster_revision[0] || v->cluster_error) w->refused += bp_write_cluster_blueprint(w->b, v, 0);
    else bp_buf_adds(w->b, ",\"cluster\":null");   /* no node has told a revision of it yet */
    bp_buf_addc(w->b, '}');
}

void bp_api_healthz(call *k)
{
    bp_cluster *cluster = k->s->cluster;
    bp_store_status h;
    bp_store_health(bp_registry_store(k->s->reg), &h);
    bp_buf kafka;
    bp_buf_init(&kafka);
    int kafka_up = cluster ? bp_cluster_health(cluster, &kafka) : 1;
    bp_buf unopened;
    bp_buf_init(&unopened);
    size_t nunopened = bp_unopened_json(bp_registry_unopened(k->s->reg), &unopened);
    bp_buf blueprints;
    bp_buf_init(&blueprints);
    blueprints_json bj = { &blueprints, 0, 0 };
    if (cluster) bp_registry_each_vendor(k->s->reg, blueprint_json, &bj);
    bp_buf *b = &k->r->body;
    /* not ready either while this node refuses the cluster's revision of a
     * blueprint: it maps events otherwise than the other nodes */
    int ok = !h.failing && kafka_up && !nunopened && !bj.refused;
    if (!ok) k->r->status = 503;
    bp_buf_printf(b, "{\"status\":\"%s\",\"store\":", ok ? "ok" : "unhealthy");
    if (h.failing) {
        bp_buf_adds(b, "{\"ok\":false,\"error\":");
        bp_json_write_text(b, h.last_error, strlen(h.last_error));
        bp_buf_printf(b, ",\"failures\":%ld,\"help\":\"the state store refuses writes (disk full? permissions?): "
                      "intake answers 503 and delivery progress is kept in memory and retried\"}", h.failures);
    } else {
        bp_buf_printf(b, "{\"ok\":true,\"failures\":%ld,\"bytes\":%lld,\"pruned\":%ld}", h.failures,
                      (long long)h.bytes, h.pruned);
    }
    /* not ready while an integration's configuration does not open here:
     * this node would refuse its events */
    bp_buf_adds(b, ",\"unopened\":");
    bp_buf_add(b, unopened.data, unopened.len);
    bp_buf_addc(b, ',');
    bp_write_retention(b, bp_registry_store(k->s->reg), NULL);
    if (cluster) {
        bp_buf_adds(b, ",\"blueprints\":[");
        bp_buf_add(b, blueprints.data, blueprints.len);
        bp_buf_adds(b, "],\"kafka\":");
        bp_buf_add(b, kafka.data, kafka.len);
    }
    bp_buf_addc(b, '}');
    bp_buf_free(&blueprints);
    bp_buf_free(&kafka);
    bp_buf_free(&unopened);
}

/* Retries and batches summed and integrations counted by health state (the registry's lock held). */
typedef struct tally { long retries, batches, batched, per_state[BP_HEALTH_COUNT]; } tally;

static void tally_one(void *ctx, bp_integration *it)
{
    tally *t = ctx;
    t->retries += atomic_load_explicit(&it->stats.retries, memory_order_relaxed);
    /* batches: this node's own (in cluster mode its loop counts in node_stats) */
    t->batches += atomic_load_explicit(&it->stats.batches, memory_order_relaxed) +
                  atomic_load_explicit(&it->node_stats.batches, memory_order_relaxed);
    t->batched += atomic_load_explicit(&it->stats.batched_events, memory_order_relaxed) +
                  atomic_load_explicit(&it->node_stats.batched_events, memory_order_relaxed);
    if (!it->deleted) t->per_state[bp_api_health_state(it)]++;
}

void bp_api_metrics(call *k)
{
    bp_registry *reg = k->s->reg;
    tally t = { 0, 0, 0, { 0 } };
    bp_registry_each(reg, tally_one, &t);
    bp_metrics m = bp_registry_metrics(reg);
    bp_store *store = bp_registry_store(reg);
    long depth = bp_store_count(store, NULL, "pending");
    bp_store_status h;
    bp_store_health(store, &h);
    k->r->ctype = "text/plain; version=0.0.4";
    bp_metrics_write(&m, t.retries, depth > 0 ? depth : 0, &h, &k->r->body);
    bp_metrics_write_health(t.per_state, &k->r->body);
    bp_metrics_write_batches(t.batches, t.batched, &k->r->body);
    if (k->s->cluster) bp_cluster_metrics(k->s->cluster, &k->r->body);
}
