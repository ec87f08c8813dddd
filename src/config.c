/*
 * config.c — an integration's config: load (YAML or JSON; a bare map or the
 * Management API install body) and validate against the blueprint's fields.
 *
 * Validation is strict and specific because a wrong API URL or a pasted key
 * with a trailing newline otherwise shows up hours later as failed deliveries.
 * Secret values are never repeated in messages.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct vctx {
    const bp_doc *d;
    const char *origin;
    bp_error *err;
} vctx;

static int fail_at(vctx *v, uint32_t node, const char *fmt, const char *a, const char *b)
{
    char what[768];
    snprintf(what, sizeof what, fmt, a, b);
    unsigned line = node != BP_NONE && node < v->d->n ? v->d->nodes[node].line : 0;
    if (line) bp_error_set(v->err, "%s:%u: %s", v->origin, line, what);
    else bp_error_set(v->err, "%s: %s", v->origin, what);
    return -1;
}

/* ---- unknown keys ---------------------------------------------------------------------------
 * Every map of a config accepts a fixed set of keys; anything else is a typo
 * that would otherwise be ignored (consent: {default_polcy: allow} leaves the
 * default `deny` in force), so it is an error naming the keys that are known
 * at that place, and the closest one when it is a likely misspelling. */

static const char *const SECTION_KEYS[] = { "events", "consent", NULL };
static const char *const BODY_META_KEYS[] = { "name", "variant", "config", "delivery_mode", NULL };
static const char *const BODY_KEYS[] = { "name", "variant", "config", "events", "consent", "delivery_mode", NULL };
static const char *const EVENT_KEYS[] = { "enabled", NULL };
static const char *const CONSENT_KEYS[] = { "default_policy", NULL };

/* One group of known keys in a message: the blueprint's fields, or a list. */
typedef struct keygroup {
    const char *label;
    const bp_blueprint *fields;
    const char *const *names;
} keygroup;

static int in_list(const char *const *names, const char *key)
{
    for (; *names; names++) if (!strcmp(*names, key)) return 1;
    return 0;
}

static void note_key(bp_buf *msg, int *first, const char *known, const char *key, const char **best, size_t *best_d)
{
    bp_buf_printf(msg, "%s%s", *first ? "" : ", ", known);
    *first = 0;
    if (bp_key_nearer(key, known, best_d)) *best = known;
}

/* "WHAT (LABEL: a, b; LABEL: c); did you mean 'b'?" at the key's line. */
static int unknown_key(vctx *v, uint32_t keynode, const char *what, const char *key, const keygroup *groups,
                       size_t ngroups)
{
    bp_buf msg;
    bp_buf_init(&msg);
    bp_buf_printf(&msg, "%s (", what);
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (size_t g = 0; g < ngroups; g++) {
        int first = 1;
        bp_buf_printf(&msg, "%s%s: ", g ? "; " : "", groups[g].label);
        if (groups[g].fields)
            for (size_t i = 0; i < groups[g].fields->nfields; i++)
                note_key(&msg, &first, groups[g].fields->fields[i].key, key, &best, &best_d);
        if (groups[g].names)
            for (const char *const *n = groups[g].names; *n; n++) note_key(&msg, &first, *n, key, &best, &best_d);
    }
    bp_buf_addc(&msg, ')');
    if (best) bp_buf_printf(&msg, "; did you mean '%s'?", best);
    int rc = fail_at(v, keynode, "%s%s", msg.data, "");
    bp_buf_free(&msg);
    return rc;
}

/* Every key of the map at obj must be in names; `where` names the map. */
static int check_keys(vctx *v, uint32_t obj, const char *where, const char *const *names)
{
    const bp_doc *d = v->d;
    for (uint32_t k = obj + 1, i = 0; i < d->nodes[obj].len; i++, k = d->nodes[k + 1].next) {
        const char *key = bp_jtext(d, k);
        if (in_list(names, key)) continue;
        char what[640];
        snprintf(what, sizeof what, "unknown key '%.200s' in %s", key, where);
        keygroup g = { "known keys", NULL, names };
        return unknown_key(v, k, what, key, &g, 1);
    }
    return 0;
}

static int has_space_or_control(const char *s)
{
    for (; *s; s++) if ((unsigned char)*s <= ' ' || *s == 0x7f) return 1;
    return 0;
}

