// The Train view's right-hand side: what a job is doing, drawn from the job object and its events:
// the status line, the progress bar, step, characters per second, time left and last evaluation,
// the loss chart (loss_chart.js) and the samples, each under its step, in the order they come.
import { LossChart } from "./loss_chart.js";
import { TERMINAL } from "./train_api.js";

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = {
  queued: () => "queued: waiting for the trainer",
  running: (job) => `training ${job.model}`,
  paused: () => "paused: the job goes on from its last checkpoint when the server takes it up again",
  succeeded: (job) => `succeeded: ${job.fine_tuned_model} is served`,
  failed: (job) => `failed: ${job.error?.message ?? "no reason given"}`,
  cancelled: () => "cancelled",
};

/** "42 s", "1 min 05 s" or "3 h 20 min" for a duration in milliseconds. */
function formatDuration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const [minutes, hours] = [Math.floor(seconds / 60), Math.floor(seconds / 3600)];
  if (hours > 0) return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
  return minutes > 0 ? `${minutes} min ${String(seconds % 60).padStart(2, "0")} s` : `${seconds} s`;
}

export class TrainPanel {
  constructor() {
    this.chart = new LossChart($("loss-chart"));
    this.job = null;  // the job as last shown
  }

  /** Empty, for a new job. */
  reset() {
    this.job = null;
    delete $("training").dataset.job;
    this.chart.clear();
    $("train-samples").replaceChildren();
    $("train-try").hidden = true;
    for (const id of ["train-job", "train-step", "train-rate", "train-eta", "train-eval", "train-message"]) {
      $(id).textContent = "";
    }
    $("train-progress").value = 0;
  }

  /** `status`: the section's data-status (the job's status, or a step before there is a job). */
  setStatus(status, text) {
    $("training").dataset.status = status;
    $("train-status").textContent = text;
  }

  setMessage(text) {
    $("train-message").textContent = text;
  }

  showJob(job) {
    this.job = job;
    $("training").dataset.job = job.id;
    this.setStatus(job.status, STATUS_TEXT[job.status]?.(job) ?? job.status);
    $("train-job").textContent = `${job.id} (${job.model})`;
    $("train-cancel").disabled = TERMINAL.includes(job.status);
    $("train-try").hidden = !(job.status === "succeeded" && job.fine_tuned_model);
    this.showTimeLeft();
  }

  /** The time left until the job's estimated finish; called each second while it runs. */
  showTimeLeft() {
    const finish = this.job?.estimated_finish;
    const active = this.job !== null && !TERMINAL.includes(this.job.status);
    $("train-eta").textContent = active && finish ? formatDuration(finish * 1000 - Date.now()) : "";
  }

  /** One event: metrics (progress or an evaluation) feed the chart, a sample joins the list. */
  showEvent(event) {
    const data = event.data ?? {};
    if (event.type === "metrics") {
      if (this.job?.status === "queued") this.setStatus("running", STATUS_TEXT.running(this.job));
      const evaluation = data.valid_loss !== undefined && data.valid_loss !== null;
      this.chart.add(data.step, evaluation ? { valid: data.valid_loss } : { train: data.train_loss });
      if (evaluation) {
        $("train-eval").textContent = `step ${data.step}: training ${data.train_loss.toFixed(4)}, `
          + `validation ${data.valid_loss.toFixed(4)}`;
      }
      this.showProgress(data);
    } else if (typeof data.sample === "string") {
      this.addSample(data.step, data.sample);
    } else {
      this.setMessage(event.message);
    }
  }

  showProgress({ step, total_steps: total, chars_per_s: rate }) {
    const progress = $("train-progress");
    if (total) {
      progress.max = total;
      progress.value = step;
    } else {
      progress.removeAttribute("value");  // indeterminate: a budget in minutes may not know its steps
    }
    $("train-step").textContent = total ? `${step} of ${total}` : String(step);
    if (rate !== undefined && rate !== null) $("train-rate").textContent = Math.round(rate).toLocaleString("en");
  }

  addSample(step, text) {
    const item = document.createElement("li");
    const heading = document.createElement("p");
    heading.className = "sample-step";
    heading.textContent = step === undefined ? "sample" : `step ${step}`;
    const body = document.createElement("pre");
    body.className = "sample-text";
    body.textContent = text;
    item.append(heading, body);
    $("train-samples").append(item);
  }
}
