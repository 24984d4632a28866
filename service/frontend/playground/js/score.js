// Scoring a text: each character shaded by the probability the model gave it after the characters
// before it, through /v1/completions (echo, logprobs, no new tokens). Characters the model does not
// have (/tokenizer_info lists its characters) are shown and counted apart; the text after one is
// scored afresh, its first character without context.
import { ApiError, loadCharacters, scoreTexts } from "./api.js";
import { showServerError } from "./form.js";

/** The text in runs of characters the model has ({text, known}): a character it lacks breaks the text. */
function runsOf(text, known) {
  const runs = [];
  for (const char of text) {  // by code point, as the server counts characters
    const isKnown = known.has(char);
    const last = runs[runs.length - 1];
    if (last && last.known === isKnown) last.text += char;
    else runs.push({ text: char, known: isKnown });
  }
  return runs;
}

/**
 * Score `text` with `model` into `panel` (started for scoring), `batch` texts per request;
 * `signal` aborts it. A failure is shown in the panel and next to the control it concerns.
 */
export async function scoreInto(panel, text, model, batch, apiKey, signal) {
  try {
    const runs = runsOf(text, new Set(await loadCharacters(model, apiKey)));
    const known = runs.filter((run) => run.known).map((run) => run.text);
    const scored = await scoreTexts(model, known, batch, apiKey, signal);
    for (const run of runs) {
      if (run.known) {
        for (const t of scored.shift()) panel.add(t.text, t.logprob, t.top);
      } else {
        for (const char of run.text) panel.add(char, null, [], true);
      }
    }
    panel.finishScoring();
  } catch (exc) {
    if (signal.aborted) {
      panel.stopped();
    } else {
      const status = exc instanceof ApiError ? exc.status : 0;
      panel.fail(exc.message);
      showServerError(status, exc.message, "model");
    }
  }
}
