/*
 * ecom.c — the emulator's Deep Data, per account: connections (the store),
 * ecomCustomers (a contact's customer record in that store) and ecomOrders
 * with their products.  Answers follow ActiveCampaign's API reference
 * (developers.activecampaign.com/reference/create-connection,
 * create-customer, create-order, list-all-...); answers.yaml has the same
 * shapes.
 *
 * What a blueprint must cope with:
 *   - Creates answer with the object wrapped ({"ecomOrder":{...}}): 201 for
 *     customers and orders, 200 for a connection (as create-connection
 *     documents it).
 *   - The reference documents no answer for a repeated externalid.  By
 *     default a second connection with the same service + externalid, a
 *     second customer or order with the same externalid in a connection is
 *     refused with 422 code "duplicate"; {"ecom_duplicates":"accept"} on
 *     /_emulator/faults creates it again instead, so a test can show that a
 *     blueprint counts an order once either way (by looking it up first).
 *   - Money is in cents, integers: a price of 49.99 is refused (422).
 *   - An order needs externalid, source (1 = real time: it shows in the
 *     dashboard and fires automations; 0 = historical), email, totalPrice,
 *     currency, connectionid, customerid (a customer of that connection) and
 *     externalCreatedDate (the order's date; answers call it orderDate too).
 *     orderProducts is optional (not in the reference's required list);
 *     given, it is an array of products, each with externalid, name, price
 *     and quantity.
 *   - Lists page and count like the other collections (limit/offset,
 *     meta.total as a string) and filter with filters[field]=value.
 */
#include "emulator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct conn { long id; char *service, *externalid, *name, *logo, *link; char cdate[32]; } conn;
typedef struct customer { long id, connection; long long accepts; char *externalid, *email; char tstamp[32]; } customer;
typedef struct product { long id; long long price, quantity; char *externalid, *name, *category, *sku; } product;
typedef struct order {
    long id, connection, customer;
    long long source, total, shipping, tax, discount;
    char *externalid, *email, *currency, *number, *created;
    product *products;
    size_t nproducts;
    char cdate[32];
} order;

typedef struct ecom {
    conn *conns; size_t nconns, capconns;
    customer *customers; size_t ncustomers, capcustomers;
    order *orders; size_t norders, caporders;
    long nproducts;   /* product ids are numbered across the account's orders */
} ecom;

static ecom *D;
static int ND;
static int accept_duplicates;   /* see the top: what a repeated externalid gets */

void ecom_accept_duplicates(int accept) { accept_duplicates = accept; }

static conn *find_conn(ecom *e, long id) { return id >= 1 && (size_t)id <= e->nconns ? &e->conns[id - 1] : NULL; }
static customer *find_customer(ecom *e, long id)
{
    return id >= 1 && (size_t)id <= e->ncustomers ? &e->customers[id - 1] : NULL;
}

/* A filters[key]=value that is given and differs from s. */
static int filtered_out(const req *q, const char *key, const char *s)
{
    const char *want = query(q, key);
    return want && strcasecmp(want, s ? s : "") != 0;
}

static int filtered_out_id(const req *q, const char *key, long id)
{
    char s[24];
    snprintf(s, sizeof s, "%ld", id);
    return filtered_out(q, key, s);
}

static void duplicate_reply(reply *r, const char *title, const char *attribute)
{
    char pointer[96];
    snprintf(pointer, sizeof pointer, "/data/attributes/%s", attribute);
    error_reply(r, 422, title, "", "duplicate", pointer);
}

static void invalid_reply(reply *r, const char *title, const char *pointer)
{
    error_reply(r, 422, title, "", "invalid", pointer);
}

/* ---- connections ------------------------------------------------------------------- */

