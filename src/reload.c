/*
 * reload.c — hot reload: a vendor's blueprint folder changed on disk (the
 * watcher's signature check) or was saved by the console's editor; the new
 * version is compiled without any lock held (its code runs), then, under
 * the registry's admin lock, checked against every installed config of the
 * vendor (catalog.c) and switched to, or rejected with the running version
 * kept.  In cluster mode a revision is told to every node (a blueprint
 * record, blueprintrecord.c, through the registry's hook) before this node
 * switches to it, and a record from another node is checked in a scratch
 * folder, written into the vendor's folder and switched to the same way,
 * or refused with the running version kept.  It sits above the registry
 * and uses only its functions.
 */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void items_free(bp_vendor_items *vi)
{
    for (size_t k = 0; k < vi->n; k++) {
        bp_config_free(vi->cfgs[k]);
        free(vi->docs[k]);
        bp_integration_release(vi->items[k]);
    }
    free(vi->items);
    free(vi->docs);
    free(vi->cfgs);
}

/* vi's configs validated against nb, secrets kept as the running version
 * has them (bp_catalog_validate). */
static int validate_items(bp_registry *r, bp_vendor *v, const bp_blueprint *nb, bp_vendor_items *vi, bp_error *err)
{
    bp_shared_bp *running = bp_registry_vendor_bp(r, v, NULL, NULL);
    int rc = bp_catalog_validate(running ? running->bp : NULL, nb, vi->items, vi->docs, vi->cfgs, vi->n, err);
    bp_shared_bp_drop(running);
    return rc;
}

/* The version of revision rev was not taken: why, in the log and the audit log. */
static void log_rejected(bp_registry *r, bp_vendor *v, const char *rev, int had, const bp_claims *who, const char *why)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "blueprint", v->dir);
    bp_log_field(&f, "revision", rev);
    bp_log_field(&f, "error", why);
    bp_log("error", had ? "blueprint change rejected; the previous version keeps running" : "blueprint failed to load",
           f.data);
    bp_buf_free(&f);
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s: revision %s rejected, the previous version keeps running: ", v->dir, rev);
    bp_buf_adds(&what, why);
    bp_registry_audit_held(r, who, "blueprint.reload", what.data);
    bp_buf_free(&what);
}

static void log_reloaded(bp_registry *r, bp_vendor *v, const char *rev, size_t n, const bp_claims *who)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "blueprint", v->dir);
    bp_log_field(&f, "revision", rev);
    bp_log("info", "blueprint reloaded", f.data);
    bp_buf_free(&f);
    bp_buf what;
    bp_buf_init(&what);
    bp_buf_printf(&what, "%s: revision %s reloaded for %zu integrations", v->dir, rev, n);
    bp_registry_audit_held(r, who, "blueprint.reload", what.data);
    bp_buf_free(&what);
}

/* The cluster's newest revision of v and v's catalog key, read under the
 * registry's lock (the key is the other nodes' name for it). */
typedef struct cluster_rev {
    bp_vendor *v;
    char rev[BP_REVISION_LEN];
    char *key;
    int refused;                /* this node refuses rev (and runs another) */
} cluster_rev;

static void read_cluster_rev(void *ctx)
{
    cluster_rev *q = ctx;
    memcpy(q->rev, q->v->cluster_revision, BP_REVISION_LEN);
    q->key = bp_strdup(q->v->key);
    q->refused = q->v->cluster_error && !(q->v->bp && !strcmp(q->v->bp->revision, q->v->cluster_revision));
}

/* v's newest revision in the cluster, and why this node refuses it (NULL:
 * it does not), set under the registry's lock. */
typedef struct cluster_note {
    bp_vendor *v;
    const char *revision, *refused;
    int only_if_newest;         /* clear the refusal only if revision is the cluster's newest */
} cluster_note;

static void set_cluster_note(void *ctx)
{
    cluster_note *n = ctx;
    if (n->only_if_newest && strcmp(n->v->cluster_revision, n->revision) != 0) return;
    snprintf(n->v->cluster_revision, sizeof n->v->cluster_revision, "%s", n->revision);
    free(n->v->cluster_error);
    n->v->cluster_error = n->refused ? bp_strdup(n->refused) : NULL;
}

void bp_registry_note_cluster(bp_registry *r, bp_vendor *v, const char *revision, const char *refused)
{
    cluster_note n = { v, revision, refused, 0 };
    bp_registry_locked(r, set_cluster_note, &n);
}

