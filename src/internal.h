/*
 * internal.h — interfaces shared between the mapping core's subsystems
 * (libblueprint), not part of the public API (blueprint.h).  The service's
 * own interfaces are in service.h, above this one.
 */
#ifndef BLUEPRINT_INTERNAL_H
#define BLUEPRINT_INTERNAL_H

#include "blueprint.h"

#include <lua.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

/* ---- alloc.c: allocation that never returns NULL (the out-of-memory policy) ----
 * Every C allocation goes through these: on failure they report and abort
 * (see alloc.c for why).  Free with free(). */
void *bp_malloc(size_t n);
void *bp_calloc(size_t count, size_t size);
void *bp_realloc(void *p, size_t n);
char *bp_strdup(const char *s);
char *bp_strndup(const char *s, size_t n);
void *bp_memdup(const void *src, size_t n);
/* Report "out of memory" and abort. */
_Noreturn void bp_oom(void);
/* Where the report goes: fn says it without allocating and returns 1, or 0
 * to leave it to stderr.  Set by log.c (bp_set_log). */
typedef int (*bp_oom_report_fn)(void);
void bp_set_oom_report(bp_oom_report_fn fn);

/* Shared-memory counters and flags are C11 atomics (<stdatomic.h>): one
 * style everywhere, so a reader sees at the declaration what is shared. */

/* FNV-1a, 64 bit: the hash for shard and bucket choices and for change
 * detection (not for anything an attacker must not steer).  Start with
 * BP_FNV1A_BASIS and feed pieces in order.  The basis is the one this code
 * has always used, a digit short of FNV's published offset basis: step
 * fingerprints (events' journals), credential fingerprints (paused
 * integrations) and blueprint revisions are stored, and a new basis would
 * not match them.  Its spread is as good for these uses. */
#define BP_FNV1A_BASIS 1469598103934665603ULL
static inline uint64_t bp_fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n--) h = (h ^ *p++) * 1099511628211ULL;
    return h;
}

/* Room for a path built from a configured directory and a file name inside
 * it: PATH_MAX (4096) for the directory plus a name and separators. */
#define BP_PATH_MAX 4400

/* Milliseconds: monotonic (budgets, durations) and wall clock (stored times).  clock.c */
double bp_monotonic_ms(void);
double bp_wall_ms(void);

/* The budget that work done in C on behalf of blueprint code is charged to,
 * where the count hook cannot reach (inside one C call).  One unit of work is
 * about one VM instruction.  check(L, ud, work) counts it and raises the
 * budget's Lua error once the budget is spent; spend does the same without
 * raising and returns the reason ("time budget exceeded ...") or NULL, for
 * C code that must free what it holds before it stops.  `armed` is set (from
 * a signal handler, by the watchdog) once a call has run long enough to be
 * watched: until then the metered loops skip the check, as the hook does.
 * max_bytes bounds what the encoders build outside the state's allocator
 * (0: unbounded). */
typedef struct bp_budget {
    void (*check)(lua_State *L, void *ud, unsigned long work);
    void *ud;
    const char *(*spend)(lua_State *L, void *ud, unsigned long work);
    _Atomic int armed;          /* lock-free, so a signal handler may set it; read relaxed */
    size_t max_bytes;
} bp_budget;

/* Charge `work` once the call is armed; may raise the budget's error. */
static inline void bp_budget_tick(lua_State *L, const bp_budget *b, unsigned long work)
{
    if (b && atomic_load_explicit(&b->armed, memory_order_relaxed)) b->check(L, b->ud, work);
}

/* Charge `work` once the call is armed, without raising: the reason the
 * budget is spent, or NULL. */
static inline const char *bp_budget_spent(lua_State *L, const bp_budget *b, unsigned long work)
{
    return b && atomic_load_explicit(&b->armed, memory_order_relaxed) && b->spend ? b->spend(L, b->ud, work) : NULL;
}