static void write_conn(bp_buf *b, const conn *c, int created)
{
    put_str(b, "{\"service\":", c->service);
    put_str(b, ",\"externalid\":", c->externalid);
    put_str(b, ",\"name\":", c->name);
    /* the create answer writes isInternal as a number, the list as a string */
    bp_buf_adds(b, created ? ",\"isInternal\":0" : ",\"isInternal\":\"0\",\"status\":\"1\",\"syncStatus\":\"0\",\"lastSync\":null");
    put_str(b, ",\"logoUrl\":", c->logo);
    put_str(b, ",\"linkUrl\":", c->link);
    put_str(b, ",\"cdate\":", c->cdate);
    put_str(b, ",\"udate\":", c->cdate);
    bp_buf_printf(b, ",\"links\":{\"customers\":\"/api/3/connections/%ld/customers\"}", c->id);
    put_id(b, ",\"id\":", c->id);
    bp_buf_addc(b, '}');
}

/* POST /api/3/connections {"connection":{"service","externalid","name",
 * "logoUrl","linkUrl"}}: all five are required. */
static void post_connection(reply *r, ecom *e, const bp_doc *d, uint32_t o)
{
    static const char *required[] = { "service", "externalid", "name", "logoUrl", "linkUrl" };
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!jstr(d, o, required[i])) { missing_reply(r, required[i]); return; }
    const char *service = jstr(d, o, "service"), *externalid = jstr(d, o, "externalid");
    for (size_t i = 0; i < e->nconns && !accept_duplicates; i++)
        if (!strcmp(e->conns[i].service, service) && !strcmp(e->conns[i].externalid, externalid)) {
            duplicate_reply(r, "A connection for this service and externalid already exists.", "externalid");
            return;
        }
    e->conns = grow(e->conns, e->nconns, &e->capconns, sizeof *e->conns);
    conn *c = &e->conns[e->nconns++];
    c->id = (long)e->nconns;
    c->service = xdup(service);
    c->externalid = xdup(externalid);
    c->name = xdup(jstr(d, o, "name"));
    c->logo = xdup(jstr(d, o, "logoUrl"));
    c->link = xdup(jstr(d, o, "linkUrl"));
    now_iso(c->cdate);
    json_begin(r, 200);   /* create-connection documents 200, unlike the other creates */
    bp_buf_adds(&r->body, "{\"connection\":");
    write_conn(&r->body, c, 1);
    bp_buf_addc(&r->body, '}');
}

/* GET /api/3/connections[?filters[service]=S&filters[externalid]=X] */
static void get_connections(reply *r, const req *q, ecom *e)
{
    size_t off, lim, total = 0, shown = 0;
    paging(q, &off, &lim);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"connections\":[");
    for (size_t i = 0; i < e->nconns; i++) {
        const conn *c = &e->conns[i];
        if (filtered_out(q, "filters[service]", c->service) || filtered_out(q, "filters[externalid]", c->externalid))
            continue;
        if (total++ < off || shown >= lim) continue;
        if (shown++) bp_buf_addc(&r->body, ',');
        write_conn(&r->body, c, 0);
    }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, total);
    bp_buf_addc(&r->body, '}');
}

/* ---- customers --------------------------------------------------------------------- */

static void write_customer(bp_buf *b, ecom *e, const customer *c, int created)
{
    put_id(b, "{\"connectionid\":", c->connection);
    put_str(b, ",\"externalid\":", c->externalid);
    put_str(b, ",\"email\":", c->email);
    if (!created) {   /* the aggregates ActiveCampaign keeps from the customer's orders, in cents */
        long long revenue = 0, orders = 0, products = 0;
        for (size_t i = 0; i < e->norders; i++) {
            if (e->orders[i].customer != c->id) continue;
            revenue += e->orders[i].total;
            orders++;
            for (size_t p = 0; p < e->orders[i].nproducts; p++) products += e->orders[i].products[p].quantity;
        }
        bp_buf_printf(b, ",\"totalRevenue\":\"%lld\",\"totalOrders\":\"%lld\",\"totalProducts\":\"%lld\","
                         "\"avgRevenuePerOrder\":\"%lld\"", revenue, orders, products, orders ? revenue / orders : 0);
        put_str(b, ",\"tstamp\":", c->tstamp);
        bp_buf_printf(b, ",\"acceptsMarketing\":\"%lld\"", c->accepts);
    }
    bp_buf_printf(b, ",\"links\":{\"connection\":\"/api/3/ecomCustomers/%ld/connection\","
                     "\"orders\":\"/api/3/ecomCustomers/%ld/orders\"}", c->id, c->id);
    put_id(b, ",\"id\":", c->id);
    put_id(b, ",\"connection\":", c->connection);
    bp_buf_addc(b, '}');
}

