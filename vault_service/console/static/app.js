// The auditor and DPO console. Plain ES module, no build step. The token lives in
// this module's memory only: never in storage, a cookie or the DOM once signed in.
// Everything shown is built with textContent (no HTML from the API is ever parsed).
import uPlot from "/console/vendor/uPlot.esm.js";
import { LABELS } from "/console/i18n.js";
import { parseKey, verifyNote } from "/console/note.js";

const DAY = 86400;
const PALETTE = ["#00408a", "#a3001b", "#0b6b2b", "#6a1b9a", "#8a4b00", "#00606b", "#3f3f3f", "#b0006e", "#767676"];
let token = null;
let lang = "fr";
let chart = null;
let lastBreach = null;
let lastSubject = null;

const $ = (sel) => document.querySelector(sel);
const t = (key, vars = {}) =>
  (LABELS[lang][key] ?? key).replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));

class ApiError extends Error {
  constructor(code, status) {
    super(code);
    this.code = code;
    this.status = status;
  }
}

async function api(path, body) {
  const headers = { Authorization: `Bearer ${token}`, "X-Purpose": "audit" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    let code = `http_${response.status}`;
    try {
      code = (await response.json()).code || code;
    } catch {
      // not a problem document: the status says enough
    }
    throw new ApiError(code, response.status);
  }
  return response;
}

function status(text) {
  $("#status").textContent = text;
}

function failed(err) {
  if (err instanceof SignInError) {
    $("#signin-error").textContent = t("error", { code: err.code });
    return;
  }
  // The page's own failures (a malformed note, a bad key): their message is a code.
  if (!(err instanceof ApiError)) console.error("console_failure", String(err && err.message));
  status(t("error", { code: err instanceof ApiError ? err.code : "client_error" }));
  if (err instanceof ApiError && err.status === 401) signOut();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(table, items, render) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    render(row, item);
    body.appendChild(row);
  }
}

// --- lists read page by page ---------------------------------------------------------
// A list of the API ({items, next_cursor}) shown page by page: the first page replaces
// the table's rows, "Show more" appends the next one (the API's cursor), and a line
// says how many rows are shown and whether more follow. `keep` filters a page in the
// browser only where the API has no filter for it (entries of no account or structure).
const PAGE = 50;
const lists = {};

function list(name, path, query, render, keep) {
  lists[name] = { path, query, render, keep, cursor: null, shown: 0 };
  return more(name, true);
}

async function more(name, first = false) {
  const l = lists[name];
  if (!l || l.busy || (!first && !l.cursor)) return; // a second click while a page loads
  const query = new URLSearchParams(l.query);
  if (!first) {
    query.set("cursor", l.cursor);
    status(t("loading"));
  }
  l.busy = true;
  let page;
  try {
    page = await (await api(`${l.path}?${query}`)).json();
  } finally {
    l.busy = false;
  }
  if (lists[name] !== l) return; // another load of this list started meanwhile
  const body = $(`#${name}-table tbody`);
  if (first) body.replaceChildren();
  const items = l.keep ? page.items.filter(l.keep) : page.items;
  for (const item of items) {
    const row = document.createElement("tr");
    l.render(row, item);
    body.appendChild(row);
  }
  l.shown += items.length;
  l.cursor = page.next_cursor;
  l.pages = (l.pages ?? 0) + 1;
  $(`#${name}-table`).dataset.pages = String(l.pages);
  counted(name);
  if (!first) {
    status(t("loaded"));
    // The button is gone once the list is complete: focus goes to the line saying so.
    if (!l.cursor) $(`#${name}-count`).focus();
  }
}

function counted(name) {
  const l = lists[name];
  if (!l) return;
  $(`#${name}-more`).hidden = !l.cursor;
  $(`#${name}-count`).textContent = t(l.cursor ? "shown_more" : "shown_all", { n: l.shown });
}

function isoDay(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 10);
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "";
}

// --- language ------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = lang;
  document.title = `${t("title")} — vault-service`;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-aria]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAria));
  }
  const other = lang === "fr" ? "en" : "fr";
  $("#lang").textContent = other === "en" ? "English" : "Français";
  $("#lang").lang = other;
  for (const name of Object.keys(lists)) counted(name);
}

