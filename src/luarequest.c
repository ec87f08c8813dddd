/*
 * luarequest.c — a vendor request as a mapping writes it (a Lua table of
 * method, url, headers, json/form/body, once, marks) checked and copied
 * into an outcome's bp_request.  The engine reads a mapping's result with
 * it and steps.c a ctx.send step: one reading, so both accept the same.
 */
#include "internal.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int cmp_headers(const void *a, const void *b)
{
    return strcasecmp(((const bp_header *)a)->name, ((const bp_header *)b)->name);
}

static int valid_header_name(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == ':' || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

static void add_header(bp_outcome *o, bp_request *r, const char *name, const char *value, int secret)
{
    r->headers = bp_realloc(r->headers, (r->nheaders + 1) * sizeof *r->headers);
    r->headers[r->nheaders].name = bp_outcome_strdup(o, name);
    r->headers[r->nheaders].value = bp_outcome_strdup(o, value);
    r->headers[r->nheaders].secret = secret;
    r->nheaders++;
}

static int has_header(const bp_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++) if (!strcasecmp(r->headers[i].name, name)) return 1;
    return 0;
}

static int req_fail(bp_error *err, const char *fmt, const char *a)
{
    bp_error_set(err, fmt, a);
    return -1;
}

static int read_headers(lua_State *L, int idx, bp_outcome *o, bp_request *r, bp_error *err)
{
    if (lua_isnil(L, idx)) return 0;
    if (!lua_istable(L, idx)) return req_fail(err, "headers must be a table of name = value%s", "");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !valid_header_name(lua_tostring(L, -2))) {
            lua_pop(L, 2);
            return req_fail(err, "header names must be non-empty strings without spaces or ':'%s", "");
        }
        const char *name = lua_tostring(L, -2);
        const char *secret = bp_secret_name(L, -1);
        const char *hmac = secret ? NULL : bp_hmac_secret_name(L, -1);
        if (secret) {
            add_header(o, r, name, secret, 1);
        } else if (hmac) {
            add_header(o, r, name, hmac, BP_HEADER_HMAC);
        } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            lua_pushvalue(L, -1);
            const char *v = lua_tostring(L, -1);
            if (strpbrk(v, "\r\n")) { lua_pop(L, 3); return req_fail(err, "header '%s' contains a line break", name); }
            add_header(o, r, name, v, 0);
            lua_pop(L, 1);
        } else {
            lua_pop(L, 2);
            return req_fail(err, "header '%s' must be a string, number, ctx.secret(...) or ctx.hmac_sha256(...)", name);
        }
        lua_pop(L, 1);
    }
    return 0;
}

int bp_read_request(lua_State *L, bp_outcome *o, bp_request *r, bp_error *err)
{
    static const char *const allowed[] = { "method", "url", "headers", "json", "form", "body", "once", "marks", NULL };
    int t = lua_gettop(L);
    /* One walk of the table checks the field names and copies each value to
     * its slot above the table: t+1 method ... t+8 marks (nil when absent). */
    enum { F_METHOD = 1, F_URL, F_HEADERS, F_JSON, F_FORM, F_BODY, F_ONCE, F_MARKS };
    lua_settop(L, t + F_MARKS);
    lua_pushnil(L);
    while (lua_next(L, t)) {                        /* ..., key, value */
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        int slot = 0;
        for (int i = 0; k && !slot && allowed[i]; i++) if (k[0] == allowed[i][0] && !strcmp(k, allowed[i])) slot = i + 1;
        if (!slot) {
            lua_pop(L, 2);
            return req_fail(err, "unknown request field '%s' (expected method, url, headers, json, form, body, "
                            "once or marks)", k ? k : "(not a string)");
        }
        lua_replace(L, t + slot);                   /* ..., key */
    }
    const char *method = lua_isnil(L, t + F_METHOD) ? "POST" : lua_tostring(L, t + F_METHOD);
    static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE", NULL };
    int is_method = 0;
    for (int i = 0; method && methods[i]; i++) if (!strcmp(method, methods[i])) is_method = 1;
    if (!is_method) return req_fail(err, "method must be GET, POST, PUT, PATCH or DELETE, not '%s'", method ? method : "?");
    r->method = bp_outcome_strdup(o, method);
    const char *url = lua_type(L, t + F_URL) == LUA_TSTRING ? lua_tostring(L, t + F_URL) : NULL;
    if (!url || (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        return req_fail(err, "url must be an absolute http(s) URL, got '%.200s'", url ? url : "nil");
    if (strpbrk(url, " \r\n\t")) return req_fail(err, "url must not contain spaces or line breaks: '%.200s'", url);
    r->url = bp_outcome_strdup(o, url);
    if (read_headers(L, t + F_HEADERS, o, r, err) < 0) return -1;
    for (int k = F_ONCE; k <= F_MARKS; k++) {
        int ty = lua_type(L, t + k);
        if (ty == LUA_TNIL) continue;
        if (ty != LUA_TSTRING) return req_fail(err, "%s must be a string key", allowed[k - 1]);
        *(k == F_MARKS ? &r->marks : &r->once) = bp_outcome_strdup(o, lua_tostring(L, t + k));
    }

    int json = !lua_isnil(L, t + F_JSON), form = !lua_isnil(L, t + F_FORM), raw = !lua_isnil(L, t + F_BODY);
    if (json + form + raw > 1) return req_fail(err, "give only one of json, form or body%s", "");
    if ((json || form || raw) && !strcmp(r->method, "GET")) return req_fail(err, "a GET request cannot have a body%s", "");
    bp_slots slots = { NULL, 0, 0 };
    int rc = 0;
    const char *ctype = NULL;
    if (json) {
        r->body_kind = BP_BODY_JSON;
        ctype = "application/json";
        rc = bp_encode_json(L, t + F_JSON, &r->body, &slots, err);
    } else if (form) {
        r->body_kind = BP_BODY_FORM;
        ctype = "application/x-www-form-urlencoded";
        rc = bp_encode_form(L, t + F_FORM, &r->body, &slots, err);
    } else if (raw) {
        size_t len;
        const char *s = lua_tolstring(L, t + F_BODY, &len);
        if (!s) return req_fail(err, "body must be a string (or use json = … / form = …)%s", "");
        if (!has_header(r, "Content-Type")) return req_fail(err, "a raw body needs a Content-Type header%s", "");
        r->body_kind = BP_BODY_RAW;
        bp_buf_add(&r->body, s, len);
    }
    r->slots = slots.v;
    r->nslots = slots.n;
    if (rc < 0) return -1;
    if (ctype && !has_header(r, "Content-Type")) add_header(o, r, "Content-Type", ctype, 0);
    if (r->nheaders > 1) qsort(r->headers, r->nheaders, sizeof *r->headers, cmp_headers);   /* none: NULL */
    lua_settop(L, t);
    return 0;
}

