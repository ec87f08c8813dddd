/*
 * verify.c — what install and update can check without sending data.
 *
 * A blueprint's `verify:` mapping returns requests that only read (is the
 * key accepted, is a feature the events need switched on).  Each is sent
 * with a short timeout and its answer judged exactly as delivery judges it
 * (the blueprint's responses: rules, then plain HTTP: bp_classify), so the
 * operator reads "the key was refused" or "Event Tracking is switched off"
 * in the answer to the install instead of in the first dead letters.  An
 * unreachable vendor is a check that says so, never a refused install: the
 * events wait and retry as usual.  Steps (ctx.send) of the verify mapping
 * are sent the same way, so it may read an answer.
 */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct sent {
    int done;
    int status, curl_code;
    char error[128], content_type[96];
    bp_buf body;
} sent;

typedef struct verifier {
    const bp_blueprint *bp;
    const bp_config *cfg;
    bp_transport *t;
    long timeout_ms;
    bp_pool *pool;                /* whose pace the requests take a slot on, or NULL */
    char account[600];
    double deadline_ms;           /* monotonic: the whole check run ends by then (the install's answer waits) */
} verifier;

static void on_done(void *ctx, void *user, const bp_response *resp)
{
    (void)ctx;
    sent *s = user;
    s->done = 1;
    s->status = resp->status;
    s->curl_code = resp->curl_code;
    memcpy(s->error, resp->error, sizeof s->error);
    memcpy(s->content_type, resp->content_type, sizeof s->content_type);
    bp_buf_add(&s->body, resp->body.data ? resp->body.data : "", resp->body.len);
}

/* Wait for a slot on the account's pace: the vendor's limit is shared with
 * the deliveries (ActiveCampaign: 5 requests/s per account).  -1 when none
 * came within the timeout. */
static int take_slot(verifier *v)
{
    double give_up = v->deadline_ms;
    for (;;) {
        double wait = v->pool ? bp_pool_take_slot(v->pool, v->account, v->bp->rate_limit_rps) : 0;
        if (wait <= 0) return 0;
        if (bp_monotonic_ms() + wait > give_up) return -1;
        struct timespec ts = { (time_t)(wait / 1000), (long)((wait - (double)(long)(wait / 1000) * 1000) * 1e6) };
        nanosleep(&ts, NULL);
    }
}

/* Send r and wait for its answer (the transport's own timeout ends it). */
static void send_one(verifier *v, const bp_request *r, sent *s)
{
    memset(s, 0, sizeof *s);
    bp_buf_init(&s->body);
    if (take_slot(v) < 0) {
        s->done = 1;
        s->curl_code = -1;
        snprintf(s->error, sizeof s->error, "not sent: the account's request pace stayed taken by deliveries "
                 "for %ld ms", v->timeout_ms);
        return;
    }
    if (bp_transport_send(v->t, r, v->cfg, s) < 0) {
        s->done = 1;
        s->curl_code = -1;
        snprintf(s->error, sizeof s->error, "the request could not be prepared");
        return;
    }
    /* the run's deadline, not one per request: pace, steps and requests
     * together end within timeout_ms (+1 s for the transport to say why) */
    double give_up = v->deadline_ms + 1000.0;
    while (!s->done && bp_monotonic_ms() < give_up) bp_transport_poll(v->t, 100, on_done, NULL);
    if (!s->done) {
        /* a new transport: the old one's transfer (which would answer into
         * s, gone by then) is cancelled with it */
        bp_transport_free(v->t);
        v->t = bp_transport_new(v->timeout_ms < 2000 ? v->timeout_ms : 2000, v->timeout_ms);
        s->done = 1;
        s->curl_code = -1;
        snprintf(s->error, sizeof s->error, "no answer within %ld ms", v->timeout_ms);
    }
}

/* The verify mapping's steps: answered by sending them now (status 0 when
 * the vendor could not be reached). */
static int answer_step(void *ud, const bp_request *step, int *status, bp_buf *body, bp_buf *from)
{
    verifier *v = ud;
    sent s;
    send_one(v, step, &s);
    *status = s.status;
    bp_buf_add(body, s.body.data ? s.body.data : "", s.body.len);
    bp_buf_adds(from, s.curl_code ? "sent: no answer" : "sent");
    bp_buf_free(&s.body);
    return 0;
}

static void write_check(bp_buf *out, const char *check, int ok, int status, const char *outcome, const char *message)
{
    if (out->len > 1) bp_buf_addc(out, ',');
    bp_buf_adds(out, "{\"check\":");
    bp_json_write_text(out, check, strlen(check));
    bp_buf_printf(out, ",\"ok\":%s,\"status\":%d,\"outcome\":\"%s\",\"message\":", ok ? "true" : "false", status, outcome);
    bp_json_write_text(out, message, strlen(message));
    bp_buf_addc(out, '}');
}