/* POST /api/3/ecomCustomers {"ecomCustomer":{"connectionid","externalid",
 * "email","acceptsMarketing"}}: one customer per externalid in a
 * connection. */
static void post_customer(reply *r, ecom *e, const bp_doc *d, uint32_t o)
{
    long cid = jid(d, bp_jget(d, o, "connectionid"));
    const char *externalid = jstr(d, o, "externalid"), *email = jstr(d, o, "email");
    long long accepts = 0;
    if (!cid) { missing_reply(r, "connectionid"); return; }
    if (!externalid || !*externalid) { missing_reply(r, "externalid"); return; }
    if (!email) { missing_reply(r, "email"); return; }
    if (!valid_email(email)) {
        error_reply(r, 422, "Email is not a valid email address.", "", "email_invalid", "/data/attributes/email");
        return;
    }
    if (jinteger(d, bp_jget(d, o, "acceptsMarketing"), &accepts) < 0 || accepts < 0 || accepts > 1) {
        invalid_reply(r, "acceptsMarketing must be 0 or 1.", "/data/attributes/acceptsMarketing");
        return;
    }
    if (!find_conn(e, cid)) { invalid_reply(r, "The connection does not exist.", "/data/attributes/connectionid"); return; }
    for (size_t i = 0; i < e->ncustomers && !accept_duplicates; i++)
        if (e->customers[i].connection == cid && !strcmp(e->customers[i].externalid, externalid)) {
            duplicate_reply(r, "A customer with this externalid already exists for the connection.", "externalid");
            return;
        }
    e->customers = grow(e->customers, e->ncustomers, &e->capcustomers, sizeof *e->customers);
    customer *c = &e->customers[e->ncustomers++];
    c->id = (long)e->ncustomers;
    c->connection = cid;
    c->accepts = accepts;
    c->externalid = xdup(externalid);
    c->email = xdup(email);
    now_iso(c->tstamp);
    json_begin(r, 201);
    bp_buf_adds(&r->body, "{\"ecomCustomer\":");
    write_customer(&r->body, e, c, 1);
    bp_buf_addc(&r->body, '}');
}

/* GET /api/3/ecomCustomers[?filters[email]=&filters[connectionid]=&filters[externalid]=] */
static void get_customers(reply *r, const req *q, ecom *e)
{
    size_t off, lim, total = 0, shown = 0;
    paging(q, &off, &lim);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"ecomCustomers\":[");
    for (size_t i = 0; i < e->ncustomers; i++) {
        const customer *c = &e->customers[i];
        if (filtered_out(q, "filters[email]", c->email) || filtered_out(q, "filters[externalid]", c->externalid) ||
            filtered_out_id(q, "filters[connectionid]", c->connection))
            continue;
        if (total++ < off || shown >= lim) continue;
        if (shown++) bp_buf_addc(&r->body, ',');
        write_customer(&r->body, e, c, 0);
    }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, total);
    bp_buf_addc(&r->body, '}');
}

/* ---- orders ------------------------------------------------------------------------ */

static void write_product(bp_buf *b, const order *o, const product *p)
{
    put_str(b, "{\"externalid\":", p->externalid);
    put_str(b, ",\"name\":", p->name);
    bp_buf_printf(b, ",\"price\":%lld,\"quantity\":%lld", p->price, p->quantity);
    put_str(b, ",\"category\":", p->category);
    put_str(b, ",\"sku\":", p->sku);
    put_id(b, ",\"orderid\":", o->id);
    put_id(b, ",\"id\":", p->id);
    bp_buf_addc(b, '}');
}

