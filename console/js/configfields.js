// A blueprint's config fields as form controls and as read-only values: one
// place for the Install form and the integration page's config edit.
//
// Field types (the catalog's config_fields[].type): string, secret, url,
// integer, boolean (true/false), list (strings; the server also takes one
// comma-separated string) and map (names to string values).  GET integration
// echoes a value as it was given, so a list may come back as ["1","2"] or as
// "1, 2", a boolean as true or "true": every reader here takes both.
import { h, button, badge, isRaw } from './dom.js';

const NEW_KINDS = new Set(['boolean', 'list', 'map']);

function str(x) {
  if (x == null) return '';
  if (isRaw(x)) return x.rawJSON;
  return typeof x === 'object' ? JSON.stringify(x) : String(x);
}

export function boolOf(v) {
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  return null;
}

// A list field's values, trimmed, empty ones left out.
export function listOf(v) {
  if (v == null || v === '') return [];
  const a = Array.isArray(v) ? v : String(v).split(',');
  return a.map((x) => str(x).trim()).filter(Boolean);
}

// A map field's entries as [name, value] strings.
export function entriesOf(v) {
  if (!v || typeof v !== 'object' || Array.isArray(v) || isRaw(v)) return [];
  return Object.entries(v).map(([k, x]) => [k, str(x)]);
}

const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);

// Column names and examples of a map field, read from its help text when it
// says "X to Y, e.g. a: b" (tag_on_events: "event name to tag, e.g. Order
// Completed: purchased"); "Name" and "Value" otherwise.
export function mapColumns(f) {
  const help = String(f.help || '').replace(/^optional:\s*/i, '');
  const m = /^([^,;:]{1,40}?) to ([^,;:]{1,60}?)\s*(?:[,;]|$)/.exec(help);
  const ex = /e\.g\.\s*([^:,;]{1,40}):\s*([^,;]{1,40})/.exec(help);
  return {
    key: m ? cap(m[1].trim()) : 'Name',
    value: m ? cap(m[2].split(' or ')[0].trim()) : 'Value',
    exKey: ex ? ex[1].trim() : '',
    exValue: ex ? ex[2].trim() : '',
  };
}

// "(e.g. 1, 3)" in a list field's help becomes its placeholder.
function listExample(f) {
  const m = /e\.g\.\s*([^)]{1,40})\)/.exec(String(f.help || ''));
  return m ? 'e.g. ' + m[1].trim() : 'comma-separated, e.g. a, b';
}

export class FieldError extends Error {
  constructor(message, focus) { super(message); this.focus = focus; }
}

// ---- controls ------------------------------------------------------------------------------

// control(f, {id, mode: 'install'|'edit', value}) -> {
//   el: what the form shows, focusEl: what a message about it focuses,
//   isSet(): whether it holds a value (for the advanced section's count),
//   install(): the value to send, or undefined to leave it out,
//   change(): in edit mode, the value to PATCH (null clears it), or undefined when unchanged;
//   both throw FieldError for a value that cannot be sent }
export function control(f, opts) {
  const kind = f.type === 'secret' || NEW_KINDS.has(f.type) ? f.type : 'text';
  if (kind === 'boolean') return boolControl(f, opts);
  if (kind === 'list') return listControl(f, opts);
  if (kind === 'map') return mapControl(f, opts);
  return textControl(f, opts, kind === 'secret');
}

