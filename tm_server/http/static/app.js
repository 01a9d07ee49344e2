// tm's dashboard: plain ES module, no build step. What ships is what the browser runs.
//
// Routes (the hash): #/ overview, #/module/NAME a module's tasks, live from the watch
// stream, #/task/ID a task's status and tree, live from the wait stream.
// Big lists (a module's tasks, a task's tree) keep their data in memory and render only
// the rows in view (fixed row height); stream updates are coalesced into one render per
// animation frame.

const ROW = 32; // px, the rows' fixed height (keep in step with --row in app.css)
const OVERSCAN = 8; // rows rendered above and below the view
const FINAL = new Set(["done", "failed", "suspended"]);
const STATES = ["created", "running", "done", "failed", "suspended"];
const UNSET = "1970-01-01T00:00:00Z";

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

/** An ISO time for people: "2026-12-01 10:00:00Z"; unset (epoch or null) is a dash. */
function fmtTime(iso) {
  if (!iso || iso === UNSET) return "—";
  return iso.replace("T", " ");
}

function fmtAge(iso) {
  if (!iso || iso === UNSET) return "—";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (Number.isNaN(s)) return iso;
  if (s < 1) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function fmtNum(x) {
  if (x === null || x === undefined) return "—";
  if (Number.isInteger(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(1) : x.toPrecision(2);
}

function fmtSeconds(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** "3 / 10 tables", "3 tables", or "" when nothing is known. */
function progressText(t) {
  const units = t.progress_units ? ` ${t.progress_units}` : "";
  const done = t.progress_completed || 0;
  const total = t.progress_total || 0;
  if (total > 0) return `${fmtNum(done)} / ${fmtNum(total)}${units}`;
  if (done > 0) return `${fmtNum(done)}${units}`;
  return "";
}

function percentOf(t) {
  const total = t.progress_total || 0;
  if (total > 0) return Math.max(0, Math.min(100, (100 * (t.progress_completed || 0)) / total));
  return t.state === "done" ? 100 : null;
}

/** A progress bar (role progressbar): determinate with a total, indeterminate while running without. */
function progressBar(big = false) {
  const inner = h("div", { class: "bar-inner" });
  const outer = h("div", { class: big ? "bar-outer big" : "bar-outer", role: "progressbar",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": "Progress" }, inner);
  outer._inner = inner;
  return outer;
}

function setBar(bar, t) {
  const pct = percentOf(t);
  const indeterminate = pct === null && t.state === "running";
  bar.className = `${bar.classList.contains("big") ? "bar-outer big" : "bar-outer"} ${t.state}${
    indeterminate ? " indeterminate" : ""}`;
  if (pct === null) {
    bar.removeAttribute("aria-valuenow");
    bar._inner.style.width = indeterminate ? "" : "0%";
  } else {
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    bar._inner.style.width = `${pct}%`;
  }
}

function badge(state) {
  return h("span", { class: `badge ${state}`, testid: "state", text: state });
}

function shortId(id) {
  return id;
}

// ---- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.reason = (body && body.reason) || "";
    this.body = body;
  }
  toString() {
    return this.reason ? `${this.message} (${this.reason})` : this.message;
  }
}

/** One call: JSON in and out; POST/DELETE carry the CSRF header; errors are ApiError. */
async function api(method, path, { query, json } = {}) {
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === "") continue;
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else q.append(k, String(v));
    }
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    const csrf = cookie("tm_csrf");
    if (csrf) headers["X-TM-CSRF"] = csrf;
  }
  const init = { method, headers, credentials: "same-origin" };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const resp = await fetch(url, init);
  const text = await resp.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text };
    }
  }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return { body, headers: resp.headers };
}

async function get(path, query) {
  return (await api("GET", path, { query })).body;
}

// ---- the shell: header, banner, login, router -----------------------------------------------

const app = {
  whoami: null,
  nodes: null,
  view: null, // the current view: { close() }
};

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

function showError(err) {
  const el = $("error-banner");
  if (!err) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.textContent = String(err instanceof ApiError ? err.toString() : err.message || err);
  el.hidden = false;
}

/** What a view does with an error: a 401 asks to log in, anything else goes to the banner. */
function fail(err) {
  if (err instanceof ApiError && err.status === 401) {
    showLogin(err);
    return;
  }
  console.error(err);
  showError(err);
}

function canAbort(module) {
  const can = app.whoami && app.whoami.can;
  if (!can) return false;
  if (can.abort === true) return true;
  return Array.isArray(can.abort) && can.abort.includes(module);
}

function canSetTtl() {
  return Boolean(app.whoami && app.whoami.can && app.whoami.can.set_ttl);
}

function setCrumbs(...items) {
  const nav = $("crumbs");
  nav.replaceChildren();
  for (const item of items) {
    nav.append(h("span", { text: "/" }), item);
  }
}

