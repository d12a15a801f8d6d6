// Opens the FiftyOne App in Debian's headless Chromium, opens the operator browser, lists our operators, opens
// one operator's form, opens the "SSL curation" panel from the "+" new-panel menu, clicks its first "Open view"
// button; then (optional) executes another operator from its form, waits for its outputs and reads the panel
// again. Saves screenshots; prints {listed, form, panel, view, countBefore, countAfter, ran, panelAfterRun} as JSON.
// usage: node drive_app.js <dataset url> <output dir> <operator label> <user data dir> [<run label> <output label>]
const { launch } = require('./browser');

(async () => {
  const [url, out, label, userDataDir, runLabel, outputLabel] = process.argv.slice(2);
  const context = await launch(userDataDir);
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
  // the form is resolved by the server (slow on a loaded machine): wait for its fields, not a fixed time
  await page.getByText('Embeddings field').first().waitFor({ timeout: 45000 }).catch(() => {});
  await page.waitForTimeout(1500);
  const form = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_operator_form.png` });
  await page.keyboard.press('Escape');
  await page.waitForTimeout(1000);
  const count = async () => (await page.locator('[data-cy=entry-counts]').first().innerText()).replace(/\s+/g, ' ');
  const countBefore = await count();
  // the plugin's panels reach the menu once the plugin list has loaded: reopen the menu until ours is there
  for (let i = 0; i < 10 && !(await page.locator('[data-cy=new-panel-option-ssl_curation_panel]').count()); i++) {
    if (i) await page.click('[data-cy=new-panel-btn]');  // close
    await page.waitForTimeout(i ? 2000 : 0);
    await page.click('[data-cy=new-panel-btn]');
    await page.waitForTimeout(1000);
  }
  await page.click('[data-cy=new-panel-option-ssl_curation_panel]');
  await page.getByText('Refresh', { exact: true }).first().waitFor({ timeout: 60000 });
  await page.waitForTimeout(4000);  // plots
  const panel = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_panel.png` });
  const open = page.getByText(/^Open view: /).first();
  const view = await open.innerText();
  await open.click();
  let countAfter = countBefore;  // the grid reloads the view: wait for its count to change (slow on a loaded machine)
  for (let i = 0; i < 30 && countAfter === countBefore; i++) {
    await page.waitForTimeout(1000);
    countAfter = await count();
  }
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${out}/app_panel_view.png` });
  // run an operator from the App (immediate execution, a generator): its outputs are shown when it ends, and the
  // open panel refreshes by itself
  let ran = '', panelAfterRun = '';
  if (runLabel) {
    await page.keyboard.press('Backquote');
    await page.waitForTimeout(1500);
    await page.keyboard.type(runLabel.replace('SSL curation: ', ''));
    await page.waitForTimeout(1500);
    await page.getByText(runLabel, { exact: true }).first().click();
    const execute = page.getByRole('button', { name: 'Execute', exact: true }).first();
    await execute.waitFor({ timeout: 45000 });
    await page.waitForTimeout(1500);  // the form resolves its defaults
    await execute.click();
    await page.getByText(outputLabel, { exact: true }).first().waitFor({ timeout: 120000 }).catch(() => {});
    await page.waitForTimeout(1500);
    ran = await page.evaluate(() => document.body.innerText);
    await page.screenshot({ path: `${out}/app_operator_output.png` });
    await page.keyboard.press('Escape');
    await page.waitForTimeout(6000);  // the panel's refresh, then its render
    panelAfterRun = await page.evaluate(() => document.body.innerText);
    await page.screenshot({ path: `${out}/app_panel_after_run.png` });
  }
  console.log(JSON.stringify({ listed, form, panel, view, countBefore, countAfter, ran, panelAfterRun }));
  await context.close();
})().catch((e) => { console.error(e); process.exit(1); });
