/*
 * pattern.c — Lua's pattern matching (string.find, match, gmatch, gsub) with
 * a step budget.
 *
 * The string library's matcher runs in C, out of reach of the count hook
 * that stops runaway Lua code, and backtracks: ("a"):rep(40):find(("a*"):rep(8)
 * .. "b") runs for many seconds.  These functions behave as the Lua 5.4
 * manual (§6.4.1) describes, written here so that every matching step is
 * counted: each PATTERN_CHUNK steps the budget's check runs, which raises a
 * Lua error once the caller's budget is spent (the sandbox counts the steps
 * against the instruction budget and checks the wall clock, sandbox.c).
 * Plain searches use memmem, which is linear.  tests/spec/pattern_spec.lua
 * checks the results against the string library on thousands of cases.
 */
#include "internal.h"

#include <ctype.h>
#include <lauxlib.h>
#include <string.h>

#define PATTERN_CHUNK 65536UL
#define MAX_CAPTURES 32
#define MAX_DEPTH 200            /* recursion of the matcher (C stack) */
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define ESC '%'
#define SPECIALS "^$*+?.([%-"

typedef struct matcher {
    lua_State *L;
    const bp_budget *budget;
    const char *src, *src_end, *pat_end;
    unsigned long steps;         /* left until the next budget check */
    int depth;                   /* recursion left */
    int level;                   /* captures open or closed */
    struct { const char *at; ptrdiff_t len; } cap[MAX_CAPTURES];
} matcher;

/* One unit of work; every PATTERN_CHUNK of them the budget has its say. */
static void step(matcher *m)
{
    if (--m->steps) return;
    m->steps = PATTERN_CHUNK;
    m->budget->check(m->L, m->budget->ud, PATTERN_CHUNK);
}

static int class_matches(int c, int cls)
{
    int hit;
    switch (tolower(cls)) {
    case 'a': hit = isalpha(c); break;
    case 'c': hit = iscntrl(c); break;
    case 'd': hit = isdigit(c); break;
    case 'g': hit = isgraph(c); break;
    case 'l': hit = islower(c); break;
    case 'p': hit = ispunct(c); break;
    case 's': hit = isspace(c); break;
    case 'u': hit = isupper(c); break;
    case 'w': hit = isalnum(c); break;
    case 'x': hit = isxdigit(c); break;
    case 'z': hit = c == 0; break;   /* the NUL byte: deprecated, but Lua 5.4 still has it */
    default: return cls == c;    /* %. %% %] ...: the character itself */
    }
    if (isupper(cls)) hit = !hit;
    return hit != 0;
}

/* Does c belong to the set [ ... ] that starts at p and whose ']' is at close? */
static int set_matches(int c, const char *p, const char *close)
{
    int inside = 1;
    if (p[1] == '^') { inside = 0; p++; }
    for (p++; p < close; p++) {
        if (*p == ESC) {
            p++;
            if (class_matches(c, (unsigned char)*p)) return inside;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return inside;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return inside;
        }
    }
    return !inside;
}

/* The end of the single-character class that starts at p. */
static const char *class_end(matcher *m, const char *p)
{
    char c = *p++;
    if (c == ESC) {
        if (p == m->pat_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (p < m->pat_end && *p == '^') p++;
        do {                     /* the first ']' after '[' or '[^' is a member */
            if (p >= m->pat_end) luaL_error(m->L, "malformed pattern (missing ']')");
            if (*p++ == ESC && p < m->pat_end) p++;
        } while (p >= m->pat_end || *p != ']');
        return p + 1;
    }
    return p;
}

/* Does the subject character at s match the class p..ep? */
static int single_match(const matcher *m, const char *s, const char *p, const char *ep)
{
    if (s >= m->src_end) return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case ESC: return class_matches(c, (unsigned char)p[1]);
    case '[': return set_matches(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

static const char *match(matcher *m, const char *s, const char *p);

static const char *balanced(matcher *m, const char *s, const char *p)
{
    if (p + 1 >= m->pat_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != p[0]) return NULL;
    int open = 1;
    while (++s < m->src_end) {
        step(m);
        if (*s == p[1]) { if (--open == 0) return s + 1; }
        else if (*s == p[0]) open++;
    }
    return NULL;
}

static const char *longest(matcher *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;
    while (single_match(m, s + n, p, ep)) { n++; step(m); }
    for (; n >= 0; n--) {        /* give back one at a time */
        const char *r = match(m, s + n, ep + 1);
        if (r) return r;
    }
    return NULL;
}

static const char *shortest(matcher *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = match(m, s, ep + 1);
        if (r) return r;
        if (!single_match(m, s, p, ep)) return NULL;
        s++;
    }
}

static const char *open_capture(matcher *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
    m->cap[m->level].at = s;
    m->cap[m->level].len = what;
    m->level++;
    const char *r = match(m, s, p);
    if (!r) m->level--;
    return r;
}

static const char *close_capture(matcher *m, const char *s, const char *p)
{
    int l = m->level - 1;
    while (l >= 0 && m->cap[l].len != CAP_UNFINISHED) l--;
    if (l < 0) luaL_error(m->L, "invalid pattern capture");
    m->cap[l].len = s - m->cap[l].at;
    const char *r = match(m, s, p);
    if (!r) m->cap[l].len = CAP_UNFINISHED;
    return r;
}

static int capture_index(matcher *m, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->cap[l].len == CAP_UNFINISHED)
        luaL_error(m->L, "invalid capture index %%%d", l + 1);
    return l;
}

static const char *same_as_capture(matcher *m, const char *s, int digit)
{
    int l = capture_index(m, digit);
    size_t len = (size_t)m->cap[l].len;
    if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[l].at, s, len) == 0) return s + len;
    return NULL;
}

