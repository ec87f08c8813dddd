/*
 * sealing.c — integration secrets at rest.  A config field of type secret
 * is stored in server.db sealed (AES-256-GCM, crypto.c) and bound to where
 * its blueprint sends it (the URL fields of its sent_to), so that a changed
 * URL cannot carry a stored key to another host.  Here: sealing, opening
 * and resealing a stored document's secrets, the checks that keep a stored
 * secret's type and destination, masking for display, the one-time sealing
 * of revisions an earlier version kept in plain text, and `blueprint
 * rotate-key`.
 *
 * Nothing here holds a registry lock: the callers pass server.db and the
 * key ring, and hold what they must.
 */
#include "service.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A config value of a stored-form document (a string), or NULL. */
static const char *doc_value(const bp_doc *d, const char *key)
{
    uint32_t c = bp_jget(d, 0, "config");
    uint32_t v = c != BP_NONE ? bp_jget(d, c, key) : BP_NONE;
    return v != BP_NONE && d->nodes[v].type == BP_JSTRING ? bp_jtext(d, v) : NULL;
}

/* Where secret field f of a stored document goes: "FIELD=URL" per line for
 * each URL field of its sent_to, as set (or defaulted).  What its sealed
 * value is bound to (crypto.c). */
static void secret_destination(const bp_field *f, const bp_blueprint *bp, const bp_doc *d, bp_buf *out)
{
    bp_buf_reset(out);
    bp_buf_add(out, "", 0);
    for (size_t i = 0; i < f->nsent_to; i++) {
        const char *v = doc_value(d, f->sent_to[i]);
        const bp_field *u = v ? NULL : bp_blueprint_field(bp, f->sent_to[i]);
        if (!v) v = u && u->default_value ? u->default_value : "";
        bp_buf_printf(out, "%s%s=%s", i ? "\n" : "", f->sent_to[i], v);
    }
}

/* The first of f's sent_to URL fields whose value differs between two
 * documents (defaults applied), or NULL. */
static const char *changed_destination(const bp_field *f, const bp_blueprint *bp, const bp_doc *a, const bp_doc *b)
{
    for (size_t i = 0; i < f->nsent_to; i++) {
        const bp_field *u = bp_blueprint_field(bp, f->sent_to[i]);
        const char *dflt = u && u->default_value ? u->default_value : "";
        const char *x = doc_value(a, f->sent_to[i]), *y = doc_value(b, f->sent_to[i]);
        if (strcmp(x ? x : dflt, y ? y : dflt) != 0) return f->sent_to[i];
    }
    return NULL;
}

static void log_sealed_kept(const char *integration, const char *field, const char *why)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "integration", integration);
    bp_log_field(&f, "field", field);
    bp_log_field(&f, "why", why);
    bp_log("error", "a stored secret was not opened: the integration is not delivered until it is entered again "
           "(PATCH it together with its URL)", f.data);
    bp_buf_free(&f);
}

/* One value of field `field` (def: its definition in bp, or NULL) in its
 * new form into out.  1 when it changed, 0 when kept, -1 with err. */
static int transform_value(bp_keyring *ring, const char *integration, const bp_blueprint *bp, const bp_doc *d,
                           const char *field, const bp_field *def, const char *value, bp_seal_mode mode, bp_buf *out,
                           bp_error *err)
{
    int secret = def && def->type == BP_FIELD_SECRET, sealed = bp_is_encrypted(value);
    if (mode == BP_SEAL ? !secret || !*value || !strcmp(value, "********") || (sealed && !bp_is_encrypted_v1(value))
                     : !sealed)
        return 0;
    bp_buf dest, plain;
    bp_buf_init(&dest);
    bp_buf_init(&plain);
    int rc = 1;
    if (mode != BP_RESEAL && secret && bp) secret_destination(def, bp, d, &dest);
    else bp_buf_add(&dest, "", 0);
    if (mode == BP_UNSEAL && (!secret || !bp)) {
        /* defence in depth: a secret is never opened into a field that is
         * not one (a blueprint changed on disk while the server was down) */
        log_sealed_kept(integration, field, bp ? "the blueprint's field is not type: secret"
                                               : "its blueprint did not load (restart once it is fixed)");
        rc = 0;
    } else if (mode == BP_UNSEAL && !bp_is_encrypted_v1(value)) {
        bp_buf was;
        bp_buf_init(&was);
        bp_buf_add(&was, "", 0);
        if (bp_sealed_destination(value, &was) < 0 || strcmp(was.data, dest.data) != 0) {
            log_sealed_kept(integration, field, "it was stored for another destination than its URL fields now give");
            rc = 0;
        }
        bp_buf_free(&was);
    }
    if (rc == 1 && sealed &&
        bp_decrypt_secret(ring, integration, field, mode == BP_RESEAL ? NULL : dest.data, value, &plain, err) < 0)
        rc = -1;
    if (rc == 1 && mode == BP_UNSEAL) {
        bp_json_write_text(out, plain.data ? plain.data : "", plain.len);
    } else if (rc == 1) {
        const char *text = sealed ? (plain.data ? plain.data : "") : value;
        /* BP_SEAL: bound to where bp sends it; BP_RESEAL: for where it was bound
         * to (a v1 value stays v1 until serve migrates it with its blueprint) */
        const char *to = dest.data;
        if (mode == BP_RESEAL) to = bp_is_encrypted_v1(value) || bp_sealed_destination(value, &dest) < 0 ? NULL : dest.data;
        bp_buf_addc(out, '"');   /* the ciphertext is base64: nothing to escape */
        if (bp_encrypt_secret(ring, integration, field, to, text, out, err) < 0) rc = -1;
        bp_buf_addc(out, '"');
    }
    if (plain.data) memset(plain.data, 0, plain.cap);
    bp_buf_free(&plain);
    bp_buf_free(&dest);
    return rc;
}

