/*
 * registry.c — what `blueprint serve` manages: the blueprint catalog found
 * on disk (hot-reloaded), the installed integrations with their immutable
 * config revisions (server.db), and their delivery by a fixed pool of
 * delivery loops (deliver.c) over one event store (STATE/events.db).
 *
 * Nothing here waits for a vendor: install, update, reload and delete hand
 * the pool a new config (or a removal) and return; the loop serving the
 * integration applies it between requests.  The locks and what each guards
 * are listed in internal.h (bp_registry).
 */
#include "internal.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    /* freed pages are zeroed: a deleted integration's secrets do not linger in the file */
    "PRAGMA secure_delete=ON;"
    "CREATE TABLE IF NOT EXISTS integrations("
    "  id TEXT PRIMARY KEY, name TEXT NOT NULL, vendor TEXT NOT NULL, variant TEXT NOT NULL,"
    "  delivery_mode TEXT NOT NULL, revision INTEGER NOT NULL, created_at INTEGER NOT NULL,"
    "  deleted INTEGER NOT NULL DEFAULT 0);"
    "CREATE UNIQUE INDEX IF NOT EXISTS integrations_by_name ON integrations(name) WHERE deleted = 0;"
    "CREATE TABLE IF NOT EXISTS revisions("
    "  integration_id TEXT NOT NULL, revision INTEGER NOT NULL, config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, PRIMARY KEY(integration_id, revision));"
    /* who changed what: never a secret's value, only that it changed */
    "CREATE TABLE IF NOT EXISTS audit("
    "  id INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL,"
    "  integration_id TEXT, revision_before INTEGER, revision_after INTEGER, detail TEXT);"
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit(at);"
    /* console sign-in tokens taken, kept until they expire: each is good once */
    "CREATE TABLE IF NOT EXISTS signins(jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);"
    /* the console editor's saves of a blueprint folder: who, when, why, the
     * unified diff, and every file as it then was (for rollback): files is
     * {"NAME":"SHA256",…}, each content stored once in blueprint_files
     * however many revisions have it (the schema's user_version 1; 0 kept
     * the contents in every row) */
    "CREATE TABLE IF NOT EXISTS blueprint_revisions("
    "  vendor TEXT NOT NULL, number INTEGER NOT NULL, revision TEXT NOT NULL, actor TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, message TEXT NOT NULL, diff TEXT NOT NULL, changed TEXT NOT NULL,"
    "  files TEXT NOT NULL, PRIMARY KEY(vendor, number));"
    "CREATE TABLE IF NOT EXISTS blueprint_files(sha256 TEXT PRIMARY KEY, content TEXT NOT NULL);";

static int migrate_revision_files(bp_registry *r, bp_error *err);

#define REVISIONS_KEEP 50     /* the editor's revisions kept per blueprint by default */
#define REVISIONS_DAYS 365    /* … and for how long */

/* ---- vendors (the catalog) ------------------------------------------------------------- */

/* A cheap fingerprint of a blueprint folder: names, sizes and mtimes. */
static uint64_t folder_signature(const char *dir)
{
    uint64_t h = 1469598103934665603ULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        uint64_t v = (uint64_t)st.st_mtim.tv_sec * 1000000007ULL + (uint64_t)st.st_mtim.tv_nsec +
                     (uint64_t)st.st_size * 31ULL;
        for (const char *p = e->d_name; *p; p++) v = v * 131 + (unsigned char)*p;
        h ^= v;   /* order-independent: readdir order may change */
    }
    closedir(d);
    return h;
}

/* The revision: the files hot reload watches (folder_signature's), by name
 * and contents, FNV-1a each, mixed and summed so that readdir's order does
 * not matter. */
void bp_blueprint_revision(const char *dir, char out[BP_REVISION_LEN])
{
    out[0] = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    uint64_t sum = 0x9e3779b97f4a7c15ULL;
    struct dirent *e;
    char chunk[8192];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        uint64_t h = 1469598103934665603ULL;
        for (const char *p = e->d_name; ; p++) { h ^= (unsigned char)*p; h *= 1099511628211ULL; if (!*p) break; }
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            for (size_t i = 0; i < n; i++) { h ^= (unsigned char)chunk[i]; h *= 1099511628211ULL; }
        fclose(f);
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 33;
        sum += h;
    }
    closedir(d);
    snprintf(out, BP_REVISION_LEN, "%012llx", (unsigned long long)(sum >> 16));
}

/* Compile every mapping of bp in a scratch engine: the check a reload must
 * pass before it replaces the running version. */
static int scratch_compile(const bp_blueprint *bp, bp_error *err)
{
    bp_config empty;
    memset(&empty, 0, sizeof empty);
    bp_engine *e = bp_engine_new(bp, &empty, NULL, err);
    if (!e) return -1;
    bp_engine_free(e);
    return 0;
}

static int by_vendor_key(const void *a, const void *b)
{
    return strcmp(((const bp_vendor *)a)->key, ((const bp_vendor *)b)->key);
}

static void load_vendors(bp_registry *r)
{
    DIR *d = opendir(r->blueprints_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char dir[4096], yaml[4200];
        struct stat st;
        snprintf(dir, sizeof dir, "%s/%s", r->blueprints_dir, e->d_name);
        snprintf(yaml, sizeof yaml, "%s/blueprint.yaml", dir);
        if (stat(yaml, &st) != 0) continue;
        r->vendors = realloc(r->vendors, (r->nvendors + 1) * sizeof *r->vendors);
        bp_vendor *v = &r->vendors[r->nvendors++];
        memset(v, 0, sizeof *v);
        v->dir = strdup(dir);
        v->signature = folder_signature(dir);
        bp_blueprint_revision(dir, v->disk_revision);
        bp_error err;
        bp_blueprint *bp = bp_blueprint_load(dir, &err);
        if (bp && scratch_compile(bp, &err) < 0) { bp_blueprint_free(bp); bp = NULL; }
        v->bp = bp ? bp_shared_bp_new(bp) : NULL;
        if (v->bp) memcpy(v->bp->revision, v->disk_revision, sizeof v->bp->revision);
        if (!v->bp) {
            v->load_error = strdup(err.msg);
            v->key = strdup(e->d_name);
            bp_buf f;
            bp_buf_init(&f);
            bp_buf_adds(&f, "\"blueprint\":");
            bp_json_write_string(&f, dir, strlen(dir));
            bp_buf_adds(&f, ",\"error\":");
            bp_json_write_string(&f, err.msg, strlen(err.msg));
            bp_log("error", "blueprint failed to load", f.data);
            bp_buf_free(&f);
        } else {
            v->key = strdup(v->bp->bp->vendor);
        }
    }
    closedir(d);
    /* the catalog in vendor order, not readdir's (which varies by filesystem) */
    qsort(r->vendors, r->nvendors, sizeof *r->vendors, by_vendor_key);
}

bp_vendor *bp_registry_vendor(bp_registry *r, const char *key)
{
    for (size_t i = 0; i < r->nvendors; i++)
        if (!strcmp(r->vendors[i].key, key)) return &r->vendors[i];
    return NULL;
}

/* ---- integrations ------------------------------------------------------------------------ */

/* ---- integrations and their delivery ---------------------------------------------------------- */

static void free_integration(bp_integration *it)
{
    for (int i = 0; it->live && i < BP_LIVE_RING; i++) free(it->live[i]);
    free(it->live);
    free(it->recent);
    free(it->name);
    free(it->variant);
    free(it->delivery_mode);
    free(it->config_json);
    bp_config_free(it->cfg);
    free(it);
}

static void hold(bp_integration *it) { __atomic_fetch_add(&it->refs, 1, __ATOMIC_RELAXED); }

void bp_integration_release(bp_integration *it)
{
    if (it && __atomic_sub_fetch(&it->refs, 1, __ATOMIC_ACQ_REL) == 0) free_integration(it);
}

/* Counts a final outcome and shows any outcome to Live Events streams (mu held). */
static void note_outcome_locked(bp_registry *r, bp_integration *it, const char *line, size_t len, int end,
                                const char *reason)
{
    if (end >= 0 && end != BP_END_RETRYING) {
        bp_metrics_outcome(&r->metrics, (enum bp_end)end, reason);
        bp_recent_add(&it->recent, (enum bp_end)end, (int64_t)bp_wall_ms());
    }
    /* lines are kept only while someone streams them: Live Events' list
     * reads the store, and 10,000 idle rings would cost ~300 MB */
    if (it->watchers > 0) {
        if (!it->live && !(it->live = calloc(BP_LIVE_RING, sizeof *it->live))) abort();
        size_t slot = (size_t)(it->live_seq % BP_LIVE_RING);
        free(it->live[slot]);
        it->live[slot] = strndup(line, len);
        it->live_seq++;
        if (r->on_live) r->on_live(r->on_live_ctx, it);
    }
}

static void on_outcome(void *ctx, const bp_stored *ev, const char *line, size_t len, enum bp_end end, const char *reason)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    /* cluster mode: every node, this one too, counts and shows it from the
     * outcomes topic (bp_registry_remote_outcome) */
    if (r->cluster) { bp_cluster_outcome(r->cluster, it->id, ev, line, len, end, reason); return; }
    pthread_mutex_lock(&r->mu);
    note_outcome_locked(r, it, line, len, end, reason);
    pthread_mutex_unlock(&r->mu);
}

static void count_outcome(bp_counts *st, int end)
{
    long *counter[BP_END_COUNT] = { &st->delivered, &st->dropped, &st->errors, &st->dead, &st->held, &st->retries };
    if (end >= 0) __atomic_fetch_add(counter[end], 1, __ATOMIC_RELAXED);
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

static void on_answer(void *ctx, int status, double duration_ms)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    pthread_mutex_lock(&r->mu);
    bp_metrics_answer(&r->metrics, status, duration_ms);
    pthread_mutex_unlock(&r->mu);
}

static void on_release(void *ctx) { bp_integration_release(ctx); }

static void on_health(void *ctx, const bp_health *h)
{
    bp_integration *it = ctx;
    pthread_mutex_lock(&it->registry->mu);
    it->health = *h;
    pthread_mutex_unlock(&it->registry->mu);
}

static const bp_sink registry_sink = { on_outcome, on_answer, on_release, on_health };

/* Hand the pool the integration with its own copy of `cfg` (the pool owns
 * it) on blueprint `sbp`.  admin_mu held. */
static void deliver_with(bp_registry *r, bp_integration *it, bp_shared_bp *sbp, const char *config_json)
{
    if (!r->pool || !sbp) return;
    /* a secret left sealed (transform_value said why) is not sent as it is */
    if (strstr(config_json, "\"bp:enc:")) return;
    bp_error err;
    bp_config *cfg = bp_config_load_text(sbp->bp, config_json, strlen(config_json), "stored config", &err);
    if (!cfg) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_printf(&f, "\"integration\":\"%s\",\"error\":", it->id);
        bp_json_write_string(&f, err.msg, strlen(err.msg));
        bp_log("error", "integration not delivered: its stored config does not validate", f.data);
        bp_buf_free(&f);
        return;
    }
    bp_shared_bp_hold(sbp);
    hold(it);   /* the tenant's reference, released through the sink */
    bp_tenant_spec spec = { it->id, sbp, cfg, &registry_sink, it, r->cluster ? &it->node_stats : &it->stats };
    bp_pool_put(r->pool, &spec);
}

static bp_integration *new_integration(bp_registry *r, const char *id, const char *name, bp_vendor *v,
                                       const char *variant, const char *mode, int revision, int64_t created,
                                       const char *config_json)
{
    bp_integration *it = calloc(1, sizeof *it);
    if (!it) abort();
    it->registry = r;
    snprintf(it->id, sizeof it->id, "%s", id);
    it->name = strdup(name);
    it->vendor = v;
    it->variant = strdup(variant);
    it->delivery_mode = strdup(mode);
    it->revision = revision;
    it->created_at = created;
    it->config_json = strdup(config_json);
    it->refs = 1;   /* the registry's list */
    return it;
}

