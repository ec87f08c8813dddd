/*
 * decode.c — outcome lines made readable, and compared field by field.
 *
 * The exact wire body of each request is the contract (dry-run prints it,
 * the golden fixtures hold it).  An author also needs to see what is inside
 * it: ActiveCampaign's Event Tracking body is form text, and its
 * `eventdata` is JSON inside one of the form's values.  `dry-run --decode`
 * adds, next to each request's `body`, a `decoded` object: the JSON body
 * parsed, or the form's fields with every value that is itself JSON parsed
 * in place.  `blueprint test` compares decoded lines, so a mismatch names
 * the header, the form field or the key of eventdata that differs.
 */
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* application/x-www-form-urlencoded text, unescaped into out. */
static void form_unescape(const char *s, size_t n, bp_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') { bp_buf_addc(out, ' '); continue; }
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            bp_buf_addc(out, (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2])));
            i += 2;
            continue;
        }
        bp_buf_addc(out, s[i]);
    }
}

/* A value written as JSON when it is a JSON object or array, else as a string. */
static void write_value(bp_buf *out, const char *v, size_t n)
{
    size_t i = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\n' || v[i] == '\t')) i++;
    if (i < n && (v[i] == '{' || v[i] == '[')) {
        bp_doc d;
        bp_error err;
        bp_doc_init(&d);
        if (bp_json_parse(&d, v, n, NULL, &err) == 0) { bp_json_write_node(out, &d, 0); bp_doc_free(&d); return; }
        bp_doc_free(&d);
    }
    bp_json_write_text(out, v, n);
}

static void decode_form(bp_buf *out, const char *body, size_t n)
{
    bp_buf key, value;
    bp_buf_init(&key);
    bp_buf_init(&value);
    bp_buf_addc(out, '{');
    int first = 1;
    for (size_t at = 0; at <= n;) {
        size_t end = at;
        while (end < n && body[end] != '&') end++;
        if (end > at) {
            const char *eq = memchr(body + at, '=', end - at);
            size_t klen = eq ? (size_t)(eq - (body + at)) : end - at;
            bp_buf_reset(&key);
            bp_buf_reset(&value);
            form_unescape(body + at, klen, &key);
            if (eq) form_unescape(eq + 1, end - at - klen - 1, &value);
            if (!first) bp_buf_addc(out, ',');
            first = 0;
            bp_json_write_text(out, key.data ? key.data : "", key.len);
            bp_buf_addc(out, ':');
            write_value(out, value.data ? value.data : "", value.len);
        }
        at = end + 1;
    }
    bp_buf_addc(out, '}');
    bp_buf_free(&key);
    bp_buf_free(&value);
}

/* Request r (an object of d) with "decoded" after its body. */
static void write_request(bp_buf *out, const bp_doc *d, uint32_t r)
{
    const char *ctype = NULL;
    uint32_t headers = bp_jget(d, r, "headers");
    if (headers != BP_NONE && d->nodes[headers].type == BP_JOBJECT)
        for (uint32_t k = headers + 1, i = 0; i < d->nodes[headers].len; i++, k = d->nodes[k + 1].next)
            if (!strcasecmp(bp_jtext(d, k), "Content-Type")) ctype = bp_jscalar(d, k + 1);
    bp_buf_addc(out, '{');
    for (uint32_t k = r + 1, i = 0; i < d->nodes[r].len; i++, k = d->nodes[k + 1].next) {
        if (i) bp_buf_addc(out, ',');
        bp_json_write_node(out, d, k);
        bp_buf_addc(out, ':');
        bp_json_write_node(out, d, k + 1);
        if (strcmp(bp_jtext(d, k), "body") != 0 || d->nodes[k + 1].type != BP_JSTRING) continue;
        const char *body = bp_jtext(d, k + 1);
        size_t n = d->nodes[k + 1].len;
        bp_buf_adds(out, ",\"decoded\":");
        if (ctype && strstr(ctype, "x-www-form-urlencoded")) decode_form(out, body, n);
        else write_value(out, body, n);
    }
    bp_buf_addc(out, '}');
}

