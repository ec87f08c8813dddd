/*
 * helpers.c — the `ctx` table every mapping receives.
 *
 * These are the operations every vendor mapping needs and that must behave
 * identically everywhere: dropping with a reason, exact JSON, secrets by
 * name, path lookup, email normalisation and event-name slugs.  Vendor
 * specifics belong in the blueprint's own helpers.lua, not here.
 */
#include "internal.h"

#include <pthread.h>

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define DROP_MT "bp.drop"

/* ---- ctx.drop ------------------------------------------------------------------ */

static int ctx_drop(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "reason");
    luaL_setmetatable(L, DROP_MT);
    return 1;
}

const char *bp_drop_reason(lua_State *L, int idx)
{
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return NULL;
    luaL_getmetatable(L, DROP_MT);
    int is_drop = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!is_drop) return NULL;
    lua_getfield(L, idx, "reason");
    const char *r = lua_tostring(L, -1);  /* anchored by the drop table */
    lua_pop(L, 1);
    return r;
}

/* ---- a batch's results: ctx.delivered, ctx.failed, ctx.retry, ctx.later ---------- */

#define RESULT_MT "bp.batch_result"

static int make_result(lua_State *L, const char *kind, int with_reason)
{
    const char *reason = with_reason ? luaL_checkstring(L, 1) : NULL;
    if (!strcmp(kind, "later")) luaL_checktype(L, 1, LUA_TTABLE);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    if (reason) {
        lua_pushvalue(L, 1);
        lua_setfield(L, -2, "reason");
    }
    if (!strcmp(kind, "later")) {
        lua_pushvalue(L, 1);
        lua_setfield(L, -2, "request");
    }
    luaL_setmetatable(L, RESULT_MT);
    return 1;
}

static int ctx_delivered(lua_State *L) { return make_result(L, "delivered", 0); }
static int ctx_failed(lua_State *L) { return make_result(L, "failed", 1); }
static int ctx_retry(lua_State *L) { return make_result(L, "retry", 1); }
static int ctx_later(lua_State *L) { return make_result(L, "later", 0); }

const char *bp_batch_result_of(lua_State *L, int idx, const char **reason)
{
    *reason = NULL;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return NULL;
    luaL_getmetatable(L, RESULT_MT);
    int is_result = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!is_result) return NULL;
    lua_getfield(L, idx, "kind");
    const char *kind = lua_tostring(L, -1);   /* anchored by the result table */
    lua_getfield(L, idx, "reason");
    *reason = lua_tostring(L, -1);
    lua_pop(L, 2);
    return kind;
}

/* ---- ctx.json ------------------------------------------------------------------- */

typedef struct member { char *key; bp_buf enc; int keep; } member;

static int cmp_members(const void *a, const void *b)
{
    return strcmp(((const member *)a)->key, ((const member *)b)->key);
}

/* Members by size, the largest first; among equals the first in key order. */
typedef struct by_size { size_t len, i; } by_size;

static int cmp_by_size(const void *a, const void *b)
{
    const by_size *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

static int is_kept(lua_State *L, int keep_idx, lua_Integer n, const char *key)
{
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, keep_idx, i);
        int same = lua_type(L, -1) == LUA_TSTRING && !strcmp(lua_tostring(L, -1), key);
        lua_pop(L, 1);
        if (same) return 1;
    }
    return 0;
}

/* Encode the object at idx within max_bytes: drop the largest members not in
 * `keep` until it fits, and list what was dropped under "_truncated" so the
 * loss is visible to whoever reads the event in the vendor's UI. */
