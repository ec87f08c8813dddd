/*
 * luajson.c — JSON between the core and Lua, exactly.
 *
 * Events reach a mapping as *views*: small userdata pointing at a node of the
 * parsed document.  Indexing a view returns scalars as Lua values and
 * containers as further views, so a mapping that reads ten fields of a
 * 1 KB event converts ten fields, not the whole event.  A view written back
 * into a request is copied node by node, so numbers keep their exact source
 * text (a 20-digit id survives even though Lua could not hold it).
 *
 * The top level of an event also answers to both spellings Signal uses
 * (userId/user_id, anonymousId/anonymous_id, messageId/message_id/event_id).
 *
 * Tables built by mappings are encoded with sorted keys (deterministic
 * output for golden tests); a table is an array when it is a non-empty
 * sequence or was made with ctx.array(), otherwise an object.
 */
#include "internal.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

typedef struct view {
    const bp_doc *doc;
    uint32_t node;
    uint32_t generation;
} view;

#define MAX_ENCODE_DEPTH 64
#define SMALL_OBJECT 32     /* objects up to this many keys are encoded from the stack */

/* The metatables are also kept under these addresses (lua_rawgetp): the hot
 * paths check them by address, where luaL_testudata would intern and compare
 * the metatable's name on every call. */
static const char view_mt_key, secret_mt_key, array_mt_key, object_mt_key;

/* luaL_testudata by metatable address. */
static void *test_udata(lua_State *L, int idx, const void *mt_key)
{
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return NULL;
    lua_rawgetp(L, LUA_REGISTRYINDEX, mt_key);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? lua_touserdata(L, idx) : NULL;
}

static void set_metatable(lua_State *L, const void *mt_key)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, mt_key);
    lua_setmetatable(L, -2);
}

/* ---- views ------------------------------------------------------------------- */

static view *check_view(lua_State *L, int idx)
{
    view *v = test_udata(L, idx, &view_mt_key);
    if (!v) luaL_typeerror(L, idx, "event value");
    if (v->doc->generation != v->generation)
        luaL_error(L, "event data used after its event finished (do not keep event values between calls)");
    return v;
}

void bp_push_null(lua_State *L) { lua_pushlightuserdata(L, NULL); }

static void new_view(lua_State *L, const bp_doc *d, uint32_t i)
{
    view *v = lua_newuserdatauv(L, sizeof *v, 0);
    v->doc = d;
    v->node = i;
    v->generation = d->generation;
    set_metatable(L, &view_mt_key);
}

static void push_scalar(lua_State *L, const bp_doc *d, uint32_t i)
{
    const bp_jnode *n = &d->nodes[i];
    switch (n->type) {
    case BP_JTRUE: lua_pushboolean(L, 1); break;
    case BP_JFALSE: lua_pushboolean(L, 0); break;
    case BP_JSTRING: lua_pushlstring(L, bp_jtext(d, i), n->len); break;
    case BP_JNUMBER: {
        /* Integers that fit 64 bits become Lua integers, other numbers
         * floats.  An integer too big for 64 bits, or a number out of double
         * range, stays a view so that writing it back keeps its exact text
         * (tostring() gives the text; arithmetic on it is an error). */
        const char *text = bp_jtext(d, i);
        lua_stringtonumber(L, text);
        if (!lua_isinteger(L, -1)) {
            double x = lua_tonumber(L, -1);
            if (!strpbrk(text, ".eE") || x - x != 0) {
                lua_pop(L, 1);
                new_view(L, d, i);
            }
        }
        break;
    }
    default: lua_pushnil(L); break;
    }
}

void bp_push_view(lua_State *L, const bp_doc *d, uint32_t i)
{
    uint8_t t = d->nodes[i].type;
    if (t != BP_JOBJECT && t != BP_JARRAY) { push_scalar(L, d, i); return; }
    new_view(L, d, i);
}

/* Alternative spellings of top-level envelope keys (docs/events.md). */
static const char *const aliases[][4] = {
    { "userId", "user_id", NULL, NULL },
    { "anonymousId", "anonymous_id", NULL, NULL },
    { "messageId", "message_id", "event_id", NULL },   /* bp_message_id_keys (envelope.c) */
};

