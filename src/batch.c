/*
 * batch.c — run a blueprint's batch mapping (blueprint.yaml `batch:`) on
 * events of one account, and read the vendor's answers back into one result
 * per event.
 *
 * A batch mapping is `function(events, ctx)` returning the request for all
 * of them and a function that reads an answer: `read(answer)` gives each
 * event its result (ctx.delivered(), ctx.failed(reason), ctx.retry(reason)
 * or ctx.drop(reason), made by helpers.c, in a list in the events' order),
 * or ctx.later(req):
 * the vendor queued the work, ask `req` later and read its answer the same
 * way.  The reader is a closure, so it knows what the mapping decided (which
 * contact is which event).  A mapping must be deterministic, as for steps:
 * whoever must read an answer again later (after a restart) runs the mapping
 * again on the same events to get the same reader.
 *
 * It shares the engine's state (engine_state.h): the same Lua state, ctx,
 * steps and log lines as a single event's run; the batch's steps and its
 * request go in the batch's own outcome.
 */
#include "internal.h"
#include "engine_state.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the batch ------------------------------------------------------------------ */

void bp_batch_init(bp_batch *b)
{
    memset(b, 0, sizeof *b);
    bp_outcome_init(&b->out);
    b->reader_ref = LUA_NOREF;
}

void bp_batch_free(bp_engine *e, bp_batch *b)
{
    if (e && b->reader_ref != LUA_NOREF) luaL_unref(e->L, LUA_REGISTRYINDEX, b->reader_ref);
    for (size_t i = 0; i < b->n; i++) {
        bp_doc_free(&b->docs[i]);
        free(b->items[i].reason);
    }
    free(b->docs);
    free(b->items);
    bp_doc_free(&b->answer);
    bp_outcome_free(&b->out);
    memset(b, 0, sizeof *b);
    b->reader_ref = LUA_NOREF;
}

static int fail(bp_batch *b, const char *fmt, const char *a, const char *c)
{
    b->out.verdict = BP_ERROR;
    bp_buf_reset(&b->out.reason);
    bp_buf_printf(&b->out.reason, fmt, a, c);
    return -1;
}

/* ctx.consents: each event's marketing (or the blueprint's) consent, as
 * ctx.consent is for one event; ctx.consent itself is unset in a batch. */
static void set_consents(bp_engine *e, bp_batch *b)
{
    lua_State *L = e->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ctx_ref);
    lua_createtable(L, (int)b->n, 0);
    for (size_t i = 0; i < b->n; i++) {
        bp_consent c;
        bp_consent_resolve(&b->docs[i], e->bp->consent_category, e->cfg->consent_default, &c);
        lua_createtable(L, 0, 3);
        lua_pushstring(L, e->bp->consent_category);
        lua_setfield(L, -2, "category");
        lua_pushstring(L, c.state == BP_CONSENT_GRANTED ? "granted" : c.state == BP_CONSENT_DENIED ? "denied" : "unknown");
        lua_setfield(L, -2, "state");
        lua_pushstring(L, c.source ? c.source : "default_policy");
        lua_setfield(L, -2, "source");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "consents");
    lua_pushnil(L);
    lua_setfield(L, -2, "consent");
    lua_pop(L, 1);
}

/* The event's results from the reader's value on top of the stack.  0: each
 * event has one; 1: "later" (b->later holds the request); -1: an error. */
