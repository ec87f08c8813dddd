/*
 * sandbox.c — the Lua state blueprints run in.
 *
 * One state per engine, created once and reused for every event: creating a
 * state and compiling mappings costs far more than mapping an event.  What
 * keeps a hostile or buggy mapping from hurting anything but its own event:
 *
 *   - only pure libraries are reachable (string without dump, table, math,
 *     utf8, os.time/clock/date); no io, load*, require, debug, collectgarbage;
 *   - globals are strict: reading an undefined one or assigning any one is an
 *     error, and library tables are read-only proxies, so one mapping cannot
 *     change what the next one sees;
 *   - the allocator enforces a byte cap per state (string and table bombs);
 *     it keeps freed small blocks on per-size free lists, because a mapping
 *     makes and drops a few dozen small tables and strings per event and the
 *     state is only ever used by one thread at a time;
 *   - string.find/match/gmatch/gsub count their matching steps against
 *     the same budget (pattern.c), since the library's matcher runs in C
 *     where the hook cannot reach; so do the library functions that loop
 *     in C over elements (metered.c: string.rep, table.*) and the
 *     encoders and ctx helpers that walk tables and events, so that the
 *     budget holds inside one C call too;
 *   - a count hook enforces an instruction and wall-time budget per call
 *     (infinite loops), and keeps firing once tripped so a mapping that
 *     catches the error with pcall is stopped again at once.  The hook is
 *     armed by the watchdog (watchdog.c) once a call has run for 10-20 ms,
 *     together with the C meters and a call hook (the clock is read before
 *     every function call: one instruction can be a long C call), so the
 *     instruction budget counts from then on, and normal calls run at full
 *     speed.
 */
#include "internal.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_EVERY 1000              /* instructions between budget checks, at most */
#define HOOK_TARGET_MS 2.0           /* ... and, once a call runs long, about this long between them */
#define WATCHED (LUA_MASKCOUNT | LUA_MASKCALL)   /* the hook of a call that runs long */
#define WATCH_AFTER_MS 10            /* without the watchdog: when a call counts as running long */
#define OOM_HEADROOM (1024 * 1024)   /* lets error handling run after a cap hit */
#define SMALL_STEP 16                /* small blocks come in sizes 16, 32, ..., SMALL_MAX */
#define SMALL_MAX 256
#define SMALL_CLASSES (SMALL_MAX / SMALL_STEP)
#define CACHE_MAX (4u * 1024 * 1024) /* free small blocks kept, beyond that given back */

typedef struct free_block { struct free_block *next; } free_block;

struct bp_sandbox {
    lua_State *L;
    size_t used, limit;
    int over_memory;        /* the cap was hit during the current call */
    void *refused;          /* the block whose growth was refused, and to what size: */
    size_t refused_size;    /* Lua collects garbage and asks again, which may succeed */
    uint64_t budget, spent;
    unsigned timeout_ms;
    double deadline_ms;
    int tripped;            /* 1 = instructions, 2 = time */
    int in_call;            /* inside bp_sandbox_call (the hook may be set) */
    double hook_at_ms;      /* the last count hook of this call (0: none yet) */
    char why[120];          /* the tripped budget's message */
    bp_budget meter;        /* what C code charges its loops to (internal.h) */
    char oom_where[200];    /* where the memory cap was hit: "file:line: " */
    int env_ref;            /* the proxy table used as _ENV for blueprint chunks */
    int safe_ref;           /* the table behind it */
    int watch_slot;         /* watchdog.c slot, or -1: hook on for every call */
    free_block *free_small[SMALL_CLASSES];
    size_t cached;          /* bytes held on the free lists */
    bp_sandbox_log_fn log_fn;   /* where print/ctx.log lines go, or NULL: stderr */
    void *log_ud;
    char *prefix;           /* "@DIR/": positions are written relative to it */
    bp_buf logbuf, atbuf;   /* kept here: an error while formatting cannot leak them */
};

void bp_limits_default(bp_limits *l)
{
    l->memory_bytes = 64u * 1024u * 1024u;
    l->instructions = 20000000u;
    l->timeout_ms = 1000;
    l->json.max_bytes = BP_DEFAULT_MAX_EVENT_BYTES;
    l->json.max_depth = BP_DEFAULT_MAX_DEPTH;
}

