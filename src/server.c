/*
 * server.c — `blueprint serve`: the Management API, event intake, Live
 * Events and operations endpoints over libmicrohttpd (DESIGN.md §8).
 *
 * A small pool of HTTP threads, each running epoll over its share of the
 * connections: an idle or slow client costs a descriptor, never a thread,
 * and cannot starve the others (connection timeout, per-IP cap).  Handlers
 * never wait for a vendor: changes go to the delivery pool as messages.
 * The Live Events stream parks its connection (suspend) between outcomes
 * and is resumed when one arrives.  Blueprint code sent by an editor
 * (dry-runs, fixture runs, save checks) runs in a small pool of its own,
 * never on an HTTP thread.  The route, token and role are checked from the
 * headers, before any body byte is read; every body is checked against its
 * route's size limit before anything is applied (413); and a request must
 * arrive within a total time (request_limit).  Every response
 * body is JSON ({"error":{"code","message"}} on errors) and never contains
 * a secret; every request is logged as one JSON line.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_INTAKE_BODY (512u * 1024u)
#define MAX_ADMIN_BODY (64u * 1024u)
#define MAX_SIGNIN_BODY (16u * 1024u)   /* the one body taken without a token: {"token":…} */
#define MAX_INTAKE_EVENTS 500
#define STREAM_KEEPALIVE_MS 15000
#define SESSION_TTL (8 * 3600)     /* the console's session token, seconds */
#define CODEMIRROR_DIR "/usr/share/javascript/codemirror"   /* Debian's libjs-codemirror */
/* The console's pages: scripts, styles and requests from this origin only,
 * nothing inline (event data is attacker-controlled), no framing. */
#define CONSOLE_CSP "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
                    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

typedef struct stream stream;
typedef struct verify_job verify_job;
typedef struct conn conn;
typedef struct tracked tracked;

/* The editor's pool: blueprint code sent by an editor runs here, off the
 * HTTP threads, one job per worker; at most max_waiting more wait their
 * turn, and beyond that the request is answered 503 EDITOR_BUSY. */
typedef struct editor_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    conn *head, *tail;            /* [mu] jobs waiting for a worker */
    int waiting, max_waiting;     /* [mu] */
    int stopping;                 /* [mu] */
    pthread_t *threads;
    int nthreads;
} editor_pool;

typedef struct server {
    bp_registry *reg;
    char secret[200];
    bp_jwt_expect expect;         /* iss / aud a token must carry, when configured */
    char console_dir[4096];       /* the web console's files */
    pthread_mutex_t streams_mu;   /* guards streams and each stream's parked flag */
    stream *streams;
    int stopping;                 /* [streams_mu] */
    int verifying;                /* [streams_mu] install/update checks in flight (verify_job) */
    editor_pool pool;
    pthread_mutex_t conns_mu;     /* guards conns and every tracked entry */
    tracked *conns;               /* [conns_mu] every open connection */
    double request_limit_ms;      /* fixed: the total time a request may take to arrive */
} server;

typedef struct reply {
    int status;
    bp_buf body;
    const char *ctype;
    const char *allow;            /* for 405 */
    int console;                  /* a console file: its security headers */
    int retry_after;              /* seconds, for a 503 the client should retry; 0 none */
} reply;

typedef struct route_def route_def;

/* One request.  A request for the editor's pool is its job too: the worker
 * answers into `answer`, then resumes the connection. */
struct conn {
    bp_buf body;
    size_t limit;                 /* the route's body limit */
    int too_large;
    double started;
    const route_def *rt;          /* set on the first call, from the headers */
    char capture[1100];           /* what the route's :id, :vendor or "*" matched */
    bp_claims who;                /* the token's, on authorized routes */
    struct MHD_Connection *c;
    conn *next_job;               /* [pool.mu] */
    int queued;                   /* handed to the editor's pool (the connection is suspended) */
    int finished;                 /* [pool.mu] the pool has answered */
    reply answer;                 /* the pool's answer, read once finished */
    verify_job *job;              /* an install/update answer waiting for its checks, or NULL */
};

static void set_error(reply *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* {"error":{"code","message"…}}; extra: more members (",\"file\":…"), or NULL. */
static void write_error(reply *r, int status, const char *code, const char *msg, const char *extra)
{
    r->status = status;
    bp_buf_reset(&r->body);
    bp_buf_printf(&r->body, "{\"error\":{\"code\":\"%s\",\"message\":", code);
    bp_json_write_text(&r->body, msg, strlen(msg));
    if (extra) bp_buf_adds(&r->body, extra);
    bp_buf_adds(&r->body, "}}");
}

static void set_error(reply *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    write_error(r, status, code, msg, NULL);
}

/* ---- auth ------------------------------------------------------------------------ */

enum need { READ, WRITE };

static int is_writer(const char *role) { return !strcmp(role, "owner") || !strcmp(role, "admin") || !strcmp(role, "editor"); }
static int is_reader(const char *role) { return is_writer(role) || !strcmp(role, "viewer"); }

/* 0 when the request may go on (who: the token's subject and role);
 * otherwise r holds the 401/403. */
static int authorize(server *s, struct MHD_Connection *c, enum need need, bp_claims *who, reply *r)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        set_error(r, 401, "INVALID_TOKEN", "missing bearer token (Authorization: Bearer <token>; mint one with "
                  "`blueprint token --role admin`)");
        return -1;
    }
    bp_error err;
    if (bp_jwt_verify(s->secret, h + 7, (int64_t)(bp_wall_ms() / 1000), &s->expect, who, &err) < 0) {
        set_error(r, 401, "INVALID_TOKEN", "%s", err.msg);
        return -1;
    }
    /* a sign-in link's token is for POST /v1/console/session only: one seen
     * in a terminal or a browser's history must not be an API token */
    if (who->use[0]) {
        set_error(r, 401, "INVALID_TOKEN", "a sign-in token is not an API token: the console exchanges it once at "
                  "POST /v1/console/session for a session token");
        return -1;
    }
    if (who->jti[0] && bp_registry_jti_spent(s->reg, who->jti)) {
        set_error(r, 401, "INVALID_TOKEN", "this session was signed out: sign in again");
        return -1;
    }
    const char *role = who->role;
    if (!is_reader(role) || (need == WRITE && !is_writer(role))) {
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

static void write_vendor(bp_buf *b, const bp_vendor *v, int full)
{
    const bp_blueprint *bp = v->bp ? v->bp->bp : NULL;
    bp_buf_addc(b, '{');
    write_str(b, "vendor", v->key, 0);
    if (bp) {
        write_str(b, "name", bp->name, 1);
        write_str(b, "description", bp->description, 1);
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
            write_str(b, "type", bp_field_type_name(f->type), 1);
            bp_buf_printf(b, ",\"required\":%s", f->required ? "true" : "false");
            write_str(b, "default", f->default_value, 1);
            write_str(b, "help", f->help, 1);
            bp_buf_addc(b, '}');
        }
        /* config_rules: {"together": [[keys…]]}: fields set all together or not at all */
        bp_buf_adds(b, "],\"config_rules\":{\"together\":[");
        for (size_t g = 0; g < bp->ntogether; g++) {
            bp_buf_adds(b, g ? ",[" : "[");
            for (char **k = bp->together[g]; *k; k++) {
                if (k != bp->together[g]) bp_buf_addc(b, ',');
                bp_json_write_string(b, *k, strlen(*k));
            }
            bp_buf_addc(b, ']');
        }
        bp_buf_adds(b, "]}");
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

/* ,"blueprint":{…}: the revision running and the one on disk; when the
 * files on disk were rejected, why, and that the previous one still runs.
 * Registry mu held. */
static void write_blueprint_state(bp_buf *b, const bp_vendor *v)
{
    const char *running = v->bp && v->bp->revision[0] ? v->bp->revision : NULL;
    bp_buf_adds(b, ",\"blueprint\":{\"running\":");
    if (running) bp_json_write_string(b, running, strlen(running)); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"on_disk\":");
    if (v->disk_revision[0]) bp_json_write_string(b, v->disk_revision, strlen(v->disk_revision));
    else bp_buf_adds(b, "null");
    if (!v->load_error) { bp_buf_adds(b, ",\"status\":\"current\"}"); return; }
    bp_buf_adds(b, ",\"status\":\"rejected\",\"error\":");
    bp_json_write_string(b, v->load_error, strlen(v->load_error));
    if (running)
        bp_buf_printf(b, ",\"note\":\"the files on disk (revision %s) were rejected; the previous version (revision %s) "
                      "keeps running until they are fixed\"}", v->disk_revision, running);
    else
        bp_buf_adds(b, ",\"note\":\"the blueprint failed to load; nothing runs until it is fixed\"}");
}

/* The state the API shows: a blueprint that never loaded outranks what the
 * loop last said (the loop never got the integration).  Registry mu held. */
static int health_state(const bp_integration *it)
{
    return it->vendor->bp ? it->health.state : BP_HEALTH_BLUEPRINT_ERROR;
}

/* The health with its reason: the load error when nothing loaded.  Registry mu held. */
static bp_health health_of(const bp_integration *it)
{
    bp_health h = it->health;
    if (health_state(it) != h.state) {
        h.state = BP_HEALTH_BLUEPRINT_ERROR;
        h.until_ms = 0;
        h.status = 0;
        snprintf(h.reason, sizeof h.reason, "the blueprint failed to load: %s",
                 it->vendor->load_error ? it->vendor->load_error : "no version of it loaded");
    }
    return h;
}

/* ,"health":{"state","reason","since","until","vendor_status","vendor_answer"}:
 * times in ms since the epoch like created_at (since: null when it has been
 * so since the server started; until: backing_off's next attempt, else
 * null); the vendor's status and the head of its answer when one made it so
 * (else null).  The texts come from the vendor: written as text (any bad
 * UTF-8 replaced).  Registry mu held. */
static void write_health(bp_buf *b, const bp_integration *it)
{
    bp_health h = health_of(it);
    bp_buf_printf(b, ",\"health\":{\"state\":\"%s\",\"reason\":", bp_health_names[h.state]);
    bp_json_write_text(b, h.reason, strlen(h.reason));
    if (h.status) {
        bp_buf_printf(b, ",\"vendor_status\":%d,\"vendor_answer\":", h.status);
        bp_json_write_text(b, h.answer, strlen(h.answer));
    } else {
        bp_buf_adds(b, ",\"vendor_status\":null,\"vendor_answer\":null");
    }
    if (h.since_ms) bp_buf_printf(b, ",\"since\":%lld", (long long)h.since_ms);
    else bp_buf_adds(b, ",\"since\":null");
    if (h.until_ms) bp_buf_printf(b, ",\"until\":%lld}", (long long)h.until_ms);
    else bp_buf_adds(b, ",\"until\":null}");
}

/* ,"delivery":{…}: the counts since the server started (counted_since) and
 * those of the last hour (last_hour).  Registry mu held. */
static void write_delivery(bp_buf *b, const bp_integration *it, int running)
{
    const bp_counts *st = &it->stats;
    bp_buf_printf(b, ",\"delivery\":{\"running\":%s,\"delivered\":%ld,\"dropped\":%ld,\"errors\":%ld,"
                  "\"dead_lettered\":%ld,\"held\":%ld,\"retries\":%ld,\"counted_since\":%lld",
                  running ? "true" : "false",
                  __atomic_load_n(&st->delivered, __ATOMIC_RELAXED), __atomic_load_n(&st->dropped, __ATOMIC_RELAXED),
                  __atomic_load_n(&st->errors, __ATOMIC_RELAXED), __atomic_load_n(&st->dead, __ATOMIC_RELAXED),
                  __atomic_load_n(&st->held, __ATOMIC_RELAXED), __atomic_load_n(&st->retries, __ATOMIC_RELAXED),
                  (long long)it->registry->started_ms);
    long hour[BP_RECENT_ENDS];
    bp_recent_sum(it->recent, (int64_t)bp_wall_ms(), hour);
    bp_buf_printf(b, ",\"last_hour\":{\"delivered\":%ld,\"dropped\":%ld,\"errors\":%ld,\"dead_lettered\":%ld,"
                  "\"held\":%ld}}", hour[BP_END_DELIVERED], hour[BP_END_DROPPED], hour[BP_END_ERROR], hour[BP_END_DEAD],
                  hour[BP_END_HELD]);
}

/* The integration as the API shows it: secrets masked.  Registry mu held. */
static void write_integration(bp_buf *b, const bp_integration *it)
{
    bp_buf_addc(b, '{');
    write_str(b, "id", it->id, 0);
    write_str(b, "name", it->name, 1);
    write_str(b, "vendor", it->vendor->key, 1);
    write_str(b, "variant", it->variant, 1);
    write_str(b, "delivery_mode", it->delivery_mode, 1);
    bp_buf_printf(b, ",\"revision\":%d,\"created_at\":%lld,\"config\":", it->revision, (long long)it->created_at);
    const bp_blueprint *bp = it->vendor->bp ? it->vendor->bp->bp : NULL;
    bp_write_masked_config(b, bp, it->config_json);
    /* the effective event table: blueprint defaults with this config's overrides */
    bp_buf_adds(b, ",\"events\":{");
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
    write_health(b, it);
    write_delivery(b, it, bp && it->cfg && it->registry->pool);
    write_blueprint_state(b, it->vendor);
    bp_buf_addc(b, '}');
}

/* ---- handlers --------------------------------------------------------------------------- */

/* Handlers get the route's parts; an integration route gets the integration
 * (with a reference held until the reply is sent). */
typedef struct call {
    server *s;
    struct MHD_Connection *c;
    conn *cn;
    bp_integration *it;
    const char *vendor;
    const char *rest;             /* what a pattern's "*" matched */
    reply *r;
    bp_claims who;                /* the token's, on authorized routes */
} call;

/* An admin call's body: one JSON object within the admin limits. */
int bp_admin_body(const char *body, size_t len, bp_doc *d, bp_error *err)
{
    bp_json_limits lim = { MAX_ADMIN_BODY, 64 };
    return bp_json_body(body, len, &lim, d, err);
}

int bp_json_body(const char *body, size_t len, const bp_json_limits *lim, bp_doc *d, bp_error *err)
{
    if (bp_json_parse(d, body ? body : "", len, lim, err) < 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "malformed JSON body: %s", why);
        return -1;
    }
    if (d->nodes[0].type != BP_JOBJECT) { bp_error_set(err, "the body must be a JSON object"); return -1; }
    return 0;
}

