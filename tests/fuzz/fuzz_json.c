/* libFuzzer: the exact JSON parser.  Whatever it accepts, it writes as JSON
 * that reads back to the same text. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bp_doc d, again;
    bp_error err;
    bp_doc_init(&d);
    bp_doc_init(&again);
    if (bp_json_parse(&d, (const char *)data, size, NULL, &err) == 0) {
        bp_buf out, out2;
        bp_buf_init(&out);
        bp_buf_init(&out2);
        bp_json_write_node(&out, &d, 0);
        if (bp_json_parse(&again, out.data, out.len, NULL, &err) != 0) abort();   /* wrote invalid JSON */
        bp_json_write_node(&out2, &again, 0);
        if (out.len != out2.len || memcmp(out.data, out2.data, out.len)) abort();   /* not stable */
        bp_buf_free(&out);
        bp_buf_free(&out2);
    }
    bp_doc_free(&d);
    bp_doc_free(&again);
    return 0;
}
