/*
 * server.c — `blueprint serve`: the Management API, event intake, Live
 * Events and operations endpoints over libmicrohttpd (DESIGN.md §8).
 *
 * Thread per connection: handlers are short except the Live Events stream,
 * which blocks on the registry's condition variable between outcomes.
 * Every response body is JSON ({"error":{"code","message"}} on errors) and
 * never contains a secret; every request is logged as one JSON line.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (512u * 1024u)
#define MAX_INTAKE_EVENTS 500

typedef struct server {
    bp_registry *reg;
    char secret[200];
} server;

typedef struct conn {
    bp_buf body;
    int too_large;
    double started;
} conn;

typedef struct reply {
    int status;
    bp_buf body;
    const char *ctype;
} reply;

static void set_error(reply *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_error(reply *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->status = status;
    bp_buf_reset(&r->body);
    bp_buf_printf(&r->body, "{\"error\":{\"code\":\"%s\",\"message\":", code);
    bp_json_write_string(&r->body, msg, strlen(msg));
    bp_buf_adds(&r->body, "}}");
}

/* ---- auth ------------------------------------------------------------------------ */

enum need { READ, WRITE };

/* 0 when the request may go on; otherwise r holds the 401/403. */
static int authorize(server *s, struct MHD_Connection *c, enum need need, reply *r)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        set_error(r, 401, "INVALID_TOKEN", "missing bearer token (Authorization: Bearer <token>; mint one with "
                  "`blueprint token --role admin`)");
        return -1;
    }
    char role[32];
    bp_error err;
    if (bp_jwt_verify(s->secret, h + 7, (int64_t)(bp_wall_ms() / 1000), role, sizeof role, &err) < 0) {
        set_error(r, 401, "INVALID_TOKEN", "%s", err.msg);
        return -1;
    }
    int writer = !strcmp(role, "owner") || !strcmp(role, "admin") || !strcmp(role, "editor");
    int reader = writer || !strcmp(role, "viewer");
    if (!reader || (need == WRITE && !writer)) {
        set_error(r, 403, "FORBIDDEN", "role '%s' may not %s", role, need == WRITE ? "change things" : "read this");
        return -1;
    }
    return 0;
}

/* ---- JSON pieces ---------------------------------------------------------------------- */

static void write_str(bp_buf *b, const char *key, const char *v, int comma)
{
    bp_buf_printf(b, "%s\"%s\":", comma ? "," : "", key);
    if (v) bp_json_write_string(b, v, strlen(v)); else bp_buf_adds(b, "null");
}

static const char *type_name(enum bp_field_type t)
{
    return t == BP_FIELD_SECRET ? "secret" : t == BP_FIELD_URL ? "url" : t == BP_FIELD_INTEGER ? "integer" : "string";
}

static void write_vendor(bp_buf *b, const bp_vendor *v, int full)
{
    const bp_blueprint *bp = v->bp;
    bp_buf_addc(b, '{');
    write_str(b, "vendor", v->key, 0);
    if (bp) {
        write_str(b, "name", bp->name, 1);
        write_str(b, "category", bp->category, 1);
        write_str(b, "status", bp->status, 1);
        write_str(b, "consent_category", bp->consent_category, 1);
        bp_buf_adds(b, ",\"variants\":[");
        for (size_t i = 0; i < bp->nvariants; i++) {
            if (i) bp_buf_addc(b, ',');
            bp_json_write_string(b, bp->variants[i], strlen(bp->variants[i]));
        }
        bp_buf_adds(b, "],\"config_fields\":[");
        for (size_t i = 0; i < bp->nfields; i++) {
            const bp_field *f = &bp->fields[i];
            if (i) bp_buf_addc(b, ',');
            bp_buf_addc(b, '{');
            write_str(b, "key", f->key, 0);
            write_str(b, "label", f->label, 1);
            write_str(b, "type", type_name(f->type), 1);
            bp_buf_printf(b, ",\"required\":%s", f->required ? "true" : "false");
            write_str(b, "default", f->default_value, 1);
            write_str(b, "help", f->help, 1);
            bp_buf_addc(b, '}');
        }
        bp_buf_addc(b, ']');
        if (full) {
            bp_buf_adds(b, ",\"events\":[");
            for (size_t i = 0; i < bp->nroutes; i++) {
                if (i) bp_buf_addc(b, ',');
                bp_buf_addc(b, '{');
                write_str(b, "name", bp->routes[i].name, 0);
                write_str(b, "type", bp->routes[i].type, 1);
                write_str(b, "mapping", bp->routes[i].mapping, 1);
                bp_buf_printf(b, ",\"enabled\":%s}", bp->routes[i].enabled ? "true" : "false");
            }
            bp_buf_printf(b, "],\"custom_events\":%s", bp->has_custom ? "\"disabled until enabled per event name\"" : "null");
            bp_buf_printf(b, ",\"rate_limit_rps\":%g,\"retry_max_attempts\":%d", bp->rate_limit_rps, bp->retry_max_attempts);
        }
    }
    write_str(b, "load_error", v->load_error, 1);
    bp_buf_addc(b, '}');
}

