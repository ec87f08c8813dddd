/*
 * server.c — `blueprint serve`: the Management API, event intake, Live
 * Events and operations endpoints over libmicrohttpd (docs/serve.md).
 * This file is the HTTP plumbing: the daemon and its threads, the route
 * table, replies, the auth of a request, the editor's pool and the install
 * checks' parked connections.  The handlers live in files named for what
 * they serve (server.h lists them): admin_api.c, events_api.c,
 * live_stream.c, console_api.c, health_api.c; judging an intake body is
 * intake.c's, which the cluster shares.
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
#include "server.h"

#include <arpa/inet.h>
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
#define MAX_SIGNIN_BODY (16u * 1024u)   /* the one body taken without a token: {"token":…} */
/* The console's pages: scripts, styles and requests from this origin only,
 * nothing inline (event data is attacker-controlled), no framing. */
#define CONSOLE_CSP "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
                    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

/* ---- replies ---------------------------------------------------------------------- */

void bp_reply_error_with(reply *r, int status, const char *code, const char *msg, const char *extra)
{
    r->status = status;
    bp_buf_reset(&r->body);
    bp_buf_printf(&r->body, "{\"error\":{\"code\":\"%s\",\"message\":", code);
    bp_json_write_text(&r->body, msg, strlen(msg));
    if (extra) bp_buf_adds(&r->body, extra);
    bp_buf_adds(&r->body, "}}");
}

void bp_reply_error(reply *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bp_reply_error_with(r, status, code, msg, NULL);
}

/* ---- auth ------------------------------------------------------------------------ */

enum need { READ, WRITE };

/* 0 when the request may go on (who: the token's subject and role);
 * otherwise r holds the 401/403. */
static int authorize(server *s, struct MHD_Connection *c, enum need need, bp_claims *who, reply *r)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        bp_reply_error(r, 401, "INVALID_TOKEN", "missing bearer token (Authorization: Bearer <token>; mint one with "
                       "`blueprint token --role admin`)");
        return -1;
    }
    bp_error err;
    if (bp_jwt_verify(s->secret, h + 7, (int64_t)(bp_wall_ms() / 1000), &s->expect, who, &err) < 0) {
        bp_reply_error(r, 401, "INVALID_TOKEN", "%s", err.msg);
        return -1;
    }
    /* a sign-in link's token is for POST /v1/console/session only: one seen
     * in a terminal or a browser's history must not be an API token */
    if (who->use[0]) {
        bp_reply_error(r, 401, "INVALID_TOKEN", "a sign-in token is not an API token: the console exchanges it once at "
                       "POST /v1/console/session for a session token");
        return -1;
    }
    if (who->jti[0] && bp_registry_jti_spent(s->reg, who->jti)) {
        bp_reply_error(r, 401, "INVALID_TOKEN", "this session was signed out: sign in again");
        return -1;
    }
    const char *role = who->role;
    if (!is_reader(role) || (need == WRITE && !is_writer(role))) {
        bp_reply_error(r, 403, "FORBIDDEN", "role '%s' may not %s", role, need == WRITE ? "change things" : "read this");
        return -1;
    }
    return 0;
}

