/*
 * deliver_tenant.c — who a loop serves: tenants (integrations) and the
 * accounts they share a pace with, the engines bound to their configs,
 * and the commands (put, remove, wake, rescan) other threads post.
 */
#include "service.h"
#include "deliver_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- tenants, accounts, engines --------------------------------------------------------------- */

tenant *bp_dl_find_tenant(loop *l, const char *id)
{
    for (tenant *t = l->by_id[bp_dl_hash_text(id) % TENANT_BUCKETS]; t; t = t->hash_next)
        if (!strcmp(t->id, id)) return t;
    return NULL;
}

/* The part of the account's limit this node may use (the pool's mu held). */
static double share_of(const bp_pool *pool, const char *key)
{
    for (size_t i = 0; pool && i < pool->nshares; i++) if (!strcmp(pool->share_keys[i], key)) return pool->shares[i];
    return 1;
}

/* The rate this node paces the account at.  A part of it is rounded down
 * to whole requests a second: a vendor counts requests in a second, and a
 * pace of 2.5/s can send 3 in one second (0, 0.4, 0.8 s), so two nodes at
 * half of 5/s could send 6; at 2/s each they send at most 4. */
static double pace_rate(const pace *p)
{
    double r = p->base_rps * p->share;
    return p->share < 1 && r >= 1 ? floor(r) : r;
}

static pace *pace_new(const bp_pool *pool, const char *key, double rps)
{
    pace *p = bp_calloc(1, sizeof *p);
    p->key = bp_strdup(key);
    p->base_rps = rps;
    p->share = share_of(pool, key);
    pthread_mutex_init(&p->mu, NULL);
    bp_bucket_init(&p->bucket, pace_rate(p), PACE_MARGIN, bp_monotonic_ms());
    return p;
}

/* A new base or share for the pace (the pool's mu held; written under the
 * pace's too: take_slot reads the share under that one alone). */
static void pace_apply(pace *p, double base_rps, double share)
{
    pthread_mutex_lock(&p->mu);
    p->base_rps = base_rps;
    p->share = share;
    bp_bucket_set_rate(&p->bucket, pace_rate(p));
    pthread_mutex_unlock(&p->mu);
}

void bp_pool_set_shares(bp_pool *p, const char *const *keys, const double *shares, size_t n)
{
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->nshares; i++) free(p->share_keys[i]);
    free(p->share_keys);
    free(p->shares);
    p->share_keys = n ? bp_calloc(n, sizeof *p->share_keys) : NULL;
    p->shares = n ? bp_calloc(n, sizeof *p->shares) : NULL;
    for (size_t i = 0; i < n; i++) {
        p->share_keys[i] = bp_strdup(keys[i]);
        p->shares[i] = shares[i] > 0 && shares[i] < 1 ? shares[i] : 1;
    }
    p->nshares = n;
    for (pace *pc = p->paces; pc; pc = pc->next) {
        double s = share_of(p, pc->key);
        if (s != pc->share) pace_apply(pc, pc->base_rps, s);
    }
    pthread_mutex_unlock(&p->mu);
}

/* The account's pace, shared with the other loops serving it. */
static pace *pace_acquire(loop *l, const char *key, double rps)
{
    pace *p = NULL;
    if (l->pool) {
        pthread_mutex_lock(&l->pool->mu);
        for (p = l->pool->paces; p && strcmp(p->key, key); p = p->next) {}
    }
    if (!p) {
        p = pace_new(l->pool, key, rps);
        if (l->pool) { p->next = l->pool->paces; l->pool->paces = p; }
    }
    p->refs++;
    if (l->pool) pthread_mutex_unlock(&l->pool->mu);
    return p;
}

static void pace_release(loop *l, pace *p)
{
    if (l->pool) pthread_mutex_lock(&l->pool->mu);
    int last = --p->refs == 0;
    if (last && l->pool)
        for (pace **q = &l->pool->paces; *q; q = &(*q)->next) if (*q == p) { *q = p->next; break; }
    if (l->pool) pthread_mutex_unlock(&l->pool->mu);
    if (!last) return;
    bp_dl_pace_free(p);
}

