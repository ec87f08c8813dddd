/* libFuzzer: splitting an input stream (NDJSON, array, one object) into events. */
#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bp_reader *r = bp_reader_new_mem((const char *)data, size, 4096);
    const char *ev;
    size_t len;
    bp_error err;
    int n = 0;
    while (bp_reader_next(r, &ev, &len, &err) != BP_READ_END && n++ < 100000) {}
    bp_reader_free(r);
    return 0;
}