/** This node's name: the one the server says, else the only node. */
function localNodeName() {
  const w = app.whoami || {};
  if (w.node) return w.node;
  const nodes = app.nodes || [];
  const mine = nodes.find((n) => n.self || n.local || n.this);
  if (mine) return mine.name;
  if (nodes.length === 1) return nodes[0].name;
  return nodes.length ? `${nodes.length} nodes` : "—";
}

function renderHeader() {
  const w = app.whoami;
  $("principal").textContent = w ? w.principal || "anonymous" : "…";
  $("node-name").textContent = localNodeName();
  $("logout").hidden = !(w && w.checks_callers && w.principal);
}

async function loadIdentity() {
  app.whoami = await get("/tm/v1/whoami");
  try {
    app.nodes = await get("/tm/v1/nodes");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
    app.nodes = null;
  }
  renderHeader();
}

function closeView() {
  if (app.view) {
    try {
      app.view.close();
    } catch (err) {
      console.error(err);
    }
    app.view = null;
  }
}

function mount(...children) {
  const main = document.getElementById("view");
  main.replaceChildren(...children);
  return main;
}

function showLogin(err) {
  closeView();
  setCrumbs(h("span", { text: "log in" }));
  showError(null);
  const input = h("input", { type: "password", id: "login-token", name: "token",
    autocomplete: "current-password", required: true, testid: "login-token" });
  const msg = h("p", { class: "form-error", role: "alert", testid: "login-error" });
  msg.hidden = true;
  const button = h("button", { type: "submit", class: "btn", text: "Log in", testid: "login-submit" });
  const form = h("form", { testid: "login-form", "aria-label": "Log in" },
    h("label", { for: "login-token", text: "Token" }), input, button, msg);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    msg.hidden = true;
    try {
      await api("POST", "/tm/v1/login", { json: { token: input.value } });
      input.value = "";
      await route();
    } catch (e) {
      msg.textContent = e instanceof ApiError ? e.toString() : String(e);
      msg.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  const why = err && err.message ? h("p", { class: "muted", text: err.toString() }) : null;
  mount(h("section", { class: "panel login" }, h("h1", { text: "Log in to tm" }),
    h("p", { class: "muted", text: "This server checks callers: paste your token." }), why, form));
  input.focus();
}

async function route() {
  closeView();
  showError(null);
  mount(h("p", { class: "muted", text: "Loading…" }));
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, queryString] = hash.split("?");
  const params = new URLSearchParams(queryString || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    await loadIdentity();
  } catch (err) {
    fail(err);
    return;
  }
  try {
    if (parts.length === 0) app.view = new OverviewView();
    else if (parts[0] === "module" && parts[1]) app.view = new ModuleView(parts[1], params);
    else if (parts[0] === "task" && parts[1]) app.view = new TaskView(parts[1]);
    else {
      setCrumbs(h("span", { text: "not found" }));
      mount(h("p", { text: `No such page: ${hash}` }));
      return;
    }
    await app.view.start();
  } catch (err) {
    fail(err);
  }
}

// ---- the virtualised list -----------------------------------------------------------------

/**
 * A list of fixed-height rows that renders only those in view (plus some overscan).
 * `getItem(i)` gives the i-th item; `paint(rowEl, item, i)` fills a row; `make()` builds one.
 * Rows are reused: a row is repainted only when its item (by identity) changed.
 */
class VirtualList {
  constructor({ columns, make, paint, onOpen, label, testid, empty }) {
    this.make = make;
    this.paint = paint;
    this.count = 0;
    this.getItem = () => null;
    this.rows = [];
    this.head = h("div", { class: "vt-head", role: "row" },
      columns.map((c) => h("div", { role: "columnheader", text: c })));
    this.rowsEl = h("div", { class: "vt-rows", role: "rowgroup" });
    this.spacer = h("div", { class: "vt-spacer" });
    this.emptyEl = h("div", { class: "vt-empty", text: empty || "Nothing here." });
    this.scroller = h("div", { class: "vt-scroll", testid: `${testid}-scroll` },
      this.spacer, this.rowsEl, this.emptyEl);
    this.el = h("div", { class: "vt", role: "table", "aria-label": label, testid }, this.head,
      this.scroller);
    this.pending = false;
    this.scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.rowsEl.addEventListener("click", (ev) => {
      if (ev.target.closest("a")) return; // a link inside the row does its own thing
      const row = ev.target.closest(".vt-row");
      if (row && row._item && onOpen) onOpen(row._item);
    });
    this.resizeObserver = new ResizeObserver(() => this.schedule());
    this.resizeObserver.observe(this.scroller);
  }