static int take_results(bp_engine *e, bp_batch *b)
{
    lua_State *L = e->L;
    int top = lua_gettop(L);
    const char *file = e->bp->batch.mapping;
    if (!lua_istable(L, top))
        return fail(b, "%s: read(answer) returned %s: return a list of results (one per event) or ctx.later(request)",
                    file, luaL_typename(L, top));
    const char *why;
    const char *whole = bp_batch_result_of(L, top, &why);
    if (whole && !strcmp(whole, "later")) {
        bp_error err;
        lua_getfield(L, top, "request");
        bp_request *r = bp_outcome_add_request(&b->out);
        int bad = bp_read_request(L, &b->out, r, &err) < 0 || bp_request_check_destination(e->bp, e->cfg, r->url, &err) < 0;
        lua_settop(L, top);
        if (bad) {
            bp_outcome_truncate_requests(&b->out, b->out.nrequests - 1);
            return fail(b, "%s: ctx.later: %s", file, err.msg);
        }
        return 1;
    }
    for (size_t i = 0; i < b->n; i++) {
        lua_rawgeti(L, top, (lua_Integer)i + 1);
        bp_batch_item *it = &b->items[i];
        free(it->reason);
        it->reason = NULL;
        const char *drop = bp_drop_reason(L, -1);
        const char *kind = NULL;
        if (drop) {
            it->result = BP_BATCH_DROPPED;
            it->reason = bp_strdup(drop);
        } else if ((kind = bp_batch_result_of(L, -1, &why))) {
            it->reason = why ? bp_strdup(why) : NULL;
        }
        lua_pop(L, 1);
        if (drop) continue;
        if (kind && !strcmp(kind, "delivered")) it->result = BP_BATCH_DELIVERED;
        else if (kind && !strcmp(kind, "failed")) it->result = BP_BATCH_FAILED;
        else if (kind && !strcmp(kind, "retry")) it->result = BP_BATCH_RETRY;
        else {
            char index[32];
            snprintf(index, sizeof index, "%zu", i + 1);
            return fail(b, "%s: read(answer) gave event %s no result (ctx.delivered(), ctx.failed(reason), "
                        "ctx.retry(reason) or ctx.drop(reason))", file, index);
        }
    }
    b->has_results = 1;
    return 0;
}

/* Call the reader with the answer (nil: no request was sent). */
static int call_reader(bp_engine *e, bp_batch *b, int status, const char *body, size_t len, const char *url)
{
    lua_State *L = e->L;
    bp_error err;
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->reader_ref);
    if (!url) {
        lua_pushnil(L);
    } else {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
        lua_pushlstring(L, body ? body : "", len);
        lua_setfield(L, -2, "body");
        lua_pushstring(L, url);
        lua_setfield(L, -2, "url");
        if (len && bp_json_parse(&b->answer, body, len, &e->json_limits, &err) == 0) {
            bp_push_tables(L, &b->answer, 0);
            lua_setfield(L, -2, "json");
        }
    }
    e->out = &b->out;
    bp_engine_log_hook(e, 1);
    int called = bp_sandbox_call(e->sb, 1, 1, &err);
    bp_engine_log_hook(e, 0);
    if (called < 0) return fail(b, "%s%s", "", err.msg);
    int rc = take_results(e, b);
    lua_pop(L, 1);
    return rc;
}

int bp_batch_read(bp_engine *e, bp_batch *b, int status, const char *body, size_t len, const char *url)
{
    if (b->reader_ref == LUA_NOREF) return fail(b, "%s%s", "the batch has no reader", "");
    b->has_results = 0;
    return call_reader(e, b, status, body, len, url ? url : "");
}

/* The mapping's two values on the stack: the request (or nil) and read. */
static int take_request(bp_engine *e, bp_batch *b)
{
    lua_State *L = e->L;
    int top = lua_gettop(L);
    const char *file = e->bp->batch.mapping;
    if (!lua_isfunction(L, top))
        return fail(b, "%s: must return the request and a function that reads its answer (the second value is %s)",
                    file, luaL_typename(L, top));
    lua_pushvalue(L, top);
    b->reader_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, top - 1)) return 0;
    if (!lua_istable(L, top - 1))
        return fail(b, "%s: the request must be a table (or nil when no event needs one), not %s", file,
                    luaL_typename(L, top - 1));
    bp_error err;
    lua_pushvalue(L, top - 1);
    bp_request *r = bp_outcome_add_request(&b->out);
    int bad = bp_read_request(L, &b->out, r, &err) < 0 || bp_request_check_destination(e->bp, e->cfg, r->url, &err) < 0;
    lua_settop(L, top);
    if (bad) return fail(b, "%s: the request: %s", file, err.msg);
    b->has_request = 1;
    return 0;
}