// --- navigation ----------------------------------------------------------------------
const VIEWS = ["signin", "volume", "alerts", "grants", "checkpoint", "reports"];
const LOADERS = {
  volume: loadVolume,
  alerts: loadAlerts,
  grants: loadGrants,
  checkpoint: loadCheckpoint,
  reports: async () => {},
};

async function show(view) {
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== view;
  for (const b of document.querySelectorAll("#nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  const heading = $(`#view-${view} h2`);
  heading.tabIndex = -1;
  heading.focus();
  if (LOADERS[view]) {
    status(t("loading"));
    try {
      await LOADERS[view]();
      status(t("loaded"));
    } catch (err) {
      failed(err);
    }
  }
}

// --- sign-in -------------------------------------------------------------------------
let oidc = null; // the provider and client, from /console/config.json (public values)

async function enter(bearer, started) {
  token = bearer;
  $("#signin-error").textContent = "";
  try {
    await api("/v1/audit/keys"); // the token works for an auditor, or the code says why
  } catch (err) {
    token = null;
    $("#signin-error").textContent = t("error", { code: err.code || "client_error" });
    return;
  }
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  await show("volume");
  document.body.dataset.firstViewMs = String(Math.round(performance.now() - started));
}

async function signIn(event) {
  event.preventDefault();
  const started = performance.now();
  const input = $("#token");
  const pasted = input.value.trim();
  input.value = ""; // not kept in the DOM
  await enter(pasted, started);
}

const b64url = (bytes) =>
  btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));

class SignInError extends Error {
  constructor(code) {
    super(code);
    this.code = code;
  }
}

// Authorization code with PKCE (RFC 7636, S256) in a pop-up: the verifier, state and
// nonce live in this function's memory; the callback page hands the code back over a
// same-origin BroadcastChannel (the pop-up's opener link is cut by the COOP header).
async function oidcSignIn() {
  const started = performance.now();
  const verifier = random(32);
  const state = random(16);
  const nonce = random(16);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  const redirect = `${location.origin}/console/callback.html`;
  const url = new URL(oidc.authorization_endpoint);
  for (const [k, v] of Object.entries({
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: redirect,
    scope: oidc.scope,
    state,
    nonce,
    code_challenge: b64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
  })) url.searchParams.set(k, v);
  const channel = new BroadcastChannel("vault-service-console-oidc");
  const answer = new Promise((resolve, reject) => {
    channel.onmessage = (e) => {
      if (e.data && e.data.state === state) resolve(e.data);
    };
    setTimeout(() => reject(new SignInError("oidc_timeout")), 300000);
  });
  $("#signin-error").textContent = "";
  status(t("oidc_waiting"));
  window.open(url.toString(), "vault-service-oidc", "popup,width=640,height=760");
  let data;
  try {
    data = await answer;
  } finally {
    channel.close();
  }
  if (!data.code) {
    const code = /^[a-z_]{1,40}$/.test(data.error ?? "") ? data.error : "no_code";
    throw new SignInError(`oidc_${code}`);
  }
  const response = await fetch(oidc.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: data.code,
      redirect_uri: redirect,
      client_id: oidc.client_id,
      code_verifier: verifier,
    }),
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) throw new SignInError("oidc_token_refused");
  const idToken = (await response.json()).id_token;
  if (typeof idToken !== "string") throw new SignInError("oidc_no_id_token");
  // The signature is the service's to verify; the nonce is this page's to check.
  const payload = JSON.parse(atob(idToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  if (payload.nonce !== nonce) throw new SignInError("oidc_nonce_mismatch");
  await enter(idToken, started);
}

async function loadSignInConfig() {
  const response = await fetch("/console/config.json", { cache: "no-store", credentials: "omit" });
  if (!response.ok) return;
  oidc = (await response.json()).oidc;
  $("#oidc").hidden = !oidc;
}

function signOut() {
  token = null;
  lastBreach = lastSubject = null;
  if (chart) chart.destroy();
  chart = null;
  for (const tb of document.querySelectorAll("tbody")) tb.replaceChildren();
  for (const name of Object.keys(lists)) {
    delete lists[name];
    $(`#${name}-more`).hidden = true;
    $(`#${name}-count`).textContent = "";
  }
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  show("signin");
}

// --- access volume -------------------------------------------------------------------
async function loadVolume() {
  const by = $("#volume-by").value;
  const days = Number($("#volume-days").value);
  const end = Math.floor(Date.now() / 1000 / DAY) * DAY + DAY; // tomorrow 00:00 UTC
  const start = end - days * DAY;
  const query = new URLSearchParams({
    by,
    since: new Date(start * 1000).toISOString(),
    until: new Date(end * 1000).toISOString(),
  });
  const page = await (await api(`/v1/audit/volume?${query}`)).json();
  const xs = [];
  for (let d = start; d < end; d += DAY) xs.push(d);
  const totals = new Map();
  for (const r of page.rows) totals.set(r.key, (totals.get(r.key) ?? 0) + r.entries);
  const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k]) => k);
  const series = top.map(() => xs.map(() => 0));
  const rest = xs.map(() => 0);
  for (const r of page.rows) {
    const i = Math.round((Date.parse(r.day) / 1000 - start) / DAY);
    if (i < 0 || i >= xs.length) continue;
    const s = top.indexOf(r.key);
    if (s >= 0) series[s][i] += r.entries;
    else rest[i] += r.entries;
  }
  const label = (k) => (k === null ? t("anonymous") : k.slice(0, 8));
  const opts = {
    title: t("volume_title"),
    width: Math.max(600, Math.min(1100, $("#main").clientWidth - 32)),
    height: 300,
    series: [
      { label: t("day"), value: (_, v) => (v == null ? "" : isoDay(v)) },
      ...top.map((k, i) => ({ label: label(k), stroke: PALETTE[i], width: 2 })),
      ...(totals.size > top.length ? [{ label: t("others"), stroke: PALETTE[8], width: 2, dash: [6, 4] }] : []),
    ],
    axes: [{ values: (_, ticks) => ticks.map(isoDay) }, { label: t("entries") }],
  };
  const data = [xs, ...series, ...(totals.size > top.length ? [rest] : [])];
  if (chart) chart.destroy();
  chart = new uPlot(opts, data, $("#volume-chart"));
  const rows = [...page.rows].sort((a, b) => b.day.localeCompare(a.day) || b.entries - a.entries);
  fill($("#volume-table"), rows, (row, r) => {
    cell(row, r.day.slice(0, 10));
    cell(row, r.key ?? t("anonymous"), "id");
    cell(row, String(r.entries));
    cell(row, String(r.records));
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = t("see_entries");
    button.addEventListener("click", () => drill(by, r.key, r.day).catch(failed));
    cell(row, "").appendChild(button);
  });
  $("#drill").hidden = true;
  $("#volume-caption").textContent = t("chart_caption") + (page.truncated ? ` ${t("truncated")}` : "");
}

