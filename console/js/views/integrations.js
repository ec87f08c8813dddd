// Integrations: the installed ones, the Integration Library (the catalog
// grouped by category) and the Install form generated from a blueprint's
// config fields.
import { h, replace, button, badge, empty, errorBox, toast, fmtAgo, fmtTime, spinner, kv } from '../dom.js';
import { post, enc, ApiError } from '../api.js';
import { getCatalog, getVendor, listIntegrations, categoryName, monogram, tileClass, healthBadge } from '../data.js';
import { control, fieldRow, advancedKeys, advancedSection, FieldError } from '../configfields.js';

function tabs(active, counts) {
  const t = (id, label, href, count) => h('a', {
    href, class: 'tab', role: 'tab', id: 'tab-' + id, 'aria-selected': String(active === id),
  }, label, count != null ? h('span', { class: 'tab-count', text: String(count) }) : null);
  return h('div', { class: 'tabs', role: 'tablist' },
    t('installed', 'Installed', '#/integrations', counts.installed),
    t('library', 'Integration Library', '#/integrations/library', counts.library));
}

export async function render(main, params, ctx) {
  const body = h('div', { class: 'tab-body' }, h('p', { class: 'loading' }, spinner(), 'Loading…'));
  const head = h('div', { class: 'page-head' },
    h('div', {}, h('h1', { text: 'Integrations' }),
      h('p', { class: 'page-sub', text: 'Vendors Signal delivers events to, server side.' })));
  const page = h('div', { class: 'page' }, head, tabs(params.tab, {}), body);
  replace(main, page);
  const [cat, ints] = await Promise.all([getCatalog(true), listIntegrations()]);
  if (!ctx.isCurrent()) return;
  page.replaceChild(tabs(params.tab, { installed: ints.length, library: cat.length }), page.children[1]);
  if (params.tab === 'library') replace(body, library(cat, ints, ctx));
  else replace(body, installed(ints, cat, ctx));
}

function vendorTile(name, small) {
  return h('span', { class: [tileClass(name), small ? 'tile-sm' : ''], 'aria-hidden': 'true', text: monogram(name) });
}

function installed(ints, cat, ctx) {
  if (!ints.length) {
    return empty('No integrations installed yet',
      'Pick a vendor in the Integration Library, fill in its settings and install it: events sent to it are delivered at once.',
      h('a', { class: 'btn btn-primary', href: '#/integrations/library', text: 'Open the Integration Library' }));
  }
  const names = Object.fromEntries(cat.map((c) => [c.vendor, c.name]));
  const rows = ints.map((it) => {
    const d = it.delivery || {};
    const bp = it.blueprint || {};
    const failing = (d.errors || 0) + (d.dead_lettered || 0);
    return h('tr', { dataset: { id: it.id } },
      h('td', {}, h('a', { class: 'row-title', href: '#/integration/' + enc(it.id) },
        vendorTile(names[it.vendor] || it.vendor, true), h('span', { text: it.name }))),
      h('td', { class: 'cell-health' }, healthBadge(it), bp.status === 'rejected' ? [' ', badge('edit rejected', 'warn')] : null),
      h('td', { class: 'hide-narrow', text: names[it.vendor] || it.vendor }),
      h('td', { class: 'num', text: String(d.delivered || 0) }),
      h('td', { class: 'num hide-narrow', text: String(d.dropped || 0) }),
      h('td', { class: 'num' }, failing ? h('span', { class: 'text-err', text: String(failing) }) : '0'),
      h('td', { class: 'num hide-narrow', text: String(d.held || 0) }),
      h('td', { class: 'hide-narrow muted', text: 'rev ' + it.revision }),
      h('td', { class: 'hide-narrow muted', title: fmtTime(it.created_at), text: fmtAgo(it.created_at) }));
  });
  return h('div', { class: 'card card-flush' }, h('table', { class: 'table', id: 'integrations-table' },
    h('thead', {}, h('tr', {},
      h('th', { text: 'Name' }), h('th', { text: 'Health' }), h('th', { class: 'hide-narrow', text: 'Vendor' }),
      h('th', { class: 'num', text: 'Delivered' }), h('th', { class: 'num hide-narrow', text: 'Dropped' }), h('th', { class: 'num', text: 'Failed' }),
      h('th', { class: 'num hide-narrow', text: 'Held' }),
      h('th', { class: 'hide-narrow', text: 'Config' }), h('th', { class: 'hide-narrow', text: 'Installed' }))),
    h('tbody', {}, rows)),
  h('p', { class: 'small muted card-pad', id: 'integrations-window', text: 'Counts since the server started; each integration\'s page also shows the last hour.' }));
}