/* Match pattern p at subject position s: the end of the match, or NULL. */
static const char *match(matcher *m, const char *s, const char *p)
{
    if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
    for (;;) {
        step(m);
        if (p == m->pat_end) break;
        if (*p == '(') {
            s = p + 1 < m->pat_end && p[1] == ')' ? open_capture(m, s, p + 2, CAP_POSITION)
                                                  : open_capture(m, s, p + 1, CAP_UNFINISHED);
            break;
        }
        if (*p == ')') { s = close_capture(m, s, p + 1); break; }
        if (*p == '$' && p + 1 == m->pat_end) { s = s == m->src_end ? s : NULL; break; }
        if (*p == ESC && p + 1 < m->pat_end && p[1] == 'b') {
            s = balanced(m, s, p + 2);
            if (!s) break;
            p += 4;
            continue;
        }
        if (*p == ESC && p + 1 < m->pat_end && p[1] == 'f') {
            p += 2;
            if (p >= m->pat_end || *p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
            const char *ep = class_end(m, p);
            int before = s == m->src ? 0 : (unsigned char)s[-1];
            int at = s < m->src_end ? (unsigned char)*s : 0;
            if (set_matches(before, p, ep - 1) || !set_matches(at, p, ep - 1)) { s = NULL; break; }
            p = ep;
            continue;
        }
        if (*p == ESC && p + 1 < m->pat_end && isdigit((unsigned char)p[1])) {
            s = same_as_capture(m, s, (unsigned char)p[1]);
            if (!s) break;
            p += 2;
            continue;
        }
        const char *ep = class_end(m, p);
        char q = ep < m->pat_end ? *ep : '\0';
        if (!single_match(m, s, p, ep)) {
            if (q == '*' || q == '?' || q == '-') { p = ep + 1; continue; }   /* zero of them */
            s = NULL;
            break;
        }
        if (q == '?') {
            const char *r = match(m, s + 1, ep + 1);
            if (r) { s = r; break; }
            p = ep + 1;
            continue;
        }
        if (q == '+') { s = longest(m, s + 1, p, ep); break; }
        if (q == '*') { s = longest(m, s, p, ep); break; }
        if (q == '-') { s = shortest(m, s, p, ep); break; }
        s++;
        p = ep;
    }
    m->depth++;
    return s;
}

/* ---- results --------------------------------------------------------------- */

/* Push capture i; with no captures, capture 0 is the whole match s..e. */
static void push_capture(matcher *m, int i, const char *s, const char *e)
{
    if (i >= m->level) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s));
        return;
    }
    ptrdiff_t len = m->cap[i].len;
    if (len == CAP_UNFINISHED) luaL_error(m->L, "unfinished capture");
    if (len == CAP_POSITION) lua_pushinteger(m->L, (lua_Integer)(m->cap[i].at - m->src) + 1);
    else lua_pushlstring(m->L, m->cap[i].at, (size_t)len);
}

/* Push every capture (or the whole match when s is given and there are
 * none); returns how many. */
static int push_captures(matcher *m, const char *s, const char *e)
{
    int n = m->level == 0 && s ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_capture(m, i, s, e);
    return n;
}

static void matcher_init(matcher *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
    m->L = L;
    m->budget = lua_touserdata(L, lua_upvalueindex(1));
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->steps = PATTERN_CHUNK;
}

static void matcher_restart(matcher *m)
{
    m->level = 0;
    m->depth = MAX_DEPTH;
}

/* A 1-based, possibly negative start position as an offset (may be > len). */
static size_t start_offset(lua_Integer pos, size_t len)
{
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0 || (size_t)0 - (lua_Unsigned)pos > len) return 0;
    return len - ((size_t)0 - (lua_Unsigned)pos);
}

