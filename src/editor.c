/*
 * editor.c — the web console's blueprint editor (docs/serve.md, The web console): a blueprint
 * folder's files, the dry-run and the fixtures of an edit not yet saved,
 * saves that become blueprint revisions, and rollback to one of them.
 *
 * An edit is tried in a scratch copy of the folder (STATE/.editor-XXXXXX):
 * the files sent replace theirs, the rest is copied, and it runs in the
 * same sandbox with the same budgets as delivery, through the code of
 * `dry-run` (bp_map_events) and `blueprint test` (bp_case_check).  The
 * running version is never touched.  A save is checked the way hot reload
 * checks a change (it loads, compiles, and every installed config of the
 * vendor validates: bp_registry_edit_check), then written file by file with
 * atomic renames, recorded as a blueprint revision (actor, time, message,
 * unified diff, and every file, for rollback) under the registry's admin
 * lock so that no install, update or other save interleaves, and reloaded
 * at once through the hot-reload path.  Blueprint code (the check's and the
 * reload's compile) never runs with that lock held (see apply).  server.c
 * runs the dry-run, test, save and rollback calls in its editor pool, off
 * the HTTP threads.
 */
#include "service.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_EVENTS 100          /* per dry-run: each event may use the whole time budget */
#define MAX_NAME 128
#define MAX_MESSAGE 1000

static void fail(bp_api_result *res, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(bp_api_result *res, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->err.msg, sizeof res->err.msg, fmt, ap);
    va_end(ap);
    res->status = status;
    res->code = code;
}

static void write_str(bp_buf *b, const char *s)
{
    if (s) bp_json_write_text(b, s, strlen(s)); else bp_buf_adds(b, "null");
}

/* The request's JSON object, with only the keys the endpoint knows. */
static int parse(const char *body, size_t len, const char *const *known, const char *what, bp_doc *d,
                 bp_api_result *res)
{
    bp_json_limits lim = { BP_EDITOR_MAX_BODY, BP_DEFAULT_MAX_DEPTH + 2 };   /* events nest in {"events":[…]} */
    bp_error err;
    if (bp_json_body(body, len, &lim, d, &err) < 0 || bp_check_body_keys(d, known, what, &err) < 0) {
        fail(res, 400, "BAD_REQUEST", "%s", err.msg);
        return -1;
    }
    return 0;
}

static bp_vendor *find_vendor(bp_registry *r, const char *key, bp_api_result *res)
{
    bp_vendor *v = bp_registry_find_vendor(r, key);
    if (!v) fail(res, 404, "NOT_FOUND", "no blueprint for vendor '%s' in %s", key, bp_registry_blueprints_dir(r));
    return v;
}

/* ---- the files of a blueprint folder ------------------------------------------------------------ */

/* What the editor shows and writes: blueprint.yaml and the Lua files at the
 * top of the folder, by plain names (no paths, no dotfiles). */
static int editable(const char *name)
{
    size_t n = strlen(name);
    if (!strcmp(name, "blueprint.yaml")) return 1;
    if (n < 5 || n >= MAX_NAME || strcmp(name + n - 4, ".lua") != 0 || name[0] == '.') return 0;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_.-", *p)) return 0;
    return 1;
}

typedef struct names {
    char **v;
    size_t n;
} names;

static int by_text(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void names_add(names *l, const char *name)
{
    l->v = bp_realloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n++] = bp_strdup(name);
}

static void names_free(names *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int is_file(const char *dir, const char *name)
{
    char path[BP_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The regular files at the top of dir (editable ones only, when asked), in name order. */
static void list_files(const char *dir, int only_editable, names *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (!only_editable || editable(e->d_name)) && is_file(dir, e->d_name))
            names_add(out, e->d_name);
    closedir(d);
    if (out->n) qsort(out->v, out->n, sizeof *out->v, by_text);
}

/* The files of a folder (or of a recorded revision) and their contents. */
typedef struct snapshot {
    names names;                /* in name order */
    bp_buf *texts;
} snapshot;

static void snapshot_free(snapshot *s)
{
    for (size_t i = 0; i < s->names.n; i++) bp_buf_free(&s->texts[i]);
    free(s->texts);
    names_free(&s->names);
}

static void snapshot_add(snapshot *s, const char *name, const char *text, size_t len)
{
    names_add(&s->names, name);
    s->texts = bp_realloc(s->texts, s->names.n * sizeof *s->texts);
    bp_buf_init(&s->texts[s->names.n - 1]);
    bp_buf_add(&s->texts[s->names.n - 1], text, len);
}

static void snapshot_take(const char *dir, snapshot *s)
{
    names files;
    list_files(dir, 1, &files);
    memset(s, 0, sizeof *s);
    for (size_t i = 0; i < files.n; i++) {
        char path[BP_PATH_MAX];
        bp_buf text;
        bp_error err;
        bp_buf_init(&text);
        snprintf(path, sizeof path, "%s/%s", dir, files.v[i]);
        if (bp_read_file(path, &text, &err) == 0) snapshot_add(s, files.v[i], text.data ? text.data : "", text.len);
        bp_buf_free(&text);
    }
    names_free(&files);
}

/* A recorded revision's files: {"name":"content",…}. */
static void snapshot_parse(const char *json, size_t len, snapshot *s)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    memset(s, 0, sizeof *s);
    bp_json_limits whole = { len + 1, 0 };   /* a folder's files, from server.db: not an event's 512 KiB */
    if (bp_json_parse(&d, json, len, &whole, &err) == 0 && d.nodes[0].type == BP_JOBJECT)
        for (uint32_t k = 1, i = 0; i < d.nodes[0].len; i++, k = d.nodes[k + 1].next)
            if (d.nodes[k + 1].type == BP_JSTRING) snapshot_add(s, bp_jtext(&d, k), bp_jtext(&d, k + 1), d.nodes[k + 1].len);
    bp_doc_free(&d);
}

static void snapshot_json(const snapshot *s, bp_buf *out)
{
    bp_buf_addc(out, '{');
    for (size_t i = 0; i < s->names.n; i++) {
        if (i) bp_buf_addc(out, ',');
        write_str(out, s->names.v[i]);
        bp_buf_addc(out, ':');
        bp_json_write_text(out, s->texts[i].data ? s->texts[i].data : "", s->texts[i].len);
    }
    bp_buf_addc(out, '}');
}

static const bp_buf *snapshot_get(const snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->names.n; i++) if (!strcmp(s->names.v[i], name)) return &s->texts[i];
    return NULL;
}

