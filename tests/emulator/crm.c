/*
 * crm.c — the emulator's contact resources, per account: lists and list
 * status (contactLists), tags and contactTags, custom fields and their
 * values.  Answers follow ActiveCampaign's API reference
 * (developers.activecampaign.com/reference/...); blueprints/activecampaign/
 * answers.yaml holds the same shapes with the page each comes from.
 *
 * What a blueprint must cope with, as ActiveCampaign does it:
 *   - POST /contactLists and /fieldValues answer 200 (create or update
 *     alike); POST /tags and /contactTags answer 201.
 *   - A tag name is unique per tag type, case-insensitively (MySQL key
 *     "typetag"): creating "VIP" when "vip" exists is refused with 422 and
 *     the database's message, so two deliveries racing to create a tag get
 *     one tag and one refusal (look the tag up again), never two tags.
 *   - ?search= on /tags matches names that CONTAIN the text (any case):
 *     compare names yourself, or use filters[search][eq] or
 *     orders[search]=weight (the same name first).
 *   - Collections page with limit (default 20, at most 100) and offset, and
 *     say how many there are in meta.total, a string.  The seeded custom
 *     fields are more than 20, so a client that does not page misses some.
 *   - Custom field values are checked against the field's type: date
 *     YYYY-MM-DD, datetime ISO 8601, dropdown/radio one option, checkbox/
 *     listbox "||a||b||" of options.  Contact fields have no number type.
 *
 * Contacts themselves are emulator.c's (one set for every account); these
 * resources refer to them by id.  A contact sync's fieldValues land here
 * too (crm_check_values, crm_set_values).
 */
#include "emulator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct aclist { long id; char *name, *stringid; char cdate[32]; } aclist;
/* sdate: subscribed; udate: unsubscribed ("" while never); sourceid as sent
 * (4: a deliberate re-subscription), or 0 */
typedef struct membership {
    long id, contact, list; long long status, sourceid;
    char sdate[32], udate[32], created[32], updated[32];
} membership;
typedef struct tag { long id; char *name, *type, *description; char cdate[32]; } tag;
typedef struct ctag { long id, contact, tag; char cdate[32]; } ctag;
typedef struct fvalue { long id, contact, field; char *value; char cdate[32], udate[32]; } fvalue;

/* An index of (contact, list/tag/field) pairs into one of an account's
 * arrays of memberships, contact tags and field values (append-only until
 * a reset), so that finding a contact's entry does not scan every
 * contact's: without it, finishing a bulk import of 250 contacts in an
 * account of 10,000 held the emulator's one thread for ~40 ms, and the
 * requests arriving meanwhile bunched into one second of its rate limit. */
typedef struct pslot { long contact, other; size_t at; } pslot;   /* at: entry index + 1 (0: empty) */
typedef struct pairs { pslot *s; size_t cap, n; } pairs;

typedef struct crm {
    aclist *lists; size_t nlists, caplists;
    membership *members; size_t nmembers, capmembers;
    tag *tags; size_t ntags, captags;
    ctag *ctags; size_t nctags, capctags;
    fvalue *values; size_t nvalues, capvalues;
    pairs member_ix, ctag_ix, value_ix;
} crm;

static size_t pair_hash(long contact, long other)
{
    unsigned long long h = (unsigned long long)contact * 0x9E3779B97F4A7C15ULL ^ (unsigned long long)other * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)(h ^ (h >> 31));
}

/* The index of (contact, other) in its array, or -1. */
static long pairs_find(const pairs *p, long contact, long other)
{
    if (!p->cap) return -1;
    for (size_t i = pair_hash(contact, other) & (p->cap - 1);; i = (i + 1) & (p->cap - 1)) {
        if (!p->s[i].at) return -1;
        if (p->s[i].contact == contact && p->s[i].other == other) return (long)p->s[i].at - 1;
    }
}

static void pairs_add(pairs *p, long contact, long other, size_t at)
{
    if (2 * (p->n + 1) > p->cap) {   /* at most half full */
        pairs old = *p;
        p->cap = p->cap ? p->cap * 2 : 1024;
        p->n = 0;
        p->s = calloc(p->cap, sizeof *p->s);
        for (size_t i = 0; i < old.cap; i++) if (old.s[i].at) pairs_add(p, old.s[i].contact, old.s[i].other, old.s[i].at - 1);
        free(old.s);
    }
    size_t i = pair_hash(contact, other) & (p->cap - 1);
    while (p->s[i].at) i = (i + 1) & (p->cap - 1);
    p->s[i] = (pslot){ contact, other, at + 1 };
    p->n++;
}

static void pairs_clear(pairs *p)
{
    free(p->s);
    memset(p, 0, sizeof *p);
}

static crm *C;
static int NC;

/* Seeded things carry a fixed date, so answers do not depend on the start. */
static const char SEEDED[] = "2024-01-02T10:00:00-06:00";

/* The custom fields every account has (ids are positions + 1). */
typedef struct field { const char *title, *type, *perstag; const char *options[6]; } field;

