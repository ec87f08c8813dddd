/* libFuzzer: YAML (and JSON) into the document tree, and config validation
 * against the ActiveCampaign blueprint.  What YAML yields must write as
 * valid JSON. */
#include "internal.h"

#include <stdlib.h>

static bp_blueprint *bp;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    bp_error err;
    bp = bp_blueprint_load(BP_REPO "/blueprints/activecampaign", &err);
    if (!bp) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bp_doc d, check;
    bp_error err;
    bp_doc_init(&d);
    bp_doc_init(&check);
    if (bp_yaml_parse(&d, (const char *)data, size, &err) == 0 && d.n) {
        bp_buf out;
        bp_buf_init(&out);
        bp_json_write_node(&out, &d, 0);
        if (bp_json_parse(&check, out.data, out.len, NULL, &err) != 0) abort();   /* YAML made invalid JSON */
        bp_buf_free(&out);
    }
    bp_config *c = bp_config_load_text(bp, (const char *)data, size, "fuzz", &err);
    bp_config_free(c);
    bp_doc_free(&d);
    bp_doc_free(&check);
    return 0;
}