/* The node at i with every request of a "requests" array decoded. */
static void write_decoded(bp_buf *out, const bp_doc *d, uint32_t i)
{
    bp_buf_addc(out, '{');
    for (uint32_t k = i + 1, n = 0; n < d->nodes[i].len; n++, k = d->nodes[k + 1].next) {
        if (n) bp_buf_addc(out, ',');
        bp_json_write_node(out, d, k);
        bp_buf_addc(out, ':');
        uint32_t v = k + 1;
        if (strcmp(bp_jtext(d, k), "requests") != 0 || d->nodes[v].type != BP_JARRAY) { bp_json_write_node(out, d, v); continue; }
        bp_buf_addc(out, '[');
        for (uint32_t e = v + 1, m = 0; m < d->nodes[v].len; m++, e = d->nodes[e].next) {
            if (m) bp_buf_addc(out, ',');
            if (d->nodes[e].type == BP_JOBJECT) write_request(out, d, e); else bp_json_write_node(out, d, e);
        }
        bp_buf_addc(out, ']');
    }
    bp_buf_addc(out, '}');
}

int bp_decode_line(const char *line, size_t len, bp_buf *out)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    int rc = bp_json_parse(&d, line, len, NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT ? 0 : -1;
    if (rc == 0) write_decoded(out, &d, 0);
    else bp_buf_add(out, line, len);
    bp_doc_free(&d);
    return rc;
}

/* ---- field-level differences ------------------------------------------------------------- */

static void write_short(bp_buf *out, const bp_doc *d, uint32_t i)
{
    if (i == BP_NONE) { bp_buf_adds(out, "(absent)"); return; }
    bp_buf v;
    bp_buf_init(&v);
    bp_json_write_node(&v, d, i);
    if (v.len > 120) { bp_buf_add(out, v.data, 110); bp_buf_printf(out, "… (%zu bytes)", v.len); }
    else bp_buf_add(out, v.data, v.len);
    bp_buf_free(&v);
}

static int same(const bp_doc *a, uint32_t ai, const bp_doc *b, uint32_t bi)
{
    bp_buf x, y;
    bp_buf_init(&x);
    bp_buf_init(&y);
    bp_json_write_node(&x, a, ai);
    bp_json_write_node(&y, b, bi);
    int eq = x.len == y.len && (!x.len || !memcmp(x.data, y.data, x.len));
    bp_buf_free(&x);
    bp_buf_free(&y);
    return eq;
}

static void report(bp_buf *out, const char *path, const bp_doc *a, uint32_t ai, const bp_doc *b, uint32_t bi)
{
    bp_buf_printf(out, "    %s: expected ", path[0] ? path : "(the whole line)");
    write_short(out, a, ai);
    bp_buf_adds(out, ", got ");
    write_short(out, b, bi);
    bp_buf_addc(out, '\n');
}

static void diff(const bp_doc *a, uint32_t ai, const bp_doc *b, uint32_t bi, const char *path, bp_buf *out, int *n)
{
    if (*n >= 20) return;
    if (ai == BP_NONE || bi == BP_NONE || a->nodes[ai].type != b->nodes[bi].type ||
        (a->nodes[ai].type != BP_JOBJECT && a->nodes[ai].type != BP_JARRAY)) {
        if (ai != BP_NONE && bi != BP_NONE && same(a, ai, b, bi)) return;
        report(out, path, a, ai, b, bi);
        (*n)++;
        return;
    }
    char sub[1024];
    if (a->nodes[ai].type == BP_JARRAY) {
        uint32_t x = ai + 1, y = bi + 1;
        uint32_t na = a->nodes[ai].len, nb = b->nodes[bi].len;
        for (uint32_t i = 0; i < (na > nb ? na : nb); i++) {
            snprintf(sub, sizeof sub, "%s[%u]", path, i);
            diff(a, i < na ? x : BP_NONE, b, i < nb ? y : BP_NONE, sub, out, n);
            if (i < na) x = a->nodes[x].next;
            if (i < nb) y = b->nodes[y].next;
        }
        return;
    }
    /* a request's body is compared through its decoded form when both have one */
    int decoded = bp_jget(a, ai, "decoded") != BP_NONE && bp_jget(b, bi, "decoded") != BP_NONE &&
                  !same(a, bp_jget(a, ai, "decoded"), b, bp_jget(b, bi, "decoded"));
    for (uint32_t k = ai + 1, i = 0; i < a->nodes[ai].len; i++, k = a->nodes[k + 1].next) {
        const char *key = bp_jtext(a, k);
        if (decoded && !strcmp(key, "body")) continue;
        snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", key);
        diff(a, k + 1, b, bp_jget(b, bi, key), sub, out, n);
    }
    for (uint32_t k = bi + 1, i = 0; i < b->nodes[bi].len; i++, k = b->nodes[k + 1].next) {
        const char *key = bp_jtext(b, k);
        if (bp_jget(a, ai, key) != BP_NONE) continue;
        snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", key);
        diff(a, BP_NONE, b, k + 1, sub, out, n);
    }
}

