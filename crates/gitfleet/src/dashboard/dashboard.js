// The gitfleet dashboard. Everything shown comes from repositories and servers gitfleet does
// not control (URLs, error messages): it only ever enters the page as text (textContent,
// attributes set one by one), never as markup, and the page's Content-Security-Policy runs no
// script but this file.
"use strict";

const $ = (id) => document.getElementById(id);
const STATUSES = ["queued", "cloning", "completed", "failed"];
const FRESHNESS = ["fresh", "stale", "missing", "error", "quarantined", "archived"];
// Rows per page: 50, or `?limit=N` in the page's address (1 to 500).
const PAGE = Math.min(500, Math.max(1,
  parseInt(new URLSearchParams(location.search).get("limit") || "50", 10) || 50));

const view = {
  summary: null,
  cursor: null, // where the page shown starts (null: the first page)
  previous: [], // the cursors of the pages before it
  next: null,
  loads: 0, // counts the table's loads: an answer to an older one is dropped
  running: new Map(), // task id -> { url, attempt, progress, phase, rate }
  heard: new Map(), // task id -> when (this browser's clock) an event last told of it
  token: sessionStorage.getItem("gitfleet-token") || "",
};

/** An element with properties and children (strings become text nodes). */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key === "title" || key === "aria-label") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function when(text) {
  if (!text) return "—";
  const seconds = Math.round((Date.parse(text) - Date.now()) / 1000);
  const size = Math.abs(seconds);
  const amount =
    size < 60 ? `${size} s` :
    size < 3600 ? `${Math.round(size / 60)} min` :
    size < 172800 ? `${Math.round(size / 3600)} h` : `${Math.round(size / 86400)} d`;
  return seconds < 0 ? `${amount} ago` : `in ${amount}`;
}

