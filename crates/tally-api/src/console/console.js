// tally operator console. No framework, no network but this API. Every value is written as
// text (textContent), never as markup: dead letters and account ids come from outside.
"use strict";

const KEY = "tally.consoleKey";
const $ = (id) => document.getElementById(id);

function key() { return sessionStorage.getItem(KEY) || ""; }

function status(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "bad" : "";
}

// Calls the API with the key as a bearer token; resolves to the parsed JSON body, rejects
// with the API's error message.
async function call(method, path) {
  const headers = { Accept: "application/json" };
  if (key()) headers.Authorization = "Bearer " + key();
  const res = await fetch(path, { method, headers, cache: "no-store" });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const e = body && body.error;
    throw new Error(res.status + " " + (e ? e.code + ": " + e.message : res.statusText));
  }
  return body;
}

const text = (v) => (v === null || v === undefined ? "" : String(v));
const time = (v) => (v ? new Date(v).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "");
const ms = (v) => (v === null || v === undefined ? "" : Math.round(v).toString());

// Replaces a table's body with one row per item; each cell is text, or a node.
function rows(table, items, cells, attrs) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    if (attrs) for (const [k, v] of Object.entries(attrs(item))) tr.setAttribute(k, v);
    for (const [value, cls] of cells(item)) {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value); else td.textContent = text(value);
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

async function shards() {
  const s = await call("GET", "/debug/shards");
  $("window").textContent = s.windowSecs;
  rows("shards", s.shards, (r) => [
    [r.shard, "num"], [r.owner], [r.epoch, "num"],
    [r.live ? "live" : "free", r.live ? "good" : "bad"],
    [r.queueDepth === null ? "?" : r.queueDepth, "num"],
    [r.decided, "num"], [ms(r.lagMaxMs), "num"], [time(r.lastAppliedAt)],
  ], (r) => ({ "data-shard": r.shard }));
}

// A line chart of `values` (nulls are gaps drawn as 0) in an SVG with a 300×90 viewBox.
function chart(svg, values, label) {
  const NS = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...values.map((v) => v || 0));
  const x = (i) => 24 + (i * 272) / Math.max(1, values.length - 1);
  const y = (v) => 84 - ((v || 0) * 76) / max;
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", values.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" "));
  const top = document.createElementNS(NS, "text");
  top.setAttribute("x", 2); top.setAttribute("y", 18); top.textContent = label(max);
  const label_ = (x, y, s, anchor) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s;
    if (anchor) t.setAttribute("text-anchor", anchor);
    return t;
  };
  $(svg).replaceChildren(line, top, label_(2, 86, "0"), label_(24, 8, "-10 min"), label_(298, 8, "now", "end"));
}

async function throughput() {
  const t = await call("GET", "/debug/throughput?minutes=10");
  // The last bucket is still filling: its rate is over the time it has covered so far.
  const now = Date.now();
  const rate = t.buckets.map((b) => {
    const secs = Math.min(t.bucketSecs, Math.max(1, (now - Date.parse(b.at)) / 1000));
    return b.decided / secs;
  });
  const lag = t.buckets.map((b) => b.lagMaxMs);
  chart("chart-rate", rate, (m) => m.toFixed(1));
  chart("chart-lag", lag, (m) => Math.round(m).toString());
  $("rate-now").textContent = rate.length ? rate[rate.length - 1].toFixed(1) : "–";
  $("lag-now").textContent = lag.length ? ms(lag[lag.length - 1]) || "–" : "–";
}

// Every page of a keyset-paged dump (at most `max` rows).
async function all(path, cursor, max) {
  const out = [];
  let after = null;
  while (out.length < max) {
    const page = await call("GET", path + "?limit=1000" + (after === null ? "" : "&after=" + encodeURIComponent(after)));
    out.push(...page);
    if (page.length < 1000) break;
    after = cursor(page[page.length - 1]);
  }
  return out;
}

async function republish(id, button) {
  button.disabled = true;
  try {
    await call("POST", "/debug/dead-letters/" + encodeURIComponent(id) + "/republish");
    status("Dead letter " + id + " re-published.");
  } catch (e) {
    status("Re-publish of " + id + " failed: " + e.message, true);
  }
  await deadLetters().catch((e) => status(e.message, true));
}

async function deadLetters() {
  const letters = await all("/debug/dead-letters", (d) => d.id, 10000);
  const pending = letters.filter((d) => !d.republishedAt).length;
  $("dead-count").textContent = pending + " pending";
  rows("dead-letters", letters, (d) => {
    let done = time(d.republishedAt);
    if (!d.republishedAt) {
      done = document.createElement("button");
      done.textContent = "Re-publish";
      done.dataset.republish = d.id;
      done.addEventListener("click", () => republish(d.id, done));
    }
    return [[d.id.slice(0, 12) + "…"], [d.messageId], [d.queue], [d.reason], [d.detail, "detail"], [time(d.deadAt)], [done]];
  }, (d) => ({ "data-id": d.id }));
}

async function conservation() {
  const c = await call("GET", "/debug/conservation");
  $("conservation-verdict").textContent = c.pass ? "pass" : "FAIL";
  $("conservation-verdict").className = "badge " + (c.pass ? "good" : "bad");
  $("conservation").replaceChildren(...c.checks.map((check) => {
    const li = document.createElement("li");
    li.textContent = (check.pass ? "✓ " : "✗ ") + check.name +
      (check.pass ? "" : ": " + JSON.stringify(check.offending.slice(0, 5)));
    li.className = check.pass ? "" : "bad";
    return li;
  }));
}

async function webhooks() {
  const deliveries = await all("/debug/webhooks", (d) => d.id, 10000);
  const failing = deliveries.filter((d) => d.status === "failed" || (d.status === "pending" && d.attempts > 0));
  rows("webhooks", failing.slice(-50).reverse(), (d) => [
    [d.id, "num"], [d.accountId], [d.status, d.status === "failed" ? "bad" : ""], [d.attempts, "num"],
    [d.lastStatus], [d.lastError], [time(d.dueAt)],
  ]);
}

async function account(id) {
  const path = encodeURIComponent(id);
  const [a, holds, history] = await Promise.all([
    call("GET", "/account/" + path),
    call("GET", "/debug/accounts/" + path + "/holds"),
    call("GET", "/account/" + path + "/transactions?limit=20"),
  ]);
  $("account").replaceChildren(...["accountId", "balance", "available", "held"].flatMap((k) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = text(a[k]); dd.id = "account-" + k;
    return [dt, dd];
  }));
  rows("holds", holds, (h) => [[h.requestId], [h.amount, "num"], [h.status], [time(h.createdAt)], [time(h.expiresAt)], [h.capturedBy]]);
  rows("history", history.items, (t) => [
    [t.seq, "num"], [t.id], [t.type], [t.amount, "num"], [t.status], [t.reason], [t.balanceAfter, "num"], [time(t.appliedAt)],
  ]);
}

// Loads every panel; each failure is reported without stopping the others.
async function refresh() {
  const results = await Promise.allSettled([shards(), throughput(), deadLetters(), conservation(), webhooks()]);
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length) status(failed[0].reason.message, true);
  else status("Updated " + new Date().toLocaleTimeString() + ".");
  document.body.dataset.loaded = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = key();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    refresh();
  });
  $("refresh").addEventListener("click", refresh);
  $("account-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("account-id").value.trim();
    if (id) account(id).then(() => status("Account " + id + " loaded."), (err) => status(err.message, true));
  });
  refresh();
  setInterval(refresh, 5000);
});
