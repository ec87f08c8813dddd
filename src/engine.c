/*
 * engine.c — judge one event: parse, route through the event table, check
 * consent, run the mapping in the sandbox, and turn what it returns into
 * vendor requests.
 *
 * Every path ends in exactly one outcome (deliver, drop with a reason, or
 * error with a message naming file and line), so nothing is lost silently.
 */
#include "internal.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct bp_engine {
    const bp_blueprint *bp;
    const bp_config *cfg;
    bp_sandbox *sb;
    lua_State *L;
    int *route_refs;        /* registry refs of the compiled mappings */
    int custom_ref;
    int denied_ref;         /* consent_denied's mapping, or LUA_NOREF */
    int verify_ref;         /* verify's mapping, or LUA_NOREF */
    bp_doc denied_doc;      /* the event cut down for it */
    int ctx_ref;            /* the real ctx table (the core writes per-event fields) */
    int ctx_proxy_ref;      /* what mappings receive: read-only */
    bp_doc doc;
    bp_json_limits json_limits;
    long seq;               /* events run by bp_engine_run: the dry-run index */
    int in_run_as;          /* bp_engine_run_as: a delivery loop, no index to tell */
    bp_outcome *out;        /* the event running, for its log lines */
    bp_buf *log_to;         /* the CLI's lines go here instead of stderr (bp_engine_log_to) */
    /* steps (ctx.send) and ctx.cache */
    bp_cache *cache, *own_cache;    /* the delivery pool's, or the engine's own (made on first use) */
    char own_account[300];          /* the account of e->cfg (bp_engine_run) */
    const char *account;            /* the account of the config running */
    bp_doc jdoc;                    /* the journal given for the next run, parsed */
    const char *jtext; size_t jlen;
    size_t jnext;                   /* journal entries this run has gone past */
    uint64_t owner;                 /* who claims shared answers (a delivery job) */
    bp_doc adoc;                    /* a step's answer, parsed for r.json */
    bp_answer_fn answerer; void *answerer_ud;
    size_t nsteps;                  /* steps reached in this run */
    int stopped;                    /* the run stopped at a step (pending or waiting) */
    struct cache_write { char *key, *json; double ttl; int durable; } *writes;   /* ctx.cache.set, applied when the run completes */
    size_t nwrites, capwrites;
    size_t write_bytes;         /* held by this run's writes: at most the memory cap */
};

#define MAX_STEPS 50                /* per event: a mapping that loops on ctx.send stops here */
#define STEP_WAIT_MS 25             /* another event fetches the answer a step shares: look again after */
#define DEFAULT_TTL_S 3600.0

/* ---- log lines (print, ctx.log) ------------------------------------------------ */

#define LOG_LINES_MAX 50            /* per event, in the outcome */
#define LOG_BYTES_MAX (16 * 1024)   /* per event, in the outcome */
#define LOG_LINE_MAX 4096           /* one line, in the outcome and on stderr */

/* Length of s cut to at most max bytes, not inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

/* Write one log line: a JSON record to the log callback (bp_set_log;
 * serve's is stderr), else a human line on stderr (the CLI). */
static void emit_log(bp_engine *e, const bp_outcome *o, const char *at, const char *text, size_t len)
{
    if (bp_log_has_sink()) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"log\":");
        bp_json_write_text(&f, text, len);
        bp_buf_adds(&f, ",\"at\":");
        bp_json_write_text(&f, at, strlen(at));
        bp_buf_adds(&f, ",\"vendor\":");
        bp_json_write_text(&f, e->bp->vendor, strlen(e->bp->vendor));
        if (e->cfg->name) { bp_buf_adds(&f, ",\"integration\":"); bp_json_write_text(&f, e->cfg->name, strlen(e->cfg->name)); }
        bp_buf_adds(&f, ",\"message_id\":");
        if (o->message_id) bp_json_write_text(&f, o->message_id, strlen(o->message_id)); else bp_buf_adds(&f, "null");
        if (o->event) { bp_buf_adds(&f, ",\"event\":"); bp_json_write_text(&f, o->event, strlen(o->event)); }
        if (!e->in_run_as) bp_buf_printf(&f, ",\"index\":%ld", e->seq);
        bp_log("info", "mapping log", f.data);
        bp_buf_free(&f);
    } else {
        /* [event 3 msg-1]: the dry-run index (events this engine ran) and the messageId */
        char tag[160];
        if (e->in_run_as)
            snprintf(tag, sizeof tag, "[%.120s]", o->message_id ? o->message_id : "no messageId");
        else if (o->message_id)
            snprintf(tag, sizeof tag, "[event %ld %.120s]", e->seq, o->message_id);
        else
            snprintf(tag, sizeof tag, "[event %ld]", e->seq);
        if (e->log_to) bp_buf_printf(e->log_to, "blueprint log %s %s: %.*s\n", tag, at, (int)len, text);
        else fprintf(stderr, "blueprint log %s %s: %.*s\n", tag, at, (int)len, text);
    }
}

/* A mapping's log line: kept with the event's outcome (bounded).  It is
 * written (emit_log) when the run completes: a run that stops at a step
 * runs again and logs the same lines again. */
static void on_log(void *ud, const char *at, const char *msg, size_t len)
{
    bp_engine *e = ud;
    bp_outcome *o = e->out;
    size_t n = utf8_cut(msg, len, LOG_LINE_MAX);
    if (o->nlogs >= LOG_LINES_MAX || o->logs_bytes + n > LOG_BYTES_MAX) { o->logs_dropped++; return; }
    bp_buf text;
    bp_buf_init(&text);
    bp_buf_add(&text, msg, n);
    if (n < len) bp_buf_printf(&text, "… (%zu more bytes)", len - n);
    if (!text.data) bp_buf_adds(&text, "");
    if (o->nlogs == o->caplogs) {
        o->caplogs = o->caplogs ? o->caplogs * 2 : 8;
        o->logs = realloc(o->logs, o->caplogs * sizeof *o->logs);
        if (!o->logs) abort();
    }
    o->logs[o->nlogs].at = bp_outcome_strdup(o, at);
    o->logs[o->nlogs].msg = bp_outcome_strdup(o, text.data);
    o->nlogs++;
    o->logs_bytes += text.len;
    bp_buf_free(&text);
}

/* The completed run's lines, then one note when some were over the bound. */
static void emit_logs(bp_engine *e, const bp_outcome *o)
{
    for (size_t i = 0; i < o->nlogs; i++) emit_log(e, o, o->logs[i].at, o->logs[i].msg, strlen(o->logs[i].msg));
    if (o->logs_dropped) {
        char note[160];
        snprintf(note, sizeof note, "(more than %d lines or %d KiB logged for this event: further lines are dropped)",
                 LOG_LINES_MAX, LOG_BYTES_MAX / 1024);
        emit_log(e, o, "", note, strlen(note));
    }
}

