// A small Markdown subset turned into DOM nodes, never into markup: an experiment's notes are
// written by anyone holding the admin token and read by everyone the page is shared with, so
// no character of them is ever parsed as HTML. `<img src=x onerror=...>` is text; a link is an
// <a> only when its target is http(s) or relative (resolved against the page), so
// `[x](javascript:...)` stays the text the author typed.
//
// Blocks: paragraphs (blank-line separated), ATX headings (`#` … `######`, drawn two levels
// down so that they sit under the page's own), fenced code (```), flat bulleted (`-`, `*`,
// `+`) and numbered (`1.`, `1)`) lists. Inline: `code`, [text](href), **strong** / __strong__,
// *emphasis* / _emphasis_ (underscores only at word edges, so `sgd_momentum` stays a name).

import { el } from "./dom.js";

const FENCE = /^\s*```/;
const HEADING = /^(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
const INLINE = /`([^`]+)`|\[([^\]]+)\]\(([^()\s]+)\)|\*\*(.+?)\*\*|(?<!\w)__(.+?)__(?!\w)|\*(.+?)\*|(?<!\w)_(.+?)_(?!\w)/s;

/** The notes as a DocumentFragment of elements and text nodes. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replaceAll("\r\n", "\n").split("\n");
  let index = 0;
  while (index < lines.length) {
    const line = lines[index];
    if (!line.trim()) {
      index += 1;
    } else if (FENCE.test(line)) {
      const code = [];
      for (index += 1; index < lines.length && !FENCE.test(lines[index]); index += 1) code.push(lines[index]);
      index += 1; // the closing fence (or the end)
      fragment.append(el("pre", {}, el("code", {}, code.join("\n"))));
    } else if (HEADING.test(line)) {
      const [, hashes, title] = line.match(HEADING);
      fragment.append(el(`h${Math.min(6, hashes.length + 2)}`, {}, ...inline(title)));
      index += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const pattern = BULLET.test(line) ? BULLET : NUMBERED;
      const items = [];
      for (; index < lines.length && pattern.test(lines[index]); index += 1) {
        items.push(el("li", {}, ...inline(lines[index].match(pattern)[1])));
      }
      fragment.append(el(pattern === BULLET ? "ul" : "ol", {}, ...items));
    } else {
      const paragraph = [];
      for (; index < lines.length && lines[index].trim() && !startsBlock(lines[index]); index += 1) paragraph.push(lines[index]);
      fragment.append(el("p", {}, ...inline(paragraph.join("\n"))));
    }
  }
  return fragment;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || NUMBERED.test(line);
}

/** Inline Markdown as a list of nodes and strings (strings become text nodes). */
function inline(text) {
  const out = [];
  let rest = text;
  for (let match = INLINE.exec(rest); match; match = INLINE.exec(rest)) {
    if (match.index) out.push(rest.slice(0, match.index));
    const [whole, code, label, href, strong, strongUnderscore, em, emUnderscore] = match;
    if (code !== undefined) out.push(el("code", {}, code));
    else if (label !== undefined) out.push(link(label, href, whole));
    else if (strong !== undefined || strongUnderscore !== undefined) out.push(el("strong", {}, ...inline(strong ?? strongUnderscore)));
    else out.push(el("em", {}, ...inline(em ?? emUnderscore)));
    rest = rest.slice(match.index + whole.length);
  }
  if (rest) out.push(rest);
  return out;
}

function link(label, href, whole) {
  if (!safeHref(href)) return whole; // shown as the author typed it, not as a link
  const external = new URL(href, window.location.href).origin !== window.location.origin;
  return el("a", { href, ...(external ? { target: "_blank", rel: "noopener noreferrer" } : {}) }, ...inline(label));
}

/** Whether `href` may be a link target: http(s), or relative to the page (which is http(s)). */
export function safeHref(href) {
  try {
    return ["http:", "https:"].includes(new URL(href, window.location.href).protocol);
  } catch {
    return false;
  }
}
