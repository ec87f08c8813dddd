/*
 * unit_tests.c — C unit tests of the core, built and run with ASan + UBSan.
 * One test per behaviour: JSON vectors (valid and malformed), UTF-8, YAML,
 * consent shapes, stream splitting, form encoding and request rendering.
 */
#include "blueprint.h"
#include "service.h"
#include "check.h"

#include <sys/stat.h>

#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

/* Parse then write back compactly. */
static const char *roundtrip(const char *in)
{
    static bp_buf out;
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    bp_buf_free(&out);
    bp_buf_init(&out);
    if (bp_json_parse(&d, in, strlen(in), NULL, &err) < 0) {
        bp_buf_printf(&out, "ERROR %s", err.msg);
    } else {
        bp_json_write_node(&out, &d, 0);
    }
    bp_doc_free(&d);
    return out.data;
}

static const char *parse_error(const char *in, size_t len, int max_depth, size_t max_bytes)
{
    static bp_error err;
    bp_json_limits lim = { max_bytes, max_depth };
    bp_doc d;
    bp_doc_init(&d);
    int rc = bp_json_parse(&d, in, len, &lim, &err);
    bp_doc_free(&d);
    return rc < 0 ? err.msg : NULL;
}

TEST(json_integers_stay_exact)
{
    CHECK_STR(roundtrip("{\"id\":1234567890123456789}"), "{\"id\":1234567890123456789}");
    CHECK_STR(roundtrip("[-9223372036854775808,9223372036854775807]"), "[-9223372036854775808,9223372036854775807]");
    CHECK_STR(roundtrip("123456789012345678901234567890"), "123456789012345678901234567890");
}

TEST(json_doubles_stay_exact)
{
    CHECK_STR(roundtrip("[19.99,0.1,1e-7,2.5E+300,-0.0,1.0]"), "[19.99,0.1,1e-7,2.5E+300,-0.0,1.0]");
}

TEST(json_empty_containers_keep_their_kind)
{
    CHECK_STR(roundtrip(" { \"a\" : [ ] , \"b\" : { } } "), "{\"a\":[],\"b\":{}}");
    CHECK_STR(roundtrip("[]"), "[]");
    CHECK_STR(roundtrip("{}"), "{}");
}

TEST(json_escapes_decode_to_utf8)
{
    CHECK_STR(roundtrip("\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\n\\t\""), "\"café 😀 \\\"q\\\" \\\\ / \\n\\t\"");
    CHECK_STR(roundtrip("\"\\u0001\\u001f\""), "\"\\u0001\\u001f\"");
    CHECK_STR(roundtrip("\"Zoë 山田 🎉\""), "\"Zoë 山田 🎉\"");
}

/* The string scanners step eight bytes at a time: put each kind of special
 * byte at every offset of the first two words and at the very end. */
TEST(json_string_specials_at_every_offset)
{
    const char *specials[][2] = {   /* in the source, as written back */
        { "\\\"", "\\\"" }, { "\\\\", "\\\\" }, { "\\n", "\\n" }, { "\\u0001", "\\u0001" },
        { "\xc3\xa9", "\xc3\xa9" }, { "\xf0\x9f\x8e\x89", "\xf0\x9f\x8e\x89" },
    };
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++)
        for (int at = 0; at <= 17; at++) {
            char in[64], want[64];
            snprintf(in, sizeof in, "\"%.*s%s%.*s\"", at, "abcdefghijklmnopqrstuvwxyz", specials[k][0],
                     17 - at, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            snprintf(want, sizeof want, "\"%.*s%s%.*s\"", at, "abcdefghijklmnopqrstuvwxyz", specials[k][1],
                     17 - at, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            CHECK_STR(roundtrip(in), want);
        }
    /* a raw control byte or a bad UTF-8 byte is refused wherever it sits */
    for (int at = 0; at <= 17; at++) {
        char in[64];
        snprintf(in, sizeof in, "\"%.*s\x01%.*s\"", at, "abcdefghijklmnopqrstuvwxyz", 17 - at, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        CHECK_CONTAINS(roundtrip(in), "control character");
        snprintf(in, sizeof in, "\"%.*s\xff%.*s\"", at, "abcdefghijklmnopqrstuvwxyz", 17 - at, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        CHECK_CONTAINS(roundtrip(in), "invalid UTF-8");
    }
}

TEST(json_text_writers_check_utf8)
{
    bp_buf b;
    bp_buf_init(&b);
    bp_buf_adds(&b, "x");
    size_t bad = 0;
    CHECK_INT(bp_json_write_utf8(&b, "ok \xc3\xa9\n", 6, &bad), 0);
    CHECK_STR(b.data, "x\"ok \xc3\xa9\\n\"");
    bp_buf_reset(&b);
    bp_buf_adds(&b, "x");
    CHECK_INT(bp_json_write_utf8(&b, "abcdefghij\xffk", 12, &bad), -1);
    CHECK_INT(bad, 10);
    CHECK_STR(b.data, "x");                     /* nothing appended */
    bp_buf_reset(&b);
    bp_json_write_text(&b, "a\xff" "b\xc3\"\xed\xa0\x80z", 9);  /* bad byte, cut sequence, surrogate */
    CHECK_STR(b.data, "\"a\xef\xbf\xbd" "b\xef\xbf\xbd\\\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz\"");
    bp_buf_free(&b);
}

TEST(json_literals)
{
    CHECK_STR(roundtrip("[true,false,null]"), "[true,false,null]");
}

TEST(json_rejects_malformed_input)
{
    static const char *const bad[] = {
        "", "{", "[1,]", "{\"a\":1,}", "{'a':1}", "01", "1.", ".5", "-", "1e", "+1", "NaN", "Infinity",
        "tru", "nul", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud83d\"", "\"\\ude00\"", "\"a\nb\"", "[1 2]",
        "{\"a\" 1}", "{1:2}", "1 2", "[1]]", "\"\\ud83dx\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *e = parse_error(bad[i], strlen(bad[i]), 64, 1 << 20);
        if (!e) CHECK_FAIL("accepted malformed JSON: %s", bad[i]);
        else CHECK_CONTAINS(e, "invalid JSON");
    }
}

TEST(json_rejects_invalid_utf8)
{
    static const char *const bad[] = {
        "\"\xff\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *e = parse_error(bad[i], strlen(bad[i]), 64, 1 << 20);
        CHECK(e != NULL);
        if (e) CHECK_CONTAINS(e, "UTF-8");
    }
}

TEST(json_nul_byte_is_rejected)
{
    const char in[] = "\"a\0b\"";
    CHECK(parse_error(in, sizeof in - 1, 64, 1 << 20) != NULL);
}

TEST(json_depth_and_size_are_bounded)
{
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    CHECK_CONTAINS(parse_error(deep, 200, 64, 1 << 20), "nesting too deep");
    CHECK(parse_error(deep + 40, 120, 64, 1 << 20) == NULL);   /* 60 levels: fine */
    CHECK_CONTAINS(parse_error("[1,2,3]", 7, 64, 6), "too large");
}

TEST(json_lookup)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *in = "{\"a\":{\"b\":[1,{\"c\":\"x\"}]},\"e\\u0301\":2}";
    CHECK_INT(bp_json_parse(&d, in, strlen(in), NULL, &err), 0);
    CHECK_STR(bp_jscalar(&d, bp_jget(&d, 0, "e\xcc\x81")), "2");
    uint32_t b = bp_jget_path(&d, 0, "a.b");
    CHECK_INT(d.nodes[b].type, BP_JARRAY);
    CHECK_INT(d.nodes[b].len, 2);
    CHECK(bp_jget_path(&d, 0, "a.missing") == BP_NONE);
    CHECK(bp_jget(&d, b, "c") == BP_NONE);   /* arrays have no keys */
    bp_doc_free(&d);
}

TEST(json_double_writer_is_shortest_and_keeps_floatness)
{
    bp_buf b;
    bp_buf_init(&b);
    bp_json_write_double(&b, 0.1);
    bp_buf_addc(&b, ' ');
    bp_json_write_double(&b, 19.99);
    bp_buf_addc(&b, ' ');
    bp_json_write_double(&b, 40.0);
    bp_buf_addc(&b, ' ');
    bp_json_write_double(&b, 0.1 + 0.2);
    CHECK_STR(b.data, "0.1 19.99 40.0 0.30000000000000004");
    CHECK_INT(bp_json_write_double(&b, 0.0 / 0.0), -1);
    bp_buf_free(&b);
}

TEST(utf8_checker)
{
    size_t at = 99;
    CHECK_INT(bp_utf8_check("abc \xc3\xa9 \xf0\x9f\x98\x80", 11, &at), 0);
    CHECK_INT(bp_utf8_check("ab\xc3", 3, &at), -1);
    CHECK_INT(at, 2);
}

TEST(yaml_parses_into_the_same_tree)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *y = "a: 1\nb: \"2\"\nc: [x, true, ~]\nd:\n  e: 19.99\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), 0);
    CHECK_INT(d.nodes[bp_jget(&d, 0, "a")].type, BP_JNUMBER);
    CHECK_INT(d.nodes[bp_jget(&d, 0, "b")].type, BP_JSTRING);
    bp_buf out;
    bp_buf_init(&out);
    bp_json_write_node(&out, &d, 0);
    CHECK_STR(out.data, "{\"a\":1,\"b\":\"2\",\"c\":[\"x\",true,null],\"d\":{\"e\":19.99}}");
    CHECK_INT(d.nodes[bp_jget(&d, 0, "d") - 1].line, 4);   /* the key's line */
    bp_buf_free(&out);
    bp_doc_free(&d);
}

TEST(yaml_numbers_are_json_numbers_or_strings)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    const char *y = "a: 06\nb: .5\nc: 5.\nd: -.5\ne: 0\nf: -1.5e3\ng: 00\nh: 1e5\ni: -0\nj: 1.e3\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), 0);
    bp_buf out;
    bp_buf_init(&out);
    bp_json_write_node(&out, &d, 0);
    CHECK_STR(out.data, "{\"a\":\"06\",\"b\":\".5\",\"c\":\"5.\",\"d\":\"-.5\",\"e\":0,\"f\":-1.5e3,\"g\":\"00\","
                        "\"h\":1e5,\"i\":-0,\"j\":\"1.e3\"}");
    bp_doc check;
    bp_doc_init(&check);
    CHECK_INT(bp_json_parse(&check, out.data, out.len, NULL, &err), 0);   /* what it writes reads back */
    bp_doc_free(&check);
    bp_buf_free(&out);
    bp_doc_free(&d);
}

TEST(yaml_errors_name_line_and_column)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    d.origin = "x.yaml";
    const char *y = "a: 1\nb: [1, 2\nc: 3\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), -1);
    CHECK_CONTAINS(err.msg, "x.yaml:");
    CHECK_CONTAINS(err.msg, "invalid YAML");
    bp_doc_free(&d);
}

TEST(yaml_duplicate_keys_name_both_lines)
{
    bp_doc d;
    bp_error err;
    bp_doc_init(&d);
    d.origin = "config.yaml";
    const char *y = "consent:\n  default_policy: allow\napi_key: k\nlist: [{a: 1, b: 2}]\n"
                    "x: {a: 1}\nconsent:\n  default_policy: deny\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), -1);
    CHECK_STR(err.msg, "config.yaml:6: key `consent` is already set at line 1 (keys are unique: keep one)");
    CHECK_INT((int)d.n, 0);
    /* in a nested map, in a list; the same key in two maps is fine */
    y = "a: {k: 1}\nb: {k: 2}\nc:\n  - {k: 1, j: 2, k: 3}\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), -1);
    CHECK_STR(err.msg, "config.yaml:4: key `k` is set twice in the same map (keys are unique: keep one)");
    y = "a: {k: 1}\nb: {k: 2}\nk: 3\n";
    CHECK_INT(bp_yaml_parse(&d, y, strlen(y), &err), 0);
    bp_doc_free(&d);
}

static enum bp_consent_state consent_of(const char *ev, int *allowed, enum bp_consent_policy pol)
{
    bp_doc d;
    bp_error err;
    bp_consent c;
    bp_doc_init(&d);
    if (bp_json_parse(&d, ev, strlen(ev), NULL, &err) < 0) abort();
    bp_consent_resolve(&d, "marketing", pol, &c);
    bp_doc_free(&d);
    *allowed = c.allowed;
    return c.state;
}

TEST(consent_three_shapes_newest_first)
{
    int ok;
    CHECK_INT(consent_of("{\"context\":{\"consent\":{\"canonical\":{\"marketing\":true},\"marketing\":false}}}", &ok, BP_CONSENT_DENY), BP_CONSENT_GRANTED);
    CHECK_INT(ok, 1);
    CHECK_INT(consent_of("{\"context\":{\"consent\":{\"categories\":{\"marketing\":\"denied\"}}}}", &ok, BP_CONSENT_ALLOW), BP_CONSENT_DENIED);
    CHECK_INT(ok, 0);
    CHECK_INT(consent_of("{\"context\":{\"consent\":{\"marketing\":\"granted\"}}}", &ok, BP_CONSENT_DENY), BP_CONSENT_GRANTED);
    CHECK_INT(consent_of("{\"context\":{\"consent\":{\"marketing\":\"maybe\"}}}", &ok, BP_CONSENT_ALLOW), BP_CONSENT_DENIED);
    CHECK_INT(ok, 0);
}

TEST(consent_absent_uses_the_policy)
{
    int ok;
    CHECK_INT(consent_of("{\"context\":{}}", &ok, BP_CONSENT_DENY), BP_CONSENT_ABSENT);
    CHECK_INT(ok, 0);
    CHECK_INT(consent_of("{\"context\":{\"consent\":{\"analytics\":true}}}", &ok, BP_CONSENT_ALLOW), BP_CONSENT_ABSENT);
    CHECK_INT(ok, 1);
}

/* Feed text through a pipe into the reader and collect what it returns. */
static const char *split(const char *input, size_t max)
{
    static bp_buf out;
    int fds[2];
    if (pipe(fds) < 0) abort();
    if (write(fds[1], input, strlen(input)) != (ssize_t)strlen(input)) abort();
    close(fds[1]);
    bp_buf_free(&out);
    bp_buf_init(&out);
    bp_reader *r = bp_reader_new(fds[0], max);
    const char *ev;
    size_t len;
    bp_error err;
    enum bp_read_status st;
    while ((st = bp_reader_next(r, &ev, &len, &err)) != BP_READ_END) {
        if (st == BP_READ_EVENT) { bp_buf_addc(&out, '<'); bp_buf_add(&out, ev, len); bp_buf_addc(&out, '>'); }
        else bp_buf_adds(&out, "<BAD>");
    }
    bp_reader_free(r);
    close(fds[0]);
    return out.data ? out.data : "";
}