/* The stored-form document `doc` of an integration with its config's
 * secrets sealed, unsealed or resealed into out.  *changed says whether
 * anything was.  -1 with err when a value does not decrypt. */
int bp_seal_doc(bp_keyring *ring, const char *integration, const bp_blueprint *bp, const char *doc,
                         bp_seal_mode mode, bp_buf *out, int *changed, bp_error *err)
{
    bp_doc d;
    bp_doc_init(&d);
    if (changed) *changed = 0;
    if (bp_json_parse(&d, doc, strlen(doc), NULL, err) < 0 || d.nodes[0].type != BP_JOBJECT) {
        bp_doc_free(&d);
        bp_buf_adds(out, doc);   /* not ours to judge here: kept as it is */
        return 0;
    }
    int rc = 0;
    bp_buf_addc(out, '{');
    for (uint32_t k = 1, i = 0; i < d.nodes[0].len; i++, k = d.nodes[k + 1].next) {
        if (i) bp_buf_addc(out, ',');
        bp_json_write_node(out, &d, k);
        bp_buf_addc(out, ':');
        uint32_t c = k + 1;
        if (strcmp(bp_jtext(&d, k), "config") != 0 || d.nodes[c].type != BP_JOBJECT) { bp_json_write_node(out, &d, c); continue; }
        bp_buf_addc(out, '{');
        for (uint32_t f = c + 1, j = 0; j < d.nodes[c].len; j++, f = d.nodes[f + 1].next) {
            if (j) bp_buf_addc(out, ',');
            bp_json_write_node(out, &d, f);
            bp_buf_addc(out, ':');
            const char *field = bp_jtext(&d, f), *value = d.nodes[f + 1].type == BP_JSTRING ? bp_jtext(&d, f + 1) : NULL;
            int done = value ? transform_value(ring, integration, bp, &d, field, bp ? bp_blueprint_field(bp, field) : NULL,
                                               value, mode, out, err) : 0;
            if (done < 0) { rc = -1; break; }
            if (done && changed) *changed = 1;
            if (!done) bp_json_write_node(out, &d, f + 1);
        }
        bp_buf_addc(out, '}');
        if (rc < 0) break;
    }
    bp_buf_addc(out, '}');
    bp_doc_free(&d);
    return rc;
}

/* A stored secret does not follow a changed URL: a change of a URL field
 * that secret is sent to (sent_to) needs the secret in the same change,
 * else -1 with err naming both. */
int bp_secret_follows(const bp_blueprint *bp, const char *before, const char *after, const bp_doc *patch,
                                bp_error *err)
{
    bp_doc a, b;
    bp_error perr;
    bp_doc_init(&a);
    bp_doc_init(&b);
    int rc = 0;
    uint32_t pc = bp_jget(patch, 0, "config");
    if (bp_json_parse(&a, before, strlen(before), NULL, &perr) == 0 && bp_json_parse(&b, after, strlen(after), NULL, &perr) == 0) {
        for (size_t i = 0; rc == 0 && i < bp->nfields; i++) {
            const bp_field *f = &bp->fields[i];
            const char *held = f->type == BP_FIELD_SECRET ? doc_value(&a, f->key) : NULL;
            uint32_t given = pc != BP_NONE ? bp_jget(patch, pc, f->key) : BP_NONE;
            const char *url = held && *held ? changed_destination(f, bp, &a, &b) : NULL;
            if (!url || (given != BP_NONE && patch->nodes[given].type != BP_JNULL)) continue;
            /* "config field 'KEY'": the API's 422 names it, and the console shows it there */
            bp_error_set(err, "changing '%s' needs config field '%s' in the same change: the stored secret is sent to "
                         "%s's host and does not follow it to a new one; give {\"config\":{\"%s\":…,\"%s\":…}}", url,
                         f->key, url, url, f->key);
            rc = -1;
        }
    }
    bp_doc_free(&a);
    bp_doc_free(&b);
    return rc;
}

