/*
 * engine.c — judge one event: parse, route through the event table, check
 * consent, run the mapping in the sandbox, and turn what it returns into
 * vendor requests.
 *
 * Every path ends in exactly one outcome (deliver, drop with a reason, or
 * error with a message naming file and line), so nothing is lost silently.
 */
#include "internal.h"
#include "engine_state.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- log lines (print, ctx.log) ------------------------------------------------ */

#define LOG_LINES_MAX 50            /* per event, in the outcome */
#define LOG_BYTES_MAX (16 * 1024)   /* per event, in the outcome */
#define LOG_LINE_MAX 4096           /* one line, in the outcome and on stderr */

/* Write one log line: a JSON record to the log callback (bp_set_log;
 * serve's is stderr), else a human line on stderr (the CLI). */
static void emit_log(bp_engine *e, const bp_outcome *o, const char *at, const char *text, size_t len)
{
    if (bp_log_has_sink()) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"log\":");
        bp_json_write_text(&f, text, len);          /* by length: a Lua string may hold NUL bytes */
        bp_log_field(&f, "at", at);
        bp_log_field(&f, "vendor", e->bp->vendor);
        if (e->cfg->name) bp_log_field(&f, "integration", e->cfg->name);
        if (o->message_id) bp_log_field(&f, "message_id", o->message_id);
        else bp_buf_adds(&f, ",\"message_id\":null");
        if (o->event) bp_log_field(&f, "event", o->event);
        if (!e->in_run_as) bp_log_field_int(&f, "index", e->seq);
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
    size_t n = bp_utf8_cut(msg, len, LOG_LINE_MAX);
    if (o->nlogs >= LOG_LINES_MAX || o->logs_bytes + n > LOG_BYTES_MAX) { o->logs_dropped++; return; }
    bp_buf text;
    bp_buf_init(&text);
    bp_buf_add(&text, msg, n);
    if (n < len) bp_buf_printf(&text, "… (%zu more bytes)", len - n);
    if (!text.data) bp_buf_adds(&text, "");
    if (o->nlogs == o->caplogs) {
        o->caplogs = o->caplogs ? o->caplogs * 2 : 8;
        o->logs = bp_realloc(o->logs, o->caplogs * sizeof *o->logs);
    }
    o->logs[o->nlogs].at = bp_outcome_strdup(o, at);
    o->logs[o->nlogs].msg = bp_outcome_strdup(o, text.data);
    o->nlogs++;
    o->logs_bytes += text.len;
    bp_buf_free(&text);
}

void bp_engine_log_hook(bp_engine *e, int on) { bp_sandbox_set_log(e->sb, on ? on_log : NULL, on ? e : NULL); }

/* The completed run's lines, then one note when some were over the bound. */
void bp_engine_emit_logs(bp_engine *e, const bp_outcome *o)
{
    for (size_t i = 0; i < o->nlogs; i++) emit_log(e, o, o->logs[i].at, o->logs[i].msg, strlen(o->logs[i].msg));
    if (o->logs_dropped) {
        char note[160];
        snprintf(note, sizeof note, "(more than %d lines or %d KiB logged for this event: further lines are dropped)",
                 LOG_LINES_MAX, LOG_BYTES_MAX / 1024);
        emit_log(e, o, "", note, strlen(note));
    }
}

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
    bp_engine *e = bp_calloc(1, sizeof *e);
    e->bp = bp;
    e->cfg = cfg;
    e->json_limits = limits->json;
    e->custom_ref = LUA_NOREF;
    e->denied_ref = LUA_NOREF;
    e->verify_ref = LUA_NOREF;
    e->batch_ref = LUA_NOREF;
    bp_doc_init(&e->denied_doc);
    bp_doc_init(&e->doc);
    bp_doc_init(&e->jdoc);
    bp_doc_init(&e->adoc);
    bp_account_key(bp, cfg, "dry-run", e->own_account, sizeof e->own_account);
    e->account = e->own_account;
    e->route_refs = bp_calloc(bp->nroutes + 1, sizeof *e->route_refs);
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
    bp_steps_add(L, e);
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
    if (bp->has_batch && (e->batch_ref = compile_mapping(e, bp->batch.mapping, err)) == LUA_NOREF) goto fail;
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
    bp_steps_free(e);
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
    bp_steps_add(L, e);
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
        if (!is_table || bp_read_request(L, out, r, &err) < 0 ||
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
    bp_steps_end_writes(e, rc == 0 && !e->stopped);
    if (!e->stopped) bp_engine_emit_logs(e, out);
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