bp_integration *bp_registry_find(bp_registry *r, const char *id)
{
    bp_integration *found = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !found; i++) if (!strcmp(r->items[i]->id, id)) found = r->items[i];
    if (found) hold(found);
    pthread_mutex_unlock(&r->mu);
    return found;
}

static int db_exec(bp_registry *r, const char *sql) { return sqlite3_exec(r->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1; }

/* ---- secrets at rest ------------------------------------------------------------------------ */

enum seal_mode {
    SEAL,     /* encrypt every plain value of a secret field of bp (v1 values: again, bound, v2) */
    UNSEAL,   /* decrypt every value of a secret field of bp for where bp sends it */
    RESEAL,   /* decrypt and encrypt again under the ring's primary key, for the same destination */
};

/* A config value of a stored-form document (a string), or NULL. */
static const char *doc_value(const bp_doc *d, const char *key)
{
    uint32_t c = bp_jget(d, 0, "config");
    uint32_t v = c != BP_NONE ? bp_jget(d, c, key) : BP_NONE;
    return v != BP_NONE && d->nodes[v].type == BP_JSTRING ? bp_jtext(d, v) : NULL;
}

/* Where secret field f of a stored document goes: "FIELD=URL" per line for
 * each URL field of its sent_to, as set (or defaulted).  What its sealed
 * value is bound to (crypto.c). */
static void secret_destination(const bp_field *f, const bp_blueprint *bp, const bp_doc *d, bp_buf *out)
{
    bp_buf_reset(out);
    bp_buf_add(out, "", 0);
    for (size_t i = 0; i < f->nsent_to; i++) {
        const char *v = doc_value(d, f->sent_to[i]);
        const bp_field *u = v ? NULL : bp_blueprint_field(bp, f->sent_to[i]);
        if (!v) v = u && u->default_value ? u->default_value : "";
        bp_buf_printf(out, "%s%s=%s", i ? "\n" : "", f->sent_to[i], v);
    }
}

/* The first of f's sent_to URL fields whose value differs between two
 * documents (defaults applied), or NULL. */
static const char *changed_destination(const bp_field *f, const bp_blueprint *bp, const bp_doc *a, const bp_doc *b)
{
    for (size_t i = 0; i < f->nsent_to; i++) {
        const bp_field *u = bp_blueprint_field(bp, f->sent_to[i]);
        const char *dflt = u && u->default_value ? u->default_value : "";
        const char *x = doc_value(a, f->sent_to[i]), *y = doc_value(b, f->sent_to[i]);
        if (strcmp(x ? x : dflt, y ? y : dflt) != 0) return f->sent_to[i];
    }
    return NULL;
}

static void log_sealed_kept(const char *integration, const char *field, const char *why)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"integration\":");
    bp_json_write_text(&f, integration, strlen(integration));
    bp_buf_adds(&f, ",\"field\":");
    bp_json_write_text(&f, field, strlen(field));
    bp_buf_adds(&f, ",\"why\":");
    bp_json_write_text(&f, why, strlen(why));
    bp_log("error", "a stored secret was not opened: the integration is not delivered until it is entered again "
           "(PATCH it together with its URL)", f.data);
    bp_buf_free(&f);
}

/* One value of field `field` (def: its definition in bp, or NULL) in its
 * new form into out.  1 when it changed, 0 when kept, -1 with err. */
static int transform_value(bp_keyring *ring, const char *integration, const bp_blueprint *bp, const bp_doc *d,
                           const char *field, const bp_field *def, const char *value, enum seal_mode mode, bp_buf *out,
                           bp_error *err)
{
    int secret = def && def->type == BP_FIELD_SECRET, sealed = bp_is_encrypted(value);
    if (mode == SEAL ? !secret || !*value || !strcmp(value, "********") || (sealed && !bp_is_encrypted_v1(value))
                     : !sealed)
        return 0;
    bp_buf dest, plain;
    bp_buf_init(&dest);
    bp_buf_init(&plain);
    int rc = 1;
    if (mode != RESEAL && secret && bp) secret_destination(def, bp, d, &dest);
    else bp_buf_add(&dest, "", 0);
    if (mode == UNSEAL && (!secret || !bp)) {
        /* defence in depth: a secret is never opened into a field that is
         * not one (a blueprint changed on disk while the server was down) */
        log_sealed_kept(integration, field, bp ? "the blueprint's field is not type: secret"
                                               : "its blueprint did not load (restart once it is fixed)");
        rc = 0;
    } else if (mode == UNSEAL && !bp_is_encrypted_v1(value)) {
        bp_buf was;
        bp_buf_init(&was);
        bp_buf_add(&was, "", 0);
        if (bp_sealed_destination(value, &was) < 0 || strcmp(was.data, dest.data) != 0) {
            log_sealed_kept(integration, field, "it was stored for another destination than its URL fields now give");
            rc = 0;
        }
        bp_buf_free(&was);
    }
    if (rc == 1 && sealed &&
        bp_decrypt_secret(ring, integration, field, mode == RESEAL ? NULL : dest.data, value, &plain, err) < 0)
        rc = -1;
    if (rc == 1 && mode == UNSEAL) {
        bp_json_write_text(out, plain.data ? plain.data : "", plain.len);
    } else if (rc == 1) {
        const char *text = sealed ? (plain.data ? plain.data : "") : value;
        /* SEAL: bound to where bp sends it; RESEAL: for where it was bound
         * to (a v1 value stays v1 until serve migrates it with its blueprint) */
        const char *to = dest.data;
        if (mode == RESEAL) to = bp_is_encrypted_v1(value) || bp_sealed_destination(value, &dest) < 0 ? NULL : dest.data;
        bp_buf_addc(out, '"');   /* the ciphertext is base64: nothing to escape */
        if (bp_encrypt_secret(ring, integration, field, to, text, out, err) < 0) rc = -1;
        bp_buf_addc(out, '"');
    }
    if (plain.data) memset(plain.data, 0, plain.cap);
    bp_buf_free(&plain);
    bp_buf_free(&dest);
    return rc;
}

/* The stored-form document `doc` of an integration with its config's
 * secrets sealed, unsealed or resealed into out.  *changed says whether
 * anything was.  -1 with err when a value does not decrypt. */
static int transform_doc(bp_keyring *ring, const char *integration, const bp_blueprint *bp, const char *doc,
                         enum seal_mode mode, bp_buf *out, int *changed, bp_error *err)
{
    bp_doc d;
    bp_doc_init(&d);
    if (changed) *changed = 0;
    if (bp_json_parse(&d, doc, strlen(doc), NULL, err) < 0 || d.nodes[0].type != BP_JOBJECT) {
        bp_doc_free(&d);
        bp_buf_adds(out, doc);   /* not ours to judge here: kept as it is */
        return 0;
    }
    int rc = 0;
    bp_buf_addc(out, '{');
    for (uint32_t k = 1, i = 0; i < d.nodes[0].len; i++, k = d.nodes[k + 1].next) {
        if (i) bp_buf_addc(out, ',');
        bp_json_write_node(out, &d, k);
        bp_buf_addc(out, ':');
        uint32_t c = k + 1;
        if (strcmp(bp_jtext(&d, k), "config") != 0 || d.nodes[c].type != BP_JOBJECT) { bp_json_write_node(out, &d, c); continue; }
        bp_buf_addc(out, '{');
        for (uint32_t f = c + 1, j = 0; j < d.nodes[c].len; j++, f = d.nodes[f + 1].next) {
            if (j) bp_buf_addc(out, ',');
            bp_json_write_node(out, &d, f);
            bp_buf_addc(out, ':');
            const char *field = bp_jtext(&d, f), *value = d.nodes[f + 1].type == BP_JSTRING ? bp_jtext(&d, f + 1) : NULL;
            int done = value ? transform_value(ring, integration, bp, &d, field, bp ? bp_blueprint_field(bp, field) : NULL,
                                               value, mode, out, err) : 0;
            if (done < 0) { rc = -1; break; }
            if (done && changed) *changed = 1;
            if (!done) bp_json_write_node(out, &d, f + 1);
        }
        bp_buf_addc(out, '}');
        if (rc < 0) break;
    }
    bp_buf_addc(out, '}');
    bp_doc_free(&d);
    return rc;
}

/* ---- cluster mode: the configuration topic ------------------------------------------------- */

/* An integration's record for NAME.integrations, from server.db (inside the
 * transaction that changes it): its head and every revision as stored
 * (secrets sealed, or masked once deleted).  admin_mu held. */
static int config_record(bp_registry *r, const char *id, bp_buf *out)
{
    sqlite3_stmt *q;
    int found = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT name, vendor, variant, delivery_mode, revision, created_at, deleted FROM "
                                  "integrations WHERE id=?1", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
        found = 1;
        bp_buf_adds(out, "{\"id\":");
        bp_json_write_text(out, id, strlen(id));
        static const char *const names[] = { "name", "vendor", "variant", "delivery_mode" };
        for (int i = 0; i < 4; i++) {
            bp_buf_printf(out, ",\"%s\":", names[i]);
            bp_json_write_text(out, (const char *)sqlite3_column_text(q, i), (size_t)sqlite3_column_bytes(q, i));
        }
        bp_buf_printf(out, ",\"revision\":%d,\"created_at\":%lld,\"deleted\":%s,\"revisions\":[", sqlite3_column_int(q, 4),
                      (long long)sqlite3_column_int64(q, 5), sqlite3_column_int(q, 6) ? "true" : "false");
    }
    sqlite3_finalize(q);
    if (!found) return -1;
    if (sqlite3_prepare_v2(r->db, "SELECT revision, config, created_at FROM revisions WHERE integration_id=?1 "
                                  "ORDER BY revision", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    for (int n = 0; sqlite3_step(q) == SQLITE_ROW; n++) {
        bp_buf_printf(out, "%s{\"revision\":%d,\"created_at\":%lld,\"config\":", n ? "," : "", sqlite3_column_int(q, 0),
                      (long long)sqlite3_column_int64(q, 2));
        bp_buf_add(out, (const char *)sqlite3_column_text(q, 1), (size_t)sqlite3_column_bytes(q, 1));
        bp_buf_addc(out, '}');
    }
    sqlite3_finalize(q);
    bp_buf_adds(out, "]}");
    return 0;
}

/* Cluster mode: write the integration's record to the topic and wait for
 * the broker, before the change commits here (admin_mu held, inside the
 * server.db transaction): a change the cluster does not have never shows. */
static int publish_locked(bp_registry *r, const char *id, bp_error *err)
{
    if (!r->cluster) return 0;
    bp_buf rec;
    bp_buf_init(&rec);
    int rc = config_record(r, id, &rec);
    if (rc < 0) bp_error_set(err, "the cluster's configuration could not be written: %s", sqlite3_errmsg(r->db));
    else if ((rc = bp_cluster_publish_config(r->cluster, id, rec.data, rec.len, err)) < 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "the cluster's configuration could not be written, nothing changed: %s; retry later "
                     "(GET /healthz shows the brokers' state)", why);
    }
    if (rec.data) memset(rec.data, 0, rec.cap);
    bp_buf_free(&rec);
    return rc;
}

