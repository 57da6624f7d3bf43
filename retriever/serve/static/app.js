// The search page: calls the JSON API of this same server and draws each hit's lens as SVG.
// Plain JS, no framework, nothing loaded from elsewhere.
"use strict";

const TOP = 8; // words per lens cell
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
// What a hit's score is, by method: the fused and BM25 scales differ from the dense one.
const SCORE_LABELS = {
  dense: "cosine similarity (filtered vectors)",
  sparse: "sparse dot product",
  bm25: "BM25 score",
  rrf: "reciprocal-rank fusion score",
  weighted: "weighted sum of min-max normalised scores",
};

let running = null; // the search under way: { controller, id }
let searches = 0;

function apiKey() {
  return sessionStorage.getItem("retriever-api-key") || "";
}

async function api(path, { body, signal } = {}) {
  const headers = apiKey() ? { "X-API-Key": apiKey() } : {};
  const init = { headers, signal };
  if (body !== undefined) {
    init.method = "POST";
    init.body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function loadMethods() {
  try {
    const info = await api("/info");
    const select = $("method");
    select.replaceChildren();
    for (const method of info.methods) {
      const option = document.createElement("option");
      option.value = option.textContent = method;
      select.appendChild(option);
    }
    setStatus(`${info.documents.toLocaleString()} documents, generation ${info.generation}`);
  } catch (error) {
    setStatus(`${error.message} (set the API key above if the server needs one)`, true);
  }
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// The ids of the words drawn in each row (raw, filtered) of one side's lens.
function drawnIds(lens) {
  return Object.fromEntries(
    ["raw", "filtered"].map((row) => [row, new Set(lens[row].slice(0, TOP).map((t) => t.id))]),
  );
}

// One side (the query or the document): a row of words per space, each with a bar whose
// length is its score over the row's largest, and the score itself written after it.
// A word drawn on both sides in the same row is highlighted. Each side is its own SVG,
// scaled to its box, so the two sides sit side by side on a wide screen and stack on a
// narrow one.
function drawSide(name, lens, otherIds) {
  const width = 320, wordWidth = 105, valueWidth = 44, barHeight = 16, headHeight = 22;
  const rowHeight = headHeight + TOP * barHeight + 8;
  const svg = svgElement("svg", {
    class: "lens",
    viewBox: `0 0 ${width} ${2 * rowHeight}`,
    role: "img",
    "aria-label": `top words of the ${name}, raw and filtered`,
  });
  ["raw", "filtered"].forEach((row, r) => {
    const y0 = r * rowHeight;
    svg.appendChild(svgElement("text", { x: 0, y: y0 + 15, class: "head" }, `${name}, ${row}`));
    const tokens = lens[row].slice(0, TOP);
    const largest = Math.max(...tokens.map((t) => Math.abs(t.score)), 1e-9);
    const room = width - wordWidth - valueWidth - 6;
    tokens.forEach((token, i) => {
      const shared = otherIds[row].has(token.id);
      const y = y0 + headHeight + i * barHeight;
      const barWidth = Math.max(2, (room * Math.abs(token.score)) / largest);
      svg.appendChild(svgElement("text", {
        x: 0, y: y + barHeight - 4, class: shared ? "word shared" : "word",
      }, token.token));
      const bar = svgElement("rect", {
        x: wordWidth, y: y + 2, width: barWidth, height: barHeight - 4,
        class: shared ? "bar shared" : "bar",
      });
      bar.appendChild(svgElement("title", {}, `${token.token}: ${token.score.toFixed(3)}`));
      svg.appendChild(bar);
      svg.appendChild(svgElement("text", {
        x: wordWidth + barWidth + 4, y: y + barHeight - 4, class: "value",
      }, token.score.toPrecision(3)));
    });
  });
  return svg;
}

// The words highlighted in the picture: drawn on both sides in the same row.
function sharedWords(queryLens, documentLens) {
  const words = new Set();
  for (const row of ["raw", "filtered"]) {
    const queryIds = drawnIds(queryLens)[row];
    for (const token of documentLens[row].slice(0, TOP)) {
      if (queryIds.has(token.id)) words.add(token.token.trim());
    }
  }
  return [...words];
}

function drawLens(queryLens, documentLens) {
  const figure = document.createElement("div");
  figure.className = "lens-pair";
  figure.append(
    drawSide("query", queryLens, drawnIds(documentLens)),
    drawSide("document", documentLens, drawnIds(queryLens)),
  );
  const words = sharedWords(queryLens, documentLens);
  const caption = document.createElement("p");
  caption.className = "shared-list";
  caption.textContent = words.length
    ? `in both (orange): ${words.join(", ")}`
    : "no word among both sides' top words";
  return [figure, caption];
}

function hitElement(hit, method) {
  const item = document.createElement("li");
  item.className = "hit";
  const heading = document.createElement("h2");
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = hit.title || "(untitled)";
  const id = document.createElement("span");
  id.className = "doc-id";
  id.textContent = ` ${hit.id}`;
  title.appendChild(id);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(4);
  score.title = scoreLabel(method);
  heading.append(title, score);
  const snippet = document.createElement("p");
  snippet.className = "snippet";
  snippet.textContent = hit.snippet;
  item.append(heading, snippet);
  return item;
}

function scoreLabel(method) {
  const fusion = method.includes("+") ? "rrf" : method;
  return SCORE_LABELS[fusion] || "score";
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  // A newer search supersedes the one under way: cancel it, and draw only this one.
  if (running) running.controller.abort();
  const mine = { controller: new AbortController(), id: ++searches };
  running = mine;
  const signal = mine.controller.signal;
  const params = new URLSearchParams({ query, k: $("k").value });
  if ($("method").value) params.set("method", $("method").value);
  document.body.dataset.state = "searching";
  setStatus("searching: encoding the query and ranking the documents...");
  $("hits").replaceChildren();
  $("legend").hidden = true;
  try {
    const answer = await api(`/search?${params}`, { signal });
    if (running !== mine) return;
    $("score-label").textContent = `Scores: ${scoreLabel(answer.method)}.`;
    const items = answer.hits.map((hit) => hitElement(hit, answer.method));
    $("hits").append(...items);
    $("legend").hidden = answer.hits.length === 0;
    const found = `${answer.hits.length} hits by ${answer.method}, generation ${answer.generation}`;
    if (answer.hits.length) {
      setStatus(`${found}; reading their lenses...`);
      const lenses = await api("/lenses", {
        body: { query, doc_ids: answer.hits.map((hit) => hit.id), top: TOP },
        signal,
      });
      if (running !== mine) return;
      answer.hits.forEach((hit, i) => items[i].append(...drawLens(lenses.query, lenses.documents[hit.id])));
    }
    setStatus(found);
    document.body.dataset.state = "done";
  } catch (error) {
    if (running !== mine || error.name === "AbortError") return;
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  } finally {
    if (running === mine) running = null;
  }
}

$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("retriever-api-key", $("api-key").value.trim());
  loadMethods();
});
$("search-form").addEventListener("submit", search);
loadMethods();
