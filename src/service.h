/*
 * service.h — interfaces shared between the service's subsystems (transport,
 * the store, delivery, secrets, the registry and its rooms, the cluster, the
 * console), not part of the public API (blueprint_service.h).  They are
 * built into libblueprint-service; the mapping core below them (internal.h)
 * never includes this file, which is what keeps libblueprint free of the
 * network packages.
 */
#ifndef BLUEPRINT_SERVICE_INTERNAL_H
#define BLUEPRINT_SERVICE_INTERNAL_H

#include "blueprint_service.h"
#include "internal.h"

/* ---- transport.c ------------------------------------------------------------- */

typedef struct bp_response {
    int status;               /* HTTP status, 0 when no answer */
    int curl_code;            /* 0 = transfer completed */
    char error[128];          /* transfer error text */
    double retry_after_s;     /* Retry-After, 0 if absent */
    int ratelimit_remaining;  /* RateLimit-Remaining, -1 if absent */
    int ratelimit_limit;      /* RateLimit-Limit, 0 if absent */
    char content_type[96];
    bp_buf body;              /* first 64 KiB of the answer */
    double duration_ms;
} bp_response;

typedef struct bp_transport bp_transport;
typedef void (*bp_transport_done)(void *ctx, void *user, const bp_response *resp);

bp_transport *bp_transport_new(long connect_timeout_ms, long timeout_ms);
void bp_transport_free(bp_transport *t);
/* Start a request; secrets are substituted from cfg here and nowhere else. */
int bp_transport_send(bp_transport *t, const bp_request *r, const bp_config *cfg, void *user);
/* Drive transfers, waiting up to wait_ms for activity; calls cb for each
 * finished request.  Returns how many finished. */
int bp_transport_poll(bp_transport *t, int wait_ms, bp_transport_done cb, void *ctx);
int bp_transport_active(const bp_transport *t);
void bp_transport_wakeup(bp_transport *t);
void bp_transport_flush(bp_transport *t);
void bp_transport_keep_connections(bp_transport *t, long n);

/* ---- classify.c ----------------------------------------------------------------- */

/* What a vendor answer means for delivery (docs/delivery.md and docs/blueprints.md, What an answer means): the blueprint's
 * responses: rules first (bp may be NULL), then plain HTTP semantics.  `why`
 * gets a short human explanation.  Cheap and non-blocking: it runs in the
 * delivery loop for every answer. */
enum bp_class bp_classify(const bp_blueprint *bp, const bp_request *req, const bp_response *resp,
                          char *why, size_t whylen);

/* ---- ratelimit.c ---------------------------------------------------------------- */

#define BP_PACE_LOG 64

/* A vendor account's pace: a sliding window of the last sends (ratelimit.c). */
typedef struct bp_bucket {
    double rate;                /* the vendor's limit, requests per second; 0 = unlimited */
    double margin;              /* the share of it we use (window stretched by 1/margin) */
    int n, pos;                 /* requests allowed per window; next slot of sent[] */
    double window_ms, interval_ms;
    double sent[BP_PACE_LOG];   /* send times of the last n requests (0: none) */
    double last_ms;
    int full_gap;               /* the vendor said its window is full: next waits a whole interval */
    double blocked_until_ms;    /* from Retry-After */
} bp_bucket;

void bp_bucket_init(bp_bucket *b, double limit_per_s, double margin, double now_ms);
void bp_bucket_set_rate(bp_bucket *b, double limit_per_s);
/* Take a send slot at now_ms if there is one: returns 0, else the ms to wait. */
double bp_bucket_take(bp_bucket *b, double now_ms);
/* The vendor said: wait this long before the next request. */
void bp_bucket_block(bp_bucket *b, double until_ms);
/* The vendor says its window is full: no catching up on the next request. */
void bp_bucket_drain(bp_bucket *b);

/* A bound on some of an account's requests over a longer window (a batch's
 * own requests: blueprint.yaml batch.max_per_minute), on top of its pace. */
typedef struct bp_window bp_window;
/* 0 when one more may leave at now_ms under `limit` per window_ms (limit 0:
 * unbounded), and with `take` it is counted; else the ms to wait.  *w is
 * made, or resized to a new limit keeping its newest sends. */
double bp_window_take(bp_window **w, int limit, double window_ms, double now_ms, int take);
void bp_window_free(bp_window *w);

/* ---- store.c ---------------------------------------------------------------------- */

#include <pthread.h>

typedef struct bp_store bp_store;
struct sqlite3;

typedef struct bp_stored {
    int64_t id;
    char *body; size_t body_len;
    int attempts, failures, done_requests;
    int64_t next_at;            /* wall-clock ms */
    long idx;                   /* input position in the run (or intake request) that added it */
    int64_t ksrc;               /* cluster mode: the partition slot it was read from (0: none) */
    int64_t koff;               /* and its offset there (idx: its index in the message) */
    char *steps; size_t steps_len;   /* the journal of its steps' answers (steps.c), NULL: none */
} bp_stored;

/* Where an event read from Kafka came from (cluster mode). */
typedef struct bp_source {
    const char *topic;
    int partition;
    int64_t offset;
    int index;                  /* its position in the message */
    int64_t slot;               /* this node's lease on the partition (cluster.c) */
} bp_source;

typedef struct bp_store_row {
    int64_t id;
    const char *message_id;
    int attempts, last_status;
    const char *reason, *response, *outcome;
    int64_t updated_at;
    const char *body, *state;
    const char *ktopic;         /* cluster mode: where it was read from (NULL: not from Kafka) */
    int kpart;
    int64_t koff;
    int kidx;
    int64_t batch;              /* the batch it went in (0: alone) */
} bp_store_row;
typedef void (*bp_store_row_fn)(void *ctx, const bp_store_row *row);

typedef struct bp_store_status {
    int failing;                /* the last transaction failed */
    long failures;              /* failed transactions since start */
    char last_error[256];
    long pruned;                /* events removed by retention since open */
    int64_t bytes;              /* the database file and its WAL */
} bp_store_status;

/* How long final events are kept (0: forever, the default: `deliver` keeps
 * everything).  Events waiting (pending, retrying, held) are never pruned. */
typedef struct bp_retention {
    int64_t delivered_ms;       /* delivered and dropped, since their outcome */
    int64_t dead_ms;            /* dead letters and errors, since their outcome (unless replayed) */
    int64_t once_ms;            /* once-keys (contact syncs) older than this count no more */
} bp_retention;
#define BP_ONCE_TTL_S 600       /* how long a once-key counts by default (bp_deliver_opts.once_ttl_s) */

/* One SQLite database (DIR/FILE) for the events of every integration;
 * `integration` is "" for a single-integration store (deliver).  Safe to
 * share between threads (see store.c for the locking). */
bp_store *bp_store_open(const char *dir, const char *file, bp_error *err);
/* Install the store's busy handler on another SQLite connection (server.db). */
int bp_store_busy_handler(struct sqlite3 *db);
void bp_store_close(bp_store *s);
/* A write transaction: begin holds the write connection until commit, which
 * rolls back instead when ok is 0 or the commit fails.  -1: nothing written
 * (the reason is in bp_store_health). */
int bp_store_begin(bp_store *s);
int bp_store_commit(bp_store *s, int ok);
void bp_store_rollback(bp_store *s);
void bp_store_health(bp_store *s, bp_store_status *out);
/* Start pruning by r on the store's own thread, in small batches (a few
 * hundred rows per short write transaction, with pauses), never touching
 * unfinished events. */
