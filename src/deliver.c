/*
 * deliver.c — deliver events to vendors: durable, paced per account, retried.
 *
 * A delivery loop is one thread with one libcurl multi handle serving many
 * integrations ("tenants").  `serve` runs a fixed pool of loops (one per
 * core by default) whatever the number of integrations; `blueprint deliver`
 * runs one loop on the calling thread for its single integration.  A turn
 * of a loop:
 *
 *   commands (put, remove, wake) -> load events from the store for accounts
 *   with room -> map them (one engine per blueprint, a ctx per config) ->
 *   dispatch: for each account in turn, send what its token bucket allows
 *   -> wait for answers, a timer or a wakeup -> classify each answer: next
 *   request, retry later, dead-letter, or pause on bad credentials.
 *
 * Accounts: integrations whose config has the same value for the
 * blueprint's rate_limit.scope field (ActiveCampaign: api_url) share one
 * token bucket (a `pace`, shared by every loop serving one of them), and
 * Retry-After / RateLimit-* answers apply to all of them.  An integration's
 * loop is picked by its id, so every command about it arrives in order.
 * In a loop, each account has its own window of events in memory and its
 * own requests in flight, and dispatch visits accounts in turn: a backlog
 * on one never delays another.
 *
 * Progress (requests done, attempts, next attempt time, the outcome line)
 * is written in a group commit at most 10 ms after an answer, so a restart
 * resumes where it stopped; an answer not yet committed at a kill means
 * that request is sent again (at-least-once: at most the requests in flight
 * plus those answered in the last 10 ms).  A commit that fails is retried
 * with everything it held (events stay in memory until written), nothing
 * new is loaded meanwhile, and the failure is logged and shown by the store
 * (bp_store_health).
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW_PACED 16         /* events in memory per account paced below 100/s */
#define WINDOW_FAST 256         /* per account otherwise */
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

struct job {
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
    char revision[BP_REVISION_LEN];   /* of the blueprint that mapped it */
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
    pthread_mutex_t mu;         /* guards bucket */
    bp_bucket bucket;
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
    pthread_mutex_t mu;         /* guards paces */
    pace *paces;
    bp_cache *cache;            /* ctx.cache and shared step answers, per account, for every loop */
};

/* ---- small things ---------------------------------------------------------------- */

const bp_end_name bp_ends[BP_END_COUNT] = {
    [BP_END_DELIVERED] = { "delivered", "delivered", 1 },
    [BP_END_DROPPED] = { "drop", "dropped", 1 },
    [BP_END_ERROR] = { "error", "error", 1 },
    [BP_END_DEAD] = { "dead_letter", "dead", 1 },
    [BP_END_HELD] = { "held", "held", 0 },
    [BP_END_RETRYING] = { "retrying", "pending", 0 },
};

const char *const bp_health_names[BP_HEALTH_COUNT] = {
    [BP_HEALTH_IDLE] = "idle", [BP_HEALTH_DELIVERING] = "delivering", [BP_HEALTH_BACKING_OFF] = "backing_off",
    [BP_HEALTH_PAUSED] = "paused", [BP_HEALTH_BLUEPRINT_ERROR] = "blueprint_error",
};

int bp_end_of_label(const char *label)
{
    for (int i = 0; label && i < BP_END_COUNT; i++)
        if (!strcmp(label, bp_ends[i].label) || !strcmp(label, bp_ends[i].state)) return i;
    return -1;
}

static void count(long *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }

static uint64_t hash_text(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
    return h;
}

double bp_deliver_latency_ms(const bp_deliver_stats *s, double q)
{
    long total = 0, seen = 0;
    for (int i = 0; i <= 1000; i++) total += s->latency_us[i];
    if (!total) return 0;
    for (int i = 0; i <= 1000; i++) {
        seen += s->latency_us[i];
        if ((double)seen >= q * (double)total) return (i + 0.5) / 10.0;
    }
    return 100.0;
}

void bp_deliver_opts_default(bp_deliver_opts *o)
{
    memset(o, 0, sizeof *o);
    o->state_dir = "./var";
    o->input_fd = -1;
    o->concurrency = 8;
    o->retry_base_ms = 1000;
    o->retry_cap_ms = 60000;
    o->connect_timeout_ms = 5000;
    o->http_timeout_ms = 30000;
    o->once_ttl_s = 600;
    bp_limits_default(&o->limits);
}

bp_shared_bp *bp_shared_bp_new(bp_blueprint *bp)
{
    bp_shared_bp *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->bp = bp;
    s->refs = 1;
    return s;
}

void bp_shared_bp_hold(bp_shared_bp *s) { __atomic_fetch_add(&s->refs, 1, __ATOMIC_RELAXED); }

void bp_shared_bp_drop(bp_shared_bp *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    bp_blueprint_free(s->bp);
    free(s);
}