static int is_loopback_host(const char *host, size_t len)
{
    if (len == 9 && !strncasecmp(host, "localhost", 9)) return 1;
    /* NAME.localhost is loopback too (RFC 6761; curl resolves it so): one
     * local emulator can stand for many vendor accounts */
    if (len > 10 && !strncasecmp(host + len - 10, ".localhost", 10)) return 1;
    if (len == 5 && !strncmp(host, "[::1]", 5)) return 1;
    return len >= 4 && !strncmp(host, "127.", 4);
}

/* Absolute https:// URL with a host; http:// only towards loopback (tests). */
static const char *check_url(const char *s)
{
    if (has_space_or_control(s)) return "must not contain spaces or control characters";
    const char *rest;
    int plain = 0;
    if (!strncasecmp(s, "https://", 8)) rest = s + 8;
    else if (!strncasecmp(s, "http://", 7)) { rest = s + 7; plain = 1; }
    else return "must be an absolute https:// URL";
    size_t hostlen = strcspn(rest, "/?#");
    const char *colon = rest[0] == '[' ? strchr(rest, ']') : NULL;
    size_t namelen = colon ? (size_t)(colon - rest) + 1 : strcspn(rest, ":/?#");
    if (namelen > hostlen) namelen = hostlen;
    if (namelen == 0) return "has no host name";
    if (memchr(rest, '@', hostlen)) return "must not contain user names or passwords";
    if (plain && !is_loopback_host(rest, namelen))
        return "must use https:// (plain http:// is allowed only for 127.0.0.1 and localhost)";
    return NULL;
}

static const char *check_value(const bp_field *f, const char *s)
{
    switch (f->type) {
    case BP_FIELD_URL: return check_url(s);
    case BP_FIELD_SECRET:
        if (!*s) return "must not be empty";
        if (has_space_or_control(s)) return "must not contain spaces, line breaks or control characters (check for a stray newline when pasting)";
        return NULL;
    case BP_FIELD_INTEGER: {
        size_t n = strlen(s);
        if (n == 0 || n > 18 || strspn(s, "0123456789") != n) return "must be a whole number (digits only)";
        return NULL;
    }
    case BP_FIELD_BOOLEAN:
        return strcmp(s, "true") && strcmp(s, "false") ? "must be true or false" : NULL;
    case BP_FIELD_STRING:
    case BP_FIELD_LIST:
    case BP_FIELD_MAP:
        for (const char *p = s; *p; p++) if ((unsigned char)*p < ' ') return "must not contain control characters";
        return NULL;
    }
    return NULL;
}

/* A list field's value: a YAML/JSON list of strings or numbers, or one
 * string of comma-separated items ("1, 2" — what a settings form sends),
 * kept as a JSON array of strings.  A map field's: names to strings or
 * numbers, kept as a JSON object.  NULL, or the problem. */
static const char *collection_value(const bp_doc *d, uint32_t val, const bp_field *f, bp_buf *out)
{
    uint8_t t = d->nodes[val].type;
    if (f->type == BP_FIELD_LIST && t == BP_JSTRING) {
        const char *s = bp_jtext(d, val);
        bp_buf_addc(out, '[');
        int n = 0;
        while (*s) {
            size_t len = strcspn(s, ",");
            const char *a = s, *b = s + len;
            while (a < b && (*a == ' ' || *a == '\t')) a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
            if (b > a) { if (n++) bp_buf_addc(out, ','); bp_json_write_string(out, a, (size_t)(b - a)); }
            s += len + (s[len] == ',');
        }
        bp_buf_addc(out, ']');
        return NULL;
    }
    if (f->type == BP_FIELD_LIST ? t != BP_JARRAY : t != BP_JOBJECT)
        return f->type == BP_FIELD_LIST ? "must be a list (or a comma-separated string)" : "must be a map of names to values";
    int list = f->type == BP_FIELD_LIST;
    bp_buf_addc(out, list ? '[' : '{');
    uint32_t c = val + 1;
    for (uint32_t i = 0; i < d->nodes[val].len; i++) {
        uint32_t item = list ? c : c + 1;
        const char *v = bp_jscalar(d, item);
        if (!v) { bp_buf_reset(out); return list ? "each item must be a single value" : "each value must be a single value"; }
        if (i) bp_buf_addc(out, ',');
        if (!list) {
            bp_json_write_string(out, bp_jtext(d, c), d->nodes[c].len);
            bp_buf_addc(out, ':');
        }
        bp_json_write_string(out, v, strlen(v));
        c = d->nodes[item].next;
    }
    bp_buf_addc(out, list ? ']' : '}');
    return NULL;
}