static int parse_body(const conn *c, bp_doc *d, reply *r)
{
    bp_error err;
    if (bp_admin_body(c->body.data, c->body.len, d, &err) < 0) { set_error(r, 400, "BAD_REQUEST", "%s", err.msg); return -1; }
    return 0;
}

static void healthz(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_store_status h;
    bp_store_health(reg->store, &h);
    bp_buf kafka;
    bp_buf_init(&kafka);
    int kafka_up = reg->cluster ? bp_cluster_health(reg->cluster, &kafka) : 1;
    bp_buf *b = &k->r->body;
    int ok = !h.failing && kafka_up;
    if (!ok) k->r->status = 503;
    bp_buf_printf(b, "{\"status\":\"%s\",\"store\":", ok ? "ok" : "unhealthy");
    if (h.failing) {
        bp_buf_adds(b, "{\"ok\":false,\"error\":");
        bp_json_write_text(b, h.last_error, strlen(h.last_error));
        bp_buf_printf(b, ",\"failures\":%ld,\"help\":\"the state store refuses writes (disk full? permissions?): "
                      "intake answers 503 and delivery progress is kept in memory and retried\"}", h.failures);
    } else {
        bp_buf_printf(b, "{\"ok\":true,\"failures\":%ld}", h.failures);
    }
    if (reg->cluster) { bp_buf_adds(b, ",\"kafka\":"); bp_buf_add(b, kafka.data, kafka.len); }
    bp_buf_addc(b, '}');
    bp_buf_free(&kafka);
}

/* The error code for a registry failure's status. */
static const char *change_error_code(int http, const bp_error *err)
{
    if (http == 503) return strncmp(err->msg, "the cluster", 11) == 0 ? "CLUSTER_UNAVAILABLE" : "BLUEPRINT_UNAVAILABLE";
    return http == 404 ? "NOT_FOUND" : http == 409 ? "CONFLICT" : http == 422 ? "INVALID_CONFIG" : "INTERNAL";
}

/* A failed install or update; a 422 names the config field the message is
 * about ("config field 'api_url' …" → "field":"config.api_url"), and a 409
 * on a name taken names "name", for a form to show it next to that field. */
static void change_failed(reply *r, int http, const bp_error *err)
{
    const char *at = http == 422 ? strstr(err->msg, "config field '") : NULL;
    size_t n = at ? strcspn(at + 14, "'") : 0;
    bp_buf extra, field;
    bp_buf_init(&extra);
    bp_buf_init(&field);
    if (http == 409 && !strncmp(err->msg, "an integration named '", 22)) {
        bp_buf_adds(&extra, ",\"field\":\"name\"");
    } else if (at && n && at[14 + n] == '\'') {
        bp_buf_printf(&field, "config.%.*s", (int)n, at + 14);
        bp_buf_adds(&extra, ",\"field\":");
        bp_json_write_text(&extra, field.data, field.len);
    }
    write_error(r, http, change_error_code(http, err), err->msg, extra.data);
    bp_buf_free(&extra);
    bp_buf_free(&field);
}

static void catalog(call *k)
{
    bp_registry *reg = k->s->reg;
    pthread_mutex_lock(&reg->mu);
    bp_buf_adds(&k->r->body, "{\"integrations\":[");
    for (size_t i = 0; i < reg->nvendors; i++) {
        if (i) bp_buf_addc(&k->r->body, ',');
        write_vendor(&k->r->body, &reg->vendors[i], 0);
    }
    bp_buf_adds(&k->r->body, "]}");
    pthread_mutex_unlock(&reg->mu);
}

static void catalog_vendor(call *k)
{
    bp_registry *reg = k->s->reg;
    pthread_mutex_lock(&reg->mu);
    bp_vendor *v = bp_registry_vendor(reg, k->vendor);
    if (!v) set_error(k->r, 404, "NOT_FOUND", "no blueprint for vendor '%s' in %s", k->vendor, reg->blueprints_dir);
    else write_vendor(&k->r->body, v, 1);
    pthread_mutex_unlock(&reg->mu);
}

/* ---- install and update: the blueprint's checks ----------------------------------------- */

/* After an install or an update, what the blueprint's verify: mapping asks
 * is sent to the vendor (verify.c: a wrong key, a switched-off feature, an
 * unreachable vendor) and the answer carries the result as "checks".
 * Handlers never wait for a vendor: the connection is parked
 * (MHD_suspend_connection) while a short-lived thread sends the checks,
 * then resumed with the answer.  The change is made either way. */
#define VERIFY_TIMEOUT_MS 4000

static enum MHD_Result send_reply(struct MHD_Connection *c, reply *r);
static void log_request(const char *method, const char *url, int status, double started);

struct verify_job {
    server *s;
    struct MHD_Connection *c;
    char id[40];                  /* the integration */
    reply r;                      /* the answer, "checks" added when they are known */
    int started;
    double began;
};

/* Called by a handler whose change succeeded: the answer in k->r waits for
 * the checks when the blueprint has a verify: mapping. */
static void defer_for_checks(call *k, bp_integration *it)
{
    bp_registry *reg = k->s->reg;
    pthread_mutex_lock(&reg->mu);
    int has = it->vendor->bp && it->vendor->bp->bp->has_verify;
    pthread_mutex_unlock(&reg->mu);
    if (!has || k->cn->job) return;
    verify_job *j = calloc(1, sizeof *j);
    if (!j) return;   /* answered without checks */
    j->s = k->s;
    j->c = k->c;
    snprintf(j->id, sizeof j->id, "%s", it->id);
    j->r = *k->r;                 /* takes the body over */
    bp_buf_init(&k->r->body);
    j->began = k->cn->started;
    k->cn->job = j;
}

static void *verify_thread(void *arg)
{
    verify_job *j = arg;
    bp_buf checks;
    bp_buf_init(&checks);
    bp_integration *it = bp_registry_find(j->s->reg, j->id);
    if (it && bp_integration_verify(it, VERIFY_TIMEOUT_MS, &checks) == 0 && j->r.body.len &&
        j->r.body.data[j->r.body.len - 1] == '}') {
        j->r.body.len--;          /* the integration object, reopened */
        bp_buf_adds(&j->r.body, ",\"checks\":");
        bp_buf_add(&j->r.body, checks.data, checks.len);
        bp_buf_addc(&j->r.body, '}');
    }
    bp_integration_release(it);
    bp_buf_free(&checks);
    pthread_mutex_lock(&j->s->streams_mu);
    j->started = 2;               /* done: on_request sends it */
    MHD_resume_connection(j->c);
    pthread_mutex_unlock(&j->s->streams_mu);
    return NULL;
}