/* xorshift64*: jitter only, no need for more */
static double uniform(loop *l)
{
    l->rng ^= l->rng >> 12;
    l->rng ^= l->rng << 25;
    l->rng ^= l->rng >> 27;
    return (double)((l->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* Exponential backoff with full jitter, never sooner than Retry-After. */
static double backoff_ms(loop *l, int failures, double retry_after_s)
{
    double ceiling = (double)l->o->retry_base_ms;
    for (int i = 1; i < failures && ceiling < (double)l->o->retry_cap_ms; i++) ceiling *= 2;
    if (ceiling > (double)l->o->retry_cap_ms) ceiling = (double)l->o->retry_cap_ms;
    double d = uniform(l) * ceiling;
    return d > retry_after_s * 1000.0 ? d : retry_after_s * 1000.0;
}

/* A fingerprint of the credentials, so a paused integration resumes when
 * they change.  FNV-1a: the key itself is never stored. */
static void credentials_fingerprint(const bp_config *cfg, const bp_blueprint *bp, char out[17])
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < bp->nfields; i++) {
        if (bp->fields[i].type != BP_FIELD_SECRET && bp->fields[i].type != BP_FIELD_URL) continue;
        const char *v = bp_config_get(cfg, bp->fields[i].key);
        for (const char *p = v ? v : ""; *p; p++) { h ^= (unsigned char)*p; h *= 1099511628211ULL; }
        h ^= 0xff;
        h *= 1099511628211ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static void log_tenant(const char *level, const char *msg, const tenant *t, const char *detail)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_buf_adds(&f, "\"integration\":");
    bp_json_write_string(&f, t->id, strlen(t->id));
    if (detail) { bp_buf_adds(&f, ",\"detail\":"); bp_json_write_text(&f, detail, strlen(detail)); }
    bp_log(level, msg, f.data);
    bp_buf_free(&f);
}

/* ---- outcome lines and saving ----------------------------------------------------------- */

static void write_line(loop *l, job *j, enum bp_end end)
{
    bp_buf *b = &j->line;
    bp_buf_reset(b);
    bp_outcome_write_fields(&j->out, j->index, bp_ends[end].label, b);
    /* one line per event: plain appends, no printf */
    bp_buf_adds(b, ",\"id\":");
    bp_json_write_int(b, (long long)j->ev.id);
    bp_buf_adds(b, ",\"status\":");
    if (j->last_status) bp_json_write_int(b, j->last_status); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"attempts\":");
    bp_json_write_int(b, j->ev.attempts);
    bp_buf_adds(b, ",\"duration_ms\":");
    bp_json_write_int(b, j->first_ms > 0 ? llround(bp_wall_ms() - j->first_ms) : 0);
    if (end == BP_END_RETRYING) {
        bp_buf_adds(b, ",\"next_attempt_at\":");
        bp_json_write_int(b, (long long)j->ev.next_at);
    }
    bp_buf_adds(b, ",\"response\":");
    if (j->response.len) bp_json_write_text(b, j->response.data, j->response.len);
    else bp_buf_adds(b, "null");
    /* which version of the blueprint judged it (replays after a fix show the new one) */
    bp_buf_adds(b, ",\"blueprint_revision\":");
    if (j->revision[0]) bp_json_write_string(b, j->revision, strlen(j->revision)); else bp_buf_adds(b, "null");
    bp_buf_addc(b, '}');
    (void)l;
}

static void mark_dirty(loop *l, job *j)
{
    if (j->dirty) return;
    j->dirty = 1;
    j->dirty_next = NULL;
    if (!l->dirty) l->dirty_since = bp_wall_ms();
    *l->dirty_tail = j;
    l->dirty_tail = &j->dirty_next;
}

static void unlink_job(account *a, job *j)
{
    for (job **p = &a->jobs; *p; p = &(*p)->next)
        if (*p == j) { *p = j->next; a->njobs--; a->check_load = 1; return; }
}

static void free_job(job *j)
{
    j->t->njobs--;
    free(j->ev.body);
    free(j->ev.steps);
    bp_outcome_free(&j->out);
    bp_buf_free(&j->response);
    bp_buf_free(&j->line);
    free(j);
}

/* A progress step that is not final: saved with the next commit. */
static void save_progress(loop *l, job *j) { j->state = "pending"; mark_dirty(l, j); }

/* The partition this job was read from went to another node (cluster
 * mode): forget it without an outcome, that node reads it again.  Unsaved
 * progress is still written (the row stays unfinished), then it is freed. */
static void abandon(loop *l, job *j)
{
    (void)l;
    unlink_job(j->t->acct, j);
    if (!j->dirty) { free_job(j); return; }
    j->final = 1;
    j->t->unsaved_final++;
}

static int lease_lost(const loop *l, const job *j)
{
    return j->ev.ksrc && l->lease && !l->lease->holds(l->lease->ctx, j->ev.ksrc);
}

/* The event's outcome is final: report it, take it out of the window and
 * save it; it is freed once the commit holding it succeeds. */
static void finish(loop *l, job *j, enum bp_end end)
{
    tenant *t = j->t;
    /* its durable ctx.cache values count from now, or never (held: not over yet) */
    if (end != BP_END_HELD) bp_cache_settle(l->cache, (uint64_t)j->ev.id, end == BP_END_DELIVERED || end == BP_END_DROPPED);
    write_line(l, j, end);
    t->sink->outcome(t->ctx, &j->ev, j->line.data, j->line.len, end, j->out.reason.data ? j->out.reason.data : "");
    long *counter[BP_END_COUNT] = { &t->st->delivered, &t->st->dropped, &t->st->errors, &t->st->dead, &t->st->held, NULL };
    if (counter[end]) count(counter[end]);
    j->state = bp_ends[end].state;
    j->final = 1;
    t->unsaved_final++;
    unlink_job(t->acct, j);
    mark_dirty(l, j);
}

static void set_reason(job *j, const char *fmt, const char *a, const char *b)
{
    bp_buf_reset(&j->out.reason);
    bp_buf_printf(&j->out.reason, fmt, a, b);
}

static void hold(loop *l, job *j)
{
    set_reason(j, "held: %s%s", j->t->pause_reason, "");
    finish(l, j, BP_END_HELD);
}

static int mark_pending(loop *l, const tenant *t, const char *key)
{
    for (size_t i = 0; i < l->nmarks; i++) if (l->marks[i].t == t && !strcmp(l->marks[i].key, key)) return 1;
    return 0;
}

/* Unsaved once-keys of t: counted, or (purge) forgotten. */
static int marks_of(loop *l, const tenant *t, int forget)
{
    int n = 0;
    for (size_t i = 0; i < l->nmarks;) {
        if (l->marks[i].t != t) { i++; continue; }
        n++;
        if (!forget) { i++; continue; }
        free(l->marks[i].key);
        l->marks[i] = l->marks[--l->nmarks];
    }
    return n;
}

static void add_mark(loop *l, tenant *t, const char *key, int64_t at)
{
    if (l->nmarks == l->capmarks) {
        l->capmarks = l->capmarks ? l->capmarks * 2 : 64;
        l->marks = realloc(l->marks, l->capmarks * sizeof *l->marks);
        if (!l->marks) abort();
    }
    l->marks[l->nmarks++] = (mark){ t, strdup(key), at };
}

/* Write every unsaved job and once-key in one transaction.  On success the
 * final jobs are freed; on failure all of it stays for the next try. */
static void commit(loop *l)
{
    if (!l->dirty && !l->nmarks) return;
    double now = bp_wall_ms();
    if (l->store_failing && now < l->commit_retry_at) return;
    int ok = bp_store_begin(l->store) == 0;
    if (ok) {
        for (job *j = l->dirty; ok && j; j = j->dirty_next) {
            const char *outcome = j->line.len ? j->line.data : NULL;
            ok = bp_store_update(l->store, &j->ev, j->state, j->last_status, j->out.reason.data ? j->out.reason.data : "",
                                 j->response.len ? j->response.data : NULL, outcome, (int64_t)now) == 0;
        }
        for (size_t i = 0; ok && i < l->nmarks; i++)
            ok = bp_store_once_mark(l->store, l->marks[i].t->id, l->marks[i].key, l->marks[i].at) == 0;
        ok = bp_store_commit(l->store, ok) == 0;
    }
    if (!ok) {
        l->commit_backoff_ms = l->commit_backoff_ms ? l->commit_backoff_ms * 2 : 50;
        if (l->commit_backoff_ms > 2000) l->commit_backoff_ms = 2000;
        l->commit_retry_at = now + l->commit_backoff_ms;
        if (!l->store_failing) {
            bp_store_status h;
            bp_store_health(l->store, &h);
            bp_buf f;
            bp_buf_init(&f);
            bp_buf_adds(&f, "\"error\":");
            bp_json_write_text(&f, h.last_error, strlen(h.last_error));
            bp_log("error", "state store: could not save delivery progress; retrying, events stay in memory", f.data);
            bp_buf_free(&f);
        }
        if (!l->store_failing) l->failing_since = now;
        l->store_failing = 1;
        return;
    }
    if (l->store_failing) bp_log("info", "state store: saving delivery progress again", NULL);
    l->store_failing = 0;
    l->commit_backoff_ms = 0;
    job *j = l->dirty;
    while (j) {
        job *next = j->dirty_next;
        j->dirty = 0;
        if (j->final) { j->t->unsaved_final--; j->t->acct->check_load = 1; free_job(j); }
        j = next;
    }
    l->dirty = NULL;
    l->dirty_tail = &l->dirty;
    for (size_t i = 0; i < l->nmarks; i++) free(l->marks[i].key);
    l->nmarks = 0;
}

/* ---- loading and mapping ------------------------------------------------------------------ */

static int held_in_memory(const tenant *t, int64_t id)
{
    for (const job *j = t->acct->jobs; j; j = j->next) if (j->t == t && j->ev.id == id) return 1;
    return 0;
}

/* The run's journal of step answers becomes the event's (saved with its
 * progress).  The requests before the first unanswered step are done; a
 * journal the run cut short (the mapping took another way) moves the
 * progress back to where they part. */
static void keep_journal(job *j)
{
    const bp_buf *nj = &j->out.journal;
    size_t old = j->ev.steps_len;
    int same_prefix = !old || (nj->len >= old && !memcmp(nj->data, j->ev.steps, old - 1));
    if (nj->len != old || !same_prefix) {
        free(j->ev.steps);
        j->ev.steps = nj->len ? strdup(nj->data) : NULL;
        j->ev.steps_len = nj->len;
    }
    if (j->out.pending || !same_prefix || (size_t)j->ev.done_requests < j->out.nanswered)
        j->ev.done_requests = (int)j->out.nanswered;
}

/* Map a freshly loaded (or re-mapped) job; drops and errors are final at once.
 * The mapping is deterministic, so re-running it after a restart yields the
 * same requests, and done_requests says where to resume. */
static void map_job(loop *l, job *j)
{
    tenant *t = j->t;
    if (t->paused) { hold(l, j); return; }
    memcpy(j->revision, t->bp->revision, sizeof j->revision);
    t->bind.account = t->acct->key;
    bp_engine_set_journal(t->eng->engine, j->ev.steps, j->ev.steps_len, (uint64_t)j->ev.id);
    enum bp_verdict v = bp_engine_run_as(t->eng->engine, &t->bind, j->ev.body, j->ev.body_len, &j->out);
    j->remap = 0;
    if (j->out.journal.len || j->ev.steps_len) keep_journal(j);
    if (v == BP_DROP) finish(l, j, BP_END_DROPPED);
    else if (v == BP_ERROR) finish(l, j, BP_END_ERROR);
    else if (j->out.wait_ms) {
        j->remap = 1;
        j->ev.next_at = (int64_t)(bp_wall_ms() + j->out.wait_ms);
    }
}

static void release_held(loop *l, tenant *t)
{
    long n = bp_store_move(l->store, t->id, "held", "pending", 0);
    if (n < 0) return;   /* the store refuses writes: try again at the next load */
    t->release_held = 0;
    t->rescan = 1;
    char detail[64];
    snprintf(detail, sizeof detail, "%ld held events released", n);
    log_tenant("info", "credentials changed: resuming delivery", t, detail);
}

static void load_tenant(loop *l, tenant *t, int room)
{
    if (t->release_held && t->unsaved_final == 0) release_held(l, t);
    if (t->rescan && t->unsaved_final == 0) {
        t->rescan_below = t->max_loaded_id + 1;
        t->last_loaded_id = 0;
        t->rescan = 0;
        t->more = 1;
    }
    if (!t->more || room <= 0) return;
    /* Under rescan_below an event may have ended in memory without its
     * state saved yet (still "pending" in the store): load such pages only
     * when every final event of t is saved.  The commit flags the account. */
    if (t->last_loaded_id + 1 < t->rescan_below && t->unsaved_final > 0) return;
    bp_stored *evs;
    size_t n;
    account *a = t->acct;
    if (bp_store_pending(l->store, t->id, t->last_loaded_id, room, &evs, &n) < 0) {
        for (size_t k = 0; k < n; k++) { free(evs[k].body); free(evs[k].steps); }
        free(evs);
        a->check_load = 1;
        return;
    }
    if ((int)n < room) t->more = 0;
    if (n) a->next_ms = 0;
    job **tail = &a->jobs;
    while (*tail) tail = &(*tail)->next;
    for (size_t k = 0; k < n; k++) {
        t->last_loaded_id = evs[k].id;
        if (evs[k].id > t->max_loaded_id) t->max_loaded_id = evs[k].id;
        if (evs[k].id < t->rescan_below && held_in_memory(t, evs[k].id)) { free(evs[k].body); free(evs[k].steps); continue; }
        job *j = calloc(1, sizeof *j);
        if (!j) abort();
        j->t = t;
        j->ev = evs[k];
        j->index = j->ev.id >= t->index_from_id ? j->ev.idx : -1;
        bp_outcome_init(&j->out);
        bp_buf_init(&j->response);
        bp_buf_init(&j->line);
        t->njobs++;
        *tail = j;
        a->njobs++;
        map_job(l, j);
        /* a drop or an error left the list at once: append after the last
         * job still in it, not after this one */
        if (!j->final) tail = &j->next;
    }
    free(evs);
}

/* Fill the windows of the accounts flagged, taking their integrations in turn. */
static void load(loop *l)
{
    if (l->stopping || l->store_failing) return;
    for (size_t i = 0; i < l->naccounts; i++) {
        account *a = l->accounts[i];
        if (!a->check_load) continue;
        /* refill the window in batches, when it is half empty: one store
         * query per several events instead of one per event */
        if (a->njobs > a->window / 2) continue;
        a->check_load = 0;
        for (size_t tries = 0; tries < a->nmembers && a->njobs < a->window; tries++) {
            tenant *t = a->members[a->rr++ % a->nmembers];
            if (!t->removing) load_tenant(l, t, a->window - a->njobs);
        }
    }
}

/* ---- answers ------------------------------------------------------------------------------- */

/* Tell the sink when the integration's health changes (a new state,
 * reason, next attempt or vendor's answer); `since` keeps the time the
 * state was entered, unless the caller knows it (a pause restored from the
 * store); resp: the answer that made it so, shown in the vendor's words
 * (NULL: none). */
static void report_health_at(tenant *t, int state, const char *reason, int64_t until_ms, int64_t since_ms,
                             const bp_response *resp)
{
    bp_health *h = &t->health;
    int status = resp ? resp->status : 0;
    const char *body = resp && resp->body.data ? resp->body.data : "";
    size_t n = resp ? resp->body.len : 0;
    if (n >= sizeof h->answer) n = sizeof h->answer - 1;
    if (h->state == state && h->until_ms == until_ms && h->status == status && !strcmp(h->reason, reason)
        && !strncmp(h->answer, body, n) && h->answer[n] == '\0' && h->since_ms) return;
    if (h->state != state || !h->since_ms) h->since_ms = since_ms ? since_ms : (int64_t)bp_wall_ms();
    h->state = state;
    h->until_ms = until_ms;
    h->status = status;
    snprintf(h->reason, sizeof h->reason, "%s", reason);
    memcpy(h->answer, body, n);
    h->answer[n] = '\0';
    if (t->sink->health) t->sink->health(t->ctx, h);
}

static void report_health(tenant *t, int state, const char *reason, int64_t until_ms)
{
    report_health_at(t, state, reason, until_ms, 0, NULL);
}

static void pause_tenant(loop *l, tenant *t, const char *why, const bp_response *resp)
{
    const bp_blueprint *bp = t->bp->bp;
    t->paused = 1;
    snprintf(t->pause_reason, sizeof t->pause_reason, "integration paused: %s; %s; delivery resumes when the "
             "credentials in the config change", why, bp->auth_help ? bp->auth_help : "check the API key and API URL");
    char fp[17], since[24];
    credentials_fingerprint(t->cfg, bp, fp);
    snprintf(since, sizeof since, "%lld", (long long)bp_wall_ms());
    bp_store_meta_set(l->store, t->id, "paused_credentials", fp);
    bp_store_meta_set(l->store, t->id, "pause_reason", t->pause_reason);
    bp_store_meta_set(l->store, t->id, "paused_since", since);
    log_tenant("error", t->pause_reason, t, NULL);
    report_health_at(t, BP_HEALTH_PAUSED, t->pause_reason, 0, atoll(since), resp);
}

static int step_accepts(const bp_request *r, int status)
{
    for (int i = 0; i < r->naccept; i++) if (r->accept[i] == status) return 1;
    return 0;
}

/* A step's answer is in: record it, share it (opts.cache), and run the
 * mapping again, which now reads it and goes on to its next step or its
 * final requests. */
static void step_answered(loop *l, job *j, const bp_request *req, const bp_response *resp)
{
    bp_buf b;
    bp_buf_init(&b);
    if (j->ev.steps_len) bp_buf_add(&b, j->ev.steps, j->ev.steps_len);
    bp_journal_add(&b, req->fingerprint, resp->status, resp->body.data ? resp->body.data : "", resp->body.len, "sent");
    free(j->ev.steps);
    j->ev.steps = b.data;
    j->ev.steps_len = b.len;
    if (req->cache_key) {
        account *a = j->t->acct;
        if (resp->status < 300) {
            bp_buf v;
            bp_buf_init(&v);
            bp_buf_printf(&v, "{\"s\":%d,\"b\":", resp->status);
            bp_json_write_text(&v, resp->body.data ? resp->body.data : "", resp->body.len);
            bp_buf_addc(&v, '}');
            bp_cache_set(l->cache, a->key, req->cache_key, v.data, v.len, req->cache_ttl_s);
            bp_buf_free(&v);
        } else {
            bp_cache_release(l->cache, a->key, req->cache_key, (uint64_t)j->ev.id);
        }
    }
    j->ev.done_requests++;
    j->ev.failures = 0;
    map_job(l, j);                  /* req belongs to the old outcome: not used after this */
    if (!j->final) save_progress(l, j);
}

static void on_answer(void *ctx, void *user, const bp_response *resp)
{
    loop *l = ctx;
    job *j = user;
    tenant *t = j->t;
    account *a = t->acct;
    double now = bp_wall_ms();
    int64_t slot = l->lease ? j->ev.ksrc : 0;
    j->inflight = 0;
    t->inflight--;
    a->inflight--;
    a->next_ms = 0;
    bp_request *req = &j->out.requests[j->ev.done_requests];
    j->last_status = resp->status;
    bp_buf_reset(&j->response);
    bp_buf_add(&j->response, resp->body.data ? resp->body.data : "",
               resp->body.len < MAX_SAVED_RESPONSE ? resp->body.len : MAX_SAVED_RESPONSE);
    /* Retry-After is an order, for the whole account.  RateLimit-Remaining: 0
     * is also what a client pacing at exactly the limit sees once its window
     * is full, so it only takes away any saved-up burst; a RateLimit-Limit
     * below our rate lowers the rate (the vendor knows the account's limit
     * better than the blueprint's default). */
    pthread_mutex_lock(&a->pace->mu);
    bp_bucket *bucket = &a->pace->bucket;
    if (resp->retry_after_s > 0) bp_bucket_block(bucket, bp_monotonic_ms() + resp->retry_after_s * 1000.0);
    else if (resp->ratelimit_remaining == 0) bp_bucket_drain(bucket);
    if (resp->ratelimit_limit > 0 && (resp->ratelimit_limit < bucket->rate || bucket->rate <= 0))
        bp_bucket_set_rate(bucket, resp->ratelimit_limit);
    pthread_mutex_unlock(&a->pace->mu);
    if (resp->status == 429) count(&t->st->rate_limited);
    if (t->sink->answer) t->sink->answer(t->ctx, resp->status, resp->duration_ms);

    enum bp_class cls = bp_classify(t->bp->bp, req, resp, j->why, sizeof j->why);
    if (req->step && cls == BP_PERMANENT && step_accepts(req, resp->status)) cls = BP_OK;
    if (req->step && cls != BP_OK && cls != BP_RETRY && req->cache_key)
        bp_cache_release(l->cache, a->key, req->cache_key, (uint64_t)j->ev.id);
    /* the vendor took the request (or refused this one event): the
     * integration delivers; a paused one waits for new credentials */
    if ((cls == BP_OK || cls == BP_PERMANENT) && !t->paused) report_health(t, BP_HEALTH_DELIVERING, "", 0);
    if (req->step && cls == BP_OK) {
        step_answered(l, j, req, resp);
        if (slot) l->lease->sending(l->lease->ctx, slot, -1);
        return;
    }
    if (req->step && cls != BP_OK) {
        /* say which step: "step 3 (POST …/ecomOrders): …" */
        char what[sizeof j->why + 160];
        snprintf(what, sizeof what, "step %d (%.8s %.120s): %s", j->ev.done_requests + 1, req->method, req->url, j->why);
        memcpy(j->why, what, sizeof j->why - 1);
        j->why[sizeof j->why - 1] = '\0';
    }
    switch (cls) {
    case BP_OK:
        if (req->once) add_mark(l, t, req->once, (int64_t)now);
        if (req->marks) add_mark(l, t, req->marks, (int64_t)now);
        j->ev.done_requests++;
        j->ev.failures = 0;
        if ((size_t)j->ev.done_requests >= j->out.nrequests) {
            set_reason(j, "delivered (%s)%s", j->why, "");
            finish(l, j, BP_END_DELIVERED);
        } else {
            save_progress(l, j);
        }
        break;
    case BP_RETRY:
        count(&t->st->retries);
        if (++j->ev.failures >= t->max_attempts) {
            char n[16];
            snprintf(n, sizeof n, "%d", j->ev.failures);
            set_reason(j, "dead letter after %s failed attempts: %s", n, j->why);
            finish(l, j, BP_END_DEAD);
            if (!t->paused) report_health_at(t, BP_HEALTH_BACKING_OFF, j->why, 0, 0, resp);   /* no next attempt for it */
        } else {
            j->ev.next_at = (int64_t)(now + backoff_ms(l, j->ev.failures, resp->retry_after_s));
            if (!t->paused) report_health_at(t, BP_HEALTH_BACKING_OFF, j->why, j->ev.next_at, 0, resp);
            /* Live Events shows it waiting, with the answer that made it wait */
            set_reason(j, "retrying: %s%s", j->why, "");
            write_line(l, j, BP_END_RETRYING);
            t->sink->outcome(t->ctx, &j->ev, j->line.data, j->line.len, BP_END_RETRYING, j->out.reason.data);
            save_progress(l, j);
        }
        break;
    case BP_PERMANENT:
        set_reason(j, "dead letter: %s%s", j->why, "");
        finish(l, j, BP_END_DEAD);
        break;
    case BP_AUTH:
        if (j->generation != t->generation) {
            /* sent with credentials that have been replaced since: no
             * verdict on the new ones, send again with them */
            j->ev.next_at = (int64_t)now;
            save_progress(l, j);
            break;
        }
        if (!t->paused) pause_tenant(l, t, j->why, resp);
        hold(l, j);
        break;
    }
    /* after the outcome went to the sink: a node giving the partition up
     * waits for this before it commits and lets go */
    if (slot) l->lease->sending(l->lease->ctx, slot, -1);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* Is a request of the same integration that will record `key` on success
 * in flight right now?  Then a request with `once = key` waits for its
 * answer instead of repeating it (two events for the same new contact sync
 * it once). */
static int key_in_flight(const tenant *t, const char *key)
{
    for (const job *j = t->acct->jobs; j; j = j->next) {
        if (j->t != t || !j->inflight) continue;
        const bp_request *q = &j->out.requests[j->ev.done_requests];
        if ((q->once && !strcmp(q->once, key)) || (q->marks && !strcmp(q->marks, key))) return 1;
    }
    return 0;
}

/* Start what this account can start now; returns ms until it could start
 * more (NEVER: not before one of its answers arrives). */
static double dispatch_account(loop *l, account *a, double now, double mono)
{
    double wait = 1000;
    int sent = 0;
    job *j = a->jobs;
    while (j) {
        job *next = j->next;   /* finish() unlinks j */
        tenant *t = j->t;
        if (j->inflight || t->removing) { j = next; continue; }
        if (lease_lost(l, j)) { abandon(l, j); j = next; continue; }
        if (t->paused) { hold(l, j); j = next; continue; }
        if (j->ev.next_at > now) { if (j->ev.next_at - now < wait) wait = j->ev.next_at - now; j = next; continue; }
        if (j->remap) {
            /* a step waited for another event's answer: run the mapping again */
            map_job(l, j);
            if (j->final) { j = next; continue; }
            if (j->remap) { if (j->ev.next_at - now < wait) wait = j->ev.next_at - now; j = next; continue; }
        }
        /* skip requests whose once-key succeeded recently (contact already synced) */
        int64_t since = (int64_t)(now - (double)l->o->once_ttl_s * 1000.0);
        while ((size_t)j->ev.done_requests < j->out.nrequests) {
            const char *once = j->out.requests[j->ev.done_requests].once;
            if (!once || !(mark_pending(l, t, once) || bp_store_once_seen(l->store, t->id, once, since))) break;
            j->ev.done_requests++;
        }
        if ((size_t)j->ev.done_requests >= j->out.nrequests) {
            set_reason(j, "delivered%s%s", "", "");
            finish(l, j, BP_END_DELIVERED);
            j = next;
            continue;
        }
        const char *once = j->out.requests[j->ev.done_requests].once;
        if (once && key_in_flight(t, once)) { j = next; continue; }
        if (a->inflight >= l->o->concurrency) { wait = NEVER; break; }   /* until an answer */
        pthread_mutex_lock(&a->pace->mu);
        double w = bp_bucket_take(&a->pace->bucket, mono);
        pthread_mutex_unlock(&a->pace->mu);
        if (w > 0) { if (w < wait) wait = w; break; }
        if (bp_transport_send(l->tr, &j->out.requests[j->ev.done_requests], t->cfg, j) < 0) {
            j->last_status = 0;
            snprintf(j->why, sizeof j->why, "could not start the request");
            set_reason(j, "error: %s%s", j->why, "");
            finish(l, j, BP_END_ERROR);
            j = next;
            continue;
        }
        if (j->first_ms <= 0) j->first_ms = now;
        if (j->ev.ksrc && l->lease) l->lease->sending(l->lease->ctx, j->ev.ksrc, 1);
        j->inflight = 1;
        j->generation = t->generation;
        j->ev.attempts++;
        t->inflight++;
        a->inflight++;
        count(&t->st->requests);
        sent = 1;
        j = next;
    }
    /* the pace slots are taken: let the requests leave now, before other
     * accounts' work (a store lookup may wait for a commit) delays them */
    if (sent) bp_transport_flush(l->tr);
    return wait;
}

/* Visit every account that may start something now, starting one further
 * each turn; returns ms until one could. */
static double dispatch(loop *l)
{
    double now = bp_wall_ms(), wait = 1000;
    if (l->stopping || !l->naccounts) return wait;
    size_t n = l->naccounts, start = l->rr++ % n;
    for (size_t k = 0; k < n; k++) {
        account *a = l->accounts[(start + k) % n];
        if (!a->jobs) continue;
        if (a->next_ms <= now) {
            /* a fresh clock per account: its pace slot is taken for when
             * the request really leaves, not when this pass began */
            now = bp_wall_ms();
            double w = dispatch_account(l, a, now, bp_monotonic_ms());
            a->next_ms = w >= NEVER ? NEVER : now + w;
        }
        if (a->next_ms - now < wait) wait = a->next_ms - now;
    }
    return wait;
}

/* ---- tenants, accounts, engines --------------------------------------------------------------- */

static tenant *find_tenant(loop *l, const char *id)
{
    for (tenant *t = l->by_id[hash_text(id) % TENANT_BUCKETS]; t; t = t->hash_next)
        if (!strcmp(t->id, id)) return t;
    return NULL;
}

static pace *pace_new(const char *key, double rps)
{
    pace *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->key = strdup(key);
    pthread_mutex_init(&p->mu, NULL);
    bp_bucket_init(&p->bucket, rps, PACE_MARGIN, bp_monotonic_ms());
    return p;
}

/* The account's pace, shared with the other loops serving it. */
static pace *pace_acquire(loop *l, const char *key, double rps)
{
    pace *p = NULL;
    if (l->pool) {
        pthread_mutex_lock(&l->pool->mu);
        for (p = l->pool->paces; p && strcmp(p->key, key); p = p->next) {}
    }
    if (!p) {
        p = pace_new(key, rps);
        if (l->pool) { p->next = l->pool->paces; l->pool->paces = p; }
    }
    p->refs++;
    if (l->pool) pthread_mutex_unlock(&l->pool->mu);
    return p;
}

static void pace_release(loop *l, pace *p)
{
    if (l->pool) pthread_mutex_lock(&l->pool->mu);
    int last = --p->refs == 0;
    if (last && l->pool)
        for (pace **q = &l->pool->paces; *q; q = &(*q)->next) if (*q == p) { *q = p->next; break; }
    if (l->pool) pthread_mutex_unlock(&l->pool->mu);
    if (!last) return;
    pthread_mutex_destroy(&p->mu);
    free(p->key);
    free(p);
}

/* A send slot on an account's pace for a request sent outside the loops
 * (an install's checks, verify.c), so that it counts against the vendor's
 * limit with the deliveries.  The pace is made when the account has none
 * yet (refs 0: a loop joining it adopts it; bp_pool_free frees it
 * otherwise).  0 when the slot is taken, else the ms to wait. */
double bp_pool_take_slot(bp_pool *p, const char *account_key, double blueprint_rps)
{
    pthread_mutex_lock(&p->mu);
    pace *pc = p->paces;
    while (pc && strcmp(pc->key, account_key)) pc = pc->next;
    if (!pc) {
        pc = pace_new(account_key, p->o.rate_limit_rps > 0 ? p->o.rate_limit_rps : blueprint_rps);
        pc->next = p->paces;
        p->paces = pc;
    }
    pthread_mutex_lock(&pc->mu);
    double wait = bp_bucket_take(&pc->bucket, bp_monotonic_ms());
    pthread_mutex_unlock(&pc->mu);
    pthread_mutex_unlock(&p->mu);
    return wait;
}

static account *join_account(loop *l, tenant *t)
{
    const bp_blueprint *bp = t->bp->bp;
    char key[600];
    bp_account_key(bp, t->cfg, t->id, key, sizeof key);
    account *a = NULL;
    for (size_t i = 0; i < l->naccounts && !a; i++) if (!strcmp(l->accounts[i]->key, key)) a = l->accounts[i];
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a) abort();
        a->key = strdup(key);
        double rps = l->o->rate_limit_rps > 0 ? l->o->rate_limit_rps : bp->rate_limit_rps;
        a->pace = pace_acquire(l, key, rps);
        a->window = rps > 0 && rps < 100 ? WINDOW_PACED : WINDOW_FAST;
        if (l->naccounts == l->capaccounts) {
            l->capaccounts = l->capaccounts ? l->capaccounts * 2 : 16;
            l->accounts = realloc(l->accounts, l->capaccounts * sizeof *l->accounts);
            if (!l->accounts) abort();
        }
        l->accounts[l->naccounts++] = a;
        bp_transport_keep_connections(l->tr, (long)l->naccounts * 2 + 16);
    }
    if (a->nmembers == a->capmembers) {
        a->capmembers = a->capmembers ? a->capmembers * 2 : 4;
        a->members = realloc(a->members, a->capmembers * sizeof *a->members);
        if (!a->members) abort();
    }
    a->members[a->nmembers++] = t;
    a->check_load = 1;
    a->next_ms = 0;
    return a;
}