  setData(count, getItem) {
    this.count = count;
    this.getItem = getItem;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  scrollToIndex(i) {
    this.scroller.scrollTop = i * ROW;
  }

  render() {
    const height = this.scroller.clientHeight || 600;
    this.spacer.style.height = `${this.count * ROW}px`;
    this.el.setAttribute("aria-rowcount", String(this.count));
    this.emptyEl.hidden = this.count > 0;
    const top = this.scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.count, Math.ceil((top + height) / ROW) + OVERSCAN);
    const n = Math.max(0, last - first);
    while (this.rows.length < n) {
      const row = this.make();
      row.classList.add("vt-row");
      row.setAttribute("role", "row");
      this.rowsEl.append(row);
      this.rows.push(row);
    }
    while (this.rows.length > n) this.rows.pop().remove();
    this.rowsEl.style.transform = `translateY(${first * ROW}px)`;
    for (let k = 0; k < n; k++) {
      const i = first + k;
      const row = this.rows[k];
      const item = this.getItem(i);
      if (row._item === item && row._index === i) continue;
      row._item = item;
      row._index = i;
      row.setAttribute("aria-rowindex", String(i + 1));
      this.paint(row, item, i);
    }
  }

  close() {
    this.resizeObserver.disconnect();
  }
}

// ---- a stream (EventSource) that says when it broke, and why --------------------------------

/**
 * Opens an EventSource and calls `handlers[event](data)` with parsed JSON. A server-sent
 * `event: error` goes to `onServerError(body)`; a broken connection that the browser
 * gives up on (any non-200 answer) is diagnosed by a plain request to `probe`, so a 401
 * shows the login form and anything else its JSON error.
 */
class Stream {
  constructor(url, handlers, { onServerError, onState, probe }) {
    this.closed = false;
    this.es = new EventSource(url, { withCredentials: true });
    this.onState = onState || (() => {});
    for (const [name, fn] of Object.entries(handlers)) {
      this.es.addEventListener(name, (ev) => {
        if (this.closed) return;
        let data = null;
        try {
          data = ev.data ? JSON.parse(ev.data) : null;
        } catch (err) {
          console.error("bad event data", name, err);
          return;
        }
        fn(data, ev);
      });
    }
    this.es.addEventListener("open", () => this.onState("live"));
    this.es.addEventListener("error", async (ev) => {
      if (this.closed) return;
      if (typeof ev.data === "string") {
        // The server's own `event: error`: the stream is over.
        let body = null;
        try {
          body = JSON.parse(ev.data);
        } catch {
          body = { message: ev.data };
        }
        this.close();
        this.onState("ended");
        onServerError(new ApiError(body.code || 500, body), body);
        return;
      }
      if (this.es.readyState === EventSource.CONNECTING) {
        this.onState("reconnecting");
        return;
      }
      this.close();
      this.onState("broken");
      try {
        await probe();
        onServerError(new Error("the stream was refused"), null);
      } catch (err) {
        onServerError(err, err.body);
      }
    });
  }

  close() {
    this.closed = true;
    this.es.close();
  }
}

function liveIndicator() {
  const el = h("span", { class: "live", testid: "live", text: "connecting" });
  el.set = (state) => {
    el.textContent = state;
    el.className = `live${state === "live" ? " on" : state === "broken" || state === "ended" ? " off" : ""}`;
  };
  return el;
}

// ---- #/ overview --------------------------------------------------------------------------

class OverviewView {
  close() {}

  async start() {
    setCrumbs(h("span", { text: "overview" }));
    const [modules, ttl, userTtl] = await Promise.all([
      get("/task_manager/list_modules"),
      get("/task_manager/ttl"),
      get("/task_manager/user_ttl"),
    ]);
    const nodes = app.nodes || [];
    const nodeRows = nodes.map((n) => {
      const state = n.left ? "left" : n.alive ? "alive" : "dead";
      return h("tr", { testid: "node-row", "data-node": n.name },
        h("td", {}, h("strong", { text: n.name })),
        h("td", { class: "mono", text: n.address || "—" }),
        h("td", { text: n.version || "—" }),
        h("td", {}, h("span", { class: `badge ${state}`, testid: "node-state", text: state })),
        h("td", { title: n.heartbeat_at || "", text: fmtAge(n.heartbeat_at) }),
        h("td", { text: fmtTime(n.started_at) }));
    });
    const nodesPanel = h("section", { class: "panel", "aria-labelledby": "nodes-h" },
      h("h2", { id: "nodes-h", text: `Nodes (${nodes.length})` }),
      h("table", { class: "plain", testid: "nodes" },
        h("thead", {}, h("tr", {}, ["name", "address", "version", "state", "heartbeat", "started"]
          .map((c) => h("th", { text: c })))),
        h("tbody", {}, nodeRows)));
    const modulesPanel = h("section", { class: "panel", "aria-labelledby": "modules-h" },
      h("h2", { id: "modules-h", text: `Modules (${modules.length})` }),
      modules.length
        ? h("ul", { testid: "modules" }, [...modules].sort().map((m) => h("li", {},
          h("a", { href: `#/module/${encodeURIComponent(m)}`, testid: "module-link", text: m }))))
        : h("p", { class: "muted", text: "No module registered." }));
    const ttlPanel = h("section", { class: "panel", "aria-labelledby": "ttl-h" },
      h("h2", { id: "ttl-h", text: "Retention" }),
      h("table", { class: "plain", testid: "ttl" }, h("tbody", {},
        this.ttlRow("ttl", "Task TTL", "finished tasks stay this long", ttl),
        this.ttlRow("user_ttl", "User task TTL", "finished user tasks stay this long",
          userTtl))));
    mount(h("h1", { text: "Overview" }), nodesPanel, h("div", { class: "grid2" }, modulesPanel,
      ttlPanel));
  }

