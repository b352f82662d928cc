// DOM helpers. Data only ever reaches the page as text nodes or attribute values set
// through the DOM: never as markup (no innerHTML anywhere in the console).

// h builds an element: attrs are set with setAttribute (on… handlers are functions added
// with addEventListener; false/null/undefined leave an attribute out); children are nodes,
// or anything else, which becomes a text node.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'style') {
      throw new Error('no inline styles (CSP style-src self)');
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// clear empties an element.
export function clear(el) {
  el.replaceChildren();
  return el;
}

// fmtTime formats an RFC 3339 time for a table ("" and Go's zero time are "—").
export function fmtTime(s) {
  if (!s || s.startsWith('0001-01-01')) return '—';
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return s;
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// yesNo renders a boolean.
export function yesNo(b) {
  return b ? 'yes' : 'no';
}

// dash is s, or "—" when empty.
export function dash(s) {
  return s === undefined || s === null || s === '' ? '—' : String(s);
}

// dl builds a definition list from [term, value] pairs (value: text or node).
export function dl(id, pairs) {
  return h('dl', { id, class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

// table builds a table with a header row and the given rows (tr elements).
export function table(id, headers, rows) {
  return h('table', { id },
    h('thead', null, h('tr', null, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, rows));
}
