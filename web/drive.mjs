// Drive the page in headless Chromium: load, pick an image, paint a fixed stroke, run, screenshot.
//   node web/drive.mjs URL OUT_DIR [--chromium /usr/bin/chromium] [--image 0] [--seed 3]
// Writes OUT_DIR/result.json (the mask the page used, its fill, steps/s) and OUT_DIR/page.png.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const [url, outDir] = args;
if (!url || !outDir) { console.error("usage: node drive.mjs URL OUT_DIR [--chromium PATH] [--image I] [--seed S]"); process.exit(2); }

const browser = await puppeteer.launch({
  executablePath: opt("--chromium", "/usr/bin/chromium"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.setViewport({ width: 900, height: 760 });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), { timeout: 120000 });
  if ((await page.evaluate(() => document.body.dataset.state)) === "error") {
    throw new Error(`page failed to load: ${await page.$eval("#status", (e) => e.textContent)}\n${logs.join("\n")}`);
  }
  await page.evaluate((i) => window.lambdaBlocks.select(i), Number(opt("--image", "0")));
  await page.$eval("#seed", (e, s) => { e.value = s; }, opt("--seed", "3"));
  // A fixed stroke in image coordinates (fractions of the canvas), painted with the mouse.
  const box = await (await page.$("#paint")).boundingBox();
  const at = (fx, fy) => [box.x + fx * box.width, box.y + fy * box.height];
  const stroke = [[0.25, 0.3], [0.45, 0.4], [0.65, 0.55], [0.7, 0.75]];
  await page.mouse.move(...at(...stroke[0]));
  await page.mouse.down();
  for (const p of stroke.slice(1)) await page.mouse.move(...at(...p), { steps: 12 });
  await page.mouse.up();
  await page.click("#run");
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), { timeout: 300000 });
  const result = await page.evaluate(() => window.lambdaBlocks.state.lastResult);
  if (!result) throw new Error(`no result: ${await page.$eval("#status", (e) => e.textContent)}\n${logs.join("\n")}`);
  result.status = await page.$eval("#status", (e) => e.textContent);
  writeFileSync(join(outDir, "result.json"), JSON.stringify(result));
  await page.screenshot({ path: join(outDir, "page.png") });
  console.log(result.status);
} finally {
  await browser.close();
}
