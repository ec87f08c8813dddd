/*
 * batchstore.c — the batches a delivery loop has open, in the event store
 * (a `batches` table next to `events`), so that a process killed while a
 * vendor queues a batch asks for its status when it starts again instead of
 * sending the batch a second time.
 *
 * A row is written before the batch's request leaves (state `sending`) and
 * updated when the vendor answers that it queued the work (state `queued`,
 * with that answer: a restart runs the batch mapping again on the same
 * events and hands its reader this answer, which asks for the status
 * request again).  It is deleted in the commit that saves its events'
 * outcomes.  A `sending` row found at start means the request may or may
 * not have reached the vendor: its events go again (at least once, as a
 * single event's request in flight does).  The events stay `pending` in
 * `events` meanwhile (so cluster mode's offsets and retention treat them as
 * unfinished); the loop keeps them out of its one-by-one path.
 *
 * The table lives in its own file (store.c owns the connections and their
 * locks, lent through bp_store_db_hold and, for reads for people,
 * bp_store_rdb_hold).
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* AUTOINCREMENT: an id is never given twice, even once every batch is over
 * and its row deleted (outcome lines and Live Events' batch filter name a
 * batch by it). */
static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS batches("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  integration TEXT NOT NULL,"
    "  events TEXT NOT NULL,"              /* the events' ids in the batch's order, comma separated */
    "  state TEXT NOT NULL,"               /* sending, queued */
    "  answer_status INTEGER, answer_url TEXT, answer_body TEXT,"   /* queued: the answer that said so */
    "  polls INTEGER NOT NULL DEFAULT 0,"  /* status requests sent */
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);";

/* Run sql with up to 6 parameters: text (NULL: SQL NULL) or, where
 * ints[i] is set, the integer nums[i].  Returns rows changed, -1 on error. */
static long run(bp_store *s, const char *sql, int n, const char *const *texts, const int64_t *nums)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q;
    long changed = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK) {
        for (int i = 0; i < n; i++) {
            if (texts && texts[i]) sqlite3_bind_text(q, i + 1, texts[i], -1, SQLITE_STATIC);
            else if (nums) sqlite3_bind_int64(q, i + 1, nums[i]);
            else sqlite3_bind_null(q, i + 1);
        }
        if (sqlite3_step(q) == SQLITE_DONE) changed = (long)sqlite3_changes(db);
        sqlite3_finalize(q);
    }
    bp_store_db_release(s);
    return changed;
}

/* A table made before ids were AUTOINCREMENT (which reused the id of a
 * batch over once the table was empty) is copied into one that is. */
static const char MIGRATE[] =
    "BEGIN;"
    "ALTER TABLE batches RENAME TO batches_reused_ids;"
    "%s"
    "INSERT INTO batches SELECT * FROM batches_reused_ids;"
    "DROP TABLE batches_reused_ids;"
    "COMMIT;";

static int reuses_ids(sqlite3 *db)
{
    sqlite3_stmt *q;
    int old = 0;
    if (sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE type='table' AND name='batches'", -1, &q, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_step(q) == SQLITE_ROW) old = !strstr((const char *)sqlite3_column_text(q, 0), "AUTOINCREMENT");
    sqlite3_finalize(q);
    return old;
}

int bp_store_batches_init(bp_store *s)
{
    sqlite3 *db = bp_store_db_hold(s);
    int rc = 0;
    if (reuses_ids(db)) {
        char sql[sizeof MIGRATE + sizeof SCHEMA];
        snprintf(sql, sizeof sql, MIGRATE, SCHEMA);
        if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            rc = -1;
        }
    }
    if (rc == 0) rc = sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
    bp_store_db_release(s);
    return rc;
}

int64_t bp_store_batch_add(bp_store *s, const char *integration, const int64_t *ids, size_t n, int64_t now)
{
    bp_buf list;
    bp_buf_init(&list);
    for (size_t i = 0; i < n; i++) bp_buf_printf(&list, "%s%lld", i ? "," : "", (long long)ids[i]);
    char at[24];
    snprintf(at, sizeof at, "%lld", (long long)now);
    const char *texts[] = { integration, list.data, at };
    int64_t id = -1;
    if (bp_store_begin(s) == 0) {
        sqlite3 *db = bp_store_db_hold(s);
        int ok = run(s, "INSERT INTO batches(integration, events, state, created_at, updated_at) "
                        "VALUES(?1, ?2, 'sending', ?3, ?3)", 3, texts, NULL) == 1;
        if (ok) id = sqlite3_last_insert_rowid(db);
        bp_store_db_release(s);
        if (bp_store_commit(s, ok) < 0) id = -1;
    }
    bp_buf_free(&list);
    return id;
}

