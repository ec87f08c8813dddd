/*
 * emulator.c — a local ActiveCampaign for tests, on 127.0.0.1 only.
 *
 * Faithful to what the runtime relies on (docs/activecampaign.md): contact sync and
 * create (duplicate / email_invalid errors), Event Tracking (form only,
 * success:0 for a JSON body or a wrong key), tracking logs, Api-Token on
 * every /api/3 call (403 when wrong), and a rate limit per account with
 * 429 + Retry-After + RateLimit-* headers.  Tests steer it through
 * /_emulator/ endpoints: inject faults, inspect every request received.
 *
 * Accounts: ActiveCampaign limits each account (all its keys together) to
 * 5 requests/s.  With --accounts N the emulator has N accounts, each with
 * its own limit: account 0 has the --api-token, --actid and --event-key;
 * account k has "TOKEN-k", actid ACTID+k and "KEY-k".  /api/3 calls are
 * counted against the account of their Api-Token, Event Tracking against
 * the account of its actid.  Each account's base URL can be any
 * http://NAME.localhost:PORT (curl resolves *.localhost to loopback).
 *
 * A generic webhook receiver for other blueprints (blueprints/webhook):
 * POST /webhook… answers 200 {"ok":true} and is logged like every request,
 * with the signature header (--webhook-header, default X-Signature-256).
 * With --webhook-secret S it checks that header against the lower-case hex
 * HMAC-SHA256 of the exact body bytes keyed with S: 401 when it differs or
 * is missing.
 *
 *   ac-emulator [--webhook-secret S] [--webhook-header H]
 *   ac-emulator [--port N] [--api-token T] [--actid N] [--event-key K] [--rate-limit RPS] [--accounts N]
 *               [--import-delay-ms MS] [--imports-per-minute N]
 *
 * Prints "listening on http://127.0.0.1:PORT" once ready (port 0 = any).
 *
 * The contact resources a blueprint builds on (lists, tags, contactTags,
 * custom fields and values: crm.c) and Deep Data (connections, ecomCustomers,
 * ecomOrders: ecom.c) and the Bulk Contact Importer (bulk.c: asynchronous
 * after --import-delay-ms, default 2000; --imports-per-minute, default 100)
 * answer what ActiveCampaign documents, per account;
 * GET /_emulator/state?account=N shows them.
 */
#include "emulator.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (1024 * 1024)
#define MAX_LOG 200000

typedef struct logged {
    char *method, *path, *token, *ctype, *body;
    char *signature;       /* the webhook signature header, "" when absent */
    char *batch_id;        /* the batchId query argument (import/info), "" when absent */
    int status, account;   /* -1: no known account */
    double at_ms;
} logged;

typedef struct account {
    char *api_token, *actid, *event_key;
    int tracking_off;              /* Event Tracking switched off (PUT /api/3/eventTracking) */
    double *window; size_t wpos;   /* timestamps of the last `rate_limit` admitted requests */
    long total, limited;
} account;

static struct {
    pthread_mutex_t mu;
    size_t *index; size_t index_cap;   /* open addressing: email -> contacts[i] + 1 */
    account *accounts; int naccounts;
    contact *contacts; size_t ncontacts, capcontacts;
    logged *log; size_t nlog, caplog;
    int tracking_off_refuses;   /* what /event answers while tracking is off: see track_event */
    bp_buf event_names;  /* JSON strings, comma separated */
    long nevent_names;
    int rate_limit;    /* per account, requests per second; 0 = none */
    int retry_after, burst_503;
    /* faults */
    int fail_next, fail_status, fail_html, fail_retry_after;
    char fail_path[256];   /* fail_next counts only requests whose path starts with it; "" = any */
    int login_html_next, reset_next, latency_ms;
    long total, limited;
    const char *webhook_secret, *webhook_header;   /* secret NULL: signatures not checked */
} E;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

char *xdup(const char *s) { return strdup(s ? s : ""); }

typedef struct reqctx { bp_buf body; } reqctx;

void json_begin(reply *r, int status)
{
    r->status = status;
    bp_buf_reset(&r->body);
    r->ctype = "application/json";
}

void json_reply(reply *r, int status, const char *json)
{
    json_begin(r, status);
    bp_buf_adds(&r->body, json);
}

static const char LOGIN_PAGE[] =
    "<!DOCTYPE html><html><head><title>Login - ActiveCampaign</title></head>"
    "<body><form action=\"/admin/index.php\" method=\"post\"><input name=\"user\"><input name=\"pass\" "
    "type=\"password\"></form></body></html>";

static const char *CDN_PAGE =
    "<html><head><title>%d</title></head><body><center><h1>%d</h1></center><hr><center>cloudflare</center></body></html>";

/* ---- contacts ------------------------------------------------------------------ */

/* Contacts are found by email through a hash index (case-insensitive), so
 * load tests with many contacts measure the client, not a linear scan. */
static uint64_t email_hash(const char *e)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *e; e++) { h ^= (unsigned char)(*e >= 'A' && *e <= 'Z' ? *e + 32 : *e); h *= 1099511628211ULL; }
    return h;
}