static int json_within(lua_State *L, int idx, size_t max_bytes, int keep_idx, bp_buf *out, bp_error *err)
{
    size_t n = 0, cap = 16;
    member *m = bp_calloc(cap, sizeof *m);
    int rc = 0;
    /* each member is looked up in `keep`: charged, since both may be long */
    const bp_budget *budget = bp_budget_of(L);
    lua_Integer nkeep = keep_idx ? (lua_Integer)lua_rawlen(L, keep_idx) : 0;
    /* Tables are walked with lua_next, event views with their __pairs
     * iterator (which ignores its arguments).  stack: iterator? */
    int is_view = luaL_getmetafield(L, idx, "__pairs") != LUA_TNIL;
    if (is_view) { lua_pushvalue(L, idx); lua_call(L, 1, 1); }
    int iter = lua_gettop(L);
    lua_pushnil(L);
    for (;;) {
        if (is_view) {
            lua_pop(L, 1);
            lua_pushvalue(L, iter);
            lua_call(L, 0, 2);                   /* iter, key, value */
            if (lua_isnil(L, -2)) { lua_pop(L, 2); lua_pushnil(L); break; }
        } else if (!lua_next(L, idx)) {
            lua_pushnil(L);
            break;
        }
        if (lua_type(L, -2) != LUA_TSTRING) { rc = -1; bp_error_set(err, "keys must be strings"); lua_pop(L, 2); break; }
        const char *why = bp_budget_spent(L, budget, (unsigned long)nkeep + 1);
        if (why) { rc = -1; bp_error_set(err, "%s", why); lua_pop(L, 2); break; }
        if (n == cap) { cap *= 2; m = bp_realloc(m, cap * sizeof *m); }
        m[n].key = bp_strdup(lua_tostring(L, -2));
        bp_buf_init(&m[n].enc);
        m[n].keep = is_kept(L, keep_idx, nkeep, m[n].key);
        bp_json_write_string(&m[n].enc, m[n].key, strlen(m[n].key));
        bp_buf_addc(&m[n].enc, ':');
        rc = bp_encode_json(L, -1, &m[n].enc, NULL, err);
        n++;
        lua_pop(L, 1);
        if (rc < 0) break;
    }
    lua_settop(L, iter - (is_view ? 1 : 0));
    if (rc == 0) {
        qsort(m, n, sizeof *m, cmp_members);
        size_t total = 2;
        for (size_t i = 0; i < n; i++) total += m[i].enc.len + (i ? 1 : 0);
        /* drop in order of size (sorted once: 100000 members are not
         * scanned 100000 times); only kept members left: send them, over the limit */
        by_size *order = bp_malloc((n ? n : 1) * sizeof *order);
        size_t candidates = 0;
        for (size_t i = 0; i < n; i++)
            if (!m[i].keep) order[candidates++] = (by_size){ m[i].enc.len, i };
        qsort(order, candidates, sizeof *order, cmp_by_size);
        bp_buf dropped;
        bp_buf_init(&dropped);
        for (size_t c = 0; c < candidates && total + (dropped.len ? dropped.len + 16 : 0) > max_bytes; c++) {
            size_t worst = order[c].i;
            total -= m[worst].enc.len + 1;
            m[worst].enc.len = 0;
            bp_buf_addc(&dropped, dropped.len ? ',' : '[');
            bp_json_write_string(&dropped, m[worst].key, strlen(m[worst].key));
        }
        bp_buf_addc(out, '{');
        int first = 1;
        for (size_t i = 0; i < n; i++) {
            if (!m[i].enc.len) continue;
            if (!first) bp_buf_addc(out, ',');
            bp_buf_add(out, m[i].enc.data, m[i].enc.len);
            first = 0;
        }
        if (dropped.len) {
            bp_buf_printf(out, "%s\"_truncated\":", first ? "" : ",");
            bp_buf_add(out, dropped.data, dropped.len);
            bp_buf_addc(out, ']');
        }
        bp_buf_addc(out, '}');
        bp_buf_free(&dropped);
        free(order);
    }
    for (size_t i = 0; i < n; i++) { free(m[i].key); bp_buf_free(&m[i].enc); }
    free(m);
    return rc;
}

/* The output buffer of ctx.json, kept per thread between calls (each Lua
 * state runs on one thread at a time), so encoding does not allocate; it
 * is freed when its thread ends. */
static pthread_key_t json_buf_key;
static pthread_once_t json_buf_once = PTHREAD_ONCE_INIT;

static void free_json_buf(void *p)
{
    bp_buf_free(p);
    free(p);
}

static void make_json_buf_key(void) { pthread_key_create(&json_buf_key, free_json_buf); }

static bp_buf *thread_json_buf(void)
{
    pthread_once(&json_buf_once, make_json_buf_key);
    bp_buf *b = pthread_getspecific(json_buf_key);
    if (!b) {
        b = bp_calloc(1, sizeof *b);
        bp_buf_init(b);
        pthread_setspecific(json_buf_key, b);
    }
    return b;
}