static void add_step_functions(lua_State *L, bp_engine *e);

static void chunk_name(const bp_blueprint *bp, const char *file, char *out, size_t n)
{
    snprintf(out, n, "@%s/%s", bp->dir, file);
}

/* Compile a mapping file (or reuse it when another route names the same
 * file) and keep its function in the registry. */
static int compile_mapping(bp_engine *e, const char *file, bp_error *err)
{
    lua_State *L = e->L;
    lua_getfield(L, LUA_REGISTRYINDEX, "bp.mappings");       /* mappings */
    if (lua_getfield(L, -1, file) == LUA_TFUNCTION) {         /* mappings, fn */
        int ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pop(L, 1);
        return ref;
    }
    lua_pop(L, 1);
    char path[4096], chunk[4200];
    snprintf(path, sizeof path, "%s/%s", e->bp->dir, file);
    chunk_name(e->bp, file, chunk, sizeof chunk);
    if (bp_sandbox_load_file(e->sb, path, chunk, err) < 0) { lua_pop(L, 1); return LUA_NOREF; }
    if (!lua_isfunction(L, -1)) {                             /* mappings, result */
        bp_error_set(err, "%s: must end with 'return function(event, ctx) … end' (it returned %s)",
                     path, luaL_typename(L, -1));
        lua_pop(L, 2);
        return LUA_NOREF;
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, file);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return ref;
}

static int load_helpers(bp_engine *e, bp_error *err)
{
    char path[4096], chunk[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/helpers.lua", e->bp->dir);
    if (stat(path, &st) != 0) return 0;
    chunk_name(e->bp, "helpers.lua", chunk, sizeof chunk);
    if (bp_sandbox_load_file(e->sb, path, chunk, err) < 0) return -1;
    if (!lua_istable(e->L, -1)) {
        bp_error_set(err, "%s: must return a table of helper functions (it returned %s)", path,
                     luaL_typename(e->L, -1));
        lua_pop(e->L, 1);
        return -1;
    }
    bp_push_readonly(e->L);
    bp_sandbox_set_global(e->sb, "helpers");
    return 0;
}

bp_engine *bp_engine_new(const bp_blueprint *bp, const bp_config *cfg, const bp_limits *limits, bp_error *err)
{
    bp_limits def;
    bp_error_clear(err);
    if (!bp || !cfg) { bp_error_set(err, "an engine needs a blueprint and a config"); return NULL; }
    if (!limits) { bp_limits_default(&def); limits = &def; }
    bp_engine *e = calloc(1, sizeof *e);
    if (!e) abort();
    e->bp = bp;
    e->cfg = cfg;
    e->json_limits = limits->json;
    e->custom_ref = LUA_NOREF;
    e->denied_ref = LUA_NOREF;
    e->verify_ref = LUA_NOREF;
    bp_doc_init(&e->denied_doc);
    bp_doc_init(&e->doc);
    bp_doc_init(&e->jdoc);
    bp_doc_init(&e->adoc);
    bp_account_key(bp, cfg, "dry-run", e->own_account, sizeof e->own_account);
    e->account = e->own_account;
    e->route_refs = calloc(bp->nroutes + 1, sizeof *e->route_refs);
    e->seq = -1;
    if (!(e->sb = bp_sandbox_new(limits, err))) {
        bp_error_ensure(err, "could not create the sandbox");
        free(e->route_refs);
        free(e);
        return NULL;
    }
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "@%s/", bp->dir);
    bp_sandbox_set_prefix(e->sb, prefix);
    e->L = bp_sandbox_state(e->sb);
    lua_State *L = e->L;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "bp.mappings");

    bp_push_helpers(L, cfg, bp);                        /* ctx */
    add_step_functions(L, e);
    lua_pushvalue(L, -1);
    e->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    bp_push_readonly(L);
    e->ctx_proxy_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    if (load_helpers(e, err) < 0) goto fail;
    for (size_t i = 0; i < bp->nroutes; i++)
        if ((e->route_refs[i] = compile_mapping(e, bp->routes[i].mapping, err)) == LUA_NOREF) goto fail;
    if (bp->has_custom && (e->custom_ref = compile_mapping(e, bp->custom.mapping, err)) == LUA_NOREF) goto fail;
    if (bp->has_consent_denied && (e->denied_ref = compile_mapping(e, bp->consent_denied.mapping, err)) == LUA_NOREF)
        goto fail;
    if (bp->has_verify && (e->verify_ref = compile_mapping(e, bp->verify.mapping, err)) == LUA_NOREF) goto fail;
    lua_gc(L, LUA_GCCOLLECT);
    return e;
fail:
    bp_error_ensure(err, "the blueprint's mappings could not be compiled");
    bp_engine_free(e);
    return NULL;
}

void bp_engine_free(bp_engine *e)
{
    if (!e) return;
    bp_sandbox_free(e->sb);
    bp_doc_free(&e->doc);
    bp_doc_free(&e->jdoc);
    bp_doc_free(&e->denied_doc);
    bp_doc_free(&e->adoc);
    bp_cache_free(e->own_cache);
    for (size_t i = 0; i < e->nwrites; i++) { free(e->writes[i].key); free(e->writes[i].json); }
    free(e->writes);
    free(e->route_refs);
    free(e);
}

void bp_account_key(const bp_blueprint *bp, const bp_config *cfg, const char *id, char *out, size_t n)
{
    const char *v = bp->rate_limit_scope ? bp_config_get(cfg, bp->rate_limit_scope) : NULL;
    if (!v || !*v) { snprintf(out, n, "integration %s", id); return; }
    /* A URL names its account by its origin: https://Acme.api-us1.com/,
     * https://acme.api-us1.com and https://acme.api-us1.com/api/3 (as
     * pasted from the vendor's settings page) are one account, one pace
     * and one ctx.cache. */
    const bp_field *f = bp_blueprint_field(bp, bp->rate_limit_scope);
    char origin[300];
    if (f && f->type == BP_FIELD_URL && !bp_url_origin(v, origin, sizeof origin)) {
        snprintf(out, n, "%s %s", bp->vendor, origin);
        return;
    }
    size_t len = strlen(v);
    while (len > 0 && v[len - 1] == '/') len--;
    int w = snprintf(out, n, "%s %.*s", bp->vendor, (int)len, v);
    for (char *p = out + strlen(bp->vendor) + 1; w > 0 && *p; p++) if (*p >= 'A' && *p <= 'Z') *p += 32;
}


/* ---- one engine, many configs ------------------------------------------------------ */

/* A delivery loop serves many integrations of one blueprint with one
 * engine: each config gets its own ctx (config values, secret references)
 * in the same Lua state, made once, instead of a state per integration
 * (~1 KB per config instead of ~200 KB).  Mappings must therefore keep
 * per-account state keyed by the account, as helpers.lua does. */
