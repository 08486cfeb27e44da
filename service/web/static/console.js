// The console's few behaviours that need a script: uploads with progress, drag and drop,
// paste and camera, the freeze controls, live charts from the job's event stream, and the
// threshold slider. Everything else is server-rendered HTML swapped by htmx.
"use strict";

const csrf = () => ({
  [document.querySelector('meta[name="csrf-header"]').content]:
    document.querySelector('meta[name="csrf-token"]').content,
});

// -- datasets and batch predictions: upload with progress, drop a zip ------------------------

// The batch form's zip is optional (a stored dataset instead): the service names what is
// missing when neither is given.
function setUpUpload(form) {
  const input = form.querySelector('input[type="file"]');
  const progress = form.querySelector("progress");
  const status = form.querySelector('[aria-live]');
  const send = () => {
    if (input.required && !input.files.length) return;
    const body = new FormData(form);
    const request = new XMLHttpRequest();
    request.open("POST", form.dataset.upload);
    for (const [name, value] of Object.entries(csrf())) request.setRequestHeader(name, value);
    progress.hidden = false;
    progress.value = 0;
    status.textContent = input.files.length ? `Uploading ${input.files[0].name}…` : "Sending…";
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) progress.value = (100 * event.loaded) / event.total;
    };
    request.onload = () => {
      const location = request.getResponseHeader("X-Location");
      if (request.status === 201 && location) {
        status.textContent = form.dataset.done || "Uploaded; checking every image…";
        window.location.assign(location);
      } else if (request.status === 401) {
        window.location.assign(`/login?next=${encodeURIComponent(location || "/console/datasets")}`);
      } else {
        progress.hidden = true;
        showError(status, errorText(request, `Upload failed (${request.status}).`));
      }
    };
    request.onerror = () => {
      progress.hidden = true;
      status.textContent = "The upload could not reach the service.";
    };
    request.send(body);
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  dropInto(form, (files) => { input.files = files; send(); });
}

// -- error answers: shown as text, never as markup ------------------------------------------

// What an error answer says, as plain text. A 422 echoes what was sent (`input`), and a
// message may quote a file name: nothing the server answers becomes markup. A console
// fragment's words are read from an inert document (DOMParser runs no script, loads nothing).
function errorText(request, fallback) {
  const type = request.getResponseHeader("Content-Type") || "";
  const body = request.responseText || "";
  if (type.includes("json")) {
    try {
      const detail = JSON.parse(body).detail;
      if (typeof detail === "string") return detail;
      if (Array.isArray(detail)) {
        return detail.map((error) => {
          const field = (error.loc || []).slice(1).join(".");
          return field ? `${field}: ${error.msg}` : String(error.msg);
        }).join("; ");
      }
    } catch (error) {
      // Not JSON after all: say what failed, not what was answered.
    }
  } else if (type.includes("text/html")) {
    const text = new DOMParser().parseFromString(body, "text/html").body.textContent.trim();
    if (text) return text;
  } else if (type.includes("text/plain") && body.trim()) {
    return body.trim();
  }
  return fallback;
}

function showError(container, text) {
  const message = document.createElement("p");
  message.className = "error";
  message.setAttribute("role", "alert");
  message.textContent = text;
  container.replaceChildren(message);
}

function dropInto(zone, onFiles) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) onFiles(event.dataTransfer.files);
  });
}

// -- try a model: drop, paste, camera, threshold --------------------------------------------

