/*
 * metrics.c — counters behind GET /metrics (Prometheus text format).
 * The registry mutex guards them; workers report through callbacks.
 * Also the per-integration window of the last hour (bp_recent).
 */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds_ms[BP_LATENCY_BUCKETS] = { 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000 };

/* Reasons become label values: keep the stable head ("consent", "no email",
 * "custom event not enabled") and drop the event-specific tail. */
static void reason_class(const char *reason, char *out, size_t n)
{
    size_t len = strcspn(reason, ":(");
    if (len >= n) len = n - 1;
    while (len && reason[len - 1] == ' ') len--;
    size_t w = 0;
    for (size_t i = 0; i < len && w + 1 < n; i++) {
        char c = reason[i];
        out[w++] = (c == '"' || c == '\\' || (unsigned char)c < ' ') ? '_' : c;
    }
    out[w] = '\0';
}

void bp_metrics_outcome(bp_metrics *m, enum bp_end end, const char *why)
{
    if (end == BP_END_DELIVERED) m->delivered++;
    else if (end == BP_END_DEAD) m->dead++;
    else if (end == BP_END_ERROR) m->errors++;
    else if (end == BP_END_HELD) m->held++;
    else if (end == BP_END_DROPPED) {
        char cls[64];
        reason_class(why ? why : "", cls, sizeof cls);
        size_t i;
        for (i = 0; i < m->ndrops; i++) if (!strcmp(m->drops[i].reason, cls)) break;
        if (i == m->ndrops && m->ndrops < sizeof m->drops / sizeof m->drops[0]) {
            snprintf(m->drops[i].reason, sizeof m->drops[i].reason, "%s", cls);
            m->ndrops++;
        }
        if (i < m->ndrops) m->drops[i].n++;
    }
}

void bp_metrics_answer(bp_metrics *m, int status, double ms)
{
    m->answers++;
    if (status == 429) m->rate_limited++;
    m->latency_sum += ms;
    for (int i = 0; i < BP_LATENCY_BUCKETS; i++) if (ms <= bounds_ms[i]) m->latency[i]++;
    m->latency[BP_LATENCY_BUCKETS]++;
}

void bp_metrics_write(const bp_metrics *m, long retries, long queue_depth, const bp_store_status *store, bp_buf *out)
{
    bp_buf_adds(out, "# HELP blueprint_events_in_total Events accepted through intake.\n"
                     "# TYPE blueprint_events_in_total counter\n");
    bp_buf_printf(out, "blueprint_events_in_total %ld\n", m->events_in);
    bp_buf_adds(out, "# TYPE blueprint_events_delivered_total counter\n");
    bp_buf_printf(out, "blueprint_events_delivered_total %ld\n", m->delivered);
    bp_buf_adds(out, "# TYPE blueprint_events_dropped_total counter\n");
    for (size_t i = 0; i < m->ndrops; i++)
        bp_buf_printf(out, "blueprint_events_dropped_total{reason=\"%s\"} %ld\n", m->drops[i].reason, m->drops[i].n);
    bp_buf_adds(out, "# TYPE blueprint_events_dead_lettered_total counter\n");
    bp_buf_printf(out, "blueprint_events_dead_lettered_total %ld\n", m->dead);
    bp_buf_adds(out, "# TYPE blueprint_events_error_total counter\n");
    bp_buf_printf(out, "blueprint_events_error_total %ld\n", m->errors);
    bp_buf_adds(out, "# TYPE blueprint_events_held_total counter\n");
    bp_buf_printf(out, "blueprint_events_held_total %ld\n", m->held);
    bp_buf_adds(out, "# TYPE blueprint_retries_total counter\n");
    bp_buf_printf(out, "blueprint_retries_total %ld\n", retries);
    bp_buf_adds(out, "# TYPE blueprint_vendor_429_total counter\n");
    bp_buf_printf(out, "blueprint_vendor_429_total %ld\n", m->rate_limited);
    bp_buf_adds(out, "# TYPE blueprint_queue_depth gauge\n");
    bp_buf_printf(out, "blueprint_queue_depth %ld\n", queue_depth);
    bp_buf_adds(out, "# HELP blueprint_store_errors_total State store transactions that failed (and were retried).\n"
                     "# TYPE blueprint_store_errors_total counter\n");
    bp_buf_printf(out, "blueprint_store_errors_total %ld\n", store->failures);
    bp_buf_adds(out, "# TYPE blueprint_store_failing gauge\n");
    bp_buf_printf(out, "blueprint_store_failing %d\n", store->failing);
    bp_buf_adds(out, "# HELP blueprint_events_pruned_total Final events removed from the store by retention.\n"
                     "# TYPE blueprint_events_pruned_total counter\n");
    bp_buf_printf(out, "blueprint_events_pruned_total %ld\n", store->pruned);
    bp_buf_adds(out, "# HELP blueprint_store_bytes The event store's file and its write-ahead log, in bytes.\n"
                     "# TYPE blueprint_store_bytes gauge\n");
    bp_buf_printf(out, "blueprint_store_bytes %lld\n", (long long)store->bytes);
    bp_buf_adds(out, "# TYPE blueprint_integrations gauge\n");
    bp_buf_printf(out, "blueprint_integrations %ld\n", m->integrations);
    bp_buf_adds(out, "# TYPE blueprint_blueprint_reloads_total counter\n");
    bp_buf_printf(out, "blueprint_blueprint_reloads_total %ld\n", m->reloads);
    bp_buf_adds(out, "# TYPE blueprint_blueprint_reload_failures_total counter\n");
    bp_buf_printf(out, "blueprint_blueprint_reload_failures_total %ld\n", m->reload_failures);
    bp_buf_adds(out, "# HELP blueprint_vendor_latency_seconds Time from sending a request to the vendor's answer.\n"
                     "# TYPE blueprint_vendor_latency_seconds histogram\n");
    for (int i = 0; i < BP_LATENCY_BUCKETS; i++)
        bp_buf_printf(out, "blueprint_vendor_latency_seconds_bucket{le=\"%g\"} %ld\n", bounds_ms[i] / 1000.0, m->latency[i]);
    bp_buf_printf(out, "blueprint_vendor_latency_seconds_bucket{le=\"+Inf\"} %ld\n", m->latency[BP_LATENCY_BUCKETS]);
    bp_buf_printf(out, "blueprint_vendor_latency_seconds_sum %g\n", m->latency_sum / 1000.0);
    bp_buf_printf(out, "blueprint_vendor_latency_seconds_count %ld\n", m->answers);
}