/* In respond(), after the handler: park the connection and start the
 * checks.  0 when there is nothing to wait for (then answer now). */
static int start_checks(conn *cn)
{
    verify_job *j = cn->job;
    if (!j || j->started) return 0;
    pthread_mutex_lock(&j->s->streams_mu);
    int stopping = j->s->stopping;
    j->s->verifying++;            /* until finish_checks or free_checks */
    j->started = 1;
    pthread_mutex_unlock(&j->s->streams_mu);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    MHD_suspend_connection(j->c);
    if (stopping || pthread_create(&t, &attr, verify_thread, j) != 0) {
        pthread_mutex_lock(&j->s->streams_mu);
        j->started = 2;           /* answered without checks */
        pthread_mutex_unlock(&j->s->streams_mu);
        MHD_resume_connection(j->c);
    }
    pthread_attr_destroy(&attr);
    return 1;
}

static void free_checks(conn *cn)
{
    verify_job *j = cn->job;
    cn->job = NULL;
    pthread_mutex_lock(&j->s->streams_mu);
    if (j->started) j->s->verifying--;
    pthread_mutex_unlock(&j->s->streams_mu);
    bp_buf_free(&j->r.body);
    free(j);
}

/* on_request after the resume: the answer, with its checks. */
static enum MHD_Result finish_checks(struct MHD_Connection *c, const char *method, const char *url, conn *cn)
{
    log_request(method, url, cn->job->r.status, cn->job->began);
    enum MHD_Result ret = send_reply(c, &cn->job->r);
    free_checks(cn);
    return ret;
}

static void install(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    pthread_mutex_lock(&reg->mu);
    bp_vendor *v = bp_registry_vendor(reg, k->vendor);
    int usable = v && v->bp;
    char why[1024] = "";
    if (v && !usable) snprintf(why, sizeof why, "%s", v->load_error ? v->load_error : "");
    pthread_mutex_unlock(&reg->mu);
    if (!v) { set_error(k->r, 404, "NOT_FOUND", "no blueprint for vendor '%s'", k->vendor); bp_doc_free(&d); return; }
    if (!usable) { set_error(k->r, 503, "BLUEPRINT_UNAVAILABLE", "the '%s' blueprint failed to load: %s", k->vendor, why); bp_doc_free(&d); return; }
    bp_integration *it;
    int http;
    bp_error err;
    if (bp_registry_install(reg, v, &d, &k->who, &it, &http, &err) < 0) {
        change_failed(k->r, http, &err);
    } else {
        k->r->status = 201;
        pthread_mutex_lock(&reg->mu);
        write_integration(&k->r->body, it);
        pthread_mutex_unlock(&reg->mu);
        defer_for_checks(k, it);
        bp_integration_release(it);
    }
    bp_doc_free(&d);
}

static void list_integrations(call *k)
{
    bp_registry *reg = k->s->reg;
    pthread_mutex_lock(&reg->mu);
    bp_buf_adds(&k->r->body, "{\"integrations\":[");
    for (size_t i = 0; i < reg->n; i++) {
        if (i) bp_buf_addc(&k->r->body, ',');
        write_integration(&k->r->body, reg->items[i]);
    }
    bp_buf_adds(&k->r->body, "]}");
    pthread_mutex_unlock(&reg->mu);
}

static void show_integration(call *k)
{
    pthread_mutex_lock(&k->s->reg->mu);
    write_integration(&k->r->body, k->it);
    pthread_mutex_unlock(&k->s->reg->mu);
}

static void update_integration(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(k->cn, &d, k->r) == 0) {
        int http;
        bp_error err;
        if (bp_registry_update(k->s->reg, k->it, &d, &k->who, &http, &err) < 0) {
            change_failed(k->r, http, &err);
        } else {
            show_integration(k);
            if (bp_jget(&d, 0, "config") != BP_NONE) defer_for_checks(k, k->it);   /* events alone change nothing to check */
        }
    }
    bp_doc_free(&d);
}

static void delete_integration(call *k)
{
    bp_error err;
    if (bp_registry_delete(k->s->reg, k->it, &k->who, &err) < 0)
        set_error(k->r, 503, change_error_code(503, &err), "%s", err.msg);
    else
        k->r->status = 204;
}

static void revisions(call *k)
{
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\",\"revisions\":", k->it->id);
    bp_registry_revisions(k->s->reg, k->it, &k->r->body);
    bp_buf_addc(&k->r->body, '}');
}

/* ---- events: intake, live events, dead letters ------------------------------------------- */

/* Each event of an intake body, judged: `why` is NULL for an event that
 * can be stored (a JSON object with a known type), else why it is
 * rejected.  fn may stop the walk by returning -1.  Returns the count. */
long bp_intake_each(const char *body, size_t len, bp_intake_fn fn, void *ctx)
{
    bp_reader *rd = bp_reader_new_mem(body ? body : "", len, BP_DEFAULT_MAX_EVENT_BYTES);
    bp_doc d;
    bp_doc_init(&d);
    const char *ev;
    size_t evlen;
    bp_error err;
    long index = 0;
    enum bp_read_status rs;
    while ((rs = bp_reader_next(rd, &ev, &evlen, &err)) != BP_READ_END) {
        const char *why = NULL, *mid = NULL;
        char msg[sizeof err.msg];
        if (index >= MAX_INTAKE_EVENTS) { why = "more than 500 events in one request"; }
        else if (rs == BP_READ_BAD) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (bp_json_parse(&d, ev, evlen, NULL, &err) < 0) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (d.nodes[0].type != BP_JOBJECT) why = "an event must be a JSON object";
        else {
            const char *type = bp_jscalar(&d, bp_jget(&d, 0, "type"));
            if (!bp_event_type_known(type)) why = "\"type\" must be page, track, identify, group or screen";
            mid = bp_event_message_id(&d);
        }
        if (fn(ctx, index, ev, evlen, why ? NULL : mid, why) < 0) break;
        index++;
    }
    bp_reader_free(rd);
    bp_doc_free(&d);
    return index;
}

typedef struct intake_run {
    call *k;
    bp_buf errors;
    long accepted, duplicates, bad;
    int ok;
    bp_buf *events;               /* cluster mode: the accepted events, a JSON array */
} intake_run;

static int intake_one(void *ctx, long index, const char *ev, size_t len, const char *message_id, const char *why)
{
    intake_run *w = ctx;
    if (why) {
        bp_buf_printf(&w->errors, "%s{\"index\":%ld,\"message\":", w->bad ? "," : "", index);
        bp_json_write_string(&w->errors, why, strlen(why));
        bp_buf_addc(&w->errors, '}');
        w->bad++;
        return 0;
    }
    if (w->events) {
        bp_buf_addc(w->events, w->accepted++ ? ',' : '[');
        bp_buf_add(w->events, ev, len);
        return 0;
    }
    int64_t id = bp_store_add(w->k->s->reg->store, w->k->it->id, ev, len, index, message_id, (int64_t)bp_wall_ms());
    if (id > 0) w->accepted++; else if (id == 0) w->duplicates++; else { w->ok = 0; return -1; }
    return 0;
}

/* The answer to an intake request once its events are durable. */
static void intake_reply(reply *r, intake_run *w, long index)
{
    if (index == 0) { set_error(r, 400, "BAD_REQUEST", "no events in the body (one JSON object, an array or NDJSON)"); return; }
    r->status = w->bad ? 400 : 202;
    /* says what happened to the others too: a resent file is all duplicates, not "accepted" */
    if (w->bad) bp_buf_printf(&r->body, "{\"error\":{\"code\":\"INVALID_EVENTS\",\"message\":\"%ld of %ld events were "
                              "rejected; %ld accepted, %ld duplicates (already received, not stored again)\"},",
                              w->bad, index, w->accepted, w->duplicates);
    else bp_buf_addc(&r->body, '{');
    bp_buf_printf(&r->body, "\"accepted\":%ld,\"duplicates\":%ld,\"errors\":[", w->accepted, w->duplicates);
    if (w->errors.len) bp_buf_add(&r->body, w->errors.data, w->errors.len);
    bp_buf_adds(&r->body, "]}");
}

/* The account key and vendor an integration's events are keyed and routed by. */
static void routing_of(bp_registry *reg, bp_integration *it, char *account, size_t n, char *vendor, size_t vn)
{
    pthread_mutex_lock(&reg->mu);
    const bp_shared_bp *sbp = it->vendor->bp;
    if (sbp && it->cfg) bp_account_key(sbp->bp, it->cfg, it->id, account, n);
    else snprintf(account, n, "integration %s", it->id);
    snprintf(vendor, vn, "%s", it->vendor->key);
    pthread_mutex_unlock(&reg->mu);
}

/* Cluster mode: the accepted events go to the delivery topic as one
 * message, 202 once the broker has it (duplicates are recognised at
 * delivery, by the node that owns the partition). */
static void intake_cluster(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_buf events;
    bp_buf_init(&events);
    intake_run w = { k, { 0 }, 0, 0, 0, 1, &events };
    bp_buf_init(&w.errors);
    long index = bp_intake_each(k->cn->body.data, k->cn->body.len, intake_one, &w);
    if (w.accepted) {
        bp_buf_addc(&events, ']');
        char account[600], vendor[128];
        routing_of(reg, k->it, account, sizeof account, vendor, sizeof vendor);
        bp_error err;
        if (bp_cluster_send_events(reg->cluster, k->it->id, vendor, account, events.data, events.len, 0, &err) < 0) {
            set_error(k->r, 503, "CLUSTER_UNAVAILABLE", "%s; nothing was accepted: retry later (GET /healthz shows the "
                      "brokers' state)", err.msg);
            bp_buf_free(&w.errors);
            bp_buf_free(&events);
            return;
        }
        pthread_mutex_lock(&reg->mu);
        reg->metrics.events_in += w.accepted;
        pthread_mutex_unlock(&reg->mu);
    }
    intake_reply(k->r, &w, index);
    bp_buf_free(&w.errors);
    bp_buf_free(&events);
}