function setUpTry(form) {
  const input = form.querySelector('input[type="file"]');
  const submit = (files) => { input.files = files; htmx.trigger(form, "submit"); };
  dropInto(form, submit);
  document.addEventListener("paste", (event) => {
    const images = [...event.clipboardData.files].filter((file) => file.type.startsWith("image/"));
    if (!images.length) return;
    const files = new DataTransfer();
    images.forEach((file) => files.items.add(file));
    submit(files.files);
  });
  setUpCamera(form, submit);
  const slider = document.getElementById("threshold");
  const shown = document.getElementById("threshold-value");
  const apply = () => {
    shown.value = Number(slider.value).toFixed(2);
    document.querySelectorAll(".bars li").forEach((bar) => {
      bar.hidden = Number(bar.dataset.score) < Number(slider.value);
    });
  };
  slider.addEventListener("input", apply);
  const opacity = document.getElementById("opacity");
  const shade = () => {
    document.getElementById("opacity-value").value = Number(opacity.value).toFixed(2);
    document.getElementById("predictions").style.setProperty("--opacity", opacity.value);
  };
  opacity.addEventListener("input", shade);
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id !== "predictions") return;
    apply();
    shade();
    // Under each heat map, the picture as sent, from the browser's own copy of the file.
    event.target.querySelectorAll(".overlay").forEach((overlay) => {
      const file = input.files[Number(overlay.dataset.index)];
      if (file) overlay.querySelector(".base").src = URL.createObjectURL(file);
    });
  });
}

function setUpCamera(form, submit) {
  const button = document.getElementById("camera");
  const video = document.getElementById("camera-view");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.isSecureContext) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    if (video.srcObject) {  // second click: take the picture
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((blob) => {
        const files = new DataTransfer();
        files.items.add(new File([blob], "camera.jpg", { type: "image/jpeg" }));
        submit(files.files);
      }, "image/jpeg", 0.9);
      return;
    }
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.hidden = false;
    await video.play();
    button.textContent = "Take the picture";
  });
}

// -- new job: presets, layer toggles, head costs, stages --------------------------------------

function setUpJobForm(form) {
  const mode = form.querySelector("#freeze_mode");
  const from = form.querySelector("#trainable_from");
  const summary = form.querySelector("#freeze-summary");
  const changed = () => form.dispatchEvent(new Event("change", { bubbles: true }));
  const describe = () => {
    summary.textContent = {
      backbone: "The whole backbone is frozen: only the head trains (feature extraction).",
      partial: `Backbone layers before ${from.value || "?"} are frozen; the rest train.`,
      none: "Everything trains.",
    }[mode.value];
    form.querySelectorAll("[data-preset]").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.preset === mode.value));
    });
  };
  form.querySelectorAll("[data-preset]").forEach((button) => button.addEventListener("click", () => {
    mode.value = button.dataset.preset;
    if (mode.value === "partial" && !from.value) from.value = "-20";
    describe();
    changed();
  }));
  from.addEventListener("input", () => { if (from.value) mode.value = "partial"; describe(); });
  form.addEventListener("change", (event) => {
    if (!event.target.classList || !event.target.classList.contains("layer-toggle")) return;
    const names = JSON.parse(document.getElementById("backbone-names").textContent);
    const index = names.indexOf(event.target.dataset.name);
    // Checked: train from this layer on. Unchecked: freeze up to and including it.
    const start = event.target.checked ? index : index + 1;
    if (start >= names.length) { mode.value = "backbone"; from.value = ""; }
    else { mode.value = "partial"; from.value = names[start]; }
    describe();
  }, true);
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id !== "layers") return;
    const costs = document.getElementById("head-costs");
    if (!costs) return;
    const figures = JSON.parse(costs.content.textContent || costs.textContent);
    form.querySelectorAll("[data-cost]").forEach((span) => {
      const value = figures[span.dataset.cost];
      span.textContent = value === undefined ? "" : `— ${value.toLocaleString()} weights in the next layer`;
    });
  });
  const backbone = form.querySelector("#backbone");
  backbone.addEventListener("change", () => {
    const size = form.querySelector("#input_size");
    size.min = backbone.selectedOptions[0].dataset.min;
    if (Number(size.value) < Number(size.min)) size.value = size.min;
  });
  setUpStages(form, changed);
  // The versions of the dataset picked came in: the preview and the copies check follow them.
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id === "dataset_version") {
      event.target.dispatchEvent(new Event("change", { bubbles: true }));
    }
  });
  describe();
}

