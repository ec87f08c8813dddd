/*
 * configrecord.c — cluster mode's configuration records: an integration's
 * head and every revision as stored (secrets sealed, or masked once
 * deleted), written from server.db for the configuration topic and stored
 * back into server.db on every node that reads it.  The topic itself is
 * the cluster's (cluster.c); the registry decides when to publish and what
 * a record changes.
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An integration's record for NAME.integrations, from server.db (inside the
 * transaction that changes it): its head and every revision as stored
 * (secrets sealed, or masked once deleted).  admin_mu held. */
int bp_config_record_write(struct sqlite3 *db, const char *id, bp_buf *out)
{
    sqlite3_stmt *q;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT name, vendor, variant, delivery_mode, revision, created_at, deleted FROM "
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
    if (sqlite3_prepare_v2(db, "SELECT revision, config, created_at FROM revisions WHERE integration_id=?1 "
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

void bp_config_record_free(bp_config_record *rec)
{
    bp_buf_free(&rec->current);
    bp_doc_free(&rec->d);
}

/* The current revision's stored document into rec->current. */
static void current_document(bp_config_record *rec)
{
    const bp_doc *d = &rec->d;
    for (uint32_t e = rec->revs + 1, i = 0; i < d->nodes[rec->revs].len; i++, e = d->nodes[e].next) {
        const char *n = bp_jscalar(d, bp_jget(d, e, "revision"));
        if (n && atoi(n) == rec->revision) bp_json_write_node(&rec->current, d, bp_jget(d, e, "config"));
    }
}

int bp_config_record_parse(bp_config_record *rec, const char *record, size_t len)
{
    bp_error err;
    memset(rec, 0, sizeof *rec);
    bp_doc_init(&rec->d);
    bp_buf_init(&rec->current);
    bp_doc *d = &rec->d;
    if (bp_json_parse(d, record, len, NULL, &err) < 0 || d->nodes[0].type != BP_JOBJECT) {
        bp_log("error", "kafka: a configuration record is not JSON; skipped", NULL);
        return -1;
    }
    rec->id = bp_jscalar(d, bp_jget(d, 0, "id"));
    rec->name = bp_jscalar(d, bp_jget(d, 0, "name"));
    rec->vendor = bp_jscalar(d, bp_jget(d, 0, "vendor"));
    rec->variant = bp_jscalar(d, bp_jget(d, 0, "variant"));
    rec->mode = bp_jscalar(d, bp_jget(d, 0, "delivery_mode"));
    rec->created = bp_jscalar(d, bp_jget(d, 0, "created_at"));
    const char *rev = bp_jscalar(d, bp_jget(d, 0, "revision"));
    rec->revs = bp_jget(d, 0, "revisions");
    uint32_t del = bp_jget(d, 0, "deleted");
    rec->deleted = del != BP_NONE && d->nodes[del].type == BP_JTRUE;
    if (!rec->id || !rec->name || !rec->vendor || !rec->variant || !rec->mode || !rev || !rec->created ||
        rec->revs == BP_NONE || d->nodes[rec->revs].type != BP_JARRAY || strlen(rec->id) >= sizeof ((bp_integration *)0)->id) {
        bp_log("error", "kafka: a configuration record lacks fields; skipped", NULL);
        return -1;
    }
    rec->revision = atoi(rev);
    current_document(rec);
    return 0;
}

int bp_config_record_is_news(struct sqlite3 *db, const bp_config_record *rec)
{
    sqlite3_stmt *q;
    int have = 0, have_rev = 0, have_deleted = 0, same = 0;
    if (sqlite3_prepare_v2(db, "SELECT i.revision, i.deleted, v.config FROM integrations i LEFT JOIN revisions v ON "
                               "v.integration_id = i.id AND v.revision = i.revision WHERE i.id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, rec->id, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            have = 1;
            have_rev = sqlite3_column_int(q, 0);
            have_deleted = sqlite3_column_int(q, 1);
            const char *text = (const char *)sqlite3_column_text(q, 2);
            same = text && rec->current.len == (size_t)sqlite3_column_bytes(q, 2) &&
                   !memcmp(text, rec->current.data, rec->current.len);
        }
        sqlite3_finalize(q);
    }
    return !(have && (rec->revision < have_rev || have_deleted ||
                      (rec->revision == have_rev && rec->deleted == have_deleted && same)));
}

/* The integrations row: inserted, or its revision and deletion updated. */
static int store_head(sqlite3 *db, const bp_config_record *rec)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "INSERT INTO integrations(id, name, vendor, variant, delivery_mode, revision, "
                               "created_at, deleted) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(id) DO "
                               "UPDATE SET revision=excluded.revision, deleted=excluded.deleted", -1, &q, NULL) != SQLITE_OK)
        return 0;
    const char *texts[] = { rec->id, rec->name, rec->vendor, rec->variant, rec->mode };
    for (int i = 0; i < 5; i++) sqlite3_bind_text(q, i + 1, texts[i], -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 6, rec->revision);
    sqlite3_bind_int64(q, 7, atoll(rec->created));
    sqlite3_bind_int(q, 8, rec->deleted);
    int ok = sqlite3_step(q) == SQLITE_DONE;
    sqlite3_finalize(q);
    return ok;
}