static uint32_t lookup_key_n(const bp_doc *d, uint32_t obj, const char *key, size_t klen)
{
    uint32_t hit = bp_jget_n(d, obj, key, klen);
    if (hit != BP_NONE || obj != 0) return hit;
    for (size_t a = 0; a < sizeof aliases / sizeof aliases[0]; a++) {
        int match = 0;
        for (int k = 0; aliases[a][k]; k++)
            if (strlen(aliases[a][k]) == klen && !memcmp(aliases[a][k], key, klen)) match = 1;
        if (!match) continue;
        for (int k = 0; aliases[a][k]; k++) {
            hit = bp_jget(d, obj, aliases[a][k]);
            if (hit != BP_NONE) return hit;
        }
    }
    return BP_NONE;
}

static uint32_t lookup_key(const bp_doc *d, uint32_t obj, const char *key)
{
    return lookup_key_n(d, obj, key, strlen(key));
}

static uint32_t array_item(const bp_doc *d, uint32_t arr, lua_Integer k)
{
    if (k < 1 || (lua_Unsigned)k > d->nodes[arr].len) return BP_NONE;
    uint32_t c = arr + 1;
    for (lua_Integer j = 1; j < k; j++) c = d->nodes[c].next;
    return c;
}

int bp_view_get_path(lua_State *L, int idx, const char *path, size_t len)
{
    view *v = test_udata(L, idx, &view_mt_key);
    if (!v) return -1;
    if (v->doc->generation != v->generation)
        return luaL_error(L, "event data used after its event finished (do not keep event values between calls)");
    const bp_doc *d = v->doc;
    uint32_t cur = v->node;
    const char *p = path, *end = path + len;
    while (p < end && cur != BP_NONE) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        uint8_t t = d->nodes[cur].type;
        if (t == BP_JOBJECT) {
            cur = lookup_key_n(d, cur, p, n);
        } else if (t == BP_JARRAY) {
            lua_Integer k = 0;                      /* "products.1.id": 1-based */
            size_t i = 0;
            while (i < n && i < 18 && p[i] >= '0' && p[i] <= '9') k = k * 10 + (p[i++] - '0');
            cur = (n && i == n) ? array_item(d, cur, k) : BP_NONE;
        } else {
            cur = BP_NONE;
        }
        p += n + (dot ? 1 : 0);
    }
    if (cur == BP_NONE || d->nodes[cur].type == BP_JNULL) lua_pushnil(L);
    else bp_push_view(L, d, cur);
    return 0;
}

static int view_index(lua_State *L)
{
    view *v = check_view(L, 1);
    const bp_doc *d = v->doc;
    uint32_t hit = BP_NONE;
    if (d->nodes[v->node].type == BP_JNUMBER) {
        return luaL_error(L, "cannot index a number");
    } else if (d->nodes[v->node].type == BP_JOBJECT) {
        const char *key = lua_tostring(L, 2);
        if (key && lua_type(L, 2) == LUA_TSTRING) hit = lookup_key(d, v->node, key);
    } else if (lua_isinteger(L, 2)) {
        hit = array_item(d, v->node, lua_tointeger(L, 2));
    }
    if (hit == BP_NONE) { lua_pushnil(L); return 1; }
    bp_push_view(L, d, hit);
    return 1;
}

static int view_len(lua_State *L)
{
    view *v = check_view(L, 1);
    lua_pushinteger(L, v->doc->nodes[v->node].type == BP_JARRAY ? v->doc->nodes[v->node].len : 0);
    return 1;
}

/* pairs() iterator: upvalues are the view and the cursor (child node, ordinal). */
static int view_next(lua_State *L)
{
    view *v = check_view(L, lua_upvalueindex(1));
    const bp_doc *d = v->doc;
    lua_Integer cursor = lua_tointeger(L, lua_upvalueindex(2));
    lua_Integer ordinal = lua_tointeger(L, lua_upvalueindex(3));
    const bp_jnode *self = &d->nodes[v->node];
    if (ordinal >= (lua_Integer)self->len) return 0;
    uint32_t c = (uint32_t)cursor;
    if (self->type == BP_JOBJECT) {
        lua_pushlstring(L, bp_jtext(d, c), d->nodes[c].len);
        c++;
    } else {
        lua_pushinteger(L, ordinal + 1);
    }
    if (d->nodes[c].type == BP_JNULL) bp_push_null(L); else bp_push_view(L, d, c);
    lua_pushinteger(L, d->nodes[c].next);
    lua_replace(L, lua_upvalueindex(2));
    lua_pushinteger(L, ordinal + 1);
    lua_replace(L, lua_upvalueindex(3));
    return 2;
}