function setUpStages(form, changed) {
  const list = form.querySelector("#stage-list");
  const template = form.querySelector("#stage-template");
  form.querySelector("#add-stage").addEventListener("click", () => {
    list.append(template.content.cloneNode(true));
    changed();
  });
  list.addEventListener("click", (event) => {
    if (!event.target.matches("[data-remove-stage]")) return;
    event.target.closest("li").remove();
    changed();
  });
}

// -- a dataset's image grid: select (click, shift-click), relabel or delete as one edit --------

// The selection is the grid's pressed toggles; an edit posts their ids (`image`) with the
// form's action and label, and the page reloads with the new version. Keys: 1..9 relabel the
// selection to the n-th class, Delete or Backspace remove it (after a confirm), Escape clears.
function setUpImageGrid(form) {
  const grid = document.getElementById("image-grid");
  const errors = document.getElementById("edit-errors");
  const select = form.querySelector("#edit-label");
  const typed = form.querySelector("#edit-new-label");
  let anchor = null;  // the image clicked last: a shift-click selects the range from it
  const picks = () => [...grid.querySelectorAll("button.pick")];
  const chosen = () => picks().filter((pick) => pick.getAttribute("aria-pressed") === "true");
  const press = (pick, on) => pick.setAttribute("aria-pressed", String(on));
  const show = () => {
    const count = chosen().length;
    form.querySelector("#selection-count").value = count ? `${count} selected` : "None selected";
  };
  grid.addEventListener("mousedown", (event) => { if (event.shiftKey) event.preventDefault(); });
  grid.addEventListener("click", (event) => {
    const pick = event.target.closest("button.pick");
    if (!pick) return;
    const all = picks();
    if (event.shiftKey && anchor && all.includes(anchor)) {
      const [from, to] = [all.indexOf(anchor), all.indexOf(pick)].sort((a, b) => a - b);
      all.slice(from, to + 1).forEach((one) => press(one, true));
    } else {
      press(pick, pick.getAttribute("aria-pressed") !== "true");
      anchor = pick;
    }
    show();
  });
  const clear = () => { chosen().forEach((pick) => press(pick, false)); anchor = null; show(); };
  const send = (action) => {
    const images = chosen();
    if (!images.length) {
      showError(errors, "Select images first: click one, shift-click another for a range.");
      return;
    }
    const what = images.length === 1 ? "1 image" : `${images.length} images`;
    if (action === "delete" && !window.confirm(`Delete ${what} from the dataset's next version?`)) return;
    form.querySelectorAll('input[name="image"]').forEach((input) => input.remove());
    for (const pick of images) {
      const input = Object.assign(document.createElement("input"), { type: "hidden", name: "image" });
      input.value = pick.dataset.image;
      form.append(input);
    }
    form.querySelectorAll('input[name="labels"]').forEach((input) => input.remove());
    if (action === "add" || action === "remove") {
      // A multi-label dataset's selection: each image's set as shown, with the label added
      // or taken away (the edit is made against the version shown, so none changed since).
      const name = typed.value.trim() || select.value;
      for (const pick of images) {
        const labels = (pick.dataset.label ? pick.dataset.label.split(";") : []).filter((l) => l !== name);
        if (action === "add") labels.push(name);
        const input = Object.assign(document.createElement("input"), { type: "hidden", name: "labels" });
        input.value = labels.sort().join(";");
        form.append(input);
      }
      action = "labels";
    }
    form.querySelector('input[name="action"]').value = action;
    htmx.trigger(form, "submit");
  };
  form.addEventListener("click", (event) => {
    const button = event.target.closest("[data-edit]");
    if (!button) return;
    if (button.dataset.edit === "clear") clear();
    else send(button.dataset.edit);
  });
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest && event.target.closest("input, select, textarea, [contenteditable]")) return;
    if (event.key === "Escape") { clear(); return; }
    if (!chosen().length) return;
    const digit = /^[1-9]$/.test(event.key) ? Number(event.key) : 0;
    if (digit && digit <= select.options.length) {
      event.preventDefault();
      select.selectedIndex = digit - 1;
      typed.value = "";  // the shortcut names an existing class
      send(form.dataset.multiLabel === "true" ? "add" : "relabel");
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      send("delete");
    }
  });
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id === "image-grid") { anchor = null; show(); }
  });
}

