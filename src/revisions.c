/*
 * revisions.c — the console editor's blueprint revisions (server.db's
 * blueprint_revisions and blueprint_files): each save of a blueprint folder
 * with who, when, why and the diff, every file's content stored once
 * however many revisions have it, and retention (the newest N, none older
 * than D days, never the newest).  Callers hold the registry's admin lock.
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REVISIONS_KEEP 50     /* the editor's revisions kept per blueprint by default */
#define REVISIONS_DAYS 365    /* … and for how long */

static int env_positive(const char *name, int otherwise)
{
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : otherwise;
}

bp_revisions_kept bp_revisions_policy(void)
{
    bp_revisions_kept k = { env_positive("BLUEPRINT_REVISIONS_KEEP", REVISIONS_KEEP),
                            env_positive("BLUEPRINT_REVISIONS_DAYS", REVISIONS_DAYS) };
    return k;
}

/* Each file of files_json ({"NAME":"content",…}) into blueprint_files once,
 * keyed by its SHA-256; manifest gets {"NAME":"SHA256",…}.  In a
 * transaction, admin_mu held. */
static int store_files(sqlite3 *db, const char *files_json, bp_buf *manifest)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    sqlite3_stmt *q = NULL;
    size_t len = strlen(files_json);
    bp_json_limits whole = { len + 1, 0 };   /* ours, as large as the folder: not an event's limit */
    int ok = bp_json_parse(&d, files_json, len, &whole, &err) == 0 && d.nodes[0].type == BP_JOBJECT &&
             sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO blueprint_files(sha256, content) VALUES(?1, ?2)", -1, &q,
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
static int load_files(sqlite3 *db, const char *manifest, bp_buf *out)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    sqlite3_stmt *q = NULL;
    int ok = bp_json_parse(&d, manifest, strlen(manifest), NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT &&
             sqlite3_prepare_v2(db, "SELECT content FROM blueprint_files WHERE sha256=?1", -1, &q, NULL) == SQLITE_OK;
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
static void prune_revisions(sqlite3 *db, const bp_revisions_kept *keep, const char *vendor, int newest)
{
    sqlite3_stmt *q;
    int64_t before = (int64_t)bp_wall_ms() - (int64_t)keep->days * 86400000;
    int first = 0, last = 0, n = 0, files = 0;
    if (bp_serverdb_exec(db, "BEGIN IMMEDIATE") < 0) return;
    if (sqlite3_prepare_v2(db, "SELECT min(number), max(number), count(*) FROM blueprint_revisions WHERE vendor=?1 "
                                  "AND number < ?2 AND (number <= ?2 - ?3 OR created_at < ?4)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, newest);
        sqlite3_bind_int(q, 3, keep->count);
        sqlite3_bind_int64(q, 4, before);
        if (sqlite3_step(q) == SQLITE_ROW) { first = sqlite3_column_int(q, 0); last = sqlite3_column_int(q, 1); n = sqlite3_column_int(q, 2); }
        sqlite3_finalize(q);
    }
    int ok = n > 0 && sqlite3_prepare_v2(db, "DELETE FROM blueprint_revisions WHERE vendor=?1 AND number < ?2 AND "
                                                "(number <= ?2 - ?3 OR created_at < ?4)", -1, &q, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, newest);
        sqlite3_bind_int(q, 3, keep->count);
        sqlite3_bind_int64(q, 4, before);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    if (ok) {
        ok = bp_serverdb_exec(db, "DELETE FROM blueprint_files WHERE sha256 NOT IN (SELECT f.value FROM blueprint_revisions, "
                        "json_each(blueprint_revisions.files) f)") == 0;
        files = sqlite3_changes(db);
    }
    bp_serverdb_exec(db, ok ? "COMMIT" : "ROLLBACK");
    if (!ok) return;
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s: %d blueprint revision%s pruned (numbers %d to %d; kept: the newest %d, none older than %d "
                  "days), %d file version%s no revision has any more removed", vendor, n, n == 1 ? "" : "s", first, last,
                  keep->count, keep->days, files, files == 1 ? "" : "s");
    bp_audit_write(db, NULL, "blueprint.prune", NULL, 0, 0, what.data);
    bp_buf_free(&what);
}

/* server.db before user_version 1 kept every file's content in every
 * revision: move them into blueprint_files once (shrinking the file). */
int bp_revisions_migrate(struct sqlite3 *db, bp_error *err)
{
    sqlite3_stmt *q, *u = NULL;
    int version = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK) {
        if (sqlite3_step(q) == SQLITE_ROW) version = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
    }
    if (version >= 1) return 0;
    if (bp_serverdb_exec(db, "BEGIN IMMEDIATE") < 0) { bp_error_set(err, "server.db: %s", sqlite3_errmsg(db)); return -1; }
    int ok = sqlite3_prepare_v2(db, "SELECT vendor, number, files FROM blueprint_revisions", -1, &q, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "UPDATE blueprint_revisions SET files=?3 WHERE vendor=?1 AND number=?2", -1, &u,
                                NULL) == SQLITE_OK;
    long moved = 0;
    while (ok && sqlite3_step(q) == SQLITE_ROW) {
        bp_buf manifest;
        bp_buf_init(&manifest);
        ok = store_files(db, (const char *)sqlite3_column_text(q, 2), &manifest) == 0;
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
    if (ok) ok = bp_serverdb_exec(db, "PRAGMA user_version=1") == 0;
    if (!ok) bp_error_set(err, "server.db: could not move the blueprint revisions' files into blueprint_files: %s",
                          sqlite3_errmsg(db));
    bp_serverdb_exec(db, ok ? "COMMIT" : "ROLLBACK");
    if (ok && moved) {
        bp_serverdb_exec(db, "VACUUM");
        char detail[64];
        snprintf(detail, sizeof detail, "\"revisions\":%ld", moved);
        bp_log("info", "blueprint revisions now keep each file once (server.db migrated)", detail);
    }
    return ok ? 0 : -1;
}

int bp_revisions_latest(struct sqlite3 *db, const char *vendor, int *number, char revision[BP_REVISION_LEN])
{
    sqlite3_stmt *q;
    *number = 0;
    revision[0] = '\0';
    if (sqlite3_prepare_v2(db, "SELECT number, revision FROM blueprint_revisions WHERE vendor=?1 "
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

int bp_revisions_record(struct sqlite3 *db, const bp_revisions_kept *keep, const char *vendor, bp_edit_rev *rev,
                        const bp_claims *who, const char *action)
{
    int last;
    char prev[BP_REVISION_LEN];
    if (bp_revisions_latest(db, vendor, &last, prev) < 0) return -1;
    who = bp_audit_who(who);
    rev->number = last + 1;
    rev->created_at = (int64_t)bp_wall_ms();
    snprintf(rev->actor, sizeof rev->actor, "%s", who->sub[0] ? who->sub : "(no subject)");
    sqlite3_stmt *q;
    bp_buf manifest;
    bp_buf_init(&manifest);
    int ok = bp_serverdb_exec(db, "BEGIN IMMEDIATE") == 0;
    if (ok) ok = store_files(db, rev->files_json, &manifest) == 0 &&
                 sqlite3_prepare_v2(db, "INSERT INTO blueprint_revisions(vendor, number, revision, actor, created_at, "
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
    bp_serverdb_exec(db, ok ? "COMMIT" : "ROLLBACK");
    bp_buf_free(&manifest);
    if (!ok) return -1;
    if (action) {
        bp_buf what;
        bp_buf_init(&what);
        bp_buf_printf(&what, "%s: blueprint revision %d (%s)", vendor, rev->number, rev->revision);
        if (rev->message[0]) { bp_buf_adds(&what, ": "); bp_buf_adds(&what, rev->message); }
        bp_audit_write(db, who, action, NULL, last, rev->number, what.data);
        bp_buf_free(&what);
    }
    prune_revisions(db, keep, vendor, rev->number);
    return rev->number;
}

int bp_revisions_files(struct sqlite3 *db, const char *vendor, int number, bp_buf *files_json)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "SELECT files FROM blueprint_revisions WHERE vendor=?1 AND number=?2", -1, &q,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, vendor, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, number);
    int found = sqlite3_step(q) == SQLITE_ROW;
    int rc = found ? load_files(db, (const char *)sqlite3_column_text(q, 0), files_json) : 1;
    sqlite3_finalize(q);
    return rc;
}

/* A text column as a JSON string. */
static void write_column(bp_buf *out, sqlite3_stmt *q, int col)
{
    bp_json_write_text(out, (const char *)sqlite3_column_text(q, col), (size_t)sqlite3_column_bytes(q, col));
}

int bp_revisions_list(struct sqlite3 *db, const char *vendor, bp_buf *out)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "SELECT number, revision, actor, created_at, message, diff, changed FROM "
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
