/*
 * emulator.h — what the ActiveCampaign emulator's files share.
 *
 * emulator.c owns the server, the accounts, contacts, Event Tracking and the
 * /_emulator/ control endpoints; crm.c the contact resources (lists, tags,
 * custom fields); ecom.c Deep Data (connections, customers, orders); bulk.c
 * the Bulk Contact Importer (bulk_import, import/info).  Every
 * function here runs with the emulator's one mutex held, so no file locks
 * anything itself.
 */
#ifndef AC_EMULATOR_H
#define AC_EMULATOR_H

#include "blueprint.h"

#include <microhttpd.h>
#include <stddef.h>

typedef struct reply {
    int status;
    bp_buf body;
    const char *ctype;
    char retry_after[16];
    int ratelimit_remaining;  /* -1: no RateLimit headers */
} reply;

typedef struct contact {
    long id;
    char *email, *first, *last, *phone;
    bp_buf tracking;      /* JSON objects, comma separated */
    long ntracking;
} contact;

/* One /api/3 or /_emulator/ request as the resource files see it. */
typedef struct req {
    const char *method, *path, *body;
    size_t len;
    struct MHD_Connection *conn;   /* for query arguments */
    int account;                   /* index of the Api-Token's account */
} req;

/* ---- emulator.c ---- */
char *xdup(const char *s);
void json_reply(reply *r, int status, const char *json);
void json_begin(reply *r, int status);   /* status and JSON type, empty body */
contact *find_contact(const char *email);
contact *find_contact_id(long id);
contact *upsert_contact(const char *email, int *created);
void set_contact(contact *k, const char *first, const char *last, const char *phone);
void write_contact(bp_buf *b, const contact *c);
int valid_email(const char *e);
void lower(char *s);
size_t ncontacts(void);
contact *contact_at(size_t i);

/* Request helpers shared by the resources. */
const char *query(const req *q, const char *key);
uint32_t body_object(reply *r, bp_doc *d, const req *q, const char *wrapper);
void paging(const req *q, size_t *offset, size_t *limit);
void *grow(void *p, size_t n, size_t *cap, size_t size);
void now_iso(char out[32]);
long jid(const bp_doc *d, uint32_t n);               /* positive id, else 0 */
int jinteger(const bp_doc *d, uint32_t n, long long *out);
const char *jstr(const bp_doc *d, uint32_t obj, const char *key);
void put_str(bp_buf *b, const char *prefix, const char *s);
void put_id(bp_buf *b, const char *prefix, long id);
void error_reply(reply *r, int status, const char *title, const char *detail, const char *code,
                 const char *pointer);
void missing_reply(reply *r, const char *attribute);
void no_result(reply *r, const char *what, long id);
void meta_total(bp_buf *b, size_t total);

/* ---- crm.c: lists, tags, contactTags, fields, fieldValues ---- */
void crm_init(int naccounts);
void crm_reset(void);
int crm_api(reply *r, const req *q);          /* 1 when the path is one of its resources */
void crm_contact_lists(reply *r, int account, long contact);   /* GET /api/3/contacts/{id}/contactLists */
int crm_control(reply *r, const req *q);      /* 1 when handled */
void crm_dump(bp_buf *b, int account);        /* members of the /_emulator/state object */
int crm_check_values(reply *r, const bp_doc *d, uint32_t list);   /* contact.fieldValues; -1: answered */
void crm_set_values(bp_buf *b, int account, long contact, const bp_doc *d, uint32_t list);

void crm_tag_by_name(int account, long contact, const char *name);   /* bulk import: tags by name */
void crm_bulk_list(int account, long contact, long list, int subscribe);
int crm_list_exists(int account, long list);
const char *crm_field_problem(long field, const char *value);   /* NULL: the field exists, the value fits */
void crm_set_field(int account, long contact, long field, const char *value);

/* ---- ecom.c: connections, ecomCustomers, ecomOrders ---- */
void ecom_init(int naccounts);
void ecom_reset(void);
void ecom_accept_duplicates(int accept);   /* 1: a repeated externalid is created again, not 422 */
int ecom_api(reply *r, const req *q);
void ecom_dump(bp_buf *b, int account);

/* ---- bulk.c: POST /api/3/import/bulk_import, GET /api/3/import/info ---- */
void bulk_init(int naccounts, int delay_ms, int per_minute);
void bulk_reset(void);
void bulk_settle(void);                        /* imports whose delay is over are done */
int bulk_api(reply *r, const req *q);
int bulk_control(reply *r, const req *q);
void bulk_faults(const bp_doc *d);
void bulk_dump(bp_buf *b, int account);

#endif
