// Building pages without a framework: h() makes an element, and a few formatters
// say things the way the CLI says them.

// h("td", {class: "x", onclick: fn, dataset: {task: id}}, "text", child, [children])
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key in element && key !== "list") element[key] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

// Replace an element's children.
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const STATES = ["Pending", "Scheduled", "Running", "Completed", "Failed"];

export function stateName(state) {
  return typeof state === "number" ? STATES[state] || String(state) : String(state);
}

export function stateBadge(state) {
  const name = stateName(state);
  return h("span", { class: `badge state-${name.toLowerCase()}` }, name);
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

const ZERO_TIME = "0001-01-01T00:00:00Z";

export function ago(when) {
  if (!when || when.startsWith("0001-")) return "-";
  const seconds = Math.max(0, (Date.now() - Date.parse(when)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

export function time(when) {
  if (!when || when === ZERO_TIME || when.startsWith("0001-")) return "-";
  return new Date(when).toLocaleString();
}

export function bytes(count) {
  if (!count) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 10 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function short(id) {
  return String(id || "").slice(0, 8);
}

export function ports(task) {
  const found = [];
  for (const [port, bindings] of Object.entries(task.HostPorts || {})) {
    for (const b of bindings || []) found.push(`${b.HostIp}:${b.HostPort}->${port}`);
  }
  return found.join(", ") || "-";
}

// A bar of used over total, with a label: capacity on the overview.
export function meter(label, used, total, text) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  const level = share > 0.9 ? "high" : share > 0.7 ? "mid" : "low";
  return h(
    "div",
    { class: "meter", title: `${label}: ${text}` },
    h(
      "span",
      { class: "meter-bar" },
      h("span", { class: `meter-fill ${level}`, style: { width: `${(share * 100).toFixed(1)}%` } }),
    ),
    h("span", { class: "meter-text" }, text),
  );
}

// A labelled value in a summary card (a job's, a task's).
export function field(label, value) {
  return h("div", { class: "field" }, h("span", { class: "field-label" }, label), h("span", {}, value));
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

// A message at the top of the page that goes away by itself (errors stay until closed).
export function notify(message, kind = "info") {
  const box = document.getElementById("notices");
  const note = h(
    "div",
    { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, message),
    h("button", { class: "close", title: "Close", onclick: () => note.remove() }, "×"),
  );
  box.append(note);
  if (kind !== "error") setTimeout(() => note.remove(), 4000);
}
