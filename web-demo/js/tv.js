// TV mode and remote-control navigation, shared by every page.
//
// Arrow keys move focus to the nearest focusable control in that direction (spatial
// navigation, falling back to document order); Enter activates it (native for buttons,
// links and form fields). TV mode only enlarges the type; it turns on with `?tv=1`,
// on TV-like user agents, or with the page's "TV mode" toggle, and is remembered.

const TV_KEY = 'marquee.tv';
const TV_UA = /\b(SMART-TV|SmartTV|Tizen|Web0S|webOS|NetCast|BRAVIA|AFT[A-Z]|CrKey|GoogleTV|Android TV|HbbTV|Roku)\b/i;

const FOCUSABLE = [
  'a[href]', 'button:not([disabled])', 'input:not([disabled]):not([type=hidden])',
  'select:not([disabled])', 'textarea:not([disabled])', 'video[controls]', '[tabindex]:not([tabindex="-1"])',
].join(',');

/** Applies TV mode from the URL, storage or user agent, and wires the toggle and arrow keys. */
export function initTv() {
  const param = new URLSearchParams(location.search).get('tv');
  if (param !== null) localStorage.setItem(TV_KEY, param === '0' ? '0' : '1');
  const stored = localStorage.getItem(TV_KEY);
  setTv(stored !== null ? stored === '1' : TV_UA.test(navigator.userAgent));

  for (const toggle of document.querySelectorAll('[data-tv-toggle]')) {
    toggle.addEventListener('click', () => {
      const on = !document.documentElement.classList.contains('tv');
      localStorage.setItem(TV_KEY, on ? '1' : '0');
      setTv(on);
    });
  }
  document.addEventListener('keydown', onKeyDown);
}

function setTv(on) {
  document.documentElement.classList.toggle('tv', on);
  for (const toggle of document.querySelectorAll('[data-tv-toggle]')) {
    toggle.setAttribute('aria-pressed', String(on));
  }
}

const DIRECTIONS = { ArrowUp: 'up', ArrowDown: 'down', ArrowLeft: 'left', ArrowRight: 'right' };

function onKeyDown(event) {
  const dir = DIRECTIONS[event.key];
  if (!dir || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  const current = document.activeElement;
  if (current && !leavesControl(current, dir)) return;
  const next = findNext(current, dir);
  if (next) {
    event.preventDefault();
    next.focus();
  }
}

/** Inside a text field, Left/Right move the caret until it reaches the edge; on a slider, the value. */
function leavesControl(el, dir) {
  if (el.tagName === 'TEXTAREA') return false;
  if (el.tagName === 'SELECT') return dir === 'left' || dir === 'right';
  if (el.tagName !== 'INPUT') return true;
  if (dir === 'up' || dir === 'down') return true;
  if (el.type === 'range') return false; // Left/Right move the slider
  if (el.selectionStart === null) return true; // e.g. type=number has no caret API
  if (el.selectionStart !== el.selectionEnd) return false;
  return dir === 'left' ? el.selectionStart === 0 : el.selectionEnd === el.value.length;
}

function focusables() {
  return [...document.querySelectorAll(FOCUSABLE)].filter((el) => {
    if (el.closest('[hidden], [inert]')) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
  });
}

/**
 * Nearest control in `dir`: smallest edge-to-edge gap along the direction, heavily
 * penalising controls that do not line up across it, then the closest centers.
 */
function findNext(current, dir) {
  const all = focusables();
  if (all.length === 0) return null;
  if (!current || current === document.body || !all.includes(current)) return all[0];
  const from = current.getBoundingClientRect();
  const vertical = dir === 'up' || dir === 'down';
  let best = null;
  let bestScore = Infinity;
  for (const el of all) {
    if (el === current) continue;
    const to = el.getBoundingClientRect();
    const along = dir === 'down' ? to.top - from.bottom : dir === 'up' ? from.top - to.bottom
      : dir === 'right' ? to.left - from.right : from.left - to.right;
    // Allow a little overlap (borders, focus rings) but never go backwards.
    if (along < -4) continue;
    const gapAcross = vertical
      ? Math.max(0, to.left - from.right, from.left - to.right)
      : Math.max(0, to.top - from.bottom, from.top - to.bottom);
    const a = center(from);
    const b = center(to);
    const centerAcross = vertical ? Math.abs(a.x - b.x) : Math.abs(a.y - b.y);
    const score = Math.max(0, along) + 4 * gapAcross + 0.1 * centerAcross;
    if (score < bestScore) {
      bestScore = score;
      best = el;
    }
  }
  if (best) return best;
  // Nothing that way: fall back to document order so every control stays reachable.
  const i = all.indexOf(current);
  if (dir === 'down' || dir === 'right') return all[i + 1] ?? null;
  return all[i - 1] ?? null;
}

function center(r) {
  return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
}