/* Lua's string.find/match/gmatch/gsub with every matching step counted
 * (pattern.c).  budget->check runs every 65536 steps with that count, armed
 * or not, and may raise a Lua error to stop the match.  bp_patterns_open
 * pushes a table of the four functions; `budget` must outlive them. */
void bp_patterns_open(lua_State *L, const bp_budget *budget);

/* The library functions whose loops run in C without allocating, replaced in
 * L's string and table libraries by versions that charge each element to
 * `budget` (metered.c): string.rep, table.concat, insert, move, remove, sort
 * and unpack; `budget` also becomes the one bp_budget_of(L) returns, which
 * the encoders and ctx helpers charge (NULL in a state without one: not
 * metered).  `budget` must outlive L. */
void bp_metered_open(lua_State *L, bp_budget *budget);
const bp_budget *bp_budget_of(lua_State *L);

/* Runaway-call watchdog (watchdog.c).  bp_watch_add takes a slot for a
 * sandbox (-1: none free; keep the hook on for every call).  Between
 * bp_watch_begin and bp_watch_end a call is watched; one that runs for more
 * than a tick gets `arm(L)` called on its own thread, from a signal handler. */
typedef void (*bp_watch_arm_fn)(lua_State *L);
int bp_watch_add(bp_watch_arm_fn arm);
void bp_watch_remove(int slot);
void bp_watch_begin(int slot, lua_State *L);
void bp_watch_end(int slot);

/* Appends for the encoders' inner loops: the common case (room left) is a
 * store, not a call; growth goes through bp_buf_add. */
static inline void bp_buf_put(bp_buf *b, const char *p, size_t n)
{
    if (b->len + n < b->cap) {
        for (size_t i = 0; i < n; i++) b->data[b->len + i] = p[i];
        b->len += n;
        b->data[b->len] = '\0';
    } else {
        bp_buf_add(b, p, n);
    }
}

static inline void bp_buf_putc(bp_buf *b, char c)
{
    if (b->len + 1 < b->cap) {
        b->data[b->len++] = c;
        b->data[b->len] = '\0';
    } else {
        bp_buf_add(b, &c, 1);
    }
}

/* bp_jget for a key given by pointer and length (not NUL-terminated). json.c */
uint32_t bp_jget_n(const bp_doc *d, uint32_t obj, const char *key, size_t klen);

/* -1 with "ORIGIN:LINE: key `k` is already set at line N" when an object of d
 * has a key twice (YAML requires unique keys; a config's JSON too): the
 * parsers keep both, and bp_jget would silently read one.  json.c */
int bp_doc_unique_keys(const bp_doc *d, const char *origin, bp_error *err);

/* Append a node to a document under construction (json.c, used by yaml.c). */
uint32_t bp_doc_add_node(bp_doc *d, uint8_t type, size_t off, size_t len, size_t line);

/* "did you mean": whether known is a likelier fix for the misspelt key than
 * the best so far (*best_d, start at (size_t)-1; updated): at most a third
 * of its letters differ, ignoring case.  blueprint.c */
int bp_key_nearer(const char *key, const char *known, size_t *best_d);
/* Read a whole file into out (NUL-terminated).  blueprint.c */
int bp_read_file(const char *path, bp_buf *out, bp_error *err);

/* Free the requests of an outcome, keeping the rest.  request.c */
void bp_outcome_clear_requests(bp_outcome *o);
/* "string", "secret", "url", "integer", "boolean", "list" or "map". config.c */
const char *bp_field_type_name(enum bp_field_type t);
/* Drop the requests from index n on. */
void bp_outcome_truncate_requests(bp_outcome *o, size_t n);

/* ---- sandbox.c ------------------------------------------------------------ */

typedef struct bp_sandbox bp_sandbox;

/* A Lua state with only safe libraries, read-only shared tables, strict
 * globals, a memory cap and a per-call instruction/time budget. */