TEST(reader_ndjson_lines)
{
    CHECK_STR(split("{\"a\":1}\n\n{\"b\":2}\r\n{bad\n", 1024), "<{\"a\":1}><{\"b\":2}><{bad>");
}

TEST(reader_array_elements)
{
    CHECK_STR(split(" [ {\"a\":\"]\"} ,\n {\"b\":[1,2]}, 3 ]", 1024), "<{\"a\":\"]\"}><{\"b\":[1,2]}><3>");
    CHECK_STR(split("[]", 1024), "");
    CHECK_STR(split("[{\"a\":1}", 1024), "<{\"a\":1}><BAD>");
}

/* The reader's errors name the input line an event begins on
 * (blank lines and pretty-printed events counted), never a byte offset. */
TEST(reader_errors_name_lines)
{
    const char *in = "[{\"a\":1},\n\n {\"b\":2} {\"c\":3},\n{\n \"d\":4}\n";
    bp_reader *r = bp_reader_new_mem(in, strlen(in), 1024);
    const char *ev;
    size_t len;
    bp_error err;
    long lines[8];
    int n = 0;
    char bad[1024] = "";
    enum bp_read_status st;
    while (n < 8 && (st = bp_reader_next(r, &ev, &len, &err)) != BP_READ_END) {
        lines[n++] = bp_reader_line(r);
        if (st == BP_READ_BAD && !bad[0]) snprintf(bad, sizeof bad, "%s", err.msg);
    }
    bp_reader_free(r);
    CHECK(n == 5);
    CHECK(lines[0] == 1 && lines[1] == 3 && lines[2] == 3 && lines[3] == 4 && lines[4] == 6);
    CHECK_STR(bad, "line 3: malformed input: expected ',' between array elements before this one (this element skipped)");
}

TEST(reader_pretty_object)
{
    CHECK_STR(split("{\n  \"a\": {\n    \"b\": 1\n  }\n}\n", 1024), "<{\n  \"a\": {\n    \"b\": 1\n  }\n}>");
}

TEST(reader_truncated_first_line_is_still_ndjson)
{
    CHECK_STR(split("{\"a\":\n{\"b\":2}\n", 1024), "<{\"a\":><{\"b\":2}>");
}

TEST(reader_oversized_event_is_skipped)
{
    CHECK_STR(split("{\"a\":\"xxxxxxxxxxxxxxxxxxxx\"}\n{\"b\":1}\n", 10), "<BAD><{\"b\":1}>");
}

TEST(form_escape)
{
    bp_buf b;
    bp_buf_init(&b);
    bp_form_escape(&b, "a b&c=d/é{\"}", strlen("a b&c=d/é{\"}"));
    CHECK_STR(b.data, "a+b%26c%3Dd%2F%C3%A9%7B%22%7D");
    bp_buf_free(&b);
}

/* An outcome's strings outlive nothing but the outcome: many small ones, a
 * big one, resets in between (ASan reports any leak or overlap). */
TEST(outcome_strings_live_in_the_outcome)
{
    bp_outcome o;
    bp_outcome_init(&o);
    char big[5000];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int round = 0; round < 3; round++) {
        char *kept[400];
        char tmp[32];
        for (int i = 0; i < 400; i++) {
            snprintf(tmp, sizeof tmp, "string-%d-%d", round, i);
            kept[i] = bp_outcome_strdup(&o, tmp);
        }
        char *b = bp_outcome_strdup(&o, big);
        CHECK_INT(strlen(b), sizeof big - 1);
        for (int i = 0; i < 400; i++) {
            snprintf(tmp, sizeof tmp, "string-%d-%d", round, i);
            CHECK_STR(kept[i], tmp);
        }
        CHECK(bp_outcome_strdup(&o, NULL) == NULL);
        bp_outcome_reset(&o);
        CHECK(o.strings != NULL);                 /* a chunk kept for the next event */
    }
    bp_outcome_free(&o);
    CHECK(o.strings == NULL);
}

TEST(render_substitutes_or_redacts_secrets)
{
    bp_outcome o;
    bp_outcome_init(&o);
    bp_request *r = bp_outcome_add_request(&o);
    r->method = bp_outcome_strdup(&o, "POST");
    r->url = bp_outcome_strdup(&o, "https://x");
    r->body_kind = BP_BODY_FORM;
    bp_buf_adds(&r->body, "a=1&key=&z=2");
    r->slots = calloc(1, sizeof *r->slots);
    r->slots[0].offset = 8;
    r->slots[0].name = strdup("k");
    r->nslots = 1;
    bp_config cfg = { 0 };
    bp_config_value v = { "k", "s3cr et", 1 };
    cfg.values = &v;
    cfg.nvalues = 1;
    bp_buf out;
    bp_buf_init(&out);
    bp_request_render_redacted(r, &out);
    CHECK_STR(out.data, "a=1&key=[redacted]&z=2");
    bp_buf_reset(&out);
    bp_request_render_secret(r, &cfg, &out);
    CHECK_STR(out.data, "a=1&key=s3cr+et&z=2");
    bp_buf_reset(&out);
    bp_outcome_write_json(&o, 7, &out);
    CHECK(strstr(out.data, "s3cr") == NULL);
    CHECK_CONTAINS(out.data, "\"index\":7");
    bp_buf_free(&out);
    bp_outcome_free(&o);
}

static const char *hex(const unsigned char *p, size_t n)
{
    static char out[129];
    for (size_t i = 0; i < n && i < 64; i++) snprintf(out + 2 * i, 3, "%02x", p[i]);
    return out;
}

TEST(hmac_sha256_rfc4231_vectors)
{
    unsigned char mac[32], key[20], key131[131], data50[50];
    memset(key, 0x0b, sizeof key);
    bp_hmac_sha256(key, 20, "Hi There", 8, mac);
    CHECK_STR(hex(mac, 32), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    bp_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    CHECK_STR(hex(mac, 32), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    memset(key, 0xaa, sizeof key);
    memset(data50, 0xdd, sizeof data50);
    bp_hmac_sha256(key, 20, data50, 50, mac);
    CHECK_STR(hex(mac, 32), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    memset(key131, 0xaa, sizeof key131);
    const char *m = "Test Using Larger Than Block-Size Key - Hash Key First";
    bp_hmac_sha256(key131, 131, m, strlen(m), mac);
    CHECK_STR(hex(mac, 32), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(jwt_sign_and_verify)
{
    bp_buf t;
    bp_buf_init(&t);
    bp_error err;
    bp_claims who;
    bp_jwt_sign("s3cret", "admin", "ada", NULL, NULL, 1000, 2000, &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), 0);
    CHECK_STR(who.role, "admin");
    CHECK_STR(who.sub, "ada");
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 2000, NULL, &who, &err), -1);
    CHECK_CONTAINS(err.msg, "expired");
    CHECK_INT(bp_jwt_verify("other", t.data, 1500, NULL, &who, &err), -1);
    CHECK_CONTAINS(err.msg, "signature");
    /* issuer and audience, when the server expects them */
    bp_jwt_expect expect = { "signal", "blueprints" };
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, &expect, &who, &err), -1);
    CHECK_CONTAINS(err.msg, "issuer");
    bp_buf_reset(&t);
    bp_jwt_sign("s3cret", "viewer", "bob", "signal", "blueprints", 1000, 2000, &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, &expect, &who, &err), 0);
    bp_jwt_expect other_aud = { "signal", "billing" };
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, &other_aud, &who, &err), -1);
    CHECK_CONTAINS(err.msg, "audience");
    t.data[t.len - 2] = t.data[t.len - 2] == 'A' ? 'B' : 'A';   /* tamper with the signature */
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), -1);
    CHECK_INT(bp_jwt_verify("s3cret", "abc.def", 1500, NULL, &who, &err), -1);
    CHECK_CONTAINS(err.msg, "malformed");
    bp_buf_free(&t);
}

/* An HS256 token with exactly this payload (claims sign() does not write). */
static void token_with_payload(const char *secret, const char *payload, bp_buf *out)
{
    const char *parts[2] = { "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload };
    bp_buf_reset(out);
    for (int p = 0; p < 2; p++) {
        unsigned char enc[512];
        int n = EVP_EncodeBlock(enc, (const unsigned char *)parts[p], (int)strlen(parts[p]));
        for (int i = 0; i < n && enc[i] != '='; i++) bp_buf_addc(out, enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : (char)enc[i]);
        bp_buf_addc(out, '.');
    }
    unsigned char mac[32], enc[64];
    bp_hmac_sha256(secret, strlen(secret), out->data, out->len - 1, mac);
    int n = EVP_EncodeBlock(enc, mac, 32);
    for (int i = 0; i < n && enc[i] != '='; i++) bp_buf_addc(out, enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : (char)enc[i]);
}

TEST(jwt_nbf_and_iat_are_honoured_with_a_skew)
{
    bp_buf t;
    bp_claims who;
    bp_error err;
    bp_buf_init(&t);
    /* iat ahead of our clock: within the skew (clocks apart) fine, beyond it not */
    bp_jwt_sign("s3cret", "admin", "ada", NULL, NULL, 1000 + BP_JWT_SKEW, 5000, &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1000, NULL, &who, &err), 0);
    bp_buf_reset(&t);
    bp_jwt_sign("s3cret", "admin", "ada", NULL, NULL, 1000 + BP_JWT_SKEW + 1, 5000, &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1000, NULL, &who, &err), -1);
    CHECK_STR(err.msg, "token issued in the future (iat; are the clocks apart?)");
    /* nbf: not before it, less the skew */
    token_with_payload("s3cret", "{\"sub\":\"ada\",\"role\":\"admin\",\"iat\":900,\"nbf\":1200,\"exp\":5000}", &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1000, NULL, &who, &err), -1);
    CHECK_STR(err.msg, "token not valid yet (nbf is in the future)");
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1200 - BP_JWT_SKEW, NULL, &who, &err), 0);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1300, NULL, &who, &err), 0);
    bp_buf_free(&t);
}

TEST(jwt_only_canonical_base64url)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bp_buf t;
    bp_claims who;
    bp_error err;
    bp_buf_init(&t);
    bp_jwt_sign("s3cret", "admin", "ada", NULL, NULL, 1000, 2000, &t);
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), 0);
    /* 32 bytes are 43 characters: the last one carries 2 unused bits, which
     * a decoder that ignores them reads as the same signature */
    char *last = &t.data[t.len - 1];
    long v = strchr(b64, *last) - b64;
    CHECK_INT((int)(v & 3), 0);
    *last = b64[v | 1];
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), -1);
    CHECK_STR(err.msg, "malformed token");
    *last = b64[v];
    bp_buf_adds(&t, "=");   /* padding */
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), -1);
    t.data[--t.len] = '\0';
    bp_buf_adds(&t, "AA");   /* 45 characters: a dangling sixth of a byte */
    CHECK_INT(bp_jwt_verify("s3cret", t.data, 1500, NULL, &who, &err), -1);
    CHECK_STR(err.msg, "malformed token");
    bp_buf_free(&t);
}

TEST(jwt_secret_is_at_least_32_bytes)
{
    char dir[] = "/tmp/bp-unit-XXXXXX", secret[200];
    bp_error err;
    CHECK(mkdtemp(dir) != NULL);
    setenv("BLUEPRINT_JWT_SECRET", "0123456789abcdef0123456789abcde", 1);   /* 31 */
    CHECK_INT(bp_jwt_secret(dir, secret, sizeof secret, &err), -1);
    CHECK_STR(err.msg, "BLUEPRINT_JWT_SECRET is 31 bytes; a JWT secret is 32 to 198 bytes (make one with: openssl rand -hex 32)");
    setenv("BLUEPRINT_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    CHECK_INT(bp_jwt_secret(dir, secret, sizeof secret, &err), 0);
    unsetenv("BLUEPRINT_JWT_SECRET");
    /* one made here is 64 hex digits; a short one written by hand is refused */
    CHECK_INT(bp_jwt_secret(dir, secret, sizeof secret, &err), 0);
    CHECK_INT((int)strlen(secret), 64);
    char path[300];
    snprintf(path, sizeof path, "%s/jwt.secret", dir);
    FILE *f = fopen(path, "w");
    fputs("short\n", f);
    fclose(f);
    CHECK_INT(bp_jwt_secret(dir, secret, sizeof secret, &err), -1);
    CHECK_CONTAINS(err.msg, "jwt.secret is 5 bytes");
    remove(path);
    rmdir(dir);
}

/* pattern.c under the sanitizers: random patterns (malformed ones too)
 * through the counted functions and the string library, which must agree.
 * tests/spec/pattern_spec.lua runs many more, without the sanitizers. */
static void count_steps(lua_State *L, void *ud, unsigned long steps)
{
    unsigned long *used = ud;
    if ((*used += steps) > 50000000UL) luaL_error(L, "pattern budget exceeded");
}

TEST(patterns_agree_with_the_string_library)
{
    static const char chunk[] =
        "local P = ...\n"
        "local pieces = { 'a', 'b', '.', '%a', '%d', '%s', '%w', '%W', '%%', '%]', '[ab]', '[^a]', '[a-c]',\n"
        "  '[]]', '[%d_]', '%b()', '%f[%w]', '%1', '()', '(', ')', '$', '^', '[', '%', '%f', '%b', '[^' }\n"
        "local quant = { '', '', '*', '+', '-', '?' }\n"
        "local chars = { 'a', 'b', '(', ')', '1', ' ', '%', ']', '_' }\n"
        "local function show(ok, ...) local t = { tostring(ok) }\n"
        "  for i = 1, select('#', ...) do t[#t + 1] = tostring((select(i, ...))) end return table.concat(t, '|') end\n"
        "math.randomseed(7)\n"
        "for case = 1, 1500 do\n"
        "  local p, s = {}, {}\n"
        "  for _ = 1, math.random(0, 4) do p[#p + 1] = pieces[math.random(#pieces)] .. quant[math.random(#quant)] end\n"
        "  for _ = 1, math.random(0, 9) do s[#s + 1] = chars[math.random(#chars)] end\n"
        "  p, s = table.concat(p), table.concat(s)\n"
        "  local init = math.random(-10, 10)\n"
        "  for _, f in ipairs({ 'find', 'match' }) do\n"
        "    local a, b = show(pcall(string[f], s, p, init)), show(pcall(P[f], s, p, init))\n"
        "    if a ~= b then return string.format('%s(%q, %q, %d): %s vs %s', f, s, p, init, a, b) end\n"
        "  end\n"
        "  local a, b = show(pcall(string.gsub, s, p, '<%0>')), show(pcall(P.gsub, s, p, '<%0>'))\n"
        "  if a ~= b then return string.format('gsub(%q, %q): %s vs %s', s, p, a, b) end\n"
        "end\n"
        "return 'agree'\n";
    unsigned long used = 0;
    bp_budget budget = { .check = count_steps, .ud = &used };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, chunk) != LUA_OK) CHECK_FAIL("%s", lua_tostring(L, -1));
    bp_patterns_open(L, &budget);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) CHECK_FAIL("%s", lua_tostring(L, -1));
    else CHECK_STR(lua_tostring(L, -1), "agree");
    lua_close(L);
}

