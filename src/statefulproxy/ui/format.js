// How numbers, times and JSON read on the page.

const numberFormat = new Intl.NumberFormat();

export function number(value) {
  return numberFormat.format(value || 0);
}

/** 1234 -> "1.2k" */
export function compact(value) {
  const n = value || 0;
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e4 ? 1 : 0).replace(/\.0$/, '')}k`;
  return `${(n / 1e6).toFixed(1).replace(/\.0$/, '')}M`;
}

export function plural(n, word, many = `${word}s`) {
  return `${number(n)} ${n === 1 ? word : many}`;
}

export function totalTokens(usage) {
  if (!usage) return 0;
  if (typeof usage.total_tokens === 'number') return usage.total_tokens;
  return (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
}

/** "12 in · 34 out" for a turn's usage, or "" when there is none. */
export function usageText(usage) {
  if (!usage || typeof usage !== 'object') return '';
  const parts = [];
  if (typeof usage.prompt_tokens === 'number') parts.push(`${compact(usage.prompt_tokens)} in`);
  if (typeof usage.completion_tokens === 'number') parts.push(`${compact(usage.completion_tokens)} out`);
  if (!parts.length && typeof usage.total_tokens === 'number') parts.push(`${compact(usage.total_tokens)} tokens`);
  return parts.join(' · ');
}

export function date(unix) {
  return new Date(unix * 1000);
}

export function fullTime(unix) {
  if (!unix) return '';
  return date(unix).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function clock(unix) {
  return date(unix).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

export function dayLabel(unix) {
  const day = date(unix);
  const today = new Date();
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  if (day.toDateString() === today.toDateString()) return 'Today';
  if (day.toDateString() === yesterday.toDateString()) return 'Yesterday';
  const options = { weekday: 'short', month: 'short', day: 'numeric' };
  if (day.getFullYear() !== today.getFullYear()) options.year = 'numeric';
  return day.toLocaleDateString(undefined, options);
}

/** "just now", "4 min ago", "3 h ago", "2 d ago", then the date. Future times read "in ...". */
export function relative(unix) {
  if (!unix) return '';
  const seconds = Math.round(Date.now() / 1000 - unix);
  const ahead = seconds < 0;
  const span = Math.abs(seconds);
  let text;
  if (span < 45) return ahead ? 'in a moment' : 'just now';
  if (span < 3600) text = `${Math.max(1, Math.round(span / 60))} min`;
  else if (span < 86400) text = `${Math.round(span / 3600)} h`;
  else if (span < 86400 * 14) text = `${Math.round(span / 86400)} d`;
  else return date(unix).toLocaleDateString(undefined, { month: 'short', day: 'numeric', year: 'numeric' });
  return ahead ? `in ${text}` : `${text} ago`;
}

/** JSON pretty-printed; a string holding JSON (tool arguments) is parsed first; anything else as it is. */
export function pretty(value) {
  if (typeof value === 'string') {
    const text = value.trim();
    if (text.startsWith('{') || text.startsWith('[')) {
      try {
        return JSON.stringify(JSON.parse(text), null, 2);
      } catch {
        return value;
      }
    }
    return value;
  }
  return JSON.stringify(value, null, 2);
}

export function shortId(id) {
  return id.length > 18 ? `${id.slice(0, 10)}…${id.slice(-6)}` : id;
}
