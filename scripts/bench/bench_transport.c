/*
 * bench_transport.c — the transport alone, for `make bench`: how fast the
 * libcurl multi transport that `deliver` uses can send when nothing else
 * runs (no mapping, no store).  The gap between this and `deliver` is the
 * cost of the rest of the pipeline; the gap between this and wrk is the
 * cost of libcurl and our use of it.
 *
 *   bench-transport URL N [CONCURRENCY]
 *
 * POSTs N contact/sync requests (the body deliver sends for identify) to
 * URL, CONCURRENCY in flight (8, deliver's default).  Prints:
 *   requests=N ok=K wall_s=W cpu_s=C req_per_s=R cpu_us_per_req=U
 */
#include "blueprint.h"
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct counts { long done, ok; } counts;

static void on_done(void *ctx, void *user, const bp_response *resp)
{
    (void)user;
    counts *c = ctx;
    c->done++;
    if (resp->status >= 200 && resp->status < 300) c->ok++;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: bench-transport URL N [CONCURRENCY]\n"); return 1; }
    long n = atol(argv[2]);
    int concurrency = argc > 3 ? atoi(argv[3]) : 8;
    bp_outcome o;
    bp_outcome_init(&o);
    bp_request *r = bp_outcome_add_request(&o);
    r->method = bp_outcome_strdup(&o, "POST");
    char url[512];
    snprintf(url, sizeof url, "%s/api/3/contact/sync", argv[1]);
    r->url = bp_outcome_strdup(&o, url);
    bp_header headers[2] = {
        { bp_outcome_strdup(&o, "Api-Token"), bp_outcome_strdup(&o, "emulator-api-token"), 0 },
        { bp_outcome_strdup(&o, "Content-Type"), bp_outcome_strdup(&o, "application/json"), 0 },
    };
    r->headers = headers;
    r->nheaders = 2;
    r->body_kind = BP_BODY_JSON;
    bp_buf_adds(&r->body, "{\"contact\":{\"email\":\"bench@example.com\"}}");
    bp_config cfg;
    memset(&cfg, 0, sizeof cfg);

    bp_transport *t = bp_transport_new(5000, 30000);
    counts c = { 0, 0 };
    long sent = 0;
    double w0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    while (c.done < n) {
        while (sent < n && sent - c.done < concurrency) {
            if (bp_transport_send(t, r, &cfg, NULL) < 0) { fprintf(stderr, "send failed\n"); return 1; }
            sent++;
        }
        bp_transport_poll(t, 100, on_done, &c);
    }
    double wall = now_s(CLOCK_MONOTONIC) - w0, cpu = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("requests=%ld ok=%ld wall_s=%.3f cpu_s=%.3f req_per_s=%.0f cpu_us_per_req=%.1f\n", n, c.ok, wall, cpu,
           n / wall, cpu / (double)n * 1e6);
    bp_transport_free(t);
    r->headers = NULL;                 /* on the stack, not the outcome's */
    r->nheaders = 0;
    bp_outcome_free(&o);
    return c.ok == n ? 0 : 2;
}
