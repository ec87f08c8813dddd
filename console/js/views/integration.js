// One integration: delivery counters, masked config with edit, the event
// table with a switch per event (custom events by name), Live Events, dead
// letters with replay, revisions with a diff, and delete.
import { h, replace, clear, button, badge, toggle, empty, errorBox, toast, kv, codeBlock, confirmDialog,
  fmtTime, fmtAgo, ago, spinner, copyButton, statusCode } from '../dom.js';
import { get, post, patch, del, enc, ApiError } from '../api.js';
import { getVendor, getIntegration, categoryName, monogram, tileClass, outcomeOf, eventName, healthOf, healthBadge } from '../data.js';
import { fieldOfError, togetherGroups, checksAlert } from './integrations.js';
import { control, fieldRow, advancedKeys, advancedSection, valueView, FieldError } from '../configfields.js';
import { mountLive, renderDetail, rememberIntegration, seenCustomEvents } from './live.js';
import { lineDiff, hunks, renderDiff, flatten } from '../diff.js';

const TABS = [
  ['overview', 'Overview'], ['events', 'Events'], ['live', 'Live Events'], ['dead-letters', 'Dead Letters'],
  ['revisions', 'Revisions'], ['settings', 'Settings'],
];

const COUNTERS = [
  ['delivered', 'Delivered', 'ok'], ['dropped', 'Dropped', 'muted'], ['errors', 'Errors', 'err'],
  ['dead_lettered', 'Dead letters', 'err'], ['held', 'Held', 'warn'], ['retries', 'Retries', 'warn'],
];

// The health first: a badge, and for anything but delivering, what it is
// doing instead, since when, and what to do.
function healthAlert(it, base) {
  const x = healthOf(it);
  const since = x.since ? h('span', { class: 'muted' }, ` Since ${fmtTime(x.since)} (`, ago(x.since, { id: 'health-since' }), ').') : null;
  // the vendor's own words, as it answered
  const said = x.vendorStatus ? h('p', { class: 'small', id: 'health-vendor' }, 'The vendor answered ', statusCode(x.vendorStatus),
    x.vendorAnswer ? [': ', h('code', { class: 'break', text: x.vendorAnswer })] : null) : null;
  const box = (kind, title, ...rest) => h('div', { class: 'alert alert-' + kind, id: 'health-alert', role: 'status', dataset: { health: x.state } },
    h('strong', { text: title + ' ' }), h('span', { class: 'health-reason', text: x.reason.replace(/\.?$/, '.') }), since, said, ...rest);
  if (x.state === 'paused') {
    return box('err', 'Delivery is paused: the vendor refused the credentials.',
      h('p', { class: 'small' }, 'New events are held, not lost. Fix the API key or URL under ',
        h('a', { href: base + '/overview', text: 'Configuration' }), ': the held events are sent once the credentials change.'));
  }
  if (x.state === 'backing_off') {
    return box('warn', 'Backing off: the vendor asked to slow down or failed.',
      x.until ? h('span', {}, ' Next attempt ', ago(x.until), '.') : null);
  }
  if (x.state === 'blueprint_error') {
    return box('err', 'Not delivering: the blueprint does not load.', ' ',
      h('a', { href: '#/editor/' + enc(it.vendor), text: 'Open it in the editor' }));
  }
  return null;
}

// "since start, 2 h ago": the tiles count since the server started; the
// last hour is next to it, so a fixed problem visibly settles.
function countersWindow(d) {
  return h('p', { class: 'small muted counters-window', id: 'counters-window' },
    'Counts since the server started', d.counted_since ? [' (', ago(d.counted_since), ')'] : '', '; the small figure is the last hour.');
}