static const field FIELDS[] = {
    { "Birthday", "date", "BIRTHDAY", { NULL } },
    { "Plan", "dropdown", "PLAN", { "Free", "Pro", NULL } },
    { "Interests", "checkbox", "INTERESTS", { "Shoes", "Hats", "Bags", NULL } },
    { "Lifetime Value", "text", "LIFETIME_VALUE", { NULL } },   /* contact fields have no number type */
    { "Signup Date", "datetime", "SIGNUP_DATE", { NULL } },
    { "Company Size", "text", "COMPANY_SIZE", { NULL } },
    { "Marketing Consent", "hidden", "MARKETING_CONSENT", { NULL } },   /* 7, as the consent_field_id examples */
    { "Favorite Color", "radio", "FAVORITE_COLOR", { "Red", "Green", "Blue", NULL } },
    { "Sizes", "listbox", "SIZES", { "S", "M", "L", "XL", NULL } },
    { "Notes", "textarea", "NOTES", { NULL } },
    { "Job Title", "text", "JOB_TITLE", { NULL } },
    { "Department", "text", "DEPARTMENT", { NULL } },
    { "City", "text", "CITY", { NULL } },
    { "Country", "text", "COUNTRY", { NULL } },
    { "Timezone", "text", "TIMEZONE", { NULL } },
    { "Referral Source", "text", "REFERRAL_SOURCE", { NULL } },
    { "Account Manager", "text", "ACCOUNT_MANAGER", { NULL } },
    { "Preferred Language", "dropdown", "PREFERRED_LANGUAGE", { "English", "French", "German", "Spanish", NULL } },
    { "Newsletter Topics", "checkbox", "NEWSLETTER_TOPICS", { "News", "Offers", "Events", NULL } },
    { "External ID", "hidden", "EXTERNAL_ID", { NULL } },
    /* past the first page of 20: a client that does not page never sees these */
    { "Last Order Date", "date", "LAST_ORDER_DATE", { NULL } },
    { "Loyalty Tier", "dropdown", "LOYALTY_TIER", { "Bronze", "Silver", "Gold", NULL } },
    { "Renewal Date", "datetime", "RENEWAL_DATE", { NULL } },
    { "Anniversary", "date", "ANNIVERSARY", { NULL } },
};
#define NFIELDS (sizeof FIELDS / sizeof *FIELDS)

static const field *find_field(long id) { return id >= 1 && (size_t)id <= NFIELDS ? &FIELDS[id - 1] : NULL; }

/* Field options are numbered across all fields, in table order. */
static long first_option_id(size_t fi)
{
    long id = 1;
    for (size_t i = 0; i < fi; i++)
        for (int k = 0; FIELDS[i].options[k]; k++) id++;
    return id;
}

/* ---- lists ------------------------------------------------------------------------- */

static aclist *add_list(crm *c, const char *name)
{
    c->lists = grow(c->lists, c->nlists, &c->caplists, sizeof *c->lists);
    aclist *l = &c->lists[c->nlists++];
    l->id = (long)c->nlists;
    l->name = xdup(name);
    l->stringid = xdup(name);   /* ActiveCampaign's slug: lower case, dashes */
    lower(l->stringid);
    for (char *p = l->stringid; *p; p++) if (*p == ' ') *p = '-';
    snprintf(l->cdate, sizeof l->cdate, "%s", SEEDED);
    return l;
}

static aclist *find_list(crm *c, long id) { return id >= 1 && (size_t)id <= c->nlists ? &c->lists[id - 1] : NULL; }

static void seed(crm *c)
{
    add_list(c, "Master Contact List");
    add_list(c, "Newsletter");
}

static void write_list(bp_buf *b, const aclist *l)
{
    put_str(b, "{\"stringid\":", l->stringid);
    put_str(b, ",\"userid\":", "1");
    put_str(b, ",\"name\":", l->name);
    put_str(b, ",\"cdate\":", l->cdate);
    bp_buf_printf(b, ",\"links\":{\"contactGoalLists\":\"/api/3/lists/%ld/contactGoalLists\"}", l->id);
    put_id(b, ",\"id\":", l->id);
    put_str(b, ",\"user\":", "1");
    bp_buf_addc(b, '}');
}

static int contains_nocase(const char *hay, const char *needle) { return strcasestr(hay, needle) != NULL; }

/* GET /api/3/lists[?filters[name]=N | filters[name][eq]=N]: reference
 * "retrieve-all-lists".  filters[name] (or [contains]) matches part of the
 * name, [eq] all of it, any case. */
static void get_lists(reply *r, const req *q, crm *c)
{
    size_t off, lim, total = 0, shown = 0;
    const char *part = query(q, "filters[name]"), *eq = query(q, "filters[name][eq]");
    if (!part) part = query(q, "filters[name][contains]");
    paging(q, &off, &lim);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"lists\":[");
    for (size_t i = 0; i < c->nlists; i++) {
        const char *name = c->lists[i].name;
        if ((part && !contains_nocase(name, part)) || (eq && strcasecmp(name, eq) != 0)) continue;
        if (total++ < off || shown >= lim) continue;
        if (shown++) bp_buf_addc(&r->body, ',');
        write_list(&r->body, &c->lists[i]);
    }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, total);
    bp_buf_addc(&r->body, '}');
}

static membership *find_membership(crm *c, long cid, long lid)
{
    long i = pairs_find(&c->member_ix, cid, lid);
    return i < 0 ? NULL : &c->members[i];
}

/* updated_timestamp's shape, "2021-05-12 11:10:06": the date without its
 * zone (the reference does not say which zone it is in). */
static void plain_time(char out[32], const char *iso)
{
    snprintf(out, 32, "%.10s %.8s", iso, strlen(iso) > 11 ? iso + 11 : "00:00:00");
}

/* Contact cid's status on list lid becomes `status` at `when` (ISO 8601),
 * as through the API or as the contact does it from an email's link. */
static membership *set_status(crm *c, long cid, long lid, long long status, long long sourceid, const char *when)
{
    membership *m = find_membership(c, cid, lid);
    if (!m) {
        c->members = grow(c->members, c->nmembers, &c->capmembers, sizeof *c->members);
        pairs_add(&c->member_ix, cid, lid, c->nmembers);
        m = &c->members[c->nmembers++];
        memset(m, 0, sizeof *m);
        m->id = (long)c->nmembers;
        m->contact = cid;
        m->list = lid;
        plain_time(m->created, when);
    }
    if (status == 1 && m->status != 1) snprintf(m->sdate, sizeof m->sdate, "%s", when);
    if (status == 2 && m->status != 2) snprintf(m->udate, sizeof m->udate, "%s", when);
    m->status = status;
    m->sourceid = sourceid;
    plain_time(m->updated, when);
    return m;
}

