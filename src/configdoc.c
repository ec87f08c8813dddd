/*
 * configdoc.c — an integration's config document in its stored form,
 * {"config":{…},"events":{…},"consent":{…}}: built from an install body or
 * merged with a PATCH, checked for unknown keys, validated against a
 * blueprint.  Pure functions: no state, no locks.
 */
#include "service.h"

#include <string.h>

/* out gets {"config":{…},"events":{…},"consent":{…}} from the install body or
 * the stored document at `root` of d, with `patch` (may be NULL) merged in
 * shallowly: a null in the patch removes the key. */
void bp_configdoc_merge(bp_buf *out, const bp_doc *d, uint32_t root, const bp_doc *p, uint32_t proot)
{
    static const char *const parts[] = { "config", "events", "consent" };
    bp_buf_addc(out, '{');
    for (int k = 0; k < 3; k++) {
        if (k) bp_buf_addc(out, ',');
        bp_buf_printf(out, "\"%s\":{", parts[k]);
        uint32_t a = bp_jget(d, root, parts[k]);
        uint32_t b = p ? bp_jget(p, proot, parts[k]) : BP_NONE;
        int first = 1;
        if (a != BP_NONE && d->nodes[a].type == BP_JOBJECT) {
            for (uint32_t c = a + 1, i = 0; i < d->nodes[a].len; i++, c = d->nodes[c + 1].next) {
                const char *key = bp_jtext(d, c);
                if (b != BP_NONE && bp_jget(p, b, key) != BP_NONE) continue;   /* patched below */
                if (!first) bp_buf_addc(out, ',');
                bp_json_write_node(out, d, c);
                bp_buf_addc(out, ':');
                bp_json_write_node(out, d, c + 1);
                first = 0;
            }
        }
        if (b != BP_NONE && p->nodes[b].type == BP_JOBJECT) {
            for (uint32_t c = b + 1, i = 0; i < p->nodes[b].len; i++, c = p->nodes[c + 1].next) {
                if (p->nodes[c + 1].type == BP_JNULL) continue;
                if (!first) bp_buf_addc(out, ',');
                bp_json_write_node(out, p, c);
                bp_buf_addc(out, ':');
                bp_json_write_node(out, p, c + 1);
                first = 0;
            }
        }
        bp_buf_addc(out, '}');
    }
    bp_buf_addc(out, '}');
}

/* Validate a stored-form document against a blueprint. */
bp_config *bp_configdoc_validate(const bp_blueprint *bp, const char *doc, const char *variant, bp_error *err)
{
    bp_buf body;
    bp_buf_init(&body);
    /* the config loader reads the install-body shape; give it the variant too */
    bp_buf_add(&body, doc, strlen(doc) - 1);
    bp_buf_adds(&body, ",\"variant\":");
    bp_json_write_string(&body, variant, strlen(variant));
    bp_buf_addc(&body, '}');
    bp_config *c = bp_config_load_text(bp, body.data, body.len, "config", err);
    bp_buf_free(&body);
    return c;
}

/* -1 with err naming the first key of the body's top level that is not in
 * `known` (a typo would otherwise be dropped by bp_configdoc_merge). */
int bp_check_body_keys(const bp_doc *body, const char *const *known, const char *what, bp_error *err)
{
    for (uint32_t k = 1, i = 0; i < body->nodes[0].len; i++, k = body->nodes[k + 1].next) {
        const char *key = bp_jtext(body, k);
        int found = 0;
        for (int j = 0; known[j] && !found; j++) found = !strcmp(known[j], key);
        if (found) continue;
        bp_buf list;
        bp_buf_init(&list);
        for (int j = 0; known[j]; j++) bp_buf_printf(&list, "%s%s", j ? ", " : "", known[j]);
        bp_error_set(err, "unknown key '%s' in the %s body (known keys: %s)", key, what, list.data);
        bp_buf_free(&list);
        return -1;
    }
    return 0;
}

int bp_configdoc_install_fields(const bp_doc *body, const char **name, const char **variant, const char **mode,
                                bp_error *err)
{
    static const char *const body_keys[] = { "name", "variant", "config", "events", "consent", "delivery_mode", NULL };
    *name = bp_jscalar(body, bp_jget(body, 0, "name"));
    *variant = bp_jscalar(body, bp_jget(body, 0, "variant"));
    *mode = bp_jscalar(body, bp_jget(body, 0, "delivery_mode"));
    if (!*variant) *variant = "default";
    if (!*mode) *mode = "server_side";
    if (bp_check_body_keys(body, body_keys, "install", err) < 0) return -1;
    if (!*name || !**name) { bp_error_set(err, "field 'name' is required"); return -1; }
    if (bp_jget(body, 0, "config") == BP_NONE) { bp_error_set(err, "field 'config' is required"); return -1; }
    return 0;
}

bp_config *bp_configdoc_install(const bp_blueprint *bp, const bp_doc *body, const char *variant, const char *mode,
                                bp_buf *doc, int *http, bp_error *err)
{
    int known = 0;
    for (size_t i = 0; i < bp->nvariants; i++) if (!strcmp(bp->variants[i], variant)) known = 1;
    if (!known) {
        *http = 404;
        bp_error_set(err, "vendor '%s' has no variant '%s'", bp->vendor, variant);
        return NULL;
    }
    bp_configdoc_merge(doc, body, 0, NULL, 0);
    bp_config *cfg = bp_configdoc_validate(bp, doc->data, variant, err);
    if (cfg && strcmp(mode, "server_side") != 0) {
        bp_error_set(err, "delivery_mode '%s' is not supported; use \"server_side\"", mode);
        bp_config_free(cfg);
        cfg = NULL;
    }
    return cfg;
}

bp_config *bp_configdoc_update(const bp_blueprint *bp, const char *current, const bp_doc *patch, const char *variant,
                               bp_buf *doc, bp_error *err)
{
    bp_doc cur;
    bp_doc_init(&cur);
    bp_json_parse(&cur, current, strlen(current), NULL, err);
    bp_configdoc_merge(doc, &cur, 0, patch, 0);
    bp_doc_free(&cur);
    return bp_secret_follows(bp, current, doc->data, patch, err) < 0 ? NULL
           : bp_configdoc_validate(bp, doc->data, variant, err);
}