export async function render(main, params, ctx) {
  replace(main, h('div', { class: 'page' }, h('p', { class: 'loading' }, spinner(), 'Loading…')));
  let it = await getIntegration(params.id);
  const cat = await getVendor(it.vendor).catch(() => ({ vendor: it.vendor, name: it.vendor, config_fields: [], events: [] }));
  if (!ctx.isCurrent()) return;
  const tab = TABS.some(([t]) => t === params.tab) ? params.tab : 'overview';
  const base = '#/integration/' + enc(it.id);

  rememberIntegration(it.id);
  const counters = h('div', { class: 'counters', id: 'counters' });
  const counterNote = h('div', {});
  const bpNote = h('div', {});
  const healthNote = h('div', {});
  const healthEl = h('span', {});
  const revEl = h('span', { class: 'pill', id: 'integration-revision' });
  function paintHeader() {
    const d = it.delivery || {};
    const hour = d.last_hour || {};
    replace(healthEl, healthBadge(it, 'integration-health'));
    replace(healthNote, healthAlert(it, base));
    replace(counters, COUNTERS.map(([k, label, kind]) => h('div', { class: 'counter counter-' + kind + ((d[k] || 0) ? ' counter-nonzero' : ''), dataset: { counter: k } },
      h('span', { class: 'counter-value', text: String(d[k] || 0) }),
      h('span', { class: 'counter-label' }, label, h('span', { class: 'counter-window', text: ' since start' })),
      k in hour ? h('span', { class: 'counter-recent', dataset: { recent: k }, text: `${hour[k]} in the last hour` }) : null,
      // held is a state as well as a count: what is held now settles once the fix is in
      k === 'held' && it.now ? h('span', { class: 'counter-now', id: 'held-now', text: `${it.now.held} held now` }) : null)));
    replace(counterNote, countersWindow(d));
    revEl.textContent = 'config rev ' + it.revision;
    clear(bpNote);
    const bp = it.blueprint || {};
    if (bp.status === 'rejected') {
      bpNote.appendChild(h('div', { class: 'alert alert-warn' }, h('strong', { text: 'Blueprint edit rejected. ' }),
        h('span', { text: String(bp.error || '') }), ' ', h('span', { class: 'muted', text: bp.note || 'The previous revision keeps running.' })));
    }
  }
  const head = h('div', { class: 'page-head' },
    h('div', { class: 'page-head-title' }, h('span', { class: tileClass(cat.name), 'aria-hidden': 'true', text: monogram(cat.name) }),
      h('div', {}, h('h1', { id: 'integration-name', text: it.name }),
        h('p', { class: 'page-sub' }, h('span', { text: `${cat.name} · ${categoryName(cat.category)} · ` }),
          h('code', { class: 'id', id: 'integration-id', text: it.id }), ' ', copyButton(it.id, 'Copy id'), ' ', revEl))),
    h('div', { class: 'page-actions' }, healthEl));
  const tabBar = h('div', { class: 'tabs', role: 'tablist' }, TABS.map(([t, label]) =>
    h('a', { href: base + '/' + t, class: 'tab', role: 'tab', id: 'itab-' + t, 'aria-selected': String(t === tab) }, label)));
  const body = h('div', { class: 'tab-body', id: 'integration-body' });
  replace(main, h('div', { class: ['page', tab === 'live' ? 'page-wide' : ''] },
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/integrations', text: 'Integrations' }), ' / ', h('span', { text: it.name })),
    head, healthNote, bpNote, counters, counterNote, tabBar, body));
  paintHeader();

  async function reload() {
    it = await getIntegration(it.id);
    paintHeader();
    return it;
  }
  const poll = setInterval(() => { reload().catch(() => {}); }, 5000);
  const env = { it: () => it, cat, ctx, reload, base, setIt: (x) => { it = x; paintHeader(); } };
  let inner = null;
  if (tab === 'overview') overview(body, env);
  else if (tab === 'events') await events(body, env);
  else if (tab === 'live') inner = mountLive(body, it, ctx);
  else if (tab === 'dead-letters') inner = await deadLetters(body, env);
  else if (tab === 'revisions') await revisions(body, env);
  else if (tab === 'settings') settings(body, env);
  return () => { clearInterval(poll); if (inner) inner(); };
}

