/*
 * blueprint.c — load a blueprint folder: blueprint.yaml (catalog entry,
 * config fields, rate limit, retry policy, event table, batch bounds) and check that every
 * mapping file it names exists.  Lua compilation happens in engine.c, so a
 * syntax error is reported by Lua with its own file and line.
 */
#include "internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static char *xstrdup(const char *s) { return bp_strdup(s ? s : ""); }

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

/* Levenshtein distance ignoring case; large for long keys. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return (size_t)-1;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
            size_t best = diag + cost;
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

int bp_key_nearer(const char *key, const char *known, size_t *best_d)
{
    size_t dist = edit_distance(key, known);
    size_t longer = strlen(key) > strlen(known) ? strlen(key) : strlen(known);
    if (dist * 3 > longer || dist >= *best_d) return 0;
    *best_d = dist;
    return 1;
}

/* Strict: every key of the map `obj` must be one of `known`, else an error
 * naming the key, its line and the keys that are allowed there.  A typo
 * ("requests_per_secnd") is an error, not a setting silently ignored. */
static int check_keys(loader *ld, uint32_t obj, const char *section, const char *const *known)
{
    const bp_doc *d = ld->d;
    if (obj == BP_NONE || d->nodes[obj].type != BP_JOBJECT) return 0;
    for (uint32_t c = obj + 1, k = 0; k < d->nodes[obj].len; k++, c = d->nodes[c + 1].next) {
        const char *key = bp_jscalar(d, c);
        int ok = 0;
        for (size_t i = 0; key && known[i]; i++) if (!strcmp(key, known[i])) ok = 1;
        if (ok) continue;
        bp_buf m;
        bp_buf_init(&m);
        bp_buf_printf(&m, "unknown key '%.100s' %s%s%s (known keys: ", key ? key : "(not a string)",
                      section ? "in '" : "at the top level", section ? section : "", section ? "'" : "");
        const char *best = NULL;
        size_t best_d = (size_t)-1;
        for (size_t i = 0; known[i]; i++) {
            bp_buf_printf(&m, "%s%s", i ? ", " : "", known[i]);
            if (key && bp_key_nearer(key, known[i], &best_d)) best = known[i];
        }
        bp_buf_adds(&m, ")");
        if (best) bp_buf_printf(&m, "; did you mean '%s'?", best);
        bad(ld, c, m.data);
        bp_buf_free(&m);
        return -1;
    }
    return 0;
}

/* The map under obj.key, BP_NONE when absent; -2 (with an error) when it is not a map. */
static uint32_t get_map(loader *ld, uint32_t obj, const char *key, const char *const *known)
{
    uint32_t v = bp_jget(ld->d, obj, key);
    if (v == BP_NONE || ld->d->nodes[v].type == BP_JNULL) return BP_NONE;
    if (ld->d->nodes[v].type != BP_JOBJECT) {
        char what[160];
        snprintf(what, sizeof what, "'%s' must be a map", key);
        bad(ld, v, what);
        return (uint32_t)-2;
    }
    return check_keys(ld, v, key, known) < 0 ? (uint32_t)-2 : v;
}
#define NOT_A_MAP ((uint32_t)-2)

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
    bp->fields = bp_calloc(d->nodes[list].len + 1, sizeof *bp->fields);
    for (uint32_t c = list + 1, k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        if (d->nodes[c].type != BP_JOBJECT) return bad(ld, c, "each config field must be a map with key and type");
        static const char *const field_keys[] = { "key", "label", "type", "required", "default", "help", "sent_to", NULL };
        if (check_keys(ld, c, "config", field_keys) < 0) return -1;
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
        else if (!strcmp(type, "boolean")) f->type = BP_FIELD_BOOLEAN;
        else if (!strcmp(type, "list")) f->type = BP_FIELD_LIST;
        else if (!strcmp(type, "map")) f->type = BP_FIELD_MAP;
        else return bad(ld, bp_jget(d, c, "type"), "field type must be string, secret, url, integer, boolean, list or map");
        if (f->default_value && f->type >= BP_FIELD_LIST)
            return bad(ld, bp_jget(d, c, "default"), "a list or map field has no default (unset means empty)");
        if (bp_jget(d, c, "sent_to") != BP_NONE && f->type != BP_FIELD_SECRET)
            return bad(ld, bp_jget(d, c, "sent_to"), "'sent_to' is for secret fields: the URL fields the secret is sent to");
    }
    return 0;
}

