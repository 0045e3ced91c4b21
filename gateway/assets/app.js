// weir's dashboard: one ES module, no dependencies. Everything it shows comes from the REST
// API with the token in the Authorization header. Tenant data (names, payloads, log lines) is
// untrusted: it is only ever inserted as text (textContent, attribute values), never as HTML.

const TOKEN_KEY = "weir.token";
const SVG = "http://www.w3.org/2000/svg";
const CHART_WINDOW_MS = 15 * 60 * 1000;
const CHUNK = 100;

const app = {
  token: null,
  me: null,
  tenant: null, // the tenant watched (the admin picks one)
  streamOk: false, // a snapshot of the watched tenant's deployments arrived
  deployments: new Map(), // id -> latest entry from the event stream
  stream: null, // AbortController of the event stream
  rows: new Map(), // id -> row elements of the list
  listBody: null,
  pending: [], // ids not rendered yet (incremental first render)
  pendingSet: new Set(),
  timers: [],
  live: new Map(), // id -> samples appended from the stream (for charts)
  metrics: { firstRenderMs: null, updates: [], lastUpdateMs: null, events: 0 },
};
window.weirDashboard = app.metrics;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function announce(text) {
  $("announce").textContent = text;
}

// An error from a background refresh (not from something the user did) is cleared by the
// next answer that succeeds; an action's error stays until the next action.
let backgroundError = false;

function showError(text) {
  $("error").textContent = text || "";
  backgroundError = false;
}

function backgroundFailed(error) {
  // The network: the connection notice says so (and goes when the server answers again).
  if (error && error.network) return;
  $("error").textContent = error ? String(error.message) : "";
  backgroundError = true;
}

// Conditions of the connection shown above the page, the worst first.
const conditions = new Map();

function setCondition(kind, text) {
  if (text) conditions.set(kind, text); else conditions.delete(kind);
  const shown = conditions.get("lost") || conditions.get("stream") || "";
  const node = $("connection");
  if (node.textContent !== shown) node.textContent = shown;
  node.hidden = !shown;
}

const LOST = "Connection to weir lost; retrying. The page shows the last data received.";

class ApiProblem extends Error {
  constructor(status, problem) {
    super(problem && (problem.detail || problem.title) ? `${problem.code || status}: ${problem.detail || problem.title}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${app.token}` }, options.headers || {});
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    // No answer at all (the server is down or unreachable).
    setCondition("lost", LOST);
    const lost = new Error(`${LOST} (${error.message})`);
    lost.network = true;
    throw lost;
  }
  setCondition("lost", "");
  if (response.ok && backgroundError) showError("");
  if (response.status === 401) {
    signOut("The token was refused (invalid, expired or revoked). Sign in again.");
    throw new ApiProblem(401, null);
  }
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiProblem(response.status, problem);
  }
  if (response.status === 204) return null;
  return response.json();
}

function watchQuery(extra = {}) {
  const params = new URLSearchParams(extra);
  if (app.me && app.me.role === "admin" && app.tenant) params.set("tenant", app.tenant);
  const text = params.toString();
  return text ? `?${text}` : "";
}

const isAdmin = () => app.me && app.me.role === "admin";
const canChange = () => app.me && (app.me.role === "developer" || app.me.role === "owner");

// ---- formatting ----

// One formatter for every number (toLocaleString would build one per call).
const NUMBER = new Intl.NumberFormat("en");

function fmtNumber(n) {
  if (n === null || n === undefined) return "–";
  return NUMBER.format(Number(n));
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
  return `${v.toFixed(u ? 1 : 0)} ${units[u]}`;
}

function fmtDuration(seconds) {
  if (seconds < 0) seconds = 0;
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
}

// ---- sign in / out ----