static int push_binding(lua_State *L)
{
    const bp_config *cfg = lua_touserdata(L, 1);
    const bp_blueprint *bp = lua_touserdata(L, 2);
    bp_engine *e = lua_touserdata(L, 3);
    bp_push_helpers(L, cfg, bp);                        /* cfg, bp, e, ctx */
    add_step_functions(L, e);
    lua_pushvalue(L, -1);                               /* cfg, bp, ctx, ctx */
    bp_push_readonly(L);                                /* cfg, bp, ctx, proxy */
    return 2;
}

int bp_engine_bind(bp_engine *e, const bp_config *cfg, bp_binding *b, bp_error *err)
{
    lua_State *L = e->L;
    lua_pushcfunction(L, push_binding);
    lua_pushlightuserdata(L, (void *)cfg);
    lua_pushlightuserdata(L, (void *)e->bp);
    lua_pushlightuserdata(L, e);
    /* protected: the state's memory cap can be reached here too */
    if (lua_pcall(L, 3, 2, 0) != LUA_OK) {
        bp_error_set(err, "could not prepare the mapping context: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    b->cfg = cfg;
    b->account = NULL;
    b->proxy_ref = luaL_ref(L, LUA_REGISTRYINDEX);      /* ctx */
    b->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

void bp_engine_unbind(bp_engine *e, bp_binding *b)
{
    luaL_unref(e->L, LUA_REGISTRYINDEX, b->ctx_ref);
    luaL_unref(e->L, LUA_REGISTRYINDEX, b->proxy_ref);
    b->ctx_ref = b->proxy_ref = LUA_NOREF;
}

enum bp_verdict bp_engine_run_as(bp_engine *e, const bp_binding *b, const char *json, size_t len, bp_outcome *out)
{
    const bp_config *cfg = e->cfg;
    int ctx = e->ctx_ref, proxy = e->ctx_proxy_ref;
    e->cfg = b->cfg;
    e->ctx_ref = b->ctx_ref;
    e->ctx_proxy_ref = b->proxy_ref;
    e->in_run_as = 1;
    if (b->account) e->account = b->account;
    enum bp_verdict v = bp_engine_run(e, json, len, out);
    e->account = e->own_account;
    e->in_run_as = 0;
    e->cfg = cfg;
    e->ctx_ref = ctx;
    e->ctx_proxy_ref = proxy;
    return v;
}

/* ---- routing ------------------------------------------------------------------- */

static const bp_event_override *override_for(const bp_config *c, const char *name)
{
    for (size_t i = 0; i < c->nevents; i++)
        if (!strcmp(c->events[i].name, name)) return &c->events[i];
    return NULL;
}


/* Pick the route for this event, or set a drop reason and return -1.
 * *ref receives the mapping's registry ref. */
static int route_event(bp_engine *e, const char *type, const char *name, bp_outcome *out, int *ref,
                       const bp_route **route)
{
    const bp_blueprint *bp = e->bp;
    for (size_t i = 0; i < bp->nroutes; i++) {
        const bp_route *r = &bp->routes[i];
        if (strcmp(r->type, type) != 0) continue;
        if (!strcmp(type, "track") && (!name || strcmp(r->name, name) != 0)) continue;
        const bp_event_override *o = override_for(e->cfg, r->name);
        int enabled = o ? o->enabled : r->enabled;
        if (!enabled) {
            bp_buf_printf(&out->reason, "event '%s' is disabled %s", r->name,
                          o ? "in the config (events: enabled: false)" : "in blueprint.yaml (enable it in the config's events: table)");
            return -1;
        }
        *ref = e->route_refs[i];
        *route = r;
        return 0;
    }
    if (!strcmp(type, "track")) {
        const bp_event_override *o = override_for(e->cfg, name);
        if (bp->has_custom && o && o->enabled) {
            *ref = e->custom_ref;
            *route = &bp->custom;
            return 0;
        }
        if (!bp->has_custom)
            bp_buf_printf(&out->reason, "custom event '%s' is not mapped by this blueprint", name);
        else if (o)
            bp_buf_printf(&out->reason, "custom event '%s' is disabled in the config", name);
        else
            bp_buf_printf(&out->reason, "custom event not enabled: '%s' (to send it, add to the config: "
                          "events: {\"%s\": {enabled: true}})", name, name);
        return -1;
    }
    bp_buf_printf(&out->reason, "'%s' events are not mapped by this blueprint", type);
    return -1;
}

/* ---- requests from Lua -------------------------------------------------------------- */

static int cmp_headers(const void *a, const void *b)
{
    return strcasecmp(((const bp_header *)a)->name, ((const bp_header *)b)->name);
}

static int valid_header_name(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == ':' || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

static void add_header(bp_outcome *o, bp_request *r, const char *name, const char *value, int secret)
{
    r->headers = realloc(r->headers, (r->nheaders + 1) * sizeof *r->headers);
    if (!r->headers) abort();
    r->headers[r->nheaders].name = bp_outcome_strdup(o, name);
    r->headers[r->nheaders].value = bp_outcome_strdup(o, value);
    r->headers[r->nheaders].secret = secret;
    r->nheaders++;
}

static int has_header(const bp_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++) if (!strcasecmp(r->headers[i].name, name)) return 1;
    return 0;
}

static int req_fail(bp_error *err, const char *fmt, const char *a)
{
    bp_error_set(err, fmt, a);
    return -1;
}

static int read_headers(lua_State *L, int idx, bp_outcome *o, bp_request *r, bp_error *err)
{
    if (lua_isnil(L, idx)) return 0;
    if (!lua_istable(L, idx)) return req_fail(err, "headers must be a table of name = value%s", "");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !valid_header_name(lua_tostring(L, -2))) {
            lua_pop(L, 2);
            return req_fail(err, "header names must be non-empty strings without spaces or ':'%s", "");
        }
        const char *name = lua_tostring(L, -2);
        const char *secret = bp_secret_name(L, -1);
        const char *hmac = secret ? NULL : bp_hmac_secret_name(L, -1);
        if (secret) {
            add_header(o, r, name, secret, 1);
        } else if (hmac) {
            add_header(o, r, name, hmac, BP_HEADER_HMAC);
        } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            lua_pushvalue(L, -1);
            const char *v = lua_tostring(L, -1);
            if (strpbrk(v, "\r\n")) { lua_pop(L, 3); return req_fail(err, "header '%s' contains a line break", name); }
            add_header(o, r, name, v, 0);
            lua_pop(L, 1);
        } else {
            lua_pop(L, 2);
            return req_fail(err, "header '%s' must be a string, number, ctx.secret(...) or ctx.hmac_sha256(...)", name);
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* The request table is on top of the stack. */
static int read_request(lua_State *L, bp_outcome *o, bp_request *r, bp_error *err)
{
    static const char *const allowed[] = { "method", "url", "headers", "json", "form", "body", "once", "marks", NULL };
    int t = lua_gettop(L);
    /* One walk of the table checks the field names and copies each value to
     * its slot above the table: t+1 method ... t+8 marks (nil when absent). */
    enum { F_METHOD = 1, F_URL, F_HEADERS, F_JSON, F_FORM, F_BODY, F_ONCE, F_MARKS };
    lua_settop(L, t + F_MARKS);
    lua_pushnil(L);
    while (lua_next(L, t)) {                        /* ..., key, value */
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        int slot = 0;
        for (int i = 0; k && !slot && allowed[i]; i++) if (k[0] == allowed[i][0] && !strcmp(k, allowed[i])) slot = i + 1;
        if (!slot) {
            lua_pop(L, 2);
            return req_fail(err, "unknown request field '%s' (expected method, url, headers, json, form, body, "
                            "once or marks)", k ? k : "(not a string)");
        }
        lua_replace(L, t + slot);                   /* ..., key */
    }
    const char *method = lua_isnil(L, t + F_METHOD) ? "POST" : lua_tostring(L, t + F_METHOD);
    static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE", NULL };
    int is_method = 0;
    for (int i = 0; method && methods[i]; i++) if (!strcmp(method, methods[i])) is_method = 1;
    if (!is_method) return req_fail(err, "method must be GET, POST, PUT, PATCH or DELETE, not '%s'", method ? method : "?");
    r->method = bp_outcome_strdup(o, method);
    const char *url = lua_type(L, t + F_URL) == LUA_TSTRING ? lua_tostring(L, t + F_URL) : NULL;
    if (!url || (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        return req_fail(err, "url must be an absolute http(s) URL, got '%.200s'", url ? url : "nil");
    if (strpbrk(url, " \r\n\t")) return req_fail(err, "url must not contain spaces or line breaks: '%.200s'", url);
    r->url = bp_outcome_strdup(o, url);
    if (read_headers(L, t + F_HEADERS, o, r, err) < 0) return -1;
    for (int k = F_ONCE; k <= F_MARKS; k++) {
        int ty = lua_type(L, t + k);
        if (ty == LUA_TNIL) continue;
        if (ty != LUA_TSTRING) return req_fail(err, "%s must be a string key", allowed[k - 1]);
        *(k == F_MARKS ? &r->marks : &r->once) = bp_outcome_strdup(o, lua_tostring(L, t + k));
    }

    int json = !lua_isnil(L, t + F_JSON), form = !lua_isnil(L, t + F_FORM), raw = !lua_isnil(L, t + F_BODY);
    if (json + form + raw > 1) return req_fail(err, "give only one of json, form or body%s", "");
    if ((json || form || raw) && !strcmp(r->method, "GET")) return req_fail(err, "a GET request cannot have a body%s", "");
    bp_slots slots = { NULL, 0, 0 };
    int rc = 0;
    const char *ctype = NULL;
    if (json) {
        r->body_kind = BP_BODY_JSON;
        ctype = "application/json";
        rc = bp_encode_json(L, t + F_JSON, &r->body, &slots, err);
    } else if (form) {
        r->body_kind = BP_BODY_FORM;
        ctype = "application/x-www-form-urlencoded";
        rc = bp_encode_form(L, t + F_FORM, &r->body, &slots, err);
    } else if (raw) {
        size_t len;
        const char *s = lua_tolstring(L, t + F_BODY, &len);
        if (!s) return req_fail(err, "body must be a string (or use json = … / form = …)%s", "");
        if (!has_header(r, "Content-Type")) return req_fail(err, "a raw body needs a Content-Type header%s", "");
        r->body_kind = BP_BODY_RAW;
        bp_buf_add(&r->body, s, len);
    }
    r->slots = slots.v;
    r->nslots = slots.n;
    if (rc < 0) return -1;
    if (ctype && !has_header(r, "Content-Type")) add_header(o, r, "Content-Type", ctype, 0);
    if (r->nheaders > 1) qsort(r->headers, r->nheaders, sizeof *r->headers, cmp_headers);   /* none: NULL */
    lua_settop(L, t);
    return 0;
}

/* What a request holds outside the Lua state once copied into the outcome. */
static size_t request_bytes(const bp_request *r)
{
    size_t n = strlen(r->url) + r->body.len;
    for (size_t h = 0; h < r->nheaders; h++) n += strlen(r->headers[h].name) + strlen(r->headers[h].value);
    return n;
}

/* Result of the mapping on top of the stack.  Its requests follow the
 * steps the run answered (e->nsteps of them, first in out->requests). */
static void collect(bp_engine *e, const bp_route *route, bp_outcome *out)
{
    lua_State *L = e->L;
    int top = lua_gettop(L);
    size_t nsteps = e->nsteps;
    const char *why = bp_drop_reason(L, top);
    if (why) {
        out->verdict = BP_DROP;
        bp_buf_adds(&out->reason, why);
        return;
    }
    /* after steps, returning nothing means the steps were the delivery */
    int nothing = lua_isnil(L, top);
    if (lua_istable(L, top)) {
        lua_pushnil(L);
        if (lua_next(L, top)) lua_pop(L, 2); else nothing = 1;
    }
    if (nsteps && nothing) {
        out->verdict = BP_DELIVER;
        bp_buf_printf(&out->reason, "mapped by %s (%zu step%s)", route->mapping, nsteps, nsteps == 1 ? "" : "s");
        return;
    }
    if (!lua_istable(L, top)) {
        out->verdict = BP_ERROR;
        bp_buf_printf(&out->reason, "%s/%s: the mapping returned %s; return a request table, a list of "
                      "requests, or ctx.drop(reason)", e->bp->dir, route->mapping, luaL_typename(L, top));
        return;
    }
    /* raw: a metamethod would run outside the budget's protected call */
    lua_pushliteral(L, "url");
    int single = lua_rawget(L, top) != LUA_TNIL;
    lua_pop(L, 1);
    lua_Integer n = single ? 1 : (lua_Integer)lua_rawlen(L, top);
    if (n == 0) {
        out->verdict = BP_DROP;
        bp_buf_printf(&out->reason, "%s returned no requests", route->mapping);
        return;
    }
    /* The requests are copied out of the Lua state, so they are bounded like
     * it: a list holding one large request many times must not take memory
     * (or time) the cap never allowed. */
    const bp_budget *budget = bp_budget_of(L);
    size_t held = 0, cap = budget && budget->max_bytes ? budget->max_bytes : (size_t)-1;
    for (lua_Integer i = 1; i <= n; i++) {
        if (single) lua_pushvalue(L, top); else lua_rawgeti(L, top, i);
        bp_error err;
        bp_request *r = bp_outcome_add_request(out);
        int is_table = lua_istable(L, -1), too_big = 0;
        if (!is_table || read_request(L, out, r, &err) < 0 ||
            (too_big = (held += request_bytes(r)) > cap) ||
            bp_request_check_destination(e->bp, e->cfg, r->url, &err) < 0) {
            if (!is_table) bp_error_set(&err, "expected a request table, got %s", luaL_typename(L, -1));
            if (too_big)
                bp_error_set(&err, "the requests returned take more than the memory limit (%d MiB): return fewer "
                             "or smaller requests", (int)(cap / (1024 * 1024)));
            out->verdict = BP_ERROR;
            bp_buf_reset(&out->reason);
            bp_buf_printf(&out->reason, "%s/%s: request %lld: %s", e->bp->dir, route->mapping, (long long)i, err.msg);
            bp_outcome_truncate_requests(out, nsteps);
            lua_settop(L, top);
            return;
        }
        lua_settop(L, top);
    }
    out->verdict = BP_DELIVER;
    bp_buf_adds(&out->reason, "mapped by ");   /* every event: no printf */
    bp_buf_adds(&out->reason, route->mapping);
    if (nsteps) bp_buf_printf(&out->reason, " (%zu step%s)", nsteps, nsteps == 1 ? "" : "s");
}

/* ---- steps: ctx.send and ctx.cache ----------------------------------------------------------
 *
 * A step is a request whose answer the mapping reads before it goes on.
 * The delivery loop must never wait for a vendor, so a run cannot block in
 * ctx.send: the run stops at the first step whose answer is not known
 * (out->pending, the step is the last request), the loop sends it like any
 * request (paced, retried, classified), records the answer in the event's
 * journal, and runs the mapping again from the top.  This time ctx.send
 * returns the recorded answer at once and the run goes one step further.
 * The journal is stored with the event, so after a crash or a hot reload
 * the event resumes at its first unfinished step: re-running is the only
 * way a mapping continues, so resuming needs nothing more.  Mappings are
 * deterministic (the same event, config and answers give the same steps);
 * steps the run no longer reaches (another event's ctx.cache write made
 * them unnecessary) are passed over, and a step with no recorded answer
 * for its request (a new revision of the blueprint, a cache that changed
 * meanwhile) ends the journal there and is sent again.
 *
 * ctx.cache writes take effect only when a run completes: a run stopped at
 * a step is run again, and must not meet its own writes the second time. */

static char step_stop;   /* the error value a run stops with at a step (only its address is used) */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    for (const unsigned char *c = p; n--; c++) h = (h ^ *c) * 1099511628211ULL;
    return h;
}

static uint64_t step_fingerprint(const bp_request *r)
{
    uint64_t h = 1469598103934665603ULL;
    h = fnv(h, r->method, strlen(r->method) + 1);
    h = fnv(h, r->url, strlen(r->url) + 1);
    return fnv(h, r->body.data ? r->body.data : "", r->body.len);
}

void bp_journal_add(bp_buf *journal, uint64_t fingerprint, int status, const char *body, size_t len, const char *from)
{
    if (journal->len) journal->data[--journal->len] = '\0';   /* reopen the array */
    bp_buf_addc(journal, journal->len ? ',' : '[');
    bp_buf_printf(journal, "{\"f\":\"%016llx\",\"s\":%d,\"b\":", (unsigned long long)fingerprint, status);
    bp_json_write_text(journal, body ? body : "", len > BP_ANSWER_MAX ? BP_ANSWER_MAX : len);
    bp_buf_adds(journal, ",\"from\":");
    bp_json_write_text(journal, from, strlen(from));
    bp_buf_adds(journal, "}]");
}

void bp_engine_set_journal(bp_engine *e, const char *journal, size_t len, uint64_t owner)
{
    e->jtext = len ? journal : NULL;
    e->jlen = len;
    e->owner = owner;
}

void bp_engine_log_to(bp_engine *e, bp_buf *lines) { e->log_to = lines; }

void bp_engine_set_cache(bp_engine *e, bp_cache *c) { e->cache = c; }

void bp_engine_set_answerer(bp_engine *e, bp_answer_fn fn, void *ud)
{
    e->answerer = fn;
    e->answerer_ud = ud;
}

static bp_cache *cache_of(bp_engine *e)
{
    if (e->cache) return e->cache;
    if (!e->own_cache) e->own_cache = bp_cache_new(10000);
    return e->own_cache;
}

/* Stop the run: nothing after this point of the mapping counts. */
static int stop_run(lua_State *L, bp_engine *e)
{
    e->stopped = 1;
    lua_pushlightuserdata(L, &step_stop);
    return lua_error(L);
}

/* The answer { status, json, body, cached } for the mapping, recorded on
 * the step and in the run's journal. */
static int give_answer(lua_State *L, bp_engine *e, bp_request *r, int status, const char *body, size_t len,
                       const char *from)
{
    bp_outcome *o = e->out;
    r->answer_status = status;
    r->answer_from = bp_outcome_strdup(o, from);
    size_t shown = utf8_cut(body, len, BP_ANSWER_SHOWN);
    r->answer_body = bp_outcome_strdup(o, "");
    if (shown) {
        bp_buf cut;
        bp_buf_init(&cut);
        bp_buf_add(&cut, body, shown);
        if (shown < len) bp_buf_printf(&cut, "… (%zu more bytes)", len - shown);
        r->answer_body = bp_outcome_strdup(o, cut.data);
        bp_buf_free(&cut);
    }
    bp_journal_add(&o->journal, r->fingerprint, status, body, len, from);
    o->nanswered++;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, body, len);
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, !strcmp(from, "cached"));
    lua_setfield(L, -2, "cached");
    bp_error err;
    if (len && bp_json_parse(&e->adoc, body, len, &e->json_limits, &err) == 0) {
        bp_push_tables(L, &e->adoc, 0);
        lua_setfield(L, -2, "json");
    }
    return 1;
}

/* The recorded answer of this step, when the journal has one for its
 * request: the next entry, or a later one when the run no longer needs the
 * entries between (another event's ctx.cache write made them unnecessary,
 * e.g. a tag's id now known: its lookup and create are skipped, and the
 * contactTags answered before is not sent again).  No entry for it: the
 * mapping went another way, the journal ends here and the step is sent. */
static int journal_answer(bp_engine *e, const bp_request *r, int *status, const char **body, size_t *len,
                          const char **from)
{
    if (!e->jtext) return 0;
    const bp_doc *d = &e->jdoc;
    if (d->nodes[0].type != BP_JARRAY) return 0;
    char fp[17];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)r->fingerprint);
    uint32_t it = 1;                                    /* the first item; siblings by .next */
    for (size_t i = 0; i < d->nodes[0].len; i++, it = d->nodes[it].next) {
        if (i < e->jnext) continue;
        const char *f = bp_jscalar(d, bp_jget(d, it, "f"));
        const char *s = bp_jscalar(d, bp_jget(d, it, "s"));
        uint32_t b = bp_jget(d, it, "b");
        if (!f || strcmp(f, fp) != 0 || !s || b == BP_NONE || d->nodes[b].type != BP_JSTRING) continue;
        e->jnext = i + 1;
        *status = atoi(s);
        *body = bp_jtext(d, b);
        *len = d->nodes[b].len;
        *from = bp_jscalar(d, bp_jget(d, it, "from"));
        if (!*from) *from = "sent";
        return 1;
    }
    e->jtext = NULL;   /* the mapping went another way: the journal ends here */
    return 0;
}

