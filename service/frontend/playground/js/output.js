// One output panel: the text as it streams in, how sure the model was of each character, and the
// live statistics.
import { Alternatives, bucket, summary } from "./probabilities.js";

let panels = 0;  // for ids unique in the page

/** Characters per second: those that came after the first arrival, over the time since it. */
function rate(later, firstAt, lastAt) {
  const seconds = (lastAt - firstAt) / 1000;
  return later > 0 && seconds > 0 ? later / seconds : null;
}

export class OutputPanel {
  /**
   * `onBranch(prompt)`: start a generation from `prompt` (a text up to an alternative); null: the
   * alternatives are shown without branching. `heading`: the panel's title, the model's name unless given.
   */
  constructor(container, modelName, onBranch, heading = modelName) {
    const template = document.getElementById("output-template");
    this.element = template.content.firstElementChild.cloneNode(true);
    this.element.dataset.model = modelName;
    this.element.setAttribute("aria-label", `Output of ${modelName}`);
    this.id = `panel${(panels += 1)}`;
    const part = (name) => this.element.querySelector(`.${name}`);
    part("output-model").textContent = heading;
    this.textBox = part("output-text");
    this.generated = part("generated");
    this.echo = part("echo");
    this.stats = {
      status: part("stat-status"), first: part("stat-first"), rate: part("stat-rate"),
      count: part("stat-count"), bpc: part("stat-bpc"), ppl: part("stat-ppl"),
      finish: part("stat-finish"), seed: part("stat-seed"), unknown: part("stat-unknown"),
    };
    this.unknownItem = part("stat-unknown-item");
    this.errorBox = part("output-error");
    this.records = [];  // per character: {char, logprob, top, unknown}; logprob null when not scored
    this.logprobSum = 0;
    this.scored = 0;  // records with a log-probability
    this.firstCount = 0;  // records that came with the first arrival
    this.unknown = 0;  // characters outside the model's vocabulary (scoring)
    this.shown = 0;  // records on the page
    this.current = -1;  // the character the keyboard is on
    this.framePending = false;
    this.alternatives = new Alternatives(
      this.element, onBranch && ((index, text) => onBranch(this.branchPrompt(index, text))),
    );
    this.listen();
    container.appendChild(this.element);
  }

  start(prompt) {
    this.prompt = prompt;
    this.echo.textContent = prompt;
    this.sentAt = performance.now();
    this.setStatus("waiting");
  }

  setStatus(status) {
    this.element.dataset.status = status;
    this.stats.status.textContent = status;
  }

  /**
   * Take a streamed character with its log-probability (null: not scored) and alternatives;
   * characters reach the page once per frame, with the statistics. Touching the page per character
   * would lay out the whole text each time, slower as it grows. `unknown`: a character the model
   * does not have (scoring), counted apart. `at`: when it arrived; the characters of one chunk
   * share it, and those of the first are left out of the rate (they took no time to come).
   */
  add(char, logprob, top, unknown = false, at = performance.now()) {
    if (this.records.length === 0) {
      this.firstAt = at;
      this.setStatus("streaming");
    }
    if (at === this.firstAt) this.firstCount += 1;
    this.lastAt = at;
    this.records.push({ char, logprob, top, unknown });
    if (logprob !== null) {
      this.logprobSum += logprob;
      this.scored += 1;
    }
    if (unknown) this.unknown += 1;
    if (!this.framePending) {
      this.framePending = true;
      requestAnimationFrame(() => this.draw());
    }
  }