static void leave_account(loop *l, tenant *t)
{
    account *a = t->acct;
    for (size_t i = 0; i < a->nmembers; i++)
        if (a->members[i] == t) { a->members[i] = a->members[--a->nmembers]; break; }
    t->acct = NULL;
    if (a->nmembers) return;
    for (size_t i = 0; i < l->naccounts; i++)
        if (l->accounts[i] == a) { l->accounts[i] = l->accounts[--l->naccounts]; break; }
    pace_release(l, a->pace);
    free(a->key);
    free(a->members);
    free(a);
}

/* Bind t to its blueprint's engine in this loop (made on first use). */
static int bind_engine(loop *l, tenant *t, bp_error *err)
{
    engine_slot *s = l->engines;
    while (s && s->bp != t->bp) s = s->next;
    if (!s) {
        bp_engine *e = bp_engine_new(t->bp->bp, t->cfg, &l->o->limits, err);
        if (!e) return -1;
        s = calloc(1, sizeof *s);
        if (!s) abort();
        s->bp = t->bp;
        bp_shared_bp_hold(s->bp);
        s->engine = e;
        bp_engine_set_cache(e, l->cache);
        s->next = l->engines;
        l->engines = s;
    }
    if (bp_engine_bind(s->engine, t->cfg, &t->bind, err) < 0) {
        if (s->refs == 0) {   /* made for this tenant: not kept */
            for (engine_slot **p = &l->engines; *p; p = &(*p)->next) if (*p == s) { *p = s->next; break; }
            bp_engine_free(s->engine);
            bp_shared_bp_drop(s->bp);
            free(s);
        }
        return -1;
    }
    s->refs++;
    t->eng = s;
    return 0;
}