static int save_revision(bp_registry *r, const bp_integration *it, int insert_integration, bp_error *perr)
{
    sqlite3_stmt *q;
    /* IMMEDIATE: sealed under the ring's primary key as it is while this
     * transaction holds the write lock (a rotation takes the same lock) */
    if (db_exec(r, "BEGIN IMMEDIATE") < 0) return -1;
    bp_buf sealed;
    bp_buf_init(&sealed);
    bp_error err;
    int ok = transform_doc(r->keys, it->id, it->vendor->bp ? it->vendor->bp->bp : NULL, it->config_json, SEAL,
                           &sealed, NULL, &err) == 0;
    if (!ok) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"error\":");
        bp_json_write_text(&f, err.msg, strlen(err.msg));
        bp_log("error", "could not encrypt an integration's secrets; nothing was stored", f.data);
        bp_buf_free(&f);
    }
    if (insert_integration) {
        ok = sqlite3_prepare_v2(r->db, "INSERT INTO integrations(id, name, vendor, variant, delivery_mode, revision, "
                                       "created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)", -1, &q, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 2, it->name, -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 3, it->vendor->key, -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 4, it->variant, -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 5, it->delivery_mode, -1, SQLITE_STATIC);
            sqlite3_bind_int(q, 6, it->revision);
            sqlite3_bind_int64(q, 7, it->created_at);
            ok = sqlite3_step(q) == SQLITE_DONE;
            sqlite3_finalize(q);
        }
    } else {
        ok = sqlite3_prepare_v2(r->db, "UPDATE integrations SET revision=?2 WHERE id=?1", -1, &q, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
            sqlite3_bind_int(q, 2, it->revision);
            ok = sqlite3_step(q) == SQLITE_DONE;
            sqlite3_finalize(q);
        }
    }
    if (ok && sqlite3_prepare_v2(r->db, "INSERT INTO revisions(integration_id, revision, config, created_at) "
                                       "VALUES(?1, ?2, ?3, ?4)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, it->revision);
        sqlite3_bind_text(q, 3, sealed.data, (int)sealed.len, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, (int64_t)bp_wall_ms());
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    } else {
        ok = 0;
    }
    int published = 1;
    if (!ok) bp_error_set(perr, "could not store the revision: %s", sqlite3_errmsg(r->db));
    else if (publish_locked(r, it->id, perr) < 0) ok = published = 0;
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    bp_buf_free(&sealed);
    return ok ? 0 : published ? -1 : -2;
}

/* Revisions written before secrets were encrypted: seal them in place (the
 * database zeroes the space the plain values leave, secure_delete). */
static int seal_plain_revisions(bp_registry *r, bp_error *err)
{
    sqlite3_stmt *q, *u = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT v.integration_id, v.revision, v.config, i.vendor FROM revisions v "
                                  "JOIN integrations i ON i.id = v.integration_id", -1, &q, NULL) != SQLITE_OK)
        return 0;
    db_exec(r, "BEGIN IMMEDIATE");
    sqlite3_prepare_v2(r->db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u, NULL);
    long sealed_rows = 0;
    int rc = 0;
    while (rc == 0 && u && sqlite3_step(q) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(q, 0);
        bp_vendor *v = bp_registry_vendor(r, (const char *)sqlite3_column_text(q, 3));
        if (!v || !v->bp) continue;
        bp_buf out;
        bp_buf_init(&out);
        int changed;
        rc = transform_doc(r->keys, id, v->bp->bp, (const char *)sqlite3_column_text(q, 2), SEAL, &out, &changed, err);
        if (rc == 0 && changed) {
            sqlite3_reset(u);
            sqlite3_bind_text(u, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 1));
            sqlite3_bind_text(u, 3, out.data, (int)out.len, SQLITE_STATIC);
            if (sqlite3_step(u) != SQLITE_DONE) { bp_error_set(err, "server.db: %s", sqlite3_errmsg(r->db)); rc = -1; }
            sealed_rows++;
        }
        bp_buf_free(&out);
    }
    sqlite3_finalize(u);
    sqlite3_finalize(q);
    db_exec(r, rc == 0 ? "COMMIT" : "ROLLBACK");
    if (rc == 0 && sealed_rows) {
        sqlite3_wal_checkpoint_v2(r->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        char detail[96];
        snprintf(detail, sizeof detail, "\"revisions\":%ld", sealed_rows);
        bp_log("info", "encrypted the secrets stored in plain text by an earlier version", detail);
    }
    return rc;
}

/* The integrations and their current configs, secrets decrypted.  -1 with
 * err when one does not decrypt (a wrong or missing master key). */
static int load_integrations(bp_registry *r, bp_error *err)
{
    sqlite3_stmt *q;
    int rc = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT i.id, i.name, i.vendor, i.variant, i.delivery_mode, i.revision, "
                                  "i.created_at, v.config FROM integrations i JOIN revisions v ON "
                                  "v.integration_id = i.id AND v.revision = i.revision WHERE i.deleted = 0 "
                                  "ORDER BY i.created_at", -1, &q, NULL) != SQLITE_OK)
        return 0;
    while (rc == 0 && sqlite3_step(q) == SQLITE_ROW) {
        const char *vendor = (const char *)sqlite3_column_text(q, 2);
        bp_vendor *v = bp_registry_vendor(r, vendor);
        if (!v) {
            bp_buf f;
            bp_buf_init(&f);
            bp_buf_adds(&f, "\"integration\":");
            bp_json_write_text(&f, (const char *)sqlite3_column_text(q, 0), (size_t)sqlite3_column_bytes(q, 0));
            bp_buf_adds(&f, ",\"vendor\":");
            bp_json_write_text(&f, vendor, strlen(vendor));
            bp_log("error", "integration not loaded: no blueprint for its vendor; its events stay stored", f.data);
            bp_buf_free(&f);
            continue;
        }
        const char *id = (const char *)sqlite3_column_text(q, 0);
        bp_buf plain;
        bp_buf_init(&plain);
        if (transform_doc(r->keys, id, v->bp ? v->bp->bp : NULL, (const char *)sqlite3_column_text(q, 7), UNSEAL, &plain,
                          NULL, err) < 0) {
            bp_buf_free(&plain);
            rc = -1;
            break;
        }
        bp_integration *it = new_integration(r, id, (const char *)sqlite3_column_text(q, 1), v,
                                             (const char *)sqlite3_column_text(q, 3),
                                             (const char *)sqlite3_column_text(q, 4), sqlite3_column_int(q, 5),
                                             sqlite3_column_int64(q, 6), plain.data);
        memset(plain.data, 0, plain.cap);
        bp_buf_free(&plain);
        bp_error cerr;
        if (v->bp) it->cfg = bp_config_load_text(v->bp->bp, it->config_json, strlen(it->config_json), "stored config", &cerr);
        r->items = realloc(r->items, (r->n + 1) * sizeof *r->items);
        r->items[r->n++] = it;
    }
    sqlite3_finalize(q);
    return rc;
}

/* `blueprint rotate-key`: a new primary key, every stored secret re-wrapped
 * under it, the old keys dropped.  Safe while `serve` runs: the ring is
 * rewritten and the secrets re-wrapped inside one write transaction on
 * server.db, which every revision write also takes (save_revision), so no
 * secret can be written under a key that is then dropped.  Delivery never
 * stops: a running server holds its configs decrypted. */
int bp_rotate_master_key(const char *state_dir, long *rewrapped, bp_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/server.db", state_dir);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        bp_error_set(err, "%s: %s (is --state the server's state directory?)", path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return -1;
    }
    bp_store_busy_handler(db);
    sqlite3_exec(db, "PRAGMA secure_delete=ON", NULL, NULL, NULL);
    bp_keyring *ring = bp_keyring_open(state_dir, err);
    if (!ring) { sqlite3_close(db); return -1; }
    char kids[9][17];
    unsigned char keys[9][32];
    int rc = -1;
    *rewrapped = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        bp_error_set(err, "server.db is busy: %s", sqlite3_errmsg(db));
        goto out;
    }
    int n = bp_keyring_keys(ring, kids + 1, keys + 1, 8, err);
    if (n < 0) goto rollback;
    if (n == 8) n = 7;   /* the oldest is dropped to make room (nothing uses it after this) */
    bp_key_new(kids[0], keys[0]);
    if (bp_keyring_write(bp_keyring_path(ring), n + 1, kids, keys, err) < 0) goto rollback;
    sqlite3_stmt *q = NULL, *u = NULL;
    int ok = sqlite3_prepare_v2(db, "SELECT integration_id, revision, config FROM revisions", -1, &q, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u,
                                NULL) == SQLITE_OK;
    while (ok && sqlite3_step(q) == SQLITE_ROW) {
        bp_buf out;
        bp_buf_init(&out);
        int changed;
        const char *id = (const char *)sqlite3_column_text(q, 0);
        ok = transform_doc(ring, id, NULL, (const char *)sqlite3_column_text(q, 2), RESEAL, &out, &changed, err) == 0;
        if (ok && changed) {
            sqlite3_reset(u);
            sqlite3_bind_text(u, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 1));
            sqlite3_bind_text(u, 3, out.data, (int)out.len, SQLITE_STATIC);
            ok = sqlite3_step(u) == SQLITE_DONE;
            if (!ok) bp_error_set(err, "server.db: %s", sqlite3_errmsg(db));
            (*rewrapped)++;
        }
        bp_buf_free(&out);
    }
    sqlite3_finalize(q);
    sqlite3_finalize(u);
    /* everything is under the new key now: the ring keeps only it */
    if (ok && bp_keyring_write(bp_keyring_path(ring), 1, kids, keys, err) < 0) ok = 0;
    if (!ok) goto rollback;   /* the ring still holds the old keys: nothing is lost */
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        bp_error_set(err, "server.db: %s", sqlite3_errmsg(db));
        goto rollback;
    }
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    rc = 0;
    goto out;
rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    /* if the ring was cut to the new key only and the commit then failed,
     * the old ciphertexts need the old keys back */
    if (n > 0) { bp_error e2; bp_keyring_write(bp_keyring_path(ring), n + 1, kids, keys, &e2); }
out:
    memset(keys, 0, sizeof keys);
    bp_keyring_close(ring);
    sqlite3_close(db);
    return rc;
}

/* serve kept one store per integration (STATE/integrations/ID/blueprint.db)
 * before one store held them all: bring their events over once. */
static void import_old_stores(bp_registry *r)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/integrations", r->state_dir);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4700], sub[4400];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        snprintf(path, sizeof path, "%s/blueprint.db", sub);
        if (access(path, F_OK) != 0) continue;
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"integration\":");
        bp_json_write_text(&f, e->d_name, strlen(e->d_name));
        if (bp_store_import(r->store, e->d_name, path) == 0) {
            static const char *const files[] = { "blueprint.db", "blueprint.db-wal", "blueprint.db-shm" };
            for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", sub, files[i]); unlink(path); }
            rmdir(sub);
            bp_log("info", "moved an integration's events into the shared store", f.data);
        } else {
            bp_log("error", "could not move an integration's events into the shared store; will retry at the "
                   "next start", f.data);
        }
        bp_buf_free(&f);
    }
    closedir(d);
    rmdir(dir);
}

