// The playground page: wires the form to the server, the output panels, the scoring, the chat and
// the training.
import { ApiError, loadModelCard, loadModels, openStream, streamEvents } from "./api.js";
import { Chat } from "./chat.js";
import { FieldError, clearErrors, readParameters, requestJson, showError, showServerError } from "./form.js";
import { OutputPanel } from "./output.js";
import { ALTERNATIVES } from "./probabilities.js";
import { scoreInto } from "./score.js";
import { Training } from "./train.js";

const $ = (id) => document.getElementById(id);
const MODEL_CONTROLS = ["model", "model-b"];
const START_BUTTONS = ["generate", "score", "send", "clear"];  // disabled while something runs
const FOLLOW_MODELS_MS = 5000;  // how often the model list is asked again: models come and go while serving
let models = [];
let limits = null;  // the server's, from /info
let running = null;  // the AbortController of the work in flight (all of a comparison's streams)
const chat = new Chat($("chat-turns"));
const training = new Training({ limits: () => limits, tryModel });

const USABLE = ["ready", "standby", "loading", "restarting"];  // a model on standby loads at its first request

function describe(model) {
  const state = model.loaded ? "" : ` · ${model.status === "standby" ? "not loaded: it loads when used" : model.status}`;
  if (model.architecture === null) return `not loaded since the server started${state}`;
  const context = model.context_length === null ? "unbounded context" : `context ${model.context_length}`;
  return `${model.architecture} · ${model.parameters.toLocaleString("en")} parameters · `
    + `${model.vocab_size} characters · ${context}${state}`;
}

function modelOption(model) {
  const kind = model.architecture ?? "not loaded yet";
  const option = new Option(`${model.id} (${model.loaded ? kind : `${kind}, ${model.status}`})`, model.id);
  option.disabled = !USABLE.includes(model.status);
  return option;
}

function showModelInfo(controlId) {
  const model = models.find((m) => m.id === $(controlId).value);
  $(`${controlId}-info`).textContent = model ? describe(model) : "";
  if (controlId === MODEL_CONTROLS[0]) showModelCard(model);
}

/** The first model's card (its README: corpus, training, samples), as text, folded away. */
async function showModelCard(model) {
  const details = $("model-card-details");
  const shown = model ? `${model.id}@${model.version}` : "";
  if (details.dataset.shown === shown) return;
  details.dataset.shown = shown;
  let card = null;
  try {
    card = model ? await loadModelCard(model.id, $("api-key").value.trim()) : null;
  } catch {
    // the card is a courtesy: without it the page works as before
  }
  if (details.dataset.shown !== shown) return;  // another model was chosen meanwhile
  $("model-card").textContent = card ?? "";
  details.hidden = !card;
}

function fillPickers(info) {
  for (const [index, controlId] of MODEL_CONTROLS.entries()) {
    const select = $(controlId);
    const previous = select.value;
    select.replaceChildren(...models.map(modelOption));
    const fallback = index === 0 ? info?.default_model : models[1]?.id;
    const chosen = [previous, fallback].find((name) => models.some((m) => m.id === name));
    if (chosen) select.value = chosen;
    showModelInfo(controlId);
  }
  training.showServedModels(models);
  if (info?.limits) $("max-new-tokens").max = info.limits.max_new_tokens;
  limits = info?.limits ?? null;
}

async function refreshModels() {
  clearErrors();
  try {
    const answer = await loadModels($("api-key").value.trim());
    models = answer.models;
    fillPickers(answer.info);
    document.body.dataset.models = "loaded";
  } catch (exc) {
    models = [];
    fillPickers(null);
    const status = exc instanceof ApiError ? exc.status : 0;
    showServerError(status, `cannot list the models: ${exc.message}`, "model");
    document.body.dataset.models = "failed";
  }
}

/** Ask for the model list again, quietly: a model trained, replaced or removed while the page is
open shows up in the pickers (the choice is kept while its model is served). */
async function followModels() {
  if (document.hidden || document.body.dataset.models !== "loaded") return;
  let answer;
  try {
    answer = await loadModels($("api-key").value.trim());
  } catch {
    return;  // a server restarting: the next turn asks again
  }
  const key = (list) => list.map((m) => `${m.id}@${m.version}@${m.status}`).join(",");
  if (key(answer.models) === key(models)) return;
  models = answer.models;
  fillPickers(answer.info);
}

/** One request per model; in compare mode both share the seed, drawn here when none is given. */
function requests() {
  const request = readParameters();
  request.parameters.top_n_tokens = ALTERNATIVES;
  const names = [$("model").value];
  if ($("compare").checked) {
    names.push($("model-b").value);
    request.parameters.seed ??= String(Math.floor(Math.random() * 2 ** 31));
  }
  return names.map((model, index) => ({ model, control: MODEL_CONTROLS[index], body: { ...request, model } }));
}

