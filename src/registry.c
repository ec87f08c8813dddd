/*
 * registry.c — the integrations `blueprint serve` manages: install, update,
 * delete, find and release, their config revisions in server.db, their
 * delivery by a fixed pool of delivery loops (deliver.c) over one event
 * store (STATE/events.db), their outcome counters and Live Events lines,
 * and the switch of a vendor's blueprint that hot reload decides.  Its
 * struct and its two locks are its own: other files use the functions
 * declared in internal.h (lookups that hand out a reference, iteration and
 * reads through callbacks run with the lock held).
 *
 * The jobs around it have files of their own, below it: the catalog of
 * blueprint folders (catalog.c, fingerprint.c), sealing of secrets and key
 * rotation (sealing.c), the server.db schema (serverdb.c) and its
 * integrations tables (integrationsdb.c), the audit log (audit.c), spent
 * sign-in token ids (signins.c), the editor's blueprint revisions
 * (revisions.c), config documents (configdoc.c), cluster mode's
 * configuration records (configrecord.c) and Live Events' rings (live.c).
 * Above it: hot reload (reload.c), the server, the editor, and the cluster,
 * which plugs in through bp_registry_hooks: the registry tells it what
 * changed and never calls it by name.
 *
 * Nothing here waits for a vendor: install, update, reload and delete hand
 * the pool a new config (or a removal) and return; the loop serving the
 * integration applies it between requests.
 */
#include "service.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Locks: `mu` guards the fields marked [mu]; `admin_mu` serialises
 * install, update, delete and reloads (validation, server.db, the pool
 * calls) so they never interleave; it is taken before `mu`, never after.
 * The struct and both locks are this file's alone; other files get what
 * they need through the functions in internal.h. */
struct bp_registry {
    pthread_mutex_t mu, admin_mu;
    char *blueprints_dir, *state_dir;   /* fixed */
    bp_vendor *vendors; size_t nvendors;  /* the array is fixed after open; fields [mu] */
    bp_integration **items; size_t n;     /* [mu] */
    struct sqlite3 *db;                   /* [admin_mu] (install/update/delete/revisions) */
    bp_keyring *keys;                     /* thread-safe: seals secrets in server.db */
    bp_store *store;                      /* thread-safe */
    bp_pool *pool;                        /* thread-safe */
    bp_registry_hooks hooks;              /* fixed after set_hooks: the layer above (cluster mode) */
    bp_metrics metrics;                   /* [mu] */
    int64_t started_ms;                   /* fixed: wall clock at open, where the counts since start begin */
    double rate_limit_rps;                /* fixed: override for every account (tests), 0 = blueprint's */
    long retry_base_ms; int batch;        /* fixed; batch: serve --batch forms batches */
    int workers;                          /* fixed: delivery threads */
    bp_revisions_kept keep;               /* fixed: the editor's revisions kept per blueprint */
    bp_limits limits;                     /* fixed: the sandbox budgets of delivery, also the editor's dry-run */
    struct bp_jti_set *spent;             /* thread-safe: token ids spent (the signins table), not expired */
    bp_unopened *unopened;                /* thread-safe: configurations this node could not open, and why */
    void (*on_live)(void *ctx, bp_integration *it);   /* fixed: called with a new live line, [mu] held */
    void *on_live_ctx;
};

/* ---- vendors (catalog.c loads them) ---------------------------------------------------------- */

bp_vendor *bp_registry_vendor(bp_registry *r, const char *key)
{
    for (size_t i = 0; i < r->nvendors; i++)
        if (!strcmp(r->vendors[i].key, key)) return &r->vendors[i];
    return NULL;
}

bp_vendor *bp_registry_find_vendor(bp_registry *r, const char *key)
{
    pthread_mutex_lock(&r->mu);
    bp_vendor *v = bp_registry_vendor(r, key);
    pthread_mutex_unlock(&r->mu);
    return v;
}

bp_shared_bp *bp_registry_vendor_bp(bp_registry *r, bp_vendor *v, char disk[BP_REVISION_LEN], char **load_error)
{
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *sbp = v->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    if (disk) memcpy(disk, v->disk_revision, BP_REVISION_LEN);
    if (load_error) *load_error = v->load_error ? bp_strdup(v->load_error) : NULL;
    pthread_mutex_unlock(&r->mu);
    return sbp;
}

/* The version of v that runs (a reference held), or NULL. */
static bp_shared_bp *running_of(bp_registry *r, bp_vendor *v) { return bp_registry_vendor_bp(r, v, NULL, NULL); }

/* ---- integrations: references, outcomes (counters, Live Events), delivery -------------------- */

static void free_integration(bp_integration *it)
{
    bp_live_free(it);
    free(it->recent);
    free(it->name);
    free(it->variant);
    free(it->delivery_mode);
    free(it->config_json);
    bp_config_free(it->cfg);
    free(it);
}

void bp_integration_hold(bp_integration *it) { atomic_fetch_add_explicit(&it->refs, 1, memory_order_relaxed); }
static void hold(bp_integration *it) { bp_integration_hold(it); }

void bp_integration_release(bp_integration *it)
{
    if (it && atomic_fetch_sub_explicit(&it->refs, 1, memory_order_acq_rel) == 1) free_integration(it);
}