async function signIn(token) {
  app.token = token;
  try {
    app.me = await api("/v1/dashboard/me");
  } catch (error) {
    app.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showError(error.status === 401 ? "The token was refused." : String(error.message));
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  showError("");
  $("sign-in").hidden = true;
  $("view").hidden = false;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = app.me.role === "admin" ? "Signed in as admin" : `Tenant ${app.me.tenant} · ${app.me.role}`;
  if (isAdmin()) {
    await loadTenants();
  } else {
    app.tenant = app.me.tenant;
    startStream();
  }
  route();
  // Focus moves from the sign-in form (now hidden) to the page's main heading.
  const heading = $("view").querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function signOut(message) {
  stopStream();
  clearTimers();
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = null;
  app.me = null;
  app.tenant = null;
  app.deployments.clear();
  app.streamOk = false;
  resetList();
  $("view").replaceChildren();
  $("view").hidden = true;
  $("nav").hidden = true;
  $("tenant-picker").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  showError(message || "");
  $("token").focus();
}

async function loadTenants() {
  const tenants = await api("/v1/tenants");
  const select = $("tenant-select");
  select.replaceChildren(el("option", { value: "", text: "Choose a tenant" }),
    ...tenants.map((t) => el("option", { value: t.id, text: t.id })));
  $("tenant-picker").hidden = false;
  if (tenants.length) {
    select.value = tenants[0].id;
    pickTenant(tenants[0].id);
  }
}

function pickTenant(id) {
  app.tenant = id || null;
  app.deployments.clear();
  app.streamOk = false;
  app.live.clear();
  resetList();
  stopStream();
  if (app.tenant) startStream();
  if (location.hash !== "#/" && location.hash !== "") location.hash = "#/";
  else route();
}

// ---- the event stream (fetch + ReadableStream: EventSource cannot send headers) ----

function stopStream() {
  if (app.stream) app.stream.abort();
  app.stream = null;
}

function startStream() {
  stopStream();
  const controller = new AbortController();
  app.stream = controller;
  const run = async () => {
    let retryMs = 1500;
    try {
      const response = await fetch(`/v1/dashboard/events${watchQuery()}`, {
        headers: { Authorization: `Bearer ${app.token}`, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      setCondition("lost", "");
      if (response.status === 401) { signOut("The token was refused. Sign in again."); return; }
      if (response.status === 429) {
        // Too many streams of this tenant open: wait as long as the server asks, keep the
        // last data, and say so.
        const after = Number(response.headers.get("Retry-After"));
        retryMs = (Number.isFinite(after) && after > 0 ? after : 5) * 1000;
        app.metrics.streamRefused = (app.metrics.streamRefused || 0) + 1;
        setCondition("stream", `Too many dashboard tabs are open for this tenant; retrying in ${Math.ceil(retryMs / 1000)} s. The page shows the last data received.`);
        throw new Error("event stream: 429");
      }
      if (!response.ok || !response.body) {
        setCondition("stream", `Live updates are unavailable (HTTP ${response.status}); retrying.`);
        throw new Error(`event stream: HTTP ${response.status}`);
      }
      setCondition("stream", "");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (event === "deployments" && data.length) onDeployments(JSON.parse(data.join("\n")));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      // No answer, or the answer broke off: the server is down or unreachable.
      if (error instanceof TypeError) setCondition("lost", LOST);
      console.warn("event stream", error);
    }
    // The stream ended (its lifetime, or the network): open the next one.
    if (!controller.signal.aborted && app.stream === controller) {
      setTimeout(() => { if (app.stream === controller) startStream(); }, retryMs);
    }
  };
  run();
}

function onDeployments(snapshot) {
  const started = performance.now();
  if (snapshot.tenant !== app.tenant) return;
  const seen = new Set();
  for (const d of snapshot.deployments) {
    seen.add(d.id);
    app.deployments.set(d.id, d);
    if (d.runtime) {
      let ring = app.live.get(d.id);
      if (!ring) { ring = []; app.live.set(d.id, ring); }
      const last = ring[ring.length - 1];
      if (!last || snapshot.at_ms - last.at_ms >= 5000) {
        ring.push({ at_ms: snapshot.at_ms, received: d.runtime.received, emitted: d.runtime.emitted, dead_lettered: d.runtime.dead_lettered, failures: d.runtime.failures });
        while (ring.length && ring[0].at_ms < snapshot.at_ms - CHART_WINDOW_MS) ring.shift();
      }
    }
  }
  for (const id of [...app.deployments.keys()]) {
    if (!seen.has(id)) { app.deployments.delete(id); app.live.delete(id); }
  }
  app.metrics.events += 1;
  app.streamOk = true; // the tenant's deployments are known (not just none received yet)
  updateList(seen);
  if (currentDetail && app.deployments.has(currentDetail.id)) currentDetail.onSnapshot(app.deployments.get(currentDetail.id));
  else if (currentDetail) currentDetail.onMissing();
  const took = performance.now() - started;
  app.metrics.lastUpdateMs = took;
  app.metrics.updates.push(took);
  if (app.metrics.updates.length > 100) app.metrics.updates.shift();
}

// ---- routing ----

let currentDetail = null;

function clearTimers() {
  for (const t of app.timers) clearInterval(t);
  app.timers = [];
  currentDetail = null;
}

function every(ms, fn) {
  fn();
  app.timers.push(setInterval(fn, ms));
}

function route() {
  if (!app.me) return;
  const hash = location.hash || "#/";
  // Only `#/...` are pages; other fragments are places in the page.
  if (!hash.startsWith("#/")) return;
  clearTimers();
  const view = $("view");
  const detail = hash.match(/^#\/d\/(.+)$/);
  let id = null;
  if (detail) {
    try {
      id = decodeURIComponent(detail[1]);
    } catch (_) {
      // A malformed escape (`#/d/%E0%A4%A`): no deployment has such an id.
      renderNotFound(view);
      return;
    }
  }
  if (id !== null) {
    renderDetail(view, id);
  } else if (hash === "#/tenant") {
    renderTenant(view);
  } else {
    renderList(view);
  }
}

function renderNotFound(view) {
  view.replaceChildren(el("h1", { id: "not-found", text: "Page not found" }),
    el("p", { text: "This address names no page of the dashboard." }),
    el("p", {}, el("a", { href: "#/", text: "← All deployments" })));
}

// ---- the deployments list ----

function resetList() {
  app.rows.clear();
  app.listBody = null;
  app.pending = [];
  app.pendingSet = new Set();
}

const COLUMNS = [
  ["Deployment", ""], ["Status", ""], ["Placement", ""], ["Operator instances", "num"], ["Uptime", "num"],
  ["Messages in", "num"], ["Messages out", "num"], ["Dead letters", "num"], ["Errors", "num"], ["Last error", ""],
];

function renderList(view) {
  resetList();
  const heading = el("h1", { id: "list-title", text: isAdmin() ? `Deployments of ${app.tenant || "…"}` : "Deployments" });
  const count = el("p", { id: "list-count", class: "muted", text: "" });
  const head = el("tr", {}, ...COLUMNS.map(([name, cls]) => el("th", { scope: "col", class: cls, text: name })));
  const body = el("tbody", { id: "deployments-body" });
  const table = el("table", { id: "deployments", "aria-describedby": "list-count" },
    el("caption", { text: "Deployments, their status and counters (updated live)" }),
    el("thead", {}, head), body);
  view.replaceChildren(heading, count, table);
  app.listBody = body;
  if (isAdmin() && !app.tenant) {
    count.textContent = "Choose a tenant above.";
    return;
  }
  updateList(new Set(app.deployments.keys()));
  every(1000, () => {
    const now = Date.now() / 1000;
    for (const [id, row] of app.rows) {
      const d = app.deployments.get(id);
      if (d) setText(row.cells[4], uptime(d, now));
    }
  });
}

function uptime(d, nowSeconds) {
  return d.status === "running" && d.running_since_ms ? fmtDuration(nowSeconds - d.running_since_ms / 1000) : "–";
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function makeRow(id) {
  const link = el("a", { href: `#/d/${encodeURIComponent(id)}`, text: id });
  const cells = COLUMNS.map(([, cls], i) => el("td", { class: cls }, i === 0 ? link : null));
  const tr = el("tr", { "data-deployment": id }, ...cells);
  return { tr, cells };
}

function fillRow(row, d) {
  const r = d.runtime;
  // Rows whose deployment did not change are left alone (the uptime has its own timer).
  const key = r
    ? `${d.status}|${d.running_since_ms}|${r.placement}|${d.operator_instances}|${r.received}|${r.emitted}|${r.dead_lettered}|${r.failures}|${r.last_error ? r.last_error.at_ms : ""}`
    : `${d.status}|-`;
  if (row.key === key) return;
  row.key = key;
  const status = row.cells[1];
  setText(status, d.status);
  const cls = `status-${d.status}`;
  if (status.className !== cls) status.className = cls;
  setText(row.cells[2], r && r.placement ? String(r.placement) : "–");
  // What the max_instances quota counts: one per wasm node of each running instance.
  setText(row.cells[3], r || d.operator_instances ? fmtNumber(d.operator_instances || 0) : "–");
  setText(row.cells[4], uptime(d, Date.now() / 1000));
  setText(row.cells[5], r ? fmtNumber(r.received) : "–");
  setText(row.cells[6], r ? fmtNumber(r.emitted) : "–");
  setText(row.cells[7], r ? fmtNumber(r.dead_lettered) : "–");
  setText(row.cells[8], r ? fmtNumber(r.failures) : "–");
  const last = r && r.last_error ? `${r.last_error.reason || ""}: ${r.last_error.detail || ""}` : "";
  setText(row.cells[9], last.length > 160 ? `${last.slice(0, 160)}…` : last);
}

let chunkScheduled = false;

function renderPending() {
  chunkScheduled = false;
  if (!app.listBody) return;
  const fragment = document.createDocumentFragment();
  const batch = app.pending.splice(0, CHUNK);
  for (const id of batch) {
    app.pendingSet.delete(id);
    const d = app.deployments.get(id);
    if (!d || app.rows.has(id)) continue;
    const row = makeRow(id);
    fillRow(row, d);
    app.rows.set(id, row);
    fragment.append(row.tr);
  }
  app.listBody.append(fragment);
  if (app.pending.length) {
    chunkScheduled = true;
    requestAnimationFrame(renderPending);
  } else if (app.metrics.firstRenderMs === null && app.rows.size) {
    app.metrics.firstRenderMs = performance.now();
    app.metrics.firstRenderRows = app.rows.size;
  }
}

function updateList(ids) {
  if (!app.listBody) return;
  const count = $("list-count");
  if (count) {
    setText(count, app.streamOk ? `${fmtNumber(app.deployments.size)} deployment${app.deployments.size === 1 ? "" : "s"}` : "Waiting for the deployments…");
  }
  for (const [id, row] of app.rows) {
    if (!ids.has(id)) { row.tr.remove(); app.rows.delete(id); }
  }
  for (const id of ids) {
    const row = app.rows.get(id);
    const d = app.deployments.get(id);
    if (row && d) fillRow(row, d);
    else if (!row && !app.pendingSet.has(id)) { app.pending.push(id); app.pendingSet.add(id); }
  }
  if (app.pending.length && !chunkScheduled) {
    chunkScheduled = true;
    requestAnimationFrame(renderPending);
  }
}

// ---- charts (inline SVG) ----

function rates(samples, field) {
  const points = [];
  for (let i = 1; i < samples.length; i += 1) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = (b.at_ms - a.at_ms) / 1000;
    if (dt <= 0) continue;
    const fields = Array.isArray(field) ? field : [field];
    let delta = 0;
    for (const f of fields) delta += Math.max(0, (b[f] || 0) - (a[f] || 0));
    points.push([b.at_ms, delta / dt]);
  }
  return points;
}

function chart(title, series, now) {
  const width = 600;
  const height = 160;
  const pad = 30;
  const max = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const from = now - CHART_WINDOW_MS;
  const x = (t) => pad + ((t - from) / CHART_WINDOW_MS) * (width - pad - 5);
  const y = (v) => height - pad + 10 - (v / max) * (height - pad - 10);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}, last 15 minutes, peak ${max.toFixed(1)} per second` });
  root.append(svg("title", {}, `${title}, last 15 minutes`));
  root.append(svg("line", { class: "axis", x1: pad, y1: height - pad + 10, x2: width - 5, y2: height - pad + 10 }));
  root.append(svg("line", { class: "axis", x1: pad, y1: 5, x2: pad, y2: height - pad + 10 }));
  root.append(svg("text", { x: 2, y: 14 }, max.toFixed(max < 10 ? 1 : 0)));
  root.append(svg("text", { x: 2, y: height - pad + 10 }, "0"));
  root.append(svg("text", { x: pad, y: height - 4 }, "−15 min"));
  root.append(svg("text", { x: width - 40, y: height - 4 }, "now"));
  for (const s of series) {
    const pts = s.points.filter((p) => p[0] >= from).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    if (pts.length) root.append(svg("polyline", { class: s.cls, points: pts.join(" ") }));
  }
  return root;
}

// ---- the deployment page ----

function quantile(buckets, count, q) {
  if (!buckets || !count) return null;
  const target = q * count;
  let seen = 0;
  for (const [bound, n] of buckets) {
    seen += n;
    if (seen >= target) return bound;
  }
  return null;
}

function fmtLatency(bound) {
  if (bound === null || bound === undefined) return "> largest bucket";
  return bound < 1 ? `≤ ${(bound * 1000).toFixed(bound < 0.01 ? 1 : 0)} ms` : `≤ ${bound} s`;
}

function layoutGraph(definition) {
  const ops = definition.operations;
  const depth = new Map(ops.map((o) => [o.name, 0]));
  for (let pass = 0; pass < ops.length; pass += 1) {
    let changed = false;
    for (const c of definition.connections) {
      const next = (depth.get(c.from.name) || 0) + 1;
      if (depth.has(c.to.name) && next > depth.get(c.to.name) && next <= ops.length) { depth.set(c.to.name, next); changed = true; }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const o of ops) {
    const d = depth.get(o.name) || 0;
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(o);
  }
  const pos = new Map();
  const boxW = 170;
  const boxH = 78;
  const gapX = 60;
  const gapY = 24;
  let maxRows = 1;
  for (const [d, list] of columns) {
    maxRows = Math.max(maxRows, list.length);
    list.forEach((o, i) => pos.set(o.name, { x: 10 + d * (boxW + gapX), y: 10 + i * (boxH + gapY) }));
  }
  const width = 20 + columns.size * (boxW + gapX);
  const height = 20 + maxRows * (boxH + gapY);
  return { pos, boxW, boxH, width, height };
}

function diagram(definition, nodeText) {
  const { pos, boxW, boxH, width, height } = layoutGraph(definition);
  const root = svg("svg", { class: "diagram", id: "graph-diagram", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "graph-title graph-desc" });
  root.append(svg("title", { id: "graph-title" }, "Graph of the deployment"));
  root.append(svg("desc", { id: "graph-desc" }, definition.connections.map((c) => `${c.from.name}${c.from.arm ? ` (${c.from.arm})` : ""} → ${c.to.name}`).join("; ")));
  for (const c of definition.connections) {
    const a = pos.get(c.from.name);
    const b = pos.get(c.to.name);
    if (!a || !b) continue;
    const x1 = a.x + boxW;
    const y1 = a.y + boxH / 2 + (c.from.arm === "True" ? -12 : c.from.arm === "False" ? 12 : 0);
    const x2 = b.x;
    const y2 = b.y + boxH / 2;
    const mid = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}` }));
    root.append(svg("path", { class: "edge", d: `M${x2 - 9},${y2 - 4} L${x2 - 2},${y2} L${x2 - 9},${y2 + 4}` }));
    if (c.from.arm) root.append(svg("text", { class: "arm", x: x1 + 4, y: y1 - 4 }, c.from.arm));
  }
  const texts = new Map();
  for (const o of definition.operations) {
    const p = pos.get(o.name);
    const g = svg("g", { "data-node": o.name });
    g.append(svg("title", {}, `${o.name} (${o.operationType}${o.module ? `, ${o.module}` : ""})`));
    g.append(svg("rect", { x: p.x, y: p.y, width: boxW, height: boxH }));
    g.append(svg("text", { class: "name", x: p.x + 8, y: p.y + 16 }, o.name.length > 22 ? `${o.name.slice(0, 21)}…` : o.name));
    g.append(svg("text", { x: p.x + 8, y: p.y + 31 }, o.operationType));
    const l1 = svg("text", { x: p.x + 8, y: p.y + 47 }, "");
    const l2 = svg("text", { x: p.x + 8, y: p.y + 62 }, "");
    g.append(l1, l2);
    texts.set(o.name, [l1, l2, o.operationType]);
    root.append(g);
  }
  const update = (counters) => {
    for (const [name, [l1, l2, type]] of texts) {
      const c = counters(name, type);
      setText(l1, c ? c[0] : "");
      setText(l2, c ? c[1] : "");
    }
  };
  update(nodeText);
  return { root, update };
}

function renderDetail(view, id) {
  const title = el("h1", { id: "detail-title" }, "Deployment ", el("span", { text: id }));
  const back = el("p", {}, el("a", { href: "#/", text: "← All deployments" }));
  const summary = el("p", { id: "detail-summary", class: "muted" });
  const actions = el("div", { class: "actions", role: "group", "aria-label": "Actions" });
  const charts = el("section", { "aria-labelledby": "charts-title" }, el("h2", { id: "charts-title", text: "Throughput and errors (last 15 minutes)" }));
  const chartBox = el("div", { class: "grid", id: "charts" });
  charts.append(el("ul", { class: "legend" }, el("li", { class: "in", text: "messages in/s" }), el("li", { class: "out", text: "messages out/s" }), el("li", { class: "err", text: "errors and dead letters/s" })), chartBox);
  const graphBox = el("div", { id: "graph-box" });
  const graphSection = el("section", { "aria-labelledby": "graph-h" }, el("h2", { id: "graph-h", text: "Graph" }), graphBox);
  const nodesBody = el("tbody", { id: "nodes-body" });
  const nodes = el("table", { id: "nodes" }, el("caption", { text: "Per node" }),
    el("thead", {}, el("tr", {}, ...["Node", "Messages in", "Messages out", "Errors (dead-lettered)", "Fuel", "Live instances", "p50 latency", "p99 latency"].map((h, i) => el("th", { scope: "col", class: i ? "num" : "", text: h })))), nodesBody);
  const lettersBody = el("tbody", { id: "letters-body" });
  const letters = el("table", { id: "dead-letters" }, el("caption", { text: "Dead letters (newest first)" }),
    el("thead", {}, el("tr", {}, ...["#", "When", "Node", "Reason", "Detail", "Payload"].map((h) => el("th", { scope: "col", text: h })))), lettersBody);
  const levelSelect = el("select", { id: "log-level" }, ...["all", "trace", "debug", "info", "warn", "error"].map((l) => el("option", { value: l, text: l })));
  const logsBody = el("tbody", { id: "logs-body" });
  const logs = el("table", { id: "logs" }, el("caption", { text: "Log lines (newest first)" }),
    el("thead", {}, el("tr", {}, ...["#", "When", "Level", "Node", "Message"].map((h) => el("th", { scope: "col", text: h })))), logsBody);
  // Revisions: what each create, update and rollback ran (GET /v1/deployments/{id}), and the
  // roll-out and roll-back controls for the roles that may change deployments.
  const revisionsBody = el("tbody", { id: "revisions-body" });
  const revisionsTable = el("table", { id: "revisions" }, el("caption", { text: "Revisions, oldest first (the newest 20 are kept)" }),
    el("thead", {}, el("tr", {}, ...["Revision", "Graph", "Outcome", "By", "When", "Detail"].map((h) => el("th", { scope: "col", text: h })))), revisionsBody);
  const versionSelect = el("select", { id: "rollout-graph" });
  const rollout = el("div", { class: "actions", role: "group", "aria-label": "Roll out or roll back" });
  if (canChange()) {
    rollout.append(
      el("label", { for: "rollout-graph", text: "Graph version " }), versionSelect,
      el("button", { type: "button", id: "action-rollout", onclick: () => rollOut(), text: "Roll out" }),
      el("button", { type: "button", id: "action-rollback", disabled: true, onclick: () => act("Roll back", `/v1/deployments/${encodeURIComponent(id)}/rollback`, "POST"), text: "Roll back to the previous revision" }));
  }
  const revisionsSection = el("section", { "aria-labelledby": "revisions-h" }, el("h2", { id: "revisions-h", text: "Revisions" }), rollout, revisionsTable);
  view.replaceChildren(back, title, summary, actions, revisionsSection, charts, graphSection,
    el("section", { "aria-labelledby": "nodes-h" }, el("h2", { id: "nodes-h", text: "Nodes" }), nodes),
    el("section", { "aria-labelledby": "letters-h" }, el("h2", { id: "letters-h", text: "Dead letters" }), letters),
    el("section", { "aria-labelledby": "logs-h" }, el("h2", { id: "logs-h", text: "Logs" }),
      el("p", {}, el("label", { for: "log-level", text: "Level " }), levelSelect), logs));
  $("main").focus();

  let full = null; // GET /v1/deployments/{id} (tenant tokens)
  let series = []; // GET /v1/metrics, this deployment's
  let graph = null;
  let history = [];
  let logLines = [];
  // The deployment is not there (deleted while the page is open, or never was): its actions are
  // disabled and its graph and charts cleared; the page keeps asking, so an id created anew is
  // picked up again.
  let gone = false;
  const q = watchQuery({ deployment: id });

  const nodeCounters = () => {
    const byNode = new Map();
    const get = (name) => { if (!byNode.has(name)) byNode.set(name, {}); return byNode.get(name); };
    const status = (full && full.runtime && full.runtime.nodes) || {};
    for (const [name, c] of Object.entries(status)) {
      Object.assign(get(name), { in: c.calls, out: c.emitted, errors: c.failures, fuel: c.fuel, live: c.live ? 1 : 0 });
    }
    for (const s of series) {
      const node = s.labels.node;
      if (!node) continue;
      const n = get(node);
      if (s.name === "weir_fuel") n.fuel = s.value;
      else if (s.name === "weir_call_duration_seconds") { n.p50 = quantile(s.buckets, s.count, 0.5); n.p99 = quantile(s.buckets, s.count, 0.99); n.observed = s.count; }
    }
    return byNode;
  };

  const drawNodes = () => {
    const byNode = nodeCounters();
    const rows = [...byNode.entries()].map(([name, n]) => el("tr", { "data-node": name },
      el("th", { scope: "row", text: name }),
      el("td", { class: "num", text: fmtNumber(n.in) }),
      el("td", { class: "num", text: fmtNumber(n.out) }),
      el("td", { class: "num", text: fmtNumber(n.errors) }),
      el("td", { class: "num", text: fmtNumber(n.fuel) }),
      el("td", { class: "num", text: fmtNumber(n.live) }),
      el("td", { class: "num", text: n.observed ? fmtLatency(n.p50) : "–" }),
      el("td", { class: "num", text: n.observed ? fmtLatency(n.p99) : "–" })));
    nodesBody.replaceChildren(...rows);
    if (graph) {
      const d = app.deployments.get(id);
      const r = (d && d.runtime) || (full && full.runtime) || null;
      graph.update((name, type) => {
        if (type === "source") return r ? [`out ${fmtNumber(r.received)}`, ""] : null;
        if (type === "sink") return r ? [`in ${fmtNumber(r.emitted)}`, ""] : null;
        const n = byNode.get(name);
        if (!n) return null;
        return [`in ${fmtNumber(n.in)} · out ${fmtNumber(n.out)}`, `err ${fmtNumber(n.errors)} · p99 ${n.observed ? fmtLatency(n.p99) : "–"}`];
      });
    }
  };

  const drawCharts = () => {
    if (gone) { chartBox.replaceChildren(); return; }
    const live = app.live.get(id) || [];
    const last = history.length ? history[history.length - 1].at_ms : 0;
    const samples = history.concat(live.filter((s) => s.at_ms > last));
    const now = Date.now();
    chartBox.replaceChildren(
      chart("Throughput", [{ cls: "in", points: rates(samples, "received") }, { cls: "out", points: rates(samples, "emitted") }], now),
      chart("Errors", [{ cls: "err", points: rates(samples, ["failures", "dead_lettered"]) }], now));
  };

  const drawSummary = (d) => {
    const r = d && d.runtime;
    summary.textContent = d
      ? `Status ${d.status} · placement ${r && r.placement ? r.placement : "–"} · operator instances ${fmtNumber(d.operator_instances || 0)} (${r ? fmtNumber(r.live_instances) : "–"} live) · messages in ${fmtNumber(r && r.received)} · out ${fmtNumber(r && r.emitted)} · dead letters ${fmtNumber(r && r.dead_lettered)}`
      : "";
    summary.dataset.status = d ? d.status : "";
  };

  const act = async (label, path, method, body) => {
    showError("");
    try {
      await api(path, body === undefined ? { method } : { method, body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
      announce(`${label}: done`);
      if (method === "DELETE") { location.hash = "#/"; return; }
      await refresh();
    } catch (error) {
      showError(`${label} failed: ${error.message}`);
    }
  };

  const drawActions = (status) => {
    const buttons = [];
    if (canChange()) {
      buttons.push(el("button", { type: "button", id: "action-pause", disabled: gone || status !== "running", onclick: () => act("Pause", `/v1/deployments/${encodeURIComponent(id)}/pause`, "POST"), text: "Pause" }));
      buttons.push(el("button", { type: "button", id: "action-resume", disabled: gone || status === "running", onclick: () => act("Resume", `/v1/deployments/${encodeURIComponent(id)}/resume`, "POST"), text: "Resume" }));
      buttons.push(el("button", { type: "button", id: "action-delete", class: "danger", disabled: gone, onclick: () => { if (confirm(`Delete deployment ${id}?`)) act("Delete", `/v1/deployments/${encodeURIComponent(id)}`, "DELETE"); }, text: "Delete" }));
    }
    buttons.push(el("button", { type: "button", id: "action-download", disabled: gone, onclick: download, text: "Download artifacts" }));
    const rolloutButton = $("action-rollout");
    if (rolloutButton) rolloutButton.disabled = gone;
    const focused = document.activeElement && document.activeElement.id;
    actions.replaceChildren(...buttons);
    // Focus stays on the action used; after Pause (now disabled) on Resume, and the reverse.
    if (focused && focused.startsWith("action-")) {
      let target = $(focused);
      const counterpart = { "action-pause": "action-resume", "action-resume": "action-pause" }[focused];
      if ((!target || target.disabled) && counterpart) target = $(counterpart);
      if (target && !target.disabled) target.focus();
    }
  };

  const download = async () => {
    try {
      const bundle = { deployment: full, graph: graph ? graph.definition : null };
      if (!isAdmin() && full) {
        bundle.graph_artifact = await api(`/v1/graphs/${encodeURIComponent(full.spec.graph.name)}/${encodeURIComponent(full.spec.graph.version)}`);
        bundle.modules = await api("/v1/modules");
      }
      const blob = new Blob([JSON.stringify(bundle, null, 2)], { type: "application/json" });
      const a = el("a", { href: URL.createObjectURL(blob), download: `${id}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    } catch (error) {
      showError(`Download failed: ${error.message}`);
    }
  };

  // The tenant's graph versions to roll out, `name@version`; the one running is selected.
  let graphsLoaded = false;
  const loadGraphs = async () => {
    if (!canChange() || !full) return;
    const current = `${full.spec.graph.name}@${full.spec.graph.version}`;
    if (!graphsLoaded) {
      const list = await api("/v1/graphs");
      list.sort((a, b) => (a.name === b.name ? a.version.localeCompare(b.version, "en", { numeric: true }) : a.name.localeCompare(b.name)));
      versionSelect.replaceChildren(...list.map((g) => el("option", { value: JSON.stringify([g.name, g.version]), text: `${g.name}@${g.version}` })));
      graphsLoaded = true;
    }
    for (const option of versionSelect.options) {
      if (option.text === current && document.activeElement !== versionSelect && !versionSelect.dataset.touched) option.selected = true;
    }
  };
  versionSelect.addEventListener("change", () => { versionSelect.dataset.touched = "1"; });

  const rollOut = async () => {
    if (!full || !versionSelect.value) return;
    const [name, version] = JSON.parse(versionSelect.value);
    delete versionSelect.dataset.touched;
    await act("Roll out", `/v1/deployments/${encodeURIComponent(id)}`, "PUT", Object.assign({}, full.spec, { graph: { name, version } }));
  };

  const drawRevisions = () => {
    const list = (full && full.revisions) || [];
    revisionsBody.replaceChildren(...list.map((r) => el("tr", { "data-revision": r.revision, "data-outcome": r.outcome, class: r.current ? "current" : "" },
      el("th", { scope: "row", text: r.current ? `${r.revision} (current)` : String(r.revision) }),
      el("td", { text: r.graph }), el("td", { text: r.outcome.replace("_", " ") }), el("td", { text: r.by }),
      el("td", { text: fmtTime(r.at * 1000) }), el("td", { text: r.detail || "" }))));
    const button = $("action-rollback");
    if (button) {
      const current = list.find((r) => r.current);
      button.disabled = !current || !list.some((r) => r.outcome !== "failed" && r.revision < current.revision);
    }
  };

  let lastStatus = null;
  const refresh = async () => {
    try {
      if (!isAdmin()) {
        full = await api(`/v1/deployments/${encodeURIComponent(id)}`);
        const all = await api("/v1/metrics");
        series = all.filter((s) => s.labels && s.labels.deployment === id);
        drawRevisions();
        await loadGraphs();
      } else {
        revisionsBody.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "Revisions are the tenant's to read." })));
      }
      const d = app.deployments.get(id) || (full && { status: full.status, runtime: null });
      const status = full ? full.status : d && d.status;
      if (status !== lastStatus) { lastStatus = status; drawActions(status); }
      drawSummary(app.deployments.get(id) || d);
      drawNodes();
      if (gone) found();
    } catch (error) {
      if (error.status === 404) missing();
      else backgroundFailed(error);
    }
  };

  const missing = () => {
    if (gone) return;
    gone = true;
    full = null;
    series = [];
    history = [];
    graph = null;
    app.live.delete(id);
    summary.textContent = "No such deployment.";
    summary.dataset.status = "";
    graphBox.replaceChildren(el("p", { id: "graph-gone", text: "No graph: this deployment does not exist (it may have been deleted). The page shows it again if it is created anew." }));
    chartBox.replaceChildren();
    nodesBody.replaceChildren();
    drawRevisions();
    lastStatus = null;
    drawActions(null);
  };

  const found = () => {
    if (!gone) return;
    gone = false;
    lastStatus = null;
    loadGraph();
  };

  const loadLetters = async () => {
    if (isAdmin()) { lettersBody.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "Dead letters are the tenant's to read." }))); return; }
    try {
      // The newest 200 (the feed answers oldest first): a deployment may keep far more.
      const list = await api(`/v1/deadletters${watchQuery({ deployment: id, limit: 200, newest: true })}`);
      list.reverse();
      lettersBody.replaceChildren(...list.slice(0, 200).map((l) => el("tr", { "data-seq": l.seq },
        el("td", { text: l.seq }), el("td", { text: fmtTime(l.at_ms) }), el("td", { text: l.node }),
        el("td", { text: l.reason }), el("td", { text: l.detail.length > 300 ? `${l.detail.slice(0, 300)}…` : l.detail }),
        el("td", {}, el("code", { class: "payload", text: l.payload.length > 500 ? `${l.payload.slice(0, 500)}…` : l.payload + (l.payload_truncated ? " …(cut)" : "") })))));
    } catch (error) { backgroundFailed(error); }
  };

  const drawLogs = () => {
    const level = levelSelect.value;
    const shown = logLines.filter((l) => level === "all" || l.level === level).slice(-200).reverse();
    logsBody.replaceChildren(...shown.map((l) => el("tr", { "data-level": l.level },
      el("td", { text: l.seq }), el("td", { text: fmtTime(l.at_ms) }), el("td", { text: l.level }),
      el("td", { text: l.node || "" }), el("td", { text: l.message }))));
  };
  levelSelect.addEventListener("change", drawLogs);

  const loadLogs = async () => {
    if (isAdmin()) return;
    try {
      // The newest lines first; then those after the last seen (the newest 1,000 of them, so a
      // burst larger than a page shows its end).
      const after = logLines.length ? logLines[logLines.length - 1].seq : 0;
      const more = await api(`/v1/logs${watchQuery({ deployment: id, after, limit: after ? 1000 : 200, newest: true })}`);
      if (more.length) {
        logLines = logLines.concat(more).slice(-1000);
        drawLogs();
      }
    } catch (error) { backgroundFailed(error); }
  };

  const loadGraph = async () => {
    try {
      const g = await api(`/v1/dashboard/graph${q}`);
      if (gone) return;
      graph = diagram(g.definition, () => null);
      graph.definition = g.definition;
      graphBox.replaceChildren(graph.root);
      drawNodes();
    } catch (error) {
      if (error.status === 404) { missing(); return; }
      graphBox.replaceChildren(el("p", { text: `Graph unavailable: ${error.message}` }));
    }
    try {
      history = (await api(`/v1/dashboard/history${q}`)).samples;
    } catch (_) { history = []; }
    drawCharts();
  };
  loadGraph();

  drawActions(app.deployments.get(id) ? app.deployments.get(id).status : null);
  every(2000, refresh);
  every(2000, loadLetters);
  every(3000, loadLogs);
  every(5000, drawCharts);
  currentDetail = {
    id,
    onSnapshot: (d) => {
      if (gone) found();
      drawSummary(d);
      if (d.status !== lastStatus) { lastStatus = d.status; drawActions(d.status); }
    },
    // The event stream no longer lists it.
    onMissing: missing,
  };
}

// ---- quotas and usage ----

// Quotas that bound each call, message or item (not a tenant-wide total): they get no bar.
const PER_ITEM = new Set(["max_module_bytes", "max_nodes_per_graph", "fuel_per_message", "call_timeout",
  "memory_per_instance", "max_message_bytes", "max_state_key_bytes", "max_log_line_bytes", "max_model_bytes",
  "max_graphs_per_instance"]);

async function renderTenant(view) {
  const title = el("h1", { text: isAdmin() ? `Quotas of ${app.tenant || "…"}` : "Quotas and usage" });
  const quotasBody = el("tbody", { id: "quotas-body" });
  const quotas = el("table", { id: "quotas" }, el("caption", { text: "Every quota: what is used of it" }),
    el("thead", {}, el("tr", {}, ...["Quota", "Used", "Limit", "Usage"].map((h) => el("th", { scope: "col", text: h })))), quotasBody);
  const daysBody = el("tbody", { id: "days-body" });
  const days = el("table", { id: "usage-days" }, el("caption", { text: "Usage per UTC day" }),
    el("thead", {}, el("tr", {}, ...["Day", "Messages in", "Messages out", "Bytes in", "Fuel", "State operations"].map((h, i) => el("th", { scope: "col", class: i ? "num" : "", text: h })))), daysBody);
  const stateList = el("ul", { id: "state-keys" });
  view.replaceChildren(title, quotas,
    el("section", { "aria-labelledby": "days-h" }, el("h2", { id: "days-h", text: "Usage per day" }), days),
    el("section", { "aria-labelledby": "state-h" }, el("h2", { id: "state-h", text: "State keys (read-only)" }), stateList));
  if (isAdmin() && !app.tenant) return;
  let previous = null;
  const load = async () => {
    try {
      const { quotas: limits } = await api(`/v1/dashboard/quotas${watchQuery()}`);
      let usage = null;
      let devices = null;
      let keys = null;
      let series = null;
      let logCount = null;
      if (!isAdmin()) {
        // The state keys are listed for reading only (the first 500); max_state_keys and
        // max_state_bytes take their figures from the usage, which counts every live key.
        [usage, devices, keys, series] = await Promise.all([
          api("/v1/usage"), api("/v1/devices"), api("/v1/state?limit=500"), api("/v1/metrics")]);
        logCount = usage.log_lines;
      }
      // Per-second quotas: the rate between this reading of the usage totals and the last.
      const now = Date.now();
      const rate = (field) => {
        if (!usage || !previous || now <= previous.at) return null;
        return Math.max(0, (usage[field] - previous.usage[field]) / ((now - previous.at) / 1000));
      };
      // max_instances counts one operator instance per wasm node of each running deployment
      // instance (promised at admission; an idle one keeps its promise), as the event stream
      // reports them per deployment.
      let instances = null;
      if (app.streamOk) {
        instances = 0;
        for (const d of app.deployments.values()) instances += d.operator_instances || 0;
      }
      const used = {
        max_modules: usage && usage.modules,
        max_module_total_bytes: usage && usage.module_bytes,
        max_graphs: usage && usage.graphs,
        max_deployments: usage ? usage.deployments : app.deployments.size,
        max_instances: instances,
        messages_per_second_in: rate("messages_in"),
        fuel_per_second: rate("fuel"),
        api_requests_per_second: rate("api_requests"),
        max_devices: devices && devices.length,
        max_dead_letter_bytes: usage && usage.dead_letter_bytes,
        max_metric_series: series && series.filter((s) => !s.platform).length,
        max_log_lines: logCount,
        max_state_keys: usage && usage.state_keys,
        max_state_bytes: usage && usage.state_bytes,
        // Bytes the live budgets hold now; absent where the executors running the tenant's
        // deployments do not report them.
        max_inflight_bytes: usage && usage.inflight_bytes,
        max_queued_output_bytes: usage && usage.queued_output_bytes,
      };
      if (usage) previous = { at: now, usage };
      const bytes = (name) => /bytes|memory/.test(name);
      const rows = Object.entries(limits).map(([name, limit]) => {
        const u = used[name];
        const numeric = typeof limit === "number";
        const label = `${name.replace(/_/g, " ")}`;
        const shown = (v) => (v === null || v === undefined ? "–" : bytes(name) ? fmtBytes(v) : typeof v === "number" ? fmtNumber(Math.round(v * 10) / 10) : Array.isArray(v) ? (v.join(", ") || "none") : String(v));
        // Why a tenant-wide quota has no figure: the admin reads no tenant's usage; a rate needs
        // two readings; else the runtime did not report it (executor processes report no
        // live budgets).
        const missing = !usage ? "usage is read with the tenant's own token"
          : name.endsWith("_per_second") ? "a rate: measured between two readings of the usage, 5 s apart"
          : "usage not reported by the executors running them";
        const note = !numeric ? "" : PER_ITEM.has(name) ? "a limit on each call, message or item, enforced as it happens"
          : `a budget shared by all of the tenant's deployments, enforced as it happens (${missing})`;
        let bar = el("span", { class: "muted", text: note });
        if (numeric && u !== null && u !== undefined) {
          bar = el("meter", { min: 0, max: Math.max(limit, 1), value: Math.min(u, limit), low: limit * 0.7, high: limit * 0.9, optimum: 0, "aria-label": `${label}: ${shown(u)} of ${shown(limit)}`, "data-quota": name, title: `${shown(u)} of ${shown(limit)}` });
        }
        return el("tr", { "data-quota-row": name }, el("th", { scope: "row", text: label }), el("td", { class: "num", text: shown(u) }), el("td", { class: "num", text: name === "call_timeout" ? `${limit} ms` : shown(limit) }), el("td", {}, bar));
      });
      quotasBody.replaceChildren(...rows);
      if (usage) {
        const daily = (usage.periods || []).filter((p) => p.period === "day").reverse();
        daysBody.replaceChildren(...daily.map((p) => el("tr", {},
          el("th", { scope: "row", text: new Date(p.start_ms).toISOString().slice(0, 10) }),
          el("td", { class: "num", text: fmtNumber(p.messages_in) }), el("td", { class: "num", text: fmtNumber(p.messages_out) }),
          el("td", { class: "num", text: fmtBytes(p.bytes_in) }), el("td", { class: "num", text: fmtNumber(p.fuel) }),
          el("td", { class: "num", text: fmtNumber(p.state_ops) }))));
        if (!daily.length) daysBody.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "Nothing recorded yet (usage is flushed periodically)." })));
      } else {
        daysBody.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "Usage is the tenant's to read." })));
      }
      if (keys) {
        stateList.replaceChildren(...(keys.keys.length ? keys.keys.slice(0, 500).map((k) => el("li", {}, el("code", { text: k }))) : [el("li", { text: "No keys." })]));
      }
    } catch (error) { backgroundFailed(error); }
  };
  every(5000, load);
}

// ---- start ----

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (token) signIn(token);
});
$("sign-out").addEventListener("click", () => signOut("Signed out."));
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("main").focus();
});
$("tenant-select").addEventListener("change", (event) => pickTenant(event.target.value));
window.addEventListener("hashchange", route);

const kept = sessionStorage.getItem(TOKEN_KEY);
if (kept) signIn(kept);
else $("token").focus();