/* A contactList as GET /contacts/{id}/contactLists shows it (reference
 * "retrieve-contact-list-memberships"): strings, null for no date. */
static void write_membership(bp_buf *b, const membership *m)
{
    put_id(b, "{\"contact\":", m->contact);
    put_id(b, ",\"list\":", m->list);
    bp_buf_adds(b, ",\"form\":null,\"seriesid\":\"0\"");
    if (m->sdate[0]) put_str(b, ",\"sdate\":", m->sdate); else bp_buf_adds(b, ",\"sdate\":null");
    if (m->udate[0]) put_str(b, ",\"udate\":", m->udate); else bp_buf_adds(b, ",\"udate\":null");
    bp_buf_printf(b, ",\"status\":\"%lld\",\"responder\":\"1\",\"sync\":\"0\",\"unsubreason\":null", m->status);
    bp_buf_printf(b, ",\"sourceid\":\"%lld\"", m->sourceid);
    put_str(b, ",\"created_timestamp\":", m->created);
    put_str(b, ",\"updated_timestamp\":", m->updated);
    bp_buf_printf(b, ",\"links\":{\"list\":\"/api/3/contactLists/%ld/list\",\"contact\":\"/api/3/contactLists/%ld/contact\"}",
                  m->id, m->id);
    put_id(b, ",\"id\":", m->id);
    bp_buf_addc(b, '}');
}

/* GET /api/3/contacts/{id}/contactLists: every list status of the contact. */
void crm_contact_lists(reply *r, int account, long cid)
{
    crm *c = &C[account];
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"contactLists\":[");
    int first = 1;
    for (size_t i = 0; i < c->nmembers; i++) {
        if (c->members[i].contact != cid) continue;
        if (!first) bp_buf_addc(&r->body, ',');
        write_membership(&r->body, &c->members[i]);
        first = 0;
    }
    bp_buf_adds(&r->body, "]}");
}

/* POST /api/3/contactLists {"contactList":{"list","contact","status"[,"sourceid"]}}:
 * reference "update-list-status-for-contact".  1 subscribes, 2
 * unsubscribes; the same contact and list again changes the status of the
 * one membership.  As documented, status 1 re-subscribes a contact who
 * unsubscribed (sourceid 4 says it is deliberate; it is recorded, not
 * required).  200 either way, with the contact and the contactList. */
static void post_contact_list(reply *r, crm *c, const bp_doc *d, uint32_t o)
{
    long cid = jid(d, bp_jget(d, o, "contact")), lid = jid(d, bp_jget(d, o, "list"));
    long long status = 0, sourceid = 0;
    int st = jinteger(d, bp_jget(d, o, "status"), &status);
    uint32_t src = bp_jget(d, o, "sourceid");
    if (!cid) { missing_reply(r, "contact"); return; }
    if (!lid) { missing_reply(r, "list"); return; }
    if (st == 0) { missing_reply(r, "status"); return; }
    if (st < 0 || (status != 1 && status != 2)) {
        error_reply(r, 422, "Status must be 1 (active) or 2 (unsubscribed).", "", "invalid", "/data/attributes/status");
        return;
    }
    if (src != BP_NONE && jinteger(d, src, &sourceid) < 0) {
        error_reply(r, 422, "sourceid must be an integer.", "", "invalid", "/data/attributes/sourceid");
        return;
    }
    contact *k = find_contact_id(cid);
    if (!k) { no_result(r, "Subscriber", cid); return; }
    if (!find_list(c, lid)) { no_result(r, "List", lid); return; }
    char now[32];
    now_iso(now);
    membership *m = set_status(c, cid, lid, status, sourceid, now);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"contacts\":[");
    write_contact(&r->body, k);
    put_id(&r->body, "],\"contactList\":{\"contact\":", cid);
    put_id(&r->body, ",\"list\":", lid);
    bp_buf_printf(&r->body, ",\"status\":%lld", status);
    put_str(&r->body, ",\"sdate\":", m->sdate);
    bp_buf_printf(&r->body, ",\"links\":{\"list\":\"/api/3/contactLists/%ld/list\",\"contact\":\"/api/3/contactLists/%ld/contact\"}",
                  m->id, m->id);
    put_id(&r->body, ",\"id\":", m->id);
    bp_buf_adds(&r->body, "}}");
}

/* ---- tags -------------------------------------------------------------------------- */

static void write_tag(bp_buf *b, const tag *t)
{
    put_str(b, "{\"tagType\":", t->type);
    put_str(b, ",\"tag\":", t->name);
    put_str(b, ",\"description\":", t->description);
    put_str(b, ",\"cdate\":", t->cdate);
    bp_buf_printf(b, ",\"links\":{\"contactGoalTags\":\"/api/3/tags/%ld/contactGoalTags\"}", t->id);
    put_id(b, ",\"id\":", t->id);
    bp_buf_addc(b, '}');
}

static tag *find_tag(crm *c, long id) { return id >= 1 && (size_t)id <= c->ntags ? &c->tags[id - 1] : NULL; }

/* Where tag name n stands for ?search / filters[search][op]: -1 not
 * matched, else its rank for orders[search]=weight (0 the same name, 1
 * starting with it, 2 containing it). */
