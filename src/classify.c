/*
 * classify.c — what a vendor's answer means for an event (DESIGN.md §6–§7).
 *
 *   transfer error, timeout, 408, 429, 5xx        retry (backoff, Retry-After)
 *   401, 403, or a 2xx HTML page answering a call
 *   that carried a secret header (a login page)    auth failure: pause, hold
 *   2xx with {"success":0} (Event Tracking)        permanent: dead-letter
 *   other 4xx (422 duplicate, 404, …), 3xx         permanent: dead-letter
 *   other 2xx                                      delivered
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static int has_secret_header(const bp_request *r)
{
    for (size_t i = 0; i < r->nheaders; i++) if (r->headers[i].secret) return 1;
    return 0;
}

static int looks_like_json(const bp_response *resp)
{
    const char *b = resp->body.data ? resp->body.data : "";
    while (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t') b++;
    if (strcasestr(resp->content_type, "html")) return 0;
    return *b == '{' || *b == '[' || *b == '\0';
}

/* {"success":0,...} -> 1 and the message copied to why. */
static int success_zero(const bp_response *resp, char *why, size_t whylen)
{
    if (!resp->body.len || resp->body.data[0] != '{') return 0;
    /* most answers (contact/sync's) cannot say it: skip the parse */
    if (!memmem(resp->body.data, resp->body.len, "\"success\"", 9)) return 0;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    int zero = 0;
    if (bp_json_parse(&d, resp->body.data, resp->body.len, NULL, &err) == 0) {
        uint32_t s = bp_jget(&d, 0, "success");
        const char *v = bp_jscalar(&d, s);
        zero = (s != BP_NONE && d.nodes[s].type == BP_JFALSE) || (v && !strcmp(v, "0"));
        if (zero) {
            const char *m = bp_jscalar(&d, bp_jget(&d, 0, "message"));
            snprintf(why, whylen, "the vendor refused the event: %s", m ? m : "success:0");
        }
    }
    bp_doc_free(&d);
    return zero;
}

enum bp_class bp_classify(const bp_request *req, const bp_response *resp, char *why, size_t whylen)
{
    int s = resp->status;
    if (resp->curl_code != 0 || s == 0) {
        /* name the host: the usual cause is a wrong URL in the config */
        const char *h = strstr(req->url, "://");
        h = h ? h + 3 : req->url;
        int hostlen = (int)strcspn(h, "/?#");
        snprintf(why, whylen, "network error: %s (host %.*s); check the integration's api_url (and other URLs in its "
                 "config) and that the host is reachable", resp->error[0] ? resp->error : "no answer",
                 hostlen > 80 ? 80 : hostlen, h);
        return BP_RETRY;
    }
    if (s >= 200 && s < 300) {
        if (has_secret_header(req) && !looks_like_json(resp)) {
            snprintf(why, whylen, "HTTP %d with an HTML page instead of JSON (a login page: the API key "
                     "or API URL is wrong)", s);
            return BP_AUTH;
        }
        if (success_zero(resp, why, whylen)) return BP_PERMANENT;
        snprintf(why, whylen, "HTTP %d", s);
        return BP_OK;
    }
    if (s == 401 || s == 403) {
        snprintf(why, whylen, "HTTP %d: the vendor rejected the credentials", s);
        return BP_AUTH;
    }
    if (s == 408 || s == 429 || s >= 500) {
        snprintf(why, whylen, "HTTP %d%s", s, s == 429 ? " (rate limited)" : "");
        return BP_RETRY;
    }
    snprintf(why, whylen, "HTTP %d: permanent error", s);
    return BP_PERMANENT;
}