/* ---- metered library functions (metered.c) ---- */

/* A budget for the tests: counts work, and stops a call past `max`. */
typedef struct test_meter { unsigned long used, max; } test_meter;

static void meter_count(lua_State *L, void *ud, unsigned long work)
{
    test_meter *m = ud;
    if ((m->used += work) > m->max) luaL_error(L, "test budget exceeded");
}

static const char *meter_spend(lua_State *L, void *ud, unsigned long work)
{
    (void)L;
    test_meter *m = ud;
    return (m->used += work) > m->max ? "test budget exceeded" : NULL;
}

/* The same calls through the library's functions (saved as ORIG before
 * bp_metered_open replaced them) and the metered ones: same results, same
 * tables afterwards, same errors (function names aside: a replaced
 * function is no longer found under its name). */
TEST(metered_functions_agree_with_the_library)
{
    static const char chunk[] =
        "local function show(t, ok, ...)\n"
        "  local r = { tostring(ok) }\n"
        "  for i = 1, select('#', ...) do local v = select(i, ...) r[#r + 1] = type(v) == 'table' and 'table' or tostring(v) end\n"
        "  if not ok then r[2] = r[2]:gsub(\"to '[^']*'\", \"to '?'\") end\n"
        "  if t then for k, v in pairs(t) do r[#r + 1] = tostring(k) .. '=' .. tostring(v) end table.sort(r) end\n"
        "  return table.concat(r, '|')\n"
        "end\n"
        "local function fresh() return { 'a', 'b', 'c', 'd', 'e' } end\n"
        "local len = setmetatable({}, { __len = function() return 3 end })\n"
        "local cases = {\n"
        "  { 'string', 'rep', function() return nil, 'ab', 3, ',' end },\n"
        "  { 'string', 'rep', function() return nil, 'ab', 0 end },\n"
        "  { 'string', 'rep', function() return nil, 'ab', -2, 'x' end },\n"
        "  { 'string', 'rep', function() return nil, 'x', 7 end },\n"
        "  { 'string', 'rep', function() return nil, '', 5, 'xy' end },\n"
        "  { 'string', 'rep', function() return nil, 'abc', 1, 'zz' end },\n"
        "  { 'string', 'rep', function() return nil, 'x', 1 << 40 end },\n"
        "  { 'string', 'rep', function() return nil, {}, 2 end },\n"
        "  { 'table', 'move', function() local t = fresh() return t, t, 1, 3, 2 end },\n"
        "  { 'table', 'move', function() local t = fresh() return t, t, 2, 5, 1 end },\n"
        "  { 'table', 'move', function() local t = fresh() return t, t, 1, 5, 3 end },\n"
        "  { 'table', 'move', function() local t = {} return t, fresh(), 2, 4, 1, t end },\n"
        "  { 'table', 'move', function() local t = fresh() return t, t, 3, 1, 9 end },\n"
        "  { 'table', 'move', function() return nil, {}, math.mininteger, 1, 1 end },\n"
        "  { 'table', 'move', function() return nil, {}, 1, 2, math.maxinteger end },\n"
        "  { 'table', 'move', function() return nil, 1, 1, 2, 3 end },\n"
        "  { 'table', 'insert', function() local t = fresh() return t, t, 'x' end },\n"
        "  { 'table', 'insert', function() local t = fresh() return t, t, 2, 'x' end },\n"
        "  { 'table', 'insert', function() local t = fresh() return t, t, 6, 'x' end },\n"
        "  { 'table', 'insert', function() local t = fresh() return t, t, 8, 'x' end },\n"
        "  { 'table', 'insert', function() local t = fresh() return t, t, 1, 2, 3 end },\n"
        "  { 'table', 'insert', function() return nil, 'nope', 1 end },\n"
        "  { 'table', 'remove', function() local t = fresh() return t, t end },\n"
        "  { 'table', 'remove', function() local t = fresh() return t, t, 1 end },\n"
        "  { 'table', 'remove', function() local t = fresh() return t, t, 6 end },\n"
        "  { 'table', 'remove', function() local t = fresh() return t, t, 9 end },\n"
        "  { 'table', 'remove', function() local t = {} return t, t, 0 end },\n"
        "  { 'table', 'concat', function() return nil, fresh(), ', ' end },\n"
        "  { 'table', 'concat', function() return nil, fresh(), '-', 2, 4 end },\n"
        "  { 'table', 'concat', function() return nil, fresh(), '-', 4, 2 end },\n"
        "  { 'table', 'concat', function() return nil, { 1, 2.5, 'x' } end },\n"
        "  { 'table', 'concat', function() return nil, { 'a', {}, 'c' } end },\n"
        "  { 'table', 'concat', function() return nil, len, '' end },\n"
        "  { 'table', 'unpack', function() return nil, fresh() end },\n"
        "  { 'table', 'unpack', function() return nil, fresh(), 2, 3 end },\n"
        "  { 'table', 'unpack', function() return nil, fresh(), 4, 2 end },\n"
        "  { 'table', 'unpack', function() return nil, {}, 1, 1 << 40 end },\n"
        "  { 'table', 'unpack', function() return nil, {}, math.mininteger, math.maxinteger end },\n"
        "  { 'table', 'sort', function() local t = { 5, 2, 9, 1, 7 } return t, t end },\n"
        "  { 'table', 'sort', function() local t = { 5, 2, 9, 1, 7 } return t, t, function(a, b) return a > b end end },\n"
        "  { 'table', 'sort', function() local t = { 3, 'x', 1 } return t, t end },\n"
        "  { 'table', 'sort', function() local t = { 1, 2, 3 } return t, t, 'x' end },\n"
        "  { 'table', 'sort', function() local t = { 1, 2 } return t, t, function() error('mine') end end },\n"
        "  { 'table', 'sort', function() return nil, 7 end },\n"
        "}\n"
        "for i, c in ipairs(cases) do\n"
        "  local function run(f) local args = table.pack(c[3]()) return show(args[1], pcall(f, table.unpack(args, 2, args.n))) end\n"
        "  local a, b = run(ORIG[c[2]]), run(_G[c[1]][c[2]])\n"
        "  if a ~= b then return string.format('case %d (%s.%s): %s vs %s', i, c[1], c[2], a, b) end\n"
        "end\n"
        "return 'agree'\n";
    test_meter m = { 0, (unsigned long)-1 };
    bp_budget budget = { meter_count, &m, meter_spend, 1, 0 };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    static const char *const saved[][2] = { { "string", "rep" }, { "table", "move" }, { "table", "insert" },
                                            { "table", "remove" }, { "table", "concat" }, { "table", "unpack" },
                                            { "table", "sort" } };
    for (size_t i = 0; i < sizeof saved / sizeof saved[0]; i++) {
        lua_getglobal(L, saved[i][0]);
        lua_getfield(L, -1, saved[i][1]);
        lua_setfield(L, -3, saved[i][1]);
        lua_pop(L, 1);
    }
    lua_setglobal(L, "ORIG");
    bp_metered_open(L, &budget);
    if (luaL_loadstring(L, chunk) != LUA_OK) CHECK_FAIL("%s", lua_tostring(L, -1));
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) CHECK_FAIL("%s", lua_tostring(L, -1));
    else CHECK_STR(lua_tostring(L, -1), "agree");
    lua_close(L);
}

static const char *run_metered(lua_State *L, const char *code)
{
    if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        lua_pop(L, 1);
        return msg;   /* interned message strings outlive the pop while the state lives */
    }
    return "ok";
}

/* Each element a loop touches costs one unit, once armed; before that,
 * nothing is counted (the watchdog arms the meters with the hook). */
TEST(metered_loops_charge_each_element_once_armed)
{
    test_meter m = { 0, 1000000 };
    bp_budget budget = { meter_count, &m, meter_spend, 0, 0 };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    bp_metered_open(L, &budget);
    CHECK(bp_budget_of(L) == &budget);
    CHECK_STR(run_metered(L, "table.move({}, 1, 1000, 2)"), "ok");
    CHECK_INT(m.used, 0);
    budget.armed = 1;
    CHECK_STR(run_metered(L, "table.move({}, 1, 1000, 2)"), "ok");
    CHECK_INT(m.used, 1000);
    m.used = 0;
    CHECK_STR(run_metered(L, "table.insert(setmetatable({}, { __len = function() return 99 end }), 1, 'x')"), "ok");
    CHECK_INT(m.used, 99);
    m.used = 0;
    CHECK_STR(run_metered(L, "table.remove(setmetatable({}, { __len = function() return 50 end }), 1)"), "ok");
    CHECK_INT(m.used, 49);
    m.used = 0;
    CHECK_STR(run_metered(L, "assert(table.concat({ 'a', 'b', 'c' }, ',') == 'a,b,c')"), "ok");
    CHECK_INT(m.used, 3);
    m.used = 0;
    CHECK_STR(run_metered(L, "assert(select('#', table.unpack({}, 1, 10)) == 10)"), "ok");
    CHECK_INT(m.used, 10);
    m.used = 0;
    CHECK_STR(run_metered(L, "local t = { 3, 1, 2 } table.sort(t) assert(t[1] == 1 and t[3] == 3)"), "ok");
    CHECK(m.used >= 2 && m.used <= 6);   /* one per comparison */
    m.used = 0;
    CHECK_STR(run_metered(L, "assert(string.rep('', 1 << 50) == '' and ('ab'):rep(3, '-') == 'ab-ab-ab')"), "ok");
    CHECK_INT(m.used, 0);                /* the result's size is its work */
    /* what never ended: stopped by the budget */
    CHECK_CONTAINS(run_metered(L, "table.move({}, 1, 1 << 40, 2)"), "test budget exceeded");
    m.used = 0;
    CHECK_CONTAINS(run_metered(L, "table.sort(setmetatable({}, { __len = function() return (1 << 31) - 2 end, "
                                  "__index = rawlen, __newindex = rawequal }))"), "test budget exceeded");
    lua_close(L);
}

/* A table holding the same table twice, 40 levels deep: 2^40 values as
 * JSON.  The encoder stops at the budget's byte bound (unarmed: after the
 * call, reading a mapping's result) and at its budget (armed). */
TEST(encoder_stops_at_the_memory_cap_and_the_budget)
{
    test_meter m = { 0, (unsigned long)-1 };
    bp_budget budget = { meter_count, &m, meter_spend, 0, 1u << 20 };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    bp_luajson_open(L);
    bp_metered_open(L, &budget);
    CHECK_INT(luaL_dostring(L, "local t = {} for i = 1, 40 do t = { t, t } end return t"), LUA_OK);
    bp_buf out;
    bp_buf_init(&out);
    bp_error err;
    CHECK_INT(bp_encode_json(L, -1, &out, NULL, &err), -1);
    CHECK_CONTAINS(err.msg, "larger than the memory limit (1 MiB");
    CHECK(out.len < (1u << 20) + 4096);
    CHECK(m.used > 0);   /* charged every 4096 values even unarmed: after a call, its deadline holds */
    budget.armed = 1;
    budget.max_bytes = 0;
    m.used = 0;
    m.max = 100000;
    bp_buf_reset(&out);
    CHECK_INT(bp_encode_json(L, -1, &out, NULL, &err), -1);
    CHECK_STR(err.msg, "cannot encode the value: test budget exceeded");
    CHECK(m.used > 100000 && m.used < 100010);
    /* a state without a budget (the Lua module's) is not metered */
    lua_State *plain = luaL_newstate();
    CHECK(bp_budget_of(plain) == NULL);
    lua_close(plain);
    bp_buf_free(&out);
    lua_close(L);
}

/* ---- pacing (ratelimit.c) ---- */

/* Send whenever allowed from t=0 for `ms`, stepping 1 ms; record send times. */
static int pace_run(bp_bucket *b, double from, double ms, double *sent, int max)
{
    int n = 0;
    for (double t = from; t < from + ms && n < max; t += 1.0)
        if (bp_bucket_take(b, t) == 0) sent[n++] = t;
    return n;
}

/* The most sends inside any window of `w` ms. */
static int most_within(const double *sent, int n, double w)
{
    int worst = 0;
    for (int i = 0, j = 0; i < n; i++) {
        while (sent[i] - sent[j] >= w) j++;
        if (i - j + 1 > worst) worst = i - j + 1;
    }
    return worst;
}

TEST(pace_never_exceeds_the_limit_in_any_second)
{
    bp_bucket b;
    bp_bucket_init(&b, 5, 0.97, 0);
    double sent[200];
    int n = pace_run(&b, 1, 20000, sent, 200);
    CHECK_INT(most_within(sent, n, 1000), 5);
    CHECK_INT(most_within(sent, n, 1030), 5);   /* the margin: 5 per 1031 ms */
    CHECK(n >= 96 && n <= 100);                /* 20 s at 0.97 x 5/s, plus the last window begun */
    for (int i = 1; i < n; i++) CHECK(sent[i] - sent[i - 1] >= 103);   /* half an interval apart */
}

TEST(pace_catches_up_after_a_late_send)
{
    bp_bucket b;
    bp_bucket_init(&b, 5, 0.97, 0);
    double sent[20];
    int n = 0;
    /* the loop was 80 ms late for the second send; the ones after catch up */
    for (double t = 1; t < 3000 && n < 20; t += 1.0) {
        if (n == 1 && t < sent[0] + 206 + 80) continue;
        if (bp_bucket_take(&b, t) == 0) sent[n++] = t;
    }
    CHECK(sent[5] - sent[0] >= 1030);
    CHECK(sent[5] - sent[0] < 1040);   /* the sixth is not pushed back by the late one */
    CHECK_INT(most_within(sent, n, 1000), 5);
}

