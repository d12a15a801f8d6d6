// Opens the FiftyOne App in Debian's headless Chromium, opens the operator browser, lists our operators, opens
// one operator's form, and saves screenshots. Prints {listed, form} (the page text at each step) as JSON.
// usage: node drive_app.js <dataset url> <output dir> <operator label> <user data dir>
const { chromium } = require('playwright-core');

(async () => {
  const [url, out, label, userDataDir] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--no-first-run'],
  });
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForSelector('text=SSL curation', { state: 'attached', timeout: 1000 }).catch(() => {});
  await page.waitForTimeout(6000);
  const dismiss = page.getByText('Dismiss', { exact: true });
  if (await dismiss.count()) await dismiss.first().click();
  await page.screenshot({ path: `${out}/app_grid.png` });
  await page.keyboard.press('Backquote');  // the App's shortcut for the operator browser
  await page.waitForTimeout(1500);
  await page.keyboard.type('SSL curation');
  await page.waitForTimeout(1500);
  const listed = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_operator_browser.png` });
  await page.getByText(label, { exact: true }).first().click();
  await page.waitForTimeout(4000);
  const form = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_operator_form.png` });
  console.log(JSON.stringify({ listed, form }));
  await context.close();
})().catch((e) => { console.error(e); process.exit(1); });