  ttlRow(param, title, help, value) {
    const id = param.replace("_", "-");
    const shown = h("strong", { class: "num", testid: `${id}-value`, text: String(value) });
    const cell = h("td");
    if (canSetTtl()) {
      const input = h("input", { type: "number", min: "0", step: "1", id: `${id}-input`,
        testid: `${id}-input`, value: String(value), "aria-label": `New ${title} (seconds)` });
      const form = h("form", { class: "inline", "aria-label": `Set ${title}` }, input,
        h("button", { type: "submit", class: "btn", text: "Set", testid: `${id}-set`,
          "aria-label": `Set ${title}` }));
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try {
          await api("POST", `/task_manager/${param}`, { query: { [param]: input.value } });
          shown.textContent = String(await get(`/task_manager/${param}`));
          showError(null);
        } catch (err) {
          fail(err);
        }
      });
      cell.append(form);
    }
    return h("tr", {}, h("td", {}, h("div", { text: title }), h("div", { class: "muted", text: help })),
      h("td", {}, shown, " s"), cell);
  }
}

// ---- #/module/NAME ------------------------------------------------------------------------

class ModuleView {
  constructor(module, params) {
    this.module = module;
    this.filters = {
      internal: params.get("internal") === "true",
      keyspace: params.get("keyspace") || "",
      table: params.get("table") || "",
      state: (params.get("state") || "").split(",").filter(Boolean),
      type: params.get("type") || "",
    };
    this.tasks = new Map(); // task_id -> task_stats, in arrival order
    this.order = []; // the ids shown, in order (rebuilt when a task comes or goes)
    this.orderStale = true;
    this.dirty = false;
    this.frame = 0;
    this.stream = null;
    this.snapshotDone = false;
    this.snapshotSeen = null;
    this.updates = 0;
  }