static void intake(call *k)
{
    reply *r = k->r;
    bp_registry *reg = k->s->reg;
    if (reg->cluster) { intake_cluster(k); return; }
    intake_run w = { k, { 0 }, 0, 0, 0, 1, NULL };
    bp_buf_init(&w.errors);
    int began = bp_store_begin(reg->store) == 0;
    /* deleted while this request waited: its events would never be delivered
     * (the delete's purge may have run already) */
    pthread_mutex_lock(&reg->mu);
    int deleted = k->it->deleted;
    pthread_mutex_unlock(&reg->mu);
    if (began && deleted) {
        bp_store_rollback(reg->store);
        bp_buf_free(&w.errors);
        set_error(r, 404, "NOT_FOUND", "no integration with id '%s' (it was deleted)", k->it->id);
        return;
    }
    long index = began ? bp_intake_each(k->cn->body.data, k->cn->body.len, intake_one, &w) : 0;
    /* 202 only once the events are durable; a failed write accepts nothing */
    int committed = began && bp_store_commit(reg->store, w.ok) == 0;
    if (!committed) {
        bp_store_status h;
        bp_store_health(reg->store, &h);
        set_error(r, 503, "STORE_UNAVAILABLE", "could not store the events (%s); nothing was accepted: retry later "
                  "(GET /healthz shows the store's state)", h.last_error);
        bp_buf_free(&w.errors);
        return;
    }
    if (w.accepted) bp_pool_wake(reg->pool, k->it->id);
    pthread_mutex_lock(&reg->mu);
    reg->metrics.events_in += w.accepted;
    pthread_mutex_unlock(&reg->mu);
    intake_reply(r, &w, index);
    bp_buf_free(&w.errors);
}

typedef struct rows { bp_buf *out; int n; } rows;

/* {"event": <as received>, "outcome": <the line>, "state": …} */
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
    else if (row->body) bp_json_write_text(b, row->body, strlen(row->body));
    else bp_buf_adds(b, "null");
    bp_doc_free(&d);
    bp_buf_adds(b, ",\"outcome\":");
    bp_buf_adds(b, row->outcome ? row->outcome : "null");
    /* pending with an outcome line = waiting for its next attempt */
    bp_buf_adds(b, ",\"state\":");
    const char *state = row->state && !strcmp(row->state, "pending") ? "retrying" : row->state;
    if (state) bp_json_write_string(b, state, strlen(state)); else bp_buf_adds(b, "null");
    bp_buf_printf(b, ",\"updated_at\":%lld}", (long long)row->updated_at);
}

static const char *state_of(const char *outcome)
{
    int end = bp_end_of_label(outcome);
    return end < 0 ? NULL : bp_ends[end].state;
}

static void live_events(call *k)
{
    const char *lim = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, "limit");
    const char *outcome = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, "outcome");
    int limit = lim ? atoi(lim) : 50;
    if (limit < 1 || limit > 1000) { set_error(k->r, 400, "BAD_REQUEST", "limit must be between 1 and 1000"); return; }
    const char *state = outcome ? state_of(outcome) : NULL;
    if (outcome && !state) {
        set_error(k->r, 400, "BAD_REQUEST", "outcome must be delivered, drop, error, dead_letter, held or retrying");
        return;
    }
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\"", k->it->id);
    /* which blueprint judges its events now, and whether the files on disk
     * were rejected (the outcomes below name the revision that judged them) */
    pthread_mutex_lock(&k->s->reg->mu);
    write_blueprint_state(&k->r->body, k->it->vendor);
    pthread_mutex_unlock(&k->s->reg->mu);
    bp_buf_adds(&k->r->body, ",\"events\":[");
    rows w = { &k->r->body, 0 };
    if (bp_store_recent(k->s->reg->store, k->it->id, state, limit, write_row, &w) < 0) {
        set_error(k->r, 500, "INTERNAL", "could not read the state store");
        return;
    }
    bp_buf_adds(&k->r->body, "]}");
}

static void dead_letters(call *k)
{
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\",\"dead_letters\":[", k->it->id);
    rows w = { &k->r->body, 0 };
    if (bp_store_each(k->s->reg->store, k->it->id, "dead", write_row, &w) < 0) {
        set_error(k->r, 500, "INTERNAL", "could not read the state store");
        return;
    }
    bp_buf_adds(&k->r->body, "]}");
}

/* What a replay may re-queue: dead letters, and events whose outcome was
 * "error" (a mapping that failed, fixed since: they are mapped again). */
static const char *const replay_states[] = { "dead", "error" };

/* Cluster mode: the dead letters and errors chosen, as this node's store
 * has them (every node stores every node's final outcomes). */
typedef struct dead_pick {
    const bp_doc *d;
    uint32_t ids;                 /* BP_NONE: all */
    const char *from;             /* the state being read */
    bp_buf events;                /* their bodies, a JSON array */
    bp_store_row *rows;           /* copies: id, source, body, outcome; state = where it was */
    size_t n, cap;
} dead_pick;

static void pick_dead(void *ctx, const bp_store_row *row)
{
    dead_pick *p = ctx;
    if (p->ids != BP_NONE) {
        int wanted = 0;
        for (uint32_t e = p->ids + 1, i = 0; i < p->d->nodes[p->ids].len && !wanted; i++, e = p->d->nodes[e].next) {
            const char *v = bp_jscalar(p->d, e);
            wanted = v && atoll(v) == row->id;
        }
        if (!wanted) return;
    }
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        if (!(p->rows = realloc(p->rows, p->cap * sizeof *p->rows))) abort();
    }
    bp_store_row *c = &p->rows[p->n++];
    *c = *row;
    c->body = strdup(row->body ? row->body : "null");
    c->outcome = row->outcome ? strdup(row->outcome) : NULL;
    c->ktopic = row->ktopic ? strdup(row->ktopic) : NULL;
    c->message_id = c->reason = c->response = NULL;
    c->state = p->from;
    bp_buf_addc(&p->events, p->n > 1 ? ',' : '[');
    bp_buf_adds(&p->events, c->body);
}

/* The events go to the delivery topic again (as new messages, delivered
 * even though their message ids were seen), their dead letters and errors
 * become "replayed" on every node.  counts[i]: how many of replay_states[i]. */
static long replay_cluster(call *k, const bp_doc *d, uint32_t ids, const int *want, long *counts)
{
    bp_registry *reg = k->s->reg;
    dead_pick p = { d, ids, NULL, { 0 }, NULL, 0, 0 };
    bp_buf_init(&p.events);
    long n = 0;
    for (int s = 0; s < 2 && n == 0; s++) {
        if (!want[s]) continue;
        p.from = replay_states[s];
        if (bp_store_each(reg->store, k->it->id, p.from, pick_dead, &p) < 0) n = -1;
    }
    if (n == 0 && p.n > 0) {
        bp_buf_addc(&p.events, ']');
        char account[600], vendor[128];
        routing_of(reg, k->it, account, sizeof account, vendor, sizeof vendor);
        bp_error err;
        if (bp_cluster_send_events(reg->cluster, k->it->id, vendor, account, p.events.data, p.events.len, 1, &err) < 0) {
            set_error(k->r, 503, "CLUSTER_UNAVAILABLE", "%s; nothing was replayed: retry later", err.msg);
        } else {
            for (size_t i = 0; i < p.n; i++) {
                bp_store_move(reg->store, k->it->id, p.rows[i].state, "replayed", p.rows[i].id);
                counts[p.rows[i].state == replay_states[0] ? 0 : 1]++;
                p.rows[i].state = "replayed";
                bp_cluster_replayed(reg->cluster, k->it->id, &p.rows[i]);
            }
            n = (long)p.n;
        }
    }
    for (size_t i = 0; i < p.n; i++) {
        free((char *)p.rows[i].body);
        free((char *)p.rows[i].outcome);
        free((char *)p.rows[i].ktopic);
    }
    free(p.rows);
    bp_buf_free(&p.events);
    return n;
}

/* POST …/dead-letters/replay: {"all":true} re-queues every dead letter and
 * every event that ended in "error"; {"ids":[…]} those events (either
 * state); "state":"dead" or "error" narrows either to one state. */
static void replay(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    bp_store *st = k->s->reg->store;
    long n = 0, counts[2] = { 0, 0 };
    uint32_t all = bp_jget(&d, 0, "all"), ids = bp_jget(&d, 0, "ids"), state = bp_jget(&d, 0, "state");
    int is_all = all != BP_NONE && d.nodes[all].type == BP_JTRUE;
    int by_ids = ids != BP_NONE && d.nodes[ids].type == BP_JARRAY;
    int want[2] = { 1, 1 };
    const char *only = state != BP_NONE ? bp_jscalar(&d, state) : NULL;
    if (state != BP_NONE && (!only || (strcmp(only, "dead") && strcmp(only, "error")))) {
        set_error(k->r, 400, "BAD_REQUEST", "\"state\" must be \"dead\" (dead letters) or \"error\" (events whose "
                  "mapping or request failed); leave it out for both");
    } else if (!is_all && !by_ids) {
        set_error(k->r, 400, "BAD_REQUEST", "give {\"ids\":[…]} or {\"all\":true} (dead letters and errors; "
                  "\"state\":\"dead\" or \"error\" for one of them)");
    } else {
        if (only) { want[0] = !strcmp(only, "dead"); want[1] = !want[0]; }
        if (k->s->reg->cluster) {
            n = replay_cluster(k, &d, by_ids && !is_all ? ids : BP_NONE, want, counts);
        } else {
            for (int s = 0; s < 2 && n >= 0; s++) {
                if (!want[s]) continue;
                if (is_all) {
                    long m = bp_store_move(st, k->it->id, replay_states[s], "pending", 0);
                    if (m < 0) n = -1; else counts[s] += m;
                    continue;
                }
                for (uint32_t e = ids + 1, i = 0; i < d.nodes[ids].len; i++, e = d.nodes[e].next) {
                    const char *v = bp_jscalar(&d, e);
                    long m = v ? bp_store_move(st, k->it->id, replay_states[s], "pending", atoll(v)) : 0;
                    counts[s] += m > 0 ? m : 0;
                }
            }
            if (n >= 0) n = counts[0] + counts[1];
        }
    }
    if (n < 0) set_error(k->r, 503, "STORE_UNAVAILABLE", "could not update the state store; nothing was replayed");
    if (k->r->status == 200) {
        bp_buf_printf(&k->r->body, "{\"replayed\":%ld,\"dead_letters\":%ld,\"errors\":%ld}", n, counts[0], counts[1]);
        if (n > 0 && !k->s->reg->cluster) bp_pool_rescan(k->s->reg->pool, k->it->id);
        char what[128];
        snprintf(what, sizeof what, "%ld dead letters and %ld errors replayed (%s)", counts[0], counts[1],
                 is_all ? "all" : "by id");
        bp_registry_audit(k->s->reg, &k->who, "dead_letters.replay", k->it->id, what);
    }
    bp_doc_free(&d);
}