/* Counts a final outcome and shows any outcome to Live Events streams (mu held). */
static void note_outcome_locked(bp_registry *r, bp_integration *it, const char *line, size_t len, int end,
                                const char *reason)
{
    if (end >= 0 && end != BP_END_RETRYING) {
        bp_metrics_outcome(&r->metrics, (enum bp_end)end, reason);
        bp_recent_add(&it->recent, (enum bp_end)end, (int64_t)bp_wall_ms());
    }
    if (bp_live_push(it, line, len) && r->on_live) r->on_live(r->on_live_ctx, it);   /* someone streams it */
}

static void on_outcome(void *ctx, const bp_stored *ev, const char *line, size_t len, enum bp_end end, const char *reason)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    /* cluster mode: every node, this one too, counts and shows it from the
     * outcomes topic (bp_registry_remote_outcome) */
    if (r->hooks.outcome) { r->hooks.outcome(r->hooks.ctx, it->id, ev, line, len, end, reason); return; }
    pthread_mutex_lock(&r->mu);
    note_outcome_locked(r, it, line, len, end, reason);
    pthread_mutex_unlock(&r->mu);
}

uint64_t bp_registry_watch(bp_registry *r, bp_integration *it)
{
    pthread_mutex_lock(&r->mu);
    uint64_t seq = bp_live_watch(it);
    pthread_mutex_unlock(&r->mu);
    return seq;
}

void bp_registry_unwatch(bp_registry *r, bp_integration *it)
{
    pthread_mutex_lock(&r->mu);
    bp_live_unwatch(it);
    pthread_mutex_unlock(&r->mu);
}

int bp_registry_live_since(bp_registry *r, bp_integration *it, uint64_t *next_seq,
                           void (*fn)(void *ctx, const char *line), void *ctx)
{
    pthread_mutex_lock(&r->mu);
    int ended = it->deleted;
    bp_live_lines(it, next_seq, fn, ctx);
    pthread_mutex_unlock(&r->mu);
    return ended;
}

static void count_outcome(bp_counts *st, int end)
{
    _Atomic long *counter[BP_END_COUNT] = { &st->delivered, &st->dropped, &st->errors, &st->dead, &st->held, &st->retries };
    if (end >= 0) atomic_fetch_add_explicit(counter[end], 1, memory_order_relaxed);
}

void bp_registry_remote_outcome(bp_registry *r, const char *integration, const char *line, size_t len, const char *label,
                                const char *reason)
{
    bp_integration *it = bp_registry_find(r, integration);
    if (!it) return;   /* deleted since, or not applied here yet: its row is stored all the same */
    int end = bp_end_of_label(label);   /* -1: not an end ("replayed"), shown only */
    count_outcome(&it->stats, end);
    pthread_mutex_lock(&r->mu);
    note_outcome_locked(r, it, line, len, end, reason);
    pthread_mutex_unlock(&r->mu);
    bp_integration_release(it);
}

static void count_answer(void *ctx, int status, double duration_ms)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    pthread_mutex_lock(&r->mu);
    bp_metrics_answer(&r->metrics, status, duration_ms);
    pthread_mutex_unlock(&r->mu);
}

static void release_tenant(void *ctx) { bp_integration_release(ctx); }

static void note_health(void *ctx, const bp_health *h)
{
    bp_integration *it = ctx;
    pthread_mutex_lock(&it->registry->mu);
    it->health = *h;
    pthread_mutex_unlock(&it->registry->mu);
}

static void on_batch_queued(void *ctx, const bp_queued_batch *q)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    if (r->hooks.batch_queued) r->hooks.batch_queued(r->hooks.ctx, it->id, q);
}

static const bp_sink registry_sink = { on_outcome, count_answer, release_tenant, note_health, on_batch_queued };

/* Hand the pool the integration with its own copy of `cfg` (the pool owns
 * it) on blueprint `sbp`.  admin_mu held. */
static void deliver_with(bp_registry *r, bp_integration *it, bp_shared_bp *sbp, const char *config_json)
{
    if (!r->pool || !sbp) return;
    /* a secret left sealed (sealing.c logged why) is not sent as it is */
    if (strstr(config_json, "\"bp:enc:")) return;
    bp_error err;
    bp_config *cfg = bp_config_load_text(sbp->bp, config_json, strlen(config_json), "stored config", &err);
    if (!cfg) {
        bp_buf f;
        bp_buf_init(&f);
        bp_log_field(&f, "integration", it->id);
        bp_log_field(&f, "error", err.msg);
        bp_log("error", "integration not delivered: its stored config does not validate", f.data);
        bp_buf_free(&f);
        return;
    }
    bp_shared_bp_hold(sbp);
    hold(it);   /* the tenant's reference, released through the sink */
    bp_tenant_spec spec = { it->id, sbp, cfg, &registry_sink, it, r->hooks.outcome ? &it->node_stats : &it->stats };
    bp_pool_put(r->pool, &spec);
}

static bp_integration *new_integration(bp_registry *r, const char *id, const char *name, bp_vendor *v,
                                       const char *variant, const char *mode, int revision, int64_t created,
                                       const char *config_json)
{
    bp_integration *it = bp_calloc(1, sizeof *it);
    it->registry = r;
    snprintf(it->id, sizeof it->id, "%s", id);
    it->name = bp_strdup(name);
    it->vendor = v;
    it->variant = bp_strdup(variant);
    it->delivery_mode = bp_strdup(mode);
    it->revision = revision;
    it->created_at = created;
    it->config_json = bp_strdup(config_json);
    atomic_init(&it->refs, 1);   /* the registry's list */
    return it;
}

