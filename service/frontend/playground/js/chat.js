// The Chat view: a conversation in which the person speaks as one character and the model answers
// as another. The conversation is the messages list of /v1/chat/completions, each turn with its
// speaker's name; the person's line joins it and the whole list goes with each request. The reply
// streams into an output panel as a generation does (shaded, with its alternatives), and joins the
// list as the assistant's turn when it finishes, or as far as it got when stopped or broken off.
import { ApiError, chatEvents, openChat } from "./api.js";
import { FieldError, numberValue, requestJson, showError, showServerError } from "./form.js";
import { OutputPanel } from "./output.js";
import { ALTERNATIVES } from "./probabilities.js";

const $ = (id) => document.getElementById(id);

/** Request fields (as the server names them in its messages) -> the control that sets them. */
const CHAT_FIELDS = {
  model: "model",
  messages: "chat-message",
  temperature: "temperature",
  top_k: "top-k",
  top_p: "top-p",
  min_p: "min-p",
  repetition_penalty: "repetition-penalty",
  max_completion_tokens: "max-new-tokens",
  seed: "seed",
  "chat_template_kwargs.user_name": "user-name",
  "chat_template_kwargs.assistant_name": "assistant-name",
};

function speakerName(controlId) {
  const name = $(controlId).value.trim();
  if (!name) throw new FieldError(controlId, "enter a name to speak under");
  return name;
}

export class Chat {
  constructor(container) {
    this.container = container;
    this.messages = [];  // the conversation as sent: {role, name, content}
  }

  /**
   * The request for the conversation and the line typed (`line`, its message). The seed is drawn
   * here when none is given, so that the reply can show it.
   */
  request(model) {
    const user = speakerName("user-name");
    const assistant = speakerName("assistant-name");
    const content = $("chat-message").value;
    if (!content.trim()) throw new FieldError("chat-message", `write a line for ${user} to say`);
    const line = { role: "user", name: user, content };
    const body = {
      model,
      messages: [...this.messages, line],
      temperature: numberValue("temperature"),
      top_k: numberValue("top-k"),
      top_p: numberValue("top-p"),
      min_p: numberValue("min-p"),
      repetition_penalty: numberValue("repetition-penalty"),
      max_completion_tokens: numberValue("max-new-tokens"),
      seed: $("seed").value.trim() || String(Math.floor(Math.random() * 2 ** 31)),
      stream: true,
      logprobs: true,
      top_logprobs: ALTERNATIVES,
      chat_template_kwargs: { user_name: user, assistant_name: assistant },
    };
    for (const [name, value] of Object.entries(body)) {
      if (value === null) delete body[name];
    }
    return { body, line };
  }

  /**
   * Say the line typed and stream the model's reply; `signal` aborts it (Stop), keeping what came.
   * A request that fails before any character leaves the conversation as it was: its turn goes,
   * the line goes back into its box, and the error is shown next to the control it concerns.
   */
  async send(model, apiKey, signal) {
    let request;
    try {
      request = this.request(model);
    } catch (exc) {
      if (!(exc instanceof FieldError)) throw exc;
      showError(exc.controlId, exc.message);
      return;
    }
    const { body, line } = request;
    const said = this.say(line);
    const speaker = body.chat_template_kwargs.assistant_name;
    const panel = new OutputPanel(this.container, model, null, speaker);
    panel.element.classList.add("turn", "reply");
    panel.element.setAttribute("aria-label", `${speaker}, answered by ${model}`);
    panel.start("");
    $("chat-message").value = "";
    try {
      await this.stream(panel, body, apiKey, signal);
    } catch (exc) {
      if (signal.aborted) {
        panel.stopped();
      } else if (panel.text() === "") {
        this.withdraw(said, panel, line, exc);
        return;
      } else {
        panel.fail(exc.message);
        showError(null, exc.message);
      }
    }
    this.messages.push(line);
    const reply = panel.text();
    if (reply) this.messages.push({ role: "assistant", name: speaker, content: reply });  // an empty one says nothing
  }

  async stream(panel, body, apiKey, signal) {
    const response = await openChat(requestJson(body, body.seed), apiKey, signal);
    for await (const event of chatEvents(response)) {
      if (event.finish) {
        panel.finish({ finish_reason: event.finish }, body.seed);
        return;  // the last chunk: a Stop pressed from now on must not relabel a finished reply
      }
      panel.add(event.text, event.logprob, event.top, false, event.at);
    }
    throw new ApiError(0, "the stream ended before its last chunk");
  }

  /** The person's line on the page, under its speaker's name. */
  say(line) {
    const turn = document.createElement("article");
    turn.className = "turn line";
    const speaker = document.createElement("h2");
    speaker.className = "turn-speaker";
    speaker.textContent = line.name;
    const text = document.createElement("p");
    text.className = "turn-text";
    text.textContent = line.content;
    turn.append(speaker, text);
    this.container.append(turn);
    return turn;
  }

  withdraw(said, panel, line, exc) {
    said.remove();
    panel.element.remove();
    if (!$("chat-message").value) $("chat-message").value = line.content;
    const status = exc instanceof ApiError ? exc.status : 0;
    showServerError(status, exc.message, "model", "", CHAT_FIELDS);
  }

  clear() {
    this.messages = [];
    this.container.replaceChildren();
  }
}