/* GET /v1/admin/audit-log?integration=&action=&actor=&since=&until=&limit=&cursor= */
static void audit_log(call *k)
{
    const char *q[7];
    static const char *const names[] = { "integration", "action", "actor", "since", "until", "limit", "cursor" };
    for (int i = 0; i < 7; i++) q[i] = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, names[i]);
    int limit = q[5] ? atoi(q[5]) : 100;
    if (limit < 1 || limit > 500) { set_error(k->r, 400, "BAD_REQUEST", "limit must be between 1 and 500"); return; }
    if (bp_registry_audit_list(k->s->reg, q[0], q[1], q[2], q[3] ? atoll(q[3]) : 0, q[4] ? atoll(q[4]) : 0,
                               q[6] ? atoll(q[6]) : 0, limit, &k->r->body) < 0)
        set_error(k->r, 500, "INTERNAL", "could not read the audit log");
}

static void metrics(call *k)
{
    bp_registry *reg = k->s->reg;
    long retries = 0, per_state[BP_HEALTH_COUNT] = { 0 };
    pthread_mutex_lock(&reg->mu);
    for (size_t i = 0; i < reg->n; i++) {
        retries += __atomic_load_n(&reg->items[i]->stats.retries, __ATOMIC_RELAXED);
        if (!reg->items[i]->deleted) per_state[health_state(reg->items[i])]++;
    }
    bp_metrics m = reg->metrics;
    pthread_mutex_unlock(&reg->mu);
    long depth = bp_store_count(reg->store, NULL, "pending");
    bp_store_status h;
    bp_store_health(reg->store, &h);
    k->r->ctype = "text/plain; version=0.0.4";
    bp_metrics_write(&m, retries, depth > 0 ? depth : 0, &h, &k->r->body);
    bp_metrics_write_health(per_state, &k->r->body);
    if (reg->cluster) bp_cluster_metrics(reg->cluster, &k->r->body);
}

/* ---- Live Events stream (Server-Sent Events) -------------------------------------------------- */

/* A stream parks its connection (MHD_suspend_connection) when it has
 * nothing to send, and the registry's on_live hook resumes it; a parked
 * stream is also resumed every few seconds for a keep-alive comment. */
struct stream {
    stream *next;                 /* [streams_mu] */
    server *s;
    struct MHD_Connection *c;
    bp_integration *it;           /* a reference held until freed */
    uint64_t next_seq;
    bp_buf pending;
    size_t sent;
    int parked;                   /* [streams_mu] */
    int news;                     /* [streams_mu] an outcome arrived since the last read */
    double last_write_ms;         /* [streams_mu] */
    char jti[sizeof ((bp_claims *)0)->jti];   /* the session's: a sign-out ends the stream too */
};

static void resume_locked(stream *st)
{
    st->news = 1;   /* also when not parked: the reader may be about to park */
    if (!st->parked) return;
    st->parked = 0;
    MHD_resume_connection(st->c);
}

/* registry on_live hook (registry mu held) */
static void on_live(void *ctx, bp_integration *it)
{
    server *s = ctx;
    pthread_mutex_lock(&s->streams_mu);
    for (stream *st = s->streams; st; st = st->next) if (st->it == it) resume_locked(st);
    pthread_mutex_unlock(&s->streams_mu);
}

/* Resume streams due a keep-alive (or all of them, when stopping). */
static void wake_streams(server *s, int all)
{
    double now = bp_monotonic_ms();
    pthread_mutex_lock(&s->streams_mu);
    if (all) s->stopping = 1;
    for (stream *st = s->streams; st; st = st->next)
        if (all || now - st->last_write_ms >= STREAM_KEEPALIVE_MS) { resume_locked(st); st->news = 0; }
    pthread_mutex_unlock(&s->streams_mu);
}

/* Fill st->pending with what the ring holds past next_seq.  Returns 1
 * when the stream has ended (deleted, or the server stops). */