int bp_diff_lines(const char *expected, size_t elen, const char *got, size_t glen, bp_buf *out)
{
    bp_buf x, y;
    bp_buf_init(&x);
    bp_buf_init(&y);
    bp_decode_line(expected, elen, &x);
    bp_decode_line(got, glen, &y);
    bp_doc a, b;
    bp_error err;
    bp_doc_init(&a);
    bp_doc_init(&b);
    int n = 0;
    if (bp_json_parse(&a, x.data ? x.data : "", x.len, NULL, &err) < 0 ||
        bp_json_parse(&b, y.data ? y.data : "", y.len, NULL, &err) < 0) {
        if (x.len != y.len || (x.len && memcmp(x.data, y.data, x.len))) {
            bp_buf_printf(out, "    expected: %.*s\n    got:      %.*s\n", (int)(elen > 200 ? 200 : elen), expected,
                          (int)(glen > 200 ? 200 : glen), got);
            n = 1;
        }
    } else {
        diff(&a, 0, &b, 0, "", out, &n);
        if (n >= 20) bp_buf_adds(out, "    (more differences not shown)\n");
    }
    bp_doc_free(&a);
    bp_doc_free(&b);
    bp_buf_free(&x);
    bp_buf_free(&y);
    return n;
}

/* ---- mapping a stream, and a blueprint's fixtures ---------------------------------------------
 * What `dry-run` and `blueprint test` do, shared with the console's editor
 * (editor.c), which runs an unsaved edit the same way; with --batch (or a
 * case's dry-run.args), the events a blueprint's batch takes are held and
 * shown as batches (batch.c runs them). */

/* An event the engine refused before any mapping ran: its reason says so
 * (engine.c), and gets the input line in front, as the reader's own errors
 * have it. */
static int refused_input(bp_outcome *o, long line)
{
    static const char prefix[] = "malformed event";
    if (o->verdict != BP_ERROR || o->reason.len < sizeof prefix - 1 || memcmp(o->reason.data, prefix, sizeof prefix - 1))
        return 0;
    bp_buf lined;
    bp_buf_init(&lined);
    bp_buf_printf(&lined, "line %ld: ", line);
    bp_buf_add(&lined, o->reason.data, o->reason.len);
    bp_buf swap = o->reason;
    o->reason = lined;
    bp_buf_free(&swap);
    return 1;
}

/* ---- dry-run --batch: the events a batch takes, held for it ---------------------------- */

typedef struct held_events {
    long *index;
    bp_buf *json, *line;    /* each event, and its own outcome line (shown when no batch forms) */
    size_t n, cap;
} held_events;

static void emit_line(const bp_buf *line, int decode, bp_buf *readable, bp_line_fn emit, void *ctx)
{
    const bp_buf *shown = line;
    if (decode) { bp_buf_reset(readable); bp_decode_line(line->data, line->len, readable); shown = readable; }
    emit(ctx, shown->data, shown->len);
}