static long long total_quantity(const order *o)
{
    long long n = 0;
    for (size_t i = 0; i < o->nproducts; i++) n += o->products[i].quantity;
    return n;
}

static void write_order(bp_buf *b, const order *o)
{
    put_str(b, "{\"externalid\":", o->externalid);
    bp_buf_printf(b, ",\"source\":\"%lld\"", o->source);
    put_str(b, ",\"email\":", o->email);
    put_str(b, ",\"currency\":", o->currency);
    put_id(b, ",\"connectionid\":", o->connection);
    put_id(b, ",\"customerid\":", o->customer);
    put_str(b, ",\"orderNumber\":", o->number);
    bp_buf_printf(b, ",\"totalPrice\":%lld,\"shippingAmount\":%lld,\"taxAmount\":%lld,\"discountAmount\":%lld",
                  o->total, o->shipping, o->tax, o->discount);
    put_str(b, ",\"externalCreatedDate\":", o->created);
    bp_buf_printf(b, ",\"totalProducts\":%lld", total_quantity(o));
    put_str(b, ",\"createdDate\":", o->cdate);
    put_str(b, ",\"updatedDate\":", o->cdate);
    bp_buf_adds(b, ",\"state\":1");
    put_id(b, ",\"connection\":", o->connection);
    bp_buf_adds(b, ",\"orderProducts\":[");
    for (size_t i = 0; i < o->nproducts; i++) put_id(b, i ? "," : "", o->products[i].id);
    bp_buf_adds(b, "],\"orderDiscounts\":[]");
    put_id(b, ",\"customer\":", o->customer);
    put_str(b, ",\"orderDate\":", o->created);
    put_str(b, ",\"tstamp\":", o->cdate);
    bp_buf_printf(b, ",\"links\":{\"connection\":\"/api/3/ecomOrders/%ld/connection\",\"customer\":"
                     "\"/api/3/ecomOrders/%ld/customer\",\"orderProducts\":\"/api/3/ecomOrders/%ld/orderProducts\"}",
                  o->id, o->id, o->id);
    put_id(b, ",\"id\":", o->id);
    bp_buf_addc(b, '}');
}

/* An optional amount in cents: absent is 0; else a non-negative integer. */
static int amount(reply *r, const bp_doc *d, uint32_t o, const char *key, long long *out)
{
    char pointer[96];
    *out = 0;
    int st = jinteger(d, bp_jget(d, o, key), out);
    if (st >= 0 && *out >= 0) return 0;
    snprintf(pointer, sizeof pointer, "/data/attributes/%s", key);
    invalid_reply(r, "Amounts are integers in cents, 0 or more.", pointer);
    return -1;
}

/* What is wrong with product p, NULL when nothing; *attr names the
 * attribute. */
static const char *product_problem(const bp_doc *d, uint32_t p, const char **attr)
{
    static const char *required[] = { "externalid", "name", "price", "quantity" };
    long long n;
    *attr = "";
    if (d->nodes[p].type != BP_JOBJECT) return "Each product is an object.";
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!jstr(d, p, *attr = required[i])) return "Missing attribute";
    *attr = "price";
    if (jinteger(d, bp_jget(d, p, "price"), &n) != 1 || n < 0) return "price is an integer in cents, 0 or more.";
    *attr = "quantity";
    if (jinteger(d, bp_jget(d, p, "quantity"), &n) != 1 || n < 1) return "quantity is an integer, 1 or more.";
    return NULL;
}

/* The order's products, checked before anything is kept: -1 once 422 is
 * answered.  Optional; given, an array (an object, e.g. an empty Lua table
 * encoded as {}, is refused). */
