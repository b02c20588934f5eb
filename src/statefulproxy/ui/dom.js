// Building the page. Every value that comes from a session (titles, messages, metadata, ids)
// reaches the document as text: elements are made here with textContent and attributes, never
// from HTML strings, so a stored <img onerror> or <script> stays inert.

const SVG = 'http://www.w3.org/2000/svg';

/** An element: h('div', {class: 'x', text: 'y', onclick: fn}, child, 'text child', null). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = String(value);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
      else if (key === 'href') el.setAttribute('href', safeHref(value));
      else if (key === 'value') el.value = value;
      else el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Only links to this page's routes and plain web addresses: never javascript: or data: */
export function safeHref(value) {
  const text = String(value);
  if (text.startsWith('#')) return text;
  try {
    const url = new URL(text, location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : '#';
  } catch {
    return '#';
  }
}

// Icons: stroke paths on a 24-unit grid (constants, never data).
const ICONS = {
  logo: ['M4 8.5 12 4l8 4.5-8 4.5z', 'M4 12.5l8 4.5 8-4.5', 'M4 16.5l8 4.5 8-4.5'],
  search: ['M10.5 4a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13z', 'M20 20l-4.8-4.8'],
  close: ['M18 6 6 18', 'M6 6l12 12'],
  back: ['M15 18l-6-6 6-6'],
  copy: ['M9 9h10a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H9a1 1 0 0 1-1-1V10a1 1 0 0 1 1-1z', 'M5 15H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1v1'],
  fork: ['M6 3v12', 'M18 9a3 3 0 1 0 0-6 3 3 0 0 0 0 6z', 'M6 21a3 3 0 1 0 0-6 3 3 0 0 0 0 6z', 'M18 9a9 9 0 0 1-9 9'],
  download: ['M12 4v11', 'M7 10l5 5 5-5', 'M5 20h14'],
  trash: ['M4 7h16', 'M10 11v6', 'M14 11v6', 'M6 7l1 13h10l1-13', 'M9 7V4h6v3'],
  end: ['M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z', 'M9.5 9.5h5v5h-5z'],
  clear: ['M3 12a9 9 0 1 0 2.6-6.4L3 8', 'M3 3v5h5'],
  edit: ['M4 20h4L19 9a2.1 2.1 0 0 0-3-3L5 17v3z', 'M14 7l3 3'],
  send: ['M12 19V5', 'M6 11l6-6 6 6'],
  stop: ['M7 7h10v10H7z'],
  tool: ['M9 4C7 4 6 5 6 7v3l-2 2 2 2v3c0 2 1 3 3 3', 'M15 4c2 0 3 1 3 3v3l2 2-2 2v3c0 2-1 3-3 3'],
  thought: ['M9 18h6', 'M10 21h4', 'M12 3a6 6 0 0 0-3.8 10.6c.6.6.8 1.3.8 2.4h6c0-1.1.2-1.8.8-2.4A6 6 0 0 0 12 3z'],
  logout: ['M9 20H5a1 1 0 0 1-1-1V5a1 1 0 0 1 1-1h4', 'M16 16l4-4-4-4', 'M20 12H9'],
  key: ['M8 11a4 4 0 1 0 0 8 4 4 0 0 0 0-8z', 'M10.8 12.2 19 4', 'M15.5 7.5l2.5 2.5', 'M17.5 5.5l2 2'],
  refresh: ['M20 12a8 8 0 1 1-2.4-5.7L20 8.5', 'M20 4v4.5h-4.5'],
  image: ['M5 4h14a1 1 0 0 1 1 1v14a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V5a1 1 0 0 1 1-1z', 'M9 10.5a1.5 1.5 0 1 0 0-3 1.5 1.5 0 0 0 0 3z', 'M20 15l-5-5L5 20'],
  chat: ['M5 5h14a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1h-8l-5 4v-4H5a1 1 0 0 1-1-1V6a1 1 0 0 1 1-1z'],
  check: ['M5 12.5l4.5 4.5L19 7.5'],
  alert: ['M12 4 2.8 19.5h18.4z', 'M12 10v4.5', 'M12 17.2v.1'],
  keyboard: ['M3 7h18v10H3z', 'M7 10h.01', 'M11 10h.01', 'M15 10h.01', 'M8 14h8'],
};

export function icon(name, size = 16) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', String(size));
  svg.setAttribute('height', String(size));
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

/** A button with an icon and a label; ``iconOnly`` keeps the label for screen readers and the tooltip. */
export function button(label, iconName, onclick, { kind = 'ghost', iconOnly = false, title, type = 'button', shortcut } = {}) {
  const el = h('button', {
    type,
    class: `btn btn-${kind}${iconOnly ? ' btn-icon' : ''}`,
    title: title || (shortcut ? `${label} (${shortcut})` : iconOnly ? label : null),
    'aria-label': iconOnly ? label : null,
    'aria-keyshortcuts': shortcut || null,
    onclick,
  });
  if (iconName) el.append(icon(iconName));
  if (!iconOnly) el.append(h('span', { text: label }));
  return el;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