  close() {
    if (this.stream) this.stream.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.list) this.list.close();
    clearTimeout(this.typing);
  }

  async start() {
    const m = this.module;
    setCrumbs(h("a", { href: `#/module/${encodeURIComponent(m)}`, text: `module ${m}` }));
    this.live = liveIndicator();
    this.countEl = h("strong", { class: "num", testid: "task-count", text: "0" });
    this.statesEl = h("span", { class: "muted", testid: "state-counts" });
    this.snapEl = h("span", { class: "muted", testid: "snapshot", text: "loading…" });
    this.list = new VirtualList({
      columns: ["task", "state", "type", "scope / entity", "keyspace.table", "progress", "",
        "created"],
      label: `Tasks of module ${m}`,
      testid: "tasks",
      empty: "No task matches.",
      make: () => this.makeRow(),
      paint: (row, t) => this.paintRow(row, t),
      onOpen: (t) => {
        location.hash = `#/task/${encodeURIComponent(t.task_id)}`;
      },
    });
    this.list.el.classList.add("tasks");
    this.list.setData(0, (i) => this.tasks.get(this.order[i]));
    mount(h("div", { class: "task-head" }, h("h1", { text: `Module ${m}` }), this.live),
      this.filtersForm(),
      h("div", { class: "summary" }, h("span", {}, this.countEl, " tasks"), this.statesEl,
        this.snapEl),
      this.list.el);
    this.connect();
  }

  filtersForm() {
    const f = this.filters;
    const internal = h("input", { type: "checkbox", id: "f-internal", testid: "filter-internal",
      checked: f.internal });
    const keyspace = h("input", { type: "text", id: "f-keyspace", testid: "filter-keyspace",
      value: f.keyspace, placeholder: "any" });
    const table = h("input", { type: "text", id: "f-table", testid: "filter-table",
      value: f.table, placeholder: "any" });
    const type = h("input", { type: "text", id: "f-type", testid: "filter-type", value: f.type,
      placeholder: "any" });
    const stateBoxes = STATES.map((st) => h("input", { type: "checkbox", value: st,
      id: `f-state-${st}`, testid: `filter-state-${st}`, checked: f.state.includes(st) }));
    const state = h("fieldset", { class: "states", testid: "filter-state" },
      h("legend", { text: "State" }),
      stateBoxes.map((box, i) => h("label", { class: `check chip ${STATES[i]}` }, box, STATES[i])));
    const apply = () => {
      this.filters = {
        internal: internal.checked,
        keyspace: keyspace.value.trim(),
        table: table.value.trim(),
        state: stateBoxes.filter((b) => b.checked).map((b) => b.value),
        type: type.value.trim(),
      };
      this.reconnect();
    };
    internal.addEventListener("change", apply);
    state.addEventListener("change", apply);
    for (const input of [keyspace, table, type]) {
      input.addEventListener("input", () => {
        clearTimeout(this.typing);
        this.typing = setTimeout(apply, 300);
      });
    }
    const form = h("form", { class: "panel filters", "aria-label": "Filters", testid: "filters" },
      h("label", { class: "check" }, internal, "internal tasks"),
      h("div", { class: "field" }, h("label", { for: "f-keyspace", text: "Keyspace" }), keyspace),
      h("div", { class: "field" }, h("label", { for: "f-table", text: "Table" }), table),
      h("div", { class: "field" }, h("label", { for: "f-type", text: "Type" }), type),
      state);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      apply();
    });
    return form;
  }

  query() {
    const f = this.filters;
    const q = new URLSearchParams({ module: this.module, snapshot: "true" });
    if (f.internal) q.set("internal", "true");
    if (f.keyspace) q.set("keyspace", f.keyspace);
    if (f.table) q.set("table", f.table);
    if (f.type) q.set("type", f.type);
    if (f.state.length) q.set("state", f.state.join(","));
    return q;
  }

  /** Keeps the filters in the address, so a reload or a shared link shows the same. */
  saveFilters() {
    const q = this.query();
    q.delete("module");
    q.delete("snapshot");
    const hash = `#/module/${encodeURIComponent(this.module)}${q.toString() ? `?${q}` : ""}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  reconnect() {
    if (this.stream) this.stream.close();
    this.tasks.clear();
    this.orderStale = true;
    this.snapshotDone = false;
    this.saveFilters();
    this.connect();
    this.invalidate();
  }

  connect() {
    this.snapEl.textContent = "loading…";
    const query = this.query();
    this.stream = new Stream(`/tm/v1/watch?${query}`, {
      batch: (data) => this.onBatch(data),
    }, {
      onState: (s) => {
        this.live.set(s);
        // A connection the browser makes again: a re-sent snapshot replaces what we hold.
        if (s === "live") this.snapshotSeen = new Set();
      },
      onServerError: (err, body) => {
        if (body && body.reason === "CURSOR_EXPIRED") {
          this.reconnect(); // list again: a new snapshot
          return;
        }
        fail(err);
      },
      probe: () => get(`/task_manager/list_module_tasks/${encodeURIComponent(this.module)}`,
        { page_size: 1 }),
    });
  }

  matches(t) {
    const f = this.filters;
    if (f.state.length && !f.state.includes(t.state)) return false;
    if (!f.internal && t.internal) return false;
    return true;
  }

  onBatch(data) {
    for (const ev of data.events || []) {
      const t = ev.task;
      if (!t) continue;
      const id = t.task_id;
      if (ev.type === "existing" && this.snapshotSeen) this.snapshotSeen.add(id);
      if (ev.type === "removed" || !this.matches(t)) {
        if (this.tasks.delete(id)) this.orderStale = true;
        continue;
      }
      if (!this.tasks.has(id)) this.orderStale = true;
      this.tasks.set(id, t);
      this.updates++;
    }
    if (data.snapshot_complete) {
      if (this.snapshotSeen && this.snapshotDone) {
        // A second snapshot (after a reconnect): what it did not list is gone.
        for (const id of this.tasks.keys()) {
          if (!this.snapshotSeen.has(id)) {
            this.tasks.delete(id);
            this.orderStale = true;
          }
        }
      }
      this.snapshotSeen = null;
      this.snapshotDone = true;
    }
    this.invalidate();
  }

  invalidate() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    if (this.orderStale) {
      // Oldest first (creation time, then sequence number): rows keep their place as
      // tasks come, and a task's row does not move when it changes.
      const ts = [...this.tasks.values()];
      ts.sort((a, b) => (a.creation_time < b.creation_time ? -1
        : a.creation_time > b.creation_time ? 1 : (a.sequence_number - b.sequence_number)
          || (a.task_id < b.task_id ? -1 : a.task_id > b.task_id ? 1 : 0)));
      this.order = ts.map((t) => t.task_id);
      this.orderStale = false;
    }
    const counts = {};
    for (const t of this.tasks.values()) counts[t.state] = (counts[t.state] || 0) + 1;
    this.countEl.textContent = String(this.tasks.size);
    this.statesEl.textContent = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`)
      .join(" · ");
    this.snapEl.textContent = this.snapshotDone ? "" : "loading…";
    this.list.el.dataset.snapshotComplete = String(this.snapshotDone);
    this.list.setData(this.order.length, (i) => this.tasks.get(this.order[i]));
    this.list.render();
  }

  makeRow() {
    const row = h("div", { testid: "task-row" });
    row._id = h("a", { class: "mono" });
    row._state = h("span", { class: "badge", testid: "task-state", role: "cell" });
    row._type = h("span", { role: "cell" });
    row._scope = h("span", { role: "cell" });
    row._kt = h("span", { role: "cell" });
    row._bar = progressBar();
    const barCell = h("div", { role: "cell" }, row._bar);
    row._ptext = h("span", { class: "num muted", testid: "progress-text", role: "cell" });
    row._created = h("span", { class: "muted", role: "cell" });
    row.append(h("div", { role: "cell" }, row._id), row._state, row._type, row._scope, row._kt,
      barCell, row._ptext, row._created);
    return row;
  }

  paintRow(row, t) {
    if (!t) return;
    row.dataset.taskId = t.task_id;
    row.dataset.state = t.state;
    row.classList.toggle("failed", t.state === "failed");
    row._id.textContent = shortId(t.task_id);
    row._id.href = `#/task/${encodeURIComponent(t.task_id)}`;
    row._state.textContent = t.state;
    row._state.className = `badge ${t.state}`;
    row._type.textContent = t.kind === "cluster" ? `${t.type} (cluster)` : t.type;
    row._scope.textContent = [t.scope, t.entity].filter(Boolean).join(" / ");
    row._kt.textContent = [t.keyspace, t.table].filter(Boolean).join(".");
    setBar(row._bar, t);
    row._bar.setAttribute("aria-label", `Progress of ${t.task_id}`);
    row._ptext.textContent = progressText(t);
    row._created.textContent = fmtTime(t.creation_time);
  }
}