static int view_pairs(lua_State *L)
{
    view *v = check_view(L, 1);
    uint8_t t = v->doc->nodes[v->node].type;
    if (t != BP_JOBJECT && t != BP_JARRAY) return luaL_error(L, "cannot iterate over a number");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, v->node + 1);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, view_next, 3);
    return 1;
}

/* next(view, key) (the sandbox's next, sandbox.c): the key after `key`, and
 * its value, as pairs() gives them; nothing when `key` was the last.  An
 * object with a repeated key yields it once, with the first value (what
 * view[key] reads), so a loop over next always ends. */
int bp_view_next(lua_State *L)
{
    view *v = check_view(L, 1);
    const bp_doc *d = v->doc;
    const bp_jnode *self = &d->nodes[v->node];
    if (self->type == BP_JARRAY) {
        lua_Integer k = lua_isnoneornil(L, 2) ? 0 : lua_isinteger(L, 2) ? lua_tointeger(L, 2) : -1;
        if (k < 0 || (lua_Unsigned)k > self->len) return luaL_error(L, "invalid key to 'next'");
        if ((lua_Unsigned)k == self->len) { lua_pushnil(L); return 1; }
        uint32_t c = array_item(d, v->node, k + 1);
        lua_pushinteger(L, k + 1);
        if (d->nodes[c].type == BP_JNULL) bp_push_null(L); else bp_push_view(L, d, c);
        return 2;
    }
    if (self->type != BP_JOBJECT) return luaL_error(L, "cannot iterate over a number");
    uint32_t key = v->node + 1, left = self->len;   /* key node of the candidate, members left */
    const bp_budget *budget = bp_budget_of(L);      /* repeats make the scan below quadratic */
    if (!lua_isnoneornil(L, 2)) {
        size_t klen;
        const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &klen) : NULL;
        uint32_t at = k ? bp_jget_n(d, v->node, k, klen) : BP_NONE;   /* its value node */
        if (at == BP_NONE) return luaL_error(L, "invalid key to 'next'");
        while (key + 1 != at) { key = d->nodes[key + 1].next; left--; }
        key = d->nodes[key + 1].next;
        left--;
    }
    for (; left > 0; key = d->nodes[key + 1].next, left--) {
        bp_budget_tick(L, budget, 1);
        if (bp_jget_n(d, v->node, bp_jtext(d, key), d->nodes[key].len) != key + 1) continue;   /* a repeat */
        lua_pushlstring(L, bp_jtext(d, key), d->nodes[key].len);
        if (d->nodes[key + 1].type == BP_JNULL) bp_push_null(L); else bp_push_view(L, d, key + 1);
        return 2;
    }
    lua_pushnil(L);
    return 1;
}

/* ctx.totable: the view at idx as plain tables; -1 when it is not a view. */
int bp_view_totable(lua_State *L, int idx)
{
    if (!test_udata(L, idx, &view_mt_key)) return -1;
    view *v = check_view(L, idx);
    bp_push_tables(L, v->doc, v->node);
    return 0;
}

/* (protected) the text of a bp_buf as a Lua string */
static int push_text(lua_State *L)
{
    const bp_buf *b = lua_touserdata(L, 1);
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    return 1;
}

void bp_push_buf_free(lua_State *L, bp_buf *b)
{
    /* Making the string may hit the state's memory cap, whose error would
     * jump past the free: a call that does it again and again (under a
     * pcall) leaked the buffer each time, outside the cap.  So it is made
     * in a protected call, the buffer freed, then any error raised again. */
    lua_pushcfunction(L, push_text);
    lua_pushlightuserdata(L, b);
    int rc = lua_pcall(L, 1, 1, 0);
    bp_buf_free(b);
    if (rc != LUA_OK) lua_error(L);
}