void bp_store_set_retention(bp_store *s, const bp_retention *r);
bp_retention bp_store_retention(bp_store *s);
/* The creation time (ms) of the oldest event kept, of one integration or
 * (NULL) of all; 0 when there is none. */
int64_t bp_store_oldest(bp_store *s, const char *integration);
/* Returns the new id, 0 when an event with that message id is already
 * stored for the integration (not stored twice), -1 on error. */
int64_t bp_store_add(bp_store *s, const char *integration, const char *json, size_t len, long idx,
                     const char *message_id, int64_t now);
int64_t bp_store_add_from(bp_store *s, const char *integration, const char *json, size_t len, const char *message_id,
                          const bp_source *src, int64_t now);
int bp_store_record(bp_store *s, const char *integration, const bp_source *src, const bp_store_row *r);
long bp_store_release_slot(bp_store *s, int64_t slot);
int bp_store_slot_progress(bp_store *s, void (*fn)(void *ctx, int64_t slot, int64_t min_offset, long n), void *ctx);
int bp_store_waiting_integrations(bp_store *s, int64_t before, void (*fn)(void *ctx, const char *integration), void *ctx);
long bp_store_end_sourced(bp_store *s, const char *integration, const char *state, const char *reason);
int bp_store_update(bp_store *s, const bp_stored *e, const char *state, int last_status, const char *reason,
                    const char *response, const char *outcome, int64_t batch, int64_t now);
int bp_store_pending(bp_store *s, const char *integration, int64_t after_id, int limit, bp_stored **out, size_t *n);
int bp_store_once_seen(bp_store *s, const char *integration, const char *key, int64_t since);
/* Durable ctx.cache values (cache.c's backing): put one, set by `event`'s
 * run (0: none); get answers 1 and appends it while it has not expired and
 * its event is over (delivered, dropped or gone), else 0. */
int bp_store_cache_put(bp_store *s, const char *account, const char *key, const char *json, size_t len,
                       int64_t expires_ms, int64_t event);
int bp_store_cache_get(bp_store *s, const char *account, const char *key, int64_t now_ms, bp_buf *out,
                       int64_t *expires_ms);
int bp_store_once_mark(bp_store *s, const char *integration, const char *key, int64_t now);
char *bp_store_meta_get(bp_store *s, const char *integration, const char *key);
int bp_store_meta_set(bp_store *s, const char *integration, const char *key, const char *value);
long bp_store_move(bp_store *s, const char *integration, const char *from, const char *to, int64_t id);
int bp_store_purge(bp_store *s, const char *integration);
/* one statement with text parameters on the write connection (NULL binds NULL): rows changed, -1 on error */
long bp_store_exec(bp_store *s, const char *sql, int n, const char *const *args);
int bp_store_each(bp_store *s, const char *integration, const char *state, bp_store_row_fn fn, void *ctx);
long bp_store_count(bp_store *s, const char *integration, const char *state);
int bp_store_recent(bp_store *s, const char *integration, const char *state, int64_t batch, int limit,
                    bp_store_row_fn fn, void *ctx);

/* ---- batchstore.c: open batches, so a restart asks for a queued batch's status ------------- */

/* store.c lends its write connection (and lock) to batchstore.c. */
struct sqlite3 *bp_store_db_hold(bp_store *s);
void bp_store_db_release(bp_store *s);
struct sqlite3 *bp_store_rdb_hold(bp_store *s);
void bp_store_rdb_release(bp_store *s);
typedef struct bp_store_batch_row {
    int64_t id;
    const char *events;         /* ids, comma separated, in the batch's order */
    int queued;                 /* 0: sending (the request may not have arrived) */
    int answer_status;
    const char *answer_url, *answer_body; size_t answer_len;
    int polls;
} bp_store_batch_row;
typedef void (*bp_store_batch_fn)(void *ctx, const bp_store_batch_row *row);
int bp_store_batches_init(bp_store *s);
/* Record a batch of these events before its request leaves (its own
 * transaction); the new id, -1 on error. */
int64_t bp_store_batch_add(bp_store *s, const char *integration, const int64_t *ids, size_t n, int64_t now);
/* The vendor queued it: the answer that said so (its own transaction). */
int bp_store_batch_queued(bp_store *s, int64_t id, int status, const char *url, const char *body, int polls,
                          int64_t now);
/* Inside the transaction that saves its events' outcomes. */
int bp_store_batch_delete(bp_store *s, int64_t id);
int bp_store_batch_forget(bp_store *s, const char *integration);
int bp_store_batch_each(bp_store *s, const char *integration, bp_store_batch_fn fn, void *ctx);
/* The same for people (Live Events' open_batches), on the read connection:
 * it never waits for a delivery's commit. */
int bp_store_batch_each_read(bp_store *s, const char *integration, bp_store_batch_fn fn, void *ctx);
/* A pending event by id: 1 found (e filled, without its steps), 0 not. */
int bp_store_batch_event(bp_store *s, int64_t id, bp_stored *e);
/* Cluster mode: a batch the vendor queued for some node (announced on
 * NAME.outcomes), kept by every node until an outcome of one of its events
 * closes it; its events wait for the loop that resumes it (batchstore.c). */
typedef struct bp_handed {
    const char *node; int64_t batch;   /* the node that queued it, and its id there */
    const char *integration;
    const bp_source *events; size_t n; /* in the batch's order */
    int answer_status; const char *answer_url, *answer_body; size_t answer_len;
    int polls;
} bp_handed;
/* Both inside a transaction (the viewer's). */
int bp_store_handed_add(bp_store *s, const bp_handed *h, int64_t now);
int bp_store_handed_close(bp_store *s, const bp_source *src);
int bp_store_handed_any(bp_store *s);   /* 0: none (then no outcome closes one) */
/* One handed batch as this node holds it: of its n events, the `present`
 * stored here pending (ids, slots, in order; oldest: when the first came). */
typedef struct bp_handed_row {
    int64_t id; size_t n;
    const int64_t *ids, *slots; size_t present; int64_t oldest;
    int answer_status; const char *answer_url, *answer_body; size_t answer_len;
    int polls;
} bp_handed_row;
int bp_store_handed_integrations(bp_store *s, void (*fn)(void *ctx, const char *integration), void *ctx);
int bp_store_handed_each(bp_store *s, const char *integration, void (*fn)(void *ctx, const bp_handed_row *r), void *ctx);
/* Make it this node's open batch: a `batches` row, queued, with answer's
 * status, url, body and polls (the handed row stays until the outcomes
 * close it): the new batch id, -1 on error. */
int64_t bp_store_handed_adopt(bp_store *s, const char *integration, const int64_t *ids, size_t n,
                              const bp_store_batch_row *answer, int64_t now);
int bp_store_handed_drop(bp_store *s, int64_t handed);

/* ---- deliver*.c: the delivery loops ---------------------------------------------------------- */

/* A blueprint revision: a short, stable fingerprint of the contents of the
 * folder's files (the ones hot reload watches: its top-level files), 12 hex
 * digits.  Equal contents give the same revision, across restarts too.
 * fingerprint.c; out is "" when the folder cannot be read. */
#define BP_REVISION_LEN 13
void bp_blueprint_revision(const char *dir, char out[BP_REVISION_LEN]);
/* The revision of a folder holding exactly these n files (names[i] with
 * contents texts[i], lens[i] bytes). */
void bp_files_revision(size_t n, const char *const *names, const char *const *texts, const size_t *lens,
                       char out[BP_REVISION_LEN]);

/* A blueprint shared by the registry and the delivery loops; freed with the
 * last reference (a reload replaces it while loops still use the old one). */
