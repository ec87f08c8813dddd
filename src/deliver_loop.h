/*
 * deliver_loop.h — the delivery loops' state: jobs, tenants, accounts,
 * paces, commands, loops and the pool, shared by the files that make up
 * delivery and by nothing else:
 *
 *   deliver_job.c     an event's job: outcome lines, group commits, loading and mapping;
 *                     health and the vendor's pace
 *   deliver_batch.c   batches: forming them, their requests and status requests, each
 *                     event's result, open batches after a restart
 *   deliver_send.c    dispatch (paced sends) and the answers (classify, retry, pause)
 *   deliver_tenant.c  tenants, accounts and their paces, engines, commands
 *   deliver.c         a loop's turn, the pool of loops, `blueprint deliver`
 *
 * Each file calls only those listed above it, so the doors open one way.
 * The functions below are the loops' own (bp_dl_): each is described where
 * it is defined.
 */
#ifndef BP_DELIVER_LOOP_H
#define BP_DELIVER_LOOP_H

#include "service.h"

#include <pthread.h>

#define WINDOW_PACED 16         /* events in memory per account paced below 100/s */
#define WINDOW_FAST 256         /* per account otherwise */
#define WINDOW_BATCHES 4        /* with --batch: room for this many batches (× max_events) */
#define INSERT_BATCH 500
#define MAX_SAVED_RESPONSE 512
#define COMMIT_EVERY_MS 10
#define TENANT_BUCKETS 4096
/* Pace 3% under the vendor's limit: at 5/s no more than 5 requests leave
 * in any 1031 ms, so up to 30 ms of jitter between us and the vendor's
 * clock never puts a sixth request inside its one-second window. */
#define PACE_MARGIN 0.97
#define NEVER 1e300

typedef struct job job;
typedef struct tenant tenant;
typedef struct account account;
typedef struct engine_slot engine_slot;
typedef struct loop loop;
typedef struct batch batch;

/* What a request in flight belongs to: the transport's user pointer points
 * at a job or a batch, and both begin with this. */
enum sent_by { SENT_BY_JOB, SENT_BY_BATCH };

struct job {
    enum sent_by sent_by;       /* SENT_BY_JOB (0: bp_calloc) */
    job *next;                  /* in its account's list while not final */
    job *dirty_next;            /* in the loop's list of unsaved jobs */
    int dirty, final;
    tenant *t;
    bp_stored ev;
    bp_outcome out;
    long index;                 /* position in the input that added it, -1 for recovered events */
    int inflight;
    int remap;                  /* run the mapping again before sending (a step's shared answer is being fetched) */
    unsigned generation;        /* of the tenant's config when the request left */
    double first_ms;            /* first attempt, for duration_ms */
    int last_status;
    const char *state;          /* to store: pending delivered dropped error dead held */
    char why[300];
    bp_buf response;
    bp_buf line;                /* the outcome line to store with it (final or retrying) */
    int64_t line_batch;         /* the batch that line names (0: none): stored with it, for ?batch= */
    char revision[BP_REVISION_LEN];   /* of the blueprint that mapped it */
    /* batches (deliver_batch.c) */
    batch *batch;               /* the open batch it is in: not sent alone meanwhile */
    int reserved;               /* waits for a batch being formed */
    int alone;                  /* never batched (a step of its batch mapping was refused) */
    int went_alone;             /* one of its own requests was sent: it finishes alone */
    double loaded_ms;           /* wall: when it came into memory */
    struct { int64_t id; int size, polls; char request[200]; } bt;   /* the batch it ended in (id 0: none) */
};

/* A batch of one tenant's events, open from its request until each event
 * has its result. */
struct batch {
    enum sent_by sent_by;       /* SENT_BY_BATCH */
    batch *next;                /* the account's open batches */
    int64_t id;                 /* its row in the store (batchstore.c) */
    tenant *t;
    job **jobs; size_t n;
    bp_batch b;                 /* the request and reader, in engine's Lua state */
    bp_engine *engine;          /* NULL: run the mapping again before reading (a restart, a new config) */
    int inflight, queued, failures;
    int polls;                  /* status requests sent */
    double next_ms;             /* wall: when its next request may leave */
    unsigned generation;        /* of the tenant's config when the request left */
    int rerun;                  /* run the mapping again before going on (a step answered, a shared answer awaited) */
    bp_buf journal;             /* the answers of the batch mapping's steps (ctx.send), before its request */
    int answer_status;          /* the last answer that asked for a status request, for a reader made again */
    char *answer_url; bp_buf answer_body;
};

