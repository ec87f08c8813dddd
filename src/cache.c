/*
 * cache.c — ctx.cache: values and step answers a mapping keeps per vendor
 * account, with a time to live.
 *
 * Why a cache in the core: a tag's id, a custom field's id or an ecommerce
 * connection exist only in an earlier answer of the vendor.  Looking them up
 * for every event would multiply the requests an account's rate limit
 * allows; kept here they are looked up once per account.
 *
 * One cache serves every delivery loop (integrations of one account may be
 * served by several loops), so it is a mutex-guarded hash table.  Entries
 * are keyed by account and key; a value is JSON text.  A key can also be
 * *claimed*: the step that will fetch it is in flight, and another event
 * that needs the same answer waits for it instead of asking the vendor
 * again (two events creating the same new tag create it once).  Claims
 * expire, so an event that dies in flight does not block the key forever.
 *
 * Bounded: at most max entries.  When full, the expired entries go, and
 * the least recently used tenth with them: one scan per max/10 inserts,
 * not one per insert, and what every event of an account reads (a tag's
 * id, the custom fields) stays while per-contact entries come and go.  The
 * cache is memory: after a restart every value is looked up once again,
 * except the values set as durable.  Those go to a backing the delivery
 * layer registers (its state store), and a key memory lacks is asked of
 * it: what a blueprint must not do twice (a contact's list status sent on
 * a consent change) is remembered across restarts and evictions.  A
 * durable value written by an event's run stays tentative until that
 * event is over (bp_cache_settle): "the list statuses were sent" must not
 * be read by another event while the requests that send them wait for a
 * retry, or end as a dead letter.  The store applies the same rule to what
 * it gives back after a restart.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096
#define CLAIM_MS 30000.0   /* a claim older than this is forgotten (its event died in flight) */

typedef struct entry {
    struct entry *next;
    char *key;                  /* "account\nkey" */
    char *value; size_t len;    /* JSON text, NULL while only claimed */
    double expires_ms;          /* monotonic */
    double used_ms;             /* last read or written */
    uint64_t claim_owner;       /* 0: not claimed */
    double claim_until_ms;
} entry;

/* A durable value whose event is not over yet. */
typedef struct tentative {
    uint64_t owner;
    char *account, *key, *value; size_t len;
    double expires_wall_ms;
} tentative;

struct bp_cache {
    pthread_mutex_t mu;
    entry *buckets[BUCKETS];
    size_t n, max;
    bp_cache_backing backing;   /* save NULL: none (set before the cache is shared) */
    tentative *pending;         /* [mu] durable writes of events not over; few: only on a change */
    size_t npending, cappending;
};

bp_cache *bp_cache_new(size_t max_entries)
{
    bp_cache *c = bp_calloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->max = max_entries ? max_entries : 100000;
    return c;
}

static void free_entry(entry *e)
{
    free(e->key);
    free(e->value);
    free(e);
}

static void free_tentative(tentative *t)
{
    free(t->account);
    free(t->key);
    free(t->value);
}