typedef struct bp_shared_bp {
    bp_blueprint *bp;
    _Atomic int refs;
    char revision[BP_REVISION_LEN];   /* what its files held when loaded; "" unknown */
} bp_shared_bp;
bp_shared_bp *bp_shared_bp_new(bp_blueprint *bp);
void bp_shared_bp_hold(bp_shared_bp *s);
void bp_shared_bp_drop(bp_shared_bp *s);

/* How an event's delivery ends, or waits: the one table of the names each
 * is known by (deliver_job.c), instead of strings compared where they are used. */
enum bp_end { BP_END_DELIVERED, BP_END_DROPPED, BP_END_ERROR, BP_END_DEAD, BP_END_HELD, BP_END_RETRYING };
#define BP_END_COUNT 6
typedef struct bp_end_name {
    const char *label;          /* outcome lines, metrics, Live Events' ?outcome= */
    const char *state;          /* the store's state column */
    int final;                  /* no further attempt will be made (held waits for credentials) */
} bp_end_name;
extern const bp_end_name bp_ends[BP_END_COUNT];
/* The end a label names ("dropped" is drop's state, accepted too), or -1. */
int bp_end_of_label(const char *label);

/* An integration's delivery health.  Its loop reports idle, delivering,
 * backing_off and paused (and blueprint_error when its blueprint does not
 * start); the registry also says blueprint_error when no version of the
 * blueprint loaded at all. */
enum bp_health_state { BP_HEALTH_IDLE, BP_HEALTH_DELIVERING, BP_HEALTH_BACKING_OFF, BP_HEALTH_PAUSED,
                       BP_HEALTH_BLUEPRINT_ERROR };
#define BP_HEALTH_COUNT 5
extern const char *const bp_health_names[BP_HEALTH_COUNT];   /* "idle", "delivering", … */
typedef struct bp_health {
    int state;                  /* enum bp_health_state */
    int64_t since_ms;           /* wall clock: when it entered the state (0: not known) */
    int64_t until_ms;           /* backing_off: the next attempt, else 0 */
    char reason[512];           /* why, in the vendor's words where there are some ("" when delivering) */
    int status;                 /* paused, backing_off: the vendor's HTTP status (0: none, or no answer) */
    char answer[256];           /* and the head of its answer, as it came ("" when none) */
} bp_health;

/* A batch the vendor queued (deliver_batch.c): its id in this node's store,
 * its events in order, and the answer that said so. */
typedef struct bp_queued_batch {
    int64_t id;
    const bp_stored *const *events; size_t n;
    int answer_status; const char *answer_url, *answer_body; size_t answer_len;
    int polls;
} bp_queued_batch;

/* Where a loop reports an integration's outcomes.  Called on the loop's
 * thread with the outcome line and, apart, its label ("delivered", "drop",
 * …, "retrying" for an event waiting for a retry) and reason. */
typedef struct bp_sink {
    void (*outcome)(void *ctx, const bp_stored *ev, const char *line, size_t len, enum bp_end end, const char *reason);
    void (*answer)(void *ctx, int status, double duration_ms);
    void (*release)(void *ctx);   /* the pool no longer refers to ctx */
    /* the health changed (may be NULL): the receiver copies it, the loop
     * never waits for a reader */
    void (*health)(void *ctx, const bp_health *h);
    /* cluster mode (may be NULL): the vendor queued a batch of events read
     * from Kafka; told once, so that every node can hand it over */
    void (*batch_queued)(void *ctx, const bp_queued_batch *q);
} bp_sink;

/* What a loop counts per integration: written by its loop (relaxed atomic
 * adds), read by API threads (relaxed loads: counters, no ordering). */
typedef struct bp_counts {
    _Atomic long delivered, dropped, errors, dead, held, requests, retries, rate_limited;
    _Atomic long batches, batched_events;   /* batches sent; events delivered in them */
} bp_counts;

/* One integration handed to the pool.  The pool holds `bp` and owns `cfg`
 * from the call on; `counts` belongs to ctx. */
typedef struct bp_tenant_spec {
    const char *id;
    bp_shared_bp *bp;
    bp_config *cfg;
    const bp_sink *sink;
    void *ctx;
    bp_counts *counts;
} bp_tenant_spec;

/* Cluster mode: events read from a Kafka partition carry the slot of this
 * node's lease on it (bp_stored.ksrc).  A loop asks `holds` before each
 * request of such an event (no: the event is forgotten, the partition's
 * new owner reads it again) and reports each request leaving (+1) and its
 * answer handled, outcome reported (-1), so that a node giving a partition
 * up can wait for its requests in flight.  Both called on loop threads. */
typedef struct bp_lease {
    int (*holds)(void *ctx, int64_t slot);
    void (*sending)(void *ctx, int64_t slot, int delta);
    void *ctx;
} bp_lease;

typedef struct bp_pool bp_pool;
/* `threads` delivery loops sharing `store`; options as for bp_deliver
 * (state_dir, input_fd, emit and follow are not used); lease NULL outside
 * cluster mode. */
bp_pool *bp_pool_new(bp_store *store, const bp_deliver_opts *o, int threads, const bp_lease *lease, bp_error *err);
/* Start delivering an integration, or switch a delivering one to a new
 * blueprint or config.  Never blocks on the vendor. */
void bp_pool_put(bp_pool *p, const bp_tenant_spec *t);
/* Stop delivering an integration; with purge, delete its stored events,
 * once-keys and pause state once its requests in flight have finished. */
void bp_pool_remove(bp_pool *p, const char *id, int purge);
/* New events for an integration are in the store. */
void bp_pool_wake(bp_pool *p, const char *id);
/* Events of an integration moved back to pending (replay, credentials changed). */
void bp_pool_rescan(bp_pool *p, const char *id);
/* Finish the requests in flight, save progress, stop the threads. */
void bp_pool_free(bp_pool *p);
/* A send slot on the account's pace for a request made outside the loops
 * (install checks): 0 when taken, else the ms to wait. */
double bp_pool_take_slot(bp_pool *p, const char *account_key, double blueprint_rps);
/* Cluster mode: the part (0 < share <= 1) of each listed account's limit
 * this node may use, other nodes pacing the rest; an account not listed
 * gets all of it.  Replaces the previous list; paces change at once. */
void bp_pool_set_shares(bp_pool *p, const char *const *keys, const double *shares, size_t n);

/* ---- crypto.c (libcrypto) ---------------------------------------------------------------- */

void bp_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen, unsigned char out[32]);
void bp_sha256_hex(const void *data, size_t len, char out[65]);   /* lower-case hex */
int bp_equal_consttime(const void *a, const void *b, size_t n);   /* 1 when equal */
int bp_random_bytes(unsigned char *out, size_t n);

/* The master key ring for secrets at rest (see crypto.c).  Thread-safe. */
typedef struct bp_keyring bp_keyring;
bp_keyring *bp_keyring_open(const char *state_dir, bp_error *err);
void bp_keyring_close(bp_keyring *r);
const char *bp_keyring_path(const bp_keyring *r);
int bp_keyring_keys(bp_keyring *r, char kids[][17], unsigned char keys[][32], int cap, bp_error *err);
int bp_keyring_write(const char *path, int n, char kids[][17], unsigned char keys[][32], bp_error *err);
void bp_key_new(char kid[17], unsigned char key[32]);
int bp_is_encrypted(const char *value);      /* bp:enc:v1 or v2 */
int bp_is_encrypted_v1(const char *value);   /* sealed before destinations were bound */
/* dest: the destination bound into the value (see crypto.c); decrypting
 * with dest NULL opens it for the destination it was sealed for. */
