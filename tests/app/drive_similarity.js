// Opens the FiftyOne App (served by a Python session whose view is "sort by similarity" to one sample, with our
// SSL similarity index) in Debian's headless Chromium; records the sample ids of the grid in the order the server
// sent them, then opens the Embeddings panel on our map over the whole dataset, coloured by a field.
// Prints {grid, grid_text, map_text} as JSON; screenshots go to <output dir>.
// usage: node drive_similarity.js <app url> <output dir> <map brain key> <color-by field> <user data dir>
const { launch } = require('./browser');

async function dismissPopups(page) {
  for (const d of await page.getByText('Dismiss', { exact: true }).all()) {
    await d.click({ timeout: 2000 }).catch(() => {});
  }
  await page.waitForTimeout(500);
}

(async () => {
  const [url, out, mapKey, colorBy, userDataDir] = process.argv.slice(2);
  const context = await launch(userDataDir);
  const page = await context.newPage();
  const pages = [];  // the grid's sample pages, as the server sent them
  page.on('response', async (r) => {
    if (!r.url().includes('graphql')) return;
    try {
      const j = JSON.parse(await r.text());
      if (j.data && j.data.samples && j.data.samples.edges) pages.push(j.data.samples.edges.map((e) => e.node.id));
    } catch (e) { /* not JSON */ }
  });
  await page.goto(url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForSelector('[data-cy="looker"]', { timeout: 60000 });
  await page.waitForTimeout(4000);
  await dismissPopups(page);
  const gridText = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_similarity.png` });

  // the Embeddings panel on our map, over the whole dataset
  await page.locator('[data-cy="btn-clear-view-bar"]').first().click();
  await page.waitForTimeout(3000);
  await page.locator('[data-cy="new-panel-btn"]').first().click();
  await page.waitForTimeout(1500);
  await page.getByText('Embeddings', { exact: true }).first().click();
  await page.getByText(mapKey, { exact: true }).first().click({ timeout: 30000 });
  await page.waitForTimeout(4000);
  await dismissPopups(page);
  let colored = false, colorOptions = [];
  if (colorBy) {  // the "Color by" menu of the panel's toolbar
    await page.getByText('Color by', { exact: true }).first().locator('xpath=..').click();
    await page.waitForTimeout(1000);
    colorOptions = await page.getByRole('option').allInnerTexts().catch(() => []);
    const opt = page.getByRole('option', { name: colorBy, exact: true });
    colored = (await opt.count()) > 0;
    if (colored) await opt.first().click();
    else await page.keyboard.press('Escape');
    await page.waitForTimeout(3000);
  }
  const mapText = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${out}/app_embeddings_map.png` });
  console.log(JSON.stringify({ grid: pages.length ? pages[0] : [], grid_text: gridText, map_text: mapText, colored,
                               color_options: colorOptions }));
  await context.close();
})().catch((e) => { console.error(e); process.exit(1); });
