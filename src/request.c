/*
 * request.c — outcomes and the vendor requests they carry: lifetime,
 * rendering (with secrets redacted, or substituted for sending) and the
 * dry-run line (docs/contracts.md, dry-run).
 */
#include "internal.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void bp_outcome_init(bp_outcome *o)
{
    memset(o, 0, sizeof *o);
    bp_buf_init(&o->reason);
    bp_buf_init(&o->journal);
}

/* An outcome's strings are carved from chunks that reset and free release
 * together: an event's twenty-odd small strings cost pointer bumps instead
 * of as many malloc/free pairs.  The first chunk is kept across resets. */
#define CHUNK_SIZE 2048

typedef struct bp_chunk {
    struct bp_chunk *next;
    size_t used, cap;
    char data[];
} bp_chunk;

size_t bp_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

char *bp_outcome_strdup(bp_outcome *o, const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    bp_chunk *c = o->strings;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > CHUNK_SIZE ? n : CHUNK_SIZE;
        bp_chunk *fresh = bp_malloc(sizeof *fresh + cap);
        fresh->used = 0;
        fresh->cap = cap;
        if (c && c->used == 0) { fresh->next = c->next; free(c); }   /* an unused first chunk too small */
        else fresh->next = c;
        o->strings = c = fresh;
    }
    char *p = c->data + c->used;
    memcpy(p, s, n);
    c->used += n;
    return p;
}

static void release_strings(bp_outcome *o, int keep_one)
{
    bp_chunk *c = o->strings;
    if (keep_one && c) {
        /* keep the oldest (first made) chunk: walk to the end of the list */
        bp_chunk *last = c, *prev = NULL;
        while (last->next) { prev = last; last = last->next; }
        if (prev) prev->next = NULL;
        while (c && c != last) { bp_chunk *next = c->next; free(c); c = next; }
        last->used = 0;
        last->next = NULL;
        o->strings = last;
        return;
    }
    while (c) { bp_chunk *next = c->next; free(c); c = next; }
    o->strings = NULL;
}

static void free_request(bp_request *r)
{
    free(r->headers);
    bp_buf_free(&r->body);
    for (size_t i = 0; i < r->nslots; i++) free(r->slots[i].name);
    free(r->slots);
}

void bp_outcome_truncate_requests(bp_outcome *o, size_t n)
{
    for (size_t i = n; i < o->nrequests; i++) free_request(&o->requests[i]);
    if (n < o->nrequests) o->nrequests = n;
}

void bp_outcome_clear_requests(bp_outcome *o) { bp_outcome_truncate_requests(o, 0); }

void bp_outcome_reset(bp_outcome *o)
{
    bp_outcome_clear_requests(o);
    release_strings(o, 1);
    o->message_id = o->type = o->event = o->mapping = NULL;
    o->verdict = BP_ERROR;
    bp_buf_reset(&o->reason);
    o->nlogs = o->logs_bytes = o->logs_dropped = 0;   /* their strings went with the chunks */
    o->nanswered = 0;
    o->pending = o->wait_ms = 0;
    bp_buf_reset(&o->journal);
}

void bp_outcome_free(bp_outcome *o)
{
    bp_outcome_clear_requests(o);
    release_strings(o, 0);
    free(o->requests);
    free(o->logs);
    bp_buf_free(&o->reason);
    bp_buf_free(&o->journal);
    memset(o, 0, sizeof *o);
}

bp_request *bp_outcome_add_request(bp_outcome *o)
{
    if (o->nrequests == o->caprequests) {
        o->caprequests = o->caprequests ? o->caprequests * 2 : 4;
        o->requests = bp_realloc(o->requests, o->caprequests * sizeof *o->requests);
    }
    bp_request *r = &o->requests[o->nrequests++];
    memset(r, 0, sizeof *r);
    bp_buf_init(&r->body);
    return r;
}

/* Body with each secret slot filled by `fill`. */
static void render(const bp_request *r, bp_buf *out, const bp_config *c)
{
    size_t at = 0;
    for (size_t i = 0; i < r->nslots; i++) {
        const bp_secret_slot *s = &r->slots[i];
        bp_buf_add(out, r->body.data + at, s->offset - at);
        at = s->offset;
        const char *value = c ? bp_config_get(c, s->name) : NULL;
        if (!value) value = "[redacted]";
        if (r->body_kind == BP_BODY_JSON) bp_json_write_string(out, value, strlen(value));
        else if (r->body_kind == BP_BODY_FORM && c) bp_form_escape(out, value, strlen(value));
        else bp_buf_adds(out, value);
    }
    bp_buf_add(out, r->body.data + at, r->body.len - at);
}

