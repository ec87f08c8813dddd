/* libFuzzer: what serve does with request bodies before anything is
 * stored or applied: intake's split and judgement of each event, and an
 * admin call's body.  An event judged storable is a JSON object with a
 * known type; an accepted admin body is an object. */
#include "service.h"

#include <stdlib.h>
#include <string.h>

static int check_event(void *ctx, long index, const char *ev, size_t len, const char *message_id, const char *why)
{
    (void)ctx; (void)index; (void)message_id;
    if (why) return 0;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, ev, len, NULL, &err) != 0 || d.nodes[0].type != BP_JOBJECT) abort();
    const char *type = bp_jscalar(&d, bp_jget(&d, 0, "type"));
    if (!type) abort();
    bp_doc_free(&d);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bp_intake_each((const char *)data, size, check_event, NULL);
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_admin_body((const char *)data, size, &d, &err) == 0 && d.nodes[0].type != BP_JOBJECT) abort();
    bp_doc_free(&d);
    return 0;
}