// -- charts: the job's history, live from its event stream -----------------------------------

function makeCharts() {
  const width = () => Math.max(240, Math.min(560, document.querySelector(".charts").clientWidth - 16));
  const stageLines = (rows) => ({
    hooks: {
      draw: [(plot) => {
        const context = plot.ctx;
        rows.forEach((row, index) => {
          if (index === 0 || rows[index - 1].stage === row.stage) return;
          const x = plot.valToPos(row.epoch - 0.5, "x", true);
          context.save();
          context.strokeStyle = "#7a5c00";
          context.setLineDash([4, 4]);
          context.beginPath();
          context.moveTo(x, plot.bbox.top);
          context.lineTo(x, plot.bbox.top + plot.bbox.height);
          context.stroke();
          context.restore();
        });
      }],
    },
  });
  const rows = [];
  const metric = document.querySelector(".charts").dataset.metric;
  const chart = (id, key) => new uPlot({
    width: width(), height: 220,
    scales: { x: { time: false } },
    series: [{ label: "epoch" },
             { label: key, stroke: "#1f5f99", width: 2 },
             { label: `val_${key}`, stroke: "#b34700", width: 2, dash: [6, 3] }],
    plugins: [stageLines(rows)],
  }, [[], [], []], document.getElementById(id));
  const charts = { loss: chart("chart-loss", "loss"), [metric]: chart("chart-metric", metric) };
  window.addEventListener("resize", () => {
    Object.values(charts).forEach((plot) => plot.setSize({ width: width(), height: 220 }));
  });
  return {
    add(row) {
      rows.push(row);
      for (const [key, plot] of Object.entries(charts)) {
        plot.setData([rows.map((r) => r.epoch), rows.map((r) => r[key] ?? null),
                      rows.map((r) => r[`val_${key}`] ?? null)]);
      }
    },
    points: () => rows.length,
    metric,
  };
}