/* The batch line: the batch's outcome, then "batch": each event's result. */
static void write_batch(const bp_batch *b, const held_events *h, const char *const *ids, bp_buf *line)
{
    static const char *const verdicts[] = { "deliver", "drop", "error" };
    bp_outcome_write_fields(&b->out, -1, verdicts[b->out.verdict], line);
    bp_buf_adds(line, ",\"batch\":[");
    for (size_t i = 0; i < h->n; i++) {
        bp_buf_printf(line, "%s{\"index\":%ld,\"message_id\":", i ? "," : "", h->index[i]);
        if (ids[i]) bp_json_write_text(line, ids[i], strlen(ids[i])); else bp_buf_adds(line, "null");
        if (b->has_results) {
            bp_buf_adds(line, ",\"result\":\"");
            bp_buf_adds(line, bp_batch_result_name(b->items[i].result));
            bp_buf_addc(line, '"');
            if (b->items[i].reason) {
                bp_buf_adds(line, ",\"reason\":");
                bp_json_write_text(line, b->items[i].reason, strlen(b->items[i].reason));
            }
        }
        bp_buf_addc(line, '}');
    }
    bp_buf_adds(line, "]}");
}

/* The held events go out: as one batch when there are enough, else each alone. */
static void flush_held(bp_engine *e, held_events *h, int decode, bp_buf *readable, bp_line_fn emit, void *ctx)
{
    if (!h->n) return;
    if (h->n < (size_t)bp_engine_batch_spec(e)->min_events) {
        for (size_t i = 0; i < h->n; i++) emit_line(&h->line[i], decode, readable, emit, ctx);
    } else {
        const char **events = bp_calloc(h->n, sizeof *events), **ids = bp_calloc(h->n, sizeof *ids);
        size_t *lens = bp_calloc(h->n, sizeof *lens);
        bp_doc d;
        bp_doc_init(&d);
        bp_buf id_text;
        bp_buf_init(&id_text);
        size_t *at = bp_calloc(h->n, sizeof *at);
        for (size_t i = 0; i < h->n; i++) {
            events[i] = h->json[i].data;
            lens[i] = h->json[i].len;
            const char *id = NULL;
            bp_error err;
            if (bp_json_parse(&d, events[i], lens[i], NULL, &err) == 0) id = bp_event_message_id(&d);
            at[i] = id ? id_text.len : (size_t)-1;
            if (id) bp_buf_add(&id_text, id, strlen(id) + 1);
        }
        for (size_t i = 0; i < h->n; i++) ids[i] = at[i] == (size_t)-1 ? NULL : id_text.data + at[i];
        bp_batch b;
        bp_batch_init(&b);
        if (bp_batch_run(e, &b, events, lens, h->n) == 0) bp_batch_dry(e, &b);
        b.out.type = bp_outcome_strdup(&b.out, "batch");
        bp_buf line;
        bp_buf_init(&line);
        write_batch(&b, h, ids, &line);
        emit_line(&line, decode, readable, emit, ctx);
        bp_buf_free(&line);
        bp_batch_free(e, &b);
        bp_doc_free(&d);
        bp_buf_free(&id_text);
        free(events); free(ids); free(lens); free(at);
    }
    for (size_t i = 0; i < h->n; i++) { bp_buf_free(&h->json[i]); bp_buf_free(&h->line[i]); }
    h->n = 0;
}

static void hold(held_events *h, long index, const char *json, size_t len, const bp_buf *line)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->index = bp_realloc(h->index, h->cap * sizeof *h->index);
        h->json = bp_realloc(h->json, h->cap * sizeof *h->json);
        h->line = bp_realloc(h->line, h->cap * sizeof *h->line);
    }
    h->index[h->n] = index;
    bp_buf_init(&h->json[h->n]);
    bp_buf_add(&h->json[h->n], json, len);
    bp_buf_init(&h->line[h->n]);
    bp_buf_add(&h->line[h->n], line->data, line->len);
    h->n++;
}