/* The pace is no one's any more (its last account left, or the pool ends). */
void bp_dl_pace_free(pace *p)
{
    pthread_mutex_destroy(&p->mu);
    bp_window_free(p->imports);
    free(p->key);
    free(p);
}

/* A send slot on an account's pace for a request sent outside the loops
 * (an install's checks, verify.c), so that it counts against the vendor's
 * limit with the deliveries.  The pace is made when the account has none
 * yet (refs 0: a loop joining it adopts it; bp_pool_free frees it
 * otherwise).  0 when the slot is taken, else the ms to wait. */
double bp_pool_take_slot(bp_pool *p, const char *account_key, double blueprint_rps)
{
    pthread_mutex_lock(&p->mu);
    pace *pc = p->paces;
    while (pc && strcmp(pc->key, account_key)) pc = pc->next;
    if (!pc) {
        pc = pace_new(p, account_key, p->o.rate_limit_rps > 0 ? p->o.rate_limit_rps : blueprint_rps);
        pc->next = p->paces;
        p->paces = pc;
    }
    pthread_mutex_lock(&pc->mu);
    double wait = bp_bucket_take(&pc->bucket, bp_monotonic_ms());
    pthread_mutex_unlock(&pc->mu);
    pthread_mutex_unlock(&p->mu);
    return wait;
}

static account *join_account(loop *l, tenant *t)
{
    const bp_blueprint *bp = t->bp->bp;
    char key[600];
    bp_account_key(bp, t->cfg, t->id, key, sizeof key);
    account *a = NULL;
    for (size_t i = 0; i < l->naccounts && !a; i++) if (!strcmp(l->accounts[i]->key, key)) a = l->accounts[i];
    if (!a) {
        a = bp_calloc(1, sizeof *a);
        a->key = bp_strdup(key);
        double rps = l->o->rate_limit_rps > 0 ? l->o->rate_limit_rps : bp->rate_limit_rps;
        a->pace = pace_acquire(l, key, rps);
        a->window = rps > 0 && rps < 100 ? WINDOW_PACED : WINDOW_FAST;
        if (l->naccounts == l->capaccounts) {
            l->capaccounts = l->capaccounts ? l->capaccounts * 2 : 16;
            l->accounts = bp_realloc(l->accounts, l->capaccounts * sizeof *l->accounts);
        }
        l->accounts[l->naccounts++] = a;
        bp_transport_keep_connections(l->tr, (long)l->naccounts * 2 + 16);
    }
    if (a->nmembers == a->capmembers) {
        a->capmembers = a->capmembers ? a->capmembers * 2 : 4;
        a->members = bp_realloc(a->members, a->capmembers * sizeof *a->members);
    }
    a->members[a->nmembers++] = t;
    /* room for WINDOW_BATCHES batches in memory: a vendor that queues each
     * one for seconds (an ActiveCampaign import and its status requests:
     * ~3 s) drains a backlog only with several open at once; the pace and
     * batch.max_per_minute bound how many leave */
    if (l->o->batch && bp->has_batch && a->window < WINDOW_BATCHES * bp->batch.max_events)
        a->window = WINDOW_BATCHES * bp->batch.max_events;
    a->check_load = 1;
    a->next_ms = 0;
    return a;
}

void bp_dl_leave_account(loop *l, tenant *t)
{
    account *a = t->acct;
    for (size_t i = 0; i < a->nmembers; i++)
        if (a->members[i] == t) { a->members[i] = a->members[--a->nmembers]; break; }
    t->acct = NULL;
    if (a->nmembers) return;
    for (size_t i = 0; i < l->naccounts; i++)
        if (l->accounts[i] == a) { l->accounts[i] = l->accounts[--l->naccounts]; break; }
    pace_release(l, a->pace);
    free(a->key);
    free(a->members);
    free(a);
}

