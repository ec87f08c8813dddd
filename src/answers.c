/*
 * answers.c — the vendor's answers to steps (ctx.send) when nothing is sent:
 * dry-run, `blueprint test`, the console's live dry-run.
 *
 * A blueprint ships the documented example answers of the endpoints its
 * steps call (BLUEPRINT_DIR/answers.yaml, each with the reference page it
 * comes from); a fixture or an author adds their own (`--answers FILE`, a
 * test case's answers.yaml), tried first.  An entry:
 *
 *   - method: GET
 *     path: /api/3/tags          # the URL's path; * matches one segment
 *     query: search=vip          # optional: the query string must contain it
 *     status: 200
 *     json: {"tags": [], "meta": {"total": "0"}}   # or body: "raw text"
 *     doc: https://…             # optional: where the example comes from
 *
 * The first entry that matches answers.  A step nothing matches gets 200
 * with an empty JSON object, and says so: every answer in a dry-run line
 * names where it came from ("from"), so an author sees what was assumed.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct answer {
    char *method, *path, *query, *body, *from;
    int status;
} answer;

struct bp_answers {
    answer *v; size_t n;
};

static char *dup_or_null(const char *s) { return s ? bp_strdup(s) : NULL; }

static int fail_at(bp_error *err, const char *file, uint32_t line, const char *what)
{
    bp_error_set(err, "%s:%u: %s", file, line, what);
    return -1;
}

/* Append the entries of one YAML file. */
static int load_file(bp_answers *a, const char *path, int given, bp_error *err)
{
    bp_buf text;
    bp_buf_init(&text);
    if (bp_read_file(path, &text, err) < 0) { bp_buf_free(&text); return -1; }
    bp_doc d;
    bp_doc_init(&d);
    d.origin = path;
    int rc = bp_yaml_parse(&d, text.data ? text.data : "", text.len, err);
    bp_buf_free(&text);
    if (rc == 0 && d.n && d.nodes[0].type != BP_JARRAY)
        rc = fail_at(err, path, d.nodes[0].line, "must be a list of answers (- method: … path: … status: … json: …)");
    for (uint32_t it = 1, k = 0; rc == 0 && d.n && k < d.nodes[0].len; it = d.nodes[it].next, k++) {
        static const char *const keys[] = { "method", "path", "query", "status", "json", "body", "doc", NULL };
        if (d.nodes[it].type != BP_JOBJECT) { rc = fail_at(err, path, d.nodes[it].line, "each answer is a map"); break; }
        for (uint32_t c = it + 1, m = 0; m < d.nodes[it].len; c = d.nodes[d.nodes[c].next].next, m++) {
            const char *key = bp_jtext(&d, c);
            int known = 0;
            for (int i = 0; keys[i]; i++) if (!strcmp(key, keys[i])) known = 1;
            if (!known) {
                bp_error_set(err, "%s:%u: unknown key '%s' (expected method, path, query, status, json, body, doc)",
                             path, d.nodes[c].line, key);
                rc = -1;
                break;
            }
        }
        if (rc) break;
        const char *method = bp_jscalar(&d, bp_jget(&d, it, "method"));
        const char *p = bp_jscalar(&d, bp_jget(&d, it, "path"));
        const char *status = bp_jscalar(&d, bp_jget(&d, it, "status"));
        uint32_t json = bp_jget(&d, it, "json");
        const char *body = bp_jscalar(&d, bp_jget(&d, it, "body"));
        if (!method || !p || p[0] != '/' || !status || atoi(status) < 100 || atoi(status) > 599 || (json == BP_NONE && !body)) {
            rc = fail_at(err, path, d.nodes[it].line, "an answer needs method, path (/…), status (100-599) and json or body");
            break;
        }
        a->v = bp_realloc(a->v, (a->n + 1) * sizeof *a->v);
        answer *e = &a->v[a->n++];
        memset(e, 0, sizeof *e);
        e->method = bp_strdup(method);
        e->path = bp_strdup(p);
        e->query = dup_or_null(bp_jscalar(&d, bp_jget(&d, it, "query")));
        e->status = atoi(status);
        bp_buf b;
        bp_buf_init(&b);
        if (json != BP_NONE) bp_json_write_node(&b, &d, json); else bp_buf_adds(&b, body);
        e->body = bp_strdup(b.data ? b.data : "");
        bp_buf_reset(&b);
        const char *base = strrchr(path, '/');
        const char *doc = bp_jscalar(&d, bp_jget(&d, it, "doc"));
        /* the blueprint's documented examples name their page; given answers say so */
        bp_buf_printf(&b, "%s:%u", base ? base + 1 : path, d.nodes[it].line);
        if (given) bp_buf_adds(&b, " (given)");
        else if (doc) bp_buf_printf(&b, " (%s)", doc);
        e->from = bp_strdup(b.data);
        bp_buf_free(&b);
    }
    bp_doc_free(&d);
    return rc;
}

bp_answers *bp_answers_load(const char *blueprint_dir, const char *extra, bp_error *err)
{
    bp_answers *a = bp_calloc(1, sizeof *a);
    char path[4200];
    struct stat st;
    if ((extra && load_file(a, extra, 1, err) < 0) ||
        (snprintf(path, sizeof path, "%s/answers.yaml", blueprint_dir), stat(path, &st) == 0 && load_file(a, path, 0, err) < 0)) {
        bp_answers_free(a);
        return NULL;
    }
    return a;
}

void bp_answers_free(bp_answers *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].method);
        free(a->v[i].path);
        free(a->v[i].query);
        free(a->v[i].body);
        free(a->v[i].from);
    }
    free(a->v);
    free(a);
}

/* Does the URL's path (host and query left out) match the pattern, where
 * a * segment matches any one segment? */
static int path_matches(const char *pattern, const char *url)
{
    const char *u = strstr(url, "://");
    u = u ? strchr(u + 3, '/') : NULL;
    if (!u) u = "/";
    size_t ulen = strcspn(u, "?#");
    const char *p = pattern, *end = u + ulen;
    while (*p && u < end) {
        size_t pl = strcspn(p, "/"), sl = strcspn(u, "/?#");
        if (u + sl > end) sl = (size_t)(end - u);
        if (!(pl == 1 && *p == '*') && (pl != sl || strncmp(p, u, pl) != 0)) return 0;
        p += pl;
        u += sl;
        if (*p == '/' && *u == '/') { p++; u++; continue; }
        break;
    }
    return !*p && u == end;
}

int bp_answers_fn(void *ud, const bp_request *step, int *status, bp_buf *body, bp_buf *from)
{
    const bp_answers *a = ud;
    const char *q = strchr(step->url, '?');
    for (size_t i = 0; a && i < a->n; i++) {
        const answer *e = &a->v[i];
        if (strcmp(e->method, step->method) != 0 || !path_matches(e->path, step->url)) continue;
        if (e->query && (!q || !strstr(q + 1, e->query))) continue;
        *status = e->status;
        bp_buf_adds(body, e->body);
        bp_buf_adds(from, e->from);
        return 0;
    }
    const char *u = strstr(step->url, "://");
    u = u ? strchr(u + 3, '/') : NULL;
    *status = 200;
    bp_buf_adds(body, "{}");
    bp_buf_printf(from, "assumed: no example answer matches %s %.*s (200 {} assumed; add one with --answers FILE)",
                  step->method, u ? (int)strcspn(u, "?#") : 1, u ? u : "/");
    return 0;
}