function say(text) {
  $("message").textContent = text;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// --- counts and nodes ---

function card(kind, name, count, select) {
  const active = $(select).value === name;
  const button = el("button", { type: "button", class: `card ${name}${active ? " active" : ""}`,
    id: `count-${name}`, "data-kind": kind },
  el("span", { class: "n" }, String(count)), name);
  button.addEventListener("click", () => {
    $(select).value = active ? "" : name;
    reload();
  });
  return button;
}

function showSummary(summary) {
  view.summary = summary;
  $("where").textContent = `${summary.mode} · ${summary.name} · v${summary.version}`;
  $("total").textContent =
    `${summary.total.toLocaleString()} tracked · ${bytes(summary.disk_bytes)} on disk`;
  $("status-cards").replaceChildren(
    ...STATUSES.map((s) => card("status", s, summary.by_status[s] || 0, "filter-status")));
  $("freshness-cards").replaceChildren(
    ...FRESHNESS.map((f) => card("freshness", f, summary.by_freshness[f] || 0, "filter-freshness")));
  $("token-form").hidden = !summary.actions;
  const nodes = summary.nodes;
  $("nodes-section").hidden = !nodes;
  if (nodes) {
    $("nodes").tBodies[0].replaceChildren(...nodes.map((n) => el("tr", { "data-node": n.node_id },
      el("td", {}, n.node_id),
      el("td", {}, `${n.running} of ${n.concurrency}`),
      el("td", {}, el("progress", { max: Math.max(n.concurrency, 1), value: n.running })),
      el("td", {}, when(n.started_at)),
      el("td", {}, when(n.last_seen)))));
  }
}

// --- running transfers ---

function showRunning() {
  const items = [...view.running.entries()].map(([id, t]) => el("li",
    { class: "transfer", "data-id": id },
    el("span", { class: "url", title: t.url }, t.url),
    el("progress", { max: 100, value: t.progress }),
    el("span", { class: "detail" },
      `${t.progress}%${t.phase ? ` ${t.phase.replaceAll("_", " ")}` : ""}` +
      `${t.rate ? ` · ${bytes(t.rate)}/s` : ""}`)));
  $("running").replaceChildren(...items);
  $("no-running").hidden = items.length > 0;
  $("running-count").textContent = items.length ? String(items.length) : "";
}

function track(task) {
  if (task.status.status_type === "cloning") {
    const known = view.running.get(task.id);
    const same = known && known.attempt === task.attempts;
    view.running.set(task.id, {
      url: task.url,
      attempt: task.attempts,
      // Percent never goes backwards within one attempt; a new attempt starts again.
      progress: Math.max(same ? known.progress : 0, task.status.progress || 0),
      phase: task.phase || (same ? known.phase : null),
      rate: same ? known.rate : 0,
    });
  } else {
    view.running.delete(task.id);
  }
}

// --- the table of repositories ---

function actions(task) {
  if (!view.summary || !view.summary.actions) return null;
  const cell = el("td", { class: "actions" });
  const button = (action, label) => {
    const b = el("button", { type: "button", "data-action": action }, label);
    b.addEventListener("click", () => act(task.id, action));
    cell.append(b);
  };
  if (task.operation !== "init" && !task.archived) button("sync", "Sync now");
  if (task.quarantined) button("resume", "Resume");
  if (!["completed", "failed"].includes(task.status.status_type)) button("cancel", "Cancel");
  return cell;
}

function row(task) {
  const status = task.status.status_type;
  const progress = status === "cloning" && task.status.progress !== null &&
    task.status.progress !== undefined ? ` ${task.status.progress}%` : "";
  const error = task.status.error || "";
  const lastSync = task.last_success_at ? when(task.last_success_at) : "never";
  return el("tr", { "data-id": task.id },
    el("td", { class: "url", title: task.path }, task.url),
    el("td", { class: "status" }, el("span", { class: `badge ${status}` }, status + progress)),
    el("td", { class: "freshness" },
      el("span", { class: `badge ${task.freshness || ""}` }, task.freshness || "")),
    el("td", { class: "last-sync" }, lastSync),
    el("td", { class: "next-sync" }, task.archived ? "archived" :
      task.quarantined ? "quarantined" : when(task.next_sync_at)),
    el("td", { class: "size" }, bytes(task.last_sync ? task.last_sync.disk_bytes : null)),
    el("td", { class: "error" },
      task.error_code && status === "failed" ?
        el("code", { class: "code" }, task.error_code) : null,
      status === "failed" ? error : ""),
    actions(task) || el("td"));
}

function showPage(page) {
  if (page.tasks.length === 0 && page.before > 0) {
    // Everything from here on left the filter: back to the first page.
    reload();
    return;
  }
  view.next = page.next === null || page.next === undefined ? null : page.next;
  $("tasks").tBodies[0].replaceChildren(...page.tasks.map(row));
  $("page-info").textContent = page.matched === 0 ? "nothing matches" :
    `${page.before + 1}–${page.before + page.tasks.length} of ${page.matched.toLocaleString()}`;
  $("prev").disabled = view.cursor === null;
  $("next").disabled = view.next === null;
}

function pageQuery() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  const text = $("filter-text").value.trim();
  if (text) query.set("q", text);
  if ($("filter-status").value) query.set("status", $("filter-status").value);
  if ($("filter-freshness").value) query.set("freshness", $("filter-freshness").value);
  if (view.cursor !== null) query.set("cursor", String(view.cursor));
  return query;
}

/** The counts and the page shown, read again; only the newest of overlapping loads is shown. */
async function refresh() {
  const load = ++view.loads;
  try {
    const [summary, page] = await Promise.all([
      api("/api/summary"), api(`/api/tasks?${pageQuery()}`)]);
    if (load !== view.loads) return;
    showSummary(summary);
    showPage(page);
    if ($("message").textContent.startsWith("Cannot read")) say("");
  } catch (e) {
    if (load === view.loads) say(`Cannot read the fleet: ${e.message}`);
  }
}