function library(cat, ints, ctx) {
  const can = ctx.session.can;
  const groups = new Map();
  for (const c of cat) {
    const g = categoryName(c.category);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(c);
  }
  const count = Object.create(null);
  for (const i of ints) count[i.vendor] = (count[i.vendor] || 0) + 1;
  const sections = [...groups.keys()].sort().map((g) => h('section', { class: 'lib-group', dataset: { category: g } },
    h('h2', { class: 'lib-group-title', text: g }),
    h('div', { class: 'lib-grid' }, groups.get(g).sort((a, b) => a.name.localeCompare(b.name)).map((c) => {
      const status = c.status || 'stable';
      return h('article', { class: 'lib-card', id: 'lib-' + c.vendor, dataset: { vendor: c.vendor } },
        status !== 'stable' && status !== 'ga'
          ? h('div', { class: 'lib-banner lib-banner-' + status, role: 'note' },
            h('strong', { text: status.toUpperCase() }), ' ',
            h('span', { text: status === 'alpha' ? 'Early access: behaviour and settings may still change.' : 'Preview.' }))
          : null,
        h('div', { class: 'lib-card-head' }, vendorTile(c.name),
          h('div', {}, h('h3', { class: 'lib-name', text: c.name }),
            h('p', { class: 'lib-meta', text: categoryName(c.category) + (count[c.vendor] ? ` · ${count[c.vendor]} installed` : '') }))),
        h('p', { class: 'lib-desc', text: c.description || c.summary || '' }),
        c.load_error ? h('p', { class: 'alert alert-err lib-error' }, h('strong', { text: 'Blueprint does not load: ' }), h('span', { text: String(c.load_error) })) : null,
        h('div', { class: 'lib-actions' },
          can.install
            ? h('a', { class: ['btn', 'btn-primary', c.load_error ? 'btn-disabled' : ''], href: '#/install/' + enc(c.vendor),
              id: 'install-' + c.vendor, text: 'Install', 'aria-disabled': c.load_error ? 'true' : null })
            : h('span', { class: 'muted small', text: 'Installing needs the editor role or above.' }),
          h('a', { class: 'btn btn-ghost', href: '#/editor/' + enc(c.vendor), text: 'View blueprint' })));
    }))));
  return h('div', { class: 'library', id: 'library' }, sections.length ? sections : empty('The catalog is empty', 'No blueprint folder was found by the server.'));
}

// ---- Install -------------------------------------------------------------------------------

// config_rules in either shape: {"together":[[a,b]]} or [{"rule":"together","fields":[…]}]
export function togetherGroups(c) {
  const r = c.config_rules || c.rules || {};
  const out = [];
  if (Array.isArray(r)) {
    for (const x of r) if (x && /together|all_or_none/.test(x.rule || x.type || '') && Array.isArray(x.fields)) out.push(x.fields);
  } else if (r && Array.isArray(r.together)) {
    for (const g of r.together) if (Array.isArray(g)) out.push(g);
  }
  return out;
}

function commonPrefix(labels) {
  const words = labels.map((l) => String(l).split(/\s+/));
  const first = words[0] || [];
  let n = 0;
  while (n < first.length && words.every((w) => w[n] === first[n])) n++;
  return first.slice(0, n).join(' ');
}

// "Event Tracking account ID (actid)" -> "Event Tracking account ID": the
// name a sentence uses
const shortLabel = (f) => String(f.label || f.key).replace(/\s*\([^)]*\)\s*$/, '');

function andList(xs) {
  return xs.length <= 1 ? xs.join('') : xs.slice(0, -1).join(', ') + ' and ' + xs[xs.length - 1];
}

