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
 * The table lives in its own file (store.c owns the connection and its
 * lock, lent through bp_store_db_hold).
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS batches("
    /* AUTOINCREMENT: an id is never given again once its row is deleted
     * (a plain rowid would restart at 1 whenever the table is empty, and
     * each outcome line's "delivered in batch N" would name many batches) */
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

int bp_store_batches_init(bp_store *s)
{
    sqlite3 *db = bp_store_db_hold(s);
    int rc = sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
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
    return run(s, "DELETE FROM batches WHERE integration=?1", 1, texts, NULL) < 0 ? -1 : 0;
}

int bp_store_batch_each(bp_store *s, const char *integration, bp_store_batch_fn fn, void *ctx)
{
    sqlite3 *db = bp_store_db_hold(s);
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
    bp_store_db_release(s);
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