function textControl(f, { id, mode, value }, secret) {
  const def = f.default == null ? '' : String(f.default);
  const common = { id, name: f.key, class: 'input', autocomplete: 'off', spellcheck: false,
    'aria-describedby': id + '-help ' + id + '-error', required: !!f.required };
  const cur = value;
  let input, el;
  if (secret) {
    input = h('input', Object.assign({}, common, { type: 'password', autocomplete: 'new-password',
      placeholder: mode === 'edit' ? (cur ? 'unchanged: type a new value to replace it' : 'not set') : null }));
    const show = h('button', { type: 'button', class: 'btn btn-ghost btn-sm input-addon', 'aria-label': 'Show ' + (f.label || f.key), text: 'Show' });
    show.addEventListener('click', () => {
      const vis = input.type === 'password';
      input.type = vis ? 'text' : 'password';
      show.textContent = vis ? 'Hide' : 'Show';
    });
    el = h('div', { class: 'input-group' }, input, show);
  } else {
    const opts = f.enum || f.options || f.values;
    const start = mode === 'edit' ? (cur == null ? '' : str(cur)) : def;
    if (Array.isArray(opts)) {
      input = h('select', common, f.required ? null : h('option', { value: '', text: '—' }),
        opts.map((o) => h('option', { value: String(o), text: String(o), selected: String(o) === start })));
    } else {
      const extra = f.type === 'url' ? { inputmode: 'url', placeholder: 'https://…' }
        : f.type === 'integer' || f.type === 'number' ? { inputmode: 'numeric', placeholder: '123' } : {};
      if (mode === 'edit' && def) extra.placeholder = def;
      input = h('input', Object.assign({ type: 'text', value: start }, common, extra));
    }
    el = input;
  }
  return {
    el, focusEl: input,
    // a default the form filled in is not a choice of the user's
    isSet: () => input.value.trim() !== '' && (mode === 'edit' || input.value.trim() !== def),
    install() {
      const v = input.value.trim();
      return v === '' ? undefined : v;
    },
    change() {
      const v = input.value.trim();
      if (secret) return v ? v : undefined;
      const was = cur == null ? '' : str(cur);
      if (v === was) return undefined;
      return v === '' ? null : v;
    },
  };
}

// boolean: a switch.  Install: sent when touched or when the field has a
// default; edit: sent when it differs from what is in effect.
function boolControl(f, { id, mode, value }) {
  const def = boolOf(f.default);
  const cur = boolOf(value);
  const start = mode === 'edit' ? (cur != null ? cur : def === true) : def === true;
  const input = h('input', { type: 'checkbox', class: 'switch-input', id, name: f.key, role: 'switch', checked: start,
    'aria-describedby': id + '-help ' + id + '-error' });
  const state = h('span', { class: 'switch-state', 'aria-hidden': 'true', text: start ? 'On' : 'Off' });
  let touched = false;
  input.addEventListener('change', () => { touched = true; state.textContent = input.checked ? 'On' : 'Off'; });
  // a label around it, as toggle() does, so a click on the track flips it
  const el = h('label', { class: 'switch' }, input,
    h('span', { class: 'switch-track', 'aria-hidden': 'true' }, h('span', { class: 'switch-knob' })));
  return {
    el, focusEl: input, state, bool: true,
    isSet: () => input.checked,
    install: () => (touched || def != null ? input.checked : undefined),
    change() {
      const was = cur != null ? cur : def === true;
      return input.checked === was ? undefined : input.checked;
    },
  };
}

// list: one text input of comma-separated values, with the values it will
// send shown under it.
function listControl(f, { id, mode, value }) {
  const cur = listOf(value);
  const start = mode === 'edit' ? cur.join(', ') : listOf(f.default).join(', ');
  const input = h('input', { type: 'text', class: 'input', id, name: f.key, value: start, autocomplete: 'off', spellcheck: false,
    placeholder: listExample(f), 'aria-describedby': id + '-help ' + id + '-error ' + id + '-values' });
  const values = h('p', { class: 'list-values', id: id + '-values', 'aria-live': 'polite' });
  const paint = () => {
    const xs = listOf(input.value);
    values.replaceChildren(...(xs.length
      ? [h('span', { class: 'muted', text: xs.length === 1 ? '1 value: ' : `${xs.length} values: ` }), chips(xs)]
      : []));
  };
  input.addEventListener('input', paint);
  paint();
  return {
    el: h('div', { class: 'list-input' }, input, values), focusEl: input,
    isSet: () => listOf(input.value).length > 0,
    install() {
      const xs = listOf(input.value);
      return xs.length ? xs : undefined;
    },
    change() {
      const xs = listOf(input.value);
      if (xs.length === cur.length && xs.every((x, i) => x === cur[i])) return undefined;
      return xs.length ? xs : null;
    },
  };
}