static int view_tostring(lua_State *L)
{
    view *v = check_view(L, 1);
    if (v->doc->nodes[v->node].type == BP_JNUMBER) {
        lua_pushstring(L, bp_jtext(v->doc, v->node));
        return 1;
    }
    bp_buf b;
    bp_buf_init(&b);
    bp_json_write_node(&b, v->doc, v->node);
    bp_push_buf_free(L, &b);
    return 1;
}

static int view_newindex(lua_State *L)
{
    return luaL_error(L, "event data is read-only (copy what you need into a new table)");
}

void bp_push_tables(lua_State *L, const bp_doc *d, uint32_t i)
{
    const bp_jnode *n = &d->nodes[i];
    if (n->type == BP_JNULL) { bp_push_null(L); return; }
    if (n->type == BP_JNUMBER) {
        /* plain tables outlive the document: no views, a float at worst */
        if (lua_stringtonumber(L, bp_jtext(d, i)) == 0) lua_pushnil(L);
        return;
    }
    if (n->type != BP_JOBJECT && n->type != BP_JARRAY) { push_scalar(L, d, i); return; }
    luaL_checkstack(L, 4, "JSON nested too deep");
    lua_createtable(L, n->type == BP_JARRAY ? (int)n->len : 0, n->type == BP_JOBJECT ? (int)n->len : 0);
    uint32_t c = i + 1;
    for (uint32_t k = 0; k < n->len; k++) {
        if (n->type == BP_JOBJECT) {
            lua_pushlstring(L, bp_jtext(d, c), d->nodes[c].len);
            c++;
            bp_push_tables(L, d, c);
            lua_rawset(L, -3);
        } else {
            bp_push_tables(L, d, c);
            lua_rawseti(L, -2, (lua_Integer)k + 1);
        }
        c = d->nodes[c].next;
    }
    set_metatable(L, n->type == BP_JARRAY ? &array_mt_key : &object_mt_key);
}

/* ---- secrets ------------------------------------------------------------------- */

const char *bp_secret_name(lua_State *L, int idx)
{
    const char **p = test_udata(L, idx, &secret_mt_key);
    return p ? *p : NULL;
}

static int secret_tostring(lua_State *L)
{
    lua_pushliteral(L, "[redacted]");
    return 1;
}

static int secret_concat(lua_State *L)
{
    return luaL_error(L, "a secret cannot be joined to other text; use ctx.secret(...) as a whole "
                         "header value, form field or JSON value");
}

void bp_push_secret(lua_State *L, const char *name)
{
    /* The name is interned in the registry so the pointer stays valid. */
    lua_getfield(L, LUA_REGISTRYINDEX, "bp.secret.names");
    lua_getfield(L, -1, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushstring(L, name);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    }
    const char *interned = lua_tostring(L, -1);
    lua_pop(L, 2);
    const char **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = interned;
    set_metatable(L, &secret_mt_key);
}

void bp_luajson_open(lua_State *L)
{
    static const luaL_Reg view_methods[] = {
        { "__index", view_index }, { "__len", view_len }, { "__pairs", view_pairs },
        { "__tostring", view_tostring }, { "__newindex", view_newindex }, { NULL, NULL }
    };
    luaL_newmetatable(L, BP_VIEW_MT);
    luaL_setfuncs(L, view_methods, 0);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &view_mt_key);

    luaL_newmetatable(L, BP_SECRET_MT);
    lua_pushcfunction(L, secret_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, secret_concat);
    lua_setfield(L, -2, "__concat");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &secret_mt_key);

    luaL_newmetatable(L, BP_ARRAY_MT);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_mt_key);
    luaL_newmetatable(L, BP_OBJECT_MT);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &object_mt_key);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "bp.secret.names");
}

/* ---- encoding ---------------------------------------------------------------- */

typedef struct encoder {
    lua_State *L;
    bp_buf *out;
    bp_slots *slots;
    bp_error *err;
    /* the key path of the value being encoded, formatted only for messages */
    const char *keys[MAX_ENCODE_DEPTH + 2];
    lua_Integer index[MAX_ENCODE_DEPTH + 2];
    int depth;
    const void *array_mt, *object_mt;   /* ctx.array() / JSON-object marks */
    const bp_budget *budget;            /* the state's (metered.c), or NULL */
    size_t start;                       /* out->len when this encoding began */
    unsigned long unwatched;            /* values encoded while not armed */
} encoder;