void bp_request_render_redacted(const bp_request *r, bp_buf *out) { render(r, out, NULL); }

void bp_request_render_secret(const bp_request *r, const bp_config *c, bp_buf *out) { render(r, out, c); }

/* Reasons can quote event data cut to length: never let that produce
 * invalid UTF-8 in the output line. */
/* Outcome lines are JSON: text that is not valid UTF-8 (a vendor's answer,
 * say) is written with U+FFFD in place of the bad bytes. */
static void write_text(bp_buf *out, const char *s, size_t len) { bp_json_write_text(out, s, len); }

static void write_opt(bp_buf *out, const char *key, const char *v)
{
    bp_buf_add(out, ",\"", 2);
    bp_buf_adds(out, key);
    bp_buf_add(out, "\":", 2);
    if (v) write_text(out, v, strlen(v)); else bp_buf_add(out, "null", 4);
}

/* A step's answer: its status, where it came from, the body cut to
 * BP_ANSWER_SHOWN (not inside a UTF-8 sequence); null while awaited. */
static void write_answer(bp_buf *out, const bp_request *r)
{
    bp_buf_adds(out, ",\"step\":true,\"answer\":");
    if (!r->answer_status) { bp_buf_adds(out, "null"); return; }
    bp_buf_adds(out, "{\"status\":");
    bp_json_write_int(out, r->answer_status);
    write_opt(out, "from", r->answer_from);
    write_opt(out, "body", r->answer_body);
    bp_buf_addc(out, '}');
}

void bp_outcome_write_json(const bp_outcome *o, long index, bp_buf *out)
{
    static const char *const verdicts[] = { "deliver", "drop", "error" };
    bp_outcome_write_fields(o, index, verdicts[o->verdict], out);
    bp_buf_addc(out, '}');
}

void bp_outcome_write_fields(const bp_outcome *o, long index, const char *label, bp_buf *out)
{
    bp_buf_add(out, "{\"index\":", 9);
    if (index >= 0) bp_json_write_int(out, index); else bp_buf_add(out, "null", 4);
    write_opt(out, "message_id", o->message_id);
    write_opt(out, "type", o->type);
    write_opt(out, "event", o->event);
    bp_buf_add(out, ",\"outcome\":\"", 12);
    bp_buf_adds(out, label);
    bp_buf_addc(out, '"');
    write_opt(out, "reason", o->reason.data ? o->reason.data : "");
    bp_buf_add(out, ",\"requests\":[", 13);
    for (size_t i = 0; i < o->nrequests; i++) {
        const bp_request *r = &o->requests[i];
        if (i) bp_buf_addc(out, ',');
        bp_buf_add(out, "{\"method\":", 10);
        write_text(out, r->method, strlen(r->method));
        bp_buf_add(out, ",\"url\":", 7);
        write_text(out, r->url, strlen(r->url));
        if (r->once) write_opt(out, "once", r->once);
        if (r->marks) write_opt(out, "marks", r->marks);
        bp_buf_add(out, ",\"headers\":{", 12);
        for (size_t h = 0; h < r->nheaders; h++) {
            if (h) bp_buf_addc(out, ',');
            write_text(out, r->headers[h].name, strlen(r->headers[h].name));
            bp_buf_addc(out, ':');
            if (r->headers[h].secret == BP_HEADER_HMAC) {
                /* computed when sending (transport.c): say from what */
                bp_buf v;
                bp_buf_init(&v);
                bp_buf_printf(&v, "[hmac-sha256 of the body with secret '%s']", r->headers[h].value);
                write_text(out, v.data, v.len);
                bp_buf_free(&v);
                continue;
            }
            const char *v = r->headers[h].secret ? "[redacted]" : r->headers[h].value;
            write_text(out, v, strlen(v));
        }
        bp_buf_add(out, "},\"body\":", 9);
        if (r->body_kind == BP_BODY_NONE) {
            bp_buf_add(out, "null", 4);
        } else {
            bp_buf body;
            bp_buf_init(&body);
            bp_request_render_redacted(r, &body);
            write_text(out, body.data ? body.data : "", body.len);
            bp_buf_free(&body);
        }
        if (r->step) write_answer(out, r);
        bp_buf_addc(out, '}');
    }
    bp_buf_addc(out, ']');
    /* only when the mapping logged: lines without logs stay as they were */
    if (!o->nlogs && !o->logs_dropped) return;
    bp_buf_adds(out, ",\"logs\":[");
    for (size_t i = 0; i < o->nlogs; i++) {
        if (i) bp_buf_addc(out, ',');
        bp_buf_adds(out, "{\"at\":");
        write_text(out, o->logs[i].at, strlen(o->logs[i].at));
        bp_buf_adds(out, ",\"msg\":");
        write_text(out, o->logs[i].msg, strlen(o->logs[i].msg));
        bp_buf_addc(out, '}');
    }
    if (o->logs_dropped)
        bp_buf_printf(out, "%s{\"at\":null,\"msg\":\"(%zu more lines dropped)\"}", o->nlogs ? "," : "", o->logs_dropped);
    bp_buf_addc(out, ']');
}