// The all-or-none rule of a together group, as a sentence.
export function togetherSentence(gf) {
  const both = gf.length === 2;
  return `${andList(gf.map(shortLabel))} go together: fill in ${both ? 'both or neither' : 'all of them or none'}.`;
}

// Which field a 422 names: "field":"config.api_url", else the message's
// "config field 'api_url'" / "'event_tracking_account_id' is missing".
export function fieldOfError(err, keys) {
  if (err.field) {
    const f = String(err.field).replace(/^config\./, '');
    if (keys.includes(f) || f === 'name') return f;
  }
  const m = String(err.message || '');
  for (const re of [/'([^']+)' is missing/, /config field '([^']+)'/, /field '([^']+)'/]) {
    const x = re.exec(m);
    if (x && keys.includes(x[1])) return x[1];
  }
  for (const x of m.matchAll(/'([^']+)'/g)) if (keys.includes(x[1])) return x[1];
  if (/\bname\b/.test(m) && err.code === 'CONFLICT') return 'name';
  return null;
}

export async function renderInstall(main, params, ctx) {
  replace(main, h('div', { class: 'page' }, h('p', { class: 'loading' }, spinner(), 'Loading…')));
  const c = await getVendor(params.vendor);
  if (!ctx.isCurrent()) return;
  const page = h('div', { class: 'page page-install' });
  replace(main, page);
  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' },
    h('a', { href: '#/integrations', text: 'Integrations' }), ' / ',
    h('a', { href: '#/integrations/library', text: 'Integration Library' }), ' / ',
    h('span', { text: c.name }));
  page.appendChild(crumbs);
  page.appendChild(h('div', { class: 'page-head' },
    h('div', { class: 'page-head-title' }, vendorTile(c.name),
      h('div', {}, h('h1', { text: 'Install ' + c.name }),
        h('p', { class: 'page-sub', text: categoryName(c.category) + ' · blueprint ' + c.vendor })))));
  if (c.status && c.status !== 'stable' && c.status !== 'ga') {
    page.appendChild(h('div', { class: 'lib-banner lib-banner-' + c.status + ' banner-wide', role: 'note' },
      h('strong', { text: String(c.status).toUpperCase() }), ' ',
      h('span', { text: 'This integration is in early access: behaviour and settings may still change.' })));
  }
  if (c.description) page.appendChild(h('p', { class: 'lead', id: 'install-description', text: c.description }));
  if (!ctx.session.can.install) {
    page.appendChild(h('div', { class: 'alert alert-info' }, 'Installing an integration needs the editor role or above; you are signed in as ',
      h('strong', { text: ctx.session.role }), '.'));
    return;
  }

  const fields = c.config_fields || [];
  const keys = fields.map((f) => f.key);
  const groups = togetherGroups(c).map((g) => g.map((k) => fields.find((x) => x.key === k)).filter(Boolean)).filter((g) => g.length > 1);
  const inGroup = new Map();
  groups.forEach((g, i) => g.forEach((f) => inGroup.set(f.key, i)));
  const advanced = advancedKeys(fields, new Set(inGroup.keys()));
  const controls = {};   // key -> {ctl, wrap, error, field}

  function row(f) {
    const id = 'cfg-' + f.key;
    const ctl = control(f, { id, mode: 'install' });
    const { wrap, error } = fieldRow(f, ctl, id);
    controls[f.key] = { ctl, wrap, error, field: f, get input() { return ctl.focusEl; } };
    wrap.addEventListener('input', () => setError(f.key, null));
    wrap.addEventListener('change', () => setError(f.key, null));
    return wrap;
  }

  const nameInput = h('input', { type: 'text', class: 'input', id: 'install-name', name: 'name', value: c.name,
    autocomplete: 'off', required: true, 'aria-describedby': 'install-name-error' });
  const nameError = h('p', { class: 'field-error', id: 'install-name-error', role: 'alert' });
  const nameRow = h('div', { class: 'field' },
    h('label', { class: 'field-label', for: 'install-name' }, 'Integration name', h('abbr', { class: 'req-mark', title: 'required', text: '*' })),
    nameInput, h('p', { class: 'field-help', text: 'How this installation is listed; unique per workspace.' }), nameError);
  controls.name = { input: nameInput, wrap: nameRow, error: nameError, field: { label: 'Integration name' } };
  nameInput.addEventListener('input', () => setError('name', null));

  const variants = c.variants || ['default'];
  const variantSel = h('select', { class: 'input', id: 'install-variant' }, variants.map((v) => h('option', { value: v, text: v })));

  const rendered = new Set();
  const cfgNodes = [];
  const advRows = [];
  for (const f of fields) {
    if (rendered.has(f.key)) continue;
    if (inGroup.has(f.key)) {
      const gf = groups[inGroup.get(f.key)];
      gf.forEach((x) => rendered.add(x.key));
      const title = commonPrefix(gf.map((x) => x.label || x.key)) || 'These settings';
      cfgNodes.push(h('fieldset', { class: 'field-group', id: 'group-' + gf[0].key, dataset: { together: gf.map((x) => x.key).join(' ') } },
        h('legend', { text: title }),
        h('p', { class: 'group-rule', dataset: { rule: 'together' } },
          h('strong', { text: 'All or none. ' }), togetherSentence(gf),
          gf.some((x) => /page and track/.test(x.help || '')) ? ' Without them, page and track events are not sent (identify still is).' : ''),
        gf.map(row)));
    } else {
      rendered.add(f.key);
      if (advanced.has(f.key)) advRows.push(row(f));
      else cfgNodes.push(row(f));
    }
  }
  const advSection = advRows.length
    ? advancedSection(c, advRows, [...advanced].map((k) => controls[k].ctl), { id: 'install-advanced' })
    : null;

  const summary = h('div', { class: 'form-summary', id: 'install-summary', role: 'alert' });
  const submit = button('Install Integration', null, { kind: 'primary', type: 'submit', id: 'install-submit' });
  const form = h('form', { class: 'form card', id: 'install-form', novalidate: true },
    h('h2', { class: 'card-title', text: 'Settings' }),
    nameRow,
    variants.length > 1 ? h('div', { class: 'field' }, h('label', { class: 'field-label', for: 'install-variant', text: 'Variant' }), variantSel) : null,
    cfgNodes,
    advSection,
    summary,
    h('div', { class: 'form-actions' }, submit,
      h('a', { class: 'btn btn-ghost', href: '#/integrations/library', text: 'Cancel' }),
      h('span', { class: 'muted small', text: 'Secrets are stored encrypted and never shown again.' })));

  function setError(key, msg) {
    const c2 = controls[key];
    if (!c2) return;
    c2.error.textContent = msg || '';
    c2.wrap.classList.toggle('invalid', !!msg);
    c2.input.setAttribute('aria-invalid', msg ? 'true' : 'false');
  }
  function focusField(key, el) {
    const c2 = controls[key];
    const target = el || c2.input;
    const d = c2.wrap.closest('details');
    if (d) d.open = true;
    // the field may be far above the summary the answer is shown in
    c2.wrap.scrollIntoView({ block: 'center' });
    target.focus({ preventScroll: true });
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    replace(summary);
    for (const k of Object.keys(controls)) setError(k, null);
    const config = {};
    let firstBad = null;
    const bad = (key, msg, el) => { setError(key, msg); if (!firstBad) firstBad = [key, el]; };
    if (!nameInput.value.trim()) bad('name', 'A name is required.');
    for (const f of fields) {
      let v;
      try { v = controls[f.key].ctl.install(); } catch (err) {
        if (!(err instanceof FieldError)) throw err;
        bad(f.key, err.message, err.focus);
        continue;
      }
      if (v === undefined) {
        if (f.required) bad(f.key, (f.label || f.key) + ' is required.');
        continue;
      }
      config[f.key] = v;
    }
    // all or none: name the empty ones of a group partly filled in
    for (const gf of groups) {
      const filled = gf.filter((x) => config[x.key] !== undefined);
      if (filled.length && filled.length < gf.length) {
        for (const x of gf) {
          if (config[x.key] === undefined) {
            bad(x.key, `Fill in ${shortLabel(x)} too, or clear ${andList(filled.map(shortLabel))}: ${gf.length === 2 ? 'the two' : 'these'} go together.`);
          }
        }
      }
    }
    if (firstBad) { focusField(firstBad[0], firstBad[1]); return; }
    submit.disabled = true;
    submit.textContent = 'Installing…';
    try {
      const r = await post('/v1/admin/integration-catalog/' + enc(c.vendor) + '/install',
        { name: nameInput.value.trim(), variant: variantSel.value || variants[0], config, delivery_mode: 'server_side' });
      const failed = (r.checks || []).filter((x) => !x.ok);
      toast(failed.length ? `Installed ${r.name}; a check failed` : `Installed ${r.name}`, failed.length ? 'err' : 'ok');
      ctx.checks = { id: r.id, list: r.checks || [] };   // the integration page shows them once
      ctx.navigate('#/integration/' + enc(r.id));
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Install Integration';
      if (!(err instanceof ApiError)) throw err;
      const key = fieldOfError(err, keys);
      if (key) {
        setError(key, err.message.replace(/^config:\d+: /, ''));
        focusField(key);
        summary.appendChild(h('div', { class: 'alert alert-err' }, h('span', { text: 'The server refused this setting: ' }),
          h('a', { href: '#', class: 'link', text: (controls[key].field && controls[key].field.label) || key,
            onclick: (ev) => { ev.preventDefault(); focusField(key); } }),
          err.code ? h('code', { class: 'alert-code', text: err.code }) : null));
      } else {
        summary.appendChild(errorBox(err, 'Install failed'));
      }
    }
  });

  const evRows = (c.events || []).map((ev) => h('tr', {},
    h('td', { text: ev.name }), h('td', {}, h('code', { text: ev.type })), h('td', {}, h('code', { text: ev.mapping })),
    h('td', {}, ev.enabled === false ? badge('off', 'muted') : badge('on', 'ok'))));
  const aside = h('aside', { class: 'install-aside' },
    h('div', { class: 'card' }, h('h2', { class: 'card-title', text: 'What it sends' }),
      h('table', { class: 'table table-compact' },
        h('thead', {}, h('tr', {}, h('th', { text: 'Event' }), h('th', { text: 'Type' }), h('th', { text: 'Mapping' }), h('th', { text: '' }))),
        h('tbody', {}, evRows)),
      c.custom_events ? h('p', { class: 'small muted' }, 'Other track events: ', String(c.custom_events),
        ' (enable them by name on the integration page).') : null),
    h('div', { class: 'card' }, h('h2', { class: 'card-title', text: 'Delivery' }),
      kv([
        ['Rate limit', c.rate_limit_rps != null ? `${c.rate_limit_rps} requests/s per account` : null],
        ['Attempts', c.retry_max_attempts != null ? `${c.retry_max_attempts} before a dead letter` : null],
        ['Consent', c.consent_category ? h('code', { text: c.consent_category }) : null],
      ])),
    h('div', { class: 'card card-muted' }, h('h2', { class: 'card-title', text: 'After installing' }),
      h('ol', { class: 'steps' },
        h('li', { text: 'Send a test event (the integration page has a button for it).' }),
        h('li', { text: 'Check Live Events: a 200 or 201 from the vendor means it arrived.' }),
        h('li', { text: 'Enable custom track events by name in the Events tab.' }))));
  page.appendChild(h('div', { class: 'install-layout' }, form, aside));
  nameInput.focus();
}

// What install and PATCH checked without sending data (the blueprint's
// verify: requests): an alert listing the failed checks, or null when every
// check passed.  The change was made either way.
export function checksAlert(checks) {
  const failed = (checks || []).filter((x) => !x.ok);
  if (!failed.length) return null;
  return h('div', { class: 'alert alert-warn', id: 'checks', role: 'alert' },
    h('strong', { text: 'Saved, but the vendor check found a problem:' }),
    h('ul', {}, failed.map((x) => h('li', {}, h('span', { text: x.message }), h('code', { class: 'alert-code', text: x.check })))));
}