/* Memory errors do not run the message handler, so the position is taken
 * here, when the cap is hit.  lua_getstack/lua_getinfo("Sl") read the call
 * chain without allocating, which makes them safe inside the allocator. */
static void note_oom_position(bp_sandbox *sb)
{
    lua_Debug ar;
    sb->oom_where[0] = '\0';
    if (!sb->L) return;
    for (int level = 0; lua_getstack(sb->L, level, &ar); level++) {
        if (lua_getinfo(sb->L, "Sl", &ar) && ar.currentline > 0 && ar.source[0] == '@') {
            snprintf(sb->oom_where, sizeof sb->oom_where, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
}

/* Size class of a small block (0-based), or -1 for sizes malloc handles. */
static int small_class(size_t size)
{
    return size && size <= SMALL_MAX ? (int)((size - 1) / SMALL_STEP) : -1;
}

static void *block_alloc(bp_sandbox *sb, size_t size)
{
    int c = small_class(size);
    if (c < 0) return malloc(size);
    free_block *b = sb->free_small[c];
    if (!b) return malloc((size_t)(c + 1) * SMALL_STEP);
    sb->free_small[c] = b->next;
    sb->cached -= (size_t)(c + 1) * SMALL_STEP;
    return b;
}

static void block_free(bp_sandbox *sb, void *p, size_t size)
{
    int c = small_class(size);
    size_t bytes = (size_t)(c + 1) * SMALL_STEP;
    if (c < 0 || sb->cached + bytes > CACHE_MAX) { free(p); return; }
    free_block *b = p;
    b->next = sb->free_small[c];
    sb->free_small[c] = b;
    sb->cached += bytes;
}

/* Lua passes a block's requested size back as osize, so the class of a
 * block is known from its size alone. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    bp_sandbox *sb = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        if (ptr) block_free(sb, ptr, osize);
        sb->used -= old;
        return NULL;
    }
    if (nsize > old) {
        /* Lua asks again after an emergency collection: that retry gets no
         * headroom, which is for handling the error once there is one. */
        int retry = sb->over_memory && ptr == sb->refused && nsize == sb->refused_size;
        size_t cap = sb->over_memory && !retry ? sb->limit + OOM_HEADROOM : sb->limit;
        if (sb->used - old + nsize > cap) {
            if (!sb->over_memory) note_oom_position(sb);
            sb->over_memory = 1;
            sb->refused = ptr;
            sb->refused_size = nsize;
            return NULL;
        }
        /* The emergency collection after a refusal made room: no memory
         * error after all, so a later error is not reported as one. */
        if (retry) {
            sb->over_memory = 0;
            sb->refused_size = 0;
        }
    }
    void *p;
    if (!ptr) {
        p = block_alloc(sb, nsize);
    } else if (small_class(old) == small_class(nsize) && small_class(nsize) >= 0) {
        p = ptr;                                   /* fits the block it has */
    } else if (small_class(old) < 0 && small_class(nsize) < 0) {
        p = realloc(ptr, nsize);
    } else {
        p = block_alloc(sb, nsize);
        if (p) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            block_free(sb, ptr, old);
        }
    }
    if (p) sb->used = sb->used - old + nsize;
    return p;
}

