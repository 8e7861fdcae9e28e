// The page's sampling math, shared by the page (app.js) and the Node checks (tests/test_export.py).
// Python twins: lambda_blocks.export.web_noise and lambda_blocks.export.ddim_onnx.

// mulberry32: a 32-bit PRNG; uniforms in (0, 1) so that log() stays finite.
export function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a) >>> 0;
    t = ((t + Math.imul(t ^ (t >>> 7), 61 | t)) >>> 0) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

// n standard normals from mulberry32(seed), Box-Muller pairs (cos, sin).
export function gaussian(seed, n) {
  const next = mulberry32(seed);
  const out = new Float64Array(n + (n & 1));
  for (let i = 0; i < out.length; i += 2) {
    const u1 = next(), u2 = next();
    const rad = Math.sqrt(-2 * Math.log(u1));
    out[i] = rad * Math.cos(2 * Math.PI * u2);
    out[i + 1] = rad * Math.sin(2 * Math.PI * u2);
  }
  return out.subarray(0, n);
}

// DDIM, eta 0, from pure noise, x0 clamped to [-1, 1], known pixels pasted back at the end.
//   runModel(input Float32Array (2C+1)*H*W, t) -> Promise<Float32Array C*H*W>
//   masked: Float32Array C*H*W (holes 0), mask: Float32Array H*W (1 = hole), noise: Float64Array C*H*W
//   onStep(i, total): progress callback
export async function ddim(runModel, recipe, masked, mask, noise, onStep = () => {}) {
  const c = recipe.channels, hw = recipe.image_size * recipe.image_size, n = c * hw;
  const x = Float64Array.from(noise);
  const input = new Float32Array((2 * c + 1) * hw);
  input.set(masked, n);
  input.set(mask, 2 * n);
  for (let i = 0; i < recipe.timesteps.length; i++) {
    const a = recipe.abar[i], ap = recipe.abar_prev[i];
    for (let j = 0; j < n; j++) input[j] = x[j];
    const out = await runModel(input, recipe.timesteps[i]);
    const sa = Math.sqrt(a), s1a = Math.sqrt(1 - a), sap = Math.sqrt(ap), s1ap = Math.sqrt(Math.max(1 - ap, 0));
    for (let j = 0; j < n; j++) {
      let x0;
      if (recipe.prediction === "v") x0 = sa * x[j] - s1a * out[j];
      else if (recipe.prediction === "eps") x0 = (x[j] - s1a * out[j]) / sa;
      else x0 = out[j];
      x0 = Math.min(1, Math.max(-1, x0));
      const eps = (x[j] - sa * x0) / s1a;
      x[j] = sap * x0 + s1ap * eps;
    }
    onStep(i + 1, recipe.timesteps.length);
  }
  for (let j = 0; j < n; j++) {
    const m = mask[j % hw];
    x[j] = m * x[j] + (1 - m) * masked[j];
  }
  return x;
}