static int tag_rank(const char *n, const req *q)
{
    const char *contains = query(q, "search"), *eq = query(q, "filters[search][eq]");
    const char *starts = query(q, "filters[search][starts_with]");
    if (!contains) contains = query(q, "filters[search][contains]");
    if ((eq && strcasecmp(n, eq) != 0) || (starts && strncasecmp(n, starts, strlen(starts)) != 0) ||
        (contains && !contains_nocase(n, contains)))
        return -1;
    const char *s = contains ? contains : eq ? eq : starts;
    if (!s || !strcasecmp(n, s)) return 0;
    return strncasecmp(n, s, strlen(s)) == 0 ? 1 : 2;
}

/* GET /api/3/tags[?search=S]: reference "retrieve-all-tags".  search
 * matches names containing S (as documented: "contains" is assumed);
 * filters[search][eq|contains|starts_with] narrow it; orders[search]=weight
 * puts the same name first, then names starting with it. */
static void get_tags(reply *r, const req *q, crm *c)
{
    size_t off, lim, total = 0, shown = 0;
    const char *order = query(q, "orders[search]");
    int passes = order && !strcmp(order, "weight") ? 3 : 1;
    paging(q, &off, &lim);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"tags\":[");
    for (int pass = 0; pass < passes; pass++)
        for (size_t i = 0; i < c->ntags; i++) {
            int rank = tag_rank(c->tags[i].name, q);
            if (rank < 0 || (passes > 1 && rank != pass)) continue;
            if (total++ < off || shown >= lim) continue;
            if (shown++) bp_buf_addc(&r->body, ',');
            write_tag(&r->body, &c->tags[i]);
        }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, total);
    bp_buf_addc(&r->body, '}');
}

/* POST /api/3/tags {"tag":{"tag","tagType","description"}}: reference
 * "create-a-new-tag", 201.  Commas are prohibited.  An existing name of the
 * same type (any case) is refused as ActiveCampaign refuses it: its
 * database's unique key "typetag" (tagType + tag) answers 422. */
static void post_tag(reply *r, crm *c, const bp_doc *d, uint32_t o)
{
    const char *name = jstr(d, o, "tag"), *type = jstr(d, o, "tagType"), *desc = jstr(d, o, "description");
    if (!name || !*name) { missing_reply(r, "tag"); return; }
    if (strchr(name, ',')) {
        error_reply(r, 422, "Tag names cannot contain commas.", "", "invalid", "/data/attributes/tag");
        return;
    }
    if (!type) type = "contact";
    if (strcmp(type, "contact") != 0 && strcmp(type, "template") != 0) {
        error_reply(r, 422, "tagType must be contact or template.", "", "invalid", "/data/attributes/tagType");
        return;
    }
    for (size_t i = 0; i < c->ntags; i++)
        if (!strcasecmp(c->tags[i].name, name) && !strcmp(c->tags[i].type, type)) {
            bp_buf msg;
            bp_buf_init(&msg);
            bp_buf_printf(&msg, "Duplicate entry '%s-%s' for key 'typetag'", type, name);
            json_begin(r, 422);
            put_str(&r->body, "{\"message\":\"Could not process request\",\"error\":", msg.data);
            bp_buf_addc(&r->body, '}');
            bp_buf_free(&msg);
            return;
        }
    c->tags = grow(c->tags, c->ntags, &c->captags, sizeof *c->tags);
    tag *t = &c->tags[c->ntags++];
    t->id = (long)c->ntags;
    t->name = xdup(name);
    t->type = xdup(type);
    t->description = xdup(desc);
    now_iso(t->cdate);
    json_begin(r, 201);
    bp_buf_adds(&r->body, "{\"tag\":");
    write_tag(&r->body, t);
    bp_buf_addc(&r->body, '}');
}

/* Its own 404 shape, as documented for contactTags. */
static void ctag_not_found(reply *r, const char *detail)
{
    json_begin(r, 404);
    put_str(&r->body, "{\"errors\":[{\"status\":404,\"title\":\"Not Found\",\"detail\":", detail);
    bp_buf_adds(&r->body, "}]}");
}

/* POST /api/3/contactTags {"contactTag":{"contact","tag"}}: reference
 * "create-contact-tag", 201.  A tag the contact already has is not added
 * twice: the answer is the existing contactTag, again 201. */
static void post_contact_tag(reply *r, crm *c, const bp_doc *d, uint32_t o)
{
    long cid = jid(d, bp_jget(d, o, "contact")), tid = jid(d, bp_jget(d, o, "tag"));
    if (!cid) { missing_reply(r, "contact"); return; }
    if (!tid) { missing_reply(r, "tag"); return; }
    if (!find_contact_id(cid)) { ctag_not_found(r, "Contact not found"); return; }
    if (!find_tag(c, tid)) { ctag_not_found(r, "Tag not found"); return; }
    long at = pairs_find(&c->ctag_ix, cid, tid);
    ctag *ct = at < 0 ? NULL : &c->ctags[at];
    if (!ct) {
        c->ctags = grow(c->ctags, c->nctags, &c->capctags, sizeof *c->ctags);
        pairs_add(&c->ctag_ix, cid, tid, c->nctags);
        ct = &c->ctags[c->nctags++];
        ct->id = (long)c->nctags;
        ct->contact = cid;
        ct->tag = tid;
        now_iso(ct->cdate);
    }
    json_begin(r, 201);
    put_str(&r->body, "{\"contactTag\":{\"cdate\":", ct->cdate);
    put_id(&r->body, ",\"contact\":", cid);
    put_id(&r->body, ",\"id\":", ct->id);
    bp_buf_printf(&r->body, ",\"links\":{\"contact\":\"/api/3/contactTags/%ld/contact\",\"tag\":\"/api/3/contactTags/%ld/tag\"}",
                  ct->id, ct->id);
    put_id(&r->body, ",\"tag\":", tid);
    bp_buf_adds(&r->body, "}}");
}