/* A list of names at obj.key into *out (NULL-terminated); absent: *n = 0
 * and *out NULL.  `what` says what each entry must be, for the error. */
static int load_names(loader *ld, uint32_t obj, const char *key, const char *what, char ***out, size_t *n)
{
    const bp_doc *d = ld->d;
    uint32_t list = bp_jget(d, obj, key);
    *out = NULL;
    *n = 0;
    if (list == BP_NONE) return 0;
    char msg[200];
    snprintf(msg, sizeof msg, "'%s' must be a list of %s", key, what);
    if (d->nodes[list].type != BP_JARRAY) return bad(ld, list, msg);
    *out = bp_calloc(d->nodes[list].len + 1, sizeof **out);
    for (uint32_t c = list + 1, k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        const char *s = bp_jscalar(d, c);
        if (!s || !*s) return bad(ld, c, msg);
        (*out)[(*n)++] = xstrdup(s);
    }
    return 0;
}

/* Each name of `names` must be a config field of type url (and, with
 * `among`, one of those): the line of the offending entry otherwise. */
static int check_url_fields(loader *ld, const bp_blueprint *bp, uint32_t list, char **names, size_t n, char **among,
                            size_t namong, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        const bp_field *f = bp_blueprint_field(bp, names[i]);
        int listed = !among;
        for (size_t j = 0; !listed && j < namong; j++) listed = !strcmp(among[j], names[i]);
        if (f && f->type == BP_FIELD_URL && listed) continue;
        uint32_t c = list + 1;
        for (size_t k = 0; k < i; k++) c = ld->d->nodes[c].next;
        char msg[400];
        snprintf(msg, sizeof msg, "%s names '%.100s', which is not %s", what, names[i],
                 !f || f->type != BP_FIELD_URL ? "a config field of type url" : "one of destinations.config");
        return bad(ld, c, msg);
    }
    return 0;
}

/* A fixed host: a DNS name (letters, digits, '-' and '.'), whose last label
 * is not all digits (no IP literals) and that is not localhost: loopback
 * and internal addresses are reached only through a configured URL. */
