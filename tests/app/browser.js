// What the App drivers share: Debian's chromium, headless, with a persistent profile in a temporary folder.
const { chromium } = require('playwright-core');

async function launch(userDataDir) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--no-first-run'],
  });
}

module.exports = { launch };