/* Events that are not JSON objects never reach a batch: the caller judged
 * each one alone first (dry-run, delivery). */
static int parse_events(bp_engine *e, bp_batch *b, const char *const *events, const size_t *lens, size_t n)
{
    b->n = n;
    b->docs = bp_calloc(n + 1, sizeof *b->docs);
    b->items = bp_calloc(n + 1, sizeof *b->items);
    for (size_t i = 0; i < n; i++) {
        bp_error err;
        bp_doc_init(&b->docs[i]);
        if (bp_json_parse(&b->docs[i], events[i], lens[i], &e->json_limits, &err) < 0 ||
            b->docs[i].nodes[0].type != BP_JOBJECT)
            return fail(b, "a batch event is not a JSON object%s%s", "", "");
    }
    return 0;
}

int bp_batch_run(bp_engine *e, bp_batch *b, const char *const *events, const size_t *lens, size_t n)
{
    b->out.verdict = BP_ERROR;
    if (e->batch_ref == LUA_NOREF) return fail(b, "the blueprint has no batch: mapping%s%s", "", "");
    if (parse_events(e, b, events, lens, n) < 0) return -1;
    b->out.mapping = bp_outcome_strdup(&b->out, e->bp->batch.mapping);
    lua_State *L = e->L;
    set_consents(e, b);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->batch_ref);      /* fn */
    lua_createtable(L, (int)n, 0);                       /* fn, events */
    for (size_t i = 0; i < n; i++) {
        bp_push_view(L, &b->docs[i], 0);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ctx_proxy_ref); /* fn, events, ctx */
    e->out = &b->out;
    e->nsteps = 0;
    e->jnext = 0;
    e->stopped = 0;
    bp_error err;
    bp_engine_log_hook(e, 1);
    int rc = bp_sandbox_call(e->sb, 2, 2, &err);
    bp_engine_log_hook(e, 0);
    bp_steps_end_writes(e, rc == 0 && !e->stopped);
    if (!e->stopped) bp_engine_emit_logs(e, &b->out);
    if (e->stopped) {
        b->stopped = 1;
        b->out.verdict = BP_DELIVER;
        bp_buf_printf(&b->out.reason, "step %zu: waiting for its answer", b->out.nrequests);
        return 0;
    }
    if (rc < 0) return fail(b, "%s%s", "", err.msg);
    int taken = take_request(e, b);
    lua_pop(L, 2);
    if (taken < 0) return -1;
    b->out.verdict = BP_DELIVER;
    bp_buf_printf(&b->out.reason, "mapped by %s (%zu events)", e->bp->batch.mapping, n);
    if (!b->has_request) return call_reader(e, b, 0, NULL, 0, NULL) < 0 ? -1 : 0;
    return 0;
}

/* ---- dry-run: every request answered as steps are (answers.yaml) -------------------- */

#define DRY_ROUNDS 10   /* status requests dry-run follows before it says the batch is still queued */

/* The answer the engine's answerer (dry-run, test) gives the batch's last
 * request, recorded on it as a step's is. */