/* ---- custom fields ----------------------------------------------------------------- */

static void write_field(bp_buf *b, size_t fi)
{
    const field *f = &FIELDS[fi];
    long opt = first_option_id(fi);
    put_str(b, "{\"title\":", f->title);
    bp_buf_adds(b, ",\"descript\":null");
    put_str(b, ",\"type\":", f->type);
    bp_buf_adds(b, ",\"isrequired\":\"0\"");
    put_str(b, ",\"perstag\":", f->perstag);
    bp_buf_printf(b, ",\"defval\":null,\"visible\":\"1\",\"service\":\"\",\"ordernum\":\"%zu\"", fi + 1);
    put_str(b, ",\"cdate\":", SEEDED);
    put_str(b, ",\"udate\":", SEEDED);
    bp_buf_adds(b, ",\"options\":[");
    for (int k = 0; f->options[k]; k++) bp_buf_printf(b, "%s\"%ld\"", k ? "," : "", opt + k);
    bp_buf_printf(b, "],\"relations\":[],\"links\":{\"options\":\"/api/3/fields/%zu/options\","
                     "\"relations\":\"/api/3/fields/%zu/relations\"}", fi + 1, fi + 1);
    put_id(b, ",\"id\":", (long)(fi + 1));
    bp_buf_addc(b, '}');
}

static void write_field_options(bp_buf *b, size_t fi, int *first)
{
    const field *f = &FIELDS[fi];
    long opt = first_option_id(fi);
    for (int k = 0; f->options[k]; k++) {
        if (!*first) bp_buf_addc(b, ',');
        *first = 0;
        put_id(b, "{\"field\":", (long)(fi + 1));
        bp_buf_printf(b, ",\"orderid\":\"%d\"", k + 1);
        put_str(b, ",\"value\":", f->options[k]);
        put_str(b, ",\"label\":", f->options[k]);
        bp_buf_adds(b, ",\"isdefault\":\"0\"");
        put_id(b, ",\"id\":", opt + k);
        bp_buf_addc(b, '}');
    }
}

/* GET /api/3/fields: reference "retrieve-fields".  The options of the
 * fields on this page come beside them in fieldOptions. */
static void get_fields(reply *r, const req *q)
{
    size_t off, lim;
    paging(q, &off, &lim);
    size_t end = off + lim < NFIELDS ? off + lim : NFIELDS;
    int first = 1;
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"fieldOptions\":[");
    for (size_t i = off; i < end; i++) write_field_options(&r->body, i, &first);
    bp_buf_adds(&r->body, "],\"fieldRels\":[],\"fields\":[");
    for (size_t i = off; i < end; i++) {
        if (i > off) bp_buf_addc(&r->body, ',');
        write_field(&r->body, i);
    }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, NFIELDS);
    bp_buf_addc(&r->body, '}');
}

