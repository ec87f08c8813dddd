/* libFuzzer: the engine on arbitrary event bytes with the ActiveCampaign
 * blueprint: every input ends in exactly one outcome line of valid JSON. */
#include "internal.h"

#include <stdlib.h>

static bp_blueprint *bp;
static bp_config *cfg;
static bp_engine *engine;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    bp_error err;
    bp = bp_blueprint_load(BP_REPO "/blueprints/activecampaign", &err);
    cfg = bp ? bp_config_load_file(bp, BP_REPO "/blueprints/activecampaign/examples/config.yaml", &err) : NULL;
    engine = cfg ? bp_engine_new(bp, cfg, NULL, &err) : NULL;
    if (!engine) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bp_outcome out;
    bp_outcome_init(&out);
    bp_engine_run(engine, (const char *)data, size, &out);
    bp_buf line;
    bp_buf_init(&line);
    bp_outcome_write_json(&out, 0, &line);
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    if (bp_json_parse(&d, line.data, line.len, NULL, &err) != 0) abort();   /* an outcome line that is not JSON */
    bp_doc_free(&d);
    bp_buf_free(&line);
    bp_outcome_free(&out);
    return 0;
}