static void unbind_engine(loop *l, tenant *t)
{
    engine_slot *s = t->eng;
    if (!s) return;
    bp_engine_unbind(s->engine, &t->bind);
    t->eng = NULL;
    if (--s->refs > 0) return;
    for (engine_slot **p = &l->engines; *p; p = &(*p)->next)
        if (*p == s) { *p = s->next; break; }
    bp_engine_free(s->engine);
    bp_shared_bp_drop(s->bp);
    free(s);
}

/* Paused by an earlier run with these same credentials?  Held events are
 * released when the credentials have changed since. */
static void restore_pause(loop *l, tenant *t)
{
    char fp[17];
    credentials_fingerprint(t->cfg, t->bp->bp, fp);
    char *paused_fp = bp_store_meta_get(l->store, t->id, "paused_credentials");
    if (paused_fp && !strcmp(paused_fp, fp)) {
        char *why = bp_store_meta_get(l->store, t->id, "pause_reason");
        char *since = bp_store_meta_get(l->store, t->id, "paused_since");
        t->paused = 1;
        snprintf(t->pause_reason, sizeof t->pause_reason, "%s", why ? why : "integration paused");
        log_tenant("error", t->pause_reason, t, NULL);
        report_health_at(t, BP_HEALTH_PAUSED, t->pause_reason, 0, since ? atoll(since) : 0, NULL);
        free(why);
        free(since);
    } else if (paused_fp || t->paused) {
        /* new events go out at once; the held ones are moved back once the
         * holds still waiting for their commit are saved (else they would
         * be written "held" after the move, and stay so) */
        bp_store_meta_set(l->store, t->id, "paused_credentials", NULL);
        bp_store_meta_set(l->store, t->id, "paused_since", NULL);
        t->paused = 0;
        t->release_held = 1;
        t->acct->check_load = 1;
        report_health(t, BP_HEALTH_DELIVERING, "", 0);
    }
    free(paused_fp);
}