// The entries behind one cell of the chart, filtered by the API (its actor_id or
// structure_id filter) and paged, so that a busy day is complete once "Show more" is
// gone. Entries of no account or no structure have no filter: the day's entries are
// paged and those kept in the page.
function drillRow(row, e) {
  cell(row, String(e.index));
  cell(row, when(e.at));
  cell(row, e.action);
  cell(row, e.outcome);
  cell(row, e.actor_id, "id");
  cell(row, e.purpose);
  cell(row, String((e.record_ids ?? []).length));
  cell(row, e.verified ? t("yes") : t("no"), e.verified ? "ok" : "bad");
}

async function drill(by, key, day) {
  const since = new Date(Date.parse(day));
  const until = new Date(since.getTime() + DAY * 1000);
  const query = new URLSearchParams({ since: since.toISOString(), until: until.toISOString(), limit: "500" });
  const field = by === "actor" ? "actor_id" : "structure_id";
  if (key !== null) query.set(field, key);
  await list("drill", "/v1/audit/events", query, drillRow, key === null ? (e) => e[field] == null : undefined);
  $("#drill-what").textContent = t("drill_what", { key: key ?? t("anonymous"), day: day.slice(0, 10) });
  $("#drill").hidden = false;
  $("#h-drill").focus();
}

// --- alerts and grants ---------------------------------------------------------------
function alertRow(row, a) {
  cell(row, when(a.raised_at));
  cell(row, a.severity);
  cell(row, a.kind);
  cell(row, a.account_id, "id");
  cell(row, a.structure_id, "id");
  cell(row, a.state);
  const td = cell(row, "");
  const input = document.createElement("input");
  input.id = `ack-${a.id}`;
  input.maxLength = 500;
  input.autocomplete = "off";
  input.setAttribute("aria-label", t("ack_comment_for", { id: a.id.slice(0, 8) }));
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = t("ack");
  button.addEventListener("click", () => acknowledge(a.id, input).catch(failed));
  td.append(input, " ", button);
}

