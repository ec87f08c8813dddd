/*
 * consent.c — is this integration allowed to receive this event?
 *
 * Signal writes consent in three shapes (docs/events.md, Consent), newest first:
 *   context.consent.canonical.<purpose>    Signal's canonical purposes
 *   context.consent.categories.<purpose>   the CMP's categories
 *   context.consent.<purpose>              flat, oldest
 * The first shape that has the purpose decides.  An unrecognised value is
 * treated as denied: for marketing, sending without consent is the costly
 * mistake.  Absent everywhere, the integration's default policy decides.
 */
#include "blueprint.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const granted_words[] = {
    "granted", "true", "yes", "allow", "allowed", "accepted", "opt_in", "opt-in", "opted_in", "1", "on", NULL
};
static const char *const denied_words[] = {
    "denied", "false", "no", "deny", "rejected", "declined", "opt_out", "opt-out", "opted_out", "0", "off", NULL
};

static int word_in(const char *s, const char *const *words)
{
    for (; *words; words++) if (!strcasecmp(s, *words)) return 1;
    return 0;
}

void bp_consent_resolve(const bp_doc *ev, const char *category, enum bp_consent_policy fallback,
                        bp_consent *out)
{
    static const char *const shapes[] = { "canonical", "categories", NULL };
    static const char *const sources[] = {
        "context.consent.canonical", "context.consent.categories", "context.consent"
    };
    memset(out, 0, sizeof *out);
    out->state = BP_CONSENT_ABSENT;
    uint32_t consent = bp_jget_path(ev, 0, "context.consent");
    for (int s = 0; s < 3 && consent != BP_NONE; s++) {
        uint32_t holder = shapes[s] ? bp_jget(ev, consent, shapes[s]) : consent;
        uint32_t v = bp_jget(ev, holder, category);
        if (v == BP_NONE || ev->nodes[v].type == BP_JNULL) continue;
        out->source = sources[s];
        switch (ev->nodes[v].type) {
        case BP_JTRUE: out->state = BP_CONSENT_GRANTED; snprintf(out->raw, sizeof out->raw, "true"); break;
        case BP_JFALSE: out->state = BP_CONSENT_DENIED; snprintf(out->raw, sizeof out->raw, "false"); break;
        case BP_JSTRING:
        case BP_JNUMBER: {
            const char *t = bp_jtext(ev, v);
            snprintf(out->raw, sizeof out->raw, "%s", t);
            out->state = word_in(t, granted_words) ? BP_CONSENT_GRANTED : BP_CONSENT_DENIED;
            break;
        }
        default:
            snprintf(out->raw, sizeof out->raw, "%s", ev->nodes[v].type == BP_JOBJECT ? "an object" : "an array");
            out->state = BP_CONSENT_DENIED;
        }
        if (out->state == BP_CONSENT_DENIED && ev->nodes[v].type == BP_JSTRING &&
            !word_in(bp_jtext(ev, v), denied_words))
            snprintf(out->raw + strlen(out->raw), sizeof out->raw - strlen(out->raw), " (unrecognised)");
        break;
    }
    if (out->state == BP_CONSENT_ABSENT) out->allowed = fallback == BP_CONSENT_ALLOW;
    else out->allowed = out->state == BP_CONSENT_GRANTED;
}
