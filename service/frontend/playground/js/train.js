// The Train view: a text file uploaded, a fine-tuning job started on it, and the job followed to its
// end through its event stream, each event drawn by the panel (train_panel.js). Cancel asks the
// server to stop the job; once it succeeded, Try it opens the new model in the Text view. A stream
// that breaks off, or ends because the job paused (a server restarting), is opened again after the
// last event seen, so no point is drawn twice.
import { ApiError } from "./api.js";
import { FieldError, clearErrors, showError } from "./form.js";
import { TrainPanel } from "./train_panel.js";
import { TERMINAL, cancelJob, createJob, jobEvents, loadJob, uploadFile } from "./train_api.js";
import { DEFAULT_MAX_UPLOAD_BYTES, chosenFile, formatBytes, readJob, wireDropZone } from "./train_form.js";

const $ = (id) => document.getElementById(id);
const RECONNECT_MS = 2000;  // between tries to open a job's stream again
const TICK_MS = 1000;  // the time left counts down this often
const JOB_EVERY_TICKS = 5;  // and every this many ticks the job is read again (its estimated finish)
const TRY_TRIES = 30;  // Try it waits this many seconds at most for the server to serve the new model
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** The control a refusal concerns (the key, the file, a job field by OpenAI's `param`); null: the job as a whole. */
function controlFor(error) {
  if (error.status === 401 || error.status === 403) return "admin-key";
  if (error.status === 413) return "train-file";
  const param = error.param ?? "";
  if (["file", "purpose", "training_file"].includes(param)) return "train-file";
  if (param === "model") return "train-preset";
  if (param === "suffix") return "train-suffix";
  if (/max_(iters|minutes)$/.test(param)) return "train-budget";
  return param.startsWith("hyperparameters") ? "train-settings" : null;
}

/** A message next to its control, or below the Start button when it concerns none. */
function report(controlId, message) {
  if (controlId !== null) {
    showError(controlId, message);
    return;
  }
  $("train-error").textContent = message;
  $("train-error").hidden = false;
}

export class Training {
  /**
   * `limits()`: the server's limits from /info (null when unknown); `tryModel(name)`: show the Text
   * view with that model picked, after reading the model list again; false while it is not served.
   */
  constructor({ limits, tryModel }) {
    this.limits = limits;
    this.tryModel = tryModel;
    this.panel = new TrainPanel();
    this.job = null;
    this.adminKey = "";
    this.lastId = null;  // the last event shown: a stream opened again starts after it
    this.ticks = 0;
    this.refreshing = false;  // a read of the job in flight
    wireDropZone($("train-drop"), $("train-file"), () => this.fileChosen());
    $("train-cancel").addEventListener("click", () => this.cancel());
    $("train-try").addEventListener("click", () => this.tryIt());
    $("train-smoothing").addEventListener("input", () => this.smoothingChanged());
    $("train-log").addEventListener("change", () => this.panel.chart.setLog($("train-log").checked));
    this.smoothingChanged();
  }

  /** The served models, to train further, in the picker after the presets (the choice is kept while served). */
  showServedModels(models) {
    const picker = $("train-preset");
    const chosen = picker.value;
    $("train-served").replaceChildren(...models.map((model) => new Option(model.id, model.id)));
    picker.value = [...picker.options].some((option) => option.value === chosen) ? chosen : "gpt-tiny";
  }

  maxUploadBytes() {
    return this.limits()?.max_upload_bytes ?? DEFAULT_MAX_UPLOAD_BYTES;
  }

  /** A file dropped or chosen: its name and size, and at once whether it is too large. */
  fileChosen() {
    $("train-file-error").hidden = true;
    $("train-file").removeAttribute("aria-invalid");
    const file = $("train-file").files[0];
    $("train-file-info").textContent = file ? `${file.name}, ${formatBytes(file.size)}` : "";
    try {
      if (file) chosenFile(this.maxUploadBytes());
    } catch (exc) {
      if (!(exc instanceof FieldError)) throw exc;
      showError(exc.controlId, exc.message);
    }
  }

  smoothingChanged() {
    const weight = Number($("train-smoothing").value);
    $("train-smoothing-value").textContent = weight.toFixed(2);
    this.panel.chart.setSmoothing(weight);
  }

  /** Start: check the form, upload the file, create the job, and follow it to its end. */
  async start() {
    if (this.job !== null && !TERMINAL.includes(this.job.status)) return;  // one job at a time
    clearErrors();
    const adminKey = $("admin-key").value.trim();
    let file;
    let body;
    try {
      if (!adminKey) throw new FieldError("admin-key", "enter the server's admin key (CHARLM_ADMIN_KEY): training needs it");
      file = chosenFile(this.maxUploadBytes());
      body = readJob();
    } catch (exc) {
      if (!(exc instanceof FieldError)) throw exc;
      showError(exc.controlId, exc.message);
      return;
    }
    this.job = null;
    this.lastId = null;
    this.panel.reset();
    $("train-start").disabled = true;
    try {
      this.panel.setStatus("uploading", `uploading ${file.name} (${formatBytes(file.size)})`);
      const uploaded = await uploadFile(file, adminKey);
      this.panel.setStatus("creating", `${file.name} uploaded (${uploaded.id}): creating the job`);
      this.adminKey = adminKey;
      this.showJob(await createJob({ ...body, training_file: uploaded.id }, adminKey));
      await this.follow();
    } catch (exc) {
      this.fail(exc);
    } finally {
      $("train-start").disabled = false;
      $("train-cancel").disabled = true;
    }
  }

  /** Read the job's events until it ends: a stream cut short, or ended by a pause, is opened again. */
  async follow() {
    const ticker = setInterval(() => this.tick(), TICK_MS);
    try {
      while (!TERMINAL.includes(this.job.status)) {
        try {
          if (await this.readEvents() && TERMINAL.includes(this.job.status)) return;
        } catch (exc) {
          if (exc instanceof ApiError && exc.status >= 400 && exc.status < 500) throw exc;
          // no answer (0) or a server error: it may be restarting, and the job with it
        }
        await sleep(RECONNECT_MS);
      }
    } finally {
      clearInterval(ticker);
    }
  }

  /** One stream of the job's events; true when it ended with the job (done, or paused). */
  async readEvents() {
    for await (const item of jobEvents(this.job.id, this.adminKey, this.lastId)) {
      if (item.end) {
        this.showJob(item.job);
        return true;
      }
      if (item.id !== null) {
        if (this.lastId !== null && Number(item.id) <= Number(this.lastId)) continue;  // seen before a reconnect
        this.lastId = item.id;
      }
      this.panel.showEvent(item.event);
      if (item.event.type === "metrics" && this.job.status === "queued") this.refreshJob();  // running: its finish
    }
    return false;
  }

  /** Each second, the time left; every few, the job read again (status, estimated finish). */
  tick() {
    this.panel.showTimeLeft();
    this.ticks += 1;
    if (this.ticks % JOB_EVERY_TICKS === 0) this.refreshJob();
  }

  async refreshJob() {
    if (this.job === null || this.refreshing) return;
    this.refreshing = true;
    try {
      const job = await loadJob(this.job.id, this.adminKey);
      if (!TERMINAL.includes(this.job.status)) this.showJob(job);  // the stream's end has the last word
    } catch {
      // the stream tells the status too: the time left waits for the next read
    } finally {
      this.refreshing = false;
    }
  }

  showJob(job) {
    this.job = job;
    this.panel.showJob(job);
  }

  async cancel() {
    if (this.job === null || TERMINAL.includes(this.job.status)) return;
    $("train-cancel").disabled = true;
    try {
      this.showJob(await cancelJob(this.job.id, this.adminKey));
    } catch (exc) {
      $("train-cancel").disabled = false;
      this.fail(exc);
    }
  }

  /** Try it: the Text view on the new model, once the model list (read again) holds it. */
  async tryIt() {
    const name = this.job?.fine_tuned_model;
    if (!name) return;
    $("train-try").disabled = true;
    try {
      for (let tries = 0; tries < TRY_TRIES; tries += 1) {
        if (await this.tryModel(name)) return;
        this.panel.setMessage(`waiting for the server to serve ${name}`);
        await sleep(1000);
      }
      report(null, `the server does not serve ${name} yet: try again in a moment`);
    } finally {
      $("train-try").disabled = false;
    }
  }

  fail(exc) {
    if (!(exc instanceof ApiError)) throw exc;
    report(controlFor(exc), exc.message);
    if (this.job === null) this.panel.setStatus("refused", `not started: ${exc.message}`);
  }
}
