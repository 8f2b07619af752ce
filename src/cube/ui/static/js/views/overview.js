// The cluster at a glance: every node with what is promised on it against what it
// has, the tasks by state, and what just happened.

import { post } from "../api.js";
import { STATES, badge, bytes, fill, h, link, meter, notify, stateName, time } from "../dom.js";
import { store } from "../store.js";

export function mount(root, { canWrite }) {
  const counts = h("div", { class: "counts" });
  const nodes = h("tbody");
  const events = h("tbody");
  fill(
    root,
    h("h1", {}, "Overview"),
    counts,
    h("h2", {}, "Nodes"),
    h(
      "table",
      { class: "grid", dataset: { testid: "nodes" } },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Name", "Status", "Eligibility", "Memory", "CPU", "Disk", "Tasks", "Labels"].map(
            (title) => h("th", {}, title),
          ),
          canWrite && h("th", {}, ""),
        ),
      ),
      nodes,
    ),
    h("h2", {}, "Recent events"),
    h(
      "table",
      { class: "grid events", dataset: { testid: "events" } },
      h(
        "thead",
        {},
        h("tr", {}, ["Time", "Topic", "Type", "About"].map((t) => h("th", {}, t))),
      ),
      events,
    ),
  );

  function update() {
    const byState = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const task of store.tasks.values()) byState[stateName(task.State)] += 1;
    const ready = [...store.nodes.values()].filter((n) => n.Status === "ready").length;
    fill(
      counts,
      tile("Nodes ready", `${ready} / ${store.nodes.size}`, "nodes-ready"),
      tile("Jobs", store.jobs.size, "jobs"),
      STATES.map((state) =>
        h(
          "a",
          {
            class: `tile state-${state.toLowerCase()}`,
            href: `#/tasks?state=${state}`,
            dataset: { testid: "task-count", state },
          },
          h("span", { class: "tile-value" }, byState[state]),
          h("span", { class: "tile-label" }, state),
        ),
      ),
    );
    const sorted = [...store.nodes.values()].sort((a, b) => a.Name.localeCompare(b.Name));
    fill(
      nodes,
      sorted.map((node) => nodeRow(node, canWrite)),
      sorted.length === 0 && h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No node yet.")),
    );
    fill(events, store.events.slice(0, 15).map(eventRow));
  }

  update();
  return { update };
}

function tile(label, value, testid) {
  return h(
    "div",
    { class: "tile", dataset: { testid } },
    h("span", { class: "tile-value" }, value),
    h("span", { class: "tile-label" }, label),
  );
}

function eligibility(node) {
  if (node.Draining) return badge("draining", "warn");
  return node.Eligible === false ? badge("ineligible", "warn") : badge("eligible", "ok");
}

function nodeRow(node, canWrite) {
  const cores = node.Cores || 0;
  const cpuText = `${(node.CpuAllocated || 0).toFixed(1)}/${cores} cores, ${Math.round(
    node.CpuPercent || 0,
  )}% busy`;
  const labels = Object.entries(node.Labels || {}).map(([k, v]) => badge(`${k}=${v}`, "label"));
  return h(
    "tr",
    { dataset: { testid: "node-row", node: node.Name } },
    h("td", {}, h("strong", {}, node.Name), h("div", { class: "muted small" }, node.Api)),
    h("td", {}, badge(node.Status, node.Status === "ready" ? "ok" : "bad")),
    h("td", {}, eligibility(node)),
    h(
      "td",
      {},
      meter(
        "mem",
        node.MemoryAllocated,
        node.Memory,
        `${bytes(node.MemoryAllocated * 1024)} / ${bytes(node.Memory * 1024)}`,
      ),
    ),
    h("td", {}, meter("cpu", node.CpuAllocated || 0, cores, cpuText)),
    h(
      "td",
      {},
      meter("disk", node.DiskAllocated, node.Disk, `${bytes(node.DiskAllocated)} / ${bytes(node.Disk)}`),
    ),
    h("td", { dataset: { testid: "node-tasks" } }, link(`#/tasks?node=${encodeURIComponent(node.Name)}`, String(node.TaskCount))),
    h("td", {}, labels.length ? labels : h("span", { class: "muted" }, "-")),
    canWrite && h("td", { class: "actions" }, nodeActions(node)),
  );
}

function nodeActions(node) {
  const act = (label, path, body, testid) =>
    h(
      "button",
      {
        class: "small",
        dataset: { testid, write: "" },
        onclick: async () => {
          try {
            await post(`/nodes/${encodeURIComponent(node.Name)}/${path}`, body);
            notify(`${node.Name}: ${label.toLowerCase()} asked`);
          } catch (error) {
            notify(`${node.Name}: ${error.message}`, "error");
          }
        },
      },
      label,
    );
  if (node.Eligible === false) return act("Eligible", "eligibility", { Eligible: true }, "node-eligible");
  return [act("Drain", "drain", {}, "node-drain"), act("Ineligible", "eligibility", { Eligible: false }, "node-ineligible")];
}

function about(event) {
  if (event.Topic === "Task") {
    const name = (event.Payload && event.Payload.Name) || "";
    return link(`#/tasks/${event.Key}`, `${name} ${event.Key.slice(0, 8)}`);
  }
  if (event.Topic === "Job" || event.Topic === "Deployment") {
    return link(`#/jobs/${encodeURIComponent(event.Key)}`, event.Key);
  }
  return event.Key;
}

function eventRow(event) {
  return h(
    "tr",
    { dataset: { testid: "event-row", index: event.Index } },
    h("td", { class: "small" }, time(event.Time)),
    h("td", {}, event.Topic),
    h("td", {}, event.Type),
    h("td", {}, about(event)),
  );
}