/* The revisions rows: replaced by the record's. */
static int store_revisions(sqlite3 *db, const bp_config_record *rec)
{
    const bp_doc *d = &rec->d;
    sqlite3_stmt *del = NULL, *ins = NULL;
    int ok = sqlite3_prepare_v2(db, "DELETE FROM revisions WHERE integration_id=?1", -1, &del, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "INSERT INTO revisions(integration_id, revision, config, created_at) "
                                    "VALUES(?1, ?2, ?3, ?4)", -1, &ins, NULL) == SQLITE_OK;
    if (ok) { sqlite3_bind_text(del, 1, rec->id, -1, SQLITE_STATIC); ok = sqlite3_step(del) == SQLITE_DONE; }
    for (uint32_t e = rec->revs + 1, i = 0; ok && i < d->nodes[rec->revs].len; i++, e = d->nodes[e].next) {
        const char *n = bp_jscalar(d, bp_jget(d, e, "revision")), *at = bp_jscalar(d, bp_jget(d, e, "created_at"));
        uint32_t cfg = bp_jget(d, e, "config");
        if (!n || cfg == BP_NONE) continue;
        bp_buf text;
        bp_buf_init(&text);
        bp_json_write_node(&text, d, cfg);
        sqlite3_reset(ins);
        sqlite3_bind_text(ins, 1, rec->id, -1, SQLITE_STATIC);
        sqlite3_bind_int(ins, 2, atoi(n));
        sqlite3_bind_text(ins, 3, text.data, (int)text.len, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 4, at ? atoll(at) : 0);
        ok = sqlite3_step(ins) == SQLITE_DONE;
        bp_buf_free(&text);
    }
    sqlite3_finalize(del);
    sqlite3_finalize(ins);
    return ok;
}

int bp_config_record_store(struct sqlite3 *db, const bp_config_record *rec)
{
    int ok = bp_serverdb_exec(db, "BEGIN IMMEDIATE") == 0 && store_head(db, rec) && store_revisions(db, rec);
    if (!ok) {
        bp_buf f;
        bp_buf_init(&f);
        bp_log_field(&f, "integration", rec->id);
        bp_log_field(&f, "error", sqlite3_errmsg(db));
        bp_log("error", "kafka: could not apply an integration's configuration from the cluster (another integration "
               "has its name here?)", f.data);
        bp_buf_free(&f);
    }
    bp_serverdb_exec(db, ok ? "COMMIT" : "ROLLBACK");
    return ok ? 0 : -1;
}
