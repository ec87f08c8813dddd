/*
 * deliver.c — deliver events to the vendor: durable, paced, retried.
 *
 * A run has two phases.  First the input events are appended to the store
 * (in batches, each committed before anything is sent).  Then every pending
 * event in the store — this run's and any a killed run left behind — goes
 * through a bounded window:
 *
 *   map (the engine) -> for each request: skip if its once-key is fresh,
 *   else wait for a token of the account's bucket, send, classify the answer
 *   -> next request, retry later, dead-letter, or pause on bad credentials.
 *
 * The event's progress (requests done, attempts, next attempt time) is saved
 * after every answer and committed within 10 ms (group commit), so a restart
 * resumes where it stopped; an answer not yet committed at a kill means that
 * request is sent again (at-least-once: at most the requests in flight plus
 * those answered in the last 10 ms).
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW 256
#define INSERT_BATCH 500
#define MAX_SAVED_RESPONSE 512

typedef struct job {
    bp_stored ev;
    bp_outcome out;
    long index;             /* position in this run's input, -1 for recovered events */
    int active, inflight;
    double first_ms;        /* first attempt, for duration_ms */
    int last_status;
    char why[300];
    bp_buf response;
} job;

typedef struct run {
    const bp_blueprint *bp;
    const bp_config *cfg;
    const bp_deliver_opts *o;
    bp_deliver_stats *st;
    bp_store *store;
    bp_engine *engine;
    bp_transport *tr;
    bp_bucket bucket;
    job jobs[WINDOW];
    int64_t first_new_id, last_loaded_id;
    int max_attempts, inflight, paused, more_in_store;
    char pause_reason[512];
    uint64_t rng;
    bp_buf line;
} run;

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