/* Position of the innermost blueprint code on the stack, as "file:line: ". */
static void push_where(lua_State *L)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 && ar.source[0] == '@') {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Count `work` against the call's budgets: NULL while both last, else the
 * message saying which one is spent.  Also after the call (the encoders
 * reading its result), where it only reports. */
static const char *spend(lua_State *L, bp_sandbox *sb, uint64_t work)
{
    sb->spent += work;
    if (!sb->tripped) {
        if (sb->spent > sb->budget) {
            sb->tripped = 1;
            snprintf(sb->why, sizeof sb->why, "instruction budget exceeded (%llu instructions; an endless loop?)",
                     (unsigned long long)sb->budget);
        } else if (bp_monotonic_ms() > sb->deadline_ms) {
            sb->tripped = 2;
            snprintf(sb->why, sizeof sb->why, "time budget exceeded (%u ms; an endless loop?)", sb->timeout_ms);
        } else {
            return NULL;
        }
        /* From now on fire at every instruction and check every metered
         * element: a mapping that catches this error with pcall is stopped
         * again as soon as it resumes. */
        if (sb->in_call) {
            lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
            atomic_store_explicit(&sb->meter.armed, 1, memory_order_relaxed);
        }
    }
    return sb->why;
}

/* Count `work`; once either budget is spent, stop the call with an error
 * naming the blueprint line. */
static void charge(lua_State *L, bp_sandbox *sb, uint64_t work)
{
    const char *why = spend(L, sb, work);
    if (!why) return;
    push_where(L);
    lua_pushstring(L, why);
    lua_concat(L, 2);
    lua_error(L);
}

/* The count hook's next interval: instructions are not all alike.  Most
 * take nanoseconds, but one `..` of long strings or a `<` of two 20 MB
 * strings takes milliseconds without calling anything, so a fixed thousand
 * of them between two checks let a loop of them run seconds past its
 * budget.  So the interval follows how long the last one took: halved
 * towards 1 while it takes more than HOOK_TARGET_MS, doubled back towards
 * HOOK_EVERY while it takes less than half of that.  Ordinary code keeps the
 * thousand (a clock read per thousand instructions); a loop of slow
 * operators is checked every few milliseconds. */
static int next_hook_count(bp_sandbox *sb, int count)
{
    double now = bp_monotonic_ms(), took = sb->hook_at_ms > 0 ? now - sb->hook_at_ms : 0;
    sb->hook_at_ms = now;
    if (took > HOOK_TARGET_MS) {
        double scaled = count * HOOK_TARGET_MS / took;
        return scaled < 1 ? 1 : (int)scaled;
    }
    if (took < HOOK_TARGET_MS / 2 && count < HOOK_EVERY) return count * 2 > HOOK_EVERY ? HOOK_EVERY : count * 2;
    return count;
}

/* At every count, and before every function call once the call runs long:
 * one instruction can be a C function that takes milliseconds (s:upper()
 * on a 20 MB string), and a thousand of them passed between two counts.
 * Without the watchdog the count hook is on from the start and turns the
 * call hook on itself, at its first count after WATCH_AFTER_MS: later than
 * the watchdog would when those first counts are long C calls (a call hook
 * from the start would slow every call). */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    bp_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    int count = ar->event == LUA_HOOKCOUNT, every = lua_gethookcount(L);
    charge(L, sb, count ? (uint64_t)every : 0);
    if (!count || sb->tripped) return;   /* tripped: spend() set a hook at every instruction */
    int mask = lua_gethookmask(L), next = next_hook_count(sb, every);
    if (mask != WATCHED && bp_monotonic_ms() > sb->deadline_ms - sb->timeout_ms + WATCH_AFTER_MS) mask = WATCHED;
    if (next != every || mask != lua_gethookmask(L)) lua_sethook(L, budget_hook, mask, next);
}

/* Pattern matching steps and the elements of metered C loops count as
 * instructions (pattern.c, metered.c, luajson.c, helpers.c). */
static void meter_check(lua_State *L, void *ud, unsigned long work)
{
    charge(L, ud, work);
}

static const char *meter_spend(lua_State *L, void *ud, unsigned long work)
{
    return spend(L, ud, work);
}

/* Called by the watchdog, in a signal handler on the thread running a call
 * that has run for a while: from now on the budgets are checked, by the
 * hook between instructions and by the meters inside C calls. */
static void arm_budget_hook(lua_State *L)
{
    bp_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    /* from the next instruction: the ones running now may be slow operators
     * (next_hook_count widens the interval again when they are not) */
    lua_sethook(L, budget_hook, WATCHED, 1);
    atomic_store_explicit(&sb->meter.armed, 1, memory_order_relaxed);
}

/* ---- positions: "file.lua:12", and the chain of blueprint calls ----------------- */

static int is_blueprint_frame(lua_State *L, lua_Debug *ar)
{
    return lua_getinfo(L, "Sl", ar) && ar->currentline > 0 && ar->source[0] == '@';
}

