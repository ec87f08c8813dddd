/*
 * events_api.c — the events of an integration over HTTP: intake (POST
 * …/events: 202 once the events are durable in the store, or on the
 * delivery topic in cluster mode), the recent outcomes (Live Events'
 * list), the dead letters and their replay.
 *
 * Judging an intake body is intake.c's (the cluster judges the same
 * events); storing and moving events is the store's (store.c); this file
 * turns requests into those calls and their results into answers.
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct intake_run {
    call *k;
    bp_buf errors;
    long accepted, duplicates, bad;
    int ok;
    bp_buf *events;               /* cluster mode: the accepted events, a JSON array */
} intake_run;

static int intake_one(void *ctx, long index, const char *ev, size_t len, const char *message_id, const char *why)
{
    intake_run *w = ctx;
    if (why) {
        bp_buf_printf(&w->errors, "%s{\"index\":%ld,\"message\":", w->bad ? "," : "", index);
        bp_json_write_string(&w->errors, why, strlen(why));
        bp_buf_addc(&w->errors, '}');
        w->bad++;
        return 0;
    }
    if (w->events) {
        bp_buf_addc(w->events, w->accepted++ ? ',' : '[');
        bp_buf_add(w->events, ev, len);
        return 0;
    }
    int64_t id = bp_store_add(bp_registry_store(w->k->s->reg), w->k->it->id, ev, len, index, message_id, (int64_t)bp_wall_ms());
    if (id > 0) w->accepted++; else if (id == 0) w->duplicates++; else { w->ok = 0; return -1; }
    return 0;
}

/* The answer to an intake request once its events are durable. */
static void intake_reply(reply *r, intake_run *w, long index)
{
    if (index == 0) { bp_reply_error(r, 400, "BAD_REQUEST", "no events in the body (one JSON object, an array or NDJSON)"); return; }
    r->status = w->bad ? 400 : 202;
    /* says what happened to the others too: a resent file is all duplicates, not "accepted" */
    if (w->bad) bp_buf_printf(&r->body, "{\"error\":{\"code\":\"INVALID_EVENTS\",\"message\":\"%ld of %ld events were "
                              "rejected; %ld accepted, %ld duplicates (already received, not stored again)\"},",
                              w->bad, index, w->accepted, w->duplicates);
    else bp_buf_addc(&r->body, '{');
    bp_buf_printf(&r->body, "\"accepted\":%ld,\"duplicates\":%ld,\"errors\":[", w->accepted, w->duplicates);
    if (w->errors.len) bp_buf_add(&r->body, w->errors.data, w->errors.len);
    bp_buf_adds(&r->body, "]}");
}

/* The account key and vendor an integration's events are keyed and routed by. */
typedef struct routing { bp_integration *it; char *account, *vendor; size_t n, vn; } routing;

static void routing_locked(void *ctx)
{
    routing *w = ctx;
    const bp_shared_bp *sbp = w->it->vendor->bp;
    if (sbp && w->it->cfg) bp_account_key(sbp->bp, w->it->cfg, w->it->id, w->account, w->n);
    else snprintf(w->account, w->n, "integration %s", w->it->id);
    snprintf(w->vendor, w->vn, "%s", w->it->vendor->key);
}

static void routing_of(bp_registry *reg, bp_integration *it, char *account, size_t n, char *vendor, size_t vn)
{
    routing w = { it, account, vendor, n, vn };
    bp_registry_locked(reg, routing_locked, &w);
}

/* Cluster mode: the accepted events go to the delivery topic as one
 * message, 202 once the broker has it (duplicates are recognised at
 * delivery, by the node that owns the partition). */
static void intake_cluster(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_buf events;
    bp_buf_init(&events);
    intake_run w = { k, { 0 }, 0, 0, 0, 1, &events };
    bp_buf_init(&w.errors);
    long index = bp_intake_each(k->cn->body.data, k->cn->body.len, intake_one, &w);
    if (w.accepted) {
        bp_buf_addc(&events, ']');
        char account[600], vendor[128];
        routing_of(reg, k->it, account, sizeof account, vendor, sizeof vendor);
        bp_error err;
        if (bp_cluster_send_events(k->s->cluster, k->it->id, vendor, account, events.data, events.len, 0, &err) < 0) {
            bp_reply_error(k->r, 503, "CLUSTER_UNAVAILABLE", "%s; nothing was accepted: retry later (GET /healthz shows the "
                           "brokers' state)", err.msg);
            bp_buf_free(&w.errors);
            bp_buf_free(&events);
            return;
        }
        bp_registry_count_events_in(reg, w.accepted);
    }
    intake_reply(k->r, &w, index);
    bp_buf_free(&w.errors);
    bp_buf_free(&events);
}