static void read_step_options(lua_State *L, int idx, bp_request *r)
{
    r->cache_ttl_s = DEFAULT_TTL_S;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {                          /* ..., key, value */
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (!strcmp(k, "cache")) {
            if (lua_type(L, -1) != LUA_TSTRING || !lua_rawlen(L, -1)) luaL_error(L, "ctx.send: opts.cache must be a non-empty string key");
            r->cache_key = (char *)lua_tostring(L, -1);   /* copied by the caller while opts holds it */
        } else if (!strcmp(k, "ttl")) {
            if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) <= 0) luaL_error(L, "ctx.send: opts.ttl must be a number of seconds > 0");
            r->cache_ttl_s = lua_tonumber(L, -1);
        } else if (!strcmp(k, "accept")) {
            if (!lua_istable(L, -1)) luaL_error(L, "ctx.send: opts.accept must be a list of HTTP statuses, e.g. {404, 422}");
            lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
            if (n > 8) luaL_error(L, "ctx.send: opts.accept takes at most 8 statuses");
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                lua_Integer st = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
                if (st < 300 || st > 599) luaL_error(L, "ctx.send: opts.accept: %s is not an HTTP error status (300-599)", luaL_tolstring(L, -1, NULL));
                r->accept[r->naccept++] = (int)st;
                lua_pop(L, 1);
            }
        } else {
            luaL_error(L, "ctx.send: unknown option '%s' (expected accept, cache or ttl)", k);
        }
        lua_pop(L, 1);
    }
}