/* The integration as the API shows it: secrets masked. Registry lock held. */
static void write_integration(bp_buf *b, const bp_integration *it)
{
    bp_buf_addc(b, '{');
    write_str(b, "id", it->id, 0);
    write_str(b, "name", it->name, 1);
    write_str(b, "vendor", it->vendor->key, 1);
    write_str(b, "variant", it->variant, 1);
    write_str(b, "delivery_mode", it->delivery_mode, 1);
    bp_buf_printf(b, ",\"revision\":%d,\"created_at\":%lld,\"config\":", it->revision, (long long)it->created_at);
    bp_write_masked_config(b, it->vendor->bp, it->config_json);
    /* the effective event table: blueprint defaults with this config's overrides */
    bp_buf_adds(b, ",\"events\":{");
    const bp_blueprint *bp = it->vendor->bp;
    int first = 1;
    for (size_t i = 0; bp && i < bp->nroutes; i++) {
        int enabled = bp->routes[i].enabled;
        for (size_t k = 0; it->cfg && k < it->cfg->nevents; k++)
            if (!strcmp(it->cfg->events[k].name, bp->routes[i].name)) enabled = it->cfg->events[k].enabled;
        if (!first) bp_buf_addc(b, ',');
        first = 0;
        bp_json_write_string(b, bp->routes[i].name, strlen(bp->routes[i].name));
        bp_buf_printf(b, ":{\"enabled\":%s,\"mapping\":", enabled ? "true" : "false");
        bp_json_write_string(b, bp->routes[i].mapping, strlen(bp->routes[i].mapping));
        bp_buf_addc(b, '}');
    }
    for (size_t k = 0; it->cfg && bp && bp->has_custom && k < it->cfg->nevents; k++) {
        int listed = 0;
        for (size_t i = 0; i < bp->nroutes; i++) if (!strcmp(bp->routes[i].name, it->cfg->events[k].name)) listed = 1;
        if (listed) continue;
        if (!first) bp_buf_addc(b, ',');
        first = 0;
        bp_json_write_string(b, it->cfg->events[k].name, strlen(it->cfg->events[k].name));
        bp_buf_printf(b, ":{\"enabled\":%s,\"mapping\":", it->cfg->events[k].enabled ? "true" : "false");
        bp_json_write_string(b, bp->custom.mapping, strlen(bp->custom.mapping));
        bp_buf_addc(b, '}');
    }
    bp_buf_addc(b, '}');
    bp_buf_printf(b, ",\"delivery\":{\"running\":%s,\"delivered\":%ld,\"dead_lettered\":%ld,\"held\":%ld}",
                  it->running ? "true" : "false", it->stats.delivered, it->stats.dead, it->stats.held);
    bp_buf_addc(b, '}');
}

/* ---- handlers --------------------------------------------------------------------------- */

static int parse_body(const conn *c, bp_doc *d, reply *r)
{
    bp_error err;
    bp_json_limits lim = { MAX_BODY, 64 };
    if (bp_json_parse(d, c->body.data ? c->body.data : "", c->body.len, &lim, &err) < 0) {
        set_error(r, 400, "BAD_REQUEST", "malformed JSON body: %s", err.msg);
        return -1;
    }
    if (d->nodes[0].type != BP_JOBJECT) { set_error(r, 400, "BAD_REQUEST", "the body must be a JSON object"); return -1; }
    return 0;
}

