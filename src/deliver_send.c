/*
 * deliver_send.c — what goes out and what comes back: dispatch sends each
 * account's jobs as its token bucket allows, and each answer is classified
 * (the next step, done, retry later, dead-letter, or pause the integration
 * on bad credentials) and the integration's health reported.
 */
#include "service.h"
#include "deliver_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- answers ------------------------------------------------------------------------------- */

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
    bp_dl_share_answer(l, j->t->acct, req, resp, (uint64_t)j->ev.id);
    j->ev.done_requests++;
    j->ev.failures = 0;
    bp_dl_map_job(l, j);                  /* req belongs to the old outcome: not used after this */
    if (!j->final) bp_dl_save_progress(l, j);
}

/* A failed step's reason says which step: "step 3 (POST …/ecomOrders): …" */
static void name_step(job *j, const bp_request *req)
{
    char what[sizeof j->why + 160];
    snprintf(what, sizeof what, "step %d (%.8s %.120s): %s", j->ev.done_requests + 1, req->method, req->url, j->why);
    memcpy(j->why, what, sizeof j->why - 1);
    j->why[sizeof j->why - 1] = '\0';
}

/* The request went through: the next one, or the event is delivered. */
static void answer_ok(loop *l, tenant *t, job *j, const bp_request *req, double now)
{
    if (req->once) bp_dl_add_mark(l, t, req->once, (int64_t)now);
    if (req->marks) bp_dl_add_mark(l, t, req->marks, (int64_t)now);
    j->ev.done_requests++;
    j->ev.failures = 0;
    if ((size_t)j->ev.done_requests >= j->out.nrequests) {
        bp_dl_set_reason(j, "delivered (%s)%s", j->why, "");
        bp_dl_finish(l, j, BP_END_DELIVERED);
    } else {
        bp_dl_save_progress(l, j);
    }
}

/* A failure worth another try: later, with backoff, or a dead letter once
 * the attempts are used up. */
static void answer_retry(loop *l, tenant *t, job *j, const bp_response *resp, double now)
{
    bp_dl_count(&t->st->retries);
    if (++j->ev.failures >= t->max_attempts) {
        char n[16];
        snprintf(n, sizeof n, "%d", j->ev.failures);
        bp_dl_set_reason(j, "dead letter after %s failed attempts: %s", n, j->why);
        bp_dl_finish(l, j, BP_END_DEAD);
        if (!t->paused) bp_dl_report_health_at(t, BP_HEALTH_BACKING_OFF, j->why, 0, 0, resp);   /* no next attempt for it */
        return;
    }
    j->ev.next_at = (int64_t)(now + bp_dl_backoff_ms(l, j->ev.failures, resp->retry_after_s));
    if (!t->paused) bp_dl_report_health_at(t, BP_HEALTH_BACKING_OFF, j->why, j->ev.next_at, 0, resp);
    /* Live Events shows it waiting, with the answer that made it wait */
    bp_dl_set_reason(j, "retrying: %s%s", j->why, "");
    bp_dl_write_line(l, j, BP_END_RETRYING);
    t->sink->outcome(t->ctx, &j->ev, j->line.data, j->line.len, BP_END_RETRYING, j->out.reason.data);
    bp_dl_save_progress(l, j);
}

/* The credentials were refused: pause the integration and hold the event. */
static void answer_auth(loop *l, tenant *t, job *j, const bp_response *resp, double now)
{
    if (j->generation != t->generation) {
        /* sent with credentials that have been replaced since: no
         * verdict on the new ones, send again with them */
        j->ev.next_at = (int64_t)now;
        bp_dl_save_progress(l, j);
        return;
    }
    if (!t->paused) bp_dl_pause_tenant(l, t, j->why, resp);
    bp_dl_hold(l, j);
}

