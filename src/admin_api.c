/*
 * admin_api.c — the Management API's integrations: the catalog of
 * blueprints, install, show, update and delete, config revisions and the
 * audit log; and the JSON an integration is shown as (secrets masked,
 * health, delivery counts, the blueprint revision running).
 *
 * The changes themselves are the registry's (registry.c); an install or a
 * config update answers with the blueprint's checks when it has a verify:
 * mapping (server.c parks the connection while they run).
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON pieces ---------------------------------------------------------------------- */

void bp_write_str(bp_buf *b, const char *key, const char *v, int comma)
{
    bp_buf_printf(b, "%s\"%s\":", comma ? "," : "", key);
    if (v) bp_json_write_string(b, v, strlen(v)); else bp_buf_adds(b, "null");
}

static void write_vendor(bp_buf *b, const bp_vendor *v, int full)
{
    const bp_blueprint *bp = v->bp ? v->bp->bp : NULL;
    bp_buf_addc(b, '{');
    bp_write_str(b, "vendor", v->key, 0);
    if (bp) {
        bp_write_str(b, "name", bp->name, 1);
        bp_write_str(b, "description", bp->description, 1);
        bp_write_str(b, "category", bp->category, 1);
        bp_write_str(b, "status", bp->status, 1);
        bp_write_str(b, "consent_category", bp->consent_category, 1);
        bp_buf_adds(b, ",\"variants\":[");
        for (size_t i = 0; i < bp->nvariants; i++) {
            if (i) bp_buf_addc(b, ',');
            bp_json_write_string(b, bp->variants[i], strlen(bp->variants[i]));
        }
        bp_buf_adds(b, "],\"config_fields\":[");
        for (size_t i = 0; i < bp->nfields; i++) {
            const bp_field *f = &bp->fields[i];
            if (i) bp_buf_addc(b, ',');
            bp_buf_addc(b, '{');
            bp_write_str(b, "key", f->key, 0);
            bp_write_str(b, "label", f->label, 1);
            bp_write_str(b, "type", bp_field_type_name(f->type), 1);
            bp_buf_printf(b, ",\"required\":%s", f->required ? "true" : "false");
            bp_write_str(b, "default", f->default_value, 1);
            bp_write_str(b, "help", f->help, 1);
            bp_buf_addc(b, '}');
        }
        /* config_rules: {"together": [[keys…]]}: fields set all together or not at all */
        bp_buf_adds(b, "],\"config_rules\":{\"together\":[");
        for (size_t g = 0; g < bp->ntogether; g++) {
            bp_buf_adds(b, g ? ",[" : "[");
            for (char **k = bp->together[g]; *k; k++) {
                if (k != bp->together[g]) bp_buf_addc(b, ',');
                bp_json_write_string(b, *k, strlen(*k));
            }
            bp_buf_addc(b, ']');
        }
        bp_buf_adds(b, "]}");
        if (full) {
            bp_buf_adds(b, ",\"events\":[");
            for (size_t i = 0; i < bp->nroutes; i++) {
                if (i) bp_buf_addc(b, ',');
                bp_buf_addc(b, '{');
                bp_write_str(b, "name", bp->routes[i].name, 0);
                bp_write_str(b, "type", bp->routes[i].type, 1);
                bp_write_str(b, "mapping", bp->routes[i].mapping, 1);
                bp_buf_printf(b, ",\"enabled\":%s}", bp->routes[i].enabled ? "true" : "false");
            }
            bp_buf_printf(b, "],\"custom_events\":%s", bp->has_custom ? "\"disabled until enabled per event name\"" : "null");
            bp_buf_printf(b, ",\"rate_limit_rps\":%g,\"retry_max_attempts\":%d", bp->rate_limit_rps, bp->retry_max_attempts);
        }
    }
    bp_write_str(b, "load_error", v->load_error, 1);
    bp_buf_addc(b, '}');
}

/* Cluster mode: ,"cluster":{"revision","status","error"}: the cluster's
 * newest revision of v and whether this node runs it (current), is
 * switching to it (pending), or refused it (refused, and why).  `detail`:
 * the refusal's own words, which may quote a config value (a field the
 * revision retypes) — for Live Events (signed in), not for the open
 * /healthz, which says where to read them.  Registry mu held.  Returns 1
 * when refused. */
