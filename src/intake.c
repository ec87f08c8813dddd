/*
 * intake.c — judging untrusted bodies outside HTTP: the events of an intake
 * body (one JSON object, an array or NDJSON; at most 500, each a JSON
 * object with a known type and its message id), and an admin or editor
 * call's body (one JSON object within limits).
 *
 * It knows neither libmicrohttpd nor the server: the HTTP intake
 * (events_api.c) and the cluster's delivery topic (cluster.c) judge the
 * same events with the same rules, and the fuzzers call it directly.
 */
#include "service.h"

#include <stdio.h>

#define MAX_INTAKE_EVENTS 500

/* An admin call's body: one JSON object within the admin limits. */
int bp_admin_body(const char *body, size_t len, bp_doc *d, bp_error *err)
{
    bp_json_limits lim = { BP_MAX_ADMIN_BODY, 64 };
    return bp_json_body(body, len, &lim, d, err);
}

int bp_json_body(const char *body, size_t len, const bp_json_limits *lim, bp_doc *d, bp_error *err)
{
    if (bp_json_parse(d, body ? body : "", len, lim, err) < 0) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        bp_error_set(err, "malformed JSON body: %s", why);
        return -1;
    }
    if (d->nodes[0].type != BP_JOBJECT) { bp_error_set(err, "the body must be a JSON object"); return -1; }
    return 0;
}

/* Each event of an intake body, judged: `why` is NULL for an event that
 * can be stored (a JSON object with a known type), else why it is
 * rejected.  fn may stop the walk by returning -1.  Returns the count. */
long bp_intake_each(const char *body, size_t len, bp_intake_fn fn, void *ctx)
{
    bp_reader *rd = bp_reader_new_mem(body ? body : "", len, BP_DEFAULT_MAX_EVENT_BYTES);
    bp_doc d;
    bp_doc_init(&d);
    const char *ev;
    size_t evlen;
    bp_error err;
    long index = 0;
    enum bp_read_status rs;
    while ((rs = bp_reader_next(rd, &ev, &evlen, &err)) != BP_READ_END) {
        const char *why = NULL, *mid = NULL;
        char msg[sizeof err.msg];
        if (index >= MAX_INTAKE_EVENTS) { why = "more than 500 events in one request"; }
        else if (rs == BP_READ_BAD) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (bp_json_parse(&d, ev, evlen, NULL, &err) < 0) { snprintf(msg, sizeof msg, "%s", err.msg); why = msg; }
        else if (d.nodes[0].type != BP_JOBJECT) why = "an event must be a JSON object";
        else {
            const char *type = bp_jscalar(&d, bp_jget(&d, 0, "type"));
            if (!bp_event_type_known(type)) why = "\"type\" must be page, track, identify, group or screen";
            mid = bp_event_message_id(&d);
        }
        if (fn(ctx, index, ev, evlen, why ? NULL : mid, why) < 0) break;
        index++;
    }
    bp_reader_free(rd);
    bp_doc_free(&d);
    return index;
}
