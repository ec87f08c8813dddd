/*
 * steps.c — ctx.send and ctx.cache: the steps of a mapping run and the
 * journal of their answers.
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
#include "internal.h"
#include "engine_state.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STEPS 50                /* per event: a mapping that loops on ctx.send stops here */
#define STEP_WAIT_MS 25             /* another event fetches the answer a step shares: look again after */
#define DEFAULT_TTL_S 3600.0

static char step_stop;   /* the error value a run stops with at a step (only its address is used) */

static uint64_t step_fingerprint(const bp_request *r)
{
    uint64_t h = bp_fnv1a(BP_FNV1A_BASIS, r->method, strlen(r->method) + 1);
    h = bp_fnv1a(h, r->url, strlen(r->url) + 1);
    return bp_fnv1a(h, r->body.data ? r->body.data : "", r->body.len);
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
    size_t shown = bp_utf8_cut(body, len, BP_ANSWER_SHOWN);
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
    if (bp_read_request(L, o, r, &err) < 0 || bp_request_check_destination(e->bp, e->cfg, r->url, &err) < 0) {
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
        e->writes = bp_realloc(e->writes, e->capwrites * sizeof *e->writes);
    }
    size_t kl = strlen(key);
    char *k = bp_malloc(kl + 1);
    memcpy(k, key, kl + 1);
    e->writes[e->nwrites++] = (struct cache_write){ k, json.data ? json.data : bp_strdup("null"), ttl, durable };
    return 0;
}

/* A completed run's ctx.cache.set values go to the cache; a stopped or
 * failed run's are forgotten. */
void bp_steps_end_writes(bp_engine *e, int apply)
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
void bp_steps_add(lua_State *L, bp_engine *e)
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

void bp_steps_free(bp_engine *e)
{
    for (size_t i = 0; i < e->nwrites; i++) { free(e->writes[i].key); free(e->writes[i].json); }
    free(e->writes);
}
