/*
 * cli.c — the `blueprint` command.
 *
 *   blueprint dry-run BLUEPRINT_DIR --config CONFIG [EVENTS]
 *
 * Exit status (docs/contracts.md): 0 when every event was judged, 1 usage,
 * 2 the blueprint or config is invalid, 5 some input was not an event.
 */
#include "service.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_INVALID 2
#define EXIT_USAGE 1
#define EXIT_MALFORMED 5   /* dry-run: some input was not an event (every other one was judged) */

static const char usage_text[] =
    "usage: blueprint COMMAND [ARGS]\n"
    "\n"
    "Authoring a blueprint (no account, no server):\n"
    "  dry-run BLUEPRINT_DIR --config CONFIG [EVENTS] [--decode] [--answers FILE] [--batch]\n"
    "                 print, per event, the exact requests that would be sent (secrets [redacted])\n"
    "  test [BLUEPRINT_DIR] [--update] [--case NAME]… [--verbose]\n"
    "                 run the blueprint's fixtures (tests/CASE/) and show field-level differences\n"
    "\n"
    "Delivering:\n"
    "  deliver BLUEPRINT_DIR --config CONFIG [EVENTS] [--state DIR]\n"
    "                 store the events, then send them: paced, retried, dead-lettered\n"
    "  dlq list|replay [--state DIR] …\n"
    "                 show or re-queue deliver's dead letters and errors\n"
    "\n"
    "Running the service:\n"
    "  serve [--listen HOST:PORT] [--state DIR] [--blueprints DIR] [--kafka BROKERS …]\n"
    "                 the Management API, event intake, Live Events, delivery and the web console\n"
    "  token --role owner|admin|editor|viewer [--ttl 15m] [--sign-in] [--state DIR]\n"
    "                 a signed token for the API (--sign-in: the console's one-time link)\n"
    "  rotate-key [--state DIR]\n"
    "                 a new master key; every stored secret re-encrypted under it\n"
    "\n"
    "  CONFIG   YAML or JSON: the config map, or a Management API install body\n"
    "  EVENTS   a file, or - / nothing for stdin: NDJSON, a JSON array or one object\n"
    "\n"
    "`blueprint COMMAND --help` explains one command and its options.\n"
    "\n"
    "exit status: 0 done, 1 usage error, 2 invalid blueprint or config, 3 (deliver) events held:\n"
    "  the credentials failed, 4 (test) a case did not match, 5 (dry-run) some input was not an event\n";

