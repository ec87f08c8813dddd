/*
 * blueprint.h — the public API of the Signal Blueprints runtime core.
 *
 * The core turns one canonical Signal event (JSON) into zero or more vendor
 * HTTP requests by running a Lua 5.4 blueprint in a sandbox.  Everything a
 * caller needs is declared here:
 *
 *   bp_buf        growable byte buffer
 *   bp_doc        exact JSON (and YAML) document tree
 *   bp_blueprint  a blueprint folder loaded from disk (blueprint.yaml + Lua)
 *   bp_config     an integration's validated config
 *   bp_engine     one sandboxed Lua state running a blueprint, reused per event
 *   bp_outcome    what the engine decided for one event
 *
 * Errors are reported as text in a caller-supplied bp_error; messages name
 * the file, line and field concerned and never contain secret values.
 *
 * This API is libblueprint (pkg-config blueprint), which needs Lua 5.4,
 * libyaml and the C library only.  Delivery and the service (bp_deliver,
 * bp_serve: HTTP, SQLite, Kafka) are not part of it: they are declared in
 * blueprint_service.h and live in libblueprint-service (pkg-config
 * blueprint-service), which links this library.
 *
 * Rules that hold for every declaration below unless its comment says
 * otherwise:
 *
 *   Ownership  What a *_new or *_load function returns belongs to the caller,
 *              who releases it with the matching *_free (which accepts NULL).
 *              Structs the caller allocates (bp_buf, bp_doc, bp_outcome) are
 *              set up with *_init and released with *_free.  Pointers
 *              passed in are borrowed and not kept after the call returns,
 *              except where a comment says so (an engine keeps its blueprint
 *              and config, a memory reader its data: they must outlive it).
 *              Strings returned as const char * belong to the object they
 *              came from and live as long as it.
 *   Errors     A function that can fail returns NULL or -1 and writes why in
 *              the caller's bp_error.
 *   Threads    An engine, and every buffer, document, outcome and reader, is
 *              used by one thread at a time: make one engine per thread.
 *              A loaded bp_blueprint and bp_config are never modified after
 *              loading and may be shared read-only by engines on any number
 *              of threads.  Functions without an object (bp_json_write_*,
 *              bp_utf8_check, bp_consent_resolve, bp_version, …) are
 *              thread-safe.  Engines may be created and freed concurrently.
 */
#ifndef BLUEPRINT_H
#define BLUEPRINT_H

#include <stddef.h>
#include <stdint.h>

/* What the shared libraries export: only declarations marked BP_API (the
 * service library is built with -fvisibility=hidden, the mapping library
 * with a version script made from this header). */
#if defined(BP_API)
#elif defined(__GNUC__)
#define BP_API __attribute__((visibility("default")))
#else
#define BP_API
#endif

/* The version of this header; bp_version() gives the library's, as
 * "MAJOR.MINOR.PATCH" (a static string).  The soname follows MAJOR.  Before
 * 1.0 a MINOR release may change the structs a caller allocates or reads
 * (0.2: bp_outcome and bp_request gained steps, bp_blueprint consent_denied
 * and description; 0.3: bp_deliver and bp_serve moved to libblueprint-service,
 * bp_serve_opts gained keep_delivered_s and keep_dead_s): rebuild against the
 * new header. */
#define BP_VERSION_MAJOR 0
#define BP_VERSION_MINOR 3
#define BP_VERSION_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif

BP_API const char *bp_version(void);

/* ---- errors ---------------------------------------------------------- */

/* A message buffer on the caller's stack; nothing to free. */
typedef struct bp_error {
    char msg[1024];
} bp_error;

