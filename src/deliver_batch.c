/*
 * deliver_batch.c — batches in a delivery loop (`deliver --batch`,
 * `serve --batch`): when min_events or more events of one tenant that the
 * blueprint's `batch:` takes are waiting (a backlog), up to max_events of
 * them go in one request made by the batch mapping (batch.c); fewer go one
 * by one as always, so a single live event is never slowed.
 *
 * A batch is recorded in the store (batchstore.c) before its request
 * leaves.  Its request is paced like any other on the account's pace;
 * answers that say "again later" or "the key is wrong" for the whole request
 * (network errors, 408, 429, 5xx, 401/403: bp_classify) are the loop's, as
 * for one event; the others go to the mapping's reader, which gives each
 * event its result (delivered, a dead letter with the vendor's reason,
 * retried alone or in a later batch, dropped) or asks for a status request
 * later (ctx.later: the vendor queued the work).  Status requests back off
 * from 1 s, doubling to 30 s, and each "not yet" answer is recorded with the
 * batch, so a restart runs the mapping again on the same events, gives the
 * reader that answer and asks for the status instead of sending the batch
 * again.  The batch's row is deleted in the commit that saves its events'
 * outcomes.
 *
 * The events of an open batch stay in their account's list of jobs (so a
 * rescan, a lease or a removal sees them) with `batch` set: dispatch sends
 * none of them alone meanwhile.
 */
#include "service.h"
#include "deliver_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_FIRST_MS 1000.0
#define POLL_CAP_MS 30000.0
/* batch.max_per_minute counts in a minute stretched as the pace's second
 * is (PACE_MARGIN): 100 a minute are at most 100 in any 61.9 s. */
#define MINUTE_MS (60000.0 / PACE_MARGIN)

/* The tenant's batch bounds when this loop forms batches for it, else NULL. */
static const struct bp_batch_spec *spec_of(const loop *l, const tenant *t)
{
    if (!l->o->batch || !t->eng || t->paused || t->removing) return NULL;
    const struct bp_batch_spec *sp = bp_engine_batch_spec(t->eng->engine);
    return sp && bp_batch_switched_on(t->eng->engine, &t->bind) ? sp : NULL;
}

/* A job of t that a batch may take now: mapped, and none of its own
 * requests sent (by this run, or by an earlier one: attempts with steps
 * answered; answers it read from ctx.cache are no sending). */
static int may_take(const loop *l, const tenant *t, const job *j, double now)
{
    int untouched = !j->went_alone && (j->ev.attempts == 0 || (j->ev.done_requests == 0 && j->ev.steps_len == 0));
    return j->t == t && untouched && !j->inflight && !j->batch && !j->alone && !j->remap && !j->final &&
           j->ev.next_at <= now && !bp_dl_lease_lost(l, j) && bp_batch_takes_event(t->eng->engine, &j->out);
}

/* What take_slot() takes, under the pace's lock at once. */
enum { SLOT_ROOM = 1,           /* the minute must have room for a batch request (batch.max_per_minute) */
       SLOT_PACE = 2,           /* a send slot on the account's pace (any request) */
       SLOT_COUNT = 4 };        /* the request is a batch's own (not a step, not a status request): counted in the minute */

/* Send slots for t's batches.  A batch's own request counts against
 * batch.max_per_minute (the vendor's bound on them: ActiveCampaign's 100
 * bulk imports a minute) as well as the account's pace; its steps and
 * status requests only against the pace.  0 when what `what` asks is
 * taken, else the ms to wait; *minute says the minute's bound is what it
 * waits for. */
static double take_slot(account *a, const tenant *t, int what, double mono, int *minute)
{
    const struct bp_batch_spec *sp = t->eng ? bp_engine_batch_spec(t->eng->engine) : NULL;
    int limit = sp ? sp->max_per_minute : 0;
    double w = 0;
    *minute = 0;
    pthread_mutex_lock(&a->pace->mu);
    /* cluster mode: this node's part of a shared account's minute, as of its
     * rate (deliver_tenant.c), in whole requests and at least one */
    if (limit > 0 && a->pace->share < 1) limit = limit * a->pace->share >= 1 ? (int)floor(limit * a->pace->share) : 1;
    if (what & SLOT_ROOM) *minute = (w = bp_window_take(&a->pace->imports, limit, MINUTE_MS, mono, 0)) > 0;
    if (w <= 0 && (what & SLOT_PACE)) w = bp_bucket_take(&a->pace->bucket, mono);
    if (w <= 0 && (what & SLOT_COUNT)) bp_window_take(&a->pace->imports, limit, MINUTE_MS, mono, 1);
    pthread_mutex_unlock(&a->pace->mu);
    return w;
}