int bp_parse_body(const conn *c, bp_doc *d, reply *r)
{
    bp_error err;
    if (bp_admin_body(c->body.data, c->body.len, d, &err) < 0) { bp_reply_error(r, 400, "BAD_REQUEST", "%s", err.msg); return -1; }
    return 0;
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
void bp_defer_for_checks(call *k, bp_integration *it)
{
    bp_shared_bp *sbp = bp_registry_vendor_bp(k->s->reg, it->vendor, NULL, NULL);
    int has = sbp && sbp->bp->has_verify;
    bp_shared_bp_drop(sbp);
    if (!has || k->cn->job) return;
    verify_job *j = bp_calloc(1, sizeof *j);
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
    { "GET", "/healthz", OPEN, 0, bp_api_healthz, 0 },
    { "GET", "/metrics", OPEN, 0, bp_api_metrics, 0 },
    { "GET", "/v1/admin/integration-catalog", READER, 0, bp_api_catalog, 0 },
    { "GET", "/v1/admin/integration-catalog/:vendor", READER, 0, bp_api_catalog_vendor, 0 },
    { "POST", "/v1/admin/integration-catalog/:vendor/install", WRITER, BP_MAX_ADMIN_BODY, bp_api_install, 0 },
    { "GET", "/v1/admin/integrations", READER, 0, bp_api_list_integrations, 0 },
    { "GET", "/v1/admin/integrations/:id", READER, 0, bp_api_show_integration, 0 },
    { "PATCH", "/v1/admin/integrations/:id", WRITER, BP_MAX_ADMIN_BODY, bp_api_update_integration, 0 },
    { "DELETE", "/v1/admin/integrations/:id", WRITER, 0, bp_api_delete_integration, 0 },
    { "GET", "/v1/admin/integrations/:id/revisions", READER, 0, bp_api_revisions, 0 },
    { "GET", "/v1/admin/integrations/:id/live-events", READER, 0, bp_api_live_events, 0 },
    { "GET", "/v1/admin/integrations/:id/live-events/stream", READER, 0, NULL, STREAM },
    { "GET", "/v1/admin/integrations/:id/dead-letters", READER, 0, bp_api_dead_letters, 0 },
    { "POST", "/v1/admin/integrations/:id/dead-letters/replay", WRITER, BP_MAX_ADMIN_BODY, bp_api_replay, 0 },
    { "POST", "/v1/integrations/:id/events", WRITER, MAX_INTAKE_BODY, bp_api_intake, 0 },
    { "GET", "/v1/admin/audit-log", READER, 0, bp_api_audit_log, 0 },
    { "GET", "/", OPEN, 0, bp_api_console_index, 0 },
    { "GET", "/console/vendor/codemirror/*", OPEN, 0, bp_api_console_codemirror, 0 },
    { "GET", "/console/*", OPEN, 0, bp_api_console_asset, 0 },
    { "POST", "/v1/console/session", OPEN, MAX_SIGNIN_BODY, bp_api_console_session, 0 },
    { "DELETE", "/v1/console/session", READER, 0, bp_api_console_sign_out, 0 },
    { "GET", "/v1/console/me", READER, 0, bp_api_console_me, 0 },
    { "GET", "/v1/admin/blueprints/:vendor/files", READER, 0, bp_api_blueprint_files, 0 },
    { "PUT", "/v1/admin/blueprints/:vendor/files", WRITER, BP_EDITOR_MAX_BODY, bp_api_blueprint_save, POOLED },
    { "POST", "/v1/admin/blueprints/:vendor/dry-run", WRITER, BP_EDITOR_MAX_BODY, bp_api_blueprint_dry_run, POOLED },
    { "POST", "/v1/admin/blueprints/:vendor/test", WRITER, BP_EDITOR_MAX_BODY, bp_api_blueprint_test, POOLED },
    { "GET", "/v1/admin/blueprints/:vendor/revisions", READER, 0, bp_api_blueprint_revisions, 0 },
    { "POST", "/v1/admin/blueprints/:vendor/rollback", WRITER, BP_MAX_ADMIN_BODY, bp_api_blueprint_rollback, POOLED },
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
    bp_log_field(&f, "method", method);
    bp_log_field(&f, "path", url);   /* paths carry ids only, never secrets */
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
        if (!info) return;   /* untracked: only the idle timeout applies */
        tracked *t = bp_calloc(1, sizeof *t);
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
        if (stopping) bp_reply_error(r, 503, "EDITOR_BUSY", "the server is stopping; retry in a moment");
        else bp_reply_error(r, 503, "EDITOR_BUSY", "the blueprint editor is busy (dry-runs, fixture runs and saves of "
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
        bp_reply_error(r, 503, "EDITOR_BUSY", "the server is stopping; nothing was run or saved: retry in a moment");
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
    p->threads = bp_calloc((size_t)workers, sizeof *p->threads);
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
        bp_reply_error(r, 405, "METHOD_NOT_ALLOWED", "%s is not allowed on %s (allowed: %s)", method, url, allow);
        return -1;
    }
    if (!cn->rt) { bp_reply_error(r, 404, "NOT_FOUND", "no such endpoint: %s %s", method, url); return -1; }
    cn->limit = cn->rt->body_limit;
    /* refuse a body announced too large before reading any of it */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > cn->limit) {
        bp_reply_error(r, 413, "PAYLOAD_TOO_LARGE", "the body is over %zu bytes; nothing was applied", cn->limit);
        return -1;
    }
    if (cn->rt->access != OPEN && authorize(s, c, cn->rt->access == READER ? READ : WRITE, &cn->who, r) < 0) return -1;
    return 0;
}

/* A request for an integration this node could not open (its blueprint
 * missing here, its secrets sealed with another key ring): 503 saying why
 * and what to do, rather than a 404 as if it did not exist (1), else 0. */
