/*
 * registry.c — what `blueprint serve` manages: the blueprint catalog found
 * on disk (hot-reloaded), the installed integrations with their immutable
 * config revisions (server.db), and one delivery worker thread per
 * integration running bp_deliver in service mode on its own store.
 *
 * Locking: one registry mutex guards the lists and each integration's
 * fields; workers never take it while delivering (they own their engine),
 * so HTTP handlers stay responsive while vendors are slow.
 */
#include "internal.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS integrations("
    "  id TEXT PRIMARY KEY, name TEXT NOT NULL, vendor TEXT NOT NULL, variant TEXT NOT NULL,"
    "  delivery_mode TEXT NOT NULL, revision INTEGER NOT NULL, created_at INTEGER NOT NULL,"
    "  deleted INTEGER NOT NULL DEFAULT 0);"
    "CREATE UNIQUE INDEX IF NOT EXISTS integrations_by_name ON integrations(name) WHERE deleted = 0;"
    "CREATE TABLE IF NOT EXISTS revisions("
    "  integration_id TEXT NOT NULL, revision INTEGER NOT NULL, config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, PRIMARY KEY(integration_id, revision));";

/* ---- logging ---------------------------------------------------------------------- */

void bp_log(const char *level, const char *msg, const char *fields_json)
{
    bp_buf b;
    bp_buf_init(&b);
    bp_buf_printf(&b, "{\"ts\":%.3f,\"level\":\"%s\",\"msg\":", bp_wall_ms() / 1000.0, level);
    bp_json_write_string(&b, msg, strlen(msg));
    if (fields_json && *fields_json) { bp_buf_addc(&b, ','); bp_buf_adds(&b, fields_json); }
    bp_buf_adds(&b, "}\n");
    fwrite(b.data, 1, b.len, stderr);
    fflush(stderr);
    bp_buf_free(&b);
}

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
        bp_error err;
        v->bp = bp_blueprint_load(dir, &err);
        if (v->bp && scratch_compile(v->bp, &err) < 0) { bp_blueprint_free(v->bp); v->bp = NULL; }
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
            v->key = strdup(v->bp->vendor);
        }
    }
    closedir(d);
}

bp_vendor *bp_registry_vendor(bp_registry *r, const char *key)
{
    for (size_t i = 0; i < r->nvendors; i++)
        if (!strcmp(r->vendors[i].key, key)) return &r->vendors[i];
    return NULL;
}

/* ---- integrations ------------------------------------------------------------------------ */

static void on_outcome(void *ctx, const char *line, size_t len)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    pthread_mutex_lock(&r->mu);
    size_t slot = (size_t)(it->live_seq % BP_LIVE_RING);
    free(it->live[slot]);
    it->live[slot] = strndup(line, len);
    it->live_seq++;
    bp_metrics_outcome(&r->metrics, line, len);
    pthread_cond_broadcast(&r->live_cond);
    pthread_mutex_unlock(&r->mu);
}

static void on_answer(void *ctx, int status, double duration_ms)
{
    bp_integration *it = ctx;
    bp_registry *r = it->registry;
    pthread_mutex_lock(&r->mu);
    bp_metrics_answer(&r->metrics, status, duration_ms);
    pthread_mutex_unlock(&r->mu);
}

static void *worker_main(void *arg)
{
    bp_integration *it = arg;
    bp_deliver_opts o;
    bp_deliver_opts_default(&o);
    o.state_dir = it->state_dir;
    o.follow = 1;
    o.stop = &it->stop;
    o.emit = on_outcome;
    o.on_answer = on_answer;
    o.emit_ctx = it;
    if (it->registry->rate_limit_rps > 0) o.rate_limit_rps = it->registry->rate_limit_rps;
    if (it->registry->retry_base_ms > 0) o.retry_base_ms = it->registry->retry_base_ms;
    bp_error err;
    if (bp_deliver(it->vendor->bp, it->cfg, &o, &it->stats, &err) < 0) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_printf(&f, "\"integration\":\"%s\",\"error\":", it->id);
        bp_json_write_string(&f, err.msg, strlen(err.msg));
        bp_log("error", "delivery worker stopped", f.data);
        bp_buf_free(&f);
    }
    return NULL;
}

static void start_worker(bp_integration *it)
{
    if (it->running || !it->vendor->bp || !it->cfg) return;
    it->stop = 0;
    if (pthread_create(&it->thread, NULL, worker_main, it) == 0) it->running = 1;
}

/* Called without the registry lock held (joining waits for in-flight requests). */
static void stop_worker(bp_integration *it)
{
    if (!it->running) return;
    it->stop = 1;
    pthread_join(it->thread, NULL);
    it->running = 0;
}