static double poll_delay(int n)
{
    double d = POLL_FIRST_MS;
    for (int i = 1; i < n && d < POLL_CAP_MS; i++) d *= 2;
    return d < POLL_CAP_MS ? d : POLL_CAP_MS;
}

/* ---- a batch's life ---------------------------------------------------------------- */

static void detach(batch *b, job *j)
{
    if (j->batch != b) return;
    j->batch = NULL;
    b->t->batched--;
}

static void free_batch(batch *b)
{
    bp_batch_free(b->engine, &b->b);
    free(b->jobs);
    free(b->answer_url);
    bp_buf_free(&b->answer_body);
    bp_buf_free(&b->journal);
    free(b);
}

/* The batch is over: off the account's list, its row deleted with the
 * commit that saves its events (or now, when none is waiting for one). */
static void close_batch(loop *l, batch *b)
{
    account *a = b->t->acct;
    for (batch **p = &a->batches; *p; p = &(*p)->next) if (*p == b) { *p = b->next; break; }
    for (size_t i = 0; i < b->n; i++) if (b->jobs[i]) detach(b, b->jobs[i]);
    if (b->id && l->dirty) {
        if (l->nclosed == l->capclosed) {
            l->capclosed = l->capclosed ? l->capclosed * 2 : 16;
            l->closed = bp_realloc(l->closed, l->capclosed * sizeof *l->closed);
        }
        l->closed[l->nclosed++] = b->id;
    } else if (b->id) {
        bp_store_batch_delete(l->store, b->id);
    }
    free_batch(b);
}

/* Run the batch mapping on its events (again: after one of its steps was
 * answered, a restart or a new config), with its steps' answers so far, and
 * give the reader the answer that last asked for a status request.
 * 1: the request (or status request) is ready; 2: it stopped at a step
 * (its request is the last, or out.wait_ms: another run is fetching the
 * answer it shares); 0: the reader gave results; -1: b->b.out.reason says
 * why not. */
static int run_mapping(batch *b)
{
    tenant *t = b->t;
    bp_engine *e = t->eng->engine;
    const char **bodies = bp_calloc(b->n, sizeof *bodies);
    size_t *lens = bp_calloc(b->n, sizeof *lens);
    for (size_t i = 0; i < b->n; i++) { bodies[i] = b->jobs[i]->ev.body; lens[i] = b->jobs[i]->ev.body_len; }
    bp_batch_free(b->engine, &b->b);
    bp_batch_init(&b->b);
    t->bind.account = t->acct->key;
    bp_engine_set_journal(e, b->journal.data, b->journal.len, (uint64_t)b->jobs[0]->ev.id);
    int rc = bp_batch_run_as(e, &t->bind, &b->b, bodies, lens, b->n);
    free(bodies);
    free(lens);
    b->engine = e;
    b->rerun = 0;
    if (rc < 0) return -1;
    if (b->b.stopped) return 2;
    if (!b->b.has_request && !b->b.has_results) {   /* no request, and the reader asked for a later one */
        bp_buf_reset(&b->b.out.reason);
        bp_buf_printf(&b->b.out.reason, "%s: read(nil) must give each event its result (no request was sent)",
                      t->bp->bp->batch.mapping);
        return -1;
    }
    if (!b->b.has_request) return 0;
    if (!b->queued) return 1;
    rc = bp_batch_read_as(e, &t->bind, &b->b, b->answer_status, b->answer_body.data ? b->answer_body.data : "",
                          b->answer_body.len, b->answer_url ? b->answer_url : "");
    return rc < 0 ? -1 : rc == 1 ? 1 : 0;
}

/* ---- each event's result ------------------------------------------------------------ */

/* What the event's line says about its batch. */
static void note_batch(const batch *b, job *j)
{
    /* its own request: after its steps, before its status requests */
    const bp_request *r = b->b.out.nanswered < b->b.out.nrequests ? &b->b.out.requests[b->b.out.nanswered] : NULL;
    j->bt.id = b->id;
    j->bt.size = (int)b->n;
    j->bt.polls = b->polls;
    if (r) snprintf(j->bt.request, sizeof j->bt.request, "%s %s", r->method, r->url);
    else snprintf(j->bt.request, sizeof j->bt.request, "(none)");
}

/* Sent again at `at` (the same time for every event of its batch, so they
 * can form the next batch together, or go alone when too few); a dead
 * letter once the attempts are used up. */