// ---- #/task/ID ----------------------------------------------------------------------------

class TaskView {
  constructor(id) {
    this.id = id;
    this.status = null;
    this.tree = []; // rows: { s: task_status, depth }
    this.frame = 0;
    this.treeTimer = 0;
    this.treeBusy = false;
    this.treeWanted = false;
    this.lastTreeAt = 0;
    this.lastTreeMs = 0;
    this.closed = false;
    this.stream = null;
  }

  close() {
    this.closed = true;
    if (this.stream) this.stream.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.treeTimer);
    if (this.list) this.list.close();
  }

  async start() {
    const status = await get(`/task_manager/task_status/${encodeURIComponent(this.id)}`);
    if (this.closed) return;
    this.status = status;
    this.build();
    this.paintHeader();
    this.fetchTree();
    if (!FINAL.has(status.state)) this.watch();
    else this.live.set("finished");
  }

  build() {
    const s = this.status;
    setCrumbs(h("a", { href: `#/module/${encodeURIComponent(s.module)}`, text: `module ${s.module}` }),
      h("span", { class: "mono", text: `task ${this.id}` }));
    this.live = liveIndicator();
    this.el = {};
    const e = this.el;
    e.state = h("span", { class: "badge", testid: "status-state" });
    e.title = h("h1", { testid: "task-title" });
    e.bar = progressBar(true);
    e.percent = h("strong", { class: "num", testid: "task-percent" });
    e.ptext = h("span", { class: "num muted", testid: "progress-text" });
    const kv = (label, testid) => {
      const dd = h("dd", { testid });
      e[testid] = dd;
      return [h("dt", { text: label }), dd];
    };
    const details = h("dl", { class: "kv", testid: "task-details" },
      kv("id", "task-id"), kv("module", "task-module"), kv("kind / scope", "task-kind"),
      kv("keyspace.table", "task-kt"), kv("entity", "task-entity"), kv("node", "task-node"),
      kv("shard / seq", "task-shard"), kv("owner", "task-owner"), kv("parent", "task-parent"),
      kv("children", "task-children"));
    const times = h("dl", { class: "kv", testid: "task-times" },
      kv("created", "task-created"), kv("started", "task-started"), kv("ended", "task-ended"),
      kv("rate", "task-rate"), kv("ETA", "task-eta"), kv("last progress", "task-last-progress"),
      kv("expires", "task-expires"), kv("unreachable", "task-unreachable"));
    e.error = h("p", { class: "error-text", testid: "task-error", role: "status" });
    e.abortInfo = h("p", { testid: "abort-info" });
    e.abortPanel = h("div", { class: "abort-panel" });
    this.list = new VirtualList({
      columns: ["task", "state", "node", "", "progress", "", "error"],
      label: "Task tree",
      testid: "tree",
      empty: "No children.",
      make: () => this.makeTreeRow(),
      paint: (row, r) => this.paintTreeRow(row, r),
      onOpen: (r) => {
        if (r.s.id !== this.id) location.hash = `#/task/${encodeURIComponent(r.s.id)}`;
      },
    });
    this.list.el.classList.add("tree");
    this.treeCount = h("span", { class: "muted", testid: "tree-count" });
    mount(
      h("div", { class: "task-head", testid: "task-header" }, e.title, e.state, this.live),
      h("section", { class: "panel" },
        h("div", { class: "progress-line" }, e.bar, e.percent, e.ptext),
        e.error, e.abortInfo, e.abortPanel,
        h("div", { class: "grid2" }, details, times)),
      h("section", { "aria-labelledby": "tree-h" },
        h("div", { class: "summary" }, h("h2", { id: "tree-h", text: "Tree" }), this.treeCount),
        this.list.el));
  }

  watch() {
    this.stream = new Stream(`/tm/v1/wait/${encodeURIComponent(this.id)}`, {
      status: (s) => {
        this.status = s;
        this.scheduleHeader();
        this.wantTree();
      },
      end: () => {
        this.stream.close();
        this.live.set("finished");
        this.wantTree(true);
      },
    }, {
      onState: (s) => this.live.set(s),
      onServerError: (err) => fail(err),
      probe: () => get(`/task_manager/task_status/${encodeURIComponent(this.id)}`),
    });
  }

  scheduleHeader() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.paintHeader();
    });
  }

  paintHeader() {
    const s = this.status;
    const e = this.el;
    e.title.textContent = `${s.type || "task"}${s.entity ? ` ${s.entity}` : ""}`;
    e.state.textContent = s.state;
    e.state.className = `badge ${s.state}`;
    setBar(e.bar, s);
    const pct = percentOf(s);
    e.percent.textContent = pct === null ? "" : `${pct.toFixed(pct >= 10 || pct === 0 ? 0 : 1)}%`;
    e.ptext.textContent = progressText(s);
    e["task-id"].textContent = s.id;
    e["task-module"].replaceChildren(h("a", { href: `#/module/${encodeURIComponent(s.module)}`,
      text: s.module }), s.internal ? " (internal)" : "", s.user_task ? " (user task)" : "");
    e["task-kind"].textContent = `${s.kind} / ${s.scope || "—"}`;
    e["task-kt"].textContent = [s.keyspace, s.table].filter(Boolean).join(".") || "—";
    e["task-entity"].textContent = s.entity || "—";
    e["task-node"].textContent = s.node || "—";
    e["task-shard"].textContent = `${s.shard} / ${s.sequence_number}`;
    e["task-owner"].textContent = s.owner || "—";
    e["task-parent"].replaceChildren(!s.parent_id || s.parent_id === "none" ? "—"
      : h("a", { class: "mono", href: `#/task/${encodeURIComponent(s.parent_id)}`,
        text: s.parent_id }));
    e["task-children"].textContent = String(s.children_count ?? (s.children_ids || []).length);
    e["task-created"].textContent = fmtTime(s.creation_time);
    e["task-started"].textContent = fmtTime(s.start_time);
    e["task-ended"].textContent = fmtTime(s.end_time);
    e["task-rate"].textContent = s.progress_rate === null || s.progress_rate === undefined ? "—"
      : `${fmtNum(s.progress_rate)} ${s.progress_units || "units"}/s`;
    if (s.estimated_end_time) {
      const left = (Date.parse(s.estimated_end_time) - Date.now()) / 1000;
      e["task-eta"].textContent = `${fmtTime(s.estimated_end_time)}${left > 0 ? ` (in ${fmtSeconds(left)})` : ""}`;
    } else {
      e["task-eta"].textContent = "—";
    }
    e["task-last-progress"].textContent = fmtTime(s.last_progress_time);
    e["task-expires"].textContent = fmtTime(s.expire_time);
    e["task-unreachable"].textContent = (s.unreachable_nodes || []).join(", ") || "—";
    e.error.textContent = s.error ? `error: ${s.error}` : "";
    e.error.hidden = !s.error;
    const a = s.abort;
    if (a) {
      e.abortInfo.textContent = `abort requested ${fmtTime(a.request_time)} by ${a.principal || "anonymous"}${
        a.reason ? `: ${a.reason}` : ""}${a.origin_task_id ? ` (through ${a.origin_task_id})` : ""}`;
      e.abortInfo.hidden = false;
    } else {
      e.abortInfo.textContent = s.abort_requested ? "abort requested" : "";
      e.abortInfo.hidden = !s.abort_requested;
    }
    this.paintAbort();
  }

  paintAbort() {
    const s = this.status;
    const show = s.is_abortable && !FINAL.has(s.state) && canAbort(s.module);
    if (!show) {
      this.el.abortPanel.replaceChildren();
      this.abortForm = null;
      return;
    }
    if (this.abortForm) return;
    const reason = h("input", { type: "text", id: "abort-reason", testid: "abort-reason",
      placeholder: "why (recorded with the abort)", size: "40" });
    const button = h("button", { type: "submit", class: "btn danger", testid: "abort-button",
      text: "Abort task" });
    const form = h("form", { class: "inline", "aria-label": "Abort", testid: "abort-form" },
      h("label", { for: "abort-reason", text: "Abort reason" }), reason, button);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      button.disabled = true;
      try {
        await api("POST", `/task_manager/abort_task/${encodeURIComponent(this.id)}`,
          { query: { reason: reason.value } });
        showError(null);
        // The stream brings the change; a read now shows the request at once.
        this.status = await get(`/task_manager/task_status/${encodeURIComponent(this.id)}`);
        this.paintHeader();
      } catch (err) {
        fail(err);
      } finally {
        button.disabled = false;
      }
    });
    this.abortForm = form;
    this.el.abortPanel.replaceChildren(form);
  }

  /** Re-reads the tree at most once a second (and never two at once) while things change. */
  wantTree(now = false) {
    this.treeWanted = true;
    if (this.treeBusy || this.treeTimer) return;
    // A second apart at least; a tree that takes long to read waits longer (twice its read).
    const gap = Math.max(1000, 2 * this.lastTreeMs);
    const wait = now ? 0 : Math.max(0, this.lastTreeAt + gap - Date.now());
    this.treeTimer = setTimeout(() => {
      this.treeTimer = 0;
      this.fetchTree();
    }, wait);
  }

  async fetchTree() {
    if (this.closed) return;
    this.treeWanted = false;
    this.treeBusy = true;
    this.lastTreeAt = Date.now();
    try {
      const list = await get(`/task_manager/task_status_recursive/${encodeURIComponent(this.id)}`);
      if (this.closed) return;
      this.setTree(list);
    } catch (err) {
      if (!this.closed) fail(err);
    } finally {
      this.lastTreeMs = Date.now() - this.lastTreeAt;
      this.treeBusy = false;
      if (this.treeWanted && !this.closed) this.wantTree();
    }
  }

  /** The BFS list as a depth-first outline: each task under its parent, indented. */
  setTree(list) {
    const byParent = new Map();
    const ids = new Set(list.map((s) => s.id));
    let root = null;
    for (const s of list) {
      if (s.id === this.id) {
        root = s;
        continue;
      }
      const p = ids.has(s.parent_id) ? s.parent_id : this.id;
      if (!byParent.has(p)) byParent.set(p, []);
      byParent.get(p).push(s);
    }
    const rows = [];
    const stack = [];
    if (root) stack.push({ s: root, depth: 0 });
    else for (const s of (byParent.get(this.id) || []).reverse()) stack.push({ s, depth: 1 });
    while (stack.length) {
      const r = stack.pop();
      rows.push(r);
      const kids = byParent.get(r.s.id);
      if (kids) for (let i = kids.length - 1; i >= 0; i--) stack.push({ s: kids[i], depth: r.depth + 1 });
    }
    this.tree = rows;
    const nodes = new Set(list.map((s) => s.node).filter(Boolean));
    const failed = list.filter((s) => s.state === "failed").length;
    this.treeCount.textContent = `${list.length} task${list.length === 1 ? "" : "s"}` +
      `${nodes.size > 1 ? ` on ${nodes.size} nodes` : ""}${failed ? `, ${failed} failed` : ""}`;
    this.list.setData(rows.length, (i) => rows[i]);
    this.list.render();
    if (root && root.state !== this.status.state && FINAL.has(root.state)) {
      // The tree read is newer than the stream's last word (e.g. after the stream ended).
      this.status = root;
      this.scheduleHeader();
    }
  }

  makeTreeRow() {
    const row = h("div", { testid: "tree-row" });
    row._indent = h("span", { class: "indent" });
    row._id = h("a", { class: "mono" });
    row._name = h("span", { class: "muted" });
    row._cell = h("div", { role: "cell" }, row._indent, row._id, " ", row._name);
    row._state = h("span", { class: "badge", testid: "tree-state", role: "cell" });
    row._node = h("span", { testid: "tree-node", role: "cell" });
    row._mark = h("span", { role: "cell" });
    row._bar = progressBar();
    row._ptext = h("span", { class: "num muted", testid: "progress-text", role: "cell" });
    row._error = h("span", { class: "error-text", testid: "tree-error", role: "cell" });
    row.append(row._cell, row._state, row._node, row._mark, h("div", { role: "cell" }, row._bar),
      row._ptext, row._error);
    return row;
  }

  paintTreeRow(row, r) {
    if (!r) return;
    const s = r.s;
    const isRoot = s.id === this.id;
    const folded = !isRoot && FINAL.has(s.state);
    row.dataset.taskId = s.id;
    row.dataset.state = s.state;
    row.dataset.node = s.node || "";
    row.dataset.depth = String(r.depth);
    row.classList.toggle("failed", s.state === "failed");
    row._indent.style.width = `${r.depth * 18}px`;
    row._id.textContent = s.id;
    row._id.href = `#/task/${encodeURIComponent(s.id)}`;
    row._name.textContent = [s.type, s.entity || s.table || s.keyspace].filter(Boolean).join(" ");
    row._state.textContent = s.state;
    row._state.className = `badge ${s.state}`;
    row._node.textContent = s.node || "—";
    row._mark.replaceChildren();
    if (folded) {
      row._mark.append(h("span", { class: `badge tag${s.state === "failed" ? " failed" : ""}`,
        testid: "folded", title: "finished: folded into its parent's status", text: "folded" }));
    }
    setBar(row._bar, s);
    row._ptext.textContent = progressText(s);
    row._error.textContent = s.error || "";
    row._error.title = s.error || "";
  }
}

// ---- start --------------------------------------------------------------------------------

$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/tm/v1/logout");
  } catch (err) {
    console.error(err);
  }
  app.whoami = null;
  route();
});
window.addEventListener("hashchange", () => route());
window.tmDashboard = app; // for people poking at it in the console
route();
