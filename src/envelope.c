/*
 * envelope.c — the event envelope's vocabulary: the event types Signal
 * sends, the keys it uses for an event's id, and the cut of an event that
 * a consent_denied mapping may see.
 *
 * The blueprint loader (an event table names types), the engine (it judges
 * events) and the service (intake, replay) all need the same words; they
 * live here, below all of them, so that no one asks the engine for them.
 */
#include "internal.h"

#include <string.h>

const char *const bp_message_id_keys[] = { "messageId", "message_id", "event_id", NULL };
const char *const bp_event_types[] = { "page", "track", "identify", "group", "screen", NULL };

const char *bp_event_message_id(const bp_doc *d)
{
    for (const char *const *k = bp_message_id_keys; *k; k++) {
        const char *s = bp_jscalar(d, bp_jget(d, 0, *k));
        if (s) return s;
    }
    return NULL;
}

int bp_event_type_known(const char *type)
{
    for (int i = 0; type && bp_event_types[i]; i++) if (!strcmp(type, bp_event_types[i])) return 1;
    return 0;
}

/* "key":node, after a comma unless first in its object. */
static void put_member(bp_buf *j, const char *key, const bp_doc *d, uint32_t n)
{
    if (n == BP_NONE) return;
    if (j->data[j->len - 1] != '{') bp_buf_addc(j, ',');
    bp_json_write_string(j, key, strlen(key));
    bp_buf_addc(j, ':');
    bp_json_write_node(j, d, n);
}

/* "key":{"sub":node} when node exists. */
static void put_nested(bp_buf *j, const char *key, const char *sub, const bp_doc *d, uint32_t n)
{
    if (n == BP_NONE) return;
    if (j->data[j->len - 1] != '{') bp_buf_addc(j, ',');
    bp_buf_printf(j, "\"%s\":{", key);
    put_member(j, sub, d, n);
    bp_buf_addc(j, '}');
}

void bp_event_identity(const bp_doc *d, bp_doc *out)
{
    static const char *const top[] = { "type", "event", "messageId", "message_id", "event_id", "userId",
                                       "anonymousId", "timestamp", NULL };
    bp_buf j;
    bp_buf_init(&j);
    bp_buf_addc(&j, '{');
    for (int i = 0; top[i]; i++) put_member(&j, top[i], d, bp_jget(d, 0, top[i]));
    put_nested(&j, "traits", "email", d, bp_jget_path(d, 0, "traits.email"));
    put_nested(&j, "properties", "email", d, bp_jget_path(d, 0, "properties.email"));
    uint32_t consent = bp_jget_path(d, 0, "context.consent"), email = bp_jget_path(d, 0, "context.traits.email");
    if (consent != BP_NONE || email != BP_NONE) {
        bp_buf_adds(&j, ",\"context\":{");
        put_member(&j, "consent", d, consent);
        put_nested(&j, "traits", "email", d, email);
        bp_buf_addc(&j, '}');
    }
    bp_buf_addc(&j, '}');
    bp_error err;
    if (bp_json_parse(out, j.data, j.len, NULL, &err) < 0) bp_json_parse(out, "{}", 2, NULL, &err);
    bp_buf_free(&j);
}