/* ---- what an edit changes -------------------------------------------------------------------------- */

static int same_text(const bp_buf *a, const bp_buf *b)
{
    return a && b && a->len == b->len && (!a->len || !memcmp(a->data, b->data, a->len));
}

/* The unified diff from one snapshot to the next, file by file in name
 * order, and the names of the files that differ (a JSON array). */
static void snapshot_diff(const snapshot *a, const snapshot *b, bp_buf *diff, bp_buf *changed)
{
    names all = { 0 };
    for (size_t i = 0; i < a->names.n; i++) names_add(&all, a->names.v[i]);
    for (size_t i = 0; i < b->names.n; i++) if (!snapshot_get(a, b->names.v[i])) names_add(&all, b->names.v[i]);
    if (all.n) qsort(all.v, all.n, sizeof *all.v, by_text);
    bp_buf_addc(changed, '[');
    for (size_t i = 0, n = 0; i < all.n; i++) {
        const bp_buf *x = snapshot_get(a, all.v[i]), *y = snapshot_get(b, all.v[i]);
        if (same_text(x, y)) continue;
        if (n++) bp_buf_addc(changed, ',');
        write_str(changed, all.v[i]);
        bp_diff_file(diff, all.v[i], x, y);
    }
    bp_buf_addc(changed, ']');
    names_free(&all);
}

/* ---- edits and scratch copies --------------------------------------------------------------------- */

/* Files to write (text) or remove (rollback: a Lua file the revision did not have). */
typedef struct change {
    const char *name, *text;
    size_t len;
    int remove;
} change;

typedef struct changes {
    change *v;
    size_t n;
} changes;

static void changes_add(changes *c, const char *name, const char *text, size_t len, int remove)
{
    c->v = bp_realloc(c->v, (c->n + 1) * sizeof *c->v);
    c->v[c->n++] = (change){ name, text, len, remove };
}

/* The "files" object of a body: editable names, text contents (borrowed from d). */
static int read_changes(const bp_doc *d, changes *c, bp_api_result *res)
{
    uint32_t f = bp_jget(d, 0, "files");
    if (f == BP_NONE) return 0;
    if (d->nodes[f].type != BP_JOBJECT) {
        fail(res, 400, "BAD_REQUEST", "\"files\" must be an object of file names to their text");
        return -1;
    }
    for (uint32_t k = f + 1, i = 0; i < d->nodes[f].len; i++, k = d->nodes[k + 1].next) {
        const char *name = bp_jtext(d, k);
        if (!editable(name)) {
            fail(res, 400, "BAD_REQUEST", "files: '%s' is not a file the editor may write (blueprint.yaml, or NAME.lua "
                 "with letters, digits, '_', '-' and '.', at the top of the folder)", name);
            return -1;
        }
        if (d->nodes[k + 1].type != BP_JSTRING) {
            fail(res, 400, "BAD_REQUEST", "files: the content of '%s' must be a string", name);
            return -1;
        }
        changes_add(c, name, bp_jtext(d, k + 1), d->nodes[k + 1].len, 0);
    }
    return 0;
}

static int write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return -1;
    for (size_t at = 0; at < len;) {
        ssize_t w = write(fd, data + at, len - at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { close(fd); return -1; }
        at += (size_t)w;
    }
    return close(fd);
}

static void remove_scratch(const char *dir)
{
    names files;
    list_files(dir, 0, &files);
    for (size_t i = 0; i < files.n; i++) {
        char path[BP_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, files.v[i]);
        unlink(path);
    }
    names_free(&files);
    rmdir(dir);
}

/* A new folder under the state directory with dir's top-level files and
 * the changes applied: the edit as it would be, where nothing runs. */