// map: rows of name → value with add and remove.  A row with both inputs
// empty is ignored; one with only one of them is refused here.
function mapControl(f, { id, mode, value }) {
  const cols = mapColumns(f);
  const cur = entriesOf(value);
  const label = f.label || f.key;
  const rows = h('div', { class: 'kv-rows' });
  let seq = 0;

  function renumber() {
    [...rows.children].forEach((row, i) => {
      row.kIn.setAttribute('aria-label', `${label}: ${cols.key.toLowerCase()}, row ${i + 1}`);
      row.vIn.setAttribute('aria-label', `${label}: ${cols.value.toLowerCase()}, row ${i + 1}`);
      row.rm.setAttribute('aria-label', `Remove row ${i + 1} of ${label}`);
    });
  }
  function addRow(k, v) {
    const n = seq++;
    const kIn = h('input', { type: 'text', class: 'input kv-key', id: `${id}-k${n}`, value: k || '', autocomplete: 'off', spellcheck: false,
      placeholder: cols.exKey ? 'e.g. ' + cols.exKey : cols.key });
    const vIn = h('input', { type: 'text', class: 'input kv-value', id: `${id}-v${n}`, value: v || '', autocomplete: 'off', spellcheck: false,
      placeholder: cols.exValue ? 'e.g. ' + cols.exValue : cols.value });
    const rm = h('button', { type: 'button', class: 'icon-btn kv-remove', title: 'Remove this row', text: '×' });
    const row = h('div', { class: 'kv-row' }, kIn, h('span', { class: 'kv-arrow', 'aria-hidden': 'true', text: '→' }), vIn, rm);
    Object.assign(row, { kIn, vIn, rm });
    rm.addEventListener('click', () => {
      const i = [...rows.children].indexOf(row);
      if (rows.children.length > 1) row.remove();
      else { kIn.value = ''; vIn.value = ''; }
      renumber();
      const next = rows.children[Math.min(i, rows.children.length - 1)];
      if (next) next.kIn.focus();
      rows.dispatchEvent(new Event('input', { bubbles: true }));
    });
    rows.appendChild(row);
    renumber();
    return row;
  }
  const start = mode === 'edit' ? cur : entriesOf(f.default);
  start.forEach(([k, v]) => addRow(k, v));
  if (!start.length) addRow();
  const add = button('+ Add row', () => addRow().kIn.focus(), { small: true, kind: 'ghost', class: 'kv-add' });

  function read() {
    const out = {};
    const seen = new Map();
    [...rows.children].forEach((row, i) => {
      const k = row.kIn.value.trim();
      const v = row.vIn.value.trim();
      if (!k && !v) return;
      if (!k) throw new FieldError(`Row ${i + 1}: fill in the ${cols.key.toLowerCase()} for “${v}”, or clear the row.`, row.kIn);
      if (!v) throw new FieldError(`Row ${i + 1}: fill in the ${cols.value.toLowerCase()} for “${k}”, or clear the row.`, row.vIn);
      if (seen.has(k)) throw new FieldError(`“${k}” is in rows ${seen.get(k) + 1} and ${i + 1}: keep one.`, row.kIn);
      seen.set(k, i);
      out[k] = v;
    });
    return out;
  }
  const el = h('div', { class: 'kv-editor', id, role: 'group', 'aria-labelledby': id + '-label', 'aria-describedby': id + '-help ' + id + '-error' },
    h('div', { class: 'kv-head', 'aria-hidden': 'true' },
      h('span', { text: cols.key }), h('span'), h('span', { text: cols.value }), h('span')),
    rows, add);
  return {
    el,
    get focusEl() { return rows.children[0].kIn; },
    isSet: () => [...rows.children].some((r) => r.kIn.value.trim() || r.vIn.value.trim()),
    install() {
      const o = read();
      return Object.keys(o).length ? o : undefined;
    },
    change() {
      const o = read();
      const e = Object.entries(o);
      if (e.length === cur.length && e.every(([k, v], i) => k === cur[i][0] && v === cur[i][1])) return undefined;
      return e.length ? o : null;
    },
  };
}

// One labelled field: label (required mark or "optional", secret tag), the
// control, help (with the default), and the place for its error.
export function fieldRow(f, ctl, id, opts = {}) {
  const error = h('p', { class: 'field-error', id: id + '-error', role: 'alert' });
  const marks = [
    f.required ? h('abbr', { class: 'req-mark', title: 'required', text: '*' }) : opts.optionalMark !== false ? h('span', { class: 'optional', text: 'optional' }) : null,
    f.type === 'secret' ? h('span', { class: 'field-tag', text: 'secret' }) : null,
  ];
  const showDefault = f.default != null && f.type !== 'secret';
  // "optional: …" is said by the mark next to the label already
  const text = cap(String(f.help || '').replace(/^optional:\s*/i, ''));
  const help = h('p', { class: 'field-help', id: id + '-help' }, text,
    showDefault ? h('span', { class: 'muted' }, text && !/[.!?]$/.test(text) ? '. Default: ' : ' Default: ',
      h('code', { text: String(f.default) }), '.') : null);
  let wrap;
  if (f.type === 'boolean') {
    wrap = h('div', { class: 'field field-bool', dataset: { field: f.key } },
      h('div', { class: 'bool-row' }, ctl.el,
        h('label', { class: 'field-label', for: id, id: id + '-label' }, f.label || f.key, marks), ctl.state),
      help, error);
  } else if (f.type === 'map') {
    wrap = h('div', { class: 'field field-map', dataset: { field: f.key } },
      h('label', { class: 'field-label', id: id + '-label', for: ctl.focusEl.id }, f.label || f.key, marks), help, ctl.el, error);
  } else {
    wrap = h('div', { class: 'field', dataset: { field: f.key } },
      h('label', { class: 'field-label', for: id, id: id + '-label' }, f.label || f.key, marks), ctl.el, help, error);
  }
  return { wrap, error };
}

