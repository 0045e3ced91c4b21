// The dashboard in headless Chromium (Debian's `chromium`), driven by playwright-core over CDP,
// with axe-core for the accessibility check. Run by cli/tests/dashboard.rs against a real
// `weir serve`; scripts/bench runs its `bench` mode. Prints `PASS <step>` per step, `FAIL <why>`
// and exits 1 on the first failure.
//
// Environment: WEIR_URL (http://host:port), WEIR_TOKEN_A (developer of tenant A),
// WEIR_TOKEN_B (developer of tenant B), WEIR_VIEWER_TOKEN_A (viewer of tenant A), WEIR_ADMIN_TOKEN, WEIR_DEPLOYMENT (A's running
// deployment, http source, the temperature module), WEIR_DEPLOYMENT_B (B's), WEIR_CHROMIUM
// (the browser), WEIR_BROWSER_MODULES (node_modules holding playwright-core and axe-core),
// WEIR_SCREENSHOTS (where page screenshots go). Bench mode (argument `bench`): WEIR_URL,
// WEIR_TOKEN_A, WEIR_DEPLOYMENTS (how many the tenant has).

import { createRequire } from "node:module";
import { readFileSync, mkdirSync } from "node:fs";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) { console.log(`FAIL environment variable ${name} is not set`); process.exit(1); }
  return value;
};

const modules = env("WEIR_BROWSER_MODULES");
const require = createRequire(path.join(modules, "noop.js"));
const { chromium } = require("playwright-core");
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const url = env("WEIR_URL");
const deadline = (ms) => Date.now() + ms;