static int fixed_host_ok(const char *h)
{
    size_t n = strlen(h);
    if (!n || n > 253 || h[0] == '.' || h[n - 1] == '.' || strstr(h, "..")) return 0;
    for (const char *p = h; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')) return 0;
    const char *last = strrchr(h, '.');
    last = last ? last + 1 : h;
    if (strspn(last, "0123456789") == strlen(last)) return 0;
    return strcmp(h, "localhost") != 0 && (n < 10 || strcmp(h + n - 10, ".localhost") != 0);
}

/* destinations: {config: [URL fields], hosts: [fixed hosts]}, and each
 * secret's sent_to (default: every destination field). */
static int load_destinations(loader *ld, bp_blueprint *bp, uint32_t fields)
{
    static const char *const dest_keys[] = { "config", "hosts", NULL };
    const bp_doc *d = ld->d;
    uint32_t dest = get_map(ld, 0, "destinations", dest_keys);
    if (dest == NOT_A_MAP) return -1;
    if (dest != BP_NONE && bp_jget(d, dest, "config") != BP_NONE) {
        if (load_names(ld, dest, "config", "config field keys of type url", &bp->dest_fields, &bp->ndest_fields) < 0 ||
            check_url_fields(ld, bp, bp_jget(d, dest, "config"), bp->dest_fields, bp->ndest_fields, NULL, 0,
                             "destinations.config") < 0)
            return -1;
    } else {
        bp->dest_fields = bp_calloc(bp->nfields + 1, sizeof *bp->dest_fields);
        for (size_t i = 0; i < bp->nfields; i++)
            if (bp->fields[i].type == BP_FIELD_URL) bp->dest_fields[bp->ndest_fields++] = xstrdup(bp->fields[i].key);
    }
    if (dest != BP_NONE) {
        if (load_names(ld, dest, "hosts", "host names", &bp->dest_hosts, &bp->ndest_hosts) < 0) return -1;
        uint32_t c = bp_jget(d, dest, "hosts") + 1;
        for (size_t i = 0; i < bp->ndest_hosts; i++, c = d->nodes[c].next) {
            for (char *p = bp->dest_hosts[i]; *p; p++) if (*p >= 'A' && *p <= 'Z') *p += 32;
            if (!fixed_host_ok(bp->dest_hosts[i]))
                return bad(ld, c, "destinations.hosts: each must be a host name such as trackcmp.net (no "
                           "scheme, port, IP address or localhost: those are reached through a config URL field)");
        }
    }
    for (uint32_t c = fields + 1, k = 0; k < bp->nfields; k++, c = d->nodes[c].next) {
        bp_field *f = &bp->fields[k];
        if (f->type != BP_FIELD_SECRET) continue;
        if (bp_jget(d, c, "sent_to") != BP_NONE) {
            if (load_names(ld, c, "sent_to", "config field keys of type url", &f->sent_to, &f->nsent_to) < 0 ||
                check_url_fields(ld, bp, bp_jget(d, c, "sent_to"), f->sent_to, f->nsent_to, bp->dest_fields,
                                 bp->ndest_fields, "sent_to") < 0)
                return -1;
            continue;
        }
        f->sent_to = bp_calloc(bp->ndest_fields + 1, sizeof *f->sent_to);
        for (size_t i = 0; i < bp->ndest_fields; i++) f->sent_to[f->nsent_to++] = xstrdup(bp->dest_fields[i]);
    }
    return 0;
}

static int load_together(loader *ld, bp_blueprint *bp, uint32_t rules)
{
    const bp_doc *d = ld->d;
    uint32_t groups = bp_jget(d, rules, "together");
    if (groups == BP_NONE) return 0;
    if (d->nodes[groups].type != BP_JARRAY) return bad(ld, groups, "'together' must be a list of lists of field keys");
    bp->together = bp_calloc(d->nodes[groups].len + 1, sizeof *bp->together);
    for (uint32_t g = groups + 1, k = 0; k < d->nodes[groups].len; k++, g = d->nodes[g].next) {
        if (d->nodes[g].type != BP_JARRAY) return bad(ld, g, "each 'together' group must be a list of field keys");
        char **keys = bp_calloc(d->nodes[g].len + 1, sizeof *keys);
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

/* An event table row (name), or one of the mappings that are not rows
 * (special: "custom", "consent_denied" or "verify"). */
static int load_route(loader *ld, bp_blueprint *bp, uint32_t node, const char *name, const char *special, bp_route *r)
{
    const bp_doc *d = ld->d;
    if (d->nodes[node].type != BP_JOBJECT) return bad(ld, node, "each event must be a map with type and mapping");
    /* custom: only a mapping; its events are track events, each off until
     * the config enables it by name */
    static const char *const route_keys[] = { "type", "mapping", "enabled", NULL };
    static const char *const custom_keys[] = { "mapping", NULL };
    char section[160];
    snprintf(section, sizeof section, name ? "events.%.140s" : "%s", name ? name : special);
    if (check_keys(ld, node, section, name ? route_keys : custom_keys) < 0) return -1;
    const char *mapping = get_text(ld, node, "mapping", 1);
    if (!mapping) return -1;
    const char *type = name ? get_text(ld, node, "type", 1) : "track";
    if (!type) return -1;
    r->name = xstrdup(name ? name : special);
    r->type = xstrdup(type);
    r->mapping = xstrdup(mapping);
    r->line = (int)d->nodes[node].line;
    if ((r->enabled = name ? get_bool(ld, node, "enabled", 1) : 0) < 0) return -1;
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
    bp->routes = bp_calloc(d->nodes[events].len + 1, sizeof *bp->routes);
    for (uint32_t c = events + 1, k = 0; k < d->nodes[events].len; k++) {
        const char *name = bp_jtext(d, c);
        if (load_route(ld, bp, c + 1, name, NULL, &bp->routes[bp->nroutes++]) < 0) return -1;
        c = d->nodes[c + 1].next;
    }
    return 0;
}

/* An integer in [min, max] under obj.key, dflt when absent; -1 with an error. */
static int get_int(loader *ld, uint32_t obj, const char *key, long dflt, long min, long max, long *out)
{
    uint32_t v = bp_jget(ld->d, obj, key);
    *out = dflt;
    if (v == BP_NONE) return 0;
    const char *s = ld->d->nodes[v].type == BP_JNUMBER ? bp_jscalar(ld->d, v) : NULL;
    char *end = NULL;
    long n = s ? strtol(s, &end, 10) : 0;
    if (!s || *end || n < min || n > max) {
        char what[200];
        snprintf(what, sizeof what, "batch.%s must be a whole number from %ld to %ld", key, min, max);
        return bad(ld, v, what);
    }
    *out = n;
    return 0;
}

/* batch.events: event table rows (one name or a list), each named once. */
static int load_batch_events(loader *ld, bp_blueprint *bp, uint32_t node)
{
    const bp_doc *d = ld->d;
    uint32_t list = bp_jget(d, node, "events");
    if (list == BP_NONE) return bad(ld, node, "missing required key 'events' in 'batch' (the event table rows it takes)");
    int one = d->nodes[list].type == BP_JSTRING;
    if (!one && (d->nodes[list].type != BP_JARRAY || !d->nodes[list].len))
        return bad(ld, list, "batch.events must name event table rows: one name or a list");
    size_t n = one ? 1 : d->nodes[list].len;
    bp->batch.events = bp_calloc(n + 1, sizeof *bp->batch.events);
    for (uint32_t c = one ? list : list + 1, k = 0; k < n; k++, c = d->nodes[c].next) {
        const char *name = d->nodes[c].type == BP_JSTRING ? bp_jtext(d, c) : NULL;
        const bp_route *r = name && bp->has_custom && !strcmp(name, "custom") ? &bp->custom : NULL;
        for (size_t i = 0; name && i < bp->nroutes && !r; i++) if (!strcmp(bp->routes[i].name, name)) r = &bp->routes[i];
        if (!r) {
            bp_buf m;
            bp_buf_init(&m);
            bp_buf_printf(&m, "batch.events: '%.100s' is not a row of the event table (rows: ", name ? name : "(not a name)");
            const char *best = NULL;
            size_t best_d = (size_t)-1;
            for (size_t i = 0; i < bp->nroutes; i++) {
                bp_buf_printf(&m, "%s%s", i ? ", " : "", bp->routes[i].name);
                if (name && bp_key_nearer(name, bp->routes[i].name, &best_d)) best = bp->routes[i].name;
            }
            bp_buf_adds(&m, bp->has_custom ? ", custom)" : ")");
            if (best) bp_buf_printf(&m, "; did you mean '%s'?", best);
            bad(ld, c, m.data);
            bp_buf_free(&m);
            return -1;
        }
        for (size_t i = 0; i < bp->batch.nevents; i++)
            if (!strcmp(bp->batch.events[i], name)) return bad(ld, c, "batch.events names an event twice");
        bp->batch.events[bp->batch.nevents++] = xstrdup(name);
    }
    return 0;
}

/* batch: {events, mapping, max_events, min_events, max_wait_ms, max_per_minute, enabled_by}. */
static int load_batch(loader *ld, bp_blueprint *bp)
{
    static const char *const batch_keys[] = { "events", "mapping", "max_events", "min_events", "max_wait_ms",
                                              "max_per_minute", "enabled_by", NULL };
    uint32_t node = get_map(ld, 0, "batch", batch_keys);
    if (node == NOT_A_MAP) return -1;
    if (node == BP_NONE) return 0;
    bp->has_batch = 1;
    bp->batch.line = (int)ld->d->nodes[node].line;
    if (load_batch_events(ld, bp, node) < 0) return -1;
    const char *mapping = get_text(ld, node, "mapping", 1);
    if (!mapping) return -1;
    bp->batch.mapping = xstrdup(mapping);
    uint32_t m = bp_jget(ld->d, node, "mapping");
    size_t len = strlen(mapping);
    if (strchr(mapping, '/') || len < 5 || strcmp(mapping + len - 4, ".lua") != 0)
        return bad(ld, m, "batch.mapping must be a .lua file name in the blueprint folder");
    if (!file_exists(bp->dir, mapping)) {
        char what[512];
        snprintf(what, sizeof what, "batch.mapping '%s' does not exist in %s", mapping, bp->dir);
        return bad(ld, m, what);
    }
    long most, fewest, wait, per_minute;
    if (bp_jget(ld->d, node, "max_events") == BP_NONE)
        return bad(ld, node, "missing required key 'max_events' in 'batch' (the most events one request takes)");
    if (get_int(ld, node, "max_events", 0, 2, 100000, &most) < 0) return -1;
    if (get_int(ld, node, "min_events", 2, 2, most, &fewest) < 0) return -1;
    if (get_int(ld, node, "max_wait_ms", 1000, 0, 3600000, &wait) < 0) return -1;
    if (get_int(ld, node, "max_per_minute", 0, 1, 10000, &per_minute) < 0) return -1;
    const char *by = get_text(ld, node, "enabled_by", 0);
    const bp_field *f = by ? bp_blueprint_field(bp, by) : NULL;
    if (by && (!f || f->type != BP_FIELD_BOOLEAN))
        return bad(ld, bp_jget(ld->d, node, "enabled_by"), "batch.enabled_by must name a boolean config field");
    bp->batch.enabled_by = by ? xstrdup(by) : NULL;
    bp->batch.max_events = (int)most;
    bp->batch.min_events = (int)fewest;
    bp->batch.max_wait_ms = wait;
    bp->batch.max_per_minute = (int)per_minute;
    return 0;
}

static int load_strings(loader *ld, uint32_t list, char ***out, size_t *n)
{
    const bp_doc *d = ld->d;
    if (list == BP_NONE) { *out = bp_calloc(2, sizeof **out); (*out)[0] = xstrdup("default"); *n = 1; return 0; }
    if (d->nodes[list].type != BP_JARRAY) return bad(ld, list, "'variants' must be a list of names");
    *out = bp_calloc(d->nodes[list].len + 1, sizeof **out);
    for (uint32_t c = list + 1, k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        const char *s = bp_jscalar(d, c);
        if (!s) return bad(ld, c, "variant names must be strings");
        (*out)[(*n)++] = xstrdup(s);
    }
    return 0;
}

/* ---- responses: the vendor's answer rules (evaluated by classify.c) ---------------------- */

/* status: 200 | 2xx | [200, 201, 4xx] */
static int load_status(loader *ld, uint32_t v, bp_response_rule *r)
{
    const bp_doc *d = ld->d;
    uint32_t one = v, n = 1;
    if (d->nodes[v].type == BP_JARRAY) { one = v + 1; n = d->nodes[v].len; }
    if (!n) return bad(ld, v, "responses: 'status' must not be an empty list");
    for (uint32_t k = 0; k < n; k++, one = d->nodes[one].next) {
        const char *s = bp_jscalar(d, one);
        int lo = -1, hi = -1;
        if (s && strlen(s) == 3 && s[0] >= '1' && s[0] <= '5' && (s[1] == 'x' || s[1] == 'X') && (s[2] == 'x' || s[2] == 'X')) {
            lo = (s[0] - '0') * 100;
            hi = lo + 99;
        } else if (s && d->nodes[one].type == BP_JNUMBER && strspn(s, "0123456789") == strlen(s) && strlen(s) == 3) {
            lo = hi = atoi(s);
        }
        if (lo < 100 || hi > 599)
            return bad(ld, one, "responses: 'status' must be an HTTP status (200), a class (2xx) or a list of them");
        for (int x = lo; x <= hi; x++) r->status[x / 64] |= 1ull << (x % 64);
    }
    return 0;
}

/* json: {PATH: value | [values]} */
static int load_json_tests(loader *ld, uint32_t v, bp_response_rule *r)
{
    const bp_doc *d = ld->d;
    if (d->nodes[v].type != BP_JOBJECT || !d->nodes[v].len)
        return bad(ld, v, "responses: 'json' must be a map of field path to value (or list of values)");
    r->json = bp_calloc(d->nodes[v].len, sizeof *r->json);
    for (uint32_t c = v + 1, k = 0; k < d->nodes[v].len; k++, c = d->nodes[c + 1].next) {
        bp_json_test *t = &r->json[r->njson++];
        const char *path = bp_jscalar(d, c);
        if (!path || !*path || path[0] == '.' || path[strlen(path) - 1] == '.' || strstr(path, ".."))
            return bad(ld, c, "responses: a 'json' path is dot-separated keys, array indexes or '*' (errors.*.code)");
        t->path = xstrdup(path);
        /* a key the body must contain (quoted) for the path to match: lets
         * classify.c skip parsing answers that cannot match */
        for (const char *p = path; *p && !t->key;) {
            size_t n = strcspn(p, ".");
            int index = n == 1 && *p == '*';
            if (!index) { index = 1; for (size_t i = 0; i < n; i++) if (p[i] < '0' || p[i] > '9') index = 0; }
            if (!index && !memchr(p, '"', n) && !memchr(p, '\\', n)) t->key = bp_strndup(p, n);
            p += n + (p[n] == '.');
        }
        uint32_t val = c + 1, nv = 1;
        if (d->nodes[val].type == BP_JARRAY) { nv = d->nodes[val].len; val = val + 1; }
        if (!nv) return bad(ld, c + 1, "responses: a 'json' value list must not be empty");
        t->values = bp_calloc(nv, sizeof *t->values);
        for (uint32_t j = 0; j < nv; j++, val = d->nodes[val].next) {
            uint8_t ty = d->nodes[val].type;
            if (ty == BP_JARRAY || ty == BP_JOBJECT)
                return bad(ld, val, "responses: 'json' values must be strings, numbers, true, false or null");
            t->values[j].type = ty;
            t->values[j].text = (ty == BP_JSTRING || ty == BP_JNUMBER) ? xstrdup(bp_jtext(d, val)) : NULL;
            t->nvalues++;
        }
    }
    return 0;
}

/* A reason template's placeholders (rendered by classify.c): NULL when
 * good, else what is wrong. */
static const char *reason_template_check(const char *t)
{
    for (const char *open; (open = strchr(t, '{')); t = strchr(open, '}') + 1) {
        const char *close = strchr(open, '}');
        if (!close) return "an unclosed '{' (placeholders are {status}, {json.PATH} and {json.PATH|fallback})";
        const char *name = open + 1;
        size_t n = (size_t)(close - name);
        if (n == 6 && !memcmp(name, "status", 6)) continue;
        if (n > 5 && !memcmp(name, "json.", 5)) {
            const char *bar = memchr(name, '|', n);
            size_t plen = (size_t)((bar ? bar : close) - (name + 5));
            const char *p = name + 5;
            if (!plen || p[0] == '.' || p[plen - 1] == '.' || memmem(p, plen, "..", 2) || memchr(p, '*', plen))
                return "a bad {json.PATH} (dot-separated keys and array indexes, no '*')";
            continue;
        }
        return "an unknown placeholder (placeholders are {status}, {json.PATH} and {json.PATH|fallback})";
    }
    return NULL;
}

static int load_responses(loader *ld, bp_blueprint *bp, uint32_t list)
{
    const bp_doc *d = ld->d;
    if (list == BP_NONE || d->nodes[list].type == BP_JNULL) return 0;
    if (d->nodes[list].type != BP_JARRAY)
        return bad(ld, list, "'responses' must be a list of rules (when, outcome, reason)");
    bp->responses = bp_calloc(d->nodes[list].len + 1, sizeof *bp->responses);
    static const char *const rule_keys[] = { "when", "outcome", "reason", NULL };
    static const char *const when_keys[] = { "status", "url_contains", "content_type", "body", "json", NULL };
    uint32_t c = list + 1;
    for (uint32_t k = 0; k < d->nodes[list].len; k++, c = d->nodes[c].next) {
        bp_response_rule *r = &bp->responses[bp->nresponses++];
        r->line = (int)d->nodes[c].line;
        char section[64];
        snprintf(section, sizeof section, "responses[%u]", k + 1);
        if (d->nodes[c].type != BP_JOBJECT) return bad(ld, c, "each responses rule must be a map with when, outcome and reason");
        if (check_keys(ld, c, section, rule_keys) < 0) return -1;
        const char *outcome = get_text(ld, c, "outcome", 1);
        const char *reason = get_text(ld, c, "reason", 1);
        if (!outcome || !reason) return -1;
        if (!strcmp(outcome, "delivered")) r->outcome = BP_OK;
        else if (!strcmp(outcome, "retry")) r->outcome = BP_RETRY;
        else if (!strcmp(outcome, "permanent")) r->outcome = BP_PERMANENT;
        else if (!strcmp(outcome, "auth_failure")) r->outcome = BP_AUTH;
        else return bad(ld, bp_jget(d, c, "outcome"), "responses: 'outcome' must be delivered, retry, permanent or auth_failure");
        const char *problem = reason_template_check(reason);
        if (problem) {
            char what[256];
            snprintf(what, sizeof what, "responses: 'reason' has %s", problem);
            return bad(ld, bp_jget(d, c, "reason"), what);
        }
        r->reason = xstrdup(reason);
        uint32_t when = bp_jget(d, c, "when");
        if (when == BP_NONE) return bad(ld, c, "missing required key 'when' (the conditions of the rule)");
        if (d->nodes[when].type != BP_JOBJECT || !d->nodes[when].len)
            return bad(ld, when, "responses: 'when' must be a map of conditions (status, url_contains, content_type, body, json)");
        snprintf(section, sizeof section, "responses[%u].when", k + 1);
        if (check_keys(ld, when, section, when_keys) < 0) return -1;
        uint32_t v;
        if ((v = bp_jget(d, when, "status")) != BP_NONE && load_status(ld, v, r) < 0) return -1;
        static const char *const texts[] = { "url_contains", "content_type", "body" };
        const char *text[3] = { NULL, NULL, NULL };
        for (int i = 0; i < 3; i++) {
            if ((v = bp_jget(d, when, texts[i])) == BP_NONE) continue;
            if (!(text[i] = bp_jscalar(d, v)) || !*text[i]) {
                char what[128];
                snprintf(what, sizeof what, "responses: '%s' must be a non-empty string", texts[i]);
                return bad(ld, v, what);
            }
        }
        r->url_contains = text[0] ? xstrdup(text[0]) : NULL;
        r->content_type = text[1] ? xstrdup(text[1]) : NULL;
        if (text[2]) {
            if (!strcmp(text[2], "json")) r->body = 1;
            else if (!strcmp(text[2], "not_json")) r->body = 2;
            else return bad(ld, bp_jget(d, when, "body"), "responses: 'body' must be json or not_json");
        }
        if ((v = bp_jget(d, when, "json")) != BP_NONE && load_json_tests(ld, v, r) < 0) return -1;
    }
    return 0;
}

static void free_responses(bp_blueprint *bp)
{
    for (size_t i = 0; i < bp->nresponses; i++) {
        bp_response_rule *r = &bp->responses[i];
        free(r->url_contains);
        free(r->content_type);
        free(r->reason);
        for (size_t j = 0; j < r->njson; j++) {
            for (size_t k = 0; k < r->json[j].nvalues; k++) free(r->json[j].values[k].text);
            free(r->json[j].values);
            free(r->json[j].path);
            free(r->json[j].key);
        }
        free(r->json);
    }
    free(bp->responses);
    free(bp->description);
}

static int load(loader *ld, bp_blueprint *bp)
{
    bp_doc *d = ld->d;
    if (d->nodes[0].type != BP_JOBJECT) return bad(ld, 0, "the top level must be a map");
    static const char *const top_keys[] = {
        "vendor", "name", "description", "category", "status", "consent_category", "variants", "auth_failure_help",
        "config", "config_rules", "rate_limit", "retry", "events", "custom", "consent_denied", "responses",
        "destinations", "verify", "batch", NULL };
    static const char *const rules_keys[] = { "together", NULL };
    static const char *const rate_keys[] = { "requests_per_second", "scope", NULL };
    static const char *const retry_keys[] = { "max_attempts", NULL };
    if (check_keys(ld, 0, NULL, top_keys) < 0) return -1;
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
    TEXT(description, "description", 0)
#undef TEXT
    if (load_strings(ld, bp_jget(d, 0, "variants"), &bp->variants, &bp->nvariants) < 0) return -1;
    if (load_fields(ld, bp, bp_jget(d, 0, "config")) < 0) return -1;
    if (load_destinations(ld, bp, bp_jget(d, 0, "config")) < 0) return -1;
    uint32_t rules = get_map(ld, 0, "config_rules", rules_keys);
    if (rules == NOT_A_MAP) return -1;
    if (rules != BP_NONE && load_together(ld, bp, rules) < 0) return -1;
    uint32_t rl = get_map(ld, 0, "rate_limit", rate_keys);
    if (rl == NOT_A_MAP) return -1;
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
    /* retry: only the number of attempts; the backoff is always exponential
     * with full jitter (base and cap are options of deliver and serve) */
    uint32_t retry = get_map(ld, 0, "retry", retry_keys);
    if (retry == NOT_A_MAP) return -1;
    const char *attempts = retry != BP_NONE ? get_text(ld, retry, "max_attempts", 0) : NULL;
    bp->retry_max_attempts = attempts ? atoi(attempts) : 5;
    if (bp->retry_max_attempts < 1) return bad(ld, retry, "retry.max_attempts must be at least 1");
    if (load_routes(ld, bp, bp_jget(d, 0, "events")) < 0) return -1;
    uint32_t custom = bp_jget(d, 0, "custom");
    if (custom != BP_NONE) {
        if (load_route(ld, bp, custom, NULL, "custom", &bp->custom) < 0) return -1;
        bp->has_custom = 1;
    }
    uint32_t denied = bp_jget(d, 0, "consent_denied");
    if (denied != BP_NONE) {
        if (load_route(ld, bp, denied, NULL, "consent_denied", &bp->consent_denied) < 0) return -1;
        bp->has_consent_denied = 1;
    }
    uint32_t verify = bp_jget(d, 0, "verify");
    if (verify != BP_NONE) {
        if (load_route(ld, bp, verify, NULL, "verify", &bp->verify) < 0) return -1;
        bp->has_verify = 1;
    }
    if (load_batch(ld, bp) < 0) return -1;
    return load_responses(ld, bp, bp_jget(d, 0, "responses"));
}

bp_blueprint *bp_blueprint_load(const char *dir, bp_error *err)
{
    bp_error_clear(err);
    if (!dir || !*dir) { bp_error_set(err, "no blueprint folder given"); return NULL; }
    bp_blueprint *bp = bp_calloc(1, sizeof *bp);
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/') dlen--;
    bp->dir = bp_strndup(dir, dlen);
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
    bp_error_ensure(err, "the blueprint could not be loaded");
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

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
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
    free_responses(bp);
    for (size_t i = 0; i < bp->nvariants; i++) free(bp->variants[i]);
    free(bp->variants);
    for (size_t i = 0; i < bp->nfields; i++) {
        free(bp->fields[i].key);
        free(bp->fields[i].label);
        free(bp->fields[i].help);
        free(bp->fields[i].default_value);
        free_names(bp->fields[i].sent_to, bp->fields[i].nsent_to);
    }
    free(bp->fields);
    free_names(bp->dest_fields, bp->ndest_fields);
    free_names(bp->dest_hosts, bp->ndest_hosts);
    for (size_t i = 0; i < bp->ntogether; i++) {
        for (char **k = bp->together[i]; *k; k++) free(*k);
        free(bp->together[i]);
    }
    free(bp->together);
    for (size_t i = 0; i < bp->nroutes; i++) free_route(&bp->routes[i]);
    free(bp->routes);
    if (bp->has_custom) free_route(&bp->custom);
    if (bp->has_consent_denied) free_route(&bp->consent_denied);
    if (bp->has_verify) free_route(&bp->verify);
    free_names(bp->batch.events, bp->batch.nevents);
    free(bp->batch.mapping);
    free(bp->batch.enabled_by);
    free(bp);
}