/* ---- finding integrations; what other files ask of the registry ------------------------------ */

bp_integration *bp_registry_find(bp_registry *r, const char *id)
{
    bp_integration *found = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !found; i++) if (!strcmp(r->items[i]->id, id)) found = r->items[i];
    if (found) hold(found);
    pthread_mutex_unlock(&r->mu);
    return found;
}

int bp_integration_deleted(bp_integration *it)
{
    pthread_mutex_lock(&it->registry->mu);
    int deleted = it->deleted;
    pthread_mutex_unlock(&it->registry->mu);
    return deleted;
}

bp_shared_bp *bp_integration_current(bp_integration *it, char **config_json)
{
    pthread_mutex_lock(&it->registry->mu);
    bp_shared_bp *sbp = it->vendor->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    *config_json = it->config_json ? bp_strdup(it->config_json) : NULL;
    pthread_mutex_unlock(&it->registry->mu);
    return sbp;
}

void bp_registry_each(bp_registry *r, void (*fn)(void *ctx, bp_integration *it), void *ctx)
{
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) fn(ctx, r->items[i]);
    pthread_mutex_unlock(&r->mu);
}

bp_store *bp_registry_store(bp_registry *r) { return r->store; }
bp_unopened *bp_registry_unopened(bp_registry *r) { return r->unopened; }
bp_pool *bp_registry_pool(bp_registry *r) { return r->pool; }
const char *bp_registry_blueprints_dir(bp_registry *r) { return r->blueprints_dir; }
const char *bp_registry_state_dir(bp_registry *r) { return r->state_dir; }
const bp_limits *bp_registry_limits(bp_registry *r) { return &r->limits; }

void bp_registry_set_hooks(bp_registry *r, const bp_registry_hooks *h) { r->hooks = *h; }

void bp_registry_configure(bp_registry *r, double rate_limit_rps, long retry_base_ms, int batch,
                           void (*on_live)(void *ctx, bp_integration *it), void *on_live_ctx)
{
    r->rate_limit_rps = rate_limit_rps;
    r->retry_base_ms = retry_base_ms;
    r->batch = batch;
    r->on_live = on_live;
    r->on_live_ctx = on_live_ctx;
}

void bp_registry_locked(bp_registry *r, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&r->mu);
    fn(ctx);
    pthread_mutex_unlock(&r->mu);
}

void bp_registry_each_vendor(bp_registry *r, void (*fn)(void *ctx, bp_vendor *v), void *ctx)
{
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->nvendors; i++) fn(ctx, &r->vendors[i]);
    pthread_mutex_unlock(&r->mu);
}

size_t bp_registry_count(bp_registry *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int64_t bp_registry_started_ms(bp_registry *r) { return r->started_ms; }

void bp_registry_count_events_in(bp_registry *r, long n)
{
    pthread_mutex_lock(&r->mu);
    r->metrics.events_in += n;
    pthread_mutex_unlock(&r->mu);
}

bp_metrics bp_registry_metrics(bp_registry *r)
{
    pthread_mutex_lock(&r->mu);
    bp_metrics m = r->metrics;
    pthread_mutex_unlock(&r->mu);
    return m;
}

/* The layer above is told that integrations came or went. */
static void topics_changed(bp_registry *r)
{
    if (r->hooks.topics_changed) r->hooks.topics_changed(r->hooks.ctx);
}

/* ---- server.db: a revision saved (in cluster mode published first), integrations loaded ------ */

/* Cluster mode: write the integration's record to the topic and wait for
 * the broker, before the change commits here (admin_mu held, inside the
 * server.db transaction): a change the cluster does not have never shows. */
static int publish_locked(bp_registry *r, const char *id, bp_error *err)
{
    if (!r->hooks.publish_config) return 0;
    bp_buf rec;
    bp_buf_init(&rec);
    int rc = bp_config_record_write(r->db, id, &rec);
    if (rc < 0) bp_error_set(err, "the cluster's configuration could not be written: %s", sqlite3_errmsg(r->db));
    else if ((rc = r->hooks.publish_config(r->hooks.ctx, id, rec.data, rec.len, err)) < 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "the cluster's configuration could not be written, nothing changed: %s; retry later "
                     "(GET /healthz shows the brokers' state)", why);
    }
    if (rec.data) memset(rec.data, 0, rec.cap);
    bp_buf_free(&rec);
    return rc;
}

/* it's current revision into server.db (its row too: inserted, or its
 * revision moved), secrets sealed; in cluster mode published before it
 * commits.  0; -1 (server.db) or -2 (the cluster) with err: nothing changed. */
