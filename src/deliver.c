/*
 * deliver.c — deliver events to vendors: durable, paced per account, retried.
 *
 * A delivery loop is one thread with one libcurl multi handle serving many
 * integrations ("tenants").  `serve` runs a fixed pool of loops (one per
 * core by default) whatever the number of integrations; `blueprint deliver`
 * runs one loop on the calling thread for its single integration.  A turn
 * of a loop:
 *
 *   commands (put, remove, wake) -> load events from the store for accounts
 *   with room -> map them (one engine per blueprint, a ctx per config) ->
 *   dispatch: for each account in turn, send what its token bucket allows
 *   -> wait for answers, a timer or a wakeup -> classify each answer: next
 *   request, retry later, dead-letter, or pause on bad credentials.
 *
 * Accounts: integrations whose config has the same value for the
 * blueprint's rate_limit.scope field (ActiveCampaign: api_url) share one
 * token bucket (a `pace`, shared by every loop serving one of them), and
 * Retry-After / RateLimit-* answers apply to all of them.  An integration's
 * loop is picked by its id, so every command about it arrives in order.
 * In a loop, each account has its own window of events in memory and its
 * own requests in flight, and dispatch visits accounts in turn: a backlog
 * on one never delays another.
 *
 * Progress (requests done, attempts, next attempt time, the outcome line)
 * is written in a group commit at most 10 ms after an answer, so a restart
 * resumes where it stopped; an answer not yet committed at a kill means
 * that request is sent again (at-least-once: at most the requests in flight
 * plus those answered in the last 10 ms).  A commit that fails is retried
 * with everything it held (events stay in memory until written), nothing
 * new is loaded meanwhile, and the failure is logged and shown by the store
 * (bp_store_health).
 *
 * This file has a loop's turn, the pool of loops and `blueprint deliver`;
 * the jobs, the sending and answers, and the tenants are in the files
 * deliver_loop.h lists, each calling only those below it.
 */
#include "service.h"
#include "deliver_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- commands ---------------------------------------------------------------------------------- */

static void post(loop *l, cmd *c)
{
    c->next = NULL;
    pthread_mutex_lock(&l->inbox_mu);
    *l->inbox_tail = c;
    l->inbox_tail = &c->next;
    pthread_mutex_unlock(&l->inbox_mu);
    bp_transport_wakeup(l->tr);
}

/* ---- the loop ---------------------------------------------------------------------------------- */

static int any_work(loop *l)
{
    if (l->dirty || l->nmarks || bp_transport_active(l->tr)) return 1;
    for (size_t i = 0; i < l->naccounts; i++) if (l->accounts[i]->jobs) return 1;
    for (tenant *t = l->tenants; t; t = t->next) if (t->more || t->rescan || t->removing) return 1;
    return 0;
}

typedef struct adopt_walk { loop *l; char **ids; size_t n, cap; } adopt_walk;

static void note_handed(void *ctx, const char *integration)
{
    adopt_walk *w = ctx;
    if (w->n == w->cap) { w->cap = w->cap ? w->cap * 2 : 8; w->ids = bp_realloc(w->ids, w->cap * sizeof *w->ids); }
    w->ids[w->n++] = bp_strdup(integration);
}

/* Cluster mode, four times a second: batches the vendor queued for another
 * node whose partition this node took over are resumed by the loop of their
 * integration (deliver_batch.c). */
static void adopt_handed(loop *l)
{
    double now = bp_wall_ms();
    if (!l->lease || now < l->adopt_at) return;
    l->adopt_at = now + 250;
    adopt_walk w = { l, NULL, 0, 0 };
    bp_store_handed_integrations(l->store, note_handed, &w);
    for (size_t i = 0; i < w.n; i++) {
        tenant *t = bp_dl_find_tenant(l, w.ids[i]);
        if (t) bp_dl_batch_adopt(l, t);
        free(w.ids[i]);
    }
    free(w.ids);
}

/* One turn; returns 0 when the loop may end (until_idle and nothing left,
 * or stopping with nothing in flight and everything saved). */