int bp_write_cluster_blueprint(bp_buf *b, const bp_vendor *v, int detail)
{
    const char *running = v->bp ? v->bp->revision : "";
    /* running the cluster's revision outranks an older refusal of it */
    int current = v->cluster_revision[0] && !strcmp(running, v->cluster_revision);
    int refused = !current && v->cluster_error;
    bp_buf_adds(b, ",\"cluster\":{\"revision\":");
    if (v->cluster_revision[0]) bp_json_write_string(b, v->cluster_revision, strlen(v->cluster_revision));
    else bp_buf_adds(b, "null");
    bp_buf_printf(b, ",\"status\":\"%s\"", current ? "current" : refused ? "refused" : "pending");
    if (refused) {
        static const char outline[] = "this node refuses the cluster's revision of this blueprint: the reason is in "
                                      "its log and in Live Events";
        bp_buf_adds(b, ",\"error\":");
        if (detail) bp_json_write_string(b, v->cluster_error, strlen(v->cluster_error));
        else bp_json_write_string(b, outline, sizeof outline - 1);
        bp_buf note;
        bp_buf_init(&note);
        bp_buf_printf(&note, "this node keeps running revision %s; the other nodes run %s", running[0] ? running : "(none)",
                      v->cluster_revision[0] ? v->cluster_revision : "another");
        bp_buf_adds(b, ",\"note\":");
        bp_json_write_string(b, note.data, note.len);
        bp_buf_free(&note);
    }
    bp_buf_addc(b, '}');
    return refused;
}

/* ,"blueprint":{…}: the revision running and the one on disk; when the
 * files on disk were rejected, why, and that the previous one still runs.
 * Registry mu held. */
void bp_write_blueprint_state(bp_buf *b, const bp_vendor *v)
{
    const char *running = v->bp && v->bp->revision[0] ? v->bp->revision : NULL;
    bp_buf_adds(b, ",\"blueprint\":{\"running\":");
    if (running) bp_json_write_string(b, running, strlen(running)); else bp_buf_adds(b, "null");
    bp_buf_adds(b, ",\"on_disk\":");
    if (v->disk_revision[0]) bp_json_write_string(b, v->disk_revision, strlen(v->disk_revision));
    else bp_buf_adds(b, "null");
    if (v->cluster_revision[0] || v->cluster_error) bp_write_cluster_blueprint(b, v, 1);
    if (!v->load_error) { bp_buf_adds(b, ",\"status\":\"current\"}"); return; }
    bp_buf_adds(b, ",\"status\":\"rejected\",\"error\":");
    bp_json_write_string(b, v->load_error, strlen(v->load_error));
    if (running)
        bp_buf_printf(b, ",\"note\":\"the files on disk (revision %s) were rejected; the previous version (revision %s) "
                      "keeps running until they are fixed\"}", v->disk_revision, running);
    else
        bp_buf_adds(b, ",\"note\":\"the blueprint failed to load; nothing runs until it is fixed\"}");
}

/* The state the API shows: a blueprint that never loaded outranks what the
 * loop last said (the loop never got the integration).  Registry mu held. */
int bp_api_health_state(const bp_integration *it)
{
    return it->vendor->bp ? it->health.state : BP_HEALTH_BLUEPRINT_ERROR;
}

/* The health with its reason: the load error when nothing loaded.  Registry mu held. */
static bp_health health_of(const bp_integration *it)
{
    bp_health h = it->health;
    if (bp_api_health_state(it) != h.state) {
        h.state = BP_HEALTH_BLUEPRINT_ERROR;
        h.until_ms = 0;
        h.status = 0;
        snprintf(h.reason, sizeof h.reason, "the blueprint failed to load: %s",
                 it->vendor->load_error ? it->vendor->load_error : "no version of it loaded");
    }
    return h;
}

/* ,"health":{"state","reason","since","until","vendor_status","vendor_answer"}:
 * times in ms since the epoch like created_at (since: null when it has been
 * so since the server started; until: backing_off's next attempt, else
 * null); the vendor's status and the head of its answer when one made it so
 * (else null).  The texts come from the vendor: written as text (any bad
 * UTF-8 replaced).  Registry mu held. */
static void write_health(bp_buf *b, const bp_integration *it)
{
    bp_health h = health_of(it);
    bp_buf_printf(b, ",\"health\":{\"state\":\"%s\",\"reason\":", bp_health_names[h.state]);
    bp_json_write_text(b, h.reason, strlen(h.reason));
    if (h.status) {
        bp_buf_printf(b, ",\"vendor_status\":%d,\"vendor_answer\":", h.status);
        bp_json_write_text(b, h.answer, strlen(h.answer));
    } else {
        bp_buf_adds(b, ",\"vendor_status\":null,\"vendor_answer\":null");
    }
    if (h.since_ms) bp_buf_printf(b, ",\"since\":%lld", (long long)h.since_ms);
    else bp_buf_adds(b, ",\"since\":null");
    if (h.until_ms) bp_buf_printf(b, ",\"until\":%lld}", (long long)h.until_ms);
    else bp_buf_adds(b, ",\"until\":null}");
}

