// The blueprint editor: the blueprint's files in CodeMirror, a samples panel
// (the blueprint's examples, pasted JSON, events picked from Live Events),
// and the dry-run of the unsaved edit, re-run as the author types.  Load
// errors are marked at their file and line; the golden fixtures run against
// the edit; Save records a revision and History rolls back.
import { h, replace, clear, button, badge, empty, errorBox, toast, codeBlock, pretty, parseJSON, confirmDialog,
  fmtTime, fmtClock, spinner, debounce, ago } from '../dom.js';
import { get, post, put, enc, ApiError } from '../api.js';
import { getCatalog, listIntegrations, categoryName, monogram, tileClass, eventName } from '../data.js';
import { pickedSamples } from './live.js';
import { lineDiff, renderDiff, renderUnified } from '../diff.js';

const DEBOUNCE_MS = 300;

export async function renderList(main, params, ctx) {
  replace(main, h('div', { class: 'page' }, h('p', { class: 'loading' }, spinner(), 'Loading…')));
  const cat = await getCatalog(true);
  if (!ctx.isCurrent()) return;
  replace(main, h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Blueprints' }),
      h('p', { class: 'page-sub', text: 'A blueprint is a folder of Lua mappings and a blueprint.yaml. Edit one and see, as you type, the exact requests it would send.' }))),
    cat.length ? h('div', { class: 'lib-grid' }, cat.map((c) => h('a', { class: 'lib-card lib-card-link', href: '#/editor/' + enc(c.vendor), id: 'bp-' + c.vendor },
      h('div', { class: 'lib-card-head' }, h('span', { class: tileClass(c.name), 'aria-hidden': 'true', text: monogram(c.name) }),
        h('div', {}, h('h3', { class: 'lib-name', text: c.name }), h('p', { class: 'lib-meta' }, h('code', { text: 'blueprints/' + c.vendor + '/' }), ' · ' + categoryName(c.category)))),
      c.load_error ? h('p', { class: 'alert alert-err' }, h('span', { text: String(c.load_error) })) : h('p', { class: 'small muted', text: 'Loads cleanly.' }),
      h('span', { class: 'btn btn-sm', text: ctx.session.can.edit ? 'Open editor' : 'View files' }))))
      : empty('No blueprints', 'The server found no blueprint folders.')));
}

function kindOf(name) { return /\.ya?ml$/.test(name) ? 'yaml' : 'lua'; }

// "page.lua:7: '}' expected" -> {file:'page.lua', line:7, message}
function parseLocated(text) {
  const m = /([\w.-]+\.(?:lua|ya?ml))"?\]?:(\d+):\s*([\s\S]*)/.exec(String(text || ''));
  return m ? { file: m[1], line: Number(m[2]), message: m[3] } : null;
}

// the server's message may repeat "page.lua:3:" in front: the mark already says where
function cleanError(x) {
  const msg = String(x.message || '');
  const loc = parseLocated(msg);
  return { file: x.file || (loc && loc.file) || null, line: x.line || (loc && loc.line) || null,
    message: loc && (!x.file || loc.file === x.file) && msg.indexOf(loc.file) < 3 ? loc.message : msg };
}

function draftKey(vendor) { return 'bp.editor.draft.' + vendor; }

// Enter in Lua: the line's indent, one step more when the line opens more
// blocks or brackets than it closes.  CodeMirror's Lua mode counts every
// opener, so `helpers.track(ctx, "a", {` (a "(" and a "{") indented two
// steps.
const OPENERS = /\b(?:function|then|do|repeat)\b|[({[]/g;
const CLOSERS = /\b(?:end|until)\b|[)}\]]/g;
function luaEnter(cm) {
  const unit = ' '.repeat(cm.getOption('indentUnit'));
  cm.operation(() => {
    for (const sel of cm.listSelections().reverse()) {
      const from = sel.from();
      const before = cm.getLine(from.line).slice(0, from.ch);
      // strings and comments open nothing
      const code = before.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""').replace(/--.*$/, '');
      const opens = (code.match(OPENERS) || []).length - (code.match(CLOSERS) || []).length;
      const more = opens > 0 || /^\s*else\s*$/.test(code);
      cm.replaceRange('\n' + /^\s*/.exec(before)[0] + (more ? unit : ''), from, sel.to(), '+input');
    }
  });
}