static int save_revision(bp_registry *r, const bp_integration *it, int insert_integration, bp_error *perr)
{
    /* IMMEDIATE: sealed under the ring's primary key as it is while this
     * transaction holds the write lock (a rotation takes the same lock) */
    if (bp_serverdb_exec(r->db, "BEGIN IMMEDIATE") < 0) return -1;
    bp_buf sealed;
    bp_buf_init(&sealed);
    bp_error err;
    int ok = bp_seal_doc(r->keys, it->id, it->vendor->bp ? it->vendor->bp->bp : NULL, it->config_json, BP_SEAL,
                           &sealed, NULL, &err) == 0;
    if (!ok) {
        bp_buf f;
        bp_buf_init(&f);
        bp_log_field(&f, "error", err.msg);
        bp_log("error", "could not encrypt an integration's secrets; nothing was stored", f.data);
        bp_buf_free(&f);
    }
    ok = bp_integrations_write(r->db, it, insert_integration, sealed.data, sealed.len);
    int published = 1;
    if (!ok) bp_error_set(perr, "could not store the revision: %s", sqlite3_errmsg(r->db));
    else if (publish_locked(r, it->id, perr) < 0) ok = published = 0;
    bp_serverdb_exec(r->db, ok ? "COMMIT" : "ROLLBACK");
    bp_buf_free(&sealed);
    return ok ? 0 : published ? -1 : -2;
}

/* One stored integration, listed with its config opened (the registry
 * opening: one thread).  One that does not open (no blueprint, secrets
 * that do not decrypt) is listed in unopened.c, not loaded. */
static int load_integration(void *ctx, const bp_integration_row *row, bp_error *err)
{
    bp_registry *r = ctx;
    (void)err;   /* nothing here stops the registry: what does not open is listed */
    bp_vendor *v = bp_registry_vendor(r, row->vendor);
    if (!v) {
        bp_unopened_note(r->unopened, row->id, BP_UNOPENED_BLUEPRINT, row->vendor, NULL);
        return 0;
    }
    bp_buf plain;
    bp_buf_init(&plain);
    bp_error why;
    if (bp_seal_doc(r->keys, row->id, v->bp ? v->bp->bp : NULL, row->config, BP_UNSEAL, &plain, NULL, &why) < 0) {
        /* a wrong key file, or a stored value altered: this integration is
         * listed as not opened (healthz 503, its intake 503 saying what to
         * do) and the others start, as on a cluster node */
        bp_buf_free(&plain);
        bp_unopened_note(r->unopened, row->id, BP_UNOPENED_KEYS, row->vendor, why.msg);
        return 0;
    }
    bp_integration *it = new_integration(r, row->id, row->name, v, row->variant, row->delivery_mode, row->revision,
                                         row->created_at, plain.data);
    memset(plain.data, 0, plain.cap);
    bp_buf_free(&plain);
    bp_error cerr;
    if (v->bp) it->cfg = bp_config_load_text(v->bp->bp, it->config_json, strlen(it->config_json), "stored config", &cerr);
    r->items = bp_realloc(r->items, (r->n + 1) * sizeof *r->items);
    r->items[r->n++] = it;
    return 0;
}

/* ---- open, start, close ---------------------------------------------------------------------- */

/* The running blueprint of a vendor, while the registry opens (one thread). */
static const bp_blueprint *blueprint_of(void *ctx, const char *vendor)
{
    bp_vendor *v = bp_registry_vendor(ctx, vendor);
    return v && v->bp ? v->bp->bp : NULL;
}

bp_registry *bp_registry_open(const char *blueprints_dir, const char *state_dir, bp_error *err)
{
    bp_registry *r = bp_calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->admin_mu, NULL);
    r->blueprints_dir = bp_strdup(blueprints_dir);
    r->state_dir = bp_strdup(state_dir);
    r->started_ms = (int64_t)bp_wall_ms();
    r->spent = bp_jti_set_new();
    r->unopened = bp_unopened_new();
    bp_limits_default(&r->limits);
    r->keep = bp_revisions_policy();
    if (!(r->db = bp_serverdb_open(state_dir, err)) || !(r->store = bp_store_open(state_dir, "events.db", err)) ||
        !(r->keys = bp_keyring_open(state_dir, err))) {
        bp_registry_close(r);
        return NULL;
    }
    bp_catalog_load(r->blueprints_dir, &r->vendors, &r->nvendors);
    bp_signins_load(r->db, r->spent);
    if (bp_seal_plain_revisions(r->db, r->keys, blueprint_of, r, err) < 0 ||
        bp_integrations_load(r->db, load_integration, r, err) < 0 ||
        bp_revisions_migrate(r->db, err) < 0) {
        bp_registry_close(r);
        return NULL;
    }
    bp_serverdb_import_old_stores(state_dir, r->store);
    r->metrics.integrations = (long)r->n;
    return r;
}

int bp_registry_start(bp_registry *r, int workers, bp_error *err)
{
    bp_deliver_opts o;
    bp_deliver_opts_default(&o);
    if (r->rate_limit_rps > 0) o.rate_limit_rps = r->rate_limit_rps;
    if (r->retry_base_ms > 0) o.retry_base_ms = r->retry_base_ms;
    o.batch = r->batch;
    r->workers = workers;
    r->limits = o.limits;
    bp_lease lease;
    if (r->hooks.lease) r->hooks.lease(r->hooks.ctx, &lease);
    if (!(r->pool = bp_pool_new(r->store, &o, workers, r->hooks.lease ? &lease : NULL, err))) return -1;
    pthread_mutex_lock(&r->admin_mu);
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    bp_integration **items = bp_calloc(n + 1, sizeof *items);
    for (size_t i = 0; i < n; i++) { items[i] = r->items[i]; hold(items[i]); }
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        bp_integration *it = items[i];
        pthread_mutex_lock(&r->mu);
        bp_shared_bp *sbp = it->vendor->bp;
        char *doc = bp_strdup(it->config_json);
        pthread_mutex_unlock(&r->mu);
        deliver_with(r, it, sbp, doc);
        free(doc);
        bp_integration_release(it);
    }
    free(items);
    pthread_mutex_unlock(&r->admin_mu);
    return 0;
}

