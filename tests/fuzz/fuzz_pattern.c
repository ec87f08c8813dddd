/* libFuzzer, differential: the sandbox's counted pattern functions
 * (src/pattern.c) against Lua 5.4's own string library, on the same
 * pattern and subject: find, match, gmatch and gsub must give the same
 * results, or the same error.  Input: the first byte splits it into a
 * pattern (at most 8 bytes) and a subject (at most 32), which keeps Lua's
 * own backtracking within the fuzzer's time. */
#include "internal.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lua_State *L;

static void no_budget(lua_State *L_, void *ud, unsigned long steps) { (void)L_; (void)ud; (void)steps; }
static const bp_budget budget = { .check = no_budget };

static const char COMPARE[] =
    "local P, s, p = ...\n"
    "local function outcome(f, ...)\n"
    "  local r = table.pack(pcall(f, ...))\n"
    "  local t = {}\n"
    "  for i = 1, r.n do t[#t + 1] = tostring(r[i]) .. ':' .. type(r[i]) end\n"
    "  return table.concat(t, '|')\n"
    "end\n"
    "local function all(g, s, p)\n"
    "  local t, n = {}, 0\n"
    "  local ok, e = pcall(function() for a, b in g(s, p) do n = n + 1; t[#t + 1] = tostring(a) .. ',' .. tostring(b); if n > 40 then break end end end)\n"
    "  return tostring(ok) .. ':' .. tostring(e) .. ':' .. table.concat(t, ';')\n"
    "end\n"
    "local checks = {\n"
    "  { outcome(string.find, s, p), outcome(P.find, s, p), 'find' },\n"
    "  { outcome(string.match, s, p), outcome(P.match, s, p), 'match' },\n"
    "  { all(string.gmatch, s, p), all(P.gmatch, s, p), 'gmatch' },\n"
    "  { outcome(string.gsub, s, p, '<%0>'), outcome(P.gsub, s, p, '<%0>'), 'gsub' },\n"
    "}\n"
    "for _, c in ipairs(checks) do\n"
    "  if c[1] ~= c[2] then return string.format('%s differs on s=%q p=%q: lua %s, ours %s', c[3], s, p, c[1], c[2]) end\n"
    "end\n"
    "return nil\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, COMPARE) != LUA_OK) abort();
    lua_setglobal(L, "compare");
    bp_patterns_open(L, &budget);
    lua_setglobal(L, "P");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t plen = data[0] % 9;
    if (plen > size - 1) plen = size - 1;
    size_t slen = size - 1 - plen;
    if (slen > 32) slen = 32;
    lua_getglobal(L, "compare");
    lua_getglobal(L, "P");
    lua_pushlstring(L, (const char *)data + 1 + plen, slen);   /* subject */
    lua_pushlstring(L, (const char *)data + 1, plen);          /* pattern */
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); abort(); }
    if (!lua_isnil(L, -1)) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); abort(); }
    lua_pop(L, 1);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
