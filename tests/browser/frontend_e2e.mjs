// Drives the official ComfyUI frontend served by a running comfyd in Debian's chromium
// (never a downloaded browser) and writes what it saw as JSON.
//
//   node frontend_e2e.mjs http://127.0.0.1:8188/ report.json
//
// Steps: boot the UI on a fresh profile, check the default graph and the node library
// (from /object_info), load an image-only API workflow, press the UI's Run button, wait
// for the SaveImage node to show the /api/view image, and find it in the Assets sidebar. Every same-origin request that
// answered 4xx/5xx is recorded, so a caller can tell which routes the frontend still misses.
// The script exits non-zero only when it cannot drive the page; judging the report is
// the caller's job (tests/test_browser_frontend.py).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, reportPath] = process.argv.slice(2);
if (!baseUrl || !reportPath) {
  console.error('usage: node frontend_e2e.mjs <server url> <report.json>');
  process.exit(2);
}
const origin = new URL(baseUrl).origin;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS || 60000);

// EmptyImage (blue, 0x0000ff) -> ImageInvert -> SaveImage: the saved image is yellow.
const WIDTH = 64, HEIGHT = 48, PREFIX = 'browser_e2e';
const WORKFLOW = {
  1: { class_type: 'EmptyImage', inputs: { width: WIDTH, height: HEIGHT, batch_size: 1, color: 0x0000ff } },
  2: { class_type: 'ImageInvert', inputs: { image: ['1', 0] } },
  3: { class_type: 'SaveImage', inputs: { images: ['2', 0], filename_prefix: PREFIX } },
};

const CLOSE_BUTTON = ['button[aria-label="Close"]', 'button[aria-label="close"]', '.p-dialog-close-button',
  'button:has(.pi-times)', 'button:has([class*="lucide--x"])'].join(', ');

const report = {
  url: baseUrl, steps: [], failed_requests: [], network_errors: [], offsite_requests: [],
  page_errors: [], console_errors: [], toasts: [], dialogs: [],
};
const step = (name, data = {}) => { report.steps.push({ name, ...data }); console.log(`[e2e] ${name}`, JSON.stringify(data)); };

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'comfyd-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 900 },
});

// Toasts (warnings, errors) can lie over the buttons we press: note their text, close them.
async function dismissToasts(page) {
  for (const toast of await page.locator('.p-toast-message:visible').all()) {
    report.toasts.push((await toast.innerText()).replace(/\s+/g, ' ').slice(0, 300));
    const close = toast.locator('.p-toast-close-button, button').first();
    if (await close.count()) await close.dispatchEvent('click');
  }
}

// Modal dialogs (templates browser, missing nodes) block the canvas: note their titles, close them.
async function dismissDialogs(page) {
  for (let i = 0; i < 5; i++) {
    const dialog = page.locator('.p-dialog:visible, [role="dialog"]:visible').first();
    if (!(await dialog.count())) return;
    report.dialogs.push((await dialog.innerText()).split('\n')[0].slice(0, 200));
    const close = dialog.locator(CLOSE_BUTTON).first();
    if (await close.count()) await close.dispatchEvent('click');  // a toast may lie over it
    else await page.keyboard.press('Escape');
    await page.waitForTimeout(500);
  }
}