/** The running transfers, read again; what an event told of since the question stands. */
async function loadRunning() {
  const asked = Date.now();
  const page = await api(`/api/tasks?status=cloning&limit=500`);
  const newer = (id) => (view.heard.get(id) || 0) >= asked;
  for (const id of [...view.running.keys()]) {
    if (!newer(id)) view.running.delete(id);
  }
  page.tasks.filter((t) => !newer(t.id)).forEach(track);
  showRunning();
}

/** The filters changed: back to the first page. */
function reload() {
  view.cursor = null;
  view.previous = [];
  refresh();
}

let refreshTimer = null;
/** At most one refresh of the counts and the page shown every 0.7 s. */
function refreshSoon() {
  if (refreshTimer === null) {
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refresh();
    }, 700);
  }
}

async function act(id, action) {
  try {
    const result = await api(`/api/tasks/${encodeURIComponent(id)}/${action}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${view.token}` },
    });
    say(`${action}: ${result.status}`);
    refreshSoon();
  } catch (e) {
    say(`${action} failed: ${e.message}`);
  }
}

// --- live events ---

let retry = 1000;
let polling = null;

/** Live events; while there are none (the server restarts, is starting, or has no room for
 * another reader), the page reads the counts and the table every five seconds and tries
 * again with a growing delay. */
function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    retry = 1000;
    clearInterval(polling);
    polling = null;
    $("live").textContent = "live";
    $("live").classList.remove("off");
    refresh();
    loadRunning().catch(() => {});
  });
  source.addEventListener("error", () => {
    $("live").textContent = "reconnecting";
    $("live").classList.add("off");
    if (polling === null) polling = setInterval(refresh, 5000);
    // The browser retries a dropped stream by itself, but not one answered with an error.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(listen, retry);
      retry = Math.min(retry * 2, 30000);
    }
  });
  source.addEventListener("state", (event) => {
    const task = JSON.parse(event.data);
    view.heard.set(task.id, Date.now());
    track(task);
    showRunning();
    const shown = $("tasks").querySelector(`tr[data-id="${CSS.escape(task.id)}"]`);
    if (shown) shown.replaceWith(row(task));
    refreshSoon();
  });
  source.addEventListener("progress", (event) => {
    const sample = JSON.parse(event.data);
    const known = view.running.get(sample.task_id);
    if (!known) return;
    if (known.attempt !== sample.attempt) {
      known.attempt = sample.attempt;
      known.progress = 0;
    }
    known.progress = Math.max(known.progress, sample.progress);
    known.phase = sample.phase;
    known.rate = sample.bytes_per_sec;
    showRunning();
    const badge = $("tasks").querySelector(
      `tr[data-id="${CSS.escape(sample.task_id)}"] td.status .badge`);
    if (badge) badge.textContent = `cloning ${known.progress}%`;
  });
  source.addEventListener("resync", () => {
    refresh();
    loadRunning().catch(() => {});
  });
}

function start() {
  // Each click moves one page: the buttons wait for the page they asked for.
  $("prev").addEventListener("click", () => {
    if (view.cursor === null) return;
    $("prev").disabled = $("next").disabled = true;
    view.cursor = view.previous.pop() ?? null;
    refresh();
  });
  $("next").addEventListener("click", () => {
    if (view.next === null) return;
    $("prev").disabled = $("next").disabled = true;
    view.previous.push(view.cursor);
    view.cursor = view.next;
    view.next = null;
    refresh();
  });
  let typing = null;
  $("filter-text").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(reload, 250);
  });
  $("filter-status").addEventListener("change", reload);
  $("filter-freshness").addEventListener("change", reload);
  $("token").value = view.token;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    view.token = $("token").value;
    sessionStorage.setItem("gitfleet-token", view.token);
    say("Token kept for this tab.");
    refresh();
  });
  refresh();
  listen();
}

start();
