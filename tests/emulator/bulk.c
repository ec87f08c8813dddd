/*
 * bulk.c — the emulator's Bulk Contact Importer, per account:
 * POST /api/3/import/bulk_import and GET /api/3/import/info?batchId=
 * (reference pages "bulk-import-contacts" and "bulk-import-status-info";
 * docs/activecampaign.md says what the pages say and what the emulator
 * chooses where they are silent).
 *
 * What a client must cope with, as ActiveCampaign documents it:
 *   - the import is asynchronous: the POST answers {"success":1,
 *     "queued_contacts":N,"batchId":…} at once and the contacts are imported
 *     later (here: --import-delay-ms after the POST, default 2000, or
 *     {"import_delay_ms":N} on /_emulator/faults; POST
 *     /_emulator/imports/complete finishes every queued import at once);
 *   - import/info answers "status" (here "active" until the import is done,
 *     then "completed", or "failed"/"interrupted" when a fault asks for it)
 *     with "success", the ids of the contacts the import CREATED, and
 *     "failure", the emails of the contacts it could not import: a contact
 *     that existed and was updated is in neither list;
 *   - a body that fails validation imports nothing: 400 with
 *     "failureReasons" per contact index;
 *   - at most 250 contacts and 400000 bytes per request; 100 imports a
 *     minute per account (20 for requests of one contact), 429 beyond;
 *   - tags go by name and are created when missing; "subscribe" never
 *     re-subscribes a contact who is on the list in another state
 *     (unsubscribed above all), "unsubscribe" sets status 2.
 *
 * A contact fails at import time (its email in "failure") when its email is
 * on the account's exclusion list (POST /_emulator/exclusions) or a custom
 * field value does not fit the field's type.
 *
 * For tests that kill the client (batch_kill_spec): each import keeps the
 * emails it carried, its number and when it was received (monotonic ms), and
 * /_emulator/faults {"kill_pid":P,"kill_on":W,"kill_after":N,"kill_delay_ms":D}
 * sends P SIGKILL at the Nth request of kind W from then on ("import": a
 * bulk import queued; "info": an import/info answered; "info_done": one
 * that answers a finished import; "now": at once), D ms after it (0: before
 * its answer leaves), so a kill lands at a chosen moment of the client's
 * work and the test knows, on the emulator's clock, which imports came
 * before it ("kills" in /_emulator/state).
 */
#include "emulator.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONTACTS 250
#define MAX_PAYLOAD 400000
#define WINDOW_MS 60000.0

typedef struct bcontact {
    char *email, *first, *last, *phone;   /* NULL: not given */
    char **tags; size_t ntags;
    long *fields; char **values; size_t nfields;
    long *lists; int *subscribe; size_t nlists;
} bcontact;

typedef struct batch {
    char id[40];
    int account;
    double due_ms;
    const char *status;         /* "active" until done */
    const char *ends_as;        /* "completed", "failed" or "interrupted" */
    bcontact *contacts; size_t n;
    bp_buf success, failure;    /* JSON strings, comma separated */
    bp_buf emails;              /* the emails it carried, JSON strings, comma separated */
    unsigned long seq;          /* 1, 2, … in the order the imports were received */
    double received_ms;         /* monotonic */
} batch;

/* A SIGKILL the faults asked for, and the ones sent. */
typedef struct kill_plan { int pid, after, delay_ms; char on[16]; } kill_plan;
typedef struct kill_done { int pid; char on[16]; double at_ms; unsigned long imports; } kill_done;

/* The last `cap` admitted imports of one kind, to count a minute's. */
typedef struct window { double *at; size_t cap, pos; } window;