/* ,"delivery":{…}: the counts since the server started (counted_since) and
 * those of the last hour (last_hour).  Registry mu held. */
static void write_delivery(bp_buf *b, const bp_integration *it, int running)
{
    const bp_counts *st = &it->stats;
    bp_buf_printf(b, ",\"delivery\":{\"running\":%s,\"delivered\":%ld,\"dropped\":%ld,\"errors\":%ld,"
                  "\"dead_lettered\":%ld,\"held\":%ld,\"retries\":%ld,\"counted_since\":%lld",
                  running ? "true" : "false",
                  atomic_load_explicit(&st->delivered, memory_order_relaxed), atomic_load_explicit(&st->dropped, memory_order_relaxed),
                  atomic_load_explicit(&st->errors, memory_order_relaxed), atomic_load_explicit(&st->dead, memory_order_relaxed),
                  atomic_load_explicit(&st->held, memory_order_relaxed), atomic_load_explicit(&st->retries, memory_order_relaxed),
                  (long long)bp_registry_started_ms(it->registry));
    long hour[BP_RECENT_ENDS];
    bp_recent_sum(it->recent, (int64_t)bp_wall_ms(), hour);
    bp_buf_printf(b, ",\"last_hour\":{\"delivered\":%ld,\"dropped\":%ld,\"errors\":%ld,\"dead_lettered\":%ld,"
                  "\"held\":%ld}}", hour[BP_END_DELIVERED], hour[BP_END_DROPPED], hour[BP_END_ERROR], hour[BP_END_DEAD],
                  hour[BP_END_HELD]);
}

/* The integration as the API shows it: secrets masked.  Registry mu held. */
static void write_integration(bp_buf *b, const bp_integration *it)
{
    bp_buf_addc(b, '{');
    bp_write_str(b, "id", it->id, 0);
    bp_write_str(b, "name", it->name, 1);
    bp_write_str(b, "vendor", it->vendor->key, 1);
    bp_write_str(b, "variant", it->variant, 1);
    bp_write_str(b, "delivery_mode", it->delivery_mode, 1);
    bp_buf_printf(b, ",\"revision\":%d,\"created_at\":%lld,\"config\":", it->revision, (long long)it->created_at);
    const bp_blueprint *bp = it->vendor->bp ? it->vendor->bp->bp : NULL;
    bp_write_masked_config(b, bp, it->config_json);
    /* the effective event table: blueprint defaults with this config's overrides */
    bp_buf_adds(b, ",\"events\":{");
    int first = 1;
    for (size_t i = 0; bp && i < bp->nroutes; i++) {
        int enabled = bp->routes[i].enabled;
        for (size_t k = 0; it->cfg && k < it->cfg->nevents; k++)
            if (!strcmp(it->cfg->events[k].name, bp->routes[i].name)) enabled = it->cfg->events[k].enabled;
        if (!first) bp_buf_addc(b, ',');
        first = 0;
        bp_json_write_string(b, bp->routes[i].name, strlen(bp->routes[i].name));
        bp_buf_printf(b, ":{\"enabled\":%s,\"mapping\":", enabled ? "true" : "false");
        bp_json_write_string(b, bp->routes[i].mapping, strlen(bp->routes[i].mapping));
        bp_buf_addc(b, '}');
    }
    for (size_t k = 0; it->cfg && bp && bp->has_custom && k < it->cfg->nevents; k++) {
        int listed = 0;
        for (size_t i = 0; i < bp->nroutes; i++) if (!strcmp(bp->routes[i].name, it->cfg->events[k].name)) listed = 1;
        if (listed) continue;
        if (!first) bp_buf_addc(b, ',');
        first = 0;
        bp_json_write_string(b, it->cfg->events[k].name, strlen(it->cfg->events[k].name));
        bp_buf_printf(b, ":{\"enabled\":%s,\"mapping\":", it->cfg->events[k].enabled ? "true" : "false");
        bp_json_write_string(b, bp->custom.mapping, strlen(bp->custom.mapping));
        bp_buf_addc(b, '}');
    }
    bp_buf_addc(b, '}');
    write_health(b, it);
    write_delivery(b, it, bp && it->cfg && bp_registry_pool(it->registry));
    bp_write_blueprint_state(b, it->vendor);
    bp_buf_addc(b, '}');
}