TEST(pace_obeys_retry_after_and_a_lower_limit)
{
    bp_bucket b;
    bp_bucket_init(&b, 10, 1, 0);
    CHECK(bp_bucket_take(&b, 1) == 0);
    bp_bucket_block(&b, 2001);
    CHECK(bp_bucket_take(&b, 1000) > 1000 - 0.5);
    CHECK(bp_bucket_take(&b, 2001) == 0);
    bp_bucket_set_rate(&b, 2);   /* RateLimit-Limit: 2 */
    double sent[50];
    int n = pace_run(&b, 2002, 10000, sent, 50);
    CHECK_INT(most_within(sent, n, 1000), 2);
    /* limits the window cannot hold whole: spacing, never more than the limit */
    bp_bucket_init(&b, 100, 0.97, 0);
    double many[2000];
    n = 0;
    for (double t = 1; t < 10000 && n < 2000; t += 0.25)
        if (bp_bucket_take(&b, t) == 0) many[n++] = t;
    CHECK(most_within(many, n, 1000) <= 100);
    CHECK(n >= 940);   /* 0.97 x 100/s for 10 s, less the 0.25 ms steps */
    bp_bucket_init(&b, 2.5, 0.97, 0);
    n = pace_run(&b, 1, 20000, sent, 50);
    CHECK(most_within(sent, n, 2000) <= 5);
    CHECK(most_within(sent, n, 4000) <= 10);
    bp_bucket_init(&b, 0, 1, 0);   /* unlimited */
    CHECK(bp_bucket_take(&b, 5) == 0 && bp_bucket_take(&b, 5) == 0);
}

/* A bound over a longer window (batch.max_per_minute): never more than the
 * limit in any window, a send as soon as the oldest leaves it, only counted
 * when taken, and a new limit keeps the newest sends. */
TEST(window_bounds_sends_in_any_window_and_keeps_its_sends_on_a_new_limit)
{
    bp_window *w = NULL;
    CHECK(bp_window_take(&w, 0, 60000, 5, 1) == 0);   /* no bound */
    CHECK(w == NULL);
    double sent[40];
    int n = 0;
    for (double t = 1; t < 200000 && n < 40; t += 10)
        if (bp_window_take(&w, 3, 60000, t, 0) == 0 && bp_window_take(&w, 3, 60000, t, 1) == 0) sent[n++] = t;
    CHECK_INT(most_within(sent, n, 60000), 3);
    CHECK_INT(n, 12);   /* 3 at 1, 3 at 60001, 3 at 120001, 3 at 180001 */
    CHECK(sent[3] - sent[0] >= 60000 && sent[3] - sent[0] < 60010);
    /* asking without taking counts nothing */
    bp_window *p = NULL;
    for (int i = 0; i < 10; i++) CHECK(bp_window_take(&p, 2, 1000, 1, 0) == 0);
    CHECK(bp_window_take(&p, 2, 1000, 1, 1) == 0);
    CHECK(bp_window_take(&p, 2, 1000, 2, 1) == 0);
    CHECK(bp_window_take(&p, 2, 1000, 3, 0) > 990);
    /* a higher limit frees room for the difference only; a lower one frees none */
    CHECK(bp_window_take(&p, 3, 1000, 3, 1) == 0);
    CHECK(bp_window_take(&p, 3, 1000, 4, 0) > 990);
    CHECK(bp_window_take(&p, 1, 1000, 5, 0) > 990);
    CHECK(bp_window_take(&p, 1, 1000, 1004, 1) == 0);   /* the newest (at 3) has left */
    bp_window_free(p);
    bp_window_free(w);
}

/* ---- where a request may go (request.c) ---- */

TEST(destinations_match_scheme_host_and_port_exactly)
{
    char *fields[] = { "url" }, *hosts[] = { "trackcmp.net" };
    bp_blueprint bp;
    memset(&bp, 0, sizeof bp);
    bp.dest_fields = fields;
    bp.ndest_fields = 1;
    bp.dest_hosts = hosts;
    bp.ndest_hosts = 1;
    bp_config_value v = { "url", "http://127.0.0.1:8080/hook", 0 };
    bp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.values = &v;
    cfg.nvalues = 1;
    bp_error err;
    static const char *const good[] = { "http://127.0.0.1:8080/other?x=1", "HTTP://127.0.0.1:8080", "https://trackcmp.net/event",
                                         "https://TRACKCMP.NET:443/e", "https://trackcmp.net./e" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) CHECK_INT(bp_request_check_destination(&bp, &cfg, good[i], &err), 0);
    static const char *const bad[] = { "http://127.0.0.1:8081/hook", "https://127.0.0.1:8080/hook", "http://localhost:8080/",
                                       "http://trackcmp.net/event", "https://trackcmp.net:8443/", "https://trackcmp.net.evil.example/",
                                       "https://trackcmp.net@evil.example/", "https://evil.example\\@trackcmp.net/",
                                       "https://trackcmp%2enet/", "http://[::1]:8080/", "https://trackcmp.net:/", "https://x:99999/" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_INT(bp_request_check_destination(&bp, &cfg, bad[i], &err), -1);
        CHECK(err.msg[0] != '\0');
    }
    CHECK_INT(bp_request_check_destination(&bp, &cfg, "https://evil.example/x", &err), -1);
    CHECK_CONTAINS(err.msg, "the host 'evil.example' (port 443) is not a destination");
    CHECK_CONTAINS(err.msg, "url (127.0.0.1:8080), trackcmp.net");
}

/* ---- secrets at rest (crypto.c) ---- */

/* The account (pace, ctx.cache) of a URL scope is its origin: an api_url
 * pasted with a trailing slash, in capitals or with /api/3 is one account. */
TEST(account_key_of_a_url_is_its_origin)
{
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load("blueprints/activecampaign", &err);
    CHECK(bp != NULL);
    if (!bp) return;
    const char *urls[] = { "api_url: https://acme.api-us1.com\n", "api_url: https://Acme.api-us1.com/\n",
                           "api_url: https://acme.api-us1.com/api/3\n", "api_url: https://acme.api-us1.com:443/api/3/\n" };
    char first[512] = "", key[512];
    for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
        char text[256];
        snprintf(text, sizeof text, "%sapi_key: k\n", urls[i]);
        bp_config *cfg = bp_config_load_text(bp, text, strlen(text), "config", &err);
        CHECK(cfg != NULL);
        if (!cfg) continue;
        bp_account_key(bp, cfg, "int_1", key, sizeof key);
        if (!i) snprintf(first, sizeof first, "%s", key);
        CHECK_STR(key, first);
        bp_config_free(cfg);
    }
    CHECK_STR(first, "activecampaign https://acme.api-us1.com:443");
    const char *other = "api_url: https://other.api-us1.com/api/3\napi_key: k\n";
    bp_config *cfg = bp_config_load_text(bp, other, strlen(other), "config", &err);
    CHECK(cfg != NULL);
    if (cfg) {
        bp_account_key(bp, cfg, "int_1", key, sizeof key);
        CHECK(strcmp(key, first) != 0);
        bp_config_free(cfg);
    }
    bp_blueprint_free(bp);
}

/* ---- batches (blueprint.yaml batch:, batch.c) ---- */

TEST(batch_spec_is_read_with_its_bounds)
{
    bp_error err;
    bp_blueprint *ac = bp_blueprint_load("blueprints/activecampaign", &err), *wh = bp_blueprint_load("blueprints/webhook", &err);
    CHECK(ac != NULL && wh != NULL);
    if (ac) {
        CHECK(ac->has_batch);
        CHECK_INT(ac->batch.nevents, 1);
        CHECK_STR(ac->batch.events[0], "identify");
        CHECK_STR(ac->batch.mapping, "identify_batch.lua");
        CHECK_INT(ac->batch.max_events, 250);
        CHECK_INT(ac->batch.min_events, 10);
        CHECK_INT(ac->batch.max_wait_ms, 5000);
        CHECK_INT(ac->batch.max_per_minute, 100);
        CHECK(ac->batch.enabled_by == NULL);
    }
    if (wh) {
        CHECK_INT(wh->batch.nevents, 5);
        CHECK_STR(wh->batch.events[4], "custom");
        CHECK_STR(wh->batch.enabled_by, "batch_events");
    }
    bp_blueprint_free(ac);
    bp_blueprint_free(wh);
}

/* batch: is read strictly: the loader names the line, the known keys and
 * the closest name. */
TEST(batch_spec_refuses_with_the_line_and_the_closest_name)
{
    char dir[] = "/tmp/bp-unit-batchXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    static const char head[] = "vendor: t\nname: T\ncategory: test\nstatus: alpha\nconsent_category: marketing\n"
                               "config:\n  - {key: on, type: boolean}\n  - {key: url, type: url}\n"
                               "events:\n  identify: {type: identify, mapping: m.lua}\n";
    static const struct { const char *batch, *message; } cases[] = {
        { "batch: {events: identify, mapping: m.lua, max_events: 5, max_wait: 9}\n",
          ":11: unknown key 'max_wait' in 'batch' (known keys: events, mapping, max_events, min_events, max_wait_ms, "
          "max_per_minute, enabled_by); did you mean 'max_wait_ms'?" },
        { "batch: {events: [identity], mapping: m.lua, max_events: 5}\n",
          "batch.events: 'identity' is not a row of the event table (rows: identify); did you mean 'identify'?" },
        { "batch: {events: identify, mapping: m.lua, max_events: 1}\n", "batch.max_events must be a whole number from 2" },
        { "batch: {events: identify, mapping: m.lua, max_events: 5, enabled_by: url}\n",
          "batch.enabled_by must name a boolean config field" },
        { "batch: {events: identify, mapping: gone.lua, max_events: 5}\n", "batch.mapping 'gone.lua' does not exist" },
        { "batch: {events: identify, mapping: m.lua, max_events: 5, min_events: 3, enabled_by: on}\n", NULL },
    };
    char path[128];
    snprintf(path, sizeof path, "%s/m.lua", dir);
    FILE *f = fopen(path, "w");
    if (f) { fputs("return function(e, ctx) return nil, function() return {} end end\n", f); fclose(f); }
    snprintf(path, sizeof path, "%s/blueprint.yaml", dir);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        f = fopen(path, "w");
        if (f) { fputs(head, f); fputs(cases[i].batch, f); fclose(f); }
        bp_error err;
        bp_blueprint *bp = bp_blueprint_load(dir, &err);
        if (cases[i].message) {
            CHECK(bp == NULL);
            CHECK_CONTAINS(err.msg, cases[i].message);
        } else {
            CHECK(bp != NULL);
            if (bp) {
                CHECK_INT(bp->batch.min_events, 3);
                CHECK_INT(bp->batch.max_wait_ms, 1000);
                CHECK_INT(bp->batch.max_per_minute, 0);
                CHECK_STR(bp->batch.enabled_by, "on");
            }
        }
        bp_blueprint_free(bp);
    }
    unlink(path);
    snprintf(path, sizeof path, "%s/m.lua", dir);
    unlink(path);
    rmdir(dir);
}

/* The webhook's batch: one request for the events (a JSON array), and
 * every event gets what the answer means. */
TEST(batch_mapping_gives_each_event_its_result)
{
    bp_error err;
    bp_blueprint *bp = bp_blueprint_load("blueprints/webhook", &err);
    CHECK(bp != NULL);
    if (!bp) return;
    static const char conf[] = "url: https://hooks.example.com/in\nbatch_events: true\nconsent: {default_policy: allow}\n";
    bp_config *cfg = bp_config_load_text(bp, conf, strlen(conf), "config", &err);
    bp_engine *e = cfg ? bp_engine_new(bp, cfg, NULL, &err) : NULL;
    CHECK(e != NULL);
    if (!e) { bp_config_free(cfg); bp_blueprint_free(bp); return; }
    const char *events[] = { "{\"type\":\"identify\",\"messageId\":\"a\"}", "{\"type\":\"page\",\"messageId\":\"b\"}",
                             "{\"type\":\"identify\",\"messageId\":\"c\"}" };
    size_t lens[3];
    bp_outcome o;
    bp_outcome_init(&o);
    for (int i = 0; i < 3; i++) {
        lens[i] = strlen(events[i]);
        bp_engine_run(e, events[i], lens[i], &o);
        CHECK(bp_batch_takes(e, &o));
    }
    static const char off[] = "{\"type\":\"track\",\"event\":\"Off\"}";
    bp_engine_run(e, off, sizeof off - 1, &o);
    CHECK(!bp_batch_takes(e, &o));   /* dropped: not enabled */
    bp_outcome_free(&o);
    bp_batch b;
    bp_batch_init(&b);
    CHECK_INT(bp_batch_run(e, &b, events, lens, 3), 0);
    CHECK(b.has_request);
    CHECK_INT(b.out.nrequests, 1);
    if (b.out.nrequests == 1) CHECK_CONTAINS(b.out.requests[0].body.data, "[{\"messageId\":\"a\"");
    static const struct { int status; enum bp_batch_result result; } answers[] = {
        { 200, BP_BATCH_DELIVERED }, { 503, BP_BATCH_RETRY }, { 429, BP_BATCH_RETRY }, { 404, BP_BATCH_FAILED } };
    for (size_t k = 0; k < sizeof answers / sizeof *answers; k++) {
        CHECK_INT(bp_batch_read(e, &b, answers[k].status, "{}", 2, "https://hooks.example.com/in"), 0);
        CHECK(b.has_results);
        for (size_t i = 0; i < 3; i++) CHECK_INT(b.items[i].result, answers[k].result);
    }
    bp_batch_free(e, &b);
    bp_engine_free(e);
    bp_config_free(cfg);
    bp_blueprint_free(bp);
}

