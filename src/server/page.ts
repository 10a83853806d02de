import { createHash } from "node:crypto";

/*
 * The status page: one HTML document with its style and script inline, no external resources, so it
 * works offline and under a Content-Security-Policy that allows exactly these two inline blocks (by
 * hash). The script builds every element with createElement/textContent: no string from the
 * snapshot is ever parsed as HTML.
 *
 * It reads `/api/status` once (with the token from the URL fragment `#token=...`, which browsers never
 * send to the server) and then follows `/api/events`. Both carry what `cascade-sync status --json`
 * prints: `{ running, pid?, config, snapshot }`.
 */

const STYLE = `
:root { color-scheme: light dark; --fg: #1d2228; --muted: #68717c; --bg: #f4f5f7; --card: #fff; --line: #d9dde3;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --busy: #0969da; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8eb; --muted: #9aa3ad; --bg: #15181c; --card: #1e2227; --line: #343a42; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header.top { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; padding: 12px 20px; border-bottom: 1px solid var(--line); background: var(--card); }
header.top h1 { font-size: 18px; margin: 0; }
.muted, .sub, .meta { color: var(--muted); }
.sub { font-size: 12px; display: block; overflow-wrap: anywhere; }
main { padding: 16px 20px; }
#pipeline { display: flex; gap: 8px; align-items: stretch; overflow-x: auto; }
.col { flex: 1 1 0; min-width: 260px; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.col h2 { font-size: 16px; margin: 0; display: inline; }
.col h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 12px 0 4px; }
.arrow { align-self: center; font-size: 20px; color: var(--muted); }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 10px; margin-left: 6px; border: 1px solid currentColor; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); } .busy { color: var(--busy); }
ul { margin: 0; padding-left: 18px; } li { margin: 2px 0; overflow-wrap: anywhere; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.commit code { font-weight: 600; }
.next { margin-top: 12px; padding: 8px; border-radius: 6px; border: 1px solid var(--line); overflow-wrap: anywhere; }
.next.blocked { border-color: var(--warn); }
.cmd { display: flex; gap: 6px; align-items: center; margin-top: 6px; }
.cmd code { flex: 1; padding: 4px 6px; background: var(--bg); border-radius: 4px; overflow-wrap: anywhere; }
button { font: inherit; font-size: 12px; cursor: pointer; }
.error { margin-top: 8px; color: var(--bad); overflow-wrap: anywhere; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
h2.section { font-size: 15px; margin: 20px 0 8px; }
`;