static int check_products(reply *r, const bp_doc *d, uint32_t list)
{
    if (list == BP_NONE) return 0;
    if (d->nodes[list].type != BP_JARRAY) {
        invalid_reply(r, "orderProducts is an array of products.", "/data/attributes/orderProducts");
        return -1;
    }
    uint32_t p = list + 1;
    for (uint32_t i = 0; i < d->nodes[list].len; i++, p = d->nodes[p].next) {
        const char *attr, *problem = product_problem(d, p, &attr);
        if (!problem) continue;
        char pointer[128];
        snprintf(pointer, sizeof pointer, "/data/attributes/orderProducts/%u%s%s", i, *attr ? "/" : "", attr);
        error_reply(r, 422, problem, "", strcmp(problem, "Missing attribute") ? "invalid" : "field_missing", pointer);
        return -1;
    }
    return 0;
}

static void keep_products(ecom *e, order *o, const bp_doc *d, uint32_t list)
{
    o->nproducts = list == BP_NONE ? 0 : d->nodes[list].len;
    o->products = calloc(o->nproducts, sizeof *o->products);
    uint32_t p = list + 1;
    for (size_t i = 0; i < o->nproducts; i++, p = d->nodes[p].next) {
        product *x = &o->products[i];
        x->id = ++e->nproducts;
        x->externalid = xdup(jstr(d, p, "externalid"));
        x->name = xdup(jstr(d, p, "name"));
        x->category = xdup(jstr(d, p, "category"));
        x->sku = xdup(jstr(d, p, "sku"));
        jinteger(d, bp_jget(d, p, "price"), &x->price);
        jinteger(d, bp_jget(d, p, "quantity"), &x->quantity);
    }
}

/* The documented required attributes of an order, in the documented order;
 * -1 once 422 is answered. */
static int check_order(reply *r, ecom *e, const bp_doc *d, uint32_t o, order *out)
{
    static const char *required[] = { "externalid", "source", "email", "totalPrice", "currency", "connectionid",
                                      "customerid", "externalCreatedDate" };
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        const char *v = jstr(d, o, required[i]);
        if (!v || !*v) { missing_reply(r, required[i]); return -1; }
    }
    if (jinteger(d, bp_jget(d, o, "source"), &out->source) != 1 || out->source < 0 || out->source > 1) {
        invalid_reply(r, "source is 1 (real time) or 0 (historical).", "/data/attributes/source");
        return -1;
    }
    if (!valid_email(jstr(d, o, "email"))) {
        error_reply(r, 422, "Email is not a valid email address.", "", "email_invalid", "/data/attributes/email");
        return -1;
    }
    if (amount(r, d, o, "totalPrice", &out->total) || amount(r, d, o, "shippingAmount", &out->shipping) ||
        amount(r, d, o, "taxAmount", &out->tax) || amount(r, d, o, "discountAmount", &out->discount))
        return -1;
    if (strlen(jstr(d, o, "currency")) != 3) {
        invalid_reply(r, "currency is a 3-letter ISO code.", "/data/attributes/currency");
        return -1;
    }
    out->connection = jid(d, bp_jget(d, o, "connectionid"));
    out->customer = jid(d, bp_jget(d, o, "customerid"));
    if (!find_conn(e, out->connection)) {
        invalid_reply(r, "The connection does not exist.", "/data/attributes/connectionid");
        return -1;
    }
    customer *c = find_customer(e, out->customer);
    if (!c || c->connection != out->connection) {
        invalid_reply(r, "The customer does not exist in this connection.", "/data/attributes/customerid");
        return -1;
    }
    return check_products(r, d, bp_jget(d, o, "orderProducts"));
}

/* POST /api/3/ecomOrders {"ecomOrder":{...}}: 201 with the connection, the
 * order's products and the order. */