void bp_api_intake(call *k)
{
    reply *r = k->r;
    bp_registry *reg = k->s->reg;
    if (k->s->cluster) { intake_cluster(k); return; }
    bp_store *store = bp_registry_store(reg);
    intake_run w = { k, { 0 }, 0, 0, 0, 1, NULL };
    bp_buf_init(&w.errors);
    int began = bp_store_begin(store) == 0;
    /* deleted while this request waited: its events would never be delivered
     * (the delete's purge may have run already) */
    if (began && bp_integration_deleted(k->it)) {
        bp_store_rollback(store);
        bp_buf_free(&w.errors);
        bp_reply_error(r, 404, "NOT_FOUND", "no integration with id '%s' (it was deleted)", k->it->id);
        return;
    }
    long index = began ? bp_intake_each(k->cn->body.data, k->cn->body.len, intake_one, &w) : 0;
    /* 202 only once the events are durable; a failed write accepts nothing */
    int committed = began && bp_store_commit(store, w.ok) == 0;
    if (!committed) {
        bp_store_status h;
        bp_store_health(store, &h);
        bp_reply_error(r, 503, "STORE_UNAVAILABLE", "could not store the events (%s); nothing was accepted: retry later "
                       "(GET /healthz shows the store's state)", h.last_error);
        bp_buf_free(&w.errors);
        return;
    }
    if (w.accepted) bp_pool_wake(bp_registry_pool(reg), k->it->id);
    bp_registry_count_events_in(reg, w.accepted);
    intake_reply(r, &w, index);
    bp_buf_free(&w.errors);
}

typedef struct rows { bp_buf *out; int n; } rows;

/* {"event": <as received>, "outcome": <the line>, "state": …} */
static void write_row(void *ctx, const bp_store_row *row)
{
    rows *w = ctx;
    bp_buf *b = w->out;
    if (w->n++) bp_buf_addc(b, ',');
    bp_buf_adds(b, "{\"event\":");
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (row->body && bp_json_parse(&d, row->body, strlen(row->body), NULL, &err) == 0) bp_json_write_node(b, &d, 0);
    else if (row->body) bp_json_write_text(b, row->body, strlen(row->body));
    else bp_buf_adds(b, "null");
    bp_doc_free(&d);
    bp_buf_adds(b, ",\"outcome\":");
    bp_buf_adds(b, row->outcome ? row->outcome : "null");
    /* pending with an outcome line = waiting for its next attempt */
    bp_buf_adds(b, ",\"state\":");
    const char *state = row->state && !strcmp(row->state, "pending") ? "retrying" : row->state;
    if (state) bp_json_write_string(b, state, strlen(state)); else bp_buf_adds(b, "null");
    bp_buf_printf(b, ",\"updated_at\":%lld}", (long long)row->updated_at);
}

/* {"id","size","state","status_requests"}: a batch this node has open */
static void write_open_batch(void *ctx, const bp_store_batch_row *row)
{
    rows *w = ctx;
    size_t size = row->events && *row->events ? 1 : 0;
    for (const char *p = row->events; p && *p; p++) size += *p == ',';
    bp_buf_printf(w->out, "%s{\"id\":%lld,\"size\":%zu,\"state\":\"%s\",\"status_requests\":%d}", w->n++ ? "," : "",
                  (long long)row->id, size, row->queued ? "queued" : "sending", row->polls);
}

static const char *state_of(const char *outcome)
{
    int end = bp_end_of_label(outcome);
    return end < 0 ? NULL : bp_ends[end].state;
}

