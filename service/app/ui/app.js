// cpcnn web console: one page, three views, everything read from the public /v1 API.
// Every value from the server or from file names is put in the page as text (textContent, SVG text
// nodes), never parsed as HTML. The API key lives in sessionStorage and travels only in X-API-Key.
"use strict";

const KEY_STORE = "cpcnn.apiKey";
const THEME_STORE = "cpcnn.theme";
const REFRESH_MS = 5000;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
  "#17becf", "#393b79", "#f7b6d2", "#637939"];
const OTHER_COLOUR = "#9ca3af";
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

// -- building DOM safely -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (!rows.length) {
    tbody.append(el("tr", { class: "empty" }, el("td", { colspan: columns, text: emptyText })));
    return;
  }
  for (const row of rows) tbody.append(row);
}

function td(value, cls) {
  const shown = value === null || value === undefined ? "–" : value;
  return el("td", { class: cls, title: shown instanceof Node ? null : String(shown) }, shown);
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

function ago(iso) {
  if (!iso) return "–";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return new Date(iso).toLocaleString();
}

// -- talking to the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function apiKey() { return sessionStorage.getItem(KEY_STORE); }

async function api(method, path, { json, form, raw } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (response.status === 401) {
    askForKey(key ? "The API key was not accepted (401). Enter the key this server was started with."
      : "This server needs an API key (401). Enter it to continue.");
    throw new ApiError(401, key ? "the API key was not accepted" : "an API key is needed");
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      if (problem && problem.detail) detail = `${problem.title || response.status}: ${problem.detail}`;
    } catch (_) { /* not problem+json */ }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

function showBanner(text) {
  const banner = $("#banner");
  banner.textContent = text;
  banner.hidden = !text;
}

function askForKey(reason) {
  showBanner(reason);
  $("#key-reason").textContent = reason;
  const dialog = $("#key-dialog");
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
}

function setupKeyDialog() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_STORE, value);
    $("#key-input").value = "";
    $("#key-dialog").close();
    showBanner("");
    route();
  });
  $("#key-cancel").addEventListener("click", () => $("#key-dialog").close());
  $("#key-button").addEventListener("click", () => askForKeyFromButton());
}

function askForKeyFromButton() {
  $("#key-reason").textContent = apiKey() ? "Replace the API key used by this tab." : "Enter the server's API key.";
  $("#key-dialog").showModal();
}

// -- theme and navigation ------------------------------------------------------------------------

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $("#theme-toggle").textContent = theme === "dark" ? "Light theme" : "Dark theme";
}

function setupTheme() {
  const stored = localStorage.getItem(THEME_STORE);
  const prefersDark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(stored || (prefersDark ? "dark" : "light"));
  $("#theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_STORE, next);
    applyTheme(next);
  });
}

const PAGES = ["service", "try", "profiles"];
let refreshTimer = null;