static void report_broken(loop *l, tenant *t, const char *why)
{
    (void)l;
    log_tenant("error", "integration cannot be delivered (its blueprint does not start); events stay stored", t, why);
}

static void drop_spec(bp_tenant_spec *s)
{
    if (!s->id) return;
    if (s->sink && s->sink->release) s->sink->release(s->ctx);
    free((char *)s->id);
    bp_config_free(s->cfg);
    bp_shared_bp_drop(s->bp);
    s->id = NULL;
}

static void tenant_free(tenant *t)
{
    drop_spec(&t->forward);
    if (t->sink && t->sink->release) t->sink->release(t->ctx);
    if (!t->borrowed_cfg) bp_config_free(t->cfg);
    bp_shared_bp_drop(t->bp);
    free(t->id);
    free(t);
}

static void add_tenant(loop *l, const bp_tenant_spec *s)
{
    /* `deliver` lends its config (the only tenant with the id "") */
    tenant *t = calloc(1, sizeof *t);
    if (!t) abort();
    t->id = strdup(s->id);
    t->bp = s->bp;
    t->cfg = s->cfg;
    t->sink = s->sink;
    t->ctx = s->ctx;
    t->st = s->counts;
    t->borrowed_cfg = !l->pool;
    t->more = 1;
    t->max_attempts = l->o->max_attempts > 0 ? l->o->max_attempts : t->bp->bp->retry_max_attempts;
    bp_error err;
    if (bind_engine(l, t, &err) < 0) {
        char reason[sizeof t->health.reason];
        snprintf(reason, sizeof reason, "the blueprint does not start: %.470s", err.msg);
        report_broken(l, t, err.msg);
        report_health(t, BP_HEALTH_BLUEPRINT_ERROR, reason, 0);
        tenant_free(t);
        return;
    }
    t->acct = join_account(l, t);
    t->next = l->tenants;
    l->tenants = t;
    size_t b = hash_text(t->id) % TENANT_BUCKETS;
    t->hash_next = l->by_id[b];
    l->by_id[b] = t;
    /* a new start: whatever the last tenant of this id said (a blueprint
     * that did not start, say) is over until an answer says more */
    report_health(t, BP_HEALTH_IDLE, "", 0);
    restore_pause(l, t);
}