/* ctx.json(value [, {max_bytes = N, keep = {"key", …}}]) -> compact JSON text. */
static int ctx_json(lua_State *L)
{
    bp_buf *out = thread_json_buf();
    bp_error err;
    int rc;
    bp_buf_reset(out);
    lua_settop(L, 2);
    lua_Integer max_bytes = 0;
    int keep_idx = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "max_bytes");
        max_bytes = lua_tointeger(L, -1);
        lua_getfield(L, 2, "keep");
        keep_idx = lua_istable(L, -1) ? lua_gettop(L) : 0;
    }
    rc = bp_encode_json(L, 1, out, NULL, &err);
    if (rc == 0 && max_bytes > 0 && out->len > (size_t)max_bytes && out->data[0] == '{') {
        bp_buf_reset(out);
        rc = json_within(L, 1, (size_t)max_bytes, keep_idx, out, &err);
    }
    if (rc < 0) {
        bp_buf_reset(out);
        return luaL_error(L, "ctx.json: %s", err.msg);
    }
    lua_pushlstring(L, out->data ? out->data : "", out->len);
    if (out->cap > 1 << 20) bp_buf_free(out);   /* do not keep a huge one */
    return 1;
}

/* ---- ctx.get ---------------------------------------------------------------------- */

/* ctx.get(value, "a.b.c" [, default]): nil-safe path lookup on tables and
 * event views; numeric parts index arrays ("products.1.id"). */
static int ctx_get(lua_State *L)
{
    size_t plen;
    const char *path = luaL_checklstring(L, 2, &plen);
    lua_settop(L, 3);
    if (bp_view_get_path(L, 1, path, plen) == 0) {   /* the common case: a path into the event */
        if (lua_isnil(L, -1)) lua_pushvalue(L, 3);
        return 1;
    }
    lua_pushvalue(L, 1);                      /* cur */
    const bp_budget *budget = bp_budget_of(L);  /* a part may be a C metamethod's call */
    const char *p = path;
    while (*p) {
        bp_budget_tick(L, budget, 1);
        if (!lua_istable(L, -1) && !luaL_testudata(L, -1, BP_VIEW_MT)) { lua_pushnil(L); lua_replace(L, -2); break; }
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char *end;
        long long idx = strtoll(p, &end, 10);
        if (n > 0 && end == p + n) lua_pushinteger(L, idx);
        else lua_pushlstring(L, p, n);
        lua_gettable(L, -2);                  /* cur, next */
        lua_replace(L, -2);
        p += n + (dot ? 1 : 0);
    }
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1)))
        lua_pushvalue(L, 3);                  /* absent or JSON null: the default */
    return 1;
}

/* ---- ctx.email ----------------------------------------------------------------------- */

/* Trim and lower-case; nil unless it looks like local@domain. */
static int ctx_email(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING) { lua_pushnil(L); return 1; }
    size_t len;
    const char *s = lua_tolstring(L, 1, &len);
    while (len && (unsigned char)*s <= ' ') { s++; len--; }
    while (len && (unsigned char)s[len - 1] <= ' ') len--;
    const char *at = memchr(s, '@', len);
    if (!at || at == s || at == s + len - 1 || memchr(at + 1, '@', len - (size_t)(at - s) - 1)) {
        lua_pushnil(L);
        return 1;
    }
    luaL_Buffer b;
    char *w = luaL_buffinitsize(L, &b, len);
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if ((unsigned char)c <= ' ') { lua_pushnil(L); return 1; }
        w[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    luaL_pushresultsize(&b, len);
    return 1;
}

/* ---- ctx.slug ------------------------------------------------------------------------ */

/* ASCII spellings for U+00C0..U+00FF, so "Anmeldung für Café" keeps its
 * letters.  Other non-ASCII characters separate words. */
static const char *const latin1[64] = {
    "a","a","a","a","a","a","ae","c","e","e","e","e","i","i","i","i",
    "d","n","o","o","o","o","o",NULL,"o","u","u","u","u","y","th","ss",
    "a","a","a","a","a","a","ae","c","e","e","e","e","i","i","i","i",
    "d","n","o","o","o","o","o",NULL,"o","u","u","u","u","y","th","y",
};

/* Long strings are walked a chunk at a time between charges to the call's
 * budget: one call on a few MB runs for a while in C. */
#define WALK_CHUNK 4096

/* ctx.urlencode(s): s percent-encoded for a URL's path or query (RFC 3986:
 * everything but letters, digits and -._~), e.g. a tag name in ?search=. */
