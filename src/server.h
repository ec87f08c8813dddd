/*
 * server.h — what server.c (the HTTP plumbing of `blueprint serve`) shares
 * with the files that hold its handlers: admin_api.c, events_api.c,
 * live_stream.c, console_api.c, health_api.c.  Private to them; nothing
 * else includes it.
 *
 * server.c owns libmicrohttpd, the route table, replies, the auth of a
 * request, the editor's pool and the install checks' parked connections;
 * a handler gets a call (the route's parts) and fills its reply.  Handlers
 * never wait for a vendor and never run blueprint code on an HTTP thread
 * (the editor's routes run in the pool).
 */
#ifndef BP_SERVER_H
#define BP_SERVER_H

#include "service.h"

#include <microhttpd.h>
#include <string.h>

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
    bp_cluster *cluster;          /* --kafka: the cluster (the registry closes it), else NULL */
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

static inline int is_writer(const char *role)
{
    return !strcmp(role, "owner") || !strcmp(role, "admin") || !strcmp(role, "editor");
}
static inline int is_reader(const char *role) { return is_writer(role) || !strcmp(role, "viewer"); }

/* ---- server.c: replies and bodies ---- */
void bp_reply_error(reply *r, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* {"error":{"code","message"…}}; extra: more members (",\"file\":…"), or NULL. */
void bp_reply_error_with(reply *r, int status, const char *code, const char *msg, const char *extra);
/* The request's body as one JSON object within the admin limits; else r holds the 400. */
int bp_parse_body(const conn *c, bp_doc *d, reply *r);
/* A handler whose change succeeded: its answer waits for the blueprint's
 * install checks (verify: mapping) when it has any. */
void bp_defer_for_checks(call *k, bp_integration *it);

/* ---- admin_api.c: the Management API's integrations, catalog and audit log ---- */
void bp_write_str(bp_buf *b, const char *key, const char *v, int comma);
/* Cluster mode: a vendor's ,"cluster":{…} (1 when this node refuses the cluster's revision). */
int bp_write_cluster_blueprint(bp_buf *b, const bp_vendor *v, int detail);
void bp_write_blueprint_state(bp_buf *b, const bp_vendor *v);
/* The same, taking the registry's lock. */
void bp_write_blueprint_state_of(bp_registry *reg, bp_buf *b, const bp_vendor *v);
int bp_api_health_state(const bp_integration *it);
void bp_api_catalog(call *k);
void bp_api_catalog_vendor(call *k);
void bp_api_install(call *k);
void bp_api_list_integrations(call *k);
void bp_api_show_integration(call *k);
void bp_api_update_integration(call *k);
void bp_api_delete_integration(call *k);
void bp_api_revisions(call *k);
void bp_api_audit_log(call *k);

/* ---- health_api.c ---- */
void bp_api_healthz(call *k);
/* "retention":{…}: how long the store keeps final events and the oldest it
 * keeps, of one integration or (NULL) of all (health_api.c). */
void bp_write_retention(bp_buf *b, bp_store *store, const char *integration);
void bp_api_metrics(call *k);

/* ---- events_api.c: intake, live events, dead letters and their replay ---- */
void bp_api_intake(call *k);
void bp_api_live_events(call *k);
void bp_api_dead_letters(call *k);
void bp_api_replay(call *k);

/* ---- live_stream.c: the Live Events stream (Server-Sent Events) ---- */
enum MHD_Result bp_api_open_stream(call *k);
/* The registry's on_live hook (registry mu held); ctx is the server. */
void bp_streams_on_live(void *ctx, bp_integration *it);
/* Resume streams due a keep-alive (or all of them, when stopping). */
void bp_streams_wake(server *s, int all);
/* Resume every stream so that it reads (and ends, when stopping); 1 while any is open. */
int bp_streams_resume_all(server *s);
/* The streams of a signed-out session end: each one, woken, finds its jti spent. */
void bp_streams_end_session(server *s, const char *jti);

/* ---- console_api.c: the console's files, sign-in and the blueprint editor ---- */
void bp_api_console_index(call *k);
void bp_api_console_asset(call *k);
void bp_api_console_codemirror(call *k);
void bp_api_console_session(call *k);
void bp_api_console_sign_out(call *k);
void bp_api_console_me(call *k);
void bp_api_blueprint_files(call *k);
void bp_api_blueprint_dry_run(call *k);
void bp_api_blueprint_test(call *k);
void bp_api_blueprint_save(call *k);
void bp_api_blueprint_revisions(call *k);
void bp_api_blueprint_rollback(call *k);

#endif