int bp_store_batch_queued(bp_store *s, int64_t id, int status, const char *url, const char *body, int polls,
                          int64_t now)
{
    char idt[24], st[16], pl[16], at[24];
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    snprintf(st, sizeof st, "%d", status);
    snprintf(pl, sizeof pl, "%d", polls);
    snprintf(at, sizeof at, "%lld", (long long)now);
    const char *texts[] = { idt, st, url, body ? body : "", pl, at };
    if (bp_store_begin(s) < 0) return -1;
    int ok = run(s, "UPDATE batches SET state='queued', answer_status=?2, answer_url=?3, answer_body=?4, polls=?5, "
                    "updated_at=?6 WHERE id=?1", 6, texts, NULL) == 1;
    return bp_store_commit(s, ok);
}

int bp_store_batch_delete(bp_store *s, int64_t id)
{
    return run(s, "DELETE FROM batches WHERE id=?1", 1, NULL, &id) < 0 ? -1 : 0;
}

int bp_store_batch_forget(bp_store *s, const char *integration)
{
    const char *texts[] = { integration };
    return run(s, "DELETE FROM batches WHERE integration=?1", 1, texts, NULL) < 0 ||
           run(s, "DELETE FROM handed_events WHERE handed IN (SELECT id FROM handed WHERE integration=?1)", 1, texts,
               NULL) < 0 ||
           run(s, "DELETE FROM handed WHERE integration=?1", 1, texts, NULL) < 0 ? -1 : 0;
}

static int each_on(sqlite3 *db, const char *integration, bp_store_batch_fn fn, void *ctx)
{
    sqlite3_stmt *q;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT id, events, state, answer_status, answer_url, answer_body, polls FROM batches "
                               "WHERE integration=?1 ORDER BY id", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            bp_store_batch_row r = {
                sqlite3_column_int64(q, 0), (const char *)sqlite3_column_text(q, 1),
                !strcmp((const char *)sqlite3_column_text(q, 2), "queued"), sqlite3_column_int(q, 3),
                (const char *)sqlite3_column_text(q, 4), (const char *)sqlite3_column_text(q, 5),
                (size_t)sqlite3_column_bytes(q, 5), sqlite3_column_int(q, 6),
            };
            fn(ctx, &r);
        }
        rc = rc == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(q);
    }
    return rc;
}

int bp_store_batch_each(bp_store *s, const char *integration, bp_store_batch_fn fn, void *ctx)
{
    int rc = each_on(bp_store_db_hold(s), integration, fn, ctx);
    bp_store_db_release(s);
    return rc;
}

int bp_store_batch_each_read(bp_store *s, const char *integration, bp_store_batch_fn fn, void *ctx)
{
    int rc = each_on(bp_store_rdb_hold(s), integration, fn, ctx);
    bp_store_rdb_release(s);
    return rc;
}

int bp_store_batch_event(bp_store *s, int64_t id, bp_stored *e)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q;
    int found = 0;
    memset(e, 0, sizeof *e);
    if (sqlite3_prepare_v2(db, "SELECT id, body, attempts, failures, done_requests, next_at, idx, ksrc, koff FROM events "
                               "WHERE id=?1 AND state='pending'", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, id);
        if (sqlite3_step(q) == SQLITE_ROW) {
            found = 1;
            e->id = sqlite3_column_int64(q, 0);
            e->body = bp_strdup((const char *)sqlite3_column_text(q, 1));
            e->body_len = (size_t)sqlite3_column_bytes(q, 1);
            e->attempts = sqlite3_column_int(q, 2);
            e->failures = sqlite3_column_int(q, 3);
            e->done_requests = sqlite3_column_int(q, 4);
            e->next_at = sqlite3_column_int64(q, 5);
            e->idx = (long)sqlite3_column_int64(q, 6);
            e->ksrc = sqlite3_column_int64(q, 7);
            e->koff = sqlite3_column_int64(q, 8);
        }
        sqlite3_finalize(q);
    }
    bp_store_db_release(s);
    return found;
}