/* What the writers above read, read with the registry's lock held. */
typedef struct locked_write { bp_buf *b; const bp_vendor *v; bp_integration *it; int first; } locked_write;

static void integration_locked(void *ctx) { locked_write *w = ctx; write_integration(w->b, w->it); }
static void state_locked(void *ctx) { locked_write *w = ctx; bp_write_blueprint_state(w->b, w->v); }

static void show_integration(bp_registry *reg, bp_buf *b, bp_integration *it)
{
    locked_write w = { b, NULL, it, 0 };
    bp_registry_locked(reg, integration_locked, &w);
}

void bp_write_blueprint_state_of(bp_registry *reg, bp_buf *b, const bp_vendor *v)
{
    locked_write w = { b, v, NULL, 0 };
    bp_registry_locked(reg, state_locked, &w);
}

static void list_vendor(void *ctx, bp_vendor *v)
{
    locked_write *w = ctx;
    if (!w->first) bp_buf_addc(w->b, ',');
    w->first = 0;
    write_vendor(w->b, v, 0);
}

static void list_integration(void *ctx, bp_integration *it)
{
    locked_write *w = ctx;
    if (!w->first) bp_buf_addc(w->b, ',');
    w->first = 0;
    write_integration(w->b, it);
}

/* ---- handlers --------------------------------------------------------------------------- */

/* The error code for a registry failure's status. */
static const char *change_error_code(int http, const bp_error *err)
{
    if (http == 503) return strncmp(err->msg, "the cluster", 11) == 0 ? "CLUSTER_UNAVAILABLE" : "BLUEPRINT_UNAVAILABLE";
    return http == 404 ? "NOT_FOUND" : http == 409 ? "CONFLICT" : http == 422 ? "INVALID_CONFIG" : "INTERNAL";
}

/* A failed install or update; a 422 names the config field the message is
 * about ("config field 'api_url' …" → "field":"config.api_url"), and a 409
 * on a name taken names "name", for a form to show it next to that field. */
static void change_failed(reply *r, int http, const bp_error *err)
{
    const char *at = http == 422 ? strstr(err->msg, "config field '") : NULL;
    size_t n = at ? strcspn(at + 14, "'") : 0;
    bp_buf extra, field;
    bp_buf_init(&extra);
    bp_buf_init(&field);
    if (http == 409 && !strncmp(err->msg, "an integration named '", 22)) {
        bp_buf_adds(&extra, ",\"field\":\"name\"");
    } else if (at && n && at[14 + n] == '\'') {
        bp_buf_printf(&field, "config.%.*s", (int)n, at + 14);
        bp_buf_adds(&extra, ",\"field\":");
        bp_json_write_text(&extra, field.data, field.len);
    }
    bp_reply_error_with(r, http, change_error_code(http, err), err->msg, extra.data);
    bp_buf_free(&extra);
    bp_buf_free(&field);
}

void bp_api_catalog(call *k)
{
    locked_write w = { &k->r->body, NULL, NULL, 1 };
    bp_buf_adds(&k->r->body, "{\"integrations\":[");
    bp_registry_each_vendor(k->s->reg, list_vendor, &w);
    bp_buf_adds(&k->r->body, "]}");
}

/* The vendor of key, written when there is one (the registry's lock held). */
typedef struct vendor_shown { bp_registry *reg; const char *key; bp_buf *b; bp_vendor *v; } vendor_shown;

static void show_vendor(void *ctx)
{
    vendor_shown *w = ctx;
    if ((w->v = bp_registry_vendor(w->reg, w->key))) write_vendor(w->b, w->v, 1);
}

void bp_api_catalog_vendor(call *k)
{
    bp_registry *reg = k->s->reg;
    vendor_shown w = { reg, k->vendor, &k->r->body, NULL };
    bp_registry_locked(reg, show_vendor, &w);
    if (!w.v) bp_reply_error(k->r, 404, "NOT_FOUND", "no blueprint for vendor '%s' in %s", k->vendor,
                             bp_registry_blueprints_dir(reg));
}