/* "file.lua:12": relative to the blueprint folder when the file is in it. */
static void frame_name(const bp_sandbox *sb, const lua_Debug *ar, bp_buf *out)
{
    size_t n = sb->prefix ? strlen(sb->prefix) : 0;
    if (n && !strncmp(ar->source, sb->prefix, n)) bp_buf_adds(out, ar->source + n);
    else bp_buf_adds(out, ar->short_src);
    bp_buf_printf(out, ":%d", ar->currentline);
}

/* Number of levels on a stack known to be under CHAIN_DEEP: lua_getstack
 * walks `level` frames, so by bisection. */
static int stack_depth(lua_State *L)
{
    lua_Debug ar;
    int lo = 0, hi = 1;
    if (!lua_getstack(L, 0, &ar)) return 0;
    while (lua_getstack(L, hi, &ar)) { lo = hi; hi *= 2; }
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (lua_getstack(L, mid, &ar)) lo = mid; else hi = mid;
    }
    return hi;
}

#define CHAIN_INNER 6   /* blueprint frames named from the top of the stack */
#define CHAIN_SCAN 32   /* levels looked at from either end */
#define CHAIN_DEEP 4096 /* deeper stacks: only the innermost frames are named */

/* The blueprint frames on the stack: up to CHAIN_INNER from the top (the
 * innermost first) and the outermost (the mapping itself). */
typedef struct chain {
    lua_Debug inner[CHAIN_INNER];
    int ninner, inner_level[CHAIN_INNER];
    lua_Debug outer;
    int outer_level;         /* -1: none */
} chain;

static void blueprint_chain(lua_State *L, chain *c)
{
    c->ninner = 0;
    c->outer_level = -1;
    for (int level = 0; level < CHAIN_SCAN && c->ninner < CHAIN_INNER; level++)
        if (lua_getstack(L, level, &c->inner[c->ninner]) && is_blueprint_frame(L, &c->inner[c->ninner]))
            c->inner_level[c->ninner++] = level;
    /* lua_getstack(level) walks `level` frames from the top, so each look at
     * the bottom of a runaway recursion's stack (300,000 levels) costs
     * milliseconds, and a few dozen of them put the error past its budget:
     * a stack that deep is named by its innermost frames only. */
    lua_Debug probe;
    if (lua_getstack(L, CHAIN_DEEP, &probe)) return;
    int depth = stack_depth(L);
    for (int level = depth - 1; level >= 0 && level >= depth - CHAIN_SCAN; level--)
        if (lua_getstack(L, level, &c->outer) && is_blueprint_frame(L, &c->outer)) { c->outer_level = level; break; }
}

/* Whether the chain leaves the innermost frame's file (a helper called from
 * a mapping): only then are callers worth naming. */
static int chain_crosses_files(const chain *c)
{
    return c->ninner > 0 && c->outer_level > c->inner_level[0] && strcmp(c->inner[0].source, c->outer.source) != 0;
}

/* Message handler: make sure every error names file and line, and say what a
 * memory error means here; an error raised in a helper (helpers.lua) also
 * names the mapping lines that called it. */
static void add_callers(lua_State *L, bp_sandbox *sb)
{
    chain c;
    blueprint_chain(L, &c);
    if (!chain_crosses_files(&c)) return;
    bp_buf *b = &sb->atbuf;
    bp_buf_reset(b);
    bp_buf_adds(b, " (called from ");
    int last = -1;
    for (int i = 1; i < c.ninner; i++) {
        if (i > 1) bp_buf_adds(b, ", from ");
        frame_name(sb, &c.inner[i], b);
        last = c.inner_level[i];
    }
    if (last != c.outer_level) {
        if (c.ninner > 1) bp_buf_adds(b, last >= 0 && c.outer_level > last + 1 && c.ninner == CHAIN_INNER ? ", …, from " : ", from ");
        frame_name(sb, &c.outer, b);
    }
    bp_buf_addc(b, ')');
    lua_pushlstring(L, b->data, b->len);
    lua_concat(L, 2);
}