static void retry_later(loop *l, job *j, const char *why, double at)
{
    tenant *t = j->t;
    bp_dl_count(&t->st->retries);
    snprintf(j->why, sizeof j->why, "%s", why);
    if (++j->ev.failures >= t->max_attempts) {
        char n[16];
        snprintf(n, sizeof n, "%d", j->ev.failures);
        bp_dl_set_reason(j, "dead letter after %s failed attempts: %s", n, j->why);
        bp_dl_finish(l, j, BP_END_DEAD);
        return;
    }
    bp_dl_map_job(l, j);   /* its own requests again (a restart read only its batch's) */
    if (j->final) return;
    j->ev.next_at = (int64_t)at;
    bp_dl_set_reason(j, "retrying: %s%s", j->why, "");
    bp_dl_write_line(l, j, BP_END_RETRYING);
    t->sink->outcome(t->ctx, &j->ev, j->line.data, j->line.len, BP_END_RETRYING, j->out.reason.data);
    j->bt.id = 0;
    bp_dl_save_progress(l, j);
}

/* Its own requests' once-keys and marks count as done: the vendor has the
 * record (a contact imported is a contact synced). */
static void delivered(loop *l, job *j, double now)
{
    for (size_t k = 0; k < j->out.nrequests; k++) {
        const bp_request *r = &j->out.requests[k];
        if (r->once) bp_dl_add_mark(l, j->t, r->once, (int64_t)now);
        if (r->marks) bp_dl_add_mark(l, j->t, r->marks, (int64_t)now);
    }
    bp_outcome_truncate_requests(&j->out, 0);   /* what was sent is the batch's request */
    bp_dl_finish(l, j, BP_END_DELIVERED);
}

static void apply_results(loop *l, batch *b, double now)
{
    double again = now + bp_dl_backoff_ms(l, b->jobs[0]->ev.failures + 1, 0);
    for (size_t i = 0; i < b->n; i++) {
        job *j = b->jobs[i];
        const bp_batch_item *it = &b->b.items[i];
        const char *why = it->reason ? it->reason : "";
        detach(b, j);
        note_batch(b, j);
        switch (it->result) {
        case BP_BATCH_DELIVERED:
            bp_buf_reset(&j->out.reason);
            bp_buf_printf(&j->out.reason, "delivered in batch %lld (%zu events)", (long long)b->id, b->n);
            delivered(l, j, now);
            break;
        case BP_BATCH_FAILED:
            bp_dl_set_reason(j, "dead letter: %s%s", why, "");
            bp_outcome_truncate_requests(&j->out, 0);
            bp_dl_finish(l, j, BP_END_DEAD);
            break;
        case BP_BATCH_DROPPED:
            bp_dl_set_reason(j, "%s%s", why, "");
            bp_outcome_truncate_requests(&j->out, 0);
            bp_dl_finish(l, j, BP_END_DROPPED);
            break;
        case BP_BATCH_RETRY:
            retry_later(l, j, why, again);
            break;
        }
    }
}

/* Every event of the batch ends the same way (the mapping or reader failed,
 * the attempts are used up). */
static void end_all(loop *l, batch *b, enum bp_end end, const char *fmt, const char *why)
{
    for (size_t i = 0; i < b->n; i++) {
        job *j = b->jobs[i];
        detach(b, j);
        note_batch(b, j);
        bp_dl_set_reason(j, fmt, why, "");
        bp_outcome_truncate_requests(&j->out, 0);
        bp_dl_finish(l, j, end);
    }
}

/* ---- sending ---------------------------------------------------------------------- */

/* Where the batch stands once its mapping ran (rc as run_mapping's): 1 its
 * last request is to be sent now (the batch is recorded before its own
 * request first leaves); 0 it was closed, or waits. */
static int go_on(loop *l, batch *b, int rc, double now)
{
    tenant *t = b->t;
    if (rc < 0) { end_all(l, b, BP_END_ERROR, "error: %s%s", b->b.out.reason.data); close_batch(l, b); return 0; }
    if (rc == 0) { apply_results(l, b, now); close_batch(l, b); return 0; }
    if (rc == 2 && b->b.out.wait_ms > 0) {   /* another run fetches the answer a step shares */
        b->rerun = 1;
        b->next_ms = now + b->b.out.wait_ms;
        return 0;
    }
    if (rc == 1 && !b->id) {
        int64_t *ids = bp_calloc(b->n, sizeof *ids);
        for (size_t i = 0; i < b->n; i++) ids[i] = b->jobs[i]->ev.id;
        b->id = bp_store_batch_add(l->store, t->id, ids, b->n, (int64_t)now);
        free(ids);
        if (b->id < 0) {   /* the store refuses writes: its events wait, and form a batch later */
            bp_dl_log_tenant("error", "state store: could not record a batch before its request; its events wait", t, NULL);
            b->id = 0;
            close_batch(l, b);
            return 0;
        }
        bp_dl_count(&t->st->batches);
    }
    return 1;
}