static int digits(const char *s, int n)
{
    for (int i = 0; i < n; i++) if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

static int num(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
    return v;
}

/* YYYY-MM-DD at the start of s, a real calendar day. */
static int date_prefix(const char *s)
{
    static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (!digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' || !digits(s + 8, 2)) return 0;
    int y = num(s, 4), m = num(s + 5, 2), d = num(s + 8, 2);
    if (m < 1 || m > 12 || d < 1) return 0;
    int leap = m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0);
    return d <= mdays[m - 1] + leap;
}

/* ISO 8601: YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM|+HHMM|+HH]. */
static int valid_datetime(const char *s)
{
    if (!date_prefix(s) || (s[10] != 'T' && s[10] != ' ')) return 0;
    const char *t = s + 11;
    if (!digits(t, 2) || t[2] != ':' || !digits(t + 3, 2) || num(t, 2) > 23 || num(t + 3, 2) > 59) return 0;
    t += 5;
    if (*t == ':') {
        if (!digits(t + 1, 2) || num(t + 1, 2) > 59) return 0;
        t += 3;
    }
    if (!*t || !strcmp(t, "Z")) return 1;
    if (*t != '+' && *t != '-') return 0;
    t++;
    if (!digits(t, 2)) return 0;
    if (t[2] == ':') return digits(t + 3, 2) && !t[5];
    return !t[2] || (digits(t + 2, 2) && !t[4]);
}

static int is_option(const field *f, const char *v, size_t n)
{
    for (int k = 0; f->options[k]; k++)
        if (strlen(f->options[k]) == n && !strncmp(f->options[k], v, n)) return 1;
    return 0;
}

/* "||a||b||": each part one of the field's options. */
static int valid_multi(const field *f, const char *v)
{
    size_t len = strlen(v);
    if (len < 5 || strncmp(v, "||", 2) != 0 || strcmp(v + len - 2, "||") != 0) return 0;
    const char *p = v + 2, *end = v + len - 2;
    while (p < end) {
        const char *sep = strstr(p, "||");
        if (sep == p || !is_option(f, p, (size_t)(sep - p))) return 0;
        p = sep + 2;
    }
    return 1;
}

/* NULL when value fits the field's type, else what was expected.  An
 * empty value clears the field and always fits. */
static const char *value_problem(const field *f, const char *v)
{
    const char *t = f->type;
    if (!*v) return NULL;
    if (!strcmp(t, "date")) return strlen(v) == 10 && date_prefix(v) ? NULL : "a date YYYY-MM-DD";
    if (!strcmp(t, "datetime")) return valid_datetime(v) ? NULL : "an ISO 8601 date and time (2020-05-19T02:45:00-05:00)";
    if (!strcmp(t, "dropdown") || !strcmp(t, "radio")) return is_option(f, v, strlen(v)) ? NULL : "one of the field's options";
    if (!strcmp(t, "checkbox") || !strcmp(t, "listbox"))
        return valid_multi(f, v) ? NULL : "options as ||Option 1||Option 2||";
    return NULL;
}

static void write_field_value(bp_buf *b, const fvalue *v)
{
    put_id(b, "{\"contact\":", v->contact);
    put_id(b, ",\"field\":", v->field);
    put_str(b, ",\"value\":", v->value);
    put_str(b, ",\"cdate\":", v->cdate);
    put_str(b, ",\"udate\":", v->udate);
    bp_buf_printf(b, ",\"links\":{\"owner\":\"/api/3/fieldValues/%ld/owner\",\"field\":\"/api/3/fieldValues/%ld/field\"}",
                  v->id, v->id);
    put_id(b, ",\"id\":", v->id);
    put_id(b, ",\"owner\":", v->contact);
    bp_buf_addc(b, '}');
}

/* 0 when value fits field fid, else -1 with 404 (no such field) or 422
 * answered. */
static int check_value(reply *r, long fid, const char *value)
{
    const field *f = find_field(fid);
    if (!f) { no_result(r, "Field", fid); return -1; }
    const char *problem = value_problem(f, value);
    if (!problem) return 0;
    char detail[256];
    snprintf(detail, sizeof detail, "%s is a %s field: expected %s", f->title, f->type, problem);
    error_reply(r, 422, "Field value is invalid for the field's type.", detail, "field_invalid", "/data/attributes/value");
    return -1;
}

/* The contact's one value for the field, created or replaced. */
static fvalue *set_value(crm *c, long cid, long fid, const char *value)
{
    long at = pairs_find(&c->value_ix, cid, fid);
    fvalue *v = at < 0 ? NULL : &c->values[at];
    if (!v) {
        c->values = grow(c->values, c->nvalues, &c->capvalues, sizeof *c->values);
        pairs_add(&c->value_ix, cid, fid, c->nvalues);
        v = &c->values[c->nvalues++];
        memset(v, 0, sizeof *v);
        v->id = (long)c->nvalues;
        v->contact = cid;
        v->field = fid;
        now_iso(v->cdate);
    }
    free(v->value);
    v->value = xdup(value);
    now_iso(v->udate);
    return v;
}

/* POST /api/3/fieldValues {"fieldValue":{"contact","field","value"}}:
 * reference "create-fieldvalue", 200.  It sets the contact's value for the
 * field (creating or replacing it); a value that does not fit the field's
 * type is 422. */
static void post_field_value(reply *r, crm *c, const bp_doc *d, uint32_t o)
{
    long cid = jid(d, bp_jget(d, o, "contact")), fid = jid(d, bp_jget(d, o, "field"));
    const char *value = jstr(d, o, "value");
    if (!cid) { missing_reply(r, "contact"); return; }
    if (!fid) { missing_reply(r, "field"); return; }
    if (!value) { missing_reply(r, "value"); return; }
    contact *k = find_contact_id(cid);
    if (!k) { no_result(r, "Subscriber", cid); return; }
    if (check_value(r, fid, value) < 0) return;
    fvalue *v = set_value(c, cid, fid, value);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"contacts\":[");
    write_contact(&r->body, k);
    bp_buf_adds(&r->body, "],\"fieldValue\":");
    write_field_value(&r->body, v);
    bp_buf_addc(&r->body, '}');
}

/* contact.fieldValues of a contact sync or create, [{"field","value"}]
 * (reference "sync-a-contacts-data"): checked like POST /fieldValues
 * before the contact is touched.  0, or -1 with the answer made. */
int crm_check_values(reply *r, const bp_doc *d, uint32_t list)
{
    if (list == BP_NONE || d->nodes[list].type != BP_JARRAY) return 0;
    uint32_t p = list + 1;
    for (uint32_t i = 0; i < d->nodes[list].len; i++, p = d->nodes[p].next) {
        long fid = jid(d, bp_jget(d, p, "field"));
        const char *value = jstr(d, p, "value");
        if (!fid) { missing_reply(r, "field"); return -1; }
        if (!value) { missing_reply(r, "value"); return -1; }
        if (check_value(r, fid, value) < 0) return -1;
    }
    return 0;
}

/* Stores them for contact cid and writes each fieldValue, comma
 * separated: the answer's "fieldValues". */
void crm_set_values(bp_buf *b, int account, long cid, const bp_doc *d, uint32_t list)
{
    if (list == BP_NONE || d->nodes[list].type != BP_JARRAY) return;
    uint32_t p = list + 1;
    for (uint32_t i = 0; i < d->nodes[list].len; i++, p = d->nodes[p].next) {
        if (i) bp_buf_addc(b, ',');
        write_field_value(b, set_value(&C[account], cid, jid(d, bp_jget(d, p, "field")), jstr(d, p, "value")));
    }
}

/* ---- what a bulk import does to a contact (bulk.c) --------------------------------- */

int crm_list_exists(int account, long lid) { return find_list(&C[account], lid) != NULL; }

/* NULL when field fid exists and value fits its type, else why not. */
const char *crm_field_problem(long fid, const char *value)
{
    const field *f = find_field(fid);
    if (!f) return "no such custom field";
    return value_problem(f, value) ? "the value does not fit the field's type" : NULL;
}

void crm_set_field(int account, long cid, long fid, const char *value) { set_value(&C[account], cid, fid, value); }

/* The contact gets the contact tag with that name (any case), created when
 * the account has none: bulk import takes tags by name. */
