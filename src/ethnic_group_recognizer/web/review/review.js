"use strict";
// The review page: renders /api/queue, sends one request per decision, re-renders from the reply.
const state = { data: null, current: null, busy: false };
const $ = (selector, root = document) => root.querySelector(selector);
// The session token the server put in this page; every state-changing request must carry it.
const TOKEN = (document.querySelector('meta[name="egr-review-token"]') || {}).content || "";

function message(text) { $("#message").textContent = text || ""; }

async function call(url, body) {
  const response = await fetch(url, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Review-Token": TOKEN },
    body: JSON.stringify(body),
  });
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((payload.error && payload.error.message) || `HTTP ${response.status}`);
  return payload;
}

function visibleCards() { return [...document.querySelectorAll(".card")]; }

function focusCard(card) {
  document.querySelectorAll(".card.current").forEach((c) => c.classList.remove("current"));
  if (!card) { state.current = null; return; }
  card.classList.add("current");
  card.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
  state.current = card.dataset.path;
}

function itemOf(card) { return state.data.items.find((item) => item.path === card.dataset.path); }

function card(item, labels) {
  const el = document.createElement("article");
  el.className = "card" + (item.status === "pending" ? "" : " done");
  el.tabIndex = 0;
  el.dataset.path = item.path;
  el.dataset.status = item.status;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = item.path;
  img.src = `api/image?path=${encodeURIComponent(item.current)}&v=${encodeURIComponent(item.status)}`;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = `<span class="path"></span><span class="score"></span>`;
  $(".path", meta).textContent = item.current;
  $(".score", meta).textContent = item.score.toFixed(2);
  const reasons = document.createElement("ul");
  reasons.className = "reasons";
  for (const reason of item.reasons) {
    const li = document.createElement("li");
    li.textContent = reason;
    reasons.append(li);
  }
  const status = document.createElement("div");
  status.className = `status ${item.status}`;
  status.textContent = item.status === "pending" ? (item.suggestion ? `suggested: ${item.suggestion.replace(":", " → ")}` : "")
    : item.status;
  el.append(img, meta, reasons, status);
  if (item.status === "pending") {
    const actions = document.createElement("div");
    actions.className = "actions";
    const button = (cls, text, title, handler) => {
      const b = document.createElement("button");
      b.type = "button"; b.className = cls; b.textContent = text; b.title = title;
      b.addEventListener("click", (event) => { event.stopPropagation(); focusCard(el); handler(); });
      actions.append(b);
      return b;
    };
    button("keep", "Keep", "keep (k)", () => act(el, "keep"));
    button("remove", "Remove", "remove (x)", () => act(el, "remove"));
    const select = document.createElement("select");
    select.className = "relabel-to";
    select.setAttribute("aria-label", "new label");
    // No label is chosen for the reviewer: the first entry only asks for one.
    const placeholder = new Option("relabel to…", "");
    placeholder.disabled = true;
    select.append(placeholder);
    for (const label of labels) {
      if (label === item.label) continue;
      const option = document.createElement("option");
      option.value = option.textContent = label;
      select.append(option);
    }
    select.value = "";
    select.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); event.stopPropagation(); act(el, "relabel", select.value); }
      if (event.key === "Escape") { event.stopPropagation(); el.focus(); }
    });
    actions.append(select);
    button("relabel", "Relabel", "relabel to the chosen label (r, then Enter)", () => act(el, "relabel", select.value));
    const rest = item.group.filter((member) => member.status === "pending").map((member) => member.path);
    if (rest.length) {
      button("keep-one", `Keep this, remove ${rest.length} other${rest.length > 1 ? "s" : ""}`,
        "keep this copy and remove the rest of its duplicate group (g)", () => act(el, "keep_one"));
    }
    el.append(actions);
  }
  if (item.group.length) {
    const group = document.createElement("div");
    group.className = "group";
    group.textContent = `duplicate group: ${item.group.map((m) => `${m.path} (${m.status})`).join(", ")}`;
    el.append(group);
  }
  el.addEventListener("click", () => focusCard(el));
  return el;
}

