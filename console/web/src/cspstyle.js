// xterm.js 6 styles itself with three <style> elements it creates and fills at run time
// (the scrollbar's colours, and its DOM renderer's cell dimensions and theme), and colours
// some cells (256 and true colours) with setAttribute('style', …). Under the console's
// Content-Security-Policy (style-src 'self', no 'unsafe-inline') the browser ignores both:
// a terminal without row heights or colours. Rather than relax the policy, the console
// routes them through the CSSOM, which style-src does not govern:
//   - document.createElement('style') gives an inert element (namespace urn:ibcm:inert,
//     so the browser neither applies nor checks it; even an empty <style> is a violation)
//     whose textContent reads and writes a constructed stylesheet in
//     document.adoptedStyleSheets, and whose remove() drops that sheet;
//   - element.setAttribute('style', v) becomes element.style.cssText = v.
// Markup (there is none from data: the console never uses innerHTML) is still held by the
// policy; only the page's own script can style this way. noVNC needs neither: it styles
// its elements through element.style (CSSOM) only.

let installed = false;

// allowScriptStyles installs both; call it before xterm opens a terminal.
export function allowScriptStyles() {
  if (installed) return;
  installed = true;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function createElement(tag, options) {
    if (typeof tag === 'string' && tag.toLowerCase() === 'style') {
      return mirror(this.createElementNS('urn:ibcm:inert', 'style'));
    }
    return create.call(this, tag, options);
  };
  const set = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function setAttribute(name, value) {
    if (typeof name === 'string' && name.toLowerCase() === 'style' && this.style) {
      this.style.cssText = String(value);
      return undefined;
    }
    return set.call(this, name, value);
  };
}

function mirror(el) {
  const sheet = new CSSStyleSheet();
  let text = '';
  let adopted = false;
  Object.defineProperty(el, 'textContent', {
    configurable: true,
    get: () => text,
    set: (v) => {
      text = v === null || v === undefined ? '' : String(v);
      try {
        sheet.replaceSync(text);
      } catch (e) {
        console.warn('a stylesheet written by script does not parse', e);
      }
      if (!adopted) {
        adopted = true;
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
    },
  });
  const remove = el.remove;
  el.remove = function removeStyle() {
    if (adopted) {
      adopted = false;
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
    }
    return remove.call(this);
  };
  return el;
}