/* `blueprint COMMAND --help` */
static const struct { const char *command, *text; } command_help[] = {
    { "dry-run",
      "usage: blueprint dry-run BLUEPRINT_DIR --config CONFIG [EVENTS] [--decode] [--answers FILE] [--batch]\n"
      "\n"
      "Maps each event (a file, or - / nothing for stdin: NDJSON, a JSON array or one object) and\n"
      "prints one JSON line per event: outcome (deliver, drop, error), reason, and the exact requests\n"
      "that would be sent, secrets shown as [redacted].  Nothing is sent; no account is needed.\n"
      "\n"
      "  --config CONFIG   YAML or JSON: the config map, or a Management API install body\n"
      "  --decode          add \"decoded\" next to each request's body: the JSON body parsed, or the\n"
      "                    form's fields with JSON values (eventdata, visit) parsed\n"
      "  --answers FILE    answers to the mapping's steps (ctx.send), tried before the blueprint's\n"
      "                    answers.yaml (documented examples); each step's \"answer\" says where\n"
      "                    it came from, or that it was assumed\n"
      "  --batch           show how the stream would be batched (blueprint.yaml batch:): the events the\n"
      "                    batch takes give one line per batch, its requests each with the answer\n"
      "                    dry-run gave and \"batch\": each event's result; too few at the end go one by one\n"
      "  --max-event-bytes N (524288)  --memory-mb N (64)  --instructions N (20000000)\n"
      "  --timeout-ms N (1000)         the sandbox's budgets per event\n"
      "\n"
      "With no EVENTS and a terminal as stdin, it says so on stderr and reads what is pasted until Ctrl-D.\n"
      "A line that is not an event (invalid JSON, no type, …) gets an error line whose reason starts with\n"
      "its input line, \"line 9: malformed event: …\", and the rest still run.\n"
      "\n"
      "exit status: 0 every event judged (drops and mapping errors included), 1 usage, 2 invalid blueprint\n"
      "  or config, 5 some input was not an event (every other event was judged)\n" },
    { "test",
      "usage: blueprint test [BLUEPRINT_DIR] [--update] [--case NAME]… [--verbose]\n"
      "\n"
      "Runs the blueprint's own fixtures: every folder BLUEPRINT_DIR/tests/CASE/ holding config.yaml\n"
      "(or config.json), events.ndjson and expected.ndjson (what dry-run prints for those events).\n"
      "Prints one line per case; on a mismatch, which event and which field differs, with request\n"
      "bodies decoded (a header, a form field, a key of eventdata).  BLUEPRINT_DIR defaults to \".\".\n"
      "\n"
      "  --update      show the differences, then rewrite expected.ndjson from today's output\n"
      "                (review them with git diff before committing)\n"
      "  --case NAME   only this case (repeatable)\n"
      "  --verbose     the mappings' log lines (print, ctx.log) of every case; without it only those\n"
      "                of a case that fails are shown (on stderr)\n"
      "\n"
      "exit status: 0 every case matched, 1 usage (no tests folder), 2 invalid blueprint,\n"
      "  4 a case did not match\n" },
    { "deliver",
      "usage: blueprint deliver BLUEPRINT_DIR --config CONFIG [EVENTS] [--state DIR] [options]\n"
      "\n"
      "Adds the events to the durable store under --state (default ./var), then sends every pending\n"
      "event, paced to the blueprint's rate limit, retried, dead-lettered; prints one outcome line per\n"
      "event when it is final and a summary on stderr.  A run killed at any point loses nothing.\n"
      "\n"
      "  --concurrency N (8)  --max-attempts N (the blueprint's)  --retry-base-ms N (1000)\n"
      "  --rate-limit RPS (the blueprint's)  --connect-timeout-ms N (5000)  --http-timeout-ms N (30000)\n"
      "  --no-batch: every event one by one; by default a backlog the blueprint's batch: takes goes in\n"
      "  batches (min_events or more of an integration waiting; fewer go one by one)\n"
      "  and dry-run's budget options\n"
      "\n"
      "exit status: 0 every event final, 1 usage or state store, 2 invalid blueprint or config,\n"
      "  3 events held: the credentials failed (fix them and run again)\n" },
    { "dlq",
      "usage: blueprint dlq list [--state DIR] [--only dead|error]\n"
      "       blueprint dlq replay [--state DIR] (--id N [--id N …] | --all) [--only dead|error]\n"
      "\n"
      "Lists the dead letters and the events that ended in `error` (e.g. a mapping that failed) of a\n"
      "`deliver` state directory, or moves them back to pending; the next `blueprint deliver … --state DIR`\n"
      "sends them, mapped by the blueprint as it is then.  --only: dead letters or errors alone.\n" },
    { "serve",
      "usage: blueprint serve [--listen HOST:PORT] [--port N] [--state DIR] [--blueprints DIR] [--console DIR]\n"
      "                       [--workers N] [--http-threads N] [--max-connections-per-ip N]\n"
      "                       [--editor-workers N] [--editor-queue N] [--request-time-limit SECONDS]\n"
      "                       [--jwt-issuer ISS] [--jwt-audience AUD] [--audit-retention-days N]\n"
      "                       [--rate-limit RPS] [--retry-base-ms N] [--no-batch]\n"
      "                       [--keep-delivered DURATION] [--keep-dead DURATION]\n"
      "                       [--kafka BROKERS [--cluster NAME] [--topic-mode per_integration|per_vendor]\n"
      "                        [--master-key-file FILE] [--node NAME] [--kafka-session-timeout-ms N]\n"
      "                        [--kafka-partitions N] [--kafka-config FILE]]\n"
      "\n"
      "Runs the Management API, event intake, Live Events and delivery (default 127.0.0.1:8084, state\n"
      "in ./var) until SIGTERM, and the web console at / (--console: its folder; default console/ beside\n"
      "the blueprints folder, else the installed one).  With --kafka it is one node of a cluster\n"
      "(docs/cluster.md); --kafka-config FILE: librdkafka settings for every Kafka client, key=value lines\n"
      "(TLS and SASL for a managed Kafka, e.g. security.protocol=SASL_SSL).  BLUEPRINT_JWT_SECRET, when set,\n"
      "is at least 32 bytes (openssl rand -hex 32).\n"
      "\n"
      "--editor-workers (2; BLUEPRINT_EDITOR_WORKERS): threads that run the editor's dry-runs, fixture runs and\n"
      "save checks, off the HTTP threads; --editor-queue (8; BLUEPRINT_EDITOR_QUEUE): how many more may wait\n"
      "(beyond: 503 EDITOR_BUSY); --request-time-limit (30; BLUEPRINT_REQUEST_TIME_LIMIT): seconds a request's\n"
      "headers and body may take to arrive, however steadily they trickle in.\n"
      "\n"
      "Retention of STATE/events.db (durations: 7d, 12h, 30m, 90s): --keep-delivered (7d): delivered and\n"
      "dropped events, counted from their outcome; --keep-dead (30d): dead letters and errors not replayed.\n"
      "Events not final yet (pending, retrying, held) are never pruned.  In cluster mode the outcome records of\n"
      "other nodes follow the same rules.\n"
      "\n"
      "A backlog of events a blueprint's batch: takes (ActiveCampaign: identifies, as bulk imports) goes in\n"
      "batches when min_events or more of an integration wait; fewer go one by one.  --no-batch: every\n"
      "event one by one.\n" },
    { "token",
      "usage: blueprint token --role owner|admin|editor|viewer [--ttl 15m] [--sign-in] [--subject NAME]\n"
      "                       [--issuer ISS] [--audience AUD] [--state DIR]\n"
      "\n"
      "Prints a signed token for the Management API (the secret: BLUEPRINT_JWT_SECRET, at least 32 bytes, or\n"
      "STATE/jwt.secret).\n"
      "--sign-in: a token for the web console's sign-in link (http://HOST:PORT/#signin=TOKEN), good once and\n"
      "for at most 15 minutes; the console exchanges it for an 8-hour session token.  The API refuses it as\n"
      "a bearer token.\n" },
    { "rotate-key",
      "usage: blueprint rotate-key [--state DIR]\n"
      "\n"
      "Makes a new master key and re-encrypts every stored secret under it (safe while serve runs).\n" },
};

