// What the pages show, kept live: the lists are read once (GET /tasks, /nodes, /jobs),
// then every change arrives on the event stream (GET /events), resumed from the index
// the lists were read at (their X-Cube-Index header), as Nomad's UI follows its
// blocking queries. An event's Payload is the whole object as the API shows it, so
// applying one twice is harmless: after a reconnect nothing is missed, and nothing
// goes wrong by being seen again.

import { call, get, stream } from "./api.js";

const RECENT = 100; // events kept for the overview, newest first

export const store = {
  tasks: new Map(), // by ID
  nodes: new Map(), // by Name
  jobs: new Map(), // by Name
  events: [],
  index: 0, // the last event applied
  live: false, // the event stream is open
  error: "",
};

const listeners = new Set();
let pending = null;

// Call fn (soon, once per burst of changes) whenever the store changes.
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function changed() {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    for (const fn of [...listeners]) fn();
  }, 50);
}

let following = null; // the AbortController of the open stream
let nodesDue = null;

// Load everything and follow the stream until stop(); onUnauthorized runs on a 401.
export async function start(onUnauthorized) {
  stop();
  const controller = new AbortController();
  following = controller;
  await load(controller);
  follow(controller, onUnauthorized);
}

export function stop() {
  if (following) following.abort();
  following = null;
  store.live = false;
}

// Read the lists, and the last few events for the overview.
async function load(controller) {
  const [tasks, nodes, jobs] = await Promise.all([
    call("GET", "/tasks", undefined, controller),
    call("GET", "/nodes", undefined, controller),
    call("GET", "/jobs", undefined, controller),
  ]);
  store.tasks = new Map(tasks.data.map((t) => [t.ID, t]));
  store.nodes = new Map(nodes.data.map((n) => [n.Name, n]));
  store.jobs = new Map(jobs.data.map((j) => [j.Name, j]));
  // Events after the oldest of the three reads: whatever changed since any of them.
  store.index = Math.min(tasks.index, nodes.index, jobs.index);
  const recent = [];
  const since = Math.max(0, store.index - 30);
  await stream(`/events?follow=false&index=${since}`, (e) => recent.unshift(e), controller);
  store.events = recent.filter((e) => e.Index <= store.index);
  changed();
}

// Follow the stream; when it breaks (the manager restarted, the network went), read
// everything again and follow from there, as a Kubernetes informer lists again: a
// manager without a store starts its events at 1 again, and this is right either way.
async function follow(controller, onUnauthorized) {
  let wait = 500;
  while (!controller.signal.aborted) {
    try {
      store.live = true;
      store.error = "";
      changed();
      await stream(`/events?index=${store.index}&heartbeat=5`, apply, controller);
    } catch (error) {
      store.error = error.message;
      if (error.status === 401) return onUnauthorized();
    }
    while (!controller.signal.aborted) {
      store.live = false;
      changed();
      // Back off while the manager is away; a timer between tries, not a wait for state.
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, 10000);
      try {
        await load(controller);
        wait = 500;
        break;
      } catch (error) {
        if (controller.signal.aborted) return;
        store.error = error.message;
        if (error.status === 401) return onUnauthorized();
      }
    }
  }
}

function remember(event) {
  store.events.unshift(event);
  if (store.events.length > RECENT) store.events.length = RECENT;
}

function apply(event) {
  if (event.Index <= store.index) return;
  store.index = event.Index;
  remember(event);
  const payload = event.Payload || {};
  if (event.Topic === "Task") {
    store.tasks.set(event.Key, payload);
    refreshNodes(); // a placement or an end changes what the nodes have allocated
  } else if (event.Topic === "Node") {
    if (event.Type === "NodeRemoved") store.nodes.delete(event.Key);
    else store.nodes.set(event.Key, { ...store.nodes.get(event.Key), ...payload });
  } else if (event.Topic === "Job") {
    store.jobs.set(event.Key, { ...store.jobs.get(event.Key), ...payload });
  } else if (event.Topic === "Deployment") {
    const { Job: name, ...deployment } = payload;
    const job = store.jobs.get(name);
    if (job) store.jobs.set(name, { ...job, Deployment: deployment });
  }
  changed();
}

// Allocations and machine figures are not events (they change with every placement and
// every second): read the nodes again, at most once a second, after tasks move.
function refreshNodes() {
  if (nodesDue) return;
  nodesDue = setTimeout(async () => {
    try {
      const nodes = await get("/nodes");
      for (const node of nodes) store.nodes.set(node.Name, node);
      changed();
    } catch {
      // the stream reports the manager's absence
    } finally {
      nodesDue = null;
    }
  }, 1000);
}

export function tasksOf(job) {
  return [...store.tasks.values()].filter((t) => t.Job === job);
}
