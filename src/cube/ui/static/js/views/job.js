// One job: its deployment, its tasks by node, its versions (and what changed between
// two), and, for a management token, scale, revert, update and stop.

import { del, get, post } from "../api.js";
import { ago, fill, h, link, notify, short, stateBadge, stateName, field } from "../dom.js";
import { store, tasksOf } from "../store.js";
import { diffLines } from "../diff.js";
import { deploymentBadge, progress } from "./jobs.js";

const LIVE = new Set(["Pending", "Scheduled", "Running"]);

export function mount(root, { args, canWrite }) {
  const name = args[0];
  const path = `/jobs/${encodeURIComponent(name)}`;
  const summary = h("div", { class: "card summary", dataset: { testid: "job-summary" } });
  const byNode = h("div", { class: "by-node", dataset: { testid: "job-by-node" } });
  const versions = h("div", { dataset: { testid: "job-versions" } });
  const diff = h("div", { class: "diff-box" });
  const count = h("input", {
    type: "number",
    min: 0,
    class: "count",
    dataset: { testid: "job-scale-count", write: "" },
  });
  let versionsOf = -1; // the job version the versions list was read at
  let countTouched = false;
  count.addEventListener("input", () => {
    countTouched = true;
  });

  async function act(what, call) {
    try {
      await call();
      notify(`Job ${name}: ${what}`);
    } catch (error) {
      notify(`Job ${name}: ${error.message}`, "error");
    }
  }

  const controls =
    canWrite &&
    h(
      "div",
      { class: "buttons" },
      count,
      h(
        "button",
        {
          dataset: { testid: "job-scale", write: "" },
          onclick: () => {
            countTouched = false;
            return act(`scaled to ${count.value}`, () =>
              post(`${path}/scale`, { Count: Number(count.value) }),
            );
          },
        },
        "Scale",
      ),
      h(
        "a",
        { class: "button", href: `#${path}/edit`, dataset: { testid: "job-edit", write: "" } },
        "Update…",
      ),
      h(
        "button",
        {
          class: "danger",
          dataset: { testid: "job-stop", write: "" },
          onclick: () => {
            if (confirm(`Stop every task of job ${name}?`)) act("stopped", () => del(path));
          },
        },
        "Stop job",
      ),
    );

  fill(
    root,
    h("h1", {}, h("a", { href: "#/jobs", class: "muted" }, "Jobs"), " / ", name),
    summary,
    controls,
    h("h2", {}, "Tasks by node"),
    byNode,
    h("h2", {}, "Versions"),
    versions,
    diff,
  );

  async function loadVersions(job) {
    versionsOf = job.Version;
    try {
      const found = await get(`${path}/versions`);
      showVersions(found);
    } catch (error) {
      fill(versions, h("p", { class: "error" }, error.message));
    }
  }

  function showVersions(found) {
    const from = h("select", { dataset: { testid: "diff-from" } });
    const to = h("select", { dataset: { testid: "diff-to" } });
    for (const v of found) {
      from.append(h("option", { value: v.Version }, `v${v.Version}`));
      to.append(h("option", { value: v.Version }, `v${v.Version}`));
    }
    if (found.length > 1) from.value = found[1].Version;
    const showDiff = () => {
      const a = found.find((v) => String(v.Version) === from.value);
      const b = found.find((v) => String(v.Version) === to.value);
      fill(diff, a && b ? diffView(a, b) : null);
    };
    from.addEventListener("change", showDiff);
    to.addEventListener("change", showDiff);
    const current = store.jobs.get(name);
    fill(
      versions,
      h(
        "table",
        { class: "grid" },
        h("thead", {}, h("tr", {}, ["Version", "Image", "Count", "Update", ""].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          found.map((v) =>
            h(
              "tr",
              { dataset: { testid: "version-row", version: v.Version } },
              h("td", {}, `v${v.Version}`, current && current.Version === v.Version ? " (current)" : ""),
              h("td", {}, h("code", {}, v.Task.Image)),
              h("td", {}, v.Count),
              h("td", { class: "small" }, `${v.Update.Order}, ${v.Update.MaxParallel} at a time`),
              h(
                "td",
                {},
                canWrite &&
                  current &&
                  current.Version !== v.Version &&
                  h(
                    "button",
                    {
                      class: "small",
                      dataset: { testid: "job-revert", write: "", version: v.Version },
                      onclick: () =>
                        act(`reverted to v${v.Version}`, () =>
                          post(`${path}/revert`, { Version: v.Version }),
                        ),
                    },
                    `Revert to v${v.Version}`,
                  ),
              ),
            ),
          ),
        ),
      ),
      found.length > 1 && h("p", { class: "diff-pick" }, "Changes from ", from, " to ", to),
    );
    if (found.length > 1) showDiff();
    else fill(diff);
  }

  function update() {
    const job = store.jobs.get(name);
    if (!job) {
      fill(summary, h("p", { class: "error" }, `No job named ${name}.`));
      return;
    }
    const d = job.Deployment || {};
    fill(
      summary,
      field("Type", job.Type),
      field("Version", `v${job.Version}`),
      field("Count", h("span", { dataset: { testid: "job-count" } }, job.Count)),
      field("Deployment", deploymentBadge(job)),
      field("Progress", progress(job)),
      d.Reason && field("Reason", d.Reason),
    );
    if (!countTouched) count.value = job.Count;
    const tasks = tasksOf(name);
    const live = tasks.filter((t) => LIVE.has(stateName(t.State)) && t.DesiredState !== 3);
    const groups = new Map();
    for (const t of live) {
      const node = t.Node || "(not placed)";
      if (!groups.has(node)) groups.set(node, []);
      groups.get(node).push(t);
    }
    fill(
      byNode,
      [...groups.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([node, found]) =>
          h(
            "div",
            { class: "node-box card", dataset: { testid: "job-node", node } },
            h("h3", {}, node, h("span", { class: "muted" }, ` ${found.length}`)),
            found.map((t) =>
              h(
                "div",
                { class: "task-line", dataset: { testid: "job-task", state: stateName(t.State) } },
                stateBadge(t.State),
                " ",
                link(`#/tasks/${t.ID}`, short(t.ID)),
                h("span", { class: "muted small" }, ` v${t.JobVersion} · ${ago(t.StartTime)}`),
              ),
            ),
          ),
        ),
      live.length === 0 && h("p", { class: "muted" }, "No task of this job runs now."),
    );
    if (job.Version !== versionsOf) loadVersions(job);
  }

  update();
  return { update };
}

function comparable(version) {
  const { Version, Stopped, Deployment, ...spec } = version;
  return JSON.stringify(spec, null, 2).split("\n");
}

const CONTEXT = 3; // unchanged lines shown around a change

function diffView(a, b) {
  const lines = diffLines(comparable(a), comparable(b));
  const near = lines.map(() => false);
  lines.forEach(([kind], i) => {
    if (kind === " ") return;
    for (let j = Math.max(0, i - CONTEXT); j <= Math.min(lines.length - 1, i + CONTEXT); j += 1) {
      near[j] = true;
    }
  });
  const shown = [];
  lines.forEach(([kind, text], i) => {
    if (near[i]) {
      const style = kind === "+" ? "add" : kind === "-" ? "del" : "same";
      shown.push(h("div", { class: style }, `${kind} ${text}`));
    } else if (i === 0 || near[i - 1]) {
      shown.push(h("div", { class: "gap" }, "  …"));
    }
  });
  return h(
    "pre",
    { class: "diff", dataset: { testid: "job-diff" } },
    near.some(Boolean) ? shown : h("span", { class: "muted" }, "No difference."),
  );
}
