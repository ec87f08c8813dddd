/*
 * blueprint.c — load a blueprint folder: blueprint.yaml (catalog entry,
 * config fields, rate limit, retry policy, event table) and check that every
 * mapping file it names exists.  Lua compilation happens in engine.c, so a
 * syntax error is reported by Lua with its own file and line.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p) abort();
    return p;
}

int bp_read_file(const char *path, bp_buf *out, bp_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) { bp_error_set(err, "%s: cannot open file", path); return -1; }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) bp_buf_add(out, chunk, n);
    fclose(f);
    if (!out->data) bp_buf_add(out, "", 0);
    return 0;
}

typedef struct loader {
    bp_doc *d;
    const char *path;
    bp_error *err;
} loader;

static int bad(loader *ld, uint32_t node, const char *what)
{
    unsigned line = node != BP_NONE ? ld->d->nodes[node].line : 0;
    if (line) bp_error_set(ld->err, "%s:%u: %s", ld->path, line, what);
    else bp_error_set(ld->err, "%s: %s", ld->path, what);
    return -1;
}

/* A scalar's text, or NULL with an error when required and absent. */
static const char *get_text(loader *ld, uint32_t obj, const char *key, int required)
{
    uint32_t v = bp_jget(ld->d, obj, key);
    if (v == BP_NONE || ld->d->nodes[v].type == BP_JNULL) {
        if (required) {
            char what[160];
            snprintf(what, sizeof what, "missing required key '%s'", key);
            bad(ld, obj, what);
        }
        return NULL;
    }
    const char *s = bp_jscalar(ld->d, v);
    if (!s) {
        char what[160];
        snprintf(what, sizeof what, "'%s' must be a single value, not a list or map", key);
        bad(ld, v, what);
    }
    return s;
}

static int get_bool(loader *ld, uint32_t obj, const char *key, int dflt)
{
    uint32_t v = bp_jget(ld->d, obj, key);
    if (v == BP_NONE) return dflt;
    if (ld->d->nodes[v].type == BP_JTRUE) return 1;
    if (ld->d->nodes[v].type == BP_JFALSE) return 0;
    char what[160];
    snprintf(what, sizeof what, "'%s' must be true or false", key);
    bad(ld, v, what);
    return -1;
}

static int load_fields(loader *ld, bp_blueprint *bp, uint32_t list)
{
    const bp_doc *d = ld->d;
    if (list == BP_NONE) return bad(ld, 0, "missing 'config' (the list of config fields)");
    if (d->nodes[list].type != BP_JARRAY) return bad(ld, list, "'config' must be a list of fields");
    bp->fields = calloc(d->nodes[list].len + 1, sizeof *bp->fields);
    for (uint32_t c = list + 1, k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        if (d->nodes[c].type != BP_JOBJECT) return bad(ld, c, "each config field must be a map with key and type");
        const char *key = get_text(ld, c, "key", 1);
        const char *type = get_text(ld, c, "type", 1);
        if (!key || !type) return -1;
        bp_field *f = &bp->fields[bp->nfields++];
        f->key = xstrdup(key);
        const char *label = get_text(ld, c, "label", 0);
        f->label = xstrdup(label ? label : key);
        const char *help = get_text(ld, c, "help", 0);
        f->help = xstrdup(help);
        const char *dflt = get_text(ld, c, "default", 0);
        f->default_value = dflt ? xstrdup(dflt) : NULL;
        if ((f->required = get_bool(ld, c, "required", 0)) < 0) return -1;
        if (!strcmp(type, "string")) f->type = BP_FIELD_STRING;
        else if (!strcmp(type, "secret")) f->type = BP_FIELD_SECRET;
        else if (!strcmp(type, "url")) f->type = BP_FIELD_URL;
        else if (!strcmp(type, "integer")) f->type = BP_FIELD_INTEGER;
        else return bad(ld, bp_jget(d, c, "type"), "field type must be string, secret, url or integer");
    }
    return 0;
}