static struct {
    batch *batches; size_t n, cap;
    int naccounts;
    window *imports, *singles;   /* per account */
    int per_minute, delay_ms;
    int start_per_minute, start_delay_ms;   /* the command line's, restored by reset */
    const char *end_next;        /* the next import ends so, then NULL */
    int status_false_next;       /* the next info answers status false */
    char **excluded; int *excluded_account; size_t nexcluded, capexcluded;
    unsigned long serial;
    kill_plan kill;
    kill_done *kills; size_t nkills, capkills;
} B;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- kills on cue ------------------------------------------------------------------ */

static void *kill_later(void *arg)
{
    kill_plan *k = arg;
    usleep((useconds_t)k->delay_ms * 1000);
    kill((pid_t)k->pid, SIGKILL);
    free(k);
    return NULL;
}

/* A request of kind `what` was handled: the planned kill, when it is due.
 * Recorded when it is decided (a delayed one lands delay_ms later). */
static void kill_cue(const char *what)
{
    kill_plan *k = &B.kill;
    if (!k->pid || strcmp(k->on, what) != 0 || --k->after > 0) return;
    B.kills = grow(B.kills, B.nkills, &B.capkills, sizeof *B.kills);
    kill_done *d = &B.kills[B.nkills++];
    d->pid = k->pid;
    snprintf(d->on, sizeof d->on, "%s", k->on);
    d->at_ms = now_ms() + (k->delay_ms > 0 ? k->delay_ms : 0);
    d->imports = B.serial;
    pthread_t th;
    kill_plan *later = NULL;
    if (k->delay_ms > 0 && (later = malloc(sizeof *later))) {
        *later = *k;
        if (pthread_create(&th, NULL, kill_later, later) == 0) pthread_detach(th);
        else { free(later); later = NULL; }
    }
    if (!later) kill((pid_t)k->pid, SIGKILL);
    k->pid = 0;
}

/* ---- the limit: imports per minute ----------------------------------------------- */

static void window_size(window *w, size_t cap)
{
    free(w->at);
    w->at = cap ? calloc(cap, sizeof *w->at) : NULL;
    w->cap = cap;
    w->pos = 0;
}

/* 0 and the import counted, or the seconds until one more is allowed. */
static int window_take(window *w, double t)
{
    if (!w->cap) return 0;
    double oldest = w->at[w->pos];
    if (oldest && t - oldest < WINDOW_MS) {
        int wait = (int)ceil((oldest + WINDOW_MS - t) / 1000.0);
        return wait > 0 ? wait : 1;
    }
    w->at[w->pos] = t;
    w->pos = (w->pos + 1) % w->cap;
    return 0;
}

static void set_per_minute(int per_minute)
{
    B.per_minute = per_minute > 0 ? per_minute : 0;
    for (int i = 0; i < B.naccounts; i++) {
        window_size(&B.imports[i], (size_t)B.per_minute);
        window_size(&B.singles[i], B.per_minute ? 20 : 0);   /* the reference's 20 for one contact */
    }
}

/* ---- validation ----------------------------------------------------------------- */

static void reason(bp_buf *b, int *n, const char *text)
{
    put_str(b, (*n)++ ? "," : "", text);
}

static int is_string(const bp_doc *d, uint32_t n) { return n != BP_NONE && d->nodes[n].type == BP_JSTRING; }
static int is_array(const bp_doc *d, uint32_t n) { return n != BP_NONE && d->nodes[n].type == BP_JARRAY; }

/* Each entry of the array at member `key` is an object with a known list id. */
static void check_lists(bp_buf *b, int *n, const bp_doc *d, uint32_t c, const char *key, int account)
{
    uint32_t a = bp_jget(d, c, key);
    if (a == BP_NONE) return;
    char text[96];
    if (!is_array(d, a)) {
        snprintf(text, sizeof text, "%s must be a list of {\"listid\": N}", key);
        reason(b, n, text);
        return;
    }
    uint32_t p = a + 1;
    for (uint32_t i = 0; i < d->nodes[a].len; i++, p = d->nodes[p].next) {
        long lid = d->nodes[p].type == BP_JOBJECT ? jid(d, bp_jget(d, p, "listid")) : 0;
        if (!lid) snprintf(text, sizeof text, "%s[%u] needs a listid", key, i);
        else if (!crm_list_exists(account, lid)) snprintf(text, sizeof text, "list %ld does not exist", lid);
        else continue;
        reason(b, n, text);
    }
}