static void catalog(server *s, const char *vendor, reply *r)
{
    bp_registry *reg = s->reg;
    pthread_mutex_lock(&reg->mu);
    if (vendor) {
        bp_vendor *v = bp_registry_vendor(reg, vendor);
        if (!v) set_error(r, 404, "NOT_FOUND", "no blueprint for vendor '%s' in %s", vendor, reg->blueprints_dir);
        else write_vendor(&r->body, v, 1);
    } else {
        bp_buf_adds(&r->body, "{\"integrations\":[");
        for (size_t i = 0; i < reg->nvendors; i++) {
            if (i) bp_buf_addc(&r->body, ',');
            write_vendor(&r->body, &reg->vendors[i], 0);
        }
        bp_buf_adds(&r->body, "]}");
    }
    pthread_mutex_unlock(&reg->mu);
}

static void install(server *s, const char *vendor, const conn *c, reply *r)
{
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(c, &d, r) < 0) { bp_doc_free(&d); return; }
    pthread_mutex_lock(&s->reg->mu);
    bp_vendor *v = bp_registry_vendor(s->reg, vendor);
    int usable = v && v->bp;
    pthread_mutex_unlock(&s->reg->mu);
    if (!v) { set_error(r, 404, "NOT_FOUND", "no blueprint for vendor '%s'", vendor); bp_doc_free(&d); return; }
    if (!usable) { set_error(r, 503, "BLUEPRINT_UNAVAILABLE", "the '%s' blueprint failed to load: %s", vendor, v->load_error); bp_doc_free(&d); return; }
    bp_integration *it;
    int http;
    bp_error err;
    if (bp_registry_install(s->reg, v, &d, &it, &http, &err) < 0) {
        set_error(r, http, http == 404 ? "NOT_FOUND" : http == 409 ? "CONFLICT" : http == 422 ? "INVALID_CONFIG" : "INTERNAL",
                  "%s", err.msg);
    } else {
        r->status = 201;
        pthread_mutex_lock(&s->reg->mu);
        write_integration(&r->body, it);
        pthread_mutex_unlock(&s->reg->mu);
        bp_buf f;
        bp_buf_init(&f);
        bp_buf_printf(&f, "\"integration\":\"%s\",\"vendor\":\"%s\"", it->id, v->key);
        bp_log("info", "integration installed", f.data);
        bp_buf_free(&f);
    }
    bp_doc_free(&d);
}

static bp_integration *find(server *s, const char *id, reply *r)
{
    pthread_mutex_lock(&s->reg->mu);
    bp_integration *it = bp_registry_find(s->reg, id);
    pthread_mutex_unlock(&s->reg->mu);
    if (!it) set_error(r, 404, "NOT_FOUND", "no integration with id '%s'", id);
    return it;
}

static void list_integrations(server *s, reply *r)
{
    pthread_mutex_lock(&s->reg->mu);
    bp_buf_adds(&r->body, "{\"integrations\":[");
    for (size_t i = 0; i < s->reg->n; i++) {
        if (i) bp_buf_addc(&r->body, ',');
        write_integration(&r->body, s->reg->items[i]);
    }
    bp_buf_adds(&r->body, "]}");
    pthread_mutex_unlock(&s->reg->mu);
}

/* ---- events: intake, live events, dead letters ------------------------------------------- */

static const char *const valid_types[] = { "page", "track", "identify", "group", "screen", NULL };