static void add_value(bp_config *c, const char *key, const char *value, int secret)
{
    c->values = bp_realloc(c->values, (c->nvalues + 1) * sizeof *c->values);
    c->values[c->nvalues].key = bp_strdup(key);
    c->values[c->nvalues].value = bp_strdup(value);
    c->values[c->nvalues].secret = secret;
    c->nvalues++;
}

const char *bp_config_get(const bp_config *c, const char *key)
{
    for (size_t i = 0; i < c->nvalues; i++)
        if (!strcmp(c->values[i].key, key)) return c->values[i].value;
    return NULL;
}

static int load_events(vctx *v, bp_config *c, uint32_t ev)
{
    const bp_doc *d = v->d;
    if (d->nodes[ev].type != BP_JOBJECT)
        return fail_at(v, ev, "'events' must be a map such as {\"Webinar Registered\": {\"enabled\": true}}%s%s", "", "");
    c->events = bp_calloc(d->nodes[ev].len + 1, sizeof *c->events);
    for (uint32_t k = ev + 1, i = 0; i < d->nodes[ev].len; i++) {
        const char *name = bp_jtext(d, k);
        uint32_t val = k + 1;
        if (d->nodes[val].type == BP_JOBJECT) {
            char where[320];
            snprintf(where, sizeof where, "events.'%.200s'", name);
            if (check_keys(v, val, where, EVENT_KEYS) < 0) return -1;
        }
        uint32_t en = d->nodes[val].type == BP_JOBJECT ? bp_jget(d, val, "enabled") : val;
        if (en == BP_NONE || (d->nodes[en].type != BP_JTRUE && d->nodes[en].type != BP_JFALSE))
            return fail_at(v, val, "events.'%s' must be {enabled: true} or {enabled: false}%s", name, "");
        c->events[c->nevents].name = bp_strdup(name);
        c->events[c->nevents].enabled = d->nodes[en].type == BP_JTRUE;
        c->nevents++;
        k = d->nodes[val].next;
    }
    return 0;
}

static int load_consent(vctx *v, bp_config *c, uint32_t node)
{
    const bp_doc *d = v->d;
    uint32_t pol = d->nodes[node].type == BP_JOBJECT ? bp_jget(d, node, "default_policy") : BP_NONE;
    if (d->nodes[node].type != BP_JOBJECT || (pol != BP_NONE && !bp_jscalar(d, pol)))
        return fail_at(v, node, "'consent' must be a map such as {default_policy: deny}%s%s", "", "");
    if (check_keys(v, node, "'consent'", CONSENT_KEYS) < 0) return -1;
    if (pol == BP_NONE) return 0;
    const char *p = bp_jscalar(d, pol);
    if (!strcmp(p, "allow")) c->consent_default = BP_CONSENT_ALLOW;
    else if (!strcmp(p, "deny")) c->consent_default = BP_CONSENT_DENY;
    else return fail_at(v, pol, "consent.default_policy must be 'allow' or 'deny', not '%s'%s", p, "");
    return 0;
}

const char *bp_field_type_name(enum bp_field_type t)
{
    switch (t) {
    case BP_FIELD_SECRET: return "secret";
    case BP_FIELD_URL: return "url";
    case BP_FIELD_INTEGER: return "integer";
    case BP_FIELD_BOOLEAN: return "boolean";
    case BP_FIELD_LIST: return "list";
    case BP_FIELD_MAP: return "map";
    default: return "string";
    }
}

/* name, variant and delivery_mode: an install body's, also taken at the
 * top of a bare map unless the blueprint has a field of that name */
static int read_meta(vctx *v, const bp_blueprint *bp, bp_config *c, uint32_t root, int body)
{
    const bp_doc *d = v->d;
    static const char *const meta_keys[] = { "name", "variant", "delivery_mode" };
    uint32_t meta[3];
    for (int m = 0; m < 3; m++) {
        meta[m] = body || !bp_blueprint_field(bp, meta_keys[m]) ? bp_jget(d, root, meta_keys[m]) : BP_NONE;
        if (meta[m] != BP_NONE && d->nodes[meta[m]].type != BP_JNULL && !bp_jscalar(d, meta[m]))
            return fail_at(v, meta[m], "'%s' must be a single text value%s", meta_keys[m], "");
    }
    const char *name = bp_jscalar(d, meta[0]);
    const char *variant = bp_jscalar(d, meta[1]);
    const char *mode = bp_jscalar(d, meta[2]);
    c->name = name ? bp_strdup(name) : NULL;
    c->delivery_mode = mode ? bp_strdup(mode) : NULL;
    if (variant) {
        int known = 0;
        for (size_t i = 0; i < bp->nvariants; i++) if (!strcmp(bp->variants[i], variant)) known = 1;
        if (!known) return fail_at(v, meta[1], "unknown variant '%s' (this blueprint has: %s)", variant, bp->variants[0]);
        c->variant = bp_strdup(variant);
    }
    if (mode && strcmp(mode, "server_side") != 0)
        return fail_at(v, meta[2], "delivery_mode '%s' is not supported; use \"server_side\"%s", mode, "");
    return 0;
}