struct engine_slot {
    engine_slot *next;
    bp_shared_bp *bp;
    bp_engine *engine;
    int refs;                   /* tenants bound to it */
};

struct tenant {
    tenant *next, *hash_next;   /* the loop's list; its id bucket */
    char *id;
    bp_shared_bp *bp;
    bp_config *cfg;
    engine_slot *eng;
    bp_binding bind;
    account *acct;
    const bp_sink *sink;
    void *ctx;
    bp_counts *st;
    int64_t last_loaded_id, index_from_id;
    int64_t max_loaded_id;      /* the highest id ever loaded */
    int64_t rescan_below;       /* ids under it may be in memory already (a rescan) */
    int more, rescan, paused, max_attempts;
    int release_held;           /* credentials changed: move held events back once holds are saved */
    unsigned generation;        /* bumped by every new config: answers to older requests */
    char pause_reason[512];
    bp_health health;           /* as last reported to the sink */
    int njobs;                  /* jobs referring to it, saved or not */
    int batched;                /* of them in open batches */
    int unsaved_final;          /* final jobs waiting for their commit */
    int inflight;
    int removing, purge;
    int borrowed_cfg;           /* deliver's: the caller frees it */
    bp_tenant_spec forward;     /* a put to apply once drained (a new account), id NULL: none */
};

/* The pace of one vendor account, shared by the loops that serve its
 * integrations (an integration's loop is picked by its id). */
typedef struct pace {
    struct pace *next;
    char *key;
    pthread_mutex_t mu;         /* guards bucket and imports */
    bp_bucket bucket;
    bp_window *imports;         /* batches' own requests, for batch.max_per_minute (NULL: none yet) */
    double base_rps;            /* the blueprint's limit (or the override); written with both
                                   the pool's mu and mu held */
    double share;               /* the part of it this node uses (cluster mode); as base_rps */
    int refs;                   /* loop accounts using it; guarded by the pool's mu */
} pace;

struct account {
    char *key;
    pace *pace;
    job *jobs;                  /* not final, in load order */
    int njobs, inflight, window;
    /* So that a turn costs what changed, not the number of accounts:
     * dispatch skips the account until next_ms (0: look now; NEVER: until
     * an answer arrives), and load looks only at accounts flagged. */
    double next_ms;
    int check_load;
    tenant **members; size_t nmembers, capmembers, rr;
    batch *batches;             /* open batches of its tenants */
};

enum cmd_kind { CMD_PUT, CMD_REMOVE, CMD_WAKE, CMD_RESCAN, CMD_STOP };

typedef struct cmd {
    struct cmd *next;
    enum cmd_kind kind;
    bp_tenant_spec spec;        /* CMD_PUT */
    char *id;
    int purge;
} cmd;

typedef struct mark { tenant *t; char *key; int64_t at; } mark;

/* Threads: everything in a loop, and in its tenants, accounts, jobs and
 * engines, belongs to the loop's own thread, except the inbox (inbox_mu)
 * and the paces its accounts share with other loops (pace.mu).  Other
 * threads reach a loop only by post() and bp_transport_wakeup(). */
struct loop {
    bp_pool *pool;              /* fixed */
    int index;                  /* fixed */
    pthread_t thread;
    int started;                /* set before the thread runs, read at free */
    bp_transport *tr;
    bp_store *store;
    const bp_deliver_opts *o;
    const bp_lease *lease;      /* cluster mode: which partitions this node still owns (NULL: no Kafka) */
    tenant *tenants;
    tenant *by_id[TENANT_BUCKETS];
    account **accounts; size_t naccounts, capaccounts, rr;
    engine_slot *engines;
    job *dirty, **dirty_tail;
    double dirty_since, commit_retry_at, commit_backoff_ms;
    int store_failing;
    double failing_since;
    mark *marks; size_t nmarks, capmarks;
    int64_t *closed; size_t nclosed, capclosed;   /* batch rows to delete with the next commit */
    double adopt_at;            /* cluster mode: next look for batches queued for another node (wall ms) */
    bp_cache *cache;            /* the pool's (shared by its loops), or the loop's own (deliver) */
    pthread_mutex_t inbox_mu;   /* guards inbox */
    cmd *inbox, **inbox_tail;
    int stopping;               /* loop thread only */
    int nremoving;              /* tenants draining before they leave */
    uint64_t rng;
};