bp_sandbox *bp_sandbox_new(const bp_limits *limits, bp_error *err);
void bp_sandbox_free(bp_sandbox *sb);
lua_State *bp_sandbox_state(bp_sandbox *sb);
/* Make `name` readable as a global in blueprint code (value on top, popped). */
void bp_sandbox_set_global(bp_sandbox *sb, const char *name);
/* Compile a Lua file (text only, no bytecode) and run its top level under
 * the budget.  Leaves the chunk's single return value on the stack. */
int bp_sandbox_load_file(bp_sandbox *sb, const char *path, const char *chunkname, bp_error *err);
/* lua_pcall under the budget.  On error, `err` holds "file:line: message"
 * and nothing is left on the stack; returns -1. */
int bp_sandbox_call(bp_sandbox *sb, int nargs, int nresults, bp_error *err);
/* Replace the value on top (a table or an __index function) with an empty
 * proxy that reads through it, calls on_write for any assignment and hides
 * its metatable.  How shared tables are made read-only. */
void bp_wrap_proxy(lua_State *L, lua_CFunction on_write);
/* print() and ctx.log for blueprints: the arguments joined by tabs (tables
 * and event values as JSON), with the blueprint's file:line, to the log
 * sink set below, or to stderr when none is set. */
int bp_sandbox_print(lua_State *L);
/* Where print/ctx.log lines go while a mapping runs (NULL: stderr).  `at`
 * is "file.lua:12" (relative to the blueprint folder). */
typedef void (*bp_sandbox_log_fn)(void *ud, const char *at, const char *msg, size_t len);
void bp_sandbox_set_log(bp_sandbox *sb, bp_sandbox_log_fn fn, void *ud);
/* The chunk-name prefix of the blueprint's files ("@DIR/"): positions in
 * log lines and call chains are written relative to it. */
void bp_sandbox_set_prefix(bp_sandbox *sb, const char *chunk_prefix);
/* ---- log.c: the library's messages (bp_set_log in blueprint.h) ---- */

/* 1 when an embedder (or serve) has set a log callback: messages are then
 * JSON records passed to it; 0: the CLI's stderr lines. */
int bp_log_has_sink(void);
/* BP_LOG_* for "debug", "info", "warn", "error". */
int bp_log_level_of(const char *level);
/* One JSON log record {"ts":…,"level":…,"msg":…,FIELDS} to the log callback,
 * or as a line on stderr when none is set.  fields_json: members without
 * braces, or NULL.  log.c */
void bp_log(const char *level, const char *msg, const char *fields_json);
/* A JSON log record's fields, built in a bp_buf for bp_log(level, msg,
 * f.data): each call appends "key":value (a comma first when the buffer is
 * not empty); text values are escaped (and made valid UTF-8). */
void bp_log_field(bp_buf *f, const char *key, const char *text);
void bp_log_field_int(bp_buf *f, const char *key, long long value);

/* Public calls taking a bp_error start with an empty message, and one that
 * fails sets it: bp_error_clear at entry, bp_error_ensure on the way out
 * of a failure (a message already set is kept). */
static inline void bp_error_clear(bp_error *err) { if (err) err->msg[0] = '\0'; }
static inline void bp_error_ensure(bp_error *err, const char *what)
{
    if (err && !err->msg[0]) bp_error_set(err, "%s", what);
}

/* ---- luajson.c ------------------------------------------------------------- */

/* Registry names of the metatables the encoder recognises. */
#define BP_VIEW_MT "bp.view"        /* lazy, read-only view into an event */
#define BP_SECRET_MT "bp.secret"    /* reference to a secret config field */
#define BP_ARRAY_MT "bp.array"      /* marks a table as a JSON array */
#define BP_OBJECT_MT "bp.object"    /* marks a table as a JSON object */