static int take_lines(stream *st)
{
    bp_registry *reg = st->s->reg;
    pthread_mutex_lock(&reg->mu);
    int ended = st->it->deleted;
    if (st->it->live_seq > st->next_seq + BP_LIVE_RING) st->next_seq = st->it->live_seq - BP_LIVE_RING;
    for (; st->next_seq < st->it->live_seq; st->next_seq++) {
        const char *line = st->it->live ? st->it->live[st->next_seq % BP_LIVE_RING] : NULL;
        bp_buf_printf(&st->pending, "event: outcome\ndata: %s\n\n", line ? line : "{}");
    }
    pthread_mutex_unlock(&reg->mu);
    return ended;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream *st = cls;
    server *s = st->s;
    while (st->sent == st->pending.len) {
        bp_buf_reset(&st->pending);
        st->sent = 0;
        pthread_mutex_lock(&s->streams_mu);
        st->news = 0;   /* what arrives from here on is read below, or sets it again */
        pthread_mutex_unlock(&s->streams_mu);
        int ended = take_lines(st) || (st->jti[0] && bp_registry_jti_spent(s->reg, st->jti));
        pthread_mutex_lock(&s->streams_mu);
        if (s->stopping) ended = 1;
        if (ended) {
            pthread_mutex_unlock(&s->streams_mu);
            if (!st->pending.len) return MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        if (st->pending.len) { pthread_mutex_unlock(&s->streams_mu); break; }
        if (st->news) { pthread_mutex_unlock(&s->streams_mu); continue; }   /* it came meanwhile */
        if (bp_monotonic_ms() - st->last_write_ms >= STREAM_KEEPALIVE_MS) {
            pthread_mutex_unlock(&s->streams_mu);
            bp_buf_adds(&st->pending, ": keep-alive\n\n");
            break;
        }
        /* nothing to say: park until on_live or the keep-alive tick */
        st->parked = 1;
        MHD_suspend_connection(st->c);
        pthread_mutex_unlock(&s->streams_mu);
        return 0;
    }
    size_t n = st->pending.len - st->sent < max ? st->pending.len - st->sent : max;
    memcpy(buf, st->pending.data + st->sent, n);
    st->sent += n;
    pthread_mutex_lock(&s->streams_mu);
    st->last_write_ms = bp_monotonic_ms();
    pthread_mutex_unlock(&s->streams_mu);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream *st = cls;
    server *s = st->s;
    pthread_mutex_lock(&s->streams_mu);
    for (stream **p = &s->streams; *p; p = &(*p)->next) if (*p == st) { *p = st->next; break; }
    pthread_mutex_unlock(&s->streams_mu);
    pthread_mutex_lock(&s->reg->mu);
    if (--st->it->watchers == 0 && st->it->live) {   /* the ring is for watchers only */
        for (int i = 0; i < BP_LIVE_RING; i++) free(st->it->live[i]);
        free(st->it->live);
        st->it->live = NULL;
    }
    pthread_mutex_unlock(&s->reg->mu);
    bp_integration_release(st->it);
    bp_buf_free(&st->pending);
    free(st);
}

static enum MHD_Result open_stream(call *k)
{
    stream *st = calloc(1, sizeof *st);
    if (!st) abort();
    st->s = k->s;
    st->c = k->c;
    st->it = k->it;
    memcpy(st->jti, k->who.jti, sizeof st->jti);
    k->it = NULL;   /* the stream keeps the reference */
    pthread_mutex_lock(&k->s->reg->mu);
    st->next_seq = st->it->live_seq;
    st->it->watchers++;
    pthread_mutex_unlock(&k->s->reg->mu);
    st->last_write_ms = bp_monotonic_ms();
    bp_buf_init(&st->pending);
    bp_buf_adds(&st->pending, ": live events; one 'outcome' event per judged event ('retrying' while it waits)\n\n");
    pthread_mutex_lock(&k->s->streams_mu);
    st->next = k->s->streams;
    k->s->streams = st;
    pthread_mutex_unlock(&k->s->streams_mu);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(k->c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ---- the web console (console.c: its files; editor.c: the blueprint editor) --------------------- */

static void console_send(call *k, const char *root, const char *rel)
{
    const char *ctype;
    bp_error err;
    k->r->console = 1;
    if (bp_console_file(root, rel, &k->r->body, &ctype, &err) != 200) {
        set_error(k->r, 404, "NOT_FOUND", "%s: %s", err.msg, rel);
        return;
    }
    k->r->ctype = ctype;
}

static void console_index(call *k) { console_send(k, k->s->console_dir, "index.html"); }
static void console_asset(call *k) { console_send(k, k->s->console_dir, k->rest); }
static void console_codemirror(call *k) { console_send(k, CODEMIRROR_DIR, k->rest); }

/* The sign-in token's claims when it may open a session: signed here, of
 * use "signin", at most 15 minutes long, and never taken before.  Else
 * why not (and 401). */
static const char *sign_in_refused(server *s, const char *token, bp_claims *who, bp_error *err, int *status)
{
    *status = 401;
    if (bp_jwt_verify(s->secret, token, (int64_t)(bp_wall_ms() / 1000), &s->expect, who, err) < 0) return err->msg;
    if (strcmp(who->use, BP_JWT_USE_SIGNIN) != 0)
        return "not a sign-in token (an API token is used as it is, in the Authorization header)";
    if (!who->jti[0] || !who->iat || who->exp - who->iat > BP_SIGNIN_MAX_TTL)
        return "a sign-in token has a jti and lives at most 15 minutes (blueprint token --sign-in)";
    if (!is_reader(who->role)) return "the token's role is not owner, admin, editor or viewer";
    int taken = bp_registry_spend_jti(s->reg, who->jti, who->exp);
    if (taken < 0) { *status = 503; return "could not record the sign-in in the state store (or the cluster); try again"; }
    return taken ? "this sign-in link was used already: mint a new one (blueprint token --sign-in)" : NULL;
}

/* POST /v1/console/session {"token":SIGN-IN TOKEN}: an ordinary API token of
 * the same role and subject, good for 8 hours. */
static void console_session(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    uint32_t t = bp_jget(&d, 0, "token");
    if (t == BP_NONE || d.nodes[t].type != BP_JSTRING) {
        set_error(k->r, 400, "BAD_REQUEST", "give {\"token\":\"<the sign-in token of the link's #signin=…>\"}");
        bp_doc_free(&d);
        return;
    }
    bp_claims who;
    bp_error err;
    int status;
    const char *why = sign_in_refused(k->s, bp_jtext(&d, t), &who, &err, &status);
    bp_doc_free(&d);
    if (why) {
        set_error(k->r, status, status == 401 ? "INVALID_TOKEN" : "STORE_UNAVAILABLE", "%s", why);
        return;
    }
    int64_t now = (int64_t)(bp_wall_ms() / 1000);
    bp_buf token;
    bp_buf_init(&token);
    bp_jwt_sign_session(k->s->secret, who.role, who.sub, k->s->expect.issuer, k->s->expect.audience, now,
                        now + SESSION_TTL, &token);
    bp_buf *b = &k->r->body;
    bp_buf_addc(b, '{');
    write_str(b, "token", token.data, 0);
    write_str(b, "role", who.role, 1);
    write_str(b, "subject", who.sub, 1);
    bp_buf_printf(b, ",\"expires_at\":%lld}", (long long)(now + SESSION_TTL));
    bp_registry_audit(k->s->reg, &who, "console.sign_in", NULL, "a sign-in link was exchanged for an 8-hour session");
    bp_buf_free(&token);
}

/* DELETE /v1/console/session: sign-out.  The session token's jti is spent
 * until the token expires, so a copy of it (another tab, a stolen one) is
 * refused from now on, on every node. */
static void console_sign_out(call *k)
{
    if (!k->who.jti[0]) {
        set_error(k->r, 400, "BAD_REQUEST", "not a console session token: an API token from `blueprint token` has no "
                  "session to sign out of; it ends at its exp (mint short-lived ones)");
        return;
    }
    if (bp_registry_spend_jti(k->s->reg, k->who.jti, k->who.exp) < 0) {
        set_error(k->r, 503, "STORE_UNAVAILABLE", "could not record the sign-out in the state store (or the cluster); "
                  "try again");
        return;
    }
    bp_registry_audit(k->s->reg, &k->who, "console.sign_out", NULL, "the session was signed out (its token revoked)");
    /* its open Live Events streams end now: each one, woken, finds its jti spent */
    pthread_mutex_lock(&k->s->streams_mu);
    for (stream *st = k->s->streams; st; st = st->next)
        if (!strcmp(st->jti, k->who.jti)) resume_locked(st);
    pthread_mutex_unlock(&k->s->streams_mu);
    k->r->status = 204;
}

/* GET /v1/console/me: who the token speaks for and what the console may offer. */
static void console_me(call *k)
{
    bp_buf *b = &k->r->body;
    bp_buf_addc(b, '{');
    write_str(b, "role", k->who.role, 0);
    write_str(b, "subject", k->who.sub, 1);
    const char *w = is_writer(k->who.role) ? "true" : "false";
    bp_buf_printf(b, ",\"can\":{\"install\":%s,\"edit\":%s,\"replay\":%s}}", w, w, w);
}

/* An editor call's result into the reply: its JSON, or its error with the
 * file and line of an edit that does not load. */
static void editor_reply(call *k, bp_api_result *res)
{
    if (res->status < 400) { k->r->status = res->status; return; }
    bp_buf extra;
    bp_buf_init(&extra);
    if (res->file[0] || (res->code && !strcmp(res->code, "INVALID_BLUEPRINT"))) {   /* null when not known */
        bp_buf_adds(&extra, ",\"file\":");
        if (res->file[0]) bp_json_write_text(&extra, res->file, strlen(res->file)); else bp_buf_adds(&extra, "null");
        if (res->line) bp_buf_printf(&extra, ",\"line\":%d", res->line); else bp_buf_adds(&extra, ",\"line\":null");
    }
    write_error(k->r, res->status, res->code ? res->code : "INTERNAL", res->err.msg, extra.data);
    bp_buf_free(&extra);
}

static void editor_call(call *k, bp_editor_fn *fn)
{
    bp_api_result res = { 200, NULL, { "" }, "", 0, &k->r->body };
    fn(k->s->reg, k->vendor, k->cn->body.data, k->cn->body.len, &k->who, &res);
    editor_reply(k, &res);
}

static void blueprint_files(call *k) { editor_call(k, bp_editor_files); }
static void blueprint_dry_run(call *k) { editor_call(k, bp_editor_dry_run); }
static void blueprint_test(call *k) { editor_call(k, bp_editor_test); }
static void blueprint_save(call *k) { editor_call(k, bp_editor_save); }
static void blueprint_revisions(call *k) { editor_call(k, bp_editor_revisions); }
static void blueprint_rollback(call *k) { editor_call(k, bp_editor_rollback); }

/* ---- routing ------------------------------------------------------------------------------------ */

enum access { OPEN, READER, WRITER };

/* How a handler runs: on the HTTP thread and answered at once; as the Live
 * Events stream (it queues its own response); or in the editor's pool (it
 * runs blueprint code: it must not call MHD, k->c is NULL there). */
enum mode { NOW, STREAM, POOLED };

/* One row per endpoint.  In a pattern, ":id" takes an integration id,
 * ":vendor" a catalog key, and a final "*" the rest of the path. */
struct route_def {
    const char *method, *pattern;
    enum access access;
    size_t body_limit;
    void (*handler)(call *k);
    enum mode mode;
};

static const route_def routes[] = {
    { "GET", "/healthz", OPEN, 0, healthz, 0 },
    { "GET", "/metrics", OPEN, 0, metrics, 0 },
    { "GET", "/v1/admin/integration-catalog", READER, 0, catalog, 0 },
    { "GET", "/v1/admin/integration-catalog/:vendor", READER, 0, catalog_vendor, 0 },
    { "POST", "/v1/admin/integration-catalog/:vendor/install", WRITER, MAX_ADMIN_BODY, install, 0 },
    { "GET", "/v1/admin/integrations", READER, 0, list_integrations, 0 },
    { "GET", "/v1/admin/integrations/:id", READER, 0, show_integration, 0 },
    { "PATCH", "/v1/admin/integrations/:id", WRITER, MAX_ADMIN_BODY, update_integration, 0 },
    { "DELETE", "/v1/admin/integrations/:id", WRITER, 0, delete_integration, 0 },
    { "GET", "/v1/admin/integrations/:id/revisions", READER, 0, revisions, 0 },
    { "GET", "/v1/admin/integrations/:id/live-events", READER, 0, live_events, 0 },
    { "GET", "/v1/admin/integrations/:id/live-events/stream", READER, 0, NULL, STREAM },
    { "GET", "/v1/admin/integrations/:id/dead-letters", READER, 0, dead_letters, 0 },
    { "POST", "/v1/admin/integrations/:id/dead-letters/replay", WRITER, MAX_ADMIN_BODY, replay, 0 },
    { "POST", "/v1/integrations/:id/events", WRITER, MAX_INTAKE_BODY, intake, 0 },
    { "GET", "/v1/admin/audit-log", READER, 0, audit_log, 0 },
    { "GET", "/", OPEN, 0, console_index, 0 },
    { "GET", "/console/vendor/codemirror/*", OPEN, 0, console_codemirror, 0 },
    { "GET", "/console/*", OPEN, 0, console_asset, 0 },
    { "POST", "/v1/console/session", OPEN, MAX_SIGNIN_BODY, console_session, 0 },
    { "DELETE", "/v1/console/session", READER, 0, console_sign_out, 0 },
    { "GET", "/v1/console/me", READER, 0, console_me, 0 },
    { "GET", "/v1/admin/blueprints/:vendor/files", READER, 0, blueprint_files, 0 },
    { "PUT", "/v1/admin/blueprints/:vendor/files", WRITER, BP_EDITOR_MAX_BODY, blueprint_save, POOLED },
    { "POST", "/v1/admin/blueprints/:vendor/dry-run", WRITER, BP_EDITOR_MAX_BODY, blueprint_dry_run, POOLED },
    { "POST", "/v1/admin/blueprints/:vendor/test", WRITER, BP_EDITOR_MAX_BODY, blueprint_test, POOLED },
    { "GET", "/v1/admin/blueprints/:vendor/revisions", READER, 0, blueprint_revisions, 0 },
    { "POST", "/v1/admin/blueprints/:vendor/rollback", WRITER, MAX_ADMIN_BODY, blueprint_rollback, POOLED },
};
#define NROUTES (sizeof routes / sizeof routes[0])

/* Does url match pattern?  Captures the :id / :vendor segment, or what "*" matches. */
static int match(const char *pattern, const char *url, char *capture, size_t caplen)
{
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (*p++ != '/' || *u++ != '/') return 0;
        size_t plen = strcspn(p, "/"), ulen = strcspn(u, "/");
        if (*p == '*') {
            size_t rest = strlen(u);
            if (rest == 0 || rest >= caplen) return 0;
            memcpy(capture, u, rest + 1);
            return 1;
        }
        if (*p == ':') {
            if (ulen == 0 || ulen >= caplen) return 0;
            memcpy(capture, u, ulen);
            capture[ulen] = '\0';
        } else if (plen != ulen || strncmp(p, u, plen) != 0) {
            return 0;
        }
        p += plen;
        u += ulen;
    }
    if (!strcmp(u, "/")) u++;   /* a trailing slash is the same resource */
    return !*p && !*u;
}

/* The route for method + url; NULL with *allow set to the methods the url
 * has (405) or left NULL (404).  HEAD is served as GET. */
static const route_def *find_route(const char *method, const char *url, char *capture, size_t caplen, char *allow,
                                   size_t allowlen)
{
    const char *m = !strcmp(method, "HEAD") ? "GET" : method;
    allow[0] = '\0';
    for (size_t i = 0; i < NROUTES; i++) {
        if (!match(routes[i].pattern, url, capture, caplen)) continue;
        if (!strcmp(routes[i].method, m)) return &routes[i];
        if (strstr(allow, routes[i].method)) continue;   /* several patterns match (a "*" one) */
        size_t used = strlen(allow);
        snprintf(allow + used, allowlen - used, "%s%s%s", used ? ", " : "", routes[i].method,
                 !strcmp(routes[i].method, "GET") ? ", HEAD" : "");
    }
    return NULL;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, reply *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(r->body.len, r->body.data ? r->body.data : (void *)"",
                                                                MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", r->ctype);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (r->console) {
        /* the console's files may be cached if revalidated; API answers never */
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "Content-Security-Policy", CONSOLE_CSP);
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    } else {
        MHD_add_response_header(resp, "Cache-Control", "no-store");
    }
    if (r->allow) MHD_add_response_header(resp, "Allow", r->allow);
    if (r->retry_after) {
        char secs[16];
        snprintf(secs, sizeof secs, "%d", r->retry_after);
        MHD_add_response_header(resp, "Retry-After", secs);
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void log_request(const char *method, const char *url, int status, double started)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"method\":");
    bp_json_write_text(&f, method, strlen(method));
    bp_buf_adds(&f, ",\"path\":");
    bp_json_write_text(&f, url, strlen(url));   /* paths carry ids only, never secrets */
    bp_buf_printf(&f, ",\"status\":%d,\"duration_ms\":%.1f", status, bp_monotonic_ms() - started);
    bp_log("info", "request", f.data);
    bp_buf_free(&f);
}

static void reply_init(reply *r)
{
    memset(r, 0, sizeof *r);
    r->status = 200;
    r->ctype = "application/json";
    bp_buf_init(&r->body);
}

/* Log and send r, then free it. */
static enum MHD_Result answer(struct MHD_Connection *c, const char *method, const char *url, conn *cn, reply *r)
{
    log_request(method, url, r->status, cn->started);
    enum MHD_Result ret = send_reply(c, r);
    bp_buf_free(&r->body);
    return ret;
}

/* ---- a total time per request ---------------------------------------------------------------- */

/* libmicrohttpd's timeout counts idle time only, and it calls no handler
 * while headers arrive: a client sending one header line every few seconds
 * would hold its connection for ever.  So every connection is tracked from
 * MHD_OPTION_NOTIFY_CONNECTION (its socket, and since when its current
 * request has been arriving), and the main loop's reaper (reap_slow) shuts
 * down the socket of a request still arriving after request_limit_ms; MHD
 * then sees the connection end and closes it as usual.  shutdown(2), never
 * close(2): the descriptor stays MHD's.  The entry is removed in the CLOSED
 * notification, which MHD sends before it closes the descriptor, under the
 * same lock the reaper holds while it calls shutdown: so the reaper never
 * touches a descriptor that was closed and perhaps reused for another
 * connection.  The clock stops once the request has arrived (handlers,
 * the editor's pool and Live Events streams take what they take) and
 * starts again when its response is done: the next request on a kept-alive
 * connection has the same limit (idle time before it counts too). */
struct tracked {
    tracked *prev, *next;         /* [conns_mu] */
    int fd;
    double since;                 /* [conns_mu] when the current request began to arrive */
    int arriving;                 /* [conns_mu] its headers or body are still coming */
    int cut;                      /* [conns_mu] shut down by the reaper */
};

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        tracked *t = calloc(1, sizeof *t);
        if (!t || !info) { free(t); return; }   /* untracked: only the idle timeout applies */
        t->fd = info->connect_fd;
        t->since = bp_monotonic_ms();
        t->arriving = 1;
        pthread_mutex_lock(&s->conns_mu);
        t->next = s->conns;
        if (s->conns) s->conns->prev = t;
        s->conns = t;
        pthread_mutex_unlock(&s->conns_mu);
        *socket_context = t;
        return;
    }
    tracked *t = *socket_context;   /* MHD_CONNECTION_NOTIFY_CLOSED: before MHD closes the descriptor */
    if (!t) return;
    pthread_mutex_lock(&s->conns_mu);
    if (t->prev) t->prev->next = t->next; else s->conns = t->next;
    if (t->next) t->next->prev = t->prev;
    pthread_mutex_unlock(&s->conns_mu);
    free(t);
    *socket_context = NULL;
}