void bp_metrics_write_health(const long per_state[BP_HEALTH_COUNT], bp_buf *out)
{
    bp_buf_adds(out, "# HELP blueprint_integrations_health Integrations per delivery health state "
                     "(paused: held for credentials; backing_off: waiting after the vendor's 429/5xx).\n"
                     "# TYPE blueprint_integrations_health gauge\n");
    for (int i = 0; i < BP_HEALTH_COUNT; i++)
        bp_buf_printf(out, "blueprint_integrations_health{state=\"%s\"} %ld\n", bp_health_names[i], per_state[i]);
}

/* ---- the last hour, per minute ---------------------------------------------------------------- */

/* the bound docs/contracts.md promises per integration */
_Static_assert(sizeof(bp_recent) <= 1440, "the last-hour ring grew past 1.4 KB");

void bp_recent_add(bp_recent **r, enum bp_end end, int64_t now_ms)
{
    if ((int)end < 0 || (int)end >= BP_RECENT_ENDS) return;
    if (!*r) *r = bp_calloc(1, sizeof **r);
    int32_t minute = (int32_t)(now_ms / 60000);
    size_t slot = (size_t)(minute % BP_RECENT_MINUTES);
    /* a slot last used an hour (or more) ago starts again from zero */
    if ((*r)->minute[slot] != minute) {
        (*r)->minute[slot] = minute;
        memset((*r)->n[slot], 0, sizeof (*r)->n[slot]);
    }
    (*r)->n[slot][end]++;
}

void bp_recent_sum(const bp_recent *r, int64_t now_ms, long out[BP_RECENT_ENDS])
{
    memset(out, 0, sizeof(long) * BP_RECENT_ENDS);
    int32_t minute = (int32_t)(now_ms / 60000);
    for (size_t i = 0; r && i < BP_RECENT_MINUTES; i++) {
        if (r->minute[i] <= minute - BP_RECENT_MINUTES || r->minute[i] > minute) continue;
        for (int e = 0; e < BP_RECENT_ENDS; e++) out[e] += r->n[i][e];
    }
}

void bp_metrics_write_batches(long batches, long batched_events, bp_buf *out)
{
    bp_buf_adds(out, "# HELP blueprint_batches_total Batches sent (deliver and serve --batch).\n"
                     "# TYPE blueprint_batches_total counter\n");
    bp_buf_printf(out, "blueprint_batches_total %ld\n", batches);
    bp_buf_adds(out, "# HELP blueprint_batched_events_total Events delivered in batches.\n"
                     "# TYPE blueprint_batched_events_total counter\n");
    bp_buf_printf(out, "blueprint_batched_events_total %ld\n", batched_events);
}
