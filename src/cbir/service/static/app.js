// cbir web page: search by an uploaded image, by words or by a result, filter by tag or by a
// where filter, give feedback.
// Plain JavaScript, no build step; every value from the server goes in via textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let last = null; // the last query: {file}, {id} or {text}
let seq = 0; // answers to older queries are dropped
let queryUrl = null;
let writes = false; // the server takes feedback (it has an API key)

async function api(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    body = null;
  }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

function options() {
  return { k: $("k").value, tag: $("tag").value.trim(), where: $("where").value.trim() };
}

function showQuery(src) {
  const img = $("query-img");
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = src.startsWith("blob:") ? src : null;
  img.src = src;
  img.hidden = false;
  $("drop-text").hidden = true;
}

function searchFile(file) {
  if (!file) return;
  last = { file };
  showQuery(URL.createObjectURL(file));
  history.replaceState(null, "", location.pathname);
  const { k, tag, where } = options();
  const form = new FormData();
  form.append("file", file);
  form.append("k", k);
  if (tag) form.append("tag", tag);
  if (where) form.append("where", where);
  run(() => api("/search", { method: "POST", body: form }), file.name || "the uploaded image");
}

function searchId(id) {
  last = { id };
  showQuery(`/thumbs/${id}`);
  history.replaceState(null, "", `#id=${id}`);
  const { k, tag, where } = options();
  const q = new URLSearchParams({ id, k });
  if (tag) q.set("tag", tag);
  if (where) q.set("where", where);
  run(() => api(`/search?${q}`), `image ${id}`);
}

function searchText(text) {
  text = text.trim();
  if (!text) return;
  last = { text };
  const img = $("query-img");
  img.hidden = true;
  img.removeAttribute("src");
  $("drop-text").hidden = false;
  history.replaceState(null, "", `#text=${encodeURIComponent(text)}`);
  const { k, tag, where } = options();
  const q = new URLSearchParams({ q: text, k });
  if (tag) q.set("tag", tag);
  if (where) q.set("where", where);
  run(() => api(`/search/text?${q}`), `“${text}”`);
}

async function run(fetcher, label) {
  const mine = ++seq;
  setStatus(`searching by ${label}…`);
  $("results").setAttribute("aria-busy", "true");
  try {
    const res = await fetcher();
    if (mine === seq) render(res);
  } catch (e) {
    if (mine !== seq) return;
    $("results").replaceChildren();
    $("results").dataset.query = "";
    $("nomatch").hidden = true;
    $("why").hidden = true;
    setStatus(`search failed: ${e.message}`, true);
  } finally {
    if (mine === seq) $("results").removeAttribute("aria-busy");
  }
}

function render(res) {
  const grid = $("results");
  grid.replaceChildren(...res.results.map((h) => card(h, res.query)));
  grid.dataset.query = res.query;
  $("nomatch").hidden = !res.no_match;
  $("why").textContent = res.hint || "";
  $("why").hidden = !res.hint;
  const n = res.results.length;
  let text = `${n} result${n === 1 ? "" : "s"}`;
  if (res.tag) text += ` tagged “${res.tag}”`;
  if (res.where) text += ` passing “${res.where}”`;
  if (res.threshold !== null) text += ` · threshold ${res.threshold.toFixed(3)}`;
  setStatus(text);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
const THUMB = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z";

function thumbIcon() {
  // drawn, not an emoji: it shows whatever fonts the machine has
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", THUMB);
  svg.append(path);
  return svg;
}

function card(hit, query) {
  const fig = el("figure", "result");
  fig.dataset.id = hit.id;
  const open = el("button", "open");
  open.type = "button";
  open.title = "search by this image";
  const img = el("img");
  img.src = hit.thumb;
  img.alt = `result ${hit.rank}`;
  img.loading = "lazy";
  open.append(img);
  open.addEventListener("click", () => searchId(hit.id));

  const cap = el("figcaption");
  const line = el("div", "line");
  line.append(el("span", "rank", `#${hit.rank}`), el("span", "score", hit.score.toFixed(3)), el("span", "id", `id ${hit.id}`));
  const name = hit.path.split(/[\\/]/).pop();
  const path = el("a", "path", name);
  path.href = hit.image;
  path.title = hit.path;
  path.target = "_blank";
  path.rel = "noopener";
  cap.append(line, path);
  if (hit.tags.length) cap.append(el("div", "tags", hit.tags.join(", ")));

  const fb = el("div", "feedback");
  const up = el("button", "up");
  const down = el("button", "down");
  for (const [b, relevant] of [[up, true], [down, false]]) {
    b.type = "button";
    b.append(thumbIcon());
    b.title = relevant ? "right result" : "wrong result";
    b.setAttribute("aria-label", b.title);
    b.addEventListener("click", () => sendFeedback(query, hit.id, relevant, fig, b));
  }
  fb.append(up, down);
  if (writes && !query.startsWith("text:")) cap.append(fb); // feedback is for image queries
  fig.append(open, cap);
  return fig;
}

async function sendFeedback(query, id, relevant, fig, button) {
  try {
    await api("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-API-Key": $("key").value.trim() },
      body: JSON.stringify({ query, result_id: id, relevant }),
    });
    for (const b of fig.querySelectorAll(".feedback button")) b.classList.remove("chosen");
    button.classList.add("chosen");
    fig.dataset.feedback = relevant ? "up" : "down";
    setStatus(`feedback stored for id ${id}: ${relevant ? "right" : "wrong"} result`);
  } catch (e) {
    setStatus(`feedback not stored: ${e.message}`, true);
  }
}

function rerun() {
  if (!last) return;
  if (last.rerun) last.rerun();
  else if (last.file) searchFile(last.file);
  else if (last.text) searchText(last.text);
  else searchId(last.id);
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => searchFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("file").click();
    }
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchText($("text").value);
  });
  $("where").addEventListener("change", rerun);
  $("tag").addEventListener("change", rerun);
  $("k").addEventListener("change", rerun);

  api("/health")
    .then((h) => {
      $("info").textContent = `${h.images} images · ${h.index_type} · ${h.kind}`;
      writes = h.writes;
      $("key-row").hidden = !writes;
    })
    .catch((e) => {
      $("info").textContent = `server unreachable: ${e.message}`;
    });
  const m = location.hash.match(/^#id=(\d+)$/);
  const t = location.hash.match(/^#text=(.+)$/);
  if (m) searchId(Number(m[1]));
  else if (t) {
    $("text").value = decodeURIComponent(t[1]);
    searchText($("text").value);
  }
}

init();