int bp_encrypt_secret(bp_keyring *r, const char *integration, const char *field, const char *dest, const char *plain,
                      bp_buf *out, bp_error *err);
int bp_decrypt_secret(bp_keyring *r, const char *integration, const char *field, const char *dest, const char *value,
                      bp_buf *out, bp_error *err);
int bp_sealed_destination(const char *value, bp_buf *dest);   /* v2: the destination it was sealed for */

/* ---- auth.c ---------------------------------------------------------------------------- */

/* A thread-safe set of token ids with their expiry. */
typedef struct bp_jti_set bp_jti_set;
bp_jti_set *bp_jti_set_new(void);
void bp_jti_set_free(bp_jti_set *s);
/* 1 when jti was in the set, else 0 and added; ids expired before now are dropped. */
int bp_jti_set_add(bp_jti_set *s, const char *jti, int64_t exp, int64_t now);
int bp_jti_set_has(bp_jti_set *s, const char *jti);

/* Who a verified token speaks for: the actor of every change it makes. */
typedef struct bp_claims {
    char role[32];
    char sub[128];
    char use[16];               /* "" an API token; BP_JWT_USE_SIGNIN a console sign-in token */
    char jti[64];               /* a sign-in or session token's id ("" on other API tokens) */
    int64_t iat, exp;
} bp_claims;
#define BP_JWT_USE_SIGNIN "signin"
#define BP_JWT_SKEW 60                /* seconds a token's nbf/iat may lie ahead of our clock */
#define BP_JWT_MIN_SECRET 32          /* bytes: the HMAC-SHA256 output's length */
#define BP_SIGNIN_MAX_TTL (15 * 60)   /* seconds a sign-in token may live */

/* What a token must also say when the server is configured so (NULL: not checked). */
typedef struct bp_jwt_expect {
    const char *issuer, *audience;
} bp_jwt_expect;

/* An HS256 JWT with sub, role, iat, exp, and iss/aud when given (may be NULL). */
void bp_jwt_sign(const char *secret, const char *role, const char *subject, const char *issuer, const char *audience,
                 int64_t iat, int64_t exp, bp_buf *out);
/* 0 and the role when the token is well formed, correctly signed (checked in
 * constant time) and not expired; else -1 and why. */
int bp_jwt_verify(const char *secret, const char *token, int64_t now, const bp_jwt_expect *expect, bp_claims *out,
                  bp_error *err);
/* A console sign-in token: bp_jwt_sign's claims with "use":"signin" and a random jti. */
void bp_jwt_sign_signin(const char *secret, const char *role, const char *subject, const char *issuer,
                        const char *audience, int64_t iat, int64_t exp, bp_buf *out);
/* A console session token: bp_jwt_sign's claims and a random jti (revocable). */
void bp_jwt_sign_session(const char *secret, const char *role, const char *subject, const char *issuer,
                         const char *audience, int64_t iat, int64_t exp, bp_buf *out);
/* The signing secret ($BLUEPRINT_JWT_SECRET, else STATE/jwt.secret, made on
 * first use); -1 when it is shorter than BP_JWT_MIN_SECRET bytes. */
int bp_jwt_secret(const char *state_dir, char *out, size_t outlen, bp_error *err);

/* ---- metrics.c ------------------------------------------------------------------------ */

#define BP_LATENCY_BUCKETS 12

typedef struct bp_metrics {
    long events_in, delivered, dead, errors, held, answers, rate_limited, reloads, reload_failures, integrations;
    struct { char reason[64]; long n; } drops[64];
    size_t ndrops;
    long latency[BP_LATENCY_BUCKETS + 1];   /* cumulative per bucket, last = +Inf */
    double latency_sum;
} bp_metrics;

/* Count one final outcome (and, for drops, its reason). */
void bp_metrics_outcome(bp_metrics *m, enum bp_end end, const char *reason);
void bp_metrics_answer(bp_metrics *m, int status, double duration_ms);
void bp_metrics_write(const bp_metrics *m, long retries, long queue_depth, const bp_store_status *store, bp_buf *out);
/* blueprint_integrations_health{state=…}: how many integrations are in each state. */
void bp_metrics_write_health(const long per_state[BP_HEALTH_COUNT], bp_buf *out);
/* blueprint_batches_total, blueprint_batched_events_total (this node's loops). */
void bp_metrics_write_batches(long batches, long batched_events, bp_buf *out);

/* An integration's final outcomes of the last hour, per minute: a ring of
 * 60 slots (1.4 KB, allocated at its first outcome), so a tile can show a
 * recent window next to the count since the server started. */
#define BP_RECENT_MINUTES 60
#define BP_RECENT_ENDS 5        /* delivered, dropped, error, dead, held: BP_END_DELIVERED..BP_END_HELD */
typedef struct bp_recent {
    int32_t minute[BP_RECENT_MINUTES];              /* which minute (wall ms / 60000: fits until year 6000) a slot counts */
    uint32_t n[BP_RECENT_MINUTES][BP_RECENT_ENDS];
} bp_recent;
/* Count one final outcome at now_ms (*r allocated when NULL). */
void bp_recent_add(bp_recent **r, enum bp_end end, int64_t now_ms);
/* The sums over the last BP_RECENT_MINUTES minutes (r may be NULL: zeros). */
void bp_recent_sum(const bp_recent *r, int64_t now_ms, long out[BP_RECENT_ENDS]);

/* ---- registry.c: the vendors and integrations it hands out --------------------------------- */

#define BP_LIVE_RING 256

/* Fields marked [mu] are guarded by the registry's lock: read them through
 * the registry's functions (or in a callback it calls with the lock held). */
typedef struct bp_vendor {
    char *key, *dir;            /* [mu] key (a reload may rename it) */
    bp_shared_bp *bp;           /* [mu] the running version; NULL if it never loaded */
    char *load_error;           /* [mu] the last failed (re)load, shown on the catalog */
    char disk_revision[BP_REVISION_LEN];  /* [mu] the files' revision at the last (re)load attempt */
    char cluster_revision[BP_REVISION_LEN];   /* [mu] cluster mode: the cluster's newest ("" none yet) */
    char *cluster_error;        /* [mu] cluster mode: why this node does not run it, or NULL */
    uint64_t signature;         /* the reload thread only */
} bp_vendor;

typedef struct bp_registry bp_registry;

typedef struct bp_integration {
    bp_registry *registry;
    char id[40];
    char *name, *variant, *delivery_mode;   /* fixed at creation */
    bp_vendor *vendor;                      /* fixed at creation */
    int64_t created_at;
    char *config_json;          /* [mu] the current revision's document */
    bp_config *cfg;             /* [mu] validated, for the API's event table */
    int revision, deleted;      /* [mu] */
    bp_counts stats;            /* written by its loop with atomic adds (cluster mode: by the
                                   viewer, from every node's outcomes) */
    bp_counts node_stats;       /* cluster mode: this node's loop */
    bp_recent *recent;          /* [mu] final outcomes of the last hour (NULL before the first) */
    bp_health health;           /* [mu] as its loop last reported it (cluster mode: this node's) */
    char **live;                /* [mu] the latest BP_LIVE_RING outcome lines, kept only
                                   while a Live Events stream watches (NULL before) */
    uint64_t live_seq;          /* [mu] */
    int watchers;               /* [mu] open streams */
    _Atomic int refs;           /* the list, its loop tenant, requests, streams */
} bp_integration;

/* ---- the registry's rooms: files below registry.c that own one table or job each ---------- */

/* fingerprint.c: a blueprint folder's cheap signature (names, sizes,
 * mtimes: has it changed?); its revision is bp_blueprint_revision. */