function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "service";
  for (const name of PAGES) {
    $(`#page-${name}`).hidden = name !== page;
    const link = document.querySelector(`nav a[data-page="${name}"]`);
    if (name === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  clearInterval(refreshTimer);
  if (page === "service") {
    refreshService();
    refreshTimer = setInterval(() => { if (!document.hidden) refreshService(); }, REFRESH_MS);
  } else if (page === "profiles") {
    loadProfiles();
  } else {
    loadExampleNote();
  }
}

// -- Service page --------------------------------------------------------------------------------

async function refreshService() {
  try {
    const [workers, throughput, jobs] = await Promise.all([
      api("GET", "/v1/workers"), api("GET", "/v1/throughput?minutes=10"), api("GET", "/v1/jobs?limit=15"),
    ]);
    showBanner("");
    renderWorkers(workers);
    renderThroughput(throughput);
    renderJobs(jobs);
    $("#refreshed").textContent = `Last refreshed ${new Date().toLocaleTimeString()}.`;
  } catch (error) {
    if (error.status !== 401) showBanner(`Could not refresh: ${error.message}`);
  }
  renderPlates();
}

function renderWorkers(workers) {
  $("#queue-depth").textContent = workers.queue_depth === null ? "?" : String(workers.queue_depth);
  $("#queue-kind").textContent = `${workers.queue} queue`;
  $("#worker-count").textContent = String(workers.count);
  $("#ready-state").textContent = workers.data.some((w) => w.warmed) ? "a worker is warmed" : "no warmed worker";
  const rows = workers.data.map((w) => el("tr", { "data-testid": "worker-row" },
    td(w.name), td(w.host), td(w.provider), td(w.models.join(", ")), td(w.batch_size, "num"),
    td(w.warmed ? "yes" : "no", w.warmed ? "s-ok" : "s-queued"), td(ago(w.last_seen))));
  fill($("#workers tbody"), rows, 7, "No live worker.");
}

function renderJobs(jobs) {
  const rows = jobs.data.map((job) => {
    const site = [job.metadata.Metadata_Plate, job.metadata.Metadata_Well, job.metadata.Metadata_Site]
      .filter(Boolean).join(" / ");
    return el("tr", {}, td(el("code", { text: job.id.slice(0, 12), title: job.id })),
      td(job.status, `s-${job.status}`), td(site || "–"), td(job.model), td(job.n_cells, "num"),
      td(job.queue_wait_s === null ? "–" : `${fmt(job.queue_wait_s)} s`, "num"),
      td(job.run_s === null ? "–" : `${fmt(job.run_s)} s`, "num"), td(ago(job.created_at)));
  });
  fill($("#recent-jobs tbody"), rows, 8, "No jobs yet.");
}

async function renderPlates() {
  const tbody = $("#plate-jobs tbody");
  let plates;
  try {
    plates = await api("GET", "/v1/plates");
  } catch (error) {
    fill(tbody, [], 6, error.status === 404 ? "No plate jobs on this server." : `Could not list plate jobs: ${error.message}`);
    return;
  }
  const rows = (plates.data || []).map((plate) => {
    const p = plate.progress || {};
    const share = p.sites ? ` (${Math.round((100 * (p.done || 0)) / p.sites)} %)` : "";
    const failed = p.failed ? `, ${p.failed} failed` : "";
    return el("tr", { "data-testid": "plate-row" }, td(el("code", { text: String(plate.id).slice(0, 12), title: plate.id })),
      td(plate.status, `s-${plate.status}`), td(`${p.done ?? "?"} / ${p.sites ?? "?"} sites${share}${failed}`),
      td(p.cells, "num"), td(p.eta_s === null || p.eta_s === undefined ? "–" : `${fmt(p.eta_s, 0)} s`, "num"),
      td(ago(plate.created_at)));
  });
  fill(tbody, rows, 6, "No plate jobs yet.");
}

function renderThroughput(throughput) {
  const width = 900, height = 130, left = 40, bottom = 18, top = 6;
  const values = throughput.buckets.map((b) => b.cells_per_s);
  const max = Math.max(1, ...values);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `cells per second per minute; now ${fmt(throughput.cells_per_s)} over the window` });
  const plotH = height - bottom - top, slot = (width - left) / values.length;
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH * (1 - fraction);
    chart.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "gridline" }));
    chart.append(svg("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, fmt(max * fraction, max < 10 ? 1 : 0)));
  }
  values.forEach((value, i) => {
    const h = (plotH * value) / max;
    const bar = svg("rect", { x: left + i * slot + 2, y: top + plotH - h, width: slot - 4, height: h, class: "bar" });
    bar.append(svg("title", {}, `${new Date(throughput.buckets[i].start).toLocaleTimeString()}: ` +
      `${throughput.buckets[i].cells} cells in ${throughput.buckets[i].jobs} jobs`));
    chart.append(bar);
  });
  chart.append(svg("text", { x: left, y: height - 4 }, `-${values.length} min`));
  chart.append(svg("text", { x: width, y: height - 4, "text-anchor": "end" }, "now"));
  $("#throughput").replaceChildren(chart);
  $("#rate-now").textContent = `(${fmt(throughput.cells_per_s)} cells/s over the window)`;
}

// -- Try a field of view -------------------------------------------------------------------------