void bp_api_install(call *k)
{
    bp_registry *reg = k->s->reg;
    bp_doc d;
    bp_doc_init(&d);
    if (bp_parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    bp_vendor *v = bp_registry_find_vendor(reg, k->vendor);
    char why[1024] = "", *load_error = NULL;
    bp_shared_bp *sbp = v ? bp_registry_vendor_bp(reg, v, NULL, &load_error) : NULL;
    int usable = sbp != NULL;
    if (v && !usable) snprintf(why, sizeof why, "%s", load_error ? load_error : "");
    bp_shared_bp_drop(sbp);
    free(load_error);
    if (!v) { bp_reply_error(k->r, 404, "NOT_FOUND", "no blueprint for vendor '%s'", k->vendor); bp_doc_free(&d); return; }
    if (!usable) { bp_reply_error(k->r, 503, "BLUEPRINT_UNAVAILABLE", "the '%s' blueprint failed to load: %s", k->vendor, why); bp_doc_free(&d); return; }
    bp_integration *it;
    int http;
    bp_error err;
    if (bp_registry_install(reg, v, &d, &k->who, &it, &http, &err) < 0) {
        change_failed(k->r, http, &err);
    } else {
        k->r->status = 201;
        show_integration(reg, &k->r->body, it);
        bp_defer_for_checks(k, it);
        bp_integration_release(it);
    }
    bp_doc_free(&d);
}

void bp_api_list_integrations(call *k)
{
    locked_write w = { &k->r->body, NULL, NULL, 1 };
    bp_buf_adds(&k->r->body, "{\"integrations\":[");
    bp_registry_each(k->s->reg, list_integration, &w);
    bp_buf_adds(&k->r->body, "]}");
}

/* One integration, with what its events are doing now ("now": held,
 * waiting for an attempt or a retry, dead letters kept), which the counters
 * since start cannot say: "held 1 since start" stays after the fix, "held
 * now 0" does not.  Counted in the store (outside the registry's lock), so
 * only here, not in the list of every integration. */
void bp_api_show_integration(call *k)
{
    bp_buf *b = &k->r->body;
    show_integration(k->s->reg, b, k->it);
    bp_store *store = bp_registry_store(k->s->reg);
    const char *id = k->it->id;
    if (!store || !b->len || b->data[b->len - 1] != '}') return;
    b->len--;   /* the integration's closing brace: "now" goes inside */
    bp_buf_printf(b, ",\"now\":{\"held\":%ld,\"waiting\":%ld,\"dead_letters\":%ld}}", bp_store_count(store, id, "held"),
                  bp_store_count(store, id, "pending"), bp_store_count(store, id, "dead"));
}

void bp_api_update_integration(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (bp_parse_body(k->cn, &d, k->r) == 0) {
        int http;
        bp_error err;
        if (bp_registry_update(k->s->reg, k->it, &d, &k->who, &http, &err) < 0) {
            change_failed(k->r, http, &err);
        } else {
            bp_api_show_integration(k);
            if (bp_jget(&d, 0, "config") != BP_NONE) bp_defer_for_checks(k, k->it);   /* events alone change nothing to check */
        }
    }
    bp_doc_free(&d);
}

void bp_api_delete_integration(call *k)
{
    bp_error err;
    if (bp_registry_delete(k->s->reg, k->it, &k->who, &err) < 0)
        bp_reply_error(k->r, 503, change_error_code(503, &err), "%s", err.msg);
    else
        k->r->status = 204;
}

void bp_api_revisions(call *k)
{
    bp_buf_printf(&k->r->body, "{\"integration_id\":\"%s\",\"revisions\":", k->it->id);
    bp_registry_revisions(k->s->reg, k->it, &k->r->body);
    bp_buf_addc(&k->r->body, '}');
}

/* GET /v1/admin/audit-log?integration=&action=&actor=&since=&until=&limit=&cursor= */
void bp_api_audit_log(call *k)
{
    const char *q[7];
    static const char *const names[] = { "integration", "action", "actor", "since", "until", "limit", "cursor" };
    for (int i = 0; i < 7; i++) q[i] = MHD_lookup_connection_value(k->c, MHD_GET_ARGUMENT_KIND, names[i]);
    int limit = q[5] ? atoi(q[5]) : 100;
    if (limit < 1 || limit > 500) { bp_reply_error(k->r, 400, "BAD_REQUEST", "limit must be between 1 and 500"); return; }
    if (bp_registry_audit_list(k->s->reg, q[0], q[1], q[2], q[3] ? atoll(q[3]) : 0, q[4] ? atoll(q[4]) : 0,
                               q[6] ? atoll(q[6]) : 0, limit, &k->r->body) < 0)
        bp_reply_error(k->r, 500, "INTERNAL", "could not read the audit log");
}