static void check_fields(bp_buf *b, int *n, const bp_doc *d, uint32_t c)
{
    uint32_t a = bp_jget(d, c, "fields");
    if (a == BP_NONE) return;
    if (!is_array(d, a)) { reason(b, n, "fields must be a list of {\"id\": N, \"value\": \"…\"}"); return; }
    uint32_t p = a + 1;
    char text[96];
    for (uint32_t i = 0; i < d->nodes[a].len; i++, p = d->nodes[p].next) {
        long fid = d->nodes[p].type == BP_JOBJECT ? jid(d, bp_jget(d, p, "id")) : 0;
        if (!fid) snprintf(text, sizeof text, "fields[%u] needs an id", i);
        else if (!is_string(d, bp_jget(d, p, "value"))) snprintf(text, sizeof text, "fields[%u] needs a string value", i);
        else if (crm_field_problem(fid, "")) snprintf(text, sizeof text, "custom field %ld does not exist", fid);
        else continue;
        reason(b, n, text);
    }
}

static void check_tags(bp_buf *b, int *n, const bp_doc *d, uint32_t c)
{
    uint32_t a = bp_jget(d, c, "tags");
    if (a == BP_NONE) return;
    if (!is_array(d, a)) { reason(b, n, "tags must be a list of tag names"); return; }
    uint32_t p = a + 1;
    for (uint32_t i = 0; i < d->nodes[a].len; i++, p = d->nodes[p].next) {
        const char *t = is_string(d, p) ? bp_jscalar(d, p) : NULL;
        if (!t || !*t || strchr(t, ',')) { reason(b, n, "a tag is a name without commas"); return; }
    }
}

/* The reasons contact c is refused (a JSON array's items), or none. */
static int check_contact(bp_buf *b, const bp_doc *d, uint32_t c, int account)
{
    int n = 0;
    if (d->nodes[c].type != BP_JOBJECT) { reason(b, &n, "a contact is an object"); return n; }
    uint32_t e = bp_jget(d, c, "email");
    if (e == BP_NONE) reason(b, &n, "email is required");
    else if (!is_string(d, e) || !valid_email(bp_jscalar(d, e))) reason(b, &n, "Invalid email address");
    static const char *const names[] = { "first_name", "last_name", "phone" };
    for (int k = 0; k < 3; k++) {
        uint32_t v = bp_jget(d, c, names[k]);
        if (v != BP_NONE && !is_string(d, v)) {
            char text[64];
            snprintf(text, sizeof text, "%s must be a string", names[k]);
            reason(b, &n, text);
        }
    }
    check_tags(b, &n, d, c);
    check_fields(b, &n, d, c);
    check_lists(b, &n, d, c, "subscribe", account);
    check_lists(b, &n, d, c, "unsubscribe", account);
    return n;
}

/* 400 {"success":0,"message","failureReasons":{"INDEX":[…]}}: 0 when every
 * contact passes. */
static int refuse_contacts(reply *r, const bp_doc *d, uint32_t list, int account)
{
    bp_buf reasons, one;
    bp_buf_init(&reasons);
    bp_buf_init(&one);
    int refused = 0;
    uint32_t p = list + 1;
    for (uint32_t i = 0; i < d->nodes[list].len; i++, p = d->nodes[p].next) {
        bp_buf_reset(&one);
        if (!check_contact(&one, d, p, account)) continue;
        bp_buf_printf(&reasons, "%s\"%u\":[", refused++ ? "," : "", i);
        bp_buf_add(&reasons, one.data, one.len);
        bp_buf_addc(&reasons, ']');
    }
    if (refused) {
        json_begin(r, 400);
        bp_buf_printf(&r->body, "{\"success\":0,\"message\":\"%d of %u contacts failed validation; nothing was imported\","
                                "\"failureReasons\":{", refused, d->nodes[list].len);
        bp_buf_add(&r->body, reasons.data, reasons.len);
        bp_buf_adds(&r->body, "}}");
    }
    bp_buf_free(&reasons);
    bp_buf_free(&one);
    return refused;
}

