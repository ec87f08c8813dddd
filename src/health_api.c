/*
 * health_api.c — the operations endpoints: GET /healthz (the state store
 * and, in cluster mode, the brokers; 503 when either fails) and GET
 * /metrics (Prometheus text: the registry's counters, queue depth, health
 * per state, the cluster's own).  Open routes: no token, no secrets.
 */
#include "server.h"

#include <string.h>

void bp_api_healthz(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_store_status h;
    bp_store_health(reg->store, &h);
    bp_buf kafka;
    bp_buf_init(&kafka);
    int kafka_up = reg->cluster ? bp_cluster_health(reg->cluster, &kafka) : 1;
    bp_buf *b = &k->r->body;
    int ok = !h.failing && kafka_up;
    if (!ok) k->r->status = 503;
    bp_buf_printf(b, "{\"status\":\"%s\",\"store\":", ok ? "ok" : "unhealthy");
    if (h.failing) {
        bp_buf_adds(b, "{\"ok\":false,\"error\":");
        bp_json_write_text(b, h.last_error, strlen(h.last_error));
        bp_buf_printf(b, ",\"failures\":%ld,\"help\":\"the state store refuses writes (disk full? permissions?): "
                      "intake answers 503 and delivery progress is kept in memory and retried\"}", h.failures);
    } else {
        bp_buf_printf(b, "{\"ok\":true,\"failures\":%ld}", h.failures);
    }
    if (reg->cluster) { bp_buf_adds(b, ",\"kafka\":"); bp_buf_add(b, kafka.data, kafka.len); }
    bp_buf_addc(b, '}');
    bp_buf_free(&kafka);
}

void bp_api_metrics(call *k)
{
    bp_registry *reg = k->s->reg;
    long retries = 0, per_state[BP_HEALTH_COUNT] = { 0 };
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; i < reg->n; i++) {
        retries += __atomic_load_n(&reg->items[i]->stats.retries, __ATOMIC_RELAXED);
        if (!reg->items[i]->deleted) per_state[bp_api_health_state(reg->items[i])]++;
    }
    bp_metrics m = reg->metrics;
    pthread_mutex_unlock(&reg->mu);
    long depth = bp_store_count(reg->store, NULL, "pending");
    bp_store_status h;
    bp_store_health(reg->store, &h);
    k->r->ctype = "text/plain; version=0.0.4";
    bp_metrics_write(&m, retries, depth > 0 ? depth : 0, &h, &k->r->body);
    bp_metrics_write_health(per_state, &k->r->body);
    if (reg->cluster) bp_cluster_metrics(reg->cluster, &k->r->body);
}