// ---- Overview: test event + configuration ------------------------------------------------------

function overview(body, env) {
  const { ctx } = env;
  const grid = h('div', { class: 'grid-2' });
  const cfgCard = h('section', { class: 'card', id: 'config-card' });
  grid.appendChild(cfgCard);
  const side = h('div', { class: 'stack' });
  grid.appendChild(side);
  if (ctx.session.can.install) side.appendChild(testEventCard(env));
  side.appendChild(blueprintCard(env));
  replace(body, grid);
  showConfig(cfgCard, env);
  // the install's checks, once (they are in its answer only)
  if (ctx.checks && ctx.checks.id === env.it().id) {
    const alert = checksAlert(ctx.checks.list);
    if (alert) cfgCard.insertBefore(alert, cfgCard.firstChild.nextSibling);
    ctx.checks = null;
  }
}

function showConfig(card, env) {
  const it = env.it();
  const fields = env.cat.config_fields || [];
  const known = new Set(fields.map((f) => f.key));
  const cfg = it.config || {};
  const rows = fields.map((f) => [f.label || f.key, valueView(f, cfg[f.key])]);
  for (const k of Object.keys(cfg)) if (!known.has(k)) rows.push([k, valueView(null, cfg[k])]);
  const list = kv(rows);
  list.id = 'config-values';
  fields.forEach((f, i) => { list.children[i * 2 + 1].dataset.field = f.key; });
  replace(card,
    h('div', { class: 'card-head' }, h('h2', { class: 'card-title', text: 'Configuration' }),
      env.ctx.session.can.install ? button('Edit', () => editConfig(card, env), { small: true, id: 'config-edit' }) : null),
    list,
    h('p', { class: 'small muted', text: 'Secrets are encrypted at rest and never shown. Each change makes a new revision.' }));
}

function editConfig(card, env) {
  const it = env.it();
  const fields = env.cat.config_fields || [];
  const keys = fields.map((f) => f.key);
  const cfg = it.config || {};
  const advanced = advancedKeys(fields, new Set(togetherGroups(env.cat).flat()));
  const ctl = {};
  const main = [];
  const adv = [];
  for (const f of fields) {
    const id = 'edit-' + f.key;
    const c = control(f, { id, mode: 'edit', value: cfg[f.key] });
    const { wrap, error } = fieldRow(f, c, id, { optionalMark: false });
    ctl[f.key] = { c, wrap, error, f };
    const clearErr = () => { wrap.classList.remove('invalid'); error.textContent = ''; };
    wrap.addEventListener('input', clearErr);
    wrap.addEventListener('change', clearErr);
    (advanced.has(f.key) ? adv : main).push(wrap);
  }
  const advCtls = [...advanced].map((k) => ctl[k].c);
  const advSection = adv.length
    ? advancedSection(env.cat, adv, advCtls, { id: 'edit-advanced', open: advCtls.some((c) => c.isSet()) })
    : null;
  const focusOn = (k, el) => {
    const d = ctl[k].wrap.closest('details');
    if (d) d.open = true;
    ctl[k].wrap.scrollIntoView({ block: 'center' });
    (el || ctl[k].c.focusEl).focus({ preventScroll: true });
  };
  const showErr = (k, msg, el) => {
    ctl[k].wrap.classList.add('invalid');
    ctl[k].error.textContent = msg;
    focusOn(k, el);
  };
  const summary = h('div', { class: 'form-summary' });
  const save = button('Save changes', null, { kind: 'primary', type: 'submit', id: 'config-save' });
  const form = h('form', { class: 'form', novalidate: true, id: 'config-form' }, main, advSection, summary,
    h('div', { class: 'form-actions' }, save, button('Cancel', () => showConfig(card, env), { kind: 'ghost' })));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clear(summary);
    const change = {};
    for (const [k, x] of Object.entries(ctl)) {
      let v;
      try { v = x.c.change(); } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        showErr(k, err.message, err.focus);
        return;
      }
      if (v !== undefined) change[k] = v;
    }
    if (!Object.keys(change).length) { showConfig(card, env); return; }
    save.disabled = true;
    try {
      const r = await patch('/v1/admin/integrations/' + enc(it.id), { config: change });
      env.setIt(r);
      const alert = checksAlert(r.checks);
      toast(`Saved: revision ${r.revision}` + (alert ? '; a check failed' : ''), alert ? 'err' : 'ok');
      showConfig(card, env);
      if (alert) card.insertBefore(alert, card.firstChild.nextSibling);
    } catch (err) {
      save.disabled = false;
      if (!(err instanceof ApiError)) throw err;
      const k = fieldOfError(err, keys);
      if (k && ctl[k]) showErr(k, err.message.replace(/^config:\d+: /, ''));
      else summary.appendChild(errorBox(err, 'Not saved'));
    }
  });
  replace(card, h('div', { class: 'card-head' }, h('h2', { class: 'card-title', text: 'Edit configuration' })), form);
  const first = form.querySelector('input');
  if (first) first.focus();
}

