/*
 * yaml.c — read YAML (blueprint.yaml, config files) into the same node tree
 * as JSON, so the loader and validator have one way to walk documents.
 *
 * libyaml's event API is used rather than its document API: events arrive in
 * document order, which is exactly the order of our flat node array.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 64

/* Scalars are copied into doc->text, NUL-terminated, so bp_jtext works. */
static uint32_t push_node(bp_doc *d, uint8_t type, const char *s, size_t len, size_t line)
{
    uint32_t i = bp_doc_add_node(d, type, d->text.len, len, line);
    bp_buf_add(&d->text, s, len);
    bp_buf_addc(&d->text, '\0');
    return i;
}

/* YAML 1.1 plain scalars that mean something other than a string.  Quoted
 * scalars are always strings, so `"123"` stays text. */
static uint8_t plain_scalar_type(const char *s, size_t len)
{
    if (len == 0 || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"))
        return BP_JNULL;
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return BP_JTRUE;
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return BP_JFALSE;
    /* a number exactly as JSON writes one (-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?):
     * its text is kept and written as is, so anything else (06, .5, 5.)
     * stays a string rather than becoming invalid JSON */
    size_t i = 0, n;
    if (s[i] == '-') i++;
    if (i < len && s[i] == '0') i++;
    else if (i < len && s[i] >= '1' && s[i] <= '9') while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    else return BP_JSTRING;
    if (i < len && s[i] == '.') {
        for (n = 0, i++; i < len && s[i] >= '0' && s[i] <= '9'; i++) n++;
        if (!n) return BP_JSTRING;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        for (n = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++) n++;
        if (!n) return BP_JSTRING;
    }
    return i == len ? BP_JNUMBER : BP_JSTRING;
}

/* libyaml's scanner notices some mistakes only at the next token: a key
 * without ':' (often a line indented wrong) is reported where the line
 * after it starts.  Its context_mark is where the offending token began, so
 * a scanner error names that line, and where it was noticed when that is
 * later.  A parser error's context_mark is where the enclosing block
 * started (line 1 for the top level): there the problem_mark is the
 * offending line. */
static void syntax_error(const yaml_parser_t *p, const char *origin, bp_error *err)
{
    yaml_mark_t at = p->problem_mark;
    int earlier = p->error == YAML_SCANNER_ERROR && p->context && p->context_mark.index < p->problem_mark.index;
    if (earlier) at = p->context_mark;
    char noticed[64] = "";
    if (earlier && p->context_mark.line != p->problem_mark.line)
        snprintf(noticed, sizeof noticed, " (noticed on line %zu)", p->problem_mark.line + 1);
    bp_error_set(err, "%s:%zu:%zu: invalid YAML: %s%s%s%s", origin, at.line + 1, at.column + 1,
                 p->problem ? p->problem : "syntax error", p->context ? " " : "", p->context ? p->context : "", noticed);
}

int bp_yaml_parse(bp_doc *d, const char *src, size_t len, bp_error *err)
{
    const char *origin = d->origin ? d->origin : "YAML";
    yaml_parser_t parser;
    yaml_event_t ev;
    uint32_t stack[YAML_MAX_DEPTH];
    uint32_t counts[YAML_MAX_DEPTH];
    int depth = 0, done = 0, rc = -1, have_root = 0;

    bp_error_clear(err);
    d->n = 0;
    d->generation++;
    bp_buf_reset(&d->text);
    if (!yaml_parser_initialize(&parser)) {
        bp_error_set(err, "%s: could not initialise the YAML parser", origin);
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)src, len);
    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            syntax_error(&parser, origin, err);
            goto out;
        }
        size_t line = ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            done = have_root;
            if (ev.type == YAML_STREAM_END_EVENT) done = 1;
            break;
        case YAML_ALIAS_EVENT:
            bp_error_set(err, "%s:%zu: YAML aliases (*name) are not supported; write the value out", origin, line);
            yaml_event_delete(&ev);
            goto out;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            size_t vlen = ev.data.scalar.length;
            int is_key = depth > 0 && d->nodes[stack[depth - 1]].type == BP_JOBJECT &&
                         counts[depth - 1] % 2 == 0;
            uint8_t type = BP_JSTRING;
            if (!is_key && ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
                type = plain_scalar_type(v, vlen);
            push_node(d, type, v, vlen, line);
            if (depth) counts[depth - 1]++; else have_root = 1;
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (depth > 0 && d->nodes[stack[depth - 1]].type == BP_JOBJECT && counts[depth - 1] % 2 == 0) {
                bp_error_set(err, "%s:%zu: mapping keys must be plain strings", origin, line);
                yaml_event_delete(&ev);
                goto out;
            }
            if (depth == YAML_MAX_DEPTH) {
                bp_error_set(err, "%s:%zu: YAML nested too deep", origin, line);
                yaml_event_delete(&ev);
                goto out;
            }
            if (depth) counts[depth - 1]++; else have_root = 1;
            stack[depth] = push_node(d, ev.type == YAML_MAPPING_START_EVENT ? BP_JOBJECT : BP_JARRAY,
                                     "", 0, line);
            counts[depth++] = 0;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: {
            bp_jnode *n = &d->nodes[stack[--depth]];
            n->len = n->type == BP_JOBJECT ? counts[depth] / 2 : counts[depth];
            n->next = (uint32_t)d->n;
            break;
        }
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    if (!have_root) {
        bp_error_set(err, "%s: the YAML document is empty", origin);
        goto out;
    }
    if (bp_doc_unique_keys(d, origin, err) < 0) goto out;
    rc = 0;
out:
    yaml_parser_delete(&parser);
    if (rc < 0) { d->n = 0; bp_error_ensure(err, "invalid YAML"); }
    return rc;
}