static int send_request(loop *l, batch *b, double now)
{
    tenant *t = b->t;
    account *a = t->acct;
    if (bp_transport_send(l->tr, &b->b.out.requests[b->b.out.nrequests - 1], t->cfg, b) < 0) return -1;
    /* its pace slot is taken: it leaves now, not after the loop's other work */
    bp_transport_flush(l->tr);
    b->inflight = 1;
    b->polls += b->queued;
    b->generation = t->generation;
    t->inflight++;
    a->inflight++;
    bp_dl_count(&t->st->requests);
    for (size_t i = 0; i < b->n; i++) {
        job *j = b->jobs[i];
        if (j->first_ms <= 0) j->first_ms = now;
        if (!b->queued && !b->b.stopped) j->ev.attempts++;
        if (j->ev.ksrc && l->lease) l->lease->sending(l->lease->ctx, j->ev.ksrc, 1);
    }
    return 0;
}

/* A new batch of the first n reserved jobs of t: mapped, then its first
 * request sent (one of its steps, or its own, recorded first) when the
 * pace has a slot for it.  0: sent (or over: an error); the ms until its
 * request may leave (bp_dl_batch_dispatch sends it); -1: the store
 * refuses writes (try again later). */
static double start_batch(loop *l, account *a, tenant *t, size_t n, double now)
{
    batch *b = bp_calloc(1, sizeof *b);
    b->sent_by = SENT_BY_BATCH;
    b->t = t;
    b->jobs = bp_calloc(n, sizeof *b->jobs);
    bp_batch_init(&b->b);
    bp_buf_init(&b->answer_body);
    bp_buf_init(&b->journal);
    for (job *j = a->jobs; j && b->n < n; j = j->next) if (j->t == t && j->reserved) b->jobs[b->n++] = j;
    for (size_t i = 0; i < b->n; i++) { b->jobs[i]->reserved = 0; b->jobs[i]->batch = b; }
    t->batched += (int)b->n;
    b->next = a->batches;
    a->batches = b;
    int rc = run_mapping(b);
    if (!go_on(l, b, rc, now)) return rc == 1 ? -1 : 0;   /* rc 1 and closed: the store refused the record */
    /* the slot is taken once the mapping ran, so the request leaves in it */
    int minute;
    double w = take_slot(a, t, rc == 1 ? SLOT_ROOM | SLOT_PACE | SLOT_COUNT : SLOT_PACE, bp_monotonic_ms(), &minute);
    if (w > 0) {
        b->next_ms = now + w;
        return w;
    }
    if (send_request(l, b, now) < 0) {
        end_all(l, b, BP_END_ERROR, "error: could not start the batch's request%s%s", "");
        close_batch(l, b);
    }
    return 0;
}

/* Form t's batch when enough of its events wait; returns ms until it
 * could (1000: nothing to form). */
static double form(loop *l, account *a, tenant *t, double now, double mono)
{
    if (!l->o->batch || !t->eng || !bp_engine_batch_spec(t->eng->engine)) return 1000;   /* none of its jobs is reserved */
    const struct bp_batch_spec *sp = spec_of(l, t);
    size_t n = 0;
    double oldest = now;
    for (job *j = a->jobs; j; j = j->next) {
        if (j->t != t) continue;
        j->reserved = sp && may_take(l, t, j, now);
        if (j->reserved && n++ == 0) oldest = j->loaded_ms;
    }
    if (!sp || n < (size_t)sp->min_events) {
        for (job *j = a->jobs; n && j; j = j->next) if (j->t == t) j->reserved = 0;
        return 1000;
    }
    /* more may come from the store to fill it, for at most max_wait_ms */
    if (n < (size_t)sp->max_events && t->more && now - oldest < (double)sp->max_wait_ms)
        return oldest + (double)sp->max_wait_ms - now;
    if (a->inflight >= l->o->concurrency) return NEVER;
    /* No batch is formed while the minute's batch requests are spent: its
     * events stay reserved and wait for the next room (a backlog: one by
     * one they would cost far more requests), the account's other events
     * and status requests go on. */
    int minute;
    double w = take_slot(a, t, SLOT_ROOM, mono, &minute);
    if (w > 0) return w;
    w = start_batch(l, a, t, n < (size_t)sp->max_events ? n : (size_t)sp->max_events, now);
    if (w < 0) {
        for (job *j = a->jobs; j; j = j->next) if (j->t == t) j->reserved = 0;
        return 50;
    }
    return w;   /* 0: the next may be formed now */
}

/* Cluster mode: the partition of one of its events went to another node,
 * which reads them again; the batch is forgotten here without outcomes
 * (that node sends its events again: at least once). */