/* ---- the queue -------------------------------------------------------------------- */

static char *opt_dup(const bp_doc *d, uint32_t c, const char *key)
{
    const char *s = jstr(d, c, key);
    return s ? xdup(s) : NULL;
}

/* A validated contact, copied out of the request. */
static void keep_contact(bcontact *k, const bp_doc *d, uint32_t c)
{
    memset(k, 0, sizeof *k);
    k->email = opt_dup(d, c, "email");
    k->first = opt_dup(d, c, "first_name");
    k->last = opt_dup(d, c, "last_name");
    k->phone = opt_dup(d, c, "phone");
    uint32_t a = bp_jget(d, c, "tags"), p;
    if (a != BP_NONE) {
        k->tags = calloc(d->nodes[a].len + 1, sizeof *k->tags);
        for (p = a + 1; k->ntags < d->nodes[a].len; p = d->nodes[p].next) k->tags[k->ntags++] = xdup(bp_jscalar(d, p));
    }
    if ((a = bp_jget(d, c, "fields")) != BP_NONE) {
        k->fields = calloc(d->nodes[a].len + 1, sizeof *k->fields);
        k->values = calloc(d->nodes[a].len + 1, sizeof *k->values);
        for (p = a + 1; k->nfields < d->nodes[a].len; p = d->nodes[p].next, k->nfields++) {
            k->fields[k->nfields] = jid(d, bp_jget(d, p, "id"));
            k->values[k->nfields] = xdup(jstr(d, p, "value"));
        }
    }
    static const char *const keys[] = { "subscribe", "unsubscribe" };
    for (int s = 0; s < 2; s++) {
        if ((a = bp_jget(d, c, keys[s])) == BP_NONE) continue;
        k->lists = realloc(k->lists, (k->nlists + d->nodes[a].len + 1) * sizeof *k->lists);
        k->subscribe = realloc(k->subscribe, (k->nlists + d->nodes[a].len + 1) * sizeof *k->subscribe);
        p = a + 1;
        for (uint32_t i = 0; i < d->nodes[a].len; i++, p = d->nodes[p].next, k->nlists++) {
            k->lists[k->nlists] = jid(d, bp_jget(d, p, "listid"));
            k->subscribe[k->nlists] = s == 0;
        }
    }
}

static void free_contact(bcontact *k)
{
    free(k->email); free(k->first); free(k->last); free(k->phone);
    for (size_t i = 0; i < k->ntags; i++) free(k->tags[i]);
    for (size_t i = 0; i < k->nfields; i++) free(k->values[i]);
    free(k->tags); free(k->fields); free(k->values); free(k->lists); free(k->subscribe);
}

static int excluded(int account, const char *email)
{
    for (size_t i = 0; i < B.nexcluded; i++)
        if (B.excluded_account[i] == account && !strcasecmp(B.excluded[i], email)) return 1;
    return 0;
}

/* 1 when contact k is imported, 0 when it fails. */
static int import_contact(batch *b, const bcontact *k)
{
    if (excluded(b->account, k->email)) return 0;
    for (size_t i = 0; i < k->nfields; i++)
        if (crm_field_problem(k->fields[i], k->values[i])) return 0;
    int created;
    contact *c = upsert_contact(k->email, &created);
    set_contact(c, k->first, k->last, k->phone);
    for (size_t i = 0; i < k->nfields; i++) crm_set_field(b->account, c->id, k->fields[i], k->values[i]);
    for (size_t i = 0; i < k->ntags; i++) crm_tag_by_name(b->account, c->id, k->tags[i]);
    for (size_t i = 0; i < k->nlists; i++) crm_bulk_list(b->account, c->id, k->lists[i], k->subscribe[i]);
    if (created) bp_buf_printf(&b->success, "%s\"%ld\"", b->success.len ? "," : "", c->id);
    return 1;
}