function formatSeconds(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

// One progress event in words, and as the share done: a training job's steps of its epochs;
// an advice job's steps of its feature passes (the backbone's weights, then random ones); a
// batch prediction's images. An export job writes none; should one come, it is shown as
// steps, never as NaN.
function describeProgress(p, kind) {
  if (kind === "predict") return [`image ${p.step}/${p.steps}`, p.steps ? p.step / p.steps : 0];
  if (kind !== "train" && kind !== "advice") {
    return [p.steps ? `step ${p.step}/${p.steps}` : "", p.steps ? p.step / p.steps : 0];
  }
  if (kind === "advice") {
    return [`feature pass ${p.stage}/${p.stages} · step ${p.step}/${p.steps}`,
            (p.stage - 1 + p.step / Math.max(p.steps, 1)) / Math.max(p.stages, 1)];
  }
  return [`stage ${p.stage}/${p.stages} · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.steps}`,
          (p.epoch - 1 + p.step / Math.max(p.steps, 1)) / Math.max(p.epochs, 1)];
}

function followEpochs(stream, section) {
  const charts = makeCharts();
  const epochs = document.querySelector("#epochs tbody");
  const cell = (value) => (typeof value === "number" ? value.toFixed(4) : "—");
  stream.addEventListener("epoch", (event) => {
    const row = JSON.parse(event.data);
    charts.add(row);
    const line = epochs.insertRow();
    const metric = charts.metric;
    [row.epoch, row.stage ?? 1, row.loss, row[metric], row.val_loss, row[`val_${metric}`], row.seconds]
      .forEach((value, index) => { line.insertCell().textContent = index < 2 ? value : cell(value); });
    section.dataset.points = String(charts.points());
  });
}

function followJob(section) {
  const started = section.dataset.started ? Date.parse(section.dataset.started) : Date.now();
  const stream = new EventSource(`/jobs/${section.dataset.job}/events`);
  if (document.getElementById("epochs")) followEpochs(stream, section);  // advice jobs have none
  stream.addEventListener("progress", (event) => {
    const [words, done] = describeProgress(JSON.parse(event.data), section.dataset.kind);
    document.getElementById("job-progress").value = done;
    document.getElementById("job-step").textContent = words;
    const elapsed = (Date.now() - started) / 1000;
    document.getElementById("job-elapsed").textContent = `Elapsed ${formatSeconds(elapsed)}.`;
    document.getElementById("job-eta").textContent =
      done > 0.02 ? `About ${formatSeconds(elapsed / done - elapsed)} left.` : "";
  });
  stream.addEventListener("status", (event) => {
    const s = JSON.parse(event.data);
    const badge = document.getElementById("job-status");
    badge.textContent = s.status;
    badge.className = `status status-${s.status}`;
    if (s.attempts > 1) document.getElementById("job-attempts").textContent = `attempt ${s.attempts}`;
    if (["succeeded", "failed", "cancelled"].includes(s.status)) {
      stream.close();
      const cancel = document.getElementById("job-cancel");
      if (cancel) cancel.remove();
      document.getElementById("job-eta").textContent = "";
      if (s.status === "succeeded") document.getElementById("job-progress").value = 1;
      if (s.error) Object.assign(document.getElementById("job-error"), { hidden: false, textContent: s.error });
      if (s.model_id) {
        const link = document.getElementById("job-model-link");
        link.href = `/console/models/${s.model_id}`;
        link.textContent = s.model_id;
        document.getElementById("job-model").hidden = false;
      }
      for (const id of ["job-advice", "job-results"]) {
        const done = document.getElementById(id);
        if (done && s.status === "succeeded") done.hidden = false;
      }
    }
  });
  window.addEventListener("pagehide", () => stream.close());
}

// -- the Review page: label a model's queue from the keyboard ---------------------------------

// Decisions stay in the page until saved: a label per image (a multi-label model's: a set of
// labels), or "unknown". One POST saves them all as one edit of the dataset (and the marks),
// and the next page of the queue loads.
function setUpReview(section) {
  const classes = JSON.parse(section.dataset.classes);
  const multiLabel = section.dataset.multiLabel === "true";
  const split = (joined) => (joined ? joined.split(";") : []);
  const cards = () => [...section.querySelectorAll(".review-item")];
  const typed = document.getElementById("review-type");
  const decisions = new Map();
  let cursor = 0;
  const show = (card) => {
    const decided = decisions.get(card.dataset.key);
    card.classList.toggle("decided", decided !== undefined);
    card.querySelector(".decision").textContent =
      decided === undefined ? "" : decided.unknown ? "unknown"
        : decided.labels ? `→ ${decided.labels.join(", ") || "no label"}` : `→ ${decided.label}`;
    document.getElementById("review-pending").textContent = decisions.size;
  };
  const focus = (index) => {
    const all = cards();
    if (!all.length) return;
    cursor = Math.max(0, Math.min(index, all.length - 1));
    all.forEach((card, i) => card.classList.toggle("current", i === cursor));
    all[cursor].focus({ preventScroll: false });
  };
  const decide = (decision) => {
    const card = cards()[cursor];
    if (!card) return;
    if (decision === null) decisions.delete(card.dataset.key);
    else decisions.set(card.dataset.key, decision);
    show(card);
    focus(cursor + 1);
  };
  const suggested = (card) =>
    multiLabel ? { labels: split(card.dataset.suggestion) } : { label: card.dataset.suggestion };
  // A multi-label card's set as it stands: decided, else the model's.
  const labelsOf = (card) => decisions.get(card.dataset.key)?.labels ?? split(card.dataset.suggestion);
  const toggle = (name, on) => {
    const card = cards()[cursor];
    if (!card) return;
    const labels = labelsOf(card).filter((label) => label !== name);
    if (on ?? !labelsOf(card).includes(name)) labels.push(name);
    decisions.set(card.dataset.key, { labels: labels.sort() });
    show(card);
  };
  const acceptAll = () => {
    for (const card of section.querySelectorAll("#review-grid .review-item")) {
      if (!decisions.has(card.dataset.key)) decisions.set(card.dataset.key, suggested(card));
      show(card);
    }
  };
  const save = () => {
    const body = new FormData();
    for (const [key, decision] of decisions) {
      if (decision.unknown) body.append("unknown", key);
      else { body.append("item", key); body.append("label", decision.labels ? decision.labels.join(";") : decision.label); }
    }
    const errors = document.getElementById("review-errors");
    fetch(section.dataset.save, { method: "POST", body, headers: csrf() }).then(async (answer) => {
      const next = answer.headers.get("HX-Redirect");
      if (answer.status === 204 && next) { window.location.assign(next); return; }
      const text = new DOMParser().parseFromString(await answer.text(), "text/html").body.textContent.trim();
      showError(errors, text || `Saving failed (${answer.status}).`);
    }, () => showError(errors, "The labels could not reach the service."));
  };
  section.addEventListener("click", (event) => {
    const card = event.target.closest(".review-item");
    if (card) focus(cards().indexOf(card));
  });
  typed.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && typed.value.trim()) {
      event.preventDefault();
      if (multiLabel) { toggle(typed.value.trim(), true); focus(cursor); } else decide({ label: typed.value.trim() });
      typed.value = "";
    } else if (event.key === "Escape") {
      typed.value = "";
      focus(cursor);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    const digit = Number.parseInt(event.key, 10);
    const card = cards()[cursor];
    if (digit >= 1 && digit <= Math.min(9, classes.length)) {
      if (multiLabel) toggle(classes[digit - 1]); else decide({ label: classes[digit - 1] });
    } else if (multiLabel && digit === 0) decide({ labels: [] });
    else if (multiLabel && event.key === "Enter" && card) decide({ labels: labelsOf(card) });
    else if (event.key === "s") decide(null);
    else if (event.key === "u") decide({ unknown: true });
    else if (event.key === "a") acceptAll();
    else if (event.key === "w") save();
    else if (event.key === "ArrowRight") focus(cursor + 1);
    else if (event.key === "ArrowLeft") focus(cursor - 1);
    else if (event.key === "/") typed.focus();
    else return;
    event.preventDefault();
  });
  document.getElementById("review-accept").addEventListener("click", acceptAll);
  document.getElementById("review-save").addEventListener("click", save);
  document.getElementById("review-accept-save").addEventListener("click", () => { acceptAll(); save(); });
  focus(0);
}