static int enc_fail(encoder *e, const char *what)
{
    char path[256] = "";
    size_t n = 0;
    for (int i = 0; i < e->depth && n < sizeof path - 1; i++) {
        if (e->keys[i]) n += (size_t)snprintf(path + n, sizeof path - n, "%s%s", n ? "." : "", e->keys[i]);
        else n += (size_t)snprintf(path + n, sizeof path - n, "[%lld]", (long long)e->index[i]);
    }
    bp_error_set(e->err, "cannot encode %s: %s", path[0] ? path : "value", what);
    return -1;
}

static void add_slot(bp_slots *s, size_t offset, const char *name)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->v = bp_realloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n].offset = offset;
    s->v[s->n].name = bp_strdup(name);
    s->n++;
}

static int enc_value(encoder *e, int idx, int depth);

/* Is the table at idx a sequence 1..n with nothing else?  Returns n, 0 for
 * "not a sequence / empty", -1 for a mix the encoder refuses. */
static lua_Integer sequence_length(lua_State *L, int idx, lua_Integer *nkeys)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0, strings = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        count++;
        if (lua_type(L, -2) == LUA_TSTRING) strings++;
        lua_pop(L, 1);
    }
    *nkeys = count;
    if (n > 0 && count == n) return n;
    if (strings == count) return 0;
    return -1;
}

static void path_push(encoder *e, const char *key, lua_Integer index, size_t *saved)
{
    *saved = (size_t)e->depth;
    if (e->depth < MAX_ENCODE_DEPTH + 2) {
        e->keys[e->depth] = key;
        e->index[e->depth] = index;
        e->depth++;
    }
}

static void path_pop(encoder *e, size_t saved) { e->depth = (int)saved; }

/* A table's members, left on the stack as key/value pairs by
 * push_members_sorted and listed in key byte order (deterministic output). */
typedef struct member { const char *name; size_t len; int at; } member;
typedef struct members { member *v, small[SMALL_OBJECT]; int n; } members;