const CHANNELS = ["DNA", "RNA", "ER", "AGP", "Mito"];
const site = { files: {}, locations: null, detect: false, preview: null, example: null };

async function loadExampleNote() {
  if (site.example !== null) return;
  try {
    const response = await fetch("/ui/example", { cache: "no-store" });
    site.example = response.ok ? await response.json() : false;
  } catch (_) { site.example = false; }
  $("#use-example").hidden = !site.example;
}

async function useExample() {
  const status = $("#try-status");
  status.className = "status";
  status.textContent = "Loading the bundled example site…";
  const example = site.example;
  const fetchBlob = async (url, name) => {
    const response = await fetch(url);
    if (!response.ok) throw new ApiError(response.status, `could not load ${name}`);
    return new File([await response.blob()], url.split("/").pop());
  };
  try {
    for (const channel of CHANNELS) site.files[channel] = await fetchBlob(example.channels[channel], channel);
    site.locations = await fetchBlob(example.locations, "locations");
    site.detect = false;
    const form = $("#upload-form");
    form.plate.value = example.plate; form.well.value = example.well; form.site.value = example.site;
    $("#example-note").textContent = `Example loaded: ${example.name}.`;
    await submitSite();
  } catch (error) {
    showError(status, error);
  }
}

function readForm() {
  const form = $("#upload-form");
  for (const channel of CHANNELS) {
    const picked = form.elements[channel].files[0];
    if (picked) site.files[channel] = picked;
  }
  const locations = form.elements.locations.files[0];
  if (locations) site.locations = locations;
  site.detect = form.querySelector("input[name=nuclei]:checked").value === "detect";
}

function siteForm(extra = {}, locationsOverride) {
  const data = new FormData();
  for (const channel of CHANNELS) data.append(channel, site.files[channel], site.files[channel].name || channel);
  if (locationsOverride !== undefined) data.append("locations", locationsOverride);
  else if (site.detect) data.append("detect_nuclei", "true");
  else data.append("locations", site.locations, site.locations.name || "locations.csv");
  for (const [name, value] of Object.entries(extra)) data.append(name, value);
  return data;
}

function showError(node, error) {
  node.className = "status error";
  node.textContent = error.message;
}

async function submitSite(event) {
  if (event) { event.preventDefault(); readForm(); }
  const status = $("#try-status");
  const missing = CHANNELS.filter((c) => !site.files[c]);
  if (missing.length) { showError(status, new Error(`Choose an image for ${missing.join(", ")}.`)); return; }
  if (!site.detect && !site.locations) {
    showError(status, new Error("Choose a locations file, or select 'Detect nuclei'.")); return;
  }
  const button = $("[data-testid=upload-submit]");
  button.disabled = true;
  status.className = "status";
  status.textContent = "Finding nuclei and drawing the composite…";
  $("#crop-gallery").replaceChildren(el("p", { class: "sub", text: "Choose a nucleus marker." }));
  $("#job-result").replaceChildren();
  try {
    const preview = await api("POST", "/v1/crops/preview", { form: siteForm({ composite: "true" }) });
    site.preview = preview;
    renderFov(preview);
    status.textContent = "Embedding…";
    const form = $("#upload-form");
    const meta = { plate: form.plate.value, well: form.well.value, site: form.site.value };
    const job = await api("POST", "/v1/jobs", { form: siteForm(meta) });
    await followJob(job);
    status.textContent = "";
  } catch (error) {
    showError(status, error);
  } finally {
    button.disabled = false;
  }
}

function renderFov(preview) {
  const fov = $("#fov");
  fov.style.aspectRatio = `${preview.width} / ${preview.height}`;
  const image = el("img", { src: preview.composite, alt: `false-colour composite, ${preview.width}×${preview.height} px` });
  const markers = preview.centers.map(([x, y], index) => {
    const number = preview.object_numbers[index];
    const marker = el("button", {
      type: "button", class: "marker", "data-testid": "nucleus-marker", "data-index": index,
      "aria-pressed": "false", "aria-label": `nucleus ${number} at x ${fmt(x, 0)}, y ${fmt(y, 0)}`,
      title: `nucleus ${number} (x ${fmt(x, 0)}, y ${fmt(y, 0)})`,
      onclick: () => showCrops(index, marker),
    });
    marker.style.left = `${(100 * x) / preview.width}%`;
    marker.style.top = `${(100 * y) / preview.height}%`;
    return marker;
  });
  fov.replaceChildren(image, ...markers);
  fov.classList.add("has-image");
  $("#marker-count").textContent = `${preview.centers.length} nuclei. Choose a marker to see its crops.`;
}