void bp_registry_close(bp_registry *r)
{
    if (!r) return;
    /* cluster mode: leave the group first (its partitions' requests in
     * flight finish), then the pool, then the outcomes it reported go out */
    if (r->hooks.stop) r->hooks.stop(r->hooks.ctx);
    bp_pool_free(r->pool);   /* finishes requests in flight and saves progress */
    r->pool = NULL;
    if (r->hooks.release) r->hooks.release(r->hooks.ctx);
    memset(&r->hooks, 0, sizeof r->hooks);
    for (size_t i = 0; i < r->n; i++) bp_integration_release(r->items[i]);
    free(r->items);
    bp_catalog_free(r->vendors, r->nvendors);
    bp_store_close(r->store);
    bp_keyring_close(r->keys);
    bp_jti_set_free(r->spent);
    bp_unopened_free(r->unopened);
    sqlite3_close(r->db);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->admin_mu);
    free(r->blueprints_dir);
    free(r->state_dir);
    free(r);
}

/* ---- the audit log --------------------------------------------------------------------------- */

void bp_registry_audit(bp_registry *r, const bp_claims *who, const char *action, const char *integration,
                       const char *detail)
{
    pthread_mutex_lock(&r->admin_mu);
    bp_audit_write(r->db, who, action, integration, 0, 0, detail);
    pthread_mutex_unlock(&r->admin_mu);
}

/* Entries newest first, filtered; `cursor` = the id to continue below (0: from the newest). */
int bp_registry_audit_list(bp_registry *r, const char *integration, const char *action, const char *actor,
                           int64_t since, int64_t until, int64_t cursor, int limit, bp_buf *out)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = bp_audit_list(r->db, integration, action, actor, since, until, cursor, limit, out);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

/* Entries older than `days` go (kept 90 days by default). */
void bp_registry_audit_purge(bp_registry *r, int days)
{
    pthread_mutex_lock(&r->admin_mu);
    bp_audit_purge(r->db, days);
    pthread_mutex_unlock(&r->admin_mu);
}

/* ---- install, update, delete ----------------------------------------------------------------- */

static void log_integration(const char *msg, const bp_integration *it)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "integration", it->id);
    bp_log_field(&f, "vendor", it->vendor->key);
    bp_log("info", msg, f.data);
    bp_buf_free(&f);
}

static int install_locked(bp_registry *r, bp_vendor *v, const bp_doc *body, const bp_claims *who, bp_integration **out,
                          int *http, bp_error *err)
{
    const char *name, *variant, *mode;
    *http = 422;
    if (bp_configdoc_install_fields(body, &name, &variant, &mode, err) < 0) return -1;
    bp_shared_bp *sbp = running_of(r, v);
    if (!sbp) { *http = 503; bp_error_set(err, "the '%s' blueprint failed to load", v->dir); return -1; }
    bp_buf doc;
    bp_buf_init(&doc);
    bp_config *cfg = bp_configdoc_install(sbp->bp, body, variant, mode, &doc, http, err);
    if (*http == 404) { bp_buf_free(&doc); bp_shared_bp_drop(sbp); return -1; }
    int taken = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; cfg && i < r->n; i++) if (!strcmp(r->items[i]->name, name)) taken = 1;
    pthread_mutex_unlock(&r->mu);
    if (!cfg || taken) {
        if (taken) { *http = 409; bp_error_set(err, "an integration named '%s' already exists", name); }
        bp_config_free(cfg);
        bp_buf_free(&doc);
        bp_shared_bp_drop(sbp);
        return -1;
    }
    char id[40];
    bp_integrations_new_id(id, sizeof id);
    bp_integration *it = new_integration(r, id, name, v, variant, mode, 1, (int64_t)bp_wall_ms(), doc.data);
    it->cfg = cfg;
    int saved = save_revision(r, it, 1, err);
    if (saved < 0) {
        *http = saved == -2 ? 503 : 500;
        free_integration(it);
        bp_buf_free(&doc);
        bp_shared_bp_drop(sbp);
        return -1;
    }
    pthread_mutex_lock(&r->mu);
    r->items = bp_realloc(r->items, (r->n + 1) * sizeof *r->items);
    r->items[r->n++] = it;
    r->metrics.integrations = (long)r->n;
    hold(it);   /* the caller's */
    pthread_mutex_unlock(&r->mu);
    topics_changed(r);
    deliver_with(r, it, sbp, doc.data);
    bp_buf_free(&doc);
    *out = it;
    log_integration("integration installed", it);
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s, named ", sbp->bp->vendor);
    bp_json_write_text(&what, name, strlen(name));
    bp_audit_write(r->db, who, "integration.install", it->id, 0, 1, what.data);
    bp_buf_free(&what);
    bp_shared_bp_drop(sbp);
    return 0;
}

int bp_registry_install(bp_registry *r, bp_vendor *v, const bp_doc *body, const bp_claims *who, bp_integration **out,
                        int *http, bp_error *err)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = install_locked(r, v, body, who, out, http, err);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