const OTHER = '\u0000other';   // the select's "another track event by name" choice

// One test event per enabled event: identify and page as themselves, every
// other one (listed track events, custom ones) as a track event by name.
function testEvent(name, type, email) {
  const mid = 'console-test-' + Date.now().toString(36);
  const consent = { canonical: { marketing: true } };
  if (type === 'page') {
    return { type: 'page', messageId: mid, name: 'Console test',
      context: { page: { url: location.origin + '/console-test', title: 'Console test' }, traits: { email }, consent } };
  }
  if (type === 'identify') return { type: 'identify', messageId: mid, traits: { email, first_name: 'Test' }, context: { consent } };
  return { type: 'track', messageId: mid, event: name, properties: { source: 'console test' }, context: { traits: { email }, consent } };
}

function testEventCard(env) {
  const it = env.it();
  const typeOf = Object.fromEntries((env.cat.events || []).map((e) => [e.name, e.type]));
  const describe = { identify: 'create or update the contact', page: 'a page view' };
  const first = { identify: 0, page: 1 };
  const enabled = Object.entries(it.events || {}).filter(([, e]) => e.enabled).map(([n]) => n)
    .sort((a, b) => (first[typeOf[a]] ?? 2) - (first[typeOf[b]] ?? 2));
  const email = h('input', { type: 'email', class: 'input', id: 'test-email', value: 'test@example.com', autocomplete: 'off', spellcheck: false });
  const kind = h('select', { class: 'input', id: 'test-kind', 'aria-label': 'Event' },
    enabled.map((n) => h('option', { value: n, text: describe[typeOf[n]] ? `${n}: ${describe[typeOf[n]]}` : `${n} (${typeOf[n] || 'track, custom'})` })),
    h('option', { value: OTHER, text: 'Another track event, by name…' }));
  const seenNames = h('datalist', { id: 'test-event-seen' });
  const other = h('input', { type: 'text', class: 'input', id: 'test-event-name', placeholder: 'e.g. Webinar Registered', list: 'test-event-seen',
    autocomplete: 'off', spellcheck: false, 'aria-label': 'Track event name' });
  const otherRow = h('div', { class: 'field', hidden: true }, h('label', { class: 'field-label', for: 'test-event-name', text: 'Track event name' }), other,
    h('p', { class: 'field-help', text: 'Names seen in Live Events are offered; one not enabled is dropped, and Live Events says why.' }), seenNames);
  kind.addEventListener('change', () => {
    otherRow.hidden = kind.value !== OTHER;
    if (!otherRow.hidden) other.focus();
  });
  seenCustomEvents(it.id).then((seen) => replace(seenNames, seen.map(([n]) => h('option', { value: n })))).catch(() => {});
  const out = h('div', { class: 'test-result', id: 'test-result', role: 'status' });
  const send = button('Send test event', async () => {
    clear(out);
    const name = kind.value === OTHER ? other.value.trim() : kind.value;
    if (!name) { other.focus(); return; }
    send.disabled = true;
    const ev = testEvent(name, kind.value === OTHER ? 'track' : typeOf[name] || 'track', email.value.trim());
    try {
      const r = await post('/v1/integrations/' + enc(it.id) + '/events', ev);
      out.appendChild(h('p', { class: 'alert alert-ok' }, h('span', { text: `Accepted (${r.accepted}). ` }),
        h('a', { href: env.base + '/live', text: 'Watch it in Live Events' }), h('span', { class: 'muted', text: ' — a 200 or 201 from the vendor means it arrived.' })));
    } catch (err) {
      out.appendChild(errorBox(err, 'Not accepted'));
    } finally { send.disabled = false; }
  }, { kind: 'primary', id: 'test-send' });
  return h('section', { class: 'card' }, h('h2', { class: 'card-title', text: 'Send a test event' }),
    h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'test-kind', text: 'Event' }), kind,
      h('p', { class: 'field-help', text: 'Every enabled event is offered; track events are sent by name.' })),
    otherRow,
    h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'test-email', text: 'Contact email' }), email),
    h('div', { class: 'form-actions' }, send), out);
}

