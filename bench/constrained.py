"""Constrained generation and scoring, measured against the targets of the issue that added them.

    python bench/constrained.py [--model models/shakespeare-gpt] [--data ../shared/data/tinyshakespeare.txt]
                                [--seeds 100] [--batch 32] [--chars 300] [--rounds 3] [--only NAME ...]
                                [--device cpu|cuda] [--results results.jsonl]

- regex: `[A-Z][a-z]+ (of|the) [A-Z][a-z]+\\n` over --seeds seeds (temperature 1, budget 100) on the
  model: how many outputs match whole, and how many the budget cut (those are a match's start).
- json: a JSON schema of three typed properties over --seeds seeds (budget 200) on a small GPT
  trained here for a minute on generated records (no bundled model has braces): how many parse
  and validate.
- throughput: the engine at batch --batch, --chars characters per row, every row constrained
  (`[^$&3]{chars}`: a grammar of chars + 1 states that lasts the whole run) against none, in
  alternating rounds of the same run; the ratio of the medians.
- scoring: /generate's prefill log-probabilities against the model's forward pass; 10,000
  characters scored in one request through the app (in-process), the median of --rounds.
- eval: bits per character on the last 10% of --data, the sliding window against consecutive windows.

The machine may be shared: run it under `nice` and compare figures within one run (scoring also
reports the CPU seconds the request took, which other processes' load does not inflate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from charlm.checkpoint import load_model
from charlm.sampling import SamplingParams
from service.engine.engine import Engine
from service.engine.grammars import compile_regex
from service.engine.sequences import Finished, GenerationRequest
from service.frontend.app import create_app
from service.frontend.grammar import schema_regex
from service.settings import Settings
from training.evaluation import evaluate_text, loss_metrics
from training.session import RunSpec
from training.trainer import train

TITLE = r"[A-Z][a-z]+ (of|the) [A-Z][a-z]+\n"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                                           "alive": {"type": "boolean"}}, "required": ["name", "age", "alive"]}
NAMES = ["Romeo", "Juliet", "Mercutio", "Tybalt", "Benvolio", "Friar Laurence", "Lady Capulet", "Paris", "Nurse"]


def run_engine(engine: Engine, requests: list[tuple[list[int], int, SamplingParams, object]]) -> tuple[list, float]:
    """Submit (prompt ids, budget, params, grammar) requests together; their (text, end) and the wall time."""
    done: queue.Queue[tuple[int, Finished]] = queue.Queue()
    texts: dict[int, list[str]] = {i: [] for i in range(len(requests))}

    def on_events(index: int, events: list) -> None:
        for event in events:
            if isinstance(event, Finished):
                done.put((index, event))
            else:
                texts[index].append(event.text)

    batch = [GenerationRequest(ids, budget, params, lambda e, i=i: on_events(i, e), grammar=grammar)  # type: ignore[misc]
             for i, (ids, budget, params, grammar) in enumerate(requests)]
    start = time.perf_counter()
    engine.submit_all(batch)
    ends = dict(done.get(timeout=1200) for _ in batch)
    return [("".join(texts[i]), ends[i]) for i in range(len(batch))], time.perf_counter() - start


DEVICE = "cpu"  # --device


def started(model_dir: Path, batch: int) -> tuple[Engine, object]:
    loaded = load_model(model_dir, device=DEVICE)
    engine = Engine(model_dir.name, loaded.model, loaded.vocab, max_batch_size=batch, max_queued=1024)
    engine.start()
    return engine, loaded


def regex_conformance(model_dir: Path, seeds: int) -> dict:
    engine, loaded = started(model_dir, 32)
    grammar = compile_regex(TITLE, loaded.vocab)
    prompt = loaded.vocab.encode("\n").tolist()
    results, _ = run_engine(engine, [(prompt, 100, SamplingParams(temperature=1.0, seed=s), grammar)
                                     for s in range(seeds)])
    engine.close()
    whole = sum(bool(re.fullmatch(TITLE, text)) and end.reason.value == "end" for text, end in results)
    cut = sum(end.reason.value == "length" and grammar.walk(loaded.vocab.encode(text).tolist()) is not None
              for text, end in results)
    return {"measure": "regex conformance", "seeds": seeds, "matched_whole": whole, "cut_by_budget_prefix": cut,
            "violations": seeds - whole - cut, "example": results[0][0]}


def json_model(out: Path) -> Path:
    rng = random.Random(0)
    lines = [json.dumps({"name": rng.choice(NAMES), "age": rng.randint(1, 90), "alive": rng.random() < 0.5})
             for _ in range(3000)]
    data = out / "records.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = RunSpec(data=data, out=out / "json-gpt", preset="gpt-tiny", progress=False, device="cpu",
                   overrides={"max_iters": 400, "eval_interval": 200, "eval_iters": 5, "block_size": 64},
                   command="bench/constrained.py")
    train(spec)
    return out / "json-gpt"


def json_conformance(seeds: int) -> dict:
    import jsonschema  # the dev extra's; only this measure needs it (a GPU machine may lack it)

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = json_model(Path(scratch))
        engine, loaded = started(model_dir, 32)
        grammar = compile_regex(schema_regex(PERSON, "bench"), loaded.vocab)
        prompt = loaded.vocab.encode("\n").tolist()
        results, _ = run_engine(engine, [(prompt, 200, SamplingParams(temperature=1.0, seed=s), grammar)
                                         for s in range(seeds)])
        engine.close()
    valid = 0
    for text, _ in results:
        try:
            jsonschema.validate(json.loads(text), PERSON)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return {"measure": "JSON schema conformance", "seeds": seeds, "parse_and_validate": valid,
            "example": results[0][0]}


def throughput(model_dir: Path, batch: int, chars: int, rounds: int) -> dict:
    engine, loaded = started(model_dir, batch)
    grammar = compile_regex(f"[^$&3]{{{chars}}}", loaded.vocab)
    prompt = loaded.vocab.encode("ROMEO:\n").tolist()
    rates: dict[str, list[float]] = {"none": [], "all": []}
    for _ in range(rounds):
        for name, automaton in (("none", None), ("all", grammar)):
            requests = [(prompt, chars, SamplingParams(temperature=0.8, seed=s), automaton) for s in range(batch)]
            results, seconds = run_engine(engine, requests)
            assert all(end.generated_tokens == chars for _, end in results)
            rates[name].append(batch * chars / seconds)
    engine.close()
    none, constrained = statistics.median(rates["none"]), statistics.median(rates["all"])
    return {"measure": f"engine at batch {batch}, chars/s", "unconstrained": round(none),
            "all_constrained": round(constrained), "ratio": round(constrained / none, 3), "rounds": rates}


async def scoring(model_dir: Path, data: Path, rounds: int) -> dict:
    loaded = load_model(model_dir)  # the reference forward pass, in float32 on the CPU
    text = data.read_text(encoding="utf-8")
    settings = Settings(models_dir=model_dir.parent, default_model=model_dir.name, engine_process=False,
                        device=DEVICE, dtype="float32")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
            short = text[:loaded.model.context_size or 256]
            scored = {"max_new_tokens": 0, "details": True, "decoder_input_details": True}
            body = {"inputs": short, "parameters": scored}
            prefill = (await client.post("/generate", json=body)).json()["details"]["prefill"]
            ids = torch.from_numpy(loaded.vocab.encode(short))
            with torch.inference_mode():
                logits, _ = loaded.model(ids[None, :-1])
            forward = logits[0].float().log_softmax(-1).gather(1, ids[1:, None]).squeeze(1).tolist()
            difference = max(abs(a["logprob"] - b) for a, b in zip(prefill[1:], forward, strict=True))
            long = text[:10_000]
            body["inputs"] = long
            seconds, cpu = [], []
            for _ in range(rounds):
                start, start_cpu = time.perf_counter(), time.process_time()
                answer = (await client.post("/generate", json=body)).json()
                seconds.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)  # every thread of this process: engine and event loop
                assert len(answer["details"]["prefill"]) == len(long)
    return {"measure": "scoring", "prefill_vs_forward_max_abs": difference, "chars": len(long),
            "seconds_median": round(statistics.median(seconds), 3), "seconds": [round(s, 3) for s in seconds],
            "cpu_seconds_median": round(statistics.median(cpu), 3)}


def evaluation(model_dir: Path, data: Path) -> dict:
    loaded = load_model(model_dir)
    text = data.read_text(encoding="utf-8")
    ids = torch.from_numpy(loaded.vocab.encode(text[int(len(text) * 0.9):]))
    window = loaded.model.context_size or 256
    figures = {}
    for name, stride in (("consecutive", window), ("sliding", window // 2)):
        start = time.perf_counter()
        loss = evaluate_text(loaded.model, ids, window, stride, torch.device("cpu"))
        figures[name] = {"bpc": round(loss_metrics(loss)["bpc"], 4), "seconds": round(time.perf_counter() - start, 1)}
    return {"measure": "charlm eval, last 10%", "chars": len(ids), "window": window, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/shakespeare-gpt"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["regex", "json", "throughput", "scoring", "eval"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    measures = {
        "regex": lambda: regex_conformance(args.model, args.seeds),
        "json": lambda: json_conformance(args.seeds),
        "throughput": lambda: throughput(args.model, args.batch, args.chars, args.rounds),
        "scoring": lambda: asyncio.run(scoring(args.model, args.data, args.rounds)),
        "eval": lambda: evaluation(args.model, args.data),
    }
    for name in args.only:
        result = measures[name]()
        print(json.dumps(result, ensure_ascii=False), flush=True)
        if args.results:
            with args.results.open("a") as out:
                out.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