uint64_t bp_folder_signature(const char *dir);

/* catalog.c: the vendor folders under blueprints_dir, each loaded and
 * compiled (or its error kept), in vendor order, appended to *vendors. */
void bp_catalog_load(const char *blueprints_dir, bp_vendor **vendors, size_t *n);
void bp_catalog_free(bp_vendor *vendors, size_t n);
/* The blueprint in dir, loaded and compiled in a scratch engine; NULL with
 * err.  Its code runs: never with admin_mu held. */
bp_blueprint *bp_catalog_compile(const char *dir, bp_error *err);
/* The checks a new version nb of ob must pass before it replaces ob: every
 * config docs[k] (of items[k]) validates (into cfgs[k]), no stored secret
 * changes type or destination.  -1 with err naming the integration. */
int bp_catalog_validate(const bp_blueprint *ob, const bp_blueprint *nb, bp_integration *const *items, char *const *docs,
                        bp_config **cfgs, size_t n, bp_error *err);

/* live.c: Live Events' ring of it, the registry's lock held by the caller.
 * push: 1 when a stream watches (the line kept), else 0 (dropped). */
int bp_live_push(bp_integration *it, const char *line, size_t len);
uint64_t bp_live_watch(bp_integration *it);
void bp_live_unwatch(bp_integration *it);
void bp_live_lines(bp_integration *it, uint64_t *next_seq, void (*fn)(void *ctx, const char *line), void *ctx);
void bp_live_free(bp_integration *it);

/* serverdb.c: STATE/server.db, created owner-only with its schema; NULL with err. */
struct sqlite3 *bp_serverdb_open(const char *state_dir, bp_error *err);
/* One statement without results: 0, or -1 (sqlite3_errmsg says why). */
int bp_serverdb_exec(struct sqlite3 *db, const char *sql);
/* An earlier version's per-integration stores (STATE/integrations/ID/):
 * their events moved into store, once. */
void bp_serverdb_import_old_stores(const char *state_dir, bp_store *store);

/* integrationsdb.c: server.db's integrations and revisions tables.
 * write: it's row (insert: a new one, else its revision moved) and its
 * current revision, the document sealed; 1, or 0 (sqlite3_errmsg says why).
 * The caller keeps the transaction. */
int bp_integrations_write(struct sqlite3 *db, const bp_integration *it, int insert, const char *sealed, size_t len);
/* A new integration's id: "int_" and 16 hex digits, random (and the time). */
void bp_integrations_new_id(char *out, size_t n);
/* An integration not deleted, with its current revision's stored document. */
typedef struct bp_integration_row {
    const char *id, *name, *vendor, *variant, *delivery_mode;
    int revision;
    int64_t created_at;
    const char *config;         /* secrets sealed */
} bp_integration_row;
typedef int bp_integration_row_fn(void *ctx, const bp_integration_row *row, bp_error *err);
/* fn for each, oldest first, until it returns -1 (returned). */
int bp_integrations_load(struct sqlite3 *db, bp_integration_row_fn *fn, void *ctx, bp_error *err);
/* The integration marked deleted, its revisions' secrets masked: 0 or -1. */
int bp_integrations_mask_deleted(struct sqlite3 *db, const char *id, const bp_blueprint *bp);
/* Every revision of id, secrets masked, as a JSON array: 0 or -1. */
int bp_integrations_revisions(struct sqlite3 *db, const char *id, const bp_blueprint *bp, bp_buf *out);

/* sealing.c: secret config fields at rest.  SEAL: every plain value of a
 * secret field of bp (v1 values again, bound, v2); UNSEAL: every value,
 * for where bp sends it; RESEAL: under the ring's primary key, for the same
 * destination. */
typedef enum bp_seal_mode { BP_SEAL, BP_UNSEAL, BP_RESEAL } bp_seal_mode;
/* The stored-form document of an integration with its config's secrets
 * sealed, opened or resealed into out (*changed: was anything; may be
 * NULL).  -1 with err when a value does not decrypt. */
int bp_seal_doc(bp_keyring *ring, const char *integration, const bp_blueprint *bp, const char *doc, bp_seal_mode mode,
                bp_buf *out, int *changed, bp_error *err);
/* A stored secret does not follow a changed URL: -1 with err when patch
 * changes a URL field a held secret is sent to without giving the secret. */
int bp_secret_follows(const bp_blueprint *bp, const char *before, const char *after, const bp_doc *patch,
                      bp_error *err);
/* A stored secret keeps its type and destination under a new version nb
 * of ob: -1 with err naming the field and the integrations (items[k], whose
 * documents are docs[k]) that hold a value for it. */
int bp_secrets_kept(const bp_blueprint *ob, const bp_blueprint *nb, bp_integration *const *items, char *const *docs,
                    size_t n, bp_error *err);
/* The running blueprint of a vendor (catalog key), or NULL. */
typedef const bp_blueprint *bp_blueprint_of_fn(void *ctx, const char *vendor);
/* Revisions an earlier version stored in plain text, sealed in place. */
int bp_seal_plain_revisions(struct sqlite3 *db, bp_keyring *ring, bp_blueprint_of_fn *bp_of, void *ctx, bp_error *err);

/* configdoc.c: an integration's stored-form document
 * {"config":{…},"events":{…},"consent":{…}} from the object at root of d
 * (an install body, or a stored document) with patch (may be NULL) merged
 * in shallowly: a null in the patch removes the key. */
void bp_configdoc_merge(bp_buf *out, const bp_doc *d, uint32_t root, const bp_doc *patch, uint32_t proot);
/* A stored-form document validated against bp for variant; NULL with err. */
bp_config *bp_configdoc_validate(const bp_blueprint *bp, const char *doc, const char *variant, bp_error *err);
/* An install body's fields: known keys only, a name and a config; variant
 * and mode defaulted ("default", "server_side").  -1 with err. */
int bp_configdoc_install_fields(const bp_doc *body, const char **name, const char **variant, const char **mode,
                                bp_error *err);
/* The stored-form document of an install body into doc, validated for
 * variant of bp: the config, or NULL with err (*http 404: no such variant;
 * else left as it was). */
bp_config *bp_configdoc_install(const bp_blueprint *bp, const bp_doc *body, const char *variant, const char *mode,
                                bp_buf *doc, int *http, bp_error *err);
/* The stored document current with patch merged into doc, validated for
 * variant of bp: NULL with err (also when a held secret would not follow a
 * changed URL: bp_secret_follows). */
bp_config *bp_configdoc_update(const bp_blueprint *bp, const char *current, const bp_doc *patch, const char *variant,
                               bp_buf *doc, bp_error *err);

/* audit.c: the audit table.  who NULL: "system"; revision 0: none.
 * Callers serialise (admin_mu). */
const bp_claims *bp_audit_who(const bp_claims *who);
void bp_audit_write(struct sqlite3 *db, const bp_claims *who, const char *action, const char *integration, int before,
                    int after, const char *detail);
/* The keys of config, events and consent that differ ("api_key changed"),
 * never their values. */
void bp_audit_describe_changes(const char *before, const char *after, bp_buf *out);
int bp_audit_list(struct sqlite3 *db, const char *integration, const char *action, const char *actor, int64_t since,
                  int64_t until, int64_t cursor, int limit, bp_buf *out);
void bp_audit_purge(struct sqlite3 *db, int days);

/* signins.c: the signins table and its in-memory set (callers serialise
 * spends).  spend: 0 the first time, 1 when spent before, -1 on error. */
void bp_signins_load(struct sqlite3 *db, bp_jti_set *spent);
int bp_signins_spend(struct sqlite3 *db, bp_jti_set *spent, const char *jti, int64_t expires_at);

