// The Train view's form: the text file (dropped on the zone or chosen, its size checked against the
// server's upload limit before anything is sent), the preset, the budget, the suffix and the
// advanced settings, read into the body of a fine-tuning job.
import { FieldError, numberValue } from "./form.js";

const $ = (id) => document.getElementById(id);
export const DEFAULT_MAX_UPLOAD_BYTES = 50 * 1000 * 1000;  // when /info does not say (50 MB)

/** A size as people read it: 812 bytes, 3.4 kB, 51.0 MB. */
export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} bytes`;
  const [unit, size] = bytes < 1e6 ? ["kB", 1e3] : bytes < 1e9 ? ["MB", 1e6] : ["GB", 1e9];
  return `${(bytes / size).toFixed(1)} ${unit}`;
}

/** A file dropped on `zone` becomes the file input's, as if chosen there; `onChosen()` follows either. */
export function wireDropZone(zone, input, onChosen) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();  // without it, the browser opens the file instead of dropping it here
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length === 0) return;
    input.files = event.dataTransfer.files;
    onChosen();
  });
  input.addEventListener("change", onChosen);
}

/** The file to train on; a FieldError when none is chosen, it is empty, or it is over `maxBytes`. */
export function chosenFile(maxBytes) {
  const file = $("train-file").files[0];
  if (!file) throw new FieldError("train-file", "choose a text file to train on, or drop one here");
  if (file.size === 0) throw new FieldError("train-file", `${file.name} is empty`);
  if (file.size > maxBytes) {
    let [size, limit] = [formatBytes(file.size), formatBytes(maxBytes)];
    if (size === limit) [size, limit] = [file.size, maxBytes].map((b) => `${b.toLocaleString("en")} bytes`);
    throw new FieldError("train-file", `${file.name} is ${size}, over the server's limit of ${limit} for an `
      + "upload: train on a part of it");
  }
  return file;
}

/**
 * Advanced settings, one `key=value` a line (blank lines and `#` comments skipped): any setting of
 * `charlm train --set`, the value read as JSON (`3e-4`, `true`), else as text, as `--set` reads it.
 */
export function parseSettings(text) {
  const settings = {};
  for (const [index, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const equals = line.indexOf("=");
    if (equals <= 0) throw new FieldError("train-settings", `line ${index + 1}: write key=value, as n_layer=2`);
    const value = line.slice(equals + 1).trim();
    try {
      settings[line.slice(0, equals).trim()] = JSON.parse(value);
    } catch {
      settings[line.slice(0, equals).trim()] = value;
    }
  }
  return settings;
}

/** The job's body from the controls, all but its training file: {model, hyperparameters, suffix?}. */
export function readJob() {
  const budget = numberValue("train-budget");
  const unit = $("train-budget-unit").value;  // max_minutes or max_iters
  if (budget === null || !(budget > 0)) throw new FieldError("train-budget", "enter a budget above 0");
  if (unit === "max_iters" && !Number.isInteger(budget)) {
    throw new FieldError("train-budget", "a number of steps is a whole number");
  }
  const body = {
    model: $("train-preset").value,
    hyperparameters: { ...parseSettings($("train-settings").value), [unit]: budget },  // the budget wins
  };
  const suffix = $("train-suffix").value.trim();
  if (suffix) body.suffix = suffix;
  return body;
}
