// How sure the model was: a character's shade, its alternatives, and the text's summary numbers.

export const BUCKETS = 8;  // shades, from likely (0, no shade) to surprising (7)
export const ALTERNATIVES = 5;  // the most likely characters asked for at each place
const VISIBLE = { " ": "␣", "\n": "⏎", "\t": "⇥" };

/** The shade of a character the model gave log-probability `logprob`: less likely, stronger. */
export function bucket(logprob) {
  const p = Math.exp(logprob);
  return Math.min(BUCKETS - 1, Math.floor((1 - p) * BUCKETS));
}

/** A character as it can be seen: whitespace and line ends drawn as symbols. */
export function visible(char) {
  return VISIBLE[char] ?? char;
}

export function percent(logprob) {
  const p = 100 * Math.exp(logprob);
  return `${p >= 10 ? p.toFixed(1) : p.toPrecision(2)}%`;
}

/** Mean bits per character and perplexity of characters with these log-probabilities (nats). */
export function summary(logprobSum, count) {
  if (count === 0) return null;
  const mean = -logprobSum / count;
  return { bitsPerChar: mean / Math.LN2, perplexity: Math.exp(mean) };
}

/**
 * The alternatives of one character: a small dialog listing the model's five most likely
 * characters at that place with their probabilities, each a button that branches from there
 * (plain entries where there is no branching: `onBranch` null).
 * Every text in it is set as text: nothing from the server is parsed as markup.
 */
export class Alternatives {
  constructor(panelElement, onBranch) {
    this.element = panelElement.querySelector(".alternatives");
    this.title = this.element.querySelector(".alternatives-title");
    this.list = this.element.querySelector(".alternatives-list");
    this.onBranch = onBranch;
    this.index = null;
    this.pinned = false;
    this.element.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();  // closes this, not the stream
        this.close(true);
      }
    });
  }

  /** Show character `index` (its span `anchor`, its record); `pin` keeps it open and takes focus. */
  show(anchor, index, record, pin) {
    this.index = index;
    this.pinned = pin;
    this.title.textContent = `“${visible(record.char)}” at ${index + 1}: ${percent(record.logprob)}`;
    this.list.replaceChildren(...record.top.map((alt) => this.choice(alt, alt.text === record.char)));
    this.element.hidden = false;
    const at = anchor.getBoundingClientRect();
    const body = this.element.parentElement.getBoundingClientRect();  // .output-body, positioned
    const left = Math.min(at.left - body.left, body.width - this.element.offsetWidth);
    this.element.style.top = `${at.bottom - body.top + 2}px`;  // CSSOM, which the page's CSP allows
    this.element.style.left = `${Math.max(0, left)}px`;
    if (pin) this.list.querySelector("button")?.focus();
  }

  choice(alt, chosen) {
    const item = document.createElement("li");
    const entry = document.createElement(this.onBranch ? "button" : "span");
    entry.className = chosen ? "alternative chosen" : "alternative";
    entry.dataset.text = alt.text;
    const char = document.createElement("span");
    char.className = "alternative-char";
    char.textContent = visible(alt.text);
    const p = document.createElement("span");
    p.className = "alternative-p";
    p.textContent = percent(alt.logprob);
    entry.append(char, p);
    if (this.onBranch) {
      entry.type = "button";
      entry.setAttribute("aria-label", `branch with ${JSON.stringify(alt.text)}, ${percent(alt.logprob)}`);
      entry.addEventListener("click", () => this.onBranch(this.index, alt.text));
    }
    item.append(entry);
    return item;
  }

  /** Hide (unless pinned and not `force`d); a forced close gives focus back to the text. */
  close(force = false) {
    if (this.pinned && !force) return;
    const hadFocus = this.element.contains(document.activeElement);
    this.element.hidden = true;
    this.pinned = false;
    if (hadFocus) this.element.parentElement.querySelector(".output-text").focus();
  }
}