/* Bind t to its blueprint's engine in this loop (made on first use). */
static int bind_engine(loop *l, tenant *t, bp_error *err)
{
    engine_slot *s = l->engines;
    while (s && s->bp != t->bp) s = s->next;
    if (!s) {
        bp_engine *e = bp_engine_new(t->bp->bp, t->cfg, &l->o->limits, err);
        if (!e) return -1;
        s = bp_calloc(1, sizeof *s);
        s->bp = t->bp;
        bp_shared_bp_hold(s->bp);
        s->engine = e;
        bp_engine_set_cache(e, l->cache);
        s->next = l->engines;
        l->engines = s;
    }
    if (bp_engine_bind(s->engine, t->cfg, &t->bind, err) < 0) {
        if (s->refs == 0) {   /* made for this tenant: not kept */
            for (engine_slot **p = &l->engines; *p; p = &(*p)->next) if (*p == s) { *p = s->next; break; }
            bp_engine_free(s->engine);
            bp_shared_bp_drop(s->bp);
            free(s);
        }
        return -1;
    }
    s->refs++;
    t->eng = s;
    return 0;
}

void bp_dl_unbind_engine(loop *l, tenant *t)
{
    engine_slot *s = t->eng;
    if (!s) return;
    bp_engine_unbind(s->engine, &t->bind);
    t->eng = NULL;
    if (--s->refs > 0) return;
    for (engine_slot **p = &l->engines; *p; p = &(*p)->next)
        if (*p == s) { *p = s->next; break; }
    bp_engine_free(s->engine);
    bp_shared_bp_drop(s->bp);
    free(s);
}

/* Paused by an earlier run with these same credentials?  Held events are
 * released when the credentials have changed since. */
static void restore_pause(loop *l, tenant *t)
{
    char fp[17];
    bp_dl_credentials_fingerprint(t->cfg, t->bp->bp, fp);
    char *paused_fp = bp_store_meta_get(l->store, t->id, "paused_credentials");
    if (paused_fp && !strcmp(paused_fp, fp)) {
        char *why = bp_store_meta_get(l->store, t->id, "pause_reason");
        char *since = bp_store_meta_get(l->store, t->id, "paused_since");
        t->paused = 1;
        snprintf(t->pause_reason, sizeof t->pause_reason, "%s", why ? why : "integration paused");
        bp_dl_log_tenant("error", t->pause_reason, t, NULL);
        bp_dl_report_health_at(t, BP_HEALTH_PAUSED, t->pause_reason, 0, since ? atoll(since) : 0, NULL);
        free(why);
        free(since);
    } else if (paused_fp || t->paused) {
        /* new events go out at once; the held ones are moved back once the
         * holds still waiting for their commit are saved (else they would
         * be written "held" after the move, and stay so) */
        bp_store_meta_set(l->store, t->id, "paused_credentials", NULL);
        bp_store_meta_set(l->store, t->id, "paused_since", NULL);
        t->paused = 0;
        t->release_held = 1;
        t->acct->check_load = 1;
        bp_dl_report_health(t, BP_HEALTH_DELIVERING, "", 0);
    }
    free(paused_fp);
}

static void report_broken(loop *l, tenant *t, const char *why)
{
    (void)l;
    bp_dl_log_tenant("error", "integration cannot be delivered (its blueprint does not start); events stay stored", t, why);
}

static void drop_spec(bp_tenant_spec *s)
{
    if (!s->id) return;
    if (s->sink && s->sink->release) s->sink->release(s->ctx);
    free((char *)s->id);
    bp_config_free(s->cfg);
    bp_shared_bp_drop(s->bp);
    s->id = NULL;
}

void bp_dl_tenant_free(tenant *t)
{
    drop_spec(&t->forward);
    if (t->sink && t->sink->release) t->sink->release(t->ctx);
    if (!t->borrowed_cfg) bp_config_free(t->cfg);
    bp_shared_bp_drop(t->bp);
    free(t->id);
    free(t);
}