static int update_locked(bp_registry *r, bp_integration *it, const bp_doc *patch, const bp_claims *who, int *http,
                         bp_error *err)
{
    static const char *const known[] = { "config", "events", "consent", NULL };
    *http = 422;
    if (bp_check_body_keys(patch, known, "update (PATCH)", err) < 0) return -1;
    pthread_mutex_lock(&r->mu);
    int deleted = it->deleted;
    char *current = bp_strdup(it->config_json);
    bp_shared_bp *sbp = it->vendor->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    if (deleted || !sbp) {
        *http = deleted ? 404 : 503;
        if (deleted) bp_error_set(err, "no integration with id '%s'", it->id);
        else bp_error_set(err, "the '%s' blueprint failed to load", it->vendor->dir);
        free(current);
        bp_shared_bp_drop(sbp);
        return -1;
    }
    bp_buf doc;
    bp_buf_init(&doc);
    bp_config *cfg = bp_configdoc_update(sbp->bp, current, patch, it->variant, &doc, err);
    if (!cfg) { bp_buf_free(&doc); bp_shared_bp_drop(sbp); free(current); return -1; }
    pthread_mutex_lock(&r->mu);
    char *old_json = it->config_json;
    bp_config *old_cfg = it->cfg;
    it->config_json = bp_strdup(doc.data);
    it->cfg = cfg;
    it->revision++;
    pthread_mutex_unlock(&r->mu);
    int saved = save_revision(r, it, 0, err);
    if (saved < 0) {
        pthread_mutex_lock(&r->mu);   /* put it back: nothing changed */
        free(it->config_json);
        it->config_json = old_json;
        it->cfg = old_cfg;
        it->revision--;
        pthread_mutex_unlock(&r->mu);
        bp_config_free(cfg);
        *http = saved == -2 ? 503 : 500;
        bp_buf_free(&doc);
        bp_shared_bp_drop(sbp);
        free(current);
        return -1;
    }
    free(old_json);
    bp_config_free(old_cfg);
    deliver_with(r, it, sbp, doc.data);
    bp_buf what;
    bp_buf_init(&what);
    bp_audit_describe_changes(current, doc.data, &what);
    bp_audit_write(r->db, who, "integration.update", it->id, it->revision - 1, it->revision, what.data);
    bp_buf_free(&what);
    free(current);
    bp_buf_free(&doc);
    bp_shared_bp_drop(sbp);
    return 0;
}

int bp_registry_update(bp_registry *r, bp_integration *it, const bp_doc *patch, const bp_claims *who, int *http,
                       bp_error *err)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = update_locked(r, it, patch, who, http, err);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

/* Take a deleted integration out of the list and out of delivery (its
 * events, once-keys and pause state go once its loop has let go of them);
 * admin_mu held.  Releases the list's reference. */
static void forget_integration(bp_registry *r, bp_integration *it)
{
    pthread_mutex_lock(&r->mu);
    it->deleted = 1;
    int listed = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i] == it) { memmove(&r->items[i], &r->items[i + 1], (r->n - i - 1) * sizeof *r->items); r->n--; listed = 1; break; }
    r->metrics.integrations = (long)r->n;
    if (r->on_live) r->on_live(r->on_live_ctx, it);   /* streams end */
    pthread_mutex_unlock(&r->mu);
    if (r->pool) bp_pool_remove(r->pool, it->id, 1);
    topics_changed(r);
    /* the WAL still holds the pages as they were: copy back and truncate it */
    sqlite3_wal_checkpoint_v2(r->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (listed) bp_integration_release(it);
}

/* Deleting keeps the integrations row (id, name, vendor, deleted) and its
 * revisions with every secret replaced by a mask; the events, once-keys and
 * pause state go once its loop has let go of them.  -1 (cluster mode: the
 * topic did not take it) changes nothing. */
int bp_registry_delete(bp_registry *r, bp_integration *it, const bp_claims *who, bp_error *err)
{
    pthread_mutex_lock(&r->admin_mu);
    pthread_mutex_lock(&r->mu);
    int was = it->deleted;
    bp_shared_bp *sbp = it->vendor->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    if (was) { pthread_mutex_unlock(&r->admin_mu); bp_shared_bp_drop(sbp); return 0; }
    int ok = bp_serverdb_exec(r->db, "BEGIN IMMEDIATE") == 0;
    if (ok && bp_integrations_mask_deleted(r->db, it->id, sbp ? sbp->bp : NULL) < 0) {
        bp_error_set(err, "could not delete the integration: %s", sqlite3_errmsg(r->db));
        ok = 0;
    }
    if (ok && publish_locked(r, it->id, err) < 0) ok = 0;
    bp_serverdb_exec(r->db, ok ? "COMMIT" : "ROLLBACK");
    if (!ok) { pthread_mutex_unlock(&r->admin_mu); bp_shared_bp_drop(sbp); return -1; }
    log_integration("integration deleted", it);   /* vendor->key changes only under admin_mu */
    bp_audit_write(r->db, who, "integration.delete", it->id, it->revision, 0, "its events, once-keys and pause state are "
                 "deleted; its revisions are kept with secrets masked");
    forget_integration(r, it);
    pthread_mutex_unlock(&r->admin_mu);
    bp_shared_bp_drop(sbp);
    return 0;
}

/* ---- cluster mode: a change made on another node --------------------------------------------- */

/* rec's integration, deleted through another node: forgotten here too
 * (also when it never opened here). */
