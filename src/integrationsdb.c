/*
 * integrationsdb.c — server.db's integrations and revisions tables: an
 * integration's row (id, name, vendor, variant, mode, current revision,
 * deleted) and its immutable config revisions, each stored as a document
 * with its secrets sealed (sealing.c).  Rows in and out, nothing more: the
 * registry (registry.c) decides what to write, holds the admin lock and
 * keeps the transactions.
 */
#include "service.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void bp_integrations_new_id(char *out, size_t n)
{
    unsigned char raw[8] = { 0 };
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) { if (read(fd, raw, sizeof raw) < 0) raw[0] = 0; close(fd); }
    uint64_t t = (uint64_t)bp_wall_ms();
    for (int i = 0; i < 8; i++) raw[i] ^= (unsigned char)(t >> (8 * i));
    snprintf(out, n, "int_%02x%02x%02x%02x%02x%02x%02x%02x", raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]);
}

int bp_integrations_write(struct sqlite3 *db, const bp_integration *it, int insert, const char *sealed, size_t len)
{
    sqlite3_stmt *q;
    int ok;
    if (insert) {
        ok = sqlite3_prepare_v2(db, "INSERT INTO integrations(id, name, vendor, variant, delivery_mode, revision, "
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
        ok = sqlite3_prepare_v2(db, "UPDATE integrations SET revision=?2 WHERE id=?1", -1, &q, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
            sqlite3_bind_int(q, 2, it->revision);
            ok = sqlite3_step(q) == SQLITE_DONE;
            sqlite3_finalize(q);
        }
    }
    if (ok && sqlite3_prepare_v2(db, "INSERT INTO revisions(integration_id, revision, config, created_at) "
                                       "VALUES(?1, ?2, ?3, ?4)", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, it->id, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, it->revision);
        sqlite3_bind_text(q, 3, sealed, (int)len, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, (int64_t)bp_wall_ms());
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    } else {
        ok = 0;
    }
    return ok;
}

int bp_integrations_load(struct sqlite3 *db, bp_integration_row_fn *fn, void *ctx, bp_error *err)
{
    sqlite3_stmt *q;
    int rc = 0;
    if (sqlite3_prepare_v2(db, "SELECT i.id, i.name, i.vendor, i.variant, i.delivery_mode, i.revision, "
                               "i.created_at, v.config FROM integrations i JOIN revisions v ON "
                               "v.integration_id = i.id AND v.revision = i.revision WHERE i.deleted = 0 "
                               "ORDER BY i.created_at", -1, &q, NULL) != SQLITE_OK)
        return 0;
    while (rc == 0 && sqlite3_step(q) == SQLITE_ROW) {
        const char *text[8];
        for (int i = 0; i < 8; i++) text[i] = (const char *)sqlite3_column_text(q, i);
        bp_integration_row row = { text[0], text[1], text[2], text[3], text[4], sqlite3_column_int(q, 5),
                                   sqlite3_column_int64(q, 6), text[7] };
        rc = fn(ctx, &row, err);
    }
    sqlite3_finalize(q);
    return rc;
}

/* server.db: the integration marked deleted, its revisions' secrets masked
 * (inside a transaction, admin_mu held). */
int bp_integrations_mask_deleted(struct sqlite3 *db, const char *id, const bp_blueprint *bp)
{
    sqlite3_stmt *q;
    int ok = 0;
    if (sqlite3_prepare_v2(db, "UPDATE integrations SET deleted=1 WHERE id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    /* the revisions keep their history, not their secrets */
    if (ok && sqlite3_prepare_v2(db, "SELECT revision, config FROM revisions WHERE integration_id=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        sqlite3_stmt *u = NULL;
        ok = sqlite3_prepare_v2(db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u,
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

int bp_integrations_revisions(struct sqlite3 *db, const char *id, const bp_blueprint *bp, bp_buf *out)
{
    sqlite3_stmt *q;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT revision, created_at, config FROM revisions WHERE integration_id=?1 "
                                  "ORDER BY revision", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        bp_buf_adds(out, "[");
        int first = 1;
        while (sqlite3_step(q) == SQLITE_ROW) {
            if (!first) bp_buf_addc(out, ',');
            first = 0;
            bp_buf_printf(out, "{\"revision\":%d,\"created_at\":%lld,\"config\":", sqlite3_column_int(q, 0),
                          (long long)sqlite3_column_int64(q, 1));
            bp_write_masked_config(out, bp, (const char *)sqlite3_column_text(q, 2));
            bp_buf_addc(out, '}');
        }
        bp_buf_adds(out, "]");
        sqlite3_finalize(q);
        rc = 0;
    }
    return rc;
}