static void post_order(reply *r, ecom *e, const bp_doc *d, uint32_t o)
{
    order tmp;
    memset(&tmp, 0, sizeof tmp);
    if (check_order(r, e, d, o, &tmp) < 0) return;
    const char *externalid = jstr(d, o, "externalid");
    for (size_t i = 0; i < e->norders && !accept_duplicates; i++)
        if (e->orders[i].connection == tmp.connection && !strcmp(e->orders[i].externalid, externalid)) {
            duplicate_reply(r, "An order with this externalid already exists for the connection.", "externalid");
            return;
        }
    e->orders = grow(e->orders, e->norders, &e->caporders, sizeof *e->orders);
    order *x = &e->orders[e->norders++];
    *x = tmp;
    x->id = (long)e->norders;
    x->externalid = xdup(externalid);
    x->email = xdup(jstr(d, o, "email"));
    x->currency = xdup(jstr(d, o, "currency"));
    x->number = xdup(jstr(d, o, "orderNumber"));
    x->created = xdup(jstr(d, o, "externalCreatedDate"));
    now_iso(x->cdate);
    keep_products(e, x, d, bp_jget(d, o, "orderProducts"));
    json_begin(r, 201);
    bp_buf_adds(&r->body, "{\"connections\":[");
    write_conn(&r->body, find_conn(e, x->connection), 0);
    bp_buf_adds(&r->body, "],\"ecomOrderProducts\":[");
    for (size_t i = 0; i < x->nproducts; i++) {
        if (i) bp_buf_addc(&r->body, ',');
        write_product(&r->body, x, &x->products[i]);
    }
    bp_buf_adds(&r->body, "],\"ecomOrderDiscounts\":[],\"ecomOrder\":");
    write_order(&r->body, x);
    bp_buf_addc(&r->body, '}');
}

/* GET /api/3/ecomOrders[?filters[externalid]=&filters[connectionid]=&filters[email]=&filters[customerid]=] */
static void get_orders(reply *r, const req *q, ecom *e)
{
    size_t off, lim, total = 0, shown = 0;
    paging(q, &off, &lim);
    json_begin(r, 200);
    bp_buf_adds(&r->body, "{\"ecomOrders\":[");
    for (size_t i = 0; i < e->norders; i++) {
        const order *o = &e->orders[i];
        if (filtered_out(q, "filters[externalid]", o->externalid) || filtered_out(q, "filters[email]", o->email) ||
            filtered_out_id(q, "filters[connectionid]", o->connection) ||
            filtered_out_id(q, "filters[customerid]", o->customer))
            continue;
        if (total++ < off || shown >= lim) continue;
        if (shown++) bp_buf_addc(&r->body, ',');
        write_order(&r->body, o);
    }
    bp_buf_adds(&r->body, "],");
    meta_total(&r->body, total);
    bp_buf_addc(&r->body, '}');
}

/* ---- router, state ----------------------------------------------------------------- */

typedef void (*post_fn)(reply *r, ecom *e, const bp_doc *d, uint32_t o);

static void post(reply *r, const req *q, ecom *e, const char *wrapper, post_fn fn)
{
    bp_doc d;
    bp_doc_init(&d);
    uint32_t o = body_object(r, &d, q, wrapper);
    if (o != BP_NONE) fn(r, e, &d, o);
    bp_doc_free(&d);
}

int ecom_api(reply *r, const req *q)
{
    ecom *e = &D[q->account];
    const char *p = q->path;
    int get = !strcmp(q->method, "GET"), is_post = !strcmp(q->method, "POST");
    if (!strcmp(p, "/api/3/connections") && get) get_connections(r, q, e);
    else if (!strcmp(p, "/api/3/connections") && is_post) post(r, q, e, "connection", post_connection);
    else if (!strcmp(p, "/api/3/ecomCustomers") && get) get_customers(r, q, e);
    else if (!strcmp(p, "/api/3/ecomCustomers") && is_post) post(r, q, e, "ecomCustomer", post_customer);
    else if (!strcmp(p, "/api/3/ecomOrders") && get) get_orders(r, q, e);
    else if (!strcmp(p, "/api/3/ecomOrders") && is_post) post(r, q, e, "ecomOrder", post_order);
    else return 0;
    return 1;
}