static void apply_deletion(bp_registry *r, const char *id, bp_integration *it, const char *fields)
{
    bp_unopened_clear(r->unopened, id);
    if (!it) return;
    forget_integration(r, it);
    bp_log("info", "integration deleted (through another node)", fields);
}

/* A new integration from another node, listed (a reference for the caller). */
static bp_integration *list_remote(bp_registry *r, const bp_config_record *rec, bp_vendor *v, const char *doc,
                                   bp_config *cfg, const char *fields)
{
    bp_integration *it = new_integration(r, rec->id, rec->name, v, rec->variant, rec->mode, rec->revision,
                                         atoll(rec->created), doc);
    it->cfg = cfg;
    pthread_mutex_lock(&r->mu);
    r->items = bp_realloc(r->items, (r->n + 1) * sizeof *r->items);
    r->items[r->n++] = it;
    r->metrics.integrations = (long)r->n;
    hold(it);   /* the caller's, like bp_registry_find's */
    pthread_mutex_unlock(&r->mu);
    topics_changed(r);
    bp_log("info", "integration installed (through another node)", fields);
    return it;
}

/* rec's current revision, opened with this node's keys, made what *it (NULL:
 * a new one, listed) has and delivers. */
static void apply_current(bp_registry *r, const bp_config_record *rec, bp_integration **it, bp_buf *fields)
{
    bp_vendor *v = bp_registry_find_vendor(r, rec->vendor);
    bp_shared_bp *sbp = v ? running_of(r, v) : NULL;
    bp_buf plain;
    bp_buf_init(&plain);
    bp_error err;
    if (!v) {
        bp_unopened_note(r->unopened, rec->id, BP_UNOPENED_BLUEPRINT, rec->vendor, NULL);
    } else if (bp_seal_doc(r->keys, rec->id, sbp ? sbp->bp : NULL, rec->current.data ? rec->current.data : "{}",
                           BP_UNSEAL, &plain, NULL, &err) < 0) {
        bp_unopened_note(r->unopened, rec->id, BP_UNOPENED_KEYS, rec->vendor, err.msg);
    } else {
        bp_unopened_clear(r->unopened, rec->id);
        bp_config *cfg = sbp ? bp_configdoc_validate(sbp->bp, plain.data, rec->variant, &err) : NULL;
        if (!*it) {
            *it = list_remote(r, rec, v, plain.data, cfg, fields->data);
        } else {
            pthread_mutex_lock(&r->mu);
            free((*it)->config_json);
            (*it)->config_json = bp_strdup(plain.data);
            bp_config_free((*it)->cfg);
            (*it)->cfg = cfg;
            (*it)->revision = rec->revision;
            pthread_mutex_unlock(&r->mu);
        }
        deliver_with(r, *it, sbp, plain.data);
    }
    if (plain.data) memset(plain.data, 0, plain.cap);
    bp_buf_free(&plain);
    bp_shared_bp_drop(sbp);
}

/* Cluster mode: a record from the configuration topic (this node's own
 * writes come back too, and change nothing).  The topic's order decides
 * (bp_config_record_is_news); a record that is news is stored in server.db,
 * then applied to the integration in memory and its delivery. */
void bp_registry_apply_config(bp_registry *r, const char *record, size_t len)
{
    bp_config_record rec;
    if (bp_config_record_parse(&rec, record, len) < 0) { bp_config_record_free(&rec); return; }
    pthread_mutex_lock(&r->admin_mu);
    if (bp_config_record_is_news(r->db, &rec) && bp_config_record_store(r->db, &rec) == 0) {
        bp_buf f;
        bp_buf_init(&f);
        bp_log_field(&f, "integration", rec.id);
        bp_integration *it = bp_registry_find(r, rec.id);
        if (rec.deleted) apply_deletion(r, rec.id, it, f.data);
        else apply_current(r, &rec, &it, &f);
        bp_integration_release(it);
        bp_buf_free(&f);
    }
    pthread_mutex_unlock(&r->admin_mu);
    bp_config_record_free(&rec);
}

/* ---- an integration's config revisions, for the API ------------------------------------------ */

int bp_registry_revisions(bp_registry *r, const bp_integration *it, bp_buf *out)
{
    pthread_mutex_lock(&r->admin_mu);
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *sbp = it->vendor->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    int rc = bp_integrations_revisions(r->db, it->id, sbp ? sbp->bp : NULL, out);
    pthread_mutex_unlock(&r->admin_mu);
    bp_shared_bp_drop(sbp);
    return rc;
}

/* ---- hot reload: what reload.c asks of the registry ------------------------------------------ */

/* A fingerprint of v's integrations and their revisions: a check made
 * against them holds while it is unchanged.  mu held. */
static uint64_t vendor_stamp(bp_registry *r, bp_vendor *v)
{
    uint64_t h = BP_FNV1A_BASIS;
    for (size_t k = 0; k < r->n; k++) {
        if (r->items[k]->vendor != v) continue;
        h = bp_fnv1a(h, r->items[k]->id, strlen(r->items[k]->id));
        uint32_t rev = (uint32_t)r->items[k]->revision + 0x100;   /* also ends the id */
        h = bp_fnv1a(h, &rev, sizeof rev);
    }
    return h;
}

uint64_t bp_registry_edit_stamp(bp_registry *r, bp_vendor *v)
{
    pthread_mutex_lock(&r->mu);
    uint64_t stamp = vendor_stamp(r, v);
    pthread_mutex_unlock(&r->mu);
    return stamp;
}