static int abandoned(loop *l, batch *b)
{
    int lost = 0;
    for (size_t i = 0; i < b->n && !lost; i++) lost = bp_dl_lease_lost(l, b->jobs[i]);
    if (!lost) return 0;
    account *a = b->t->acct;
    for (batch **p = &a->batches; *p; p = &(*p)->next) if (*p == b) { *p = b->next; break; }
    for (size_t i = 0; i < b->n; i++) { detach(b, b->jobs[i]); bp_dl_abandon(l, b->jobs[i]); }
    if (b->id) bp_store_batch_delete(l->store, b->id);
    free_batch(b);
    return 1;
}

/* Send the open batches' requests that are due (status requests, or the
 * batch again after a retry), and form new batches; returns ms until
 * something could be sent. */
double bp_dl_batch_dispatch(loop *l, account *a, double now, double mono)
{
    double wait = 1000;
    for (batch *b = a->batches, *next; b; b = next) {
        next = b->next;
        if (b->inflight || abandoned(l, b)) continue;
        if (b->next_ms > now) { if (b->next_ms - now < wait) wait = b->next_ms - now; continue; }
        if (a->inflight >= l->o->concurrency) return NEVER;
        int rc = !b->engine || b->rerun ? run_mapping(b) : b->b.stopped ? 2 : 1;
        if (!go_on(l, b, rc, now)) continue;
        /* its own request (first, or again after a retry) or a step or status request */
        int minute, own = rc == 1 && !b->queued;
        double w = take_slot(a, b->t, own ? SLOT_ROOM | SLOT_PACE | SLOT_COUNT : SLOT_PACE, bp_monotonic_ms(), &minute);
        if (minute) {   /* it waits for the minute; the others' status requests go on */
            b->next_ms = now + w;
            if (w < wait) wait = w;
            continue;
        }
        if (w > 0) return w < wait ? w : wait;
        if (send_request(l, b, now) < 0) b->next_ms = now + poll_delay(++b->failures);
    }
    for (size_t k = 0; k < a->nmembers; k++) {
        double w;
        /* as long as batches can start now, form the next */
        while ((w = form(l, a, a->members[k], now, mono)) == 0) {}
        if (w < wait) wait = w;
    }
    return wait;
}

/* ---- answers ------------------------------------------------------------------------ */

/* The vendor queued the work: ask for its status later, and remember the
 * answer that said so (a restart gives it to the reader again). */
static void queued(loop *l, batch *b, const bp_response *resp, const char *url, double now)
{
    int first = !b->queued;
    b->queued = 1;
    b->answer_status = resp->status;
    free(b->answer_url);
    b->answer_url = bp_strdup(url);
    bp_buf_reset(&b->answer_body);
    bp_buf_add(&b->answer_body, resp->body.data ? resp->body.data : "", resp->body.len);
    if (bp_store_batch_queued(l->store, b->id, resp->status, url, b->answer_body.data, b->polls, (int64_t)now) < 0)
        bp_log("warn", "state store: a queued batch was not recorded; a restart now would send it again", NULL);
    b->next_ms = now + poll_delay(b->polls + 1);
    /* cluster mode: every node learns it, so that the partition's next
     * owner asks for its status instead of sending it again */
    if (first && l->lease && b->t->sink->batch_queued) {
        const bp_stored **evs = bp_calloc(b->n, sizeof *evs);
        for (size_t i = 0; i < b->n; i++) evs[i] = &b->jobs[i]->ev;
        bp_queued_batch q = { b->id, evs, b->n, b->answer_status, b->answer_url, b->answer_body.data,
                              b->answer_body.len, b->polls };
        b->t->sink->batch_queued(b->t->ctx, &q);
        free(evs);
    }
}

/* The whole request must go again later (or, the first request, dead-letters
 * its events once the attempts are used up). */
static void again_later(loop *l, batch *b, const bp_response *resp, const char *why, double now)
{
    tenant *t = b->t;
    bp_dl_count(&t->st->retries);
    if (!b->queued && ++b->failures >= t->max_attempts) {
        char n[16];
        snprintf(n, sizeof n, "%d", b->failures);
        char what[400];
        snprintf(what, sizeof what, "dead letter after %s failed attempts of its batch: %s", n, why);
        end_all(l, b, BP_END_DEAD, "%s%s", what);
        close_batch(l, b);
        return;
    }
    if (b->queued) b->failures++;
    b->next_ms = now + (b->queued ? poll_delay(b->failures) : bp_dl_backoff_ms(l, b->failures, resp->retry_after_s));
    if (!t->paused) bp_dl_report_health_at(t, BP_HEALTH_BACKING_OFF, why, (int64_t)b->next_ms, 0, resp);
}

/* An answer to one of the batch mapping's steps: kept in its journal (and
 * shared: opts.cache), then the mapping runs again and goes further.  A
 * step refused sends its events alone (each one's own mapping meets the
 * refusal and says so). */