void bp_dl_add_tenant(loop *l, const bp_tenant_spec *s)
{
    /* `deliver` lends its config (the only tenant with the id "") */
    tenant *t = bp_calloc(1, sizeof *t);
    t->id = bp_strdup(s->id);
    t->bp = s->bp;
    t->cfg = s->cfg;
    t->sink = s->sink;
    t->ctx = s->ctx;
    t->st = s->counts;
    t->borrowed_cfg = !l->pool;
    t->more = 1;
    t->max_attempts = l->o->max_attempts > 0 ? l->o->max_attempts : t->bp->bp->retry_max_attempts;
    bp_error err;
    if (bind_engine(l, t, &err) < 0) {
        char reason[sizeof t->health.reason];
        snprintf(reason, sizeof reason, "the blueprint does not start: %.470s", err.msg);
        report_broken(l, t, err.msg);
        bp_dl_report_health(t, BP_HEALTH_BLUEPRINT_ERROR, reason, 0);
        bp_dl_tenant_free(t);
        return;
    }
    t->acct = join_account(l, t);
    bp_dl_batch_recover(l, t);   /* a batch the vendor queued before a restart: ask for its status */
    t->next = l->tenants;
    l->tenants = t;
    size_t b = bp_dl_hash_text(t->id) % TENANT_BUCKETS;
    t->hash_next = l->by_id[b];
    l->by_id[b] = t;
    /* a new start: whatever the last tenant of this id said (a blueprint
     * that did not start, say) is over until an answer says more */
    bp_dl_report_health(t, BP_HEALTH_IDLE, "", 0);
    restore_pause(l, t);
}

/* A new blueprint or config for a tenant this loop already serves, on the
 * same account.  Events not yet sent are mapped again under it; requests
 * in flight were rendered already and finish as they are. */
static void replace_tenant(loop *l, tenant *t, const bp_tenant_spec *s)
{
    tenant old = *t;
    t->bp = s->bp;
    t->cfg = s->cfg;
    t->eng = NULL;
    bp_error err;
    /* the tenant keeps the reference it holds on ctx; the spec's goes */
    if (s->sink && s->sink->release) s->sink->release(s->ctx);
    if (bind_engine(l, t, &err) < 0) {
        report_broken(l, t, err.msg);   /* keep delivering with what it had */
        t->bp = old.bp; t->cfg = old.cfg; t->eng = old.eng; t->bind = old.bind;
        bp_config_free(s->cfg);
        bp_shared_bp_drop(s->bp);
        return;
    }
    bp_dl_batch_forget(l, t, 1);   /* their readers live in the old engine: made again when needed */
    bp_dl_unbind_engine(l, &old);
    t->generation++;
    /* a reload may change the blueprint's limit (an override stays) */
    if (l->o->rate_limit_rps <= 0 && t->bp->bp->rate_limit_rps != old.bp->bp->rate_limit_rps) {
        if (l->pool) pthread_mutex_lock(&l->pool->mu);
        pace_apply(t->acct->pace, t->bp->bp->rate_limit_rps, t->acct->pace->share);
        if (l->pool) pthread_mutex_unlock(&l->pool->mu);
    }
    t->max_attempts = l->o->max_attempts > 0 ? l->o->max_attempts : t->bp->bp->retry_max_attempts;
    for (job *j = t->acct->jobs, *next; j; j = next) {
        next = j->next;
        if (j->t == t && !j->inflight && !j->batch && j->ev.done_requests == 0) bp_dl_map_job(l, j);
    }
    t->acct->next_ms = 0;
    t->acct->check_load = 1;
    bp_config_free(old.cfg);
    bp_shared_bp_drop(old.bp);
    restore_pause(l, t);
}

static int same_account(const tenant *t, const bp_tenant_spec *s)
{
    char key[600];
    bp_account_key(s->bp->bp, s->cfg, t->id, key, sizeof key);
    return !strcmp(key, t->acct->key);
}


void bp_dl_detach_tenant(loop *l, tenant *t)
{
    for (tenant **p = &l->tenants; *p; p = &(*p)->next) if (*p == t) { *p = t->next; break; }
    for (tenant **p = &l->by_id[bp_dl_hash_text(t->id) % TENANT_BUCKETS]; *p; p = &(*p)->hash_next)
        if (*p == t) { *p = t->hash_next; break; }
}