/* A stored secret keeps its type and its destination: -1 with err naming
 * the field and the integrations that hold a value for it when new
 * blueprint nb would make a secret field of ob another type (a viewer
 * would read it, and it would be stored in plain text), drop it, or send it
 * to another URL field or default URL (the key would follow). */
int bp_secrets_kept(const bp_blueprint *ob, const bp_blueprint *nb, bp_integration *const *items, char *const *docs,
                    size_t n, bp_error *err)
{
    bp_buf was, now, who;
    bp_buf_init(&was);
    bp_buf_init(&now);
    bp_buf_init(&who);
    int rc = 0;
    for (size_t i = 0; ob && rc == 0 && i < ob->nfields; i++) {
        const bp_field *of = &ob->fields[i], *nf = bp_blueprint_field(nb, of->key);
        if (of->type != BP_FIELD_SECRET) continue;
        const char *why = NULL;
        bp_buf_reset(&who);
        for (size_t k = 0; k < n; k++) {
            bp_doc d;
            bp_error perr;
            bp_doc_init(&d);
            const char *v = bp_json_parse(&d, docs[k], strlen(docs[k]), NULL, &perr) == 0 ? doc_value(&d, of->key) : NULL;
            if (v && *v) {
                const char *w = !nf ? "remove the field" : nf->type != BP_FIELD_SECRET ? "make it another type than secret" : NULL;
                if (!w) {
                    secret_destination(of, ob, &d, &was);
                    secret_destination(nf, nb, &d, &now);
                    if (strcmp(was.data, now.data) != 0) w = "send it elsewhere (its sent_to, or the URL it is sent to, changed)";
                }
                if (w) {
                    why = w;
                    bp_buf_printf(&who, "%s'%s' (%s)", who.len ? ", " : "", items[k]->name, items[k]->id);
                }
            }
            bp_doc_free(&d);
        }
        if (!why) continue;
        bp_error_set(err, "config field '%s' is type: secret and integrations hold a stored value for it (%s): this "
                     "change would %s; a stored secret keeps its type and destination (keep the field as it is, or "
                     "delete those integrations first)", of->key, who.data, why);
        rc = -1;
    }
    bp_buf_free(&was);
    bp_buf_free(&now);
    bp_buf_free(&who);
    return rc;
}

/* Revisions written before secrets were encrypted: seal them in place (the
 * database zeroes the space the plain values leave, secure_delete). */
int bp_seal_plain_revisions(struct sqlite3 *db, bp_keyring *ring, bp_blueprint_of_fn *bp_of, void *ctx, bp_error *err)
{
    sqlite3_stmt *q, *u = NULL;
    if (sqlite3_prepare_v2(db, "SELECT v.integration_id, v.revision, v.config, i.vendor FROM revisions v "
                                  "JOIN integrations i ON i.id = v.integration_id", -1, &q, NULL) != SQLITE_OK)
        return 0;
    bp_serverdb_exec(db, "BEGIN IMMEDIATE");
    sqlite3_prepare_v2(db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u, NULL);
    long sealed_rows = 0;
    int rc = 0;
    while (rc == 0 && u && sqlite3_step(q) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(q, 0);
        const bp_blueprint *bp = bp_of(ctx, (const char *)sqlite3_column_text(q, 3));
        if (!bp) continue;
        bp_buf out;
        bp_buf_init(&out);
        int changed;
        rc = bp_seal_doc(ring, id, bp, (const char *)sqlite3_column_text(q, 2), BP_SEAL, &out, &changed, err);
        if (rc == 0 && changed) {
            sqlite3_reset(u);
            sqlite3_bind_text(u, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 1));
            sqlite3_bind_text(u, 3, out.data, (int)out.len, SQLITE_STATIC);
            if (sqlite3_step(u) != SQLITE_DONE) { bp_error_set(err, "server.db: %s", sqlite3_errmsg(db)); rc = -1; }
            sealed_rows++;
        }
        bp_buf_free(&out);
    }
    sqlite3_finalize(u);
    sqlite3_finalize(q);
    bp_serverdb_exec(db, rc == 0 ? "COMMIT" : "ROLLBACK");
    if (rc == 0 && sealed_rows) {
        sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        char detail[96];
        snprintf(detail, sizeof detail, "\"revisions\":%ld", sealed_rows);
        bp_log("info", "encrypted the secrets stored in plain text by an earlier version", detail);
    }
    return rc;
}