/* The token ids spent and not yet expired, for bp_registry_jti_spent. */
static void load_spent(bp_registry *r)
{
    sqlite3_stmt *q;
    int64_t now = (int64_t)(bp_wall_ms() / 1000);
    if (sqlite3_prepare_v2(r->db, "SELECT jti, expires_at FROM signins WHERE expires_at >= ?1", -1, &q, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(q, 1, now);
    while (sqlite3_step(q) == SQLITE_ROW)
        bp_jti_set_add(r->spent, (const char *)sqlite3_column_text(q, 0), sqlite3_column_int64(q, 1), now);
    sqlite3_finalize(q);
}

bp_registry *bp_registry_open(const char *blueprints_dir, const char *state_dir, bp_error *err)
{
    bp_registry *r = calloc(1, sizeof *r);
    if (!r) abort();
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->admin_mu, NULL);
    r->blueprints_dir = strdup(blueprints_dir);
    r->state_dir = strdup(state_dir);
    r->started_ms = (int64_t)bp_wall_ms();
    r->spent = bp_jti_set_new();
    bp_limits_default(&r->limits);
    const char *keep = getenv("BLUEPRINT_REVISIONS_KEEP"), *days = getenv("BLUEPRINT_REVISIONS_DAYS");
    r->revisions_keep = keep && atoi(keep) > 0 ? atoi(keep) : REVISIONS_KEEP;
    r->revisions_days = days && atoi(days) > 0 ? atoi(days) : REVISIONS_DAYS;
    char path[4096];
    /* the state directory holds secrets: owner only, and so is everything
     * created in it (SQLite's WAL and SHM files included) */
    mode_t old_mask = umask(077);
    mkdir(state_dir, 0700);
    chmod(state_dir, 0700);
    snprintf(path, sizeof path, "%s/server.db", state_dir);
    int ok = sqlite3_open(path, &r->db) == SQLITE_OK && bp_store_busy_handler(r->db) == SQLITE_OK &&
             sqlite3_exec(r->db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK;
    umask(old_mask);
    if (!ok) {
        bp_error_set(err, "state store %s: %s", path, sqlite3_errmsg(r->db));
        bp_registry_close(r);
        return NULL;
    }
    chmod(path, 0600);
    static const char *const sidecars[] = { "server.db-wal", "server.db-shm", "jwt.secret" };
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", state_dir, sidecars[i]); chmod(path, 0600); }
    if (!(r->store = bp_store_open(state_dir, "events.db", err))) { bp_registry_close(r); return NULL; }
    if (!(r->keys = bp_keyring_open(state_dir, err))) { bp_registry_close(r); return NULL; }
    load_vendors(r);
    load_spent(r);
    if (seal_plain_revisions(r, err) < 0 || load_integrations(r, err) < 0 || migrate_revision_files(r, err) < 0) {
        bp_registry_close(r);
        return NULL;
    }
    import_old_stores(r);
    r->metrics.integrations = (long)r->n;
    return r;
}

int bp_registry_start(bp_registry *r, int workers, bp_error *err)
{
    bp_deliver_opts o;
    bp_deliver_opts_default(&o);
    if (r->rate_limit_rps > 0) o.rate_limit_rps = r->rate_limit_rps;
    if (r->retry_base_ms > 0) o.retry_base_ms = r->retry_base_ms;
    r->workers = workers;
    r->limits = o.limits;
    bp_lease lease;
    if (r->cluster) bp_cluster_lease(r->cluster, &lease);
    if (!(r->pool = bp_pool_new(r->store, &o, workers, r->cluster ? &lease : NULL, err))) return -1;
    pthread_mutex_lock(&r->admin_mu);
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    bp_integration **items = calloc(n + 1, sizeof *items);
    for (size_t i = 0; i < n; i++) { items[i] = r->items[i]; hold(items[i]); }
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        bp_integration *it = items[i];
        pthread_mutex_lock(&r->mu);
        bp_shared_bp *sbp = it->vendor->bp;
        char *doc = strdup(it->config_json);
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
    bp_cluster_stop(r->cluster);
    bp_pool_free(r->pool);   /* finishes requests in flight and saves progress */
    r->pool = NULL;
    bp_cluster_free(r->cluster);
    r->cluster = NULL;
    for (size_t i = 0; i < r->n; i++) bp_integration_release(r->items[i]);
    free(r->items);
    for (size_t i = 0; i < r->nvendors; i++) {
        bp_shared_bp_drop(r->vendors[i].bp);
        free(r->vendors[i].key);
        free(r->vendors[i].dir);
        free(r->vendors[i].load_error);
    }
    free(r->vendors);
    bp_store_close(r->store);
    bp_keyring_close(r->keys);
    bp_jti_set_free(r->spent);
    sqlite3_close(r->db);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->admin_mu);
    free(r->blueprints_dir);
    free(r->state_dir);
    free(r);
}

/* ---- config documents -------------------------------------------------------------------- */

/* out gets {"config":{…},"events":{…},"consent":{…}} from the install body or
 * the stored document at `root` of d, with `patch` (may be NULL) merged in
 * shallowly: a null in the patch removes the key. */
static void write_merged(bp_buf *out, const bp_doc *d, uint32_t root, const bp_doc *p, uint32_t proot)
{
    static const char *const parts[] = { "config", "events", "consent" };
    bp_buf_addc(out, '{');
    for (int k = 0; k < 3; k++) {
        if (k) bp_buf_addc(out, ',');
        bp_buf_printf(out, "\"%s\":{", parts[k]);
        uint32_t a = bp_jget(d, root, parts[k]);
        uint32_t b = p ? bp_jget(p, proot, parts[k]) : BP_NONE;
        int first = 1;
        if (a != BP_NONE && d->nodes[a].type == BP_JOBJECT) {
            for (uint32_t c = a + 1, i = 0; i < d->nodes[a].len; i++, c = d->nodes[c + 1].next) {
                const char *key = bp_jtext(d, c);
                if (b != BP_NONE && bp_jget(p, b, key) != BP_NONE) continue;   /* patched below */
                if (!first) bp_buf_addc(out, ',');
                bp_json_write_node(out, d, c);
                bp_buf_addc(out, ':');
                bp_json_write_node(out, d, c + 1);
                first = 0;
            }
        }
        if (b != BP_NONE && p->nodes[b].type == BP_JOBJECT) {
            for (uint32_t c = b + 1, i = 0; i < p->nodes[b].len; i++, c = p->nodes[c + 1].next) {
                if (p->nodes[c + 1].type == BP_JNULL) continue;
                if (!first) bp_buf_addc(out, ',');
                bp_json_write_node(out, p, c);
                bp_buf_addc(out, ':');
                bp_json_write_node(out, p, c + 1);
                first = 0;
            }
        }
        bp_buf_addc(out, '}');
    }
    bp_buf_addc(out, '}');
}

/* Validate a stored-form document against a blueprint. */
static bp_config *validate(const bp_blueprint *bp, const char *doc, const char *variant, bp_error *err)
{
    bp_buf body;
    bp_buf_init(&body);
    /* the config loader reads the install-body shape; give it the variant too */
    bp_buf_add(&body, doc, strlen(doc) - 1);
    bp_buf_adds(&body, ",\"variant\":");
    bp_json_write_string(&body, variant, strlen(variant));
    bp_buf_addc(&body, '}');
    bp_config *c = bp_config_load_text(bp, body.data, body.len, "config", err);
    bp_buf_free(&body);
    return c;
}

static void random_id(char *out, size_t n)
{
    unsigned char raw[8] = { 0 };
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) { if (read(fd, raw, sizeof raw) < 0) raw[0] = 0; close(fd); }
    uint64_t t = (uint64_t)bp_wall_ms();
    for (int i = 0; i < 8; i++) raw[i] ^= (unsigned char)(t >> (8 * i));
    snprintf(out, n, "int_%02x%02x%02x%02x%02x%02x%02x%02x", raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]);
}

static void log_integration(const char *msg, const bp_integration *it)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_printf(&f, "\"integration\":\"%s\",\"vendor\":", it->id);
    bp_json_write_text(&f, it->vendor->key, strlen(it->vendor->key));
    bp_log("info", msg, f.data);
    bp_buf_free(&f);
}

/* ---- the audit log ------------------------------------------------------------------------------ */

static const bp_claims SYSTEM = { "system", "system", "", "", 0, 0 };