void crm_tag_by_name(int account, long cid, const char *name)
{
    crm *c = &C[account];
    tag *t = NULL;
    for (size_t i = 0; i < c->ntags && !t; i++)
        if (!strcasecmp(c->tags[i].name, name) && !strcmp(c->tags[i].type, "contact")) t = &c->tags[i];
    if (!t) {
        c->tags = grow(c->tags, c->ntags, &c->captags, sizeof *c->tags);
        t = &c->tags[c->ntags++];
        t->id = (long)c->ntags;
        t->name = xdup(name);
        t->type = xdup("contact");
        t->description = xdup("");
        now_iso(t->cdate);
    }
    if (pairs_find(&c->ctag_ix, cid, t->id) >= 0) return;
    c->ctags = grow(c->ctags, c->nctags, &c->capctags, sizeof *c->ctags);
    pairs_add(&c->ctag_ix, cid, t->id, c->nctags);
    ctag *ct = &c->ctags[c->nctags++];
    ct->id = (long)c->nctags;
    ct->contact = cid;
    ct->tag = t->id;
    now_iso(ct->cdate);
}

/* subscribe: a contact not on the list becomes active; one who is there
 * in any state (unsubscribed above all, also unconfirmed or bounced) is
 * left as is: an import never re-subscribes.  unsubscribe: status 2. */
void crm_bulk_list(int account, long cid, long lid, int subscribe)
{
    crm *c = &C[account];
    char now[32];
    now_iso(now);
    if (!subscribe) set_status(c, cid, lid, 2, 0, now);
    else if (!find_membership(c, cid, lid)) set_status(c, cid, lid, 1, 0, now);
}

/* ---- router, control, state -------------------------------------------------------- */

typedef void (*post_fn)(reply *r, crm *c, const bp_doc *d, uint32_t o);

static void post(reply *r, const req *q, crm *c, const char *wrapper, post_fn fn)
{
    bp_doc d;
    bp_doc_init(&d);
    uint32_t o = body_object(r, &d, q, wrapper);
    if (o != BP_NONE) fn(r, c, &d, o);
    bp_doc_free(&d);
}

int crm_api(reply *r, const req *q)
{
    crm *c = &C[q->account];
    const char *p = q->path;
    int get = !strcmp(q->method, "GET"), is_post = !strcmp(q->method, "POST");
    long id;
    char tail[8];
    if (!strcmp(p, "/api/3/lists") && get) get_lists(r, q, c);
    else if (!strcmp(p, "/api/3/contactLists") && is_post) post(r, q, c, "contactList", post_contact_list);
    else if (!strcmp(p, "/api/3/tags") && get) get_tags(r, q, c);
    else if (!strcmp(p, "/api/3/tags") && is_post) post(r, q, c, "tag", post_tag);
    else if (sscanf(p, "/api/3/tags/%ld%7s", &id, tail) == 1 && get) {
        tag *t = find_tag(c, id);
        if (!t) { no_result(r, "Tag", id); return 1; }
        json_begin(r, 200);
        bp_buf_adds(&r->body, "{\"tag\":");
        write_tag(&r->body, t);
        bp_buf_addc(&r->body, '}');
    } else if (!strcmp(p, "/api/3/contactTags") && is_post) post(r, q, c, "contactTag", post_contact_tag);
    else if (!strcmp(p, "/api/3/fields") && get) get_fields(r, q);
    else if (!strcmp(p, "/api/3/fieldValues") && is_post) post(r, q, c, "fieldValue", post_field_value);
    else return 0;
    return 1;
}

/* POST /_emulator/contactLists {"account":N,"email":E,"list":L,"status":2,
 * "date":"2026-12-06T10:00:00-00:00"}: the contact's status on a list
 * changes at that date, as when they click an email's unsubscribe link
 * (status 2) or subscribe through a form (1); date defaults to now. */
static void control_status(reply *r, const req *q)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *acct = NULL, *email = NULL, *date = NULL, *list = NULL, *status = NULL;
    if (bp_json_parse(&d, q->body ? q->body : "", q->len, NULL, &err) == 0) {
        acct = jstr(&d, 0, "account");
        email = jstr(&d, 0, "email");
        date = jstr(&d, 0, "date");
        list = jstr(&d, 0, "list");
        status = jstr(&d, 0, "status");
    }
    int k = acct ? atoi(acct) : 0;
    contact *who = email ? find_contact(email) : NULL;
    long lid = list ? atol(list) : 0;
    long long st = status ? atoll(status) : 0;
    char now[32];
    now_iso(now);
    if (k < 0 || k >= NC || !who || !find_list(&C[k], lid) || (st != 1 && st != 2))
        json_reply(r, 400, "{\"error\":\"need a known account, contact email and list, and status 1 or 2\"}");
    else {
        membership *m = set_status(&C[k], who->id, lid, st, 0, date && *date ? date : now);
        json_begin(r, 200);
        bp_buf_adds(&r->body, "{\"contactList\":");
        write_membership(&r->body, m);
        bp_buf_addc(&r->body, '}');
    }
    bp_doc_free(&d);
}

/* POST /_emulator/lists {"account":N,"name":"VIP"}: another list for the
 * account, as someone would create it in ActiveCampaign's UI. */
int crm_control(reply *r, const req *q)
{
    if (!strcmp(q->path, "/_emulator/contactLists") && !strcmp(q->method, "POST")) { control_status(r, q); return 1; }
    if (strcmp(q->path, "/_emulator/lists") != 0 || strcmp(q->method, "POST") != 0) return 0;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *name = NULL, *acct = NULL;
    if (bp_json_parse(&d, q->body ? q->body : "", q->len, NULL, &err) == 0) {
        name = jstr(&d, 0, "name");
        acct = jstr(&d, 0, "account");
    }
    int k = acct ? atoi(acct) : 0;
    if (!name || !*name || k < 0 || k >= NC) json_reply(r, 400, "{\"error\":\"need name and a known account\"}");
    else {
        aclist *l = add_list(&C[k], name);
        json_begin(r, 201);
        bp_buf_adds(&r->body, "{\"list\":");
        write_list(&r->body, l);
        bp_buf_addc(&r->body, '}');
    }
    bp_doc_free(&d);
    return 1;
}