/* Register the metatables above in L. */
void bp_luajson_open(lua_State *L);
/* Push a view of node `i` of `d` (scalars are pushed as Lua values). */
void bp_push_view(lua_State *L, const bp_doc *d, uint32_t i);
/* If the value at idx is an event view, push what `path` ("a.b.1.c")
 * names in it (nil when absent) and return 0; else return -1, pushing
 * nothing.  Walks the document directly: no intermediate Lua values. */
int bp_view_get_path(lua_State *L, int idx, const char *path, size_t len);
/* Push node `i` converted to plain Lua tables (arrays/objects marked). */
void bp_push_tables(lua_State *L, const bp_doc *d, uint32_t i);
/* next(view, key) for the sandbox's next: pushes key and value, or nil. */
int bp_view_next(lua_State *L);
/* If the value at idx is a view, push it as plain tables and return 0; else -1. */
int bp_view_totable(lua_State *L, int idx);
/* Push the JSON null sentinel. */
void bp_push_null(lua_State *L);

/* Where secrets may go while encoding. */
typedef struct bp_slots {
    bp_secret_slot *v; size_t n, cap;
} bp_slots;

/* Encode the value at idx as compact JSON into out.  Secrets are allowed
 * only when `slots` is non-NULL (then recorded there).  On error returns -1
 * with a message in err naming the offending key path. */
int bp_encode_json(lua_State *L, int idx, bp_buf *out, bp_slots *slots, bp_error *err);
/* Encode a table of fields as application/x-www-form-urlencoded (sorted). */
int bp_encode_form(lua_State *L, int idx, bp_buf *out, bp_slots *slots, bp_error *err);
void bp_form_escape(bp_buf *out, const char *s, size_t len);
/* The config key of the secret at idx, or NULL if it is not a secret. */
const char *bp_secret_name(lua_State *L, int idx);
void bp_push_secret(lua_State *L, const char *name);

/* ---- helpers.c ------------------------------------------------------------- */

/* Push the table of ctx helper functions (drop, json, secret, get, email,
 * slug, array, null, log). */
void bp_push_helpers(lua_State *L, const bp_config *cfg, const bp_blueprint *bp);
/* If the value at idx is a ctx.drop(...) result, return its reason. */
const char *bp_drop_reason(lua_State *L, int idx);
/* A batch reader's result at idx (ctx.delivered, ctx.failed, ctx.retry,
 * ctx.later): its kind ("delivered", …, "later") and reason, else NULL. */
const char *bp_batch_result_of(lua_State *L, int idx, const char **reason);
/* If the value at idx is a ctx.hmac_sha256(...) reference, the config key of
 * its secret (a header value the transport computes: BP_HEADER_HMAC). */
const char *bp_hmac_secret_name(lua_State *L, int idx);
/* Replace the table on top with a read-only proxy onto it ("ctx is read-only"). */
void bp_push_readonly(lua_State *L);

/* ---- envelope.c: the event envelope -------------------------------------------------------- */

/* The keys Signal uses for an event's id, in order of preference, and the
 * event types it sends (NULL-terminated): the one list every part uses. */
extern const char *const bp_message_id_keys[];
extern const char *const bp_event_types[];
/* The event's id (the first of bp_message_id_keys that is a string or number), or NULL. */
const char *bp_event_message_id(const bp_doc *d);
int bp_event_type_known(const char *type);
/* The event as the consent_denied mapping sees it: who the visitor is and
 * their consent, nothing of what they did (parsed into out). */
void bp_event_identity(const bp_doc *d, bp_doc *out);

/* ---- decode.c: readable outcome lines ---------------------------------------------------- */

/* The outcome line with a "decoded" object next to each request's body (the
 * JSON body parsed, or the form's fields with JSON values parsed); -1 (and
 * the line as it is) when it is not a JSON object. */
int bp_decode_line(const char *line, size_t len, bp_buf *out);
/* Field-level differences between two outcome lines, one "    PATH:
 * expected X, got Y" line each (at most 20); returns how many. */
int bp_diff_lines(const char *expected, size_t elen, const char *got, size_t glen, bp_buf *out);