static void free_integration(bp_integration *it)
{
    for (int i = 0; i < BP_LIVE_RING; i++) free(it->live[i]);
    free(it->name);
    free(it->variant);
    free(it->delivery_mode);
    free(it->config_json);
    bp_config_free(it->cfg);
    free(it);
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
    snprintf(it->state_dir, sizeof it->state_dir, "%s/integrations/%s", r->state_dir, id);
    return it;
}

bp_integration *bp_registry_find(bp_registry *r, const char *id)
{
    for (size_t i = 0; i < r->n; i++) if (!strcmp(r->items[i]->id, id)) return r->items[i];
    return NULL;
}

static int db_exec(bp_registry *r, const char *sql) { return sqlite3_exec(r->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1; }

static int save_revision(bp_registry *r, const bp_integration *it, int insert_integration)
{
    sqlite3_stmt *q;
    int ok = 1;
    db_exec(r, "BEGIN");
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
        sqlite3_bind_text(q, 3, it->config_json, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, (int64_t)bp_wall_ms());
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    } else {
        ok = 0;
    }
    db_exec(r, ok ? "COMMIT" : "ROLLBACK");
    return ok ? 0 : -1;
}

static void load_integrations(bp_registry *r)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "SELECT i.id, i.name, i.vendor, i.variant, i.delivery_mode, i.revision, "
                                  "i.created_at, v.config FROM integrations i JOIN revisions v ON "
                                  "v.integration_id = i.id AND v.revision = i.revision WHERE i.deleted = 0 "
                                  "ORDER BY i.created_at", -1, &q, NULL) != SQLITE_OK)
        return;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *vendor = (const char *)sqlite3_column_text(q, 2);
        bp_vendor *v = bp_registry_vendor(r, vendor);
        if (!v) continue;
        bp_integration *it = new_integration(r, (const char *)sqlite3_column_text(q, 0),
                                             (const char *)sqlite3_column_text(q, 1), v,
                                             (const char *)sqlite3_column_text(q, 3),
                                             (const char *)sqlite3_column_text(q, 4), sqlite3_column_int(q, 5),
                                             sqlite3_column_int64(q, 6), (const char *)sqlite3_column_text(q, 7));
        bp_error err;
        if (v->bp) it->cfg = bp_config_load_text(v->bp, it->config_json, strlen(it->config_json), "stored config", &err);
        r->items = realloc(r->items, (r->n + 1) * sizeof *r->items);
        r->items[r->n++] = it;
    }
    sqlite3_finalize(q);
}

bp_registry *bp_registry_open(const char *blueprints_dir, const char *state_dir, bp_error *err)
{
    bp_registry *r = calloc(1, sizeof *r);
    if (!r) abort();
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->admin_mu, NULL);
    pthread_cond_init(&r->live_cond, NULL);
    r->blueprints_dir = strdup(blueprints_dir);
    r->state_dir = strdup(state_dir);
    char path[4096];
    mkdir(state_dir, 0700);
    snprintf(path, sizeof path, "%s/integrations", state_dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/server.db", state_dir);
    if (sqlite3_open(path, &r->db) != SQLITE_OK || bp_store_busy_handler(r->db) != SQLITE_OK ||
        sqlite3_exec(r->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK) {
        bp_error_set(err, "state store %s: %s", path, sqlite3_errmsg(r->db));
        sqlite3_close(r->db);
        free(r->blueprints_dir);
        free(r->state_dir);
        free(r);
        return NULL;
    }
    chmod(path, 0600);   /* it holds the integrations' secrets */
    load_vendors(r);
    load_integrations(r);
    return r;
}

void bp_registry_start(bp_registry *r)
{
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) start_worker(r->items[i]);
    pthread_mutex_unlock(&r->mu);
}

void bp_registry_close(bp_registry *r)
{
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stopping = 1;
    pthread_cond_broadcast(&r->live_cond);
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < r->n; i++) stop_worker(r->items[i]);
    for (size_t i = 0; i < r->n; i++) free_integration(r->items[i]);
    free(r->items);
    for (size_t i = 0; i < r->nvendors; i++) {
        bp_blueprint_free(r->vendors[i].bp);
        free(r->vendors[i].key);
        free(r->vendors[i].dir);
        free(r->vendors[i].load_error);
    }
    free(r->vendors);
    sqlite3_close(r->db);
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