static int message_handler(lua_State *L)
{
    bp_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    const char *msg = lua_tostring(L, 1);
    if (sb->over_memory) {
        lua_pushstring(L, sb->oom_where);
        lua_pushfstring(L, "memory limit exceeded (%d MiB per blueprint state; a runaway string or table?)",
                        (int)(sb->limit / (1024 * 1024)));
        lua_concat(L, 2);
        return 1;
    }
    if (!msg) {
        push_where(L);
        lua_pushfstring(L, "error raised with a %s value (use error(\"message\"))", luaL_typename(L, 1));
        lua_concat(L, 2);
        add_callers(L, sb);
        return 1;
    }
    if (msg[0] != '@' && !strstr(msg, ".lua:")) {
        push_where(L);
        lua_pushvalue(L, 1);
        lua_concat(L, 2);
    } else {
        lua_settop(L, 1);
    }
    add_callers(L, sb);
    return 1;
}

static int undefined_global(lua_State *L)
{
    /* stack: proxy, key */
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
    return luaL_error(L, "undefined global '%s' (blueprints may only use locals, ctx and the safe "
                         "libraries; io, os.execute, require and load are not available)",
                      lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

/* setmetatable without __gc: a finalizer runs whenever the collector
 * decides, outside any event's budget, so it is refused. */
static int safe_setmetatable(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int t = lua_type(L, 2);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL) return luaL_error(L, "__gc metamethods are not allowed in blueprints");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int global_assignment(lua_State *L)
{
    return luaL_error(L, "assignment to global '%s' is not allowed (declare it with 'local')",
                      lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

/* __index of a library proxy: upvalue 1 is the real table, 2 its name. */
static int library_field(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
    return luaL_error(L, "'%s.%s' is not available in the blueprint sandbox",
                      lua_tostring(L, lua_upvalueindex(2)), lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

static int readonly_assignment(lua_State *L)
{
    return luaL_error(L, "library tables are read-only (tried to set '%s')",
                      lua_tostring(L, 2) ? lua_tostring(L, 2) : "?");
}

static int raw_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

/* pairs(proxy) and #proxy walk and count the table behind it (upvalue 1). */
static int proxy_pairs(lua_State *L)
{
    lua_pushcfunction(L, raw_next);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushnil(L);
    return 3;
}

static int proxy_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

void bp_wrap_proxy(lua_State *L, lua_CFunction on_write)
{
    int over_table = lua_istable(L, -1);
    lua_newtable(L);                  /* index, proxy */
    lua_createtable(L, 0, 5);         /* index, proxy, mt */
    if (over_table) {
        lua_pushvalue(L, -3);
        lua_pushcclosure(L, proxy_pairs, 1);
        lua_setfield(L, -2, "__pairs");
        lua_pushvalue(L, -3);
        lua_pushcclosure(L, proxy_len, 1);
        lua_setfield(L, -2, "__len");
    }
    lua_rotate(L, -3, -1);            /* proxy, mt, index */
    lua_setfield(L, -2, "__index");   /* proxy, mt */
    lua_pushcfunction(L, on_write);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);          /* proxy */
}

/* Replace the library table on top with an empty read-only proxy onto it. */
static void make_readonly_proxy(lua_State *L, const char *name)
{
    lua_pushstring(L, name);                   /* lib, name */
    lua_pushcclosure(L, library_field, 2);     /* index */
    bp_wrap_proxy(L, readonly_assignment);     /* proxy */
}

/* ---- print and ctx.log ------------------------------------------------------------ */

#define LOG_VALUE_MAX 8192   /* bytes of one value in the lenient form below */
#define LOG_DUMP_DEPTH 8

static void buf_cut(bp_buf *b, size_t len)
{
    b->len = len;
    if (b->data) b->data[len] = '\0';
}

/* A value bp_encode_json refuses (a cycle, a function, a secret, mixed
 * keys), written as JSON anyway: other values as their tostring() text,
 * nesting and size bounded. */
static void dump_value(lua_State *L, int idx, bp_buf *out, int depth, size_t limit, const void **path)
{
    idx = lua_absindex(L, idx);
    if (out->len > limit) return;
    if (lua_type(L, idx) == LUA_TTABLE) {
        const void *self = lua_topointer(L, idx);
        for (int i = 0; i < depth; i++)
            if (path[i] == self) { bp_buf_adds(out, "\"<cycle>\""); return; }
        if (depth >= LOG_DUMP_DEPTH) { bp_buf_adds(out, "\"<nested too deep>\""); return; }
        path[depth] = self;
        luaL_checkstack(L, 4, "log");
        bp_buf_addc(out, '{');
        int first = 1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (out->len > limit) { bp_buf_adds(out, first ? "\"…\":\"…\"" : ",\"…\":\"…\""); lua_pop(L, 2); break; }
            if (!first) bp_buf_addc(out, ',');
            first = 0;
            size_t kl;
            lua_pushvalue(L, -2);
            const char *k = luaL_tolstring(L, -1, &kl);
            bp_json_write_text(out, k, kl);
            lua_pop(L, 2);
            bp_buf_addc(out, ':');
            dump_value(L, -1, out, depth + 1, limit, path);
            lua_pop(L, 1);
        }
        bp_buf_addc(out, '}');
        return;
    }
    size_t at = out->len, len;
    bp_error err;
    if (bp_encode_json(L, idx, out, NULL, &err) == 0) return;
    buf_cut(out, at);
    const char *s = luaL_tolstring(L, idx, &len);
    bp_json_write_text(out, s, len);
    lua_pop(L, 1);
}

/* One argument of print: strings as they are, tables and event values as
 * JSON (sorted keys, as a request would carry them). */
static void log_value(lua_State *L, int i, bp_buf *out)
{
    int t = lua_type(L, i);
    if (t == LUA_TTABLE || t == LUA_TUSERDATA || t == LUA_TLIGHTUSERDATA) {
        size_t at = out->len;
        bp_error err;
        if (bp_encode_json(L, i, out, NULL, &err) == 0) return;
        buf_cut(out, at);
        const void *path[LOG_DUMP_DEPTH];
        dump_value(L, i, out, 0, at + LOG_VALUE_MAX, path);
        return;
    }
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    bp_buf_add(out, s, len);
    lua_pop(L, 1);
}

int bp_sandbox_print(lua_State *L)
{
    bp_sandbox *sb;
    lua_getallocf(L, (void **)&sb);
    int n = lua_gettop(L);
    bp_buf *msg = &sb->logbuf, *at = &sb->atbuf;
    bp_buf_reset(msg);
    /* The line is built outside the Lua state: up to its memory cap (the
     * same 30 MB string given a thousand times is not 30 GB here); the
     * outcome keeps far less of it anyway. */
    for (int i = 1; i <= n && msg->len <= sb->limit; i++) {
        if (i > 1) bp_buf_addc(msg, '\t');
        log_value(L, i, msg);
    }
    bp_buf_addc(msg, '\0');   /* make data non-NULL */
    msg->len--;
    /* where: the innermost blueprint line, and the mapping's when a helper logs */
    chain c;
    blueprint_chain(L, &c);
    bp_buf_reset(at);
    if (c.ninner) {
        frame_name(sb, &c.inner[0], at);
        if (chain_crosses_files(&c)) {
            bp_buf_adds(at, " (from ");
            frame_name(sb, &c.outer, at);
            bp_buf_addc(at, ')');
        }
    } else {
        bp_buf_adds(at, "?");
    }
    if (sb->log_fn) sb->log_fn(sb->log_ud, at->data, msg->data, msg->len);
    else if (bp_log_has_sink()) {
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_adds(&f, "\"log\":");
        bp_json_write_text(&f, msg->data, msg->len);   /* by length: a Lua string may hold NUL bytes */
        bp_log_field(&f, "at", at->data);
        bp_log("info", "mapping log", f.data);
        bp_buf_free(&f);
    } else fprintf(stderr, "blueprint log: %s: %s\n", at->data, msg->data);
    if (msg->cap > 1 << 20) bp_buf_free(msg);   /* do not keep a huge one */
    return 0;
}

void bp_sandbox_set_log(bp_sandbox *sb, bp_sandbox_log_fn fn, void *ud)
{
    sb->log_fn = fn;
    sb->log_ud = ud;
}

void bp_sandbox_set_prefix(bp_sandbox *sb, const char *chunk_prefix)
{
    free(sb->prefix);
    sb->prefix = chunk_prefix ? bp_strdup(chunk_prefix) : NULL;
}

/* next() that also walks event views (pairs() does through __pairs). */
static int safe_next(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TUSERDATA && luaL_testudata(L, 1, BP_VIEW_MT)) return bp_view_next(L);
    return raw_next(L);
}

/* Copy the named fields of the library table on top into a new table, then
 * replace the library with that table's read-only proxy. */
static void copy_fields(lua_State *L, const char *const *names)
{
    lua_newtable(L);
    for (; *names; names++) {
        lua_getfield(L, -2, *names);
        lua_setfield(L, -2, *names);
    }
    lua_remove(L, -2);
}

static void build_env(bp_sandbox *sb)
{
    lua_State *L = sb->L;
    static const char *const base[] = {
        "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
        "tostring", "type", "rawequal", "rawlen", "getmetatable", "_VERSION", NULL
    };
    static const char *const os_safe[] = { "time", "clock", "date", "difftime", NULL };
    static const char *const libs[] = { "string", "table", "math", "utf8", NULL };

    /* string.dump would hand out bytecode; remove it from the real table too,
     * since strings reach it through their metatable ("s:dump()"). */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    /* The library's pattern matcher cannot be interrupted; these count
     * their steps against the budget (pattern.c). */
    bp_patterns_open(L, &sb->meter);                /* string, patterns */
    static const char *const matchers[] = { "find", "match", "gmatch", "gsub", NULL };
    for (const char *const *n = matchers; *n; n++) {
        lua_getfield(L, -1, *n);
        lua_setfield(L, -3, *n);
    }
    lua_pop(L, 2);
    /* Hide the string metatable so its __index (the real string table)
     * cannot be reached and modified. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    lua_newtable(L);                                 /* safe */
    lua_pushglobaltable(L);                          /* safe, _G */
    for (const char *const *n = base; *n; n++) {
        lua_getfield(L, -1, *n);
        lua_setfield(L, -3, *n);
    }
    for (const char *const *n = libs; *n; n++) {
        lua_getfield(L, -1, *n);
        make_readonly_proxy(L, *n);
        lua_setfield(L, -3, *n);
    }
    lua_getfield(L, -1, "os");
    copy_fields(L, os_safe);
    make_readonly_proxy(L, "os");
    lua_setfield(L, -3, "os");
    lua_pop(L, 1);                                   /* safe */
    lua_pushcfunction(L, bp_sandbox_print);
    lua_setfield(L, -2, "print");
    lua_pushcfunction(L, safe_next);
    lua_setfield(L, -2, "next");
    lua_pushcfunction(L, safe_setmetatable);
    lua_setfield(L, -2, "setmetatable");

    lua_pushvalue(L, -1);
    sb->safe_ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* safe */

    lua_pushvalue(L, -1);
    lua_pushcclosure(L, undefined_global, 1);        /* safe, index */
    bp_wrap_proxy(L, global_assignment);             /* safe, env */
    sb->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);    /* safe */
    lua_pop(L, 1);
}

bp_sandbox *bp_sandbox_new(const bp_limits *limits, bp_error *err)
{
    bp_limits def;
    if (!limits) { bp_limits_default(&def); limits = &def; }
    bp_sandbox *sb = bp_calloc(1, sizeof *sb);
    sb->limit = limits->memory_bytes;
    sb->budget = limits->instructions;
    sb->timeout_ms = limits->timeout_ms;
    bp_buf_init(&sb->logbuf);
    bp_buf_init(&sb->atbuf);
    sb->L = lua_newstate(capped_alloc, sb);
    if (!sb->L) {
        bp_error_set(err, "could not create a Lua state (memory limit %zu bytes too small?)", sb->limit);
        free(sb);
        return NULL;
    }
    /* Mappings make short-lived tables and strings per event; generational
     * collection reclaims them young instead of tracing the whole state. */
    lua_gc(sb->L, LUA_GCGEN, 0, 0);
    luaL_openlibs(sb->L);
    sb->meter = (bp_budget){ meter_check, sb, meter_spend, 0, sb->limit };
    bp_metered_open(sb->L, &sb->meter);
    build_env(sb);
    sb->watch_slot = bp_watch_add(arm_budget_hook);
    bp_luajson_open(sb->L);
    return sb;
}

void bp_sandbox_free(bp_sandbox *sb)
{
    if (!sb) return;
    bp_watch_remove(sb->watch_slot);
    lua_close(sb->L);
    free(sb->prefix);
    bp_buf_free(&sb->logbuf);
    bp_buf_free(&sb->atbuf);
    for (int c = 0; c < SMALL_CLASSES; c++)
        for (free_block *b = sb->free_small[c], *next; b; b = next) {
            next = b->next;
            free(b);
        }
    free(sb);
}

lua_State *bp_sandbox_state(bp_sandbox *sb) { return sb->L; }

void bp_sandbox_set_global(bp_sandbox *sb, const char *name)
{
    lua_State *L = sb->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->safe_ref);  /* value, safe */
    lua_insert(L, -2);                                /* safe, value */
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

int bp_sandbox_call(bp_sandbox *sb, int nargs, int nresults, bp_error *err)
{
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs;                 /* the function's index */
    /* Each call starts with its whole memory budget: garbage an earlier call
     * left (a hostile one's megabytes, or the collector's pause) is freed
     * first. Buffers that lauxlib grows itself (string.rep, :upper()) get no
     * emergency collection when the cap refuses them, so without this a
     * call could fail for what the one before it left behind. */
    if (sb->used > sb->limit / 2) lua_gc(L, LUA_GCCOLLECT);
    lua_pushcfunction(L, message_handler);
    lua_insert(L, base);
    sb->spent = 0;
    sb->tripped = 0;
    sb->over_memory = 0;
    sb->deadline_ms = bp_monotonic_ms() + sb->timeout_ms;
    sb->in_call = 1;
    sb->hook_at_ms = 0;
    if (sb->watch_slot >= 0) {
        bp_watch_begin(sb->watch_slot, L);
    } else {
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
        atomic_store_explicit(&sb->meter.armed, 1, memory_order_relaxed);
    }
    int rc = lua_pcall(L, nargs, nresults, base);
    if (sb->watch_slot >= 0) bp_watch_end(sb->watch_slot);
    lua_sethook(L, NULL, 0, 0);
    sb->in_call = 0;
    atomic_store_explicit(&sb->meter.armed, 0, memory_order_relaxed);
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (rc == LUA_ERRMEM || sb->over_memory)
            bp_error_set(err, "%smemory limit exceeded (%zu MiB per blueprint state; a runaway string or table?)",
                         sb->oom_where, sb->limit / (1024 * 1024));
        else if (rc == LUA_ERRERR || !msg)
            bp_error_set(err, "error while handling an error (stack overflow or memory limit?)");
        else
            bp_error_set(err, "%s", msg);
        lua_settop(L, base - 1);
        if (sb->over_memory) {
            sb->over_memory = 0;
            lua_gc(L, LUA_GCCOLLECT);
        }
        return -1;
    }
    lua_remove(L, base);
    return 0;
}

int bp_sandbox_load_file(bp_sandbox *sb, const char *path, const char *chunkname, bp_error *err)
{
    lua_State *L = sb->L;
    FILE *f = fopen(path, "rb");
    if (!f) { bp_error_set(err, "%s: cannot open file", path); return -1; }
    bp_buf src;
    bp_buf_init(&src);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) bp_buf_add(&src, chunk, n);
    fclose(f);
    /* "t": text only — precompiled bytecode can crash the VM. */
    int rc = luaL_loadbufferx(L, src.data ? src.data : "", src.len, chunkname, "t");
    bp_buf_free(&src);
    if (rc != LUA_OK) {
        bp_error_set(err, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->env_ref);
    lua_setupvalue(L, -2, 1);                          /* chunk's _ENV = env proxy */
    return bp_sandbox_call(sb, 0, 1, err);
}