/* xorshift64*: jitter only, no need for more */
static double uniform(run *r)
{
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return (double)((r->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* Exponential backoff with full jitter, never sooner than Retry-After. */
static double backoff_ms(run *r, int failures, double retry_after_s)
{
    double ceiling = (double)r->o->retry_base_ms;
    for (int i = 1; i < failures && ceiling < (double)r->o->retry_cap_ms; i++) ceiling *= 2;
    if (ceiling > (double)r->o->retry_cap_ms) ceiling = (double)r->o->retry_cap_ms;
    double d = uniform(r) * ceiling;
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

/* ---- outcome lines ---------------------------------------------------------------- */

static void emit(run *r, job *j, const char *label)
{
    bp_buf *b = &r->line;
    bp_buf_reset(b);
    bp_outcome_write_fields(&j->out, j->index, label, b);
    /* one line per event: plain appends, no printf */
    bp_buf_adds(b, ",\"id\":");
    bp_json_write_int(b, (long long)j->ev.id);
    bp_buf_adds(b, ",\"status\":");
    if (j->last_status) bp_json_write_int(b, j->last_status); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"attempts\":");
    bp_json_write_int(b, j->ev.attempts);
    bp_buf_adds(b, ",\"duration_ms\":");
    bp_json_write_int(b, j->first_ms > 0 ? llround(bp_wall_ms() - j->first_ms) : 0);
    bp_buf_adds(b, ",\"response\":");
    if (j->response.len) {
        size_t bad, n = j->response.len;
        if (bp_utf8_check(j->response.data, n, &bad) < 0) n = bad;
        bp_json_write_string(b, j->response.data, n);
    } else {
        bp_buf_adds(b, "null");
    }
    bp_buf_addc(b, '}');
    if (r->o->emit) r->o->emit(r->o->emit_ctx, b->data, b->len);
}

/* Save the job's state; when final, also its outcome line and free the slot. */
static void save(run *r, job *j, const char *state, const char *label)
{
    int final = strcmp(state, "pending") != 0;
    if (final) emit(r, j, label);
    bp_store_update(r->store, &j->ev, state, j->last_status, j->out.reason.data ? j->out.reason.data : "",
                    j->response.len ? j->response.data : NULL, final ? r->line.data : NULL, (int64_t)bp_wall_ms());
    if (!final) return;
    if (!strcmp(state, "delivered")) r->st->delivered++;
    else if (!strcmp(state, "dropped")) r->st->dropped++;
    else if (!strcmp(state, "error")) r->st->errors++;
    else if (!strcmp(state, "dead")) r->st->dead++;
    else if (!strcmp(state, "held")) r->st->held++;
    free(j->ev.body);
    bp_outcome_free(&j->out);
    bp_buf_free(&j->response);
    memset(j, 0, sizeof *j);
}

static void set_reason(job *j, const char *fmt, const char *a, const char *b)
{
    bp_buf_reset(&j->out.reason);
    bp_buf_printf(&j->out.reason, fmt, a, b);
}

static void hold(run *r, job *j)
{
    set_reason(j, "held: %s%s", r->pause_reason, "");
    save(r, j, "held", "held");
}

/* ---- the window ---------------------------------------------------------------------- */

static void load_jobs(run *r)
{
    int free_slots = 0;
    for (int i = 0; i < WINDOW; i++) if (!r->jobs[i].active) free_slots++;
    if (!free_slots || !r->more_in_store) return;
    bp_stored *evs;
    size_t n;
    if (bp_store_pending(r->store, r->last_loaded_id, free_slots, &evs, &n) < 0) { free(evs); return; }
    if ((int)n < free_slots) r->more_in_store = 0;
    for (size_t k = 0, slot = 0; k < n; k++) {
        while (r->jobs[slot].active) slot++;
        job *j = &r->jobs[slot];
        j->ev = evs[k];
        j->active = 1;
        /* index: position in the input that added it — this run's input, or in
         * service mode the intake request it came in */
        j->index = (r->first_new_id > 0 && j->ev.id >= r->first_new_id) || r->o->follow ? j->ev.idx : -1;
        bp_outcome_init(&j->out);
        bp_buf_init(&j->response);
        r->last_loaded_id = j->ev.id;
        if (r->paused) { hold(r, j); continue; }
        /* The mapping is deterministic, so re-running it after a restart
         * yields the same requests; done_requests says where to resume. */
        enum bp_verdict v = bp_engine_run(r->engine, j->ev.body, j->ev.body_len, &j->out);
        if (v == BP_DROP) save(r, j, "dropped", "drop");
        else if (v == BP_ERROR) save(r, j, "error", "error");
    }
    free(evs);
}

static void pause_integration(run *r, const char *why)
{
    r->paused = 1;
    snprintf(r->pause_reason, sizeof r->pause_reason, "integration paused: %s; %s; delivery resumes when the "
             "credentials in the config change", why,
             r->bp->auth_help ? r->bp->auth_help : "check the API key and API URL");
    char fp[17];
    credentials_fingerprint(r->cfg, r->bp, fp);
    bp_store_meta_set(r->store, "paused_credentials", fp);
    bp_store_meta_set(r->store, "pause_reason", r->pause_reason);
    fprintf(stderr, "blueprint: %s\n", r->pause_reason);
}

static void on_answer(void *ctx, void *user, const bp_response *resp)
{
    run *r = ctx;
    job *j = user;
    double now = bp_wall_ms();
    j->inflight = 0;
    r->inflight--;
    bp_request *req = &j->out.requests[j->ev.done_requests];
    j->last_status = resp->status;
    bp_buf_reset(&j->response);
    bp_buf_add(&j->response, resp->body.data ? resp->body.data : "",
               resp->body.len < MAX_SAVED_RESPONSE ? resp->body.len : MAX_SAVED_RESPONSE);
    /* Retry-After is an order.  RateLimit-Remaining: 0 is also what a client
     * pacing at exactly the limit sees once its window is full, so it only
     * takes away any saved-up burst; a RateLimit-Limit below our rate lowers
     * the rate (the vendor knows the account's limit better than the
     * blueprint's default). */
    if (resp->retry_after_s > 0) bp_bucket_block(&r->bucket, now + resp->retry_after_s * 1000.0);
    else if (resp->ratelimit_remaining == 0) bp_bucket_drain(&r->bucket);
    if (resp->ratelimit_limit > 0 && resp->ratelimit_limit < r->bucket.rate) r->bucket.rate = resp->ratelimit_limit;
    if (resp->status == 429) r->st->rate_limited++;
    long slot = (long)(resp->duration_ms * 10.0);
    r->st->latency_us[slot < 0 ? 0 : slot > 1000 ? 1000 : slot]++;
    if (r->o->on_answer) r->o->on_answer(r->o->emit_ctx, resp->status, resp->duration_ms);

    switch (bp_classify(req, resp, j->why, sizeof j->why)) {
    case BP_OK:
        if (req->once) bp_store_once_mark(r->store, req->once, (int64_t)now);
        if (req->marks) bp_store_once_mark(r->store, req->marks, (int64_t)now);
        j->ev.done_requests++;
        j->ev.failures = 0;
        if ((size_t)j->ev.done_requests >= j->out.nrequests) {
            set_reason(j, "delivered (%s)%s", j->why, "");
            save(r, j, "delivered", "delivered");
        } else {
            save(r, j, "pending", NULL);
        }
        break;
    case BP_RETRY:
        r->st->retries++;
        if (++j->ev.failures >= r->max_attempts) {
            char n[16];
            snprintf(n, sizeof n, "%d", j->ev.failures);
            set_reason(j, "dead letter after %s failed attempts: %s", n, j->why);
            save(r, j, "dead", "dead_letter");
        } else {
            j->ev.next_at = (int64_t)(now + backoff_ms(r, j->ev.failures, resp->retry_after_s));
            save(r, j, "pending", NULL);
        }
        break;
    case BP_PERMANENT:
        set_reason(j, "dead letter: %s%s", j->why, "");
        save(r, j, "dead", "dead_letter");
        break;
    case BP_AUTH:
        if (!r->paused) pause_integration(r, j->why);
        hold(r, j);
        break;
    }
}

/* Is a request that will record `key` on success in flight right now?  Then
 * a request with `once = key` waits for its answer instead of repeating it
 * (two events for the same new contact sync it once). */
static int key_in_flight(run *r, const char *key)
{
    for (int i = 0; i < WINDOW; i++) {
        job *j = &r->jobs[i];
        if (!j->active || !j->inflight) continue;
        const bp_request *q = &j->out.requests[j->ev.done_requests];
        if ((q->once && !strcmp(q->once, key)) || (q->marks && !strcmp(q->marks, key))) return 1;
    }
    return 0;
}

/* Start what can start now; returns ms until something else could. */
static double dispatch(run *r)
{
    double now = bp_wall_ms(), wait = 1000;
    for (int i = 0; i < WINDOW; i++) {
        job *j = &r->jobs[i];
        if (!j->active || j->inflight) continue;
        if (r->paused) { hold(r, j); continue; }
        if (j->ev.next_at > now) { if (j->ev.next_at - now < wait) wait = j->ev.next_at - now; continue; }
        /* skip requests whose once-key succeeded recently (contact already synced) */
        while ((size_t)j->ev.done_requests < j->out.nrequests) {
            const char *once = j->out.requests[j->ev.done_requests].once;
            if (!once || !bp_store_once_seen(r->store, once, (int64_t)(now - (double)r->o->once_ttl_s * 1000.0))) break;
            j->ev.done_requests++;
        }
        if ((size_t)j->ev.done_requests >= j->out.nrequests) {
            set_reason(j, "delivered%s%s", "", "");
            save(r, j, "delivered", "delivered");
            continue;
        }
        const char *once = j->out.requests[j->ev.done_requests].once;
        if (once && key_in_flight(r, once)) continue;
        if (r->inflight >= r->o->concurrency) return 0;
        double w = bp_bucket_take(&r->bucket, now);
        if (w > 0) return w < wait ? w : wait;
        if (bp_transport_send(r->tr, &j->out.requests[j->ev.done_requests], r->cfg, j) < 0) {
            j->last_status = 0;
            snprintf(j->why, sizeof j->why, "could not start the request");
            set_reason(j, "error: %s%s", j->why, "");
            save(r, j, "error", "error");
            continue;
        }
        if (j->first_ms <= 0) j->first_ms = now;
        j->inflight = 1;
        j->ev.attempts++;
        r->inflight++;
        r->st->requests++;
    }
    return wait;
}

static int any_active(run *r)
{
    for (int i = 0; i < WINDOW; i++) if (r->jobs[i].active) return 1;
    return 0;
}

/* ---- phase 1: input into the store ---------------------------------------------------- */

static const char *message_id_of(const bp_doc *d)
{
    static const char *const keys[] = { "messageId", "message_id", "event_id" };
    for (int i = 0; i < 3; i++) {
        const char *s = bp_jscalar(d, bp_jget(d, 0, keys[i]));
        if (s) return s;
    }
    return NULL;
}

/* A line for input that never becomes a stored event. */
static void emit_input_error(run *r, long index, const char *why, const char *message_id)
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

static int ingest(run *r, bp_error *err)
{
    bp_reader *rd = bp_reader_new(r->o->input_fd, r->o->limits.json.max_bytes);
    const char *ev;
    size_t len;
    bp_error rerr;
    enum bp_read_status s;
    int in_batch = 0;
    long index = 0;
    bp_doc doc;
    bp_doc_init(&doc);
    while ((s = bp_reader_next(rd, &ev, &len, &rerr)) != BP_READ_END) {
        const char *message_id = NULL;
        if (s == BP_READ_EVENT && bp_json_parse(&doc, ev, len, &r->o->limits.json, &rerr) == 0)
            message_id = message_id_of(&doc);
        if (s == BP_READ_BAD) {
            /* Not an event we can store: say so on its own line, in order. */
            emit_input_error(r, index++, rerr.msg, NULL);
            continue;
        }
        if (!in_batch) { bp_store_exec(r->store, "BEGIN"); in_batch = 1; }
        int64_t id = bp_store_add(r->store, ev, len, index, message_id, (int64_t)bp_wall_ms());
        if (id < 0) {
            bp_error_set(err, "state store: could not save an event");
            bp_doc_free(&doc);
            bp_reader_free(rd);
            return -1;
        }
        if (id == 0) {
            emit_input_error(r, index++, "duplicate: an event with this message id was already accepted "
                             "(not delivered twice)", message_id);
            continue;
        }
        index++;
        if (!r->first_new_id) r->first_new_id = id;
        r->st->added++;
        if (++in_batch > INSERT_BATCH) { bp_store_exec(r->store, "COMMIT"); in_batch = 0; }
    }
    bp_doc_free(&doc);
    if (in_batch) bp_store_exec(r->store, "COMMIT");
    bp_reader_free(rd);
    return 0;
}

/* ---- the run ----------------------------------------------------------------------------- */

int bp_deliver(const bp_blueprint *bp, const bp_config *cfg, const bp_deliver_opts *opts,
               bp_deliver_stats *stats, bp_error *err)
{
    bp_deliver_opts def;
    if (!opts) { bp_deliver_opts_default(&def); opts = &def; }
    bp_deliver_stats st_local;
    if (!stats) stats = &st_local;
    memset(stats, 0, sizeof *stats);
    run *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->bp = bp;
    r->cfg = cfg;
    r->o = opts;
    r->st = stats;
    r->more_in_store = 1;
    r->rng = (uint64_t)bp_wall_ms() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    r->max_attempts = opts->max_attempts > 0 ? opts->max_attempts : bp->retry_max_attempts;
    bp_buf_init(&r->line);
    /* Burst: 10 ms worth of requests, at least 1 (ActiveCampaign's 5/s -> 1). */
    double rps = opts->rate_limit_rps > 0 ? opts->rate_limit_rps : bp->rate_limit_rps;
    bp_bucket_init(&r->bucket, rps, rps / 100.0, bp_wall_ms());
    int rc = -1;
    if (!(r->store = bp_store_open(opts->state_dir ? opts->state_dir : "./var", err))) goto out;
    if (!(r->engine = bp_engine_new(bp, cfg, &opts->limits, err))) goto out;
    r->tr = bp_transport_new(opts->connect_timeout_ms, opts->http_timeout_ms);

    /* A pause outlives the run until the credentials change. */
    char fp[17];
    credentials_fingerprint(cfg, bp, fp);
    char *paused_fp = bp_store_meta_get(r->store, "paused_credentials");
    if (paused_fp && !strcmp(paused_fp, fp)) {
        char *why = bp_store_meta_get(r->store, "pause_reason");
        r->paused = 1;
        snprintf(r->pause_reason, sizeof r->pause_reason, "%s", why ? why : "integration paused");
        fprintf(stderr, "blueprint: %s\n", r->pause_reason);
        free(why);
    } else if (paused_fp) {
        long n = bp_store_move(r->store, "held", "pending", 0);
        bp_store_meta_set(r->store, "paused_credentials", NULL);
        fprintf(stderr, "blueprint: credentials changed: resuming delivery of %ld held events\n", n);
    }
    free(paused_fp);

    if (opts->input_fd >= 0 && ingest(r, err) < 0) goto out;

    /* Store writes are grouped per turn of the loop: everything judged in a
     * turn is committed before the next requests go out. */
    bp_store_exec(r->store, "BEGIN");
    double last_rearm = 0, last_commit = 0;
    for (;;) {
        int stopping = opts->stop && *opts->stop;
        if (opts->follow && bp_wall_ms() - last_rearm > 100) {
            r->more_in_store = 1;   /* others add events to the store: look again */
            last_rearm = bp_wall_ms();
        }
        if (!stopping) load_jobs(r);
        if (r->inflight == 0 && (stopping || !any_active(r))) {
            bp_store_exec(r->store, "COMMIT");
            bp_store_exec(r->store, "BEGIN");
            if (!opts->follow || stopping) break;
            /* service mode: idle until new events arrive in the store */
            bp_store_exec(r->store, "COMMIT");
            usleep(50 * 1000);
            r->more_in_store = 1;
            bp_store_exec(r->store, "BEGIN");
            continue;
        }
        /* Group commit: at most every 10 ms.  A kill loses at most that much
         * progress, i.e. a few answered requests are sent again (at-least-once). */
        if (bp_wall_ms() - last_commit >= 10) {
            bp_store_exec(r->store, "COMMIT");
            bp_store_exec(r->store, "BEGIN");
            last_commit = bp_wall_ms();
        }
        double wait = stopping ? 50 : dispatch(r);
        int wait_ms = wait > 0 ? (int)(wait + 0.999) : 0;
        if (wait_ms > 1000) wait_ms = 1000;
        if (r->inflight > 0) bp_transport_poll(r->tr, wait_ms, on_answer, r);
        else if (wait_ms > 0) usleep((useconds_t)wait_ms * 1000);
    }
    bp_store_exec(r->store, "COMMIT");
    rc = bp_store_count(r->store, "held") > 0 ? 3 : 0;
out:
    for (int i = 0; i < WINDOW; i++)
        if (r->jobs[i].active) { free(r->jobs[i].ev.body); bp_outcome_free(&r->jobs[i].out); bp_buf_free(&r->jobs[i].response); }
    bp_transport_free(r->tr);
    bp_engine_free(r->engine);
    bp_store_close(r->store);
    bp_buf_free(&r->line);
    free(r);
    return rc;
}