/* One key of the config map: a blueprint field's value, checked and added. */
static int read_field(vctx *v, const bp_blueprint *bp, bp_config *c, uint32_t k, int body)
{
    const bp_doc *d = v->d;
    const char *key = bp_jtext(d, k);
    uint32_t val = k + 1;
    if (!strcmp(key, "events") || !strcmp(key, "consent")) return 0;
    const bp_field *f = bp_blueprint_field(bp, key);
    if (!f && !body && in_list(BODY_META_KEYS, key)) return 0;   /* taken by read_meta */
    if (!f) {
        /* every key accepted here is listed: the fields, the sections,
         * and at the top of a bare map the install body's keys */
        char what[320];
        snprintf(what, sizeof what, "unknown config field '%.200s'%s", key, body ? " in 'config'" : "");
        keygroup groups[3] = {
            { "known fields", bp, NULL },
            { "sections", NULL, SECTION_KEYS },
            { "install-body keys", NULL, BODY_META_KEYS },
        };
        return unknown_key(v, k, what, key, groups, body ? 2 : 3);
    }
    if (d->nodes[val].type == BP_JNULL) return 0;
    if (f->type == BP_FIELD_LIST || f->type == BP_FIELD_MAP) {
        if (bp_config_get(c, key)) return fail_at(v, val, "config field '%s' is set twice%s", key, "");
        bp_buf json;
        bp_buf_init(&json);
        const char *problem = collection_value(d, val, f, &json);
        if (!problem) add_value(c, key, json.data, 0);
        bp_buf_free(&json);
        if (problem) return fail_at(v, val, "config field '%s' %s", key, problem);
        return 0;
    }
    if (f->type == BP_FIELD_BOOLEAN && (d->nodes[val].type == BP_JTRUE || d->nodes[val].type == BP_JFALSE)) {
        add_value(c, key, d->nodes[val].type == BP_JTRUE ? "true" : "false", 0);
        return 0;
    }
    const char *s = bp_jscalar(d, val);
    if (!s) return fail_at(v, val, "config field '%s' must be a single %s value", key, bp_field_type_name(f->type));
    if (!*s) return 0;  /* "" means unset, as in most settings forms */
    if (bp_config_get(c, key)) return fail_at(v, val, "config field '%s' is set twice%s", key, "");
    const char *problem = check_value(f, s);
    if (problem) {
        char what[512];
        if (f->type == BP_FIELD_SECRET) snprintf(what, sizeof what, "%s (value not shown)", problem);
        else snprintf(what, sizeof what, "%s; got '%.200s'", problem, s);
        return fail_at(v, val, "config field '%s': %s", key, what);
    }
    add_value(c, key, s, f->type == BP_FIELD_SECRET);
    return 0;
}

/* Fields not set: their defaults, or the first required one missing. */
static int fill_defaults(vctx *v, const bp_blueprint *bp, bp_config *c, uint32_t cfg)
{
    for (size_t i = 0; i < bp->nfields; i++) {
        const bp_field *f = &bp->fields[i];
        if (bp_config_get(c, f->key)) continue;
        if (f->default_value) { add_value(c, f->key, f->default_value, f->type == BP_FIELD_SECRET); continue; }
        if (f->required)
            return fail_at(v, cfg, "config field '%s' is required: %s", f->key, f->help && *f->help ? f->help : f->label);
    }
    return 0;
}

/* Fields the blueprint says go together: all of them set or none. */
static int check_together(vctx *v, const bp_blueprint *bp, const bp_config *c, uint32_t cfg)
{
    for (size_t g = 0; g < bp->ntogether; g++) {
        size_t set = 0, total = 0;
        const char *missing = NULL;
        for (char **k = bp->together[g]; *k; k++, total++) {
            if (bp_config_get(c, *k)) set++; else if (!missing) missing = *k;
        }
        if (set && set < total) {
            bp_buf names;
            bp_buf_init(&names);
            for (char **k = bp->together[g]; *k; k++) bp_buf_printf(&names, "%s'%s'", k == bp->together[g] ? "" : " and ", *k);
            char what[640];
            snprintf(what, sizeof what, "config fields %s go together: set all of them or none; '%s' is missing",
                     names.data, missing);
            bp_buf_free(&names);
            return fail_at(v, cfg, "%s%s", what, "");
        }
    }
    return 0;
}