function blueprintCard(env) {
  const it = env.it();
  const bp = it.blueprint || {};
  return h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', { class: 'card-title', text: 'Blueprint' }),
    h('a', { class: 'btn btn-sm', href: '#/editor/' + enc(it.vendor), text: 'Open in editor' })),
  kv([
    ['Vendor', h('code', { text: it.vendor })],
    ['Variant', it.variant],
    ['Running', bp.running ? h('code', { text: bp.running }) : null],
    ['On disk', bp.on_disk ? h('code', { text: bp.on_disk }) : null],
    ['Status', bp.status ? badge(bp.status, bp.status === 'current' ? 'ok' : 'warn') : null],
  ]));
}

// ---- Events: a switch per event ----------------------------------------------------------------

async function events(body, env) {
  const { ctx, cat } = env;
  const can = ctx.session.can.install;
  const typeOf = Object.fromEntries((cat.events || []).map((e) => [e.name, e.type]));
  const table = h('tbody', { id: 'events-rows' });
  const seenBox = h('div', { id: 'seen-custom' });

  async function setEnabled(name, on, input) {
    input.disabled = true;
    try {
      const r = await patch('/v1/admin/integrations/' + enc(env.it().id), { events: { [name]: { enabled: on } } });
      env.setIt(r);
      toast(`${name}: ${on ? 'enabled' : 'disabled'} (revision ${r.revision})`);
      paint();
    } catch (err) {
      input.checked = !on;
      input.disabled = false;
      toast(`Could not change ${name}: ${err.message}`, 'err');
    }
  }

  function paint() {
    const evs = env.it().events || {};
    const names = Object.keys(evs);
    replace(table, names.map((name) => {
      const e = evs[name];
      const custom = !(name in typeOf);
      return h('tr', { dataset: { event: name } },
        h('td', {}, h('span', { class: 'ev-name', text: name }), custom ? h('span', { class: 'tag', text: 'custom' }) : null),
        h('td', { class: 'hide-narrow' }, h('code', { text: typeOf[name] || 'track' })),
        h('td', { class: 'hide-narrow' }, h('code', { text: e.mapping || '' })),
        h('td', { class: 'cell-switch' }, toggle(!!e.enabled, (e.enabled ? 'Disable ' : 'Enable ') + name,
          can ? (on, input) => setEnabled(name, on, input) : null, { disabled: !can, dataset: { event: name },
            title: can ? '' : 'Changing events needs the editor role or above' })));
    }));
  }

  const seenNames = h('datalist', { id: 'custom-event-seen' });
  const nameInput = h('input', { type: 'text', class: 'input', id: 'custom-event-name', placeholder: 'e.g. Webinar Registered',
    autocomplete: 'off', spellcheck: false, 'aria-label': 'Custom event name', list: 'custom-event-seen' });
  const addBtn = button('Enable', null, { kind: 'primary', type: 'submit', id: 'custom-event-enable' });
  const addForm = h('form', { class: 'inline-form', novalidate: true }, nameInput, seenNames, addBtn);
  addForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = nameInput.value.trim();
    if (!name) { nameInput.focus(); return; }
    addBtn.disabled = true;
    try {
      const r = await patch('/v1/admin/integrations/' + enc(env.it().id), { events: { [name]: { enabled: true } } });
      env.setIt(r);
      nameInput.value = '';
      toast(`${name}: enabled (revision ${r.revision})`);
      paint();
      paintSeen();
    } catch (err) { toast(`Could not enable ${name}: ${err.message}`, 'err'); } finally { addBtn.disabled = false; }
  });

  let seen = [];
  function paintSeen() {
    const evs = env.it().events || {};
    const list = seen.filter(([n]) => !(evs[n] && evs[n].enabled));
    clear(seenBox);
    if (!list.length) return;
    seenBox.appendChild(h('div', { class: 'card card-muted' }, h('h3', { class: 'card-title', text: 'Seen recently, not enabled' }),
      h('p', { class: 'small muted', text: 'Track events that arrived and were dropped because they are not enabled.' }),
      h('ul', { class: 'seen-list' }, list.map(([n, count]) => h('li', {},
        h('span', { class: 'ev-name', text: n }), h('span', { class: 'muted small', text: ` ${count}×` }),
        can ? button('Enable', async (e) => {
          e.currentTarget.disabled = true;
          try {
            const r = await patch('/v1/admin/integrations/' + enc(env.it().id), { events: { [n]: { enabled: true } } });
            env.setIt(r); toast(`${n}: enabled (revision ${r.revision})`); paint(); paintSeen();
          } catch (err) { toast(err.message, 'err'); }
        }, { small: true }) : null)))));
  }

  replace(body, h('div', { class: 'stack' },
    h('section', { class: 'card card-flush' },
      h('div', { class: 'card-head card-pad' }, h('h2', { class: 'card-title', text: 'Events' }),
        h('span', { class: 'small muted', text: 'Which events this integration sends. Each change makes a new revision.' })),
      h('table', { class: 'table', id: 'events-table' }, h('thead', {}, h('tr', {}, h('th', { text: 'Event' }),
        h('th', { class: 'hide-narrow', text: 'Type' }), h('th', { class: 'hide-narrow', text: 'Mapping' }), h('th', { class: 'cell-switch', text: 'Enabled' }))), table)),
    h('section', { class: 'card' }, h('h2', { class: 'card-title', text: 'Custom events' }),
      h('p', { class: 'small' }, cat.custom_events
        ? `Track events not listed above are ${cat.custom_events}: enable one by its exact name and it is sent through `
        : 'Enable a track event by its exact name; it is sent through ',
      h('code', { text: 'custom.lua' }), '.'),
      can ? addForm : h('p', { class: 'muted small', text: 'Enabling events needs the editor role or above.' })),
    seenBox));
  paint();
  try {
    seen = await seenCustomEvents(env.it().id);
    // the names already seen are offered as the name is typed
    replace(seenNames, seen.map(([n]) => h('option', { value: n })));
    paintSeen();
  } catch (e) { /* only a hint */ }
}