void bp_cache_free(bp_cache *c)
{
    if (!c) return;
    for (size_t b = 0; b < BUCKETS; b++)
        for (entry *e = c->buckets[b], *next; e; e = next) { next = e->next; free_entry(e); }
    for (size_t i = 0; i < c->npending; i++) free_tentative(&c->pending[i]);
    free(c->pending);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static uint64_t hash2(const char *a, const char *b)
{
    uint64_t h = bp_fnv1a(BP_FNV1A_BASIS, a, strlen(a));
    h = bp_fnv1a(h, "\n", 1);
    return bp_fnv1a(h, b, strlen(b));
}

static int same_key(const entry *e, const char *account, const char *key)
{
    size_t n = strlen(account);
    return !strncmp(e->key, account, n) && e->key[n] == '\n' && !strcmp(e->key + n + 1, key);
}

/* The entry for account/key, or NULL; *slot receives its link (or the
 * bucket's head when absent).  Caller holds mu. */
static entry **find(bp_cache *c, const char *account, const char *key)
{
    entry **p = &c->buckets[hash2(account, key) % BUCKETS];
    while (*p && !same_key(*p, account, key)) p = &(*p)->next;
    return p;
}

static int live_value(const entry *e, double now) { return e->value && e->expires_ms > now; }
static int live_claim(const entry *e, double now) { return e->claim_owner && e->claim_until_ms > now; }

static int by_time(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Make room: drop the dead entries, then the least recently used tenth
 * (claims in flight stay).  Caller holds mu. */
static void evict(bp_cache *c, double now)
{
    double *used = bp_malloc((c->n + 1) * sizeof *used);
    size_t n = 0;
    for (size_t b = 0; b < BUCKETS; b++)
        for (entry **p = &c->buckets[b]; *p;) {
            entry *e = *p;
            if (!live_value(e, now) && !live_claim(e, now)) {
                *p = e->next;
                free_entry(e);
                c->n--;
                continue;
            }
            if (!live_claim(e, now)) used[n++] = e->used_ms;
            p = &e->next;
        }
    if (c->n + c->max / 10 + 1 > c->max && n) {
        qsort(used, n, sizeof *used, by_time);
        size_t k = c->max / 10 + 1;
        double cutoff = used[(k < n ? k : n) - 1];
        for (size_t b = 0; b < BUCKETS; b++)
            for (entry **p = &c->buckets[b]; *p;) {
                entry *e = *p;
                if (!live_claim(e, now) && e->used_ms <= cutoff) {
                    *p = e->next;
                    free_entry(e);
                    c->n--;
                    continue;
                }
                p = &e->next;
            }
    }
    free(used);
}

static entry *get_or_add(bp_cache *c, const char *account, const char *key, double now)
{
    entry **p = find(c, account, key);
    if (*p) return *p;
    if (c->n >= c->max) { evict(c, now); p = find(c, account, key); }
    entry *e = bp_calloc(1, sizeof *e);
    e->used_ms = now;
    size_t na = strlen(account), nk = strlen(key);
    e->key = bp_malloc(na + nk + 2);
    memcpy(e->key, account, na);
    e->key[na] = '\n';
    memcpy(e->key + na + 1, key, nk + 1);
    e->next = *p;
    *p = e;
    c->n++;
    return e;
}

int bp_cache_get(bp_cache *c, const char *account, const char *key, bp_buf *out)
{
    double now = bp_monotonic_ms();
    pthread_mutex_lock(&c->mu);
    entry *e = *find(c, account, key);
    int hit = e && live_value(e, now);
    if (hit) {
        bp_buf_add(out, e->value, e->len);
        e->used_ms = now;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void bp_cache_set(bp_cache *c, const char *account, const char *key, const char *json, size_t len, double ttl_s)
{
    double now = bp_monotonic_ms();
    pthread_mutex_lock(&c->mu);
    entry *e = get_or_add(c, account, key, now);
    char *v = bp_malloc(len + 1);
    memcpy(v, json, len);
    v[len] = '\0';
    free(e->value);
    e->value = v;
    e->len = len;
    e->expires_ms = now + (ttl_s > 0 ? ttl_s : 0) * 1000.0;
    e->used_ms = now;
    e->claim_owner = 0;
    pthread_mutex_unlock(&c->mu);
}

int bp_cache_claim(bp_cache *c, const char *account, const char *key, uint64_t owner)
{
    double now = bp_monotonic_ms();
    pthread_mutex_lock(&c->mu);
    entry *e = get_or_add(c, account, key, now);
    int mine = !live_claim(e, now) || e->claim_owner == owner;
    if (mine) {
        e->claim_owner = owner;
        e->claim_until_ms = now + CLAIM_MS;
    }
    pthread_mutex_unlock(&c->mu);
    return mine;
}

void bp_cache_release(bp_cache *c, const char *account, const char *key, uint64_t owner)
{
    pthread_mutex_lock(&c->mu);
    entry *e = *find(c, account, key);
    if (e && e->claim_owner == owner) e->claim_owner = 0;
    pthread_mutex_unlock(&c->mu);
}

size_t bp_cache_count(bp_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void bp_cache_set_backing(bp_cache *c, const bp_cache_backing *b)
{
    pthread_mutex_lock(&c->mu);
    if (b) c->backing = *b;
    else memset(&c->backing, 0, sizeof c->backing);
    pthread_mutex_unlock(&c->mu);
}

static char *dup_n(const char *s, size_t n)
{
    char *d = bp_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Keep (owner, account, key)'s value until its event is over; a run that
 * writes the key again (the event mapped again) replaces it.  mu held. */
static void hold_tentative(bp_cache *c, uint64_t owner, const char *account, const char *key, const char *json,
                           size_t len, double expires_wall_ms)
{
    tentative *t = NULL;
    for (size_t i = 0; !t && i < c->npending; i++)
        if (c->pending[i].owner == owner && !strcmp(c->pending[i].account, account) && !strcmp(c->pending[i].key, key))
            t = &c->pending[i];
    if (t) {
        free(t->value);
    } else {
        if (c->npending == c->cappending) {
            c->cappending = c->cappending ? c->cappending * 2 : 16;
            c->pending = bp_realloc(c->pending, c->cappending * sizeof *c->pending);
        }
        t = &c->pending[c->npending++];
        t->owner = owner;
        t->account = dup_n(account, strlen(account));
        t->key = dup_n(key, strlen(key));
    }
    t->value = dup_n(json, len);
    t->len = len;
    t->expires_wall_ms = expires_wall_ms;
}

void bp_cache_set_durable(bp_cache *c, uint64_t owner, const char *account, const char *key, const char *json,
                          size_t len, double ttl_s)
{
    double expires = bp_wall_ms() + ttl_s * 1000.0;
    if (owner) {
        pthread_mutex_lock(&c->mu);
        hold_tentative(c, owner, account, key, json, len, expires);
        pthread_mutex_unlock(&c->mu);
    } else {
        bp_cache_set(c, account, key, json, len, ttl_s);
    }
    /* outside mu: the backing writes to disk, and other events need not wait */
    if (c->backing.save) c->backing.save(c->backing.ud, owner, account, key, json, len, (int64_t)expires);
}

void bp_cache_settle(bp_cache *c, uint64_t owner, int sent)
{
    if (!owner) return;
    tentative done[8];
    for (;;) {   /* a few at a time: bp_cache_set takes mu itself */
        size_t n = 0;
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < c->npending && n < 8;) {
            if (c->pending[i].owner != owner) { i++; continue; }
            done[n++] = c->pending[i];
            c->pending[i] = c->pending[--c->npending];
        }
        pthread_mutex_unlock(&c->mu);
        for (size_t i = 0; i < n; i++) {
            double left_s = (done[i].expires_wall_ms - bp_wall_ms()) / 1000.0;
            if (sent && left_s > 0) bp_cache_set(c, done[i].account, done[i].key, done[i].value, done[i].len, left_s);
            free_tentative(&done[i]);
        }
        if (n < 8) return;
    }
}

int bp_cache_get_stored(bp_cache *c, const char *account, const char *key, bp_buf *out)
{
    if (bp_cache_get(c, account, key, out)) return 1;
    if (!c->backing.load) return 0;
    bp_buf v;
    bp_buf_init(&v);
    int64_t expires = 0;
    int hit = c->backing.load(c->backing.ud, account, key, &v, &expires) == 1;
    double left_s = hit ? ((double)expires - bp_wall_ms()) / 1000.0 : 0;
    if (hit && left_s > 0) {
        bp_cache_set(c, account, key, v.data ? v.data : "null", v.data ? v.len : 4, left_s);
        bp_buf_add(out, v.data ? v.data : "null", v.data ? v.len : 4);
    }
    bp_buf_free(&v);
    return hit && left_s > 0;
}