static void index_put(size_t i)
{
    if ((E.ncontacts + 1) * 2 > E.index_cap) {
        size_t cap = E.index_cap ? E.index_cap * 2 : 1024;
        free(E.index);
        E.index = calloc(cap, sizeof *E.index);
        E.index_cap = cap;
        for (size_t k = 0; k < E.ncontacts; k++) {
            if (k == i) continue;
            size_t h = (size_t)(email_hash(E.contacts[k].email) & (cap - 1));
            while (E.index[h]) h = (h + 1) & (cap - 1);
            E.index[h] = k + 1;
        }
    }
    size_t h = (size_t)(email_hash(E.contacts[i].email) & (E.index_cap - 1));
    while (E.index[h]) h = (h + 1) & (E.index_cap - 1);
    E.index[h] = i + 1;
}

contact *find_contact(const char *email)
{
    if (!E.index_cap) return NULL;
    size_t h = (size_t)(email_hash(email) & (E.index_cap - 1));
    for (; E.index[h]; h = (h + 1) & (E.index_cap - 1))
        if (!strcasecmp(E.contacts[E.index[h] - 1].email, email)) return &E.contacts[E.index[h] - 1];
    return NULL;
}

/* A contact's id is its position + 1: contacts are only ever added (reset
 * empties them all), so the resources that refer to contacts by id find
 * them without a scan. */
contact *find_contact_id(long id)
{
    return id >= 1 && (size_t)id <= E.ncontacts ? &E.contacts[id - 1] : NULL;
}

size_t ncontacts(void) { return E.ncontacts; }
contact *contact_at(size_t i) { return &E.contacts[i]; }

void write_contact(bp_buf *b, const contact *c)
{
    bp_buf_adds(b, "{\"id\":");
    bp_buf_printf(b, "\"%ld\",\"email\":", c->id);
    bp_json_write_string(b, c->email, strlen(c->email));
    bp_buf_adds(b, ",\"firstName\":");
    bp_json_write_string(b, c->first, strlen(c->first));
    bp_buf_adds(b, ",\"lastName\":");
    bp_json_write_string(b, c->last, strlen(c->last));
    bp_buf_adds(b, ",\"phone\":");
    bp_json_write_string(b, c->phone, strlen(c->phone));
    bp_buf_adds(b, "}");
}

int valid_email(const char *e)
{
    const char *at = strchr(e, '@');
    return at && at != e && strchr(at, '.') && !strchr(at + 1, '@') && !strpbrk(e, " \t");
}

void lower(char *s) { for (; *s; s++) if (*s >= 'A' && *s <= 'Z') *s += 32; }

/* ---- helpers for the resource files (crm.c, ecom.c) ------------------------------ */

const char *query(const req *q, const char *key)
{
    return MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, key);
}

/* The object `wrapper` of the JSON body ({"tag":{...}}: ActiveCampaign
 * wraps every single object), or BP_NONE once 400 (not JSON) or 422 (no
 * such object) is answered. */
uint32_t body_object(reply *r, bp_doc *d, const req *q, const char *wrapper)
{
    bp_error err;
    if (bp_json_parse(d, q->body ? q->body : "", q->len, NULL, &err) < 0) {
        json_reply(r, 400, "{\"message\":\"Invalid JSON\"}");
        return BP_NONE;
    }
    uint32_t o = d->nodes[0].type == BP_JOBJECT ? bp_jget(d, 0, wrapper) : BP_NONE;
    if (o == BP_NONE || d->nodes[o].type != BP_JOBJECT) { missing_reply(r, wrapper); return BP_NONE; }
    return o;
}

/* limit (default 20, at most 100) and offset, as every ActiveCampaign
 * collection pages; a value that is not a number is the default. */
void paging(const req *q, size_t *offset, size_t *limit)
{
    const char *l = query(q, "limit"), *o = query(q, "offset");
    long lv = l ? strtol(l, NULL, 10) : 0, ov = o ? strtol(o, NULL, 10) : 0;
    *limit = lv <= 0 ? 20 : lv > 100 ? 100 : (size_t)lv;
    *offset = ov < 0 ? 0 : (size_t)ov;
}

/* Room for element n of an array of `size`-byte elements. */
void *grow(void *p, size_t n, size_t *cap, size_t size)
{
    if (n < *cap) return p;
    *cap = *cap ? *cap * 2 : 16;
    return realloc(p, *cap * size);
}

/* "2024-05-01T12:00:00-00:00": ActiveCampaign's date format (UTC here). */
void now_iso(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%S-00:00", &tm);
}

/* An id sent as a number (2) or a string ("2"), as the documented examples
 * do both; 0 when absent or not a positive integer. */
long jid(const bp_doc *d, uint32_t n)
{
    const char *s = bp_jscalar(d, n);
    if (!s || !*s || strlen(s) > 18) return 0;
    for (const char *p = s; *p; p++) if (*p < '0' || *p > '9') return 0;
    long v = atol(s);
    return v > 0 ? v : 0;
}

/* 1 and *out when node n is an integer (a JSON number without fraction or
 * exponent, or a string of digits), 0 when absent or null, -1 otherwise:
 * amounts are in cents, so 49.99 is a mistake the emulator must refuse. */
int jinteger(const bp_doc *d, uint32_t n, long long *out)
{
    if (n == BP_NONE || d->nodes[n].type == BP_JNULL) return 0;
    const char *s = bp_jscalar(d, n);
    if (!s) return -1;
    const char *p = s + (*s == '-');
    if (!*p || strlen(p) > 17) return -1;
    for (; *p; p++) if (*p < '0' || *p > '9') return -1;
    *out = atoll(s);
    return 1;
}

