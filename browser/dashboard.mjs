// Loads Haiyun's dashboard in headless Chromium and checks what a person would: every pool and queue is listed, the
// numbers change live, utilisation over time is charted, and a pending job's explanation opens. Usage: node dashboard.mjs URL POOLS QUEUES JOB SHOT
// [churn] [usage]; with `churn` the pools' figures must change too, not only the time of the last update; with `usage`
// the usage ledger's table must list rows by queue, and by pool once asked.
// Exits non-zero with a one-line reason when a check fails; writes a screenshot to SHOT either way.
import { chromium } from "playwright-core";

const [url, pools, queues, job, shot, churn, usage] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
let failure = null;
try {
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#pools tr").length > 1, null, { timeout: 30000 });
  const text = async (sel) => (await page.locator(sel).innerText());
  for (const p of pools.split(",")) {
    if (!(await text("#pools")).includes(p)) throw new Error(`pool ${p} is not on the dashboard`);
  }
  for (const q of queues.split(",")) {
    if (!(await text("#queues")).includes(q)) throw new Error(`queue ${q} is not on the dashboard`);
  }
  const first = await text("#status");
  await page.waitForFunction((old) => document.querySelector("#status").textContent !== old, first, { timeout: 30000 });
  if (churn === "churn") {
    const before = await text("#pools");
    await page.waitForFunction((old) => document.querySelector("#pools").innerText !== old, before, { timeout: 60000 })
      .catch(() => { throw new Error("the pools' figures did not change within 60 s"); });
  }
  // Utilisation over time: a line of at least two samples per pool and model (the page refetches every 15 s).
  await page.waitForFunction(() => [...document.querySelectorAll("#history polyline.alloc")].some(l => (l.getAttribute("points") || "").includes(" ")),
    null, { timeout: 60000 }).catch(() => { throw new Error("no utilisation history on the dashboard within 60 s"); });
  if (usage === "usage") {
    await page.waitForFunction(() => document.querySelectorAll("#usage tr").length > 1, null, { timeout: 30000 })
      .catch(() => { throw new Error("no usage rows on the dashboard within 30 s"); });
    const q = queues.split(",")[0];
    if (!(await text("#usage")).includes(q)) throw new Error(`queue ${q} is not in the usage table`);
    await page.selectOption("#usage-by", "pool");
    await page.waitForFunction((p) => document.querySelector("#usage").innerText.includes(p), pools.split(",")[0], { timeout: 30000 })
      .catch(() => { throw new Error("the usage table did not regroup by pool"); });
  }
  await page.getByText(job, { exact: true }).click();
  const why = await text("#explain");
  if (!why.includes("Blocked at") || !why.includes("Estimated start")) throw new Error(`no explanation for ${job}: ${why}`);
} catch (e) {
  failure = e;
} finally {
  await page.screenshot({ path: shot, fullPage: true });
  await browser.close();
}
if (failure) {
  console.error(String(failure.message || failure).split("\n")[0]);
  process.exit(1);
}
console.log("dashboard ok: pools, queues, live updates, utilisation history, " + (usage === "usage" ? "usage by queue and pool, " : "") + "and an explanation; screenshot at " + shot);