static long map_events(bp_engine *e, bp_reader *r, int decode, int batched, bp_line_fn emit, void *ctx, long *malformed)
{
    const struct bp_batch_spec *spec = batched ? bp_engine_batch_spec(e) : NULL;
    held_events held = { 0 };
    bp_outcome o;
    bp_outcome_init(&o);
    bp_buf line, readable;
    bp_buf_init(&line);
    bp_buf_init(&readable);
    long index = 0;
    const char *ev;
    size_t len;
    bp_error err;
    enum bp_read_status st;
    while ((st = bp_reader_next(r, &ev, &len, &err)) != BP_READ_END) {
        int refused = 1;
        if (st == BP_READ_EVENT) {
            bp_engine_run(e, ev, len, &o);
            refused = refused_input(&o, bp_reader_line(r));
        } else {
            bp_outcome_reset(&o);
            o.verdict = BP_ERROR;
            bp_buf_adds(&o.reason, err.msg);
        }
        if (refused && malformed) (*malformed)++;
        bp_buf_reset(&line);
        bp_outcome_write_json(&o, index, &line);
        if (spec && st == BP_READ_EVENT && bp_batch_takes(e, &o)) {
            hold(&held, index++, ev, len, &line);
            if (held.n >= (size_t)spec->max_events) flush_held(e, &held, decode, &readable, emit, ctx);
            continue;
        }
        index++;
        emit_line(&line, decode, &readable, emit, ctx);
    }
    flush_held(e, &held, decode, &readable, emit, ctx);
    free(held.index); free(held.json); free(held.line);
    bp_buf_free(&line);
    bp_buf_free(&readable);
    bp_outcome_free(&o);
    return index;
}

long bp_map_events(bp_engine *e, bp_reader *r, int decode, bp_line_fn emit, void *ctx, long *malformed)
{
    return map_events(e, r, decode, 0, emit, ctx, malformed);
}

long bp_map_events_batched(bp_engine *e, bp_reader *r, int decode, bp_line_fn emit, void *ctx, long *malformed)
{
    return map_events(e, r, decode, 1, emit, ctx, malformed);
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int bp_case_each(const char *cases_dir, void (*fn)(void *ctx, const char *name), void *ctx)
{
    struct dirent **names = NULL;
    int n = scandir(cases_dir, &names, NULL, by_name);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
        char sub[4500];
        struct stat st;
        snprintf(sub, sizeof sub, "%s/%s", cases_dir, names[i]->d_name);
        if (names[i]->d_name[0] != '.' && stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) fn(ctx, names[i]->d_name);
        free(names[i]);
    }
    free(names);
    return 0;
}

/* The i-th line of text (0-based) and its length; NULL past the end. */
static const char *nth_line(const char *text, size_t len, long i, size_t *n)
{
    const char *p = text, *end = text + len;
    for (; p && p < end && i > 0; i--) { p = memchr(p, '\n', (size_t)(end - p)); if (p) p++; }
    if (!p || p >= end) return NULL;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    *n = nl ? (size_t)(nl - p) : (size_t)(end - p);
    return p;
}

static long count_lines(const char *text, size_t len)
{
    long n = 0;
    size_t l;
    while (nth_line(text, len, n, &l)) n++;
    return n;
}

static void add_line(void *ctx, const char *line, size_t len)
{
    bp_buf_add(ctx, line, len);
    bp_buf_addc(ctx, '\n');
}

void bp_case_init(bp_case *c)
{
    memset(c, 0, sizeof *c);
    bp_buf_init(&c->got);
    bp_buf_init(&c->report);
}

void bp_case_free(bp_case *c)
{
    bp_buf_free(&c->got);
    bp_buf_free(&c->report);
}

/* "  event 3 (ex-4)": an author finds the event in events.ndjson by its
 * messageId, not by counting lines.  Kept short: the editor reads these
 * headers back (write_diff). */
static void name_event(bp_buf *out, long i, const char *line, size_t len)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *id = line && bp_json_parse(&d, line, len, NULL, &err) == 0 && d.nodes[0].type == BP_JOBJECT
                         ? bp_jscalar(&d, bp_jget(&d, 0, "message_id")) : NULL;
    bp_buf_printf(out, "  event %ld", i);
    if (id) bp_buf_printf(out, " (%.40s)", id);
    bp_doc_free(&d);
}