static void step_answered(loop *l, batch *b, const bp_request *req, const bp_response *resp, enum bp_class cls,
                          double now)
{
    int accepted = cls == BP_OK;
    for (int i = 0; !accepted && i < req->naccept; i++) accepted = req->accept[i] == resp->status;
    bp_dl_share_answer(l, b->t->acct, req, resp, (uint64_t)b->jobs[0]->ev.id);
    if (!accepted) {
        for (size_t i = 0; i < b->n; i++) b->jobs[i]->alone = 1;
        close_batch(l, b);
        return;
    }
    bp_journal_add(&b->journal, req->fingerprint, resp->status, resp->body.data ? resp->body.data : "", resp->body.len,
                   "sent");
    b->rerun = 1;
    b->next_ms = now;
}

static void answer(loop *l, batch *b, const bp_response *resp);

/* The lease's count of requests in flight drops once the answer is handled
 * (its outcomes reported, a queued batch told): a node giving the partition
 * up waits for that before it commits and lets go. */
void bp_dl_batch_answer(loop *l, batch *b, const bp_response *resp)
{
    int64_t *slots = l->lease ? bp_calloc(b->n + 1, sizeof *slots) : NULL;
    size_t n = l->lease ? b->n : 0;
    for (size_t i = 0; i < n; i++) slots[i] = b->jobs[i]->ev.ksrc;
    answer(l, b, resp);   /* may free b */
    for (size_t i = 0; i < n; i++) if (slots[i]) l->lease->sending(l->lease->ctx, slots[i], -1);
    free(slots);
}

static void answer(loop *l, batch *b, const bp_response *resp)
{
    tenant *t = b->t;
    account *a = t->acct;
    double now = bp_wall_ms();
    b->inflight = 0;
    t->inflight--;
    a->inflight--;
    a->next_ms = 0;
    bp_dl_obey_vendor_pace(a, resp);
    if (resp->status == 429) bp_dl_count(&t->st->rate_limited);
    if (t->sink->answer) t->sink->answer(t->ctx, resp->status, resp->duration_ms);
    int made = b->engine && !b->rerun ? 1 : run_mapping(b);
    if (made <= 0 || (made == 2 && b->b.out.wait_ms > 0)) {   /* a new config while it was in flight */
        go_on(l, b, made, now);
        return;
    }
    const bp_request *req = &b->b.out.requests[b->b.out.nrequests - 1];
    char why[300], url[2048];
    snprintf(url, sizeof url, "%s", req->url);
    enum bp_class cls = bp_classify(t->bp->bp, req, resp, why, sizeof why);
    if (cls == BP_AUTH && b->generation == t->generation) {
        /* the credentials were refused: pause, and hold the events (a
         * queued batch's too: sent again once the credentials change) */
        if (!t->paused) bp_dl_pause_tenant(l, t, why, resp);
        for (size_t i = 0; i < b->n; i++) { detach(b, b->jobs[i]); bp_dl_hold(l, b->jobs[i]); }
        close_batch(l, b);
        return;
    }
    if (cls == BP_RETRY || cls == BP_AUTH) { again_later(l, b, resp, why, now); return; }
    b->failures = 0;
    if (b->b.stopped) { step_answered(l, b, req, resp, cls, now); return; }
    if (!t->paused) bp_dl_report_health(t, BP_HEALTH_DELIVERING, "", 0);
    for (size_t i = 0; i < b->n; i++) {
        job *j = b->jobs[i];
        j->last_status = resp->status;
        bp_buf_reset(&j->response);
        bp_buf_add(&j->response, resp->body.data ? resp->body.data : "",
                   resp->body.len < MAX_SAVED_RESPONSE ? resp->body.len : MAX_SAVED_RESPONSE);
    }
    int rc = bp_batch_read_as(b->engine, &t->bind, &b->b, resp->status, resp->body.data ? resp->body.data : "",
                              resp->body.len, url);
    if (rc == 1) { queued(l, b, resp, url, now); return; }
    if (rc < 0) end_all(l, b, BP_END_ERROR, "error: %s%s", b->b.out.reason.data);
    else {
        for (size_t i = 0; i < b->n; i++)
            if (b->b.items[i].result == BP_BATCH_DELIVERED) bp_dl_count(&t->st->batched_events);
        apply_results(l, b, now);
    }
    close_batch(l, b);
}

/* ---- after a restart, a new config, a removal ---------------------------------------- */

typedef struct found { bp_store_batch_row row; char *events, *url, *body; } found;
typedef struct found_list { found *v; size_t n, cap; } found_list;

