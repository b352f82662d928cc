// xterm.js (6.x, its DOM renderer and its scrollbar) styles itself with <style> elements it
// creates and fills at run time, and colours some cells with setAttribute('style', …). The
// console's Content-Security-Policy (style-src 'self', no 'unsafe-inline') makes the browser
// ignore both. Rather than relax the policy for every page, the terminal's page mirrors
// them through the CSSOM, which style-src does not govern:
//   - each <style> element under the terminal's container is copied into a constructed
//     stylesheet (document.adoptedStyleSheets), kept in step as xterm rewrites it;
//   - element.setAttribute('style', v) becomes element.style.cssText = v.
// Markup injected into the page (there is none: no innerHTML) would still be held by the
// policy; only the page's own script can set styles this way.

let attrPatched = false;

// adoptInlineStyles watches root for <style> elements and mirrors them; call it before
// the terminal opens in root.
export function adoptInlineStyles(root) {
  patchStyleAttribute();
  const sheets = new Map();
  const sync = (el) => {
    let sheet = sheets.get(el);
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheets.set(el, sheet);
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    }
    try {
      sheet.replaceSync(el.textContent || '');
    } catch (e) {
      console.warn('cspstyle: a stylesheet xterm wrote does not parse', e);
    }
  };
  const drop = (el) => {
    const sheet = sheets.get(el);
    if (!sheet) return;
    sheets.delete(el);
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
  };
  const styleOf = (node) => {
    const el = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
    return el && el.closest ? el.closest('style') : null;
  };
  const visit = (node, fn) => {
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    if (node.localName === 'style') fn(node);
    node.querySelectorAll('style').forEach(fn);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      r.addedNodes.forEach((n) => visit(n, sync));
      r.removedNodes.forEach((n) => visit(n, drop));
      const s = styleOf(r.target);
      if (s && root.contains(s)) sync(s);
    }
  }).observe(root, { childList: true, subtree: true, characterData: true });
  root.querySelectorAll('style').forEach(sync);
}

function patchStyleAttribute() {
  if (attrPatched) return;
  attrPatched = true;
  const set = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function setAttribute(name, value) {
    if (typeof name === 'string' && name.toLowerCase() === 'style' && this.style) {
      this.style.cssText = String(value);
      return;
    }
    return set.call(this, name, value);
  };
}
