/*
 * classify.c — what a vendor's answer means for an event (docs/delivery.md, What an answer means).
 *
 * First the blueprint's own rules (blueprint.yaml `responses:`, tried in
 * order on every answer that has an HTTP status; the first that matches
 * decides), then plain HTTP semantics, the same for every vendor:
 *
 *   transfer error, timeout, 408, 429, 5xx        retry (backoff, Retry-After)
 *   401, 403                                       auth failure: pause, hold
 *   other 4xx, 3xx                                 permanent: dead-letter
 *   2xx                                            delivered
 *
 * Vendor quirks live in the blueprint: ActiveCampaign's Event Tracking
 * answers HTTP 200 {"success":0} when it refuses an event, and a wrong API
 * key or URL can answer 200 with an HTML login page.  The rules are data
 * evaluated here, never Lua: this runs in the delivery loop for every
 * answer, so it must be cheap and cannot block.  A body is parsed as JSON
 * only when a rule asks about its fields, and only when the keys it names
 * appear in the text.
 */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int looks_like_json(const bp_response *resp)
{
    const char *b = resp->body.data ? resp->body.data : "";
    while (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t') b++;
    if (strcasestr(resp->content_type, "html")) return 0;
    return *b == '{' || *b == '[' || *b == '\0';
}

/* ---- the answer's JSON, parsed at most once per answer ------------------------------- */

typedef struct answer {
    const bp_response *resp;
    bp_doc doc;
    int parsed;   /* 0 not tried, 1 parsed, -1 not JSON */
} answer;

static const bp_doc *answer_json(answer *a)
{
    if (!a->parsed) {
        bp_error err;
        bp_doc_init(&a->doc);
        const bp_buf *b = &a->resp->body;
        a->parsed = b->len && bp_json_parse(&a->doc, b->data, b->len, NULL, &err) == 0 ? 1 : -1;
    }
    return a->parsed > 0 ? &a->doc : NULL;
}

static int is_index(const char *s, size_t n)
{
    if (!n) return 0;
    for (size_t i = 0; i < n; i++) if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* The child of a container named by one path part (an object key or an
 * array index), or BP_NONE. */
static uint32_t child(const bp_doc *d, uint32_t node, const char *part, size_t n)
{
    if (d->nodes[node].type == BP_JOBJECT) return bp_jget_n(d, node, part, n);
    if (d->nodes[node].type != BP_JARRAY || !is_index(part, n) || n > 9) return BP_NONE;
    /* 1-based, as ctx.get counts: errors.1.code is the first error's code */
    unsigned long idx = strtoul(part, NULL, 10);
    if (idx < 1 || idx > d->nodes[node].len) return BP_NONE;
    uint32_t c = node + 1;
    while (--idx) c = d->nodes[c].next;
    return c;
}

static int value_matches(const bp_doc *d, uint32_t node, const bp_json_test *t)
{
    uint8_t type = d->nodes[node].type;
    for (size_t i = 0; i < t->nvalues; i++) {
        const struct bp_json_value *v = &t->values[i];
        if (v->text) {
            /* a string or number in the rule matches either in the answer with the same text */
            if ((type == BP_JSTRING || type == BP_JNUMBER) && !strcmp(bp_jtext(d, node), v->text)) return 1;
        } else if (type == v->type) {
            return 1;
        }
    }
    return 0;
}

/* Does some node at `path` below `node` hold one of the test's values?  A
 * part "*" tries every element of an array (or value of an object). */
static int path_matches(const bp_doc *d, uint32_t node, const char *path, const bp_json_test *t)
{
    if (!*path) return value_matches(d, node, t);
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    const char *rest = dot ? dot + 1 : path + n;
    uint8_t type = d->nodes[node].type;
    if (n == 1 && path[0] == '*') {
        if (type != BP_JARRAY && type != BP_JOBJECT) return 0;
        uint32_t c = node + 1;
        for (uint32_t k = 0; k < d->nodes[node].len; k++) {
            if (type == BP_JOBJECT) c++;   /* the key, then its value */
            if (path_matches(d, c, rest, t)) return 1;
            c = d->nodes[c].next;
        }
        return 0;
    }
    uint32_t c = child(d, node, path, n);
    return c != BP_NONE && path_matches(d, c, rest, t);
}

/* The node at a path without "*" (templates), or BP_NONE. */
static uint32_t path_get(const bp_doc *d, const char *path, size_t len)
{
    uint32_t cur = 0;
    const char *end = path + len;
    while (cur != BP_NONE && path < end) {
        const char *dot = memchr(path, '.', (size_t)(end - path));
        size_t n = dot ? (size_t)(dot - path) : (size_t)(end - path);
        cur = child(d, cur, path, n);
        path += n + (dot ? 1 : 0);
    }
    return cur;
}

/* ---- rules ---------------------------------------------------------------------------- */

static int rule_matches(const bp_response_rule *r, const bp_request *req, answer *a)
{
    const bp_response *resp = a->resp;
    int s = resp->status;
    int any = 1;
    for (int i = 0; i < 10; i++) if (r->status[i]) any = 0;
    if (!any && (s < 0 || s >= 640 || !(r->status[s / 64] & (1ull << (s % 64))))) return 0;
    if (r->url_contains && !strstr(req->url, r->url_contains)) return 0;
    if (r->content_type && !strcasestr(resp->content_type, r->content_type)) return 0;
    if (r->body && looks_like_json(resp) != (r->body == 1)) return 0;
    if (r->njson) {
        /* most answers cannot match: skip the parse when a key is not even in the text */
        for (size_t i = 0; i < r->njson; i++) {
            const char *k = r->json[i].key;
            if (!k) continue;
            size_t kl = strlen(k);
            const char *p = resp->body.data, *end = p + resp->body.len;
            int found = 0;
            while (p && p < end && (p = memmem(p, (size_t)(end - p), k, kl))) {
                if (p > resp->body.data && p[-1] == '"' && p + kl < end && p[kl] == '"') { found = 1; break; }
                p++;
            }
            if (!found) return 0;
        }
        const bp_doc *d = answer_json(a);
        if (!d) return 0;
        for (size_t i = 0; i < r->njson; i++)
            if (!path_matches(d, 0, r->json[i].path, &r->json[i])) return 0;
    }
    return 1;
}

/* Append at most n bytes of s to why[*at..whylen), never splitting a UTF-8 character. */
static void put(char *why, size_t whylen, size_t *at, const char *s, size_t n)
{
    if (*at + 1 >= whylen) return;
    size_t room = whylen - 1 - *at;
    if (n > room) {
        n = room;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    }
    memcpy(why + *at, s, n);
    *at += n;
    why[*at] = '\0';
}

static void render_reason(const char *t, answer *a, char *why, size_t whylen)
{
    size_t at = 0;
    why[0] = '\0';
    while (*t) {
        const char *open = strchr(t, '{');
        if (!open) { put(why, whylen, &at, t, strlen(t)); break; }
        put(why, whylen, &at, t, (size_t)(open - t));
        const char *close = strchr(open, '}');   /* checked when the blueprint was loaded */
        if (!close) break;
        const char *name = open + 1;
        size_t n = (size_t)(close - name);
        if (n == 6 && !memcmp(name, "status", 6)) {
            char num[16];
            snprintf(num, sizeof num, "%d", a->resp->status);
            put(why, whylen, &at, num, strlen(num));
        } else if (n > 5 && !memcmp(name, "json.", 5)) {
            const char *bar = memchr(name, '|', n);
            size_t plen = (size_t)((bar ? bar : close) - (name + 5));
            const bp_doc *d = answer_json(a);
            uint32_t v = d ? path_get(d, name + 5, plen) : BP_NONE;
            const char *s = v != BP_NONE ? bp_jscalar(d, v) : NULL;
            if (v != BP_NONE && !s) {
                uint8_t ty = d->nodes[v].type;
                s = ty == BP_JTRUE ? "true" : ty == BP_JFALSE ? "false" : NULL;
            }
            if (s) put(why, whylen, &at, s, strlen(s));
            else if (bar) put(why, whylen, &at, bar + 1, (size_t)(close - bar - 1));
        }
        t = close + 1;
    }
}

enum bp_class bp_classify(const bp_blueprint *bp, const bp_request *req, const bp_response *resp,
                          char *why, size_t whylen)
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
    if (bp && bp->nresponses) {
        answer a = { resp, { 0 }, 0 };
        enum bp_class c = BP_OK;
        int matched = 0;
        for (size_t i = 0; i < bp->nresponses && !matched; i++) {
            const bp_response_rule *r = &bp->responses[i];
            if (rule_matches(r, req, &a)) {
                matched = 1;
                c = r->outcome;
                render_reason(r->reason, &a, why, whylen);
            }
        }
        if (a.parsed) bp_doc_free(&a.doc);
        if (matched) return c;
    }
    if (s >= 200 && s < 300) {
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
