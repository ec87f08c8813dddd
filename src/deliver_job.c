/*
 * deliver_job.c — an event's job in a delivery loop: its outcome line, its
 * progress saved in a group commit (and what a failed commit keeps), and
 * loading events from the store and mapping them.  The small things every
 * part of delivery uses (end labels, backoff, fingerprints) are here too,
 * at the bottom.
 */
#include "service.h"
#include "deliver_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

void bp_dl_count(_Atomic long *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); }

uint64_t bp_dl_hash_text(const char *s)
{
    return bp_fnv1a(BP_FNV1A_BASIS, s, strlen(s));
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
    o->once_ttl_s = BP_ONCE_TTL_S;
    o->batch = 1;
    bp_limits_default(&o->limits);
}

bp_shared_bp *bp_shared_bp_new(bp_blueprint *bp)
{
    bp_shared_bp *s = bp_calloc(1, sizeof *s);
    s->bp = bp;
    atomic_init(&s->refs, 1);
    return s;
}

void bp_shared_bp_hold(bp_shared_bp *s) { atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); }

void bp_shared_bp_drop(bp_shared_bp *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
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
double bp_dl_backoff_ms(loop *l, int failures, double retry_after_s)
{
    double ceiling = (double)l->o->retry_base_ms;
    for (int i = 1; i < failures && ceiling < (double)l->o->retry_cap_ms; i++) ceiling *= 2;
    if (ceiling > (double)l->o->retry_cap_ms) ceiling = (double)l->o->retry_cap_ms;
    double d = uniform(l) * ceiling;
    return d > retry_after_s * 1000.0 ? d : retry_after_s * 1000.0;
}

/* A fingerprint of the credentials, so a paused integration resumes when
 * they change.  FNV-1a: the key itself is never stored. */
void bp_dl_credentials_fingerprint(const bp_config *cfg, const bp_blueprint *bp, char out[17])
{
    uint64_t h = BP_FNV1A_BASIS;
    for (size_t i = 0; i < bp->nfields; i++) {
        if (bp->fields[i].type != BP_FIELD_SECRET && bp->fields[i].type != BP_FIELD_URL) continue;
        const char *v = bp_config_get(cfg, bp->fields[i].key);
        if (v) h = bp_fnv1a(h, v, strlen(v));
        h = bp_fnv1a(h, "\xff", 1);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void bp_dl_log_tenant(const char *level, const char *msg, const tenant *t, const char *detail)
{
    bp_buf f;
    bp_buf_init(&f);
    bp_log_field(&f, "integration", t->id);
    if (detail) bp_log_field(&f, "detail", detail);
    bp_log(level, msg, f.data);
    bp_buf_free(&f);
}

/* ---- health and the vendor's pace ------------------------------------------------------ */

/* Tell the sink when the integration's health changes (a new state,
 * reason, next attempt or vendor's answer); `since` keeps the time the
 * state was entered, unless the caller knows it (a pause restored from the
 * store); resp: the answer that made it so, shown in the vendor's words
 * (NULL: none). */
void bp_dl_report_health_at(tenant *t, int state, const char *reason, int64_t until_ms, int64_t since_ms,
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

void bp_dl_report_health(tenant *t, int state, const char *reason, int64_t until_ms)
{
    bp_dl_report_health_at(t, state, reason, until_ms, 0, NULL);
}

void bp_dl_pause_tenant(loop *l, tenant *t, const char *why, const bp_response *resp)
{
    const bp_blueprint *bp = t->bp->bp;
    t->paused = 1;
    snprintf(t->pause_reason, sizeof t->pause_reason, "integration paused: %s; %s; delivery resumes when the "
             "credentials in the config change", why, bp->auth_help ? bp->auth_help : "check the API key and API URL");
    char fp[17], since[24];
    bp_dl_credentials_fingerprint(t->cfg, bp, fp);
    snprintf(since, sizeof since, "%lld", (long long)bp_wall_ms());
    bp_store_meta_set(l->store, t->id, "paused_credentials", fp);
    bp_store_meta_set(l->store, t->id, "pause_reason", t->pause_reason);
    bp_store_meta_set(l->store, t->id, "paused_since", since);
    bp_dl_log_tenant("error", t->pause_reason, t, NULL);
    bp_dl_report_health_at(t, BP_HEALTH_PAUSED, t->pause_reason, 0, atoll(since), resp);
}

/* Retry-After is an order, for the whole account.  RateLimit-Remaining: 0
 * is also what a client pacing at exactly the limit sees once its window
 * is full, so it only takes away any saved-up burst; a RateLimit-Limit
 * below our rate lowers the rate (the vendor knows the account's limit
 * better than the blueprint's default). */
void bp_dl_obey_vendor_pace(account *a, const bp_response *resp)
{
    pthread_mutex_lock(&a->pace->mu);
    bp_bucket *bucket = &a->pace->bucket;
    if (resp->retry_after_s > 0) bp_bucket_block(bucket, bp_monotonic_ms() + resp->retry_after_s * 1000.0);
    else if (resp->ratelimit_remaining == 0) bp_bucket_drain(bucket);
    if (resp->ratelimit_limit > 0 && (resp->ratelimit_limit < bucket->rate || bucket->rate <= 0))
        bp_bucket_set_rate(bucket, resp->ratelimit_limit);
    pthread_mutex_unlock(&a->pace->mu);
}

/* A step's answer with opts.cache is kept for the account (a 2xx), or the
 * key is let go so another run may ask (any other answer). */
void bp_dl_share_answer(loop *l, account *a, const bp_request *req, const bp_response *resp, uint64_t owner)
{
    if (!req->cache_key) return;
    if (resp->status >= 300) { bp_cache_release(l->cache, a->key, req->cache_key, owner); return; }
    bp_buf v;
    bp_buf_init(&v);
    bp_buf_printf(&v, "{\"s\":%d,\"b\":", resp->status);
    bp_json_write_text(&v, resp->body.data ? resp->body.data : "", resp->body.len);
    bp_buf_addc(&v, '}');
    bp_cache_set(l->cache, a->key, req->cache_key, v.data, v.len, req->cache_ttl_s);
    bp_buf_free(&v);
}

/* ---- outcome lines and saving ----------------------------------------------------------- */

void bp_dl_write_line(loop *l, job *j, enum bp_end end)
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
    j->line_batch = j->bt.id;
    if (j->bt.id) {   /* it went in a batch: which, how many, what was sent */
        bp_buf_printf(b, ",\"batch\":{\"id\":%lld,\"size\":%d,\"request\":", (long long)j->bt.id, j->bt.size);
        bp_json_write_string(b, j->bt.request, strlen(j->bt.request));
        bp_buf_printf(b, ",\"status_requests\":%d}", j->bt.polls);
    }
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

void bp_dl_unlink_job(account *a, job *j)
{
    for (job **p = &a->jobs; *p; p = &(*p)->next)
        if (*p == j) { *p = j->next; a->njobs--; a->check_load = 1; return; }
}

void bp_dl_free_job(job *j)
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
void bp_dl_save_progress(loop *l, job *j) { j->state = "pending"; mark_dirty(l, j); }

/* The partition this job was read from went to another node (cluster
 * mode): forget it without an outcome, that node reads it again.  Unsaved
 * progress is still written (the row stays unfinished), then it is freed. */
void bp_dl_abandon(loop *l, job *j)
{
    (void)l;
    bp_dl_unlink_job(j->t->acct, j);
    if (!j->dirty) { bp_dl_free_job(j); return; }
    j->final = 1;
    j->t->unsaved_final++;
}

int bp_dl_lease_lost(const loop *l, const job *j)
{
    return j->ev.ksrc && l->lease && !l->lease->holds(l->lease->ctx, j->ev.ksrc);
}

/* The event's outcome is final: report it, take it out of the window and
 * save it; it is freed once the commit holding it succeeds. */
void bp_dl_finish(loop *l, job *j, enum bp_end end)
{
    tenant *t = j->t;
    /* its durable ctx.cache values count from now, or never (held: not over yet) */
    if (end != BP_END_HELD) bp_cache_settle(l->cache, (uint64_t)j->ev.id, end == BP_END_DELIVERED || end == BP_END_DROPPED);
    bp_dl_write_line(l, j, end);
    t->sink->outcome(t->ctx, &j->ev, j->line.data, j->line.len, end, j->out.reason.data ? j->out.reason.data : "");
    _Atomic long *counter[BP_END_COUNT] = { &t->st->delivered, &t->st->dropped, &t->st->errors, &t->st->dead, &t->st->held, NULL };
    if (counter[end]) bp_dl_count(counter[end]);
    j->state = bp_ends[end].state;
    j->final = 1;
    t->unsaved_final++;
    bp_dl_unlink_job(t->acct, j);
    mark_dirty(l, j);
}

void bp_dl_set_reason(job *j, const char *fmt, const char *a, const char *b)
{
    bp_buf_reset(&j->out.reason);
    bp_buf_printf(&j->out.reason, fmt, a, b);
}

void bp_dl_hold(loop *l, job *j)
{
    bp_dl_set_reason(j, "held: %s%s", j->t->pause_reason, "");
    bp_dl_finish(l, j, BP_END_HELD);
}

int bp_dl_mark_pending(loop *l, const tenant *t, const char *key)
{
    for (size_t i = 0; i < l->nmarks; i++) if (l->marks[i].t == t && !strcmp(l->marks[i].key, key)) return 1;
    return 0;
}

/* Unsaved once-keys of t: counted, or (purge) forgotten. */
int bp_dl_marks_of(loop *l, const tenant *t, int forget)
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

void bp_dl_add_mark(loop *l, tenant *t, const char *key, int64_t at)
{
    if (l->nmarks == l->capmarks) {
        l->capmarks = l->capmarks ? l->capmarks * 2 : 64;
        l->marks = bp_realloc(l->marks, l->capmarks * sizeof *l->marks);
    }
    l->marks[l->nmarks++] = (mark){ t, bp_strdup(key), at };
}

/* Write every unsaved job and once-key in one transaction.  On success the
 * final jobs are freed; on failure all of it stays for the next try. */
void bp_dl_commit(loop *l)
{
    if (!l->dirty && !l->nmarks && !l->nclosed) return;
    double now = bp_wall_ms();
    if (l->store_failing && now < l->commit_retry_at) return;
    int ok = bp_store_begin(l->store) == 0;
    if (ok) {
        for (job *j = l->dirty; ok && j; j = j->dirty_next) {
            const char *outcome = j->line.len ? j->line.data : NULL;
            ok = bp_store_update(l->store, &j->ev, j->state, j->last_status, j->out.reason.data ? j->out.reason.data : "",
                                 j->response.len ? j->response.data : NULL, outcome, outcome ? j->line_batch : 0,
                                 (int64_t)now) == 0;
        }
        for (size_t i = 0; ok && i < l->nmarks; i++)
            ok = bp_store_once_mark(l->store, l->marks[i].t->id, l->marks[i].key, l->marks[i].at) == 0;
        for (size_t i = 0; ok && i < l->nclosed; i++) ok = bp_store_batch_delete(l->store, l->closed[i]) == 0;
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
            bp_log_field(&f, "error", h.last_error);
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
        if (j->final) { j->t->unsaved_final--; j->t->acct->check_load = 1; bp_dl_free_job(j); }
        j = next;
    }
    l->dirty = NULL;
    l->dirty_tail = &l->dirty;
    for (size_t i = 0; i < l->nmarks; i++) free(l->marks[i].key);
    l->nmarks = 0;
    l->nclosed = 0;
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
        j->ev.steps = nj->len ? bp_strdup(nj->data) : NULL;
        j->ev.steps_len = nj->len;
    }
    if (j->out.pending || !same_prefix || (size_t)j->ev.done_requests < j->out.nanswered)
        j->ev.done_requests = (int)j->out.nanswered;
}

/* Map a freshly loaded (or re-mapped) job; drops and errors are final at once.
 * The mapping is deterministic, so re-running it after a restart yields the
 * same requests, and done_requests says where to resume. */
void bp_dl_map_job(loop *l, job *j)
{
    tenant *t = j->t;
    if (t->paused) { bp_dl_hold(l, j); return; }
    memcpy(j->revision, t->bp->revision, sizeof j->revision);
    j->reserved = 0;   /* a batch being formed looks again */
    t->bind.account = t->acct->key;
    bp_engine_set_journal(t->eng->engine, j->ev.steps, j->ev.steps_len, (uint64_t)j->ev.id);
    enum bp_verdict v = bp_engine_run_as(t->eng->engine, &t->bind, j->ev.body, j->ev.body_len, &j->out);
    j->remap = 0;
    if (j->out.journal.len || j->ev.steps_len) keep_journal(j);
    if (v == BP_DROP) bp_dl_finish(l, j, BP_END_DROPPED);
    else if (v == BP_ERROR) bp_dl_finish(l, j, BP_END_ERROR);
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
    bp_dl_log_tenant("info", "credentials changed: resuming delivery", t, detail);
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
        /* in memory already: read again by a rescan, or in an open batch */
        if ((evs[k].id < t->rescan_below || t->batched) && held_in_memory(t, evs[k].id)) {
            free(evs[k].body);
            free(evs[k].steps);
            continue;
        }
        job *j = bp_calloc(1, sizeof *j);
        j->t = t;
        j->ev = evs[k];
        j->index = j->ev.id >= t->index_from_id ? j->ev.idx : -1;
        j->loaded_ms = bp_wall_ms();
        bp_outcome_init(&j->out);
        bp_buf_init(&j->response);
        bp_buf_init(&j->line);
        t->njobs++;
        *tail = j;
        a->njobs++;
        bp_dl_map_job(l, j);
        /* a drop or an error left the list at once: append after the last
         * job still in it, not after this one */
        if (!j->final) tail = &j->next;
    }
    free(evs);
}

/* Fill the windows of the accounts flagged, taking their integrations in turn. */
void bp_dl_load(loop *l)
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