function showHistory(script) {
  const charts = makeCharts();
  JSON.parse(script.textContent).forEach((row) => charts.add(row));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["upload", "batch-form"]) {
    const form = document.getElementById(id);
    if (form) setUpUpload(form);
  }
  const tryForm = document.getElementById("try");
  if (tryForm) setUpTry(tryForm);
  const jobForm = document.getElementById("job-form");
  if (jobForm) setUpJobForm(jobForm);
  const editForm = document.getElementById("edit-form");
  if (editForm) setUpImageGrid(editForm);
  const live = document.getElementById("live");
  if (live) followJob(live);
  const review = document.getElementById("review");
  if (review) setUpReview(review);
  const history = document.getElementById("history-data");
  if (history) showHistory(history);
  // Fragments answered with an error status still carry a message for the person (501: what
  // this installation cannot do, such as ONNX export, and which versions it needs). Only the
  // console's own HTML fragments (rendered escaped) are swapped in as markup; any other
  // answer (FastAPI's JSON 422 echoing the input, a proxy's page) is shown as its text.
  document.body.addEventListener("htmx:beforeSwap", (event) => {
    const xhr = event.detail.xhr;
    const status = xhr.status;
    if (!((status >= 400 && status < 500) || status === 501)) return;
    event.detail.isError = false;
    if ((xhr.getResponseHeader("Content-Type") || "").includes("text/html")) {
      event.detail.shouldSwap = true;
    } else {
      event.detail.shouldSwap = false;
      showError(event.detail.target, errorText(xhr, `The request failed (${status}).`));
    }
  });
});