/* The connection's request has arrived (arrived = 1) or its response is
 * done and the next may begin (0). */
static void request_clock(server *s, struct MHD_Connection *c, int arrived)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    tracked *t = info ? info->socket_context : NULL;
    if (!t) return;
    pthread_mutex_lock(&s->conns_mu);
    t->arriving = !arrived;
    if (!arrived) t->since = bp_monotonic_ms();
    pthread_mutex_unlock(&s->conns_mu);
}

/* Shut down the connections whose request is still arriving after the limit. */
static void reap_slow(server *s)
{
    double now = bp_monotonic_ms();
    int n = 0;
    pthread_mutex_lock(&s->conns_mu);
    for (tracked *t = s->conns; t; t = t->next) {
        if (!t->arriving || t->cut || now - t->since <= s->request_limit_ms) continue;
        shutdown(t->fd, SHUT_RDWR);
        t->cut = 1;
        n++;
    }
    pthread_mutex_unlock(&s->conns_mu);
    if (!n) return;
    char f[160];
    snprintf(f, sizeof f, "\"connections\":%d,\"limit_ms\":%.0f", n, s->request_limit_ms);
    bp_log("warn", "request time limit: connections closed whose request had not arrived in time", f);
}

/* ---- the editor's pool ------------------------------------------------------------------------ */

/* Hand cn to the pool: 0 once queued (the connection is suspended until a
 * worker has answered), -1 with r holding the 503 when the queue is full.
 * The connection is suspended before a worker can see the job (under the
 * pool's lock), so that a worker only ever resumes a suspended connection;
 * a pool that is stopping takes nothing, so no connection stays suspended
 * after its workers are gone. */
static int pool_submit(server *s, struct MHD_Connection *c, conn *cn, reply *r)
{
    editor_pool *p = &s->pool;
    pthread_mutex_lock(&p->mu);
    if (p->stopping || p->waiting >= p->max_waiting) {
        int stopping = p->stopping;
        pthread_mutex_unlock(&p->mu);
        r->retry_after = 2;
        if (stopping) set_error(r, 503, "EDITOR_BUSY", "the server is stopping; retry in a moment");
        else set_error(r, 503, "EDITOR_BUSY", "the blueprint editor is busy (dry-runs, fixture runs and saves of "
                       "other edits are running or waiting); nothing was run or saved: retry in a few seconds");
        return -1;
    }
    cn->c = c;
    cn->queued = 1;
    MHD_suspend_connection(c);
    if (p->tail) p->tail->next_job = cn; else p->head = cn;
    p->tail = cn;
    p->waiting++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* One job: the route's handler, as on an HTTP thread but without MHD. */
static void pool_run(server *s, conn *cn, int stopping)
{
    reply *r = &cn->answer;
    reply_init(r);
    if (stopping) {
        r->retry_after = 2;
        set_error(r, 503, "EDITOR_BUSY", "the server is stopping; nothing was run or saved: retry in a moment");
        return;
    }
    call k = { s, NULL, cn, NULL, cn->capture, NULL, r, cn->who };
    cn->rt->handler(&k);
}

static void *pool_worker(void *arg)
{
    server *s = arg;
    editor_pool *p = &s->pool;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping) pthread_cond_wait(&p->cv, &p->mu);
        conn *cn = p->head;
        if (!cn) break;   /* stopping, and every job answered */
        if (!(p->head = cn->next_job)) p->tail = NULL;
        p->waiting--;
        int stopping = p->stopping;
        pthread_mutex_unlock(&p->mu);
        pool_run(s, cn, stopping);
        pthread_mutex_lock(&p->mu);
        cn->finished = 1;
        pthread_mutex_unlock(&p->mu);
        MHD_resume_connection(cn->c);   /* MHD calls on_request again: it sends the answer */
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static int pool_start(server *s, int workers, int queue, bp_error *err)
{
    editor_pool *p = &s->pool;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max_waiting = queue;
    if (!(p->threads = calloc((size_t)workers, sizeof *p->threads))) abort();
    for (; p->nthreads < workers; p->nthreads++)
        if (pthread_create(&p->threads[p->nthreads], NULL, pool_worker, s) != 0) {
            bp_error_set(err, "cannot start the editor's worker threads");
            return -1;
        }
    return 0;
}

/* Answer every job still waiting (503) and stop the workers: after this no
 * connection is suspended by the pool (MHD_stop_daemon requires it). */
static void pool_stop(server *s)
{
    editor_pool *p = &s->pool;
    if (!p->threads) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    p->threads = NULL;
}

/* After MHD_stop_daemon: until then a kept-alive connection may still ask
 * the stopped pool (and be answered 503 under its lock). */
static void pool_free(server *s)
{
    pthread_cond_destroy(&s->pool.cv);
    pthread_mutex_destroy(&s->pool.mu);
}

/* ---- requests ---------------------------------------------------------------------------------- */

/* The first call, with the headers only: the route, the announced size and
 * the token are judged before any body byte is read, so that a request
 * refused here costs its headers and nothing more (MHD sends the answer
 * and closes the connection without reading the body).  0: go on; -1: r
 * holds the refusal. */
static int admit(server *s, struct MHD_Connection *c, const char *method, const char *url, conn *cn, reply *r,
                 char *allow, size_t allowlen)
{
    cn->rt = find_route(method, url, cn->capture, sizeof cn->capture, allow, allowlen);
    if (!cn->rt && allow[0]) {
        r->allow = allow;
        set_error(r, 405, "METHOD_NOT_ALLOWED", "%s is not allowed on %s (allowed: %s)", method, url, allow);
        return -1;
    }
    if (!cn->rt) { set_error(r, 404, "NOT_FOUND", "no such endpoint: %s %s", method, url); return -1; }
    cn->limit = cn->rt->body_limit;
    /* refuse a body announced too large before reading any of it */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > cn->limit) {
        set_error(r, 413, "PAYLOAD_TOO_LARGE", "the body is over %zu bytes; nothing was applied", cn->limit);
        return -1;
    }
    if (cn->rt->access != OPEN && authorize(s, c, cn->rt->access == READER ? READ : WRITE, &cn->who, r) < 0) return -1;
    return 0;
}