/* ---- where a request may go ------------------------------------------------------------ */

typedef struct origin {
    int https;
    char host[256];
    unsigned port;
} origin;

/* scheme, host (lower case) and port of an absolute http(s) URL.  NULL when
 * good, else what is wrong.  A user name ("https://api.host@evil/") or a
 * backslash in the authority is refused rather than interpreted: HTTP
 * clients disagree about them, and the host checked must be the host
 * connected to. */
static const char *parse_origin(const char *url, origin *o)
{
    const char *rest;
    if (!strncasecmp(url, "https://", 8)) { o->https = 1; rest = url + 8; }
    else if (!strncasecmp(url, "http://", 7)) { o->https = 0; rest = url + 7; }
    else return "not an absolute http(s) URL";
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen) || memchr(rest, '\\', alen) || memchr(rest, '%', alen))
        return "a user name, '\\' or '%' in the host part";
    const char *port = NULL;
    size_t hlen;
    if (rest[0] == '[') {   /* IPv6 literal */
        const char *close = memchr(rest, ']', alen);
        if (!close) return "an unclosed '[' in the host";
        hlen = (size_t)(close - rest) + 1;
        if (hlen < alen) { if (rest[hlen] != ':') return "a bad port"; port = rest + hlen + 1; }
    } else {
        const char *colon = memchr(rest, ':', alen);
        hlen = colon ? (size_t)(colon - rest) : alen;
        if (colon) port = colon + 1;
    }
    if (!hlen || hlen >= sizeof o->host) return "no host (or one too long)";
    for (size_t i = 0; i < hlen; i++) o->host[i] = (char)(rest[i] >= 'A' && rest[i] <= 'Z' ? rest[i] + 32 : rest[i]);
    o->host[hlen] = '\0';
    while (hlen > 1 && o->host[hlen - 1] == '.') o->host[--hlen] = '\0';   /* "host." is host */
    o->port = o->https ? 443 : 80;
    if (port) {
        size_t plen = (size_t)(rest + alen - port);
        if (!plen || plen > 5 || strspn(port, "0123456789") < plen) return "a bad port";
        o->port = (unsigned)strtoul(port, NULL, 10);
        if (!o->port || o->port > 65535) return "a bad port";
    }
    return NULL;
}

int bp_url_origin(const char *url, char *out, size_t n)
{
    origin o;
    if (parse_origin(url, &o)) return -1;
    int w = snprintf(out, n, "%s://%s:%u", o.https ? "https" : "http", o.host, o.port);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

static int same_origin(const origin *a, const origin *b)
{
    return a->https == b->https && a->port == b->port && !strcmp(a->host, b->host);
}

int bp_request_check_destination(const bp_blueprint *bp, const bp_config *cfg, const char *url, bp_error *err)
{
    origin to, allowed;
    const char *bad = parse_origin(url, &to);
    if (bad) { bp_error_set(err, "url '%.200s': %s", url, bad); return -1; }
    bp_buf list;
    bp_buf_init(&list);
    for (size_t i = 0; i < bp->ndest_fields; i++) {
        const char *v = cfg ? bp_config_get(cfg, bp->dest_fields[i]) : NULL;
        if (!v || !*v || parse_origin(v, &allowed)) continue;
        if (same_origin(&to, &allowed)) { bp_buf_free(&list); return 0; }
        bp_buf_printf(&list, "%s%s (%s:%u)", list.len ? ", " : "", bp->dest_fields[i], allowed.host, allowed.port);
    }
    for (size_t i = 0; i < bp->ndest_hosts; i++) {
        if (to.https && to.port == 443 && !strcmp(to.host, bp->dest_hosts[i])) { bp_buf_free(&list); return 0; }
        bp_buf_printf(&list, "%s%s", list.len ? ", " : "", bp->dest_hosts[i]);
    }
    bp_error_set(err, "the host '%s' (port %u) is not a destination of this blueprint: it may send to %s "
                 "(blueprint.yaml's destinations)", to.host, to.port, list.len ? list.data : "nowhere");
    bp_buf_free(&list);
    return -1;
}