async function showCrops(index, marker) {
  for (const other of document.querySelectorAll(".marker[aria-pressed=true]")) other.setAttribute("aria-pressed", "false");
  marker.setAttribute("aria-pressed", "true");
  const gallery = $("#crop-gallery");
  gallery.replaceChildren(el("p", { class: "sub", text: "Cropping…" }));
  const preview = site.preview;
  const centres = JSON.stringify({ x: preview.centers.map((c) => c[0]), y: preview.centers.map((c) => c[1]),
    ObjectNumber: preview.object_numbers });
  try {
    const answer = await api("POST", "/v1/crops/preview",
      { form: siteForm({ composite: "false", cells: String(index) }, centres) });
    const cell = answer.crops[0];
    const figures = answer.channels.map((channel) => el("figure", { "data-testid": "crop" },
      el("img", { src: cell.channels[channel], alt: `${channel} crop of nucleus ${cell.object_number}`,
        width: answer.crop_size, height: answer.crop_size }),
      el("figcaption", { text: channel })));
    gallery.replaceChildren(...figures, el("p", { class: "sub",
      text: `Nucleus ${cell.object_number} at (${fmt(cell.x, 1)}, ${fmt(cell.y, 1)}); ` +
        `${answer.crop_size}×${answer.crop_size}, ${answer.normalization} normalization, 0–1 shown as black–white.` }));
  } catch (error) {
    gallery.replaceChildren(el("p", { class: "status error", text: error.message }));
  }
}

async function followJob(job) {
  const box = $("#job-result");
  while (job.status === "queued" || job.status === "running") {
    box.replaceChildren(el("p", { text: `Job ${job.id.slice(0, 12)}: ${job.status}…` }));
    job = await api("GET", `/v1/jobs/${job.id}?wait=10`);
  }
  if (job.status === "failed") {
    box.replaceChildren(el("p", { class: "status error", text: `Job failed: ${job.error ? job.error.detail : "unknown error"}` }));
    return;
  }
  const facts = [
    ["Job", job.id], ["Model", job.model], ["Cells", job.n_cells], ["Features per cell", job.feature_size],
    ["Queue wait", `${fmt(job.queue_wait_s, 3)} s`], ["Run", `${fmt(job.run_s, 3)} s`],
    ["Normalization", job.normalization],
  ];
  const list = el("table", { "data-testid": "job-facts" },
    el("tbody", {}, ...facts.map(([name, value]) => el("tr", {}, el("th", { text: name }), td(value)))));
  const parquet = el("button", { type: "button", "data-testid": "download-parquet",
    onclick: () => download(job, "parquet") }, "Download Parquet");
  const csv = el("button", { type: "button", "data-testid": "download-csv", onclick: () => download(job, "csv") },
    "Download CSV");
  box.replaceChildren(list, el("div", { class: "row" }, parquet, csv));
}

