/*
 * signins.c — the console's spent token ids (server.db's signins table): a
 * sign-in link's token taken, a session signed out.  Each id is good once;
 * the table's primary key decides the first claim, and an in-memory set
 * answers "was it spent?" on every request without touching the database.
 */
#include "service.h"

#include <sqlite3.h>

/* The token ids spent and not yet expired, into spent. */
void bp_signins_load(struct sqlite3 *db, bp_jti_set *spent)
{
    sqlite3_stmt *q;
    int64_t now = (int64_t)(bp_wall_ms() / 1000);
    if (sqlite3_prepare_v2(db, "SELECT jti, expires_at FROM signins WHERE expires_at >= ?1", -1, &q, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(q, 1, now);
    while (sqlite3_step(q) == SQLITE_ROW)
        bp_jti_set_add(spent, (const char *)sqlite3_column_text(q, 0), sqlite3_column_int64(q, 1), now);
    sqlite3_finalize(q);
}

/* The signins table holds every spent token id (sign-in links and signed-out
 * sessions: both random 128-bit ids), its primary key deciding the first. */
int bp_signins_spend(struct sqlite3 *db, bp_jti_set *spent, const char *jti, int64_t expires_at)
{
    sqlite3_stmt *q;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "DELETE FROM signins WHERE expires_at < ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (int64_t)(bp_wall_ms() / 1000));
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
    if (sqlite3_prepare_v2(db, "INSERT INTO signins(jti, expires_at) VALUES(?1, ?2)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, jti, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, expires_at);
        int st = sqlite3_step(q);
        rc = st == SQLITE_DONE ? 0 : (st & 0xff) == SQLITE_CONSTRAINT ? 1 : -1;
        sqlite3_finalize(q);
    }
    if (rc >= 0) bp_jti_set_add(spent, jti, expires_at, (int64_t)(bp_wall_ms() / 1000));
    return rc;
}