/* Byte order, whole keys: a key may hold "\0", which strcmp would stop at. */
static int member_cmp(const member *x, const member *y)
{
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int cmp_members(const void *a, const void *b) { return member_cmp(a, b); }

static void members_free(members *m) { if (m->v != m->small) free(m->v); }

/* One pass of lua_next pushes every key and value (no lookup per key later);
 * small tables are sorted by insertion as they come.  Returns 0; when a key
 * is not a string, -1 for a number key and -2 for any other, with the stack
 * as it was. */
static int push_members_sorted(lua_State *L, int idx, members *m)
{
    int base = lua_gettop(L), cap = SMALL_OBJECT;
    m->v = m->small;
    m->n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {                  /* ..., key, value */
        if (lua_type(L, -2) != LUA_TSTRING) {
            int rc = lua_type(L, -2) == LUA_TNUMBER ? -1 : -2;
            lua_settop(L, base);
            members_free(m);
            return rc;
        }
        luaL_checkstack(L, 4, "encoder");
        lua_pushvalue(L, -2);                   /* ..., key, value, key (for lua_next) */
        if (m->n == cap) {
            cap *= 2;
            member *grown = bp_malloc((size_t)cap * sizeof *grown);
            memcpy(grown, m->v, (size_t)m->n * sizeof *grown);
            members_free(m);
            m->v = grown;
        }
        member one = { NULL, 0, lua_gettop(L) - 2 };
        one.name = lua_tolstring(L, one.at, &one.len);
        int i = m->n++;
        if (m->n <= SMALL_OBJECT)
            for (; i > 0 && member_cmp(&m->v[i - 1], &one) > 0; i--) m->v[i] = m->v[i - 1];
        m->v[i] = one;
    }
    if (m->n > SMALL_OBJECT) qsort(m->v, (size_t)m->n, sizeof *m->v, cmp_members);
    return 0;
}

static int enc_table(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    int marked_array = 0, marked_object = 0;
    if (lua_getmetatable(L, idx)) {
        const void *mt = lua_topointer(L, -1);
        marked_array = mt == e->array_mt;
        marked_object = mt == e->object_mt;
        lua_pop(L, 1);
    }
    size_t saved;
    if (lua_rawlen(L, idx) > 0 || marked_array) {
        lua_Integer nkeys, n = sequence_length(L, idx, &nkeys);
        if (n < 0) return enc_fail(e, "a table mixes array items and named keys");
        if (marked_array && nkeys != n) return enc_fail(e, "a ctx.array() table has named keys");
        if (!marked_object) {
            bp_buf_putc(e->out, '[');
            for (lua_Integer i = 1; i <= n; i++) {
                if (i > 1) bp_buf_putc(e->out, ',');
                lua_rawgeti(L, idx, i);
                path_push(e, NULL, i, &saved);
                int rc = enc_value(e, lua_gettop(L), depth + 1);
                path_pop(e, saved);
                lua_pop(L, 1);
                if (rc < 0) return -1;
            }
            bp_buf_putc(e->out, ']');
            return 0;
        }
    }
    int base = lua_gettop(L);
    members m;
    int got = push_members_sorted(L, idx, &m);
    if (got == -1) return enc_fail(e, "a table mixes array items and named keys");
    if (got < 0) return enc_fail(e, "table keys must be strings");
    bp_buf_putc(e->out, '{');
    int rc = 0;
    for (int i = 0; i < m.n && rc == 0; i++) {
        size_t bad;
        if (i) bp_buf_putc(e->out, ',');
        if (bp_json_write_utf8(e->out, m.v[i].name, m.v[i].len, &bad) < 0) { rc = enc_fail(e, "a key is not valid UTF-8"); break; }
        bp_buf_putc(e->out, ':');
        path_push(e, m.v[i].name, 0, &saved);
        rc = enc_value(e, m.v[i].at + 1, depth + 1);
        path_pop(e, saved);
    }
    members_free(&m);
    lua_settop(L, base);
    if (rc == 0) bp_buf_putc(e->out, '}');
    return rc;
}

/* A table holding the same table twice is written out twice, so a few
 * dozen small tables can stand for 2^60 values.  Each value encoded is
 * charged to the budget: every one once the call is watched, every
 * ENC_CHECK_EVERY-th before, and after the call too (a mapping's result is
 * encoded once it has returned, where the watchdog no longer looks: its
 * deadline still holds).  The text may not outgrow the memory cap either.
 * Neither message names a key path: the whole value is at fault. */
#define ENC_CHECK_EVERY 4096

static int enc_over_budget(encoder *e)
{
    const bp_budget *b = e->budget;
    if (!b) return 0;
    int armed = atomic_load_explicit(&b->armed, memory_order_relaxed);
    if (b->spend && (armed || ++e->unwatched % ENC_CHECK_EVERY == 0)) {
        const char *why = b->spend(e->L, b->ud, armed ? 1 : ENC_CHECK_EVERY);
        if (why) {
            bp_error_set(e->err, "cannot encode the value: %s", why);
            return -1;
        }
    }
    if (b->max_bytes && e->out->len - e->start > b->max_bytes) {
        bp_error_set(e->err, "cannot encode the value: its JSON text is larger than the memory limit (%zu MiB; "
                     "a table that holds the same table many times?)", b->max_bytes / (1024 * 1024));
        return -1;
    }
    return 0;
}

static int enc_value(encoder *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (depth > MAX_ENCODE_DEPTH) return enc_fail(e, "nested too deep (a table that contains itself?)");
    if (enc_over_budget(e) < 0) return -1;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: bp_buf_add(e->out, "null", 4); return 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx)) bp_buf_add(e->out, "true", 4); else bp_buf_add(e->out, "false", 5);
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            bp_json_write_int(e->out, (long long)lua_tointeger(L, idx));
            return 0;
        }
        if (bp_json_write_double(e->out, lua_tonumber(L, idx)) < 0) return enc_fail(e, "NaN and infinity are not JSON");
        return 0;
    case LUA_TSTRING: {
        size_t len, bad;
        const char *s = lua_tolstring(L, idx, &len);
        if (bp_json_write_utf8(e->out, s, len, &bad) < 0) {
            char what[96];
            snprintf(what, sizeof what, "the string is not valid UTF-8 (byte %zu)", bad);
            return enc_fail(e, what);
        }
        return 0;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { bp_buf_add(e->out, "null", 4); return 0; }
        break;
    case LUA_TUSERDATA: {
        const char *secret = bp_secret_name(L, idx);
        if (secret) {
            if (!e->slots) return enc_fail(e, "secrets may only be placed directly in a request");
            add_slot(e->slots, e->out->len, secret);
            return 0;
        }
        view *v = test_udata(L, idx, &view_mt_key);
        if (v) {
            check_view(L, idx);
            bp_json_write_node(e->out, v->doc, v->node);
            return 0;
        }
        break;
    }
    case LUA_TTABLE: return enc_table(e, idx, depth);
    default: break;
    }
    char what[64];
    snprintf(what, sizeof what, "a %s value has no JSON form", luaL_typename(L, idx));
    return enc_fail(e, what);
}