/* Validate a stored-form document against a vendor's blueprint. */
static bp_config *validate(bp_vendor *v, const char *doc, const char *variant, bp_error *err)
{
    bp_buf body;
    bp_buf_init(&body);
    /* the config loader reads the install-body shape; give it the variant too */
    bp_buf_add(&body, doc, strlen(doc) - 1);
    bp_buf_adds(&body, ",\"variant\":");
    bp_json_write_string(&body, variant, strlen(variant));
    bp_buf_addc(&body, '}');
    bp_config *c = bp_config_load_text(v->bp, body.data, body.len, "config", err);
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

static int install_locked(bp_registry *r, bp_vendor *v, const bp_doc *body, bp_integration **out, int *http, bp_error *err);

int bp_registry_install(bp_registry *r, bp_vendor *v, const bp_doc *body, bp_integration **out, int *http, bp_error *err)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = install_locked(r, v, body, out, http, err);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

static int install_locked(bp_registry *r, bp_vendor *v, const bp_doc *body, bp_integration **out, int *http, bp_error *err)
{
    const char *name = bp_jscalar(body, bp_jget(body, 0, "name"));
    const char *variant = bp_jscalar(body, bp_jget(body, 0, "variant"));
    const char *mode = bp_jscalar(body, bp_jget(body, 0, "delivery_mode"));
    if (!variant) variant = "default";
    if (!mode) mode = "server_side";
    *http = 422;
    if (!name || !*name) { bp_error_set(err, "field 'name' is required"); return -1; }
    if (bp_jget(body, 0, "config") == BP_NONE) { bp_error_set(err, "field 'config' is required"); return -1; }
    int known = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; v->bp && i < v->bp->nvariants; i++) if (!strcmp(v->bp->variants[i], variant)) known = 1;
    pthread_mutex_unlock(&r->mu);
    if (!known) { *http = 404; bp_error_set(err, "vendor '%s' has no variant '%s'", v->key, variant); return -1; }
    bp_buf doc;
    bp_buf_init(&doc);
    write_merged(&doc, body, 0, NULL, 0);
    pthread_mutex_lock(&r->mu);
    bp_config *cfg = validate(v, doc.data, variant, err);
    if (!cfg || strcmp(mode, "server_side") != 0) {
        pthread_mutex_unlock(&r->mu);
        if (cfg) bp_error_set(err, "delivery_mode '%s' is not supported; use \"server_side\"", mode);
        bp_config_free(cfg);
        bp_buf_free(&doc);
        return -1;
    }
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->items[i]->name, name)) {
            pthread_mutex_unlock(&r->mu);
            *http = 409;
            bp_error_set(err, "an integration named '%s' already exists", name);
            bp_config_free(cfg);
            bp_buf_free(&doc);
            return -1;
        }
    char id[40];
    random_id(id, sizeof id);
    bp_integration *it = new_integration(r, id, name, v, variant, mode, 1, (int64_t)bp_wall_ms(), doc.data);
    it->cfg = cfg;
    bp_buf_free(&doc);
    if (save_revision(r, it, 1) < 0) {
        pthread_mutex_unlock(&r->mu);
        *http = 500;
        bp_error_set(err, "could not store the integration");
        free_integration(it);
        return -1;
    }
    r->items = realloc(r->items, (r->n + 1) * sizeof *r->items);
    r->items[r->n++] = it;
    start_worker(it);
    pthread_mutex_unlock(&r->mu);
    *out = it;
    return 0;
}

static int update_locked(bp_registry *r, bp_integration *it, const bp_doc *patch, int *http, bp_error *err);

int bp_registry_update(bp_registry *r, bp_integration *it, const bp_doc *patch, int *http, bp_error *err)
{
    pthread_mutex_lock(&r->admin_mu);
    int rc = update_locked(r, it, patch, http, err);
    pthread_mutex_unlock(&r->admin_mu);
    return rc;
}

static int update_locked(bp_registry *r, bp_integration *it, const bp_doc *patch, int *http, bp_error *err)
{
    *http = 422;
    pthread_mutex_lock(&r->mu);
    bp_doc cur;
    bp_doc_init(&cur);
    bp_json_parse(&cur, it->config_json, strlen(it->config_json), NULL, err);
    bp_buf doc;
    bp_buf_init(&doc);
    write_merged(&doc, &cur, 0, patch, 0);
    bp_doc_free(&cur);
    bp_config *cfg = validate(it->vendor, doc.data, it->variant, err);
    pthread_mutex_unlock(&r->mu);
    if (!cfg) { bp_buf_free(&doc); return -1; }
    stop_worker(it);   /* outside the lock: it finishes in-flight requests */
    pthread_mutex_lock(&r->mu);
    bp_config_free(it->cfg);
    it->cfg = cfg;
    free(it->config_json);
    it->config_json = strdup(doc.data);
    it->revision++;
    int rc = save_revision(r, it, 0);
    start_worker(it);
    pthread_mutex_unlock(&r->mu);
    bp_buf_free(&doc);
    if (rc < 0) { *http = 500; bp_error_set(err, "could not store the revision"); }
    return rc;
}