function render() {
  const data = state.data;
  $("#dataset").textContent = data.dataset;
  $("#left").textContent = String(data.left);
  $("#total").textContent = String(data.total);
  $("#undo").disabled = data.undoable === 0;
  const filter = $("#class-filter");
  const chosen = filter.value;
  const perClass = new Map();
  for (const item of data.items) {
    if (!perClass.has(item.label)) perClass.set(item.label, []);
    perClass.get(item.label).push(item);
  }
  filter.replaceChildren(new Option("all classes", ""));
  for (const [label, items] of [...perClass.entries()].sort()) {
    const left = items.filter((item) => item.status === "pending").length;
    filter.append(new Option(`${label} (${left} left)`, label));
  }
  filter.value = chosen;
  const showDone = $("#show-done").checked;
  const main = $("#queue");
  main.replaceChildren();
  for (const [label, items] of [...perClass.entries()].sort()) {
    if (chosen && chosen !== label) continue;
    const shown = items.filter((item) => showDone || item.status === "pending")
      .sort((a, b) => b.score - a.score || a.rank - b.rank);
    if (!shown.length) continue;
    const section = document.createElement("section");
    section.dataset.label = label;
    const heading = document.createElement("h2");
    heading.textContent = `${label}: ${items.filter((item) => item.status === "pending").length} left`;
    const grid = document.createElement("div");
    grid.className = "cards";
    for (const item of shown) grid.append(card(item, data.labels));
    section.append(heading, grid);
    main.append(section);
  }
  if (!main.children.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "Nothing left to review here.";
    main.append(p);
  }
  const cards = visibleCards();
  const again = cards.find((c) => c.dataset.path === state.current && c.dataset.status === "pending");
  focusCard(again || cards.find((c) => c.dataset.status === "pending") || cards[0] || null);
}

async function act(el, action, label) {
  if (state.busy) return;
  const item = itemOf(el);
  if (!item || item.status !== "pending") return;
  const body = { action, paths: [item.path] };
  if (action === "relabel") {
    if (!label) { message("choose a label to relabel to first"); return; }
    body.label = label;
  }
  if (action === "keep_one") {
    body.remove_paths = item.group.filter((m) => m.status === "pending").map((m) => m.path);
    if (!body.remove_paths.length) return;
  }
  const cards = visibleCards();
  const next = cards.slice(cards.indexOf(el) + 1).find((c) => c.dataset.status === "pending");
  state.busy = true;
  try {
    state.data = await call("api/action", body);
    state.current = next ? next.dataset.path : null;
    message("");
    render();
  } catch (error) {
    message(error.message);
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    state.data = await call("api/undo", {});
    message("undone");
    render();
  } catch (error) {
    message(error.message);
  } finally {
    state.busy = false;
  }
}

function move(step) {
  const cards = visibleCards();
  if (!cards.length) return;
  const index = cards.findIndex((c) => c.dataset.path === state.current);
  focusCard(cards[Math.min(cards.length - 1, Math.max(0, index + step))]);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
  const el = visibleCards().find((c) => c.dataset.path === state.current);
  const key = event.key;
  if (key === "n" || key === "ArrowDown" || key === "ArrowRight" || key === "j") { move(1); }
  else if (key === "p" || key === "ArrowUp" || key === "ArrowLeft") { move(-1); }
  else if (key === "u") { undo(); }
  else if (!el) { return; }
  else if (key === "k") { act(el, "keep"); }
  else if (key === "x" || key === "Delete" || key === "Backspace") { act(el, "remove"); }
  else if (key === "g") { act(el, "keep_one"); }
  else if (key === "r") { const select = $(".relabel-to", el); if (select) select.focus(); }
  else if (key === "s") {
    const item = itemOf(el);
    if (item && item.suggestion === "remove") act(el, "remove");
    else if (item && item.suggestion && item.suggestion.startsWith("relabel:")) act(el, "relabel", item.suggestion.slice(8));
    else return;
  }
  else { return; }
  event.preventDefault();
});

$("#undo").addEventListener("click", undo);
$("#class-filter").addEventListener("change", render);
$("#show-done").addEventListener("change", render);

call("api/queue").then((data) => { state.data = data; render(); }).catch((error) => message(error.message));