/* Prints COMMAND's help when argv asks for it; returns 1 then. */
static int command_wants_help(int argc, char **argv)
{
    int asked = 0;
    for (int i = 2; i < argc; i++) if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) asked = 1;
    if (!asked) return 0;
    for (size_t i = 0; i < sizeof command_help / sizeof command_help[0]; i++)
        if (!strcmp(argv[1], command_help[i].command)) { fputs(command_help[i].text, stdout); return 1; }
    return 0;
}

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

typedef struct cli {
    const char *dir, *config, *events, *answers;
    int have_events, decode, batch;
    bp_limits limits;
    bp_deliver_opts d;
} cli;

/* Options shared by dry-run and deliver; deliver-only ones when `deliver`. */
static int parse_args(int argc, char **argv, cli *c, int deliver)
{
#ifndef BP_LIGHT
    bp_deliver_opts_default(&c->d);   /* deliver options are parsed only by the full CLI */
#endif
    bp_limits_default(&c->limits);
    c->events = "-";
    c->batch = deliver;   /* deliver batches a backlog by default; dry-run shows batches when asked */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long v;
        if (!strcmp(a, "--config")) {
            if (!next) return usage("--config needs a file");
            c->config = argv[++i];
            continue;
        }
        if (!deliver && !strcmp(a, "--decode")) { c->decode = 1; continue; }
        if (!strcmp(a, "--batch")) { c->batch = 1; continue; }
        if (deliver && !strcmp(a, "--no-batch")) { c->batch = 0; continue; }
        if (!deliver && !strcmp(a, "--answers")) {
            if (!next) return usage("--answers needs a file");
            c->answers = argv[++i];
            continue;
        }
        if (deliver && !strcmp(a, "--state")) {
            if (!next) return usage("--state needs a directory");
            c->d.state_dir = argv[++i];
            continue;
        }
        if (!strcmp(a, "--rate-limit") && deliver) {
            char *end;
            double rps = next ? strtod(next, &end) : 0;
            if (!next || *end || rps <= 0) { fprintf(stderr, "blueprint: --rate-limit needs a positive number\n"); return EXIT_USAGE; }
            c->d.rate_limit_rps = rps;
            i++;
            continue;
        }
        struct { const char *name; int deliver_only; } numeric[] = {
            { "--max-event-bytes", 0 }, { "--memory-mb", 0 }, { "--instructions", 0 }, { "--timeout-ms", 0 },
            { "--concurrency", 1 }, { "--max-attempts", 1 }, { "--retry-base-ms", 1 },
            { "--connect-timeout-ms", 1 }, { "--http-timeout-ms", 1 },
        };
        int matched = -1;
        for (size_t k = 0; k < sizeof numeric / sizeof numeric[0]; k++)
            if (!strcmp(a, numeric[k].name) && (deliver || !numeric[k].deliver_only)) matched = (int)k;
        if (matched >= 0) {
            if (parse_count(a, next, &v) < 0) return EXIT_USAGE;
            i++;
            switch (matched) {
            case 0: c->limits.json.max_bytes = (size_t)v; break;
            case 1: c->limits.memory_bytes = (size_t)v * 1024 * 1024; break;
            case 2: c->limits.instructions = v; break;
            case 3: c->limits.timeout_ms = (unsigned)v; break;
            case 4: c->d.concurrency = (int)v; break;
            case 5: c->d.max_attempts = (int)v; break;
            case 6: c->d.retry_base_ms = (long)v; break;
            case 7: c->d.connect_timeout_ms = (long)v; break;
            case 8: c->d.http_timeout_ms = (long)v; break;
            }
            continue;
        }
        if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "blueprint: unknown option %s\n\n", a);
            return usage(NULL);
        }
        if (!c->dir) c->dir = a;
        else if (!c->have_events) { c->events = a; c->have_events = 1; }
        else return usage("too many arguments");
    }
    if (!c->dir) return usage("a blueprint folder is needed");
    if (!c->config) return usage("--config CONFIG is needed");
    c->d.limits = c->limits;
    return 0;
}

static int open_events(const char *events)
{
    int fd = 0;
    if (strcmp(events, "-") != 0 && (fd = open(events, O_RDONLY)) < 0)
        fprintf(stderr, "blueprint: cannot open events file %s: %s\n", events, strerror(errno));
    else if (fd == 0 && isatty(STDIN_FILENO))
        /* a command that waits silently at a terminal looks hung; pasting events is still allowed */
        fprintf(stderr, "blueprint: reading events from the terminal (paste NDJSON, a JSON array or one object, "
                "then Ctrl-D; or name an events file after the config)\n");
    return fd;
}