/* A change on disk (the watcher) while this node refuses the cluster's
 * revision: its folder may hold what a failed write left, which no node
 * told; it is neither told to the others nor run (1, with err), unless it
 * is the cluster's revision. */
static int refusing(bp_registry *r, bp_vendor *v, const char *rev, bp_error *err)
{
    if (!bp_registry_clustered(r)) return 0;
    cluster_rev q = { v, "", NULL, 0 };
    bp_registry_locked(r, read_cluster_rev, &q);
    free(q.key);
    if (!q.refused || !strcmp(q.rev, rev)) return 0;
    bp_error_set(err, "this node refuses the cluster's revision %s of this blueprint, so a change of its files on "
                 "disk is neither told to the other nodes nor run; change it through the editor",
                 q.rev[0] ? q.rev : "(unknown)");
    return 1;
}

/* Cluster mode: the files in dir (revision rev of v, checked) told to every
 * node, unless the cluster has that revision already (it came from there:
 * bp_registry_apply_blueprint notes it before it writes the files; or this
 * node told it before).  admin_mu held; -1 with err: no node may switch. */
static int tell_cluster(bp_registry *r, bp_vendor *v, const char *dir, const char *rev, const bp_claims *who,
                        bp_error *err)
{
    if (!bp_registry_clustered(r)) return 0;
    cluster_rev q = { v, "", NULL, 0 };
    bp_registry_locked(r, read_cluster_rev, &q);
    bp_buf rec;
    bp_buf_init(&rec);
    char made[BP_REVISION_LEN];
    int rc = 0;
    if (strcmp(q.rev, rev) != 0) {
        rc = bp_blueprint_record_write(q.key, dir, bp_audit_who(who)->sub, &rec, made, err);
        if (rc == 0) rc = bp_registry_publish_blueprint(r, q.key, rec.data, rec.len, err);
        if (rc == 0) bp_registry_note_cluster(r, v, made, NULL);
    }
    if (rc < 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        if (rc == -2)
            bp_error_set(err, "the brokers did not confirm this revision, yet may have taken it: every node, this one "
                         "too, then runs it (see /healthz's blueprints): %s", why);
        else
            bp_error_set(err, "the other nodes could not be told of this revision, so none runs it: %s", why);
    }
    bp_buf_free(&rec);
    free(q.key);
    return rc;
}

int bp_registry_edit_publish(bp_registry *r, bp_vendor *v, const char *dir, const bp_claims *who, bp_error *err)
{
    char rev[BP_REVISION_LEN];
    bp_blueprint_revision(dir, rev);
    return tell_cluster(r, v, dir, rev, who, err);
}

/* Switch v's integrations to nb (compiled from the files of revision rev),
 * once every installed config validates against it (and, in cluster mode,
 * the cluster has it); or, nb NULL or a config refused, keep the running
 * version (saying why everywhere it shows).  Takes nb.  admin_mu held, so
 * no install, update or delete slips in between; who: the actor (NULL: the
 * file watcher). */
static int switch_locked(bp_registry *r, bp_vendor *v, bp_blueprint *nb, const char *rev, const bp_claims *who,
                         bp_error *err)
{
    if (bp_registry_runs(r, v, rev)) { bp_blueprint_free(nb); return 0; }   /* another reload switched already */
    bp_shared_bp *running = bp_registry_vendor_bp(r, v, NULL, NULL);
    int had = running != NULL;
    bp_shared_bp_drop(running);
    bp_vendor_items vi;
    bp_registry_vendor_items(r, v, &vi);
    if (nb && ((!who && refusing(r, v, rev, err)) || validate_items(r, v, nb, &vi, err) < 0 ||
               tell_cluster(r, v, v->dir, rev, who, err) < 0)) {
        bp_blueprint_free(nb);
        nb = NULL;
    }
    if (!nb) {
        bp_registry_reject_version(r, v, rev, err->msg);
        log_rejected(r, v, rev, had, who, err->msg);
    } else {
        bp_registry_switch_version(r, v, nb, rev, &vi);
        cluster_note runs = { v, rev, NULL, 1 };   /* it runs the cluster's revision now: no refusal stands */
        bp_registry_locked(r, set_cluster_note, &runs);
        log_reloaded(r, v, rev, vi.n, who);
    }
    items_free(&vi);
    return nb ? 0 : -1;
}