/* A new blueprint or config for a tenant this loop already serves, on the
 * same account.  Events not yet sent are mapped again under it; requests
 * in flight were rendered already and finish as they are. */
static void replace_tenant(loop *l, tenant *t, const bp_tenant_spec *s)
{
    tenant old = *t;
    t->bp = s->bp;
    t->cfg = s->cfg;
    t->eng = NULL;
    bp_error err;
    /* the tenant keeps the reference it holds on ctx; the spec's goes */
    if (s->sink && s->sink->release) s->sink->release(s->ctx);
    if (bind_engine(l, t, &err) < 0) {
        report_broken(l, t, err.msg);   /* keep delivering with what it had */
        t->bp = old.bp; t->cfg = old.cfg; t->eng = old.eng; t->bind = old.bind;
        bp_config_free(s->cfg);
        bp_shared_bp_drop(s->bp);
        return;
    }
    unbind_engine(l, &old);
    t->generation++;
    /* a reload may change the blueprint's limit (an override stays) */
    if (l->o->rate_limit_rps <= 0 && t->bp->bp->rate_limit_rps != old.bp->bp->rate_limit_rps) {
        pthread_mutex_lock(&t->acct->pace->mu);
        bp_bucket_set_rate(&t->acct->pace->bucket, t->bp->bp->rate_limit_rps);
        pthread_mutex_unlock(&t->acct->pace->mu);
    }
    t->max_attempts = l->o->max_attempts > 0 ? l->o->max_attempts : t->bp->bp->retry_max_attempts;
    for (job *j = t->acct->jobs, *next; j; j = next) {
        next = j->next;
        if (j->t == t && !j->inflight && j->ev.done_requests == 0) map_job(l, j);
    }
    t->acct->next_ms = 0;
    t->acct->check_load = 1;
    bp_config_free(old.cfg);
    bp_shared_bp_drop(old.bp);
    restore_pause(l, t);
}

static int same_account(const tenant *t, const bp_tenant_spec *s)
{
    char key[600];
    bp_account_key(s->bp->bp, s->cfg, t->id, key, sizeof key);
    return !strcmp(key, t->acct->key);
}


static void detach_tenant(loop *l, tenant *t)
{
    for (tenant **p = &l->tenants; *p; p = &(*p)->next) if (*p == t) { *p = t->next; break; }
    for (tenant **p = &l->by_id[hash_text(t->id) % TENANT_BUCKETS]; *p; p = &(*p)->hash_next)
        if (*p == t) { *p = t->hash_next; break; }
}

/* A removed tenant whose requests have all answered (and, unless purged,
 * whose progress is saved) leaves the loop. */
static void reap(loop *l)
{
    if (!l->nremoving) return;
    for (tenant *t = l->tenants, *next; t; t = next) {
        next = t->next;
        if (!t->removing || t->inflight > 0 || (!t->purge && (t->unsaved_final > 0 || l->dirty || marks_of(l, t, 0))))
            continue;
        if (t->purge) {
            marks_of(l, t, 1);
            /* its unsaved progress is moot: take it off the dirty list */
            job **p = &l->dirty;
            l->dirty_tail = &l->dirty;
            while (*p) {
                job *j = *p;
                if (j->t == t) { *p = j->dirty_next; if (j->final) { t->unsaved_final--; free_job(j); } else j->dirty = 0; }
                else { p = &j->dirty_next; l->dirty_tail = p; }
            }
        }
        for (job *j = t->acct->jobs, *jn; j; j = jn) {
            jn = j->next;
            if (j->t == t) { unlink_job(t->acct, j); free_job(j); }
        }
        l->nremoving--;
        detach_tenant(l, t);
        leave_account(l, t);
        unbind_engine(l, t);
        if (t->purge && bp_store_purge(l->store, t->id) < 0)
            log_tenant("error", "could not delete a deleted integration's events; they stay in the store", t, NULL);
        bp_tenant_spec forward = t->forward;
        t->forward.id = NULL;
        tenant_free(t);
        if (forward.id) { add_tenant(l, &forward); free((char *)forward.id); }
    }
}

/* ---- commands ---------------------------------------------------------------------------------- */

static void post(loop *l, cmd *c)
{
    c->next = NULL;
    pthread_mutex_lock(&l->inbox_mu);
    *l->inbox_tail = c;
    l->inbox_tail = &c->next;
    pthread_mutex_unlock(&l->inbox_mu);
    bp_transport_wakeup(l->tr);
}

static void free_cmd(cmd *c)
{
    drop_spec(&c->spec);
    free(c->id);
    free(c);
}

static void start_removing(loop *l, tenant *t)
{
    if (t->removing) return;
    t->removing = 1;
    l->nremoving++;
    t->acct->next_ms = 0;
}