static int load_together(loader *ld, bp_blueprint *bp, uint32_t rules)
{
    const bp_doc *d = ld->d;
    uint32_t groups = bp_jget(d, rules, "together");
    if (groups == BP_NONE) return 0;
    if (d->nodes[groups].type != BP_JARRAY) return bad(ld, groups, "'together' must be a list of lists of field keys");
    bp->together = calloc(d->nodes[groups].len + 1, sizeof *bp->together);
    for (uint32_t g = groups + 1, k = 0; k < d->nodes[groups].len; k++, g = d->nodes[g].next) {
        if (d->nodes[g].type != BP_JARRAY) return bad(ld, g, "each 'together' group must be a list of field keys");
        char **keys = calloc(d->nodes[g].len + 1, sizeof *keys);
        bp->together[bp->ntogether++] = keys;
        size_t nk = 0;
        for (uint32_t c = g + 1, j = 0; j < d->nodes[g].len; j++, c = d->nodes[c].next) {
            const char *key = bp_jscalar(d, c);
            if (!key || !bp_blueprint_field(bp, key)) return bad(ld, c, "'together' names a field that is not declared under 'config'");
            keys[nk++] = xstrdup(key);
        }
    }
    return 0;
}

static int file_exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int load_route(loader *ld, bp_blueprint *bp, uint32_t node, const char *name, bp_route *r)
{
    const bp_doc *d = ld->d;
    if (d->nodes[node].type != BP_JOBJECT) return bad(ld, node, "each event must be a map with type and mapping");
    const char *mapping = get_text(ld, node, "mapping", 1);
    if (!mapping) return -1;
    const char *type = get_text(ld, node, "type", name != NULL);
    if (name && !type) return -1;
    r->name = xstrdup(name ? name : "custom");
    r->type = xstrdup(type ? type : "track");
    r->mapping = xstrdup(mapping);
    r->line = (int)d->nodes[node].line;
    if ((r->enabled = get_bool(ld, node, "enabled", name != NULL)) < 0) return -1;
    if (!bp_event_type_known(r->type)) return bad(ld, node, "event type must be page, track, identify, group or screen");
    if (strchr(mapping, '/') || strncmp(mapping + strlen(mapping) - (strlen(mapping) > 4 ? 4 : 0), ".lua", 4) != 0)
        return bad(ld, bp_jget(d, node, "mapping"), "mapping must be a .lua file name in the blueprint folder");
    if (!file_exists(bp->dir, mapping)) {
        char what[512];
        snprintf(what, sizeof what, "event '%s' maps to '%s', which does not exist in %s", r->name, mapping, bp->dir);
        return bad(ld, bp_jget(d, node, "mapping"), what);
    }
    return 0;
}

static int load_routes(loader *ld, bp_blueprint *bp, uint32_t events)
{
    const bp_doc *d = ld->d;
    if (events == BP_NONE) return bad(ld, 0, "missing 'events' (the event table)");
    if (d->nodes[events].type != BP_JOBJECT) return bad(ld, events, "'events' must be a map of event name to mapping");
    bp->routes = calloc(d->nodes[events].len + 1, sizeof *bp->routes);
    for (uint32_t c = events + 1, k = 0; k < d->nodes[events].len; k++) {
        const char *name = bp_jtext(d, c);
        if (load_route(ld, bp, c + 1, name, &bp->routes[bp->nroutes++]) < 0) return -1;
        c = d->nodes[c + 1].next;
    }
    return 0;
}

static int load_strings(loader *ld, uint32_t list, char ***out, size_t *n)
{
    const bp_doc *d = ld->d;
    if (list == BP_NONE) { *out = calloc(2, sizeof **out); (*out)[0] = xstrdup("default"); *n = 1; return 0; }
    if (d->nodes[list].type != BP_JARRAY) return bad(ld, list, "'variants' must be a list of names");
    *out = calloc(d->nodes[list].len + 1, sizeof **out);
    for (uint32_t c = list + 1, k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        const char *s = bp_jscalar(d, c);
        if (!s) return bad(ld, c, "variant names must be strings");
        (*out)[(*n)++] = xstrdup(s);
    }
    return 0;
}