TEST(secrets_encrypt_and_decrypt_bound_to_their_place)
{
#define DEST "api_url=https://acct.api-us1.com"
    char dir[] = "/tmp/bp-unit-keysXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    unsetenv("BLUEPRINT_MASTER_KEY_FILE");
    bp_error err;
    bp_keyring *ring = bp_keyring_open(dir, &err);
    CHECK(ring != NULL);
    if (!ring) return;
    bp_buf sealed, plain;
    bp_buf_init(&sealed);
    bp_buf_init(&plain);
    CHECK_INT(bp_encrypt_secret(ring, "int_1", "api_key", DEST, "s3cr\xc3\xa9t", &sealed, &err), 0);
    CHECK(bp_is_encrypted(sealed.data));
    CHECK(strstr(sealed.data, "s3cr") == NULL);
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "api_key", DEST, sealed.data, &plain, &err), 0);
    CHECK_STR(plain.data, "s3cr\xc3\xa9t");
    /* the same value twice: two nonces, two ciphertexts */
    bp_buf again;
    bp_buf_init(&again);
    bp_encrypt_secret(ring, "int_1", "api_key", DEST, "s3cr\xc3\xa9t", &again, &err);
    CHECK(strcmp(again.data, sealed.data) != 0);
    /* moved to another field or integration: refused */
    bp_buf_reset(&plain);
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "event_tracking_key", DEST, sealed.data, &plain, &err), -1);
    CHECK_CONTAINS(err.msg, "does not decrypt");
    CHECK_INT(bp_decrypt_secret(ring, "int_2", "api_key", DEST, sealed.data, &plain, &err), -1);
    /* one character changed: refused */
    char *tampered = strdup(sealed.data);
    size_t last = strlen(tampered) - 3;
    tampered[last] = tampered[last] == 'A' ? 'B' : 'A';
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "api_key", DEST, tampered, &plain, &err), -1);
    free(tampered);
    /* for another destination (its URL changed, by an API client or by
     * whoever writes the cluster's configuration topic): refused, and so is
     * a value whose recorded destination was rewritten to match */
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "api_key", "api_url=https://evil.example.com", sealed.data, &plain, &err), -1);
    CHECK_CONTAINS(err.msg, "would now be sent to [api_url=https://evil.example.com]");
    CHECK(strstr(err.msg, "s3cr") == NULL);
    bp_buf evil, forged;
    bp_buf_init(&evil);
    bp_buf_init(&forged);
    bp_encrypt_secret(ring, "int_1", "api_key", "api_url=https://evil.example.com", "x", &evil, &err);
    const char *blob = strrchr(sealed.data, ':'), *evil_blob = strrchr(evil.data, ':');
    bp_buf_add(&forged, evil.data, (size_t)(evil_blob - evil.data));   /* the evil destination, the real ciphertext */
    bp_buf_adds(&forged, blob);
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "api_key", "api_url=https://evil.example.com", forged.data, &plain, &err), -1);
    CHECK_CONTAINS(err.msg, "does not decrypt");
    CHECK_INT(bp_decrypt_secret(ring, "int_1", "api_key", NULL, forged.data, &plain, &err), -1);
    /* the destination it was sealed for, readable for a key rotation */
    bp_buf dest;
    bp_buf_init(&dest);
    CHECK_INT(bp_sealed_destination(sealed.data, &dest), 0);
    CHECK_STR(dest.data, DEST);
    bp_buf_free(&dest);
    bp_buf_free(&evil);
    bp_buf_free(&forged);
    bp_buf_free(&sealed);
    bp_buf_free(&plain);
    bp_buf_free(&again);
    bp_keyring_close(ring);
    char path[300];
    snprintf(path, sizeof path, "%s/master.key", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    unlink(path);
    rmdir(dir);
}

/* A secret sealed by an earlier version (bp:enc:v1: bound to its integration
 * and field, not to a destination) is sealed again at start as v2, bound to
 * where the blueprint sends it, and still opens to the same value; a v2
 * value is left as it is. */
TEST(secrets_sealed_as_v1_are_migrated_to_v2_for_their_destination)
{
    char dir[] = "/tmp/bp-unit-v1XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    unsetenv("BLUEPRINT_MASTER_KEY_FILE");
    bp_error err;
    bp_keyring *ring = bp_keyring_open(dir, &err);
    bp_blueprint *bp = bp_blueprint_load("blueprints/activecampaign", &err);
    CHECK(ring != NULL && bp != NULL);
    if (!ring || !bp) return;
    bp_buf v1, doc, sealed, again, opened;
    bp_buf_init(&v1); bp_buf_init(&doc); bp_buf_init(&sealed); bp_buf_init(&again); bp_buf_init(&opened);
    CHECK_INT(bp_encrypt_secret(ring, "int_1", "api_key", NULL, "the-old-key", &v1, &err), 0);
    CHECK(bp_is_encrypted_v1(v1.data));
    bp_buf_printf(&doc, "{\"name\":\"x\",\"config\":{\"api_url\":\"https://acct.api-us1.com\",\"api_key\":\"%s\"}}", v1.data);
    int changed = 0;
    CHECK_INT(bp_seal_doc(ring, "int_1", bp, doc.data, BP_SEAL, &sealed, &changed, &err), 0);
    CHECK_INT(changed, 1);
    CHECK(strstr(sealed.data, "bp:enc:v2:") != NULL);
    CHECK(strstr(sealed.data, "bp:enc:v1:") == NULL);
    CHECK(strstr(sealed.data, "the-old-key") == NULL);
    /* sealed again: nothing left to migrate */
    CHECK_INT(bp_seal_doc(ring, "int_1", bp, sealed.data, BP_SEAL, &again, &changed, &err), 0);
    CHECK_INT(changed, 0);
    CHECK_STR(again.data, sealed.data);
    /* opens to the same value for the URL it is sent to */
    CHECK_INT(bp_seal_doc(ring, "int_1", bp, sealed.data, BP_UNSEAL, &opened, &changed, &err), 0);
    CHECK_CONTAINS(opened.data, "\"api_key\":\"the-old-key\"");
    bp_buf_free(&v1); bp_buf_free(&doc); bp_buf_free(&sealed); bp_buf_free(&again); bp_buf_free(&opened);
    bp_blueprint_free(bp);
    bp_keyring_close(ring);
    char path[300];
    snprintf(path, sizeof path, "%s/master.key", dir);
    unlink(path);
    rmdir(dir);
}

/* ---- runtime: logging, errors, the watchdog, one-time init ------------------------ */

#include <pthread.h>
#include <signal.h>

/* A blueprint folder made for these tests: "hello" prints, "loop" never ends. */
static char rt_dir[64];

static void rt_write(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", rt_dir, name);
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

static const char *rt_blueprint(void)
{
    if (rt_dir[0]) return rt_dir;
    snprintf(rt_dir, sizeof rt_dir, "/tmp/bp-runtime-XXXXXX");
    if (!mkdtemp(rt_dir)) return NULL;
    rt_write("blueprint.yaml", "vendor: rt\nname: Runtime\ncategory: test\nstatus: alpha\nconsent_category: marketing\n"
                               "config:\n  - key: api_url\n    type: url\n    required: true\n"
                               "events:\n  hello:\n    type: track\n    mapping: hello.lua\n"
                               "  loop:\n    type: track\n    mapping: loop.lua\n"
                               "  stall:\n    type: track\n    mapping: stall.lua\n"
                               "  calls:\n    type: track\n    mapping: calls.lua\n");
    rt_write("hello.lua", "return function(event, ctx)\n  print('hello from', event.event)\n"
                          "  return { url = 'http://127.0.0.1:9/x', json = { ok = true } }\nend\n");
    rt_write("loop.lua", "return function(event, ctx)\n  local n = 0\n  while true do n = n + 1 end\nend\n");
    /* one C call that loops without allocating; C calls of milliseconds each */
    rt_write("stall.lua", "return function(event, ctx)\n  table.move({}, 1, 1 << 40, 2)\nend\n");
    rt_write("calls.lua", "return function(event, ctx)\n  local s = ('x'):rep(4 << 20)\n"
                          "  while true do local u = s:upper() end\nend\n");
    return rt_dir;
}

static void rt_cleanup(void)
{
    if (!rt_dir[0]) return;
    const char *files[] = { "blueprint.yaml", "hello.lua", "loop.lua" };
    for (int i = 0; i < 3; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s", rt_dir, files[i]);
        unlink(path);
    }
    rmdir(rt_dir);
}

static const char RT_HELLO[] = "{\"type\":\"track\",\"event\":\"hello\",\"messageId\":\"m-1\","
                               "\"context\":{\"consent\":{\"marketing\":true}}}";
static const char RT_LOOP[] = "{\"type\":\"track\",\"event\":\"loop\",\"context\":{\"consent\":{\"marketing\":true}}}";
static const char RT_STALL[] = "{\"type\":\"track\",\"event\":\"stall\",\"context\":{\"consent\":{\"marketing\":true}}}";
static const char RT_CALLS[] = "{\"type\":\"track\",\"event\":\"calls\",\"context\":{\"consent\":{\"marketing\":true}}}";

typedef struct rt_parts { bp_blueprint *bp; bp_config *cfg; bp_engine *e; } rt_parts;

static int rt_open(rt_parts *p, const bp_limits *lim, bp_error *err)
{
    memset(p, 0, sizeof *p);
    const char *cfg = "api_url: http://127.0.0.1:9\n";
    if (!(p->bp = bp_blueprint_load(rt_blueprint(), err))) return -1;
    if (!(p->cfg = bp_config_load_text(p->bp, cfg, strlen(cfg), "config", err))) return -1;
    if (!(p->e = bp_engine_new(p->bp, p->cfg, lim, err))) return -1;
    return 0;
}

static void rt_close(rt_parts *p)
{
    bp_engine_free(p->e);
    bp_config_free(p->cfg);
    bp_blueprint_free(p->bp);
}

/* With the watchdog: one C call that loops, and C calls of milliseconds
 * each (a thousand of them passed between two counts of the hook). */
TEST(runtime_budgets_hold_inside_and_between_long_c_calls)
{
    bp_limits lim;
    bp_limits_default(&lim);
    lim.instructions = UINT64_MAX / 2;
    lim.timeout_ms = 50;
    rt_parts p;
    bp_error err;
    if (rt_open(&p, &lim, &err) < 0) { CHECK_FAIL("engine: %s", err.msg); rt_close(&p); return; }
    bp_outcome o;
    bp_outcome_init(&o);
    const char *const stalls[] = { RT_STALL, RT_CALLS };
    for (int i = 0; i < 2; i++) {
        bp_outcome_reset(&o);
        double t0 = bp_monotonic_ms();
        CHECK_INT(bp_engine_run(p.e, stalls[i], strlen(stalls[i]), &o), BP_ERROR);
        CHECK_CONTAINS(o.reason.data, "time budget exceeded (50 ms");
        CHECK(bp_monotonic_ms() - t0 < 50 + 1000);   /* + 100 ms in release builds; ASan is slower */
    }
    bp_outcome_free(&o);
    rt_close(&p);
}

TEST(runtime_errors_are_initialised_and_set_on_failure)
{
    bp_error err;
    bp_doc d;
    bp_doc_init(&d);
    memset(err.msg, 'x', sizeof err.msg - 1);
    err.msg[sizeof err.msg - 1] = '\0';
    CHECK_INT(bp_json_parse(&d, "{}", 2, NULL, &err), 0);
    CHECK_STR(err.msg, "");
    memset(err.msg, 'x', 10);
    CHECK_INT(bp_yaml_parse(&d, "a: 1\n", 5, &err), 0);
    CHECK_STR(err.msg, "");
    bp_doc_free(&d);

    err.msg[0] = '\0';
    CHECK(bp_blueprint_load("/nonexistent/blueprint", &err) == NULL);
    CHECK_CONTAINS(err.msg, "not a blueprint folder");
    err.msg[0] = '\0';
    CHECK(bp_blueprint_load(NULL, &err) == NULL);
    CHECK(err.msg[0] != '\0');
    err.msg[0] = '\0';
    CHECK(bp_config_load_text(NULL, "a: 1", 4, "x", &err) == NULL);
    CHECK(err.msg[0] != '\0');
    err.msg[0] = '\0';
    CHECK(bp_engine_new(NULL, NULL, NULL, &err) == NULL);
    CHECK(err.msg[0] != '\0');
    err.msg[0] = '\0';
    CHECK_INT(bp_watchdog_config(-5, &err), -1);
    CHECK(err.msg[0] != '\0');
    /* a NULL bp_error is allowed */
    CHECK(bp_blueprint_load("/nonexistent/blueprint", NULL) == NULL);

    rt_parts p;
    memset(err.msg, 'x', 10);
    CHECK_INT(rt_open(&p, NULL, &err), 0);
    CHECK_STR(err.msg, "");
    rt_close(&p);
}

static int rt_sigaction_is_default(int signo)
{
    struct sigaction sa;
    return sigaction(signo, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL;
}

static void rt_drop(void *ctx, int level, const char *msg, const char *json)
{
    (void)ctx; (void)level; (void)msg; (void)json;
}

/* Runs before any engine has started the watchdog (see main). */
TEST(runtime_without_the_watchdog_budgets_still_hold)
{
    bp_error err;
    CHECK_INT(bp_watchdog_config(0, &err), 0);
    CHECK_INT(bp_watchdog_signal(), 0);
    bp_limits lim;
    bp_limits_default(&lim);
    lim.instructions = 2000000;
    rt_parts p;
    CHECK_INT(rt_open(&p, &lim, &err), 0);
    if (!p.e) { CHECK_FAIL("engine: %s", err.msg); rt_close(&p); return; }
    bp_outcome o;
    bp_outcome_init(&o);
    CHECK_INT(bp_engine_run(p.e, RT_LOOP, strlen(RT_LOOP), &o), BP_ERROR);
    CHECK_CONTAINS(o.reason.data, "loop.lua:3: instruction budget exceeded");
    /* and the time budget, with a budget of instructions too large to matter */
    rt_close(&p);
    lim.instructions = UINT64_MAX / 2;
    lim.timeout_ms = 50;
    CHECK_INT(rt_open(&p, &lim, &err), 0);
    bp_outcome_reset(&o);
    double t0 = bp_monotonic_ms();
    CHECK_INT(bp_engine_run(p.e, RT_LOOP, strlen(RT_LOOP), &o), BP_ERROR);
    CHECK_CONTAINS(o.reason.data, "time budget exceeded");
    CHECK(bp_monotonic_ms() - t0 < 2000);
    /* inside one C call: the meters are on from the start */
    bp_outcome_reset(&o);
    t0 = bp_monotonic_ms();
    CHECK_INT(bp_engine_run(p.e, RT_STALL, strlen(RT_STALL), &o), BP_ERROR);
    CHECK_CONTAINS(o.reason.data, "time budget exceeded (50 ms");
    CHECK(bp_monotonic_ms() - t0 < 50 + 1000);   /* + 100 ms in release builds; ASan is slower */
    bp_outcome_reset(&o);
    bp_set_log(rt_drop, NULL);
    CHECK_INT(bp_engine_run(p.e, RT_HELLO, strlen(RT_HELLO), &o), BP_DELIVER);
    bp_set_log(NULL, NULL);
    bp_outcome_free(&o);
    rt_close(&p);
    /* no handler was installed for the default signal */
    CHECK(rt_sigaction_is_default(SIGRTMIN + 2));
    /* back to the default for the tests that follow: nothing has started yet */
    CHECK_INT(bp_watchdog_config(SIGRTMIN + 2, &err), 0);
}

/* Several threads make their first engine (the watchdog starts) and their
 * first transport (curl_global_init) at the same moment. */
static pthread_barrier_t rt_barrier;

static void *rt_first_use(void *arg)
{
    int *ok = arg;
    pthread_barrier_wait(&rt_barrier);
    bp_transport *t = bp_transport_new(1000, 1000);
    rt_parts p;
    bp_error err;
    bp_outcome o;
    bp_outcome_init(&o);
    *ok = t != NULL && rt_open(&p, NULL, &err) == 0 && bp_engine_run(p.e, RT_HELLO, strlen(RT_HELLO), &o) == BP_DELIVER;
    bp_outcome_free(&o);
    rt_close(&p);
    bp_transport_free(t);
    return NULL;
}

static int rt_quiet_calls;
static void rt_quiet(void *ctx, int level, const char *msg, const char *json)
{
    (void)ctx; (void)level; (void)msg; (void)json;
    __atomic_fetch_add(&rt_quiet_calls, 1, __ATOMIC_RELAXED);
}

TEST(runtime_first_use_from_many_threads_at_once)
{
    enum { N = 8 };
    pthread_t th[N];
    int ok[N];
    bp_set_log(rt_quiet, NULL);   /* the mappings print */
    rt_blueprint();
    pthread_barrier_init(&rt_barrier, NULL, N);
    for (int i = 0; i < N; i++) { ok[i] = 0; pthread_create(&th[i], NULL, rt_first_use, &ok[i]); }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&rt_barrier);
    bp_set_log(NULL, NULL);
    for (int i = 0; i < N; i++) CHECK_INT(ok[i], 1);
    CHECK_INT(__atomic_load_n(&rt_quiet_calls, __ATOMIC_RELAXED), N);
}

TEST(runtime_watchdog_handler_is_on_the_alternate_stack)
{
    bp_error err;
    bp_limits lim;
    bp_limits_default(&lim);
    lim.instructions = 2000000;
    rt_parts p;
    CHECK_INT(rt_open(&p, &lim, &err), 0);
    CHECK_INT(bp_watchdog_signal(), SIGRTMIN + 2);
    struct sigaction sa;
    CHECK_INT(sigaction(SIGRTMIN + 2, NULL, &sa), 0);
    CHECK(sa.sa_flags & SA_ONSTACK);
    CHECK(sa.sa_flags & SA_SIGINFO);
    CHECK(sa.sa_flags & SA_RESTART);
    /* the signal cannot change once the watchdog runs */
    err.msg[0] = '\0';
    CHECK_INT(bp_watchdog_config(SIGRTMIN + 3, &err), -1);
    CHECK_CONTAINS(err.msg, "already running");
    CHECK_INT(bp_watchdog_config(SIGRTMIN + 2, &err), 0);
    /* the caller's signal mask is untouched */
    sigset_t mask;
    pthread_sigmask(SIG_SETMASK, NULL, &mask);
    CHECK(!sigismember(&mask, SIGRTMIN + 2));
    /* and the watchdog stops an endless loop */
    bp_outcome o;
    bp_outcome_init(&o);
    CHECK_INT(bp_engine_run(p.e, RT_LOOP, strlen(RT_LOOP), &o), BP_ERROR);
    CHECK_CONTAINS(o.reason.data, "loop.lua:3: instruction budget exceeded");
    bp_outcome_free(&o);
    rt_close(&p);
}

typedef struct rt_capture { pthread_mutex_t mu; int n, levels[16]; char msgs[16][64]; char json[16][512]; } rt_capture;

static void rt_capture_log(void *ctx, int level, const char *msg, const char *json)
{
    rt_capture *c = ctx;
    pthread_mutex_lock(&c->mu);
    if (c->n < 16) {
        c->levels[c->n] = level;
        snprintf(c->msgs[c->n], sizeof c->msgs[0], "%s", msg);
        snprintf(c->json[c->n], sizeof c->json[0], "%s", json);
        c->n++;
    }
    pthread_mutex_unlock(&c->mu);
}

TEST(runtime_log_callback_receives_library_messages)
{
    rt_capture cap;
    memset(&cap, 0, sizeof cap);
    pthread_mutex_init(&cap.mu, NULL);
    bp_set_log(rt_capture_log, &cap);
    bp_log_fn fn;
    void *ctx;
    bp_get_log(&fn, &ctx);
    CHECK(fn == rt_capture_log && ctx == &cap);

    rt_parts p;
    bp_error err;
    CHECK_INT(rt_open(&p, NULL, &err), 0);
    bp_outcome o;
    bp_outcome_init(&o);
    CHECK_INT(bp_engine_run(p.e, RT_HELLO, strlen(RT_HELLO), &o), BP_DELIVER);
    CHECK_INT(o.nlogs, 1);   /* still kept with the outcome */
    bp_outcome_free(&o);
    rt_close(&p);
    bp_log("warn", "something to say", "\"n\":1");
    bp_set_log(NULL, NULL);
    bp_log("info", "not captured", NULL);

    CHECK_INT(cap.n, 2);
    CHECK_INT(cap.levels[0], BP_LOG_INFO);
    CHECK_STR(cap.msgs[0], "mapping log");
    CHECK_CONTAINS(cap.json[0], "\"msg\":\"mapping log\"");
    CHECK_CONTAINS(cap.json[0], "\"log\":\"hello from\\thello\"");
    CHECK_CONTAINS(cap.json[0], "\"at\":\"hello.lua:2\"");
    CHECK_CONTAINS(cap.json[0], "\"message_id\":\"m-1\"");
    CHECK(cap.json[0][0] == '{' && cap.json[0][strlen(cap.json[0]) - 1] == '}');
    CHECK_INT(cap.levels[1], BP_LOG_WARN);
    CHECK_STR(cap.msgs[1], "something to say");
    CHECK_CONTAINS(cap.json[1], "\"level\":\"warn\",\"msg\":\"something to say\",\"n\":1}");
    bp_get_log(&fn, &ctx);
    CHECK(fn == NULL && ctx == NULL);
    pthread_mutex_destroy(&cap.mu);
}


/* ---- cache.c: ctx.cache and shared step answers --------------------------------------------- */

TEST(cache_values_are_per_account)
{
    bp_cache *c = bp_cache_new(0);
    bp_buf v;
    bp_buf_init(&v);
    bp_cache_set(c, "ac https://a.api-us1.com", "tag:vip", "\"12\"", 4, 60);
    CHECK_INT(bp_cache_get(c, "ac https://a.api-us1.com", "tag:vip", &v), 1);
    CHECK_STR(v.data, "\"12\"");
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get(c, "ac https://b.api-us1.com", "tag:vip", &v), 0);
    bp_cache_set(c, "ac https://a.api-us1.com", "gone", "1", 1, 0.000001);   /* expires at once */
    CHECK_INT(bp_cache_get(c, "ac https://a.api-us1.com", "gone", &v), 0);
    bp_buf_free(&v);
    bp_cache_free(c);
}