// ---- Dead letters ------------------------------------------------------------------------------

async function deadLetters(body, env) {
  const { ctx } = env;
  const can = ctx.session.can.replay;
  const id = env.it().id;
  const list = h('div', { id: 'dead-letters' });
  const detail = h('section', { class: 'live-detail card', hidden: true, id: 'dl-detail' });
  const replayAll = can ? button('Replay all', async () => {
    const ok = await confirmDialog({ title: 'Replay every dead letter?',
      body: 'Dead letters and events that ended in error are queued again and mapped by the running blueprint revision.', confirmLabel: 'Replay all' });
    if (!ok) return;
    try {
      const r = await post('/v1/admin/integrations/' + enc(id) + '/dead-letters/replay', { all: true });
      toast(`Replayed ${r.replayed} (${r.dead_letters} dead letters, ${r.errors} errors)`);
      load();
      env.reload().catch(() => {});
    } catch (err) { toast('Replay failed: ' + err.message, 'err'); }
  }, { kind: 'primary', small: true, id: 'replay-all' }) : null;
  const wrap = h('div', { class: 'live has-list' },
    h('div', { class: 'toolbar' }, h('p', { class: 'small muted', text: 'Events the vendor refused for good, and events whose mapping failed. Fix the cause, then replay: they are mapped again by the running revision.' }),
      h('span', { class: 'toolbar-spacer' }), replayAll),
    h('div', { class: 'live-body' }, list, detail));
  replace(body, wrap);

  async function load() {
    replace(list, h('p', { class: 'loading' }, spinner(), 'Loading…'));
    const r = await get('/v1/admin/integrations/' + enc(id) + '/dead-letters');
    const rows = r.dead_letters || [];
    if (replayAll) replayAll.disabled = !rows.length;
    if (!rows.length) { replace(list, empty('No dead letters', 'Nothing is waiting for a replay.')); return; }
    replace(list, h('div', { class: 'card card-flush' }, h('table', { class: 'table table-live', id: 'dl-table' },
      h('thead', {}, h('tr', {}, h('th', { text: 'Time' }), h('th', { text: 'Event' }), h('th', { text: 'State' }),
        h('th', { class: 'num', text: 'Status' }), h('th', { class: 'hide-narrow', text: 'Reason' }), can ? h('th', { text: '' }) : null)),
      h('tbody', {}, rows.map((row) => {
        const o = row.outcome || {};
        const tr = h('tr', { class: 'row-click', tabindex: '0', dataset: { id: String(o.id) } },
          h('td', { class: 'mono nowrap', title: fmtTime(row.updated_at), text: fmtAgo(row.updated_at) }),
          h('td', {}, h('span', { class: 'ev-name', text: eventName(o, row.event) }), h('div', { class: 'mono small muted', text: o.message_id || '' })),
          h('td', {}, badge(outcomeOf(row))),
          h('td', { class: 'num' }, statusCode(o.status)),
          h('td', { class: 'hide-narrow cell-reason', text: o.reason || '' }),
          can ? h('td', { class: 'cell-actions' }, button('Replay', async (e) => {
            e.stopPropagation();
            e.currentTarget.disabled = true;
            try {
              const x = await post('/v1/admin/integrations/' + enc(id) + '/dead-letters/replay', { ids: [o.id] });
              toast(`Replayed ${x.replayed}`);
              load();
              env.reload().catch(() => {});
            } catch (err) { toast('Replay failed: ' + err.message, 'err'); }
          }, { small: true, dataset: { replay: String(o.id) } })) : null);
        tr.addEventListener('click', () => {
          detail.hidden = false;
          wrap.classList.add('has-detail');
          replace(detail, renderDetail(row, ctx, { integration: env.it(), onClose: () => { detail.hidden = true; wrap.classList.remove('has-detail'); }, onReplayed: load }));
        });
        return tr;
      })))));
  }
  await load();
  return null;
}