static int make_scratch(const char *state_dir, const char *dir, const changes *c, char *out, size_t n, bp_api_result *res)
{
    snprintf(out, n, "%s/.editor-XXXXXX", state_dir);
    if (!mkdtemp(out)) {
        fail(res, 500, "INTERNAL", "cannot make a scratch folder in %s: %s", state_dir, strerror(errno));
        return -1;
    }
    names files;
    list_files(dir, 0, &files);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < files.n; i++) {
        char from[BP_PATH_MAX], to[BP_PATH_MAX];
        bp_buf text;
        bp_buf_init(&text);
        snprintf(from, sizeof from, "%s/%s", dir, files.v[i]);
        snprintf(to, sizeof to, "%s/%s", out, files.v[i]);
        if (bp_read_file(from, &text, &res->err) < 0 || write_file(to, text.data ? text.data : "", text.len, 0600) < 0) rc = -1;
        bp_buf_free(&text);
    }
    names_free(&files);
    for (size_t i = 0; rc == 0 && i < c->n; i++) {
        char to[BP_PATH_MAX];
        snprintf(to, sizeof to, "%s/%s", out, c->v[i].name);
        if (c->v[i].remove) unlink(to);
        else if (write_file(to, c->v[i].text, c->v[i].len, 0600) < 0) rc = -1;
    }
    if (rc < 0) {
        fail(res, 500, "INTERNAL", "cannot copy the blueprint to %s: %s", out, strerror(errno));
        remove_scratch(out);
    }
    return rc;
}

/* name in dir replaced in one step: a temporary file (a dotfile, which the
 * hot-reload watcher ignores) renamed over it, so that a reader sees the
 * old file or the new one, never part of one. */
static int write_atomic(const char *dir, const char *name, const char *data, size_t len, bp_error *err)
{
    char path[BP_PATH_MAX], tmp[BP_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name);
    int fd = mkstemp(tmp);
    if (fd < 0) { bp_error_set(err, "cannot write %s: %s", path, strerror(errno)); return -1; }
    close(fd);
    mode_t mode = stat(path, &st) == 0 ? st.st_mode & 0777 : 0644;
    int fd2 = -1;
    if (write_file(tmp, data, len, mode) < 0 || chmod(tmp, mode) < 0 || (fd2 = open(tmp, O_RDONLY)) < 0 ||
        fsync(fd2) < 0 || rename(tmp, path) < 0) {
        bp_error_set(err, "cannot write %s: %s", path, strerror(errno));
        if (fd2 >= 0) close(fd2);
        unlink(tmp);
        return -1;
    }
    close(fd2);
    return 0;
}

static int write_change(const char *dir, const change *c, bp_error *err)
{
    if (!c->remove) return write_atomic(dir, c->name, c->text, c->len, err);
    char path[BP_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, c->name);
    if (unlink(path) == 0 || errno == ENOENT) return 0;
    bp_error_set(err, "cannot remove %s: %s", path, strerror(errno));
    return -1;
}

/* ---- where an edit fails ------------------------------------------------------------------------------ */

/* Remove every occurrence of prefix from s. */
static void strip(char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    char *at;
    while (n && (at = strstr(s, prefix))) memmove(at, at + n, strlen(at + n) + 1);
}

typedef struct where {
    char file[MAX_NAME];        /* "" unknown */
    int line;                   /* 0 unknown */
} where;

/* The message made relative (no scratch or blueprint folder paths) and the
 * editor file and line it starts with: "page.lua:3: …", "blueprint.yaml:89:1: …". */
static void locate(char *msg, const char *scratch, const char *dir, where *w)
{
    char prefix[BP_PATH_MAX];
    snprintf(prefix, sizeof prefix, "%s/", scratch);
    strip(msg, prefix);
    snprintf(prefix, sizeof prefix, "%s/", dir);
    strip(msg, prefix);
    memset(w, 0, sizeof *w);
    size_t n = strcspn(msg, ": ");
    if (msg[n] != ':' || n == 0 || n >= sizeof w->file) return;
    memcpy(w->file, msg, n);
    w->file[n] = '\0';
    if (!editable(w->file)) { w->file[0] = '\0'; return; }
    char *end;
    long line = strtol(msg + n + 1, &end, 10);
    if (end > msg + n + 1 && *end == ':' && line > 0 && line < 1000000000) w->line = (int)line;
}

/* {"file":…,"line":…,"message":…} of an edit that does not load. */
static void write_problem(bp_buf *b, bp_error *err, const char *scratch, const char *dir)
{
    where w;
    locate(err->msg, scratch, dir, &w);
    bp_buf_adds(b, "{\"file\":");
    write_str(b, w.file[0] ? w.file : NULL);
    if (w.line) bp_buf_printf(b, ",\"line\":%d", w.line); else bp_buf_adds(b, ",\"line\":null");
    bp_buf_adds(b, ",\"message\":");
    write_str(b, err->msg);
    bp_buf_addc(b, '}');
}

/* ---- GET …/files ------------------------------------------------------------------------------------ */

/* Where a file shows: blueprint.yaml, the mappings in the event table's
 * order (the custom mapping after them), the other Lua files, helpers.lua. */
static size_t rank(const char *name, const bp_blueprint *bp)
{
    size_t routes = bp ? bp->nroutes : 0;
    if (!strcmp(name, "blueprint.yaml")) return 0;
    if (!strcmp(name, "helpers.lua")) return routes + 3;
    for (size_t i = 0; i < routes; i++) if (!strcmp(bp->routes[i].mapping, name)) return i + 1;
    if (bp && bp->has_custom && !strcmp(bp->custom.mapping, name)) return routes + 1;
    return routes + 2;
}