static int reply_unopened(bp_registry *reg, const char *id, reply *r)
{
    bp_buf msg;
    bp_buf_init(&msg);
    int listed = bp_unopened_message(bp_registry_unopened(reg), id, &msg);
    if (listed)
        bp_reply_error(r, 503, "INTEGRATION_UNAVAILABLE", "integration '%s' is not open on this node: %s (GET /healthz "
                       "lists it); nothing was accepted", id, msg.data);
    bp_buf_free(&msg);
    return listed;
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
        bp_reply_error(&r, 413, "PAYLOAD_TOO_LARGE", "the body is over %zu bytes; nothing was applied", rt->body_limit);
    } else if (strstr(rt->pattern, ":id") && !(k.it = bp_registry_find(s->reg, cn->capture))) {
        if (!reply_unopened(s->reg, cn->capture, &r))
            bp_reply_error(&r, 404, "NOT_FOUND", "no integration with id '%s'", cn->capture);
    } else {
        if (strstr(rt->pattern, ":vendor")) k.vendor = cn->capture;
        if (strchr(rt->pattern, '*')) k.rest = cn->capture;
        if (rt->mode == STREAM) {
            enum MHD_Result ret = bp_api_open_stream(&k);
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
        cn = bp_calloc(1, sizeof *cn);
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

/* The sizes serve runs with: the options', or their defaults. */
typedef struct serve_plan {
    int workers, http_threads, editor_workers, editor_queue, retention_days;
    unsigned per_ip;
} serve_plan;

static serve_plan plan_of(const bp_serve_opts *o)
{
    serve_plan p;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p.workers = o->workers > 0 ? o->workers : cores > 0 ? (int)cores : 1;
    p.http_threads = o->http_threads > 0 ? o->http_threads : 4;
    p.per_ip = o->max_connections_per_ip > 0 ? (unsigned)o->max_connections_per_ip : 1024u;
    p.editor_workers = o->editor_workers > 0 ? o->editor_workers : 2;
    p.editor_queue = o->editor_queue > 0 ? o->editor_queue : 8;
    p.retention_days = o->audit_retention_days > 0 ? o->audit_retention_days : 90;
    return p;
}

/* This node's name in the cluster: --node, else host:port, else host-pid. */
static void node_name(const bp_serve_opts *o, char *node, size_t n)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    if (o->node_name && *o->node_name) snprintf(node, n, "%s", o->node_name);
    else if (o->port) snprintf(node, n, "%s:%d", host, o->port);
    else snprintf(node, n, "%s-%d", host, (int)getpid());
}

/* The token secret and expectations, the console's files, the registry
 * (with the Live Events hook) and, with --kafka, the cluster.  -1 with
 * nothing left open. */
static int serve_open(server *s, const bp_serve_opts *o, bp_error *err)
{
    if (bp_jwt_secret(o->state_dir, s->secret, sizeof s->secret, err) < 0) return -1;
    s->expect.issuer = o->jwt_issuer && *o->jwt_issuer ? o->jwt_issuer : NULL;
    s->expect.audience = o->jwt_audience && *o->jwt_audience ? o->jwt_audience : NULL;
    bp_console_dir(o->console_dir, o->blueprints_dir, s->console_dir, sizeof s->console_dir);
    if (!(s->reg = bp_registry_open(o->blueprints_dir, o->state_dir, err))) return -1;
    bp_registry_configure(s->reg, o->rate_limit_rps, o->retry_base_ms, o->batch, bp_streams_on_live, s);
    /* every node prunes its own store (other nodes' outcome records too) by the same rules */
    bp_retention keep = { (o->keep_delivered_s > 0 ? o->keep_delivered_s : 7 * 86400) * 1000,
                          (o->keep_dead_s > 0 ? o->keep_dead_s : 30 * 86400) * 1000, BP_ONCE_TTL_S * 1000 };
    bp_store_set_retention(bp_registry_store(s->reg), &keep);
    if (o->kafka_brokers && *o->kafka_brokers) {
        char node[300];
        node_name(o, node, sizeof node);
        bp_cluster_opts co = { o->kafka_brokers, o->cluster_name, o->topic_mode, node, o->kafka_session_timeout_ms,
                               o->kafka_partitions, o->kafka_config };
        if (!(s->cluster = bp_cluster_new(s->reg, &co, err))) { bp_registry_close(s->reg); return -1; }
    }
    return 0;
}

/* SIGTERM/SIGINT are taken with sigwait in the main loop, so block them in every thread. */
static void block_signals(sigset_t *sigs)
{
    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int listen_address(const bp_serve_opts *o, struct sockaddr_in *addr, bp_error *err)
{
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &addr->sin_addr) == 1) return 0;
    bp_error_set(err, "--listen: '%s' is not an IPv4 address", o->host);
    return -1;
}