/* One entry (admin_mu held).  revision 0 = none. */
static void audit_locked(bp_registry *r, const bp_claims *who, const char *action, const char *integration,
                         int before, int after, const char *detail)
{
    sqlite3_stmt *q;
    if (!who) who = &SYSTEM;
    if (sqlite3_prepare_v2(r->db, "INSERT INTO audit(at, actor, role, action, integration_id, revision_before, "
                                  "revision_after, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", -1, &q, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(q, 1, (int64_t)bp_wall_ms());
    sqlite3_bind_text(q, 2, who->sub[0] ? who->sub : "(no subject)", -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, who->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, action, -1, SQLITE_STATIC);
    if (integration) sqlite3_bind_text(q, 5, integration, -1, SQLITE_STATIC); else sqlite3_bind_null(q, 5);
    if (before) sqlite3_bind_int(q, 6, before); else sqlite3_bind_null(q, 6);
    if (after) sqlite3_bind_int(q, 7, after); else sqlite3_bind_null(q, 7);
    if (detail) sqlite3_bind_text(q, 8, detail, -1, SQLITE_STATIC); else sqlite3_bind_null(q, 8);
    if (sqlite3_step(q) != SQLITE_DONE) bp_log("error", "could not write the audit log", NULL);
    sqlite3_finalize(q);
}

void bp_registry_audit(bp_registry *r, const bp_claims *who, const char *action, const char *integration,
                       const char *detail)
{
    pthread_mutex_lock(&r->admin_mu);
    audit_locked(r, who, action, integration, 0, 0, detail);
    pthread_mutex_unlock(&r->admin_mu);
}

/* "api_key changed, api_url changed, events.Webinar Registered added": the
 * keys of config, events and consent that differ between two documents,
 * never their values. */
static void describe_changes(const char *before, const char *after, bp_buf *out)
{
    static const char *const parts[] = { "config", "events", "consent" };
    bp_doc a, b;
    bp_error err;
    bp_doc_init(&a);
    bp_doc_init(&b);
    if (bp_json_parse(&a, before, strlen(before), NULL, &err) == 0 && bp_json_parse(&b, after, strlen(after), NULL, &err) == 0) {
        for (int p = 0; p < 3; p++) {
            uint32_t pa = bp_jget(&a, 0, parts[p]), pb = bp_jget(&b, 0, parts[p]);
            for (int side = 0; side < 2; side++) {
                const bp_doc *d = side ? &b : &a, *o = side ? &a : &b;
                uint32_t obj = side ? pb : pa, other = side ? pa : pb;
                if (obj == BP_NONE || d->nodes[obj].type != BP_JOBJECT) continue;
                for (uint32_t k = obj + 1, i = 0; i < d->nodes[obj].len; i++, k = d->nodes[k + 1].next) {
                    const char *key = bp_jtext(d, k);
                    uint32_t ov = other != BP_NONE ? bp_jget(o, other, key) : BP_NONE;
                    const char *what = NULL;
                    if (ov == BP_NONE) what = side ? "added" : "removed";
                    else if (!side) {
                        bp_buf x, y;
                        bp_buf_init(&x);
                        bp_buf_init(&y);
                        bp_json_write_node(&x, d, k + 1);
                        bp_json_write_node(&y, o, ov);
                        if (x.len != y.len || memcmp(x.data, y.data, x.len)) what = "changed";
                        bp_buf_free(&x);
                        bp_buf_free(&y);
                    }
                    if (!what) continue;
                    if (out->len) bp_buf_adds(out, ", ");
                    if (p) bp_buf_printf(out, "%s.", parts[p]);
                    bp_buf_printf(out, "%s %s", key, what);
                }
            }
        }
    }
    bp_doc_free(&a);
    bp_doc_free(&b);
    if (!out->len) bp_buf_adds(out, "no change");
}

/* Entries newest first, filtered; `cursor` = the id to continue below (0: from the newest). */
int bp_registry_audit_list(bp_registry *r, const char *integration, const char *action, const char *actor,
                           int64_t since, int64_t until, int64_t cursor, int limit, bp_buf *out)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&r->admin_mu);
    int rc = sqlite3_prepare_v2(r->db, "SELECT id, at, actor, role, action, integration_id, revision_before, "
                                       "revision_after, detail FROM audit WHERE (?1 IS NULL OR integration_id = ?1) "
                                       "AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR actor = ?3) AND at >= ?4 "
                                       "AND at <= ?5 AND id < ?6 ORDER BY id DESC LIMIT ?7", -1, &q, NULL) == SQLITE_OK ? 0 : -1;
    if (rc == 0) {
        const char *texts[3] = { integration, action, actor };
        for (int i = 0; i < 3; i++)
            if (texts[i]) sqlite3_bind_text(q, i + 1, texts[i], -1, SQLITE_STATIC); else sqlite3_bind_null(q, i + 1);
        sqlite3_bind_int64(q, 4, since);
        sqlite3_bind_int64(q, 5, until > 0 ? until : INT64_MAX);
        sqlite3_bind_int64(q, 6, cursor > 0 ? cursor : INT64_MAX);
        sqlite3_bind_int(q, 7, limit + 1);   /* one more: is there a next page? */
        bp_buf_adds(out, "{\"entries\":[");
        int n = 0;
        int64_t last = 0, more = 0;
        while (sqlite3_step(q) == SQLITE_ROW) {
            if (n == limit) { more = 1; break; }
            if (n++) bp_buf_addc(out, ',');
            last = sqlite3_column_int64(q, 0);
            bp_buf_printf(out, "{\"id\":%lld,\"at\":%lld", (long long)last, (long long)sqlite3_column_int64(q, 1));
            static const char *const names[] = { "actor", "role", "action", "integration_id" };
            for (int c = 0; c < 4; c++) {
                const char *v = (const char *)sqlite3_column_text(q, 2 + c);
                bp_buf_printf(out, ",\"%s\":", names[c]);
                if (v) bp_json_write_text(out, v, strlen(v)); else bp_buf_adds(out, "null");
            }
            for (int c = 0; c < 2; c++) {
                bp_buf_printf(out, ",\"%s\":", c ? "revision_after" : "revision_before");
                if (sqlite3_column_type(q, 6 + c) == SQLITE_NULL) bp_buf_adds(out, "null");
                else bp_buf_printf(out, "%d", sqlite3_column_int(q, 6 + c));
            }
            const char *detail = (const char *)sqlite3_column_text(q, 8);
            bp_buf_adds(out, ",\"detail\":");
            if (detail) bp_json_write_text(out, detail, strlen(detail)); else bp_buf_adds(out, "null");
            bp_buf_addc(out, '}');
        }
        bp_buf_adds(out, "],\"next_cursor\":");
        if (more) bp_buf_printf(out, "%lld}", (long long)last); else bp_buf_adds(out, "null}");
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

/* Entries older than `days` go (kept 90 days by default). */
void bp_registry_audit_purge(bp_registry *r, int days)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&r->admin_mu);
    if (sqlite3_prepare_v2(r->db, "DELETE FROM audit WHERE at < ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (int64_t)bp_wall_ms() - (int64_t)days * 86400000);
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&r->admin_mu);
}

/* -1 with err naming the first key of the body's top level that is not in
 * `known` (a typo would otherwise be dropped by write_merged). */
int bp_check_body_keys(const bp_doc *body, const char *const *known, const char *what, bp_error *err)
{
    for (uint32_t k = 1, i = 0; i < body->nodes[0].len; i++, k = body->nodes[k + 1].next) {
        const char *key = bp_jtext(body, k);
        int found = 0;
        for (int j = 0; known[j] && !found; j++) found = !strcmp(known[j], key);
        if (found) continue;
        bp_buf list;
        bp_buf_init(&list);
        for (int j = 0; known[j]; j++) bp_buf_printf(&list, "%s%s", j ? ", " : "", known[j]);
        bp_error_set(err, "unknown key '%s' in the %s body (known keys: %s)", key, what, list.data);
        bp_buf_free(&list);
        return -1;
    }
    return 0;
}

static int install_locked(bp_registry *r, bp_vendor *v, const bp_doc *body, const bp_claims *who, bp_integration **out,
                          int *http, bp_error *err)
{
    static const char *const body_keys[] = { "name", "variant", "config", "events", "consent", "delivery_mode", NULL };
    const char *name = bp_jscalar(body, bp_jget(body, 0, "name"));
    const char *variant = bp_jscalar(body, bp_jget(body, 0, "variant"));
    const char *mode = bp_jscalar(body, bp_jget(body, 0, "delivery_mode"));
    if (!variant) variant = "default";
    if (!mode) mode = "server_side";
    *http = 422;
    if (bp_check_body_keys(body, body_keys, "install", err) < 0) return -1;
    if (!name || !*name) { bp_error_set(err, "field 'name' is required"); return -1; }
    if (bp_jget(body, 0, "config") == BP_NONE) { bp_error_set(err, "field 'config' is required"); return -1; }
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *sbp = v->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    if (!sbp) { *http = 503; bp_error_set(err, "the '%s' blueprint failed to load", v->dir); return -1; }
    int known = 0;
    for (size_t i = 0; i < sbp->bp->nvariants; i++) if (!strcmp(sbp->bp->variants[i], variant)) known = 1;
    if (!known) {
        *http = 404;
        bp_error_set(err, "vendor '%s' has no variant '%s'", sbp->bp->vendor, variant);
        bp_shared_bp_drop(sbp);
        return -1;
    }
    bp_buf doc;
    bp_buf_init(&doc);
    write_merged(&doc, body, 0, NULL, 0);
    bp_config *cfg = validate(sbp->bp, doc.data, variant, err);
    if (cfg && strcmp(mode, "server_side") != 0) {
        bp_error_set(err, "delivery_mode '%s' is not supported; use \"server_side\"", mode);
        bp_config_free(cfg);
        cfg = NULL;
    }
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
    random_id(id, sizeof id);
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
    r->items = realloc(r->items, (r->n + 1) * sizeof *r->items);
    r->items[r->n++] = it;
    r->metrics.integrations = (long)r->n;
    hold(it);   /* the caller's */
    pthread_mutex_unlock(&r->mu);
    bp_cluster_topics_changed(r->cluster);
    deliver_with(r, it, sbp, doc.data);
    bp_buf_free(&doc);
    *out = it;
    log_integration("integration installed", it);
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s, named ", sbp->bp->vendor);
    bp_json_write_text(&what, name, strlen(name));
    audit_locked(r, who, "integration.install", it->id, 0, 1, what.data);
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

/* A stored secret does not follow a changed URL: a change of a URL field
 * that secret is sent to (sent_to) needs the secret in the same change,
 * else -1 with err naming both. */
static int check_secret_follows(const bp_blueprint *bp, const char *before, const char *after, const bp_doc *patch,
                                bp_error *err)
{
    bp_doc a, b;
    bp_error perr;
    bp_doc_init(&a);
    bp_doc_init(&b);
    int rc = 0;
    uint32_t pc = bp_jget(patch, 0, "config");
    if (bp_json_parse(&a, before, strlen(before), NULL, &perr) == 0 && bp_json_parse(&b, after, strlen(after), NULL, &perr) == 0) {
        for (size_t i = 0; rc == 0 && i < bp->nfields; i++) {
            const bp_field *f = &bp->fields[i];
            const char *held = f->type == BP_FIELD_SECRET ? doc_value(&a, f->key) : NULL;
            uint32_t given = pc != BP_NONE ? bp_jget(patch, pc, f->key) : BP_NONE;
            const char *url = held && *held ? changed_destination(f, bp, &a, &b) : NULL;
            if (!url || (given != BP_NONE && patch->nodes[given].type != BP_JNULL)) continue;
            /* "config field 'KEY'": the API's 422 names it, and the console shows it there */
            bp_error_set(err, "changing '%s' needs config field '%s' in the same change: the stored secret is sent to "
                         "%s's host and does not follow it to a new one; give {\"config\":{\"%s\":…,\"%s\":…}}", url,
                         f->key, url, url, f->key);
            rc = -1;
        }
    }
    bp_doc_free(&a);
    bp_doc_free(&b);
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
    char *current = strdup(it->config_json);
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
    bp_doc cur;
    bp_doc_init(&cur);
    bp_json_parse(&cur, current, strlen(current), NULL, err);
    bp_buf doc;
    bp_buf_init(&doc);
    write_merged(&doc, &cur, 0, patch, 0);
    bp_doc_free(&cur);
    bp_config *cfg = check_secret_follows(sbp->bp, current, doc.data, patch, err) < 0 ? NULL
                     : validate(sbp->bp, doc.data, it->variant, err);
    if (!cfg) { bp_buf_free(&doc); bp_shared_bp_drop(sbp); free(current); return -1; }
    pthread_mutex_lock(&r->mu);
    char *old_json = it->config_json;
    bp_config *old_cfg = it->cfg;
    it->config_json = strdup(doc.data);
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
    describe_changes(current, doc.data, &what);
    audit_locked(r, who, "integration.update", it->id, it->revision - 1, it->revision, what.data);
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

/* server.db: the integration marked deleted, its revisions' secrets masked
 * (inside a transaction, admin_mu held). */
static int mask_deleted(bp_registry *r, const char *id, const bp_blueprint *bp)
{
    sqlite3_stmt *q;
    int ok = 0;
    if (sqlite3_prepare_v2(r->db, "UPDATE integrations SET deleted=1 WHERE id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    /* the revisions keep their history, not their secrets */
    if (ok && sqlite3_prepare_v2(r->db, "SELECT revision, config FROM revisions WHERE integration_id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        sqlite3_stmt *u = NULL;
        ok = sqlite3_prepare_v2(r->db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u,
                                NULL) == SQLITE_OK;
        while (ok && sqlite3_step(q) == SQLITE_ROW) {
            bp_buf masked;
            bp_buf_init(&masked);
            bp_buf_adds(&masked, "{\"config\":");
            bp_write_masked_config(&masked, bp, (const char *)sqlite3_column_text(q, 1));
            bp_buf_adds(&masked, "}");
            sqlite3_reset(u);
            sqlite3_bind_text(u, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 0));
            sqlite3_bind_text(u, 3, masked.data, (int)masked.len, SQLITE_STATIC);
            ok = sqlite3_step(u) == SQLITE_DONE;
            bp_buf_free(&masked);
        }
        sqlite3_finalize(u);
        sqlite3_finalize(q);
    }
    return ok ? 0 : -1;
}

/* Take a deleted integration out of the list and out of delivery (its
 * events, once-keys and pause state go once its loop has let go of them);
 * admin_mu held.  Releases the list's reference. */
static void forget(bp_registry *r, bp_integration *it)
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
    bp_cluster_topics_changed(r->cluster);
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
    int ok = db_exec(r, "BEGIN IMMEDIATE") == 0;
    if (ok && mask_deleted(r, it->id, sbp ? sbp->bp : NULL) < 0) {
        bp_error_set(err, "could not delete the integration: %s", sqlite3_errmsg(r->db));
        ok = 0;
    }
    if (ok && publish_locked(r, it->id, err) < 0) ok = 0;
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    if (!ok) { pthread_mutex_unlock(&r->admin_mu); bp_shared_bp_drop(sbp); return -1; }
    log_integration("integration deleted", it);   /* vendor->key changes only under admin_mu */
    audit_locked(r, who, "integration.delete", it->id, it->revision, 0, "its events, once-keys and pause state are "
                 "deleted; its revisions are kept with secrets masked");
    forget(r, it);
    pthread_mutex_unlock(&r->admin_mu);
    bp_shared_bp_drop(sbp);
    return 0;
}

/* Cluster mode: a record from NAME.integrations (this node's own writes
 * come back too, and change nothing).  The topic's order decides: a record
 * replaces what this node has unless it is an older revision, or the same
 * one unchanged; a deletion is never undone. */
void bp_registry_apply_config(bp_registry *r, const char *record, size_t len)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, record, len, NULL, &err) < 0 || d.nodes[0].type != BP_JOBJECT) {
        bp_log("error", "kafka: a configuration record is not JSON; skipped", NULL);
        bp_doc_free(&d);
        return;
    }
    const char *id = bp_jscalar(&d, bp_jget(&d, 0, "id")), *name = bp_jscalar(&d, bp_jget(&d, 0, "name"));
    const char *vendor = bp_jscalar(&d, bp_jget(&d, 0, "vendor")), *variant = bp_jscalar(&d, bp_jget(&d, 0, "variant"));
    const char *mode = bp_jscalar(&d, bp_jget(&d, 0, "delivery_mode")), *rev = bp_jscalar(&d, bp_jget(&d, 0, "revision"));
    const char *created = bp_jscalar(&d, bp_jget(&d, 0, "created_at"));
    uint32_t revs = bp_jget(&d, 0, "revisions");
    int deleted = bp_jget(&d, 0, "deleted") != BP_NONE && d.nodes[bp_jget(&d, 0, "deleted")].type == BP_JTRUE;
    if (!id || !name || !vendor || !variant || !mode || !rev || !created || revs == BP_NONE ||
        d.nodes[revs].type != BP_JARRAY || strlen(id) >= sizeof ((bp_integration *)0)->id) {
        bp_log("error", "kafka: a configuration record lacks fields; skipped", NULL);
        bp_doc_free(&d);
        return;
    }
    int revision = atoi(rev);
    bp_buf current;   /* the current revision's stored document */
    bp_buf_init(&current);
    for (uint32_t e = revs + 1, i = 0; i < d.nodes[revs].len; i++, e = d.nodes[e].next) {
        const char *n = bp_jscalar(&d, bp_jget(&d, e, "revision"));
        if (n && atoi(n) == revision) bp_json_write_node(&current, &d, bp_jget(&d, e, "config"));
    }
    pthread_mutex_lock(&r->admin_mu);
    sqlite3_stmt *q;
    int have = 0, have_rev = 0, have_deleted = 0, same = 0;
    if (sqlite3_prepare_v2(r->db, "SELECT i.revision, i.deleted, v.config FROM integrations i LEFT JOIN revisions v ON "
                                  "v.integration_id = i.id AND v.revision = i.revision WHERE i.id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            have = 1;
            have_rev = sqlite3_column_int(q, 0);
            have_deleted = sqlite3_column_int(q, 1);
            const char *text = (const char *)sqlite3_column_text(q, 2);
            same = text && current.len == (size_t)sqlite3_column_bytes(q, 2) && !memcmp(text, current.data, current.len);
        }
        sqlite3_finalize(q);
    }
    if (have && (revision < have_rev || have_deleted || (revision == have_rev && deleted == have_deleted && same))) {
        pthread_mutex_unlock(&r->admin_mu);
        bp_buf_free(&current);
        bp_doc_free(&d);
        return;
    }
    int ok = db_exec(r, "BEGIN IMMEDIATE") == 0;
    if (ok && sqlite3_prepare_v2(r->db, "INSERT INTO integrations(id, name, vendor, variant, delivery_mode, revision, "
                                        "created_at, deleted) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO "
                                        "UPDATE SET revision=excluded.revision, deleted=excluded.deleted", -1, &q, NULL) == SQLITE_OK) {
        const char *texts[] = { id, name, vendor, variant, mode };
        for (int i = 0; i < 5; i++) sqlite3_bind_text(q, i + 1, texts[i], -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 6, revision);
        sqlite3_bind_int64(q, 7, atoll(created));
        sqlite3_bind_int(q, 8, deleted);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    } else {
        ok = 0;
    }
    if (ok) {
        sqlite3_stmt *del = NULL, *ins = NULL;
        ok = sqlite3_prepare_v2(r->db, "DELETE FROM revisions WHERE integration_id=?1", -1, &del, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(r->db, "INSERT INTO revisions(integration_id, revision, config, created_at) "
                                       "VALUES(?1, ?2, ?3, ?4)", -1, &ins, NULL) == SQLITE_OK;
        if (ok) { sqlite3_bind_text(del, 1, id, -1, SQLITE_STATIC); ok = sqlite3_step(del) == SQLITE_DONE; }
        for (uint32_t e = revs + 1, i = 0; ok && i < d.nodes[revs].len; i++, e = d.nodes[e].next) {
            const char *n = bp_jscalar(&d, bp_jget(&d, e, "revision")), *at = bp_jscalar(&d, bp_jget(&d, e, "created_at"));
            uint32_t cfg = bp_jget(&d, e, "config");
            if (!n || cfg == BP_NONE) continue;
            bp_buf text;
            bp_buf_init(&text);
            bp_json_write_node(&text, &d, cfg);
            sqlite3_reset(ins);
            sqlite3_bind_text(ins, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(ins, 2, atoi(n));
            sqlite3_bind_text(ins, 3, text.data, (int)text.len, SQLITE_STATIC);
            sqlite3_bind_int64(ins, 4, at ? atoll(at) : 0);
            ok = sqlite3_step(ins) == SQLITE_DONE;
            bp_buf_free(&text);
        }
        sqlite3_finalize(del);
        sqlite3_finalize(ins);
    }
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"integration\":");
    bp_json_write_text(&f, id, strlen(id));
    if (!ok) {
        bp_buf_adds(&f, ",\"error\":");
        bp_json_write_text(&f, sqlite3_errmsg(r->db), strlen(sqlite3_errmsg(r->db)));
        bp_log("error", "kafka: could not apply an integration's configuration from the cluster (another integration "
               "has its name here?)", f.data);
    }
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    bp_integration *it = ok ? bp_registry_find(r, id) : NULL;
    if (ok && deleted) {
        if (it) { forget(r, it); bp_log("info", "integration deleted (through another node)", f.data); }
    } else if (ok) {
        pthread_mutex_lock(&r->mu);
        bp_vendor *v = bp_registry_vendor(r, vendor);
        bp_shared_bp *sbp = v ? v->bp : NULL;
        if (sbp) bp_shared_bp_hold(sbp);
        pthread_mutex_unlock(&r->mu);
        bp_buf plain;
        bp_buf_init(&plain);
        if (!v) {
            bp_log("error", "integration from the cluster not loaded: no blueprint for its vendor on this node", f.data);
        } else if (transform_doc(r->keys, id, sbp ? sbp->bp : NULL, current.data ? current.data : "{}", UNSEAL, &plain,
                                 NULL, &err) < 0) {
            bp_buf_adds(&f, ",\"error\":");
            bp_json_write_text(&f, err.msg, strlen(err.msg));
            bp_log("error", "integration from the cluster not loaded: its secrets do not decrypt here (do the nodes "
                   "share the master key?)", f.data);
        } else {
            bp_config *cfg = sbp ? validate(sbp->bp, plain.data, variant, &err) : NULL;
            if (!it) {
                it = new_integration(r, id, name, v, variant, mode, revision, atoll(created), plain.data);
                it->cfg = cfg;
                pthread_mutex_lock(&r->mu);
                r->items = realloc(r->items, (r->n + 1) * sizeof *r->items);
                r->items[r->n++] = it;
                r->metrics.integrations = (long)r->n;
                hold(it);   /* this function's, like bp_registry_find's */
                pthread_mutex_unlock(&r->mu);
                bp_cluster_topics_changed(r->cluster);
                bp_log("info", "integration installed (through another node)", f.data);
            } else {
                pthread_mutex_lock(&r->mu);
                free(it->config_json);
                it->config_json = strdup(plain.data);
                bp_config_free(it->cfg);
                it->cfg = cfg;
                it->revision = revision;
                pthread_mutex_unlock(&r->mu);
            }
            deliver_with(r, it, sbp, plain.data);
        }
        if (plain.data) memset(plain.data, 0, plain.cap);
        bp_buf_free(&plain);
        bp_shared_bp_drop(sbp);
    }
    bp_integration_release(it);
    pthread_mutex_unlock(&r->admin_mu);
    bp_buf_free(&f);
    bp_buf_free(&current);
    bp_doc_free(&d);
}

int bp_registry_revisions(bp_registry *r, const bp_integration *it, bp_buf *out)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&r->admin_mu);
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *sbp = it->vendor->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    int rc = -1;
    if (sqlite3_prepare_v2(r->db, "SELECT revision, created_at, config FROM revisions WHERE integration_id=?1 "
                                  "ORDER BY revision", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
        bp_buf_adds(out, "[");
        int first = 1;
        while (sqlite3_step(q) == SQLITE_ROW) {
            if (!first) bp_buf_addc(out, ',');
            first = 0;
            bp_buf_printf(out, "{\"revision\":%d,\"created_at\":%lld,\"config\":", sqlite3_column_int(q, 0),
                          (long long)sqlite3_column_int64(q, 1));
            bp_write_masked_config(out, sbp ? sbp->bp : NULL, (const char *)sqlite3_column_text(q, 2));
            bp_buf_addc(out, '}');
        }
        bp_buf_adds(out, "]");
        sqlite3_finalize(q);
        rc = 0;
    }
    pthread_mutex_unlock(&r->admin_mu);
    bp_shared_bp_drop(sbp);
    return rc;
}

/* The config part of a stored document with every secret masked (and,
 * without a blueprint to tell, every value). */
void bp_write_masked_config(bp_buf *out, const bp_blueprint *bp, const char *doc_json)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, doc_json, strlen(doc_json), NULL, &err) < 0) { bp_buf_adds(out, "{}"); bp_doc_free(&d); return; }
    uint32_t c = bp_jget(&d, 0, "config");
    bp_buf_addc(out, '{');
    if (c != BP_NONE && d.nodes[c].type == BP_JOBJECT) {
        for (uint32_t k = c + 1, i = 0; i < d.nodes[c].len; i++, k = d.nodes[k + 1].next) {
            if (i) bp_buf_addc(out, ',');
            bp_json_write_node(out, &d, k);
            bp_buf_addc(out, ':');
            const bp_field *f = bp ? bp_blueprint_field(bp, bp_jtext(&d, k)) : NULL;
            int sealed = d.nodes[k + 1].type == BP_JSTRING && bp_is_encrypted(bp_jtext(&d, k + 1));
            if (!f || f->type == BP_FIELD_SECRET || sealed) bp_buf_adds(out, "\"********\"");
            else bp_json_write_node(out, &d, k + 1);
        }
    }
    bp_buf_addc(out, '}');
    bp_doc_free(&d);
}