/* A backing over the state store, as deliver.c registers it. */
static void unit_save(void *ud, uint64_t owner, const char *account, const char *key, const char *json, size_t len,
                      int64_t expires)
{
    bp_store_cache_put(ud, account, key, json, len, expires, (int64_t)owner);
}

static int unit_load(void *ud, const char *account, const char *key, bp_buf *out, int64_t *expires)
{
    return bp_store_cache_get(ud, account, key, (int64_t)bp_wall_ms(), out, expires);
}

/* A durable value written by an event's run is read by other events only
 * once that event is over and its requests went out: "the list statuses
 * were sent" must not be believed while they wait for a retry, and is
 * forgotten when they end as a dead letter. */
TEST(cache_durable_values_are_tentative_until_their_event_is_over)
{
    bp_cache *c = bp_cache_new(0);
    bp_buf v;
    bp_buf_init(&v);
    bp_cache_set_durable(c, 0, "acct", "lists:a@b.co", "\"granted\"", 9, 3600);   /* no event: at once */
    bp_cache_set_durable(c, 7, "acct", "lists:a@b.co", "\"denied\"", 8, 3600);
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 1);
    CHECK_STR(v.data, "\"granted\"");                                   /* event 7 is not over */
    bp_cache_settle(c, 8, 1);                                           /* another event: nothing */
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 1);
    CHECK_STR(v.data, "\"granted\"");
    bp_cache_settle(c, 7, 0);                                           /* a dead letter: forgotten */
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 1);
    CHECK_STR(v.data, "\"granted\"");
    bp_cache_set_durable(c, 9, "acct", "lists:a@b.co", "\"denied\"", 8, 3600);
    bp_cache_set_durable(c, 9, "acct", "tags:a@b.co", "[\"vip\"]", 7, 3600);
    bp_cache_settle(c, 9, 1);                                           /* delivered: both count */
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 1);
    CHECK_STR(v.data, "\"denied\"");
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get_stored(c, "acct", "tags:a@b.co", &v), 1);
    CHECK_STR(v.data, "[\"vip\"]");
    bp_buf_free(&v);
    bp_cache_free(c);
}

/* A test store's files (unit.db and its WAL and shared memory) and folder, gone. */
static void remove_unit_store(const char *dir)
{
    char path[300];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/unit.db%s", dir, (const char *[]){ "", "-wal", "-shm" }[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Retention: final events past their window go, in the store's own thread;
 * a dead letter within its longer window and an unfinished event stay. */
TEST(store_prunes_final_events_past_their_window_only)
{
    char dir[] = "/tmp/bp-unit-pruneXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    const char *states[] = { "delivered", "dropped", "dead", "held", "pending", "replayed" };
    int64_t then = (int64_t)bp_wall_ms() - 10000;   /* outcomes 10 s ago */
    for (int i = 0; i < 6; i++) {
        char mid[16];
        snprintf(mid, sizeof mid, "m-%d", i);
        bp_stored e = { 0 };
        e.id = bp_store_add(s, "", "{}", 2, i, mid, then);
        CHECK(e.id > 0);
        CHECK_INT(bp_store_update(s, &e, states[i], 200, NULL, NULL, "{}", 0, then), 0);
    }
    CHECK(bp_store_oldest(s, "") == then);
    bp_retention keep = { 1000, 30LL * 86400 * 1000, 0 };
    bp_store_set_retention(s, &keep);
    for (int i = 0; i < 500 && (bp_store_count(s, "", "delivered") || bp_store_count(s, "", "dropped") ||
                                bp_store_count(s, "", "replayed")); i++)
        usleep(10 * 1000);
    CHECK_INT(bp_store_count(s, "", "replayed"), 0);
    CHECK_INT(bp_store_count(s, "", "delivered"), 0);
    CHECK_INT(bp_store_count(s, "", "dropped"), 0);
    CHECK_INT(bp_store_count(s, "", "dead"), 1);
    CHECK_INT(bp_store_count(s, "", "held"), 1);
    CHECK_INT(bp_store_count(s, "", "pending"), 1);
    bp_store_status h;
    bp_store_health(s, &h);
    CHECK_INT(h.pruned, 3);
    CHECK(h.bytes > 0);
    CHECK(bp_store_retention(s).delivered_ms == 1000);
    bp_store_close(s);
    remove_unit_store(dir);
}

/* Event ids only grow: a partition given up forgets its unfinished events
 * (the newest rows), and the events read again when the partition comes
 * back get ids above every id given before, so that the delivery loop,
 * which reads pending events after the last id it loaded, sees them (and a
 * job of a forgotten event cannot write over a new one).  The same after a
 * prune of the newest rows, and across the write paths (an event posted, one
 * read from Kafka, another node's outcome). */
TEST(store_never_gives_an_event_id_twice)
{
    char dir[] = "/tmp/bp-unit-idsXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    int64_t high = 0;
    for (int off = 0; off < 4; off++) {
        char mid[16];
        snprintf(mid, sizeof mid, "k-%d", off);
        bp_source src = { "delivery-x", 0, off, 0, 7 };
        int64_t id = bp_store_add_from(s, "x", "{}", 2, mid, &src, 1);
        CHECK(id > high);
        high = id;
    }
    CHECK_INT(bp_store_release_slot(s, 7), 4);   /* given up: the newest rows go */
    for (int off = 0; off < 4; off++) {          /* read again under the next slot */
        char mid[16];
        snprintf(mid, sizeof mid, "k-%d", off);
        bp_source src = { "delivery-x", 0, off, 0, 8 };
        int64_t id = bp_store_add_from(s, "x", "{}", 2, mid, &src, 1);
        CHECK(id > high);
        high = id;
    }
    CHECK_INT(bp_store_release_slot(s, 8), 4);
    int64_t posted = bp_store_add(s, "", "{}", 2, 0, "p-1", 1);
    CHECK(posted > high);
    high = posted;
    bp_store_row row;
    memset(&row, 0, sizeof row);
    row.state = "delivered";
    row.outcome = "{}";
    row.updated_at = 1;
    bp_source other = { "delivery-y", 0, 0, 0, 0 };
    CHECK_INT(bp_store_record(s, "y", &other, &row), 0);
    bp_store_close(s);
    s = bp_store_open(dir, "unit.db", &err);   /* a restart starts above the table's ids */
    CHECK(s != NULL);
    int64_t after = bp_store_add(s, "", "{}", 2, 0, "p-2", 1);
    CHECK(after > high + 1);                    /* the outcome's row took high + 1 */
    bp_store_close(s);
    remove_unit_store(dir);
}

/* Rows in a table of the store file, read through a connection of its own. */
static long rows_in(const char *dir, const char *table)
{
    char path[300], sql[100];
    snprintf(path, sizeof path, "%s/unit.db", dir);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    long n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        n = (long)sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

/* Durable ctx.cache values past their expiry leave the file while serve runs
 * (they used to go only at the next open); live ones stay. */
TEST(store_prunes_expired_cache_values_while_running)
{
    char dir[] = "/tmp/bp-unit-cacheprXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    int64_t now = (int64_t)bp_wall_ms();
    CHECK_INT(bp_store_cache_put(s, "acct", "old", "1", 1, now - 1000, 0), 0);
    CHECK_INT(bp_store_cache_put(s, "acct", "new", "2", 1, now + 3600 * 1000, 0), 0);
    CHECK_INT(rows_in(dir, "cache_values"), 2);
    bp_retention keep = { 7LL * 86400 * 1000, 30LL * 86400 * 1000, 0 };
    bp_store_set_retention(s, &keep);
    for (int i = 0; i < 1000 && rows_in(dir, "cache_values") != 1; i++) usleep(10 * 1000);
    CHECK_INT(rows_in(dir, "cache_values"), 1);
    bp_buf v;
    bp_buf_init(&v);
    int64_t expires = 0;
    CHECK_INT(bp_store_cache_get(s, "acct", "new", now, &v, &expires), 1);
    CHECK_STR(v.data, "2");
    bp_buf_free(&v);
    bp_store_close(s);
    remove_unit_store(dir);
}

TEST(cache_durable_values_outlive_a_restart_once_their_event_is_over)
{
    char dir[] = "/tmp/bp-unit-cacheXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    bp_cache_backing b = { unit_save, unit_load, s };
    int64_t ev = bp_store_add(s, "", "{}", 2, 0, "m-1", 1);
    CHECK(ev > 0);
    bp_cache *c = bp_cache_new(0);
    bp_cache_set_backing(c, &b);
    bp_cache_set_durable(c, (uint64_t)ev, "acct", "lists:a@b.co", "\"granted\"", 9, 3600);
    bp_cache_set(c, "acct", "tags:a@b.co", "{}", 2, 3600);           /* not durable */
    bp_cache_free(c);

    c = bp_cache_new(0);                                              /* a restart */
    bp_cache_set_backing(c, &b);
    bp_buf v;
    bp_buf_init(&v);
    /* its event is still pending: the run that set it will run again */
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 0);
    CHECK(bp_store_move(s, "", "pending", "delivered", ev) == 1);
    CHECK_INT(bp_cache_get_stored(c, "acct", "lists:a@b.co", &v), 1);
    CHECK_STR(v.data, "\"granted\"");
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get(c, "acct", "lists:a@b.co", &v), 1);      /* now in memory too */
    bp_buf_reset(&v);
    CHECK_INT(bp_cache_get_stored(c, "acct", "tags:a@b.co", &v), 0);
    CHECK_INT(bp_cache_get_stored(c, "other", "lists:a@b.co", &v), 0);
    bp_cache_set_durable(c, 0, "acct", "short", "1", 1, 0.000001);    /* expired by the next read */
    bp_cache_free(c);
    c = bp_cache_new(0);
    bp_cache_set_backing(c, &b);
    CHECK_INT(bp_cache_get_stored(c, "acct", "short", &v), 0);
    bp_buf_free(&v);
    bp_cache_free(c);
    bp_store_close(s);
    remove_unit_store(dir);
}