static int load(const cli *c, bp_blueprint **bp, bp_config **cfg)
{
    bp_error err;
    *bp = NULL;
    *cfg = NULL;
    /* a file that is not there is a usage error (1); one that is wrong is invalid (2) */
    if (access(c->config, R_OK) != 0) {
        fprintf(stderr, "blueprint: cannot read config file %s: %s\n", c->config, strerror(errno));
        return EXIT_USAGE;
    }
    *bp = bp_blueprint_load(c->dir, &err);
    *cfg = *bp ? bp_config_load_file(*bp, c->config, &err) : NULL;
    if (*cfg) return 0;
    fprintf(stderr, "blueprint: %s\n", err.msg);
    bp_blueprint_free(*bp);
    *bp = NULL;
    return EXIT_INVALID;
}

static void use_block_buffering(void)
{
    /* Full buffering for files and pipes (throughput); a terminal keeps
     * line buffering so an author sees each outcome as it is judged. */
    static char outbuf[1 << 16];
    if (!isatty(STDOUT_FILENO)) setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
}

static void to_stdout(void *ctx, const char *line, size_t len)
{
    (void)ctx;
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
}

static int dry_run(int argc, char **argv)
{
    cli c = { 0 };
    int rc = parse_args(argc, argv, &c, 0);
    if (rc) return rc;
    int fd = open_events(c.events);
    if (fd < 0) return EXIT_USAGE;
    bp_blueprint *bp;
    bp_config *cfg;
    bp_error err;
    if ((rc = load(&c, &bp, &cfg))) { if (fd > 0) close(fd); return rc; }
    bp_engine *e = bp_engine_new(bp, cfg, &c.limits, &err);
    bp_answers *answers = e ? bp_answers_load(c.dir, c.answers, &err) : NULL;
    if (!answers) {
        fprintf(stderr, "blueprint: %s\n", err.msg);
        bp_engine_free(e);
        bp_config_free(cfg);
        bp_blueprint_free(bp);
        if (fd > 0) close(fd);
        return EXIT_INVALID;
    }
    bp_engine_set_answerer(e, bp_answers_fn, answers);
    if (c.batch && !bp_engine_batch_spec(e)) {
        fprintf(stderr, "blueprint: --batch: %s has no batch: in its blueprint.yaml\n", c.dir);
        bp_engine_free(e);
        bp_answers_free(answers);
        bp_config_free(cfg);
        bp_blueprint_free(bp);
        if (fd > 0) close(fd);
        return EXIT_USAGE;
    }
    use_block_buffering();
    bp_reader *r = bp_reader_new(fd, c.limits.json.max_bytes);
    long malformed = 0, n = (c.batch ? bp_map_events_batched : bp_map_events)(e, r, c.decode, to_stdout, NULL, &malformed);
    bp_reader_free(r);
    rc = fflush(stdout) == 0 ? 0 : EXIT_USAGE;
    if (rc) fprintf(stderr, "blueprint: could not write the output: %s\n", strerror(errno));
    else if (malformed) {
        /* a script piping dry-run must not take a half-read file for a good one */
        fprintf(stderr, "blueprint: %ld of %ld events in %s malformed (their error lines name the input line); "
                "the others were judged\n", malformed, n, strcmp(c.events, "-") ? c.events : "stdin");
        rc = EXIT_MALFORMED;
    }
    bp_engine_free(e);
    bp_answers_free(answers);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    if (fd > 0) close(fd);
    return rc;
}

/* ---- blueprint test: a blueprint's own fixtures ------------------------------------------------ */

#define EXIT_TEST_FAILED 4

/* The mapping's log lines of a case, on stderr after its result: only for
 * a case that failed, or with --verbose (a passing run stays quiet). */
static void case_logs(bp_buf *logs, int show)
{
    fflush(stdout);
    if (show && logs->len) fwrite(logs->data, 1, logs->len, stderr);
    bp_buf_free(logs);
}

/* Run one case; prints its result and diff; 1 when it matched. */
static int test_case(const bp_blueprint *bp, const char *dir, const char *name, const bp_limits *limits, int update,
                     int verbose)
{
    bp_error err;
    bp_config *cfg = bp_case_config(bp, dir, name, &err);
    if (!cfg) { printf("FAIL %s: %s\n", name, err.msg); return 0; }
    bp_engine *e = bp_engine_new(bp, cfg, limits, &err);
    bp_answers *answers = e ? bp_case_answers(bp, dir, name, &err) : NULL;
    if (answers) bp_engine_set_answerer(e, bp_answers_fn, answers);
    bp_buf logs;
    bp_buf_init(&logs);
    if (e) bp_engine_log_to(e, &logs);
    bp_case c;
    bp_case_init(&c);
    if (!answers || bp_case_check(e, dir, name, limits, &c, &err) < 0) {
        printf("FAIL %s: %s\n", name, err.msg);
        case_logs(&logs, 1);
        bp_case_free(&c);
        bp_engine_free(e);
        bp_answers_free(answers);
        bp_config_free(cfg);
        return 0;
    }
    int ok = c.have_expected && c.differing == 0;
    if (ok) printf("ok   %s (%ld events)\n", name, c.events);
    else if (!c.have_expected) printf("%s %s: no expected.ndjson yet%s\n", update ? "new " : "FAIL", name,
                                      update ? "" : " (run `blueprint test DIR --update` to write it from today's output)");
    else printf("%s %s: %ld of %ld events differ\n%s", update ? "diff" : "FAIL", name, c.differing,
                c.events > c.expected ? c.events : c.expected, c.report.data ? c.report.data : "");
    if (!ok && update) {
        char tmp[4700];
        snprintf(tmp, sizeof tmp, "%s.new", c.expected_path);
        FILE *f = fopen(tmp, "wb");
        int written = f && fwrite(c.got.data ? c.got.data : "", 1, c.got.len, f) == c.got.len;
        if (f && fclose(f) != 0) written = 0;
        if (written && rename(tmp, c.expected_path) == 0) { printf("     updated %s\n", c.expected_path); ok = 1; }
        else printf("FAIL %s: cannot write %s: %s\n", name, c.expected_path, strerror(errno));
    }
    case_logs(&logs, !ok || c.differing || verbose);
    bp_case_free(&c);
    bp_engine_free(e);
    bp_answers_free(answers);
    bp_config_free(cfg);
    return ok;
}