/* ctx.send(request [, opts]) → { status, json, body, cached } */
static int l_send(lua_State *L)
{
    bp_engine *e = lua_touserdata(L, lua_upvalueindex(1));
    bp_outcome *o = e->out;
    if (!o || e->stopped) return stop_run(L, e);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (e->nsteps >= MAX_STEPS) luaL_error(L, "ctx.send: more than %d steps for one event", MAX_STEPS);
    lua_settop(L, 2);
    lua_pushvalue(L, 1);                                /* req, opts, req */
    size_t at = o->nrequests;
    bp_request *r = bp_outcome_add_request(o);
    bp_error err;
    if (read_request(L, o, r, &err) < 0 || bp_request_check_destination(e->bp, e->cfg, r->url, &err) < 0) {
        bp_outcome_truncate_requests(o, at);
        return luaL_error(L, "ctx.send: %s", err.msg);
    }
    r->step = 1;
    r->fingerprint = step_fingerprint(r);
    read_step_options(L, 2, r);
    if (r->cache_key) r->cache_key = bp_outcome_strdup(o, r->cache_key);
    if (r->once || r->marks) {
        bp_outcome_truncate_requests(o, at);
        return luaL_error(L, "ctx.send: a step cannot have once or marks (its answer is needed); opts.cache shares an answer");
    }
    e->nsteps++;

    int status;
    const char *body, *from;
    size_t len;
    if (journal_answer(e, r, &status, &body, &len, &from))
        return give_answer(L, e, r, status, body, len, from);

    bp_cache *c = cache_of(e);
    if (r->cache_key) {
        bp_buf hit;
        bp_buf_init(&hit);
        int found = bp_cache_get(c, e->account, r->cache_key, &hit);
        if (found && bp_json_parse(&e->adoc, hit.data, hit.len, &e->json_limits, &err) == 0) {
            const bp_doc *d = &e->adoc;
            const char *s = bp_jscalar(d, bp_jget(d, 0, "s"));
            uint32_t b = bp_jget(d, 0, "b");
            if (s && b != BP_NONE) {
                bp_buf copy;   /* give_answer parses the body into the same doc */
                bp_buf_init(&copy);
                bp_buf_add(&copy, bp_jtext(d, b), d->nodes[b].len);
                give_answer(L, e, r, atoi(s), copy.data ? copy.data : "", copy.len, "cached");
                bp_buf_free(&copy);
                bp_buf_free(&hit);
                return 1;
            }
        }
        bp_buf_free(&hit);
    }
    if (e->answerer) {
        bp_buf ab, af;
        bp_buf_init(&ab);
        bp_buf_init(&af);
        if (e->answerer(e->answerer_ud, r, &status, &ab, &af) == 0) {
            give_answer(L, e, r, status, ab.data ? ab.data : "", ab.len, af.data ? af.data : "assumed");
            if (r->cache_key && status < 300) {
                bp_buf v;
                bp_buf_init(&v);
                bp_buf_printf(&v, "{\"s\":%d,\"b\":", status);
                bp_json_write_text(&v, ab.data ? ab.data : "", ab.len);
                bp_buf_addc(&v, '}');
                bp_cache_set(c, e->account, r->cache_key, v.data, v.len, r->cache_ttl_s);
                bp_buf_free(&v);
            }
            bp_buf_free(&ab);
            bp_buf_free(&af);
            return 1;
        }
        bp_buf_free(&ab);
        bp_buf_free(&af);
    }
    /* Not known yet: stop here.  A shared answer another event is fetching
     * is waited for (the step is not sent twice); else this step is sent. */
    if (r->cache_key && !bp_cache_claim(c, e->account, r->cache_key, e->owner)) {
        bp_outcome_truncate_requests(o, at);
        o->wait_ms = STEP_WAIT_MS;
    } else {
        o->pending = 1;
    }
    return stop_run(L, e);
}