/* A blueprint revision (the blueprint_revisions table of server.db). */
typedef struct bp_edit_rev {
    int number;                         /* set by record: 1, 2, … per vendor */
    int64_t created_at;                 /* set by record: ms since the epoch */
    char actor[128];                    /* set by record */
    char revision[BP_REVISION_LEN];     /* the folder's fingerprint */
    const char *message, *diff;         /* diff: unified, against the revision before */
    const char *changed_json;           /* JSON array of the file names changed */
    const char *files_json;             /* JSON object: every file's content */
} bp_edit_rev;
/* revisions.c: the editor's blueprint revisions, kept per vendor: the
 * newest count, none older than days (never the newest). */
typedef struct bp_revisions_kept { int count, days; } bp_revisions_kept;
/* The policy: BLUEPRINT_REVISIONS_KEEP (50) and BLUEPRINT_REVISIONS_DAYS (365). */
bp_revisions_kept bp_revisions_policy(void);
/* server.db before user_version 1: file contents moved into blueprint_files. */
int bp_revisions_migrate(struct sqlite3 *db, bp_error *err);
int bp_revisions_latest(struct sqlite3 *db, const char *vendor, int *number, char revision[BP_REVISION_LEN]);
int bp_revisions_record(struct sqlite3 *db, const bp_revisions_kept *keep, const char *vendor, bp_edit_rev *rev,
                        const bp_claims *who, const char *action);
int bp_revisions_files(struct sqlite3 *db, const char *vendor, int number, bp_buf *files_json);
int bp_revisions_list(struct sqlite3 *db, const char *vendor, bp_buf *out);

/* unopened.c: the integrations whose configuration this node could not
 * open (thread-safe): noted with the reason, cleared when a record opens or
 * deletes it.  message: what the answer to a request for it says (1 when
 * listed); json: [{"integration","reason","message"}], returns the count. */
typedef struct bp_unopened bp_unopened;
enum bp_unopened_reason { BP_UNOPENED_KEYS, BP_UNOPENED_BLUEPRINT };
bp_unopened *bp_unopened_new(void);
void bp_unopened_free(bp_unopened *u);
void bp_unopened_note(bp_unopened *u, const char *id, enum bp_unopened_reason why, const char *vendor,
                      const char *error);   /* also logs it */
void bp_unopened_clear(bp_unopened *u, const char *id);
int bp_unopened_message(bp_unopened *u, const char *id, bp_buf *message);
size_t bp_unopened_json(bp_unopened *u, bp_buf *out);

/* configrecord.c: cluster mode's configuration record of an integration. */
/* Written from server.db (its head and every revision as stored): 0, or -1. */
int bp_config_record_write(struct sqlite3 *db, const char *id, bp_buf *out);
typedef struct bp_config_record {
    bp_doc d;
    const char *id, *name, *vendor, *variant, *mode, *created;   /* into d */
    int revision, deleted;
    uint32_t revs;              /* the array of revisions in d */
    bp_buf current;             /* the current revision's stored document */
} bp_config_record;
/* -1 (logged) when it is not a record; free it either way. */
int bp_config_record_parse(bp_config_record *rec, const char *record, size_t len);
void bp_config_record_free(bp_config_record *rec);
/* Would it change what db holds?  The topic's order decides: not when it
 * is an older revision, or the same one unchanged, or the integration was
 * deleted here (a deletion is never undone). */
int bp_config_record_is_news(struct sqlite3 *db, const bp_config_record *rec);
/* Stored in one transaction: 0, or -1 (logged). */
int bp_config_record_store(struct sqlite3 *db, const bp_config_record *rec);

/* blueprintrecord.c: cluster mode's blueprint record (the configuration
 * topic's key BP_BLUEPRINT_KEY and the vendor): every top-level file of a
 * folder, as its revision counts them. */
#define BP_BLUEPRINT_KEY "blueprint:"
/* Written from dir, *revision what its files make: 0, or -1 with err. */
int bp_blueprint_record_write(const char *vendor, const char *dir, const char *actor, bp_buf *out,
                              char revision[BP_REVISION_LEN], bp_error *err);
typedef struct bp_blueprint_record {
    bp_doc d;
    const char *vendor, *revision, *actor;   /* into d */
    size_t n;                   /* files: names (plain), texts, lens (into d) */
    const char **names, **texts;
    size_t *lens;
} bp_blueprint_record;
/* Is rev a revision's text (12 lower-case hex digits)? */
int bp_revision_text(const char *rev);
/* -1 with err when it is not a record, names a file that is not a plain
 * name or names one twice, or its files do not make its revision; free it
 * either way. */
int bp_blueprint_record_parse(bp_blueprint_record *rec, const char *record, size_t len, bp_error *err);
void bp_blueprint_record_free(bp_blueprint_record *rec);
/* The record's files made dir's top-level files (others removed), each
 * first written beside its place then renamed over it: -1 with err, dir
 * unchanged, when one cannot be written. */
int bp_blueprint_record_put(const bp_blueprint_record *rec, const char *dir, bp_error *err);
/* The record's files removed from dir, then dir (a scratch folder). */
void bp_blueprint_record_remove(const bp_blueprint_record *rec, const char *dir);



/* ---- verify.c: what install and update check without sending data ---------------- */

/* Run bp's verify: mapping with cfg, send each of its requests (at most
 * timeout_ms each) and write the checks, a JSON array of {check, ok,
 * status, outcome, message}, to out.  -1 when bp has no verify: mapping. */
int bp_verify(const bp_blueprint *bp, const bp_config *cfg, long timeout_ms, bp_buf *out);
/* The same for an integration's current config (and a warn log line when a
 * check fails). */
int bp_integration_verify(bp_integration *it, long timeout_ms, bp_buf *out);

/* ---- registry.c: integrations behind functions ------------------------------------------ */

/* What the registry tells the layer above it (the cluster, when serve runs
 * with --kafka) and asks of it, without knowing Kafka.  A NULL hook: one
 * node, nothing to tell, the registry does it itself. */
typedef struct bp_registry_hooks {
    void *ctx;
    /* An integration's configuration record, acknowledged before the change
     * commits here: 0, or -1 with err (nothing changes). */
    int (*publish_config)(void *ctx, const char *integration, const char *record, size_t len, bp_error *err);
    /* Integrations came or went. */
    void (*topics_changed)(void *ctx);
    /* The delivery pool's lease (which events this node may deliver). */
    void (*lease)(void *ctx, bp_lease *out);
    /* An outcome of this node's delivery: shared, and counted when it comes
     * back to every node (bp_registry_remote_outcome). */
    void (*outcome)(void *ctx, const char *integration, const bp_stored *ev, const char *line, size_t len,
                    enum bp_end end, const char *reason);
    /* A token id spent everywhere: as bp_registry_spend_jti. */
    int (*spend_jti)(void *ctx, const char *jti, int64_t expires_at);
    /* At close: stop before the delivery pool stops, release after. */
    void (*stop)(void *ctx);
    void (*release)(void *ctx);
    /* A blueprint revision this node switched to (a save, a rollback, a
     * reload from disk): its record (blueprintrecord.c), acknowledged
     * before the switch: 0, or -1 with err (the running version stays;
     * -2: not acknowledged, yet the brokers may have written it). */
    int (*publish_blueprint)(void *ctx, const char *vendor, const char *record, size_t len, bp_error *err);
    /* A batch of this node's delivery that the vendor queued (bp_sink's). */
    void (*batch_queued)(void *ctx, const char *integration, const bp_queued_batch *q);
} bp_registry_hooks;
/* Installed once, before bp_registry_start. */
void bp_registry_set_hooks(bp_registry *r, const bp_registry_hooks *h);