/* `blueprint test`'s walk over the cases (bp_case_each). */
typedef struct test_run {
    const bp_blueprint *bp;
    const char *cases_dir;
    const char **only;
    int nonly, update, verbose, passed, failed;
    bp_limits limits;
} test_run;

static void test_one(void *ctx, const char *name)
{
    test_run *t = ctx;
    int wanted = t->nonly == 0;
    for (int k = 0; k < t->nonly; k++) if (!strcmp(t->only[k], name)) wanted = 1;
    if (!wanted) return;
    if (test_case(t->bp, t->cases_dir, name, &t->limits, t->update, t->verbose)) t->passed++; else t->failed++;
}

static int test_blueprint(int argc, char **argv)
{
    const char *dir = NULL;
    int update = 0, verbose = 0;
    const char *only[64];
    int nonly = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--update")) update = 1;
        else if (!strcmp(argv[i], "--verbose") || !strcmp(argv[i], "-v")) verbose = 1;
        else if (!strcmp(argv[i], "--case") && i + 1 < argc && nonly < 64) only[nonly++] = argv[++i];
        else if (argv[i][0] == '-') { fprintf(stderr, "blueprint: unknown option %s\n\n", argv[i]); return usage(NULL); }
        else if (!dir) dir = argv[i];
        else return usage("test takes one blueprint folder");
    }
    if (!dir) dir = ".";
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load(dir, &err);
    if (!bp) { fprintf(stderr, "blueprint: %s\n", err.msg); return EXIT_INVALID; }
    char cases_dir[4200];
    snprintf(cases_dir, sizeof cases_dir, "%s/tests", dir);
    test_run t = { bp, cases_dir, only, nonly, update, verbose, 0, 0, { 0 } };
    bp_limits_default(&t.limits);
    if (bp_case_each(cases_dir, test_one, &t) < 0) {
        fprintf(stderr, "blueprint: %s: %s; a blueprint's fixtures are %s/tests/CASE/ with config.yaml, events.ndjson "
                "and expected.ndjson\n", cases_dir, strerror(errno), dir);
        bp_blueprint_free(bp);
        return EXIT_USAGE;
    }
    bp_blueprint_free(bp);
    printf("%d passed, %d failed\n", t.passed, t.failed);
    if (t.passed + t.failed == 0) fprintf(stderr, "blueprint: no cases in %s\n", cases_dir);
    return t.failed ? EXIT_TEST_FAILED : t.passed ? 0 : EXIT_USAGE;
}

#ifndef BP_LIGHT

static int deliver(int argc, char **argv)
{
    cli c = { 0 };
    int rc = parse_args(argc, argv, &c, 1);
    if (rc) return rc;
    int fd = open_events(c.events);
    if (fd < 0) return EXIT_USAGE;
    bp_blueprint *bp;
    bp_config *cfg;
    if ((rc = load(&c, &bp, &cfg))) { if (fd > 0) close(fd); return rc; }
    use_block_buffering();
    c.d.input_fd = fd;
    c.d.batch = c.batch;
    c.d.emit = to_stdout;
    bp_deliver_stats st;
    bp_error err;
    rc = bp_deliver(bp, cfg, &c.d, &st, &err);
    fflush(stdout);
    if (rc < 0) {
        fprintf(stderr, "blueprint: %s\n", err.msg);
        rc = strstr(err.msg, "state") ? EXIT_USAGE : EXIT_INVALID;
    } else {
        fprintf(stderr, "blueprint: %ld added (%ld duplicates skipped), %ld delivered, %ld dropped, %ld errors, "
                "%ld dead-lettered, %ld held; %ld requests (p50 %.1f ms, p99 %.1f ms), %ld retries, %ld rate-limited\n",
                st.added, st.duplicates, st.delivered, st.dropped, st.errors,
                st.dead, st.held, st.requests, bp_deliver_latency_ms(&st, 0.5), bp_deliver_latency_ms(&st, 0.99),
                st.retries, st.rate_limited);
    }
    bp_config_free(cfg);
    bp_blueprint_free(bp);
    if (fd > 0) close(fd);
    return rc;
}

