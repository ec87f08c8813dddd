// Live Events: the latest outcomes of an integration, kept current by the
// SSE stream (read with fetch, since EventSource cannot send the bearer
// token), filtered by outcome and event, each row opening the whole story:
// input event, decision and reason, redacted requests, the vendor's answer,
// attempts, timing and retries.  An event that went in a batch shows it in
// its row (a badge that filters the list to that batch's events) and in its
// detail; batches the vendor still holds (queued) are listed above.
import { h, replace, clear, button, badge, statusCode, empty, errorBox, toast, kv, codeBlock, pretty,
  parseJSON, fmtTime, fmtClock, fmtAgo, fmtDuration, copyButton, spinner } from '../dom.js';
import { get, post, enc, stream } from '../api.js';
import { listIntegrations, outcomeOf, eventName, consoleReason } from '../data.js';

const OUTCOMES = ['delivered', 'retrying', 'held', 'drop', 'error', 'dead_letter'];
const LAST = 'bp.live.last';
const MAX_ROWS = 500;

// The integration being looked at: the sidebar's Live Events opens it.
export function rememberIntegration(id) {
  try { localStorage.setItem(LAST, id); } catch (e) { /* private mode: the first one then */ }
}

// Custom event names that arrived and were dropped as not enabled, most
// frequent first: [[name, count], …] (for the Events tab and test events).
export async function seenCustomEvents(id) {
  const r = await get('/v1/admin/integrations/' + enc(id) + '/live-events?limit=200&outcome=drop');
  const counts = new Map();
  for (const row of r.events || []) {
    const name = consoleReason((row.outcome || {}).reason).customEvent;
    if (name) counts.set(name, (counts.get(name) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
}

export async function renderPage(main, params, ctx) {
  const ints = await listIntegrations();
  if (!ctx.isCurrent()) return;
  const page = h('div', { class: 'page page-wide' });
  replace(main, page);
  const head = h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Live Events' }),
    h('p', { class: 'page-sub', text: 'Every event as it is judged and delivered: the decision, the exact requests, the vendor\'s answer.' })));
  page.appendChild(head);
  if (!ints.length) {
    page.appendChild(empty('No integrations yet', 'Live Events shows the events of an installed integration.',
      h('a', { class: 'btn btn-primary', href: '#/integrations/library', text: 'Install one' })));
    return;
  }
  let id = params.id;
  if (!id || !ints.some((i) => i.id === id)) {
    const last = localStorage.getItem(LAST);
    id = ints.some((i) => i.id === last) ? last : ints[0].id;
    history.replaceState(null, '', '#/live/' + enc(id));
  }
  localStorage.setItem(LAST, id);
  const it = ints.find((i) => i.id === id);
  const picker = h('select', { class: 'input input-inline', id: 'live-integration', 'aria-label': 'Integration' },
    ints.map((i) => h('option', { value: i.id, selected: i.id === id, text: `${i.name} (${i.vendor})` })));
  picker.addEventListener('change', () => ctx.navigate('#/live/' + enc(picker.value)));
  head.appendChild(h('div', { class: 'page-actions' }, h('label', { class: 'inline-label', for: 'live-integration', text: 'Integration' }), picker,
    h('a', { class: 'btn btn-ghost', href: '#/integration/' + enc(id), text: 'Open integration' })));
  const box = h('div', {});
  page.appendChild(box);
  return mountLive(box, it, ctx);
}

// ---- the component ---------------------------------------------------------------------------

export function mountLive(container, integration, ctx) {
  const id = integration.id;
  const items = new Map();   // key -> {event, outcome, state, updated_at, fresh}
  let selected = null;
  let paused = false;
  let stopStream = null;
  let backfillTimer = null;
  let renderQueued = false;
  let outcomeFilter = '';
  let eventFilter = '';
  let textFilter = '';
  let batchFilter = null;    // a batch's id: only its events (the API's ?batch=)
  let openBatches = [];      // the API's open_batches: queued at the vendor, events pending
  let openTimer = null;
  const eventNames = new Set();   // names: Order Completed, Pricing, …
  const eventTypes = new Set();   // types: track, page, identify

  const outcomeSel = h('select', { class: 'input input-inline', id: 'live-outcome', 'aria-label': 'Outcome' },
    h('option', { value: '', text: 'All outcomes' }), OUTCOMES.map((o) => h('option', { value: o, text: o.replace('_', ' ') })));
  const eventSel = h('select', { class: 'input input-inline', id: 'live-event', 'aria-label': 'Event type' },
    h('option', { value: '', text: 'All events' }));
  const search = h('input', { type: 'search', class: 'input input-inline', id: 'live-search', placeholder: 'Message id or text…',
    'aria-label': 'Search', autocomplete: 'off', spellcheck: false });
  const state = h('span', { class: 'stream-state stream-connecting', id: 'live-state', role: 'status' }, h('span', { class: 'dot' }), h('span', { text: 'Connecting…' }));
  const pauseBtn = button('Pause', () => {
    paused = !paused;
    pauseBtn.textContent = paused ? 'Resume' : 'Pause';
    pauseBtn.setAttribute('aria-pressed', String(paused));
    if (!paused) queueRender();
  }, { small: true, id: 'live-pause' });
  const countEl = h('span', { class: 'muted small', id: 'live-count' });
  const tbody = h('tbody', { id: 'live-rows' });
  const table = h('table', { class: 'table table-live', id: 'live-table' },
    h('thead', {}, h('tr', {},
      h('th', { text: 'Time' }), h('th', { text: 'Event' }), h('th', { class: 'hide-narrow col-extra', text: 'Message id' }),
      h('th', { text: 'Outcome' }), h('th', { class: 'num', text: 'Status' }), h('th', { class: 'num hide-narrow col-extra', text: 'Tries' }),
      h('th', { class: 'num hide-narrow col-extra', text: 'Time taken' }), h('th', { class: 'hide-narrow col-extra', text: 'Reason' }))),
    tbody);
  const listWrap = h('div', { class: 'live-list card card-flush' }, table);
  // the batch the list is narrowed to, with a way back to every event
  const batchChip = h('span', { class: 'batch-chip', id: 'live-batch-filter', hidden: true });
  const detail = h('section', { class: 'live-detail card', id: 'live-detail', 'aria-label': 'Event detail', hidden: true });
  const root = h('div', { class: 'live', id: 'live' },
    h('div', { class: 'toolbar' }, outcomeSel, eventSel, search, batchChip, h('span', { class: 'toolbar-spacer' }), countEl, state, pauseBtn),
    h('div', { class: 'live-body' }, listWrap, detail));
  replace(container, root);

  outcomeSel.addEventListener('change', () => { outcomeFilter = outcomeSel.value; load(); queueRender(); });
  eventSel.addEventListener('change', () => { eventFilter = eventSel.value; queueRender(); });
  search.addEventListener('input', () => { textFilter = search.value.trim().toLowerCase(); queueRender(); });

  // Narrow the list to one batch's events (null: all events again).
  function setBatch(n) {
    batchFilter = n;
    if (n == null) { batchChip.hidden = true; clear(batchChip); }
    else {
      batchChip.hidden = false;
      replace(batchChip, h('span', { text: `Batch ${n}` }),
        button('Show all events', () => setBatch(null), { small: true, kind: 'ghost', id: 'live-batch-clear' }));
    }
    load();
    queueRender();
  }

  function keyOf(o, fallback) {
    return o && o.id != null ? 'id:' + o.id : fallback;
  }

  // what a row shows: a row is rebuilt only when this changes
  function signature(item) {
    return JSON.stringify([item.outcome, item.state, !!item.event, item.updated_at]);
  }

  function upsert(row, fresh) {
    const o = row.outcome || {};
    const k = keyOf(o, 'm:' + (o.message_id || (row.event && (row.event.messageId || row.event.message_id))) + ':' + (o.index ?? ''));
    const prev = items.get(k);
    const item = Object.assign(prev || {}, row);
    if (!item.event && prev && prev.event) item.event = prev.event;
    item.key = k;
    item.sort = o.id != null ? Number(o.id) : (prev && prev.sort) || Date.now();
    if (fresh && !prev) item.fresh = true;
    item.sig = signature(item);
    items.set(k, item);
    const name = eventName(o, item.event);
    const type = o.type || (item.event && item.event.type);
    if ((name && !eventNames.has(name)) || (type && !eventTypes.has(type))) {
      if (name) eventNames.add(name);
      if (type) eventTypes.add(type);
      paintEventFilter();
    }
    if (items.size > MAX_ROWS) {
      const oldest = [...items.values()].sort((a, b) => a.sort - b.sort).slice(0, items.size - MAX_ROWS);
      // the batch being looked at stays whole, however old its events
      const inBatch = (x) => batchFilter != null && x.outcome && x.outcome.batch && x.outcome.batch.id === batchFilter;
      oldest.forEach((x) => { if (x.key !== selected && !inBatch(x)) items.delete(x.key); });
    }
    return item;
  }

  // the event filter: by type (identify, page, track) or by one event's name
  function paintEventFilter() {
    const cur = eventSel.value;
    replace(eventSel, h('option', { value: '', text: 'All events' }),
      h('optgroup', { label: 'Type' }, [...eventTypes].sort().map((t) =>
        h('option', { value: 'type:' + t, text: 'All ' + t, selected: 'type:' + t === cur }))),
      h('optgroup', { label: 'Event' }, [...eventNames].sort().map((n) =>
        h('option', { value: 'name:' + n, text: n, selected: 'name:' + n === cur }))));
  }

  async function load() {
    try {
      // a batch holds at most max_events (250 for ActiveCampaign): all of it
      const q = (batchFilter != null ? '?limit=' + MAX_ROWS + '&batch=' + enc(batchFilter) : '?limit=100')
        + (outcomeFilter ? '&outcome=' + enc(outcomeFilter === 'drop' ? 'drop' : outcomeFilter) : '');
      const r = await get('/v1/admin/integrations/' + enc(id) + '/live-events' + q);
      for (const row of r.events || []) upsert(row, false);
      blueprintNote(r.blueprint);
      retentionNote(r.retention);
      openBatchesNote(r.open_batches);
      queueRender();
    } catch (e) {
      if (e.name !== 'AbortError') replace(listWrap, errorBox(e, 'Could not load Live Events'));
    }
  }

  // Stream outcomes carry no input event: fetch the latest page to fill them in.
  function backfill() {
    clearTimeout(backfillTimer);
    backfillTimer = setTimeout(async () => {
      try {
        const r = await get('/v1/admin/integrations/' + enc(id) + '/live-events?limit=50');
        openBatchesNote(r.open_batches);
        for (const row of r.events || []) {
          const k = keyOf(row.outcome, null);
          if (k && items.has(k)) {
            const it = items.get(k);
            it.event = row.event;
            if (row.state) it.state = row.state;
            if (row.updated_at) it.updated_at = row.updated_at;
            it.sig = signature(it);
          } else upsert(row, true);
        }
        queueRender();
        refreshDetail();
      } catch (e) { /* the next outcome tries again */ }
    }, 400);
  }

  const blueprintBox = h('div', { class: 'live-blueprint' });
  root.insertBefore(blueprintBox, root.children[1]);
  function blueprintNote(bp) {
    clear(blueprintBox);
    if (bp && bp.status === 'rejected') {
      blueprintBox.appendChild(h('div', { class: 'alert alert-warn' },
        h('strong', { text: 'The last blueprint edit was rejected; the previous revision keeps running. ' }),
        h('span', { text: String(bp.error || '') }), bp.note ? h('span', { class: 'muted', text: ' ' + bp.note }) : null));
    }
  }

  // How far back the list reaches: the store prunes final events after these windows.
  const retentionBox = h('p', { class: 'muted live-retention' });
  root.insertBefore(retentionBox, blueprintBox.nextSibling);
  function retentionNote(ret) {
    if (!ret) { retentionBox.textContent = ''; return; }
    const span = (s) => s == null ? 'forever'
      : s % 86400 === 0 ? plural(s / 86400, 'day') : s % 3600 === 0 ? plural(s / 3600, 'hour')
      : s % 60 === 0 ? plural(s / 60, 'minute') : plural(s, 'second');
    retentionBox.textContent = 'Kept: delivered ' + span(ret.delivered_s) + ', dead letters ' + span(ret.dead_letters_s)
      + (ret.oldest_event_at ? '; oldest kept event ' + new Date(ret.oldest_event_at).toLocaleString() : '');
  }
  function plural(n, unit) { return n + ' ' + unit + (n === 1 ? '' : 's'); }

  // Batches still open: their events are pending (not in the list until the
  // vendor's answer gives each its result).  Looked at again every 3 s while
  // there are any: the status requests count up, and the stream says
  // nothing until the outcomes come.
  const openBox = h('div', { class: 'live-open-batches', id: 'live-open-batches', hidden: true });
  root.insertBefore(openBox, retentionBox.nextSibling);
  function openBatchesNote(list) {
    openBatches = Array.isArray(list) ? list : [];
    openBox.hidden = !openBatches.length;
    replace(openBox, openBatches.map((b) => h('div', { class: 'alert alert-info', dataset: { batch: String(b.id) } },
      h('strong', { text: `Batch ${b.id} (${plural(b.size, 'event')}): ` }), batchStatus(b),
      ' Its events show here once the vendor gives their results.')));
    clearTimeout(openTimer);
    if (openBatches.length) {
      openTimer = setTimeout(async () => {
        try { openBatchesNote((await get('/v1/admin/integrations/' + enc(id) + '/live-events?limit=1')).open_batches); }
        catch (e) { openBatchesNote(openBatches); }   // try again later
      }, 3000);
    }
    if (batchFilter != null) queueRender();
  }

  function setState(s, detail) {
    state.className = 'stream-state stream-' + s;
    const label = { open: 'Live', closed: 'Reconnecting…', error: 'Reconnecting…', connecting: 'Connecting…' }[s] || s;
    replace(state, h('span', { class: 'dot' }), h('span', { text: label }));
    state.title = detail && detail.message ? detail.message : '';
  }

  function visible(item) {
    const o = item.outcome || {};
    const out = outcomeOf(item);
    if (batchFilter != null && !(o.batch && o.batch.id === batchFilter)) return false;
    if (outcomeFilter && out !== outcomeFilter && !(outcomeFilter === 'drop' && out === 'dropped')) return false;
    if (eventFilter.startsWith('name:') && eventName(o, item.event) !== eventFilter.slice(5)) return false;
    if (eventFilter.startsWith('type:') && (o.type || (item.event && item.event.type)) !== eventFilter.slice(5)) return false;
    if (textFilter) {
      const hay = [o.message_id, o.reason, eventName(o, item.event), o.status].join(' ').toLowerCase();
      if (!hay.includes(textFilter)) return false;
    }
    return true;
  }

  function queueRender() {
    if (renderQueued || paused) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; renderRows(); });
  }

  const rowCache = new Map();   // key -> {sig, tr}
  let emptyRow = null;

  function buildRow(item) {
    const o = item.outcome || {};
    const out = outcomeOf(item);
    const tr = h('tr', {
      class: ['row-click', item.key === selected ? 'selected' : '', item.fresh ? 'row-new' : ''],
      tabindex: '0', dataset: { key: item.key, outcome: out, messageId: o.message_id || '' },
      'aria-selected': String(item.key === selected),
    },
    h('td', { class: 'mono nowrap', title: fmtTime(item.updated_at), text: fmtClock(item.updated_at) || '—' }),
    h('td', { class: 'cell-event', title: eventName(o, item.event) }, h('span', { class: 'ev-name', text: eventName(o, item.event) }),
      o.type && o.event ? h('span', { class: 'ev-type', text: o.type }) : null),
    h('td', { class: 'mono hide-narrow cell-trunc col-extra', text: o.message_id || '' }),
    h('td', { class: 'cell-outcome' }, badge(out), o.batch ? batchBadge(o.batch, setBatch) : null),
    h('td', { class: 'num' }, statusCode(o.status)),
    h('td', { class: 'num hide-narrow col-extra', text: o.attempts != null ? String(o.attempts) : '' }),
    h('td', { class: 'num hide-narrow col-extra', text: o.duration_ms != null && o.attempts ? fmtDuration(o.duration_ms) : '' }),
    h('td', { class: 'hide-narrow cell-reason col-extra', title: consoleReason(o.reason).text, text: consoleReason(o.reason).text }));
    item.fresh = false;
    const open = () => select(item.key, true);
    tr.addEventListener('click', open);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } });
    return tr;
  }

  function select(key, focus) {
    const before = selected;
    selected = key;
    for (const k of [before, key]) {
      const c = k && rowCache.get(k);
      if (c) { c.tr.classList.toggle('selected', k === selected); c.tr.setAttribute('aria-selected', String(k === selected)); }
    }
    if (key) showDetail(items.get(key), focus);
  }

  // Rows are kept by key and rebuilt only when what they show changes, so
  // a row under the pointer (or a test's hand) is not replaced needlessly.
  function renderRows() {
    const all = [...items.values()].sort((a, b) => b.sort - a.sort);
    const rows = all.filter(visible);
    const n = (k) => `${k} event${k === 1 ? '' : 's'}`;
    countEl.textContent = rows.length === all.length ? n(all.length) : `${rows.length} of ${n(all.length)}`;
    batchSummary(rows);
    if (!rows.length) {
      rowCache.clear();
      emptyRow = h('tr', { class: 'row-empty' }, h('td', { colspan: '8' },
        batchFilter != null && openBatches.some((b) => b.id === batchFilter)
          ? `Batch ${batchFilter} is queued at the vendor: its events show here once it answers.`
          : all.length ? 'No event matches these filters.' : 'No events yet. Events sent to this integration appear here as they are delivered.'));
      replace(tbody, emptyRow);
      return;
    }
    if (emptyRow) { emptyRow.remove(); emptyRow = null; }
    const keep = new Set(rows.map((r) => r.key));
    for (const [k, c] of rowCache) if (!keep.has(k)) { c.tr.remove(); rowCache.delete(k); }
    let at = tbody.firstChild;
    for (const item of rows) {
      let c = rowCache.get(item.key);
      if (!c || c.sig !== item.sig) {
        const tr = buildRow(item);
        if (c) { if (at === c.tr) at = tr; c.tr.replaceWith(tr); }
        c = { sig: item.sig, tr };
        rowCache.set(item.key, c);
      }
      if (c.tr === at) at = at.nextSibling;
      else tbody.insertBefore(c.tr, at);
    }
  }

  let detailSig = null;
  function showDetail(item, focus) {
    if (!item) return;
    detail.hidden = false;
    root.classList.add('has-detail');
    detailSig = item.key + item.sig;
    const close = () => { select(null); detail.hidden = true; root.classList.remove('has-detail'); };
    replace(detail, renderDetail(item, ctx, {
      integration,
      // the list, narrowed to the batch, in the detail's place (a narrow screen shows one of them)
      onBatch: (n) => { close(); setBatch(n); },
      onClose: close,
      onReplayed: () => load(),
    }));
    if (focus) { detail.setAttribute('tabindex', '-1'); detail.focus({ preventScroll: true }); }
  }

  function refreshDetail() {
    const item = selected && items.get(selected);
    if (item && detailSig !== item.key + item.sig) showDetail(item, false);
  }

  load().then(() => {
    stopStream = stream('/v1/admin/integrations/' + enc(id) + '/live-events/stream', {
      // an outcome written between the list's fetch (or a dropped stream) and this
      // connection is in no stream message: each connection fills that gap from the list
      onState: (s, detail) => { setState(s, detail); if (s === 'open') backfill(); },
      onEvent: (name, data) => {
        if (name === 'outcome' && data && typeof data === 'object') {
          const item = upsert({ outcome: data, state: data.outcome === 'retrying' ? 'retrying' : undefined, updated_at: Date.now() }, true);
          if (!item.event) backfill();
          queueRender();
          refreshDetail();
        }
      },
    });
  });
  // Above the list while it shows one batch: what the batch was, and how
  // its events ended (from the outcomes listed).
  const summaryBox = h('div', { class: 'live-batch-summary', id: 'live-batch-summary', hidden: true });
  root.insertBefore(summaryBox, root.querySelector('.live-body'));
  function batchSummary(rows) {
    const b = batchFilter != null && rows.map((r) => (r.outcome || {}).batch).find(Boolean);
    const open = batchFilter != null && openBatches.find((x) => x.id === batchFilter);
    summaryBox.hidden = !b && !open;
    if (!b && !open) { clear(summaryBox); return; }
    const counts = new Map();
    for (const r of rows) counts.set(outcomeOf(r), (counts.get(outcomeOf(r)) || 0) + 1);
    replace(summaryBox, h('div', { class: 'card batch-card' },
      h('h3', { text: `Batch ${batchFilter}` }),
      kv([
        ['Events', String((b || open).size)],
        ['Request', b ? h('code', { class: 'mono', id: 'batch-request', text: b.request || '' }) : null],
        ['At the vendor', open ? batchStatus(open) : batchStatus(b)],
        ['Results', counts.size ? h('span', { id: 'batch-results' }, [...counts.entries()].map(([k, v]) => [badge(k), ` ${v} `])) : null],
      ])));
  }

  return () => {
    if (stopStream) stopStream();
    clearTimeout(backfillTimer);
    clearTimeout(openTimer);
  };
}