async function runStream(panel, request, apiKey, compare, signal) {
  panel.start(request.body.inputs);
  try {
    const response = await openStream(requestJson(request.body), apiKey, signal);
    let finished = false;
    for await (const event of streamEvents(response)) {
      if (!event.special) panel.add(event.text, event.logprob, event.top);
      if (event.details) {
        panel.finish(event.details, event.seed);
        finished = true;
        break;  // the last event: a Stop pressed from now on must not relabel a finished panel
      }
    }
    if (!finished) throw new ApiError(0, "the stream ended before its last event");
  } catch (exc) {
    if (signal.aborted) {
      panel.stopped();
      return;
    }
    const status = exc instanceof ApiError ? exc.status : 0;
    panel.fail(exc.message);
    showServerError(status, exc.message, request.control, compare ? `${request.model}: ` : "");
  }
}

/** Run `work(signal)` alone: the buttons show it running, and Stop (`signal`) aborts it. */
async function exclusively(work) {
  running = new AbortController();
  setRunning(true);
  try {
    await work(running.signal);
  } finally {
    running = null;
    setRunning(false);
  }
}

/** The form's submission: a generation, or in the Chat view the line typed. */
function submit(event) {
  event.preventDefault();
  if (document.body.dataset.view === "train") {
    training.start();  // a job runs on the server, beside any generation here
    return;
  }
  if (running) return;
  clearErrors();
  if (document.body.dataset.view === "chat") {
    exclusively((signal) => chat.send($("model").value, $("api-key").value.trim(), signal));
  } else {
    generate();
  }
}

function generate() {
  let list;
  try {
    list = requests();
  } catch (exc) {
    if (!(exc instanceof FieldError)) throw exc;
    showError(exc.controlId, exc.message);
    return;
  }
  const outputs = $("outputs");
  outputs.replaceChildren();
  const apiKey = $("api-key").value.trim();
  const compare = list.length > 1;
  exclusively((signal) => {
    const panels = list.map((request) => new OutputPanel(outputs, request.model, branch));
    return Promise.all(list.map((request, index) => runStream(panels[index], request, apiKey, compare, signal)));
  });
}

function setRunning(isRunning) {
  const starts = START_BUTTONS.map($);
  const chatting = document.body.dataset.view === "chat";
  const focused = document.activeElement;
  const moveFocus = isRunning ? starts.includes(focused) : focused === $("stop-button");
  for (const button of starts) button.disabled = isRunning;
  $("stop-button").disabled = !isRunning;
  if (moveFocus) $(isRunning ? "stop-button" : (chatting ? "send" : "generate")).focus();  // keyboard users
  document.body.dataset.running = String(isRunning);
}

/** Score the prompt box's text with the first model (score.js), turning the shading on. */
function scoreText() {
  if (running) return;
  clearErrors();
  const text = $("prompt").value;
  if (!text) {
    showError("prompt", "paste a text to score");
    return;
  }
  const model = $("model").value;
  const apiKey = $("api-key").value.trim();
  const outputs = $("outputs");
  outputs.replaceChildren();
  const panel = new OutputPanel(outputs, model, branch);
  panel.startScoring();
  $("show-probs").checked = true;
  showProbabilities();
  exclusively((signal) => scoreInto(panel, text, model, limits?.max_n ?? 1, apiKey, signal));
}

function stop() {
  running?.abort();
}

/** Branch from a character: a new generation whose prompt ends with the alternative chosen there. */
function branch(prompt) {
  if (running) return;
  $("prompt").value = prompt;
  $("controls").requestSubmit();
}

function showProbabilities() {
  const on = $("show-probs").checked;
  for (const id of ["outputs", "chat-turns"]) $(id).classList.toggle("shaded", on);
  $("probs-legend").hidden = !on;
}

/** Show the Text view (generate, score), the Chat view or the Train view: the others' controls are hidden. */
function showView() {
  document.body.dataset.view = document.querySelector('input[name="view"]:checked').value;
}

/** The Text view with `name` picked, after asking for the model list again (a model just trained);
false, and nothing changed, while the server does not serve it yet. */
async function tryModel(name) {
  await refreshModels();
  if (!models.some((model) => model.id === name)) return false;
  $("view-text").checked = true;
  showView();
  $("model").value = name;
  showModelInfo("model");
  $("prompt").focus();
  return true;
}

/** Ctrl+Enter in a text box submits the form. */
function submitOnCtrlEnter(event) {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("controls").requestSubmit();
  }
}

function start() {
  $("controls").addEventListener("submit", submit);
  $("stop-button").addEventListener("click", stop);
  $("score").addEventListener("click", scoreText);
  $("clear").addEventListener("click", () => {
    clearErrors();
    chat.clear();
  });
  for (const id of ["view-text", "view-chat", "view-train"]) $(id).addEventListener("change", showView);
  $("constrain-kind").addEventListener("change", () => {
    $("constrain").disabled = !$("constrain-kind").value;
  });
  $("compare").addEventListener("change", () => { $("compare-field").hidden = !$("compare").checked; });
  for (const controlId of MODEL_CONTROLS) $(controlId).addEventListener("change", () => showModelInfo(controlId));
  $("api-key").addEventListener("change", refreshModels);
  $("show-probs").addEventListener("change", showProbabilities);
  $("prompt").addEventListener("keydown", submitOnCtrlEnter);
  $("chat-message").addEventListener("keydown", submitOnCtrlEnter);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) stop();
  });
  showView();
  setRunning(false);
  showProbabilities();
  refreshModels();
  setInterval(followModels, FOLLOW_MODELS_MS);
}

start();