static void print_dead_letter(void *ctx, const bp_store_row *row)
{
    /* The stored outcome line is already redacted. */
    if (row->outcome) puts(row->outcome);
    else printf("{\"id\":%lld,\"outcome\":\"%s\"}\n", (long long)row->id, (const char *)ctx);
}

/* Dead letters and events that ended in "error" (a mapping that failed:
 * after a fix they are mapped again); --only narrows to one of them. */
static int dlq(int argc, char **argv)
{
    if (argc < 1 || (strcmp(argv[0], "list") && strcmp(argv[0], "replay"))) return usage("dlq needs list or replay");
    int replay = !strcmp(argv[0], "replay"), all = 0;
    const char *state = "./var";
    int want[2] = { 1, 1 };                      /* dead, error */
    static const char *const states[] = { "dead", "error" }, *const labels[] = { "dead_letter", "error" };
    long long ids[256];
    int nids = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--state") && i + 1 < argc) state = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            const char *o = argv[++i];
            if (strcmp(o, "dead") && strcmp(o, "error")) return usage("--only takes dead or error");
            want[0] = !strcmp(o, "dead");
            want[1] = !want[0];
        }
        else if (replay && !strcmp(argv[i], "--all")) all = 1;
        else if (replay && !strcmp(argv[i], "--id") && i + 1 < argc && nids < 256) {
            unsigned long long v;
            if (parse_count("--id", argv[++i], &v) < 0) return EXIT_USAGE;
            ids[nids++] = (long long)v;
        } else {
            fprintf(stderr, "blueprint: unexpected argument %s\n\n", argv[i]);
            return usage(NULL);
        }
    }
    if (replay && !all && !nids) return usage("dlq replay needs --id N or --all");
    bp_error err;
    bp_store *s = bp_store_open(state, "blueprint.db", &err);
    if (!s) { fprintf(stderr, "blueprint: %s\n", err.msg); return EXIT_USAGE; }
    if (!replay) {
        for (int k = 0; k < 2; k++) if (want[k]) bp_store_each(s, "", states[k], print_dead_letter, (void *)labels[k]);
    } else {
        long n[2] = { 0, 0 };
        for (int k = 0; k < 2; k++) {
            if (!want[k]) continue;
            long m = all ? bp_store_move(s, "", states[k], "pending", 0) : 0;
            n[k] += m > 0 ? m : 0;
        }
        for (int i = 0; i < nids; i++) {
            long m = 0;
            for (int k = 0; k < 2 && m <= 0; k++) {
                if (want[k]) m = bp_store_move(s, "", states[k], "pending", ids[i]);
                if (m > 0) n[k] += m;
            }
            if (m <= 0) fprintf(stderr, "blueprint: no dead letter or error with id %lld\n", ids[i]);
        }
        fprintf(stderr, "blueprint: %ld dead letters and %ld errors re-queued; run `blueprint deliver … --state %s` "
                "to send them\n", n[0], n[1], state);
    }
    bp_store_close(s);
    return 0;
}

/* A retention window: a whole number and a unit, d, h, m or s (7d, 12h, 30m,
 * 90s), at least a second and at most 10 years; -1 (said on stderr) else. */
static int64_t parse_duration(const char *opt, const char *val)
{
    static const struct { char unit; int64_t s; } units[] = { { 'd', 86400 }, { 'h', 3600 }, { 'm', 60 }, { 's', 1 } };
    size_t digits = strspn(val, "0123456789");
    int64_t v = -1;
    if (digits && digits <= 9 && strlen(val) == digits + 1)
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (val[digits] == units[i].unit) v = strtoll(val, NULL, 10) * units[i].s;
    if (v <= 0 || v > 3650LL * 86400) {
        fprintf(stderr, "blueprint: %s takes a duration such as 7d, 12h, 30m or 90s (a whole number and d, h, m or s; "
                "at most 3650d), not '%s'\n", opt, val);
        return -1;
    }
    return v;
}