// ---- batches ---------------------------------------------------------------------------------

// "batch 7 · 25" in a row: the events that went together; a click shows them.
function batchBadge(b, onBatch) {
  const el = h('button', { type: 'button', class: 'badge badge-batch', dataset: { batch: String(b.id) },
    title: `Sent in batch ${b.id} with ${b.size - 1} other event${b.size === 2 ? '' : 's'}: show them`,
    text: `batch ${b.id} · ${b.size}` });
  el.addEventListener('click', (e) => { e.stopPropagation(); onBatch(b.id); });
  el.addEventListener('keydown', (e) => e.stopPropagation());
  return el;
}

// Where a batch stands at the vendor: an open batch's state (the API's
// open_batches), or, once its events have outcomes, done.
function batchStatus(b) {
  const n = b.status_requests || 0;
  const polls = `${n} status request${n === 1 ? '' : 's'}`;
  if (b.state === 'queued') return `queued at the vendor, ${polls} so far.`;
  if (b.state === 'sending') return 'sent; waiting for the vendor\'s answer.';
  return n ? `done: answered after ${polls}.` : 'done: answered at once (no status request).';
}

// ---- one event, in full ----------------------------------------------------------------------

function formFields(body) {
  const out = [];
  for (const part of String(body).split('&')) {
    if (!part) continue;
    const i = part.indexOf('=');
    const dec = (s) => { try { return decodeURIComponent(s.replace(/\+/g, ' ')); } catch (e) { return s; } };
    out.push([dec(i < 0 ? part : part.slice(0, i)), dec(i < 0 ? '' : part.slice(i + 1))]);
  }
  return out;
}