/* ---- cluster mode: batches handed over ---------------------------------------------------------
 *
 * A batch the vendor queued is announced on NAME.outcomes (cluster.c) and
 * every node keeps it in `handed` (with its events' Kafka sources in
 * `handed_events`: event ids are each node's own) until an outcome of one
 * of its events closes it: the batch is over wherever it ran.  Events it
 * covers are left out of the pending query (store.c), so a node that takes
 * their partition over never sends them alone or in a new batch; its loop
 * adopts the batch once every event is stored here (a `batches` row, state
 * queued, with the recorded answer) and asks for its status.  The handed
 * row stays until the outcomes close it: the node running the batch has its
 * events in memory (so it does not adopt it twice), and any node that owns
 * the partition after it (this one after a restart too) adopts it again. */

int bp_store_handed_add(bp_store *s, const bp_handed *h, int64_t now)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q = NULL;
    int ok = sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO handed(node, batch, integration, n, answer_status, answer_url, "
                                    "answer_body, polls, created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                                -1, &q, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(q, 1, h->node, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, h->batch);
        sqlite3_bind_text(q, 3, h->integration, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, (int64_t)h->n);
        sqlite3_bind_int(q, 5, h->answer_status);
        sqlite3_bind_text(q, 6, h->answer_url ? h->answer_url : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 7, h->answer_body ? h->answer_body : "", (int)h->answer_len, SQLITE_STATIC);
        sqlite3_bind_int(q, 8, h->polls);
        sqlite3_bind_int64(q, 9, now);
        ok = sqlite3_step(q) == SQLITE_DONE;
    }
    sqlite3_finalize(q);
    /* read again (a store that refused the viewer's commit): already there */
    int64_t id = ok && sqlite3_changes(db) == 1 ? sqlite3_last_insert_rowid(db) : 0;
    q = NULL;
    if (id && (ok = sqlite3_prepare_v2(db, "INSERT INTO handed_events(handed, pos, ktopic, kpart, koff, kidx) "
                                           "VALUES(?1, ?2, ?3, ?4, ?5, ?6)", -1, &q, NULL) == SQLITE_OK)) {
        for (size_t i = 0; ok && i < h->n; i++) {
            sqlite3_reset(q);
            sqlite3_bind_int64(q, 1, id);
            sqlite3_bind_int64(q, 2, (int64_t)i);
            sqlite3_bind_text(q, 3, h->events[i].topic, -1, SQLITE_STATIC);
            sqlite3_bind_int(q, 4, h->events[i].partition);
            sqlite3_bind_int64(q, 5, h->events[i].offset);
            sqlite3_bind_int(q, 6, h->events[i].index);
            ok = sqlite3_step(q) == SQLITE_DONE;
        }
    }
    sqlite3_finalize(q);
    bp_store_db_release(s);
    return ok ? 0 : -1;
}

int bp_store_handed_drop(bp_store *s, int64_t id)
{
    return run(s, "DELETE FROM handed_events WHERE handed=?1", 1, NULL, &id) < 0 ||
           run(s, "DELETE FROM handed WHERE id=?1", 1, NULL, &id) < 0 ? -1 : 0;
}

int bp_store_handed_close(bp_store *s, const bp_source *src)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q;
    int64_t ids[8];
    int n = 0, rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT DISTINCT handed FROM handed_events WHERE ktopic=?1 AND kpart=?2 AND koff=?3 AND kidx=?4",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, src->topic, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, src->partition);
        sqlite3_bind_int64(q, 3, src->offset);
        sqlite3_bind_int(q, 4, src->index);
        while ((rc = sqlite3_step(q)) == SQLITE_ROW && n < 8) ids[n++] = sqlite3_column_int64(q, 0);
        rc = rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
        sqlite3_finalize(q);
    }
    for (int i = 0; rc == 0 && i < n; i++) rc = bp_store_handed_drop(s, ids[i]);
    bp_store_db_release(s);
    return rc;
}

int bp_store_handed_any(bp_store *s)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q;
    int any = 1;   /* unknown: look */
    if (sqlite3_prepare_v2(db, "SELECT EXISTS(SELECT 1 FROM handed)", -1, &q, NULL) == SQLITE_OK) {
        if (sqlite3_step(q) == SQLITE_ROW) any = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
    }
    bp_store_db_release(s);
    return any;
}