/* A member of object obj as text (strings and numbers), else NULL. */
const char *jstr(const bp_doc *d, uint32_t obj, const char *key)
{
    return obj == BP_NONE ? NULL : bp_jscalar(d, bp_jget(d, obj, key));
}

void put_str(bp_buf *b, const char *prefix, const char *s)
{
    bp_buf_adds(b, prefix);
    bp_json_write_string(b, s ? s : "", s ? strlen(s) : 0);
}

/* ActiveCampaign writes every id as a string. */
void put_id(bp_buf *b, const char *prefix, long id) { bp_buf_printf(b, "%s\"%ld\"", prefix, id); }

/* {"errors":[{"title","detail","code","source":{"pointer"}}]}: the shape of
 * every documented 422 (contact duplicate, email_invalid, ...). */
void error_reply(reply *r, int status, const char *title, const char *detail, const char *code,
                 const char *pointer)
{
    json_begin(r, status);
    put_str(&r->body, "{\"errors\":[{\"title\":", title);
    put_str(&r->body, ",\"detail\":", detail);
    put_str(&r->body, ",\"code\":", code);
    put_str(&r->body, ",\"source\":{\"pointer\":", pointer);
    bp_buf_adds(&r->body, "}}]}");
}

/* A required attribute absent from the body. */
void missing_reply(reply *r, const char *attribute)
{
    char pointer[96];
    snprintf(pointer, sizeof pointer, "/data/attributes/%s", attribute);
    error_reply(r, 422, "Missing attribute", attribute, "field_missing", pointer);
}

/* ActiveCampaign's 404 for an id it does not know ("Tag", "List", ...). */
void no_result(reply *r, const char *what, long id)
{
    json_begin(r, 404);
    bp_buf_printf(&r->body, "{\"message\":\"No Result found for %s with id %ld\"}", what, id);
}

/* Collections end with "meta":{"total":"N"}: the total is a string. */
void meta_total(bp_buf *b, size_t total) { bp_buf_printf(b, "\"meta\":{\"total\":\"%zu\"}", total); }

/* The contact with that email, created when there is none (*created says
 * which, when asked): contact sync and bulk import alike. */
contact *upsert_contact(const char *email, int *created)
{
    contact *k = find_contact(email);
    if (created) *created = !k;
    if (k) return k;
    if (E.ncontacts == E.capcontacts) {
        E.capcontacts = E.capcontacts ? E.capcontacts * 2 : 64;
        E.contacts = realloc(E.contacts, E.capcontacts * sizeof *E.contacts);
    }
    k = &E.contacts[E.ncontacts++];
    memset(k, 0, sizeof *k);
    k->id = (long)E.ncontacts;
    k->email = xdup(email);
    lower(k->email);
    k->first = xdup("");
    k->last = xdup("");
    k->phone = xdup("");
    bp_buf_init(&k->tracking);
    index_put(E.ncontacts - 1);
    return k;
}

/* Each value given (not NULL) replaces the contact's. */
void set_contact(contact *k, const char *first, const char *last, const char *phone)
{
    if (first) { free(k->first); k->first = xdup(first); }
    if (last) { free(k->last); k->last = xdup(last); }
    if (phone) { free(k->phone); k->phone = xdup(phone); }
}

/* POST /api/3/contact/sync and /api/3/contacts; contact.fieldValues are the
 * account's custom field values (crm.c). */
static void contact_write(reply *r, const req *q, int sync)
{
    const char *body = q->body;
    size_t len = q->len;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, body, len, NULL, &err) < 0) {
        json_reply(r, 400, "{\"message\":\"Invalid JSON\"}");
        bp_doc_free(&d);
        return;
    }
    uint32_t c = bp_jget(&d, 0, "contact");
    const char *email = bp_jscalar(&d, bp_jget(&d, c, "email"));
    if (!email || !valid_email(email)) {
        json_reply(r, 422, "{\"errors\":[{\"title\":\"Contact Email is not a valid email address.\",\"detail\":\"\","
                           "\"code\":\"email_invalid\",\"source\":{\"pointer\":\"/data/attributes/email\"}}]}");
        bp_doc_free(&d);
        return;
    }
    contact *k = find_contact(email);
    if (k && !sync) {
        json_reply(r, 422, "{\"errors\":[{\"title\":\"Email address already exists in the system.\",\"detail\":\"\","
                           "\"code\":\"duplicate\",\"source\":{\"pointer\":\"/data/attributes/email\"}}]}");
        bp_doc_free(&d);
        return;
    }
    uint32_t values = bp_jget(&d, c, "fieldValues");
    if (crm_check_values(r, &d, values) < 0) { bp_doc_free(&d); return; }
    int created = !k;
    k = upsert_contact(email, NULL);
    set_contact(k, bp_jscalar(&d, bp_jget(&d, c, "firstName")), bp_jscalar(&d, bp_jget(&d, c, "lastName")),
                bp_jscalar(&d, bp_jget(&d, c, "phone")));
    r->status = created ? 201 : 200;
    bp_buf_reset(&r->body);
    bp_buf_adds(&r->body, "{\"fieldValues\":[");
    crm_set_values(&r->body, q->account, k->id, &d, values);
    bp_doc_free(&d);
    bp_buf_adds(&r->body, "],\"contact\":");
    write_contact(&r->body, k);
    bp_buf_adds(&r->body, "}");
    r->ctype = "application/json";
}