/* Send one of the mapping's requests and write what its answer means. */
static void judge(verifier *v, const bp_request *r, bp_buf *out)
{
    sent s;
    send_one(v, r, &s);
    bp_response resp;
    memset(&resp, 0, sizeof resp);
    resp.status = s.status;
    resp.curl_code = s.curl_code;
    resp.ratelimit_remaining = -1;
    memcpy(resp.error, s.error, sizeof resp.error);
    memcpy(resp.content_type, s.content_type, sizeof resp.content_type);
    resp.body = s.body;
    char why[512], message[1024], check[600];
    snprintf(check, sizeof check, "%s %s", r->method, r->url);   /* URLs carry no secrets: those are placeholders */
    enum bp_class cls = bp_classify(v->bp, r, &resp, why, sizeof why);
    if (s.curl_code || !s.status) {
        snprintf(message, sizeof message, "unreachable: %s; the integration is installed and its events wait "
                 "and retry until the vendor answers", why);
        write_check(out, check, 0, s.status, "unreachable", message);
    } else if (cls == BP_OK) {
        write_check(out, check, 1, s.status, "ok", "accepted");
    } else if (cls == BP_AUTH) {
        snprintf(message, sizeof message, "the credentials were refused: %s; %s", why,
                 v->bp->auth_help ? v->bp->auth_help : "check the API key and API URL");
        write_check(out, check, 0, s.status, "auth_failure", message);
    } else if (cls == BP_RETRY) {
        snprintf(message, sizeof message, "the vendor is not answering normally (%s); delivery retries such answers", why);
        write_check(out, check, 0, s.status, "retry", message);
    } else {
        write_check(out, check, 0, s.status, "refused", why);
    }
    bp_buf_free(&s.body);
}

/* bp_verify, pacing the requests on pool's pace for account (pool NULL:
 * unpaced). */
static int verify_paced(const bp_blueprint *bp, const bp_config *cfg, long timeout_ms, bp_pool *pool,
                        const char *account, bp_buf *out)
{
    if (!bp->has_verify) return -1;
    bp_error err;
    bp_buf_adds(out, "[");
    bp_engine *e = bp_engine_new(bp, cfg, NULL, &err);
    if (!e) {
        write_check(out, bp->verify.mapping, 0, 0, "error", err.msg);
        bp_buf_addc(out, ']');
        return 0;
    }
    verifier v = { bp, cfg, bp_transport_new(timeout_ms < 2000 ? timeout_ms : 2000, timeout_ms), timeout_ms, pool, "",
                   bp_monotonic_ms() + (double)timeout_ms };
    snprintf(v.account, sizeof v.account, "%s", account ? account : "");
    bp_engine_set_answerer(e, answer_step, &v);
    bp_outcome o;
    bp_outcome_init(&o);
    enum bp_verdict verdict = bp_engine_verify(e, &o);
    if (verdict == BP_ERROR) {
        write_check(out, bp->verify.mapping, 0, 0, "error", o.reason.data ? o.reason.data : "the mapping failed");
    } else if (verdict == BP_DELIVER) {
        for (size_t i = 0; i < o.nrequests; i++)
            if (!o.requests[i].step) judge(&v, &o.requests[i], out);
    }
    bp_buf_addc(out, ']');
    bp_outcome_free(&o);
    bp_engine_free(e);
    bp_transport_free(v.t);
    return 0;
}

int bp_verify(const bp_blueprint *bp, const bp_config *cfg, long timeout_ms, bp_buf *out)
{
    return verify_paced(bp, cfg, timeout_ms, NULL, NULL, out);
}

int bp_integration_verify(bp_integration *it, long timeout_ms, bp_buf *out)
{
    char *json;
    bp_shared_bp *sbp = bp_integration_current(it, &json);
    int rc = -1;
    bp_error err;
    bp_config *cfg = sbp && json ? bp_config_load_text(sbp->bp, json, strlen(json), "stored config", &err) : NULL;
    if (cfg) {
        char account[600];
        bp_account_key(sbp->bp, cfg, it->id, account, sizeof account);
        rc = verify_paced(sbp->bp, cfg, timeout_ms, bp_registry_pool(it->registry), account, out);
    }
    bp_config_free(cfg);
    if (json) { memset(json, 0, strlen(json)); free(json); }   /* it held the secrets */
    if (sbp) bp_shared_bp_drop(sbp);
    if (rc == 0) {
        /* the operator's log says it too, not only the API's answer */
        const char *fail = strstr(out->data, "\"ok\":false");
        if (fail) {
            bp_buf f;
            bp_buf_init(&f);
            bp_log_field(&f, "integration_id", it->id);
            bp_buf_adds(&f, ",\"checks\":");   /* a JSON array, as it is */
            bp_buf_add(&f, out->data, out->len);
            bp_log("warn", "integration check failed", f.data);
            bp_buf_free(&f);
        }
    }
    return rc;
}
