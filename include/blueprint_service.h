/*
 * blueprint_service.h — delivery and the service, apart from the mapping API.
 *
 * blueprint.h maps events to requests and touches nothing outside the
 * caller's objects (apart from the watchdog it documents).  What is declared
 * here sends those requests and runs the service: it uses libcurl, SQLite
 * (a state directory on disk), libmicrohttpd and, in cluster mode, Kafka,
 * and it starts threads of its own.  The CLI's `deliver` and `serve`
 * commands are these two calls.  The rules of blueprint.h (ownership,
 * errors, threads) hold here too.
 *
 * This API is libblueprint-service (pkg-config blueprint-service), a
 * library apart from the mapping library libblueprint, which it links: a
 * program that only maps events links libblueprint alone and loads none of
 * libcurl, SQLite, libmicrohttpd, libcrypto or librdkafka.
 */
#ifndef BLUEPRINT_SERVICE_H
#define BLUEPRINT_SERVICE_H

#include "blueprint.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- delivery (deliver.c) -------------------------------------------------- */

/* The caller's struct, set up with bp_deliver_opts_default; the strings and
 * callbacks in it are borrowed for the duration of bp_deliver. */
typedef struct bp_deliver_opts {
    const char *state_dir;        /* default "./var" */
    int input_fd;                 /* events to add first; -1 = none */
    int concurrency;              /* requests in flight at once; default 8 */
    int max_attempts;             /* 0 = the blueprint's retry.max_attempts */
    long retry_base_ms;           /* backoff base, default 1000 */
    long retry_cap_ms;            /* backoff ceiling, default 60000 */
    long connect_timeout_ms;      /* default 5000 */
    long http_timeout_ms;         /* default 30000 */
    double rate_limit_rps;        /* 0 = the blueprint's rate_limit */
    long once_ttl_s;              /* how long a once-key (contact sync) counts; default 600 */
    bp_limits limits;
    void (*emit)(void *ctx, const char *line, size_t len);   /* one outcome line per event */
    void *emit_ctx;
    /* Called for every vendor answer (metrics). */
    void (*on_answer)(void *ctx, int status, double duration_ms);
    /* Service mode: keep running and pick up events added to the store by
     * others until *stop becomes non-zero; then finish what is in flight. */
    int follow;
    /* Set from a signal handler, read by the loop: volatile int (the type a
     * handler may write, and one a C++ embedder can declare), not a C11
     * atomic, which this public header cannot require. */
    volatile int *stop;
    /* Send a backlog of events a blueprint's `batch:` takes as batches
     * (min_events or more of one account waiting); 0 = one by one.
     * bp_deliver_opts_default sets 1. */
    int batch;
} bp_deliver_opts;

/* Counters filled by bp_deliver into the caller's struct. */
typedef struct bp_deliver_stats {
    long added, duplicates, delivered, dropped, errors, dead, held, requests, retries, rate_limited;
    long latency_us[1001];   /* vendor answer times: [i] counts answers in [i·100 µs, (i+1)·100 µs), [1000] slower */
} bp_deliver_stats;

/* The q-quantile (0..1) of the answer times in stats, in milliseconds. */
BP_API double bp_deliver_latency_ms(const bp_deliver_stats *s, double q);

BP_API void bp_deliver_opts_default(bp_deliver_opts *o);
/* Add the input events to the store, then deliver every pending event until
 * each is final (delivered, dropped, error, dead letter) or held because the
 * credentials failed.  Returns 0 when all are final, 3 when some are held,
 * -1 with err set when the store or input cannot be used.  opts and stats
 * may be NULL.  Delivers from the calling thread (emit and on_answer are
 * called there); bp and cfg are only read. */
BP_API int bp_deliver(const bp_blueprint *bp, const bp_config *cfg, const bp_deliver_opts *opts,
                      bp_deliver_stats *stats, bp_error *err);

/* ---- the service (server.c, registry.c) ---------------------------------------- */

/* The caller's struct (zero it for the defaults); borrowed during bp_serve. */
typedef struct bp_serve_opts {
    const char *host;            /* default 127.0.0.1 */
    int port;                    /* default 8084; 0 = any free port */
    const char *state_dir;       /* default ./var */
    const char *blueprints_dir;  /* default ./blueprints */
    double rate_limit_rps;       /* override every blueprint's pacing (tests); 0 = no */
    long retry_base_ms;          /* 0 = default */
    int workers;                 /* delivery threads; 0 = one per core */
    int http_threads;            /* API threads; 0 = 4 */
    int max_connections_per_ip;  /* 0 = 1024 */
    const char *jwt_issuer;      /* when set, tokens must carry this iss */
    const char *jwt_audience;    /* when set, tokens' aud must include it */
    int audit_retention_days;    /* 0 = 90 */
    /* cluster mode (NULL brokers: one node, SQLite only) */
    const char *kafka_brokers;   /* bootstrap servers, e.g. "k1:9092,k2:9092" */
    const char *cluster_name;    /* consumer group and topic prefix; default "blueprint" */
    const char *topic_mode;      /* "per_integration" (default) or "per_vendor" */
    const char *node_name;       /* default HOST:PORT */
    int kafka_session_timeout_ms;/* 0 = 10000 */
    int kafka_partitions;        /* partitions of the topics serve creates; 0 = 12 */
    const char *console_dir;     /* the web console's files; NULL: console/ beside the blueprints
                                    folder, else the installed share/blueprint/console */
    const char *kafka_config;    /* key=value lines of librdkafka settings (TLS, SASL) for every
                                    Kafka client; NULL: none */
    int editor_workers;          /* threads running editors' dry-runs, fixture runs and save checks; 0 = 2 */
    int editor_queue;            /* editor jobs that may wait for them (more: 503 EDITOR_BUSY); 0 = 8 */
    int request_time_limit_s;    /* the total time a request's headers and body may take; 0 = 30 */
    /* how long STATE/events.db keeps final events, in seconds (unfinished ones are never pruned) */
    int64_t keep_delivered_s;    /* delivered and dropped; 0 = 7 days */
    int64_t keep_dead_s;         /* dead letters and errors not replayed; 0 = 30 days */
    int batch;                   /* deliver backlogs in batches (blueprint.yaml batch:); 0 = one by one */
} bp_serve_opts;

/* Run the Management API, intake and delivery workers until SIGTERM/SIGINT;
 * prints "listening on http://HOST:PORT" on stdout once ready.  It is a
 * program's main loop, not a library call: it blocks SIGTERM and SIGINT in
 * the calling thread (and so in the threads it starts) and waits for them,
 * ignores SIGPIPE, raises the open-files limit, and logs to stderr unless a
 * log callback is set (bp_set_log).  One per process. */
BP_API int bp_serve(const bp_serve_opts *o, bp_error *err);

/* ---- the CLI's service commands (cli.c) ------------------------------------------ */

/* `blueprint deliver|dlq|serve|token|rotate-key …` (argv as main's: argv[1]
 * is the command); returns the exit status.  The `blueprint` program runs
 * its other commands itself and loads this library for these. */
BP_API int bp_service_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
