/*
 * store.c — the durable event store (SQLite, WAL mode) under --state.
 *
 * An event is written before any attempt, and its state after each attempt,
 * so a run killed at any moment (SIGKILL included) loses nothing: the next
 * run picks up every event still pending.  WAL with synchronous=NORMAL
 * survives a process crash; only a power loss can lose the last commits.
 * The store holds the events as received (they never contain secrets) and
 * redacted outcome lines, nothing else: it is safe to inspect with sqlite3.
 */
#include "internal.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct bp_store {
    sqlite3 *db;
    sqlite3_stmt *insert, *update, *pending, *once_get, *once_put;
};

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    /* a delivery run rewrites each event's row and its once-key soon after
     * inserting them: a 16 MiB page cache and checkpoints every ~16 MiB of
     * WAL keep those pages from being read back and copied out repeatedly */
    "PRAGMA cache_size=-16384;"
    "PRAGMA wal_autocheckpoint=4000;"
    "CREATE TABLE IF NOT EXISTS events("
    "  id INTEGER PRIMARY KEY,"
    "  state TEXT NOT NULL,"               /* pending delivered dropped error dead held */
    "  body TEXT NOT NULL,"                /* the event as received */
    "  message_id TEXT,"
    "  idx INTEGER,"                       /* position in the input of the run that added it */
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  failures INTEGER NOT NULL DEFAULT 0," /* consecutive failures of the current request */
    "  done_requests INTEGER NOT NULL DEFAULT 0,"
    "  next_at INTEGER NOT NULL DEFAULT 0,"
    "  last_status INTEGER, reason TEXT, response TEXT, outcome TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS events_by_state ON events(state, id);"
    /* Signal retries deliveries too: one stored event per message id. */
    "CREATE UNIQUE INDEX IF NOT EXISTS events_by_message_id ON events(message_id) WHERE message_id IS NOT NULL;"
    /* one b-tree keyed by the text (no rowid table plus key index): a mark
     * is one insert, and a delivery run makes one per contact */
    "CREATE TABLE IF NOT EXISTS once_keys(key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);";

/* SQLite's default busy handler backs off up to 100 ms per try; a paced
 * worker and the intake share each store, and such a back-off shows up as
 * a hole in the request stream.  Locks here are held for microseconds, so
 * poll every millisecond instead (for at most 5 s). */
static int busy_wait(void *ud, int tries)
{
    (void)ud;
    if (tries >= 5000) return 0;
    usleep(1000);
    return 1;
}

int bp_store_busy_handler(struct sqlite3 *db) { return sqlite3_busy_handler(db, busy_wait, NULL); }

static int fail(bp_store *s, bp_error *err, const char *what)
{
    bp_error_set(err, "state store: %s: %s", what, s && s->db ? sqlite3_errmsg(s->db) : "cannot open");
    return -1;
}

static int prepare(bp_store *s, sqlite3_stmt **st, const char *sql, bp_error *err)
{
    return sqlite3_prepare_v2(s->db, sql, -1, st, NULL) == SQLITE_OK ? 0 : fail(s, err, "prepare");
}

bp_store *bp_store_open(const char *dir, bp_error *err)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        bp_error_set(err, "state directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/blueprint.db", dir);
    bp_store *s = calloc(1, sizeof *s);
    if (!s) abort();
    if (sqlite3_open(path, &s->db) != SQLITE_OK || bp_store_busy_handler(s->db) != SQLITE_OK ||
        sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK ||
        prepare(s, &s->insert, "INSERT INTO events(state, body, idx, created_at, updated_at, message_id) "
                               "VALUES('pending', ?1, ?2, ?3, ?3, ?4) ON CONFLICT DO NOTHING", err) < 0 ||
        prepare(s, &s->update, "UPDATE events SET state=?2, attempts=?3, failures=?4, done_requests=?5, "
                               "next_at=?6, last_status=?7, reason=?8, response=?9, outcome=?10, updated_at=?11 "
                               "WHERE id=?1", err) < 0 ||
        prepare(s, &s->pending, "SELECT id, body, attempts, failures, done_requests, next_at, idx FROM events "
                                "WHERE state='pending' AND id > ?1 ORDER BY id LIMIT ?2", err) < 0 ||
        prepare(s, &s->once_get, "SELECT at FROM once_keys WHERE key=?1", err) < 0 ||
        prepare(s, &s->once_put, "INSERT OR REPLACE INTO once_keys(key, at) VALUES(?1, ?2)", err) < 0) {
        if (!err->msg[0] || !strstr(err->msg, "state store")) fail(s, err, path);
        bp_store_close(s);
        return NULL;
    }
    return s;
}