export async function render(main, params, ctx) {
  replace(main, h('div', { class: 'page' }, h('p', { class: 'loading' }, spinner(), 'Loading the blueprint…')));
  const vendor = params.vendor;
  const [data, ints] = await Promise.all([
    get('/v1/admin/blueprints/' + enc(vendor) + '/files'),
    listIntegrations().catch(() => []),
  ]);
  if (!ctx.isCurrent()) return;
  if (typeof window.CodeMirror !== 'function') throw new Error('the code editor (CodeMirror) did not load');
  const can = ctx.session.can.edit;
  const mine = ints.filter((i) => i.vendor === vendor);

  // ---- state ----
  const files = new Map();      // name -> {name, kind, original, doc, tab}
  let current = null;
  let loadErrors = [];          // [{file,line,message}] when the edit does not load
  let runtimeErrors = [];       // from result lines with outcome "error"
  let baseline = null;          // results of the saved version for the same samples
  let baselineKey = '';
  let lastResults = null;
  let seq = 0;
  let inflight = null;
  let revision = data.revision;
  const expanded = new Set();   // unchanged results the author opened
  const samples = [];           // {id, source, label, text, event, checked}
  let sampleSeq = 0;

  // ---- layout ----
  const revPill = h('span', { class: 'pill', id: 'editor-revision', title: 'the running revision (fingerprint)' });
  const dirtyNote = h('span', { class: 'small muted', id: 'editor-dirty' });
  const message = h('input', { type: 'text', class: 'input input-inline', id: 'save-message', placeholder: 'What changed? (saved with the revision)',
    'aria-label': 'Change description', autocomplete: 'off' });
  const saveBtn = button('Save', () => save(), { kind: 'primary', id: 'editor-save', disabled: true });
  const discardBtn = button('Discard', () => discard(), { kind: 'ghost', id: 'editor-discard', disabled: true });
  const fileTabs = h('div', { class: 'file-tabs', role: 'tablist', id: 'file-tabs', 'aria-label': 'Files' });
  const cmHost = h('div', { class: 'cm-host', id: 'cm-host' });
  const statusBar = h('div', { class: 'editor-status', id: 'editor-status' });
  const sideTabs = h('div', { class: 'tabs tabs-sm', role: 'tablist' });
  const sideBody = h('div', { class: 'side-body' });
  const page = h('div', { class: 'page page-editor' },
    h('div', { class: 'editor-head' },
      h('div', { class: 'editor-title' },
        h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/blueprints', text: 'Blueprints' }), ' / ', h('span', { text: vendor })),
        h('h1', {}, h('span', { text: 'Blueprint: ' + vendor }), ' ', revPill, ' ', dirtyNote)),
      can ? h('div', { class: 'editor-actions' }, message, discardBtn, saveBtn)
        : h('p', { class: 'small muted', text: 'Read-only: editing, dry-runs and saving need the editor role or above.' })),
    h('div', { class: 'editor-grid' },
      h('section', { class: 'editor-pane', 'aria-label': 'Files' }, fileTabs, cmHost, statusBar),
      h('section', { class: 'side-pane', 'aria-label': 'Dry-run, tests and history' }, sideTabs, sideBody)));
  replace(main, page);

  const cm = window.CodeMirror(cmHost, {
    value: '', mode: 'lua', lineNumbers: true, indentUnit: 2, tabSize: 2, indentWithTabs: false,
    gutters: ['CodeMirror-linenumbers', 'bp-gutter'], readOnly: can ? false : true, viewportMargin: 30,
    extraKeys: {
      Enter: (c) => (c.getOption('mode') === 'lua' && !c.getOption('readOnly') ? luaEnter(c) : window.CodeMirror.Pass),
      Tab: (c) => c.execCommand(c.somethingSelected() ? 'indentMore' : 'insertSoftTab'),
      'Ctrl-S': () => { if (can) save(); }, 'Cmd-S': () => { if (can) save(); },
    },
  });
  cm.setSize('100%', '100%');

  // ---- files ----
  let draft = null;
  try { draft = JSON.parse(sessionStorage.getItem(draftKey(vendor)) || 'null'); } catch (e) { draft = null; }
  let restored = 0;
  function setFiles(list, keepDraft) {
    const prevName = current && current.name;
    files.clear();
    for (const f of list) {
      let text = f.content;
      if (keepDraft && draft && draft.base && draft.base[f.name] === f.content && draft.files && typeof draft.files[f.name] === 'string') {
        text = draft.files[f.name];
        if (text !== f.content) restored++;
      }
      const doc = window.CodeMirror.Doc(text, kindOf(f.name) === 'yaml' ? 'yaml' : 'lua');
      files.set(f.name, { name: f.name, kind: f.kind || kindOf(f.name), original: f.content, doc, tab: null, marks: [] });
    }
    paintTabs();
    const want = params.file && files.has(params.file) ? params.file : prevName && files.has(prevName) ? prevName : files.keys().next().value;
    open(want);
    paintDirty();
  }

  function edited() {
    const out = {};
    for (const f of files.values()) { const v = f.doc.getValue(); if (v !== f.original) out[f.name] = v; }
    return out;
  }

  function saveDraft() {
    const e = edited();
    if (!Object.keys(e).length) { sessionStorage.removeItem(draftKey(vendor)); return; }
    const base = {};
    for (const n of Object.keys(e)) base[n] = files.get(n).original;
    sessionStorage.setItem(draftKey(vendor), JSON.stringify({ base, files: e }));
  }

  function paintTabs() {
    clear(fileTabs);
    for (const f of files.values()) {
      const errs = loadErrors.filter((x) => x.file === f.name).length;
      const warns = runtimeErrors.filter((x) => x.file === f.name).length;
      const dirty = f.doc.getValue() !== f.original;
      const t = h('button', {
        type: 'button', class: ['file-tab', f === current ? 'active' : '', dirty ? 'dirty' : '', errs ? 'has-error' : warns ? 'has-warn' : ''],
        role: 'tab', 'aria-selected': String(f === current), dataset: { file: f.name },
        title: f.name + (dirty ? ' (edited)' : '') + (errs ? ' (does not load)' : ''),
      }, h('span', { class: 'file-kind file-kind-' + f.kind, 'aria-hidden': 'true' }), h('span', { text: f.name }),
      dirty ? h('span', { class: 'dirty-dot', 'aria-label': 'edited', title: 'edited' }) : null,
      errs ? h('span', { class: 'err-dot', 'aria-label': 'error', title: 'error' }) : null);
      t.addEventListener('click', () => open(f.name));
      f.tab = t;
      fileTabs.appendChild(t);
    }
  }

  function open(name) {
    const f = files.get(name);
    if (!f) return;
    if (current) clearMarks(current);
    current = f;
    cm.swapDoc(f.doc);
    cm.setOption('mode', f.kind === 'yaml' ? 'yaml' : 'lua');
    applyMarks();
    paintTabs();
    paintStatus();
    const want = '#/editor/' + enc(vendor) + '/' + enc(name);
    if (location.hash !== want) history.replaceState(null, '', want);
  }

  function paintDirty() {
    const n = Object.keys(edited()).length;
    dirtyNote.textContent = n ? `${n} unsaved file${n > 1 ? 's' : ''}` : '';
    saveBtn.disabled = !n;
    discardBtn.disabled = !n;
    revPill.textContent = 'running ' + String(revision || '').slice(0, 12);
  }

  function paintStatus() {
    if (!current) return;
    const c = cm.getCursor();
    const errs = loadErrors.filter((x) => x.file === current.name);
    replace(statusBar,
      h('span', { class: 'mono', text: current.name }),
      h('span', { class: 'muted', text: current.kind === 'yaml' ? 'YAML' : 'Lua 5.4' }),
      h('span', { class: 'muted', text: `Ln ${c.line + 1}, Col ${c.ch + 1}` }),
      errs.length ? h('button', { type: 'button', class: 'status-error', text: `line ${errs[0].line}: ${errs[0].message}`, onclick: () => jump(errs[0]) }) : null);
  }

  // ---- error marks: gutter marker, underline, message under the line ----
  function clearMarks(f) {
    for (const m of f.marks) {
      if (m.kind === 'text' || m.kind === 'widget') m.handle.clear();
      else if (m.kind === 'line') { cm.removeLineClass(m.handle, 'wrap', m.cls); cm.setGutterMarker(m.handle, 'bp-gutter', null); }
    }
    f.marks = [];
  }

  function applyMarks() {
    if (!current) return;
    clearMarks(current);
    const doc = current.doc;
    const list = loadErrors.filter((x) => x.file === current.name).map((x) => Object.assign({ level: 'error' }, x))
      .concat(runtimeErrors.filter((x) => x.file === current.name).map((x) => Object.assign({ level: 'warn' }, x)));
    const seen = new Set();
    for (const e of list) {
      if (!e.line) continue;
      const ln = Math.min(Math.max(0, e.line - 1), doc.lineCount() - 1);
      if (seen.has(ln)) continue;
      seen.add(ln);
      const text = doc.getLine(ln) || '';
      const from = Math.max(0, text.search(/\S/));
      const cls = e.level === 'error' ? 'bp-line-error' : 'bp-line-warn';
      const handle = cm.addLineClass(ln, 'wrap', cls);
      const marker = h('span', { class: 'bp-gutter-marker bp-gutter-' + e.level, title: e.message, text: e.level === 'error' ? '✕' : '!' });
      cm.setGutterMarker(ln, 'bp-gutter', marker);
      current.marks.push({ kind: 'line', handle, cls });
      if (text.length > from) {
        current.marks.push({ kind: 'text', handle: doc.markText({ line: ln, ch: from }, { line: ln, ch: text.length },
          { className: e.level === 'error' ? 'bp-underline-error' : 'bp-underline-warn', title: e.message }) });
      }
      const w = h('div', { class: 'bp-line-msg bp-line-msg-' + e.level }, h('span', { text: (e.level === 'error' ? 'Error: ' : 'Runtime error: ') + e.message }));
      current.marks.push({ kind: 'widget', handle: cm.addLineWidget(ln, w, { coverGutter: false, noHScroll: true }) });
    }
  }

  function jump(e) {
    if (e.file && files.has(e.file)) open(e.file);
    if (e.line) { cm.setCursor({ line: e.line - 1, ch: 0 }); cm.scrollIntoView({ line: e.line - 1, ch: 0 }, 80); }
    cm.focus();
  }

  // ---- side panel ----
  const panels = {};
  const sideDefs = can
    ? [['dryrun', 'Dry-run'], ['tests', 'Tests'], ['history', 'History']]
    : [['history', 'History']];
  let side = sideDefs[0][0];
  function paintSideTabs() {
    replace(sideTabs, sideDefs.map(([id, label]) => {
      const t = h('button', { type: 'button', class: 'tab', role: 'tab', id: 'side-' + id, 'aria-selected': String(side === id) }, label);
      t.addEventListener('click', () => showSide(id));
      return t;
    }));
  }
  function showSide(id) {
    side = id;
    paintSideTabs();
    for (const [k, el] of Object.entries(panels)) el.hidden = k !== id;
    if (id === 'history') loadHistory();
  }

  // -- dry-run panel: samples + results --
  const sampleList = h('ul', { class: 'sample-list', id: 'sample-list' });
  const sampleCount = h('span', { class: 'muted small', id: 'sample-count' });
  const configSel = h('select', { class: 'input input-inline', id: 'dryrun-config', 'aria-label': 'Config for the dry-run' },
    h('option', { value: '', text: 'Example config (examples/config.yaml)' }),
    mine.map((i) => h('option', { value: i.id, text: `Config of ${i.name}` })));
  const addArea = h('div', { class: 'sample-add', id: 'sample-add' });
  const resultHead = h('div', { class: 'result-head', id: 'dryrun-status', role: 'status' });
  const resultBox = h('div', { class: 'results', id: 'dryrun-results' });
  const samplesDetails = h('details', { class: 'samples', open: true },
    h('summary', {}, h('span', { class: 'summary-title', text: 'Sample events' }), ' ', sampleCount),
    h('div', { class: 'sample-tools' },
      button('Paste JSON', () => showPaste(), { small: true, id: 'sample-paste' }),
      button('From Live Events', () => showLivePicker(), { small: true, id: 'sample-live', disabled: !mine.length,
        title: mine.length ? '' : 'No installed integration uses this blueprint yet' }),
      h('span', { class: 'toolbar-spacer' }), configSel),
    addArea, sampleList);
  panels.dryrun = h('div', { class: 'panel panel-dryrun', id: 'panel-dryrun' }, samplesDetails,
    h('div', { class: 'results-wrap' }, resultHead, resultBox));

  // -- tests panel --
  const testsBox = h('div', { class: 'tests', id: 'tests-results' });
  panels.tests = h('div', { class: 'panel', id: 'panel-tests', hidden: true },
    h('p', { class: 'small' }, 'The golden fixtures in ', h('code', { text: `blueprints/${vendor}/tests/` }),
      ` (${(data.tests || []).length}: ${(data.tests || []).join(', ') || 'none'}) run against your unsaved edit, as `, h('code', { text: 'blueprint test' }), ' does.'),
    h('div', { class: 'form-actions' }, button('Run tests', () => runTests(), { kind: 'primary', id: 'tests-run', disabled: !(data.tests || []).length })),
    testsBox);

  // -- history panel --
  const historyBox = h('div', { class: 'history', id: 'history' });
  panels.history = h('div', { class: 'panel', id: 'panel-history', hidden: true }, historyBox);

  for (const [id] of sideDefs) sideBody.appendChild(panels[id]);
  paintSideTabs();
  showSide(side);

  // ---- samples ----
  function addSample(source, event, checked = true) {
    const text = JSON.stringify(event);
    if (samples.some((s) => s.text === text)) return false;
    const label = eventName({ event: event && event.event, type: event && event.type }, event);
    samples.push({ id: ++sampleSeq, source, text, event, label, checked });
    return true;
  }
  // pasted samples outlive a reload: kept per vendor in localStorage
  const pastedKey = 'bp.editor.pasted.' + vendor;
  function savePasted() {
    try { localStorage.setItem(pastedKey, JSON.stringify(samples.filter((s) => s.source === 'pasted').map((s) => s.text))); } catch (e) { /* full: kept for this page only */ }
  }
  for (const ex of data.examples || []) addSample('example', ex, true);
  for (const t of pickedSamples(vendor)) {
    try { addSample('live', parseJSON(t), true); } catch (e) { /* skip */ }
  }
  let pastedBefore = [];
  try { pastedBefore = JSON.parse(localStorage.getItem(pastedKey) || '[]'); } catch (e) { pastedBefore = []; }
  for (const t of Array.isArray(pastedBefore) ? pastedBefore : []) {
    try { addSample('pasted', parseJSON(t), true); } catch (e) { /* skip */ }
  }

  function paintSamples() {
    const n = samples.filter((s) => s.checked).length;
    sampleCount.textContent = `${n} of ${samples.length} selected`;
    replace(sampleList, samples.map((s) => {
      const cb = h('input', { type: 'checkbox', checked: s.checked, id: 'sample-' + s.id, 'aria-label': 'Use ' + s.label });
      cb.addEventListener('change', () => { s.checked = cb.checked; paintSamples(); scheduleRun(true); });
      const mid = s.event && (s.event.messageId || s.event.message_id || s.event.event_id);
      return h('li', { class: 'sample', dataset: { source: s.source } },
        cb,
        h('label', { for: 'sample-' + s.id, class: 'sample-label' },
          h('span', { class: 'ev-type', text: (s.event && s.event.type) || '?' }),
          h('span', { class: 'ev-name', text: s.label }),
          mid ? h('span', { class: 'mono muted small', dataset: { mid: String(mid) }, text: String(mid) }) : null),
        h('span', { class: 'tag tag-' + s.source, text: s.source === 'example' ? 'example' : s.source === 'live' ? 'live' : 'pasted' }),
        s.source !== 'example' ? h('button', { type: 'button', class: 'icon-btn', title: 'Remove this sample', 'aria-label': 'Remove ' + s.label,
          text: '×', onclick: () => { samples.splice(samples.indexOf(s), 1); savePasted(); paintSamples(); scheduleRun(true); } }) : null);
    }));
  }

  function showPaste() {
    const ta = h('textarea', { class: 'input mono', rows: '6', id: 'paste-json', spellcheck: false,
      placeholder: '{"type":"track","event":"Order Completed","messageId":"m-1",…}\n(one object, a JSON array or NDJSON)' });
    const err = h('p', { class: 'field-error', role: 'alert' });
    const add = button('Add samples', () => {
      const text = ta.value.trim();
      let evs = [];
      try {
        if (!text) throw new Error('paste one event object, a JSON array or NDJSON');
        if (text.startsWith('[')) evs = parseJSON(text);
        else {
          try { evs = [parseJSON(text)]; } catch (e) {
            evs = text.split(/\r?\n/).filter((l) => l.trim()).map((l, i) => {
              try { return parseJSON(l); } catch (e2) { throw new Error(`line ${i + 1}: ${e2.message}`); }
            });
          }
        }
        if (!Array.isArray(evs) || evs.some((x) => !x || typeof x !== 'object' || Array.isArray(x))) throw new Error('each event must be a JSON object');
      } catch (e) { err.textContent = 'Not valid JSON: ' + e.message; return; }
      let n = 0;
      for (const ev of evs) if (addSample('pasted', ev, true)) n++;
      savePasted();
      clear(addArea);
      paintSamples();
      scheduleRun(true);
      toast(`Added ${n} sample${n === 1 ? '' : 's'}`);
    }, { kind: 'primary', small: true, id: 'paste-add' });
    replace(addArea, h('div', { class: 'sample-add-box' }, ta, err,
      h('div', { class: 'form-actions' }, add, button('Cancel', () => clear(addArea), { small: true, kind: 'ghost' }))));
    ta.focus();
  }

  async function showLivePicker() {
    const sel = h('select', { class: 'input input-inline', 'aria-label': 'Integration', id: 'live-pick-integration' },
      mine.map((i) => h('option', { value: i.id, text: i.name })));
    const list = h('ul', { class: 'pick-list', id: 'live-pick-list' });
    async function load() {
      replace(list, h('li', { class: 'muted small' }, spinner(), 'Loading…'));
      try {
        const r = await get('/v1/admin/integrations/' + enc(sel.value) + '/live-events?limit=30');
        const rows = (r.events || []).filter((x) => x.event);
        if (!rows.length) { replace(list, h('li', { class: 'muted small', text: 'No events yet.' })); return; }
        replace(list, rows.map((row) => {
          const o = row.outcome || {};
          return h('li', {}, h('span', { class: 'ev-name', text: eventName(o, row.event) }),
            h('span', { class: 'mono small muted', text: o.message_id || '' }), badge(o.outcome || row.state || '?'),
            h('span', { class: 'toolbar-spacer' }),
            button('Add', (e) => {
              if (addSample('live', row.event, true)) { paintSamples(); scheduleRun(true); }
              e.currentTarget.disabled = true;
              e.currentTarget.textContent = 'Added';
            }, { small: true }));
        }));
      } catch (e) { replace(list, h('li', {}, errorBox(e, 'Could not load Live Events'))); }
    }
    sel.addEventListener('change', load);
    replace(addArea, h('div', { class: 'sample-add-box' },
      h('div', { class: 'toolbar' }, h('span', { class: 'small', text: 'Recent events of' }), sel, h('span', { class: 'toolbar-spacer' }),
        button('Done', () => clear(addArea), { small: true, kind: 'ghost' })), list));
    load();
  }

  // ---- dry-run ----
  function requestBody(withEdits) {
    const body = { events: samples.filter((s) => s.checked).map((s) => s.event) };
    if (withEdits) body.files = edited(); else body.files = {};
    if (configSel.value) body.integration_id = configSel.value;
    return body;
  }

  function viewOf(r) {
    return {
      outcome: r.outcome, reason: r.reason,
      requests: (r.requests || []).map((q) => ({
        method: q.method, url: q.url, key: q.once ? 'once: ' + q.once : q.marks ? 'marks: ' + q.marks : '',
        body: q.decoded !== undefined ? q.decoded : q.body,
      })),
      logs: r.logs || [],
    };
  }

  async function ensureBaseline(signal) {
    const body = requestBody(false);
    const key = JSON.stringify(body);
    if (baseline && baselineKey === key) return baseline;
    const r = await post('/v1/admin/blueprints/' + enc(vendor) + '/dry-run', body, { signal });
    baseline = r.ok ? r.results || [] : [];
    baselineKey = key;
    return baseline;
  }

  async function run() {
    if (!can) return;
    const my = ++seq;
    if (inflight) inflight.abort();
    inflight = new AbortController();
    const signal = inflight.signal;
    const nEvents = samples.filter((s) => s.checked).length;
    replace(resultHead, spinner(), h('span', { text: `Running the dry-run of your edit on ${nEvents} event${nEvents === 1 ? '' : 's'}…` }));
    resultHead.dataset.state = 'running';
    try {
      const base = await ensureBaseline(signal);
      const e = edited();
      const r = Object.keys(e).length
        ? await post('/v1/admin/blueprints/' + enc(vendor) + '/dry-run', requestBody(true), { signal })
        : { ok: true, results: base };
      if (my !== seq) return;
      if (r.ok) {
        loadErrors = [];
        lastResults = r.results || [];
        runtimeErrors = [];
        for (const x of lastResults) {
          if (x.outcome === 'error') {
            const loc = parseLocated(x.reason);
            if (loc) runtimeErrors.push(loc);
          }
        }
        paintResults(lastResults, base, Object.keys(e).length > 0);
      } else {
        loadErrors = (r.errors || []).map(cleanError);
        runtimeErrors = [];
        paintLoadErrors(loadErrors);
      }
      applyMarks();
      paintTabs();
      paintStatus();
    } catch (err) {
      if (err.name === 'AbortError' || my !== seq) return;
      resultHead.dataset.state = 'failed';
      replace(resultHead, h('span', { class: 'text-err', text: 'The dry-run could not run: ' + err.message }));
    }
  }
  const scheduleRun = debounce(run, DEBOUNCE_MS);

  function paintLoadErrors(errs) {
    resultHead.dataset.state = 'error';
    replace(resultHead, badge('does not load', 'err'), h('span', { text: ' Your edit does not load; the running blueprint is untouched.' }));
    const box = h('div', { class: 'alert alert-err load-errors', id: 'load-errors', role: 'alert' },
      h('strong', { text: 'Errors' }),
      h('ul', {}, errs.map((x) => h('li', {},
        x.file ? h('a', { href: '#', class: 'link mono', text: `${x.file}${x.line ? ':' + x.line : ''}`, onclick: (ev) => { ev.preventDefault(); jump(x); } }) : null,
        x.file ? ' ' : null, h('span', { text: x.message })))));
    const old = resultBox.querySelector('.result-list');
    replace(resultBox, box);
    if (old) { old.classList.add('stale'); resultBox.appendChild(h('p', { class: 'small muted', text: 'The last dry-run that loaded:' })); resultBox.appendChild(old); }
  }

  function paintResults(results, base, hasEdits) {
    const changed = results.filter((r, i) => JSON.stringify(viewOf(r)) !== JSON.stringify(base[i] ? viewOf(base[i]) : null)).length;
    resultHead.dataset.state = 'ok';
    replace(resultHead,
      h('span', { text: `${hasEdits ? 'Dry-run of your unsaved edit' : 'Dry-run of the saved version'}: ${results.length} event${results.length === 1 ? '' : 's'}` }),
      hasEdits ? h('span', { class: changed ? 'badge badge-info' : 'badge badge-muted', id: 'dryrun-changed', text: `${changed} changed` }) : null,
      h('span', { class: 'muted small', text: ' at ' + fmtClock(Date.now()) }));
    if (!results.length) { replace(resultBox, empty('No sample selected', 'Tick a sample event above, paste one, or pick one from Live Events.')); return; }
    replace(resultBox, h('ol', { class: 'result-list' }, results.map((r, i) => resultCard(r, base[i], hasEdits))));
  }

  function resultCard(r, b, hasEdits) {
    const v = viewOf(r);
    const bv = b ? viewOf(b) : null;
    const changed = hasEdits && JSON.stringify(v) !== JSON.stringify(bv);
    const reqs = v.requests.map((q, i) => {
      const bq = bv && bv.requests[i];
      const lines = pretty(q.body).split('\n');
      const blines = bq ? pretty(bq.body).split('\n') : null;
      const headChanged = changed && (!bq || bq.method !== q.method || bq.url !== q.url);
      return h('div', { class: ['req', changed && !bq ? 'req-added' : ''] },
        h('div', { class: ['req-line', headChanged ? 'req-line-changed' : ''] }, h('span', { class: 'req-num', text: '#' + (i + 1) }),
          h('span', { class: 'method', text: q.method }), h('span', { class: 'url mono', text: q.url })),
        q.key ? h('p', { class: 'small muted mono', text: q.key }) : null,
        changed && blines ? renderDiff(lineDiff(blines, lines), { class: 'req-body' }) : codeBlock(pretty(q.body), 'req-body'));
    });
    const removed = changed && bv ? bv.requests.slice(v.requests.length).map((q) => h('div', { class: 'req req-removed' },
      h('div', { class: 'req-line' }, h('span', { class: 'req-num', text: 'removed' }), h('span', { class: 'method', text: q.method }), h('span', { class: 'url mono', text: q.url })))) : [];
    const outLabel = r.outcome === 'deliver' ? 'deliver' : r.outcome;
    // with an edit, what did not change folds to its header line (click to open)
    const folded = hasEdits && !changed && !expanded.has(r.index);
    const head = h('div', { class: 'result-head-line', role: hasEdits && !changed ? 'button' : null, tabindex: hasEdits && !changed ? '0' : null,
      title: hasEdits && !changed ? 'Unchanged by your edit: click to show or hide its requests' : null },
        h('span', { class: 'result-idx', text: String((r.index ?? 0) + 1) }),
        h('span', { class: 'ev-name', text: r.event || r.type || '?' }),
        r.message_id ? h('span', { class: 'mono small muted', text: r.message_id }) : null,
        h('span', { class: 'toolbar-spacer' }),
        changed ? h('span', { class: 'badge badge-info', text: 'changed' }) : hasEdits ? h('span', { class: 'muted small', text: 'unchanged' }) : null,
        badge(outLabel, r.outcome === 'deliver' ? 'ok' : r.outcome === 'error' ? 'err' : 'muted'));
    const body = h('div', { class: 'result-body', hidden: folded },
      h('p', { class: 'result-reason', text: r.reason || '' }),
      changed && bv && bv.reason !== v.reason ? h('p', { class: 'small muted' }, 'was: ', h('span', { text: bv.reason || '' })) : null,
      v.logs.length ? codeBlock(v.logs.map((l) => `${l.at || ''}  ${l.msg || ''}`).join('\n'), 'result-logs') : null,
      reqs, removed);
    const li = h('li', { class: ['result', changed ? 'result-changed' : '', folded ? 'result-folded' : '', 'result-' + r.outcome],
      dataset: { index: String(r.index), outcome: r.outcome } }, head, body);
    if (hasEdits && !changed) {
      const flip = () => {
        body.hidden = !body.hidden;
        li.classList.toggle('result-folded', body.hidden);
        if (body.hidden) expanded.delete(r.index); else expanded.add(r.index);
      };
      head.addEventListener('click', flip);
      head.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); flip(); } });
    }
    return li;
  }

  // ---- tests ----
  async function runTests() {
    replace(testsBox, h('p', { class: 'loading' }, spinner(), 'Running the golden fixtures…'));
    try {
      const r = await post('/v1/admin/blueprints/' + enc(vendor) + '/test', { files: edited() });
      const errs = r.errors || [];
      if (errs.length) {
        loadErrors = errs.map(cleanError);
        applyMarks(); paintTabs(); paintStatus();
      }
      const cases = r.cases || [];
      replace(testsBox,
        h('p', { class: 'tests-summary', id: 'tests-summary' }, r.ok ? badge('all passed', 'ok') : badge('failed', 'err'), ' ',
          h('span', { text: `${cases.filter((c) => c.ok).length} of ${cases.length} cases match` })),
        errs.length ? h('div', { class: 'alert alert-err' }, h('strong', { text: 'Does not load: ' }),
          errs.map((x) => h('div', { text: `${x.file || ''}${x.line ? ':' + x.line : ''} ${x.message}` }))) : null,
        h('ul', { class: 'case-list' }, cases.map((c) => h('li', { class: ['case', c.ok ? 'case-ok' : 'case-fail'], dataset: { case: c.name } },
          h('div', { class: 'case-head' }, c.ok ? badge('ok', 'ok') : badge('differs', 'err'), h('span', { class: 'mono', text: c.name }),
            c.events != null ? h('span', { class: 'muted small', text: `${c.events} events` }) : null),
          !c.ok && (c.diff || []).length ? h('ul', { class: 'case-diff' }, (c.diff || []).map(caseDiffLine)) : null))));
    } catch (e) {
      replace(testsBox, errorBox(e, 'The tests could not run'));
    }
  }

  // 'event 3: requests[1].decoded.event: expected "page_view", got "page_viewX"'
  function caseDiffLine(line) {
    const m = /^(.*?): expected ([\s\S]*?), got ([\s\S]*)$/.exec(String(line));
    if (!m) return h('li', { class: 'mono', text: String(line) });
    return h('li', { class: 'mono' }, h('span', { text: m[1] + ': ' }),
      h('span', { class: 'expected', text: m[2] }), h('span', { class: 'muted', text: ' → ' }), h('span', { class: 'got', text: m[3] }));
  }

  // ---- save, discard, history ----
  async function save() {
    const e = edited();
    if (!Object.keys(e).length) return;
    saveBtn.disabled = true;
    saveBtn.textContent = 'Saving…';
    try {
      const r = await put('/v1/admin/blueprints/' + enc(vendor) + '/files', { files: e, message: message.value.trim() || 'edited in the console' });
      message.value = '';
      toast(`Saved revision ${r.number} (${String(r.revision).slice(0, 12)}): the workers switch to it now`);
      revision = r.revision;
      await reloadFiles();
      if (side === 'history') loadHistory();
    } catch (err) {
      if (err instanceof ApiError && err.status === 422) {
        const loc = err.file || parseLocated(err.message) ? cleanError({ file: err.file, line: err.line, message: err.message }) : null;
        if (loc) { loadErrors = [loc]; applyMarks(); paintTabs(); paintStatus(); if (loc.file !== current.name) jump(loc); }
        toast('Not saved: ' + err.message, 'err');
        showSide('dryrun');
        paintLoadErrors(loc ? [loc] : [{ file: null, line: null, message: err.message }]);
      } else toast('Not saved: ' + err.message, 'err');
    } finally {
      saveBtn.textContent = 'Save';
      paintDirty();
    }
  }

  async function reloadFiles() {
    const d = await get('/v1/admin/blueprints/' + enc(vendor) + '/files');
    revision = d.revision;
    draft = null;
    sessionStorage.removeItem(draftKey(vendor));
    setFiles(d.files, false);
    baseline = null;
    loadErrors = [];
    runtimeErrors = [];
    applyMarks();
    paintTabs();
    paintDirty();
    scheduleRun.flush();
  }

  async function discard() {
    const n = Object.keys(edited()).length;
    if (!n) return;
    const ok = await confirmDialog({ title: 'Discard your edits?', body: `${n} edited file${n > 1 ? 's go' : ' goes'} back to the saved version.`, confirmLabel: 'Discard', danger: true });
    if (!ok) return;
    for (const f of files.values()) f.doc.setValue(f.original);
    sessionStorage.removeItem(draftKey(vendor));
  }

  async function loadHistory() {
    replace(historyBox, h('p', { class: 'loading' }, spinner(), 'Loading history…'));
    try {
      const r = await get('/v1/admin/blueprints/' + enc(vendor) + '/revisions');
      const revs = r.revisions || [];
      if (!revs.length) {
        replace(historyBox, empty('No saved revisions yet', 'The first Save records the files as found on disk as revision 1, so you can always roll back to them.'));
        return;
      }
      replace(historyBox, h('ol', { class: 'history-list', id: 'history-list' }, revs.map((x, i) => {
        const diffBox = h('div', { class: 'history-diff', hidden: true });
        const toggleDiff = button(i === 0 || !x.diff ? 'Changes' : 'Changes', () => {
          diffBox.hidden = !diffBox.hidden;
          if (!diffBox.firstChild) diffBox.appendChild(x.diff ? renderUnified(x.diff) : h('p', { class: 'muted small', text: 'No file changed (the state found on disk).' }));
        }, { small: true, kind: 'ghost', dataset: { diff: String(x.number) } });
        return h('li', { class: 'history-item', dataset: { number: String(x.number) } },
          h('div', { class: 'history-top' },
            h('strong', { text: '#' + x.number }), i === 0 ? badge('current', 'ok') : null,
            h('span', { class: 'history-msg', text: x.message || '' })),
          h('div', { class: 'small muted' }, h('span', { text: `${x.actor || 'unknown'} · ${fmtTime(x.created_at)} (` }), ago(x.created_at), ')',
            (x.files || []).length ? h('span', { text: ' · ' + x.files.join(', ') }) : null),
          h('div', { class: 'history-actions' }, toggleDiff,
            can && i > 0 ? button(`Roll back to #${x.number}`, () => rollback(x.number), { small: true, dataset: { rollback: String(x.number) } }) : null),
          diffBox);
      })));
    } catch (e) {
      replace(historyBox, errorBox(e, 'Could not load the history'));
    }
  }

  async function rollback(n) {
    const dirty = Object.keys(edited()).length;
    const ok = await confirmDialog({ title: `Roll back to revision #${n}?`,
      body: `Its files are written, a new revision records the rollback and the workers switch to it.${dirty ? ' Your unsaved edits are discarded.' : ''}`,
      confirmLabel: 'Roll back' });
    if (!ok) return;
    try {
      const r = await post('/v1/admin/blueprints/' + enc(vendor) + '/rollback', { number: n });
      toast(`Rolled back to #${n}: now revision ${r.number}`);
      revision = r.revision;
      await reloadFiles();
      loadHistory();
    } catch (err) {
      toast('Rollback failed: ' + err.message, 'err');
    }
  }

  // ---- wire up ----
  setFiles(data.files || [], true);
  if (restored) {
    toast(`Restored ${restored} unsaved edit${restored > 1 ? 's' : ''} from this tab`, 'info');
  }
  paintSamples();
  cm.on('changes', () => { paintDirty(); paintTabs(); saveDraft(); if (can) { resultHead.dataset.state = 'pending'; scheduleRun(); } });
  cm.on('cursorActivity', paintStatus);
  configSel.addEventListener('change', () => { baseline = null; scheduleRun(true); });
  if (can) run();
  else loadHistory();
  setTimeout(() => cm.refresh(), 0);

  // unsaved edits survive leaving the page: they are kept in this tab's
  // sessionStorage (saveDraft) and restored when the editor opens again
  return () => {
    scheduleRun.cancel();
    if (inflight) inflight.abort();
  };
}