/* ---- hot reload ------------------------------------------------------------------------------ */

/* The integrations of one vendor, with their documents (references held)
 * and, once validated against a new version, their configs. */
typedef struct vendor_items {
    bp_integration **items;
    char **docs;
    bp_config **cfgs;
    size_t n;
    uint64_t stamp;               /* which integrations, at which revisions (vendor_stamp) */
} vendor_items;

/* A fingerprint of v's integrations and their revisions: a check made
 * against them holds while it is unchanged.  mu held. */
static uint64_t vendor_stamp(bp_registry *r, bp_vendor *v)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t k = 0; k < r->n; k++) {
        if (r->items[k]->vendor != v) continue;
        for (const char *p = r->items[k]->id; *p; p++) { h ^= (unsigned char)*p; h *= 1099511628211ULL; }
        h ^= (uint64_t)(unsigned)r->items[k]->revision + 0x100;   /* also ends the id */
        h *= 1099511628211ULL;
    }
    return h;
}

static void items_of(bp_registry *r, bp_vendor *v, vendor_items *vi)
{
    pthread_mutex_lock(&r->mu);
    vi->items = calloc(r->n + 1, sizeof *vi->items);
    vi->docs = calloc(r->n + 1, sizeof *vi->docs);
    vi->cfgs = calloc(r->n + 1, sizeof *vi->cfgs);
    if (!vi->items || !vi->docs || !vi->cfgs) abort();
    vi->n = 0;
    for (size_t k = 0; k < r->n; k++) {
        if (r->items[k]->vendor != v) continue;
        vi->items[vi->n] = r->items[k];
        vi->docs[vi->n] = strdup(r->items[k]->config_json);
        hold(vi->items[vi->n++]);
    }
    vi->stamp = vendor_stamp(r, v);
    pthread_mutex_unlock(&r->mu);
}

/* The version of v that runs (a reference held), or NULL. */
static bp_shared_bp *running_of(bp_registry *r, bp_vendor *v)
{
    pthread_mutex_lock(&r->mu);
    bp_shared_bp *sbp = v->bp;
    if (sbp) bp_shared_bp_hold(sbp);
    pthread_mutex_unlock(&r->mu);
    return sbp;
}

static void items_free(vendor_items *vi)
{
    for (size_t k = 0; k < vi->n; k++) {
        bp_config_free(vi->cfgs[k]);
        free(vi->docs[k]);
        bp_integration_release(vi->items[k]);
    }
    free(vi->items);
    free(vi->docs);
    free(vi->cfgs);
}

/* A stored secret keeps its type and its destination: -1 with err naming
 * the field and the integrations that hold a value for it when new
 * blueprint nb would make a secret field of ob another type (a viewer
 * would read it, and it would be stored in plain text), drop it, or send it
 * to another URL field or default URL (the key would follow). */