static int turn(loop *l, int until_idle)
{
    bp_dl_handle_commands(l);
    adopt_handed(l);   /* before its events could be loaded as new */
    bp_dl_load(l);
    /* commit before dispatching, not between dispatch and the send: a slow
     * commit (a checkpoint) must not delay requests whose pace slot is
     * taken, or the vendor would see them bunched */
    double due;
    if (l->dirty || l->nmarks) {
        due = (l->store_failing ? l->commit_retry_at : l->dirty_since + COMMIT_EVERY_MS) - bp_wall_ms();
        if (due <= 0 || l->stopping) bp_dl_commit(l);
    }
    double wait = bp_dl_dispatch(l);
    if (l->dirty || l->nmarks) {   /* dispatch may have finished events too */
        due = (l->store_failing ? l->commit_retry_at : l->dirty_since + COMMIT_EVERY_MS) - bp_wall_ms();
        if (due < wait) wait = due > 0 ? due : 0;
    }
    bp_dl_reap(l);
    if (l->stopping) {
        if (!bp_transport_active(l->tr) && !l->dirty && !l->nmarks) return 0;
        if (!bp_transport_active(l->tr) && l->store_failing) {
            /* stopping while the store refuses writes: keep trying for a while */
            if (bp_wall_ms() - l->commit_retry_at > 10000) {
                bp_log("error", "state store: stopping with unsaved progress; those requests will be sent again",
                       NULL);
                return 0;
            }
        }
        if (wait > 50) wait = 50;
    } else if (until_idle && !any_work(l)) {
        return 0;
    } else if (until_idle && l->store_failing && !bp_transport_active(l->tr) &&
               bp_wall_ms() - l->failing_since > 10000) {
        return 0;   /* bp_deliver reports it */
    }
    int wait_ms = wait > 0 ? (int)(wait + 0.999) : 0;
    if (wait_ms > 1000) wait_ms = 1000;
    bp_transport_poll(l->tr, wait_ms, bp_dl_on_answer, l);
    return 1;
}

/* ctx.cache's durable values live in the state store (cache.c's backing):
 * written when a run sets one, with the event whose run it was, and read
 * back when memory lacks the key (after a restart, or an eviction). */
static void cache_save(void *ud, uint64_t owner, const char *account, const char *key, const char *json, size_t len,
                       int64_t expires_wall_ms)
{
    if (bp_store_cache_put(ud, account, key, json, len, expires_wall_ms, (int64_t)owner) < 0)
        bp_log("warn", "state store: a durable ctx.cache value was not saved; it is kept in memory only", NULL);
}

static int cache_load(void *ud, const char *account, const char *key, bp_buf *out, int64_t *expires_wall_ms)
{
    return bp_store_cache_get(ud, account, key, (int64_t)bp_wall_ms(), out, expires_wall_ms);
}

static bp_cache *durable_cache(bp_store *store)
{
    bp_cache *c = bp_cache_new(0);
    bp_cache_backing b = { cache_save, cache_load, store };
    if (store) bp_cache_set_backing(c, &b);
    return c;
}

static void loop_init(loop *l, bp_pool *p, int index, bp_store *store, const bp_deliver_opts *o)
{
    memset(l, 0, sizeof *l);
    l->pool = p;
    l->cache = p ? p->cache : durable_cache(store);
    l->index = index;
    l->store = store;
    l->o = o;
    l->tr = bp_transport_new(o->connect_timeout_ms, o->http_timeout_ms);
    l->dirty_tail = &l->dirty;
    l->inbox_tail = &l->inbox;
    if (store && bp_store_batches_init(store) < 0)
        bp_log("warn", "state store: no table for open batches; batches are not formed", NULL);
    pthread_mutex_init(&l->inbox_mu, NULL);
    l->rng = (uint64_t)bp_wall_ms() ^ ((uint64_t)getpid() << 32) ^ ((uint64_t)index << 16) ^ 0x9E3779B97F4A7C15ULL;
}

static void loop_free(loop *l)
{
    bp_dl_handle_commands(l);   /* frees what was posted after the stop */
    for (job *j = l->dirty, *jn; j; j = jn) { jn = j->dirty_next; if (j->final) bp_dl_free_job(j); }
    l->dirty = NULL;
    while (l->tenants) {
        tenant *t = l->tenants;
        bp_dl_batch_forget(l, t, 0);
        for (job *j = t->acct->jobs, *jn; j; j = jn) {
            jn = j->next;
            if (j->t == t) { bp_dl_unlink_job(t->acct, j); bp_dl_free_job(j); }
        }
        bp_dl_detach_tenant(l, t);
        bp_dl_leave_account(l, t);
        bp_dl_unbind_engine(l, t);
        bp_dl_tenant_free(t);
    }
    for (size_t i = 0; i < l->nmarks; i++) free(l->marks[i].key);
    free(l->marks);
    free(l->closed);
    free(l->accounts);
    while (l->engines) {   /* none should be left: every tenant unbound above */
        engine_slot *e = l->engines;
        l->engines = e->next;
        bp_engine_free(e->engine);
        bp_shared_bp_drop(e->bp);
        free(e);
    }
    bp_transport_free(l->tr);
    if (!l->pool) bp_cache_free(l->cache);
    pthread_mutex_destroy(&l->inbox_mu);
}

static void *loop_main(void *arg)
{
    loop *l = arg;
    while (turn(l, 0)) {}
    return NULL;
}

/* ---- the pool ------------------------------------------------------------------------------------ */