/* A removed tenant whose requests have all answered (and, unless purged,
 * whose progress is saved) leaves the loop. */
void bp_dl_reap(loop *l)
{
    if (!l->nremoving) return;
    for (tenant *t = l->tenants, *next; t; t = next) {
        next = t->next;
        if (!t->removing || t->inflight > 0 || (!t->purge && (t->unsaved_final > 0 || l->dirty || bp_dl_marks_of(l, t, 0))))
            continue;
        if (t->purge) {
            bp_dl_marks_of(l, t, 1);
            /* its unsaved progress is moot: take it off the dirty list */
            job **p = &l->dirty;
            l->dirty_tail = &l->dirty;
            while (*p) {
                job *j = *p;
                if (j->t == t) { *p = j->dirty_next; if (j->final) { t->unsaved_final--; bp_dl_free_job(j); } else j->dirty = 0; }
                else { p = &j->dirty_next; l->dirty_tail = p; }
            }
        }
        bp_dl_batch_forget(l, t, 0);
        for (job *j = t->acct->jobs, *jn; j; j = jn) {
            jn = j->next;
            if (j->t == t) { bp_dl_unlink_job(t->acct, j); bp_dl_free_job(j); }
        }
        l->nremoving--;
        bp_dl_detach_tenant(l, t);
        bp_dl_leave_account(l, t);
        bp_dl_unbind_engine(l, t);
        if (t->purge && (bp_store_purge(l->store, t->id) < 0 || bp_store_batch_forget(l->store, t->id) < 0))
            bp_dl_log_tenant("error", "could not delete a deleted integration's events; they stay in the store", t, NULL);
        bp_tenant_spec forward = t->forward;
        t->forward.id = NULL;
        bp_dl_tenant_free(t);
        if (forward.id) { bp_dl_add_tenant(l, &forward); free((char *)forward.id); }
    }
}

/* ---- commands ---------------------------------------------------------------------------------- */

static void free_cmd(cmd *c)
{
    drop_spec(&c->spec);
    free(c->id);
    free(c);
}

static void start_removing(loop *l, tenant *t)
{
    if (t->removing) return;
    t->removing = 1;
    l->nremoving++;
    t->acct->next_ms = 0;
}

void bp_dl_handle_commands(loop *l)
{
    pthread_mutex_lock(&l->inbox_mu);
    cmd *c = l->inbox;
    l->inbox = NULL;
    l->inbox_tail = &l->inbox;
    pthread_mutex_unlock(&l->inbox_mu);
    while (c) {
        cmd *next = c->next;
        const char *id = c->id ? c->id : c->spec.id;
        tenant *t = id ? bp_dl_find_tenant(l, id) : NULL;
        switch (c->kind) {
        case CMD_PUT:
            if (!t) {
                bp_dl_add_tenant(l, &c->spec);
                free((char *)c->spec.id);
                c->spec.id = NULL;   /* the tenant took bp and cfg */
            } else if (t->removing || !same_account(t, &c->spec)) {
                /* a new account (or a put while draining for one): drain
                 * this one, then start again from the newest put */
                start_removing(l, t);
                drop_spec(&t->forward);
                t->forward = c->spec;
                c->spec.id = NULL;
            } else {
                replace_tenant(l, t, &c->spec);
                free((char *)c->spec.id);
                c->spec.id = NULL;
            }
            break;
        case CMD_REMOVE:
            if (t) { start_removing(l, t); t->purge = c->purge; drop_spec(&t->forward); }
            break;
        case CMD_WAKE:
            if (t && !t->removing) { t->more = 1; t->acct->check_load = 1; }
            break;
        case CMD_RESCAN:
            if (t && !t->removing) { t->rescan = 1; t->acct->check_load = 1; restore_pause(l, t); }
            break;
        case CMD_STOP:
            l->stopping = 1;
            break;
        }
        free_cmd(c);
        c = next;
    }
}