BP_API void bp_error_set(bp_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- buffers (buffer.c) ---------------------------------------------- */

/* The caller's struct; `data` is owned by the buffer (bp_buf_free releases
 * it, reset keeps it for reuse).  One thread at a time.  Out of memory
 * aborts. */
typedef struct bp_buf {
    char *data; /* always NUL-terminated when len > 0 or after any add */
    size_t len;
    size_t cap;
} bp_buf;

BP_API void bp_buf_init(bp_buf *b);
BP_API void bp_buf_free(bp_buf *b);
BP_API void bp_buf_reset(bp_buf *b);
BP_API void bp_buf_reserve(bp_buf *b, size_t extra);
BP_API void bp_buf_add(bp_buf *b, const void *p, size_t n);
BP_API void bp_buf_adds(bp_buf *b, const char *s);
BP_API void bp_buf_addc(bp_buf *b, char c);
BP_API void bp_buf_printf(bp_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- JSON documents (json.c, yaml.c) ---------------------------------- */

enum bp_jtype {
    BP_JNULL, BP_JFALSE, BP_JTRUE, BP_JNUMBER, BP_JSTRING, BP_JARRAY, BP_JOBJECT
};

/* A document is a flat array of nodes in document order.  A container's
 * children follow it; an object's children alternate key, value.  `next`
 * is the index just past the node's subtree, so siblings are walked with
 * i = nodes[i].next.  Strings are stored unescaped (valid UTF-8); numbers
 * keep their exact source text, which is what makes the JSON path exact. */
typedef struct bp_jnode {
    uint8_t type;
    uint32_t off;   /* string/number: offset of the text in doc->text */
    uint32_t len;   /* string/number: length; containers: child count */
    uint32_t next;
    uint32_t line;  /* 1-based source line (used for YAML error messages) */
} bp_jnode;

/* The caller's struct: bp_doc_init, then any number of parses (each
 * replaces the tree), then bp_doc_free.  The nodes and text are owned by the
 * doc; `origin` is borrowed.  One thread at a time; reading a parsed doc
 * from several threads is safe. */
typedef struct bp_doc {
    bp_jnode *nodes;
    size_t n, cap;
    bp_buf text;           /* owned copy of the source; strings unescaped in place */
    uint32_t generation;   /* bumped on every parse: stale Lua views detect reuse */
    const char *origin;    /* file name for messages, may be NULL */
} bp_doc;

typedef struct bp_json_limits {
    size_t max_bytes;  /* default 512 KiB */
    int max_depth;     /* default 64 */
} bp_json_limits;

#define BP_DEFAULT_MAX_EVENT_BYTES (512u * 1024u)
#define BP_DEFAULT_MAX_DEPTH 64
#define BP_NONE ((uint32_t)-1)

BP_API void bp_doc_init(bp_doc *d);
BP_API void bp_doc_free(bp_doc *d);
/* Parse exactly one JSON value (surrounding whitespace allowed) into d,
 * copying src.  `limits` may be NULL (defaults).  Returns 0 or -1 with a
 * message naming the byte offset of the problem. */
BP_API int bp_json_parse(bp_doc *d, const char *src, size_t len,
                         const bp_json_limits *limits, bp_error *err);
/* Parse a YAML 1.1 document (libyaml) into the same tree.  Plain scalars
 * true/false/null/~ become booleans/null, plain numbers become numbers,
 * everything else strings.  Line numbers are kept for messages. */
BP_API int bp_yaml_parse(bp_doc *d, const char *src, size_t len, bp_error *err);

/* Lookups return node indexes or text inside d (valid until d is parsed
 * again or freed). */
BP_API const char *bp_jtext(const bp_doc *d, uint32_t i); /* string/number text */
BP_API uint32_t bp_jget(const bp_doc *d, uint32_t obj, const char *key); /* BP_NONE if absent */
BP_API uint32_t bp_jget_path(const bp_doc *d, uint32_t from, const char *dotted);
/* The string value of node i when it is a string or number, else NULL. */
BP_API const char *bp_jscalar(const bp_doc *d, uint32_t i);

/* Writers append to the caller's buffer; they keep no state. */
/* Append node i as compact JSON. */
BP_API void bp_json_write_node(bp_buf *out, const bp_doc *d, uint32_t i);
/* Append s as a JSON string literal (quotes included).  Input must be valid
 * UTF-8; non-ASCII is written as-is, control characters escaped. */
BP_API void bp_json_write_string(bp_buf *out, const char *s, size_t len);
/* The same for text that may not be valid UTF-8, checked as it is written:
 * _utf8 appends nothing and returns -1 (offset of the first bad byte in
 * *bad_at) when it is not; _text writes each bad byte as U+FFFD. */
BP_API int bp_json_write_utf8(bp_buf *out, const char *s, size_t len, size_t *bad_at);
BP_API void bp_json_write_text(bp_buf *out, const char *s, size_t len);
/* Append an integer in decimal. */
BP_API void bp_json_write_int(bp_buf *out, long long v);
/* Append a double in the shortest form that reads back to the same value;
 * integral values keep a ".0" so they stay floats. Returns -1 on NaN/inf. */
BP_API int bp_json_write_double(bp_buf *out, double v);
/* 0 when s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF),
 * else -1 and *bad_at set to the offending byte offset. */
BP_API int bp_utf8_check(const char *s, size_t len, size_t *bad_at);

/* ---- blueprints and config (blueprint.c, config.c) ---------------------- */

/* boolean: "true"/"false"; list: a list of strings (or one comma-separated
 * string), kept as a JSON array; map: names to strings, kept as a JSON
 * object.  ctx.config shows a boolean as a Lua boolean, a list or map as a
 * read-only table. */
enum bp_field_type { BP_FIELD_STRING, BP_FIELD_SECRET, BP_FIELD_URL, BP_FIELD_INTEGER,
                     BP_FIELD_BOOLEAN, BP_FIELD_LIST, BP_FIELD_MAP };

typedef struct bp_field {
    char *key, *label, *help, *default_value;
    enum bp_field_type type;
    int required;
    /* a secret: the URL fields whose hosts it is sent to (blueprint.yaml's
     * sent_to; without it, every URL field under destinations) */
    char **sent_to; size_t nsent_to;
} bp_field;

typedef struct bp_route {
    char *name;      /* key in the event table: "page", "Order Completed", … */
    char *type;      /* page | track | identify | group | screen */
    char *mapping;   /* Lua file name, relative to the blueprint folder */
    int enabled;
    int line;        /* line in blueprint.yaml, for messages */
} bp_route;

typedef struct bp_blueprint {
    char *dir, *yaml_path;
    char *vendor, *name, *category, *status, *consent_category;
    char **variants; size_t nvariants;
    bp_field *fields; size_t nfields;
    char ***together; size_t ntogether;   /* groups of keys: all or none */
    bp_route *routes; size_t nroutes;
    bp_route custom;                       /* mapping for unlisted track events */
    int has_custom;
    double rate_limit_rps;
    char *rate_limit_scope;                /* config field naming the account the limit is per, or NULL */
    int retry_max_attempts;
    char *auth_help;                       /* what to tell the operator when credentials fail */
    /* blueprint.yaml's responses: table, the vendor's own answer rules tried
     * before plain HTTP semantics (opaque: read by the delivery loop only) */
    struct bp_response_rule *responses; size_t nresponses;
    /* consent_denied: the mapping run when an event's consent is denied,
     * on the event cut to who the visitor is and their consent, so that
     * the vendor hears of the withdrawal (list unsubscribes) and nothing
     * about what the visitor did */
    bp_route consent_denied;
    int has_consent_denied;
    char *description;                     /* one paragraph for the catalog, or NULL */
    /* destinations: where its requests may go, the hosts of these URL
     * fields as configured (without the key: every URL field) and these
     * fixed hosts (https); any other is an error outcome */
    char **dest_fields; size_t ndest_fields;
    char **dest_hosts; size_t ndest_hosts;
    /* verify: the mapping whose requests install and update send to check
     * a config without sending data (credentials, the vendor's switches);
     * each answer is judged by the responses: rules (bp_engine_verify) */
    bp_route verify;
    int has_verify;
    /* batch: the mapping that may take a batch of events of one account
     * (events of the event table rows it names), and its bounds */
    struct bp_batch_spec {
        char **events; size_t nevents;   /* event table names ("custom": the custom: mapping's events) */
        char *mapping;
        char *enabled_by;                /* a boolean config field that switches batches on, or NULL: always */
        int max_events, min_events;      /* most per request; fewest worth a batch */
        long max_wait_ms;                /* longest an event waits for its batch to fill */
        int max_per_minute;              /* most batch requests per account in any 60 s, or 0: no bound */
        int line;
    } batch;
    int has_batch;
} bp_blueprint;

/* Load and check a blueprint folder (blueprint.yaml and the Lua files it
 * names).  The caller owns the result (bp_blueprint_free) and must not
 * modify it; once loaded it is read-only and may be shared by engines on
 * several threads.  NULL with err set when the folder is not valid. */
BP_API bp_blueprint *bp_blueprint_load(const char *dir, bp_error *err);
BP_API void bp_blueprint_free(bp_blueprint *bp);
/* The field named key, owned by bp, or NULL. */
BP_API const bp_field *bp_blueprint_field(const bp_blueprint *bp, const char *key);

enum bp_consent_policy { BP_CONSENT_DENY, BP_CONSENT_ALLOW };

typedef struct bp_config_value { char *key, *value; int secret; } bp_config_value;
typedef struct bp_event_override { char *name; int enabled; } bp_event_override;

typedef struct bp_config {
    bp_config_value *values; size_t nvalues;  /* defaults applied */
    bp_event_override *events; size_t nevents;
    enum bp_consent_policy consent_default;
    char *name, *variant, *delivery_mode;     /* from an install body, may be NULL */
} bp_config;

/* Load and validate a config (YAML or JSON, bare map or install body)
 * against the blueprint's fields.  `origin` names the source in messages.
 * The config copies what it needs (bp may be freed first); the caller owns
 * it (bp_config_free) and must not modify it: read-only, it may be shared
 * by engines on several threads.  It holds secret values in memory. */
BP_API bp_config *bp_config_load_file(const bp_blueprint *bp, const char *path, bp_error *err);
BP_API bp_config *bp_config_load_text(const bp_blueprint *bp, const char *text, size_t len,
                                      const char *origin, bp_error *err);
BP_API void bp_config_free(bp_config *c);
/* The value of key (defaults applied), owned by c, or NULL. */
BP_API const char *bp_config_get(const bp_config *c, const char *key);

/* ---- consent (consent.c) ------------------------------------------------ */

enum bp_consent_state { BP_CONSENT_GRANTED, BP_CONSENT_DENIED, BP_CONSENT_ABSENT };

typedef struct bp_consent {
    enum bp_consent_state state;  /* as found in the event */
    int allowed;                  /* after applying the default policy */
    const char *source;           /* "context.consent.canonical.marketing", … or NULL */
    char raw[64];                 /* the value found, for reasons (never a secret) */
} bp_consent;

/* Fill the caller's *out from the event's consent fields for `category`.
 * out->source is a static string.  Thread-safe. */
BP_API void bp_consent_resolve(const bp_doc *event, const char *category,
                               enum bp_consent_policy fallback, bp_consent *out);

/* ---- requests and outcomes (request.c) ----------------------------------- */

enum bp_verdict { BP_DELIVER, BP_DROP, BP_ERROR };
enum bp_body_kind { BP_BODY_NONE, BP_BODY_JSON, BP_BODY_FORM, BP_BODY_RAW };

/* A place in a request where the core substitutes a secret when sending.
 * Lua never sees secret values, only their names. */
typedef struct bp_secret_slot {
    size_t offset;      /* byte offset in the body or header value */
    char *name;         /* config key of the secret */
} bp_secret_slot;

/* bp_header.secret: 0 a literal value; 1 the secret itself; BP_HEADER_HMAC
 * the hex HMAC-SHA256 of the body as sent, keyed with the secret
 * (ctx.hmac_sha256), computed by the transport.  Never shown in dry-run. */
#define BP_HEADER_HMAC 2

typedef struct bp_header {
    char *name;
    char *value;        /* literal value, or the secret's config key */
    int secret;         /* 0, 1 or BP_HEADER_HMAC (above) */
} bp_header;

typedef struct bp_request {
    char *method, *url;
    char *once;      /* skip when this key succeeded recently (e.g. "contact:a@b.co"); record on success */
    char *marks;     /* record this key on success without skipping (e.g. identify's own sync) */
    bp_header *headers; size_t nheaders;
    enum bp_body_kind body_kind;
    bp_buf body;                     /* encoded, secrets left out at slot offsets */
    bp_secret_slot *slots; size_t nslots;
    /* A step: sent by ctx.send(req, opts) inside the mapping, whose answer
     * the mapping reads before it goes on (docs/blueprints.md, "Steps"). */
    int step;
    uint64_t fingerprint;            /* of method, url and body: matches a step to its recorded answer */
    char *cache_key;                 /* opts.cache: the answer is kept per account under it */
    double cache_ttl_s;
    int accept[8]; int naccept;      /* opts.accept: non-2xx statuses handed to the mapping */
    /* the step's answer, once known (answer_status 0: not yet) */
    int answer_status;
    char *answer_body;               /* as received, cut to BP_ANSWER_SHOWN bytes in outcome lines */
    char *answer_from;               /* "sent", "cached", or what dry-run assumed and from where */
} bp_request;

/* Bytes of a step's answer written in an outcome line (the whole answer,
 * up to BP_ANSWER_MAX, is what the mapping reads). */
#define BP_ANSWER_SHOWN 2048
#define BP_ANSWER_MAX (256 * 1024)

/* The strings of an outcome and of its requests (method, url, once, marks,
 * header names and values, message_id, type, event, mapping) belong to the
 * outcome: make them with bp_outcome_strdup; reset and free release them
 * together. */
typedef struct bp_outcome {
    enum bp_verdict verdict;
    bp_buf reason;
    char *message_id, *type, *event;  /* may be NULL */
    char *mapping;                    /* the Lua file that ran, may be NULL */
    bp_request *requests; size_t nrequests, caprequests;
    struct bp_chunk *strings;         /* where those strings live */
    /* the mapping's print/ctx.log lines (at: "file.lua:12"), bounded per
     * event; written as "logs" in the outcome line when there are any */
    struct bp_logline { const char *at, *msg; } *logs;
    size_t nlogs, caplogs, logs_bytes, logs_dropped;
    /* Steps (ctx.send): the first nanswered requests are steps with their
     * answers.  pending: the mapping stopped at the step after them (the
     * last request), to run again from the top once its answer is known.
     * wait_ms > 0: another event is fetching the answer a step shares
     * (opts.cache); run again after that long.  journal: every answered
     * step as JSON (what the next run reads back), empty without steps. */
    size_t nanswered;
    int pending, wait_ms;
    bp_buf journal;
} bp_outcome;

/* The caller's struct: bp_outcome_init once, pass it to bp_engine_run for
 * every event (each run resets it, keeping its memory), bp_outcome_free at
 * the end.  Everything it points to is owned by it and valid until the next
 * run, reset or free.  One thread at a time. */
BP_API void bp_outcome_init(bp_outcome *o);
BP_API void bp_outcome_reset(bp_outcome *o);
BP_API void bp_outcome_free(bp_outcome *o);
/* A new empty request owned by the outcome (valid until the next add). */
BP_API bp_request *bp_outcome_add_request(bp_outcome *o);
/* A copy of s owned by the outcome (NULL for NULL). */
BP_API char *bp_outcome_strdup(bp_outcome *o, const char *s);
/* Render a request body with every secret shown as [redacted]. */
BP_API void bp_request_render_redacted(const bp_request *r, bp_buf *out);
/* Render a request body with secrets substituted (escaped for the body kind)
 * from the config.  Only the delivery path calls this: the result holds
 * secret values. */
BP_API void bp_request_render_secret(const bp_request *r, const bp_config *c, bp_buf *out);
/* One dry-run line (docs/contracts.md, dry-run), without the trailing newline, appended to
 * the caller's out.  index < 0 is written as null. */
BP_API void bp_outcome_write_json(const bp_outcome *o, long index, bp_buf *out);
/* The same fields without the closing brace and with `label` as the
 * outcome, for callers that append their own (delivery). */
BP_API void bp_outcome_write_fields(const bp_outcome *o, long index, const char *label, bp_buf *out);

/* ---- the engine (engine.c, sandbox.c) ------------------------------------ */

typedef struct bp_limits {
    size_t memory_bytes;        /* per Lua state; default 64 MiB */
    uint64_t instructions;      /* per event; default 20 million */
    unsigned timeout_ms;        /* wall time per event; default 1000 */
    bp_json_limits json;
} bp_limits;

/* Fill the caller's *l with the defaults above. */
BP_API void bp_limits_default(bp_limits *l);

/* One sandboxed Lua state with the blueprint's mappings compiled, reused
 * for every event.  Opaque; owned by the caller (bp_engine_free).  An engine
 * is used by one thread at a time (make one per thread; it may move between
 * threads between calls).  It keeps bp and cfg, read-only: they must
 * outlive it and may be shared with other engines. */
typedef struct bp_engine bp_engine;

/* Compile every mapping of the blueprint once into one sandboxed state.
 * `limits` may be NULL (defaults); it is copied.  NULL with err set when a
 * mapping does not compile. */
BP_API bp_engine *bp_engine_new(const bp_blueprint *bp, const bp_config *cfg,
                                const bp_limits *limits, bp_error *err);
BP_API void bp_engine_free(bp_engine *e);
/* Judge one event (json[0..len), borrowed).  Always fills the caller's
 * `out` (reset first; a bad event gets BP_ERROR with a reason); returns the
 * verdict. */
BP_API enum bp_verdict bp_engine_run(bp_engine *e, const char *json, size_t len, bp_outcome *out);
/* Run the blueprint's verify: mapping (on the event {"type":"verify"},
 * consent unknown): its requests check the config without sending data.
 * BP_DROP with a reason when the blueprint has none. */
BP_API enum bp_verdict bp_engine_verify(bp_engine *e, bp_outcome *out);

/* Answers to steps (ctx.send) when nothing is sent: dry-run, tests, an
 * embedder's own transport.  Called with the step's request; fills the
 * status and the body (JSON text) and says where the answer comes from
 * ("answers.yaml: GET /api/3/tags", …); returns 0, or -1 for "no answer"
 * (the event stops at that step: outcome pending).  Without an answerer a
 * step stops the run (out->pending) and the caller sends it. */
typedef int (*bp_answer_fn)(void *ud, const bp_request *step, int *status, bp_buf *body, bp_buf *from);
BP_API void bp_engine_set_answerer(bp_engine *e, bp_answer_fn fn, void *ud);

/* (Delivery and the service, bp_deliver and bp_serve: blueprint_service.h.) */

/* ---- event streams (reader.c) -------------------------------------------- */

/* Reads events from NDJSON, a JSON array (streamed element by element) or a
 * single (possibly pretty-printed) JSON object, in constant memory.  Owned
 * by the caller (bp_reader_free); one thread at a time.  It reads from the
 * caller's fd (not closed by the reader) or borrows data, which must outlive
 * it. */
typedef struct bp_reader bp_reader;

enum bp_read_status { BP_READ_EVENT, BP_READ_BAD, BP_READ_END };

/* max_event_bytes 0 = BP_DEFAULT_MAX_EVENT_BYTES. */
BP_API bp_reader *bp_reader_new(int fd, size_t max_event_bytes);
BP_API bp_reader *bp_reader_new_mem(const char *data, size_t len, size_t max_event_bytes);
BP_API void bp_reader_free(bp_reader *r);
/* BP_READ_EVENT: *ev and *len hold one event's text (owned by the reader,
 * valid until the next call).  BP_READ_BAD: the input could not be split
 * there; `err` says why, and the reader has skipped to where it can carry
 * on.  BP_READ_END at the end of the input (or a read error). */
BP_API enum bp_read_status bp_reader_next(bp_reader *r, const char **ev, size_t *len, bp_error *err);

/* ---- runtime: logging, the watchdog (log.c, watchdog.c) ------------------ */

/* Where the library's messages go.  Every message (delivery progress, the
 * service's log, a mapping's print/ctx.log lines) is one JSON object,
 *   {"ts":1718000000.123,"level":"info","msg":"mapping log","log":"hi","at":"track.lua:3",…}
 * passed to the callback as `json` (NUL-terminated, no newline; valid only
 * during the call), with its level and its "msg" text as `msg`.
 *
 * Unset (the default), messages go to stderr as the CLI writes them: a JSON
 * line each, and a mapping's lines as "blueprint log [event N id] file:line:
 * text".  With a callback set nothing is written to stderr by the library
 * (bp_serve, the service, installs bp_log_stderr when no callback is set).
 *
 * Threads: process-wide; may be called at any time from any thread.  The
 * callback is called on the thread that has the message (often several at
 * once) and must be thread-safe; it must not call bp_set_log.  Once
 * bp_set_log returns, no thread is still inside the previous callback, so
 * its ctx may be freed.  bp_set_log(NULL, NULL) restores the default. */
enum { BP_LOG_DEBUG = 0, BP_LOG_INFO = 1, BP_LOG_WARN = 2, BP_LOG_ERROR = 3 };
typedef void (*bp_log_fn)(void *ctx, int level, const char *msg, const char *json);
BP_API void bp_set_log(bp_log_fn fn, void *ctx);
/* The callback and ctx set now (NULL, NULL when unset). */
BP_API void bp_get_log(bp_log_fn *fn, void **ctx);
/* A ready-made callback: `json` and a newline to stderr, in one write. */
BP_API void bp_log_stderr(void *ctx, int level, const char *msg, const char *json);

/* The watchdog.  A mapping runs without Lua's count hook (the hook costs
 * ~10% of mapping time); a watchdog thread looks at running calls every
 * 10 ms and sends a call that has run for 10-20 ms a real-time signal on
 * its own thread, whose handler arms the hook, and from then on the
 * instruction and time budgets of bp_limits apply.  The handler is
 * installed with SA_SIGINFO | SA_RESTART | SA_ONSTACK (as Go's cgo requires
 * of every handler) when the first engine is made, and only when the
 * signal's disposition is still the default: a handler someone else
 * installed is never replaced (engines then run as with signo 0).  The
 * library never changes the signal mask of a caller's thread; its own
 * watchdog thread blocks every signal.
 *
 * bp_watchdog_config chooses the signal, before the first engine is made:
 *   signo  a real-time signal (SIGRTMIN..SIGRTMAX) or any catchable signal
 *          the embedder does not use; default SIGRTMIN+2;
 *   0      no watchdog thread and no signal handler at all: every call
 *          runs with the count hook armed (a budget check every 1000 VM
 *          instructions), which makes mapping ~8% slower
 *          (docs/embedding.md, Runtime behaviour).
 * Returns 0, or -1 with err set (an invalid signal, or the watchdog already
 * started with another one).  Thread-safe. */
BP_API int bp_watchdog_config(int signo, bp_error *err);
/* The signal in use or to be used (0: none). */
BP_API int bp_watchdog_signal(void);

#ifdef __cplusplus
}
#endif

#endif