static void intake(server *s, bp_integration *it, const conn *c, reply *r)
{
    if (c->too_large) { set_error(r, 413, "PAYLOAD_TOO_LARGE", "the body is over %u bytes", MAX_BODY); return; }
    bp_error err;
    bp_store *st = bp_store_open(it->state_dir, &err);
    if (!st) { set_error(r, 500, "INTERNAL", "%s", err.msg); return; }
    bp_reader *rd = bp_reader_new_mem(c->body.data ? c->body.data : "", c->body.len, BP_DEFAULT_MAX_EVENT_BYTES);
    bp_doc d;
    bp_doc_init(&d);
    bp_buf errors;
    bp_buf_init(&errors);
    const char *ev;
    size_t len;
    long index = 0, accepted = 0, duplicates = 0, bad = 0;
    enum bp_read_status rs;
    bp_store_exec(st, "BEGIN");
    while ((rs = bp_reader_next(rd, &ev, &len, &err)) != BP_READ_END) {
        const char *why = NULL;
        char msg[sizeof err.msg];
        if (index >= MAX_INTAKE_EVENTS) { why = "more than 500 events in one request"; }
        else if (rs == BP_READ_BAD) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (bp_json_parse(&d, ev, len, NULL, &err) < 0) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (d.nodes[0].type != BP_JOBJECT) why = "an event must be a JSON object";
        else {
            const char *type = bp_jscalar(&d, bp_jget(&d, 0, "type"));
            int ok = 0;
            for (int k = 0; type && valid_types[k]; k++) if (!strcmp(type, valid_types[k])) ok = 1;
            if (!ok) why = "\"type\" must be page, track, identify, group or screen";
        }
        if (why) {
            bp_buf_printf(&errors, "%s{\"index\":%ld,\"message\":", bad ? "," : "", index);
            bp_json_write_string(&errors, why, strlen(why));
            bp_buf_addc(&errors, '}');
            bad++;
        } else {
            const char *mid = bp_jscalar(&d, bp_jget(&d, 0, "messageId"));
            if (!mid) mid = bp_jscalar(&d, bp_jget(&d, 0, "message_id"));
            if (!mid) mid = bp_jscalar(&d, bp_jget(&d, 0, "event_id"));
            int64_t id = bp_store_add(st, ev, len, index, mid, (int64_t)bp_wall_ms());
            if (id > 0) accepted++; else if (id == 0) duplicates++; else bad++;
        }
        index++;
    }
    /* 202 only once the events are durable */
    int committed = bp_store_exec(st, "COMMIT") == 0;
    bp_reader_free(rd);
    bp_doc_free(&d);
    bp_store_close(st);
    if (!committed) { set_error(r, 500, "INTERNAL", "could not store the events"); bp_buf_free(&errors); return; }
    pthread_mutex_lock(&s->reg->mu);
    s->reg->metrics.events_in += accepted;
    pthread_mutex_unlock(&s->reg->mu);
    if (index == 0) { set_error(r, 400, "BAD_REQUEST", "no events in the body (one JSON object, an array or NDJSON)"); bp_buf_free(&errors); return; }
    r->status = bad ? 400 : 202;
    if (bad) bp_buf_printf(&r->body, "{\"error\":{\"code\":\"INVALID_EVENTS\",\"message\":\"%ld of %ld events were "
                           "rejected; the others were accepted\"},", bad, index);
    else bp_buf_addc(&r->body, '{');
    bp_buf_printf(&r->body, "\"accepted\":%ld,\"duplicates\":%ld,\"errors\":[", accepted, duplicates);
    if (errors.len) bp_buf_add(&r->body, errors.data, errors.len);
    bp_buf_adds(&r->body, "]}");
    bp_buf_free(&errors);
}

typedef struct rows { bp_buf *out; int n; } rows;

/* {"event": <as received>, "outcome": <the line>} */
static void write_row(void *ctx, const bp_store_row *row)
{
    rows *w = ctx;
    bp_buf *b = w->out;
    if (w->n++) bp_buf_addc(b, ',');
    bp_buf_adds(b, "{\"event\":");
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (row->body && bp_json_parse(&d, row->body, strlen(row->body), NULL, &err) == 0) bp_json_write_node(b, &d, 0);
    else if (row->body) bp_json_write_string(b, row->body, strlen(row->body));
    else bp_buf_adds(b, "null");
    bp_doc_free(&d);
    bp_buf_adds(b, ",\"outcome\":");
    bp_buf_adds(b, row->outcome ? row->outcome : "null");
    bp_buf_printf(b, ",\"updated_at\":%lld}", (long long)row->updated_at);
}

static const char *state_of(const char *outcome)
{
    static const char *const map[][2] = {
        { "delivered", "delivered" }, { "drop", "dropped" }, { "dropped", "dropped" }, { "error", "error" },
        { "dead_letter", "dead" }, { "held", "held" },
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) if (!strcmp(outcome, map[i][0])) return map[i][1];
    return NULL;
}

static void live_events(server *s, bp_integration *it, struct MHD_Connection *c, reply *r)
{
    (void)s;
    const char *lim = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
    const char *outcome = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "outcome");
    int limit = lim ? atoi(lim) : 50;
    if (limit < 1 || limit > 1000) { set_error(r, 400, "BAD_REQUEST", "limit must be between 1 and 1000"); return; }
    const char *state = outcome ? state_of(outcome) : NULL;
    if (outcome && !state) {
        set_error(r, 400, "BAD_REQUEST", "outcome must be delivered, drop, error, dead_letter or held");
        return;
    }
    bp_error err;
    bp_store *st = bp_store_open(it->state_dir, &err);
    if (!st) { set_error(r, 500, "INTERNAL", "%s", err.msg); return; }
    bp_buf_printf(&r->body, "{\"integration_id\":\"%s\",\"events\":[", it->id);
    rows w = { &r->body, 0 };
    bp_store_recent(st, state, limit, write_row, &w);
    bp_buf_adds(&r->body, "]}");
    bp_store_close(st);
}