struct bp_pool {
    bp_store *store;
    bp_deliver_opts o;
    bp_lease lease;             /* holds NULL outside cluster mode */
    loop *loops;
    int nloops;
    pthread_mutex_t mu;         /* guards paces and shares */
    pace *paces;
    /* cluster mode: accounts this node paces at a part of their limit, the
     * rest being other nodes' (bp_pool_set_shares); absent: all of it */
    char **share_keys;
    double *shares;
    size_t nshares;
    bp_cache *cache;            /* ctx.cache and shared step answers, per account, for every loop */
};

/* ---- deliver_job.c ---- */

void bp_dl_abandon(loop *l, job *j);
void bp_dl_add_mark(loop *l, tenant *t, const char *key, int64_t at);
double bp_dl_backoff_ms(loop *l, int failures, double retry_after_s);
void bp_dl_commit(loop *l);
void bp_dl_count(_Atomic long *c);
void bp_dl_credentials_fingerprint(const bp_config *cfg, const bp_blueprint *bp, char out[17]);
void bp_dl_finish(loop *l, job *j, enum bp_end end);
void bp_dl_free_job(job *j);
uint64_t bp_dl_hash_text(const char *s);
void bp_dl_hold(loop *l, job *j);
int bp_dl_lease_lost(const loop *l, const job *j);
void bp_dl_load(loop *l);
void bp_dl_log_tenant(const char *level, const char *msg, const tenant *t, const char *detail);
void bp_dl_map_job(loop *l, job *j);
int bp_dl_mark_pending(loop *l, const tenant *t, const char *key);
int bp_dl_marks_of(loop *l, const tenant *t, int forget);
void bp_dl_save_progress(loop *l, job *j);
void bp_dl_set_reason(job *j, const char *fmt, const char *a, const char *b);
void bp_dl_unlink_job(account *a, job *j);
void bp_dl_write_line(loop *l, job *j, enum bp_end end);

void bp_dl_report_health(tenant *t, int state, const char *reason, int64_t until_ms);
void bp_dl_report_health_at(tenant *t, int state, const char *reason, int64_t until_ms, int64_t since_ms,
                            const bp_response *resp);
void bp_dl_pause_tenant(loop *l, tenant *t, const char *why, const bp_response *resp);
void bp_dl_obey_vendor_pace(account *a, const bp_response *resp);
void bp_dl_share_answer(loop *l, account *a, const bp_request *req, const bp_response *resp, uint64_t owner);

/* ---- deliver_batch.c ---- */

double bp_dl_batch_dispatch(loop *l, account *a, double now, double mono);
void bp_dl_batch_answer(loop *l, batch *b, const bp_response *resp);
void bp_dl_batch_recover(loop *l, tenant *t);
void bp_dl_batch_forget(loop *l, tenant *t, int keep);
void bp_dl_batch_adopt(loop *l, tenant *t);

/* ---- deliver_send.c ---- */

double bp_dl_dispatch(loop *l);
void bp_dl_on_answer(void *ctx, void *user, const bp_response *resp);

/* ---- deliver_tenant.c ---- */

void bp_dl_add_tenant(loop *l, const bp_tenant_spec *s);
void bp_dl_detach_tenant(loop *l, tenant *t);
tenant *bp_dl_find_tenant(loop *l, const char *id);
void bp_dl_handle_commands(loop *l);
void bp_dl_leave_account(loop *l, tenant *t);
void bp_dl_pace_free(pace *p);
void bp_dl_reap(loop *l);
void bp_dl_tenant_free(tenant *t);
void bp_dl_unbind_engine(loop *l, tenant *t);

#endif
