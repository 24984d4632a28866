// Talking to the charlm server's training routes, OpenAI's shapes: a text file uploaded
// (/v1/files), a fine-tuning job started, read, cancelled (/v1/fine_tuning/jobs), and its events
// followed as Server-Sent Events. Every route takes the admin key (CHARLM_ADMIN_KEY) as a Bearer token.
import { headers, send } from "./api.js";
import { sseEvents } from "./sse.js";

const JOBS = "/v1/fine_tuning/jobs";
export const TERMINAL = ["succeeded", "failed", "cancelled"];  // a job in one of these never changes again

/** `POST /v1/files`: the file, for fine-tuning; its file object ({id, bytes, characters, ...}). */
export async function uploadFile(file, adminKey, signal) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  const response = await send("/v1/files", { method: "POST", headers: headers(adminKey), body: form, signal });
  return response.json();
}

/** `POST /v1/fine_tuning/jobs`: a job from `body` ({model, training_file, suffix, hyperparameters}). */
export async function createJob(body, adminKey, signal) {
  const init = { method: "POST", headers: headers(adminKey, true), body: JSON.stringify(body), signal };
  return (await send(JOBS, init)).json();
}

/** `GET /v1/fine_tuning/jobs/{id}`: the job as it is now. */
export async function loadJob(jobId, adminKey, signal) {
  return (await send(`${JOBS}/${encodeURIComponent(jobId)}`, { headers: headers(adminKey), signal })).json();
}

/** `POST /v1/fine_tuning/jobs/{id}/cancel`: the job, as the cancel left it. */
export async function cancelJob(jobId, adminKey) {
  const path = `${JOBS}/${encodeURIComponent(jobId)}/cancel`;
  return (await send(path, { method: "POST", headers: headers(adminKey) })).json();
}

/**
 * The job's events from the one after `lastId` (all when null), streamed: each as
 * {end: false, id, event} (`event`: the fine_tuning.job.event object), then, when the job ends or
 * pauses, {end: true, job}. The stream may also break off without its end (a server restarting).
 */
export async function* jobEvents(jobId, adminKey, lastId, signal) {
  const path = `${JOBS}/${encodeURIComponent(jobId)}/events?stream=true`;
  const init = { headers: headers(adminKey), signal };
  if (lastId !== null) init.headers["Last-Event-ID"] = lastId;
  const response = await send(path, init);
  for await (const message of sseEvents(response)) {
    const payload = JSON.parse(message.data);
    if (message.event === "end") {
      yield { end: true, job: payload };
      return;
    }
    yield { end: false, id: message.id, event: payload };
  }
}