int bp_registry_delete(bp_registry *r, bp_integration *it)
{
    pthread_mutex_lock(&r->admin_mu);
    stop_worker(it);
    pthread_mutex_lock(&r->mu);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "UPDATE integrations SET deleted=1 WHERE id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i] == it) { memmove(&r->items[i], &r->items[i + 1], (r->n - i - 1) * sizeof *r->items); r->n--; break; }
    it->deleted = 1;
    pthread_cond_broadcast(&r->live_cond);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&r->admin_mu);
    /* Live-event streams may still hold a pointer: keep the memory (rare). */
    return 0;
}

int bp_registry_revisions(bp_registry *r, const bp_integration *it, bp_buf *out)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(r->db, "SELECT revision, created_at, config FROM revisions WHERE integration_id=?1 "
                                  "ORDER BY revision", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
    bp_buf_adds(out, "[");
    int first = 1;
    while (sqlite3_step(q) == SQLITE_ROW) {
        if (!first) bp_buf_addc(out, ',');
        first = 0;
        bp_buf_printf(out, "{\"revision\":%d,\"created_at\":%lld,\"config\":", sqlite3_column_int(q, 0),
                      (long long)sqlite3_column_int64(q, 1));
        bp_write_masked_config(out, it->vendor->bp, (const char *)sqlite3_column_text(q, 2));
        bp_buf_addc(out, '}');
    }
    bp_buf_adds(out, "]");
    sqlite3_finalize(q);
    return 0;
}

/* The config part of a stored document with every secret masked. */
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
            if (!f || f->type == BP_FIELD_SECRET) bp_buf_adds(out, "\"********\"");
            else bp_json_write_node(out, &d, k + 1);
        }
    }
    bp_buf_addc(out, '}');
    bp_doc_free(&d);
}

/* ---- hot reload ------------------------------------------------------------------------------ */

void bp_registry_check_reload(bp_registry *r)
{
    for (size_t i = 0; i < r->nvendors; i++) {
        bp_vendor *v = &r->vendors[i];
        uint64_t sig = folder_signature(v->dir);
        if (sig == v->signature) continue;
        v->signature = sig;
        bp_error err;
        bp_blueprint *nb = bp_blueprint_load(v->dir, &err);
        int ok = nb && scratch_compile(nb, &err) == 0;
        /* every integration's config must still validate against the new fields;
         * no installs, updates or deletes until the swap is done */
        pthread_mutex_lock(&r->admin_mu);
        pthread_mutex_lock(&r->mu);
        for (size_t k = 0; ok && k < r->n; k++) {
            bp_integration *it = r->items[k];
            if (it->vendor != v) continue;
            it->next_cfg = bp_config_load_text(nb, it->config_json, strlen(it->config_json), "stored config", &err);
            if (!it->next_cfg) ok = 0;
        }
        if (!ok)
            for (size_t k = 0; k < r->n; k++) { bp_config_free(r->items[k]->next_cfg); r->items[k]->next_cfg = NULL; }
        pthread_mutex_unlock(&r->mu);
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"blueprint\":");
        bp_json_write_string(&f, v->dir, strlen(v->dir));
        if (!ok) {
            free(v->load_error);
            v->load_error = strdup(err.msg);
            r->metrics.reload_failures++;
            bp_buf_adds(&f, ",\"error\":");
            bp_json_write_string(&f, err.msg, strlen(err.msg));
            bp_log("error", v->bp ? "blueprint change rejected; the previous version keeps running"
                                  : "blueprint failed to load", f.data);
            bp_blueprint_free(nb);
            bp_buf_free(&f);
            pthread_mutex_unlock(&r->admin_mu);
            continue;
        }
        /* swap: stop this vendor's workers (outside the lock: they report
         * outcomes through it while finishing), replace, restart */
        pthread_mutex_lock(&r->mu);
        size_t nstop = 0;
        bp_integration **stopping = calloc(r->n + 1, sizeof *stopping);
        for (size_t k = 0; k < r->n; k++) if (r->items[k]->vendor == v) stopping[nstop++] = r->items[k];
        pthread_mutex_unlock(&r->mu);
        for (size_t k = 0; k < nstop; k++) stop_worker(stopping[k]);
        free(stopping);
        pthread_mutex_lock(&r->mu);
        bp_blueprint *old = v->bp;
        v->bp = nb;
        free(v->load_error);
        v->load_error = NULL;
        if (!v->key || strcmp(v->key, nb->vendor) != 0) { free(v->key); v->key = strdup(nb->vendor); }
        for (size_t k = 0; k < r->n; k++) {
            bp_integration *it = r->items[k];
            if (it->vendor != v) continue;
            if (it->next_cfg) {
                bp_config_free(it->cfg);
                it->cfg = it->next_cfg;
                it->next_cfg = NULL;
            }
            start_worker(it);
        }
        r->metrics.reloads++;
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_unlock(&r->admin_mu);
        bp_blueprint_free(old);
        bp_log("info", "blueprint reloaded", f.data);
        bp_buf_free(&f);
    }
}