// ---- Revisions ---------------------------------------------------------------------------------

async function revisions(body, env) {
  const id = env.it().id;
  const [r, audit] = await Promise.all([
    get('/v1/admin/integrations/' + enc(id) + '/revisions'),
    get('/v1/admin/audit-log?integration=' + enc(id) + '&limit=200').catch(() => ({ entries: [] })),
  ]);
  const revs = (r.revisions || []).slice().sort((a, b) => b.revision - a.revision);
  const byRev = new Map();
  for (const e of audit.entries || []) if (e.revision_after != null) byRev.set(Number(e.revision_after), e);
  const view = h('div', { class: 'rev-view card', id: 'revision-diff' });
  const list = h('ol', { class: 'rev-list', id: 'revision-list' });
  const snapshot = (x) => {
    const s = {};
    for (const k of Object.keys(x)) if (!['revision', 'created_at', 'actor', 'id'].includes(k)) s[k] = x[k];
    return s;
  };
  function show(i) {
    [...list.children].forEach((li, j) => li.classList.toggle('selected', j === i));
    const cur = revs[i];
    const prev = revs[i + 1];
    const a = prev ? flatten(snapshot(prev)) : [];
    const b = flatten(snapshot(cur));
    const d = lineDiff(a, b);
    const changed = d.some((x) => x.op !== ' ');
    const au = byRev.get(Number(cur.revision));
    replace(view,
      h('div', { class: 'card-head' }, h('h2', { class: 'card-title', text: `Revision ${cur.revision}` + (prev ? ` (compared with ${prev.revision})` : ' (first)') })),
      au ? h('p', { class: 'small' }, h('strong', { text: au.actor || '' }), ' ', h('span', { class: 'muted', text: `(${au.role || ''}) ${fmtTime(au.at)}: ` }), h('span', { text: au.detail || au.action })) : null,
      changed ? renderDiff(prev ? hunks(d, 2) : d) : h('p', { class: 'muted small', text: 'No configuration value changed in this revision' + (au && au.detail ? ': ' + au.detail + '.' : '.') }));
  }
  revs.forEach((x, i) => {
    const au = byRev.get(Number(x.revision));
    const li = h('li', { class: 'rev-item', tabindex: '0', dataset: { revision: String(x.revision) } },
      h('div', { class: 'rev-top' }, h('strong', { text: 'Revision ' + x.revision }), i === 0 ? badge('current', 'ok') : null),
      h('div', { class: 'small muted', text: fmtTime(x.created_at) + (au && au.actor ? ' · ' + au.actor : '') }),
      au && au.detail ? h('div', { class: 'small rev-detail', text: au.detail }) : null);
    li.addEventListener('click', () => show(i));
    li.addEventListener('keydown', (e) => { if (e.key === 'Enter') show(i); });
    list.appendChild(li);
  });
  replace(body, revs.length ? h('div', { class: 'rev-layout' }, h('div', { class: 'card card-flush' }, list), view) : empty('No revisions', ''));
  if (revs.length) show(0);
}