async function until(what, check, ms = 20000) {
  const end = deadline(ms);
  let last;
  while (Date.now() < end) {
    try { last = await check(); if (last) return last; } catch (error) { last = error; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function api(token, method, route, body) {
  const response = await fetch(`${url}${route}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const browser = await chromium.launch({
  executablePath: env("WEIR_CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});

async function signedIn(token) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.errors = errors;
  const response = await page.goto(url);
  page.firstResponse = response;
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#list-count").waitFor();
  return page;
}

async function axe(page, where) {
  // Evaluated over CDP (not an inline script, which the page's CSP refuses).
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) throw new Error(`axe-core on ${where}: ${JSON.stringify(bad)}`);
  console.log(`PASS axe ${where}: no serious or critical violations (${violations.length} minor)`);
}

async function bench() {
  const token = env("WEIR_TOKEN_A");
  const expected = Number(env("WEIR_DEPLOYMENTS"));
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  await context.addInitScript((t) => sessionStorage.setItem("weir.token", t), token);
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction((n) => window.weirDashboard && window.weirDashboard.firstRenderMs !== null
    && document.querySelectorAll("#deployments-body tr").length >= n, expected, { timeout: 60000 });
  const first = await page.evaluate(() => window.weirDashboard.firstRenderMs);
  const events = await page.evaluate(() => window.weirDashboard.events);
  await page.waitForFunction((e) => window.weirDashboard.events >= e + 10, events, { timeout: 60000 });
  const updates = await page.evaluate(() => window.weirDashboard.updates.slice(-10));
  updates.sort((a, b) => a - b);
  const median = updates[Math.floor(updates.length / 2)];
  console.log(`rows ${expected}, update samples ${JSON.stringify(updates.map((u) => Math.round(u * 10) / 10))}`);
  console.log(`RESULT dashboard_first_render_ms=${first.toFixed(0)}`);
  console.log(`RESULT dashboard_update_ms=${median.toFixed(1)}`);
}

async function check() {
  const tokenA = env("WEIR_TOKEN_A");
  const tokenB = env("WEIR_TOKEN_B");
  const admin = env("WEIR_ADMIN_TOKEN");
  const id = env("WEIR_DEPLOYMENT");
  const idB = env("WEIR_DEPLOYMENT_B");
  const shots = env("WEIR_SCREENSHOTS");
  mkdirSync(shots, { recursive: true });
  const shot = async (page, name) => {
    await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
    console.log(`screenshot ${path.join(shots, `${name}.png`)}`);
  };

  // Sign in as tenant A: the page and its headers.
  const page = await signedIn(tokenA);
  const headers = page.firstResponse.headers();
  if (!(headers["content-security-policy"] || "").includes("script-src 'self'")) throw new Error(`no strict CSP: ${JSON.stringify(headers)}`);
  if (!(headers["content-type"] || "").startsWith("text/html")) throw new Error(`content type ${headers["content-type"]}`);
  console.log("PASS served with a strict Content-Security-Policy");
  const focusedAfterSignIn = await page.evaluate(() => ({ tag: document.activeElement.tagName, id: document.activeElement.id }));
  if (focusedAfterSignIn.tag !== "H1") throw new Error(`after sign-in the focus is on ${JSON.stringify(focusedAfterSignIn)}, not the main heading`);
  console.log(`PASS after sign-in the main heading has the focus (${focusedAfterSignIn.id})`);
  const row = page.locator(`tr[data-deployment="${id}"]`);
  await row.waitFor();
  await until("the deployment running in the list", async () => (await row.locator("td").nth(1).textContent()) === "running");
  if (await page.locator(`tr[data-deployment="${idB}"]`).count()) throw new Error("tenant A sees tenant B's deployment");
  console.log("PASS signed in as tenant A; the deployment is listed running");
  await shot(page, "deployments");

  // Counters rise while messages are ingested (the list is fed by the event stream).
  const cell = row.locator("td").nth(5);
  const before = Number((await cell.textContent()).replace(/[^0-9]/g, "") || 0);
  const good = { topic: "probe/1", payload: JSON.stringify({ temperature: { value: 100, unit: "F" } }) };
  for (let i = 0; i < 5; i += 1) await api(tokenA, "POST", `/v1/deployments/${id}/ingest`, [good, good]);
  const after = await until("messages in to rise", async () => {
    const n = Number((await cell.textContent()).replace(/[^0-9]/g, "") || 0);
    return n >= before + 10 ? n : false;
  });
  console.log(`PASS counters rise while messages are ingested: messages in ${before} -> ${after}`);

  // The deployment page: graph, nodes, charts; a bad message becomes a dead letter shown as text.
  await row.getByRole("link", { name: id }).click();
  await page.locator("#graph-diagram").waitFor();
  await until("per-node counters", async () => (await page.locator("#nodes-body tr").count()) > 0);
  await until("throughput chart", async () => (await page.locator("#charts svg").count()) === 2);
  const attack = '<img src=x onerror="window.__weirXss=1">';
  await api(tokenA, "POST", `/v1/deployments/${id}/ingest?wait=true`, [{ topic: "probe/bad", payload: attack }]);
  await until("the dead letter on the page", async () => (await page.locator("#letters-body").textContent()).includes(attack));
  const injected = await page.evaluate(() => ({ img: document.querySelectorAll("#letters-body img").length, xss: window.__weirXss === 1 }));
  if (injected.img || injected.xss) throw new Error(`the payload was rendered as HTML: ${JSON.stringify(injected)}`);
  console.log("PASS a bad message's dead letter appears, its payload <img src=x onerror=...> rendered as text");
  await until("the dead letter counted in the node table", async () => (await page.locator("#detail-summary").textContent()).includes("dead letters"));
  await axe(page, "deployment page");
  await shot(page, "deployment");

  // Keyboard: from a fresh load of the page (the token kept in the tab), Tab from the top
  // reaches the actions, each stop with a visible focus indicator.
  await page.reload();
  await page.locator("#action-pause").waitFor();
  await until("pause enabled", async () => page.locator("#action-pause").isEnabled());
  // Start from the top of the page: the brand line in the header (not focusable).
  await page.locator(".brand").click();
  let reached = null;
  const stops = [];
  for (let i = 0; i < 60 && !reached; i += 1) {
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const style = getComputedStyle(e);
      return { id: e.id, tag: e.tagName, text: (e.textContent || "").trim().slice(0, 30), outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0 };
    });
    if (!focused) continue;
    stops.push(`${focused.tag}${focused.id ? `#${focused.id}` : ""}`);
    if (!focused.outline) throw new Error(`no visible focus on ${JSON.stringify(focused)}`);
    if (focused.id && focused.id.startsWith("action-")) reached = { focused: focused.id, presses: i + 1 };
  }
  if (!reached) throw new Error(`Tab never reached an action button: ${stops.join(" ")}`);
  console.log(`PASS keyboard navigation reaches the actions (${reached.focused} after ${reached.presses} Tab presses: ${stops.join(" ")}), focus visible at every stop`);

  // Pause and resume with the keyboard-reachable buttons.
  await page.locator("#action-pause").focus();
  await page.keyboard.press("Enter");
  await until("paused", async () => (await api(tokenA, "GET", `/v1/deployments/${id}`)).status === "paused");
  await until("the page showing paused", async () => (await page.locator("#detail-summary").getAttribute("data-status")) === "paused");
  await until("resume enabled", async () => page.locator("#action-resume").isEnabled());
  const active = () => page.evaluate(() => document.activeElement && document.activeElement.id);
  await until("the focus on Resume after Pause", async () => (await active()) === "action-resume");
  await page.keyboard.press("Enter");
  await until("running again", async () => (await api(tokenA, "GET", `/v1/deployments/${id}`)).status === "running");
  await until("the page showing running", async () => (await page.locator("#detail-summary").getAttribute("data-status")) === "running");
  await until("the focus on Pause after Resume", async () => (await active()) === "action-pause");
  console.log("PASS pause and resume from the page, with the keyboard: the focus moves to the enabled counterpart each time");

  // Roll out another graph version and roll back, from the page (keyboard-reachable, labelled
  // controls); the revisions table follows. The test uploaded `simple@2` beside `simple@1`.
  const revisionRows = () => page.locator("#revisions-body tr");
  await until("the first revision listed", async () => (await revisionRows().count()) === 1);
  await page.getByLabel("Graph version").selectOption({ label: "simple@2" });
  await page.locator("#action-rollout").focus();
  await page.keyboard.press("Enter");
  await until("rolled out to simple@2", async () => (await api(tokenA, "GET", `/v1/deployments/${id}`)).spec.graph.version === "2");
  await until("two revisions on the page", async () => (await revisionRows().count()) === 2);
  const second = await page.locator('#revisions-body tr[data-revision="2"]').textContent();
  if (!second.includes("simple@2") || !second.includes("rolled out") || !second.includes("current")) throw new Error(`revision 2 row: ${second}`);
  console.log(`PASS roll out from the page: ${second}`);
  await until("roll back enabled", async () => page.locator("#action-rollback").isEnabled());
  await page.locator("#action-rollback").click();
  await until("rolled back to simple@1", async () => (await api(tokenA, "GET", `/v1/deployments/${id}`)).spec.graph.version === "1");
  await until("three revisions on the page", async () => (await revisionRows().count()) === 3);
  const third = await page.locator('#revisions-body tr[data-revision="3"]').textContent();
  if (!third.includes("simple@1") || !third.includes("rolled back") || !third.includes("to revision 1")) throw new Error(`revision 3 row: ${third}`);
  await until("running after the rollback", async () => (await api(tokenA, "GET", `/v1/deployments/${id}`)).status === "running");
  console.log(`PASS roll back from the page: ${third}`);
  await axe(page, "deployment page with revisions");
  await shot(page, "revisions");

  // A malformed address: a 'not found' view, no uncaught URIError (page errors are checked below).
  await page.evaluate(() => { location.hash = "#/d/%E0%A4%A"; });
  await page.locator("#not-found").waitFor();
  console.log("PASS a malformed address shows the not-found view");

  // What max_instances counts: one operator instance per wasm node of the running deployment,
  // whether or not its instances are live right now.
  const definition = (await api(tokenA, "GET", `/v1/dashboard/graph?deployment=${encodeURIComponent(id)}`)).definition;
  const wasmNodes = definition.operations.filter((o) => o.module).length;
  if (!wasmNodes) throw new Error(`no wasm node in ${JSON.stringify(definition.operations)}`);

  // State keys for the quota bars: written through the API (raw bytes), read back in the usage.
  const stateValues = { "line-1": "oven", "line-2": "press", "line-3": "kiln-7" };
  for (const [key, value] of Object.entries(stateValues)) {
    const response = await fetch(`${url}/v1/state/${key}`, { method: "PUT", headers: { Authorization: `Bearer ${tokenA}`, "Content-Type": "application/octet-stream" }, body: value });
    if (!response.ok) throw new Error(`PUT /v1/state/${key}: ${response.status} ${await response.text()}`);
  }
  const stateBytes = Object.entries(stateValues).reduce((sum, [k, v]) => sum + k.length + v.length, 0);
  const written = await api(tokenA, "GET", "/v1/usage");
  if (written.state_keys !== 3 || written.state_bytes !== stateBytes) throw new Error(`usage after 3 state keys of ${stateBytes} bytes: ${written.state_keys} keys, ${written.state_bytes} bytes`);

  // Quotas and usage.
  await page.getByRole("link", { name: "Quotas and usage" }).click();
  await until("quota bars", async () => (await page.locator("meter[data-quota]").count()) >= 5);
  // Per-second quotas get their bars from two readings of the usage, 5 s apart.
  await until("the rate bars", async () => (await page.locator('meter[data-quota="messages_per_second_in"]').count()) === 1);
  const quotaRows = await page.locator("tr[data-quota-row]").count();
  const bars = await page.locator("meter[data-quota]").count();
  if (!(await page.locator('meter[data-quota="max_deployments"]').count())) throw new Error("no max_deployments bar");
  await until(`the max_instances bar at ${wasmNodes}`, async () => Number(await page.locator('meter[data-quota="max_instances"]').getAttribute("value")) === wasmNodes);
  console.log(`PASS the max_instances bar counts the running deployment's ${wasmNodes} wasm node(s)`);
  for (const counted of ["max_log_lines", "max_dead_letter_bytes"]) {
    if (!(await page.locator(`meter[data-quota="${counted}"]`).count())) throw new Error(`no ${counted} bar`);
  }
  console.log("PASS log lines and dead-letter bytes counted by the API");
  // The state keys written above: the bars show the usage's figures.
  await until("the max_state_keys bar at 3", async () => Number(await page.locator('meter[data-quota="max_state_keys"]').getAttribute("value")) === 3);
  await until(`the max_state_bytes bar at ${stateBytes}`, async () => Number(await page.locator('meter[data-quota="max_state_bytes"]').getAttribute("value")) === stateBytes);
  const keysRow = await page.locator('tr[data-quota-row="max_state_keys"]').textContent();
  if (!keysRow.includes("3")) throw new Error(`max_state_keys row: ${keysRow}`);
  const listedKeys = await page.locator("#state-keys li code").allTextContents();
  if (listedKeys.join(",") !== Object.keys(stateValues).join(",")) throw new Error(`state keys listed: ${listedKeys}`);
  console.log(`PASS the state bars count the tenant's 3 keys and ${stateBytes} bytes`);
  // The live budgets of the in-process executor: bytes held now, within the limit.
  for (const budget of ["max_inflight_bytes", "max_queued_output_bytes"]) {
    const meter = page.locator(`meter[data-quota="${budget}"]`);
    if (!(await meter.count())) throw new Error(`no ${budget} bar`);
    const [value, max] = [Number(await meter.getAttribute("value")), Number(await meter.getAttribute("max"))];
    if (!(value >= 0 && value <= max)) throw new Error(`${budget} bar: ${value} of ${max}`);
  }
  const withoutBar = await page.locator("tr[data-quota-row]:not(:has(meter))").allTextContents();
  for (const row of withoutBar) {
    if (row.includes("usage not reported")) throw new Error(`a tenant-wide quota without a figure: ${row}`);
  }
  console.log("PASS every tenant-wide budget has a bar: in-flight and queued-output bytes as the executor holds them");
  console.log(`PASS quota bars: ${bars} bars, ${quotaRows} quotas listed`);
  await axe(page, "quotas page");
  await shot(page, "quotas");

  await page.getByRole("link", { name: "Deployments" }).click();
  await page.locator(`tr[data-deployment="${id}"]`).waitFor();
  const listed = Number((await page.locator(`tr[data-deployment="${id}"] td`).nth(3).textContent()).replace(/[^0-9]/g, ""));
  if (listed !== wasmNodes) throw new Error(`the Operator instances column shows ${listed}, not ${wasmNodes}`);
  await axe(page, "deployments list");
  if (page.errors.length) throw new Error(`page errors: ${page.errors.join(" | ")}`);

  // Tenant B sees none of tenant A's deployments, not even by their URL.
  const pageB = await signedIn(tokenB);
  await pageB.locator(`tr[data-deployment="${idB}"]`).waitFor();
  await until("B's list settled", async () => (await pageB.locator("#list-count").textContent()) === "1 deployment");
  if (await pageB.locator(`tr[data-deployment="${id}"]`).count()) throw new Error("tenant B sees tenant A's deployment");
  await shot(pageB, "tenant-b");
  await pageB.evaluate((d) => { location.hash = `#/d/${d}`; }, id);
  await until("B refused A's deployment", async () => (await pageB.locator("#detail-summary").textContent()) === "No such deployment.");
  if ((await pageB.locator("#nodes-body tr").count()) || (await pageB.locator("#letters-body tr").count())) throw new Error("tenant B sees A's nodes or letters");
  console.log("PASS tenant B's token shows none of tenant A's deployments");

  // A viewer of tenant A sees the revisions, not the controls.
  const pageViewer = await signedIn(env("WEIR_VIEWER_TOKEN_A"));
  await pageViewer.evaluate((d) => { location.hash = `#/d/${d}`; }, id);
  await until("the viewer's revisions table", async () => (await pageViewer.locator("#revisions-body tr").count()) === 3);
  for (const control of ["#action-rollout", "#action-rollback", "#rollout-graph", "#action-pause"]) {
    if (await pageViewer.locator(control).count()) throw new Error(`a viewer is shown ${control}`);
  }
  console.log("PASS a viewer sees the revisions but no roll out or roll back controls");

  // Every event stream of tenant A taken (held open here, read as they come): a page opened
  // now is refused one (429); it says so, keeps retrying per Retry-After, and gets one as soon
  // as a slot is free.
  const held = [];
  for (let i = 0; i < 16; i += 1) {
    const controller = new AbortController();
    const response = await fetch(`${url}/v1/dashboard/events`, { headers: { Authorization: `Bearer ${tokenA}`, Accept: "text/event-stream" }, signal: controller.signal });
    if (response.status === 429) { await response.body.cancel(); break; }
    if (!response.ok) throw new Error(`event stream: ${response.status}`);
    const reader = response.body.getReader();
    (async () => { try { for (;;) { const { done } = await reader.read(); if (done) break; } } catch (_) { /* aborted */ } })();
    held.push(controller);
  }
  const pageFull = await signedIn(tokenA);
  await until("the too-many-tabs notice", async () => ((await pageFull.locator("#connection").isVisible()) && (await pageFull.locator("#connection").textContent()).includes("Too many dashboard tabs")));
  const waiting = await pageFull.locator("#list-count").textContent();
  if (waiting.includes("0 deployments")) throw new Error(`the refused page claims: ${waiting}`);
  await until("a second refusal (it retries)", async () => (await pageFull.evaluate(() => window.weirDashboard.streamRefused || 0)) >= 2);
  await axe(pageFull, "refused event stream");
  await shot(pageFull, "too-many-tabs");
  for (const controller of held) controller.abort();
  await pageFull.locator(`tr[data-deployment="${id}"]`).waitFor();
  await until("the notice gone", async () => !(await pageFull.locator("#connection").isVisible()));
  console.log(`PASS with the tenant's streams taken (${held.length} held) the page says so ("${waiting}"), retries, and shows the deployments once a slot is free`);
  await pageFull.context().close();

  // The admin's view across tenants: the picker shows A's deployments.
  const pageAdmin = await signedIn(admin);
  await pageAdmin.locator("#tenant-select").waitFor();
  const tenantA = (await api(tokenA, "GET", "/v1/dashboard/me")).tenant;
  await pageAdmin.selectOption("#tenant-select", tenantA);
  await pageAdmin.locator(`tr[data-deployment="${id}"]`).waitFor();
  if (await pageAdmin.locator(`tr[data-deployment="${idB}"]`).count()) throw new Error("the admin's view of A shows B's deployment");
  await axe(pageAdmin, "admin view");
  await shot(pageAdmin, "admin");
  console.log("PASS the admin picks a tenant and sees its deployments");

  // The deployment deleted while its page is open: its actions disabled, graph and charts gone;
  // created anew under the same id, the page picks it up again.
  const spec = (await api(tokenA, "GET", `/v1/deployments/${id}`)).spec;
  await page.evaluate((d) => { location.hash = `#/d/${d}`; }, id);
  await page.locator("#graph-diagram").waitFor();
  await until("pause enabled before the delete", async () => page.locator("#action-pause").isEnabled());
  await api(tokenA, "DELETE", `/v1/deployments/${id}`);
  await until("the page showing it gone", async () => (await page.locator("#detail-summary").textContent()) === "No such deployment.");
  await page.locator("#graph-gone").waitFor();
  for (const action of ["#action-pause", "#action-resume", "#action-delete", "#action-download"]) {
    if (await page.locator(action).isEnabled()) throw new Error(`${action} is enabled for a deleted deployment`);
  }
  if (await page.locator("#graph-diagram").count() || await page.locator("#charts svg").count()) throw new Error("the graph or charts of a deleted deployment are still shown");
  await shot(page, "deleted");
  await api(tokenA, "POST", "/v1/deployments", spec);
  await page.locator("#graph-diagram").waitFor({ timeout: 20000 });
  await until("pause enabled again", async () => page.locator("#action-pause").isEnabled());
  await until("the charts again", async () => (await page.locator("#charts svg").count()) === 2);
  // The 404s of the deleted deployment are logged by the browser as failed loads; nothing else.
  const uncaught = page.errors.filter((e) => !e.includes("Failed to load resource"));
  if (uncaught.length) throw new Error(`page errors: ${uncaught.join(" | ")}`);
  console.log("PASS a deployment deleted while its page is open: actions disabled, graph and charts cleared; created anew, picked up again");
}

try {
  if (process.argv[2] === "bench") await bench();
  else await check();
  await browser.close();
  console.log("DONE");
} catch (error) {
  console.log(`FAIL ${error && error.stack ? error.stack : error}`);
  await browser.close().catch(() => {});
  process.exit(1);
}