void bp_store_close(bp_store *s)
{
    if (!s) return;
    sqlite3_finalize(s->insert);
    sqlite3_finalize(s->update);
    sqlite3_finalize(s->pending);
    sqlite3_finalize(s->once_get);
    sqlite3_finalize(s->once_put);
    sqlite3_close(s->db);
    free(s);
}

int bp_store_exec(bp_store *s, const char *sql)
{
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int64_t bp_store_add(bp_store *s, const char *json, size_t len, long idx, const char *message_id, int64_t now)
{
    sqlite3_reset(s->insert);
    sqlite3_bind_text(s->insert, 1, json, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(s->insert, 2, idx);
    sqlite3_bind_int64(s->insert, 3, now);
    if (message_id) sqlite3_bind_text(s->insert, 4, message_id, -1, SQLITE_STATIC);
    else sqlite3_bind_null(s->insert, 4);
    if (sqlite3_step(s->insert) != SQLITE_DONE) return -1;
    if (sqlite3_changes(s->db) == 0) return 0;   /* a message id already stored */
    return sqlite3_last_insert_rowid(s->db);
}

/* Text is bound SQLITE_STATIC (no copy): every statement here binds all
 * its parameters afresh before each step, and the strings outlive the step. */
int bp_store_update(bp_store *s, const bp_stored *e, const char *state, int last_status, const char *reason,
                    const char *response, const char *outcome, int64_t now)
{
    sqlite3_stmt *u = s->update;
    sqlite3_reset(u);
    sqlite3_bind_int64(u, 1, e->id);
    sqlite3_bind_text(u, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_int(u, 3, e->attempts);
    sqlite3_bind_int(u, 4, e->failures);
    sqlite3_bind_int(u, 5, e->done_requests);
    sqlite3_bind_int64(u, 6, e->next_at);
    if (last_status) sqlite3_bind_int(u, 7, last_status); else sqlite3_bind_null(u, 7);
    if (reason) sqlite3_bind_text(u, 8, reason, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 8);
    if (response) sqlite3_bind_text(u, 9, response, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 9);
    if (outcome) sqlite3_bind_text(u, 10, outcome, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 10);
    sqlite3_bind_int64(u, 11, now);
    return sqlite3_step(u) == SQLITE_DONE ? 0 : -1;
}

int bp_store_pending(bp_store *s, int64_t after_id, int limit, bp_stored **out, size_t *n)
{
    sqlite3_stmt *q = s->pending;
    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, after_id);
    sqlite3_bind_int(q, 2, limit);
    *n = 0;
    *out = calloc((size_t)limit + 1, sizeof **out);
    if (!*out) abort();
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        bp_stored *e = &(*out)[(*n)++];
        e->id = sqlite3_column_int64(q, 0);
        e->body = strdup((const char *)sqlite3_column_text(q, 1));
        e->body_len = (size_t)sqlite3_column_bytes(q, 1);
        e->attempts = sqlite3_column_int(q, 2);
        e->failures = sqlite3_column_int(q, 3);
        e->done_requests = sqlite3_column_int(q, 4);
        e->next_at = sqlite3_column_int64(q, 5);
        e->idx = (long)sqlite3_column_int64(q, 6);
    }
    return rc == SQLITE_DONE ? 0 : -1;
}

int bp_store_once_seen(bp_store *s, const char *key, int64_t since)
{
    sqlite3_reset(s->once_get);
    sqlite3_bind_text(s->once_get, 1, key, -1, SQLITE_STATIC);
    int seen = sqlite3_step(s->once_get) == SQLITE_ROW && sqlite3_column_int64(s->once_get, 0) >= since;
    sqlite3_reset(s->once_get);
    return seen;
}

int bp_store_once_mark(bp_store *s, const char *key, int64_t now)
{
    sqlite3_reset(s->once_put);
    sqlite3_bind_text(s->once_put, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->once_put, 2, now);
    return sqlite3_step(s->once_put) == SQLITE_DONE ? 0 : -1;
}

char *bp_store_meta_get(bp_store *s, const char *key)
{
    sqlite3_stmt *q;
    char *v = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key=?1", -1, &q, NULL) != SQLITE_OK) return NULL;
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0)) v = strdup((const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    return v;
}

int bp_store_meta_set(bp_store *s, const char *key, const char *value)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    if (value) sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC); else sqlite3_bind_null(q, 2);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(q);
    return rc;
}