static void finish(batch *b)
{
    b->status = b->ends_as;
    if (!strcmp(b->ends_as, "completed"))
        for (size_t i = 0; i < b->n; i++)
            if (!import_contact(b, &b->contacts[i])) put_str(&b->failure, b->failure.len ? "," : "", b->contacts[i].email);
    for (size_t i = 0; i < b->n; i++) free_contact(&b->contacts[i]);
    free(b->contacts);
    b->contacts = NULL;
    b->n = 0;
}

/* Imports whose delay is over (all of them with `all`). */
static void settle(int all)
{
    double t = now_ms();
    for (size_t i = 0; i < B.n; i++)
        if (!strcmp(B.batches[i].status, "active") && (all || t >= B.batches[i].due_ms)) finish(&B.batches[i]);
}

void bulk_settle(void) { settle(0); }

/* ---- the endpoints ---------------------------------------------------------------- */

static void fail(reply *r, int status, const char *message)
{
    json_begin(r, status);
    put_str(&r->body, "{\"success\":0,\"message\":", message);
    bp_buf_addc(&r->body, '}');
}

static void queue(reply *r, const bp_doc *d, uint32_t list, int account)
{
    B.batches = grow(B.batches, B.n, &B.cap, sizeof *B.batches);
    batch *b = &B.batches[B.n++];
    memset(b, 0, sizeof *b);
    unsigned long k = ++B.serial;
    snprintf(b->id, sizeof b->id, "%08lx-%04x-4%03x-8%03x-%012lx", k * 2654435761UL % 0xffffffffUL,
             (unsigned)(account & 0xffff), (unsigned)(k % 0xfff), (unsigned)((k >> 12) % 0xfff), k);
    b->account = account;
    b->due_ms = now_ms() + B.delay_ms;
    b->status = "active";
    b->ends_as = B.end_next ? B.end_next : "completed";
    B.end_next = NULL;
    b->n = d->nodes[list].len;
    b->contacts = calloc(b->n + 1, sizeof *b->contacts);
    b->seq = k;
    b->received_ms = now_ms();
    bp_buf_init(&b->success);
    bp_buf_init(&b->failure);
    bp_buf_init(&b->emails);
    uint32_t p = list + 1;
    for (size_t i = 0; i < b->n; i++, p = d->nodes[p].next) {
        keep_contact(&b->contacts[i], d, p);
        put_str(&b->emails, i ? "," : "", b->contacts[i].email);
    }
    json_begin(r, 200);
    bp_buf_printf(&r->body, "{\"success\":1,\"queued_contacts\":%zu,\"batchId\":\"%s\",\"message\":\"Contact import queued\"}",
                  b->n, b->id);
}

/* POST /api/3/import/bulk_import {"contacts":[…],"callback":{…}}.  The
 * callback is accepted and never called (the emulator calls nobody). */
static void post_import(reply *r, const req *q)
{
    if (q->len > MAX_PAYLOAD) { fail(r, 400, "The payload is larger than 400000 bytes"); return; }
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    uint32_t list = BP_NONE;
    if (bp_json_parse(&d, q->body ? q->body : "", q->len, NULL, &err) < 0 || d.nodes[0].type != BP_JOBJECT)
        fail(r, 400, "Invalid JSON");
    else if (!is_array(&d, list = bp_jget(&d, 0, "contacts")) || !d.nodes[list].len)
        fail(r, 400, "'contacts' is a required field: a list of contacts");
    else if (d.nodes[list].len > MAX_CONTACTS)
        fail(r, 400, "At most 250 contacts can be imported in one request");
    else if (!refuse_contacts(r, &d, list, q->account)) {
        window *w = d.nodes[list].len == 1 ? &B.singles[q->account] : &B.imports[q->account];
        int wait = window_take(w, now_ms());
        if (wait) {
            fail(r, 429, "Too many bulk imports: at most 100 a minute (20 of one contact)");
            snprintf(r->retry_after, sizeof r->retry_after, "%d", wait);
        } else {
            queue(r, &d, list, q->account);
            kill_cue("import");
        }
    }
    bp_doc_free(&d);
}