/* dry-run's loop: every event of r mapped by e, one outcome line each
 * (decoded when asked) passed to emit.  Returns how many; *malformed (when
 * not NULL) counts the events refused as input (their reason begins with
 * the input line they start on: "line 9: malformed event: …"). */
typedef void (*bp_line_fn)(void *ctx, const char *line, size_t len);
long bp_map_events(bp_engine *e, bp_reader *r, int decode, bp_line_fn emit, void *ctx, long *malformed);
/* The same, showing how the stream would be batched (dry-run --batch): the
 * events the blueprint's batch takes wait for it, in batches of at most
 * batch.max_events; a batch line ("type":"batch", its requests each with
 * the answer dry-run gave, "batch": each event's result) stands for them
 * when at least batch.min_events wait at the end or the batch is full,
 * else their own lines follow as one by one. */
long bp_map_events_batched(bp_engine *e, bp_reader *r, int decode, bp_line_fn emit, void *ctx, long *malformed);
/* The input line (1-based) where the event or bad stretch that
 * bp_reader_next returned last began. */
long bp_reader_line(const bp_reader *r);

/* `blueprint test`'s cases: folders CASES_DIR/NAME/ with config.yaml (or
 * .json), events.ndjson and expected.ndjson.  bp_case_each calls fn with
 * each name in order (-1, errno set, when the folder cannot be read). */
int bp_case_each(const char *cases_dir, void (*fn)(void *ctx, const char *name), void *ctx);
typedef struct bp_case {
    long events;                /* mapped */
    long expected;              /* lines of expected.ndjson */
    long differing;             /* events whose line differs from the expected one */
    int have_expected;          /* 0: no expected.ndjson yet */
    bp_buf got;                 /* today's output (NDJSON) */
    bp_buf report;              /* "  event N:\n    PATH: expected X, got Y\n" for each that differs */
    char expected_path[4600];
} bp_case;
void bp_case_init(bp_case *c);
void bp_case_free(bp_case *c);
/* A case's config (config.yaml, else config.json) validated against bp. */
bp_config *bp_case_config(const bp_blueprint *bp, const char *cases_dir, const char *name, bp_error *err);
/* A case's answers to the mapping's steps: its answers.yaml, then the
 * blueprint folder's (bp_answers_load). */
struct bp_answers *bp_case_answers(const bp_blueprint *bp, const char *cases_dir, const char *name, bp_error *err);
/* Map the case's events with e (made with its config) and compare them with
 * expected.ndjson; -1 with err when the events cannot be read. */
int bp_case_check(bp_engine *e, const char *cases_dir, const char *name, const bp_limits *limits, bp_case *c,
                  bp_error *err);

/* ---- blueprint.c: what blueprint.yaml's responses: rules say (classify.c applies them) ---- */

enum bp_class { BP_OK, BP_RETRY, BP_PERMANENT, BP_AUTH };

/* One rule of blueprint.yaml's responses: table (parsed by blueprint.c).
 * Every condition given must hold; the first rule that matches decides. */
typedef struct bp_json_test {
    char *path;                 /* "success", "errors.1.code" (1-based, as ctx.get), "errors.*.code" */
    char *key;                  /* a key of the path that must appear quoted in the body, or NULL */
    struct bp_json_value { uint8_t type; char *text; } *values;   /* any of them */
    size_t nvalues;
} bp_json_test;

typedef struct bp_response_rule {
    uint64_t status[10];        /* bit per status 0..639; all zero: any status */
    char *url_contains;         /* the request URL contains it */
    char *content_type;         /* the answer's Content-Type contains it (any case) */
    int body;                   /* 0 any, 1 JSON, 2 not JSON (an HTML page, text, …) */
    bp_json_test *json; size_t njson;
    enum bp_class outcome;
    char *reason;               /* template: {status}, {json.PATH}, {json.PATH|fallback} */
    int line;                   /* in blueprint.yaml */
} bp_response_rule;