static void collect(void *ctx, const bp_store_batch_row *r)
{
    found_list *fl = ctx;
    if (fl->n == fl->cap) { fl->cap = fl->cap ? fl->cap * 2 : 8; fl->v = bp_realloc(fl->v, fl->cap * sizeof *fl->v); }
    found *f = &fl->v[fl->n++];
    f->row = *r;
    f->events = bp_strdup(r->events ? r->events : "");
    f->url = r->answer_url ? bp_strdup(r->answer_url) : NULL;
    f->body = r->answer_body ? bp_memdup(r->answer_body, r->answer_len + 1) : NULL;
}

/* A queued batch of an earlier run: its events back in memory, in it. */
static void resume(loop *l, tenant *t, found *f)
{
    account *a = t->acct;
    batch *b = bp_calloc(1, sizeof *b);
    b->sent_by = SENT_BY_BATCH;
    b->t = t;
    b->id = f->row.id;
    b->queued = 1;
    b->polls = f->row.polls;
    b->answer_status = f->row.answer_status;
    b->answer_url = f->url;
    f->url = NULL;
    bp_batch_init(&b->b);
    bp_buf_init(&b->answer_body);
    if (f->body) bp_buf_add(&b->answer_body, f->body, f->row.answer_len);
    size_t cap = 1;
    for (const char *p = f->events; *p; p++) cap += *p == ',';
    b->jobs = bp_calloc(cap, sizeof *b->jobs);
    job **tail = &a->jobs;
    while (*tail) tail = &(*tail)->next;
    for (char *p = f->events; *p;) {
        bp_stored ev;
        if (bp_store_batch_event(l->store, strtoll(p, &p, 10), &ev)) {
            job *j = bp_calloc(1, sizeof *j);
            j->t = t;
            j->ev = ev;
            if (j->ev.attempts == 0) j->ev.attempts = 1;   /* the vendor has its request, unsaved before the kill */
            j->index = -1;
            j->loaded_ms = bp_wall_ms();
            j->batch = b;
            bp_outcome_init(&j->out);
            bp_buf_init(&j->response);
            bp_buf_init(&j->line);
            memcpy(j->revision, t->bp->revision, sizeof j->revision);
            t->bind.account = a->key;
            bp_engine_set_journal(t->eng->engine, NULL, 0, (uint64_t)ev.id);
            bp_engine_run_as(t->eng->engine, &t->bind, ev.body, ev.body_len, &j->out);   /* for its line */
            /* in memory before the loader read it: the loader's pages under
             * rescan_below skip what memory holds, and wait while its final
             * outcomes are unsaved (once the batch closes, its events are
             * still pending in the store until the commit; one it sends
             * again stays in memory, pending) */
            if (ev.id >= t->rescan_below) t->rescan_below = ev.id + 1;
            if (ev.id > t->max_loaded_id) t->max_loaded_id = ev.id;
            t->njobs++;
            t->batched++;
            a->njobs++;
            *tail = j;
            tail = &j->next;
            b->jobs[b->n++] = j;
        }
        if (*p == ',') p++;
    }
    b->next = a->batches;
    a->batches = b;
    if (!b->n) close_batch(l, b);   /* its events are gone (another node's now, say) */
}

void bp_dl_batch_recover(loop *l, tenant *t)
{
    found_list fl = { 0 };
    if (bp_store_batch_each(l->store, t->id, collect, &fl) < 0) bp_log("warn", "state store: open batches not read", NULL);
    for (size_t i = 0; i < fl.n; i++) {
        found *f = &fl.v[i];
        if (f->row.queued) {
            resume(l, t, f);
        } else {
            /* it may or may not have reached the vendor: its events go again */
            bp_store_batch_delete(l->store, f->row.id);
            bp_dl_log_tenant("info", "a batch whose request may not have reached the vendor: its events are sent again",
                             t, NULL);
        }
        free(f->events);
        free(f->url);
        free(f->body);
    }
    free(fl.v);
}

/* t's engine is about to change (keep: the batches stay open and run their
 * mapping again before the next answer is read) or t leaves the loop (its
 * jobs are freed by the caller; the rows stay for the next start). */
void bp_dl_batch_forget(loop *l, tenant *t, int keep)
{
    (void)l;
    account *a = t->acct;
    for (batch **p = &a->batches; *p;) {
        batch *b = *p;
        if (b->t != t) { p = &b->next; continue; }
        if (keep) {
            bp_batch_free(b->engine, &b->b);
            bp_batch_init(&b->b);
            b->engine = NULL;
            p = &b->next;
            continue;
        }
        *p = b->next;
        for (size_t i = 0; i < b->n; i++) detach(b, b->jobs[i]);
        free_batch(b);
    }
}

/* ---- cluster mode: a batch queued for another node ---------------------------------------- */

/* How long the events of a handed batch stored here may wait for the rest
 * of it to be read before they go again without it. */
#define HANDOVER_WAIT_MS 120000.0