  /** Show the characters received since the last frame (a span each, shaded by its bucket). */
  draw() {
    this.framePending = false;
    const count = this.records.length;
    if (count === 0) return;
    const box = this.textBox;
    const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    const fragment = document.createDocumentFragment();
    for (let i = this.shown; i < count; i += 1) {
      const span = document.createElement("span");
      span.textContent = this.records[i].char;
      span.id = `${this.id}-c${i}`;
      span.dataset.i = String(i);
      const record = this.records[i];
      if (record.logprob !== null) span.dataset.b = String(bucket(record.logprob));
      else span.className = record.unknown ? "unknown" : "unscored";
      span.title = record.unknown ? "not in the model's vocabulary" : (record.logprob === null ? "no context" : "");
      fragment.append(span);
    }
    this.generated.append(fragment);
    this.shown = count;
    if (following) box.scrollTop = box.scrollHeight;
    if (!this.scoring) {
      this.stats.first.textContent = `${Math.round(this.firstAt - this.sentAt)} ms`;
      const perSecond = rate(count - this.firstCount, this.firstAt, this.lastAt);
      this.stats.rate.textContent = perSecond === null ? "" : perSecond.toFixed(0);
    }
    this.stats.count.textContent = this.scoring ? `${this.scored} scored of ${count}` : String(count);
    this.stats.unknown.textContent = String(this.unknown);
    this.unknownItem.hidden = !this.scoring;
    const numbers = summary(this.logprobSum, this.scored);
    this.stats.bpc.textContent = numbers ? numbers.bitsPerChar.toFixed(3) : "";
    this.stats.ppl.textContent = numbers ? numbers.perplexity.toFixed(2) : "";
  }

  /** The prompt of a branch: this panel's prompt, its text before character `index`, then `text`. */
  branchPrompt(index, text) {
    return this.prompt + this.text(index) + text;
  }

  /** The text received, or its first `end` characters. */
  text(end = this.records.length) {
    return this.records.slice(0, end).map((r) => r.char).join("");
  }

  /** Hover and click show a character's alternatives; the arrow keys walk the characters. */
  listen() {
    const spanOf = (target) => (target instanceof Element ? target.closest(".generated > span") : null);
    this.generated.addEventListener("mouseover", (event) => {
      const span = spanOf(event.target);
      if (span && !this.alternatives.pinned) this.open(Number(span.dataset.i), false);
    });
    this.generated.addEventListener("mouseleave", () => this.alternatives.close());
    this.generated.addEventListener("click", (event) => {
      const span = spanOf(event.target);
      if (span) this.open(Number(span.dataset.i), true);
    });
    this.textBox.addEventListener("keydown", (event) => this.onKey(event));
  }

  onKey(event) {
    const last = this.shown - 1;
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity };
    if (event.key in moves && last >= 0) {
      event.preventDefault();
      this.moveTo(Math.max(0, Math.min(last, (this.current < 0 ? -1 : this.current) + moves[event.key])));
    } else if (event.key === "Enter" && this.current >= 0) {
      event.preventDefault();
      this.open(this.current, true);
    }
  }

  moveTo(index) {
    this.generated.querySelector(".current")?.classList.remove("current");
    this.current = index;
    const span = this.generated.children[index];
    span.classList.add("current");
    this.textBox.setAttribute("aria-activedescendant", span.id);
    this.alternatives.pinned = false;
    this.open(index, false);
  }

  open(index, pin) {
    const record = this.records[index];
    if (record && record.logprob !== null) this.alternatives.show(this.generated.children[index], index, record, pin);
  }

  /** Scoring a text: no prompt shown, the statistics of a score (no rate, no seed). */
  startScoring() {
    this.scoring = true;
    this.start("");
    this.setStatus("scoring");
  }

  finishScoring() {
    this.draw();
    this.stats.finish.textContent = "scored";
    this.setStatus("finished");
  }

  /** The stream's last event: finish reason and seed. The count stays the characters shown (the
   * server's generated_tokens also counts a matched stop string, which is not shown). */
  finish(details, seed) {
    this.draw();
    this.stats.finish.textContent = details.finish_reason;
    this.stats.seed.textContent = seed ?? String(details.seed);
    this.setStatus("finished");
  }

  stopped() {
    this.draw();
    this.stats.finish.textContent = "stopped by you";
    this.setStatus("stopped");
  }

  fail(message) {
    this.draw();
    this.errorBox.textContent = message;
    this.errorBox.hidden = false;
    this.setStatus("failed");
  }
}