/* Move events between states; returns how many moved, -1 on error.
 * id 0 = all events in `from`. */
long bp_store_move(bp_store *s, const char *from, const char *to, int64_t id)
{
    sqlite3_stmt *q;
    const char *sql = id ? "UPDATE events SET state=?2, failures=0, next_at=0 WHERE state=?1 AND id=?3"
                         : "UPDATE events SET state=?2, failures=0, next_at=0 WHERE state=?1";
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK) return -1;
    sqlite3_bind_text(q, 1, from, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, to, -1, SQLITE_STATIC);
    if (id) sqlite3_bind_int64(q, 3, id);
    long n = sqlite3_step(q) == SQLITE_DONE ? (long)sqlite3_changes(s->db) : -1;
    sqlite3_finalize(q);
    return n;
}

#define ROW_COLUMNS "id, message_id, attempts, last_status, reason, response, outcome, updated_at, body"

/* Step through q, handing each row (ROW_COLUMNS, in that order) to fn. */
static void each_row(sqlite3_stmt *q, bp_store_row_fn fn, void *ctx)
{
    while (sqlite3_step(q) == SQLITE_ROW) {
        bp_store_row r = {
            sqlite3_column_int64(q, 0), (const char *)sqlite3_column_text(q, 1), sqlite3_column_int(q, 2),
            sqlite3_column_int(q, 3), (const char *)sqlite3_column_text(q, 4), (const char *)sqlite3_column_text(q, 5),
            (const char *)sqlite3_column_text(q, 6), sqlite3_column_int64(q, 7), (const char *)sqlite3_column_text(q, 8),
        };
        fn(ctx, &r);
    }
    sqlite3_finalize(q);
}

/* Call fn for each event in `state` (id order) with its stored columns. */
int bp_store_each(bp_store *s, const char *state, bp_store_row_fn fn, void *ctx)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT " ROW_COLUMNS " FROM events WHERE state=?1 ORDER BY id", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, state, -1, SQLITE_STATIC);
    each_row(q, fn, ctx);
    return 0;
}

long bp_store_count(bp_store *s, const char *state)
{
    sqlite3_stmt *q;
    long n = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM events WHERE state=?1", -1, &q, NULL) != SQLITE_OK) return -1;
    sqlite3_bind_text(q, 1, state, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) n = (long)sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}

/* The most recently judged events (those with an outcome line), newest
 * first, optionally only in one state. */
int bp_store_recent(bp_store *s, const char *state, int limit, bp_store_row_fn fn, void *ctx)
{
    sqlite3_stmt *q;
    const char *sql = state
        ? "SELECT " ROW_COLUMNS " FROM events WHERE outcome IS NOT NULL AND state=?2 "
          "ORDER BY updated_at DESC, id DESC LIMIT ?1"
        : "SELECT " ROW_COLUMNS " FROM events WHERE outcome IS NOT NULL ORDER BY updated_at DESC, id DESC LIMIT ?1";
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK) return -1;
    sqlite3_bind_int(q, 1, limit);
    if (state) sqlite3_bind_text(q, 2, state, -1, SQLITE_STATIC);
    each_row(q, fn, ctx);
    return 0;
}