static int ctx_urlencode(lua_State *L)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const bp_budget *budget = bp_budget_of(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i % WALK_CHUNK == WALK_CHUNK - 1) bp_budget_tick(L, budget, WALK_CHUNK);
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("-._~", c))) {
            luaL_addchar(&b, (char)c);
        } else {
            luaL_addchar(&b, '%');
            luaL_addchar(&b, hex[c >> 4]);
            luaL_addchar(&b, hex[c & 15]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

/* ctx.slug(name [, max_len = 32]) -> "webinar_registered" or nil when no
 * letter or digit is left.  The walk ends once max_len characters are
 * written (later input cannot change them). */
static int ctx_slug(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer max = luaL_optinteger(L, 2, 32);
    bp_buf out;
    bp_buf_init(&out);
    int pending_sep = 0, prev_lower = 0;
    const bp_budget *budget = bp_budget_of(L);
    for (size_t i = 0; i < len && (max <= 0 || out.len < (size_t)max); i++) {
        unsigned char c = (unsigned char)s[i];
        const char *emit = NULL;
        if (i % WALK_CHUNK == WALK_CHUNK - 1 && bp_budget_spent(L, budget, WALK_CHUNK)) {
            bp_buf_free(&out);   /* held outside the Lua state: freed before the error */
            bp_budget_tick(L, budget, 0);
        }
        char one[2] = { 0, 0 };
        int upper = 0;
        if (c >= 'A' && c <= 'Z') { one[0] = (char)(c + 32); emit = one; upper = 1; }
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) { one[0] = (char)c; emit = one; }
        else if (c == 0xC3 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0xBF) {
            unsigned cp = 0xC0 + ((unsigned char)s[i + 1] & 0x3F);
            emit = latin1[cp - 0xC0];
            upper = cp < 0xE0;
            i++;
        } else if (c >= 0x80) {
            while (i + 1 < len && ((unsigned char)s[i + 1] & 0xC0) == 0x80) i++;
        }
        if (!emit) { pending_sep = 1; prev_lower = 0; continue; }
        if (upper && prev_lower) pending_sep = 1;       /* camelCase -> camel_case */
        if (pending_sep && out.len) bp_buf_addc(&out, '_');
        pending_sep = 0;
        bp_buf_adds(&out, emit);
        prev_lower = !upper;
    }
    size_t n = out.len < (size_t)max ? out.len : (size_t)max;
    while (n && out.data[n - 1] == '_') n--;
    if (n) lua_pushlstring(L, out.data, n); else lua_pushnil(L);
    bp_buf_free(&out);
    return 1;
}

/* ---- ctx.array, ctx.secret ----------------------------------------------------------- */

static int ctx_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_setmetatable(L, BP_ARRAY_MT);
    return 1;
}

/* ctx.secret("api_key") -> an opaque reference, or nil when the config leaves
 * that optional secret unset.  Upvalue 1: secret key -> its reference (made
 * once: references are immutable), or false when unset. */
static int ctx_secret(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int t = lua_getfield(L, lua_upvalueindex(1), name);
    if (t == LUA_TNIL)
        return luaL_error(L, "ctx.secret('%s'): blueprint.yaml declares no secret field named '%s'", name, name);
    if (t == LUA_TBOOLEAN) lua_pushnil(L);
    return 1;
}

/* ctx.hmac_sha256("signing_secret") -> a header value: the lower-case hex
 * HMAC-SHA256 of the request's body exactly as sent (secrets substituted),
 * keyed with that secret; nil when the config leaves the secret unset (the
 * header is then left out).  Lua sees neither key nor signature: the
 * transport computes it when sending, dry-run shows a placeholder.  Only a
 * whole header value; upvalue 1 as for ctx.secret. */
#define HMAC_MT "bp.hmac"

static int ctx_hmac_sha256(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int t = lua_getfield(L, lua_upvalueindex(1), name);
    if (t == LUA_TNIL)
        return luaL_error(L, "ctx.hmac_sha256('%s'): blueprint.yaml declares no secret field named '%s'", name, name);
    if (t == LUA_TBOOLEAN) { lua_pushnil(L); return 1; }
    const char *interned = bp_secret_name(L, -1);   /* lives as long as the state */
    const char **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = interned;
    luaL_setmetatable(L, HMAC_MT);
    return 1;
}

