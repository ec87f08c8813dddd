/*
 * serverdb.c — STATE/server.db: its schema, opening it (owner-only: it
 * holds sealed secrets), and the one-time moves of state an earlier version
 * kept elsewhere.  What each table holds is said in the schema; the tables
 * are read and written by the files named for them (registry.c:
 * integrations and revisions, audit.c, signins.c, revisions.c: the
 * editor's blueprint revisions).
 */
#include "service.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
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

int bp_serverdb_exec(struct sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* The state directory holds secrets: it is the owner's only, and so is
 * everything created in it (SQLite's WAL and SHM files included). */
struct sqlite3 *bp_serverdb_open(const char *state_dir, bp_error *err)
{
    char path[BP_PATH_MAX];
    sqlite3 *db = NULL;
    mode_t old_mask = umask(077);
    mkdir(state_dir, 0700);
    chmod(state_dir, 0700);
    snprintf(path, sizeof path, "%s/server.db", state_dir);
    int ok = sqlite3_open(path, &db) == SQLITE_OK && bp_store_busy_handler(db) == SQLITE_OK &&
             sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK;
    umask(old_mask);
    if (!ok) {
        bp_error_set(err, "state store %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    chmod(path, 0600);
    static const char *const sidecars[] = { "server.db-wal", "server.db-shm", "jwt.secret" };
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", state_dir, sidecars[i]); chmod(path, 0600); }
    return db;
}

/* serve kept one store per integration (STATE/integrations/ID/blueprint.db)
 * before one store held them all: bring their events over once. */
/* Copy the events, once-keys and meta of a single-integration store (the
 * layout `serve` used before one store held them all) under `integration`. */
static int import_store(bp_store *s, const char *integration, const char *path)
{
    char prefix[300];   /* a directory name and a separator */
    snprintf(prefix, sizeof prefix, "%s\x1f", integration);
    const char *args[] = { path, integration, prefix };
    if (bp_store_exec(s, "ATTACH DATABASE ?1 AS old", 1, args) < 0) return -1;
    if (bp_store_begin(s) < 0) { bp_store_exec(s, "DETACH DATABASE old", 0, NULL); return -1; }
    int ok = bp_store_exec(s, "INSERT OR IGNORE INTO events(integration, state, body, message_id, idx, attempts, failures, "
                           "done_requests, next_at, last_status, reason, response, outcome, created_at, updated_at) "
                           "SELECT ?2, state, body, message_id, idx, attempts, failures, done_requests, next_at, "
                           "last_status, reason, response, outcome, created_at, updated_at FROM old.events ORDER BY id",
                        2, args) >= 0 &&
             bp_store_exec(s, "INSERT OR REPLACE INTO once_keys SELECT ?3 || key, at FROM old.once_keys", 3, args) >= 0 &&
             bp_store_exec(s, "INSERT OR REPLACE INTO meta SELECT ?3 || key, value FROM old.meta", 3, args) >= 0;
    int rc = bp_store_commit(s, ok);
    bp_store_exec(s, "DETACH DATABASE old", 0, NULL);
    return rc;
}

void bp_serverdb_import_old_stores(const char *state_dir, bp_store *store)
{
    char dir[BP_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/integrations", state_dir);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[BP_PATH_MAX + 260], path[BP_PATH_MAX + 300];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        snprintf(path, sizeof path, "%s/blueprint.db", sub);
        if (access(path, F_OK) != 0) continue;
        bp_buf f;
        bp_buf_init(&f);
        bp_log_field(&f, "integration", e->d_name);
        if (import_store(store, e->d_name, path) == 0) {
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