/* -1 with err naming the first top-level key of body not in known (NULL-
 * terminated): a misspelled key would otherwise be ignored.  configdoc.c */
int bp_check_body_keys(const bp_doc *body, const char *const *known, const char *what, bp_error *err);
bp_registry *bp_registry_open(const char *blueprints_dir, const char *state_dir, bp_error *err);
/* Start the delivery pool (`workers` threads) with every integration. */
int bp_registry_start(bp_registry *r, int workers, bp_error *err);
void bp_registry_close(bp_registry *r);
/* What other rooms need of the registry, without its lock: */
bp_store *bp_registry_store(bp_registry *r);            /* fixed after open */
bp_unopened *bp_registry_unopened(bp_registry *r);      /* fixed after open: records not opened here */
bp_pool *bp_registry_pool(bp_registry *r);              /* NULL before start */
const char *bp_registry_blueprints_dir(bp_registry *r);
const char *bp_registry_state_dir(bp_registry *r);
const bp_limits *bp_registry_limits(bp_registry *r);    /* the sandbox budgets of delivery */
/* The vendor of catalog key `key`, or NULL (takes the lock; vendors stay
 * for the registry's life). */
bp_vendor *bp_registry_find_vendor(bp_registry *r, const char *key);
/* v's running version (a reference the caller drops), or NULL; disk: the
 * files' revision at the last (re)load; *load_error: a copy of the last
 * failed load's message (free it), or NULL.  disk and load_error may be NULL. */
bp_shared_bp *bp_registry_vendor_bp(bp_registry *r, bp_vendor *v, char disk[BP_REVISION_LEN], char **load_error);
/* it's running blueprint (held, or NULL) and a copy of its config document
 * (free it; it holds secrets), as one consistent pair. */
bp_shared_bp *bp_integration_current(bp_integration *it, char **config_json);
/* Was it deleted (since it was found)? */
int bp_integration_deleted(bp_integration *it);
/* fn for each listed integration, with the lock held (read [mu] fields;
 * call nothing of the registry's). */
void bp_registry_each(bp_registry *r, void (*fn)(void *ctx, bp_integration *it), void *ctx);
/* Before start: a rate limit for every account (tests; 0: the blueprints'),
 * the first retry's delay (0: the default), whether backlogs go in batches
 * (serve --batch), and on_live, called with a new Live Events line of it
 * (the lock held: it may only signal). */
void bp_registry_configure(bp_registry *r, double rate_limit_rps, long retry_base_ms, int batch,
                           void (*on_live)(void *ctx, bp_integration *it), void *on_live_ctx);
/* fn(ctx) with the registry's lock held, to read [mu] fields of integrations
 * and vendors consistently: it may write only its own data, and call
 * nothing of the registry's but bp_registry_vendor. */
void bp_registry_locked(bp_registry *r, void (*fn)(void *ctx), void *ctx);
/* fn for each vendor of the catalog, in vendor order, the lock held. */
void bp_registry_each_vendor(bp_registry *r, void (*fn)(void *ctx, bp_vendor *v), void *ctx);
/* Live Events: a stream watches it (lines are kept while one does) from
 * the sequence number returned; then fn for each line past *next_seq (NULL:
 * dropped from the ring), the lock held; 1 when it has been deleted. */
uint64_t bp_registry_watch(bp_registry *r, bp_integration *it);
void bp_registry_unwatch(bp_registry *r, bp_integration *it);
int bp_registry_live_since(bp_registry *r, bp_integration *it, uint64_t *next_seq,
                           void (*fn)(void *ctx, const char *line), void *ctx);
size_t bp_registry_count(bp_registry *r);               /* integrations listed */
int64_t bp_registry_started_ms(bp_registry *r);         /* wall clock at open: where counts begin */
void bp_registry_count_events_in(bp_registry *r, long n);
bp_metrics bp_registry_metrics(bp_registry *r);         /* a snapshot */
/* The vendor of catalog key `key`, inside bp_registry_locked (or each_vendor). */
bp_vendor *bp_registry_vendor(bp_registry *r, const char *key);
/* The integration with a reference the caller releases, or NULL. */
bp_integration *bp_registry_find(bp_registry *r, const char *id);
void bp_integration_release(bp_integration *it);
/* Changes, made by `who` (the token's subject and role): each one recorded
 * in the audit log. */
int bp_registry_install(bp_registry *r, bp_vendor *v, const bp_doc *body, const bp_claims *who, bp_integration **out,
                        int *http, bp_error *err);
int bp_registry_update(bp_registry *r, bp_integration *it, const bp_doc *patch, const bp_claims *who, int *http,
                       bp_error *err);
int bp_registry_delete(bp_registry *r, bp_integration *it, const bp_claims *who, bp_error *err);
void bp_registry_audit(bp_registry *r, const bp_claims *who, const char *action, const char *integration,
                       const char *detail);
int bp_registry_audit_list(bp_registry *r, const char *integration, const char *action, const char *actor,
                           int64_t since, int64_t until, int64_t cursor, int limit, bp_buf *out);
void bp_registry_audit_purge(bp_registry *r, int days);
int bp_registry_revisions(bp_registry *r, const bp_integration *it, bp_buf *out);
/* Reload the vendors whose folders changed (reload.c). */
void bp_registry_check_reload(bp_registry *r);
void bp_write_masked_config(bp_buf *out, const bp_blueprint *bp, const char *doc_json);
/* Cluster mode: apply an integration's configuration record (as
 * publish_config gave it, from any node); an outcome of any node (as the
 * outcome hook gave it) for counters and Live Events. */
void bp_registry_apply_config(bp_registry *r, const char *record, size_t len);
void bp_registry_remote_outcome(bp_registry *r, const char *integration, const char *line, size_t len, const char *label,
                                const char *reason);
/* `blueprint rotate-key`: see sealing.c. */
int bp_rotate_master_key(const char *state_dir, long *rewrapped, bp_error *err);

/* The web console.  A token id spent (a sign-in link's token taken, a
 * session signed out): 0 the first time, 1 when it was spent before (on any
 * node of a cluster), -1 on error (the store, or Kafka).  Kept until
 * expires_at (unix s), durably. */
int bp_registry_spend_jti(bp_registry *r, const char *jti, int64_t expires_at);
/* The same, recorded on this node only: what another node spent (the cluster). */
int bp_registry_spend_jti_here(bp_registry *r, const char *jti, int64_t expires_at);
/* Was this token id spent?  Cheap (memory, no store lock): every request asks. */
int bp_registry_jti_spent(bp_registry *r, const char *jti);
/* Hot reload (reload.c) asks, through these, what it needs.  The
 * integrations of one vendor with their documents (references held) and,
 * once validated against a new version, their configs: */
typedef struct bp_vendor_items {
    bp_integration **items;
    char **docs;
    bp_config **cfgs;
    size_t n;
    uint64_t stamp;             /* which integrations, at which revisions (edit_stamp) */
} bp_vendor_items;
void bp_registry_vendor_items(bp_registry *r, bp_vendor *v, bp_vendor_items *vi);
void bp_integration_hold(bp_integration *it);
/* The i-th vendor of the catalog, NULL past the last. */
bp_vendor *bp_registry_vendor_at(bp_registry *r, size_t i);
/* Is rev what runs for v (and nothing was rejected since)? */
int bp_registry_runs(bp_registry *r, bp_vendor *v, const char *rev);
/* With admin_mu held (edit_begin): v's revision rev rejected (why shown on
 * the catalog; the running version stays), or nb (taken) made what v's
 * integrations vi run, their configs vi->cfgs (taken); and an audit entry. */