void bp_api_live_events(call *k)
{
    const char *lim = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, "limit");
    const char *outcome = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, "outcome");
    const char *bat = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, "batch");
    int limit = lim ? atoi(lim) : 50;
    if (limit < 1 || limit > 1000) { bp_reply_error(k->r, 400, "BAD_REQUEST", "limit must be between 1 and 1000"); return; }
    char *end = NULL;
    long long batch = bat ? strtoll(bat, &end, 10) : 0;
    if (bat && (end == bat || *end || batch < 1)) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "batch must be a batch's id (a positive integer: an outcome's batch.id)");
        return;
    }
    const char *state = outcome ? state_of(outcome) : NULL;
    if (outcome && !state) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "outcome must be delivered, drop, error, dead_letter, held or retrying");
        return;
    }
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\"", k->it->id);
    /* which blueprint judges its events now, and whether the files on disk
     * were rejected (the outcomes below name the revision that judged them) */
    bp_write_blueprint_state_of(k->s->reg, &k->r->body, k->it->vendor);
    /* how far back the list can reach */
    bp_buf_addc(&k->r->body, ',');
    bp_write_retention(&k->r->body, bp_registry_store(k->s->reg), k->it->id);
    /* batches still open (their events are pending, so not in the list
     * yet): a small table, read whole; none when the store has no table */
    bp_buf_adds(&k->r->body, ",\"open_batches\":[");
    rows ob = { &k->r->body, 0 };
    bp_store_batch_each_read(bp_registry_store(k->s->reg), k->it->id, write_open_batch, &ob);
    bp_buf_adds(&k->r->body, "],\"events\":[");
    rows w = { &k->r->body, 0 };
    if (bp_store_recent(bp_registry_store(k->s->reg), k->it->id, state, batch, limit, write_row, &w) < 0) {
        bp_reply_error(k->r, 500, "INTERNAL", "could not read the state store");
        return;
    }
    bp_buf_adds(&k->r->body, "]}");
}

void bp_api_dead_letters(call *k)
{
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\",\"dead_letters\":[", k->it->id);
    rows w = { &k->r->body, 0 };
    if (bp_store_each(bp_registry_store(k->s->reg), k->it->id, "dead", write_row, &w) < 0) {
        bp_reply_error(k->r, 500, "INTERNAL", "could not read the state store");
        return;
    }
    bp_buf_adds(&k->r->body, "]}");
}

/* What a replay may re-queue: dead letters, and events whose outcome was
 * "error" (a mapping that failed, fixed since: they are mapped again). */
static const char *const replay_states[] = { "dead", "error" };

/* Cluster mode: the dead letters and errors chosen, as this node's store
 * has them (every node stores every node's final outcomes). */
typedef struct dead_pick {
    const bp_doc *d;
    uint32_t ids;                 /* BP_NONE: all */
    const char *from;             /* the state being read */
    bp_buf events;                /* their bodies, a JSON array */
    bp_store_row *rows;           /* copies: id, source, body, outcome; state = where it was */
    size_t n, cap;
} dead_pick;

static void pick_dead(void *ctx, const bp_store_row *row)
{
    dead_pick *p = ctx;
    if (p->ids != BP_NONE) {
        int wanted = 0;
        for (uint32_t e = p->ids + 1, i = 0; i < p->d->nodes[p->ids].len && !wanted; i++, e = p->d->nodes[e].next) {
            const char *v = bp_jscalar(p->d, e);
            wanted = v && atoll(v) == row->id;
        }
        if (!wanted) return;
    }
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->rows = bp_realloc(p->rows, p->cap * sizeof *p->rows);
    }
    bp_store_row *c = &p->rows[p->n++];
    *c = *row;
    c->body = bp_strdup(row->body ? row->body : "null");
    c->outcome = row->outcome ? bp_strdup(row->outcome) : NULL;
    c->ktopic = row->ktopic ? bp_strdup(row->ktopic) : NULL;
    c->message_id = c->reason = c->response = NULL;
    c->state = p->from;
    bp_buf_addc(&p->events, p->n > 1 ? ',' : '[');
    bp_buf_adds(&p->events, c->body);
}

/* The events go to the delivery topic again (as new messages, delivered
 * even though their message ids were seen), their dead letters and errors
 * become "replayed" on every node.  counts[i]: how many of replay_states[i]. */