static int no_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (strchr(SPECIALS, p[i]) && p[i]) return 0;
    return 1;
}

static int find_or_match(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) { luaL_pushfail(L); return 1; }
    if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
        const char *hit = memmem(s + init, ls - init, p, lp);   /* linear, unlike a naive search */
        if (!hit) { luaL_pushfail(L); return 1; }
        lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
        lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
        return 2;
    }
    matcher m;
    int anchor = lp > 0 && *p == '^';
    if (anchor) { p++; lp--; }
    matcher_init(&m, L, s, ls, p, lp);
    const char *at = s + init;
    do {
        matcher_restart(&m);
        const char *e = match(&m, at, p);
        if (e) {
            if (!find) return push_captures(&m, at, e);
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (at++ < m.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int pattern_find(lua_State *L) { return find_or_match(L, 1); }
static int pattern_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- gmatch ------------------------------------------------------------------ */

typedef struct gmatch_state {
    const char *next;            /* where the next search starts */
    const char *last;            /* end of the last match (an empty match may not repeat it) */
    matcher m;
} gmatch_state;

/* upvalues: budget, subject, pattern, state */
static int gmatch_next(lua_State *L)
{
    gmatch_state *g = lua_touserdata(L, lua_upvalueindex(4));
    const char *p = lua_tostring(L, lua_upvalueindex(3));
    g->m.L = L;
    for (const char *at = g->next; at <= g->m.src_end; at++) {
        matcher_restart(&g->m);
        const char *e = match(&g->m, at, p);
        if (e && e != g->last) {
            g->next = g->last = e;
            return push_captures(&g->m, at, e);
        }
    }
    return 0;
}

static int pattern_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) init = ls + 1;            /* past the end: no matches */
    lua_settop(L, 2);
    gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
    matcher_init(&g->m, L, s, ls, p, lp);
    g->next = s + init;
    g->last = NULL;
    lua_pushvalue(L, lua_upvalueindex(1));   /* s, p, state, budget */
    lua_insert(L, 1);                        /* budget, s, p, state */
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* ---- gsub --------------------------------------------------------------------- */

static void add_template(matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = m->L;
    size_t len;
    const char *t = lua_tolstring(L, 3, &len), *end = t + len, *esc;
    while ((esc = memchr(t, ESC, (size_t)(end - t))) != NULL) {
        step(m);   /* "%0" of an empty match adds nothing: a long template per match is work */
        luaL_addlstring(b, t, (size_t)(esc - t));
        esc++;
        if (esc < end && *esc == ESC) {
            luaL_addchar(b, ESC);
        } else if (esc < end && *esc == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (esc < end && isdigit((unsigned char)*esc)) {
            push_capture(m, *esc - '1', s, e);
            luaL_tolstring(L, -1, NULL);     /* a position capture is a number */
            lua_remove(L, -2);
            luaL_addvalue(b);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", ESC);
        }
        t = esc + 1;
    }
    luaL_addlstring(b, t, (size_t)(end - t));
}

/* Append the replacement for the match s..e; returns whether it changed
 * anything (a false or nil from a table or function keeps the match). */
static int add_replacement(matcher *m, luaL_Buffer *b, const char *s, const char *e, int kind)
{
    lua_State *L = m->L;
    if (kind == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else if (kind == LUA_TTABLE) {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_template(m, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int pattern_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int kind = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L, kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION || kind == LUA_TTABLE,
                     3, "string/function/table");
    int anchor = lp > 0 && *p == '^';
    if (anchor) { p++; lp--; }
    matcher m;
    matcher_init(&m, L, s, ls, p, lp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *at = s, *last = NULL;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max) {
        matcher_restart(&m);
        const char *e = match(&m, at, p);
        if (e && e != last) {
            n++;
            changed |= add_replacement(&m, &b, at, e, kind);
            at = last = e;
        } else if (at < m.src_end) {
            luaL_addchar(&b, *at++);
        } else {
            break;
        }
        if (anchor) break;
    }
    if (!changed) {
        lua_pushvalue(L, 1);                 /* nothing replaced: the subject itself */
    } else {
        luaL_addlstring(&b, at, (size_t)(m.src_end - at));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void bp_patterns_open(lua_State *L, const bp_budget *budget)
{
    static const luaL_Reg fns[] = {
        { "find", pattern_find }, { "match", pattern_match }, { "gmatch", pattern_gmatch },
        { "gsub", pattern_gsub }, { NULL, NULL }
    };
    lua_createtable(L, 0, 4);
    lua_pushlightuserdata(L, (void *)budget);
    luaL_setfuncs(L, fns, 1);
}