const char *bp_hmac_secret_name(lua_State *L, int idx)
{
    const char **p = luaL_testudata(L, idx, HMAC_MT);
    return p ? *p : NULL;
}

static int hmac_tostring(lua_State *L)
{
    lua_pushliteral(L, "[hmac-sha256]");
    return 1;
}

static int hmac_concat(lua_State *L)
{
    return luaL_error(L, "ctx.hmac_sha256(...) cannot be joined to other text; use it as a whole header value");
}

/* ctx.totable(v): an event view copied into plain Lua tables (what
 * table.sort, table.insert, rawget, setmetatable and `type(v) == "table"`
 * need); any other value is returned as it is. */
static int ctx_totable(lua_State *L)
{
    luaL_checkany(L, 1);
    if (bp_view_totable(L, 1) == 0) return 1;
    lua_settop(L, 1);
    return 1;
}

static int ctx_readonly(lua_State *L)
{
    return luaL_error(L, "ctx is read-only (tried to set '%s')", lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

/* A config value as the mapping sees it: booleans as booleans, lists and
 * maps (kept as JSON) as read-only tables, the rest as strings. */
static void push_config_value(lua_State *L, const bp_field *f, const char *value)
{
    enum bp_field_type t = f ? f->type : BP_FIELD_STRING;
    if (t == BP_FIELD_BOOLEAN) { lua_pushboolean(L, !strcmp(value, "true")); return; }
    if (t != BP_FIELD_LIST && t != BP_FIELD_MAP) { lua_pushstring(L, value); return; }
    bp_doc d;
    bp_doc_init(&d);
    bp_error err;
    if (bp_json_parse(&d, value, strlen(value), NULL, &err) == 0) {
        bp_push_tables(L, &d, 0);
        bp_push_readonly(L);
    } else {
        lua_newtable(L);
    }
    bp_doc_free(&d);
}

void bp_push_helpers(lua_State *L, const bp_config *cfg, const bp_blueprint *bp)
{
    static const luaL_Reg fns[] = {
        { "drop", ctx_drop }, { "json", ctx_json }, { "get", ctx_get }, { "email", ctx_email },
        { "slug", ctx_slug }, { "array", ctx_array }, { "totable", ctx_totable }, { "urlencode", ctx_urlencode },
        { "delivered", ctx_delivered }, { "failed", ctx_failed }, { "retry", ctx_retry }, { "later", ctx_later },
        { NULL, NULL }
    };
    luaL_newmetatable(L, DROP_MT);
    lua_pop(L, 1);
    luaL_newmetatable(L, RESULT_MT);
    lua_pop(L, 1);
    if (luaL_newmetatable(L, HMAC_MT)) {
        lua_pushcfunction(L, hmac_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, hmac_concat);
        lua_setfield(L, -2, "__concat");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);

    lua_newtable(L);                                  /* ctx */
    luaL_setfuncs(L, fns, 0);
    bp_push_null(L);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, bp_sandbox_print);
    lua_setfield(L, -2, "log");

    /* config: non-secret values only; secrets by name through ctx.secret */
    lua_newtable(L);                                  /* ctx, config */
    lua_newtable(L);                                  /* ctx, config, secrets */
    for (size_t i = 0; i < bp->nfields; i++)
        if (bp->fields[i].type == BP_FIELD_SECRET) {
            if (bp_config_get(cfg, bp->fields[i].key)) bp_push_secret(L, bp->fields[i].key);
            else lua_pushboolean(L, 0);
            lua_setfield(L, -2, bp->fields[i].key);
        }
    for (size_t i = 0; i < cfg->nvalues; i++) {
        if (cfg->values[i].secret) continue;
        push_config_value(L, bp_blueprint_field(bp, cfg->values[i].key), cfg->values[i].value);
        lua_setfield(L, -3, cfg->values[i].key);
    }
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, ctx_hmac_sha256, 1);          /* ctx, config, secrets, hmac_sha256 */
    lua_setfield(L, -4, "hmac_sha256");
    lua_pushcclosure(L, ctx_secret, 1);               /* ctx, config, secret */
    lua_setfield(L, -3, "secret");
    bp_push_readonly(L);
    lua_setfield(L, -2, "config");                    /* ctx */
}

void bp_push_readonly(lua_State *L) { bp_wrap_proxy(L, ctx_readonly); }
