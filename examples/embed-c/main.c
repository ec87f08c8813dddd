/* Map events from stdin with a blueprint, printing what `blueprint dry-run` prints:
 *   embed-c BLUEPRINT_DIR CONFIG < events.ndjson */
#include <blueprint.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    bp_error err;
    if (argc != 3) { fprintf(stderr, "usage: %s BLUEPRINT_DIR CONFIG < EVENTS\n", argv[0]); return 1; }
    bp_blueprint *bp = bp_blueprint_load(argv[1], &err);               /* blueprint.yaml + Lua */
    bp_config *cfg = bp ? bp_config_load_file(bp, argv[2], &err) : NULL;  /* validated config */
    bp_engine *e = cfg ? bp_engine_new(bp, cfg, NULL, &err) : NULL;    /* one per thread */
    if (!e) { fprintf(stderr, "embed-c: %s\n", err.msg); return 2; }
    bp_reader *r = bp_reader_new(0, 0);                                  /* NDJSON, array or object */
    bp_outcome o;
    bp_buf line;
    bp_outcome_init(&o);
    bp_buf_init(&line);
    const char *ev;
    size_t len;
    enum bp_read_status st;
    for (long i = 0; (st = bp_reader_next(r, &ev, &len, &err)) != BP_READ_END; i++) {
        if (st == BP_READ_EVENT) bp_engine_run(e, ev, len, &o);
        else { bp_outcome_reset(&o); o.verdict = BP_ERROR; bp_buf_adds(&o.reason, err.msg); }
        bp_buf_reset(&line);
        bp_outcome_write_json(&o, i, &line);                             /* one dry-run line */
        fwrite(line.data, 1, line.len, stdout);
        putchar('\n');
    }
    bp_buf_free(&line);
    bp_outcome_free(&o);
    bp_reader_free(r);
    bp_engine_free(e);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    return 0;
}