/* `blueprint rotate-key`: a new primary key, every stored secret re-wrapped
 * under it, the old keys dropped.  Safe while `serve` runs: the ring is
 * rewritten and the secrets re-wrapped inside one write transaction on
 * server.db, which every revision write also takes (save_revision), so no
 * secret can be written under a key that is then dropped.  Delivery never
 * stops: a running server holds its configs decrypted. */
int bp_rotate_master_key(const char *state_dir, long *rewrapped, bp_error *err)
{
    char path[BP_PATH_MAX];
    snprintf(path, sizeof path, "%s/server.db", state_dir);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        bp_error_set(err, "%s: %s (is --state the server's state directory?)", path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return -1;
    }
    bp_store_busy_handler(db);
    sqlite3_exec(db, "PRAGMA secure_delete=ON", NULL, NULL, NULL);
    bp_keyring *ring = bp_keyring_open(state_dir, err);
    if (!ring) { sqlite3_close(db); return -1; }
    char kids[9][17];
    unsigned char keys[9][32];
    int rc = -1;
    *rewrapped = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        bp_error_set(err, "server.db is busy: %s", sqlite3_errmsg(db));
        goto out;
    }
    int n = bp_keyring_keys(ring, kids + 1, keys + 1, 8, err);
    if (n < 0) goto rollback;
    if (n == 8) n = 7;   /* the oldest is dropped to make room (nothing uses it after this) */
    bp_key_new(kids[0], keys[0]);
    if (bp_keyring_write(bp_keyring_path(ring), n + 1, kids, keys, err) < 0) goto rollback;
    sqlite3_stmt *q = NULL, *u = NULL;
    int ok = sqlite3_prepare_v2(db, "SELECT integration_id, revision, config FROM revisions", -1, &q, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "UPDATE revisions SET config=?3 WHERE integration_id=?1 AND revision=?2", -1, &u,
                                NULL) == SQLITE_OK;
    while (ok && sqlite3_step(q) == SQLITE_ROW) {
        bp_buf out;
        bp_buf_init(&out);
        int changed;
        const char *id = (const char *)sqlite3_column_text(q, 0);
        ok = bp_seal_doc(ring, id, NULL, (const char *)sqlite3_column_text(q, 2), BP_RESEAL, &out, &changed, err) == 0;
        if (ok && changed) {
            sqlite3_reset(u);
            sqlite3_bind_text(u, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_int(u, 2, sqlite3_column_int(q, 1));
            sqlite3_bind_text(u, 3, out.data, (int)out.len, SQLITE_STATIC);
            ok = sqlite3_step(u) == SQLITE_DONE;
            if (!ok) bp_error_set(err, "server.db: %s", sqlite3_errmsg(db));
            (*rewrapped)++;
        }
        bp_buf_free(&out);
    }
    sqlite3_finalize(q);
    sqlite3_finalize(u);
    /* everything is under the new key now: the ring keeps only it */
    if (ok && bp_keyring_write(bp_keyring_path(ring), 1, kids, keys, err) < 0) ok = 0;
    if (!ok) goto rollback;   /* the ring still holds the old keys: nothing is lost */
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        bp_error_set(err, "server.db: %s", sqlite3_errmsg(db));
        goto rollback;
    }
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    rc = 0;
    goto out;
rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    /* if the ring was cut to the new key only and the commit then failed,
     * the old ciphertexts need the old keys back */
    if (n > 0) { bp_error e2; bp_keyring_write(bp_keyring_path(ring), n + 1, kids, keys, &e2); }
out:
    memset(keys, 0, sizeof keys);
    bp_keyring_close(ring);
    sqlite3_close(db);
    return rc;
}

/* The config part of a stored document with every secret masked (and,
 * without a blueprint to tell, every value). */
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
            int sealed = d.nodes[k + 1].type == BP_JSTRING && bp_is_encrypted(bp_jtext(&d, k + 1));
            if (!f || f->type == BP_FIELD_SECRET || sealed) bp_buf_adds(out, "\"********\"");
            else bp_json_write_node(out, &d, k + 1);
        }
    }
    bp_buf_addc(out, '}');
    bp_doc_free(&d);
}
