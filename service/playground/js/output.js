// One output panel: the text as it streams in, and its live statistics.

/** Characters per second over the time between the first and the last character seen. */
function rate(count, firstAt, lastAt) {
  const seconds = (lastAt - firstAt) / 1000;
  return count > 1 && seconds > 0 ? (count - 1) / seconds : null;
}

export class OutputPanel {
  constructor(container, modelName) {
    const template = document.getElementById("output-template");
    this.element = template.content.firstElementChild.cloneNode(true);
    this.element.dataset.model = modelName;
    this.element.setAttribute("aria-label", `Output of ${modelName}`);
    const part = (name) => this.element.querySelector(`.${name}`);
    part("output-model").textContent = modelName;
    this.textBox = part("output-text");
    this.generated = part("generated").appendChild(document.createTextNode(""));
    this.echo = part("echo");
    this.stats = {
      status: part("stat-status"), first: part("stat-first"), rate: part("stat-rate"),
      count: part("stat-count"), finish: part("stat-finish"), seed: part("stat-seed"),
    };
    this.errorBox = part("output-error");
    this.count = 0;
    this.pending = "";  // characters not on the page yet
    this.framePending = false;
    container.appendChild(this.element);
  }

  start(prompt) {
    this.echo.textContent = prompt;
    this.sentAt = performance.now();
    this.setStatus("waiting");
  }

  setStatus(status) {
    this.element.dataset.status = status;
    this.stats.status.textContent = status;
  }

  /**
   * Take streamed characters; they reach the page once per frame, with the statistics. Touching
   * the page per character would lay out the whole text each time, slower as it grows.
   */
  add(text) {
    const now = performance.now();
    if (this.count === 0) {
      this.firstAt = now;
      this.setStatus("streaming");
    }
    this.lastAt = now;
    this.count += 1;
    this.pending += text;
    if (!this.framePending) {
      this.framePending = true;
      requestAnimationFrame(() => this.draw());
    }
  }

  /** Show the characters received since the last frame, and the statistics. */
  draw() {
    this.framePending = false;
    if (this.count === 0) return;
    const box = this.textBox;
    const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    this.generated.appendData(this.pending);
    this.pending = "";
    if (following) box.scrollTop = box.scrollHeight;
    this.stats.first.textContent = `${Math.round(this.firstAt - this.sentAt)} ms`;
    const perSecond = rate(this.count, this.firstAt, this.lastAt);
    this.stats.rate.textContent = perSecond === null ? "" : perSecond.toFixed(0);
    this.stats.count.textContent = String(this.count);
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