int bp_encode_json(lua_State *L, int idx, bp_buf *out, bp_slots *slots, bp_error *err)
{
    encoder e;
    e.L = L;
    e.out = out;
    e.slots = slots;
    e.err = err;
    e.depth = 0;
    e.budget = bp_budget_of(L);
    e.start = out->len;
    e.unwatched = 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key);
    e.array_mt = lua_topointer(L, -1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &object_mt_key);
    e.object_mt = lua_topointer(L, -1);
    lua_pop(L, 2);
    luaL_checkstack(L, MAX_ENCODE_DEPTH * 3 + 10, "encoder");
    return enc_value(&e, lua_absindex(L, idx), 0);
}

/* Bytes application/x-www-form-urlencoded keeps as they are. */
static const unsigned char form_plain[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['*'] = 1,
    ['0'] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ['A'] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ['a'] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

void bp_form_escape(bp_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    bp_buf_reserve(out, len * 3);
    char *w = out->data + out->len;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (form_plain[c]) {
            *w++ = (char)c;
        } else if (c == ' ') {
            *w++ = '+';
        } else {
            w[0] = '%';
            w[1] = hex[c >> 4];
            w[2] = hex[c & 15];
            w += 3;
        }
    }
    out->len = (size_t)(w - out->data);
    out->data[out->len] = '\0';
}

int bp_encode_form(lua_State *L, int idx, bp_buf *out, bp_slots *slots, bp_error *err)
{
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) { bp_error_set(err, "form body must be a table of fields"); return -1; }
    int base = lua_gettop(L);
    members m;
    if (push_members_sorted(L, idx, &m) < 0) {
        bp_error_set(err, "form field names must be strings");
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < m.n && rc == 0; i++) {
        const char *key = m.v[i].name;
        int at = m.v[i].at + 1;                 /* the value */
        if (i) bp_buf_putc(out, '&');
        bp_form_escape(out, key, m.v[i].len);
        bp_buf_putc(out, '=');
        const char *secret = bp_secret_name(L, at);
        if (secret && slots) {
            add_slot(slots, out->len, secret);
        } else if (lua_type(L, at) == LUA_TNUMBER && !lua_isinteger(L, at)) {
            /* floats as in JSON (shortest exact form), not Lua's %.14g */
            bp_buf num;
            bp_buf_init(&num);
            if (bp_json_write_double(&num, lua_tonumber(L, at)) < 0) {
                bp_error_set(err, "form field '%s' is NaN or infinite", key);
                rc = -1;
            } else {
                bp_form_escape(out, num.data, num.len);
            }
            bp_buf_free(&num);
        } else if (lua_type(L, at) == LUA_TSTRING || lua_type(L, at) == LUA_TNUMBER) {
            size_t len, bad;
            const char *v = lua_tolstring(L, at, &len);   /* converts our stack copy only */
            if (bp_utf8_check(v, len, &bad) < 0) {
                bp_error_set(err, "form field '%s' is not valid UTF-8 (byte %zu)", key, bad);
                rc = -1;
            } else {
                bp_form_escape(out, v, len);
            }
        } else {
            bp_error_set(err, "form field '%s' must be a string or number, not %s (encode tables "
                              "with ctx.json)", key, luaL_typename(L, at));
            rc = -1;
        }
    }
    members_free(&m);
    lua_settop(L, base);
    return rc;
}
