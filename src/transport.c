/*
 * transport.c — HTTP for the delivery core, on the libcurl multi interface.
 *
 * One multi handle per delivery run: connections are reused across requests
 * and HTTP/2 is negotiated where the vendor offers it.  Requests are started
 * with bp_transport_send and finish through bp_transport_poll; the caller
 * decides pacing and concurrency.  This is the only place secrets are put
 * into requests (bp_request_render_secret); nothing here logs them.
 */
#include "service.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_CAPTURE (64 * 1024)

#define POOL 64

struct bp_transport {
    CURLM *multi;
    long connect_timeout_ms, timeout_ms;
    int running;
    CURL *pool[POOL];   /* finished easy handles, kept configured for reuse */
    int npool;
};

typedef struct pending {
    CURL *easy;
    struct curl_slist *headers;
    bp_buf body;            /* the rendered body (with secrets): freed as soon as done */
    bp_response resp;
    void *user;
    double started_ms;
} pending;

/* curl_global_init is not thread-safe: delivery loops start at once. */
static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

bp_transport *bp_transport_new(long connect_timeout_ms, long timeout_ms)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);
    bp_transport *t = bp_calloc(1, sizeof *t);
    t->multi = curl_multi_init();
    t->connect_timeout_ms = connect_timeout_ms;
    t->timeout_ms = timeout_ms;
    curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 32L);
    return t;
}

void bp_transport_free(bp_transport *t)
{
    if (!t) return;
    for (int i = 0; i < t->npool; i++) curl_easy_cleanup(t->pool[i]);
    curl_multi_cleanup(t->multi);
    free(t);
}

int bp_transport_active(const bp_transport *t) { return t->running; }

/* Start what was just added (the requests leave now, not at the next poll). */
void bp_transport_flush(bp_transport *t)
{
    int still = 0;
    curl_multi_perform(t->multi, &still);
}

/* Any thread: make a bp_transport_poll waiting on this transport return. */
void bp_transport_wakeup(bp_transport *t) { curl_multi_wakeup(t->multi); }

/* Idle connections kept open: one per vendor account at least, so paced
 * requests to many accounts reuse their connections instead of leaving a
 * socket in TIME_WAIT per request. */
void bp_transport_keep_connections(bp_transport *t, long n)
{
    curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, n);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    pending *pd = ud;
    size_t len = size * n;
    if (pd->resp.body.len < MAX_CAPTURE) {
        size_t room = MAX_CAPTURE - pd->resp.body.len;
        bp_buf_add(&pd->resp.body, p, len < room ? len : room);
    }
    return len;
}

static void header_value(const char *line, size_t len, char *out, size_t outlen)
{
    const char *colon = memchr(line, ':', len);
    if (!colon) return;
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    size_t n = (size_t)(end - v) < outlen - 1 ? (size_t)(end - v) : outlen - 1;
    memcpy(out, v, n);
    out[n] = '\0';
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    pending *pd = ud;
    size_t len = size * n;
    char v[128] = "";
    if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        header_value(p, len, v, sizeof v);
        pd->resp.retry_after_s = atof(v);   /* seconds; an HTTP date is treated as 0 */
    } else if (len > 20 && !strncasecmp(p, "RateLimit-Remaining:", 20)) {
        header_value(p, len, v, sizeof v);
        pd->resp.ratelimit_remaining = atoi(v);
    } else if (len > 16 && !strncasecmp(p, "RateLimit-Limit:", 16)) {
        header_value(p, len, v, sizeof v);
        pd->resp.ratelimit_limit = atoi(v);
    } else if (len > 13 && !strncasecmp(p, "Content-Type:", 13)) {
        header_value(p, len, pd->resp.content_type, sizeof pd->resp.content_type);
    }
    return len;
}

/* A handle with the options every request shares; kept (not reset) in the
 * pool between requests. */
static CURL *new_handle(const bp_transport *t)
{
    CURL *e = curl_easy_init();
    if (!e) return NULL;
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, t->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, t->timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "signal-blueprints/0.1");
    /* No Accept-Encoding: vendor answers are small JSON read for a status
     * or a message, and setting up decoders cost ~9% of the transport's
     * instructions per request (scripts/bench/bench_transport.c). */
    return e;
}

