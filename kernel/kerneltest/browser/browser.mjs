// Drives the classic Jupyter Notebook UI in headless Chromium the way a person does: open the
// notebook, pick the kernel "Go (qwengo)" from Kernel → Change kernel, Cell → Run All, wait
// until every code cell has run, read the outputs from the page and save a screenshot.
//
//   node browser.mjs --url URL --notebook NAME --out DIR [--chromium /usr/bin/chromium]
//                    [--expect TEXT ...] [--timeout-ms N]
//
// Exit status 0 only when every code cell ran, no cell shows an error, and every --expect text
// appears in the outputs. DIR receives screenshot.png and outputs.json.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function parseArgs(argv) {
  const a = { chromium: '/usr/bin/chromium', expect: [], timeoutMs: 120000, kernel: 'Go (qwengo)' };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i], v = argv[i + 1];
    switch (k) {
      case '--url': a.url = v; i++; break;
      case '--notebook': a.notebook = v; i++; break;
      case '--out': a.out = v; i++; break;
      case '--chromium': a.chromium = v; i++; break;
      case '--kernel': a.kernel = v; i++; break;
      case '--expect': a.expect.push(v); i++; break;
      case '--timeout-ms': a.timeoutMs = Number(v); i++; break;
      default: throw new Error(`browser.mjs: unknown argument ${k}`);
    }
  }
  for (const k of ['url', 'notebook', 'out']) if (!a[k]) throw new Error(`browser.mjs: --${k} is required`);
  return a;
}

const args = parseArgs(process.argv);
mkdirSync(args.out, { recursive: true });
const log = (...m) => console.log('[browser]', ...m);
const browser = await chromium.launch({ executablePath: args.chromium, args: ['--no-sandbox', '--disable-gpu'] });
let status = 1;
const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
page.on('pageerror', (e) => log('page error:', e.message));
try {
  const u = new URL(args.url);
  const nbURL = `${u.origin}/notebooks/${encodeURIComponent(args.notebook)}${u.search}`;
  log('open', nbURL);
  await page.goto(nbURL, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#notebook-container .cell', { timeout: 30000 });

  // Let the kernel the notebook's metadata names finish starting first: changing the kernel
  // while it starts races the server's session deletion (a "Dead kernel" dialog).
  await page.waitForFunction(() => {
    const k = window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel;
    return k && k.is_connected() && k.info_reply && document.querySelector('#kernel_indicator_icon.kernel_idle_icon') !== null;
  }, null, { timeout: 60000, polling: 200 });

  // Kernel → Change kernel → the qwengo kernel, as a person picks it.
  await page.click('#kernellink');
  await page.hover('#menu-change-kernel');
  const item = page.locator('#menu-change-kernel-submenu a', { hasText: args.kernel });
  await item.first().click();
  // Ready when the indicator names the kernel, the new kernel answered kernel_info (its
  // implementation is known) and it is idle: Run All before that can queue the cells on the
  // previous kernel's closed channels.
  await page.waitForFunction((name) => {
    const el = document.querySelector('#kernel_indicator .kernel_indicator_name');
    const k = window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel;
    return el && el.textContent.trim() === name && k && k.is_connected() &&
      k.info_reply && k.info_reply.implementation === 'qwengo' &&
      document.querySelector('#kernel_indicator_icon.kernel_idle_icon') !== null;
  }, args.kernel, { timeout: 60000, polling: 200 });
  log('kernel selected:', args.kernel);

  // Cell → Run All.
  await page.click('#celllink');
  await page.click('#run_all_cells a');
  // Done when every code cell has an execution count and the kernel is idle.
  await page.waitForFunction(() => {
    const cells = Jupyter.notebook.get_cells().filter((c) => c.cell_type === 'code');
    const idle = document.querySelector('#kernel_indicator_icon.kernel_idle_icon') !== null;
    return idle && cells.every((c) => typeof c.input_prompt_number === 'number');
  }, null, { timeout: args.timeoutMs, polling: 500 });

  const cells = await page.$$eval('#notebook-container .code_cell', (els) => els.map((el) => ({
    prompt: (el.querySelector('.input_prompt') || {}).textContent || '',
    source: (el.querySelector('.CodeMirror-code') || {}).textContent || '',
    outputs: Array.from(el.querySelectorAll('.output_area .output_subarea')).map((o) => o.innerText),
    errors: Array.from(el.querySelectorAll('.output_error')).map((o) => o.innerText),
  })));
  await page.screenshot({ path: join(args.out, 'screenshot.png'), fullPage: true });
  writeFileSync(join(args.out, 'outputs.json'), JSON.stringify(cells, null, 1));
  const text = cells.flatMap((c) => c.outputs).join('\n');
  const problems = [];
  cells.forEach((c, i) => {
    if (c.errors.length) problems.push(`cell ${i + 1} shows an error: ${c.errors.join(' | ').slice(0, 300)}`);
    if (!/\[\d+\]/.test(c.prompt)) problems.push(`cell ${i + 1} did not run (prompt ${JSON.stringify(c.prompt.trim())})`);
  });
  for (const e of args.expect) if (!text.includes(e)) problems.push(`no output contains ${JSON.stringify(e)}`);
  log(`${cells.length} code cells ran; ${text.length} characters of output`);
  if (problems.length) {
    for (const p of problems) log('FAIL', p);
  } else {
    log('PASS');
    status = 0;
  }
} catch (e) {
  log('FAIL', e.message);
  await page.screenshot({ path: join(args.out, 'screenshot.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(status);