bp_pool *bp_pool_new(bp_store *store, const bp_deliver_opts *o, int threads, const bp_lease *lease, bp_error *err)
{
    bp_pool *p = bp_calloc(1, sizeof *p);
    p->store = store;
    p->o = *o;
    if (lease) p->lease = *lease;
    p->nloops = threads > 0 ? threads : 1;
    p->loops = bp_calloc((size_t)p->nloops, sizeof *p->loops);
    pthread_mutex_init(&p->mu, NULL);
    p->cache = durable_cache(store);
    for (int i = 0; i < p->nloops; i++) {
        loop_init(&p->loops[i], p, i, store, &p->o);
        p->loops[i].lease = p->lease.holds ? &p->lease : NULL;
    }
    for (int i = 0; i < p->nloops; i++) {
        if (pthread_create(&p->loops[i].thread, NULL, loop_main, &p->loops[i]) != 0) {
            bp_error_set(err, "could not start delivery thread %d", i);
            bp_pool_free(p);
            return NULL;
        }
        p->loops[i].started = 1;
    }
    return p;
}

/* Every command about one integration goes to the same loop, in order. */
loop *owner(bp_pool *p, const char *id) { return &p->loops[bp_dl_hash_text(id) % (uint64_t)p->nloops]; }

static void post_to_owner(bp_pool *p, enum cmd_kind kind, const char *id, int purge)
{
    cmd *c = bp_calloc(1, sizeof *c);
    c->kind = kind;
    c->id = bp_strdup(id);
    c->purge = purge;
    post(owner(p, id), c);
}

void bp_pool_put(bp_pool *p, const bp_tenant_spec *t)
{
    cmd *c = bp_calloc(1, sizeof *c);
    c->kind = CMD_PUT;
    c->spec = *t;
    c->spec.id = bp_strdup(t->id);
    post(owner(p, t->id), c);
}

void bp_pool_remove(bp_pool *p, const char *id, int purge) { post_to_owner(p, CMD_REMOVE, id, purge); }
void bp_pool_wake(bp_pool *p, const char *id) { post_to_owner(p, CMD_WAKE, id, 0); }
void bp_pool_rescan(bp_pool *p, const char *id) { post_to_owner(p, CMD_RESCAN, id, 0); }

