/*
 * bench_map.c — in-process mapping throughput, for `make bench`.
 *
 *   bench-map engine BLUEPRINT_DIR CONFIG CORPUS [OUT]   the library API: bp_engine_run per event
 *   bench-map floor CORPUS                               parse + re-serialise each event, no mapping
 *   bench-map answers BLUEPRINT_DIR CONFIG CORPUS OUT|- [ANSWERS]
 *       mappings with steps (ctx.send) answered at once, as dry-run does:
 *       ANSWERS, then the blueprint's answers.yaml; one run per event
 *   bench-map steps BLUEPRINT_DIR CONFIG CORPUS OUT|- [ANSWERS]
 *       the same answers, given the way delivery gives them: the run stops at
 *       each step, its answer goes into the event's journal and the mapping
 *       runs again from the top (one run per step, plus one)
 *
 * The corpus is read into memory first; only the loop is timed (CPU time of
 * the process).  Prints: events=N cpu_s=S events_per_s=R runs=M (runs of
 * the mapping: N but for steps)
 */
#include "blueprint.h"
#include "internal.h"   /* answers (answers.c) and the journal (engine.c) */

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
    if (argc < 3 || (strcmp(argv[1], "floor") && argc < 5)) {
        fprintf(stderr, "usage: bench-map engine|answers|steps DIR CONFIG CORPUS [OUT|-] [ANSWERS] | floor CORPUS\n");
        return 1;
    }
    int floor = !strcmp(argv[1], "floor"), steps = !strcmp(argv[1], "steps");
    int answered = steps || !strcmp(argv[1], "answers");
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
    bp_answers *answers = NULL;
    if (answered && !(answers = bp_answers_load(argv[2], argc > 6 ? argv[6] : NULL, &err))) {
        fprintf(stderr, "bench-map: %s\n", err.msg);
        return 2;
    }
    if (answered && !steps) bp_engine_set_answerer(e, bp_answers_fn, answers);
    FILE *out = !floor && argc > 5 && strcmp(argv[5], "-") ? fopen(argv[5], "w") : NULL;
    bp_buf journal, abody, afrom;
    bp_buf_init(&journal);
    bp_buf_init(&abody);
    bp_buf_init(&afrom);
    long runs = 0;
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
        } else if (!steps) {
            bp_engine_run(e, p, l, &o);
            runs++;
            bp_outcome_write_json(&o, n, &line);
            if (out) { fwrite(line.data, 1, line.len, out); fputc('\n', out); }
        } else {
            /* as deliver.c does it: run, answer the step it stopped at, add
             * the answer to the journal, run again (one owner: every shared
             * answer's claim is this loop's) */
            bp_buf_reset(&journal);
            for (;;) {
                bp_engine_set_journal(e, journal.len ? journal.data : NULL, journal.len, 1);
                bp_engine_run(e, p, l, &o);
                runs++;
                if (!o.pending || !o.nrequests) break;
                const bp_request *s = &o.requests[o.nrequests - 1];
                int status;
                bp_buf_reset(&abody);
                bp_buf_reset(&afrom);
                if (bp_answers_fn(answers, s, &status, &abody, &afrom) < 0) break;
                bp_journal_add(&journal, s->fingerprint, status, abody.data ? abody.data : "", abody.len, "sent");
            }
            bp_outcome_write_json(&o, n, &line);
            if (out) { fwrite(line.data, 1, line.len, out); fputc('\n', out); }
        }
        bytes += line.len;
        n++;
        p += l + 1;
    }
    double t = cpu_s() - t0;
    printf("events=%ld cpu_s=%.3f events_per_s=%.0f out_bytes=%zu runs=%ld\n", n, t, n / t, bytes, floor ? n : runs);
    if (out) fclose(out);
    bp_answers_free(answers);
    bp_buf_free(&journal);
    bp_buf_free(&abody);
    bp_buf_free(&afrom);
    bp_buf_free(&line);
    bp_doc_free(&d);
    bp_outcome_free(&o);
    bp_engine_free(e);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    free(corpus);
    return 0;
}