int bp_transport_send(bp_transport *t, const bp_request *r, const bp_config *cfg, void *user)
{
    pending *pd = bp_calloc(1, sizeof *pd);
    bp_buf_init(&pd->body);
    bp_buf_init(&pd->resp.body);
    pd->resp.ratelimit_remaining = -1;
    pd->user = user;
    pd->easy = t->npool ? t->pool[--t->npool] : new_handle(t);
    if (!pd->easy) { free(pd); return -1; }
    CURL *e = pd->easy;
    /* The body first: a ctx.hmac_sha256 header signs it as sent. */
    if (r->body_kind != BP_BODY_NONE) bp_request_render_secret(r, cfg, &pd->body);
    bp_buf line;
    bp_buf_init(&line);
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *v = r->headers[i].secret ? bp_config_get(cfg, r->headers[i].value) : r->headers[i].value;
        char hex[65] = "";
        if (r->headers[i].secret == BP_HEADER_HMAC) {
            unsigned char mac[32];
            bp_hmac_sha256(v ? v : "", v ? strlen(v) : 0, pd->body.data ? pd->body.data : "", pd->body.len, mac);
            for (int k = 0; k < 32; k++) snprintf(hex + 2 * k, 3, "%02x", mac[k]);
            v = hex;
        }
        bp_buf_reset(&line);
        bp_buf_adds(&line, r->headers[i].name);
        bp_buf_add(&line, ": ", 2);
        bp_buf_adds(&line, v ? v : "");
        pd->headers = curl_slist_append(pd->headers, line.data);
    }
    if (line.data) memset(line.data, 0, line.cap);   /* it held a secret header */
    bp_buf_free(&line);
    pd->headers = curl_slist_append(pd->headers, "Expect:");  /* no 100-continue round trip */
    /* What differs per request; new_handle set the rest once per handle.
     * Every request sets its method and body (or none), so nothing of the
     * previous request on this handle carries over. */
    if (r->body_kind == BP_BODY_NONE) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);          /* no body */
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, pd->body.data ? pd->body.data : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)pd->body.len);
    }
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcmp(r->method, "GET") ? r->method : NULL);
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, pd->headers);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, pd);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, pd);
    curl_easy_setopt(e, CURLOPT_PRIVATE, pd);
    pd->started_ms = bp_monotonic_ms();
    if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(pd->headers);
        bp_buf_free(&pd->body);
        bp_buf_free(&pd->resp.body);
        free(pd);
        return -1;
    }
    t->running++;
    return 0;
}

/* Hand every finished transfer to cb; returns how many. */
static int drain(bp_transport *t, bp_transport_done cb, void *ctx);

int bp_transport_poll(bp_transport *t, int wait_ms, bp_transport_done cb, void *ctx)
{
    int still = 0;
    curl_multi_perform(t->multi, &still);
    /* On loopback an answer can arrive within that perform: report it now,
     * rather than after waiting wait_ms for activity that already happened. */
    int done = drain(t, cb, ctx);
    if (done || wait_ms <= 0) return done;
    /* also when nothing is in flight: then it is the loop's idle wait, cut
     * short by bp_transport_wakeup */
    curl_multi_poll(t->multi, NULL, 0, wait_ms, NULL);
    curl_multi_perform(t->multi, &still);
    return drain(t, cb, ctx);
}

static int drain(bp_transport *t, bp_transport_done cb, void *ctx)
{
    int done = 0;
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(t->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        pending *pd;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&pd);
        long status = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        pd->resp.status = (int)status;
        pd->resp.curl_code = (int)m->data.result;
        if (m->data.result != CURLE_OK)
            snprintf(pd->resp.error, sizeof pd->resp.error, "%s", curl_easy_strerror(m->data.result));
        pd->resp.duration_ms = bp_monotonic_ms() - pd->started_ms;
        bp_buf_add(&pd->resp.body, "", 0);
        curl_multi_remove_handle(t->multi, m->easy_handle);
        if (t->npool < POOL) t->pool[t->npool++] = m->easy_handle;   /* configured: reused as is */
        else curl_easy_cleanup(m->easy_handle);
        curl_slist_free_all(pd->headers);
        /* The rendered body holds secrets: wipe it before freeing. */
        if (pd->body.data) memset(pd->body.data, 0, pd->body.len);
        bp_buf_free(&pd->body);
        t->running--;
        cb(ctx, pd->user, &pd->resp);
        bp_buf_free(&pd->resp.body);
        free(pd);
        done++;
    }
    return done;
}
