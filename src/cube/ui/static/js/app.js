// The UI's entry: who is logged in, which page the address names, and keeping the
// page in step with the store. Pages are hash routes (#/jobs/web), so the manager
// serves one HTML file and a reload lands on the same page.

import { ApiError, get, setToken, token } from "./api.js";
import { fill, h, notify } from "./dom.js";
import { start, stop, store, subscribe } from "./store.js";
import * as jobEditor from "./views/editor.js";
import * as job from "./views/job.js";
import * as jobs from "./views/jobs.js";
import * as login from "./views/login.js";
import * as overview from "./views/overview.js";
import * as task from "./views/task.js";
import * as tasks from "./views/tasks.js";

const ROUTES = [
  [/^\/?$/, overview, "overview"],
  [/^\/jobs$/, jobs, "jobs"],
  [/^\/jobs\/new$/, jobEditor, "jobs"],
  [/^\/jobs\/([^/]+)\/edit$/, jobEditor, "jobs"],
  [/^\/jobs\/([^/]+)$/, job, "jobs"],
  [/^\/tasks$/, tasks, "tasks"],
  [/^\/tasks\/([^/]+)$/, task, "tasks"],
];

const session = { me: null, canWrite: false };
let page = null; // the mounted view: {update, unmount}

function parse() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { path: path || "/", query: new URLSearchParams(query || "") };
}

function route() {
  if (!session.me) return;
  const { path, query } = parse();
  if (page && page.unmount) page.unmount();
  page = null;
  const root = document.getElementById("app");
  for (const [pattern, view, section] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.route === section);
    }
    fill(root);
    page = view.mount(root, {
      args: match.slice(1).map(decodeURIComponent),
      query,
      canWrite: session.canWrite,
    });
    return;
  }
  fill(root, h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, path), "."));
}

function showLive() {
  const live = document.getElementById("live");
  live.textContent = store.live ? "live" : store.error ? "reconnecting…" : "connecting…";
  live.className = `live ${store.live ? "on" : "off"}`;
  live.title = store.error || "Following the manager's event stream";
}

function showWho() {
  const who = document.getElementById("who");
  if (!session.me || !session.me.ID) {
    fill(who); // tokens are off: nobody to log out
    return;
  }
  const role = session.me.Role === "read" ? "read-only" : "management";
  fill(
    who,
    h("span", { class: "muted" }, `${session.me.Name || "token"} (${role})`),
    h("button", { class: "link", dataset: { testid: "logout" }, onclick: logout }, "Log out"),
  );
}

function logout() {
  setToken("");
  loggedOut();
}

function loggedOut() {
  stop();
  session.me = null;
  showWho();
  if (page && page.unmount) page.unmount();
  page = null;
  login.mount(document.getElementById("app"), { onLogin: authenticate });
}

// Who are we? GET /tokens/self answers for any token (and, with tokens off, for none);
// with no token kept, /health says whether one is needed, so nothing is refused.
async function authenticate() {
  try {
    if (!token() && (await get("/health")).Tokens) {
      loggedOut();
      return false;
    }
    session.me = await get("/tokens/self");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      loggedOut();
      return false;
    }
    notify(`Cannot reach the manager: ${error.message}`, "error");
    return false;
  }
  session.canWrite = session.me.Role === "management";
  document.body.classList.toggle("read-only", !session.canWrite);
  showWho();
  await start(loggedOut);
  route();
  return true;
}

subscribe(() => {
  showLive();
  if (page && page.update) page.update();
});
window.addEventListener("hashchange", route);
authenticate();