function bodyView(req) {
  const body = req.body;
  if (body == null || body === '') return h('p', { class: 'muted small', text: 'no body' });
  const ct = Object.entries(req.headers || {}).find(([k]) => k.toLowerCase() === 'content-type');
  const type = ct ? String(ct[1]) : '';
  let decoded = null;
  if (req.decoded !== undefined) decoded = codeBlock(pretty(req.decoded));
  else if (/json/.test(type)) { try { decoded = codeBlock(pretty(parseJSON(body))); } catch (e) { decoded = null; } }
  else if (/x-www-form-urlencoded/.test(type)) {
    decoded = h('table', { class: 'table table-compact table-form' }, h('tbody', {}, formFields(body).map(([k, v]) => {
      let val = v;
      try { if (/^[[{]/.test(v)) val = pretty(parseJSON(v)); } catch (e) { /* as text */ }
      return h('tr', {}, h('th', { class: 'mono', text: k }), h('td', {}, h('pre', { class: 'code-inline', text: val })));
    })));
  }
  if (!decoded) return codeBlock(body);
  const raw = codeBlock(body, 'raw-body');
  raw.hidden = true;
  const t = button('Exact bytes', () => { raw.hidden = !raw.hidden; t.textContent = raw.hidden ? 'Exact bytes' : 'Hide exact bytes'; }, { small: true, kind: 'ghost' });
  return h('div', {}, decoded, h('div', { class: 'body-raw-toggle' }, t), raw);
}

export function renderRequest(req, i) {
  return h('div', { class: 'req' },
    h('div', { class: 'req-line' }, h('span', { class: 'req-num', text: '#' + (i + 1) }),
      h('span', { class: 'method', text: req.method || 'POST' }), h('span', { class: 'url mono', text: req.url || '' })),
    req.once || req.marks ? h('p', { class: 'small muted' }, req.once ? 'once: ' : 'marks: ', h('code', { text: req.once || req.marks })) : null,
    Object.keys(req.headers || {}).length
      ? h('table', { class: 'table table-compact table-headers' }, h('tbody', {}, Object.entries(req.headers).map(([k, v]) =>
        h('tr', {}, h('th', { class: 'mono', text: k }), h('td', { class: 'mono', text: String(v) })))))
      : null,
    bodyView(req));
}

function vendorAnswer(o) {
  if (o.response == null || o.response === '') return h('p', { class: 'muted small', text: o.status == null ? 'Not sent to the vendor.' : 'Empty answer.' });
  const t = String(o.response);
  try { return codeBlock(pretty(parseJSON(t))); } catch (e) { return codeBlock(t); }
}

export function renderDetail(item, ctx, opts = {}) {
  const o = item.outcome || {};
  const out = outcomeOf(item);
  const can = ctx.session.can;
  const integration = opts.integration || {};
  const replayable = (out === 'dead_letter' || out === 'error' || item.state === 'dead' || item.state === 'error') && o.id != null;
  const actions = h('div', { class: 'detail-actions' },
    item.event ? copyButton(JSON.stringify(item.event), 'Copy event') : null,
    item.event && integration.vendor ? button('Try in blueprint editor', () => {
      pickSample(integration.vendor, item.event);
      ctx.navigate('#/editor/' + enc(integration.vendor));
    }, { small: true, kind: 'ghost', id: 'detail-to-editor' }) : null,
    replayable && can.replay ? button('Replay', async (e) => {
      e.currentTarget.disabled = true;
      try {
        const r = await post('/v1/admin/integrations/' + enc(integration.id) + '/dead-letters/replay', { ids: [o.id] });
        toast(`Replayed ${r.replayed} event${r.replayed === 1 ? '' : 's'}`);
        opts.onReplayed && opts.onReplayed();
      } catch (err) { toast('Replay failed: ' + err.message, 'err'); e.currentTarget.disabled = false; }
    }, { small: true, kind: 'primary', id: 'detail-replay' }) : null);
  const retry = out === 'retrying'
    ? h('div', { class: 'alert alert-warn' }, h('strong', { text: 'Retrying. ' }),
      `Attempt ${o.attempts || 0} failed; `,
      o.next_attempt_at || item.next_attempt_at
        ? `next attempt ${fmtAgo(o.next_attempt_at || item.next_attempt_at)} (${fmtClock(o.next_attempt_at || item.next_attempt_at)}).`
        : 'the next attempt is scheduled.')
    : null;
  return h('div', { class: 'detail', dataset: { key: item.key || '' } },
    h('div', { class: 'detail-head' },
      h('div', {}, h('h2', { class: 'detail-title', text: eventName(o, item.event) }),
        h('p', { class: 'muted small mono', text: o.message_id || '' })),
      opts.onClose ? button('Close', opts.onClose, { small: true, kind: 'ghost', id: 'detail-close', ariaLabel: 'Close the event detail' }) : null),
    actions,
    retry,
    h('section', { class: 'detail-sec' }, h('h3', { text: 'Decision' }),
      h('p', { class: 'decision' }, badge(out), ' ', h('span', { class: 'decision-reason', id: 'detail-reason', text: consoleReason(o.reason).text })),
      reasonAdvice(o.reason, integration),
      kv([
        ['Vendor status', statusCode(o.status)],
        ['Attempts', o.attempts != null ? String(o.attempts) : null],
        ['Time taken', o.duration_ms != null ? fmtDuration(o.duration_ms) : null],
        ['Updated', item.updated_at ? fmtTime(item.updated_at) : null],
        ['Blueprint revision', o.blueprint_revision ? h('code', { text: o.blueprint_revision }) : null],
        ['Store id', o.id != null ? String(o.id) : null],
      ])),
    o.batch ? batchSection(o, out, opts.onBatch) : null,
    o.logs && o.logs.length ? h('section', { class: 'detail-sec' }, h('h3', { text: 'Mapping log' }),
      codeBlock(o.logs.map((l) => `${l.at || ''}  ${l.msg || ''}`).join('\n'))) : null,
    h('section', { class: 'detail-sec' }, h('h3', { text: 'Vendor answer' }), vendorAnswer(o)),
    h('section', { class: 'detail-sec' }, h('h3', { text: `Requests (${(o.requests || []).length})` }),
      (o.requests || []).length ? h('p', { class: 'small muted', text: 'Secrets are shown as [redacted].' })
        : h('p', { class: 'muted small', text: o.batch ? 'Sent in a batch: its request is under Batch above.' : 'No request: the event was not sent.' }),
      (o.requests || []).map(renderRequest)),
    h('section', { class: 'detail-sec' }, h('h3', { text: 'Input event' }),
      item.event ? codeBlock(pretty(item.event), 'input-event') : h('p', { class: 'muted small' }, spinner(), 'Loading the input event…')));
}

// The batch an event went in, and its own result there (the reason is the
// vendor's words for a contact it refused: shown as text, like all of it).
function batchSection(o, out, onBatch) {
  const b = o.batch;
  const own = out === 'delivered' ? 'delivered'
    : out === 'retrying' ? 'sent again: ' + (o.reason || '')
    : out === 'dead_letter' ? 'failed: ' + (o.reason || '')
    : out + (o.reason ? ': ' + o.reason : '');
  return h('section', { class: 'detail-sec', id: 'detail-batch', dataset: { batch: String(b.id) } }, h('h3', { text: 'Batch' }),
    kv([
      ['Batch', h('span', { id: 'detail-batch-id', text: String(b.id) })],
      ['Events in it', h('span', { id: 'detail-batch-size', text: String(b.size) })],
      ['Request', h('code', { class: 'mono', id: 'detail-batch-request', text: b.request || '' })],
      ['At the vendor', h('span', { id: 'detail-batch-status', text: batchStatus(b) })],
      ['This event', h('span', { id: 'detail-batch-result', text: own })],
    ]),
    onBatch ? button(`Show batch ${b.id}'s events`, () => onBatch(b.id), { small: true, kind: 'ghost', id: 'detail-batch-show' }) : null);
}

// What to do about a reason, in the console's terms: an event not enabled
// (or disabled) is switched on in the integration's Events tab (the API's
// reason carries the advice for a config file, which the CLI shows).
function reasonAdvice(reason, integration) {
  const name = consoleReason(reason).enable;
  if (!name || !integration.id) return null;
  return h('p', { class: 'small advice', id: 'detail-advice' }, 'To send it, enable ', h('strong', { text: name }), ' in the ',
    h('a', { href: '#/integration/' + enc(integration.id) + '/events', text: 'Events tab' }), '.');
}

// Events picked in Live Events for the blueprint editor's samples panel.
export function pickSample(vendor, event) {
  const k = 'bp.editor.picked.' + vendor;
  let list = [];
  try { list = JSON.parse(sessionStorage.getItem(k) || '[]'); } catch (e) { list = []; }
  const text = JSON.stringify(event);
  list = [text].concat(list.filter((x) => x !== text)).slice(0, 20);
  sessionStorage.setItem(k, JSON.stringify(list));
}

export function pickedSamples(vendor) {
  try { return JSON.parse(sessionStorage.getItem('bp.editor.picked.' + vendor) || '[]'); } catch (e) { return []; }
}