int bp_store_handed_integrations(bp_store *s, void (*fn)(void *ctx, const char *integration), void *ctx)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT DISTINCT integration FROM handed", -1, &q, NULL) == SQLITE_OK) {
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) fn(ctx, (const char *)sqlite3_column_text(q, 0));
        rc = rc == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(q);
    }
    bp_store_db_release(s);
    return rc;
}

int bp_store_handed_each(bp_store *s, const char *integration, void (*fn)(void *ctx, const bp_handed_row *r), void *ctx)
{
    sqlite3 *db = bp_store_db_hold(s);
    sqlite3_stmt *q, *ev = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT id, n, answer_status, answer_url, answer_body, polls FROM handed "
                               "WHERE integration=?1 ORDER BY id", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT e.id, e.ksrc, e.created_at FROM handed_events h JOIN events e ON "
                               "e.ktopic=h.ktopic AND e.kpart=h.kpart AND e.koff=h.koff AND e.kidx=h.kidx "
                               "WHERE h.handed=?1 AND e.ktopic IS NOT NULL AND e.ksrc IS NOT NULL AND "
                               "e.state='pending' ORDER BY h.pos", -1, &ev, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            bp_handed_row r = {
                sqlite3_column_int64(q, 0), (size_t)sqlite3_column_int64(q, 1), NULL, NULL, 0, 0,
                sqlite3_column_int(q, 2), (const char *)sqlite3_column_text(q, 3),
                (const char *)sqlite3_column_text(q, 4), (size_t)sqlite3_column_bytes(q, 4), sqlite3_column_int(q, 5),
            };
            int64_t *ids = bp_calloc(r.n + 1, sizeof *ids), *slots = bp_calloc(r.n + 1, sizeof *slots);
            sqlite3_reset(ev);
            sqlite3_bind_int64(ev, 1, r.id);
            while (sqlite3_step(ev) == SQLITE_ROW && r.present < r.n) {
                int64_t at = sqlite3_column_int64(ev, 2);
                ids[r.present] = sqlite3_column_int64(ev, 0);
                slots[r.present++] = sqlite3_column_int64(ev, 1);
                if (!r.oldest || at < r.oldest) r.oldest = at;
            }
            r.ids = ids;
            r.slots = slots;
            fn(ctx, &r);
            free(ids);
            free(slots);
        }
        rc = rc == SQLITE_DONE ? 0 : -1;
    }
    sqlite3_finalize(q);
    sqlite3_finalize(ev);
    bp_store_db_release(s);
    return rc;
}

int64_t bp_store_handed_adopt(bp_store *s, const char *integration, const int64_t *ids, size_t n,
                              const bp_store_batch_row *answer, int64_t now)
{
    bp_buf list;
    bp_buf_init(&list);
    for (size_t i = 0; i < n; i++) bp_buf_printf(&list, "%s%lld", i ? "," : "", (long long)ids[i]);
    int64_t id = -1;
    if (bp_store_begin(s) == 0) {
        sqlite3 *db = bp_store_db_hold(s);
        sqlite3_stmt *q;
        int ok = sqlite3_prepare_v2(db, "INSERT INTO batches(integration, events, state, answer_status, answer_url, "
                                        "answer_body, polls, created_at, updated_at) "
                                        "VALUES(?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?7)", -1, &q, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 2, list.data, -1, SQLITE_STATIC);
            sqlite3_bind_int(q, 3, answer->answer_status);
            sqlite3_bind_text(q, 4, answer->answer_url ? answer->answer_url : "", -1, SQLITE_STATIC);
            sqlite3_bind_text(q, 5, answer->answer_body ? answer->answer_body : "", (int)answer->answer_len,
                              SQLITE_STATIC);
            sqlite3_bind_int(q, 6, answer->polls);
            sqlite3_bind_int64(q, 7, now);
            ok = sqlite3_step(q) == SQLITE_DONE;
            sqlite3_finalize(q);
        }
        if (ok) id = sqlite3_last_insert_rowid(db);
        bp_store_db_release(s);
        if (bp_store_commit(s, ok) < 0 || !ok) id = -1;
    }
    bp_buf_free(&list);
    return id;
}