// Optional fields that go under an "Advanced" disclosure so the form stays
// short: from the first optional boolean, list or map field on, every
// optional field (the blueprint lists its depth options together; a string
// among them, like deep_data_store, belongs with them).
export function advancedKeys(fields, skip = new Set()) {
  const out = new Set();
  let on = false;
  for (const f of fields) {
    if (f.required || skip.has(f.key)) continue;
    if (NEW_KINDS.has(f.type)) on = true;
    if (on) out.add(f.key);
  }
  return out;
}

export function advancedTitle(cat) {
  return ['marketing_automation', 'crm', 'email'].includes(cat.category) ? 'Advanced: contact depth' : 'Advanced settings';
}

// A <details> holding the advanced fields, its summary counting those set.
export function advancedSection(cat, rows, ctls, opts = {}) {
  const count = h('span', { class: 'adv-count' });
  const n = rows.length;
  const paint = () => {
    const set = ctls.filter((c) => c.isSet()).length;
    count.textContent = set ? `${set} of ${n} set` : `${n} optional settings, each off until set`;
    count.classList.toggle('adv-count-set', set > 0);
  };
  const d = h('details', { class: 'advanced', id: opts.id, open: !!opts.open },
    h('summary', { class: 'advanced-summary' }, h('span', { class: 'advanced-title', text: advancedTitle(cat) }), count),
    h('div', { class: 'advanced-body' }, rows));
  d.addEventListener('input', paint);
  d.addEventListener('change', paint);
  paint();
  return d;
}

// ---- read-only values ----------------------------------------------------------------------

export function chips(xs) {
  return h('span', { class: 'chips' }, xs.map((x) => h('code', { class: 'chip', text: x })));
}

// A stored config value as the integration page shows it: secrets masked,
// booleans as on/off, lists as chips, maps as name → value lines.
export function valueView(f, v) {
  const type = f ? f.type : Array.isArray(v) ? 'list' : v && typeof v === 'object' && !isRaw(v) ? 'map' : typeof v === 'boolean' ? 'boolean' : 'string';
  if (type === 'boolean') {
    const b = boolOf(v);
    const d = boolOf(f && f.default);
    if (b == null && v != null && v !== '') return h('code', { class: 'break', text: str(v) });
    const on = b != null ? b : d === true;
    return h('span', { class: 'bool-view' }, badge(on ? 'on' : 'off', on ? 'ok' : 'muted'),
      // "off (not set)": the state first, then why it is so
      b == null ? h('span', { class: 'muted small', text: d != null ? ' (default)' : ' (not set)' }) : null);
  }
  if (v == null || v === '') {
    return f && f.default != null ? h('span', { class: 'muted' }, 'default ', h('code', { text: String(f.default) })) : h('span', { class: 'muted', text: 'not set' });
  }
  if ((f && f.type === 'secret') || v === '********') return h('span', { class: 'secret-mask', title: 'stored encrypted; never shown' }, '••••••••', h('span', { class: 'muted small', text: ' set' }));
  if (type === 'list') {
    const xs = listOf(v);
    return xs.length ? chips(xs) : h('span', { class: 'muted', text: 'none' });
  }
  if (type === 'map') {
    const e = entriesOf(v);
    if (!e.length) return typeof v === 'object' ? h('span', { class: 'muted', text: 'none' }) : h('code', { class: 'break', text: str(v) });
    return h('ul', { class: 'map-view' }, e.map(([k, x]) => h('li', {},
      h('code', { class: 'map-key', text: k }), h('span', { class: 'map-arrow', 'aria-label': 'to', text: '→' }), h('code', { class: 'map-value', text: x }))));
  }
  return h('code', { class: 'break', text: str(v) });
}
