// The course website's figures and sliders, drawn with the local plotly.js (no network).
//  - <div class="indistill-figure">: a stored figure; its plotly JSON is drawn live, its PNG shown until then
//    (and for good where plotly.js cannot run).
//  - <div class="indistill-slider" data-slider="NAME">: an explorer's precomputed states
//    (window.indistillSliders[NAME], from indistill_lab.viz.sliders): one input per control, redrawing the
//    recorded figures and status; holder.dataset.frame is the state shown once its figures are drawn.
(function () {
  "use strict";
  const CONFIG = {responsive: true, displaylogo: false};

  function drawFigure(holder) {
    const spec = JSON.parse(holder.querySelector("script.indistill-plotly").textContent);
    const div = document.createElement("div");
    div.className = "indistill-plot";
    holder.appendChild(div);
    return Plotly.newPlot(div, spec.data || [], spec.layout || {}, CONFIG)
      .then(() => holder.classList.add("drawn"))
      .catch((error) => { div.remove(); console.warn("figure kept as its PNG:", error); });
  }

  function control(spec, value, onChange) {
    const label = document.createElement("label");
    label.append(spec.label + " ");
    let input;
    const readout = document.createElement("span");
    readout.className = "indistill-readout";
    if (spec.kind === "select") {
      input = document.createElement("select");
      spec.labels.forEach((text, i) => input.add(new Option(text, String(i))));
    } else {
      input = document.createElement("input");
      Object.assign(input, {type: "range", min: 0, max: spec.labels.length - 1, step: 1});
    }
    input.value = String(value);
    const show = () => { readout.textContent = spec.kind === "select" ? "" : " " + spec.labels[Number(input.value)]; };
    input.addEventListener("input", () => { show(); onChange(Number(input.value)); });
    show();
    label.append(input, readout);
    return label;
  }

  function buildSlider(holder) {
    const states = (window.indistillSliders || {})[holder.dataset.slider];
    if (!states) {
      holder.textContent = "This slider's states are missing (rebuild the site with make book).";
      console.error("no states for slider " + holder.dataset.slider);
      return;
    }
    const controls = states.controls;
    const index = controls.map((c) => c.start);
    const strides = controls.map((_, k) => controls.slice(k + 1).reduce((n, c) => n * c.labels.length, 1));
    const bar = document.createElement("div");
    bar.className = "indistill-controls";
    const status = document.createElement("div");
    status.className = "indistill-status";
    const plots = states.frames[0].figures.map(() => {
      const div = document.createElement("div");
      div.className = "indistill-plot";
      return div;
    });
    let pending = Promise.resolve();
    const redraw = () => {
      const at = index.reduce((n, i, k) => n + i * strides[k], 0);
      const frame = states.frames[at];
      status.innerHTML = frame.status;
      pending = pending
        .then(() => Promise.all(frame.figures.map((f, i) => Plotly.react(plots[i], f.data || [], f.layout || {}, CONFIG))))
        .then(() => { holder.dataset.frame = String(at); });
    };
    controls.forEach((spec, k) => bar.appendChild(control(spec, index[k], (value) => { index[k] = value; redraw(); })));
    holder.append(bar, status, ...plots);
    redraw();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!window.Plotly) {
      console.warn("plotly.js did not load: figures stay as their PNGs, sliders are off");
      return;
    }
    document.querySelectorAll(".indistill-figure").forEach(drawFigure);
    document.querySelectorAll(".indistill-slider").forEach(buildSlider);
  });
})();