/* "connections", "customers" and "orders" (each with its "products"), ids
 * as strings and amounts as numbers. */
void ecom_dump(bp_buf *b, int account)
{
    ecom *e = &D[account];
    bp_buf_adds(b, "\"connections\":[");
    for (size_t i = 0; i < e->nconns; i++) {
        put_id(b, i ? ",{\"id\":" : "{\"id\":", e->conns[i].id);
        put_str(b, ",\"service\":", e->conns[i].service);
        put_str(b, ",\"externalid\":", e->conns[i].externalid);
        put_str(b, ",\"name\":", e->conns[i].name);
        bp_buf_addc(b, '}');
    }
    bp_buf_adds(b, "],\"customers\":[");
    for (size_t i = 0; i < e->ncustomers; i++) {
        const customer *c = &e->customers[i];
        put_id(b, i ? ",{\"id\":" : "{\"id\":", c->id);
        put_id(b, ",\"connectionid\":", c->connection);
        put_str(b, ",\"externalid\":", c->externalid);
        put_str(b, ",\"email\":", c->email);
        bp_buf_printf(b, ",\"acceptsMarketing\":%lld}", c->accepts);
    }
    bp_buf_adds(b, "],\"orders\":[");
    for (size_t i = 0; i < e->norders; i++) {
        const order *o = &e->orders[i];
        put_id(b, i ? ",{\"id\":" : "{\"id\":", o->id);
        put_str(b, ",\"externalid\":", o->externalid);
        put_id(b, ",\"connectionid\":", o->connection);
        put_id(b, ",\"customerid\":", o->customer);
        put_str(b, ",\"email\":", o->email);
        bp_buf_printf(b, ",\"source\":%lld,\"totalPrice\":%lld,\"shippingAmount\":%lld,\"taxAmount\":%lld,"
                         "\"discountAmount\":%lld", o->source, o->total, o->shipping, o->tax, o->discount);
        put_str(b, ",\"currency\":", o->currency);
        put_str(b, ",\"orderNumber\":", o->number);
        put_str(b, ",\"externalCreatedDate\":", o->created);
        bp_buf_adds(b, ",\"products\":[");
        for (size_t k = 0; k < o->nproducts; k++) {
            const product *p = &o->products[k];
            put_str(b, k ? ",{\"externalid\":" : "{\"externalid\":", p->externalid);
            put_str(b, ",\"name\":", p->name);
            bp_buf_printf(b, ",\"price\":%lld,\"quantity\":%lld", p->price, p->quantity);
            put_str(b, ",\"category\":", p->category);
            put_str(b, ",\"sku\":", p->sku);
            bp_buf_addc(b, '}');
        }
        bp_buf_adds(b, "]}");
    }
    bp_buf_addc(b, ']');
}

static void clear(ecom *e)
{
    for (size_t i = 0; i < e->nconns; i++) {
        conn *c = &e->conns[i];
        free(c->service); free(c->externalid); free(c->name); free(c->logo); free(c->link);
    }
    for (size_t i = 0; i < e->ncustomers; i++) { free(e->customers[i].externalid); free(e->customers[i].email); }
    for (size_t i = 0; i < e->norders; i++) {
        order *o = &e->orders[i];
        for (size_t k = 0; k < o->nproducts; k++) {
            product *p = &o->products[k];
            free(p->externalid); free(p->name); free(p->category); free(p->sku);
        }
        free(o->products);
        free(o->externalid); free(o->email); free(o->currency); free(o->number); free(o->created);
    }
    e->nconns = e->ncustomers = e->norders = 0;
    e->nproducts = 0;
    accept_duplicates = 0;
}

void ecom_init(int naccounts)
{
    ND = naccounts;
    D = calloc((size_t)naccounts, sizeof *D);
}

void ecom_reset(void)
{
    for (int k = 0; k < ND; k++) clear(&D[k]);
}
