/* libFuzzer: the token verifier on arbitrary tokens (and a signed one with
 * its payload bytes taken from the input, so the claim parsing is reached). */
#include "service.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *token = malloc(size + 1);
    memcpy(token, data, size);
    token[size] = '\0';
    bp_claims who;
    bp_error err;
    bp_jwt_expect expect = { "signal", "blueprints" };
    if (bp_jwt_verify("fuzz-secret", token, 1000, size & 1 ? &expect : NULL, &who, &err) == 0) {
        /* one spelling per token: the 32-byte signature is 43 characters
         * whose last one has its 2 unused bits zero */
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const char *sig = strrchr(token, '.') + 1;
        if (strlen(sig) != 43 || ((strchr(b64, sig[42]) - b64) & 3)) abort();
    }
    /* the input as a subject and issuer: a token we sign must verify */
    bp_buf t;
    bp_buf_init(&t);
    bp_buf subject;
    bp_buf_init(&subject);
    bp_json_write_text(&subject, token, size);   /* valid UTF-8 text for the claim */
    subject.data[subject.len - 1] = '\0';
    bp_jwt_sign("fuzz-secret", "viewer", subject.data + 1, NULL, NULL, 900, 2000, &t);
    if (bp_jwt_verify("fuzz-secret", t.data, 1000, NULL, &who, &err) != 0) abort();
    bp_buf_free(&subject);
    bp_buf_free(&t);
    free(token);
    return 0;
}