static void handle_commands(loop *l)
{
    pthread_mutex_lock(&l->inbox_mu);
    cmd *c = l->inbox;
    l->inbox = NULL;
    l->inbox_tail = &l->inbox;
    pthread_mutex_unlock(&l->inbox_mu);
    while (c) {
        cmd *next = c->next;
        const char *id = c->id ? c->id : c->spec.id;
        tenant *t = id ? find_tenant(l, id) : NULL;
        switch (c->kind) {
        case CMD_PUT:
            if (!t) {
                add_tenant(l, &c->spec);
                free((char *)c->spec.id);
                c->spec.id = NULL;   /* the tenant took bp and cfg */
            } else if (t->removing || !same_account(t, &c->spec)) {
                /* a new account (or a put while draining for one): drain
                 * this one, then start again from the newest put */
                start_removing(l, t);
                drop_spec(&t->forward);
                t->forward = c->spec;
                c->spec.id = NULL;
            } else {
                replace_tenant(l, t, &c->spec);
                free((char *)c->spec.id);
                c->spec.id = NULL;
            }
            break;
        case CMD_REMOVE:
            if (t) { start_removing(l, t); t->purge = c->purge; drop_spec(&t->forward); }
            break;
        case CMD_WAKE:
            if (t && !t->removing) { t->more = 1; t->acct->check_load = 1; }
            break;
        case CMD_RESCAN:
            if (t && !t->removing) { t->rescan = 1; t->acct->check_load = 1; restore_pause(l, t); }
            break;
        case CMD_STOP:
            l->stopping = 1;
            break;
        }
        free_cmd(c);
        c = next;
    }
}

/* ---- the loop ---------------------------------------------------------------------------------- */

static int any_work(loop *l)
{
    if (l->dirty || l->nmarks || bp_transport_active(l->tr)) return 1;
    for (size_t i = 0; i < l->naccounts; i++) if (l->accounts[i]->jobs) return 1;
    for (tenant *t = l->tenants; t; t = t->next) if (t->more || t->rescan || t->removing) return 1;
    return 0;
}

/* One turn; returns 0 when the loop may end (until_idle and nothing left,
 * or stopping with nothing in flight and everything saved). */
static int turn(loop *l, int until_idle)
{
    handle_commands(l);
    load(l);
    /* commit before dispatching, not between dispatch and the send: a slow
     * commit (a checkpoint) must not delay requests whose pace slot is
     * taken, or the vendor would see them bunched */
    double due;
    if (l->dirty || l->nmarks) {
        due = (l->store_failing ? l->commit_retry_at : l->dirty_since + COMMIT_EVERY_MS) - bp_wall_ms();
        if (due <= 0 || l->stopping) commit(l);
    }
    double wait = dispatch(l);
    if (l->dirty || l->nmarks) {   /* dispatch may have finished events too */
        due = (l->store_failing ? l->commit_retry_at : l->dirty_since + COMMIT_EVERY_MS) - bp_wall_ms();
        if (due < wait) wait = due > 0 ? due : 0;
    }
    reap(l);
    if (l->stopping) {
        if (!bp_transport_active(l->tr) && !l->dirty && !l->nmarks) return 0;
        if (!bp_transport_active(l->tr) && l->store_failing) {
            /* stopping while the store refuses writes: keep trying for a while */
            if (bp_wall_ms() - l->commit_retry_at > 10000) {
                bp_log("error", "state store: stopping with unsaved progress; those requests will be sent again",
                       NULL);
                return 0;
            }
        }
        if (wait > 50) wait = 50;
    } else if (until_idle && !any_work(l)) {
        return 0;
    } else if (until_idle && l->store_failing && !bp_transport_active(l->tr) &&
               bp_wall_ms() - l->failing_since > 10000) {
        return 0;   /* bp_deliver reports it */
    }
    int wait_ms = wait > 0 ? (int)(wait + 0.999) : 0;
    if (wait_ms > 1000) wait_ms = 1000;
    bp_transport_poll(l->tr, wait_ms, on_answer, l);
    return 1;
}

/* ctx.cache's durable values live in the state store (cache.c's backing):
 * written when a run sets one, with the event whose run it was, and read
 * back when memory lacks the key (after a restart, or an eviction). */
static void cache_save(void *ud, uint64_t owner, const char *account, const char *key, const char *json, size_t len,
                       int64_t expires_wall_ms)
{
    if (bp_store_cache_put(ud, account, key, json, len, expires_wall_ms, (int64_t)owner) < 0)
        bp_log("warn", "state store: a durable ctx.cache value was not saved; it is kept in memory only", NULL);
}

static int cache_load(void *ud, const char *account, const char *key, bp_buf *out, int64_t *expires_wall_ms)
{
    return bp_store_cache_get(ud, account, key, (int64_t)bp_wall_ms(), out, expires_wall_ms);
}

static bp_cache *durable_cache(bp_store *store)
{
    bp_cache *c = bp_cache_new(0);
    bp_cache_backing b = { cache_save, cache_load, store };
    if (store) bp_cache_set_backing(c, &b);
    return c;
}

static void loop_init(loop *l, bp_pool *p, int index, bp_store *store, const bp_deliver_opts *o)
{
    memset(l, 0, sizeof *l);
    l->pool = p;
    l->cache = p ? p->cache : durable_cache(store);
    l->index = index;
    l->store = store;
    l->o = o;
    l->tr = bp_transport_new(o->connect_timeout_ms, o->http_timeout_ms);
    l->dirty_tail = &l->dirty;
    l->inbox_tail = &l->inbox;
    pthread_mutex_init(&l->inbox_mu, NULL);
    l->rng = (uint64_t)bp_wall_ms() ^ ((uint64_t)getpid() << 32) ^ ((uint64_t)index << 16) ^ 0x9E3779B97F4A7C15ULL;
}

static void loop_free(loop *l)
{
    handle_commands(l);   /* frees what was posted after the stop */
    for (job *j = l->dirty, *jn; j; j = jn) { jn = j->dirty_next; if (j->final) free_job(j); }
    l->dirty = NULL;
    while (l->tenants) {
        tenant *t = l->tenants;
        for (job *j = t->acct->jobs, *jn; j; j = jn) {
            jn = j->next;
            if (j->t == t) { unlink_job(t->acct, j); free_job(j); }
        }
        detach_tenant(l, t);
        leave_account(l, t);
        unbind_engine(l, t);
        tenant_free(t);
    }
    for (size_t i = 0; i < l->nmarks; i++) free(l->marks[i].key);
    free(l->marks);
    free(l->accounts);
    while (l->engines) {   /* none should be left: every tenant unbound above */
        engine_slot *e = l->engines;
        l->engines = e->next;
        bp_engine_free(e->engine);
        bp_shared_bp_drop(e->bp);
        free(e);
    }
    bp_transport_free(l->tr);
    if (!l->pool) bp_cache_free(l->cache);
    pthread_mutex_destroy(&l->inbox_mu);
}

static void *loop_main(void *arg)
{
    loop *l = arg;
    while (turn(l, 0)) {}
    return NULL;
}

/* ---- the pool ------------------------------------------------------------------------------------ */

bp_pool *bp_pool_new(bp_store *store, const bp_deliver_opts *o, int threads, const bp_lease *lease, bp_error *err)
{
    bp_pool *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->store = store;
    p->o = *o;
    if (lease) p->lease = *lease;
    p->nloops = threads > 0 ? threads : 1;
    p->loops = calloc((size_t)p->nloops, sizeof *p->loops);
    if (!p->loops) abort();
    pthread_mutex_init(&p->mu, NULL);
    p->cache = durable_cache(store);
    for (int i = 0; i < p->nloops; i++) {
        loop_init(&p->loops[i], p, i, store, &p->o);
        p->loops[i].lease = p->lease.holds ? &p->lease : NULL;
    }
    for (int i = 0; i < p->nloops; i++) {
        if (pthread_create(&p->loops[i].thread, NULL, loop_main, &p->loops[i]) != 0) {
            bp_error_set(err, "could not start delivery thread %d", i);
            bp_pool_free(p);
            return NULL;
        }
        p->loops[i].started = 1;
    }
    return p;
}

/* Every command about one integration goes to the same loop, in order. */
static loop *owner(bp_pool *p, const char *id) { return &p->loops[hash_text(id) % (uint64_t)p->nloops]; }