static void write_examples(bp_buf *b, const char *dir)
{
    char path[BP_PATH_MAX];
    bp_buf text;
    bp_error err;
    bp_buf_init(&text);
    snprintf(path, sizeof path, "%s/examples/events.ndjson", dir);
    bp_buf_adds(b, ",\"examples\":[");
    if (bp_read_file(path, &text, &err) == 0) {
        bp_reader *rd = bp_reader_new_mem(text.data ? text.data : "", text.len, 0);
        bp_doc d;
        bp_doc_init(&d);
        const char *ev;
        size_t len;
        int n = 0;
        enum bp_read_status st;
        /* only the events that are JSON objects: an example file may hold a
         * malformed line on purpose */
        while ((st = bp_reader_next(rd, &ev, &len, &err)) != BP_READ_END)
            if (st == BP_READ_EVENT && bp_json_parse(&d, ev, len, NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT) {
                if (n++) bp_buf_addc(b, ',');
                bp_json_write_node(b, &d, 0);
            }
        bp_doc_free(&d);
        bp_reader_free(rd);
    }
    bp_buf_addc(b, ']');
    bp_buf_free(&text);
}

typedef struct name_list {
    bp_buf *out;
    int n;
} name_list;

static void add_name(void *ctx, const char *name)
{
    name_list *l = ctx;
    if (l->n++) bp_buf_addc(l->out, ',');
    write_str(l->out, name);
}

void bp_editor_files(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                     bp_api_result *res)
{
    (void)body, (void)len, (void)who;
    bp_vendor *v = find_vendor(r, vendor, res);
    if (!v) return;
    char disk[BP_REVISION_LEN], *load_error;
    bp_shared_bp *sbp = bp_registry_vendor_bp(r, v, disk, &load_error);
    const bp_blueprint *bp = sbp ? sbp->bp : NULL;
    snapshot s;
    snapshot_take(v->dir, &s);
    size_t *order = bp_calloc(s.names.n + 1, sizeof *order);
    for (size_t i = 0; i < s.names.n; i++) {   /* a stable insertion by rank; names are in name order */
        size_t j = i;
        for (; j > 0 && rank(s.names.v[order[j - 1]], bp) > rank(s.names.v[i], bp); j--) order[j] = order[j - 1];
        order[j] = i;
    }
    bp_buf *b = res->body;
    bp_buf_adds(b, "{\"vendor\":");
    write_str(b, vendor);
    bp_buf_adds(b, ",\"revision\":");
    write_str(b, sbp && sbp->revision[0] ? sbp->revision : NULL);
    bp_buf_adds(b, ",\"on_disk\":");
    write_str(b, disk[0] ? disk : NULL);
    bp_buf_adds(b, ",\"load_error\":");
    write_str(b, load_error);
    bp_buf_adds(b, ",\"files\":[");
    for (size_t i = 0; i < s.names.n; i++) {
        const char *name = s.names.v[order[i]];
        const bp_buf *text = &s.texts[order[i]];
        bp_buf_printf(b, "%s{\"name\":", i ? "," : "");
        write_str(b, name);
        bp_buf_printf(b, ",\"kind\":\"%s\",\"content\":", strcmp(name, "blueprint.yaml") ? "lua" : "yaml");
        bp_json_write_text(b, text->data ? text->data : "", text->len);
        bp_buf_addc(b, '}');
    }
    bp_buf_addc(b, ']');
    write_examples(b, v->dir);
    char cases[BP_PATH_MAX];
    snprintf(cases, sizeof cases, "%s/tests", v->dir);
    name_list l = { b, 0 };
    bp_buf_adds(b, ",\"tests\":[");
    bp_case_each(cases, add_name, &l);   /* no tests folder: none */
    bp_buf_adds(b, "]}");
    free(order);
    snapshot_free(&s);
    free(load_error);
    bp_shared_bp_drop(sbp);
}

/* ---- POST …/dry-run ---------------------------------------------------------------------------------- */

/* An installed integration's config validated against bp (the edit), or
 * NULL with err; *status 404: no such integration, 400: not one of
 * vendor's, 0: found (NULL then: it does not validate).  An edit that would
 * give its stored secret to a mapping as plain config (a dry-run prints
 * what the mapping puts in a body) is refused as a save would be. */
static bp_config *installed_config(bp_registry *r, const char *id, const bp_blueprint *bp, const char *vendor,
                                   int *status, bp_error *err)
{
    bp_integration *it = bp_registry_find(r, id);
    *status = it ? 0 : 404;
    if (!it) { bp_error_set(err, "no integration with id '%s'", id); return NULL; }
    char *doc;
    bp_shared_bp *running = bp_integration_current(it, &doc);
    bp_config *c = NULL;
    if (bp_registry_find_vendor(r, vendor) != it->vendor) {
        *status = 400;
        bp_error_set(err, "integration '%s' is not a '%s' integration", id, vendor);
    } else if (bp_secrets_kept(running ? running->bp : NULL, bp, &it, &doc, 1, err) == 0) {
        c = bp_configdoc_validate(bp, doc, it->variant, err);
    }
    bp_shared_bp_drop(running);
    memset(doc, 0, strlen(doc));   /* it holds the secrets */
    free(doc);
    bp_integration_release(it);
    return c;
}

/* The config a dry-run maps with: the integration's (its secrets never show:
 * requests are written redacted), the body's, or the blueprint's example. */
static bp_config *dry_run_config(bp_registry *r, bp_vendor *v, const char *vendor, const bp_doc *d,
                                 const bp_blueprint *bp, bp_api_result *res, bp_error *err)
{
    uint32_t id = bp_jget(d, 0, "integration_id"), cfg = bp_jget(d, 0, "config");
    if (id != BP_NONE) {
        if (d->nodes[id].type != BP_JSTRING) { fail(res, 400, "BAD_REQUEST", "\"integration_id\" must be a string"); return NULL; }
        int status;
        bp_config *c = installed_config(r, bp_jtext(d, id), bp, vendor, &status, err);
        if (status) fail(res, status, status == 404 ? "NOT_FOUND" : "BAD_REQUEST", "%s", err->msg);
        return c;
    }
    if (cfg != BP_NONE) {
        if (d->nodes[cfg].type != BP_JOBJECT) {
            fail(res, 400, "BAD_REQUEST", "\"config\" must be an object: an install body or the bare config");
            return NULL;
        }
        bp_buf text;
        bp_buf_init(&text);
        bp_json_write_node(&text, d, cfg);
        bp_config *c = bp_config_load_text(bp, text.data, text.len, "config", err);
        bp_buf_free(&text);
        return c;
    }
    char path[BP_PATH_MAX];
    snprintf(path, sizeof path, "%s/examples/config.yaml", v->dir);
    if (access(path, R_OK) != 0) {
        fail(res, 400, "BAD_REQUEST", "give \"config\" or \"integration_id\": the blueprint has no examples/config.yaml");
        return NULL;
    }
    return bp_config_load_file(bp, path, err);
}

typedef struct results {
    bp_buf *out;
    int n;
    const char *scratch;
} results;

static void add_result(void *ctx, const char *line, size_t len)
{
    results *w = ctx;
    if (w->n++) bp_buf_addc(w->out, ',');
    size_t at = w->out->len;
    bp_buf_add(w->out, line, len);
    char prefix[BP_PATH_MAX];
    snprintf(prefix, sizeof prefix, "%s/", w->scratch);
    strip(w->out->data + at, prefix);   /* positions name the blueprint's files, not the copy */
    w->out->len = at + strlen(w->out->data + at);
}

void bp_editor_dry_run(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                       bp_api_result *res)
{
    (void)who;
    static const char *const known[] = { "files", "events", "integration_id", "config", NULL };
    bp_doc d;
    bp_doc_init(&d);
    changes c = { 0 };
    char scratch[BP_PATH_MAX];
    bp_vendor *v = find_vendor(r, vendor, res);
    if (!v || parse(body, len, known, "dry-run", &d, res) < 0 || read_changes(&d, &c, res) < 0) goto out;
    uint32_t events = bp_jget(&d, 0, "events");
    if (events == BP_NONE || d.nodes[events].type != BP_JARRAY || d.nodes[events].len > MAX_EVENTS) {
        fail(res, 400, "BAD_REQUEST", "\"events\" must be an array of at most %d event objects", MAX_EVENTS);
        goto out;
    }
    if (make_scratch(bp_registry_state_dir(r), v->dir, &c, scratch, sizeof scratch, res) < 0) goto out;
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load(scratch, &err);
    bp_config *cfg = bp ? dry_run_config(r, v, vendor, &d, bp, res, &err) : NULL;
    bp_engine *e = cfg ? bp_engine_new(bp, cfg, bp_registry_limits(r), &err) : NULL;
    /* steps (ctx.send) are answered from the blueprint's answers.yaml, as in dry-run */
    bp_answers *answers = e ? bp_answers_load(scratch, NULL, &err) : NULL;
    if (answers) bp_engine_set_answerer(e, bp_answers_fn, answers);
    else { bp_engine_free(e); e = NULL; }
    if (res->status < 400 && !e) {
        bp_buf_adds(res->body, "{\"ok\":false,\"errors\":[");
        write_problem(res->body, &err, scratch, v->dir);
        bp_buf_adds(res->body, "]}");
    } else if (e) {
        bp_buf text;
        bp_buf_init(&text);
        bp_json_write_node(&text, &d, events);
        bp_reader *rd = bp_reader_new_mem(text.data, text.len, bp_registry_limits(r)->json.max_bytes);
        results w = { res->body, 0, scratch };
        bp_buf_adds(res->body, "{\"ok\":true,\"results\":[");
        bp_map_events(e, rd, 1, add_result, &w, NULL);
        bp_buf_adds(res->body, "]}");
        bp_reader_free(rd);
        bp_buf_free(&text);
    }
    bp_engine_free(e);
    bp_answers_free(answers);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    remove_scratch(scratch);
out:
    free(c.v);
    bp_doc_free(&d);
}

/* ---- POST …/test ---------------------------------------------------------------------------------------- */

/* bp_case's report ("  event 2:\n    PATH: expected X, got Y\n") as one
 * line per difference: "event 2: PATH: expected X, got Y". */
static void write_diff(bp_buf *b, const bp_case *c)
{
    bp_buf_adds(b, ",\"diff\":[");
    int n = 0;
    if (!c->have_expected) {
        bp_buf_adds(b, "\"no expected.ndjson yet (`blueprint test DIR --update` writes it from today's output)\"");
        n++;
    }
    char event[64] = "";
    for (const char *p = c->report.data ? c->report.data : ""; *p;) {
        size_t len = strcspn(p, "\n"), indent = strspn(p, " ");
        const char *text = p + indent;
        size_t tlen = len > indent ? len - indent : 0;
        p += len + (p[len] == '\n');
        if (indent <= 2 && tlen && text[tlen - 1] == ':' && tlen < sizeof event) {   /* "event 2:" heads what follows */
            snprintf(event, sizeof event, "%.*s", (int)tlen, text);
            continue;
        }
        bp_buf line;
        bp_buf_init(&line);
        if (indent > 2 && event[0]) bp_buf_printf(&line, "%s ", event);
        bp_buf_add(&line, text, tlen);
        if (n++) bp_buf_addc(b, ',');
        bp_json_write_text(b, line.data ? line.data : "", line.len);
        bp_buf_free(&line);
    }
    bp_buf_addc(b, ']');
}

typedef struct test_walk {
    const bp_blueprint *bp;
    const char *cases_dir, *scratch, *dir;
    const bp_limits *limits;
    bp_buf *out;
    int n, ok;
} test_walk;

static void test_case(void *ctx, const char *name)
{
    test_walk *t = ctx;
    bp_error err;
    bp_case c;
    bp_case_init(&c);
    bp_config *cfg = bp_case_config(t->bp, t->cases_dir, name, &err);
    bp_engine *e = cfg ? bp_engine_new(t->bp, cfg, t->limits, &err) : NULL;
    bp_answers *answers = e ? bp_case_answers(t->bp, t->cases_dir, name, &err) : NULL;
    if (answers) bp_engine_set_answerer(e, bp_answers_fn, answers);
    int ran = answers && bp_case_check(e, t->cases_dir, name, t->limits, &c, &err) == 0;
    int ok = ran && c.have_expected && c.differing == 0;
    t->ok = t->ok && ok;
    bp_buf_printf(t->out, "%s{\"name\":", t->n++ ? "," : "");
    write_str(t->out, name);
    bp_buf_printf(t->out, ",\"ok\":%s,\"events\":%ld", ok ? "true" : "false", c.events);
    if (ran) {
        write_diff(t->out, &c);
    } else {
        where w;
        locate(err.msg, t->scratch, t->dir, &w);
        bp_buf_adds(t->out, ",\"diff\":[],\"error\":");
        write_str(t->out, err.msg);
    }
    bp_buf_addc(t->out, '}');
    bp_engine_free(e);
    bp_answers_free(answers);
    bp_config_free(cfg);
    bp_case_free(&c);
}

void bp_editor_test(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                    bp_api_result *res)
{
    (void)who;
    static const char *const known[] = { "files", NULL };
    bp_doc d;
    bp_doc_init(&d);
    changes c = { 0 };
    char scratch[BP_PATH_MAX];
    bp_vendor *v = find_vendor(r, vendor, res);
    if (!v || parse(body, len, known, "test", &d, res) < 0 || read_changes(&d, &c, res) < 0 ||
        make_scratch(bp_registry_state_dir(r), v->dir, &c, scratch, sizeof scratch, res) < 0)
        goto out;
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load(scratch, &err);
    if (!bp) {
        bp_buf_adds(res->body, "{\"ok\":false,\"cases\":[],\"errors\":[");
        write_problem(res->body, &err, scratch, v->dir);
        bp_buf_adds(res->body, "]}");
    } else {
        char cases[BP_PATH_MAX];
        snprintf(cases, sizeof cases, "%s/tests", v->dir);   /* the fixtures as committed, against the edit */
        test_walk t = { bp, cases, scratch, v->dir, bp_registry_limits(r), res->body, 0, 1 };
        bp_buf_adds(res->body, "{\"cases\":[");
        bp_case_each(cases, test_case, &t);
        bp_buf_printf(res->body, "],\"ok\":%s,\"errors\":[]}", t.ok ? "true" : "false");
    }
    bp_blueprint_free(bp);
    remove_scratch(scratch);
out:
    free(c.v);
    bp_doc_free(&d);
}

/* ---- PUT …/files, POST …/rollback -------------------------------------------------------------------- */

/* Keep what is on disk as a revision when no revision has it (the first
 * save, or an edit made to the files directly since the last one), so that
 * rollback can return to it.  admin_mu held. */
static int keep_disk_state(bp_registry *r, const char *vendor, const char *dir, const snapshot *disk)
{
    int last;
    char last_rev[BP_REVISION_LEN], rev[BP_REVISION_LEN];
    bp_blueprint_revision(dir, rev);
    if (bp_registry_edit_latest(r, vendor, &last, last_rev) < 0) return -1;
    if (last && !strcmp(last_rev, rev)) return 0;
    snapshot before = { 0 };
    bp_buf files, diff, changed;
    bp_buf_init(&files);
    bp_buf_init(&diff);
    bp_buf_init(&changed);
    if (last && bp_registry_edit_files(r, vendor, last, &files) == 0) snapshot_parse(files.data, files.len, &before);
    if (last) snapshot_diff(&before, disk, &diff, &changed); else bp_buf_adds(&changed, "[]");
    bp_buf_reset(&files);
    snapshot_json(disk, &files);
    bp_edit_rev kept = { 0 };
    memcpy(kept.revision, rev, sizeof rev);
    kept.message = "as found on disk";
    kept.diff = diff.data ? diff.data : "";
    kept.changed_json = changed.data;
    kept.files_json = files.data;
    int rc = bp_registry_edit_record(r, vendor, &kept, NULL, NULL);
    snapshot_free(&before);
    bp_buf_free(&files);
    bp_buf_free(&diff);
    bp_buf_free(&changed);
    return rc < 0 ? -1 : 0;
}

/* Write the checked edit into the folder and record the revision.  admin_mu
 * held.  0, or -1 with res failed. */
static int write_and_record(bp_registry *r, bp_vendor *v, const char *vendor, const changes *c, const char *message,
                            const char *action, const bp_claims *who, bp_edit_rev *rev, bp_buf *changed,
                            bp_api_result *res)
{
    snapshot before, after;
    snapshot_take(v->dir, &before);
    if (keep_disk_state(r, vendor, v->dir, &before) < 0) {
        fail(res, 500, "INTERNAL", "could not record the blueprint's revision in server.db; nothing was written");
        snapshot_free(&before);
        return -1;
    }
    bp_error err;
    for (size_t i = 0; i < c->n && res->status < 400; i++)
        if (write_change(v->dir, &c->v[i], &err) < 0)
            fail(res, 500, "INTERNAL", "%s (%zu of %zu files were written; hot reload takes what is there)", err.msg,
                 i, c->n);
    snapshot_take(v->dir, &after);
    bp_buf files, diff;
    bp_buf_init(&files);
    bp_buf_init(&diff);
    snapshot_diff(&before, &after, &diff, changed);
    snapshot_json(&after, &files);
    bp_blueprint_revision(v->dir, rev->revision);
    rev->message = message;
    rev->diff = diff.data ? diff.data : "";
    rev->changed_json = changed->data;
    rev->files_json = files.data;
    /* recorded even when a write failed: the folder holds what it holds */
    if (bp_registry_edit_record(r, vendor, rev, who, action) < 0 && res->status < 400)
        fail(res, 500, "INTERNAL", "the blueprint was saved, but its revision could not be recorded");
    rev->diff = rev->files_json = NULL;
    bp_buf_free(&files);
    bp_buf_free(&diff);
    snapshot_free(&before);
    snapshot_free(&after);
    return res->status < 400 ? 0 : -1;
}

static void write_saved(bp_buf *b, const bp_edit_rev *rev, const bp_buf *changed)
{
    bp_buf_adds(b, "{\"revision\":");
    write_str(b, rev->revision);
    bp_buf_printf(b, ",\"number\":%d,\"created_at\":%lld,\"actor\":", rev->number, (long long)rev->created_at);
    write_str(b, rev->actor);
    bp_buf_adds(b, ",\"files\":");
    bp_buf_add(b, changed->data, changed->len);
    bp_buf_addc(b, '}');
}

#define APPLY_TRIES 3

/* A save or a rollback: checked in a scratch copy as hot reload checks a
 * change (422 naming file and line, nothing written), then (in cluster
 * mode told to every node first: 503, nothing written, when it cannot be)
 * written, recorded and reloaded.  The check runs the edit's code, so it runs
 * without the admin lock (an edit that stalls until its budget ends must
 * not stall installs, sign-ins or other saves); the lock is taken only to
 * write and record, once it is sure that neither the folder nor the
 * vendor's integrations changed since the check (else the check runs
 * again).  The reload compiles again, also without the lock. */
static void apply(bp_registry *r, bp_vendor *v, const char *vendor, const changes *c, const char *message,
                  const char *action, const bp_claims *who, bp_api_result *res)
{
    for (int attempt = 0; attempt < APPLY_TRIES; attempt++) {
        char scratch[BP_PATH_MAX], base[BP_REVISION_LEN], now[BP_REVISION_LEN];
        bp_blueprint_revision(v->dir, base);
        if (make_scratch(bp_registry_state_dir(r), v->dir, c, scratch, sizeof scratch, res) < 0) return;
        bp_error err;
        uint64_t stamp;
        if (bp_registry_edit_check(r, v, scratch, &stamp, &err) < 0) {
            where w;
            locate(err.msg, scratch, v->dir, &w);
            fail(res, 422, "INVALID_BLUEPRINT", "%s; nothing was written", err.msg);
            memcpy(res->file, w.file, sizeof res->file);
            res->line = w.line;
            remove_scratch(scratch);
            return;
        }
        bp_registry_edit_begin(r);
        bp_blueprint_revision(v->dir, now);
        int moved = strcmp(now, base) != 0 || bp_registry_edit_stamp(r, v) != stamp;
        /* cluster mode: every node is told of the edit before anything is written */
        int told = moved ? 0 : bp_registry_edit_publish(r, v, scratch, who, &err);
        remove_scratch(scratch);
        if (moved || told < 0) {
            bp_registry_edit_end(r);   /* changed while it was checked: check again */
            if (moved) continue;
            fail(res, 503, "CLUSTER_UNAVAILABLE", "%s; %s", err.msg, told == -2 ? "this node wrote nothing yet, but "
                 "the revision may have been applied (once the cluster's record reaches the nodes)" : "nothing was written");
            return;
        }
        bp_edit_rev rev = { 0 };
        bp_buf changed;
        bp_buf_init(&changed);
        int written = write_and_record(r, v, vendor, c, message, action, who, &rev, &changed, res) == 0;
        bp_registry_edit_end(r);
        char running[BP_REVISION_LEN];
        if (written && bp_registry_edit_reload(r, v, who, running, &err) < 0)
            fail(res, 500, "INTERNAL", "the files were written but the reload rejected them: %s", err.msg);
        if (res->status < 400) write_saved(res->body, &rev, &changed);
        bp_buf_free(&changed);
        return;
    }
    fail(res, 409, "CONFLICT", "the blueprint's files or its integrations changed while the edit was being checked, "
         "%d times; nothing was written: try again", APPLY_TRIES);
}

void bp_editor_save(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                    bp_api_result *res)
{
    static const char *const known[] = { "files", "message", NULL };
    bp_doc d;
    bp_doc_init(&d);
    changes c = { 0 };
    bp_vendor *v = find_vendor(r, vendor, res);
    if (!v || parse(body, len, known, "save (PUT files)", &d, res) < 0 || read_changes(&d, &c, res) < 0) goto out;
    uint32_t m = bp_jget(&d, 0, "message");
    if (m != BP_NONE && (d.nodes[m].type != BP_JSTRING || d.nodes[m].len > MAX_MESSAGE)) {
        fail(res, 400, "BAD_REQUEST", "\"message\" must be a string of at most %d bytes", MAX_MESSAGE);
        goto out;
    }
    if (c.n == 0) {
        fail(res, 400, "BAD_REQUEST", "nothing to save: give {\"files\":{\"NAME\":\"text\",…},\"message\":\"…\"}");
        goto out;
    }
    apply(r, v, vendor, &c, m != BP_NONE ? bp_jtext(&d, m) : "", "blueprint.save", who, res);
out:
    free(c.v);
    bp_doc_free(&d);
}

void bp_editor_revisions(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                         bp_api_result *res)
{
    (void)body, (void)len, (void)who;
    if (!find_vendor(r, vendor, res)) return;
    bp_buf_adds(res->body, "{\"vendor\":");
    write_str(res->body, vendor);
    bp_buf_adds(res->body, ",\"revisions\":");
    bp_registry_edit_begin(r);
    int rc = bp_registry_edit_list(r, vendor, res->body);
    bp_registry_edit_end(r);
    if (rc < 0) fail(res, 500, "INTERNAL", "could not read the blueprint's revisions from server.db");
    bp_buf_addc(res->body, '}');
}

void bp_editor_rollback(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                        bp_api_result *res)
{
    static const char *const known[] = { "number", NULL };
    bp_doc d, files;
    bp_doc_init(&d);
    bp_doc_init(&files);
    bp_buf text;
    bp_buf_init(&text);
    changes c = { 0 };
    names now = { 0 };
    bp_vendor *v = find_vendor(r, vendor, res);
    if (!v || parse(body, len, known, "rollback", &d, res) < 0) goto out;
    const char *num = bp_jget(&d, 0, "number") != BP_NONE && d.nodes[bp_jget(&d, 0, "number")].type == BP_JNUMBER
                      ? bp_jtext(&d, bp_jget(&d, 0, "number")) : NULL;
    int number = num ? atoi(num) : 0;
    if (number < 1) { fail(res, 400, "BAD_REQUEST", "give {\"number\":N}: a revision number from …/revisions"); goto out; }
    bp_registry_edit_begin(r);
    int rc = bp_registry_edit_files(r, vendor, number, &text);
    bp_registry_edit_end(r);
    bp_error err;
    bp_json_limits whole = { text.len + 1, 0 };   /* as in snapshot_parse */
    if (rc != 0 || bp_json_parse(&files, text.data ? text.data : "", text.len, &whole, &err) < 0 ||
        files.nodes[0].type != BP_JOBJECT) {
        fail(res, rc == 1 ? 404 : 500, rc == 1 ? "NOT_FOUND" : "INTERNAL", "%s", rc == 1 ? "no such revision of this "
             "blueprint (GET …/revisions lists them)" : "could not read the revision from server.db");
        goto out;
    }
    /* the folder as it was: its files written, the Lua files added since removed */
    for (uint32_t k = 1, i = 0; i < files.nodes[0].len; i++, k = files.nodes[k + 1].next)
        if (editable(bp_jtext(&files, k)) && files.nodes[k + 1].type == BP_JSTRING)
            changes_add(&c, bp_jtext(&files, k), bp_jtext(&files, k + 1), files.nodes[k + 1].len, 0);
    list_files(v->dir, 1, &now);
    for (size_t i = 0; i < now.n; i++)
        if (bp_jget(&files, 0, now.v[i]) == BP_NONE && strcmp(now.v[i], "blueprint.yaml") != 0)
            changes_add(&c, now.v[i], NULL, 0, 1);
    char message[64];
    snprintf(message, sizeof message, "rollback to %d", number);
    apply(r, v, vendor, &c, message, "blueprint.rollback", who, res);
out:
    names_free(&now);
    free(c.v);
    bp_buf_free(&text);
    bp_doc_free(&files);
    bp_doc_free(&d);
}
