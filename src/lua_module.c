/*
 * lua_module.c — the core as a Lua C module (`blueprint_core`), so busted
 * specs drive exactly the code the CLI runs.
 *
 *   core.json_decode(text [, max_bytes [, max_depth]]) -> value | nil, err
 *   core.json_encode(value)                            -> text  | nil, err
 *   core.null, core.array(t)
 *   core.open(dir, config_path [, limits])             -> engine | nil, err
 *   core.open_text(dir, config_text [, limits])        -> engine | nil, err
 *       limits = { memory_mb = , instructions = , timeout_ms = , max_event_bytes = }
 *   engine:run(event_json)  -> the dry-run line (docs/contracts.md, dry-run), index 0
 */
#include "internal.h"

#include <dlfcn.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_MT "blueprint_core.engine"

typedef struct lengine {
    bp_blueprint *bp;
    bp_config *cfg;
    bp_engine *e;
    bp_outcome out;
} lengine;

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    bp_json_limits lim = { (size_t)luaL_optinteger(L, 2, BP_DEFAULT_MAX_EVENT_BYTES),
                           (int)luaL_optinteger(L, 3, BP_DEFAULT_MAX_DEPTH) };
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, s, len, &lim, &err) < 0) {
        bp_doc_free(&d);
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    bp_push_tables(L, &d, 0);
    bp_doc_free(&d);
    return 1;
}

static int l_json_encode(lua_State *L)
{
    bp_buf out;
    bp_error err;
    bp_buf_init(&out);
    lua_settop(L, 1);
    if (bp_encode_json(L, 1, &out, NULL, &err) < 0) {
        bp_buf_free(&out);
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    bp_buf_free(&out);
    return 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) lua_newtable(L);
    lua_settop(L, 1);
    luaL_setmetatable(L, BP_ARRAY_MT);
    return 1;
}

static void read_limits(lua_State *L, int idx, bp_limits *lim)
{
    bp_limits_default(lim);
    if (!lua_istable(L, idx)) return;
    lua_getfield(L, idx, "memory_mb");
    if (lua_isinteger(L, -1)) lim->memory_bytes = (size_t)lua_tointeger(L, -1) * 1024 * 1024;
    lua_getfield(L, idx, "instructions");
    if (lua_isinteger(L, -1)) lim->instructions = (uint64_t)lua_tointeger(L, -1);
    lua_getfield(L, idx, "timeout_ms");
    if (lua_isinteger(L, -1)) lim->timeout_ms = (unsigned)lua_tointeger(L, -1);
    lua_getfield(L, idx, "max_event_bytes");
    if (lua_isinteger(L, -1)) lim->json.max_bytes = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 4);
}

static int open_engine(lua_State *L, int from_text)
{
    const char *dir = luaL_checkstring(L, 1);
    size_t len;
    const char *cfgarg = luaL_checklstring(L, 2, &len);
    bp_limits lim;
    read_limits(L, 3, &lim);
    bp_error err;
    lengine *le = lua_newuserdatauv(L, sizeof *le, 0);
    memset(le, 0, sizeof *le);
    bp_outcome_init(&le->out);
    luaL_setmetatable(L, ENGINE_MT);
    le->bp = bp_blueprint_load(dir, &err);
    if (le->bp)
        le->cfg = from_text ? bp_config_load_text(le->bp, cfgarg, len, "config", &err)
                            : bp_config_load_file(le->bp, cfgarg, &err);
    if (le->cfg) le->e = bp_engine_new(le->bp, le->cfg, &lim, &err);
    if (!le->e) {
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    return 1;
}

static int l_open(lua_State *L) { return open_engine(L, 0); }
static int l_open_text(lua_State *L) { return open_engine(L, 1); }

static int l_engine_run(lua_State *L)
{
    lengine *le = luaL_checkudata(L, 1, ENGINE_MT);
    size_t len;
    const char *ev = luaL_checklstring(L, 2, &len);
    luaL_argcheck(L, le->e != NULL, 1, "engine is closed");
    bp_engine_run(le->e, ev, len, &le->out);
    bp_buf line;
    bp_buf_init(&line);
    bp_outcome_write_json(&le->out, 0, &line);
    lua_pushlstring(L, line.data, line.len);
    bp_buf_free(&line);
    return 1;
}

static int l_engine_gc(lua_State *L)
{
    lengine *le = luaL_checkudata(L, 1, ENGINE_MT);
    bp_engine_free(le->e);
    bp_config_free(le->cfg);
    bp_blueprint_free(le->bp);
    bp_outcome_free(&le->out);
    le->e = NULL;
    le->cfg = NULL;
    le->bp = NULL;
    return 0;
}

/* core.patterns([max_steps]) -> { find, match, gmatch, gsub }: the sandbox's
 * counted pattern functions (pattern.c), for the specs to compare with the
 * string library.  They stop with an error once, together, they have taken
 * more than max_steps matching steps. */
typedef struct test_budget {
    bp_budget budget;
    unsigned long used, max;
} test_budget;

static void test_budget_check(lua_State *L, void *ud, unsigned long steps)
{
    test_budget *t = ud;
    t->used += steps;
    if (t->used > t->max) luaL_error(L, "pattern budget exceeded (%d steps)", (int)t->max);
}

static int l_patterns(lua_State *L)
{
    lua_Integer max = luaL_optinteger(L, 1, 1000000000);
    test_budget *t = lua_newuserdatauv(L, sizeof *t, 0);
    t->budget.check = test_budget_check;
    t->budget.ud = t;
    t->used = 0;
    t->max = (unsigned long)max;
    bp_patterns_open(L, &t->budget);   /* budget, patterns */
    lua_insert(L, -2);
    lua_setfield(L, -2, "_budget");    /* keeps the budget alive with the functions */
    return 1;
}

/* Lua unloads C modules when its state closes, but the sandbox watchdog
 * thread (watchdog.c) runs this module's code for the life of the process:
 * pin the module so it is never unmapped under that thread. */
static void pin_module(void)
{
    Dl_info info;
    if (dladdr((void *)pin_module, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Specs read a mapping's log lines from its outcome ("logs"): not echoed
 * on busted's stderr, where they would bury the test report.  Anything
 * else the library has to say still goes there. */
static void quiet_log(void *ctx, int level, const char *msg, const char *json)
{
    if (msg && !strcmp(msg, "mapping log")) return;
    bp_log_stderr(ctx, level, msg, json);
}

int luaopen_blueprint_core(lua_State *L)
{
    pin_module();
    bp_set_log(quiet_log, NULL);
    static const luaL_Reg engine_methods[] = { { "run", l_engine_run }, { "close", l_engine_gc }, { NULL, NULL } };
    static const luaL_Reg fns[] = {
        { "json_decode", l_json_decode }, { "json_encode", l_json_encode }, { "array", l_array },
        { "open", l_open }, { "open_text", l_open_text }, { "patterns", l_patterns }, { NULL, NULL }
    };
    bp_luajson_open(L);
    luaL_newmetatable(L, ENGINE_MT);
    luaL_newlib(L, engine_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_engine_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newlib(L, fns);
    bp_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
