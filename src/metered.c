/*
 * metered.c — the library functions whose loops the budget hook cannot reach.
 *
 * The count hook (sandbox.c) runs between VM instructions, so one C call that
 * loops without allocating is never interrupted by it: string.rep("", 1 << 50)
 * or table.move({}, 1, 1 << 40, 2) would run for hours under a 1 s budget,
 * and so would table.insert/remove on a table whose __len claims 2^50
 * elements, or a table.concat, unpack or sort whose every element comes from
 * a C metamethod.  These versions keep the standard library's behaviour
 * (same results, same argument checks and messages, Lua 5.4's ltablib.c) and
 * charge every element they touch to the call's budget, as pattern.c does
 * for matching steps.  string.rep builds its result by doubling instead, so
 * its work is the size of what it returns, which the memory cap bounds;
 * string.format quotes long strings for %q itself, charging as it goes.
 *
 * The other library functions do work bounded by the memory cap (the size
 * of a string they get or build) or by Lua's stack limit (a million values);
 * docs/blueprints.md ("The sandbox") lists how each one is bounded.
 */
#include "internal.h"

#include <lauxlib.h>
#include <limits.h>
#include <string.h>

static const char budget_key = 0;   /* registry: light userdata, the state's bp_budget */

const bp_budget *bp_budget_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_key);
    const bp_budget *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return b;
}

/* Every function here has the budget as upvalue 1. */
static void tick(lua_State *L)
{
    bp_budget_tick(L, lua_touserdata(L, lua_upvalueindex(1)), 1);
}

/* ---- string.rep ------------------------------------------------------------------ */

/* Lua's limit on a string a library function builds (lstrlib.c's MAXSIZE). */
#define REP_MAX ((size_t)INT_MAX)

/* string.rep(s, n [, sep]): the first copy of s..sep is written, then the
 * text written so far is copied after itself until it is long enough, so
 * the work is the length of the result however small s is (the library
 * loops n times, even over an empty s). */
static int metered_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if (l + lsep < l || l + lsep > REP_MAX / (lua_Unsigned)n)
        return luaL_error(L, "resulting string too large");
    size_t total = (size_t)n * l + (size_t)(n - 1) * lsep;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, total);
    memcpy(p, s, l);
    size_t done = l;
    if (n > 1) {
        memcpy(p + l, sep, lsep);
        done += lsep;
    }
    while (done < total) {   /* p[0, done) holds whole copies of s..sep */
        size_t more = total - done < done ? total - done : done;
        memcpy(p + done, p, more);
        done += more;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* ---- string.format's %q ------------------------------------------------------------- */

#define QUOTE_DIRECT 4096    /* shorter strings: the library's own %q, no time to speak of */
#define QUOTE_CHUNK 4096     /* bytes quoted between two charges */

/* s written as a Lua string literal the way the library's %q writes it:
 * '"', '\\' and newline escaped with a backslash, other control characters
 * as \ddd (three digits when a digit follows, so that it is not read as
 * part of the number), the rest as is; a charge every QUOTE_CHUNK bytes.
 * The library writes it byte by byte in one C call (hundreds of ms for a
 * few MB). */
static void push_quoted(lua_State *L, const bp_budget *budget, const char *s, size_t len)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i % QUOTE_CHUNK == QUOTE_CHUNK - 1) bp_budget_tick(L, budget, QUOTE_CHUNK);
        if (c == '"' || c == '\\' || c == '\n') {
            luaL_addchar(&b, '\\');
            luaL_addchar(&b, (char)c);
        } else if (c < 32 || c == 127) {
            int digit_next = i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9';
            luaL_addchar(&b, '\\');
            if (digit_next || c >= 100) luaL_addchar(&b, (char)('0' + c / 100));
            if (digit_next || c >= 10) luaL_addchar(&b, (char)('0' + c / 10 % 10));
            luaL_addchar(&b, (char)('0' + c % 10));
        } else {
            luaL_addchar(&b, (char)c);
        }
    }
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
}

/* string.format(fmt, ...): the library's (upvalue 2), except that a long
 * string given to %q is quoted here, with charges, and handed on as %s.
 * %q takes no flags or width, so its directive is always the two bytes
 * "%q"; the others are skipped the way the library reads them (flags,
 * width, precision, conversion) only to know which argument is whose. */