async function run(page) {
  // the graph's node list (`nodes` in current litegraph, `_nodes` in older releases)
  await page.addInitScript(() => { window.__e2eNodes = () => window.app.graph.nodes ?? window.app.graph._nodes; });
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.origin === origin && r.status() >= 400) {
      report.failed_requests.push({ method: r.request().method(), path: u.pathname + u.search, status: r.status() });
    }
  });
  page.on('request', (r) => {
    const u = r.url();
    if (/^https?:/.test(u) && new URL(u).origin !== origin) report.offsite_requests.push(u);
  });
  page.on('requestfailed', (r) => {
    const u = r.url();
    // aborted 404s are already in failed_requests; off-site hosts are unreachable by design
    if (/^https?:/.test(u) && new URL(u).origin === origin && r.failure()?.errorText !== 'net::ERR_ABORTED') {
      report.network_errors.push({ method: r.method(), url: u, error: r.failure()?.errorText });
    }
  });
  page.on('pageerror', (e) => report.page_errors.push(String(e.message || e).slice(0, 500)));
  page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(m.text().slice(0, 500)); });

  // 1. Boot: the app and its canvas come up on a fresh profile. A first run may open the
  //    templates browser (thumbnails from /templates/) or other dialogs: note them, close
  //    them, and if the canvas was left empty load the default graph as "Load Default" does.
  await page.goto(baseUrl);
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: STEP_TIMEOUT });
  await page.waitForTimeout(3000);
  await dismissToasts(page);
  // template cards show their /templates/<name>-1.webp thumbnails (as blob: URLs in some releases)
  report.template_thumbnails_loaded = await page.evaluate(() => [...document.querySelectorAll('[role="dialog"] img')]
    .filter((i) => i.complete && i.naturalWidth > 0).length);
  await dismissDialogs(page);
  report.default_graph_loaded_by_test = await page.evaluate(async () => {
    if (window.__e2eNodes().length > 0) return false;
    await window.app.loadGraphData();
    return true;
  });
  await page.waitForFunction(() => window.__e2eNodes().length > 0, null, { timeout: STEP_TIMEOUT });
  await page.waitForTimeout(500);  // one more frame drawn
  await dismissDialogs(page);
  const boot = await page.evaluate(() => {
    const canvasEl = document.querySelector('#graph-canvas') || document.querySelector('canvas');
    return {
      frontend_version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
      default_graph: window.__e2eNodes().map((n) => n.type),
      drawn_nodes: window.app.canvas.visible_nodes?.length ?? null,
      canvas_size: canvasEl ? [canvasEl.width, canvasEl.height] : null,
    };
  });
  Object.assign(report, boot);
  step('booted', { ...boot, dialogs: report.dialogs, template_thumbnails_loaded: report.template_thumbnails_loaded,
                   default_graph_loaded_by_test: report.default_graph_loaded_by_test });

  // 2. Node definitions: every /object_info class is a registered node type, and the
  //    node library sidebar lists the top-level categories.
  const defs = await page.evaluate(async () => {
    const info = await (await fetch('/api/object_info')).json();
    const registered = window.LiteGraph?.registered_node_types || {};
    const categories = [...new Set(Object.values(info).map((d) => String(d.category || '').split('/')[0]).filter(Boolean))];
    const defaultGraph = window.__e2eNodes().map((n) => n.type);
    return { count: Object.keys(info).length, missing: Object.keys(info).filter((k) => !(k in registered)), categories,
             default_graph_missing: [...new Set(defaultGraph.filter((t) => !(t in info)))] };
  });
  report.default_graph_missing = defs.default_graph_missing;
  report.object_info_count = defs.count;
  report.unregistered_node_types = defs.missing;
  await page.click('[data-testid="node-library-tab-button"], .node-library-tab-button', { timeout: STEP_TIMEOUT });
  await page.waitForFunction((cats) => cats.some((c) => document.body.innerText.includes(c)), defs.categories,
    { timeout: STEP_TIMEOUT });
  const libraryText = await page.evaluate(() => document.body.innerText);
  report.library_categories = defs.categories.filter((c) => libraryText.includes(c));
  report.library_categories_missing = defs.categories.filter((c) => !libraryText.includes(c));
  step('node library', { object_info: defs.count, default_graph_missing: defs.default_graph_missing, unregistered: defs.missing.length,
    categories_shown: report.library_categories.length, categories_missing: report.library_categories_missing });
  await page.click('[data-testid="node-library-tab-button"], .node-library-tab-button'); // close it again

  // 3. Load the image-only workflow as a user would open an API-format file.
  await page.evaluate(async (wf) => { await window.app.loadApiJson(wf, 'browser_e2e.json'); }, WORKFLOW);
  await page.waitForFunction(() => window.__e2eNodes().some((n) => n.type === 'ImageInvert'), null, { timeout: STEP_TIMEOUT });
  await dismissDialogs(page);
  report.loaded_graph = await page.evaluate(() => window.__e2eNodes().map((n) => n.type).sort());
  step('workflow loaded', { nodes: report.loaded_graph });

  // 4. Queue it with the UI's Run button (the legacy menu's "Queue Prompt" on old releases).
  await dismissToasts(page);
  const runButton = page.locator('[data-testid="queue-button"]:visible, button.comfy-queue-btn:visible').first();
  await runButton.click({ timeout: STEP_TIMEOUT });
  step('run clicked');

  // 5. The SaveImage node shows the result: an <img> from /api/view, fully loaded.
  const handle = await page.waitForFunction(() => {
    const node = window.__e2eNodes().find((n) => n.type === 'SaveImage');
    const img = node?.imgs?.[0];
    return img && img.complete && img.naturalWidth > 0 ? img : null;
  }, null, { timeout: STEP_TIMEOUT });
  report.output_image = await handle.evaluate((img) => {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const [r, gr, b, a] = g.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
    const u = new URL(img.src);
    return { tag: img.tagName, src: u.pathname + u.search, width: img.naturalWidth, height: img.naturalHeight,
             center_rgba: [r, gr, b, a], filename: u.searchParams.get('filename'), type: u.searchParams.get('type') };
  });
  step('output image', report.output_image);

  // 6. The Assets sidebar lists the run's output from /api/history as a page <img>.
  await page.click('.assets-tab-button, button[aria-label="Assets"]', { timeout: STEP_TIMEOUT });
  const listed = await page.waitForFunction((name) => [...document.querySelectorAll('img')].find((img) => {
    const u = new URL(img.src, location.href);
    return u.pathname === '/api/view' && u.searchParams.get('filename') === name && img.complete && img.naturalWidth > 0;
  }) || null, report.output_image.filename, { timeout: STEP_TIMEOUT });
  report.assets_image = await listed.evaluate((img) => {
    const u = new URL(img.src);
    return { src: u.pathname + u.search, width: img.naturalWidth, height: img.naturalHeight, in_dom: img.isConnected };
  });
  step('assets panel', report.assets_image);
  await page.screenshot({ path: reportPath.replace(/\.json$/, '') + '.png' });
}

let code = 0;
const page = context.pages()[0] || await context.newPage();
try {
  await run(page);
} catch (e) {
  report.error = String(e.stack || e).slice(0, 2000);
  console.error('[e2e] failed:', report.error);
  code = 1;
  await page.screenshot({ path: reportPath.replace(/\.json$/, '') + '-failed.png' }).catch(() => {});
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  report.offsite_requests = [...new Set(report.offsite_requests)];
  fs.writeFileSync(reportPath, JSON.stringify(report, null, 2));
}
process.exit(code);
