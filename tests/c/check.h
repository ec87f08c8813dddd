/*
 * check.h — a minimal test harness in the libuv style: every assertion
 * prints both sides when it fails, and the run ends with one summary line.
 */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed, check_case_failed;
static const char *check_case;

#define CHECK_FAIL(fmt, ...) do { \
    fprintf(stderr, "  %s:%d: " fmt "\n", __FILE__, __LINE__, __VA_ARGS__); \
    check_case_failed = 1; } while (0)

#define CHECK(cond) do { if (!(cond)) CHECK_FAIL("expected %s", #cond); } while (0)

#define CHECK_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); \
    if (_a != _b) CHECK_FAIL("%s == %s: got %lld, expected %lld", #a, #b, _a, _b); } while (0)

#define CHECK_STR(a, b) do { const char *_a = (a), *_b = (b); \
    if (!_a || !_b || strcmp(_a, _b) != 0) \
        CHECK_FAIL("%s == %s:\n    got      \"%s\"\n    expected \"%s\"", #a, #b, _a ? _a : "(null)", _b ? _b : "(null)"); \
    } while (0)

#define CHECK_CONTAINS(hay, needle) do { const char *_h = (hay), *_n = (needle); \
    if (!_h || !strstr(_h, _n)) CHECK_FAIL("%s contains \"%s\": got \"%s\"", #hay, _n, _h ? _h : "(null)"); } while (0)

#define TEST(name) static void name(void)

#define RUN(name) do { check_case = #name; check_case_failed = 0; name(); \
    if (check_case_failed) { check_failed++; printf("not ok - %s\n", check_case); } \
    else { check_passed++; printf("ok - %s\n", check_case); } } while (0)

#define CHECK_SUMMARY() (printf("unit: %d passed, %d failed\n", check_passed, check_failed), check_failed ? 1 : 0)

#endif
