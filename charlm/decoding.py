"""Fixed-shape decoding over slots: the decode state of a batch, allocated once.

A `SlotDecoder` holds the state of `slots` sequences. Active sequences occupy rows
[0, active): a new one is prefilled into the next free row, and when one leaves,
the last active row moves into its place, so the active rows stay a prefix.
`launch` advances every active row by one character (the model's `step`, then
`sample`) and copies the results to the host in one packed transfer. Rows with a
grammar keep their automaton in the decoder's `GrammarTable` (`charlm.grammar`);
the packed results say where a grammar ended a row's text.

On CUDA every step covers all `slots` rows, so its shapes never change: it is
captured as a CUDA graph, and a row's arithmetic does not depend on the other
rows (batch invariance). Short prompts are fed through that step too
(`charlm.prompt_feed`). Before capture, the step is compiled (torch.compile), so
that the graph replays fused kernels; the model chooses its decode attention
(`prepare_decoding`) before either. On a CPU a step covers the active rows only
(shapes that change every step: no compilation, which measured slower there at 32 rows; a lone
row's plain step may be compiled instead, `charlm.cpu_step`),
and prompts are prefilled in one call each: the shapes change with the batch, so a
row's logits match its logits alone up to float32 rounding only (covering every
row there would make a lone request several times slower; bench/batch_invariance.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from charlm import cpu_step
from charlm.device_memory import allocate_state
from charlm.grammar import GRAMMAR_STATES, Automaton, GrammarTable
from charlm.graphs import prepare_step, try_capture
from charlm.models import CharModel, DecodeState
from charlm.prompt_feed import PROMPT_FEED, PromptFeed
from charlm.sampling import SamplingParams, SamplingRows, sample
from charlm.step_results import END, ID, LOGPROB, TOP, PendingStep

logger = logging.getLogger(__name__)

TOP_ALTERNATIVES = 10  # the most likely characters reported at each step, at most
REENCODE_ROWS = 8  # rows re-encoded together on CUDA: a fixed shape, padded with the scratch row
HOST_BUFFERS = 3  # results of steps in flight (pipelined engines run one step ahead)


@dataclasses.dataclass(frozen=True)
class NewSequence:
    prompt: list[int]  # non-empty
    params: SamplingParams
    seed: int
    top: bool = False  # report the most likely characters at each step
    grammar: Automaton | None = None  # draw only what it allows


class SlotDecoder:
    """The decode state, sampling rows and step of up to `slots` sequences of one model.

    Not thread-safe: one thread (an engine's) drives it.
    """

    def __init__(self, model: CharModel, slots: int, *, graphs: bool = True, name: str = "model",
                 fixed_shape: bool | None = None, feed_prompts: bool | None = None, compile: bool | None = None,
                 grammar_states: int = GRAMMAR_STATES, model_dir: Path | None = None):
        """`fixed_shape` (every step covers all rows), `feed_prompts` (short prompts ride the step)
        and `compile` (torch.compile of the fixed-shape step, at `warm_up`) default to whether the
        model is on CUDA; tests set them to run those paths on a CPU. `grammar_states` is the
        capacity of the grammar table the rows share; `model_dir`, where the model came from,
        may carry its exported CPU step (`charlm.cpu_onnx`)."""
        self.model, self.slots, self.name, self.model_dir = model, slots, name, model_dir
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        self.fixed = cuda if fixed_shape is None else fixed_shape
        self.window = model.decode_window
        self.scratch = slots  # an extra row that padding writes into
        self.state = allocate_state(model, slots + 1, self.device)
        self.sampling = SamplingRows.zeros(slots + 1, model.config.vocab_size, self.device)
        self.tokens = torch.zeros(slots + 1, dtype=torch.long, device=self.device)  # each row's next input
        self.feed = PromptFeed(slots + 1, PROMPT_FEED if (cuda if feed_prompts is None else feed_prompts) else 0,
                               self.device)
        self.top_k = min(TOP_ALTERNATIVES, model.config.vocab_size)
        self.output = torch.zeros(slots, TOP + 2 * self.top_k, device=self.device)  # packed results of a step
        self.grammar = GrammarTable(grammar_states, model.config.vocab_size, self.device)
        self.host = [torch.zeros(self.output.shape, pin_memory=cuda) for _ in range(HOST_BUFFERS)]
        self.reencode_rows = torch.full((REENCODE_ROWS,), self.scratch, dtype=torch.long, device=self.device)
        self.reencode_staging = torch.zeros(HOST_BUFFERS, slots // REENCODE_ROWS + 1, REENCODE_ROWS,
                                            dtype=torch.long, pin_memory=cuda)
        self.filled = [0] * (slots + 1)  # characters each row's window holds (models with a window)
        self.wants_top = [False] * (slots + 1)  # rows that report alternatives (always computed on CUDA)
        self.controlled = [False] * (slots + 1)  # rows that use penalties, logit bias, min-p or typical-p
        self.filtered = [False] * (slots + 1)  # rows that are greedy or use top-k or top-p (`SamplingParams.filtered`)
        self.grammar_keys: list[str | None] = [None] * (slots + 1)  # each row's automaton in the grammar table
        self.active = 0
        self.launched = 0
        self._view_cache: dict[int, tuple[DecodeState, SamplingRows, Tensor, Tensor]] = {}
        self.use_graphs = graphs and cuda and self.fixed
        self.compile = self.fixed and (cuda if compile is None else compile)
        # How this decoder steps, for /info: the model's decode attention, then what compiling cost.
        self.report: dict[str, object] = {**model.prepare_decoding(), "compiled": False}
        # Three variants of the fixed-shape step, by (controls, grammar): without the sampling
        # controls, with them, and with them and the grammar table; compiled at warm-up if asked, and
        # captured as graphs on CUDA. A row that uses neither comes out the same from all three, so
        # which one a step runs may depend on the other rows.
        variants = ((False, False), (True, False), (True, True))
        self.runs: dict[tuple[bool, bool], Callable[[], object]] = {
            (c, g): functools.partial(self._step, slots, None, controls=c, grammar=g) for c, g in variants}
        self.graphs: dict[tuple[bool, bool], torch.cuda.CUDAGraph | None] = dict.fromkeys(variants)
        self.reencode_graph: torch.cuda.CUDAGraph | None = None
        self.cpu_step: cpu_step.CompiledStep | None = None  # a CPU's plain rows, compiled at warm-up

    @property
    def state_bytes(self) -> int:
        return self.state.nbytes

    @torch.no_grad()
    def warm_up(self, prompt: list[int]) -> None:
        """Run every path once at full size, capturing the graphs on CUDA, so that the first
        requests meet no one-time costs. Leaves no row active."""
        if self.use_graphs or self.compile:
            self._prepare_steps()
        self.prepare_cpu_step()
        if self.use_graphs and self.window is not None:
            rows, model = self.reencode_rows, self.model
            self.reencode_graph = try_capture(f"{self.name} re-encode", lambda: model.reencode(self.state, rows))
        self.add(prompt, SamplingParams(), 0)
        self.active = self.slots  # the other rows hold empty sequences: a valid state
        if self.window is not None:
            self.filled[0] = self.window  # the re-encoding path too
        for _ in range(3):
            self.launch().result()
        self.active = 0

    def _prepare_steps(self) -> None:
        """Compile (if asked) and capture (on CUDA) the fixed-shape step's variants; report the cost."""
        seconds, errors = 0.0, []
        for (controls, grammar), run in list(self.runs.items()):
            label = f"{self.name} step" + (" with controls" if controls else "") + (" and grammar" if grammar else "")
            # The grammar's variant is captured as written: compiling it would lengthen every startup
            # for the few steps that have a grammar row.
            prepared = prepare_step(label, run, compile=self.compile and not grammar, graph=self.use_graphs)
            self.runs[controls, grammar], self.graphs[controls, grammar] = prepared.run, prepared.graph
            seconds += prepared.compile_s
            errors += [prepared.compile_error] if prepared.compile_error else []
        if self.compile:
            self.report.update(compiled=not errors, compile_s=round(seconds, 1))
            if errors:
                self.report["compile_error"] = errors[0]

    def prepare_cpu_step(self) -> None:
        """On a CPU, the lone row's step as `CHARLM_CPU_BACKEND` chooses (`charlm.cpu_step`);
        before any sequence is added."""
        if self.fixed or self.device.type != "cpu" or self.cpu_step is not None:
            return
        self.state.narrow(0, 1).zero_()  # an example row for a compile, overwritten by the first sequence
        self.cpu_step, report = cpu_step.prepare(self.model, self._views(1), self.name, self.model_dir)
        self.report.update(report)

    @property
    def graphed(self) -> bool:
        return all(graph is not None for graph in self.graphs.values())

    def add(self, prompt: list[int], params: SamplingParams, seed: int, top: bool = False) -> int:
        """Prefill one new sequence into the next free row; returns that row (see `add_group`)."""
        return self.add_group([NewSequence(prompt, params, seed, top)])

    def prompt_length(self, prompt: list[int]) -> int:
        """The characters of `prompt` that the model will see (those within its window)."""
        return min(len(prompt), self.window) if self.window is not None else len(prompt)

    @torch.no_grad()
    def add_group(self, group: list[NewSequence]) -> int:
        """Prefill new sequences whose prompts have one `prompt_length` (non-empty) into the next
        free rows; returns the first of those rows, the others follow in order.

        A prompt short enough is fed through the step (its row draws for real once the whole
        prompt is in); a longer one is prefilled here but for its last character, which is the
        first input of `launch`: on a CPU the whole group in one call, on CUDA each on its own
        (so that a row's arithmetic never depends on others). If prefill fails, every row of the
        group stays free.
        """
        first, count = self.active, len(group)
        if first + count > self.slots:
            raise RuntimeError(f"{count} new rows do not fit: {first} of {self.slots} are in use")
        prompts = [g.prompt[-self.window :] if self.window is not None else g.prompt for g in group]
        length = len(prompts[0])
        assert all(len(p) == length for p in prompts), "a group's prompts have one length"
        starts = self.grammar.acquire_all([g.grammar for g in group])
        self.state.narrow(first, count).zero_()
        fed = self.feed.fits(length - 1)
        if not fed and length > 1:
            heads = [p[:-1] for p in prompts]
            chunk = 1 if self.fixed else count  # CUDA: one row per call, whatever arrives beside it
            try:
                for offset in range(0, count, chunk):
                    tokens = torch.tensor(heads[offset : offset + chunk], device=self.device)  # (chunk, length - 1)
                    self.model.prefill(tokens, self.state.narrow(first + offset, tokens.size(0)))
            except BaseException:
                self.grammar.release_all([g.grammar for g in group])
                raise
        for row, (sequence, ids, start) in enumerate(zip(group, prompts, starts, strict=True), start=first):
            self.tokens[row] = ids[0] if fed else ids[-1]
            self.feed.start(row, ids[1:] if fed else [])
            self.filled[row] = 0 if fed else length - 1
            self.sampling.set_row(row, sequence.params, sequence.seed, sequence.prompt, start)
            self.wants_top[row] = sequence.top
            self.controlled[row] = sequence.params.controlled
            self.filtered[row] = sequence.params.filtered
            self.grammar_keys[row] = sequence.grammar.key if sequence.grammar is not None else None
        self.active += count
        return first

    @torch.no_grad()
    def remove(self, row: int) -> int | None:
        """Free `row`: the last active row moves into it. Returns the moved row's old index."""
        last = self.active - 1
        self.active -= 1
        if (key := self.grammar_keys[row]) is not None:
            self.grammar.release(key)
            self.grammar_keys[row] = None
        if row == last:
            return None
        self.state.copy_row(last, row)
        self.sampling.copy_row(last, row)
        self.tokens[row] = self.tokens[last]
        self.feed.copy_row(last, row)
        self.filled[row] = self.filled[last]
        self.wants_top[row] = self.wants_top[last]
        self.controlled[row] = self.controlled[last]
        self.filtered[row] = self.filtered[last]
        self.grammar_keys[row], self.grammar_keys[last] = self.grammar_keys[last], None
        return last

    def clear(self) -> None:
        """Forget every active row (after a failure: their state is not trusted)."""
        for row in range(self.active):
            if (key := self.grammar_keys[row]) is not None:
                self.grammar.release(key)
                self.grammar_keys[row] = None
        self.active = 0

    @torch.no_grad()
    def launch(self) -> PendingStep:
        """Advance every active row by one character; returns without waiting on CUDA."""
        n = self.active
        drew = self.feed.advance(n)
        self._make_room(n)
        grammar = any(key is not None for key in self.grammar_keys[:n])
        controls = grammar or any(self.controlled[:n])  # the grammar's graph has the controls too
        if (graph := self.graphs[controls, grammar]) is not None:
            graph.replay()
        elif self.fixed:
            self.runs[controls, grammar]()
        elif self.cpu_step is not None and n == 1 and not controls and not self.wants_top[0]:
            self.cpu_step.run_for(filters=self.filtered[0])(*self._views(1))
        else:
            filled = max(self.filled[:n]) + 1 if self.window is not None else None
            self._step(n, filled, top=any(self.wants_top[:n]), controls=controls, grammar=grammar,
                       filters=any(self.filtered[:n]))
        if self.window is not None:
            self.filled[:n] = [f + 1 for f in self.filled[:n]]
        host = self.host[self.launched % HOST_BUFFERS]
        self.launched += 1
        cuda = self.device.type == "cuda"
        host[:n].copy_(self.output[:n], non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        return PendingStep(host, n, self.top_k, event, drew, grammar)

    def _step(self, rows: int, filled: int | None, top: bool = True, controls: bool = False,
              grammar: bool = False, filters: bool = True) -> None:
        """The step proper, over rows [0, rows): model, sampling (with the sampling controls when
        `controls`, the grammar table when `grammar`, greedy rows, top-k and top-p when `filters`),
        packed results (the top alternatives only when `top`). Fixed shapes for a fixed `rows`, no
        host synchronisation: this is what the CUDA graphs record."""
        state, sampling, tokens, output = self._views(rows)
        logits = self.model.step(tokens, state, filled)  # (rows, V)
        table = self.grammar if grammar else None
        if self.feed.limit:
            feeding = self.feed.feeding(rows)  # (rows,) their draws do not count
            draw = sample(logits, sampling, ~feeding, controls, table, filters)
            tokens.copy_(self.feed.next_inputs(rows, draw.ids, feeding))
        else:
            draw = sample(logits, sampling, controls=controls, grammar=table, filters=filters)
            tokens.copy_(draw.ids)
        ends = draw.ends if draw.ends is not None else torch.zeros_like(draw.logprobs)  # (rows,)
        if top:
            top_logprobs, top_ids = draw.log_softmax.topk(self.top_k, dim=-1)  # (rows, K)
            packed = [draw.ids[:, None].float(), draw.logprobs[:, None], ends[:, None], top_ids.float(), top_logprobs]
            output.copy_(torch.cat(packed, dim=1))  # (rows, 3 + 2K)
        else:
            output[:, ID] = draw.ids
            output[:, LOGPROB] = draw.logprobs
            if draw.ends is not None:
                output[:, END] = draw.ends

    def _views(self, rows: int) -> tuple[DecodeState, SamplingRows, Tensor, Tensor]:
        """The state, sampling rows, next inputs and results of rows [0, rows), as views made once
        per row count: on a CPU, making them anew each step costs more than some of the step."""
        views = self._view_cache.get(rows)
        if views is None:
            views = self._view_cache[rows] = (
                self.state.narrow(0, rows), self.sampling.narrow(rows), self.tokens[:rows], self.output[:rows])
        return views

    def _make_room(self, n: int) -> None:
        """Re-encode the active rows whose window is full, before they take another character."""
        if self.window is None:
            return
        full = [row for row in range(n) if self.filled[row] >= self.window]
        if not full:
            return
        if not self.fixed:
            self.model.reencode(self.state, torch.tensor(full))
        else:  # fixed chunks, padded with the scratch row: each row's arithmetic is the same alone
            staging = self.reencode_staging[self.launched % HOST_BUFFERS]
            for index, start in enumerate(range(0, len(full), REENCODE_ROWS)):
                chunk = full[start : start + REENCODE_ROWS]
                staging[index] = torch.tensor(chunk + [self.scratch] * (REENCODE_ROWS - len(chunk)))
                self.reencode_rows.copy_(staging[index], non_blocking=True)
                if self.reencode_graph is not None:
                    self.reencode_graph.replay()
                else:
                    self.model.reencode(self.state, self.reencode_rows)
        for row in full:
            self.filled[row] = self.model.reencoded_length