/* Open batches (batchstore.c): recorded before their request leaves,
 * queued with the answer that said so, read back after a restart in
 * order, gone with their outcomes or their integration. */
typedef struct unit_rows { int n; char events[64], url[64], body[64]; int queued, status, polls; int64_t id; } unit_rows;

static void unit_batch_row(void *ctx, const bp_store_batch_row *r)
{
    unit_rows *u = ctx;
    u->n++;
    u->id = r->id;
    u->queued = r->queued;
    u->status = r->answer_status;
    u->polls = r->polls;
    snprintf(u->events, sizeof u->events, "%s", r->events);
    snprintf(u->url, sizeof u->url, "%s", r->answer_url ? r->answer_url : "");
    snprintf(u->body, sizeof u->body, "%.*s", (int)r->answer_len, r->answer_body ? r->answer_body : "");
}

TEST(store_keeps_open_batches_across_a_restart)
{
    char dir[] = "/tmp/bp-unit-batchXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    CHECK_INT(bp_store_batches_init(s), 0);
    int64_t ids[3];
    for (int i = 0; i < 3; i++) {
        char mid[16];
        snprintf(mid, sizeof mid, "m-%d", i);
        ids[2 - i] = bp_store_add(s, "acme", "{\"type\":\"identify\"}", 19, i, mid, 1);
    }
    int64_t b = bp_store_batch_add(s, "acme", ids, 3, 5);
    CHECK(b > 0);
    unit_rows u = { 0 };
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 1);
    CHECK_INT(u.queued, 0);
    char want[64];
    snprintf(want, sizeof want, "%lld,%lld,%lld", (long long)ids[0], (long long)ids[1], (long long)ids[2]);
    CHECK_STR(u.events, want);
    CHECK_INT(bp_store_batch_queued(s, b, 200, "https://x/api/3/import/bulk_import", "{\"batchId\":\"7\"}", 1, 6), 0);
    bp_store_close(s);

    s = bp_store_open(dir, "unit.db", &err);   /* a restart */
    CHECK(s != NULL);
    CHECK_INT(bp_store_batches_init(s), 0);
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 1);
    CHECK_INT(u.queued, 1);
    CHECK_INT(u.status, 200);
    CHECK_INT(u.polls, 1);
    CHECK_STR(u.url, "https://x/api/3/import/bulk_import");
    CHECK_STR(u.body, "{\"batchId\":\"7\"}");
    bp_stored e;
    CHECK_INT(bp_store_batch_event(s, ids[1], &e), 1);
    CHECK_INT(e.id, ids[1]);
    CHECK_STR(e.body, "{\"type\":\"identify\"}");
    free(e.body);
    CHECK(bp_store_move(s, "acme", "pending", "delivered", ids[1]) == 1);
    CHECK_INT(bp_store_batch_event(s, ids[1], &e), 0);   /* only a pending event is taken back */
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_batch_each(s, "other", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 0);
    CHECK_INT(bp_store_begin(s), 0);
    CHECK_INT(bp_store_batch_delete(s, b), 0);
    CHECK_INT(bp_store_commit(s, 1), 0);
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 0);
    CHECK(bp_store_batch_add(s, "acme", ids, 1, 7) > 0);
    CHECK_INT(bp_store_batch_forget(s, "acme"), 0);
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 0);
    bp_store_close(s);
    char path[300];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/unit.db%s", dir, (const char *[]){ "", "-wal", "-shm" }[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* A batch's id is never given again (outcome lines and ?batch= name it), even
 * once every batch is over and the table is empty; a table made before that
 * keeps its open batches when it is migrated. */
TEST(store_never_gives_a_batch_id_twice)
{
    char dir[] = "/tmp/bp-unit-batchidXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    sqlite3 *db = bp_store_db_hold(s);   /* the table as the first release of batches made it */
    CHECK_INT(sqlite3_exec(db, "CREATE TABLE batches(id INTEGER PRIMARY KEY, integration TEXT NOT NULL, events TEXT NOT NULL, "
                               "state TEXT NOT NULL, answer_status INTEGER, answer_url TEXT, answer_body TEXT, "
                               "polls INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
                               "INSERT INTO batches VALUES(3, 'acme', '1,2', 'queued', 200, 'u', 'b', 2, 1, 1);",
                           NULL, NULL, NULL), SQLITE_OK);
    bp_store_db_release(s);
    CHECK_INT(bp_store_batches_init(s), 0);
    unit_rows u = { 0 };
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &u), 0);
    CHECK_INT(u.n, 1);
    CHECK_INT(u.id, 3);
    CHECK_INT(u.queued, 1);
    CHECK_INT(u.polls, 2);
    CHECK_INT(bp_store_batch_delete(s, 3), 0);
    int64_t ids[] = { 1 };
    int64_t next = bp_store_batch_add(s, "acme", ids, 1, 2);
    CHECK_INT(next, 4);
    CHECK_INT(bp_store_batch_delete(s, next), 0);
    bp_store_close(s);
    s = bp_store_open(dir, "unit.db", &err);   /* and after a restart, the table empty */
    CHECK(s != NULL);
    CHECK_INT(bp_store_batches_init(s), 0);
    CHECK_INT(bp_store_batch_add(s, "acme", ids, 1, 3), 5);
    bp_store_close(s);
    remove_unit_store(dir);
}

/* Live Events' batch filter: the events whose outcome was saved with the
 * batch, newest first, in one state if asked; none of another batch or
 * integration. */
typedef struct unit_ids { int n; int64_t ids[8]; } unit_ids;
static void unit_id_row(void *ctx, const bp_store_row *r)
{
    unit_ids *u = ctx;
    if (u->n < 8) u->ids[u->n] = r->id;
    u->n++;
}

TEST(store_lists_a_batchs_events)
{
    char dir[] = "/tmp/bp-unit-batchlistXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    const int64_t batch[] = { 7, 7, 0, 8, 7 };
    const char *state[] = { "delivered", "dead", "delivered", "delivered", "delivered" };
    int64_t id[5];
    for (int i = 0; i < 5; i++) {
        char mid[16];
        snprintf(mid, sizeof mid, "m-%d", i);
        bp_stored e = { 0 };
        e.id = id[i] = bp_store_add(s, i == 4 ? "other" : "acme", "{}", 2, i, mid, 1);
        CHECK(e.id > 0);
        CHECK_INT(bp_store_update(s, &e, state[i], 200, NULL, NULL, "{}", batch[i], 2), 0);
    }
    unit_ids u = { 0 };
    CHECK_INT(bp_store_recent(s, "acme", NULL, 7, 10, unit_id_row, &u), 0);
    CHECK_INT(u.n, 2);
    CHECK_INT(u.ids[0], id[1]);
    CHECK_INT(u.ids[1], id[0]);
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_recent(s, "acme", "dead", 7, 10, unit_id_row, &u), 0);
    CHECK_INT(u.n, 1);
    CHECK_INT(u.ids[0], id[1]);
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_recent(s, "acme", NULL, 0, 10, unit_id_row, &u), 0);
    CHECK_INT(u.n, 4);
    bp_store_close(s);
    remove_unit_store(dir);
}

/* Batches queued for another node (cluster mode, batchstore.c): kept with
 * their events' Kafka sources; the events stored here are left out of the
 * pending query and found in the batch's order for the loop that adopts
 * it; an outcome of one of them closes it. */
typedef struct unit_handed { int n; size_t events, present; int64_t ids[4], id; char body[64]; int polls; } unit_handed;

static void unit_handed_row(void *ctx, const bp_handed_row *r)
{
    unit_handed *u = ctx;
    u->n++;
    u->id = r->id;
    u->events = r->n;
    u->present = r->present;
    u->polls = r->polls;
    for (size_t i = 0; i < r->present && i < 4; i++) u->ids[i] = r->ids[i];
    snprintf(u->body, sizeof u->body, "%.*s", (int)r->answer_len, r->answer_body ? r->answer_body : "");
}

static size_t unit_pending(bp_store *s)
{
    bp_stored *evs;
    size_t n;
    CHECK_INT(bp_store_pending(s, "acme", 0, 100, &evs, &n), 0);
    for (size_t i = 0; i < n; i++) { free(evs[i].body); free(evs[i].steps); }
    free(evs);
    return n;
}

TEST(store_hands_a_queued_batch_over)
{
    char dir[] = "/tmp/bp-unit-handedXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    bp_error err;
    bp_store *s = bp_store_open(dir, "unit.db", &err);
    CHECK(s != NULL);
    CHECK_INT(bp_store_batches_init(s), 0);
    /* the batch's events: offsets 7 and 5 of partition 2, in that order */
    bp_source srcs[2] = { { "delivery-acme", 2, 7, 0, 0 }, { "delivery-acme", 2, 5, 1, 0 } };
    bp_handed h = { "node1", 9, "acme", srcs, 2, 200, "https://x/api/3/import/bulk_import", "{\"batchId\":\"7\"}", 15, 1 };
    CHECK_INT(bp_store_begin(s), 0);
    CHECK_INT(bp_store_handed_add(s, &h, 100), 0);
    CHECK_INT(bp_store_handed_add(s, &h, 100), 0);   /* read twice: kept once */
    CHECK_INT(bp_store_commit(s, 1), 0);
    CHECK_INT(bp_store_handed_any(s), 1);
    /* another event of the partition, and the batch's second event, are read here */
    bp_source other = { "delivery-acme", 2, 6, 0, 11 }, second = { "delivery-acme", 2, 5, 1, 11 };
    int64_t o = bp_store_add_from(s, "acme", "{\"type\":\"identify\"}", 19, "m-6", &other, 200);
    int64_t b2 = bp_store_add_from(s, "acme", "{\"type\":\"identify\"}", 19, "m-5", &second, 200);
    CHECK(o > 0 && b2 > 0);
    CHECK_INT((int)unit_pending(s), 1);   /* the batch's event waits for its batch */
    unit_handed u = { 0 };
    CHECK_INT(bp_store_handed_each(s, "acme", unit_handed_row, &u), 0);
    CHECK_INT(u.n, 1);
    CHECK_INT((int)u.events, 2);
    CHECK_INT((int)u.present, 1);
    CHECK_INT(u.ids[0], b2);
    CHECK_STR(u.body, "{\"batchId\":\"7\"}");
    bp_source first = { "delivery-acme", 2, 7, 0, 11 };
    int64_t b1 = bp_store_add_from(s, "acme", "{\"type\":\"identify\"}", 19, "m-7", &first, 300);
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_handed_each(s, "acme", unit_handed_row, &u), 0);
    CHECK_INT((int)u.present, 2);
    CHECK_INT(u.ids[0], b1);   /* in the batch's order, not the store's */
    CHECK_INT(u.ids[1], b2);
    CHECK_INT(u.polls, 1);
    /* adopted: this node's open batch, queued with the recorded answer; the handed row stays */
    bp_store_batch_row answer = { 0, NULL, 1, 200, "https://x/api/3/import/bulk_import", "{\"batchId\":\"7\"}", 15, 1 };
    int64_t mine = bp_store_handed_adopt(s, "acme", u.ids, 2, &answer, 400);
    CHECK(mine > 0);
    unit_rows r = { 0 };
    CHECK_INT(bp_store_batch_each(s, "acme", unit_batch_row, &r), 0);
    CHECK_INT(r.n, 1);
    CHECK_INT(r.queued, 1);
    CHECK_STR(r.body, "{\"batchId\":\"7\"}");
    memset(&u, 0, sizeof u);
    CHECK_INT(bp_store_handed_each(s, "acme", unit_handed_row, &u), 0);
    CHECK_INT(u.n, 1);
    /* an outcome of one of its events closes it: its events are the pending query's again */
    CHECK_INT(bp_store_begin(s), 0);
    CHECK_INT(bp_store_handed_close(s, &other), 0);   /* not one of its events */
    CHECK_INT(bp_store_commit(s, 1), 0);
    CHECK_INT(bp_store_handed_any(s), 1);
    CHECK_INT(bp_store_begin(s), 0);
    CHECK_INT(bp_store_handed_close(s, &srcs[1]), 0);
    CHECK_INT(bp_store_commit(s, 1), 0);
    CHECK_INT(bp_store_handed_any(s), 0);
    CHECK_INT((int)unit_pending(s), 3);
    /* an integration's purge forgets its handed batches too */
    CHECK_INT(bp_store_begin(s), 0);
    CHECK_INT(bp_store_handed_add(s, &(bp_handed){ "node1", 10, "acme", srcs, 2, 200, "u", "b", 1, 0 }, 500), 0);
    CHECK_INT(bp_store_commit(s, 1), 0);
    CHECK_INT(bp_store_batch_forget(s, "acme"), 0);
    CHECK_INT(bp_store_handed_any(s), 0);
    bp_store_close(s);
    remove_unit_store(dir);
}

