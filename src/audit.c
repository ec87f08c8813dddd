/*
 * audit.c — the audit log (server.db's audit table): who changed what and
 * when — installs, updates, deletes, blueprint reloads and saves, sign-ins.
 * Never a secret's value, only that it changed.  Callers serialise writes
 * (the registry's admin lock).
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

static const bp_claims SYSTEM = { "system", "system", "", "", 0, 0 };

const bp_claims *bp_audit_who(const bp_claims *who) { return who ? who : &SYSTEM; }

/* One entry.  revision 0 = none. */
void bp_audit_write(struct sqlite3 *db, const bp_claims *who, const char *action, const char *integration,
                         int before, int after, const char *detail)
{
    sqlite3_stmt *q;
    if (!who) who = &SYSTEM;
    if (sqlite3_prepare_v2(db, "INSERT INTO audit(at, actor, role, action, integration_id, revision_before, "
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

/* "api_key changed, api_url changed, events.Webinar Registered added": the
 * keys of config, events and consent that differ between two documents,
 * never their values. */
void bp_audit_describe_changes(const char *before, const char *after, bp_buf *out)
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
int bp_audit_list(struct sqlite3 *db, const char *integration, const char *action, const char *actor,
                           int64_t since, int64_t until, int64_t cursor, int limit, bp_buf *out)
{
    sqlite3_stmt *q;
    int rc = sqlite3_prepare_v2(db, "SELECT id, at, actor, role, action, integration_id, revision_before, "
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
    return rc;
}

/* Entries older than `days` go (kept 90 days by default). */
void bp_audit_purge(struct sqlite3 *db, int days)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "DELETE FROM audit WHERE at < ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (int64_t)bp_wall_ms() - (int64_t)days * 86400000);
        sqlite3_step(q);
        sqlite3_finalize(q);
    }
}
