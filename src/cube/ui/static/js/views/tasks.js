// Every task, filtered by state, node and job (kept in the address, so a filtered list
// can be linked to), a page of PAGE at a time: a thousand tasks stay quick to show.

import { ago, fill, h, link, short, stateBadge, stateName, STATES } from "../dom.js";
import { store } from "../store.js";

const PAGE = 50;

export function mount(root, { query }) {
  const filters = {
    state: query.get("state") || "",
    node: query.get("node") || "",
    job: query.get("job") || "",
    text: query.get("q") || "",
  };
  let page = Number(query.get("page") || 1);
  const state = select("filter-state", "every state", STATES, filters.state);
  const node = select("filter-node", "every node", [], filters.node);
  const job = select("filter-job", "every job", [], filters.job);
  const text = h("input", {
    type: "search",
    placeholder: "name or ID",
    value: filters.text,
    dataset: { testid: "filter-text" },
  });
  const body = h("tbody");
  const pager = h("div", { class: "pager", dataset: { testid: "pager" } });
  const shown = h("span", { class: "muted", dataset: { testid: "task-total" } });

  for (const [control, key] of [
    [state, "state"],
    [node, "node"],
    [job, "job"],
    [text, "text"],
  ]) {
    control.addEventListener(control === text ? "input" : "change", () => {
      filters[key] = control.value;
      page = 1;
      remember();
      update();
    });
  }

  // The filters in the address, without a new page load (and no hashchange).
  function remember() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key === "text" ? "q" : key, value);
    if (page > 1) params.set("page", page);
    const hash = `#/tasks${params.size ? `?${params}` : ""}`;
    history.replaceState(null, "", hash);
  }

  fill(
    root,
    h("h1", {}, "Tasks"),
    h("div", { class: "filters" }, state, node, job, text, shown),
    h(
      "table",
      { class: "grid", dataset: { testid: "tasks" } },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["ID", "Name", "Job", "State", "Node", "Restarts", "Started", "Reason"].map((t) => h("th", {}, t)),
        ),
      ),
      body,
    ),
    pager,
  );

  function update() {
    options(node, "every node", [...store.nodes.keys()].sort(), filters.node);
    options(job, "every job", [...store.jobs.keys()].sort(), filters.job);
    const needle = filters.text.toLowerCase();
    const matching = [];
    for (const t of store.tasks.values()) {
      if (filters.state && stateName(t.State) !== filters.state) continue;
      if (filters.node && t.Node !== filters.node) continue;
      if (filters.job && t.Job !== filters.job) continue;
      if (needle && !t.ID.includes(needle) && !String(t.Name).toLowerCase().includes(needle)) continue;
      matching.push(t);
    }
    matching.reverse(); // newest first (the manager lists them in submission order)
    const pages = Math.max(1, Math.ceil(matching.length / PAGE));
    page = Math.min(page, pages);
    const slice = matching.slice((page - 1) * PAGE, page * PAGE);
    shown.textContent = `${matching.length} of ${store.tasks.size} tasks`;
    fill(
      body,
      slice.map(row),
      slice.length === 0 && h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No task matches.")),
    );
    const go = (to) => () => {
      page = to;
      remember();
      update();
    };
    fill(
      pager,
      pages > 1 && [
        h("button", { class: "small", disabled: page <= 1, onclick: go(page - 1), dataset: { testid: "page-prev" } }, "‹ Newer"),
        h("span", { dataset: { testid: "page" } }, ` page ${page} of ${pages} `),
        h("button", { class: "small", disabled: page >= pages, onclick: go(page + 1), dataset: { testid: "page-next" } }, "Older ›"),
      ],
    );
  }

  update();
  return { update };
}

function select(testid, every, values, chosen) {
  const element = h("select", { dataset: { testid } });
  options(element, every, values, chosen);
  return element;
}

// Keep a select's options in step with what exists, its choice kept.
function options(element, every, values, chosen) {
  const wanted = ["", ...values];
  if (chosen && !wanted.includes(chosen)) wanted.push(chosen);
  const have = [...element.options].map((o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  fill(element, wanted.map((v) => h("option", { value: v }, v || every)));
  element.value = chosen;
}

function row(t) {
  return h(
    "tr",
    { dataset: { testid: "task-row", task: t.ID, state: stateName(t.State) } },
    h("td", {}, link(`#/tasks/${t.ID}`, h("code", {}, short(t.ID)))),
    h("td", {}, t.Name),
    h("td", {}, t.Job ? link(`#/jobs/${encodeURIComponent(t.Job)}`, `${t.Job} v${t.JobVersion}`) : "-"),
    h("td", {}, stateBadge(t.State)),
    h("td", {}, t.Node || "-"),
    h("td", {}, t.RestartCount),
    h("td", {}, ago(t.StartTime)),
    h("td", { class: "small reason" }, t.Reason || ""),
  );
}
