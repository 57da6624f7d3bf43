// The search page: calls the JSON API of this same server and draws each hit's lens as SVG.
// Plain JS, no framework, nothing loaded from elsewhere.
"use strict";

const TOP = 8; // words per lens cell
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem("retriever-api-key") || "";
}

async function api(path) {
  const key = apiKey();
  const response = await fetch(path, { headers: key ? { "X-API-Key": key } : {} });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
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

// Two columns (query, document) by two rows (raw, filtered) of top words as bars; a word
// in both the query's and the document's list of the same row is highlighted.
function drawLens(queryLens, documentLens) {
  const cellWidth = 300, wordWidth = 110, barHeight = 16, left = 70, headHeight = 20;
  const rowHeight = headHeight + TOP * barHeight + 10;
  const svg = svgElement("svg", {
    class: "lens",
    width: left + 2 * cellWidth + 10,
    height: 2 * rowHeight + 4,
    role: "img",
    "aria-label": "token lens of the query and the document",
  });
  const columns = [["query", queryLens], ["document", documentLens]];
  ["raw", "filtered"].forEach((space, row) => {
    const y0 = row * rowHeight;
    svg.appendChild(svgElement("text", { x: 0, y: y0 + headHeight + 12, class: "head" }, space));
    const ids = columns.map(([, lens]) => new Set(lens[space].slice(0, TOP).map((t) => t.id)));
    columns.forEach(([name, lens], column) => {
      const x0 = left + column * cellWidth;
      svg.appendChild(svgElement("text", { x: x0, y: y0 + 14, class: "head" }, name));
      const tokens = lens[space].slice(0, TOP);
      const largest = Math.max(...tokens.map((t) => Math.abs(t.score)), 1e-9);
      tokens.forEach((token, i) => {
        const shared = ids[1 - column].has(token.id);
        const y = y0 + headHeight + i * barHeight;
        // The word in its own column, then its score as a bar.
        const width = Math.max(2, ((cellWidth - wordWidth - 20) * Math.abs(token.score)) / largest);
        svg.appendChild(svgElement("text", {
          x: x0, y: y + barHeight - 3, class: shared ? "word shared" : "word",
        }, token.token));
        const bar = svgElement("rect", {
          x: x0 + wordWidth, y: y + 2, width, height: barHeight - 3,
          class: shared ? "bar shared" : "bar",
        });
        bar.appendChild(svgElement("title", {}, `${token.token}: ${token.score.toFixed(3)}`));
        svg.appendChild(bar);
      });
    });
  });
  return svg;
}

function hitElement(hit) {
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
  heading.append(title, score);
  const snippet = document.createElement("p");
  snippet.className = "snippet";
  snippet.textContent = hit.snippet;
  item.append(heading, snippet);
  if (hit.shared_tokens && hit.shared_tokens.length) {
    const shared = document.createElement("p");
    shared.className = "shared-list";
    shared.textContent = "shared: " + hit.shared_tokens.map((t) => t.token).join(", ");
    item.appendChild(shared);
  }
  return item;
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const params = new URLSearchParams({ query, k: $("k").value, explain: "true" });
  if ($("method").value) params.set("method", $("method").value);
  setStatus("searching...");
  $("hits").replaceChildren();
  try {
    const answer = await api(`/search?${params}`);
    const queryLens = await api(`/lens?${new URLSearchParams({ text: query, top: TOP })}`);
    setStatus(`${answer.hits.length} hits by ${answer.method}, generation ${answer.generation}`);
    $("legend").hidden = answer.hits.length === 0;
    for (const hit of answer.hits) {
      const item = hitElement(hit);
      $("hits").appendChild(item);
      const documentLens = await api(`/lens?${new URLSearchParams({ doc_id: hit.id, top: TOP })}`);
      item.appendChild(drawLens(queryLens, documentLens));
    }
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  }
}

$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("retriever-api-key", $("api-key").value.trim());
  loadMethods();
});
$("search-form").addEventListener("submit", search);
loadMethods();