void bp_dl_on_answer(void *ctx, void *user, const bp_response *resp)
{
    loop *l = ctx;
    if (*(const enum sent_by *)user == SENT_BY_BATCH) { bp_dl_batch_answer(l, user, resp); return; }
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
    bp_dl_obey_vendor_pace(a, resp);
    if (resp->status == 429) bp_dl_count(&t->st->rate_limited);
    if (t->sink->answer) t->sink->answer(t->ctx, resp->status, resp->duration_ms);

    enum bp_class cls = bp_classify(t->bp->bp, req, resp, j->why, sizeof j->why);
    if (req->step && cls == BP_PERMANENT && step_accepts(req, resp->status)) cls = BP_OK;
    if (req->step && cls != BP_OK && cls != BP_RETRY && req->cache_key)
        bp_cache_release(l->cache, a->key, req->cache_key, (uint64_t)j->ev.id);
    /* the vendor took the request (or refused this one event): the
     * integration delivers; a paused one waits for new credentials */
    if ((cls == BP_OK || cls == BP_PERMANENT) && !t->paused) bp_dl_report_health(t, BP_HEALTH_DELIVERING, "", 0);
    if (req->step && cls == BP_OK) {
        step_answered(l, j, req, resp);
        if (slot) l->lease->sending(l->lease->ctx, slot, -1);
        return;
    }
    if (req->step) name_step(j, req);
    switch (cls) {
    case BP_OK: answer_ok(l, t, j, req, now); break;
    case BP_RETRY: answer_retry(l, t, j, resp, now); break;
    case BP_PERMANENT:
        bp_dl_set_reason(j, "dead letter: %s%s", j->why, "");
        bp_dl_finish(l, j, BP_END_DEAD);
        break;
    case BP_AUTH: answer_auth(l, t, j, resp, now); break;
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
    /* batches first: the events they wait for are not sent alone */
    double wait = a->batches || l->o->batch ? bp_dl_batch_dispatch(l, a, now, mono) : 1000;
    int sent = 0;
    job *j = a->jobs;
    while (j) {
        job *next = j->next;   /* bp_dl_finish() unlinks j */
        tenant *t = j->t;
        if (j->inflight || j->batch || j->reserved || t->removing) { j = next; continue; }
        if (bp_dl_lease_lost(l, j)) { bp_dl_abandon(l, j); j = next; continue; }
        if (t->paused) { bp_dl_hold(l, j); j = next; continue; }
        if (j->ev.next_at > now) { if (j->ev.next_at - now < wait) wait = j->ev.next_at - now; j = next; continue; }
        if (j->remap) {
            /* a step waited for another event's answer: run the mapping
             * again (a backlog's many runs take a while: what was sent
             * leaves first, in the pace slot it took) */
            if (sent) { bp_transport_flush(l->tr); sent = 0; }
            bp_dl_map_job(l, j);
            if (j->final) { j = next; continue; }
            if (j->remap) { if (j->ev.next_at - now < wait) wait = j->ev.next_at - now; j = next; continue; }
            /* ready now: the next pass may take it in a batch */
            if (l->o->batch) { wait = 0; j = next; continue; }
        }
        /* skip requests whose once-key succeeded recently (contact already synced) */
        int64_t since = (int64_t)(now - (double)l->o->once_ttl_s * 1000.0);
        while ((size_t)j->ev.done_requests < j->out.nrequests) {
            const char *once = j->out.requests[j->ev.done_requests].once;
            if (!once || !(bp_dl_mark_pending(l, t, once) || bp_store_once_seen(l->store, t->id, once, since))) break;
            j->ev.done_requests++;
        }
        if ((size_t)j->ev.done_requests >= j->out.nrequests) {
            bp_dl_set_reason(j, "delivered%s%s", "", "");
            bp_dl_finish(l, j, BP_END_DELIVERED);
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
            bp_dl_set_reason(j, "error: %s%s", j->why, "");
            bp_dl_finish(l, j, BP_END_ERROR);
            j = next;
            continue;
        }
        if (j->first_ms <= 0) j->first_ms = now;
        if (j->ev.ksrc && l->lease) l->lease->sending(l->lease->ctx, j->ev.ksrc, 1);
        j->inflight = 1;
        j->went_alone = 1;
        j->generation = t->generation;
        j->ev.attempts++;
        t->inflight++;
        a->inflight++;
        bp_dl_count(&t->st->requests);
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
double bp_dl_dispatch(loop *l)
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
