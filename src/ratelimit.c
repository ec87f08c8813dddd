/*
 * ratelimit.c — the pace of one vendor account.
 *
 * ActiveCampaign allows 5 requests per second per account, shared by every
 * key and every worker, and counts them in a sliding window: a sixth
 * request within any second is answered 429.  So the pacer keeps the same
 * kind of window — the send times of the last N requests, N = the rate
 * (at most 64) — and sends only when the oldest of them left the window.
 * Unlike a token bucket with a burst of one, a request sent late (the loop
 * was busy) does not push every later one back: the next may catch up as
 * long as the window allows, so a backlog drains at the full rate.  To stay
 * gentle on the vendor (bursts can also earn 503s) consecutive requests are
 * at least half an interval apart.  The window is stretched by a margin
 * (5 requests per 1031 ms at 5/s with 0.97) to absorb clock and network
 * jitter between us and the vendor.
 *
 * The vendor's own signals override the pace: Retry-After blocks it until
 * then; RateLimit-Remaining: 0 (its window is full) makes the next request
 * wait a whole interval; a lower RateLimit-Limit lowers the rate.
 */
#include "service.h"

#include <stdlib.h>
#include <string.h>

/* A whole limit of at most BP_PACE_LOG per second gets the sliding
 * window (n sends per stretched second); any other limit (2.5/s, 500/s) is
 * paced by spacing alone, one send per stretched interval, which keeps
 * every window of any length under the limit. */
static void configure(bp_bucket *b, double limit_per_s)
{
    b->rate = limit_per_s > 0 ? limit_per_s : 0;
    if (b->rate <= 0) return;
    int whole = b->rate == (double)(int)b->rate && b->rate <= BP_PACE_LOG;
    int n = whole ? (int)b->rate : 1;
    b->n = n;
    b->window_ms = 1000.0 * n / b->rate / b->margin;
    b->interval_ms = b->window_ms / n;
    b->pos = 0;
    memset(b->sent, 0, sizeof b->sent);
}

void bp_bucket_init(bp_bucket *b, double limit_per_s, double margin, double now_ms)
{
    memset(b, 0, sizeof *b);
    b->margin = margin > 0 && margin <= 1 ? margin : 1;
    configure(b, limit_per_s);
    (void)now_ms;
}

void bp_bucket_set_rate(bp_bucket *b, double limit_per_s)
{
    double last = b->last_ms;
    configure(b, limit_per_s);
    /* the new window starts with the last send, so the change cannot free a burst */
    b->last_ms = last;
    if (b->n) b->sent[(b->pos + b->n - 1) % b->n] = last;
}

double bp_bucket_take(bp_bucket *b, double now_ms)
{
    if (now_ms < b->blocked_until_ms) return b->blocked_until_ms - now_ms;
    if (b->rate <= 0) return 0;   /* unlimited */
    double gap = b->full_gap ? b->interval_ms : b->interval_ms / 2;
    if (b->last_ms > 0 && now_ms - b->last_ms < gap) return gap - (now_ms - b->last_ms);
    double oldest = b->sent[b->pos];
    if (oldest > 0 && now_ms - oldest < b->window_ms) return b->window_ms - (now_ms - oldest);
    b->sent[b->pos] = now_ms;
    b->pos = (b->pos + 1) % b->n;
    b->last_ms = now_ms;
    b->full_gap = 0;
    return 0;
}

void bp_bucket_block(bp_bucket *b, double until_ms)
{
    if (until_ms > b->blocked_until_ms) b->blocked_until_ms = until_ms;
}

void bp_bucket_drain(bp_bucket *b) { b->full_gap = 1; }

/* ---- a bound over a longer window ------------------------------------------------ */

/*
 * Some requests have a bound of their own on top of the account's pace:
 * ActiveCampaign takes at most 100 bulk imports a minute per account
 * (blueprint.yaml batch.max_per_minute).  The same sliding window as the
 * pacer's, over window_ms: the send times of the last `limit` such
 * requests, and one more leaves only when the oldest of them is a whole
 * (stretched) window old.  The window holds at most 10000 sends, so it is
 * allocated for its limit.
 */
struct bp_window {
    int limit, pos;
    double sent[];              /* send times of the last `limit` requests (0: none) */
};

/* w sized for limit, keeping its newest sends (a new limit frees no burst). */
static bp_window *window_sized(bp_window *w, int limit)
{
    if (w && w->limit == limit) return w;
    bp_window *n = bp_calloc(1, sizeof *n + (size_t)limit * sizeof n->sent[0]);
    n->limit = limit;
    if (w) {
        /* oldest first, the newest `limit` of them */
        int keep = w->limit < limit ? w->limit : limit;
        for (int i = 0; i < keep; i++) n->sent[i] = w->sent[(w->pos + w->limit - keep + i) % w->limit];
        n->pos = keep % limit;
        free(w);
    }
    return n;
}

double bp_window_take(bp_window **w, int limit, double window_ms, double now_ms, int take)
{
    if (limit <= 0) return 0;   /* unbounded */
    *w = window_sized(*w, limit);
    double oldest = (*w)->sent[(*w)->pos];
    if (oldest > 0 && now_ms - oldest < window_ms) return window_ms - (now_ms - oldest);
    if (take) {
        (*w)->sent[(*w)->pos] = now_ms;
        (*w)->pos = ((*w)->pos + 1) % limit;
    }
    return 0;
}

void bp_window_free(bp_window *w) { free(w); }
