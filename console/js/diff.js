// Line diffs for the page: revisions of an integration, a blueprint's
// unified diffs, dry-run output against the saved version.
import { h } from './dom.js';

// Longest common subsequence over lines: [{op:' '|'-'|'+', text}]
export function lineDiff(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let ea = a.length, eb = b.length;
  while (ea > start && eb > start && a[ea - 1] === b[eb - 1]) { ea--; eb--; }
  const A = a.slice(start, ea), B = b.slice(start, eb);
  const out = a.slice(0, start).map((t) => ({ op: ' ', text: t }));
  if (A.length * B.length > 4e6) {
    A.forEach((t) => out.push({ op: '-', text: t }));
    B.forEach((t) => out.push({ op: '+', text: t }));
  } else {
    const n = A.length, m = B.length;
    const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
      L[i][j] = A[i] === B[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    }
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (A[i] === B[j]) { out.push({ op: ' ', text: A[i] }); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) out.push({ op: '-', text: A[i++] });
      else out.push({ op: '+', text: B[j++] });
    }
    while (i < n) out.push({ op: '-', text: A[i++] });
    while (j < m) out.push({ op: '+', text: B[j++] });
  }
  a.slice(ea).forEach((t) => out.push({ op: ' ', text: t }));
  return out;
}

// Keep `context` unchanged lines around each change; elide the rest.
export function hunks(diff, context = 3) {
  const keep = new Array(diff.length).fill(false);
  diff.forEach((d, i) => {
    if (d.op !== ' ') for (let k = Math.max(0, i - context); k <= Math.min(diff.length - 1, i + context); k++) keep[k] = true;
  });
  const out = [];
  let skipped = 0;
  diff.forEach((d, i) => {
    if (keep[i]) {
      if (skipped) out.push({ op: '…', text: `${skipped} unchanged line${skipped > 1 ? 's' : ''}` });
      skipped = 0;
      out.push(d);
    } else skipped++;
  });
  if (skipped && out.length) out.push({ op: '…', text: `${skipped} unchanged line${skipped > 1 ? 's' : ''}` });
  return out;
}

export function renderDiff(lines, opts = {}) {
  const cls = { '+': 'diff-add', '-': 'diff-del', ' ': 'diff-ctx', '…': 'diff-skip', '@': 'diff-hunk', 'h': 'diff-file' };
  return h('pre', { class: ['diff', opts.class] }, lines.map((d) => h('span', { class: 'diff-line ' + (cls[d.op] || 'diff-ctx') },
    // a hunk header ("@@ -4,5 +4,6 @@") and a file header carry their own marks
    h('span', { class: 'diff-op', 'aria-hidden': 'true', text: d.op === '…' || d.op === 'h' || d.op === '@' ? '' : d.op }),
    h('span', { class: 'diff-text', text: d.text }))));
}

// A unified diff as the server writes it ("--- a/page.lua", "@@ -1,6 +1,6 @@",
// " x", "-x", "+x").  Inside a hunk its counts decide what a line is, so a
// removed Lua comment ("--- …") is not taken for a file header.
export function renderUnified(text) {
  const out = [];
  let oldLeft = 0, newLeft = 0;
  for (const l of String(text || '').replace(/\n$/, '').split('\n')) {
    if (oldLeft > 0 || newLeft > 0) {
      if (l.startsWith('\\')) { out.push({ op: '…', text: l }); continue; }
      const op = l[0] === '+' || l[0] === '-' ? l[0] : ' ';
      if (op !== '+') oldLeft--;
      if (op !== '-') newLeft--;
      out.push({ op, text: l.slice(1) });
      continue;
    }
    const m = /^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@/.exec(l);
    if (m) {
      oldLeft = m[1] === undefined ? 1 : Number(m[1]);
      newLeft = m[2] === undefined ? 1 : Number(m[2]);
      out.push({ op: '@', text: l });
    } else if (l.startsWith('\\')) out.push({ op: '…', text: l });
    else out.push({ op: 'h', text: l });
  }
  return renderDiff(out, { class: 'diff-unified' });
}

// {"config":{"api_url":"x"}} -> ["config.api_url = \"x\""], sorted: a readable
// diff of two JSON documents that does not depend on key order
export function flatten(v, prefix = '', out = []) {
  if (v && typeof v === 'object' && !Array.isArray(v) && !(typeof JSON.isRawJSON === 'function' && JSON.isRawJSON(v))) {
    const keys = Object.keys(v).sort();
    if (!keys.length && prefix) out.push(prefix + ' = {}');
    for (const k of keys) flatten(v[k], prefix ? prefix + '.' + k : k, out);
  } else {
    out.push(prefix + ' = ' + JSON.stringify(v));
  }
  return out;
}