const SCRIPT = `
"use strict";
(function () {
  var current = null;
  var token = readToken();

  function readToken() {
    var fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromHash) {
      sessionStorage.setItem("cascade-sync-token", fromHash);
      history.replaceState(null, "", location.pathname + location.search);
      return fromHash;
    }
    return sessionStorage.getItem("cascade-sync-token");
  }

  function h(tag, props) {
    var el = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      var v = props[k];
      if (v === undefined || v === null || v === false) return;
      if (k === "class") el.className = v; else el.setAttribute(k, String(v));
    });
    var kids = Array.prototype.slice.call(arguments, 2).flat(Infinity);
    kids.forEach(function (c) {
      if (c === undefined || c === null || c === false) return;
      el.append(typeof c === "object" ? c : String(c));
    });
    return el;
  }

  function short(c) { return c ? c.slice(0, 7) : "(none)"; }

  function ago(t) {
    var ms = typeof t === "number" ? t : Date.parse(t);
    if (!isFinite(ms)) return "";
    var s = Math.round((Date.now() - ms) / 1000), future = s < 0, a = Math.abs(s), text;
    if (a < 5) return "just now";
    if (a < 60) text = a + "s"; else if (a < 3600) text = Math.floor(a / 60) + "m";
    else if (a < 86400) text = Math.floor(a / 3600) + "h"; else text = Math.floor(a / 86400) + "d";
    return future ? "in " + text : text + " ago";
  }

  function at(t) {
    var ms = typeof t === "number" ? t : Date.parse(t);
    return isFinite(ms) ? new Date(ms).toLocaleString() + " (" + ago(ms) + ")" : "";
  }

  /** Subject, author and time of a commit, from whatever the snapshot knows about it. */
  function commitInfo(snap, sha) {
    if (!sha) return null;
    if (snap.commits && snap.commits[sha]) return snap.commits[sha];
    var lc = snap.sandbox.lastCommit;
    if (lc && lc.commit === sha) return { subject: lc.message.split("\\n")[0], at: lc.at };
    return null;
  }

  function commitLine(snap, sha, extra) {
    var info = commitInfo(snap, sha);
    var meta = [info && info.author, info && info.at && ago(info.at), extra].filter(Boolean).join(" · ");
    return h("div", { class: "commit", "data-testid": "commit", title: sha || "" },
      h("code", {}, short(sha)), info && info.subject ? [" ", info.subject] : null,
      meta ? h("div", { class: "meta" }, meta) : null);
  }

  function copyButton(text) {
    var b = h("button", { type: "button" }, "copy");
    b.addEventListener("click", function () {
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(function () { b.textContent = "copied"; }, function () {});
    });
    return b;
  }

  function errorBlock(err) {
    if (!err) return null;
    return h("div", { class: "error", "data-testid": "error" }, (err.kind === "Stalled" ? "stalled" : "retrying") + " (" + err.reason + "): " + err.message,
      err.hint ? h("div", { class: "meta" }, "hint: " + err.hint) : null);
  }

  function sandboxColumn(snap) {
    var s = snap.sandbox;
    var rec = (snap.reconcilers || []).filter(function (r) { return r.name === "sandbox"; })[0];
    return h("section", { class: "col", "data-env": s.branch, "data-testid": "column" },
      h("h2", {}, s.branch), h("span", { class: "badge " + (s.pendingPaths ? "busy" : "ok") }, s.pendingPaths ? s.pendingPaths + " pending" : "committed"),
      s.paused ? h("span", { class: "badge warn", "data-testid": "paused" }, "paused") : null,
      h("span", { class: "sub" }, "sandbox " + s.dir),
      h("h3", {}, "commit"), commitLine(snap, s.head),
      s.heldBack && s.heldBack.length ? [h("h3", {}, "held back (never committed)"), h("ul", {}, s.heldBack.map(function (p) { return h("li", {}, p); }))] : null,
      h("h3", {}, "remotes"),
      snap.remotes.length ? h("ul", {}, snap.remotes.map(function (r) {
        return h("li", {}, h("b", {}, r.name), " ", r.lastPush ? "pushed " + short(r.lastPush.commit) + " " + ago(r.lastPush.at) : "never pushed",
          r.relation ? " · " + r.relation : null, r.paused ? h("span", { class: "badge warn", "data-testid": "remote-paused" }, "paused: not pushing") : null, h("span", { class: "sub" }, r.url), errorBlock(r.error));
      })) : h("div", { class: "muted" }, "none (everything stays local)"),
      errorBlock(rec && rec.lastError));
  }

  function envState(e) {
    if (e.error) return e.error.kind === "Stalled" ? ["bad", "stalled"] : ["warn", "retrying"];
    if (e.inProgress) return ["busy", "in progress"];
    if (e.blocked) return ["warn", "blocked"];
    return ["ok", "up to date"];
  }

  function lastMove(snap, e) {
    var moves = (snap.history || []).filter(function (x) {
      return x.environment === e.name && x.commit === e.head && (x.event === "promoted" || x.event === "rolled-back");
    });
    var m = moves[moves.length - 1];
    return m ? m.event + " " + ago(m.at) : null;
  }

  function healthBlock(e) {
    if (!e.health) return [h("h3", {}, "health"), h("div", { class: "muted" }, "no checks")];
    var cls = { healthy: "ok", progressing: "busy", degraded: "warn", failed: "bad" }[e.health.phase] || "";
    return [h("h3", {}, "health"),
      h("div", {}, h("span", { class: "badge " + cls, "data-testid": "health" }, e.health.phase), " ", e.health.description),
      e.health.checks.length ? h("ul", {}, e.health.checks.map(function (c) {
        return h("li", { class: c.ok ? "ok" : c.pending ? "warn" : "bad" }, (c.ok ? "ok " : c.pending ? "WAIT " : "FAIL ") + c.name + ": " + c.message);
      })) : null];
  }

  function gatesBlock(snap, e) {
    var out = [];
    if (e.candidate && e.candidate !== e.head) {
      out.push(h("h3", {}, "candidate from " + e.from), commitLine(snap, e.candidate));
      if (e.target && e.target !== e.candidate) out.push(h("div", { class: "meta" }, "approved target: " + short(e.target)));
    }
    if (e.gates) {
      var cls = { passed: "ok", failed: "bad", running: "busy" }[e.gates.state] || "";
      out.push(h("h3", {}, "gates on " + short(e.gates.commit)), h("span", { class: "badge " + cls }, e.gates.state),
        h("ul", {}, e.gates.gates.map(function (g) {
          var gc = { passed: "ok", failed: "bad", running: "busy" }[g.state] || "muted";
          return h("li", { class: gc }, g.name + ": " + g.state + (g.state === "failed" && g.message ? " (" + g.message + ")" : ""));
        })));
    }
    return out;
  }

  function approvalsBlock(e) {
    var a = e.approvals;
    if (!a) return null;
    return [h("h3", {}, "approvals"),
      h("div", {}, a.valid.length + " valid of " + a.required + " required", h("span", { class: "sub" }, a.signers + " signer(s) from " + a.signersFrom)),
      a.problem ? h("div", { class: "warn" }, a.problem) : null,
      (a.fileProblems || []).map(function (p) { return h("div", { class: "warn" }, p); }),
      a.valid.length || a.rejected.length ? h("ul", {},
        a.valid.map(function (v) { return h("li", { class: "ok" }, "valid: " + v.signer + " for " + short(v.commit) + ", expires " + v.expires); }),
        a.rejected.map(function (r) {
          return h("li", { class: "bad", "data-testid": "rejected" },
            "rejected (line " + r.line + (r.signer ? ", " + r.signer : "") + (r.commit ? ", " + short(r.commit) : "") + "): ",
            h("b", {}, r.reason), ": " + r.message);
        })) : null];
  }

  // Signed freezes (issue 16): who froze the environment, why and until when; rejected entries with why.
  function freezeBlock(e) {
    var f = e.freeze;
    if (!f || (!f.active.length && !f.rejected.length)) return null;
    return [h("h3", {}, "freeze"),
      f.active.map(function (x) {
        return h("div", { class: "warn", "data-testid": "frozen" }, h("span", { class: "badge warn" }, "frozen"), " by " + x.signer + " at " + x.at + ", " + (x.expires ? "until " + x.expires : "until lifted") + ": " + x.reason);
      }),
      f.rejected.length ? h("ul", {}, f.rejected.map(function (r) {
        return h("li", { class: "bad", "data-testid": "freeze-rejected" }, (r.action || "freeze") + " rejected (line " + r.line + (r.signer ? ", " + r.signer : "") + "): ", h("b", {}, r.reason), ": " + r.message);
      })) : null];
  }

  // Sandbox edits of the policy (promotion, from, approvals, windows, gates, rollback) wait until promoted.
  function policyBlock(e) {
    var p = e.pendingPolicy || [];
    if (!p.length) return null;
    return [h("h3", {}, "pending policy change"), h("ul", {}, p.map(function (d) {
      return h("li", { class: "warn", "data-testid": "pending-policy" }, d.message);
    }))];
  }

  // A team on one remote: only the lease holder acts on the environment; the others follow it.
  function leaseBlock(e) {
    var l = e.lease;
    if (!l) return null;
    var who = l.holder ? l.holder.user + "@" + l.holder.host + " (pid " + l.holder.pid + ")" : "nobody";
    var text = l.state === "held" ? "held here by " + who + " until " + l.until
      : l.state === "other" ? "held by " + who + " until " + l.until + "; this controller follows"
      : l.state === "excluded" ? "held by " + who + (l.until ? " until " + l.until : "") + "; this machine (" + l.me + ") is not in runsOn"
      : l.state === "free" ? "free: this controller takes it" : "not read yet" + (l.problem ? ": " + l.problem : "");
    return [h("h3", {}, "lease"), h("div", { "data-testid": "lease" },
      h("span", { class: "badge " + (l.state === "held" ? "ok" : l.state === "unknown" ? "warn" : "") }, l.state), " ", text),
      l.runsOn ? h("div", { class: "meta" }, "runsOn: " + l.runsOn.join(", ")) : null];
  }

  function windowBlock(e) {
    var w = e.window;
    return [h("h3", {}, "window"),
      h("div", {}, h("span", { class: "badge " + (w.open ? "ok" : "warn") }, w.open ? "open" : "closed"), " ", w.reason),
      !w.open && w.nextOpenAt ? h("div", { class: "meta" }, "opens " + at(w.nextOpenAt)) : null,
      w.open && w.closesAt ? h("div", { class: "meta" }, "closes " + at(w.closesAt)) : null];
  }

  function envColumn(snap, e) {
    var st = envState(e);
    return h("section", { class: "col", "data-env": e.name, "data-testid": "column" },
      h("h2", {}, e.name), h("span", { class: "badge " + st[0], "data-testid": "state" }, st[1]),
      h("span", { class: "sub" }, "branch " + e.branch + " · " + e.promotion + " from " + e.from),
      policyBlock(e),
      h("h3", {}, "commit"), commitLine(snap, e.head, lastMove(snap, e)),
      e.deployed && e.deployed !== e.head ? h("div", { class: "meta" }, "live release: " + short(e.deployed)) : null,
      leaseBlock(e), freezeBlock(e), healthBlock(e), gatesBlock(snap, e), approvalsBlock(e), windowBlock(e),
      e.failed.length ? [h("h3", {}, "rolled back (not promoted again automatically)"), h("div", {}, e.failed.map(short).join(", "))] : null,
      h("div", { class: "next" + (e.blocked ? " blocked" : ""), "data-testid": "next" }, h("b", {}, "next: "), e.next,
        e.hint ? h("div", { class: "cmd" }, h("code", { "data-testid": "hint" }, e.hint), copyButton(e.hint)) : null),
      errorBlock(e.error));
  }

  function historyTable(snap) {
    var rows = (snap.history || []).slice().reverse();
    if (!rows.length) return h("div", { class: "muted" }, "nothing yet");
    var cls = { promoted: "ok", deployed: "ok", "rolled-back": "bad", "approval-rejected": "warn", "gate-failed": "bad" };
    return h("table", {}, h("thead", {}, h("tr", {}, ["when", "environment", "event", "commit", "result"].map(function (t) { return h("th", {}, t); }))),
      h("tbody", {}, rows.map(function (x) {
        return h("tr", {}, h("td", { title: x.at }, ago(x.at)), h("td", {}, x.environment), h("td", { class: cls[x.event] || "" }, x.event),
          h("td", {}, h("code", {}, short(x.commit)), x.from ? " (was " + short(x.from) + ")" : null),
          h("td", {}, x.result, x.signers && x.signers.length ? h("span", { class: "sub" }, "signed by " + x.signers.join(", ")) : null));
      })));
  }

  // The sandbox branch's recent commits, read again only when its head moves.
  var historyHead = null;
  function loadSandboxHistory(head) {
    if (head === historyHead) return;
    historyHead = head;
    fetch("/api/history", { headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store" }).then(function (res) {
      return res.ok ? res.json() : null;
    }).then(function (data) {
      if (data) document.getElementById("sandbox-history").replaceChildren(sandboxHistoryTable(data));
    }).catch(function () { historyHead = null; });
  }

  function sandboxHistoryTable(data) {
    if (!data.commits.length) return h("div", { class: "muted" }, "no commits on " + data.branch + " yet");
    var statusWord = { A: "added", M: "modified", D: "deleted", T: "type changed" };
    return h("table", { "data-testid": "sandbox-history" },
      h("thead", {}, h("tr", {}, ["when", "commit", "summary", "paths (restore that version)"].map(function (t) { return h("th", {}, t); }))),
      h("tbody", {}, data.commits.map(function (c) {
        return h("tr", { "data-commit": c.commit },
          h("td", { title: c.time }, c.localTime), h("td", { class: "commit" }, h("code", {}, short(c.commit))), h("td", {}, c.summary),
          h("td", {}, h("ul", {}, c.paths.map(function (p) {
            return h("li", {}, h("code", {}, p.path), " ", h("span", { class: "muted" }, (statusWord[p.status] || p.status) + (p.size !== null && p.status !== "D" ? ", " + p.size + " B" : "")),
              h("div", { class: "cmd" }, h("code", { "data-testid": "restore-command" }, p.restore), copyButton(p.restore)));
          }), c.morePaths ? h("li", { class: "muted" }, "+" + c.morePaths + " more") : null)));
      })));
  }

  function render(report) {
    current = report;
    var snap = report.snapshot;
    document.getElementById("controller").replaceChildren(report.running ? "controller running (pid " + report.pid + ")" : "controller not running");
    document.getElementById("config").replaceChildren(h("span", {},
      h("span", { class: report.config.valid ? "ok" : "bad" }, report.config.valid ? "config valid" : "config INVALID (the last good config stays in force)"),
      // While the config is valid, its problems are warnings (e.g. an unknown key that is ignored).
      report.config.problems.map(function (p) { return h("div", { class: report.config.valid ? "warn" : "bad" }, p); })));
    if (!snap) {
      document.getElementById("pipeline").replaceChildren(h("div", { class: "muted" }, "no status yet"));
      return;
    }
    document.getElementById("updated").replaceChildren("updated " + ago(snap.updatedAt));
    var cols = [sandboxColumn(snap)];
    snap.environments.forEach(function (e) { cols.push(h("div", { class: "arrow", "aria-hidden": "true" }, "\\u2192"), envColumn(snap, e)); });
    document.getElementById("pipeline").replaceChildren.apply(document.getElementById("pipeline"), cols);
    document.getElementById("history").replaceChildren(historyTable(snap));
    loadSandboxHistory(snap.sandbox.head);
  }

  function connection(text, cls) {
    document.getElementById("conn").replaceChildren(h("span", { class: cls }, text));
  }

  var events = null;
  function connect() {
    fetch("/api/status", { headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store" }).then(function (res) {
      if (res.status === 401) {
        connection("this server needs a token: open this page as /#token=YOUR_TOKEN", "bad");
        return;
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      return res.json().then(function (report) {
        render(report);
        events = new EventSource("/api/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
        events.onopen = function () { connection("live", "ok"); };
        events.onmessage = function (ev) { render(JSON.parse(ev.data)); };
        events.onerror = function () {
          connection("reconnecting\\u2026", "warn");
          // A refused stream (e.g. the token changed) is not retried by the browser: start over.
          if (events.readyState === EventSource.CLOSED) { events.close(); setTimeout(connect, 3000); }
        };
      });
    }).catch(function () {
      connection("controller unreachable; retrying\\u2026", "bad");
      setTimeout(connect, 3000);
    });
  }

  // Ages ("3m ago") stay true without new events.
  setInterval(function () { if (current) render(current); }, 10000);
  connect();
})();
`;

const hash = (text: string) => `'sha256-${createHash("sha256").update(text).digest("base64")}'`;

/** The Content-Security-Policy for PAGE_HTML: its own inline style and script (by hash) and same-origin requests, nothing else. */
export const PAGE_CSP = [
  "default-src 'none'",
  `script-src ${hash(SCRIPT)}`,
  `style-src ${hash(STYLE)}`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The status page, complete and self-contained. */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>cascade-sync</title>
<style>${STYLE}</style>
</head>
<body>
<header class="top">
<h1>cascade-sync</h1>
<span id="conn" class="muted">connecting…</span>
<span id="controller" class="muted"></span>
<span id="config"></span>
<span id="updated" class="muted"></span>
</header>
<main>
<div id="pipeline"></div>
<h2 class="section">history</h2>
<div id="history"></div>
<h2 class="section">sandbox history</h2>
<div id="sandbox-history"></div>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
