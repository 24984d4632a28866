// The settings form: reading it into a request, and errors shown next to the control they concern.

const $ = (id) => document.getElementById(id);

/** A value the page itself cannot send, reported next to its control. */
export class FieldError extends Error {
  constructor(controlId, message) {
    super(message);
    this.controlId = controlId;
  }
}

/** Request fields (as the server names them in its messages) -> the control that sets them. */
const FIELD_CONTROLS = {
  inputs: "prompt",
  prompt: "prompt",
  "parameters.temperature": "temperature",
  "parameters.top_k": "top-k",
  "parameters.top_p": "top-p",
  "parameters.repetition_penalty": "repetition-penalty",
  "parameters.min_p": "min-p",
  "parameters.max_new_tokens": "max-new-tokens",
  "parameters.seed": "seed",
  "parameters.stop": "stop",
  "parameters.grammar": "constrain",
  model: "model",
};

/** A number control's value; null when empty. */
export function numberValue(id) {
  const input = $(id);
  if (input.validity.badInput) throw new FieldError(id, "enter a number");
  return input.value.trim() === "" ? null : Number(input.value);
}

/** Stop strings, one per line; `\n`, `\t` and `\\` stand for a newline, a tab and a backslash. */
export function stopStrings(text) {
  const escapes = { n: "\n", t: "\t", "\\": "\\" };
  return text.split("\n").filter((line) => line !== "")
    .map((line) => line.replace(/\\([nt\\])/g, (_, c) => escapes[c]));
}

/** The Constrain field as TGI's grammar (a JSON schema goes as its text: the server reads it). */
function grammar() {
  const kind = $("constrain-kind").value;
  const value = $("constrain").value.trim();
  if (!kind) return null;
  if (!value) throw new FieldError("constrain", "enter a regular expression or a JSON schema, or constrain nothing");
  return { type: kind, value };
}

/**
 * The generation parameters from the controls, without the model. The seed stays text here
 * (see requestJson).
 */
export function readParameters() {
  const parameters = {
    temperature: numberValue("temperature"),
    top_k: numberValue("top-k"),
    top_p: numberValue("top-p"),
    repetition_penalty: numberValue("repetition-penalty"),
    min_p: numberValue("min-p"),
    max_new_tokens: numberValue("max-new-tokens"),
    seed: $("seed").value.trim() || null,
    stop: stopStrings($("stop").value),
    grammar: grammar(),
  };
  for (const [name, value] of Object.entries(parameters)) {
    if (value === null) delete parameters[name];
  }
  return { inputs: $("prompt").value, parameters };
}

/**
 * The request as JSON text, with a seed of digits written as a JSON integer: the server wants a
 * number, and JSON.stringify of a JavaScript number would round one past 2^53. Anything else
 * typed as a seed goes as text, for the server to refuse by name. `seed`: the body's seed (TGI's
 * is a parameter, OpenAI's a field of its own).
 */
export function requestJson(body, seed = body.parameters.seed) {
  const text = JSON.stringify(body);
  if (seed === undefined || !/^\d+$/.test(seed)) return text;
  return text.replace(`"seed":${JSON.stringify(seed)}`, `"seed":${BigInt(seed)}`);  // BigInt: no leading zeros
}

/**
 * Which control a server error concerns; null when it concerns the request as a whole. `fields`:
 * the request's fields, as the server names them, and their controls.
 */
export function controlFor(status, message, modelControl, fields = FIELD_CONTROLS) {
  if (status === 401) return "api-key";
  if (status === 404) return modelControl;
  if (status === 413) return "prompt";
  if (status !== 422 && status !== 400) return null;
  let best = null;
  for (const field of Object.keys(fields)) {
    const named = message.startsWith(field) && /^[\s:.]/.test(message.slice(field.length));
    if (named && (best === null || field.length > best.length)) best = field;
  }
  if (best === "model") return modelControl;  // in compare mode, the picker of the failing request
  return best === null ? null : fields[best];
}

/** Show a message next to a control (or below the buttons when `controlId` is null). */
export function showError(controlId, message) {
  const target = $(`${controlId ?? "generate"}-error`);
  target.textContent = target.hidden ? message : `${target.textContent}\n${message}`;
  target.hidden = false;
  if (controlId !== null) $(controlId).setAttribute("aria-invalid", "true");
}

/** Show each part of a server message ("a.b: ...; c: ...") next to the control it names. */
export function showServerError(status, message, modelControl, prefix = "", fields = FIELD_CONTROLS) {
  const parts = status === 422 || status === 400 ? message.split(/; (?=[\w.]+: |unknown field )/) : [message];
  for (const part of parts) {
    showError(controlFor(status, part, modelControl, fields), prefix + part);
  }
}

export function clearErrors() {
  for (const element of document.querySelectorAll("#controls .error")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const element of document.querySelectorAll("#controls [aria-invalid]")) {
    element.removeAttribute("aria-invalid");
  }
}
