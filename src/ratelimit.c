/*
 * ratelimit.c — a token bucket per vendor account.
 *
 * ActiveCampaign allows 5 requests/second per account, shared by every key
 * and every worker, so pacing is done before sending: 429s should be the
 * exception.  The burst is kept at 1 by default: a full bucket would let a
 * second's worth of requests out at once and the vendor's sliding window
 * would answer the next ones with 429.  (The caller allows 10 ms worth of
 * burst, which is 1 at vendor rates and keeps high-rate runs from being
 * limited by the loop instead of the bucket.)  The vendor's own signals override
 * the bucket: Retry-After, and RateLimit-Remaining: 0, block it until then.
 */
#include "internal.h"

void bp_bucket_init(bp_bucket *b, double rate_per_s, double burst, double now_ms)
{
    b->rate = rate_per_s > 0 ? rate_per_s : 0;
    b->burst = burst >= 1 ? burst : 1;
    b->tokens = b->burst;
    b->last_ms = now_ms;
    b->blocked_until_ms = 0;
}

double bp_bucket_take(bp_bucket *b, double now_ms)
{
    if (now_ms < b->blocked_until_ms) return b->blocked_until_ms - now_ms;
    if (b->rate <= 0) return 0;   /* unlimited */
    b->tokens += (now_ms - b->last_ms) * b->rate / 1000.0;
    if (b->tokens > b->burst) b->tokens = b->burst;
    b->last_ms = now_ms;
    if (b->tokens >= 1) { b->tokens -= 1; return 0; }
    return (1 - b->tokens) * 1000.0 / b->rate;
}

void bp_bucket_block(bp_bucket *b, double until_ms)
{
    if (until_ms > b->blocked_until_ms) b->blocked_until_ms = until_ms;
}

void bp_bucket_drain(bp_bucket *b)
{
    if (b->tokens > 0) b->tokens = 0;
}