typedef struct bp_cache bp_cache;   /* cache.c */

/* ---- engine.c, steps.c: one engine for many configs ---------------------------------------------- */

typedef struct bp_binding {
    const bp_config *cfg;
    int ctx_ref, proxy_ref;     /* the config's ctx in the engine's Lua state */
    const char *account;        /* its account (bp_account_key) for ctx.cache; NULL: the engine's */
} bp_binding;
int bp_engine_bind(bp_engine *e, const bp_config *cfg, bp_binding *b, bp_error *err);
void bp_engine_unbind(bp_engine *e, bp_binding *b);
/* bp_engine_run with the config of a binding. */
enum bp_verdict bp_engine_run_as(bp_engine *e, const bp_binding *b, const char *json, size_t len, bp_outcome *out);
/* The account key integrations are paced by (rate_limit.scope), and
 * ctx.cache is kept per. */
void bp_account_key(const bp_blueprint *bp, const bp_config *cfg, const char *id, char *out, size_t n);
/* Without a log callback, a mapping's log lines are appended to lines
 * (NULL: written to stderr): `blueprint test` shows them only for a case
 * that fails. */
void bp_engine_log_to(bp_engine *e, bp_buf *lines);
/* The cache ctx.cache and shared step answers use (NULL: the engine's own). */
void bp_engine_set_cache(bp_engine *e, bp_cache *c);
/* The next run reads its steps' answers back from this journal (an
 * outcome's `journal`; NULL: none) and claims shared answers as owner. */
void bp_engine_set_journal(bp_engine *e, const char *journal, size_t len, uint64_t owner);
/* The request table on top of the stack, checked and copied into r (its
 * strings in o); -1 with err saying what is wrong.  luarequest.c */
int bp_read_request(lua_State *L, bp_outcome *o, bp_request *r, bp_error *err);
/* Length of s cut to at most max bytes, not inside a UTF-8 sequence.  request.c */
size_t bp_utf8_cut(const char *s, size_t len, size_t max);
/* Add a step's answer to a journal (from: "sent", "cached", …). */
void bp_journal_add(bp_buf *journal, uint64_t fingerprint, int status, const char *body, size_t len, const char *from);

/* ---- batch.c: a batch mapping (blueprint.yaml batch:) on events of one account -------- */

enum bp_batch_result { BP_BATCH_DELIVERED, BP_BATCH_FAILED, BP_BATCH_RETRY, BP_BATCH_DROPPED };
typedef struct bp_batch_item { enum bp_batch_result result; char *reason; } bp_batch_item;
typedef struct bp_batch {
    bp_outcome out;          /* the batch's steps, then its request (the last, when has_request) */
    int has_request, stopped, has_results;
    size_t n;                /* events */
    bp_batch_item *items;    /* one per event, once has_results */
    bp_doc *docs, answer;
    int reader_ref;
} bp_batch;
void bp_batch_init(bp_batch *b);
void bp_batch_free(bp_engine *e, bp_batch *b);
/* Run the batch mapping on n events (JSON objects, judged alone first).
 * 0: b->out holds the request (or, without one, the results are read);
 * stopped when a step's answer is not known yet; -1: b->out.reason says why. */
int bp_batch_run(bp_engine *e, bp_batch *b, const char *const *events, const size_t *lens, size_t n);
/* Read the vendor's answer to url: 0 each event has its result, 1 the
 * reader asked for a status request later (ctx.later: appended to b->out's
 * requests), -1 an error. */
int bp_batch_read(bp_engine *e, bp_batch *b, int status, const char *body, size_t len, const char *url);
/* dry-run and test: answer the request and each status request with the
 * engine's answerer (answers.yaml) and read them, until the events have
 * their results (at most 10 status requests).  0, or -1 (b->out.reason). */