static int check_secrets_kept(const bp_blueprint *ob, const bp_blueprint *nb, vendor_items *vi, bp_error *err)
{
    bp_buf was, now, who;
    bp_buf_init(&was);
    bp_buf_init(&now);
    bp_buf_init(&who);
    int rc = 0;
    for (size_t i = 0; ob && rc == 0 && i < ob->nfields; i++) {
        const bp_field *of = &ob->fields[i], *nf = bp_blueprint_field(nb, of->key);
        if (of->type != BP_FIELD_SECRET) continue;
        const char *why = NULL;
        bp_buf_reset(&who);
        for (size_t k = 0; k < vi->n; k++) {
            bp_doc d;
            bp_error perr;
            bp_doc_init(&d);
            const char *v = bp_json_parse(&d, vi->docs[k], strlen(vi->docs[k]), NULL, &perr) == 0 ? doc_value(&d, of->key) : NULL;
            if (v && *v) {
                const char *w = !nf ? "remove the field" : nf->type != BP_FIELD_SECRET ? "make it another type than secret" : NULL;
                if (!w) {
                    secret_destination(of, ob, &d, &was);
                    secret_destination(nf, nb, &d, &now);
                    if (strcmp(was.data, now.data) != 0) w = "send it elsewhere (its sent_to, or the URL it is sent to, changed)";
                }
                if (w) {
                    why = w;
                    bp_buf_printf(&who, "%s'%s' (%s)", who.len ? ", " : "", vi->items[k]->name, vi->items[k]->id);
                }
            }
            bp_doc_free(&d);
        }
        if (!why) continue;
        bp_error_set(err, "config field '%s' is type: secret and integrations hold a stored value for it (%s): this "
                     "change would %s; a stored secret keeps its type and destination (keep the field as it is, or "
                     "delete those integrations first)", of->key, who.data, why);
        rc = -1;
    }
    bp_buf_free(&was);
    bp_buf_free(&now);
    bp_buf_free(&who);
    return rc;
}

/* The blueprint in dir, loaded and compiled in a scratch engine.  Its code
 * runs (each file's top-level chunk): never call it with admin_mu held, or
 * a file that stalls until its budget ends would stall every install,
 * update, sign-in and save.  NULL with err. */
static bp_blueprint *load_compiled(const char *dir, bp_error *err)
{
    bp_blueprint *nb = bp_blueprint_load(dir, err);
    if (nb && scratch_compile(nb, err) < 0) { bp_blueprint_free(nb); return NULL; }
    return nb;
}

/* Every config of vi validated against nb's fields (into vi->cfgs), and
 * the secrets they hold kept as the running version ob has them
 * (check_secrets_kept): no blueprint code runs.  -1 with err naming the
 * integration. */
static int validate_items(const bp_blueprint *ob, const bp_blueprint *nb, vendor_items *vi, bp_error *err)
{
    for (size_t k = 0; k < vi->n; k++) {
        vi->cfgs[k] = bp_config_load_text(nb, vi->docs[k], strlen(vi->docs[k]), "stored config", err);
        if (vi->cfgs[k]) continue;
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "the installed integration '%s' (%s) would not validate: %s", vi->items[k]->name,
                     vi->items[k]->id, why);
        return -1;
    }
    return check_secrets_kept(ob, nb, vi, err);   /* configs that validate: their secrets kept */
}

/* Is rev what runs for v (and nothing was rejected since)? */
static int running_is(bp_registry *r, bp_vendor *v, const char *rev)
{
    pthread_mutex_lock(&r->mu);
    int same = v->bp && !v->load_error && !strcmp(v->bp->revision, rev);
    pthread_mutex_unlock(&r->mu);
    return same;
}

/* Switch v's integrations to nb (compiled from the files of revision rev),
 * once every installed config validates against it; or, nb NULL or a
 * config refused, keep the running version (saying why everywhere it
 * shows).  Takes nb.  admin_mu held, so no install, update or delete slips
 * in between; who: the actor (NULL: the file watcher). */
static int switch_locked(bp_registry *r, bp_vendor *v, bp_blueprint *nb, const char *rev, const bp_claims *who,
                         bp_error *err)
{
    if (running_is(r, v, rev)) { bp_blueprint_free(nb); return 0; }   /* another reload switched already */
    pthread_mutex_lock(&r->mu);
    int had = v->bp != NULL;
    pthread_mutex_unlock(&r->mu);
    vendor_items vi;
    items_of(r, v, &vi);
    bp_shared_bp *running = running_of(r, v);
    if (nb && validate_items(running ? running->bp : NULL, nb, &vi, err) < 0) { bp_blueprint_free(nb); nb = NULL; }
    bp_shared_bp_drop(running);
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"blueprint\":");
    bp_json_write_string(&f, v->dir, strlen(v->dir));
    bp_buf_printf(&f, ",\"revision\":\"%s\"", rev);
    if (!nb) {
        pthread_mutex_lock(&r->mu);
        free(v->load_error);
        v->load_error = strdup(err->msg);
        memcpy(v->disk_revision, rev, BP_REVISION_LEN);
        r->metrics.reload_failures++;
        pthread_mutex_unlock(&r->mu);
        bp_buf_adds(&f, ",\"error\":");
        bp_json_write_string(&f, err->msg, strlen(err->msg));
        bp_log("error", had ? "blueprint change rejected; the previous version keeps running" : "blueprint failed to load",
               f.data);
        bp_buf what;
        bp_buf_init(&what);
        bp_buf_printf(&what, "%s: revision %s rejected, the previous version keeps running: ", v->dir, rev);
        bp_buf_adds(&what, err->msg);
        audit_locked(r, who, "blueprint.reload", NULL, 0, 0, what.data);
        bp_buf_free(&what);
    } else {
        bp_shared_bp *sbp = bp_shared_bp_new(nb);
        memcpy(sbp->revision, rev, BP_REVISION_LEN);
        pthread_mutex_lock(&r->mu);
        bp_shared_bp *old = v->bp;
        v->bp = sbp;
        free(v->load_error);
        v->load_error = NULL;
        memcpy(v->disk_revision, rev, BP_REVISION_LEN);
        if (!v->key || strcmp(v->key, nb->vendor) != 0) { free(v->key); v->key = strdup(nb->vendor); }
        for (size_t k = 0; k < vi.n; k++) {
            bp_config_free(vi.items[k]->cfg);
            vi.items[k]->cfg = vi.cfgs[k];
            vi.cfgs[k] = NULL;
        }
        r->metrics.reloads++;
        pthread_mutex_unlock(&r->mu);
        /* each loop switches its integrations between requests; the old
         * blueprint goes with the last reference to it */
        for (size_t k = 0; k < vi.n; k++) deliver_with(r, vi.items[k], sbp, vi.docs[k]);
        bp_shared_bp_drop(old);
        bp_log("info", "blueprint reloaded", f.data);
        bp_buf what;
        bp_buf_init(&what);
        bp_buf_printf(&what, "%s: revision %s reloaded for %zu integrations", v->dir, rev, vi.n);
        audit_locked(r, who, "blueprint.reload", NULL, 0, 0, what.data);
        bp_buf_free(&what);
    }
    items_free(&vi);
    bp_buf_free(&f);
    return nb ? 0 : -1;
}

/* Load v's files and switch to them, or keep the running version.  Called
 * without admin_mu: the files are compiled first, unlocked, then admin_mu
 * is taken only to check that the folder is still what was compiled (else
 * it is compiled again: an edit came meanwhile) and to switch. */
static int reload(bp_registry *r, bp_vendor *v, const bp_claims *who, bp_error *err)
{
    for (int attempt = 0;; attempt++) {
        char rev[BP_REVISION_LEN], now[BP_REVISION_LEN];
        bp_blueprint_revision(v->dir, rev);   /* before loading: a later edit is another reload */
        /* the files' contents are what runs (the console's editor reloaded them
         * already, or only a modification time changed) */
        if (running_is(r, v, rev)) return 0;
        bp_blueprint *nb = load_compiled(v->dir, err);
        pthread_mutex_lock(&r->admin_mu);
        bp_blueprint_revision(v->dir, now);
        /* still changing after a few tries: judge what was compiled; the
         * watcher sees the later change and reloads again */
        if (strcmp(now, rev) != 0 && attempt < 3) {
            pthread_mutex_unlock(&r->admin_mu);
            bp_blueprint_free(nb);
            continue;
        }
        int rc = switch_locked(r, v, nb, rev, who, err);
        pthread_mutex_unlock(&r->admin_mu);
        return rc;
    }
}

static void reload_vendor(bp_registry *r, bp_vendor *v)
{
    bp_error err;
    reload(r, v, NULL, &err);
}

void bp_registry_check_reload(bp_registry *r)
{
    for (size_t i = 0; i < r->nvendors; i++) {
        bp_vendor *v = &r->vendors[i];
        uint64_t sig = folder_signature(v->dir);
        if (sig == v->signature) continue;
        v->signature = sig;
        reload_vendor(r, v);
    }
}

/* ---- the web console: sign-in tokens, the editor's saves ------------------------------------- */

/* The signins table holds every spent token id (sign-in links and signed-out
 * sessions: both random 128-bit ids), its primary key deciding the first. */