static int serve(int argc, char **argv)
{
    bp_serve_opts o = { "127.0.0.1", 8084, "./var", "./blueprints", 0, 0, 0, 0, 0,
                        getenv("BLUEPRINT_JWT_ISSUER"), getenv("BLUEPRINT_JWT_AUDIENCE"), 0,
                        getenv("BLUEPRINT_KAFKA_BROKERS"), getenv("BLUEPRINT_CLUSTER"), "per_integration", NULL, 0, 0, NULL,
                        getenv("BLUEPRINT_KAFKA_CONFIG"),
                        0, 0, 0, 0, 0, 0 };
    static char host[64];
    const char *env;
    o.batch = 1;   /* a backlog goes in batches by default (--no-batch: one by one) */
    if ((env = getenv("BLUEPRINT_EDITOR_WORKERS"))) o.editor_workers = atoi(env);
    if ((env = getenv("BLUEPRINT_EDITOR_QUEUE"))) o.editor_queue = atoi(env);
    if ((env = getenv("BLUEPRINT_REQUEST_TIME_LIMIT"))) o.request_time_limit_s = atoi(env);
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--batch")) { o.batch = 1; continue; }
        if (!strcmp(argv[i], "--no-batch")) { o.batch = 0; continue; }
        if (!next) { fprintf(stderr, "blueprint: %s needs a value\n", argv[i]); return EXIT_USAGE; }
        if (!strcmp(argv[i], "--listen")) {
            const char *colon = strrchr(next, ':');
            if (!colon || colon == next || (size_t)(colon - next) >= sizeof host) return usage("--listen needs HOST:PORT");
            snprintf(host, sizeof host, "%.*s", (int)(colon - next), next);
            o.host = host;
            o.port = atoi(colon + 1);
        } else if (!strcmp(argv[i], "--port")) o.port = atoi(next);
        else if (!strcmp(argv[i], "--state")) o.state_dir = next;
        else if (!strcmp(argv[i], "--blueprints")) o.blueprints_dir = next;
        else if (!strcmp(argv[i], "--console")) o.console_dir = next;
        else if (!strcmp(argv[i], "--rate-limit")) o.rate_limit_rps = atof(next);
        else if (!strcmp(argv[i], "--retry-base-ms")) o.retry_base_ms = atol(next);
        else if (!strcmp(argv[i], "--workers")) o.workers = atoi(next);
        else if (!strcmp(argv[i], "--http-threads")) o.http_threads = atoi(next);
        else if (!strcmp(argv[i], "--max-connections-per-ip")) o.max_connections_per_ip = atoi(next);
        else if (!strcmp(argv[i], "--editor-workers")) o.editor_workers = atoi(next);
        else if (!strcmp(argv[i], "--editor-queue")) o.editor_queue = atoi(next);
        else if (!strcmp(argv[i], "--request-time-limit")) o.request_time_limit_s = atoi(next);
        else if (!strcmp(argv[i], "--jwt-issuer")) o.jwt_issuer = next;
        else if (!strcmp(argv[i], "--jwt-audience")) o.jwt_audience = next;
        else if (!strcmp(argv[i], "--audit-retention-days")) o.audit_retention_days = atoi(next);
        else if (!strcmp(argv[i], "--keep-delivered") || !strcmp(argv[i], "--keep-dead")) {
            int64_t v = parse_duration(argv[i], next);
            if (v < 0) return EXIT_USAGE;
            *(!strcmp(argv[i], "--keep-delivered") ? &o.keep_delivered_s : &o.keep_dead_s) = v;
        }
        else if (!strcmp(argv[i], "--kafka")) o.kafka_brokers = next;
        else if (!strcmp(argv[i], "--cluster")) o.cluster_name = next;
        else if (!strcmp(argv[i], "--node")) o.node_name = next;
        else if (!strcmp(argv[i], "--kafka-session-timeout-ms")) o.kafka_session_timeout_ms = atoi(next);
        else if (!strcmp(argv[i], "--kafka-partitions")) o.kafka_partitions = atoi(next);
        else if (!strcmp(argv[i], "--kafka-config")) o.kafka_config = next;
        else if (!strcmp(argv[i], "--master-key-file")) setenv("BLUEPRINT_MASTER_KEY_FILE", next, 1);
        else if (!strcmp(argv[i], "--topic-mode")) {
            if (strcmp(next, "per_integration") != 0 && strcmp(next, "per_vendor") != 0)
                return usage("--topic-mode is per_integration (delivery-{integration_id}) or per_vendor (delivery-{vendor})");
            o.topic_mode = next;
        }
        else { fprintf(stderr, "blueprint: unknown option %s\n\n", argv[i]); return usage(NULL); }
        i++;
    }
    if (o.kafka_config && *o.kafka_config && !(o.kafka_brokers && *o.kafka_brokers))
        return usage("--kafka-config (librdkafka's settings) needs --kafka BROKERS");
    bp_error err;
    if (bp_serve(&o, &err) < 0) { fprintf(stderr, "blueprint: %s\n", err.msg); return EXIT_USAGE; }
    return 0;
}

/* "15m", "2h", "30s", "1d" or plain seconds */
static long parse_ttl(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (v <= 0) return -1;
    switch (*end) {
    case '\0': case 's': return end[*end ? 1 : 0] ? -1 : v;
    case 'm': return end[1] ? -1 : v * 60;
    case 'h': return end[1] ? -1 : v * 3600;
    case 'd': return end[1] ? -1 : v * 86400;
    default: return -1;
    }
}

