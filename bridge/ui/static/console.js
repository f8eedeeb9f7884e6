// flashduty-bridge console: refresh without a full reload, confirm destructive buttons, the playground.
// No dependencies, no build step. The CSRF token comes from <meta name="csrf-token">; the session
// cookie is HttpOnly and never touched here.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const status = (text) => {
    const el = document.getElementById("refresh-status");
    if (el) el.textContent = text;
  };

  // -- refresh: pages with <main data-refresh="N"> fetch their own <main> every N seconds ----------------
  const main = document.getElementById("main");
  const every = main && Number(main.dataset.refresh || 0);
  const busy = () => {
    // Never pull the page from under someone: focus, a selection, or a ticked box inside <main> waits.
    const active = document.activeElement;
    if (active && active !== main && main.contains(active)) return true;
    if (String(window.getSelection() || "").length > 0) return true;
    return main.querySelector("input[type=checkbox]:checked") !== null;
  };
  const refresh = async () => {
    if (document.visibilityState !== "visible" || busy()) return;
    try {
      const response = await fetch(location.href, {
        headers: { "X-Console-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.status === 401) {
        location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      if (!response.ok) {
        status("Refresh failed: HTTP " + response.status);
        return;
      }
      const html = await response.text();
      if (busy()) return;
      main.innerHTML = html;
      wire(main);
      status("Updated " + new Date().toLocaleTimeString());
    } catch (error) {
      status("Refresh failed: " + error.message);
    }
  };
  if (every > 0) setInterval(refresh, every * 1000);

  // -- destructive buttons ask first ------------------------------------------------------------------
  function wire(root) {
    root.querySelectorAll("[data-confirm]").forEach((button) => {
      button.addEventListener("click", (event) => {
        if (!window.confirm(button.dataset.confirm)) event.preventDefault();
      });
    });
  }
  wire(document);

  // -- playground ---------------------------------------------------------------------------------------
  const form = document.getElementById("playground");
  if (!form) return;
  const textarea = document.getElementById("pg-payload");
  const error = document.getElementById("pg-error");
  const result = document.getElementById("pg-result");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const source = document.getElementById("pg-source").value;
    error.hidden = true;
    textarea.removeAttribute("aria-invalid");
    result.replaceChildren();
    let response, answer;
    try {
      response = await fetch("/-/render/" + encodeURIComponent(source), {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        credentials: "same-origin",
        body: textarea.value,
      });
      answer = await response.json();
    } catch (failure) {
      showError("The bridge did not answer: " + failure.message);
      return;
    }
    if (answer.error) {
      showError(answer.error.message, true);
      return;
    }
    show(answer.data);
  });

  function showError(message, point) {
    error.textContent = message;
    error.hidden = false;
    textarea.setAttribute("aria-invalid", "true");
    if (point) pointAt(message);
  }

  // Select the failing field in the payload: "line L column C", or a path such as alerts[0].labels.severity.
  function pointAt(message) {
    const text = textarea.value;
    const at = /line (\d+) column (\d+)/.exec(message);
    if (at) {
      const lines = text.split("\n").slice(0, Number(at[1]) - 1);
      const offset = lines.reduce((sum, line) => sum + line.length + 1, 0) + Number(at[2]) - 1;
      select(offset, Math.min(text.length, offset + 1));
      return;
    }
    const path = /^([A-Za-z_$][\w$-]*(?:\[\d+\]|\.[\w$-]+)*):/.exec(message);
    if (!path) return;
    let spans;
    try {
      spans = locate(text);
    } catch (_) {
      return;
    }
    const parts = path[1].match(/[^.[\]]+/g);
    for (let n = parts.length; n > 0; n--) {
      const span = spans.get(parts.slice(0, n).join("/"));
      if (span) {
        select(span[0], span[1]);
        return;
      }
    }
  }

  function select(start, end) {
    textarea.focus();
    textarea.setSelectionRange(start, end);
    error.textContent += " (selected in the payload)";
  }

  // Where each value of a JSON text is: path ("alerts/0/labels") -> [start, end). A key's span covers
  // the key and its value, so a missing field can point at its parent.
  function locate(text) {
    const spans = new Map();
    let i = 0;
    const ws = () => { while (/\s/.test(text[i] || "")) i++; };
    const string = () => {
      const start = i++;
      while (text[i] !== '"') { if (text[i] === "\\") i++; i++; if (i > text.length) throw 0; }
      i++;
      return JSON.parse(text.slice(start, i));
    };
    const value = (path, from) => {
      ws();
      const start = from === undefined ? i : from;
      const c = text[i];
      if (c === "{") {
        i++; ws();
        if (text[i] === "}") i++;
        else for (;;) {
          ws(); const keyStart = i; const key = string(); ws(); i++;
          value(path.concat(key), keyStart); ws();
          if (text[i++] === "}") break;
        }
      } else if (c === "[") {
        i++; ws();
        if (text[i] === "]") i++;
        else for (let n = 0; ; n++) {
          value(path.concat(String(n))); ws();
          if (text[i++] === "]") break;
        }
      } else if (c === '"') string();
      else { while (i < text.length && !/[,\]}\s]/.test(text[i])) i++; }
      spans.set(path.join("/"), [start, i]);
    };
    value([]);
    return spans;
  }

  function show(data) {
    const events = data.events || [];
    const heading = document.createElement("h2");
    heading.textContent = events.length === 1 ? "1 event" : events.length + " events";
    result.append(heading);
    if (data.not_forwarded) {
      const p = document.createElement("p");
      p.textContent = "Not forwarded: " + data.not_forwarded;
      result.append(p);
    }
    events.forEach((item) => {
      const figure = document.createElement("figure");
      figure.className = "rendered";
      const caption = document.createElement("figcaption");
      caption.textContent = "to " + item.destination + ": " + (item.event.event_status || "") + " " + (item.event.title_rule || "");
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(item.event, null, 2);
      figure.append(caption, pre);
      result.append(figure);
    });
    (data.unrouted || []).forEach((item) => {
      const p = document.createElement("p");
      p.textContent = "Sent nowhere (" + item.reason + "): " + JSON.stringify(item.labels);
      result.append(p);
    });
    if (data.notes) {
      const pre = document.createElement("pre");
      pre.textContent = "Notes: " + JSON.stringify(data.notes, null, 2);
      result.append(pre);
    }
  }
})();