/* ---- Event Tracking ------------------------------------------------------------ */

static int from_hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Value of `key` in a form body, decoded, or NULL. Caller frees. */
static char *form_get(const char *body, const char *key)
{
    size_t klen = strlen(key);
    const char *p = body;
    while (p && *p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n > klen && !strncmp(p, key, klen) && p[klen] == '=') {
            char *out = malloc(n), *w = out;
            for (const char *s = p + klen + 1; s < p + n; s++) {
                if (*s == '+') *w++ = ' ';
                else if (*s == '%' && s + 2 < p + n + 1 && from_hex(s[1]) >= 0 && from_hex(s[2]) >= 0) {
                    *w++ = (char)(from_hex(s[1]) * 16 + from_hex(s[2]));
                    s += 2;
                } else *w++ = *s;
            }
            *w = '\0';
            return out;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

static account *account_by_actid(const char *actid)
{
    for (int i = 0; actid && i < E.naccounts; i++) if (!strcmp(E.accounts[i].actid, actid)) return &E.accounts[i];
    return NULL;
}

static account *account_by_token(const char *token)
{
    for (int i = 0; token && i < E.naccounts; i++) if (!strcmp(E.accounts[i].api_token, token)) return &E.accounts[i];
    return NULL;
}

static void track_event(reply *r, const char *ctype, const char *body)
{
    if (!ctype || strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0) {
        json_reply(r, 200, "{\"success\":0,\"message\":\"An account ID must be provided.\"}");
        return;
    }
    char *actid = form_get(body, "actid"), *key = form_get(body, "key"), *event = form_get(body, "event");
    char *data = form_get(body, "eventdata"), *visit = form_get(body, "visit");
    if (!actid || !*actid) json_reply(r, 200, "{\"success\":0,\"message\":\"An account ID must be provided.\"}");
    else if (!key || !account_by_actid(actid) || strcmp(key, account_by_actid(actid)->event_key) != 0)
        json_reply(r, 200, "{\"success\":0,\"message\":\"Invalid key provided.\"}");
    else if (!event || !*event || strlen(event) > 32)
        json_reply(r, 200, "{\"success\":0,\"message\":\"A valid event name must be provided.\"}");
    else if (account_by_actid(actid)->tracking_off) {
        /* The reference says only that Event Tracking "must be toggled on
         * for this call to work", not what /event answers while it is off.
         * By default the emulator takes the worst case, an event accepted
         * and never recorded (a silent loss the blueprint must prevent);
         * {"tracking_off":"refuse"} answers success 0 instead. */
        json_reply(r, 200, E.tracking_off_refuses ? "{\"success\":0,\"message\":\"Event tracking is disabled.\"}"
                                                   : "{\"success\":1,\"message\":\"Event spawned\"}");
    } else {
        bp_doc d;
        bp_error err;
        bp_doc_init(&d);
        const char *email = NULL;
        if (visit && bp_json_parse(&d, visit, strlen(visit), NULL, &err) == 0)
            email = bp_jscalar(&d, bp_jget(&d, 0, "email"));
        contact *k = email ? find_contact(email) : NULL;
        if (k) {
            if (k->ntracking++) bp_buf_addc(&k->tracking, ',');
            bp_buf_adds(&k->tracking, "{\"type\":");
            bp_json_write_string(&k->tracking, event, strlen(event));
            bp_buf_adds(&k->tracking, ",\"value\":");
            bp_json_write_string(&k->tracking, data ? data : "", data ? strlen(data) : 0);
            bp_buf_adds(&k->tracking, "}");
        }
        bp_doc_free(&d);
        json_reply(r, 200, "{\"success\":1,\"message\":\"Event spawned\"}");
    }
    free(actid); free(key); free(event); free(data); free(visit);
}

/* ---- /webhook: a generic receiver ------------------------------------------------------ */

static void webhook(reply *r, const char *signature, const char *body, size_t len)
{
    if (E.webhook_secret) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned maclen = 0;
        HMAC(EVP_sha256(), E.webhook_secret, (int)strlen(E.webhook_secret), (const unsigned char *)(body ? body : ""),
             len, mac, &maclen);
        char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
        for (unsigned k = 0; k < maclen; k++) snprintf(hex + 2 * k, 3, "%02x", mac[k]);
        if (!signature || strcmp(signature, hex) != 0) {
            json_reply(r, 401, "{\"error\":\"bad signature\"}");
            return;
        }
    }
    json_reply(r, 200, "{\"ok\":true}");
}

/* ---- /api/3 router -------------------------------------------------------------------- */

static void api3(reply *r, const req *q)
{
    const char *method = q->method, *path = q->path, *body = q->body;
    const char *query_email = query(q, "email");
    size_t len = q->len;
    long id = 0;
    char tail[64] = "";
    if (!strcmp(path, "/api/3/contact/sync") && !strcmp(method, "POST")) { contact_write(r, q, 1); return; }
    if (!strcmp(path, "/api/3/contacts")) {
        if (!strcmp(method, "POST")) { contact_write(r, q, 0); return; }
        r->status = 200;
        r->ctype = "application/json";
        bp_buf_adds(&r->body, "{\"contacts\":[");
        int first = 1;
        for (size_t i = 0; i < E.ncontacts; i++) {
            if (query_email && strcasecmp(query_email, E.contacts[i].email) != 0) continue;
            if (!first) bp_buf_addc(&r->body, ',');
            write_contact(&r->body, &E.contacts[i]);
            first = 0;
        }
        bp_buf_adds(&r->body, "]}");
        return;
    }
    if (sscanf(path, "/api/3/contacts/%ld%63s", &id, tail) >= 1) {
        contact *k = find_contact_id(id);
        if (!k) { json_reply(r, 404, "{\"message\":\"No Result found for Subscriber with id 0\"}"); return; }
        r->status = 200;
        r->ctype = "application/json";
        if (!strcmp(tail, "/contactLists")) { crm_contact_lists(r, q->account, k->id); return; }
        if (!strcmp(tail, "/trackingLogs")) {
            bp_buf_adds(&r->body, "{\"trackingLogs\":[");
            if (k->tracking.len) bp_buf_add(&r->body, k->tracking.data, k->tracking.len);
            bp_buf_adds(&r->body, "]}");
        } else {
            bp_buf_adds(&r->body, "{\"contact\":");
            write_contact(&r->body, k);
            bp_buf_adds(&r->body, "}");
        }
        return;
    }
    if (!strcmp(path, "/api/3/eventTracking")) {   /* the account's switch; on until turned off */
        account *a = &E.accounts[q->account];
        if (!strcmp(method, "PUT")) a->tracking_off = !(len && strstr(body, "true") != NULL);
        r->status = 200;
        r->ctype = "application/json";
        bp_buf_printf(&r->body, "{\"eventTracking\":{\"enabled\":%s}}", a->tracking_off ? "false" : "true");
        return;
    }
    if (!strcmp(path, "/api/3/eventTrackingEvents")) {
        r->status = 200;
        r->ctype = "application/json";
        if (!strcmp(method, "POST")) {
            bp_doc d;
            bp_error err;
            bp_doc_init(&d);
            const char *name = NULL;
            if (bp_json_parse(&d, body, len, NULL, &err) == 0)
                name = bp_jscalar(&d, bp_jget_path(&d, 0, "eventTrackingEvent.name"));
            if (!name) { json_reply(r, 422, "{\"errors\":[{\"title\":\"name is required\",\"code\":\"field_missing\"}]}"); bp_doc_free(&d); return; }
            if (E.nevent_names++) bp_buf_addc(&E.event_names, ',');
            bp_json_write_string(&E.event_names, name, strlen(name));
            r->status = 201;
            bp_buf_adds(&r->body, "{\"eventTrackingEvent\":{\"name\":");
            bp_json_write_string(&r->body, name, strlen(name));
            bp_buf_adds(&r->body, "}}");
            bp_doc_free(&d);
            return;
        }
        bp_buf_adds(&r->body, "{\"eventTrackingEvents\":[");
        if (E.event_names.len) bp_buf_add(&r->body, E.event_names.data, E.event_names.len);
        bp_buf_adds(&r->body, "]}");
        return;
    }
    if (crm_api(r, q) || ecom_api(r, q) || bulk_api(r, q)) return;
    json_reply(r, 404, "{\"message\":\"No Result found\"}");
}

/* ---- control endpoints ------------------------------------------------------------------ */

static int jint(const bp_doc *d, const char *key, int dflt)
{
    const char *s = bp_jscalar(d, bp_jget(d, 0, key));
    uint32_t n = bp_jget(d, 0, key);
    if (n != BP_NONE && d->nodes[n].type == BP_JTRUE) return 1;
    if (n != BP_NONE && d->nodes[n].type == BP_JFALSE) return 0;
    return s ? atoi(s) : dflt;
}

static void set_rate_limit(int rps)
{
    E.rate_limit = rps;
    for (int i = 0; i < E.naccounts; i++) {
        free(E.accounts[i].window);
        E.accounts[i].window = rps > 0 ? calloc((size_t)rps, sizeof *E.accounts[i].window) : NULL;
        E.accounts[i].wpos = 0;
    }
}

/* GET /_emulator/state?account=N: one account's lists, tags, fields and
 * Deep Data as a test asserts on them (contacts by email, amounts as
 * numbers). */
static void state(reply *r, const req *q)
{
    const char *a = query(q, "account");
    int k = a ? atoi(a) : 0;
    if (k < 0 || k >= E.naccounts) { json_reply(r, 404, "{\"error\":\"no such account\"}"); return; }
    json_begin(r, 200);
    bp_buf_printf(&r->body, "{\"account\":%d,", k);
    crm_dump(&r->body, k);
    bp_buf_addc(&r->body, ',');
    ecom_dump(&r->body, k);
    bp_buf_addc(&r->body, ',');
    bulk_dump(&r->body, k);
    bp_buf_addc(&r->body, '}');
}

static void control(reply *r, const req *q)
{
    const char *method = q->method, *path = q->path, *body = q->body;
    size_t len = q->len;
    r->status = 200;
    r->ctype = "application/json";
    if (!strcmp(path, "/_emulator/state") && !strcmp(method, "GET")) { state(r, q); return; }
    if (crm_control(r, q) || bulk_control(r, q)) return;
    if (!strcmp(path, "/_emulator/requests") && !strcmp(method, "GET")) {
        bp_buf_adds(&r->body, "[");
        for (size_t i = 0; i < E.nlog; i++) {
            logged *l = &E.log[i];
            if (i) bp_buf_addc(&r->body, ',');
            bp_buf_adds(&r->body, "{\"method\":");
            bp_json_write_string(&r->body, l->method, strlen(l->method));
            bp_buf_adds(&r->body, ",\"path\":");
            bp_json_write_string(&r->body, l->path, strlen(l->path));
            bp_buf_adds(&r->body, ",\"api_token\":");
            bp_json_write_string(&r->body, l->token, strlen(l->token));
            bp_buf_printf(&r->body, ",\"account\":%d,\"content_type\":", l->account);
            bp_json_write_string(&r->body, l->ctype, strlen(l->ctype));
            bp_buf_adds(&r->body, ",\"body\":");
            size_t bad;
            if (bp_utf8_check(l->body, strlen(l->body), &bad) == 0) bp_json_write_string(&r->body, l->body, strlen(l->body));
            else bp_buf_adds(&r->body, "\"(invalid UTF-8)\"");
            bp_buf_adds(&r->body, ",\"signature\":");
            bp_json_write_string(&r->body, l->signature, strlen(l->signature));
            bp_buf_adds(&r->body, ",\"batch_id\":");
            bp_json_write_string(&r->body, l->batch_id, strlen(l->batch_id));
            bp_buf_printf(&r->body, ",\"status\":%d,\"at_ms\":%.1f}", l->status, l->at_ms);
        }
        bp_buf_adds(&r->body, "]");
        return;
    }
    if (!strcmp(path, "/_emulator/contacts")) {
        bp_buf_adds(&r->body, "[");
        for (size_t i = 0; i < E.ncontacts; i++) {
            if (i) bp_buf_addc(&r->body, ',');
            write_contact(&r->body, &E.contacts[i]);
            r->body.len--;  /* reopen the object to add the tracking log */
            bp_buf_adds(&r->body, ",\"trackingLogs\":[");
            if (E.contacts[i].tracking.len) bp_buf_add(&r->body, E.contacts[i].tracking.data, E.contacts[i].tracking.len);
            bp_buf_adds(&r->body, "]}");
        }
        bp_buf_adds(&r->body, "]");
        return;
    }
    if (!strcmp(path, "/_emulator/stats")) {
        bp_buf_printf(&r->body, "{\"requests\":%ld,\"rate_limited\":%ld,\"contacts\":%zu,\"accounts\":[",
                      E.total, E.limited, E.ncontacts);
        for (int i = 0; i < E.naccounts; i++)
            bp_buf_printf(&r->body, "%s{\"requests\":%ld,\"rate_limited\":%ld}", i ? "," : "", E.accounts[i].total,
                          E.accounts[i].limited);
        bp_buf_adds(&r->body, "]}");
        return;
    }
    if (!strcmp(path, "/_emulator/reset") && !strcmp(method, "POST")) {
        for (size_t i = 0; i < E.ncontacts; i++) {
            contact *k = &E.contacts[i];
            free(k->email); free(k->first); free(k->last); free(k->phone);
            bp_buf_free(&k->tracking);
        }
        E.ncontacts = 0;
        if (E.index) memset(E.index, 0, E.index_cap * sizeof *E.index);
        for (size_t i = 0; i < E.nlog; i++) {
            free(E.log[i].method); free(E.log[i].path); free(E.log[i].token); free(E.log[i].ctype); free(E.log[i].body);
            free(E.log[i].signature);
            free(E.log[i].batch_id);
        }
        E.nlog = 0;
        crm_reset();
        ecom_reset();
        bulk_reset();
        for (int i = 0; i < E.naccounts; i++) E.accounts[i].tracking_off = 0;
        E.tracking_off_refuses = 0;
        E.fail_next = E.login_html_next = E.reset_next = E.latency_ms = E.burst_503 = 0;
        E.fail_path[0] = '\0';
        E.total = E.limited = 0;
        for (int i = 0; i < E.naccounts; i++) {
            account *a = &E.accounts[i];
            a->total = a->limited = 0;
            if (a->window) memset(a->window, 0, (size_t)E.rate_limit * sizeof *a->window);
        }
        bp_buf_adds(&r->body, "{\"reset\":true}");
        return;
    }
    if (!strcmp(path, "/_emulator/faults") && !strcmp(method, "POST")) {
        bp_doc d;
        bp_error err;
        bp_doc_init(&d);
        if (bp_json_parse(&d, body, len, NULL, &err) < 0) { json_reply(r, 400, "{\"error\":\"invalid JSON\"}"); bp_doc_free(&d); return; }
        E.fail_next = jint(&d, "fail_next", E.fail_next);
        /* "path": fail only requests whose path starts with it; a fail_next
         * without one fails any request, as before */
        if (bp_jget(&d, 0, "fail_next") != BP_NONE || bp_jget(&d, 0, "path") != BP_NONE) {
            const char *fp = bp_jscalar(&d, bp_jget(&d, 0, "path"));
            snprintf(E.fail_path, sizeof E.fail_path, "%s", fp ? fp : "");
        }
        E.fail_status = jint(&d, "status", E.fail_status ? E.fail_status : 503);
        E.fail_html = jint(&d, "html", E.fail_html);
        E.fail_retry_after = jint(&d, "retry_after", 0);
        E.login_html_next = jint(&d, "login_html_next", E.login_html_next);
        E.reset_next = jint(&d, "reset_next", E.reset_next);
        E.latency_ms = jint(&d, "latency_ms", E.latency_ms);
        E.burst_503 = jint(&d, "burst_503", E.burst_503);
        E.retry_after = jint(&d, "rate_limit_retry_after", E.retry_after);
        int rl = jint(&d, "rate_limit", -1);
        if (rl >= 0) set_rate_limit(rl);
        const char *off = bp_jscalar(&d, bp_jget(&d, 0, "tracking_off"));
        if (off) E.tracking_off_refuses = !strcmp(off, "refuse");
        const char *dup = bp_jscalar(&d, bp_jget(&d, 0, "ecom_duplicates"));
        if (dup) ecom_accept_duplicates(!strcmp(dup, "accept"));
        bulk_faults(&d);
        const char *tok = bp_jscalar(&d, bp_jget(&d, 0, "api_token"));
        if (tok) E.accounts[0].api_token = strdup(tok);
        bp_doc_free(&d);
        bp_buf_adds(&r->body, "{\"ok\":true}");
        return;
    }
    json_reply(r, 404, "{\"error\":\"unknown emulator endpoint\"}");
}

/* ---- one request ------------------------------------------------------------------------ */

/* 1 = over the account's limit; fills the RateLimit-Remaining.  Requests
 * of no known account are not limited (they are refused anyway). */
static int rate_limited(reply *r, account *a)
{
    if (E.rate_limit <= 0 || !a) return 0;
    double t = now_ms();
    size_t oldest = a->wpos;   /* ring of the last rate_limit admitted requests */
    if (a->window[oldest] && t - a->window[oldest] < 1000.0) {
        r->ratelimit_remaining = 0;
        return 1;
    }
    a->window[a->wpos] = t;
    a->wpos = (a->wpos + 1) % (size_t)E.rate_limit;
    int used = 0;
    for (int i = 0; i < E.rate_limit; i++) if (a->window[i] && t - a->window[i] < 1000.0) used++;
    r->ratelimit_remaining = E.rate_limit - used;
    return 0;
}

static int handle(reply *r, struct MHD_Connection *conn, const char *method, const char *url,
                  const char *body, size_t len)
{
    const char *ctype = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    const char *token = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Api-Token");
    const char *signature = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, E.webhook_header);
    int vendor = strncmp(url, "/_emulator/", 11) != 0;
    int latency = 0;
    pthread_mutex_lock(&E.mu);
    bulk_settle();
    if (!vendor) {
        req q = { method, url, body, len, conn, 0 };
        control(r, &q);
        pthread_mutex_unlock(&E.mu);
        return 1;
    }
    E.total++;
    latency = E.latency_ms;
    account *acct = NULL;
    if (!strncmp(url, "/api/3/", 7)) acct = account_by_token(token);
    else if (!strcmp(url, "/event") && body) {
        char *actid = form_get(body, "actid");
        acct = account_by_actid(actid);
        free(actid);
    }
    if (acct) acct->total++;
    int reset = 0;
    if (E.reset_next > 0) { E.reset_next--; reset = 1; }
    else if (rate_limited(r, acct)) {
        E.limited++;
        acct->limited++;
        if (E.burst_503) {
            r->status = 503;
            r->ctype = "text/html";
            bp_buf_printf(&r->body, CDN_PAGE, 503, 503);
        } else {
            json_reply(r, 429, "{\"message\":\"Too Many Requests\"}");
            snprintf(r->retry_after, sizeof r->retry_after, "%d", E.retry_after > 0 ? E.retry_after : 1);
        }
    } else if (E.fail_next > 0 && !strncmp(url, E.fail_path, strlen(E.fail_path))) {
        E.fail_next--;
        r->status = E.fail_status;
        if (E.fail_html) { r->ctype = "text/html"; bp_buf_printf(&r->body, CDN_PAGE, r->status, r->status); }
        else json_reply(r, r->status, "{\"message\":\"injected failure\"}");
        if (E.fail_retry_after) snprintf(r->retry_after, sizeof r->retry_after, "%d", E.fail_retry_after);
    } else if (!strncmp(url, "/api/3/", 7)) {
        if (E.login_html_next > 0) {
            E.login_html_next--;
            r->status = 200;
            r->ctype = "text/html; charset=utf-8";
            bp_buf_adds(&r->body, LOGIN_PAGE);
        } else if (!acct) {
            json_reply(r, 403, "{\"message\":\"No Result found for Subscriber with id 0\"}");
        } else {
            req q = { method, url, body, len, conn, (int)(acct - E.accounts) };
            api3(r, &q);
        }
    } else if (!strcmp(url, "/event") && !strcmp(method, "POST")) {
        track_event(r, ctype, body);
    } else if (!strncmp(url, "/webhook", 8) && !strcmp(method, "POST")) {
        webhook(r, signature, body, len);
    } else {
        json_reply(r, 404, "{\"message\":\"Not Found\"}");
    }
    if (E.nlog < MAX_LOG) {
        if (E.nlog == E.caplog) {
            E.caplog = E.caplog ? E.caplog * 2 : 1024;
            E.log = realloc(E.log, E.caplog * sizeof *E.log);
        }
        logged *l = &E.log[E.nlog++];
        l->method = xdup(method);
        l->path = xdup(url);
        l->token = xdup(token);
        l->ctype = xdup(ctype);
        l->body = xdup(body);
        l->signature = xdup(signature);
        const char *bid = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "batchId");
        l->batch_id = xdup(bid ? bid : "");
        l->status = reset ? 0 : r->status;
        l->account = acct ? (int)(acct - E.accounts) : -1;
        l->at_ms = now_ms();
    }
    pthread_mutex_unlock(&E.mu);
    if (latency > 0) usleep((useconds_t)latency * 1000);
    return reset ? 0 : 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)cls; (void)version;
    reqctx *rc = *con_cls;
    if (!rc) {
        rc = calloc(1, sizeof *rc);
        bp_buf_init(&rc->body);
        *con_cls = rc;
        return MHD_YES;
    }
    if (*upload_size) {
        if (rc->body.len + *upload_size <= MAX_BODY) bp_buf_add(&rc->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    reply r = { 200, { 0 }, "application/json", "", -1 };
    bp_buf_init(&r.body);
    bp_buf_add(&rc->body, "", 0);
    if (!handle(&r, conn, method, url, rc->body.data, rc->body.len)) {
        bp_buf_free(&r.body);
        return MHD_NO;   /* drop the connection: the client sees a reset */
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(r.body.len, r.body.data, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", r.ctype);
    if (r.retry_after[0]) MHD_add_response_header(resp, "Retry-After", r.retry_after);
    if (r.ratelimit_remaining >= 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", E.rate_limit);
        MHD_add_response_header(resp, "RateLimit-Limit", v);
        snprintf(v, sizeof v, "%d", r.ratelimit_remaining);
        MHD_add_response_header(resp, "RateLimit-Remaining", v);
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)r.status, resp);
    MHD_destroy_response(resp);
    bp_buf_free(&r.body);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls; (void)conn; (void)toe;
    reqctx *rc = *con_cls;
    if (rc) { bp_buf_free(&rc->body); free(rc); }
    *con_cls = NULL;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    int port = 0, rps = 5, naccounts = 1, import_delay_ms = 2000, imports_per_minute = 100;
    const char *api_token = "emulator-api-token", *actid = "1000001", *event_key = "emulator-event-key";
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "ac-emulator: %s needs a value\n", argv[i]); return 1; }
        if (!strcmp(argv[i], "--port")) port = atoi(v);
        else if (!strcmp(argv[i], "--api-token")) api_token = v;
        else if (!strcmp(argv[i], "--actid")) actid = v;
        else if (!strcmp(argv[i], "--event-key")) event_key = v;
        else if (!strcmp(argv[i], "--rate-limit")) rps = atoi(v);
        else if (!strcmp(argv[i], "--webhook-secret")) E.webhook_secret = v;
        else if (!strcmp(argv[i], "--webhook-header")) E.webhook_header = v;
        else if (!strcmp(argv[i], "--import-delay-ms")) import_delay_ms = atoi(v);
        else if (!strcmp(argv[i], "--imports-per-minute")) imports_per_minute = atoi(v);
        else if (!strcmp(argv[i], "--accounts")) naccounts = atoi(v) > 0 ? atoi(v) : 1;
        else { fprintf(stderr, "ac-emulator: unknown option %s\n", argv[i]); return 1; }
        i++;
    }
    if (!E.webhook_header) E.webhook_header = "X-Signature-256";
    pthread_mutex_init(&E.mu, NULL);
    bp_buf_init(&E.event_names);
    E.naccounts = naccounts;
    E.accounts = calloc((size_t)naccounts, sizeof *E.accounts);
    for (int k = 0; k < naccounts; k++) {
        account *a = &E.accounts[k];
        char buf[256];
        if (k == 0) { a->api_token = xdup(api_token); a->actid = xdup(actid); a->event_key = xdup(event_key); continue; }
        snprintf(buf, sizeof buf, "%s-%d", api_token, k);
        a->api_token = xdup(buf);
        snprintf(buf, sizeof buf, "%ld", atol(actid) + k);
        a->actid = xdup(buf);
        snprintf(buf, sizeof buf, "%s-%d", event_key, k);
        a->event_key = xdup(buf);
    }
    set_rate_limit(rps);
    E.retry_after = 1;
    crm_init(naccounts);
    ecom_init(naccounts);
    bulk_init(naccounts, import_delay_ms, imports_per_minute);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);   /* loopback only, always */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO, 0, NULL, NULL, on_request, NULL,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_LIMIT, 4096u,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
    if (!d) { fprintf(stderr, "ac-emulator: cannot listen on 127.0.0.1:%d\n", port); return 1; }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening on http://127.0.0.1:%u\n", info ? info->port : (unsigned)port);
    fflush(stdout);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    while (!stop) pause();
    MHD_stop_daemon(d);
    return 0;
}