void bp_registry_reject_version(bp_registry *r, bp_vendor *v, const char *rev, const char *why);
void bp_registry_switch_version(bp_registry *r, bp_vendor *v, bp_blueprint *nb, const char *rev, bp_vendor_items *vi);
void bp_registry_audit_held(bp_registry *r, const bp_claims *who, const char *action, const char *detail);
/* Cluster mode (reload.c tells the cluster through these): is there one;
 * a blueprint record to it (bp_registry_hooks.publish_blueprint); v's
 * newest revision in the cluster, and why this node refuses it (NULL: it
 * does not). */
int bp_registry_clustered(bp_registry *r);
int bp_registry_publish_blueprint(bp_registry *r, const char *vendor, const char *record, size_t len, bp_error *err);
void bp_registry_note_cluster(bp_registry *r, bp_vendor *v, const char *revision, const char *refused);
/* Cluster mode: a blueprint record from the configuration topic (any
 * node's, this one's too; key: its Kafka key, which must name its
 * blueprint, as the files must): checked in a scratch folder as hot reload
 * checks a change, then written into v's folder and switched to (0); or
 * refused, the running version kept and the refusal shown (-1; reload.c). */
int bp_registry_apply_blueprint(bp_registry *r, const char *key, size_t key_len, const char *record, size_t len);
/* The editor's saves (editor.c).  Between edit_begin and edit_end admin_mu
 * is held: no install, update, delete or reload interleaves, and the calls
 * below may be made (only then), except edit_check and edit_reload, which
 * run blueprint code and so are called without it. */
void bp_registry_edit_begin(bp_registry *r);
void bp_registry_edit_end(bp_registry *r);
/* The checks of hot reload on the version in dir: loads, compiles, every
 * installed config of v validates against it.  -1 with err.  stamp: which
 * integrations it checked (compare with edit_stamp under admin_mu). */
int bp_registry_edit_check(bp_registry *r, bp_vendor *v, const char *dir, uint64_t *stamp, bp_error *err);
uint64_t bp_registry_edit_stamp(bp_registry *r, bp_vendor *v);
/* Cluster mode: a checked edit (the folder dir as v's will be) told to
 * every node before it is written: 0 (also without a cluster), or -1 with
 * err (nothing may be written; -2: the brokers may have taken it even so). */
int bp_registry_edit_publish(bp_registry *r, bp_vendor *v, const char *dir, const bp_claims *who, bp_error *err);
/* Reload v from its folder now, through the hot-reload path (the watcher
 * then finds nothing new); running: the revision that runs afterwards. */
int bp_registry_edit_reload(bp_registry *r, bp_vendor *v, const bp_claims *who, char running[BP_REVISION_LEN],
                            bp_error *err);
/* The newest revision's number (0: none) and fingerprint. */
int bp_registry_edit_latest(bp_registry *r, const char *vendor, int *number, char revision[BP_REVISION_LEN]);
/* Record rev (who NULL: "system"); with action, an audit entry too.
 * Returns its number, or -1. */
int bp_registry_edit_record(bp_registry *r, const char *vendor, bp_edit_rev *rev, const bp_claims *who,
                            const char *action);
/* Revision number's files (a JSON object) appended: 0, 1 no such revision, -1 error. */
int bp_registry_edit_files(bp_registry *r, const char *vendor, int number, bp_buf *files_json);
/* Every revision, newest first, as a JSON array (files: the names changed). */
int bp_registry_edit_list(bp_registry *r, const char *vendor, bp_buf *out);

/* ---- cluster.c: serve --kafka ------------------------------------------------------------- */

typedef struct bp_cluster bp_cluster;
typedef struct bp_cluster_opts {
    const char *brokers;        /* bootstrap servers */
    const char *name;           /* --cluster: consumer group and topic prefix ("blueprint") */
    const char *topic_mode;     /* "per_integration" (default) or "per_vendor" */
    const char *node;           /* this node's name in outcomes and logs */
    int session_timeout_ms;     /* consumer group session (10000) */
    int partitions;             /* for the topics it creates (12) */
    const char *config_file;    /* --kafka-config: key=value lines for librdkafka, or NULL */
} bp_cluster_opts;

/* A cluster plugged into reg (it installs reg's hooks: reg's close stops
 * and frees it), or NULL with err. */
bp_cluster *bp_cluster_new(bp_registry *reg, const bp_cluster_opts *o, bp_error *err);
/* Rebuild the configuration from the topic, then start reading. */
int bp_cluster_start(bp_cluster *c, bp_error *err);
/* Intake: one message with the accepted events (a JSON array); 0 once the
 * broker has acknowledged it. */
int bp_cluster_send_events(bp_cluster *c, const char *integration, const char *vendor, const char *account,
                           const char *events, size_t len, int replay, bp_error *err);
void bp_cluster_replayed(bp_cluster *c, const char *integration, const bp_store_row *row);
/* /healthz's "kafka" object; returns 1 when a broker answers. */
int bp_cluster_health(bp_cluster *c, bp_buf *out);
void bp_cluster_metrics(bp_cluster *c, bp_buf *out);

/* intake.c: the parts of request handling that judge untrusted bodies
 * (the HTTP intake and the cluster's delivery topic judge events alike). */
#define BP_MAX_ADMIN_BODY (64u * 1024u)
typedef int (*bp_intake_fn)(void *ctx, long index, const char *ev, size_t len, const char *message_id,
                            const char *why);
long bp_intake_each(const char *body, size_t len, bp_intake_fn fn, void *ctx);
int bp_admin_body(const char *body, size_t len, bp_doc *d, bp_error *err);
/* The same within other limits (the editor's 1 MiB bodies). */
int bp_json_body(const char *body, size_t len, const bp_json_limits *lim, bp_doc *d, bp_error *err);

/* ---- console.c, editor.c: the web console (server.c routes to them) ------------------------- */

/* The console's folder: `option` (serve --console), else console/ beside
 * the blueprints folder, else the installed share/blueprint/console. */
void bp_console_dir(const char *option, const char *blueprints_dir, char *out, size_t n);
/* The file at rel below root and its Content-Type: 200, or 404 (why in err)
 * for a path that is not plain names, a dotfile, a type the console is not
 * made of, or anything outside root. */
int bp_console_file(const char *root, const char *rel, bp_buf *out, const char **ctype, bp_error *err);

/* What an API call answers: the JSON in body, or an error (status >= 400,
 * code, message) with the file and line of a blueprint edit that does not
 * load. */
typedef struct bp_api_result {
    int status;
    const char *code;
    bp_error err;
    char file[128];             /* "" unknown */
    int line;                   /* 0 unknown */
    bp_buf *body;
} bp_api_result;

/* diff.c: the unified diff of file `name` from a to b (NULL: absent) into out. */
void bp_diff_file(bp_buf *out, const char *name, const bp_buf *a, const bp_buf *b);

#define BP_EDITOR_MAX_BODY (1024u * 1024u)
/* The blueprint editor's endpoints: vendor is the catalog key, body the
 * request's JSON (files and revisions read none), who the token's claims. */
typedef void bp_editor_fn(bp_registry *r, const char *vendor, const char *body, size_t len, const bp_claims *who,
                          bp_api_result *res);
bp_editor_fn bp_editor_files, bp_editor_dry_run, bp_editor_test, bp_editor_save, bp_editor_revisions,
    bp_editor_rollback;

#endif
