// The lamra search page: plain DOM code, no build step. Results are built with textContent
// (never innerHTML), so item text cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let queryFile = null; // the image or video File chosen, dropped or pasted
let queryKind = null; // "image" or "video": the form field it is sent as

// The server's API key, when it asks for one: kept in this tab's memory only (never stored).
let apiKey = null;

// fetch with the key; on a 401 the page asks for the key once and retries.
async function apiFetch(url, options = {}) {
  const send = () => fetch(url, { ...options, headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });
  const used = apiKey;
  let response = await send();
  if (response.status === 401) {
    // Another request may have asked meanwhile: then its key is tried first.
    const given = apiKey !== used ? apiKey : window.prompt("This server needs an API key:");
    if (given) {
      apiKey = given.trim();
      response = await send();
    }
  }
  return response;
}

// An image of the server as a blob URL (an <img src> cannot send the key).
async function imageUrl(url) {
  if (!apiKey) return url;
  const response = await apiFetch(url);
  return response.ok ? URL.createObjectURL(await response.blob()) : "";
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// The reranker's checkpoint (its last path part), not its class name ("reranker Reranker").
function rerankerName(reranker) {
  return reranker.model ? String(reranker.model).split("/").pop() : reranker.class;
}

async function loadInfo() {
  try {
    const response = await apiFetch("/info");
    const info = await response.json();
    const model = info.model && info.model.model ? String(info.model.model).split("/").pop() : "?";
    $("server-info").textContent =
      `${info.index.count} items · model ${model}` + (info.reranker ? ` · reranker ${rerankerName(info.reranker)}` : "");
    // Without an instruction the server uses the M-BEIR one of the closest task: show it.
    const defaults = info.default_instructions || {};
    if (defaults.text) $("instruction").placeholder = `default for a text query: ${defaults.text} ("none" for none)`;
    // The same warning the CLI prints, e.g. for a model with random weights.
    const warnings = info.warnings || [];
    $("model-warning").textContent = warnings.map((w) => `Warning: ${w}`).join(" ");
    $("model-warning").hidden = warnings.length === 0;
    // Without a reranker the server refuses rerank requests, so the toggle is not offered.
    $("rerank-toggle").hidden = !info.reranker;
  } catch (error) {
    $("server-info").textContent = "server info unavailable";
  }
}

function fileKind(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("video/")) return "video";
  return null;
}

function setImage(file) {
  if (file && !fileKind(file)) {
    setStatus(`${file.name} is not an image or a video`, true);
    return;
  }
  queryFile = file || null;
  queryKind = file ? fileKind(file) : null;
  for (const id of ["image-preview", "video-preview"]) {
    const preview = $(id);
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
  }
  if (queryFile) {
    const preview = $(queryKind === "video" ? "video-preview" : "image-preview");
    preview.src = URL.createObjectURL(queryFile);
    preview.hidden = false;
  } else {
    $("image-input").value = "";
  }
  $("clear-image").hidden = !queryFile;
  $("dropzone-label").hidden = !!queryFile;
}

function wireDropzone() {
  const zone = $("dropzone");
  const input = $("image-input");
  zone.addEventListener("click", (event) => {
    if (event.target !== $("clear-image")) input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => setImage(input.files[0]));
  $("clear-image").addEventListener("click", (event) => { event.stopPropagation(); setImage(null); });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setImage(file);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) setImage(file);
  });
}

function formatScore(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(3);
}

function renderResults(data) {
  const grid = $("results");
  for (const img of grid.querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
  grid.replaceChildren();
  for (const hit of data.results) {
    const card = document.createElement("article");
    card.className = "result";
    card.dataset.id = hit.id;

    const box = document.createElement("div");
    box.className = "thumb-box";
    if (hit.thumbnail_url) {
      const img = document.createElement("img");
      img.className = "thumb";
      imageUrl(hit.thumbnail_url).then((src) => { img.src = src; });
      img.alt = hit.text || hit.id;
      img.loading = "lazy";
      const link = document.createElement("a");
      link.href = hit.image_url;
      link.target = "_blank";
      link.rel = "noopener";
      if (apiKey) {
        // The full image needs the key too: fetched, then shown from memory.
        link.addEventListener("click", async (event) => {
          event.preventDefault();
          window.open(await imageUrl(hit.image_url), "_blank", "noopener");
        });
      }
      link.append(img);
      box.append(link);
    } else {
      const none = document.createElement("span");
      none.className = "no-image";
      none.textContent = "text only";
      box.append(none);
    }

    const body = document.createElement("div");
    body.className = "body";
    const id = document.createElement("div");
    id.className = "id";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    id.append(rank, document.createTextNode(hit.id));
    const scores = document.createElement("div");
    scores.className = "scores";
    scores.textContent = hit.scores.fused === null
      ? `score ${formatScore(hit.scores.retrieval)}`
      : `fused ${formatScore(hit.scores.fused)} · ret ${formatScore(hit.scores.retrieval)} · rerank ${formatScore(hit.scores.rerank)}`;
    body.append(id, scores);
    if (hit.text) {
      const text = document.createElement("p");
      text.className = "text";
      text.textContent = hit.text;
      text.title = hit.text;
      body.append(text);
    }
    card.append(box, body);
    grid.append(card);
  }
}

async function search(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text && !queryFile) {
    setStatus("Type a query or add an image or a video.", true);
    return;
  }
  const form = new FormData();
  if (text) form.append("text", text);
  if (queryFile) form.append(queryKind, queryFile, queryFile.name || (queryKind === "video" ? "query.mp4" : "query.png"));
  const instruction = $("instruction").value.trim();
  if (instruction) form.append("instruction", instruction);
  form.append("k", $("k").value);
  if (!$("rerank-toggle").hidden) form.append("rerank", $("rerank").checked ? "true" : "false");

  const button = $("search-button");
  button.disabled = true;
  setStatus("Searching…");
  const started = performance.now();
  try {
    const response = await apiFetch("/search", { method: "POST", body: form });
    const data = await response.json();
    if (!response.ok) {
      // The results on screen belong to an earlier query: do not leave them under the error.
      $("results").replaceChildren();
      setStatus(`Error ${response.status}: ${data.detail || "request failed"}`, true);
      return;
    }
    renderResults(data);
    const ms = Math.round(performance.now() - started);
    setStatus(`${data.results.length} results in ${ms} ms` + (data.query.rerank ? " (reranked)" : ""));
  } catch (error) {
    $("results").replaceChildren();
    setStatus(`Request failed: ${error}`, true);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropzone();
  $("search-form").addEventListener("submit", search);
  loadInfo();
});