static int answer_last(bp_engine *e, bp_batch *b, int *status, bp_buf *body)
{
    bp_request *r = &b->out.requests[b->out.nrequests - 1];
    bp_buf from;
    bp_buf_init(&from);
    int rc = e->answerer ? e->answerer(e->answerer_ud, r, status, body, &from) : -1;
    r->step = 1;   /* shown with its answer, as a step is */
    if (rc == 0) {
        r->answer_status = *status;
        r->answer_from = bp_outcome_strdup(&b->out, from.data ? from.data : "assumed");
        size_t shown = bp_utf8_cut(body->data ? body->data : "", body->len, BP_ANSWER_SHOWN);
        bp_buf cut;
        bp_buf_init(&cut);
        bp_buf_add(&cut, body->data ? body->data : "", shown);
        if (shown < body->len) bp_buf_printf(&cut, "… (%zu more bytes)", body->len - shown);
        r->answer_body = bp_outcome_strdup(&b->out, cut.data ? cut.data : "");
        bp_buf_free(&cut);
    }
    bp_buf_free(&from);
    return rc;
}

int bp_batch_dry(bp_engine *e, bp_batch *b)
{
    if (!b->has_request || b->has_results || b->stopped) return 0;
    bp_buf body;
    bp_buf_init(&body);
    int rc = 1;
    for (int round = 0; rc == 1 && round <= DRY_ROUNDS; round++) {
        int status = 0;
        bp_buf_reset(&body);
        if (answer_last(e, b, &status, &body) < 0) { rc = fail(b, "no answer for the batch's request%s%s", "", ""); break; }
        rc = bp_batch_read(e, b, status, body.data ? body.data : "", body.len, b->out.requests[b->out.nrequests - 1].url);
    }
    bp_buf_free(&body);
    if (rc == 1) {
        bp_buf_printf(&b->out.reason, "; still queued after %d status requests", DRY_ROUNDS);
        bp_outcome_truncate_requests(&b->out, b->out.nrequests - 1);
    }
    return rc < 0 ? -1 : 0;
}

/* ---- which events a batch takes ---------------------------------------------------- */

/* A track event with this name has a row of its own in the event table. */
static int has_row(const bp_blueprint *bp, const char *name)
{
    for (size_t i = 0; name && i < bp->nroutes; i++)
        if (!strcmp(bp->routes[i].type, "track") && !strcmp(bp->routes[i].name, name)) return 1;
    return 0;
}

const struct bp_batch_spec *bp_engine_batch_spec(const bp_engine *e) { return e->bp->has_batch ? &e->bp->batch : NULL; }

/* The config running switches batches on (batch.enabled_by), or needs not. */
static int switched_on(const bp_engine *e)
{
    const char *by = e->bp->batch.enabled_by;
    const char *v = by ? bp_config_get(e->cfg, by) : NULL;
    return !by || (v && !strcmp(v, "true"));
}

int bp_batch_takes(const bp_engine *e, const bp_outcome *o)
{
    const bp_blueprint *bp = e->bp;
    if (!bp->has_batch || !switched_on(e) || o->verdict != BP_DELIVER || !o->type || !o->mapping || o->nrequests == 0)
        return 0;
    if (o->reason.data && !strncmp(o->reason.data, "consent:", 8)) return 0;   /* a withdrawal goes alone */
    for (size_t k = 0; k < bp->batch.nevents; k++) {
        if (!strcmp(bp->batch.events[k], "custom") && bp->has_custom && !strcmp(o->type, "track") &&
            !strcmp(o->mapping, bp->custom.mapping) && !has_row(bp, o->event))
            return 1;
        for (size_t i = 0; i < bp->nroutes; i++) {
            const bp_route *r = &bp->routes[i];
            if (strcmp(r->name, bp->batch.events[k]) != 0 || strcmp(r->type, o->type) != 0) continue;
            if (!strcmp(r->type, "track") && (!o->event || strcmp(r->name, o->event) != 0)) continue;
            if (!strcmp(r->mapping, o->mapping)) return 1;
        }
    }
    return 0;
}

const char *bp_batch_result_name(enum bp_batch_result r)
{
    switch (r) {
    case BP_BATCH_DELIVERED: return "delivered";
    case BP_BATCH_FAILED: return "failed";
    case BP_BATCH_RETRY: return "retry";
    case BP_BATCH_DROPPED: return "dropped";
    }
    return "?";
}