// ---- Settings: details and delete --------------------------------------------------------------

function settings(body, env) {
  const it = env.it();
  const can = env.ctx.session.can.install;
  replace(body, h('div', { class: 'stack' },
    h('section', { class: 'card' }, h('h2', { class: 'card-title', text: 'Details' }), kv([
      ['Id', h('code', { text: it.id })], ['Vendor', it.vendor], ['Variant', it.variant], ['Delivery mode', it.delivery_mode],
      ['Installed', fmtTime(it.created_at)], ['Config revision', String(it.revision)],
      ['Intake URL', h('code', { class: 'break', text: location.origin + '/v1/integrations/' + it.id + '/events' })],
    ])),
    can ? h('section', { class: 'card card-danger' }, h('h2', { class: 'card-title', text: 'Delete this integration' }),
      h('p', { class: 'small', text: 'Delivery stops (requests in flight finish), then its queued events, dead letters and pause state are deleted. Its revisions stay in the audit trail, secrets masked. This cannot be undone.' }),
      button('Delete integration…', async () => {
        const ok = await confirmDialog({ title: `Delete ${it.name}?`, danger: true, confirmLabel: 'Delete',
          body: 'Events not yet delivered are lost.', typeToConfirm: it.name });
        if (!ok) return;
        try {
          await del('/v1/admin/integrations/' + enc(it.id));
          toast(`Deleted ${it.name}`);
          env.ctx.navigate('#/integrations');
        } catch (err) { toast('Delete failed: ' + err.message, 'err'); }
      }, { kind: 'danger', id: 'delete-integration' }))
      : h('p', { class: 'muted small', text: 'Deleting an integration needs the editor role or above.' })));
}