/* Load v's files and switch to them, or keep the running version.  Called
 * without admin_mu: the files are compiled first, unlocked, then admin_mu
 * is taken only to check that the folder is still what was compiled (else
 * it is compiled again: an edit came meanwhile) and to switch. */
static int reload(bp_registry *r, bp_vendor *v, const bp_claims *who, bp_error *err)
{
    for (int attempt = 0;; attempt++) {
        char rev[BP_REVISION_LEN], now[BP_REVISION_LEN];
        bp_blueprint_revision(v->dir, rev);   /* before loading: a later edit is another reload */
        /* the files' contents are what runs (the console's editor reloaded them
         * already, or only a modification time changed) */
        if (bp_registry_runs(r, v, rev)) return 0;
        bp_blueprint *nb = bp_catalog_compile(v->dir, err);
        bp_registry_edit_begin(r);
        bp_blueprint_revision(v->dir, now);
        /* still changing after a few tries: judge what was compiled; the
         * watcher sees the later change and reloads again */
        if (strcmp(now, rev) != 0 && attempt < 3) {
            bp_registry_edit_end(r);
            bp_blueprint_free(nb);
            continue;
        }
        int rc = switch_locked(r, v, nb, rev, who, err);
        bp_registry_edit_end(r);
        return rc;
    }
}

void bp_registry_check_reload(bp_registry *r)
{
    bp_vendor *v;
    for (size_t i = 0; (v = bp_registry_vendor_at(r, i)); i++) {
        uint64_t sig = bp_folder_signature(v->dir);
        if (sig == v->signature) continue;
        v->signature = sig;
        bp_error err;
        reload(r, v, NULL, &err);
    }
}

/* dir compiled and every installed config of v validated against it; and,
 * vendor not NULL, the blueprint it compiles is that vendor's. */
static int check_folder(bp_registry *r, bp_vendor *v, const char *dir, const char *vendor, uint64_t *stamp,
                        bp_error *err)
{
    bp_vendor_items vi;
    bp_registry_vendor_items(r, v, &vi);
    *stamp = vi.stamp;
    bp_blueprint *nb = bp_catalog_compile(dir, err);
    int rc = -1;
    if (nb && vendor && strcmp(nb->vendor, vendor) != 0)
        bp_error_set(err, "blueprint.yaml names the vendor '%.100s', not '%.100s' as the record does", nb->vendor, vendor);
    else if (nb && validate_items(r, v, nb, &vi, err) == 0)
        rc = 0;
    items_free(&vi);
    bp_blueprint_free(nb);
    return rc;
}

int bp_registry_edit_check(bp_registry *r, bp_vendor *v, const char *dir, uint64_t *stamp, bp_error *err)
{
    return check_folder(r, v, dir, NULL, stamp, err);
}

int bp_registry_edit_reload(bp_registry *r, bp_vendor *v, const bp_claims *who, char running[BP_REVISION_LEN],
                            bp_error *err)
{
    int rc = reload(r, v, who, err);
    bp_shared_bp *sbp = bp_registry_vendor_bp(r, v, NULL, NULL);
    snprintf(running, BP_REVISION_LEN, "%s", sbp ? sbp->revision : "");
    bp_shared_bp_drop(sbp);
    return rc;
}

/* ---- cluster mode: a revision another node made ---------------------------------------------- */

/* A revision from the cluster refused: the running version stays, and the
 * node says so (log; /healthz and Live Events through the vendor). */
static void refuse(bp_registry *r, bp_vendor *v, const char *vendor, const char *rev, const char *why)
{
    if (v) bp_registry_note_cluster(r, v, rev, why);
    bp_shared_bp *running = v ? bp_registry_vendor_bp(r, v, NULL, NULL) : NULL;
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "blueprint", vendor ? vendor : "");
    bp_log_field(&f, "revision", rev ? rev : "");
    bp_log_field(&f, "running", running ? running->revision : "");
    bp_log_field(&f, "error", why);
    bp_log("error", "blueprint revision from the cluster refused: this node keeps running its own revision", f.data);
    bp_buf_free(&f);
    bp_shared_bp_drop(running);
}