void bp_pool_free(bp_pool *p)
{
    if (!p) return;
    for (int i = 0; i < p->nloops; i++) {
        if (!p->loops[i].started) continue;
        cmd *c = bp_calloc(1, sizeof *c);
        c->kind = CMD_STOP;
        post(&p->loops[i], c);
    }
    for (int i = 0; i < p->nloops; i++) if (p->loops[i].started) pthread_join(p->loops[i].thread, NULL);
    for (int i = 0; i < p->nloops; i++) loop_free(&p->loops[i]);
    free(p->loops);
    while (p->paces) {            /* made by bp_pool_take_slot and never joined */
        pace *pc = p->paces;
        p->paces = pc->next;
        bp_dl_pace_free(pc);
    }
    bp_pool_set_shares(p, NULL, NULL, 0);
    bp_cache_free(p->cache);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- blueprint deliver: one integration, one loop, this thread ------------------------------------ */

typedef struct cli_run {
    const bp_deliver_opts *o;
    bp_deliver_stats *st;
    bp_buf line;
} cli_run;

static void cli_outcome(void *ctx, const bp_stored *ev, const char *line, size_t len, enum bp_end end,
                        const char *reason)
{
    cli_run *r = ctx;
    (void)reason; (void)ev;
    if (end != BP_END_RETRYING && r->o->emit) r->o->emit(r->o->emit_ctx, line, len);
}

static void cli_answer(void *ctx, int status, double duration_ms)
{
    cli_run *r = ctx;
    long slot = (long)(duration_ms * 10.0);
    r->st->latency_us[slot < 0 ? 0 : slot > 1000 ? 1000 : slot]++;
    if (r->o->on_answer) r->o->on_answer(r->o->emit_ctx, status, duration_ms);
}

static const bp_sink cli_sink = { cli_outcome, cli_answer, NULL, NULL, NULL };

/* A line for input that never becomes a stored event. */
static void emit_input_error(cli_run *r, long index, const char *why, const char *message_id)
{
    bp_outcome o;
    bp_outcome_init(&o);
    bp_buf_adds(&o.reason, why);
    o.message_id = bp_outcome_strdup(&o, message_id);
    bp_buf_reset(&r->line);
    bp_outcome_write_fields(&o, index, message_id ? "duplicate" : "error", &r->line);
    bp_buf_addc(&r->line, '}');
    if (r->o->emit) r->o->emit(r->o->emit_ctx, r->line.data, r->line.len);
    bp_outcome_free(&o);
    if (message_id) r->st->duplicates++; else r->st->errors++;
}

/* Phase 1: the input into the store, committed in batches before anything
 * is sent.  Returns the first new event's id (0: none), -1 on error. */
static int64_t ingest(cli_run *r, bp_store *store, bp_error *err)
{
    bp_reader *rd = bp_reader_new(r->o->input_fd, r->o->limits.json.max_bytes);
    const char *ev;
    size_t len;
    bp_error rerr;
    enum bp_read_status s;
    int in_batch = 0, ok = 1;
    long index = 0;
    int64_t first = 0;
    bp_doc doc;
    bp_doc_init(&doc);
    while (ok && (s = bp_reader_next(rd, &ev, &len, &rerr)) != BP_READ_END) {
        const char *message_id = NULL;
        if (s == BP_READ_EVENT && bp_json_parse(&doc, ev, len, &r->o->limits.json, &rerr) == 0)
            message_id = bp_event_message_id(&doc);
        if (s == BP_READ_BAD) {
            /* Not an event we can store: say so on its own line, in order. */
            emit_input_error(r, index++, rerr.msg, NULL);
            continue;
        }
        if (!in_batch) { if (bp_store_begin(store) < 0) { ok = 0; break; } in_batch = 1; }
        int64_t id = bp_store_add(store, "", ev, len, index, message_id, (int64_t)bp_wall_ms());
        if (id < 0) { ok = 0; break; }
        if (id == 0) {
            emit_input_error(r, index++, "duplicate: an event with this message id was already accepted "
                             "(not delivered twice)", message_id);
            continue;
        }
        index++;
        if (!first) first = id;
        r->st->added++;
        if (++in_batch > INSERT_BATCH) { ok = bp_store_commit(store, 1) == 0; in_batch = 0; }
    }
    if (in_batch) ok = bp_store_commit(store, ok) == 0 && ok;
    bp_doc_free(&doc);
    bp_reader_free(rd);
    if (!ok) {
        bp_store_status h;
        bp_store_health(store, &h);
        bp_error_set(err, "state store: could not save the input events: %s", h.last_error);
        return -1;
    }
    return first;
}

int bp_deliver(const bp_blueprint *bp, const bp_config *cfg, const bp_deliver_opts *opts,
               bp_deliver_stats *stats, bp_error *err)
{
    bp_deliver_opts def;
    bp_error_clear(err);
    if (!bp || !cfg) { bp_error_set(err, "delivery needs a blueprint and a config"); return -1; }
    if (!opts) { bp_deliver_opts_default(&def); opts = &def; }
    bp_deliver_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    cli_run run = { opts, stats, { 0 } };
    bp_buf_init(&run.line);
    int rc = -1;
    bp_store *store = bp_store_open(opts->state_dir ? opts->state_dir : "./var", "blueprint.db", err);
    if (!store) goto out;
    /* the mapping is checked before anything is stored: a broken blueprint is exit 2, not held events */
    bp_engine *probe = bp_engine_new(bp, cfg, &opts->limits, err);
    if (!probe) goto out;
    bp_engine_free(probe);
    int64_t first = 0;
    if (opts->input_fd >= 0 && (first = ingest(&run, store, err)) < 0) goto out;

    /* The loop borrows bp and cfg: a shared wrapper that is never freed here
     * (refs stay above zero), and a config the tenant must not free. */
    loop l;
    loop_init(&l, NULL, 0, store, opts);
    bp_shared_bp shared = { (bp_blueprint *)bp, 2, "" };
    if (bp->dir) bp_blueprint_revision(bp->dir, shared.revision);
    bp_counts counts = { 0 };
    bp_tenant_spec spec = { "", &shared, (bp_config *)cfg, &cli_sink, &run, &counts };
    bp_dl_add_tenant(&l, &spec);
    tenant *t = l.tenants;
    if (!t) { bp_error_set(err, "the blueprint could not start"); loop_free(&l); goto out; }
    t->index_from_id = first > 0 ? first : INT64_MAX;
    while (turn(&l, 1)) {}
    int lost = l.store_failing;
    loop_free(&l);
    stats->delivered = counts.delivered;
    stats->dropped = counts.dropped;
    stats->errors += counts.errors;   /* plus the input lines that were not events */
    stats->dead = counts.dead;
    stats->held = counts.held;
    stats->requests = counts.requests;
    stats->retries = counts.retries;
    stats->rate_limited = counts.rate_limited;
    if (lost) {
        bp_store_status h;
        bp_store_health(store, &h);
        bp_error_set(err, "state store: could not save delivery progress for 10 s (%s); the events stay stored "
                     "and unsent requests are sent by the next run", h.last_error);
        goto out;
    }
    rc = bp_store_count(store, "", "held") > 0 ? 3 : 0;
out:
    if (rc < 0) bp_error_ensure(err, "delivery failed");
    bp_store_close(store);
    bp_buf_free(&run.line);
    return rc;
}