TEST(cache_claim_is_single_flight)
{
    bp_cache *c = bp_cache_new(0);
    CHECK_INT(bp_cache_claim(c, "acct", "tag create vip", 1), 1);
    CHECK_INT(bp_cache_claim(c, "acct", "tag create vip", 1), 1);   /* the owner again (its run repeats) */
    CHECK_INT(bp_cache_claim(c, "acct", "tag create vip", 2), 0);   /* another event waits */
    CHECK_INT(bp_cache_claim(c, "other", "tag create vip", 2), 1);  /* another account does not */
    bp_cache_release(c, "acct", "tag create vip", 2);               /* not its claim: no effect */
    CHECK_INT(bp_cache_claim(c, "acct", "tag create vip", 2), 0);
    bp_cache_set(c, "acct", "tag create vip", "{}", 2, 60);         /* the answer arrives: claim over */
    CHECK_INT(bp_cache_claim(c, "acct", "tag create vip", 2), 1);
    bp_cache_free(c);
}

TEST(cache_stays_bounded)
{
    bp_cache *c = bp_cache_new(100);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        bp_cache_set(c, "acct", key, "1", 1, 60 + i);
    }
    CHECK(bp_cache_count(c) <= 100);
    bp_buf v;
    bp_buf_init(&v);
    CHECK_INT(bp_cache_get(c, "acct", "k999", &v), 1);   /* the latest written is kept */
    /* an entry read by every event stays while others come and go */
    bp_cache_set(c, "acct", "fields", "1", 1, 1);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "contact%d", i);
        bp_cache_set(c, "acct", key, "1", 1, 3600);
        bp_buf_reset(&v);
        CHECK_INT(bp_cache_get(c, "acct", "fields", &v), 1);
    }
    bp_buf_free(&v);
    bp_cache_free(c);
}

/* The tiles' "last hour": per-minute slots, a slot an hour old starts again. */
TEST(recent_window_counts_the_last_hour_only)
{
    bp_recent *r = NULL;
    long sum[BP_RECENT_ENDS];
    bp_recent_sum(r, 0, sum);
    CHECK_INT(sum[BP_END_DELIVERED], 0);
    int64_t t0 = 1700000000000;           /* ms */
    bp_recent_add(&r, BP_END_HELD, t0);
    bp_recent_add(&r, BP_END_DELIVERED, t0 + 1000);
    bp_recent_add(&r, BP_END_DELIVERED, t0 + 30 * 60000);
    bp_recent_add(&r, BP_END_RETRYING, t0);   /* not a final outcome: not counted */
    bp_recent_sum(r, t0 + 30 * 60000, sum);
    CHECK_INT(sum[BP_END_HELD], 1);
    CHECK_INT(sum[BP_END_DELIVERED], 2);
    bp_recent_sum(r, t0 + 61 * 60000, sum);   /* the first minute is out of the window */
    CHECK_INT(sum[BP_END_HELD], 0);
    CHECK_INT(sum[BP_END_DELIVERED], 1);
    bp_recent_add(&r, BP_END_DELIVERED, t0 + 120 * 60000);   /* takes the first minute's slot again */
    bp_recent_sum(r, t0 + 120 * 60000, sum);
    CHECK_INT(sum[BP_END_DELIVERED], 1);
    free(r);
}

static void put_text(const char *dir, const char *name, const char *text)
{
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

static int parse_record(const char *text, bp_error *err)
{
    bp_blueprint_record rec;
    int rc = bp_blueprint_record_parse(&rec, text, strlen(text), err);
    bp_blueprint_record_free(&rec);
    return rc;
}

/* A blueprint record (cluster mode) carries every top-level file of a
 * folder, makes another folder the same revision, and is refused when its
 * files do not make the revision it names or name a path. */
TEST(blueprint_records_carry_a_folder_and_refuse_what_is_not_one)
{
    char a[] = "/tmp/bp-unit-XXXXXX", b[] = "/tmp/bp-unit-XXXXXX", rev[BP_REVISION_LEN], disk[BP_REVISION_LEN];
    bp_error err;
    CHECK(mkdtemp(a) != NULL && mkdtemp(b) != NULL);
    put_text(a, "blueprint.yaml", "vendor: acme\n");
    put_text(a, "identify.lua", "return function() return {} end -- \"quoted\" \xc3\xa9\n");
    put_text(a, "README", "notes\n");
    put_text(a, ".hidden", "not counted\n");
    bp_buf rec;
    bp_buf_init(&rec);
    CHECK_INT(bp_blueprint_record_write("acme", a, "ada", &rec, rev, &err), 0);
    bp_blueprint_revision(a, disk);
    CHECK_STR(rev, disk);
    bp_blueprint_record r;
    CHECK_INT(bp_blueprint_record_parse(&r, rec.data, rec.len, &err), 0);
    CHECK_STR(r.vendor, "acme");
    CHECK_STR(r.actor, "ada");
    CHECK_STR(r.revision, rev);
    CHECK_INT((int)r.n, 3);
    /* another folder made the same revision: its extra file goes, its dotfiles stay */
    put_text(b, "blueprint.yaml", "vendor: other\n");
    put_text(b, "old.lua", "return 1\n");
    put_text(b, ".keep", "mine\n");
    CHECK_INT(bp_blueprint_record_put(&r, b, &err), 0);
    bp_blueprint_revision(b, disk);
    CHECK_STR(disk, rev);
    char path[300];
    snprintf(path, sizeof path, "%s/old.lua", b);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof path, "%s/.keep", b);
    CHECK(access(path, F_OK) == 0);
    /* a folder that cannot be written stays as it was */
    CHECK_INT(bp_blueprint_record_put(&r, "/nonexistent/bp-unit", &err), -1);
    CHECK_CONTAINS(err.msg, "nothing was changed");
    bp_blueprint_record_free(&r);
    /* a file changed on the way: refused */
    char *bad = bp_strdup(rec.data), *at = strstr(bad, "vendor: acme");
    CHECK(at != NULL);
    if (at) at[8] = 'X';
    CHECK_INT(parse_record(bad, &err), -1);
    CHECK_CONTAINS(err.msg, "not the");
    free(bad);
    CHECK_INT(parse_record("{\"blueprint\":\"acme\",\"revision\":\"0123456789ab\",\"files\":{\"blueprint.yaml\":\"x\","
                           "\"../escape.lua\":\"x\"}}", &err), -1);
    CHECK_CONTAINS(err.msg, "not a plain name");
    CHECK_INT(parse_record("{\"blueprint\":\"acme\",\"revision\":\"0123456789ab\",\"files\":{\"a.lua\":\"x\"}}", &err), -1);
    CHECK_CONTAINS(err.msg, "no blueprint.yaml");
    CHECK_INT(parse_record("{\"blueprint\":\"acme\",\"files\":{}}", &err), -1);
    CHECK_CONTAINS(err.msg, "lacks");
    CHECK_INT(parse_record("not json", &err), -1);
    CHECK_INT(parse_record("{\"blueprint\":\"acme\",\"revision\":\"0123456789ab\",\"files\":{\"blueprint.yaml\":\"x\","
                           "\"a.lua\":\"1\",\"a.lua\":\"2\"}}", &err), -1);
    CHECK_CONTAINS(err.msg, "names the file 'a.lua' twice");
    CHECK_INT(parse_record("{\"blueprint\":\"acme\",\"revision\":\"0123456789a\\\"\",\"files\":{\"blueprint.yaml\":\"x\"}}",
                           &err), -1);
    CHECK_CONTAINS(err.msg, "12 hex digits");
    bp_buf_free(&rec);
    const char *names[] = { "blueprint.yaml", "identify.lua", "README", ".hidden", "old.lua", ".keep" };
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/%s", a, names[i]); remove(path);
        snprintf(path, sizeof path, "%s/%s", b, names[i]); remove(path);
    }
    rmdir(a);
    rmdir(b);
}

/* A record is written all or nothing: a place that is not a regular file
 * (a folder, a link) refuses it with nothing changed; what it is written
 * from is the folder's regular files only; leftovers of a write that did
 * not finish are removed. */
TEST(blueprint_records_write_all_or_nothing_regular_files_only)
{
    char a[] = "/tmp/bp-unit-XXXXXX", b[] = "/tmp/bp-unit-XXXXXX", rev[BP_REVISION_LEN], path[300], target[300];
    bp_error err;
    CHECK(mkdtemp(a) != NULL && mkdtemp(b) != NULL);
    put_text(a, "blueprint.yaml", "vendor: acme\n");
    put_text(a, "x.lua", "return 1\n");
    snprintf(path, sizeof path, "%s/link.lua", a);
    CHECK(symlink("x.lua", path) == 0);
    snprintf(path, sizeof path, "%s/sub", a);
    CHECK(mkdir(path, 0700) == 0);
    bp_buf rec;
    bp_buf_init(&rec);
    CHECK_INT(bp_blueprint_record_write("acme", a, "ada", &rec, rev, &err), 0);
    bp_blueprint_record r;
    CHECK_INT(bp_blueprint_record_parse(&r, rec.data, rec.len, &err), 0);
    CHECK_INT((int)r.n, 2);   /* neither the link nor the folder */
    /* x.lua's place in b is a folder: refused, b unchanged */
    put_text(b, "blueprint.yaml", "vendor: mine\n");
    snprintf(path, sizeof path, "%s/x.lua", b);
    CHECK(mkdir(path, 0700) == 0);
    CHECK_INT(bp_blueprint_record_put(&r, b, &err), -1);
    CHECK_CONTAINS(err.msg, "not a regular file");
    bp_buf was;
    bp_buf_init(&was);
    snprintf(target, sizeof target, "%s/blueprint.yaml", b);
    CHECK_INT(bp_read_file(target, &was, &err), 0);
    CHECK_STR(was.data, "vendor: mine\n");
    rmdir(path);
    /* a link: refused too */
    CHECK(symlink("/etc/hostname", path) == 0);
    CHECK_INT(bp_blueprint_record_put(&r, b, &err), -1);
    CHECK_CONTAINS(err.msg, "not a regular file");
    unlink(path);
    /* a leftover beside a file of the record goes */
    put_text(b, ".x.lua.AbC123", "half\n");
    CHECK_INT(bp_blueprint_record_put(&r, b, &err), 0);
    snprintf(path, sizeof path, "%s/.x.lua.AbC123", b);
    CHECK(access(path, F_OK) != 0);
    char disk[BP_REVISION_LEN];
    bp_blueprint_revision(b, disk);
    CHECK_STR(disk, rev);
    bp_blueprint_record_free(&r);
    bp_buf_free(&rec);
    bp_buf_free(&was);
    const char *names[] = { "blueprint.yaml", "x.lua", "link.lua" };
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", a, names[i]); remove(path);
        snprintf(path, sizeof path, "%s/%s", b, names[i]); remove(path);
    }
    snprintf(path, sizeof path, "%s/sub", a);
    rmdir(path);
    rmdir(a);
    rmdir(b);
}

int main(void)
{
    RUN(cache_values_are_per_account);
    RUN(cache_durable_values_outlive_a_restart_once_their_event_is_over);
    RUN(store_prunes_final_events_past_their_window_only);
    RUN(store_prunes_expired_cache_values_while_running);
    RUN(store_never_gives_an_event_id_twice);
    RUN(cache_durable_values_are_tentative_until_their_event_is_over);
    RUN(cache_claim_is_single_flight);
    RUN(cache_stays_bounded);
    RUN(recent_window_counts_the_last_hour_only);
    RUN(patterns_agree_with_the_string_library);
    RUN(metered_functions_agree_with_the_library);
    RUN(metered_loops_charge_each_element_once_armed);
    RUN(encoder_stops_at_the_memory_cap_and_the_budget);
    RUN(json_integers_stay_exact);
    RUN(json_doubles_stay_exact);
    RUN(json_empty_containers_keep_their_kind);
    RUN(json_escapes_decode_to_utf8);
    RUN(json_string_specials_at_every_offset);
    RUN(json_text_writers_check_utf8);
    RUN(json_literals);
    RUN(json_rejects_malformed_input);
    RUN(json_rejects_invalid_utf8);
    RUN(json_nul_byte_is_rejected);
    RUN(json_depth_and_size_are_bounded);
    RUN(json_lookup);
    RUN(json_double_writer_is_shortest_and_keeps_floatness);
    RUN(utf8_checker);
    RUN(yaml_parses_into_the_same_tree);
    RUN(yaml_numbers_are_json_numbers_or_strings);
    RUN(yaml_errors_name_line_and_column);
    RUN(yaml_duplicate_keys_name_both_lines);
    RUN(consent_three_shapes_newest_first);
    RUN(consent_absent_uses_the_policy);
    RUN(reader_ndjson_lines);
    RUN(reader_array_elements);
    RUN(reader_errors_name_lines);
    RUN(reader_pretty_object);
    RUN(reader_truncated_first_line_is_still_ndjson);
    RUN(reader_oversized_event_is_skipped);
    RUN(form_escape);
    RUN(outcome_strings_live_in_the_outcome);
    RUN(render_substitutes_or_redacts_secrets);
    RUN(hmac_sha256_rfc4231_vectors);
    RUN(jwt_sign_and_verify);
    RUN(jwt_nbf_and_iat_are_honoured_with_a_skew);
    RUN(jwt_only_canonical_base64url);
    RUN(jwt_secret_is_at_least_32_bytes);
    RUN(pace_never_exceeds_the_limit_in_any_second);
    RUN(pace_catches_up_after_a_late_send);
    RUN(pace_obeys_retry_after_and_a_lower_limit);
    RUN(window_bounds_sends_in_any_window_and_keeps_its_sends_on_a_new_limit);
    RUN(destinations_match_scheme_host_and_port_exactly);
    RUN(secrets_encrypt_and_decrypt_bound_to_their_place);
    RUN(blueprint_records_carry_a_folder_and_refuse_what_is_not_one);
    RUN(blueprint_records_write_all_or_nothing_regular_files_only);
    RUN(secrets_sealed_as_v1_are_migrated_to_v2_for_their_destination);
    RUN(account_key_of_a_url_is_its_origin);
    /* in this order: the first starts no watchdog, the second starts it */
    RUN(runtime_without_the_watchdog_budgets_still_hold);
    RUN(runtime_budgets_hold_inside_and_between_long_c_calls);
    RUN(runtime_first_use_from_many_threads_at_once);
    RUN(runtime_watchdog_handler_is_on_the_alternate_stack);
    RUN(runtime_errors_are_initialised_and_set_on_failure);
    RUN(runtime_log_callback_receives_library_messages);
    RUN(batch_spec_is_read_with_its_bounds);
    RUN(batch_spec_refuses_with_the_line_and_the_closest_name);
    RUN(batch_mapping_gives_each_event_its_result);
    RUN(store_keeps_open_batches_across_a_restart);
    RUN(store_never_gives_a_batch_id_twice);
    RUN(store_lists_a_batchs_events);
    RUN(store_hands_a_queued_batch_over);
    rt_cleanup();
    return CHECK_SUMMARY();
}