/* Today's output against expected.ndjson, event by event: c->report names
 * each event that differs and, through bp_diff_lines, each field. */
static void compare_case(bp_case *c, const bp_buf *want)
{
    const char *gt = c->got.data ? c->got.data : "", *wt = want->data ? want->data : "";
    c->expected = count_lines(wt, want->len);
    long lines = count_lines(gt, c->got.len);   /* one per event, or per batch (dry-run.args --batch) */
    for (long i = 0; i < (lines > c->expected ? lines : c->expected); i++) {
        size_t gl = 0, wl = 0;
        const char *g = nth_line(gt, c->got.len, i, &gl);
        const char *w = nth_line(wt, want->len, i, &wl);
        if (g && w && gl == wl && !memcmp(g, w, gl)) continue;
        c->differing++;
        name_event(&c->report, i, g ? g : w, g ? gl : wl);
        if (!g || !w) {
            bp_buf_printf(&c->report, ": %s\n", g ? "not in expected.ndjson (new)" : "expected, but the events "
                          "file has no such event any more");
            continue;
        }
        bp_buf_adds(&c->report, ":\n");
        if (bp_diff_lines(w, wl, g, gl, &c->report) == 0) bp_buf_adds(&c->report, "    the same fields, written differently\n");
    }
}

bp_config *bp_case_config(const bp_blueprint *bp, const char *cases_dir, const char *name, bp_error *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/%s/config.yaml", cases_dir, name);
    if (access(path, F_OK) != 0) snprintf(path, sizeof path, "%s/%s/config.json", cases_dir, name);
    return bp_config_load_file(bp, path, err);
}

bp_answers *bp_case_answers(const bp_blueprint *bp, const char *cases_dir, const char *name, bp_error *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/%s/answers.yaml", cases_dir, name);
    return bp_answers_load(bp->dir, access(path, F_OK) == 0 ? path : NULL, err);
}

/* A case's dry-run.args: "--batch" (the case shows how its events are
 * batched), or nothing.  1, 0, or -1 with err for anything else. */
static int case_batched(const char *cases_dir, const char *name, bp_error *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/%s/dry-run.args", cases_dir, name);
    if (access(path, F_OK) != 0) return 0;
    bp_buf text;
    bp_buf_init(&text);
    int rc = bp_read_file(path, &text, err) < 0 ? -1 : 0;
    const char *t = text.data ? text.data : "";
    size_t n = text.len;
    while (n && (t[n - 1] == '\n' || t[n - 1] == ' ' || t[n - 1] == '\r')) n--;
    if (rc == 0 && n == 7 && !memcmp(t, "--batch", 7)) rc = 1;
    else if (rc == 0) {
        bp_error_set(err, "dry-run.args: only --batch is known (got '%.*s')", (int)(n > 60 ? 60 : n), t);
        rc = -1;
    }
    bp_buf_free(&text);
    return rc;
}

int bp_case_check(bp_engine *e, const char *cases_dir, const char *name, const bp_limits *limits, bp_case *c,
                  bp_error *err)
{
    char path[4600];
    snprintf(path, sizeof path, "%s/%s/events.ndjson", cases_dir, name);
    snprintf(c->expected_path, sizeof c->expected_path, "%s/%s/expected.ndjson", cases_dir, name);
    int batched = case_batched(cases_dir, name, err);
    if (batched < 0) return -1;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { bp_error_set(err, "cannot open events.ndjson (one event per line)"); return -1; }
    bp_reader *r = bp_reader_new(fd, limits->json.max_bytes);
    c->events = map_events(e, r, 0, batched, add_line, &c->got, NULL);
    bp_reader_free(r);
    close(fd);
    bp_buf want;
    bp_buf_init(&want);
    bp_error missing;
    c->have_expected = bp_read_file(c->expected_path, &want, &missing) == 0;
    if (c->have_expected) compare_case(c, &want);
    bp_buf_free(&want);
    return 0;
}