static int token(int argc, char **argv)
{
    const char *role = NULL, *state = "./var", *subject = "local", *issuer = NULL, *audience = NULL;
    long ttl = 15 * 60;
    int sign_in = 0;
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--sign-in")) { sign_in = 1; continue; }
        if (!next) { fprintf(stderr, "blueprint: %s needs a value\n", argv[i]); return EXIT_USAGE; }
        if (!strcmp(argv[i], "--role")) role = next;
        else if (!strcmp(argv[i], "--ttl")) { if ((ttl = parse_ttl(next)) < 0) return usage("--ttl takes e.g. 15m, 2h, 30s"); }
        else if (!strcmp(argv[i], "--state")) state = next;
        else if (!strcmp(argv[i], "--subject")) subject = next;
        else if (!strcmp(argv[i], "--issuer")) issuer = next;
        else if (!strcmp(argv[i], "--audience")) audience = next;
        else { fprintf(stderr, "blueprint: unknown option %s\n\n", argv[i]); return usage(NULL); }
        i++;
    }
    if (!role || (strcmp(role, "owner") && strcmp(role, "admin") && strcmp(role, "editor") && strcmp(role, "viewer")))
        return usage("token needs --role owner|admin|editor|viewer");
    /* a sign-in link may sit in a terminal's scrollback: it must not stay good for long */
    if (sign_in && ttl > BP_SIGNIN_MAX_TTL) return usage("a --sign-in token lives at most 15m (--ttl 15m or less)");
    char secret[200];
    bp_error err;
    if (bp_jwt_secret(state, secret, sizeof secret, &err) < 0) { fprintf(stderr, "blueprint: %s\n", err.msg); return EXIT_USAGE; }
    bp_buf t;
    bp_buf_init(&t);
    int64_t now = (int64_t)(bp_wall_ms() / 1000);
    if (sign_in) bp_jwt_sign_signin(secret, role, subject, issuer, audience, now, now + ttl, &t);
    else bp_jwt_sign(secret, role, subject, issuer, audience, now, now + ttl, &t);
    puts(t.data);
    bp_buf_free(&t);
    return 0;
}

/* A new master key; every secret in STATE/server.db re-wrapped under it. */
static int rotate_key(int argc, char **argv)
{
    const char *state = "./var";
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--state") && next) { state = next; i++; }
        else { fprintf(stderr, "blueprint: rotate-key takes only --state DIR\n\n"); return usage(NULL); }
    }
    long n;
    bp_error err;
    if (bp_rotate_master_key(state, &n, &err) < 0) { fprintf(stderr, "blueprint: %s\n", err.msg); return EXIT_INVALID; }
    fprintf(stderr, "blueprint: %ld stored revisions re-encrypted under a new master key; the old key is gone from "
            "the key ring (a running serve goes on delivering)\n", n);
    return 0;
}

#else
/* The light CLI (dry-run, test) links the mapping core only, so that an
 * author's dry-run starts without loading libcurl, OpenSSL, SQLite,
 * libmicrohttpd and librdkafka (about 3 ms instead of 13).  The other
 * commands are libblueprint-service's bp_service_main, this same file built
 * with everything: loaded on first use from beside this binary (the build
 * tree), from ../lib beside it (an installed prefix, wherever it moved),
 * from the LIBDIR it was built for, or from the loader's search path. */
static int run_service(int argc, char **argv)
{
    char name[64], here[BP_PATH_MAX], path[BP_PATH_MAX + 80];
    snprintf(name, sizeof name, "libblueprint-service.so.%d", BP_VERSION_MAJOR);
    ssize_t n = readlink("/proc/self/exe", here, sizeof here - 1);
    here[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(here, '/');
    if (slash) *slash = '\0';
    const char *const beside[] = { "", "/../lib" };
    void *lib = NULL;
    for (int i = 0; slash && i < 2 && !lib; i++) {
        snprintf(path, sizeof path, "%s%s/%s", here, beside[i], name);
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
    if (!lib) {
        snprintf(path, sizeof path, "%s/%s", BP_LIBDIR, name);
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
    if (!lib) lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    int (*service_main)(int, char **) = NULL;
    if (lib) *(void **)&service_main = dlsym(lib, "bp_service_main");
    if (!service_main) {
        fprintf(stderr, "blueprint: %s needs %s: %s (run `make`, or install it)\n", argv[1], name, dlerror());
        return EXIT_USAGE;
    }
    return service_main(argc, argv);
}
#endif

/* The light CLI's main; in libblueprint-service, bp_service_main (blueprint_service.h). */
#ifdef BP_SERVICE_MAIN
int bp_service_main(int argc, char **argv)
#else
int main(int argc, char **argv)
#endif
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (command_wants_help(argc, argv)) return 0;
    if (!strcmp(argv[1], "dry-run")) return dry_run(argc - 2, argv + 2);
    if (!strcmp(argv[1], "test")) return test_blueprint(argc - 2, argv + 2);
#ifdef BP_LIGHT
    static const char *const service[] = { "deliver", "dlq", "serve", "token", "rotate-key", NULL };
    for (int i = 0; service[i]; i++) if (!strcmp(argv[1], service[i])) return run_service(argc, argv);
#else
    if (!strcmp(argv[1], "deliver")) return deliver(argc - 2, argv + 2);
    if (!strcmp(argv[1], "dlq")) return dlq(argc - 2, argv + 2);
    if (!strcmp(argv[1], "serve")) return serve(argc - 2, argv + 2);
    if (!strcmp(argv[1], "token")) return token(argc - 2, argv + 2);
    if (!strcmp(argv[1], "rotate-key")) return rotate_key(argc - 2, argv + 2);
#endif
    fprintf(stderr, "blueprint: unknown command '%s'\n\n", argv[1]);
    return usage(NULL);
}