static long replay_cluster(call *k, const bp_doc *d, uint32_t ids, const int *want, long *counts)
{
    bp_registry *reg = k->s->reg;
    dead_pick p = { d, ids, NULL, { 0 }, NULL, 0, 0 };
    bp_buf_init(&p.events);
    long n = 0;
    for (int s = 0; s < 2 && n == 0; s++) {
        if (!want[s]) continue;
        p.from = replay_states[s];
        if (bp_store_each(bp_registry_store(reg), k->it->id, p.from, pick_dead, &p) < 0) n = -1;
    }
    if (n == 0 && p.n > 0) {
        bp_buf_addc(&p.events, ']');
        char account[600], vendor[128];
        routing_of(reg, k->it, account, sizeof account, vendor, sizeof vendor);
        bp_error err;
        if (bp_cluster_send_events(k->s->cluster, k->it->id, vendor, account, p.events.data, p.events.len, 1, &err) < 0) {
            bp_reply_error(k->r, 503, "CLUSTER_UNAVAILABLE", "%s; nothing was replayed: retry later", err.msg);
        } else {
            for (size_t i = 0; i < p.n; i++) {
                bp_store_move(bp_registry_store(reg), k->it->id, p.rows[i].state, "replayed", p.rows[i].id);
                counts[p.rows[i].state == replay_states[0] ? 0 : 1]++;
                p.rows[i].state = "replayed";
                bp_cluster_replayed(k->s->cluster, k->it->id, &p.rows[i]);
            }
            n = (long)p.n;
        }
    }
    for (size_t i = 0; i < p.n; i++) {
        free((char *)p.rows[i].body);
        free((char *)p.rows[i].outcome);
        free((char *)p.rows[i].ktopic);
    }
    free(p.rows);
    bp_buf_free(&p.events);
    return n;
}

/* POST …/dead-letters/replay: {"all":true} re-queues every dead letter and
 * every event that ended in "error"; {"ids":[…]} those events (either
 * state); "state":"dead" or "error" narrows either to one state. */
void bp_api_replay(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (bp_parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    bp_store *st = bp_registry_store(k->s->reg);
    long n = 0, counts[2] = { 0, 0 };
    uint32_t all = bp_jget(&d, 0, "all"), ids = bp_jget(&d, 0, "ids"), state = bp_jget(&d, 0, "state");
    int is_all = all != BP_NONE && d.nodes[all].type == BP_JTRUE;
    int by_ids = ids != BP_NONE && d.nodes[ids].type == BP_JARRAY;
    int want[2] = { 1, 1 };
    const char *only = state != BP_NONE ? bp_jscalar(&d, state) : NULL;
    if (state != BP_NONE && (!only || (strcmp(only, "dead") && strcmp(only, "error")))) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "\"state\" must be \"dead\" (dead letters) or \"error\" (events whose "
                       "mapping or request failed); leave it out for both");
    } else if (!is_all && !by_ids) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "give {\"ids\":[…]} or {\"all\":true} (dead letters and errors; "
                       "\"state\":\"dead\" or \"error\" for one of them)");
    } else {
        if (only) { want[0] = !strcmp(only, "dead"); want[1] = !want[0]; }
        if (k->s->cluster) {
            n = replay_cluster(k, &d, by_ids && !is_all ? ids : BP_NONE, want, counts);
        } else {
            for (int s = 0; s < 2 && n >= 0; s++) {
                if (!want[s]) continue;
                if (is_all) {
                    long m = bp_store_move(st, k->it->id, replay_states[s], "pending", 0);
                    if (m < 0) n = -1; else counts[s] += m;
                    continue;
                }
                for (uint32_t e = ids + 1, i = 0; i < d.nodes[ids].len; i++, e = d.nodes[e].next) {
                    const char *v = bp_jscalar(&d, e);
                    long m = v ? bp_store_move(st, k->it->id, replay_states[s], "pending", atoll(v)) : 0;
                    counts[s] += m > 0 ? m : 0;
                }
            }
            if (n >= 0) n = counts[0] + counts[1];
        }
    }
    if (n < 0) bp_reply_error(k->r, 503, "STORE_UNAVAILABLE", "could not update the state store; nothing was replayed");
    if (k->r->status == 200) {
        bp_buf_printf(&k->r->body, "{\"replayed\":%ld,\"dead_letters\":%ld,\"errors\":%ld}", n, counts[0], counts[1]);
        if (n > 0 && !k->s->cluster) bp_pool_rescan(bp_registry_pool(k->s->reg), k->it->id);
        char what[128];
        snprintf(what, sizeof what, "%ld dead letters and %ld errors replayed (%s)", counts[0], counts[1],
                 is_all ? "all" : "by id");
        bp_registry_audit(k->s->reg, &k->who, "dead_letters.replay", k->it->id, what);
    }
    bp_doc_free(&d);
}
