// The task page follows its log live over the API's event stream (the session cookie is the
// credential: EventSource cannot send a header). Text only ever goes in as textContent.
"use strict";

(function () {
  const log = document.getElementById("log");
  if (!log || log.dataset.follow !== "true") {
    return;
  }
  const state = document.getElementById("log-state");

  function text(tag, className, value) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    node.textContent = value;
    return node;
  }

  function fieldWords(fields) {
    return Object.entries(fields || {})
      .map(([key, value]) => key + "=" + (typeof value === "string" ? value : JSON.stringify(value)))
      .join(" ");
  }

  function setBadge(node, status) {
    node.className = "badge state-" + status;
    node.textContent = status;
  }

  function took(start, stop) {
    if (!start || !stop) {
      return "-";
    }
    const seconds = Math.max(Math.floor((Date.parse(stop) - Date.parse(start)) / 1000), 0);
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    if (hours) {
      return hours + "h " + minutes + "m";
    }
    return minutes ? minutes + "m " + (seconds % 60) + "s" : seconds + "s";
  }

  function append(entry) {
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    const line = document.createElement("li");
    line.className = "entry live level-" + entry.level;
    line.dataset.id = String(entry.entry_id);
    line.append(text("time", "", String(entry.timestamp).slice(11, 19)), " ");
    line.append(text("span", "level", entry.level), " ");
    line.append(text("span", "message", entry.message));
    const words = fieldWords(entry.fields);
    if (words) {
      line.append(" ", text("span", "fields", words));
    }
    log.append(line);
    if (atBottom) {
      line.scrollIntoView({block: "end"});
    }
  }

  // The task as it ended: its status, steps and error, read from the API like the log.
  async function refresh(status) {
    setBadge(document.getElementById("task-status"), status);
    document.getElementById("task-status").dataset.status = status;
    const answer = await fetch(log.dataset.task, {headers: {Accept: "application/json"}});
    if (!answer.ok) {
      return;
    }
    const task = await answer.json();
    document.getElementById("task-error").textContent = task.error || "";
    for (const step of task.steps) {
      const row = document.querySelector('tr[data-step="' + CSS.escape(step.name) + '"]');
      if (row) {
        setBadge(row.querySelector(".step-status .badge"), step.status);
        row.querySelector(".step-took").textContent = took(step.started_at, step.completed_at);
      }
    }
  }

  const source = new EventSource(log.dataset.stream + "?after_entry_id=" + log.dataset.after);
  source.addEventListener("entry", (event) => append(JSON.parse(event.data)));
  source.addEventListener("end", (event) => {
    source.close();
    const end = JSON.parse(event.data);
    state.textContent = "complete";
    refresh(end.task_status);
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself, resuming after the last entry it saw.
    state.textContent = "reconnecting";
  });
  source.addEventListener("open", () => {
    state.textContent = "following";
  });
})();
