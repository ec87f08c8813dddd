/*
 * catalog.c — the blueprint catalog: the vendor folders found under the
 * blueprints directory, each loaded and compiled, and the checks a new
 * version of a folder must pass before it may replace the running one (it
 * compiles; every installed config validates against it; no stored secret
 * changes type or destination).  The registry owns the vendors once loaded
 * and decides when to switch (hot reload, the editor's saves).
 */
#include "service.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Compile every mapping of bp in a scratch engine: the check a reload must
 * pass before it replaces the running version. */
static int scratch_compile(const bp_blueprint *bp, bp_error *err)
{
    bp_config empty;
    memset(&empty, 0, sizeof empty);
    bp_engine *e = bp_engine_new(bp, &empty, NULL, err);
    if (!e) return -1;
    bp_engine_free(e);
    return 0;
}

static int by_vendor_key(const void *a, const void *b)
{
    return strcmp(((const bp_vendor *)a)->key, ((const bp_vendor *)b)->key);
}

/* One vendor from the folder dir (named name): loaded and compiled, or its
 * error kept for the catalog to show. */
static void load_vendor(bp_vendor *v, const char *dir, const char *name)
{
    memset(v, 0, sizeof *v);
    v->dir = bp_strdup(dir);
    v->signature = bp_folder_signature(dir);
    bp_blueprint_revision(dir, v->disk_revision);
    bp_error err;
    bp_blueprint *bp = bp_catalog_compile(dir, &err);
    v->bp = bp ? bp_shared_bp_new(bp) : NULL;
    if (v->bp) {
        memcpy(v->bp->revision, v->disk_revision, sizeof v->bp->revision);
        v->key = bp_strdup(v->bp->bp->vendor);
        return;
    }
    v->load_error = bp_strdup(err.msg);
    v->key = bp_strdup(name);
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "blueprint", dir);
    bp_log_field(&f, "error", err.msg);
    bp_log("error", "blueprint failed to load", f.data);
    bp_buf_free(&f);
}

void bp_catalog_load(const char *blueprints_dir, bp_vendor **vendors, size_t *n)
{
    DIR *d = opendir(blueprints_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char dir[BP_PATH_MAX], yaml[BP_PATH_MAX + 16];
        struct stat st;
        snprintf(dir, sizeof dir, "%s/%s", blueprints_dir, e->d_name);
        snprintf(yaml, sizeof yaml, "%s/blueprint.yaml", dir);
        if (stat(yaml, &st) != 0) continue;
        *vendors = bp_realloc(*vendors, (*n + 1) * sizeof **vendors);
        load_vendor(&(*vendors)[(*n)++], dir, e->d_name);
    }
    closedir(d);
    /* the catalog in vendor order, not readdir's (which varies by filesystem) */
    if (*n) qsort(*vendors, *n, sizeof **vendors, by_vendor_key);
}

void bp_catalog_free(bp_vendor *vendors, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bp_shared_bp_drop(vendors[i].bp);
        free(vendors[i].key);
        free(vendors[i].dir);
        free(vendors[i].load_error);
        free(vendors[i].cluster_error);
    }
    free(vendors);
}

/* The blueprint in dir, loaded and compiled in a scratch engine.  Its code
 * runs (each file's top-level chunk): never call it with admin_mu held, or
 * a file that stalls until its budget ends would stall every install,
 * update, sign-in and save.  NULL with err. */
bp_blueprint *bp_catalog_compile(const char *dir, bp_error *err)
{
    bp_blueprint *nb = bp_blueprint_load(dir, err);
    if (nb && scratch_compile(nb, err) < 0) { bp_blueprint_free(nb); return NULL; }
    return nb;
}

/* Every config docs[k] of items[k] validated against nb's fields (into
 * cfgs[k]), and the secrets they hold kept as the running version ob has
 * them (bp_secrets_kept): no blueprint code runs.  -1 with err naming the
 * integration.  The secrets first: a field ob has as a secret that nb
 * retypes would otherwise fail nb's check with a message quoting its value
 * (shown to whoever sees the refusal: the log, the catalog, /healthz). */
int bp_catalog_validate(const bp_blueprint *ob, const bp_blueprint *nb, bp_integration *const *items, char *const *docs,
                        bp_config **cfgs, size_t n, bp_error *err)
{
    if (bp_secrets_kept(ob, nb, items, docs, n, err) < 0) return -1;
    for (size_t k = 0; k < n; k++) {
        cfgs[k] = bp_config_load_text(nb, docs[k], strlen(docs[k]), "stored config", err);
        if (cfgs[k]) continue;
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "the installed integration '%s' (%s) would not validate: %s", items[k]->name,
                     items[k]->id, why);
        return -1;
    }
    return 0;
}

