// One task: what it is, where it runs and why there, its history, and its output
// following live (GET /tasks/{id}/logs?follow=true).

import { ApiError, del, get, stream } from "../api.js";
import { ago, fill, h, link, notify, ports, stateBadge, stateName, time, field } from "../dom.js";
import { store } from "../store.js";
import { placementText } from "./editor.js";

const TAIL = 500; // lines shown when the page opens
const KEEP = 5000; // lines kept on the page while it follows

export function mount(root, { args, canWrite }) {
  const id = args[0];
  const details = h("div", { class: "card summary", dataset: { testid: "task-details" } });
  const placement = h("div", { dataset: { testid: "task-placement" } });
  const historyBody = h("tbody");
  const logs = h("pre", { class: "logs", dataset: { testid: "task-logs" } });
  const logState = h("p", { class: "muted small", dataset: { testid: "task-logs-state" } });
  const stderr = h("input", { type: "checkbox", checked: true, id: "stderr" });
  let seen = null; // the task as last drawn: what changed decides what to read again
  let reading = null; // the AbortController of the log stream
  let readingFor = null; // the container whose log is being read

  const stop =
    canWrite &&
    h(
      "button",
      {
        class: "danger",
        dataset: { testid: "task-stop", write: "" },
        onclick: async () => {
          try {
            await del(`/tasks/${id}`);
            notify(`Task ${id.slice(0, 8)}: stop asked`);
          } catch (error) {
            notify(error.message, "error");
          }
        },
      },
      "Stop task",
    );

  fill(
    root,
    h("h1", {}, h("a", { href: "#/tasks", class: "muted" }, "Tasks"), " / ", h("span", { id: "task-title" }, id)),
    details,
    stop && h("div", { class: "buttons" }, stop),
    h("h2", {}, "Placement"),
    placement,
    h("h2", {}, "Logs"),
    h("div", { class: "log-bar" }, logState, h("label", { class: "small" }, stderr, " stderr")),
    logs,
    h("h2", {}, "History"),
    h(
      "table",
      { class: "grid", dataset: { testid: "task-history" } },
      h("thead", {}, h("tr", {}, ["Time", "State asked", "By"].map((t) => h("th", {}, t)))),
      historyBody,
    ),
  );
  stderr.addEventListener("change", () => follow(seen, true));

  async function loadHistory() {
    try {
      const events = await get(`/tasks/${id}/events`);
      fill(
        historyBody,
        events.map((e, i) =>
          h(
            "tr",
            {},
            h("td", { class: "small" }, time(e.Timestamp)),
            h("td", {}, stateBadge(e.State)),
            h("td", { class: "small" }, i === 0 ? "submitted" : stateName(e.State) === "Completed" ? "stop" : "manager"),
          ),
        ),
      );
    } catch (error) {
      fill(historyBody, h("tr", {}, h("td", { colspan: 3, class: "error" }, error.message)));
    }
  }

  // Read the task's output from its start, then follow it: again when a new container
  // replaces the old one (a restart), not while the same one runs.
  async function follow(task, force = false) {
    if (!task || !task.ContainerID) {
      logState.textContent = "No output yet: the task has not started.";
      return;
    }
    if (!force && readingFor === task.ContainerID) return;
    if (reading) reading.abort();
    const controller = new AbortController();
    reading = controller;
    readingFor = task.ContainerID;
    logs.textContent = "";
    logState.textContent = "Following…";
    const query = `follow=true&tail=${TAIL}&stderr=${stderr.checked}`;
    try {
      await stream(`/tasks/${id}/logs?${query}`, line, controller);
      if (!controller.signal.aborted) logState.textContent = "The container stopped: its output ends here.";
    } catch (error) {
      if (controller.signal.aborted) return;
      logState.textContent =
        error instanceof ApiError && error.status === 410
          ? "The container is gone, and its output with it."
          : `No output: ${error.message}`;
      if (error.status === 409 || error.status === 503) readingFor = null; // try again on the next change
    }
  }

  function line(item) {
    if (item.Error) {
      logState.textContent = `The stream broke: ${item.Error}`;
      return;
    }
    const text = h("span", { class: item.Stream === "stderr" ? "stderr" : "" }, `${item.Line}\n`);
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.append(text);
    while (logs.childNodes.length > KEEP) logs.firstChild.remove();
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  }

  function update() {
    const task = store.tasks.get(id);
    if (!task) {
      fill(details, h("p", { class: "error" }, `No task ${id}.`));
      return;
    }
    if (seen && seen.State === task.State && seen.ContainerID === task.ContainerID && seen.Reason === task.Reason) {
      return; // nothing that this page shows has changed
    }
    const restarted = !seen || seen.RestartCount !== task.RestartCount || seen.State !== task.State;
    seen = task;
    document.getElementById("task-title").textContent = `${task.Name} ${id.slice(0, 8)}`;
    fill(
      details,
      field("ID", h("code", {}, task.ID)),
      field("State", h("span", { dataset: { testid: "task-state" } }, stateBadge(task.State))),
      field("Desired", stateName(task.DesiredState)),
      field("Image", h("code", {}, task.Image)),
      task.Cmd && field("Command", h("code", {}, task.Cmd.join(" "))),
      field("Node", task.Node || "-"),
      task.Job && field("Job", link(`#/jobs/${encodeURIComponent(task.Job)}`, `${task.Job} v${task.JobVersion}`)),
      field("Ports", ports(task)),
      field("Health check", task.HealthCheck || "-"),
      field("Restart policy", task.RestartPolicy || "on-failure (default)"),
      field("Restarts", task.RestartCount),
      field("Reason", h("span", { dataset: { testid: "task-reason" } }, task.Reason || "-")),
      field("Container", h("code", {}, (task.ContainerID || "-").slice(0, 12))),
      field("Started", `${time(task.StartTime)} (${ago(task.StartTime)})`),
      field("Finished", time(task.FinishTime)),
    );
    fill(placement, placementView(task));
    if (restarted) loadHistory();
    follow(task);
  }

  update();
  return {
    update,
    unmount() {
      if (reading) reading.abort();
    },
  };
}

function placementView(task) {
  const p = task.Placement;
  if (!p) return h("p", { class: "muted" }, "No scheduler decision recorded for this task.");
  const filtered = Object.entries(p.NodesFiltered || {});
  return h(
    "div",
    { class: "card" },
    h("p", {}, placementText(p), p.Node ? `; chose ${p.Node}.` : "; none fits, so it waits."),
    filtered.length > 0 &&
      h(
        "table",
        { class: "grid narrow" },
        h("thead", {}, h("tr", {}, h("th", {}, "Check"), h("th", {}, "Nodes turned away"))),
        h("tbody", {}, filtered.map(([check, n]) => h("tr", {}, h("td", {}, check), h("td", {}, n)))),
      ),
    (p.TopScores || []).length > 0 &&
      h(
        "table",
        { class: "grid narrow" },
        h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Score"))),
        h(
          "tbody",
          {},
          p.TopScores.map((s) =>
            h(
              "tr",
              { class: s.Node === p.Node ? "chosen" : "" },
              h("td", {}, s.Node, s.Node === p.Node ? " ✓" : ""),
              h("td", {}, s.Score.toFixed(4)),
            ),
          ),
        ),
      ),
  );
}
