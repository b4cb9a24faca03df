// skinweb's page behaviour. A static file (the Content Security Policy allows no inline script);
// listeners are delegated from the document, so parts swapped in by htmx work without rebinding.
"use strict";

// Heat map overlay on the case page: a switch shows it, a slider sets its opacity.
document.addEventListener("change", (event) => {
  const toggle = event.target.closest("[data-heatmap-toggle]");
  if (!toggle) return;
  const viewer = toggle.closest("#case-viewer");
  viewer.querySelector("[data-heatmap]").hidden = !toggle.checked;
  viewer.querySelector("[data-heatmap-opacity]").disabled = !toggle.checked;
});

document.addEventListener("input", (event) => {
  const slider = event.target.closest("[data-heatmap-opacity]");
  if (!slider) return;
  slider.closest("#case-viewer").querySelector("[data-heatmap]").style.opacity = String(slider.value / 100);
  slider.setAttribute("aria-valuetext", `${slider.value}%`);
});

// Uploader on the lesion page: choose or drop several images, see a preview and a progress bar per
// file, and each file's result (or the reason it was refused) beside it, without leaving the page.
// Without JavaScript the form posts as a plain multipart form.
// Its words come from the form's data-msg-* attributes, in the page's language ({value}: the value put in).
const ACCEPTED_TYPES = ["image/jpeg", "image/png"];

function say(form, key, value) {
  return (form.dataset[key] || "").replace("{value}", value === undefined ? "" : value);
}

function uploadItem(form, list, file) {
  const item = document.createElement("li");
  item.className = "d-flex align-items-center gap-2 py-1 border-bottom";
  const preview = document.createElement("img");
  preview.alt = "";
  preview.className = "rounded";
  const body = document.createElement("div");
  body.className = "flex-grow-1";
  const name = document.createElement("div");
  name.className = "small text-break";
  name.textContent = file.name;
  const progress = document.createElement("progress");
  progress.className = "w-100";
  progress.max = 100;
  progress.value = 0;
  progress.setAttribute("aria-label", say(form, "msgProgress", file.name));
  const status = document.createElement("div");
  status.className = "small";
  status.setAttribute("role", "status");
  body.append(name, progress, status);
  item.append(preview, body);
  list.append(item);
  if (ACCEPTED_TYPES.includes(file.type)) {
    const reader = new FileReader();
    reader.onload = () => { preview.src = reader.result; };
    reader.readAsDataURL(file);
  }
  return { item, progress, status };
}

function uploadOne(form, file, row) {
  return new Promise((resolve) => {
    const data = new FormData();
    data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    data.append("images", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) row.progress.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", () => {
      let answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch (err) { answer = null; }
      const result = answer && answer.files ? answer.files[0] : null;
      if (result && result.ok) {
        row.progress.value = 100;
        row.status.textContent = "";
        const link = document.createElement("a");
        link.href = result.url;
        link.textContent = say(form, "msgCase", result.case);
        const live = document.createElement("span");
        live.setAttribute("hx-get", result.status_url);
        live.setAttribute("hx-trigger", "load");
        live.setAttribute("hx-swap", "outerHTML");
        live.textContent = ` ${say(form, "msgQueued")}`;
        row.status.append(link, " ", live);
        if (window.htmx) window.htmx.process(live);
        // The lesion's timeline (if on the page) fetches itself again: the new image appears at once.
        document.body.dispatchEvent(new CustomEvent("skinweb:uploaded"));
        resolve(true);
      } else {
        const reason = result ? result.error : (answer && answer.errors ? answer.errors.join(" ") : say(form, "msgServer", xhr.status));
        row.status.textContent = say(form, "msgRefused", reason);
        row.status.classList.add("text-danger");
        row.progress.remove();  // a full bar beside a refusal reads as a success
        resolve(false);
      }
    });
    xhr.addEventListener("error", () => {
      row.progress.remove();
      row.status.textContent = say(form, "msgOffline");
      row.status.classList.add("text-danger");
      resolve(false);
    });
    xhr.send(data);
  });
}

function setUpUploader(form) {
  const input = form.querySelector("input[type=file]");
  const zone = form.querySelector("[data-drop-zone]");
  const list = form.querySelector("[data-upload-list]");
  let files = [];
  form.querySelector("[data-drop-hint]").hidden = false;

  const choose = (chosen) => {
    files = Array.from(chosen);
    list.replaceChildren();
    files.rows = files.map((file) => {
      const row = uploadItem(form, list, file);
      if (!ACCEPTED_TYPES.includes(file.type)) {
        row.status.textContent = say(form, "msgType");
        row.status.classList.add("text-warning-emphasis");
      }
      return row;
    });
  };
  input.addEventListener("change", () => choose(input.files));
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
    e.preventDefault();
    zone.classList.add("drag-over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("drag-over")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      choose(e.dataTransfer.files);
    }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!files.length) {
      input.focus();
      input.reportValidity();
      return;
    }
    const button = form.querySelector("[type=submit]");
    button.disabled = true;
    const rows = files.rows;
    // Three at a time: quick on a clinic's connection, gentle on the server.
    const queue = files.map((file, i) => [file, rows[i]]);
    const workers = Array.from({ length: Math.min(3, queue.length) }, async () => {
      while (queue.length) {
        const [file, row] = queue.shift();
        await uploadOne(form, file, row);
      }
    });
    await Promise.all(workers);
    button.disabled = false;
    files = [];
    input.value = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-upload-form]").forEach(setUpUploader);
});