typedef struct handed_copy { bp_handed_row row; int64_t *ids, *slots; char *url, *body; } handed_copy;
typedef struct handed_list { handed_copy *v; size_t n, cap; } handed_list;

static void collect_handed(void *ctx, const bp_handed_row *r)
{
    handed_list *hl = ctx;
    if (hl->n == hl->cap) { hl->cap = hl->cap ? hl->cap * 2 : 4; hl->v = bp_realloc(hl->v, hl->cap * sizeof *hl->v); }
    handed_copy *h = &hl->v[hl->n++];
    h->row = *r;
    h->ids = bp_memdup(r->ids, (r->present + 1) * sizeof *r->ids);
    h->slots = bp_memdup(r->slots, (r->present + 1) * sizeof *r->slots);
    h->url = bp_strdup(r->answer_url ? r->answer_url : "");
    h->body = r->answer_body ? bp_memdup(r->answer_body, r->answer_len + 1) : NULL;
}

static int one_of(const job *j, const tenant *t, const handed_copy *h)
{
    for (size_t i = 0; j->t == t && i < h->row.present; i++) if (h->ids[i] == j->ev.id) return 1;
    return 0;
}

/* One of its events in memory here: its batch runs in this loop (this node
 * queued it, or adopted it already), or ended and is not saved yet (still
 * pending in the store). */
static int any_in_memory(const loop *l, const tenant *t, const handed_copy *h)
{
    for (const job *j = t->acct->jobs; j; j = j->next) if (one_of(j, t, h)) return 1;
    for (const job *j = l->dirty; j; j = j->dirty_next) if (one_of(j, t, h)) return 1;
    return 0;
}

/* Resume h here: a `batches` row of this node's, its events in it, its
 * status asked for next (never the batch sent again). */
static void adopt(loop *l, tenant *t, handed_copy *h, double now)
{
    bp_store_batch_row answer = { 0, NULL, 1, h->row.answer_status, h->url, h->body, h->row.answer_len, h->row.polls };
    int64_t id = bp_store_handed_adopt(l->store, t->id, h->ids, h->row.present, &answer, (int64_t)now);
    if (id < 0) return;   /* the store refuses writes: the next look tries again */
    bp_buf list;
    bp_buf_init(&list);
    for (size_t i = 0; i < h->row.present; i++) bp_buf_printf(&list, "%s%lld", i ? "," : "", (long long)h->ids[i]);
    found f = { answer, list.data, h->url, h->body };
    f.row.id = id;
    h->url = h->body = NULL;   /* resume takes them */
    resume(l, t, &f);
    free(f.url);
    free(f.body);
    bp_buf_free(&list);
    t->acct->next_ms = 0;
    char detail[64];
    snprintf(detail, sizeof detail, "%zu events, batch %lld here", h->row.present, (long long)id);
    bp_dl_log_tenant("info", "a batch another node had queued at the vendor is resumed here: its status is asked, "
                     "it is not sent again", t, detail);
}

/* Cluster mode: the batches other nodes had queued at the vendor whose
 * events this node now owns (their partition moved here) are resumed; an
 * incomplete one (some events not read here within HANDOVER_WAIT_MS) or
 * one the blueprint can no longer run is given up: its events go again. */
void bp_dl_batch_adopt(loop *l, tenant *t)
{
    if (!l->lease || t->removing || !t->eng || l->store_failing) return;
    handed_list hl = { 0 };
    if (bp_store_handed_each(l->store, t->id, collect_handed, &hl) < 0) bp_log("warn", "state store: handed batches not read", NULL);
    double now = bp_wall_ms();
    for (size_t i = 0; i < hl.n; i++) {
        handed_copy *h = &hl.v[i];
        int ours = h->row.present > 0;
        for (size_t k = 0; ours && k < h->row.present; k++) ours = l->lease->holds(l->lease->ctx, h->slots[k]);
        if (ours && !any_in_memory(l, t, h)) {
            const char *why = NULL;
            if (h->row.present < h->row.n) {
                if (now - (double)h->row.oldest >= HANDOVER_WAIT_MS)
                    why = "a batch another node had queued at the vendor: not all of its events were read here in time; "
                          "they are sent again";
            } else if (!bp_engine_batch_spec(t->eng->engine)) {
                why = "a batch another node had queued at the vendor: the blueprint no longer makes batches; its events "
                      "are sent again";
            } else {
                adopt(l, t, h, now);
            }
            if (why && bp_store_handed_drop(l->store, h->row.id) == 0) {
                t->rescan = 1;   /* they were left out of the pending query until now */
                t->acct->check_load = 1;
                bp_dl_log_tenant("warn", why, t, NULL);
            }
        }
        free(h->ids);
        free(h->slots);
        free(h->url);
        free(h->body);
    }
    free(hl.v);
}
