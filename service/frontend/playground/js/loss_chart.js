// The Train view's loss chart, drawn by uPlot (vendor/uplot: index.html loads it as the global
// `uPlot`). Points are kept raw, one row per step: the training loss of the progress events (one
// batch each: noisy) and the validation loss of the evaluations (an average already). The training
// curve drawn is their exponential moving average (the smoothing slider), debiased as TensorBoard's
// is, so its first points are not pulled towards zero; the raw points stay behind it, faint. A log
// y axis is another kind of uPlot scale, so switching it builds the chart afresh; the data stays.

const COLORS = { raw: "rgba(31, 95, 191, 0.28)", train: "#1f5fbf", valid: "#d55e00" };  // blue and vermillion: any colour vision
const HEIGHT = 280;  // px

/** The exponential moving average of `values` (nulls skipped, kept null), debiased. */
export function smooth(values, weight) {
  let average = 0;
  let count = 0;
  return values.map((value) => {
    if (value === null) return null;
    count += 1;
    average = average * weight + (1 - weight) * value;
    return weight > 0 ? average / (1 - weight ** count) : value;
  });
}

export class LossChart {
  /** `container`: the element the chart draws in; its data-train-points and data-valid-points count the points. */
  constructor(container) {
    this.container = container;
    this.smoothing = 0.6;
    this.log = false;
    this.plot = null;
    this.framePending = false;
    this.clear();
    new ResizeObserver(() => this.plot?.setSize(this.size())).observe(container);
  }

  /** Forget every point (a new job). */
  clear() {
    this.steps = [];
    this.train = [];  // per row, the progress event's training loss, or null
    this.valid = [];  // per row, the evaluation's validation loss, or null
    this.redraw();
  }

  /** A metrics event's losses at `step`: a progress event's training loss, or an evaluation's validation loss. */
  add(step, { train = null, valid = null }) {
    const row = this.rowFor(step);
    if (train !== null) this.train[row] = train;
    if (valid !== null) this.valid[row] = valid;
    this.redraw();
  }

  /** The row of `step`, made where the steps' order puts it (a resumed job may go back a little). */
  rowFor(step) {
    let row = this.steps.length;
    while (row > 0 && this.steps[row - 1] > step) row -= 1;
    if (row > 0 && this.steps[row - 1] === step) return row - 1;
    this.steps.splice(row, 0, step);
    this.train.splice(row, 0, null);
    this.valid.splice(row, 0, null);
    return row;
  }

  setSmoothing(weight) {
    this.smoothing = weight;
    this.plot?.setSeries(1, { show: weight > 0 });  // unsmoothed, the curve is the raw points
    this.redraw();
  }

  setLog(log) {
    this.log = log;
    this.plot?.destroy();
    this.plot = null;
    this.redraw();
  }

  /** Draw at the next frame, once however many points came meanwhile. */
  redraw() {
    this.container.dataset.trainPoints = String(this.train.filter((v) => v !== null).length);
    this.container.dataset.validPoints = String(this.valid.filter((v) => v !== null).length);
    if (this.framePending) return;
    this.framePending = true;
    requestAnimationFrame(() => {
      this.framePending = false;
      this.draw();
    });
  }

  draw() {
    const data = [this.steps, this.train, smooth(this.train, this.smoothing), this.valid];
    if (this.plot === null) {
      this.plot = new globalThis.uPlot(this.options(), data, this.container);
      this.plot.setSeries(1, { show: this.smoothing > 0 });
    } else {
      this.plot.setData(data);
    }
  }

  size() {
    return { width: Math.max(this.container.clientWidth, 200), height: HEIGHT };
  }

  options() {
    const loss = (u, value) => (value === null || value === undefined ? "–" : value.toFixed(4));
    return {
      ...this.size(),
      scales: { x: { time: false }, y: this.log ? { distr: 3, log: 10 } : { auto: true } },
      axes: [{ label: "step" }, { label: this.log ? "loss (log scale)" : "loss" }],
      series: [
        { label: "step" },
        { label: "training, each batch", stroke: COLORS.raw, width: 1, spanGaps: true, value: loss, points: { show: false } },
        { label: "training", stroke: COLORS.train, width: 2, spanGaps: true, value: loss, points: { show: false } },
        {
          label: "validation", stroke: COLORS.valid, width: 2, spanGaps: true, value: loss,
          points: { show: true, size: 6, fill: COLORS.valid },
        },
      ],
      cursor: { drag: { x: false, y: false } },
    };
  }
}
