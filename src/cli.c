/*
 * cli.c — the `blueprint` command.
 *
 *   blueprint dry-run BLUEPRINT_DIR --config CONFIG [EVENTS]
 *
 * Exit status (DESIGN.md §5): 0 when every event was judged, 2 when the
 * blueprint or config is invalid, 1 for usage errors.
 */
#include "blueprint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_INVALID 2
#define EXIT_USAGE 1

static const char usage_text[] =
    "usage: blueprint dry-run BLUEPRINT_DIR --config CONFIG [EVENTS]\n"
    "\n"
    "  Maps each event through the blueprint and prints, one JSON line per event,\n"
    "  the requests that would be sent (secrets shown as [redacted]).\n"
    "\n"
    "  CONFIG   YAML or JSON: the config map, or a Management API install body\n"
    "  EVENTS   a file or - for stdin (default): NDJSON, a JSON array or one object\n"
    "\n"
    "options:\n"
    "  --max-event-bytes N   largest accepted event (default 524288)\n"
    "  --memory-mb N         memory cap of the blueprint's Lua state (default 64)\n"
    "  --instructions N      Lua instruction budget per event (default 20000000)\n"
    "  --timeout-ms N        wall-time budget per event (default 1000)\n"
    "\n"
    "exit status: 0 every event judged, 1 usage error, 2 invalid blueprint or config\n";

static int usage(const char *problem)
{
    if (problem) fprintf(stderr, "blueprint: %s\n\n", problem);
    fputs(usage_text, stderr);
    return EXIT_USAGE;
}

static int parse_count(const char *opt, const char *val, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = val ? strtoull(val, &end, 10) : 0;
    if (!val || errno || *end || v == 0 || val[0] == '-') {
        fprintf(stderr, "blueprint: %s needs a positive whole number\n", opt);
        return -1;
    }
    *out = v;
    return 0;
}

static int dry_run(int argc, char **argv)
{
    const char *dir = NULL, *config = NULL, *events = "-";
    int have_events = 0;
    bp_limits limits;
    bp_limits_default(&limits);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        unsigned long long v;
        if (!strcmp(a, "--config")) {
            if (++i >= argc) return usage("--config needs a file");
            config = argv[i];
        } else if (!strcmp(a, "--max-event-bytes")) {
            if (parse_count(a, i + 1 < argc ? argv[++i] : NULL, &v) < 0) return EXIT_USAGE;
            limits.json.max_bytes = (size_t)v;
        } else if (!strcmp(a, "--memory-mb")) {
            if (parse_count(a, i + 1 < argc ? argv[++i] : NULL, &v) < 0) return EXIT_USAGE;
            limits.memory_bytes = (size_t)v * 1024 * 1024;
        } else if (!strcmp(a, "--instructions")) {
            if (parse_count(a, i + 1 < argc ? argv[++i] : NULL, &v) < 0) return EXIT_USAGE;
            limits.instructions = v;
        } else if (!strcmp(a, "--timeout-ms")) {
            if (parse_count(a, i + 1 < argc ? argv[++i] : NULL, &v) < 0) return EXIT_USAGE;
            limits.timeout_ms = (unsigned)v;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "blueprint: unknown option %s\n\n", a);
            return usage(NULL);
        } else if (!dir) {
            dir = a;
        } else if (!have_events) {
            events = a;
            have_events = 1;
        } else {
            return usage("too many arguments");
        }
    }
    if (!dir) return usage("dry-run needs a blueprint folder");
    if (!config) return usage("dry-run needs --config CONFIG");

    int fd = 0;
    if (strcmp(events, "-") != 0 && (fd = open(events, O_RDONLY)) < 0) {
        fprintf(stderr, "blueprint: cannot open events file %s: %s\n", events, strerror(errno));
        return EXIT_USAGE;
    }
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load(dir, &err);
    bp_config *cfg = bp ? bp_config_load_file(bp, config, &err) : NULL;
    bp_engine *e = cfg ? bp_engine_new(bp, cfg, &limits, &err) : NULL;
    if (!e) {
        fprintf(stderr, "blueprint: %s\n", err.msg);
        bp_config_free(cfg);
        bp_blueprint_free(bp);
        if (fd > 0) close(fd);
        return EXIT_INVALID;
    }

    /* Full buffering for files and pipes (throughput); a terminal keeps
     * line buffering so an author sees each outcome as it is judged. */
    static char outbuf[1 << 16];
    if (!isatty(STDOUT_FILENO)) setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    bp_reader *r = bp_reader_new(fd, limits.json.max_bytes);
    bp_outcome out;
    bp_outcome_init(&out);
    bp_buf line;
    bp_buf_init(&line);
    long index = 0;
    const char *ev;
    size_t len;
    enum bp_read_status st;
    while ((st = bp_reader_next(r, &ev, &len, &err)) != BP_READ_END) {
        if (st == BP_READ_EVENT) {
            bp_engine_run(e, ev, len, &out);
        } else {
            bp_outcome_reset(&out);
            out.verdict = BP_ERROR;
            bp_buf_adds(&out.reason, err.msg);
        }
        bp_buf_reset(&line);
        bp_outcome_write_json(&out, index++, &line);
        bp_buf_addc(&line, '\n');
        fwrite(line.data, 1, line.len, stdout);
    }
    int rc = fflush(stdout) == 0 ? 0 : EXIT_USAGE;
    if (rc) fprintf(stderr, "blueprint: could not write the output: %s\n", strerror(errno));
    bp_buf_free(&line);
    bp_outcome_free(&out);
    bp_reader_free(r);
    bp_engine_free(e);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    if (fd > 0) close(fd);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "dry-run")) return dry_run(argc - 2, argv + 2);
    fprintf(stderr, "blueprint: unknown command '%s'\n\n", argv[1]);
    return usage(NULL);
}