/* The value ctx.cache.set gave in this run, else the cache's. */
static int l_cache_get(lua_State *L)
{
    bp_engine *e = lua_touserdata(L, lua_upvalueindex(1));
    const char *key = luaL_checkstring(L, 1);
    for (size_t i = e->nwrites; i-- > 0;)
        if (!strcmp(e->writes[i].key, key)) {
            bp_error err;
            if (bp_json_parse(&e->adoc, e->writes[i].json, strlen(e->writes[i].json), &e->json_limits, &err) < 0) return 0;
            bp_push_tables(L, &e->adoc, 0);
            return 1;
        }
    bp_buf v;
    bp_buf_init(&v);
    bp_buf k;
    bp_buf_init(&k);
    bp_buf_adds(&k, "value:");
    bp_buf_adds(&k, key);
    int hit = bp_cache_get_stored(cache_of(e), e->account, k.data, &v);
    bp_buf_free(&k);
    bp_error err;
    if (hit && bp_json_parse(&e->adoc, v.data, v.len, &e->json_limits, &err) == 0) bp_push_tables(L, &e->adoc, 0);
    else lua_pushnil(L);
    bp_buf_free(&v);
    return 1;
}

/* ctx.cache.set's third argument: a ttl in seconds, or { ttl = s, durable = true }. */
static void read_set_options(lua_State *L, double *ttl, int *durable)
{
    *ttl = DEFAULT_TTL_S;
    *durable = 0;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {                        /* ..., key, value */
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            if (!strcmp(k, "ttl")) {
                if (!lua_isnumber(L, -1)) luaL_error(L, "ctx.cache.set: opts.ttl must be a number of seconds > 0");
                *ttl = lua_tonumber(L, -1);
            } else if (!strcmp(k, "durable")) {
                if (!lua_isboolean(L, -1)) luaL_error(L, "ctx.cache.set: opts.durable must be true or false");
                *durable = lua_toboolean(L, -1);
            } else {
                luaL_error(L, "ctx.cache.set: unknown option '%s' (expected ttl or durable)", k);
            }
            lua_pop(L, 1);
        }
    } else {
        *ttl = luaL_optnumber(L, 3, DEFAULT_TTL_S);
    }
    if (*ttl <= 0) luaL_error(L, "ctx.cache.set: the ttl must be a number of seconds > 0");
}

