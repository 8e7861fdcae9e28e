// The page: load recipe.json + model.onnx, paint a hole, run DDIM with onnxruntime-web.
import * as ort from "./vendor/ort.wasm.min.mjs";
import { ddim, gaussian } from "./sampler.js";

ort.env.wasm.wasmPaths = new URL("./vendor/", document.baseURI).href;  // resolved against the page, not the module
ort.env.wasm.numThreads = 1;

const $ = (id) => document.getElementById(id);
const state = { recipe: null, session: null, images: [], index: 0, mask: null, lastResult: null };

function setStatus(text, phase) {
  $("status").textContent = text;
  if (phase) document.body.dataset.state = phase;
}

async function loadImage(src, size) {
  const img = new Image();
  img.src = src;
  await img.decode();
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  return { el: img, rgba: g.getImageData(0, 0, size, size).data };
}

function draw() {
  const size = state.recipe.image_size, g = $("paint").getContext("2d");
  const out = g.createImageData(size, size), rgba = state.images[state.index].rgba;
  for (let p = 0; p < size * size; p++) {
    const hole = state.mask[p] > 0;
    for (let ch = 0; ch < 3; ch++) out.data[4 * p + ch] = hole ? 128 : rgba[4 * p + ch];
    out.data[4 * p + 3] = 255;
  }
  g.putImageData(out, 0, 0);
}

function paintAt(ev) {
  const size = state.recipe.image_size, box = $("paint").getBoundingClientRect();
  const x = ((ev.clientX - box.left) / box.width) * size, y = ((ev.clientY - box.top) / box.height) * size;
  const r = Number($("brush").value) || 1.5;
  for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) {
    if ((j + 0.5 - x) ** 2 + (i + 0.5 - y) ** 2 <= r * r) state.mask[i * size + j] = 1;
  }
  draw();
}

function select(i) {
  state.index = i;
  document.querySelectorAll("#thumbs img").forEach((el, k) => el.classList.toggle("sel", k === i));
  draw();
}

// The image in [-1, 1], CHW, holes zeroed; the mask HW (1 = hole).
function inputs() {
  const size = state.recipe.image_size, hw = size * size, rgba = state.images[state.index].rgba;
  const masked = new Float32Array(3 * hw), mask = Float32Array.from(state.mask);
  for (let p = 0; p < hw; p++) for (let ch = 0; ch < 3; ch++) {
    masked[ch * hw + p] = mask[p] > 0 ? 0 : rgba[4 * p + ch] / 127.5 - 1;
  }
  return { masked, mask };
}

async function run() {
  const rec = state.recipe, size = rec.image_size, hw = size * size, c = rec.channels;
  if (!state.mask.some((m) => m > 0)) { setStatus("paint a hole first", "idle"); return null; }
  $("run").disabled = true;
  setStatus("sampling…", "running");
  const { masked, mask } = inputs();
  const seed = Number($("seed").value) | 0;
  const noise = gaussian(seed, c * hw);
  const runModel = async (x, t) => {
    const feeds = {
      x: new ort.Tensor("float32", x, [1, 2 * c + 1, size, size]),
      t: new ort.Tensor("int64", BigInt64Array.from([BigInt(t)]), [1]),
    };
    return (await state.session.run(feeds)).out.data;
  };
  const t0 = performance.now();
  const x = await ddim(runModel, rec, masked, mask, noise, (i, n) => setStatus(`step ${i} / ${n}`));
  const ms = performance.now() - t0;
  const g = $("result").getContext("2d"), out = g.createImageData(size, size);
  for (let p = 0; p < hw; p++) {
    for (let ch = 0; ch < 3; ch++) out.data[4 * p + ch] = Math.round((Math.min(1, Math.max(-1, x[ch * hw + p])) + 1) * 127.5);
    out.data[4 * p + 3] = 255;
  }
  g.putImageData(out, 0, 0);
  const stepsPerS = rec.timesteps.length / (ms / 1000);
  state.lastResult = { image: state.index, seed, mask: Array.from(mask), fill: Array.from(x), ms, steps_per_s: stepsPerS };
  setStatus(`${rec.timesteps.length} DDIM steps in ${ms.toFixed(0)} ms: ${stepsPerS.toFixed(1)} steps/s (onnxruntime-web, wasm, 1 thread)`, "done");
  $("run").disabled = false;
  return state.lastResult;
}

async function main() {
  try {
    state.recipe = await (await fetch("recipe.json")).json();
    const rec = state.recipe, size = rec.image_size;
    for (const id of ["paint", "result"]) { $(id).width = size; $(id).height = size; }
    state.mask = new Float32Array(size * size);
    const m = rec.metrics || {}, f = rec.classical_floor || {};
    const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "–");
    const floorL = (k) => fmt(f[k] && f[k].lpips);
    $("card").textContent = `Model ${rec.model} (${(rec.onnx.bytes / 1e6).toFixed(1)} MB ONNX; max |ONNX − PyTorch| ` +
      `${rec.onnx.max_abs_err.toExponential(1)}). Its LPIPS on the ${m.n_eval_images || "?"} test problems: ${fmt(m.lpips)}; ` +
      `classical fills of the same problems: biharmonic ${floorL("biharmonic")}, Telea ${floorL("telea")} ` +
      `(lower is better; compare before trusting a fill). ${rec.steps} DDIM steps (${rec.spacing}), ${rec.prediction}-prediction.`;
    state.images = await Promise.all(rec.images.map((src) => loadImage(src, size)));
    state.images.forEach((im, i) => { im.el.onclick = () => select(i); $("thumbs").appendChild(im.el); });
    select(0);
    state.session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
    $("run").disabled = false;
    setStatus("ready: paint a hole and press Inpaint", "ready");
  } catch (err) {
    setStatus(`error: ${err}`, "error");
    throw err;
  }
}

let painting = false;
$("paint").addEventListener("pointerdown", (ev) => { painting = true; paintAt(ev); });
$("paint").addEventListener("pointermove", (ev) => { if (painting) paintAt(ev); });
window.addEventListener("pointerup", () => { painting = false; });
$("clear").onclick = () => { state.mask.fill(0); draw(); };
$("run").onclick = () => run();

// For scripted use (the headless-Chromium test): the state and the two actions.
window.lambdaBlocks = { state, run, select };
main();