static struct MHD_Daemon *start_daemon(server *s, struct sockaddr_in *addr, const serve_plan *p)
{
    return MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)p->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, 8192u, MHD_OPTION_PER_IP_CONNECTION_LIMIT, p->per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_END);
}

/* The main thread: watch blueprints for changes, keep streams alive, cut
 * slow requests and purge the audit log hourly, until a signal arrives. */
static void run_until_signal(server *s, const sigset_t *sigs, int retention_days)
{
    struct timespec tick = { 0, 300 * 1000 * 1000 };
    double last_purge = 0;
    for (;;) {
        int sig = sigtimedwait(sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) break;
        bp_registry_check_reload(s->reg);
        bp_streams_wake(s, 0);
        reap_slow(s);
        if (bp_monotonic_ms() - last_purge > 3600 * 1000.0 || last_purge == 0) {   /* hourly */
            bp_registry_audit_purge(s->reg, retention_days);
            last_purge = bp_monotonic_ms();
        }
    }
}

/* Requests in flight are finished, streams ended, the editor's pool and the
 * install checks drained; then MHD stops and the registry closes. */
static void shut_down(server *s, struct MHD_Daemon *d)
{
    bp_log("info", "shutting down: finishing requests in flight; pending events stay stored", NULL);
    bp_streams_wake(s, 1);
    MHD_quiesce_daemon(d);
    /* streams end at their next read; give them a moment, then stop */
    for (int i = 0; i < 50 && bp_streams_resume_all(s); i++) usleep(10 * 1000);
    pool_stop(s);   /* every job answered and its connection resumed: MHD may stop */
    /* install/update checks end by their run's deadline (verify.c: VERIFY_TIMEOUT_MS, +1 s for the
     * transport to say why): their answers go out first, and no check thread outlives the server */
    for (int i = 0; i < (VERIFY_TIMEOUT_MS + 3000) / 10; i++) {
        pthread_mutex_lock(&s->streams_mu);
        int busy = s->verifying;
        pthread_mutex_unlock(&s->streams_mu);
        if (!busy) break;
        usleep(10 * 1000);
    }
    MHD_stop_daemon(d);
    pool_free(s);
    bp_registry_close(s->reg);
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
    if (serve_open(&s, o, err) < 0) return serve_failed(err);
    sigset_t sigs;
    block_signals(&sigs);
    struct sockaddr_in addr;
    if (listen_address(o, &addr, err) < 0) {
        bp_registry_close(s.reg);
        return serve_failed(err);
    }
    serve_plan p = plan_of(o);
    if (bp_registry_start(s.reg, p.workers, err) < 0 || (s.cluster && bp_cluster_start(s.cluster, err) < 0) ||
        pool_start(&s, p.editor_workers, p.editor_queue, err) < 0) {
        pool_stop(&s);
        bp_registry_close(s.reg);
        return serve_failed(err);
    }
    struct MHD_Daemon *d = start_daemon(&s, &addr, &p);
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
    char address[300];
    snprintf(address, sizeof address, "%s:%d", o->host, port);
    bp_log_field(&f, "address", address);
    bp_log_field(&f, "blueprints", o->blueprints_dir);
    bp_log_field(&f, "state", o->state_dir);
    bp_log_field(&f, "console", s.console_dir);
    bp_buf_printf(&f, ",\"integrations\":%zu,\"delivery_threads\":%d,\"http_threads\":%d,\"editor_workers\":%d,"
                  "\"editor_queue\":%d,\"request_time_limit_s\":%.0f", bp_registry_count(s.reg), p.workers,
                  p.http_threads, p.editor_workers, p.editor_queue, s.request_limit_ms / 1000);
    bp_log("info", "serving", f.data);
    bp_buf_free(&f);

    run_until_signal(&s, &sigs, p.retention_days);
    shut_down(&s, d);
    pthread_mutex_destroy(&s.streams_mu);
    pthread_mutex_destroy(&s.conns_mu);
    bp_log("info", "stopped", NULL);
    return 0;
}