void bp_registry_vendor_items(bp_registry *r, bp_vendor *v, bp_vendor_items *vi)
{
    pthread_mutex_lock(&r->mu);
    vi->items = bp_calloc(r->n + 1, sizeof *vi->items);
    vi->docs = bp_calloc(r->n + 1, sizeof *vi->docs);
    vi->cfgs = bp_calloc(r->n + 1, sizeof *vi->cfgs);
    vi->n = 0;
    for (size_t k = 0; k < r->n; k++) {
        if (r->items[k]->vendor != v) continue;
        vi->items[vi->n] = r->items[k];
        vi->docs[vi->n] = bp_strdup(r->items[k]->config_json);
        hold(vi->items[vi->n++]);
    }
    vi->stamp = vendor_stamp(r, v);
    pthread_mutex_unlock(&r->mu);
}

bp_vendor *bp_registry_vendor_at(bp_registry *r, size_t i) { return i < r->nvendors ? &r->vendors[i] : NULL; }

int bp_registry_runs(bp_registry *r, bp_vendor *v, const char *rev)
{
    pthread_mutex_lock(&r->mu);
    int same = v->bp && !v->load_error && !strcmp(v->bp->revision, rev);
    pthread_mutex_unlock(&r->mu);
    return same;
}

void bp_registry_reject_version(bp_registry *r, bp_vendor *v, const char *rev, const char *why)
{
    pthread_mutex_lock(&r->mu);
    free(v->load_error);
    v->load_error = bp_strdup(why);
    memcpy(v->disk_revision, rev, BP_REVISION_LEN);
    r->metrics.reload_failures++;
    pthread_mutex_unlock(&r->mu);
}

void bp_registry_switch_version(bp_registry *r, bp_vendor *v, bp_blueprint *nb, const char *rev, bp_vendor_items *vi)
{
    bp_shared_bp *sbp = bp_shared_bp_new(nb);
    memcpy(sbp->revision, rev, BP_REVISION_LEN);
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *old = v->bp;
    v->bp = sbp;
    free(v->load_error);
    v->load_error = NULL;
    memcpy(v->disk_revision, rev, BP_REVISION_LEN);
    if (!v->key || strcmp(v->key, nb->vendor) != 0) { free(v->key); v->key = bp_strdup(nb->vendor); }
    for (size_t k = 0; k < vi->n; k++) {
        bp_config_free(vi->items[k]->cfg);
        vi->items[k]->cfg = vi->cfgs[k];
        vi->cfgs[k] = NULL;
    }
    r->metrics.reloads++;
    pthread_mutex_unlock(&r->mu);
    /* each loop switches its integrations between requests; the old blueprint goes with the last reference */
    for (size_t k = 0; k < vi->n; k++) deliver_with(r, vi->items[k], sbp, vi->docs[k]);
    bp_shared_bp_drop(old);
}

void bp_registry_audit_held(bp_registry *r, const bp_claims *who, const char *action, const char *detail)
{
    bp_audit_write(r->db, who, action, NULL, 0, 0, detail);
}

/* ---- the web console: spent sign-in token ids, the editor's lock ----------------------------- */

int bp_registry_spend_jti_here(bp_registry *r, const char *jti, int64_t expires_at)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = bp_signins_spend(r->db, r->spent, jti, expires_at);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

/* In a cluster the first claim the cluster sees decides, so that a link
 * works once in the whole cluster. */
int bp_registry_spend_jti(bp_registry *r, const char *jti, int64_t expires_at)
{
    if (r->hooks.spend_jti) return r->hooks.spend_jti(r->hooks.ctx, jti, expires_at);
    return bp_registry_spend_jti_here(r, jti, expires_at);
}

int bp_registry_jti_spent(bp_registry *r, const char *jti) { return bp_jti_set_has(r->spent, jti); }

void bp_registry_edit_begin(bp_registry *r) { pthread_mutex_lock(&r->admin_mu); }
void bp_registry_edit_end(bp_registry *r) { pthread_mutex_unlock(&r->admin_mu); }

/* ---- the editor's revisions (revisions.c), under admin_mu ------------------------------------ */

int bp_registry_edit_latest(bp_registry *r, const char *vendor, int *number, char revision[BP_REVISION_LEN])
{ return bp_revisions_latest(r->db, vendor, number, revision); }
int bp_registry_edit_record(bp_registry *r, const char *vendor, bp_edit_rev *rev, const bp_claims *who,
                            const char *action)
{ return bp_revisions_record(r->db, &r->keep, vendor, rev, who, action); }
int bp_registry_edit_files(bp_registry *r, const char *vendor, int number, bp_buf *files_json)
{ return bp_revisions_files(r->db, vendor, number, files_json); }
int bp_registry_edit_list(bp_registry *r, const char *vendor, bp_buf *out) { return bp_revisions_list(r->db, vendor, out); }

/* ---- cluster mode: one blueprint revision across the nodes (reload.c decides) ---------------- */

int bp_registry_clustered(bp_registry *r) { return r->hooks.publish_blueprint != NULL; }

int bp_registry_publish_blueprint(bp_registry *r, const char *vendor, const char *record, size_t len, bp_error *err)
{ return r->hooks.publish_blueprint ? r->hooks.publish_blueprint(r->hooks.ctx, vendor, record, len, err) : 0; }
