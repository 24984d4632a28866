// Talking to the charlm server: the model list, a TGI stream read event by event, a chat stream
// read chunk by chunk, and texts scored.
import { sseData } from "./sse.js";

/** A refusal or failure from the server: its HTTP status (0: no answer), message, and the field it
names (OpenAI's `param`; null when it names none). */
export class ApiError extends Error {
  constructor(status, message, param = null) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

/** The request headers: JSON's content type when `json`, and the key as a Bearer token when given. */
export function headers(apiKey, json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

/** The error message of a failed response, in either protocol's shape. */
async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    const error = body.error;
    message = typeof error === "string" ? error : (error?.message ?? message);
    param = error?.param ?? null;
  } catch {
    // not JSON: the status line says what there is to say
  }
  return new ApiError(response.status, message, param);
}

/** `fetch`, with a refusal or an unreachable server thrown as an ApiError (an abort as itself). */
export async function send(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, `the server cannot be reached (${exc.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** `GET /v1/models` and `GET /info` (for the default model and the limits). */
export async function loadModels(apiKey) {
  const models = await (await send("/v1/models", { headers: headers(apiKey) })).json();
  let info = null;
  try {
    info = await (await send("/info", { headers: headers(apiKey) })).json();
  } catch {
    // the page works without it: no default model marked, no limits shown
  }
  return { models: models.data, info };
}

/** `GET /v1/models/{name}`: one model with its card's text (null when it has none). */
export async function loadModelCard(name, apiKey) {
  const path = `/v1/models/${encodeURIComponent(name)}`;
  return (await (await send(path, { headers: headers(apiKey) })).json()).card;
}

/** Start a `/generate_stream` request; refusals (4xx) throw an ApiError before any event. */
export function openStream(bodyJson, apiKey, signal) {
  return send("/generate_stream", { method: "POST", headers: headers(apiKey, true), body: bodyJson, signal });
}

/**
 * The stream's events as {text, logprob, top, special, details, seed}; an error event throws.
 * `top` lists the most likely characters at that place as {text, logprob} (with top_n_tokens).
 * The seed is taken from the raw JSON as digits: random seeds go up to 2^63, past what a
 * JavaScript number holds exactly, and a seed shown to the user must reproduce the text.
 */
export async function* streamEvents(response) {
  for await (const data of sseData(response)) {
    const event = JSON.parse(data);
    if (event.error !== undefined) throw new ApiError(500, event.error);
    const seed = event.details ? (/"seed":\s*(\d+)/.exec(data)?.[1] ?? null) : null;
    const top = (event.top_tokens ?? []).map((t) => ({ text: t.text, logprob: t.logprob }));
    yield {
      text: event.token.text, logprob: event.token.logprob, top, special: event.token.special,
      details: event.details, seed,
    };
  }
}

/** Start a `/v1/chat/completions` stream; refusals (4xx) throw an ApiError before any chunk. */
export function openChat(bodyJson, apiKey, signal) {
  return send("/v1/chat/completions", { method: "POST", headers: headers(apiKey, true), body: bodyJson, signal });
}

/**
 * A chat stream's reply, character by character, as {text, logprob, top, at} (`at`: when its chunk
 * came), then {finish} with the finish reason; an error chunk throws. With `logprobs` asked each character comes with its
 * log-probability and `top`, the most likely characters there as {text, logprob}, most likely
 * first; without, logprob is null and top empty.
 */
export async function* chatEvents(response) {
  for await (const data of sseData(response)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error !== undefined) throw new ApiError(500, chunk.error.message ?? String(chunk.error));
    const at = performance.now();
    for (const choice of chunk.choices) {
      const scored = choice.logprobs?.content;
      for (const t of scored ?? []) {
        const top = t.top_logprobs.map((alt) => ({ text: alt.token, logprob: alt.logprob }));
        yield { text: t.token, logprob: t.logprob, top: top.sort((a, b) => b.logprob - a.logprob), at };
      }
      if (!scored) {
        for (const char of choice.delta?.content ?? "") yield { text: char, logprob: null, top: [], at };
      }
      if (choice.finish_reason) yield { finish: choice.finish_reason };
    }
  }
}

/** `GET /tokenizer_info?model=`: the model's characters (a character's id is its position). */
export async function loadCharacters(model, apiKey) {
  const path = `/tokenizer_info?model=${encodeURIComponent(model)}`;
  return (await (await send(path, { headers: headers(apiKey) })).json()).chars;
}

/**
 * Score texts with `/v1/completions` (echo, logprobs, max_tokens 0), `batch` texts per request: for
 * each text, per character {text, logprob, top} (the first one's logprob null: it has no context).
 */
export async function scoreTexts(model, texts, batch, apiKey, signal) {
  const scored = [];
  for (let start = 0; start < texts.length; start += batch) {
    const prompt = texts.slice(start, start + batch);
    const body = JSON.stringify({ model, prompt, echo: true, logprobs: 5, max_tokens: 0 });
    const response = await send("/v1/completions", { method: "POST", headers: headers(apiKey, true), body, signal });
    const choices = (await response.json()).choices.sort((a, b) => a.index - b.index);
    for (const choice of choices) {
      const { tokens, token_logprobs: logprobs, top_logprobs: tops } = choice.logprobs;
      scored.push(tokens.map((text, i) => ({
        text,
        logprob: logprobs[i],
        top: Object.entries(tops[i] ?? {}).map(([t, lp]) => ({ text: t, logprob: lp }))
          .sort((a, b) => b.logprob - a.logprob),
      })));
    }
  }
  return scored;
}