/* Remove every "prefix/" from msg (a scratch folder's path). */
static void strip_path(char *msg, const char *dir)
{
    char prefix[BP_PATH_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s/", dir);
    size_t n = strlen(prefix);
    char *at;
    while ((at = strstr(msg, prefix))) memmove(at, at + n, strlen(at + n) + 1);
}

/* rec checked in a scratch folder (loads, compiles, every installed config
 * of v validates), then written into v's folder and reloaded; or refused
 * with v's folder untouched. */
/* rec's files checked in a scratch folder: 0, or -1 with err; *stamp: the
 * integrations checked (bp_registry_edit_stamp). */
static int check_in_scratch(bp_registry *r, bp_vendor *v, const bp_blueprint_record *rec, uint64_t *stamp,
                            bp_error *err)
{
    char scratch[BP_PATH_MAX];
    snprintf(scratch, sizeof scratch, "%s/.cluster-XXXXXX", bp_registry_state_dir(r));
    if (!mkdtemp(scratch)) {
        bp_error_set(err, "cannot make a scratch folder in %s", bp_registry_state_dir(r));
        return -1;
    }
    int ok = bp_blueprint_record_put(rec, scratch, err) == 0 && check_folder(r, v, scratch, rec->vendor, stamp, err) == 0;
    bp_blueprint_record_remove(rec, scratch);
    if (!ok) strip_path(err->msg, scratch);
    return ok ? 0 : -1;
}

static int apply_record(bp_registry *r, bp_vendor *v, const bp_blueprint_record *rec)
{
    bp_error err;
    uint64_t stamp;
    int ok = 1;
    for (int attempt = 0;; attempt++) {
        if (check_in_scratch(r, v, rec, &stamp, &err) < 0) {
            refuse(r, v, rec->vendor, rec->revision, err.msg);
            return -1;
        }
        bp_registry_edit_begin(r);
        /* an install, update or delete since the check: check again (after a
         * few tries the reload below judges, under the lock) */
        if (bp_registry_edit_stamp(r, v) == stamp || attempt >= 2) break;
        bp_registry_edit_end(r);
    }
    char disk[BP_REVISION_LEN];
    bp_registry_note_cluster(r, v, rec->revision, NULL);   /* first: a reload of these files tells nobody */
    bp_blueprint_revision(v->dir, disk);
    /* the folder may hold it already: this node's editor told it, then wrote it */
    if (strcmp(disk, rec->revision) != 0) ok = bp_blueprint_record_put(rec, v->dir, &err) == 0;
    bp_registry_edit_end(r);
    bp_claims who = { "cluster", "", "", "", 0, 0 };   /* the audit log names who made it */
    snprintf(who.sub, sizeof who.sub, "%s", rec->actor[0] ? rec->actor : "cluster");
    if (ok && reload(r, v, &who, &err) == 0) return 0;
    refuse(r, v, rec->vendor, rec->revision, err.msg);
    return -1;
}

/* Is key BP_BLUEPRINT_KEY and vendor (compaction keeps one record per key)? */
static int keyed_by(const char *key, size_t key_len, const char *vendor)
{
    size_t kn = strlen(BP_BLUEPRINT_KEY), vn = strlen(vendor);
    return key_len == kn + vn && !memcmp(key, BP_BLUEPRINT_KEY, kn) && !memcmp(key + kn, vendor, vn);
}

int bp_registry_apply_blueprint(bp_registry *r, const char *key, size_t key_len, const char *record, size_t len)
{
    bp_blueprint_record rec;
    bp_error err;
    int rc = -1;
    if (bp_blueprint_record_parse(&rec, record, len, &err) < 0) {
        bp_vendor *v = rec.vendor && keyed_by(key, key_len, rec.vendor) ? bp_registry_find_vendor(r, rec.vendor) : NULL;
        refuse(r, v, rec.vendor, bp_revision_text(rec.revision) ? rec.revision : "", err.msg);
    } else if (!keyed_by(key, key_len, rec.vendor)) {
        refuse(r, NULL, rec.vendor, rec.revision, "the record's key is not \"" BP_BLUEPRINT_KEY "\" and its blueprint");
    } else {
        bp_vendor *v = bp_registry_find_vendor(r, rec.vendor);
        if (!v) refuse(r, NULL, rec.vendor, rec.revision, "no folder for this blueprint on this node");
        else if (bp_registry_runs(r, v, rec.revision)) { bp_registry_note_cluster(r, v, rec.revision, NULL); rc = 0; }
        else rc = apply_record(r, v, &rec);
    }
    bp_blueprint_record_free(&rec);
    return rc;
}
