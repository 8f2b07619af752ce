// Every job, its version and how its latest deployment goes.

import { badge, fill, h, link, stateName } from "../dom.js";
import { store, tasksOf } from "../store.js";

export function mount(root, { canWrite }) {
  const body = h("tbody");
  fill(
    root,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Jobs"),
      canWrite &&
        h("a", { class: "button", href: "#/jobs/new", dataset: { testid: "job-new", write: "" } }, "New job"),
    ),
    h(
      "table",
      { class: "grid", dataset: { testid: "jobs" } },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Name", "Type", "Version", "Count", "Running", "Deployment", "Progress"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      body,
    ),
  );

  function update() {
    const jobs = [...store.jobs.values()].sort((a, b) => a.Name.localeCompare(b.Name));
    fill(
      body,
      jobs.map(jobRow),
      jobs.length === 0 &&
        h(
          "tr",
          {},
          h("td", { colspan: 7, class: "muted" }, "No job yet.", canWrite && " Submit one with New job."),
        ),
    );
  }
  update();
  return { update };
}

export function deploymentBadge(job) {
  if (job.Stopped) return badge("stopped", "muted");
  const d = job.Deployment;
  if (!d) return badge("-", "muted");
  const kind = { successful: "ok", failed: "bad", running: "warn" }[d.Status] || "";
  return badge(d.Status, kind);
}

export function progress(job) {
  const d = job.Deployment;
  if (!d || !d.Desired) return h("span", { class: "muted" }, "-");
  const share = Math.min(1, d.Healthy / d.Desired);
  return h(
    "span",
    { class: "progress", title: `placed ${d.Placed}, healthy ${d.Healthy}, unhealthy ${d.Unhealthy}` },
    h("span", { class: "meter-bar" }, h("span", { class: "meter-fill low", style: { width: `${share * 100}%` } })),
    h("span", { class: "meter-text" }, `${d.Healthy}/${d.Desired} healthy`),
  );
}

function jobRow(job) {
  const running = tasksOf(job.Name).filter((t) => stateName(t.State) === "Running").length;
  return h(
    "tr",
    { dataset: { testid: "job-row", job: job.Name } },
    h("td", {}, link(`#/jobs/${encodeURIComponent(job.Name)}`, h("strong", {}, job.Name))),
    h("td", {}, job.Type),
    h("td", {}, `v${job.Version}`),
    h("td", {}, job.Count),
    h("td", { dataset: { testid: "job-running" } }, running),
    h("td", {}, deploymentBadge(job)),
    h("td", {}, progress(job)),
  );
}