static int validate(vctx *v, const bp_blueprint *bp, bp_config *c, uint32_t root)
{
    const bp_doc *d = v->d;
    uint32_t cfg = root;
    uint32_t inner = bp_jget(d, root, "config");
    int body = inner != BP_NONE;
    if (body) {
        /* Management API install body: {"name","variant","config":{…},"events","consent","delivery_mode"};
         * the server's stored documents have this shape too */
        if (d->nodes[inner].type != BP_JOBJECT) return fail_at(v, inner, "'config' must be a map of field values%s%s", "", "");
        cfg = inner;
        if (check_keys(v, root, "the install body", BODY_KEYS) < 0) return -1;
    }
    if (read_meta(v, bp, c, root, body) < 0) return -1;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t holder = pass ? root : cfg;
        if (pass && root == cfg) break;
        uint32_t ev = bp_jget(d, holder, "events");
        if (ev != BP_NONE && !c->events && load_events(v, c, ev) < 0) return -1;
        uint32_t co = bp_jget(d, holder, "consent");
        if (co != BP_NONE && load_consent(v, c, co) < 0) return -1;
    }
    for (uint32_t k = cfg + 1, i = 0; i < d->nodes[cfg].len; i++, k = d->nodes[k + 1].next)
        if (read_field(v, bp, c, k, body) < 0) return -1;
    if (fill_defaults(v, bp, c, cfg) < 0) return -1;
    return check_together(v, bp, c, cfg);
}

bp_config *bp_config_load_text(const bp_blueprint *bp, const char *text, size_t len, const char *origin,
                               bp_error *err)
{
    bp_error_clear(err);
    if (!bp || !text) { bp_error_set(err, "no blueprint or no config text given"); return NULL; }
    if (!origin) origin = "config";
    bp_doc d;
    bp_doc_init(&d);
    d.origin = origin;
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) i++;
    int rc;
    if (i < len && text[i] == '{') {
        bp_json_limits lim = { 4u * 1024u * 1024u, 64 };
        rc = bp_json_parse(&d, text, len, &lim, err);
        if (rc < 0) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            bp_error_set(err, "%s: %s", origin, msg);
        } else {
            /* the JSON parser keeps no lines (events need none); a config's
             * messages do: count them from the source (nodes are in
             * document order, offsets as in `text`) */
            size_t at = 0, line = 1;
            for (size_t n = 0; n < d.n; n++) {
                size_t off = d.nodes[n].off;
                if (off < at) { at = 0; line = 1; }
                for (; at < off && at < len; at++) if (text[at] == '\n') line++;
                d.nodes[n].line = (uint32_t)line;
            }
            rc = bp_doc_unique_keys(&d, origin, err);
        }
    } else {
        rc = bp_yaml_parse(&d, text, len, err);
    }
    bp_config *c = NULL;
    if (rc == 0) {
        c = bp_calloc(1, sizeof *c);
        c->consent_default = BP_CONSENT_DENY;
        vctx v = { &d, origin, err };
        if (d.nodes[0].type != BP_JOBJECT) {
            bp_error_set(err, "%s: the config must be a map of field names to values", origin);
            rc = -1;
        } else {
            rc = validate(&v, bp, c, 0);
        }
        if (rc < 0) { bp_config_free(c); c = NULL; }
    }
    bp_doc_free(&d);
    if (!c) bp_error_ensure(err, "the config is not valid");
    return c;
}

bp_config *bp_config_load_file(const bp_blueprint *bp, const char *path, bp_error *err)
{
    bp_error_clear(err);
    if (!path) { bp_error_set(err, "no config file given"); return NULL; }
    bp_buf text;
    bp_buf_init(&text);
    if (bp_read_file(path, &text, err) < 0) {
        bp_error_ensure(err, "cannot read the config file");
        bp_buf_free(&text);
        return NULL;
    }
    bp_config *c = bp_config_load_text(bp, text.data, text.len, path, err);
    bp_buf_free(&text);
    return c;
}

void bp_config_free(bp_config *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->nvalues; i++) { free(c->values[i].key); free(c->values[i].value); }
    free(c->values);
    for (size_t i = 0; i < c->nevents; i++) free(c->events[i].name);
    free(c->events);
    free(c->name);
    free(c->variant);
    free(c->delivery_mode);
    free(c);
}