async function loadAlerts() {
  const query = new URLSearchParams({ state: "open", order: "newest", limit: String(PAGE) });
  await list("alerts", "/v1/alerts", query, alertRow);
}

async function acknowledge(id, input) {
  const comment = input.value.trim();
  if (!comment) {
    status(t("ack_needs_comment"));
    input.focus();
    return;
  }
  await api(`/v1/alerts/${encodeURIComponent(id)}/ack`, { comment });
  await loadAlerts();
  status(t("acked", { id: id.slice(0, 8) }));
  $("#h-alerts").focus();
}

function grantRow(row, g) {
  cell(row, when(g.opened_at));
  cell(row, g.account_id, "id");
  cell(row, g.record_id, "id");
  cell(row, g.reason);
  cell(row, when(g.expires_at));
  cell(row, g.review_outcome ?? t("pending"), g.review_outcome === "unjustified" ? "bad" : undefined);
  cell(row, g.reviewed_by, "id");
}

async function loadGrants() {
  const query = new URLSearchParams({ order: "newest", limit: String(PAGE) });
  await list("grants", "/v1/audit/break-glass", query, grantRow);
}

// --- checkpoint ----------------------------------------------------------------------
async function loadCheckpoint() {
  delete document.body.dataset.checkpoint; // set again once this verification is done
  const [noteText, keysFile] = await Promise.all([
    api("/v1/audit/checkpoint").then((r) => r.text()),
    api("/v1/audit/keys").then((r) => r.json()),
  ]);
  // Only log keys (type 0x01) from the server: a witness key it served would let a
  // compromised server cosign its own forgery. Witnesses come from the auditor alone.
  const logKeys = [];
  for (const k of keysFile.keys) {
    const key = await parseKey(k);
    if (key.type === 0x01) logKeys.push(key);
  }
  const witnessKeys = [];
  for (const line of $("#witness-keys").value.split("\n")) {
    if (line.trim() && !line.trim().startsWith("#")) witnessKeys.push(await parseKey(line));
  }
  const outcome = await verifyNote(noteText, logKeys, witnessKeys.filter((k) => k.type === 0x04));
  const facts = $("#checkpoint-facts");
  facts.replaceChildren();
  for (const [label, value] of [["origin", outcome.note.origin], ["tree_size", outcome.note.size], ["root_hash", outcome.note.root]]) {
    const dt = document.createElement("dt");
    dt.textContent = t(label);
    const dd = document.createElement("dd");
    dd.textContent = value;
    facts.append(dt, dd);
  }
  fill($("#signatures-table"), outcome.results, (row, r) => {
    cell(row, r.name, "id");
    cell(row, r.kind === "log" ? t("log_signature") : t("cosignature"));
    cell(row, r.id, "id");
    const text = { ok: t("sig_ok"), bad: t("sig_bad"), unknown: t("sig_unknown") }[r.result];
    cell(row, text, r.result === "ok" ? "ok" : r.result === "bad" ? "bad" : undefined);
  });
  $("#checkpoint-note").textContent = noteText;
  const line = $("#checkpoint-status");
  const witnesses = outcome.results.filter((r) => r.kind === "witness" && r.result === "ok").length;
  const originOk = outcome.note.origin === keysFile.origin;
  line.textContent = !originOk
    ? t("cp_origin")
    : !outcome.verified
      ? t("cp_failed")
      : witnesses > 0
        ? t("cp_verified", { w: witnesses })
        : t("cp_unwitnessed");
  line.className = `status-line ${originOk && outcome.verified ? "ok" : "bad"}`;
  document.body.dataset.checkpoint = originOk && outcome.verified ? "verified" : "failed";
}

// --- reports -------------------------------------------------------------------------
function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  status(t("downloaded", { name }));
}

function windowQuery() {
  return new URLSearchParams({
    actor_id: $("#breach-actor").value.trim().toLowerCase(),
    since: `${$("#breach-since").value}T00:00:00Z`,
    until: `${$("#breach-until").value}T00:00:00Z`,
  });
}

