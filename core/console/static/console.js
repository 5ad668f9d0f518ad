// TokenToll console: copy buttons, forms that reveal a new key once (without reloading the page), client-side
// table sorting and search, snippet tabs, and live recharge-order status. No framework, no build step.
"use strict";

function copyText(id, button) {
  const el = document.getElementById(id);
  if (!el) return;
  const text = el.value !== undefined && el.tagName === "INPUT" ? el.value : el.textContent;
  const done = () => { const old = button.textContent; button.textContent = "Copied"; setTimeout(() => { button.textContent = old; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => { selectText(el); });
  } else {
    selectText(el);
    try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected for Ctrl+C */ }
  }
}

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (button) copyText(button.dataset.copy, button);
});

// Forms marked data-reveal (create key, rotate key) are sent with fetch; the new secret is put on the page
// once. Reloading the page shows it no more: it was never stored.
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.hasAttribute("data-reveal")) return;
  event.preventDefault();
  if (form.dataset.busy) return;  // a second click while the first is on its way would make a second key
  form.dataset.busy = "1";
  try { await sendRevealing(form); } finally { delete form.dataset.busy; }
});

async function sendRevealing(form) {
  const body = new URLSearchParams(new FormData(form));
  let reply;
  try {
    reply = await fetch(form.action, { method: "POST", body, headers: { "Accept": "application/json" }, credentials: "same-origin" });
  } catch (e) {
    form.submit();
    return;
  }
  const data = reply.status === 401 || reply.redirected
    ? { error: "Your session has ended. Log in again." }
    : await reply.json().catch(() => ({ error: "The console answered " + reply.status + "." }));
  if (!reply.ok || data.error) {
    alertBox(data.error || ("The console answered " + reply.status + "."));
    return;
  }
  document.getElementById("revealed-key").textContent = data.key;
  document.getElementById("reveal-name").textContent = data.name;
  const box = document.getElementById("reveal");
  box.hidden = false;
  box.scrollIntoView({ block: "center" });
  await refreshKeyTable();
}

// Any other form: its buttons are disabled once it is sent, so a double click does not send it twice.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.hasAttribute("data-reveal") || event.defaultPrevented) return;
  setTimeout(() => form.querySelectorAll("button[type=submit], button:not([type])").forEach((b) => { b.disabled = true; }), 0);
});

function alertBox(message) {
  let box = document.getElementById("form-problem");
  if (!box) {
    box = document.createElement("p");
    box.id = "form-problem";
    box.className = "error";
    box.setAttribute("role", "alert");
    document.querySelector("main h1").after(box);
  }
  box.textContent = message;
}

async function refreshKeyTable() {
  // The table (ids, displays, statuses) without the secret: the page as a GET sees it.
  const page = await fetch(location.pathname, { credentials: "same-origin" }).then((r) => r.text());
  const fresh = new DOMParser().parseFromString(page, "text/html");
  for (const id of ["keys", "new-key"]) {
    const now = document.getElementById(id), next = fresh.getElementById(id);
    if (next && now) now.replaceWith(next);
    else if (next && !now) document.querySelector("main").append(next);
  }
  const problem = document.getElementById("form-problem");
  if (problem) problem.remove();
}

// Tables marked data-sortable sort by a clicked header; an input with data-filter-table filters their rows.
document.addEventListener("click", (event) => {
  const th = event.target.closest("table[data-sortable] th");
  if (!th) return;
  const table = th.closest("table"), index = [...th.parentNode.children].indexOf(th);
  const asc = !th.classList.contains("sorted-asc");
  table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(asc ? "sorted-asc" : "sorted-desc");
  const rows = [...table.tBodies[0].rows];
  const key = (row) => {
    const cell = row.cells[index];
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const n = parseFloat(raw.replace(/[$,]/g, ""));
    return raw !== "" && !isNaN(n) && /^[$\d.,-]+$/.test(raw) ? n : raw.toLowerCase();
  };
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === "number" && typeof y === "number") return asc ? x - y : y - x;
    if (typeof x === "number") return asc ? -1 : 1;
    if (typeof y === "number") return asc ? 1 : -1;
    return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
  });
  rows.forEach((row) => table.tBodies[0].append(row));
});

document.addEventListener("input", (event) => {
  const input = event.target.closest("input[data-filter-table]");
  if (!input) return;
  const table = document.getElementById(input.dataset.filterTable), needle = input.value.trim().toLowerCase();
  for (const row of table.tBodies[0].rows) row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
});

// Snippet tabs: buttons with data-tab show the panel with that id among their siblings' panels.
document.addEventListener("click", (event) => {
  const tab = event.target.closest("button[data-tab]");
  if (!tab) return;
  const group = tab.closest("[data-tabs]");
  group.querySelectorAll("button[data-tab]").forEach((b) => {
    const on = b === tab;
    b.setAttribute("aria-selected", on ? "true" : "false");
    document.getElementById(b.dataset.tab).hidden = !on;
  });
});

// A recharge order's page follows its status (pending, confirming k/N, credited, expired) and its time left.
function followOrder() {
  const box = document.querySelector("[data-order-status-url]");
  if (!box) return;
  const status = document.getElementById("order-status"), left = document.getElementById("order-time-left");
  let deadline = Date.now() + 1000 * Number(box.dataset.expiresIn || 0);
  const tick = () => {
    if (!left) return;
    const s = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    left.textContent = s > 0 ? Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0") : "—";
  };
  const poll = async () => {
    try {
      const reply = await fetch(box.dataset.orderStatusUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (reply.redirected || !(reply.headers.get("content-type") || "").startsWith("application/json")) {
        status.textContent = "unknown: log in again to follow this order";
        return;  // the session ended: stop asking
      }
      const order = await reply.json();
      status.textContent = order.status_text;
      status.dataset.status = order.status;
      deadline = Date.now() + 1000 * order.expires_in;
      if (order.status === "credited" || order.status === "expired") return;
    } catch (e) { /* try again at the next tick */ }
    setTimeout(poll, Number(box.dataset.pollMs || 3000));
  };
  tick();
  setInterval(tick, 1000);
  setTimeout(poll, Number(box.dataset.pollMs || 3000));
}
document.addEventListener("DOMContentLoaded", followOrder);