function csvField(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// A job's JSON result as the columns of `cpcnn embed` (Metadata_*, then the features).
function cellsCsv(result) {
  const meta = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"];
  const header = [...meta, "Metadata_Model", "Metadata_ObjectNumber", "Metadata_Nuclei_Location_Center_X",
    "Metadata_Nuclei_Location_Center_Y", ...Array.from({ length: result.feature_size }, (_, i) => `${result.feature_prefix}_${i}`)];
  const lines = [header.map(csvField).join(",")];
  result.features.forEach((row, i) => {
    const number = result.object_numbers ? result.object_numbers[i] : i + 1;
    lines.push([...meta.map((m) => result.metadata[m] || ""), result.model, number, ...result.locations[i], ...row]
      .map(csvField).join(","));
  });
  return lines.join("\n") + "\n";
}

async function download(job, format) {
  let blob;
  if (format === "parquet") {
    const response = await api("GET", `/v1/jobs/${job.id}/result?format=parquet`, { raw: true });
    blob = await response.blob();
  } else {
    const result = await api("GET", `/v1/jobs/${job.id}/result?format=json`);
    blob = new Blob([cellsCsv(result)], { type: "text/csv" });
  }
  const link = el("a", { href: URL.createObjectURL(blob), download: `${job.id}-cells.${format}` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// -- Profiles --------------------------------------------------------------------------------------

const profiles = { tables: [], libraries: [] };

function option(value, label) { return el("option", { value }, label); }

function setOptions(select, items, keep = true) {
  const previous = select.value;
  select.replaceChildren(...items);
  if (keep && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

async function loadProfiles() {
  try {
    const [tables, transforms, libraries] = await Promise.all([
      api("GET", "/v1/tables"), api("GET", "/v1/transforms"), api("GET", "/v1/libraries"),
    ]);
    showBanner("");
    profiles.tables = tables.data;
    profiles.libraries = libraries.data;
    const item = (text, title) => el("li", { title }, text);
    $("#tables").replaceChildren(...tables.data.map((t) =>
      item(`${t.name} — ${t.n_rows} rows × ${t.n_features} features`, t.id)));
    $("#transforms").replaceChildren(...transforms.data.map((t) =>
      item(`${t.method} λ=${t.lambda} on ${t.controls} (${t.n_features} features)`, t.id)));
    $("#libraries").replaceChildren(...libraries.data.map((l) =>
      item(`${l.id_column}: ${l.n_profiles} profiles × ${l.n_features}`, l.id)));
    for (const [list, what] of [["#tables", "tables"], ["#transforms", "transforms"], ["#libraries", "libraries"]]) {
      if (!$(list).children.length) $(list).append(el("li", { class: "sub", text: `No ${what} stored.` }));
    }
    const tableOptions = () => tables.data.map((t) => option(t.id, `${t.name} (${t.n_rows} rows)`));
    setOptions($("#map-table"), tableOptions());
    setOptions($("#match-table"), tableOptions());
    setOptions($("#eval-table"), tableOptions());
    setOptions($("#match-library"), libraries.data.map((l) => option(l.id, `${l.id_column} · ${l.n_profiles} profiles`)));
    tableChosen();
    evalTableChosen();
  } catch (error) {
    if (error.status !== 401) showBanner(`Could not list profiles: ${error.message}`);
  }
}

function tableById(id) { return profiles.tables.find((t) => t.id === id); }

function preferredColumn(columns) {
  return columns.find((c) => /moa|broad_sample|treatment|compound|pert/i.test(c)) || columns[0];
}

function tableChosen() {
  const table = tableById($("#map-table").value);
  const columns = table ? table.metadata_columns : [];
  setOptions($("#map-color"), columns.map((c) => option(c, c)), false);
  if (columns.length) $("#map-color").value = preferredColumn(columns);
}

function evalTableChosen() {
  const table = tableById($("#eval-table").value);
  const columns = table ? table.metadata_columns : [];
  setOptions($("#eval-id"), columns.map((c) => option(c, c)), false);
  setOptions($("#eval-annotation"), columns.map((c) => option(c, c)), false);
  const id = columns.find((c) => /broad_sample|treatment|compound|pert/i.test(c));
  const annotation = columns.find((c) => /moa|target|annotation/i.test(c));
  if (id) $("#eval-id").value = id;
  if (annotation) $("#eval-annotation").value = annotation;
}

let currentMap = null;

async function drawMap(event) {
  if (event) event.preventDefault();
  const table = $("#map-table").value;
  if (!table) return;
  const method = $("#map-method").value;
  $("#map-info").textContent = "Computing…";
  try {
    currentMap = await api("GET", `/v1/tables/${encodeURIComponent(table)}/map?method=${method}`);
    const methods = $("#map-method");
    if (currentMap.methods.length !== methods.options.length) {
      setOptions(methods, currentMap.methods.map((m) => option(m, m.toUpperCase())));
    }
    renderMap();
  } catch (error) {
    $("#map-info").textContent = "";
    $("#profile-map").replaceChildren(el("p", { class: "status error", text: error.message }));
  }
}

function categories(values) {
  const counts = new Map();
  for (const value of values) counts.set(value, (counts.get(value) || 0) + 1);
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1]);
  const colours = new Map(ranked.slice(0, PALETTE.length).map(([value], i) => [value, PALETTE[i]]));
  return { colours, ranked };
}

function renderMap() {
  const map = currentMap;
  if (!map) return;
  const column = $("#map-color").value;
  const values = (map.metadata[column] || map.x.map(() => null)).map((v) => (v === null ? "(missing)" : v));
  const { colours, ranked } = categories(values);
  const width = 900, height = 440, pad = 28;
  const [minX, maxX] = [Math.min(...map.x), Math.max(...map.x)];
  const [minY, maxY] = [Math.min(...map.y), Math.max(...map.y)];
  const sx = (x) => pad + ((x - minX) / (maxX - minX || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - minY) / (maxY - minY || 1)) * (height - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${map.method.toUpperCase()} map of ${map.n_shown} profiles coloured by ${column}` });
  chart.append(svg("line", { x1: pad, x2: width - pad, y1: height - pad, y2: height - pad, class: "axis" }));
  chart.append(svg("line", { x1: pad, x2: pad, y1: pad, y2: height - pad, class: "axis" }));
  const axis = map.method === "pca" && map.explained_variance
    ? map.explained_variance.map((v, i) => `PC${i + 1} (${fmt(100 * v, 1)} %)`) : ["UMAP 1", "UMAP 2"];
  chart.append(svg("text", { x: width - pad, y: height - 6, "text-anchor": "end" }, axis[0]));
  chart.append(svg("text", { x: 4, y: pad - 8 }, axis[1]));
  const tip = $("#map-tip");
  // Hover labels: the colouring column first, then the table's other metadata (8 at most).
  const labelled = [column, ...Object.keys(map.metadata).filter((name) => name !== column)]
    .filter((name) => name in map.metadata).slice(0, 8);
  map.x.forEach((x, i) => {
    const dot = svg("circle", { cx: sx(x), cy: sy(map.y[i]), r: 4.5, fill: colours.get(values[i]) || OTHER_COLOUR,
      "data-testid": "map-point" });
    const label = labelled.map((name) => `${name}: ${map.metadata[name][i] ?? "–"}`);
    const text = [`row ${map.rows[i]}`, ...label].join("\n");
    dot.append(svg("title", {}, text));
    dot.addEventListener("mousemove", (event) => {
      tip.textContent = text;
      tip.hidden = false;
      tip.style.left = `${event.clientX + 14}px`;
      tip.style.top = `${event.clientY + 10}px`;
    });
    dot.addEventListener("mouseleave", () => { tip.hidden = true; });
    chart.append(dot);
  });
  $("#profile-map").replaceChildren(chart);
  const legend = ranked.slice(0, PALETTE.length).map(([value, count]) => el("div", { "data-testid": "legend-item" },
    el("span", { class: "swatch" }), `${value} (${count})`));
  legend.forEach((item, i) => { item.firstChild.style.background = PALETTE[i]; });
  if (ranked.length > PALETTE.length) {
    const other = el("div", { "data-testid": "legend-item" }, el("span", { class: "swatch" }),
      `${ranked.length - PALETTE.length} other values`);
    other.firstChild.style.background = OTHER_COLOUR;
    legend.push(other);
  }
  $("#map-legend").replaceChildren(el("strong", { text: column }), ...legend);
  const sampled = map.n_shown < map.n_rows ? ` (evenly spaced sample of ${map.n_rows})` : "";
  const dropped = map.n_dropped_non_finite ? `; ${map.n_dropped_non_finite} rows with missing features left out` : "";
  $("#map-info").textContent = `${map.n_shown} profiles${sampled}${dropped}.`;
}

async function runMatch(event) {
  event.preventDefault();
  const library = $("#match-library").value, table = $("#match-table").value;
  const head = $("#match-results thead"), body = $("#match-results tbody");
  if (!library || !table) { fill(body, [], 1, "Choose a library and a query table."); return; }
  fill(body, [], 1, "Matching…");
  try {
    const result = await api("POST", `/v1/libraries/${encodeURIComponent(library)}/match`, { json: {
      table_id: table, top_k: Number($("#match-k").value) || 5, leave_one_out: $("#match-loo").checked } });
    const annotationNames = [...new Set(result.matches.flatMap((m) => Object.keys(m.annotations)))];
    head.replaceChildren(el("tr", {}, ...["Query", "Rank", "Library profile", "Score", ...annotationNames]
      .map((name) => el("th", { text: name }))));
    const rows = result.matches.map((m) => el("tr", { "data-testid": "match-row" }, td(m.query_id), td(m.rank, "num"),
      td(m.library_id), td(fmt(m.score, 3), "num"), ...annotationNames.map((n) => td(m.annotations[n]))));
    fill(body, rows, 4 + annotationNames.length, "No matches.");
  } catch (error) {
    fill(body, [], 1, error.message);
  }
}

async function runEvaluation(event) {
  event.preventDefault();
  const box = $("#eval-result");
  box.replaceChildren(el("p", { class: "sub", text: "Evaluating…" }));
  try {
    const result = await api("POST", "/v1/evaluate", { json: {
      table_id: $("#eval-table").value, id_column: $("#eval-id").value, annotation: $("#eval-annotation").value,
      convention: $("#eval-convention").value } });
    const card = (label, value) => el("div", { class: "card" }, el("div", { class: "label", text: label }),
      el("div", { class: "big", text: value }));
    box.replaceChildren(el("div", { class: "metrics", "data-testid": "eval-metrics" },
      card("mAP", fmt(result.mean_average_precision, 3)), card("Folds of enrichment", fmt(result.folds_of_enrichment, 2)),
      card("Queries", result.n_queries)));
    if (result.message) box.append(el("p", { class: "sub", text: result.message }));
    renderCurve(result.precision_at_recall);
  } catch (error) {
    box.replaceChildren(el("p", { class: "status error", text: error.message }));
  }
}

function renderCurve(curve) {
  const width = 420, height = 260, pad = 34;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "precision-recall curve" });
  const sx = (r) => pad + r * (width - 2 * pad), sy = (p) => height - pad - p * (height - 2 * pad);
  for (const tick of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: sx(0), x2: sx(1), y1: sy(tick), y2: sy(tick), class: "gridline" }));
    chart.append(svg("text", { x: pad - 6, y: sy(tick) + 4, "text-anchor": "end" }, tick));
    chart.append(svg("text", { x: sx(tick), y: height - pad + 14, "text-anchor": "middle" }, tick));
  }
  chart.append(svg("text", { x: width / 2, y: height - 4, "text-anchor": "middle" }, "recall"));
  chart.append(svg("text", { x: 4, y: 14 }, "precision"));
  const points = curve.recall.map((r, i) => [r, curve.precision[i]]).filter(([, p]) => p !== null);
  if (points.length) {
    const path = points.map(([r, p], i) => `${i ? "L" : "M"}${sx(r).toFixed(1)},${sy(p).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d: path, fill: "none", stroke: PALETTE[0], "stroke-width": 2 }));
  }
  $("#pr-curve").replaceChildren(chart);
}

// -- start ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  setupTheme();
  setupKeyDialog();
  $("#upload-form").addEventListener("submit", submitSite);
  $("#use-example").addEventListener("click", useExample);
  $("#map-form").addEventListener("submit", drawMap);
  $("#map-table").addEventListener("change", () => { tableChosen(); });
  $("#map-color").addEventListener("change", renderMap);
  $("#eval-table").addEventListener("change", evalTableChosen);
  $("#match-form").addEventListener("submit", runMatch);
  $("#eval-form").addEventListener("submit", runEvaluation);
  window.addEventListener("hashchange", route);
  route();
});