/* GET /api/3/import/info?batchId=: another account's import is not found. */
static void get_info(reply *r, const req *q)
{
    const char *id = query(q, "batchId");
    if (!id || !*id) { fail(r, 400, "'batchId' is a required field."); return; }
    batch *b = NULL;
    for (size_t i = 0; i < B.n && !b; i++)
        if (B.batches[i].account == q->account && !strcmp(B.batches[i].id, id)) b = &B.batches[i];
    if (!b) { fail(r, 404, "No import found with that batchId"); return; }
    json_begin(r, 200);
    if (B.status_false_next > 0) {   /* "asked too soon": the reference's boolean false */
        B.status_false_next--;
        bp_buf_adds(&r->body, "{\"status\":false,\"success\":[],\"failure\":[]}");
        return;
    }
    kill_cue("info");
    if (strcmp(b->status, "active") != 0) kill_cue("info_done");
    put_str(&r->body, "{\"status\":", b->status);
    bp_buf_adds(&r->body, ",\"success\":[");
    bp_buf_add(&r->body, b->success.data ? b->success.data : "", b->success.len);
    bp_buf_adds(&r->body, "],\"failure\":[");
    bp_buf_add(&r->body, b->failure.data ? b->failure.data : "", b->failure.len);
    bp_buf_adds(&r->body, "]}");
}

int bulk_api(reply *r, const req *q)
{
    if (!strcmp(q->path, "/api/3/import/bulk_import") && !strcmp(q->method, "POST")) post_import(r, q);
    else if (!strcmp(q->path, "/api/3/import/info") && !strcmp(q->method, "GET")) get_info(r, q);
    else return 0;
    return 1;
}

/* ---- control, state ---------------------------------------------------------------- */

/* POST /_emulator/imports/complete: every queued import finishes now.
 * POST /_emulator/exclusions {"account":N,"email":E}: the account's Email
 * Exclusions list gets E (an import then fails that contact). */
int bulk_control(reply *r, const req *q)
{
    if (strcmp(q->method, "POST") != 0) return 0;
    if (!strcmp(q->path, "/_emulator/imports/complete")) {
        settle(1);
        json_reply(r, 200, "{\"ok\":true}");
        return 1;
    }
    if (strcmp(q->path, "/_emulator/exclusions") != 0) return 0;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *email = NULL, *acct = NULL;
    if (bp_json_parse(&d, q->body ? q->body : "", q->len, NULL, &err) == 0) {
        email = jstr(&d, 0, "email");
        acct = jstr(&d, 0, "account");
    }
    int k = acct ? atoi(acct) : 0;
    if (!email || !*email || k < 0 || k >= B.naccounts) json_reply(r, 400, "{\"error\":\"need email and a known account\"}");
    else {
        B.excluded = grow(B.excluded, B.nexcluded, &B.capexcluded, sizeof *B.excluded);
        B.excluded_account = realloc(B.excluded_account, B.capexcluded * sizeof *B.excluded_account);
        B.excluded_account[B.nexcluded] = k;
        B.excluded[B.nexcluded++] = xdup(email);
        json_reply(r, 200, "{\"ok\":true}");
    }
    bp_doc_free(&d);
    return 1;
}

/* /_emulator/faults members: import_delay_ms, imports_per_minute,
 * import_ends ("failed" | "interrupted": the next import ends so),
 * import_status_false (the next N info answers say status false). */