int bp_batch_dry(bp_engine *e, bp_batch *b);
/* 1 when the batch takes an event whose outcome (judged alone) is o. */
int bp_batch_takes(const bp_engine *e, const bp_outcome *o);
/* The blueprint's batch: bounds, or NULL without one. */
const struct bp_batch_spec *bp_engine_batch_spec(const bp_engine *e);
const char *bp_batch_result_name(enum bp_batch_result r);

/* ---- answers.c: answers to steps when nothing is sent (dry-run, test) ----------------- */

typedef struct bp_answers bp_answers;
/* The blueprint folder's answers.yaml, after extra's entries (NULL: none). */
bp_answers *bp_answers_load(const char *blueprint_dir, const char *extra, bp_error *err);
void bp_answers_free(bp_answers *a);
/* A bp_answer_fn over a bp_answers. */
int bp_answers_fn(void *ud, const bp_request *step, int *status, bp_buf *body, bp_buf *from);

/* ---- cache.c: ctx.cache, per account, with a time to live ------------------------------- */

bp_cache *bp_cache_new(size_t max_entries);
void bp_cache_free(bp_cache *c);
/* 1 and the JSON text appended to out when account/key holds a live value. */
int bp_cache_get(bp_cache *c, const char *account, const char *key, bp_buf *out);
void bp_cache_set(bp_cache *c, const char *account, const char *key, const char *json, size_t len, double ttl_s);
/* Claim a key whose answer owner is about to fetch: 1 when nobody else
 * holds it (claims last 30 s), 0 when another owner's fetch is in flight. */
int bp_cache_claim(bp_cache *c, const char *account, const char *key, uint64_t owner);
void bp_cache_release(bp_cache *c, const char *account, const char *key, uint64_t owner);
size_t bp_cache_count(bp_cache *c);
/* Durable values (ctx.cache.set(key, v, {durable = true})): memory stays
 * what is read, and a backing the delivery layer registers keeps them
 * across restarts (cache.c never calls the store itself).  save is told of
 * each durable write with the event whose run made it (owner) and its
 * wall-clock expiry; load is asked for a key memory lacks (1: found, json
 * appended to out).  Both may be called from any delivery thread. */
typedef struct bp_cache_backing {
    void (*save)(void *ud, uint64_t owner, const char *account, const char *key, const char *json, size_t len,
                 int64_t expires_wall_ms);
    int (*load)(void *ud, const char *account, const char *key, bp_buf *out, int64_t *expires_wall_ms);
    void *ud;
} bp_cache_backing;
void bp_cache_set_backing(bp_cache *c, const bp_cache_backing *b);
/* The backing's save, and memory: at once when owner is 0, else only once
 * bp_cache_settle says the owner's event is over and its requests went
 * out (until then other events read the value before it). */
void bp_cache_set_durable(bp_cache *c, uint64_t owner, const char *account, const char *key, const char *json,
                          size_t len, double ttl_s);
/* The owner's event is final: its durable writes become what is read
 * (delivered: sent is 1), or are forgotten (a dead letter or an error: the
 * requests they stand for did not go out, and a replay maps it again). */
void bp_cache_settle(bp_cache *c, uint64_t owner, int sent);
/* bp_cache_get, else the backing's value (kept in memory for its remaining time). */
int bp_cache_get_stored(bp_cache *c, const char *account, const char *key, bp_buf *out);

/* ---- request.c: where a request may go -------------------------------------------------- */

/* 0 when url's scheme, host and port are those of one of bp's destination
 * URL fields as cfg sets them, or https to one of its fixed hosts; else -1
 * with err naming the host and what is allowed.  engine.c checks every
 * request and step with it, so dry-run, deliver, serve and embedders all do. */
/* "https://host:port" (lower case) of an absolute http(s) URL into out: 0, or -1 when it is not one */
int bp_url_origin(const char *url, char *out, size_t n);
int bp_request_check_destination(const bp_blueprint *bp, const bp_config *cfg, const char *url, bp_error *err);

#endif