int bp_registry_spend_jti_here(bp_registry *r, const char *jti, int64_t expires_at)
{
    sqlite3_stmt *q;
    int rc = -1;
    pthread_mutex_lock(&r->admin_mu);
    if (sqlite3_prepare_v2(r->db, "DELETE FROM signins WHERE expires_at < ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (int64_t)(bp_wall_ms() / 1000));
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
    if (sqlite3_prepare_v2(r->db, "INSERT INTO signins(jti, expires_at) VALUES(?1, ?2)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, jti, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, expires_at);
        int st = sqlite3_step(q);
        rc = st == SQLITE_DONE ? 0 : (st & 0xff) == SQLITE_CONSTRAINT ? 1 : -1;
        sqlite3_finalize(q);
    }
    if (rc >= 0) bp_jti_set_add(r->spent, jti, expires_at, (int64_t)(bp_wall_ms() / 1000));
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

/* In a cluster the first claim on the shared topic decides, so that a link
 * works once in the whole cluster (cluster.c). */
int bp_registry_spend_jti(bp_registry *r, const char *jti, int64_t expires_at)
{
    if (r->cluster) return bp_cluster_spend_jti(r->cluster, jti, expires_at);
    return bp_registry_spend_jti_here(r, jti, expires_at);
}

int bp_registry_jti_spent(bp_registry *r, const char *jti) { return bp_jti_set_has(r->spent, jti); }

void bp_registry_edit_begin(bp_registry *r) { pthread_mutex_lock(&r->admin_mu); }
void bp_registry_edit_end(bp_registry *r) { pthread_mutex_unlock(&r->admin_mu); }

int bp_registry_edit_check(bp_registry *r, bp_vendor *v, const char *dir, uint64_t *stamp, bp_error *err)
{
    vendor_items vi;
    items_of(r, v, &vi);
    *stamp = vi.stamp;
    bp_blueprint *nb = load_compiled(dir, err);
    bp_shared_bp *running = running_of(r, v);
    int rc = nb && validate_items(running ? running->bp : NULL, nb, &vi, err) == 0 ? 0 : -1;
    bp_shared_bp_drop(running);
    items_free(&vi);
    bp_blueprint_free(nb);
    return rc;
}

uint64_t bp_registry_edit_stamp(bp_registry *r, bp_vendor *v)
{
    pthread_mutex_lock(&r->mu);
    uint64_t stamp = vendor_stamp(r, v);
    pthread_mutex_unlock(&r->mu);
    return stamp;
}

int bp_registry_edit_reload(bp_registry *r, bp_vendor *v, const bp_claims *who, char running[BP_REVISION_LEN],
                            bp_error *err)
{
    int rc = reload(r, v, who, err);
    pthread_mutex_lock(&r->mu);
    snprintf(running, BP_REVISION_LEN, "%s", v->bp ? v->bp->revision : "");
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* ---- the editor's revisions: content-addressed files, retention ---------------------------------- */

/* Each file of files_json ({"NAME":"content",…}) into blueprint_files once,
 * keyed by its SHA-256; manifest gets {"NAME":"SHA256",…}.  In a
 * transaction, admin_mu held. */
static int store_files(bp_registry *r, const char *files_json, bp_buf *manifest)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    sqlite3_stmt *q = NULL;
    size_t len = strlen(files_json);
    bp_json_limits whole = { len + 1, 0 };   /* ours, as large as the folder: not an event's limit */
    int ok = bp_json_parse(&d, files_json, len, &whole, &err) == 0 && d.nodes[0].type == BP_JOBJECT &&
             sqlite3_prepare_v2(r->db, "INSERT OR IGNORE INTO blueprint_files(sha256, content) VALUES(?1, ?2)", -1, &q,
                                NULL) == SQLITE_OK;
    bp_buf_addc(manifest, '{');
    for (uint32_t k = 1, i = 0; ok && i < d.nodes[0].len; i++, k = d.nodes[k + 1].next) {
        if (d.nodes[k + 1].type != BP_JSTRING) { ok = 0; break; }
        const char *text = bp_jtext(&d, k + 1);
        size_t n = d.nodes[k + 1].len;
        char hash[65];
        bp_sha256_hex(text, n, hash);
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, text, (int)n, SQLITE_STATIC);
        ok = sqlite3_step(q) == SQLITE_DONE;
        if (i) bp_buf_addc(manifest, ',');
        bp_json_write_node(manifest, &d, k);
        bp_buf_printf(manifest, ":\"%s\"", hash);
    }
    bp_buf_addc(manifest, '}');
    sqlite3_finalize(q);
    bp_doc_free(&d);
    return ok ? 0 : -1;
}

/* The files of a manifest as {"NAME":"content",…} into out.  -1 when one is
 * missing (server.db damaged). */
static int load_files(bp_registry *r, const char *manifest, bp_buf *out)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    sqlite3_stmt *q = NULL;
    int ok = bp_json_parse(&d, manifest, strlen(manifest), NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT &&
             sqlite3_prepare_v2(r->db, "SELECT content FROM blueprint_files WHERE sha256=?1", -1, &q, NULL) == SQLITE_OK;
    bp_buf_addc(out, '{');
    for (uint32_t k = 1, i = 0; ok && i < d.nodes[0].len; i++, k = d.nodes[k + 1].next) {
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, bp_jtext(&d, k + 1), -1, SQLITE_STATIC);
        ok = sqlite3_step(q) == SQLITE_ROW;
        if (!ok) break;
        if (i) bp_buf_addc(out, ',');
        bp_json_write_node(out, &d, k);
        bp_buf_addc(out, ':');
        bp_json_write_text(out, (const char *)sqlite3_column_text(q, 0), (size_t)sqlite3_column_bytes(q, 0));
    }
    bp_buf_addc(out, '}');
    sqlite3_finalize(q);
    bp_doc_free(&d);
    return ok ? 0 : -1;
}

/* Drop vendor's revisions beyond the newest revisions_keep or older than
 * revisions_days (never the newest, `newest`), then the file contents no
 * revision has any more; the audit log says what went.  admin_mu held. */
static void prune_revisions(bp_registry *r, const char *vendor, int newest)
{
    sqlite3_stmt *q;
    int64_t before = (int64_t)bp_wall_ms() - (int64_t)r->revisions_days * 86400000;
    int first = 0, last = 0, n = 0, files = 0;
    if (db_exec(r, "BEGIN IMMEDIATE") < 0) return;
    if (sqlite3_prepare_v2(r->db, "SELECT min(number), max(number), count(*) FROM blueprint_revisions WHERE vendor=?1 "
                                  "AND number < ?2 AND (number <= ?2 - ?3 OR created_at < ?4)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, newest);
        sqlite3_bind_int(q, 3, r->revisions_keep);
        sqlite3_bind_int64(q, 4, before);
        if (sqlite3_step(q) == SQLITE_ROW) { first = sqlite3_column_int(q, 0); last = sqlite3_column_int(q, 1); n = sqlite3_column_int(q, 2); }
        sqlite3_finalize(q);
    }
    int ok = n > 0 && sqlite3_prepare_v2(r->db, "DELETE FROM blueprint_revisions WHERE vendor=?1 AND number < ?2 AND "
                                                "(number <= ?2 - ?3 OR created_at < ?4)", -1, &q, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, newest);
        sqlite3_bind_int(q, 3, r->revisions_keep);
        sqlite3_bind_int64(q, 4, before);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    if (ok) {
        ok = db_exec(r, "DELETE FROM blueprint_files WHERE sha256 NOT IN (SELECT f.value FROM blueprint_revisions, "
                        "json_each(blueprint_revisions.files) f)") == 0;
        files = sqlite3_changes(r->db);
    }
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    if (!ok) return;
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s: %d blueprint revision%s pruned (numbers %d to %d; kept: the newest %d, none older than %d "
                  "days), %d file version%s no revision has any more removed", vendor, n, n == 1 ? "" : "s", first, last,
                  r->revisions_keep, r->revisions_days, files, files == 1 ? "" : "s");
    audit_locked(r, NULL, "blueprint.prune", NULL, 0, 0, what.data);
    bp_buf_free(&what);
}

/* server.db before user_version 1 kept every file's content in every
 * revision: move them into blueprint_files once (shrinking the file). */
static int migrate_revision_files(bp_registry *r, bp_error *err)
{
    sqlite3_stmt *q, *u = NULL;
    int version = 0;
    if (sqlite3_prepare_v2(r->db, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK) {
        if (sqlite3_step(q) == SQLITE_ROW) version = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
    }
    if (version >= 1) return 0;
    if (db_exec(r, "BEGIN IMMEDIATE") < 0) { bp_error_set(err, "server.db: %s", sqlite3_errmsg(r->db)); return -1; }
    int ok = sqlite3_prepare_v2(r->db, "SELECT vendor, number, files FROM blueprint_revisions", -1, &q, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(r->db, "UPDATE blueprint_revisions SET files=?3 WHERE vendor=?1 AND number=?2", -1, &u,
                                NULL) == SQLITE_OK;
    long moved = 0;
    while (ok && sqlite3_step(q) == SQLITE_ROW) {
        bp_buf manifest;
        bp_buf_init(&manifest);
        ok = store_files(r, (const char *)sqlite3_column_text(q, 2), &manifest) == 0;
        if (ok) {
            sqlite3_reset(u);
            sqlite3_bind_value(u, 1, sqlite3_column_value(q, 0));
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 1));
            sqlite3_bind_text(u, 3, manifest.data, (int)manifest.len, SQLITE_STATIC);
            ok = sqlite3_step(u) == SQLITE_DONE;
            moved++;
        }
        bp_buf_free(&manifest);
    }
    sqlite3_finalize(q);
    sqlite3_finalize(u);
    if (ok) ok = db_exec(r, "PRAGMA user_version=1") == 0;
    if (!ok) bp_error_set(err, "server.db: could not move the blueprint revisions' files into blueprint_files: %s",
                          sqlite3_errmsg(r->db));
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    if (ok && moved) {
        db_exec(r, "VACUUM");
        char detail[64];
        snprintf(detail, sizeof detail, "\"revisions\":%ld", moved);
        bp_log("info", "blueprint revisions now keep each file once (server.db migrated)", detail);
    }
    return ok ? 0 : -1;
}

int bp_registry_edit_latest(bp_registry *r, const char *vendor, int *number, char revision[BP_REVISION_LEN])
{
    sqlite3_stmt *q;
    *number = 0;
    revision[0] = '\0';
    if (sqlite3_prepare_v2(r->db, "SELECT number, revision FROM blueprint_revisions WHERE vendor=?1 "
                                  "ORDER BY number DESC LIMIT 1", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
        *number = sqlite3_column_int(q, 0);
        snprintf(revision, BP_REVISION_LEN, "%s", (const char *)sqlite3_column_text(q, 1));
    }
    sqlite3_finalize(q);
    return 0;
}

int bp_registry_edit_record(bp_registry *r, const char *vendor, bp_edit_rev *rev, const bp_claims *who,
                            const char *action)
{
    int last;
    char prev[BP_REVISION_LEN];
    if (bp_registry_edit_latest(r, vendor, &last, prev) < 0) return -1;
    if (!who) who = &SYSTEM;
    rev->number = last + 1;
    rev->created_at = (int64_t)bp_wall_ms();
    snprintf(rev->actor, sizeof rev->actor, "%s", who->sub[0] ? who->sub : "(no subject)");
    sqlite3_stmt *q;
    bp_buf manifest;
    bp_buf_init(&manifest);
    int ok = db_exec(r, "BEGIN IMMEDIATE") == 0;
    if (ok) ok = store_files(r, rev->files_json, &manifest) == 0 &&
                 sqlite3_prepare_v2(r->db, "INSERT INTO blueprint_revisions(vendor, number, revision, actor, created_at, "
                                           "message, diff, changed, files) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)", -1,
                                    &q, NULL) == SQLITE_OK;
    if (ok) {
        const char *texts[] = { vendor, NULL, rev->revision, rev->actor, NULL, rev->message, rev->diff, rev->changed_json,
                                manifest.data };
        for (int i = 0; i < 9; i++) if (texts[i]) sqlite3_bind_text(q, i + 1, texts[i], -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, rev->number);
        sqlite3_bind_int64(q, 5, rev->created_at);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    bp_buf_free(&manifest);
    if (!ok) return -1;
    if (action) {
        bp_buf what;
        bp_buf_init(&what);
        bp_buf_printf(&what, "%s: blueprint revision %d (%s)", vendor, rev->number, rev->revision);
        if (rev->message[0]) { bp_buf_adds(&what, ": "); bp_buf_adds(&what, rev->message); }
        audit_locked(r, who, action, NULL, last, rev->number, what.data);
        bp_buf_free(&what);
    }
    prune_revisions(r, vendor, rev->number);
    return rev->number;
}

int bp_registry_edit_files(bp_registry *r, const char *vendor, int number, bp_buf *files_json)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "SELECT files FROM blueprint_revisions WHERE vendor=?1 AND number=?2", -1, &q,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, number);
    int found = sqlite3_step(q) == SQLITE_ROW;
    int rc = found ? load_files(r, (const char *)sqlite3_column_text(q, 0), files_json) : 1;
    sqlite3_finalize(q);
    return rc;
}

/* A text column as a JSON string. */
static void write_column(bp_buf *out, sqlite3_stmt *q, int col)
{
    bp_json_write_text(out, (const char *)sqlite3_column_text(q, col), (size_t)sqlite3_column_bytes(q, col));
}

int bp_registry_edit_list(bp_registry *r, const char *vendor, bp_buf *out)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "SELECT number, revision, actor, created_at, message, diff, changed FROM "
                                  "blueprint_revisions WHERE vendor=?1 ORDER BY number DESC", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
    bp_buf_addc(out, '[');
    for (int n = 0; sqlite3_step(q) == SQLITE_ROW; n++) {
        bp_buf_printf(out, "%s{\"number\":%d,\"revision\":", n ? "," : "", sqlite3_column_int(q, 0));
        write_column(out, q, 1);
        bp_buf_adds(out, ",\"actor\":");
        write_column(out, q, 2);
        bp_buf_printf(out, ",\"created_at\":%lld,\"message\":", (long long)sqlite3_column_int64(q, 3));
        write_column(out, q, 4);
        bp_buf_adds(out, ",\"diff\":");
        write_column(out, q, 5);
        bp_buf_adds(out, ",\"files\":");
        bp_buf_add(out, sqlite3_column_text(q, 6), (size_t)sqlite3_column_bytes(q, 6));   /* a JSON array, as recorded */
        bp_buf_addc(out, '}');
    }
    bp_buf_addc(out, ']');
    sqlite3_finalize(q);
    return 0;
}

bp_config *bp_registry_config_of(bp_registry *r, const char *id, const bp_blueprint *bp, const char *vendor,
                                 int *status, bp_error *err)
{
    bp_integration *it = bp_registry_find(r, id);
    *status = it ? 0 : 404;
    if (!it) { bp_error_set(err, "no integration with id '%s'", id); return NULL; }
    pthread_mutex_lock(&r->mu);
    char *doc = strdup(it->config_json);
    int mine = !strcmp(it->vendor->key, vendor);
    pthread_mutex_unlock(&r->mu);
    bp_config *c = NULL;
    /* an edit that would give its stored secret to a mapping as plain
     * config (a dry-run prints what the mapping puts in a body) is refused
     * as a save would be */
    bp_shared_bp *running = mine ? running_of(r, it->vendor) : NULL;
    vendor_items one = { .items = &it, .docs = &doc, .n = 1 };
    if (!mine) { *status = 400; bp_error_set(err, "integration '%s' is not a '%s' integration", id, vendor); }
    else if (check_secrets_kept(running ? running->bp : NULL, bp, &one, err) == 0) c = validate(bp, doc, it->variant, err);
    bp_shared_bp_drop(running);
    memset(doc, 0, strlen(doc));   /* it holds the secrets */
    free(doc);
    bp_integration_release(it);
    return c;
}