static void post_to_owner(bp_pool *p, enum cmd_kind kind, const char *id, int purge)
{
    cmd *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->kind = kind;
    c->id = strdup(id);
    c->purge = purge;
    post(owner(p, id), c);
}

void bp_pool_put(bp_pool *p, const bp_tenant_spec *t)
{
    cmd *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->kind = CMD_PUT;
    c->spec = *t;
    c->spec.id = strdup(t->id);
    post(owner(p, t->id), c);
}

void bp_pool_remove(bp_pool *p, const char *id, int purge) { post_to_owner(p, CMD_REMOVE, id, purge); }
void bp_pool_wake(bp_pool *p, const char *id) { post_to_owner(p, CMD_WAKE, id, 0); }
void bp_pool_rescan(bp_pool *p, const char *id) { post_to_owner(p, CMD_RESCAN, id, 0); }

void bp_pool_free(bp_pool *p)
{
    if (!p) return;
    for (int i = 0; i < p->nloops; i++) {
        if (!p->loops[i].started) continue;
        cmd *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->kind = CMD_STOP;
        post(&p->loops[i], c);
    }
    for (int i = 0; i < p->nloops; i++) if (p->loops[i].started) pthread_join(p->loops[i].thread, NULL);
    for (int i = 0; i < p->nloops; i++) loop_free(&p->loops[i]);
    free(p->loops);
    while (p->paces) {            /* made by bp_pool_take_slot and never joined */
        pace *pc = p->paces;
        p->paces = pc->next;
        pthread_mutex_destroy(&pc->mu);
        free(pc->key);
        free(pc);
    }
    bp_cache_free(p->cache);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- blueprint deliver: one integration, one loop, this thread ------------------------------------ */

typedef struct cli_run {
    const bp_deliver_opts *o;
    bp_deliver_stats *st;
    bp_buf line;
} cli_run;

static void cli_outcome(void *ctx, const bp_stored *ev, const char *line, size_t len, enum bp_end end,
                        const char *reason)
{
    cli_run *r = ctx;
    (void)reason; (void)ev;
    if (end != BP_END_RETRYING && r->o->emit) r->o->emit(r->o->emit_ctx, line, len);
}

static void cli_answer(void *ctx, int status, double duration_ms)
{
    cli_run *r = ctx;
    long slot = (long)(duration_ms * 10.0);
    r->st->latency_us[slot < 0 ? 0 : slot > 1000 ? 1000 : slot]++;
    if (r->o->on_answer) r->o->on_answer(r->o->emit_ctx, status, duration_ms);
}

static const bp_sink cli_sink = { cli_outcome, cli_answer, NULL, NULL };

/* A line for input that never becomes a stored event. */
static void emit_input_error(cli_run *r, long index, const char *why, const char *message_id)
{
    bp_outcome o;
    bp_outcome_init(&o);
    bp_buf_adds(&o.reason, why);
    o.message_id = bp_outcome_strdup(&o, message_id);
    bp_buf_reset(&r->line);
    bp_outcome_write_fields(&o, index, message_id ? "duplicate" : "error", &r->line);
    bp_buf_addc(&r->line, '}');
    if (r->o->emit) r->o->emit(r->o->emit_ctx, r->line.data, r->line.len);
    bp_outcome_free(&o);
    if (message_id) r->st->duplicates++; else r->st->errors++;
}

/* Phase 1: the input into the store, committed in batches before anything
 * is sent.  Returns the first new event's id (0: none), -1 on error. */
static int64_t ingest(cli_run *r, bp_store *store, bp_error *err)
{
    bp_reader *rd = bp_reader_new(r->o->input_fd, r->o->limits.json.max_bytes);
    const char *ev;
    size_t len;
    bp_error rerr;
    enum bp_read_status s;
    int in_batch = 0, ok = 1;
    long index = 0;
    int64_t first = 0;
    bp_doc doc;
    bp_doc_init(&doc);
    while (ok && (s = bp_reader_next(rd, &ev, &len, &rerr)) != BP_READ_END) {
        const char *message_id = NULL;
        if (s == BP_READ_EVENT && bp_json_parse(&doc, ev, len, &r->o->limits.json, &rerr) == 0)
            message_id = bp_event_message_id(&doc);
        if (s == BP_READ_BAD) {
            /* Not an event we can store: say so on its own line, in order. */
            emit_input_error(r, index++, rerr.msg, NULL);
            continue;
        }
        if (!in_batch) { if (bp_store_begin(store) < 0) { ok = 0; break; } in_batch = 1; }
        int64_t id = bp_store_add(store, "", ev, len, index, message_id, (int64_t)bp_wall_ms());
        if (id < 0) { ok = 0; break; }
        if (id == 0) {
            emit_input_error(r, index++, "duplicate: an event with this message id was already accepted "
                             "(not delivered twice)", message_id);
            continue;
        }
        index++;
        if (!first) first = id;
        r->st->added++;
        if (++in_batch > INSERT_BATCH) { ok = bp_store_commit(store, 1) == 0; in_batch = 0; }
    }
    if (in_batch) ok = bp_store_commit(store, ok) == 0 && ok;
    bp_doc_free(&doc);
    bp_reader_free(rd);
    if (!ok) {
        bp_store_status h;
        bp_store_health(store, &h);
        bp_error_set(err, "state store: could not save the input events: %s", h.last_error);
        return -1;
    }
    return first;
}

int bp_deliver(const bp_blueprint *bp, const bp_config *cfg, const bp_deliver_opts *opts,
               bp_deliver_stats *stats, bp_error *err)
{
    bp_deliver_opts def;
    bp_error_clear(err);
    if (!bp || !cfg) { bp_error_set(err, "delivery needs a blueprint and a config"); return -1; }
    if (!opts) { bp_deliver_opts_default(&def); opts = &def; }
    bp_deliver_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    cli_run run = { opts, stats, { 0 } };
    bp_buf_init(&run.line);
    int rc = -1;
    bp_store *store = bp_store_open(opts->state_dir ? opts->state_dir : "./var", "blueprint.db", err);
    if (!store) goto out;
    /* the mapping is checked before anything is stored: a broken blueprint is exit 2, not held events */
    bp_engine *probe = bp_engine_new(bp, cfg, &opts->limits, err);
    if (!probe) goto out;
    bp_engine_free(probe);
    int64_t first = 0;
    if (opts->input_fd >= 0 && (first = ingest(&run, store, err)) < 0) goto out;

    /* The loop borrows bp and cfg: a shared wrapper that is never freed here
     * (refs stay above zero), and a config the tenant must not free. */
    loop l;
    loop_init(&l, NULL, 0, store, opts);
    bp_shared_bp shared = { (bp_blueprint *)bp, 2, "" };
    if (bp->dir) bp_blueprint_revision(bp->dir, shared.revision);
    bp_counts counts = { 0 };
    bp_tenant_spec spec = { "", &shared, (bp_config *)cfg, &cli_sink, &run, &counts };
    add_tenant(&l, &spec);
    tenant *t = l.tenants;
    if (!t) { bp_error_set(err, "the blueprint could not start"); loop_free(&l); goto out; }
    t->index_from_id = first > 0 ? first : INT64_MAX;
    while (turn(&l, 1)) {}
    int lost = l.store_failing;
    loop_free(&l);
    stats->delivered = counts.delivered;
    stats->dropped = counts.dropped;
    stats->errors += counts.errors;   /* plus the input lines that were not events */
    stats->dead = counts.dead;
    stats->held = counts.held;
    stats->requests = counts.requests;
    stats->retries = counts.retries;
    stats->rate_limited = counts.rate_limited;
    if (lost) {
        bp_store_status h;
        bp_store_health(store, &h);
        bp_error_set(err, "state store: could not save delivery progress for 10 s (%s); the events stay stored "
                     "and unsent requests are sent by the next run", h.last_error);
        goto out;
    }
    rc = bp_store_count(store, "", "held") > 0 ? 3 : 0;
out:
    if (rc < 0) bp_error_ensure(err, "delivery failed");
    bp_store_close(store);
    bp_buf_free(&run.line);
    return rc;
}