static void dead_letters(bp_integration *it, reply *r)
{
    bp_error err;
    bp_store *st = bp_store_open(it->state_dir, &err);
    if (!st) { set_error(r, 500, "INTERNAL", "%s", err.msg); return; }
    bp_buf_printf(&r->body, "{\"integration_id\":\"%s\",\"dead_letters\":[", it->id);
    rows w = { &r->body, 0 };
    bp_store_each(st, "dead", write_row, &w);
    bp_buf_adds(&r->body, "]}");
    bp_store_close(st);
}

static void replay(bp_integration *it, const conn *c, reply *r)
{
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(c, &d, r) < 0) { bp_doc_free(&d); return; }
    bp_error err;
    bp_store *st = bp_store_open(it->state_dir, &err);
    if (!st) { set_error(r, 500, "INTERNAL", "%s", err.msg); bp_doc_free(&d); return; }
    long n = 0;
    uint32_t all = bp_jget(&d, 0, "all"), ids = bp_jget(&d, 0, "ids");
    if (all != BP_NONE && d.nodes[all].type == BP_JTRUE) {
        n = bp_store_move(st, "dead", "pending", 0);
    } else if (ids != BP_NONE && d.nodes[ids].type == BP_JARRAY) {
        for (uint32_t k = ids + 1, i = 0; i < d.nodes[ids].len; i++, k = d.nodes[k].next) {
            const char *v = bp_jscalar(&d, k);
            long m = v ? bp_store_move(st, "dead", "pending", atoll(v)) : 0;
            n += m > 0 ? m : 0;
        }
    } else {
        set_error(r, 400, "BAD_REQUEST", "give {\"ids\":[…]} or {\"all\":true}");
    }
    if (r->status != 400) bp_buf_printf(&r->body, "{\"replayed\":%ld}", n);
    bp_store_close(st);
    bp_doc_free(&d);
}

static void metrics(server *s, reply *r)
{
    bp_registry *reg = s->reg;
    long retries = 0, depth = 0;
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; i < reg->n; i++) retries += reg->items[i]->stats.retries;
    char **dirs = calloc(reg->n + 1, sizeof *dirs);
    size_t n = reg->n;
    for (size_t i = 0; i < n; i++) dirs[i] = strdup(reg->items[i]->state_dir);
    bp_metrics m = reg->metrics;
    pthread_mutex_unlock(&reg->mu);
    for (size_t i = 0; i < n; i++) {
        bp_error err;
        bp_store *st = bp_store_open(dirs[i], &err);
        if (st) { long p = bp_store_count(st, "pending"); depth += p > 0 ? p : 0; bp_store_close(st); }
        free(dirs[i]);
    }
    free(dirs);
    r->ctype = "text/plain; version=0.0.4";
    bp_metrics_write(&m, retries, depth, &r->body);
}

/* ---- Live Events stream (Server-Sent Events) -------------------------------------------------- */

