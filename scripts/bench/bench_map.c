/*
 * bench_map.c — in-process mapping throughput, for `make bench`.
 *
 *   bench-map engine BLUEPRINT_DIR CONFIG CORPUS [OUT]   the library API: bp_engine_run per event
 *   bench-map floor CORPUS                               parse + re-serialise each event, no mapping
 *
 * The corpus is read into memory first; only the loop is timed (CPU time of
 * the process).  Prints: events=N cpu_s=S events_per_s=R
 */
#include "blueprint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(1); }
    p[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: bench-map engine DIR CONFIG CORPUS [OUT] | floor CORPUS\n"); return 1; }
    int floor = !strcmp(argv[1], "floor");
    size_t len;
    char *corpus = slurp(floor ? argv[2] : argv[4], &len);
    bp_error err;
    bp_blueprint *bp = NULL;
    bp_config *cfg = NULL;
    bp_engine *e = NULL;
    if (!floor) {
        if (!(bp = bp_blueprint_load(argv[2], &err)) || !(cfg = bp_config_load_file(bp, argv[3], &err)) ||
            !(e = bp_engine_new(bp, cfg, NULL, &err))) {
            fprintf(stderr, "bench-map: %s\n", err.msg);
            return 2;
        }
    }
    FILE *out = !floor && argc > 5 ? fopen(argv[5], "w") : NULL;
    bp_outcome o;
    bp_outcome_init(&o);
    bp_doc d;
    bp_doc_init(&d);
    bp_buf line;
    bp_buf_init(&line);
    long n = 0;
    size_t bytes = 0;
    double t0 = cpu_s();
    for (char *p = corpus, *end = corpus + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        bp_buf_reset(&line);
        if (floor) {
            if (bp_json_parse(&d, p, l, NULL, &err) == 0) bp_json_write_node(&line, &d, 0);
        } else {
            bp_engine_run(e, p, l, &o);
            bp_outcome_write_json(&o, n, &line);
            if (out) { fwrite(line.data, 1, line.len, out); fputc('\n', out); }
        }
        bytes += line.len;
        n++;
        p += l + 1;
    }
    double t = cpu_s() - t0;
    printf("events=%ld cpu_s=%.3f events_per_s=%.0f out_bytes=%zu\n", n, t, n / t, bytes);
    if (out) fclose(out);
    bp_buf_free(&line);
    bp_doc_free(&d);
    bp_outcome_free(&o);
    bp_engine_free(e);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    free(corpus);
    return 0;
}