/* ctx.cache.set(key, value [, ttl seconds | { ttl = s, durable = true }]) */
static int l_cache_set(lua_State *L)
{
    bp_engine *e = lua_touserdata(L, lua_upvalueindex(1));
    const char *key = luaL_checkstring(L, 1);
    luaL_checkany(L, 2);
    double ttl;
    int durable;
    read_set_options(L, &ttl, &durable);
    bp_buf json;
    bp_buf_init(&json);
    bp_slots slots = { NULL, 0, 0 };
    bp_error err;
    int rc = bp_encode_json(L, 2, &json, &slots, &err);
    for (size_t i = 0; i < slots.n; i++) free(slots.v[i].name);
    free(slots.v);
    if (rc < 0 || slots.n) {
        bp_buf_free(&json);
        return luaL_error(L, "ctx.cache.set: %s", rc < 0 ? err.msg : "a secret cannot be cached");
    }
    /* held outside the Lua state until the run ends: bounded like it */
    const bp_budget *budget = bp_budget_of(L);
    if (budget && budget->max_bytes && e->write_bytes + json.len > budget->max_bytes) {
        bp_buf_free(&json);
        return luaL_error(L, "ctx.cache.set: this event's values would take more than the memory limit (%d MiB)",
                          (int)(budget->max_bytes / (1024 * 1024)));
    }
    e->write_bytes += json.len;
    if (e->nwrites == e->capwrites) {
        e->capwrites = e->capwrites ? e->capwrites * 2 : 8;
        e->writes = realloc(e->writes, e->capwrites * sizeof *e->writes);
        if (!e->writes) abort();
    }
    size_t kl = strlen(key);
    char *k = malloc(kl + 1);
    if (!k) abort();
    memcpy(k, key, kl + 1);
    e->writes[e->nwrites++] = (struct cache_write){ k, json.data ? json.data : strdup("null"), ttl, durable };
    return 0;
}

/* A completed run's ctx.cache.set values go to the cache; a stopped or
 * failed run's are forgotten. */
static void end_writes(bp_engine *e, int apply)
{
    for (size_t i = 0; i < e->nwrites; i++) {
        if (apply) {
            bp_buf k;
            bp_buf_init(&k);
            bp_buf_adds(&k, "value:");
            bp_buf_adds(&k, e->writes[i].key);
            const struct cache_write *w = &e->writes[i];
            if (w->durable) bp_cache_set_durable(cache_of(e), e->owner, e->account, k.data, w->json, strlen(w->json), w->ttl);
            else bp_cache_set(cache_of(e), e->account, k.data, w->json, strlen(w->json), w->ttl);
            bp_buf_free(&k);
        }
        free(e->writes[i].key);
        free(e->writes[i].json);
    }
    e->nwrites = 0;
    e->write_bytes = 0;
}

/* ctx.send and ctx.cache on the ctx table at the top of the stack. */
static void add_step_functions(lua_State *L, bp_engine *e)
{
    lua_pushlightuserdata(L, e);
    lua_pushcclosure(L, l_send, 1);
    lua_setfield(L, -2, "send");
    lua_createtable(L, 0, 2);                           /* ctx, cache */
    lua_pushlightuserdata(L, e);
    lua_pushcclosure(L, l_cache_get, 1);
    lua_setfield(L, -2, "get");
    lua_pushlightuserdata(L, e);
    lua_pushcclosure(L, l_cache_set, 1);
    lua_setfield(L, -2, "set");
    bp_push_readonly(L);                                /* ctx, proxy of cache */
    lua_setfield(L, -2, "cache");                       /* ctx */
}

/* ---- one event ------------------------------------------------------------------- */

static void set_consent(bp_engine *e, const bp_consent *c)
{
    lua_State *L = e->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ctx_ref);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, e->bp->consent_category);
    lua_setfield(L, -2, "category");
    lua_pushstring(L, c->state == BP_CONSENT_GRANTED ? "granted" : c->state == BP_CONSENT_DENIED ? "denied" : "unknown");
    lua_setfield(L, -2, "state");
    lua_pushstring(L, c->source ? c->source : "default_policy");
    lua_setfield(L, -2, "source");
    lua_setfield(L, -2, "consent");
    lua_pop(L, 1);
}

/* Run a mapping on the event in d: its steps, its result, its outcome. */
static enum bp_verdict run_mapping(bp_engine *e, int ref, const bp_route *route, const bp_doc *d, bp_outcome *out)
{
    bp_error err;
    out->mapping = bp_outcome_strdup(out, route->mapping);
    lua_State *L = e->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);              /* fn */
    bp_push_view(L, d, 0);                               /* fn, event */
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ctx_proxy_ref); /* fn, event, ctx */
    e->out = out;
    e->nsteps = 0;
    e->jnext = 0;
    e->stopped = 0;
    if (e->jtext && bp_json_parse(&e->jdoc, e->jtext, e->jlen, NULL, &err) < 0) e->jtext = NULL;
    bp_sandbox_set_log(e->sb, on_log, e);
    int rc = bp_sandbox_call(e->sb, 2, 1, &err);
    bp_sandbox_set_log(e->sb, NULL, NULL);
    e->jtext = NULL;                                     /* one run's */
    end_writes(e, rc == 0 && !e->stopped);
    if (!e->stopped) emit_logs(e, out);
    if (e->stopped) {
        /* stopped at a step: deliver what is known so far, then run again */
        out->verdict = BP_DELIVER;
        if (out->pending) {
            const bp_request *r = &out->requests[out->nrequests - 1];
            bp_buf_printf(&out->reason, "step %zu: waiting for the answer to %s %s", out->nrequests, r->method, r->url);
        } else {
            bp_buf_printf(&out->reason, "step %zu: waiting for another event's answer to the same step", out->nrequests + 1);
        }
        return out->verdict;
    }
    if (rc < 0) {
        out->verdict = BP_ERROR;
        bp_buf_adds(&out->reason, err.msg);
        return out->verdict;
    }
    collect(e, route, out);                              /* result */
    lua_pop(L, 1);
    return out->verdict;
}