async function loadBreach(event) {
  event.preventDefault();
  const query = windowQuery();
  const page = await (await api(`/v1/audit/reports/breach-impact?${query}`)).json();
  lastBreach = query;
  $("#breach-summary").textContent = t("breach_summary", {
    records: page.records.length,
    entries: page.entries,
    refused: page.refused,
    size: page.tree_size,
    complete: page.complete ? t("yes") : t("no"),
  });
  fill($("#breach-table"), page.records, (row, r) => {
    cell(row, r.record_id, "id");
    cell(row, String(r.accesses));
    cell(row, when(r.first_at));
    cell(row, when(r.last_at));
    cell(row, r.actions.join(", "));
    cell(row, r.fields.join(", "));
  });
  $("#breach-csv").disabled = false;
  $("#breach-proofs").disabled = false;
  status(t("loaded"));
}

async function breachCsv() {
  const query = new URLSearchParams(lastBreach);
  query.set("format", "csv");
  const blob = await (await api(`/v1/audit/reports/breach-impact?${query}`)).blob();
  download(blob, "breach-impact.csv");
}

async function breachProofs() {
  const blob = await (await api(`/v1/audit/reports/breach-impact/proofs?${lastBreach}`)).blob();
  download(blob, "breach-impact-proofs.json");
}

async function loadSubject(event) {
  event.preventDefault();
  const id = $("#subject-record").value.trim().toLowerCase();
  const page = await (await api(`/v1/audit/reports/subject/${encodeURIComponent(id)}`)).json();
  lastSubject = page;
  fill($("#subject-table"), page.items, (row, e) => {
    cell(row, String(e.index));
    cell(row, when(e.at));
    cell(row, e.action);
    cell(row, e.outcome);
    cell(row, e.actor_id, "id");
    cell(row, e.purpose);
    cell(row, (e.fields ?? []).join(" "));
  });
  $("#subject-csv").disabled = false;
  status(t("loaded"));
}

function csvField(value) {
  const text = value == null ? "" : String(value);
  // A leading =, +, - or @ would be a formula in a spreadsheet: quoted and prefixed.
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\n\r']/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

function subjectCsv() {
  const header = ["index", "at", "action", "outcome", "actor_id", "role", "structure_id", "purpose", "fields", "verified"];
  const lines = [header.join(",")];
  for (const e of lastSubject.items) {
    lines.push(
      [e.index, e.at, e.action, e.outcome, e.actor_id, e.role, e.structure_id, e.purpose, (e.fields ?? []).join(" "), e.verified]
        .map(csvField)
        .join(","),
    );
  }
  download(new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" }), `subject-${lastSubject.record_id}.csv`);
}

// --- wiring --------------------------------------------------------------------------
function on(selector, event, handler) {
  $(selector).addEventListener(event, (e) => {
    Promise.resolve(handler(e)).catch(failed);
  });
}

function start() {
  const today = new Date().toISOString().slice(0, 10);
  const tomorrow = new Date(Date.now() + DAY * 1000).toISOString().slice(0, 10);
  $("#breach-since").value = today;
  $("#breach-until").value = tomorrow;
  on("#signin-form", "submit", signIn);
  on("#oidc-signin", "click", oidcSignIn);
  on("#signout", "click", signOut);
  on("#lang", "click", () => {
    lang = lang === "fr" ? "en" : "fr";
    applyLanguage();
    const view = document.body.dataset.view;
    if (token && view && view !== "signin" && view !== "reports") return show(view);
    return undefined;
  });
  for (const b of document.querySelectorAll("#nav button")) on(`#nav button[data-view="${b.dataset.view}"]`, "click", () => show(b.dataset.view));
  on("#volume-form", "submit", (e) => {
    e.preventDefault();
    return loadVolume();
  });
  on("#witness-form", "submit", (e) => {
    e.preventDefault();
    return loadCheckpoint();
  });
  on("#breach-form", "submit", loadBreach);
  on("#breach-csv", "click", breachCsv);
  on("#breach-proofs", "click", breachProofs);
  on("#subject-form", "submit", loadSubject);
  on("#subject-csv", "click", subjectCsv);
  for (const name of ["alerts", "grants", "drill"]) on(`#${name}-more`, "click", () => more(name));
  applyLanguage();
  document.body.dataset.view = "signin";
  loadSignInConfig()
    .catch(() => {})
    .finally(() => {
      document.body.dataset.ready = "true";
    });
}

start();