typedef struct stream {
    server *s;
    bp_integration *it;
    uint64_t next;
    bp_buf pending;
    size_t sent;
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream *st = cls;
    if (st->sent == st->pending.len) {
        bp_buf_reset(&st->pending);
        st->sent = 0;
        bp_registry *reg = st->s->reg;
        pthread_mutex_lock(&reg->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 15;
        while (!reg->stopping && !st->it->deleted && st->next == st->it->live_seq)
            if (pthread_cond_timedwait(&reg->live_cond, &reg->mu, &until) != 0) break;
        if (reg->stopping || st->it->deleted) { pthread_mutex_unlock(&reg->mu); return MHD_CONTENT_READER_END_OF_STREAM; }
        if (st->it->live_seq > st->next + BP_LIVE_RING) st->next = st->it->live_seq - BP_LIVE_RING;
        for (; st->next < st->it->live_seq; st->next++) {
            const char *line = st->it->live[st->next % BP_LIVE_RING];
            bp_buf_printf(&st->pending, "event: outcome\ndata: %s\n\n", line ? line : "{}");
        }
        pthread_mutex_unlock(&reg->mu);
        if (!st->pending.len) bp_buf_adds(&st->pending, ": keep-alive\n\n");
    }
    size_t n = st->pending.len - st->sent < max ? st->pending.len - st->sent : max;
    memcpy(buf, st->pending.data + st->sent, n);
    st->sent += n;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream *st = cls;
    bp_buf_free(&st->pending);
    free(st);
}

/* ---- routing ------------------------------------------------------------------------------------ */

/* Split "/a/b/c" into up to 8 parts. */
static int split(const char *url, char parts[8][128])
{
    int n = 0;
    const char *p = url;
    while (*p && n < 8) {
        while (*p == '/') p++;
        if (!*p) break;
        size_t len = strcspn(p, "/");
        snprintf(parts[n++], 128, "%.*s", (int)(len < 127 ? len : 127), p);
        p += len;
    }
    return n;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, reply *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(r->body.len, r->body.data ? r->body.data : (void *)"",
                                                                MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", r->ctype);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void log_request(const char *method, const char *url, int status, double started)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"method\":");
    bp_json_write_string(&f, method, strlen(method));
    bp_buf_adds(&f, ",\"path\":");
    bp_json_write_string(&f, url, strlen(url));   /* paths carry ids only, never secrets */
    bp_buf_printf(&f, ",\"status\":%d,\"duration_ms\":%.1f", status, bp_monotonic_ms() - started);
    bp_log("info", "request", f.data);
    bp_buf_free(&f);
}

static enum MHD_Result route(server *s, struct MHD_Connection *c, const char *method, const char *url, conn *cn)
{
    reply r = { 200, { 0 }, "application/json" };
    bp_buf_init(&r.body);
    char p[8][128];
    int n = split(url, p);
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    int patch = !strcmp(method, "PATCH"), del = !strcmp(method, "DELETE");
    if (n == 1 && !strcmp(p[0], "healthz") && get) {
        bp_buf_adds(&r.body, "{\"status\":\"ok\"}");
    } else if (n == 1 && !strcmp(p[0], "metrics") && get) {
        metrics(s, &r);
    } else if (n >= 2 && !strcmp(p[0], "v1") && !strcmp(p[1], "admin")) {
        int write = !get;
        if (authorize(s, c, write ? WRITE : READ, &r) < 0) goto done;
        if (n == 3 && !strcmp(p[2], "integration-catalog") && get) catalog(s, NULL, &r);
        else if (n == 4 && !strcmp(p[2], "integration-catalog") && get) catalog(s, p[3], &r);
        else if (n == 5 && !strcmp(p[2], "integration-catalog") && !strcmp(p[4], "install") && post) install(s, p[3], cn, &r);
        else if (n == 3 && !strcmp(p[2], "integrations") && get) list_integrations(s, &r);
        else if (n >= 4 && !strcmp(p[2], "integrations")) {
            bp_integration *it = find(s, p[3], &r);
            if (!it) goto done;
            if (n == 4 && get) { pthread_mutex_lock(&s->reg->mu); write_integration(&r.body, it); pthread_mutex_unlock(&s->reg->mu); }
            else if (n == 4 && patch) {
                bp_doc d;
                bp_doc_init(&d);
                if (parse_body(cn, &d, &r) == 0) {
                    int http;
                    bp_error err;
                    if (bp_registry_update(s->reg, it, &d, &http, &err) < 0)
                        set_error(&r, http, http == 422 ? "INVALID_CONFIG" : "INTERNAL", "%s", err.msg);
                    else { pthread_mutex_lock(&s->reg->mu); write_integration(&r.body, it); pthread_mutex_unlock(&s->reg->mu); }
                }
                bp_doc_free(&d);
            } else if (n == 4 && del) {
                bp_registry_delete(s->reg, it);
                r.status = 204;
            } else if (n == 5 && !strcmp(p[4], "revisions") && get) {
                bp_buf_printf(&r.body, "{\"integration_id\":\"%s\",\"revisions\":", it->id);
                bp_registry_revisions(s->reg, it, &r.body);
                bp_buf_addc(&r.body, '}');
            } else if (n == 5 && !strcmp(p[4], "live-events") && get) live_events(s, it, c, &r);
            else if (n == 6 && !strcmp(p[4], "live-events") && !strcmp(p[5], "stream") && get) {
                stream *st = calloc(1, sizeof *st);
                st->s = s;
                st->it = it;
                pthread_mutex_lock(&s->reg->mu);
                st->next = it->live_seq;
                pthread_mutex_unlock(&s->reg->mu);
                bp_buf_init(&st->pending);
                bp_buf_adds(&st->pending, ": live events; one 'outcome' event per judged event\n\n");
                struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
                MHD_add_response_header(resp, "Content-Type", "text/event-stream");
                MHD_add_response_header(resp, "Cache-Control", "no-store");
                enum MHD_Result ret = MHD_queue_response(c, 200, resp);
                MHD_destroy_response(resp);
                log_request(method, url, 200, cn->started);
                bp_buf_free(&r.body);
                return ret;
            } else if (n == 5 && !strcmp(p[4], "dead-letters") && get) dead_letters(it, &r);
            else if (n == 6 && !strcmp(p[4], "dead-letters") && !strcmp(p[5], "replay") && post) replay(it, cn, &r);
            else set_error(&r, 404, "NOT_FOUND", "no such endpoint: %s %s", method, url);
        } else set_error(&r, 404, "NOT_FOUND", "no such endpoint: %s %s", method, url);
    } else if (n == 4 && !strcmp(p[0], "v1") && !strcmp(p[1], "integrations") && !strcmp(p[3], "events") && post) {
        if (authorize(s, c, WRITE, &r) < 0) goto done;
        bp_integration *it = find(s, p[2], &r);
        if (it) intake(s, it, cn, &r);
    } else {
        set_error(&r, 404, "NOT_FOUND", "no such endpoint: %s %s", method, url);
    }
done:
    log_request(method, url, r.status, cn->started);
    enum MHD_Result ret = send_reply(c, &r);
    bp_buf_free(&r.body);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    conn *cn = *con_cls;
    if (!cn) {
        cn = calloc(1, sizeof *cn);
        bp_buf_init(&cn->body);
        cn->started = bp_monotonic_ms();
        *con_cls = cn;
        return MHD_YES;
    }
    if (*upload_size) {
        if (cn->body.len + *upload_size > MAX_BODY) cn->too_large = 1;
        else bp_buf_add(&cn->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return route(cls, c, method, url, cn);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls; (void)c; (void)toe;
    conn *cn = *con_cls;
    if (cn) { bp_buf_free(&cn->body); free(cn); }
    *con_cls = NULL;
}

int bp_serve(const bp_serve_opts *o, bp_error *err)
{
    server s;
    memset(&s, 0, sizeof s);
    if (bp_jwt_secret(o->state_dir, s.secret, sizeof s.secret, err) < 0) return -1;
    if (!(s.reg = bp_registry_open(o->blueprints_dir, o->state_dir, err))) return -1;
    s.reg->rate_limit_rps = o->rate_limit_rps;
    s.reg->retry_base_ms = o->retry_base_ms;

    /* SIGTERM/SIGINT are taken with sigwait below, so block them in every thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &addr.sin_addr) != 1) {
        bp_error_set(err, "--listen: '%s' is not an IPv4 address", o->host);
        bp_registry_close(s.reg);
        return -1;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request, &s,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT, 512u, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
    if (!d) {
        bp_error_set(err, "cannot listen on %s:%d (in use?)", o->host, o->port);
        bp_registry_close(s.reg);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = info ? info->port : o->port;
    bp_registry_start(s.reg);
    printf("listening on http://%s:%d\n", o->host, port);
    fflush(stdout);
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_printf(&f, "\"address\":\"%s:%d\",\"blueprints\":", o->host, port);
    bp_json_write_string(&f, o->blueprints_dir, strlen(o->blueprints_dir));
    bp_buf_adds(&f, ",\"state\":");
    bp_json_write_string(&f, o->state_dir, strlen(o->state_dir));
    bp_buf_printf(&f, ",\"integrations\":%zu", s.reg->n);
    bp_log("info", "serving", f.data);
    bp_buf_free(&f);

    /* main thread: watch blueprints for changes until a signal arrives */
    struct timespec tick = { 0, 300 * 1000 * 1000 };
    for (;;) {
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) break;
        bp_registry_check_reload(s.reg);
    }
    bp_log("info", "shutting down: finishing requests in flight; pending events stay stored", NULL);
    pthread_mutex_lock(&s.reg->mu);
    s.reg->stopping = 1;
    pthread_cond_broadcast(&s.reg->live_cond);
    pthread_mutex_unlock(&s.reg->mu);
    MHD_stop_daemon(d);
    bp_registry_close(s.reg);
    bp_log("info", "stopped", NULL);
    return 0;
}