/* Consent denied and the blueprint has a consent_denied mapping: run it on
 * the cut-down event.  1 when it sends something (the outcome is set),
 * 0 when it drops (the event is then judged as before: a consent drop). */
static int run_withdrawal(bp_engine *e, const bp_doc *d, const bp_consent *consent, bp_outcome *out)
{
    bp_event_identity(d, &e->denied_doc);
    set_consent(e, consent);
    enum bp_verdict v = run_mapping(e, e->denied_ref, &e->bp->consent_denied, &e->denied_doc, out);
    if (v == BP_DELIVER || v == BP_ERROR) {
        bp_buf why;
        bp_buf_init(&why);
        bp_buf_printf(&why, "consent: %s denied (%s.%s = %s): only the withdrawal is sent (%s); %s",
                      e->bp->consent_category, consent->source, e->bp->consent_category, consent->raw,
                      e->bp->consent_denied.mapping, out->reason.data ? out->reason.data : "");
        bp_buf_reset(&out->reason);
        bp_buf_add(&out->reason, why.data, why.len);
        bp_buf_free(&why);
        return 1;
    }
    if (v == BP_DROP && out->nanswered) {
        /* steps were sent (a lookup): the outcome lists them, with why it stopped there */
        bp_buf why;
        bp_buf_init(&why);
        bp_buf_printf(&why, "consent: %s denied (%s.%s = %s); %s: %s", e->bp->consent_category, consent->source,
                      e->bp->consent_category, consent->raw, e->bp->consent_denied.mapping,
                      out->reason.data ? out->reason.data : "");
        bp_buf_reset(&out->reason);
        bp_buf_add(&out->reason, why.data, why.len);
        bp_buf_free(&why);
        return 1;
    }
    bp_outcome_clear_requests(out);
    out->nanswered = 0;
    bp_buf_reset(&out->journal);
    bp_buf_reset(&out->reason);
    out->mapping = NULL;
    return 0;
}

enum bp_verdict bp_engine_run(bp_engine *e, const char *json, size_t len, bp_outcome *out)
{
    bp_error err;
    bp_doc *d = &e->doc;
    e->seq++;
    bp_outcome_reset(out);
    out->verdict = BP_ERROR;
    if (bp_json_parse(d, json, len, &e->json_limits, &err) < 0) {
        bp_buf_printf(&out->reason, "malformed event: %s", err.msg);
        return out->verdict;
    }
    if (d->nodes[0].type != BP_JOBJECT) {
        bp_buf_adds(&out->reason, "malformed event: an event must be a JSON object");
        return out->verdict;
    }
    out->message_id = bp_outcome_strdup(out, bp_event_message_id(d));
    const char *type = bp_jscalar(d, bp_jget(d, 0, "type"));
    if (!type || d->nodes[bp_jget(d, 0, "type")].type != BP_JSTRING) {
        bp_buf_adds(&out->reason, "malformed event: no \"type\" (expected page, track or identify)");
        return out->verdict;
    }
    out->type = bp_outcome_strdup(out, type);
    const char *name = NULL;
    if (!strcmp(type, "track")) {
        uint32_t ev = bp_jget(d, 0, "event");
        name = ev != BP_NONE && d->nodes[ev].type == BP_JSTRING ? bp_jtext(d, ev) : NULL;
        if (!name || !*name) {
            bp_buf_adds(&out->reason, "malformed event: a track event needs an \"event\" name");
            return out->verdict;
        }
    } else if (!strcmp(type, "page") || !strcmp(type, "screen")) {
        name = bp_jscalar(d, bp_jget(d, 0, "name"));
    } else if (strcmp(type, "identify") != 0 && strcmp(type, "group") != 0) {
        bp_buf_printf(&out->reason, "malformed event: unknown type '%.64s' (expected page, track, identify, group or screen)", type);
        return out->verdict;
    }
    out->event = bp_outcome_strdup(out, name);
    /* The envelope's parts are objects: decided here once, so that no
     * mapping trips over a string where it iterates properties. */
    static const char *const parts[] = { "properties", "traits", "context" };
    for (int i = 0; i < 3; i++) {
        uint32_t p = bp_jget(d, 0, parts[i]);
        uint8_t t = p == BP_NONE ? BP_JOBJECT : d->nodes[p].type;
        if (t != BP_JOBJECT && t != BP_JNULL) {
            static const char *const names[] = { "null", "false", "true", "a number", "a string", "an array", "an object" };
            bp_buf_printf(&out->reason, "malformed event: \"%s\" must be an object (got %s)", parts[i], names[t]);
            return out->verdict;
        }
    }

    bp_consent consent;
    if (e->denied_ref != LUA_NOREF) {
        /* withdrawing consent is the one thing the vendor must hear about,
         * whichever event carries it */
        bp_consent_resolve(d, e->bp->consent_category, e->cfg->consent_default, &consent);
        if (consent.state == BP_CONSENT_DENIED && run_withdrawal(e, d, &consent, out)) return out->verdict;
    }
    int ref = LUA_NOREF;
    const bp_route *route = NULL;
    if (route_event(e, type, name, out, &ref, &route) < 0) {
        out->verdict = BP_DROP;
        return out->verdict;
    }
    bp_consent_resolve(d, e->bp->consent_category, e->cfg->consent_default, &consent);
    if (!consent.allowed) {
        out->verdict = BP_DROP;
        if (consent.state == BP_CONSENT_DENIED)
            bp_buf_printf(&out->reason, "consent: %s denied (%s.%s = %s)", e->bp->consent_category,
                          consent.source, e->bp->consent_category, consent.raw);
        else
            bp_buf_printf(&out->reason, "consent: the event carries no %s consent and the config's "
                          "consent.default_policy is deny", e->bp->consent_category);
        return out->verdict;
    }
    set_consent(e, &consent);
    return run_mapping(e, ref, route, d, out);
}

enum bp_verdict bp_engine_verify(bp_engine *e, bp_outcome *out)
{
    static const char event[] = "{\"type\":\"verify\"}";
    bp_error err;
    e->seq++;
    bp_outcome_reset(out);
    out->type = bp_outcome_strdup(out, "verify");
    if (e->verify_ref == LUA_NOREF) {
        out->verdict = BP_DROP;
        bp_buf_adds(&out->reason, "the blueprint has no verify: mapping");
        return out->verdict;
    }
    bp_json_parse(&e->doc, event, sizeof event - 1, NULL, &err);
    bp_consent unknown = { 0 };
    unknown.state = BP_CONSENT_ABSENT;
    unknown.source = "verify";
    set_consent(e, &unknown);
    return run_mapping(e, e->verify_ref, &e->bp->verify, &e->doc, out);
}