static int metered_format(lua_State *L)
{
    size_t flen;
    const char *fmt = luaL_checklstring(L, 1, &flen);
    char *copy = NULL;          /* fmt with some %q made %s, in a Lua buffer */
    luaL_Buffer b;
    int arg = 1;
    const bp_budget *budget = lua_touserdata(L, lua_upvalueindex(1));
    for (size_t i = 0; i + 1 < flen; i++) {
        if (i % QUOTE_CHUNK == QUOTE_CHUNK - 1) bp_budget_tick(L, budget, QUOTE_CHUNK);
        if (fmt[i] != '%') continue;
        if (fmt[++i] == '%') continue;
        arg++;
        if (fmt[i] != 'q') {
            while (i < flen && strchr("-+ #0123456789.", fmt[i])) i++;
            continue;
        }
        if (lua_type(L, arg) != LUA_TSTRING || lua_rawlen(L, arg) < QUOTE_DIRECT) continue;
        size_t len;
        const char *s = lua_tolstring(L, arg, &len);
        push_quoted(L, budget, s, len);
        lua_replace(L, arg);
        if (!copy) {
            copy = luaL_buffinitsize(L, &b, flen);   /* pushed above the arguments */
            memcpy(copy, fmt, flen);
        }
        copy[i] = 's';
    }
    if (copy) {
        luaL_pushresultsize(&b, flen);
        lua_replace(L, 1);      /* the buffer was the top: the new format takes fmt's place */
    }
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* ---- table ----------------------------------------------------------------------- */

/* What an argument must support to stand in for a table (ltablib.c's checktab). */
#define TAB_R 1
#define TAB_W 2
#define TAB_L 4
#define TAB_RW (TAB_R | TAB_W)

static int has_field(lua_State *L, const char *key, int n)
{
    lua_pushstring(L, key);
    return lua_rawget(L, -n) != LUA_TNIL;
}

static void check_table(lua_State *L, int arg, int what)
{
    if (lua_type(L, arg) == LUA_TTABLE) return;
    int n = 1;
    if (lua_getmetatable(L, arg) &&
        (!(what & TAB_R) || has_field(L, "__index", ++n)) &&
        (!(what & TAB_W) || has_field(L, "__newindex", ++n)) &&
        (!(what & TAB_L) || has_field(L, "__len", ++n)))
        lua_pop(L, n);
    else
        luaL_checktype(L, arg, LUA_TTABLE);   /* raises the usual message */
}

static lua_Integer length_of(lua_State *L, int arg, int what)
{
    check_table(L, arg, what | TAB_L);
    return luaL_len(L, arg);
}

static int metered_insert(lua_State *L)
{
    lua_Integer e = luaL_intop(+, length_of(L, 1, TAB_RW), 1);   /* the first empty slot */
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = e;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        for (lua_Integer i = e; i > pos; i--) {   /* t[i] = t[i - 1] */
            tick(L);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int metered_remove(lua_State *L)
{
    lua_Integer size = length_of(L, 1, TAB_RW);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 1, "position out of bounds");
    lua_geti(L, 1, pos);                          /* the result */
    for (; pos < size; pos++) {                   /* t[pos] = t[pos + 1] */
        tick(L);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* table.move(a1, f, e, t [, a2]): upwards unless the ranges overlap with the
 * destination above the source in the same table. */
static int metered_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
    check_table(L, 1, TAB_R);
    check_table(L, tt, TAB_W);
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        int up = t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ));
        for (lua_Integer k = 0; k < n; k++) {
            lua_Integer i = up ? k : n - 1 - k;
            tick(L);
            lua_geti(L, 1, f + i);
            lua_seti(L, tt, t + i);
        }
    }
    lua_pushvalue(L, tt);
    return 1;
}

static void add_field(lua_State *L, luaL_Buffer *b, lua_Integer i)
{
    tick(L);
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (%s) at index %I in table for 'concat'", luaL_typename(L, -1), (LUAI_UACINT)i);
    luaL_addvalue(b);
}

static int metered_concat(lua_State *L)
{
    luaL_Buffer b;
    lua_Integer last = length_of(L, 1, TAB_R);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    last = luaL_optinteger(L, 4, last);
    luaL_buffinit(L, &b);
    for (; i < last; i++) {
        add_field(L, &b, i);
        luaL_addlstring(&b, sep, lsep);
    }
    if (i == last) add_field(L, &b, i);
    luaL_pushresult(&b);
    return 1;
}

static int metered_unpack(lua_State *L)
{
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = luaL_opt(L, luaL_checkinteger, 3, luaL_len(L, 1));
    if (i > e) return 0;
    lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)i;   /* elements - 1, without overflow */
    if (n >= (unsigned int)INT_MAX || !lua_checkstack(L, (int)(++n)))
        return luaL_error(L, "too many results to unpack");
    for (; i < e; i++) {
        tick(L);
        lua_geti(L, 1, i);
    }
    tick(L);
    lua_geti(L, 1, e);
    return (int)n;
}

/* The order table.sort follows, one comparison at a time: the mapping's
 * comparator (upvalue 2), or '<' when it gave none. */
static int metered_less(lua_State *L)
{
    tick(L);
    if (lua_isnil(L, lua_upvalueindex(2))) {
        lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
        return 1;
    }
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* table.sort(t [, comp]): the library's sort (upvalue 2), given a comparator
 * that charges each comparison; the sort's own moves are fewer than its
 * comparisons. */
static int metered_sort(lua_State *L)
{
    check_table(L, 1, TAB_RW | TAB_L);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, metered_less, 2);   /* t, comp, less */
    lua_replace(L, 2);                      /* t, less */
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);                       /* sort, t, less */
    lua_call(L, 2, 0);
    return 0;
}

void bp_metered_open(lua_State *L, bp_budget *budget)
{
    static const luaL_Reg table_fns[] = {
        { "concat", metered_concat }, { "insert", metered_insert }, { "move", metered_move },
        { "remove", metered_remove }, { "unpack", metered_unpack }, { NULL, NULL }
    };
    lua_pushlightuserdata(L, budget);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &budget_key);

    lua_getglobal(L, "table");
    lua_pushlightuserdata(L, budget);
    lua_getfield(L, -2, "sort");
    lua_pushcclosure(L, metered_sort, 2);
    lua_setfield(L, -2, "sort");
    lua_pushlightuserdata(L, budget);
    luaL_setfuncs(L, table_fns, 1);
    lua_pop(L, 1);

    /* in the real string table: strings reach it through their metatable */
    lua_getglobal(L, "string");
    lua_pushcfunction(L, metered_rep);
    lua_setfield(L, -2, "rep");
    lua_pushlightuserdata(L, budget);
    lua_getfield(L, -2, "format");
    lua_pushcclosure(L, metered_format, 2);
    lua_setfield(L, -2, "format");
    lua_pop(L, 1);
}
