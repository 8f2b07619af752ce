// Submit or update a job from JSON or YAML: plan it first (POST /jobs/{name}/plan, a
// dry run that stores nothing), then apply it (POST /jobs), as `cube plan` and
// `cube job run` do.

import { get, post } from "../api.js";
import { fill, h, notify } from "../dom.js";
import { store } from "../store.js";
import yaml from "../../vendor/js-yaml.mjs";

const EXAMPLE = `Name: web
Type: service
Count: 3
Task:
  Image: cube/http:latest
  ExposedPorts:
    80/tcp: {}
  HealthCheck: /health
Update:
  MaxParallel: 1
  MinHealthyTime: 5
`;

const OUTPUTS = ["Version", "Stopped", "Deployment"];

// A job as the editor shows it: its fields without the outputs and the unset ones.
function specOf(job) {
  const spec = pruned(job);
  for (const field of OUTPUTS) delete spec[field];
  return yaml.dump(spec, { lineWidth: 100, noRefs: true });
}

function pruned(value) {
  if (Array.isArray(value)) return value.map(pruned);
  if (!value || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => [k, pruned(v)]),
  );
}

// The editor's text as a job; a thrown Error says what is wrong with it.
export function parse(text) {
  const trimmed = text.trim();
  if (!trimmed) throw new Error("the editor is empty");
  let job;
  try {
    job = trimmed.startsWith("{") ? JSON.parse(trimmed) : yaml.load(trimmed);
  } catch (error) {
    throw new Error(`not valid ${trimmed.startsWith("{") ? "JSON" : "YAML"}: ${error.message}`);
  }
  if (!job || typeof job !== "object" || Array.isArray(job)) {
    throw new Error("a job is an object with Name, Count and Task");
  }
  if (typeof job.Name !== "string" || !job.Name) throw new Error("the job needs a Name");
  return job;
}

export function mount(root, { args, canWrite }) {
  const name = args[0];
  const editor = h("textarea", {
    class: "editor",
    spellcheck: false,
    rows: 22,
    dataset: { testid: "job-editor" },
  });
  const error = h("p", { class: "error", hidden: true, dataset: { testid: "job-editor-error" } });
  const result = h("div", { class: "plan", dataset: { testid: "job-plan-result" } });
  const planButton = h("button", { dataset: { testid: "job-plan", write: "" }, onclick: plan }, "Plan");
  const applyButton = h(
    "button",
    { class: "primary", disabled: true, dataset: { testid: "job-apply", write: "" }, onclick: apply },
    "Apply",
  );
  let planned = null; // the text the shown plan is for: Apply submits exactly that

  editor.value = EXAMPLE;
  if (name) {
    const known = store.jobs.get(name);
    if (known) editor.value = specOf(known);
    get(`/jobs/${encodeURIComponent(name)}`)
      .then((job) => {
        if (editor.value === EXAMPLE || (known && editor.value === specOf(known))) {
          editor.value = specOf(job);
        }
      })
      .catch((failure) => showError(failure.message));
  }
  editor.addEventListener("input", () => {
    applyButton.disabled = editor.value !== planned;
  });

  fill(
    root,
    h("h1", {}, name ? `Update job ${name}` : "New job"),
    !canWrite && h("p", { class: "error" }, "A read-only token cannot submit jobs."),
    h(
      "p",
      { class: "muted" },
      "A job in YAML or JSON (the fields of docs/api.md, “Jobs”). Plan shows what it would do, " +
        "changing nothing; Apply submits what was planned.",
    ),
    editor,
    error,
    canWrite && h("div", { class: "buttons" }, planButton, applyButton),
    result,
  );

  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
  }

  async function plan() {
    showError("");
    fill(result);
    applyButton.disabled = true;
    let job;
    try {
      job = parse(editor.value);
      const answer = await post(`/jobs/${encodeURIComponent(job.Name)}/plan`, job);
      planned = editor.value;
      applyButton.disabled = false;
      fill(result, planView(answer));
    } catch (failure) {
      showError(failure.message);
    }
  }

  async function apply() {
    showError("");
    try {
      const job = parse(planned);
      const answer = await post("/jobs", job);
      notify(`Job ${answer.Name}: version ${answer.Version} submitted`);
      location.hash = `#/jobs/${encodeURIComponent(answer.Name)}`;
    } catch (failure) {
      showError(failure.message);
    }
  }

  return {};
}

const CHANGES = {
  create: "a new job",
  update: "a new version: a deployment starts",
  scale: "a new Count (or a stopped job run again)",
  none: "nothing: the job is already this",
};

export function planView(plan) {
  return [
    h("h2", {}, "Plan"),
    h(
      "p",
      { dataset: { testid: "plan-summary" } },
      plan.Job ? `Job ${plan.Job}, version ${plan.Version}: ${CHANGES[plan.Change] || plan.Change}. ` : "",
      `Places ${plan.Place.length} task${plan.Place.length === 1 ? "" : "s"} now`,
      plan.Waiting ? ` (${plan.Waiting} would wait: nowhere fits)` : "",
      `, stops ${plan.Stop}.`,
    ),
    plan.Place.length > 0 &&
      h(
        "table",
        { class: "grid" },
        h("thead", {}, h("tr", {}, ["Task", "Node", "Why"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          plan.Place.map((p) =>
            h(
              "tr",
              { dataset: { testid: "plan-row" } },
              h("td", {}, p.Name),
              h("td", {}, p.Node || h("span", { class: "error" }, "waits")),
              h("td", { class: "small" }, p.Reason || placementText(p.Placement)),
            ),
          ),
        ),
      ),
  ];
}

export function placementText(placement) {
  if (!placement) return "-";
  const filtered = Object.entries(placement.NodesFiltered || {})
    .map(([check, n]) => `${n} ${check}`)
    .join(", ");
  return (
    `${placement.Scheduler}: ${placement.NodesFeasible} of ${placement.NodesEvaluated} nodes fit` +
    (filtered ? ` (filtered: ${filtered})` : "")
  );
}
