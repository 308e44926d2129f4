// Drives the real VS Code workbench (code-server) in headless Chromium with playwright-core:
// opens a file, types, asks for an inline suggestion and reads the ghost text from the editor's DOM.
// Usage: node vscode_e2e.mjs CONFIG.json   (written by tests/editors/test_vscode.py); prints one JSON line.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(import.meta.url);
const { chromium } = require(cfg.playwright);

const out = { steps: [] };
const log = (m) => out.steps.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${m}`);
const t0 = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The ghost text VS Code shows: the inline part (first line) and the lines below it, spaces normalized.
async function ghostText(page) {
  return page.evaluate(() => {
    const norm = (s) => (s ?? "").replace(/\u00a0/g, " ");
    const inline = [...document.querySelectorAll(".monaco-editor .view-lines .ghost-text-decoration")]
      .map((e) => norm(e.textContent))
      .join("");
    const below = [...document.querySelectorAll(".monaco-editor .ghost-text .view-line, .monaco-editor .ghost-text-view-line")]
      .map((e) => norm(e.textContent));
    const classes = [...new Set([...document.querySelectorAll("[class*=ghost]")].map((e) => e.className))];
    return { inline, below, classes, shown: inline.length > 0 || below.length > 0 };
  });
}

async function waitFor(what, fn, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

// The active editor's rendered lines, top to bottom, without any ghost text shown on them.
async function editorLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll(".editor-instance .monaco-editor .view-lines .view-line")]
      .map((e) => {
        const c = e.cloneNode(true);
        c.querySelectorAll("[class*=ghost-text]").forEach((g) => g.remove());
        return { top: parseFloat(e.style.top || "0"), text: (c.textContent ?? "").replace(/\u00a0/g, " ") };
      })
      .sort((a, b) => a.top - b.top)
      .map((l) => l.text),
  );
}

async function statusBarText(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll(".statusbar-item")].map((e) => e.textContent?.trim() ?? "").join(" | "),
  );
}

// Set a setting in the Settings editor as a user does; returns settings.json once it holds the value.
async function changeSetting(page, key, itemClass, hasText, value) {
  await sleep(300);
  await page.keyboard.press("F1");
  await page.waitForSelector(".quick-input-widget input", { state: "visible", timeout: 30000 });
  await page.keyboard.type("Preferences: Open User Settings", { delay: 10 });
  const cmd = page
    .locator(".quick-input-list .monaco-list-row", { hasText: /Preferences: Open User Settings(?! \(JSON\))/ })
    .first();
  await cmd.waitFor({ state: "visible", timeout: 30000 });
  await cmd.click();
  await page.waitForSelector(".settings-editor", { timeout: 30000 });
  await sleep(1000);
  await page.keyboard.press("Control+A"); // the search box keeps the last query
  await page.keyboard.type(key, { delay: 10 });
  const input = page.locator(`.settings-editor ${itemClass}`, { hasText }).locator("input").first();
  await input.waitFor({ state: "visible", timeout: 30000 });
  await input.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.type(String(value), { delay: 20 });
  await page.keyboard.press("Tab");
  // VS Code rewrites settings.json: read it once it parses and holds the new value (or time out).
  const readSettings = () => {
    try {
      const text = readFileSync(cfg.settingsFile, "utf8");
      return JSON.parse(text)[key] === value ? text : null;
    } catch {
      return null;
    }
  };
  return waitFor(`settings.json to hold the new ${key}`, async () => readSettings(), 20000);
}

async function closeSettings(page) {
  await page.keyboard.press("Control+W");
  await sleep(800);
  if (await page.$(".monaco-modal-editor-block")) {
    await page.keyboard.press("Escape");
    await sleep(500);
  }
}

let browser;
try {
  browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => log(`pageerror: ${e.message}`));
  await page.goto(`${cfg.url}/?folder=${encodeURIComponent(cfg.folder)}`, { waitUntil: "domcontentloaded" });
  await page.waitForSelector(".monaco-workbench", { timeout: 90000 });
  log("workbench");

  // Open the file through Quick Open, as a user would.
  const mod = "Control";
  await waitFor("the explorer", async () => (await page.$(".explorer-viewlet, .monaco-list")) !== null, 60000);
  await page.keyboard.press(`${mod}+P`);
  await page.waitForSelector(".quick-input-widget input", { state: "visible", timeout: 30000 });
  await page.keyboard.type(cfg.file, { delay: 20 });
  const row = page.locator(".quick-input-list .monaco-list-row", { hasText: cfg.file }).first();
  await row.waitFor({ state: "visible", timeout: 30000 });
  await row.click();
  await page.waitForSelector(".editor-instance .monaco-editor .view-lines", { timeout: 30000 });
  log("file open");

  // The extension reports ready in the status bar once its client is connected and the model loaded.
  out.status = await waitFor(
    "the CodeGen status bar item to show the model",
    async () => {
      const t = await statusBarText(page);
      return /CodeGen: [^|(]*\(cpu\)\s*(\||$)/.test(t) ? t : null;
    },
    120000,
  );
  log(`status bar: ${out.status.match(/CodeGen:[^|]*/)?.[0]}`);

  await page.click(".monaco-editor .view-lines");
  await page.keyboard.press(`${mod}+End`);
  await page.keyboard.type(cfg.type, { delay: 60 });
  log(`typed ${JSON.stringify(cfg.type)}`);

  // Ask for the inline suggestion explicitly (Alt+\ = editor.action.inlineSuggest.trigger) until it shows.
  const trigger = async () => {
    for (let i = 0; i < 30; i++) {
      const g = await ghostText(page);
      if (g.shown) return g;
      if (i % 5 === 0) await page.keyboard.press("Alt+Backslash");
      await sleep(500);
    }
    return ghostText(page);
  };
  out.first = await trigger();
  log(`ghost: ${JSON.stringify(out.first.inline)} + ${out.first.below.length} lines`);
  await page.screenshot({ path: cfg.screenshot });

  if (cfg.newMaxTokens) {
    // A user changes codegenLsp.maxNewTokens in the Settings editor: the extension must pass it on
    // (workspace/didChangeConfiguration) and the next suggestion must obey it.
    await page.keyboard.press("Escape");
    out.settingsJson = await changeSetting(
      page,
      "codegenLsp.maxNewTokens",
      ".setting-item-number",
      "Max New Tokens",
      cfg.newMaxTokens,
    );
    log("settings changed in the Settings editor");
    if (cfg.screenshotSettings) await page.screenshot({ path: cfg.screenshotSettings });
    await closeSettings(page);
    await page.locator(".tab", { hasText: cfg.file }).first().click();
    await sleep(500);
    await page.click(".editor-instance .monaco-editor .view-lines");
    await page.keyboard.press(`${mod}+End`);
    await page.keyboard.type(cfg.type2, { delay: 60 });
    log(`typed ${JSON.stringify(cfg.type2)}`);
    out.second = await trigger();
    log(`ghost after settings: ${JSON.stringify(out.second.inline)} + ${out.second.below.length} lines`);
    if (cfg.screenshot2) await page.screenshot({ path: cfg.screenshot2 });
  }

  // Accept the next word (Ctrl+Right), then the rest with Tab: the document then holds the suggestion.
  await page.keyboard.press(`${mod}+ArrowRight`);
  await sleep(500);
  out.afterWord = await editorLines(page);
  out.restAfterWord = await ghostText(page);
  await page.keyboard.press("Tab");
  await sleep(500);
  out.afterTab = await editorLines(page);
  // "CodeGen: Show status" writes codegen.status (with the acceptance figures) to the output channel.
  await page.keyboard.press("F1");
  await page.waitForSelector(".quick-input-widget input", { state: "visible", timeout: 30000 });
  await page.keyboard.type("CodeGen: Show status", { delay: 10 });
  const statusCmd = page.locator(".quick-input-list .monaco-list-row", { hasText: "Show status" }).first();
  await statusCmd.waitFor({ state: "visible", timeout: 30000 });
  await statusCmd.click();
  await sleep(1500);
  log("accepted a word, then the rest; status written");

  if (cfg.synthFile) {
    // "CodeGen: Synthesize program from comments" on the selected comment lines of another file.
    await page.keyboard.press("Escape");
    await page.keyboard.press(`${mod}+P`);
    await page.waitForSelector(".quick-input-widget input", { state: "visible", timeout: 30000 });
    await page.keyboard.type(cfg.synthFile, { delay: 20 });
    const row = page.locator(".quick-input-list .monaco-list-row", { hasText: cfg.synthFile }).first();
    await row.waitFor({ state: "visible", timeout: 30000 });
    await row.click();
    await page.waitForSelector(`.tab.active[data-resource-name="${cfg.synthFile}"]`, { timeout: 30000 });
    await sleep(500);
    await page.click(".editor-instance .monaco-editor .view-lines");
    await page.keyboard.press(`${mod}+A`);
    await page.keyboard.press("F1");
    await page.waitForSelector(".quick-input-widget input", { state: "visible", timeout: 30000 });
    await page.keyboard.type("CodeGen: Synthesize program from comments", { delay: 10 });
    const cmd = page.locator(".quick-input-list .monaco-list-row", { hasText: "Synthesize program" }).first();
    await cmd.waitFor({ state: "visible", timeout: 30000 });
    await cmd.click();
    log("synthesize");
    out.synthLines = await waitFor(
      "the synthesized program in the editor",
      async () => {
        const lines = await editorLines(page);
        return lines.length > cfg.synthLinesBefore || lines.join("\n").length > cfg.synthCharsBefore ? lines : null;
      },
      150000,
    );
    await sleep(1000);
    out.synthLines = await editorLines(page);
    log(`synthesized: ${out.synthLines.length} lines shown`);
    if (cfg.screenshotSynth) await page.screenshot({ path: cfg.screenshotSynth });
    // One undo restores the selected comment lines.
    await page.click(".editor-instance .monaco-editor .view-lines");
    await page.keyboard.press(`${mod}+Z`);
    await sleep(1000);
    out.synthUndone = await editorLines(page);
    log(`undone: ${out.synthUndone.length} lines shown`);
  }
  if (cfg.badModel) {
    // The user points codegenLsp.model at a directory that holds no model: the server warns and the model
    // loaded before serves on in its place, and the status bar names the stand-in.
    await page.keyboard.press("Escape");
    await changeSetting(page, "codegenLsp.model", ".setting-item", "local checkpoint directory", cfg.badModel);
    log("settings changed: codegenLsp.model -> a directory with no model");
    await closeSettings(page);
    await page.locator(".tab", { hasText: cfg.file }).first().click();
    await sleep(500);
    await page.click(".editor-instance .monaco-editor .view-lines");
    await page.keyboard.press(`${mod}+End`);
    await page.keyboard.type(cfg.type3, { delay: 60 }); // a request: the server loads the model now set
    // Once the request is answered, the item names the stand-in with a warning icon (not the busy spinner).
    out.fallbackStatus = await waitFor(
      "the status bar to name the stand-in",
      async () =>
        page.evaluate(() => {
          const item = [...document.querySelectorAll(".statusbar-item")].find((e) =>
            (e.textContent ?? "").includes(" instead of "),
          );
          return item && item.querySelector(".codicon-warning") ? item.textContent.trim() : null;
        }),
      120000,
    );
    log(`status bar: ${out.fallbackStatus.match(/CodeGen:[^|]*/)?.[0]}`);
    out.notifications = await page.evaluate(() =>
      [...document.querySelectorAll(".notifications-toasts .notification-list-item")].map((e) => e.textContent ?? ""),
    );
    if (cfg.screenshotFallback) await page.screenshot({ path: cfg.screenshotFallback });
  }
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack ? e.stack : e);
  try {
    const pages = browser ? browser.contexts().flatMap((c) => c.pages()) : [];
    if (pages[0]) {
      await pages[0].screenshot({ path: cfg.screenshot.replace(/\.png$/, "-failure.png") });
      out.statusBar = await statusBarText(pages[0]);
    }
  } catch {
    // best effort
  }
} finally {
  if (browser) await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