void bulk_faults(const bp_doc *d)
{
    const char *v;
    if ((v = jstr(d, 0, "import_delay_ms"))) B.delay_ms = atoi(v);
    if ((v = jstr(d, 0, "imports_per_minute"))) set_per_minute(atoi(v));
    if ((v = jstr(d, 0, "import_status_false"))) B.status_false_next = atoi(v);
    if ((v = jstr(d, 0, "import_ends")))
        B.end_next = !strcmp(v, "failed") ? "failed" : !strcmp(v, "interrupted") ? "interrupted" : NULL;
    if ((v = jstr(d, 0, "kill_pid"))) {
        const char *on = jstr(d, 0, "kill_on"), *after = jstr(d, 0, "kill_after"), *delay = jstr(d, 0, "kill_delay_ms");
        B.kill.pid = atoi(v);
        snprintf(B.kill.on, sizeof B.kill.on, "%s", on ? on : "now");
        B.kill.after = after ? atoi(after) : 1;
        B.kill.delay_ms = delay ? atoi(delay) : 0;
        kill_cue("now");
    }
}

/* "imports":[{"batchId","status","success":[…],"failure":[…]}] of one account. */
void bulk_dump(bp_buf *b, int account)
{
    int first = 1;
    bp_buf_adds(b, "\"imports\":[");
    for (size_t i = 0; i < B.n; i++) {
        const batch *x = &B.batches[i];
        if (x->account != account) continue;
        put_str(b, first ? "{\"batchId\":" : ",{\"batchId\":", x->id);
        put_str(b, ",\"status\":", x->status);
        bp_buf_printf(b, ",\"seq\":%lu,\"received_ms\":%.1f,\"emails\":[", x->seq, x->received_ms);
        bp_buf_add(b, x->emails.data ? x->emails.data : "", x->emails.len);
        bp_buf_adds(b, "],\"success\":[");
        bp_buf_add(b, x->success.data ? x->success.data : "", x->success.len);
        bp_buf_adds(b, "],\"failure\":[");
        bp_buf_add(b, x->failure.data ? x->failure.data : "", x->failure.len);
        bp_buf_adds(b, "]}");
        first = 0;
    }
    bp_buf_adds(b, "],\"kills\":[");
    for (size_t i = 0; i < B.nkills; i++)
        bp_buf_printf(b, "%s{\"pid\":%d,\"on\":\"%s\",\"at_ms\":%.1f,\"imports\":%lu}", i ? "," : "", B.kills[i].pid,
                      B.kills[i].on, B.kills[i].at_ms, B.kills[i].imports);
    bp_buf_addc(b, ']');
}

void bulk_reset(void)
{
    for (size_t i = 0; i < B.n; i++) {
        for (size_t k = 0; k < B.batches[i].n; k++) free_contact(&B.batches[i].contacts[k]);
        free(B.batches[i].contacts);
        bp_buf_free(&B.batches[i].success);
        bp_buf_free(&B.batches[i].failure);
        bp_buf_free(&B.batches[i].emails);
    }
    B.n = 0;
    B.nkills = 0;
    memset(&B.kill, 0, sizeof B.kill);
    for (size_t i = 0; i < B.nexcluded; i++) free(B.excluded[i]);
    B.nexcluded = 0;
    B.end_next = NULL;
    B.status_false_next = 0;
    B.delay_ms = B.start_delay_ms;
    set_per_minute(B.start_per_minute);
}

void bulk_init(int naccounts, int delay_ms, int per_minute)
{
    B.naccounts = naccounts;
    B.imports = calloc((size_t)naccounts, sizeof *B.imports);
    B.singles = calloc((size_t)naccounts, sizeof *B.singles);
    B.delay_ms = B.start_delay_ms = delay_ms;
    B.start_per_minute = per_minute;
    set_per_minute(per_minute);
}