/* The last call: the whole body is in cn. */
static enum MHD_Result respond(server *s, struct MHD_Connection *c, const char *method, const char *url, conn *cn)
{
    reply r;
    reply_init(&r);
    const route_def *rt = cn->rt;
    call k = { s, c, cn, NULL, NULL, NULL, &r, cn->who };
    request_clock(s, c, 1);
    if (cn->too_large) {   /* a body without a length (chunked), counted as it came */
        set_error(&r, 413, "PAYLOAD_TOO_LARGE", "the body is over %zu bytes; nothing was applied", rt->body_limit);
    } else if (strstr(rt->pattern, ":id") && !(k.it = bp_registry_find(s->reg, cn->capture))) {
        set_error(&r, 404, "NOT_FOUND", "no integration with id '%s'", cn->capture);
    } else {
        if (strstr(rt->pattern, ":vendor")) k.vendor = cn->capture;
        if (strchr(rt->pattern, '*')) k.rest = cn->capture;
        if (rt->mode == STREAM) {
            enum MHD_Result ret = open_stream(&k);
            log_request(method, url, 200, cn->started);
            bp_integration_release(k.it);
            bp_buf_free(&r.body);
            return ret;
        }
        if (rt->mode == POOLED && pool_submit(s, c, cn, &r) == 0) {
            bp_integration_release(k.it);   /* pooled routes take no :id; the worker has none */
            bp_buf_free(&r.body);
            return MHD_YES;   /* answered when a worker resumes the connection */
        }
        if (rt->mode != POOLED) {
            rt->handler(&k);
            if (start_checks(cn)) {   /* the answer waits for them: finish_checks */
                bp_integration_release(k.it);
                bp_buf_free(&r.body);
                return MHD_YES;
            }
        }
    }
    bp_integration_release(k.it);
    return answer(c, method, url, cn, &r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    server *s = cls;
    conn *cn = *con_cls;
    if (!cn) {
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        bp_buf_init(&cn->body);
        cn->started = bp_monotonic_ms();
        *con_cls = cn;
        reply r;
        char allow[128];
        reply_init(&r);
        if (admit(s, c, method, url, cn, &r, allow, sizeof allow) == 0) { bp_buf_free(&r.body); return MHD_YES; }
        request_clock(s, c, 1);
        return answer(c, method, url, cn, &r);
    }
    if (cn->queued) {
        /* resumed by the pool's worker, which has answered */
        pthread_mutex_lock(&s->pool.mu);
        int finished = cn->finished;
        pthread_mutex_unlock(&s->pool.mu);
        if (!finished) return MHD_YES;   /* not resumed by the pool: cannot happen, but never send a half answer */
        enum MHD_Result ret = answer(c, method, url, cn, &cn->answer);
        cn->queued = 0;
        return ret;
    }
    if (cn->job) {
        pthread_mutex_lock(&s->streams_mu);   /* the checks' thread wrote the answer before this */
        int done = cn->job->started == 2;
        pthread_mutex_unlock(&s->streams_mu);
        return done ? finish_checks(c, method, url, cn) : MHD_YES;   /* else parked: its thread resumes it */
    }
    if (*upload_size) {
        /* bodies without a length (chunked) are counted as they come */
        if (cn->too_large || cn->body.len + *upload_size > cn->limit) cn->too_large = 1;
        else bp_buf_add(&cn->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return respond(s, c, method, url, cn);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    conn *cn = *con_cls;
    if (cn && cn->job) free_checks(cn);   /* the client left before its answer */
    if (cn && cn->queued) bp_buf_free(&cn->answer.body);   /* answered, but the client had gone */
    if (cn) { bp_buf_free(&cn->body); free(cn); }
    *con_cls = NULL;
    request_clock(cls, c, 0);   /* the next request on this connection has its own time */
}

/* Connections, SQLite files and vendor sockets all take descriptors: use
 * every one the hard limit allows (the soft default is often 1024). */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Every failure of bp_serve says why. */
static int serve_failed(bp_error *err)
{
    bp_error_ensure(err, "the service could not start");
    return -1;
}

int bp_serve(const bp_serve_opts *o, bp_error *err)
{
    server s;
    bp_error_clear(err);
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.streams_mu, NULL);
    pthread_mutex_init(&s.conns_mu, NULL);
    s.request_limit_ms = 1000.0 * (o->request_time_limit_s > 0 ? o->request_time_limit_s : 30);
    /* the service logs JSON lines, mappings' print/ctx.log included (engine.c):
     * on stderr unless the embedder has its own log callback */
    bp_log_fn prev_log;
    bp_get_log(&prev_log, NULL);
    if (!prev_log) bp_set_log(bp_log_stderr, NULL);
    raise_fd_limit();
    if (bp_jwt_secret(o->state_dir, s.secret, sizeof s.secret, err) < 0) return serve_failed(err);
    s.expect.issuer = o->jwt_issuer && *o->jwt_issuer ? o->jwt_issuer : NULL;
    s.expect.audience = o->jwt_audience && *o->jwt_audience ? o->jwt_audience : NULL;
    bp_console_dir(o->console_dir, o->blueprints_dir, s.console_dir, sizeof s.console_dir);
    int retention_days = o->audit_retention_days > 0 ? o->audit_retention_days : 90;
    if (!(s.reg = bp_registry_open(o->blueprints_dir, o->state_dir, err))) return serve_failed(err);
    s.reg->rate_limit_rps = o->rate_limit_rps;
    s.reg->retry_base_ms = o->retry_base_ms;
    s.reg->on_live = on_live;
    s.reg->on_live_ctx = &s;
    if (o->kafka_brokers && *o->kafka_brokers) {
        char node[300], host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        if (o->node_name && *o->node_name) snprintf(node, sizeof node, "%s", o->node_name);
        else if (o->port) snprintf(node, sizeof node, "%s:%d", host, o->port);
        else snprintf(node, sizeof node, "%s-%d", host, (int)getpid());
        bp_cluster_opts co = { o->kafka_brokers, o->cluster_name, o->topic_mode, node, o->kafka_session_timeout_ms,
                               o->kafka_partitions, o->kafka_config };
        if (!(s.reg->cluster = bp_cluster_new(s.reg, &co, err))) { bp_registry_close(s.reg); return serve_failed(err); }
    }

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
        return serve_failed(err);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = o->workers > 0 ? o->workers : cores > 0 ? (int)cores : 1;
    int http_threads = o->http_threads > 0 ? o->http_threads : 4;
    unsigned per_ip = o->max_connections_per_ip > 0 ? (unsigned)o->max_connections_per_ip : 1024u;
    int editor_workers = o->editor_workers > 0 ? o->editor_workers : 2;
    int editor_queue = o->editor_queue > 0 ? o->editor_queue : 8;
    if (bp_registry_start(s.reg, workers, err) < 0 || (s.reg->cluster && bp_cluster_start(s.reg->cluster, err) < 0) ||
        pool_start(&s, editor_workers, editor_queue, err) < 0) {
        pool_stop(&s);
        bp_registry_close(s.reg);
        return serve_failed(err);
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, on_request, &s,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)http_threads,
        MHD_OPTION_CONNECTION_LIMIT, 8192u, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, &s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, &s, MHD_OPTION_END);
    if (!d) {
        bp_error_set(err, "cannot listen on %s:%d (in use?)", o->host, o->port);
        pool_stop(&s);
        bp_registry_close(s.reg);
        return serve_failed(err);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = info ? info->port : o->port;
    printf("listening on http://%s:%d\n", o->host, port);
    fflush(stdout);
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_printf(&f, "\"address\":\"%s:%d\",\"blueprints\":", o->host, port);
    bp_json_write_text(&f, o->blueprints_dir, strlen(o->blueprints_dir));
    bp_buf_adds(&f, ",\"state\":");
    bp_json_write_text(&f, o->state_dir, strlen(o->state_dir));
    bp_buf_adds(&f, ",\"console\":");
    bp_json_write_text(&f, s.console_dir, strlen(s.console_dir));
    pthread_mutex_lock(&s.reg->mu);
    bp_buf_printf(&f, ",\"integrations\":%zu,\"delivery_threads\":%d,\"http_threads\":%d,\"editor_workers\":%d,"
                  "\"editor_queue\":%d,\"request_time_limit_s\":%.0f", s.reg->n, workers, http_threads, editor_workers,
                  editor_queue, s.request_limit_ms / 1000);
    pthread_mutex_unlock(&s.reg->mu);
    bp_log("info", "serving", f.data);
    bp_buf_free(&f);

    /* main thread: watch blueprints for changes and keep streams alive
     * until a signal arrives */
    struct timespec tick = { 0, 300 * 1000 * 1000 };
    double last_purge = 0;
    for (;;) {
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) break;
        bp_registry_check_reload(s.reg);
        wake_streams(&s, 0);
        reap_slow(&s);
        if (bp_monotonic_ms() - last_purge > 3600 * 1000.0 || last_purge == 0) {   /* hourly */
            bp_registry_audit_purge(s.reg, retention_days);
            last_purge = bp_monotonic_ms();
        }
    }
    bp_log("info", "shutting down: finishing requests in flight; pending events stay stored", NULL);
    wake_streams(&s, 1);
    MHD_quiesce_daemon(d);
    /* streams end at their next read; give them a moment, then stop */
    for (int i = 0; i < 50; i++) {
        pthread_mutex_lock(&s.streams_mu);
        int open = s.streams != NULL;
        for (stream *st = s.streams; st; st = st->next) resume_locked(st);
        pthread_mutex_unlock(&s.streams_mu);
        if (!open) break;
        usleep(10 * 1000);
    }
    pool_stop(&s);   /* every job answered and its connection resumed: MHD may stop */
    /* install/update checks end by their run's deadline (verify.c: VERIFY_TIMEOUT_MS, +1 s for the
     * transport to say why): their answers go out first, and no check thread outlives the server */
    for (int i = 0; i < (VERIFY_TIMEOUT_MS + 3000) / 10; i++) {
        pthread_mutex_lock(&s.streams_mu);
        int busy = s.verifying;
        pthread_mutex_unlock(&s.streams_mu);
        if (!busy) break;
        usleep(10 * 1000);
    }
    MHD_stop_daemon(d);
    pool_free(&s);
    bp_registry_close(s.reg);
    pthread_mutex_destroy(&s.streams_mu);
    pthread_mutex_destroy(&s.conns_mu);
    bp_log("info", "stopped", NULL);
    return 0;
}