static int load(loader *ld, bp_blueprint *bp)
{
    bp_doc *d = ld->d;
    if (d->nodes[0].type != BP_JOBJECT) return bad(ld, 0, "the top level must be a map");
    const char *s;
#define TEXT(field, key, req) \
    if (!(s = get_text(ld, 0, key, req)) && (req)) return -1; \
    bp->field = s ? xstrdup(s) : NULL;
    TEXT(vendor, "vendor", 1)
    TEXT(name, "name", 1)
    TEXT(category, "category", 1)
    TEXT(status, "status", 1)
    TEXT(consent_category, "consent_category", 1)
    TEXT(auth_help, "auth_failure_help", 0)
#undef TEXT
    if (load_strings(ld, bp_jget(d, 0, "variants"), &bp->variants, &bp->nvariants) < 0) return -1;
    if (load_fields(ld, bp, bp_jget(d, 0, "config")) < 0) return -1;
    if (load_together(ld, bp, bp_jget(d, 0, "config_rules")) < 0) return -1;
    uint32_t rl = bp_jget(d, 0, "rate_limit");
    const char *rps = rl != BP_NONE ? get_text(ld, rl, "requests_per_second", 1) : NULL;
    if (rl != BP_NONE && !rps) return -1;
    bp->rate_limit_rps = rps ? strtod(rps, NULL) : 0;
    if (rps && bp->rate_limit_rps <= 0) return bad(ld, rl, "rate_limit.requests_per_second must be a positive number");
    /* scope: the config field naming the vendor account the limit belongs
     * to (ActiveCampaign: api_url); integrations that share its value share
     * one pace.  Without it each integration is paced on its own. */
    const char *scope = rl != BP_NONE ? get_text(ld, rl, "scope", 0) : NULL;
    if (scope && !bp_blueprint_field(bp, scope))
        return bad(ld, bp_jget(d, rl, "scope"), "rate_limit.scope must name a config field");
    bp->rate_limit_scope = scope ? xstrdup(scope) : NULL;
    uint32_t retry = bp_jget(d, 0, "retry");
    const char *attempts = retry != BP_NONE ? get_text(ld, retry, "max_attempts", 0) : NULL;
    bp->retry_max_attempts = attempts ? atoi(attempts) : 5;
    if (bp->retry_max_attempts < 1) return bad(ld, retry, "retry.max_attempts must be at least 1");
    if (load_routes(ld, bp, bp_jget(d, 0, "events")) < 0) return -1;
    uint32_t custom = bp_jget(d, 0, "custom");
    if (custom != BP_NONE) {
        if (load_route(ld, bp, custom, NULL, &bp->custom) < 0) return -1;
        bp->has_custom = 1;
    }
    return 0;
}

bp_blueprint *bp_blueprint_load(const char *dir, bp_error *err)
{
    bp_blueprint *bp = calloc(1, sizeof *bp);
    if (!bp) abort();
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/') dlen--;
    bp->dir = strndup(dir, dlen);
    bp_buf path, text;
    bp_buf_init(&path);
    bp_buf_init(&text);
    bp_buf_printf(&path, "%s/blueprint.yaml", bp->dir);
    bp->yaml_path = xstrdup(path.data);
    bp_buf_free(&path);
    struct stat st;
    if (stat(bp->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        bp_error_set(err, "%s: not a blueprint folder (no such directory)", bp->dir);
        goto fail;
    }
    if (bp_read_file(bp->yaml_path, &text, err) < 0) {
        bp_error_set(err, "%s: cannot open file (every blueprint folder needs a blueprint.yaml)", bp->yaml_path);
        goto fail;
    }
    bp_doc d;
    bp_doc_init(&d);
    d.origin = bp->yaml_path;
    int rc = bp_yaml_parse(&d, text.data, text.len, err);
    if (rc == 0) {
        loader ld = { &d, bp->yaml_path, err };
        rc = load(&ld, bp);
    }
    bp_doc_free(&d);
    bp_buf_free(&text);
    if (rc == 0) return bp;
fail:
    bp_buf_free(&text);
    bp_blueprint_free(bp);
    return NULL;
}

const bp_field *bp_blueprint_field(const bp_blueprint *bp, const char *key)
{
    for (size_t i = 0; i < bp->nfields; i++)
        if (!strcmp(bp->fields[i].key, key)) return &bp->fields[i];
    return NULL;
}

static void free_route(bp_route *r)
{
    free(r->name);
    free(r->type);
    free(r->mapping);
}

void bp_blueprint_free(bp_blueprint *bp)
{
    if (!bp) return;
    free(bp->dir);
    free(bp->yaml_path);
    free(bp->vendor);
    free(bp->name);
    free(bp->category);
    free(bp->status);
    free(bp->consent_category);
    free(bp->auth_help);
    free(bp->rate_limit_scope);
    for (size_t i = 0; i < bp->nvariants; i++) free(bp->variants[i]);
    free(bp->variants);
    for (size_t i = 0; i < bp->nfields; i++) {
        free(bp->fields[i].key);
        free(bp->fields[i].label);
        free(bp->fields[i].help);
        free(bp->fields[i].default_value);
    }
    free(bp->fields);
    for (size_t i = 0; i < bp->ntogether; i++) {
        for (char **k = bp->together[i]; *k; k++) free(*k);
        free(bp->together[i]);
    }
    free(bp->together);
    for (size_t i = 0; i < bp->nroutes; i++) free_route(&bp->routes[i]);
    free(bp->routes);
    if (bp->has_custom) free_route(&bp->custom);
    free(bp);
}