static const char *tag_name(crm *c, long id)
{
    tag *t = find_tag(c, id);
    return t ? t->name : "";
}

/* Before each entry of contact k's group: the first one opens
 * "email":<open>, the next ones are separated by a comma. */
static void entry(bp_buf *b, int *first, int *any, const char *email, char open)
{
    if ((*any)++) { bp_buf_addc(b, ','); return; }
    put_str(b, *first ? "" : ",", email);
    bp_buf_addc(b, ':');
    bp_buf_addc(b, open);
    *first = 0;
}

/* "memberships":{"a@b.co":{"1":1,"2":2}}, "contact_tags":{"a@b.co":["vip"]},
 * "field_values":{"a@b.co":{"Birthday":"2000-01-31"}}: per contact, in the
 * order contacts were created; contacts without any are left out. */
static void dump_by_contact(bp_buf *b, crm *c)
{
    size_t n = ncontacts();
    int first = 1;
    bp_buf_adds(b, "\"memberships\":{");
    for (size_t i = 0; i < n; i++) {
        const contact *k = contact_at(i);
        int any = 0;
        for (size_t m = 0; m < c->nmembers; m++) {
            if (c->members[m].contact != k->id) continue;
            entry(b, &first, &any, k->email, '{');
            bp_buf_printf(b, "\"%ld\":%lld", c->members[m].list, c->members[m].status);
        }
        if (any) bp_buf_addc(b, '}');
    }
    bp_buf_adds(b, "},\"contact_tags\":{");
    first = 1;
    for (size_t i = 0; i < n; i++) {
        const contact *k = contact_at(i);
        int any = 0;
        for (size_t t = 0; t < c->nctags; t++) {
            if (c->ctags[t].contact != k->id) continue;
            entry(b, &first, &any, k->email, '[');
            put_str(b, "", tag_name(c, c->ctags[t].tag));
        }
        if (any) bp_buf_addc(b, ']');
    }
    bp_buf_adds(b, "},\"field_values\":{");
    first = 1;
    for (size_t i = 0; i < n; i++) {
        const contact *k = contact_at(i);
        int any = 0;
        for (size_t v = 0; v < c->nvalues; v++) {
            if (c->values[v].contact != k->id) continue;
            entry(b, &first, &any, k->email, '{');
            put_str(b, "", find_field(c->values[v].field)->title);
            put_str(b, ":", c->values[v].value);
        }
        if (any) bp_buf_addc(b, '}');
    }
    bp_buf_addc(b, '}');
}

/* "tag_counts":{"vip":1}: contact tags per lower-cased name, so a test
 * sees a duplicate tag at once. */
static void dump_tag_counts(bp_buf *b, crm *c)
{
    int first = 1;
    bp_buf_adds(b, "\"tag_counts\":{");
    for (size_t i = 0; i < c->ntags; i++) {
        if (strcmp(c->tags[i].type, "contact") != 0) continue;
        int seen = 0, count = 0;
        for (size_t j = 0; j < c->ntags; j++) {
            if (strcmp(c->tags[j].type, "contact") != 0 || strcasecmp(c->tags[i].name, c->tags[j].name) != 0) continue;
            if (j < i) seen = 1;
            count++;
        }
        if (seen) continue;
        char *key = xdup(c->tags[i].name);
        lower(key);
        put_str(b, first ? "" : ",", key);
        bp_buf_printf(b, ":%d", count);
        free(key);
        first = 0;
    }
    bp_buf_addc(b, '}');
}

void crm_dump(bp_buf *b, int account)
{
    crm *c = &C[account];
    bp_buf_adds(b, "\"lists\":[");
    for (size_t i = 0; i < c->nlists; i++) {
        put_id(b, i ? ",{\"id\":" : "{\"id\":", c->lists[i].id);
        put_str(b, ",\"name\":", c->lists[i].name);
        put_str(b, ",\"stringid\":", c->lists[i].stringid);
        bp_buf_addc(b, '}');
    }
    bp_buf_adds(b, "],\"tags\":[");
    for (size_t i = 0; i < c->ntags; i++) {
        put_id(b, i ? ",{\"id\":" : "{\"id\":", c->tags[i].id);
        put_str(b, ",\"tag\":", c->tags[i].name);
        put_str(b, ",\"tagType\":", c->tags[i].type);
        bp_buf_addc(b, '}');
    }
    bp_buf_adds(b, "],");
    dump_tag_counts(b, c);
    bp_buf_addc(b, ',');
    dump_by_contact(b, c);
}

static void clear(crm *c)
{
    for (size_t i = 0; i < c->nlists; i++) { free(c->lists[i].name); free(c->lists[i].stringid); }
    for (size_t i = 0; i < c->ntags; i++) { free(c->tags[i].name); free(c->tags[i].type); free(c->tags[i].description); }
    for (size_t i = 0; i < c->nvalues; i++) free(c->values[i].value);
    c->nlists = c->nmembers = c->ntags = c->nctags = c->nvalues = 0;
    pairs_clear(&c->member_ix);
    pairs_clear(&c->ctag_ix);
    pairs_clear(&c->value_ix);
}

void crm_init(int naccounts)
{
    NC = naccounts;
    C = calloc((size_t)naccounts, sizeof *C);
    for (int k = 0; k < NC; k++) seed(&C[k]);
}

void crm_reset(void)
{
    for (int k = 0; k < NC; k++) {
        clear(&C[k]);
        seed(&C[k]);
    }
}
