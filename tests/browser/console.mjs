// The console in a real Chromium, driven by playwright-core (run by
// tests/console.rs, which starts the gateway and the mock). Environment:
// GATEWAY (base URL), MASTER_KEY, CHROMIUM (the browser), SCREENSHOTS (dir).
// Prints one line per check and ends with "N passed, 0 failed".
import { chromium } from "playwright-core";
import http from "node:http";
import assert from "node:assert/strict";

const base = process.env.GATEWAY;
const master = process.env.MASTER_KEY;
const shots = process.env.SCREENSHOTS;
assert.ok(base && master && shots, "GATEWAY, MASTER_KEY and SCREENSHOTS must be set");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(15000);

// Every URL the browser asks for, and every page it gets: the master key
// must be in none of them.
const urls = [];
page.on("request", (r) => urls.push(r.url()));
const bodies = [];
page.on("response", async (r) => {
  try { bodies.push(await r.text()); } catch (_) { /* a redirect has no body */ }
});

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAILED - ${name}\n${e.stack}`);
    await page.screenshot({ path: `${shots}/failed-${name.replace(/\W+/g, "-")}.png`, fullPage: true });
    throw e;
  }
}
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

// The admin API and the inference API, as a script would call them.
async function admin(path) {
  const r = await fetch(base + path, { headers: { authorization: `Bearer ${master}` } });
  assert.equal(r.status, 200, `${path}: ${r.status}`);
  return r.json();
}
async function chat(key, model, content = "Say hello to the console.") {
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content }] }),
  });
  return { status: r.status, body: await r.text() };
}
async function eventually(what, fn, ms = 20000) {
  const until = Date.now() + ms;
  for (;;) {
    try { return await fn(); } catch (e) {
      if (Date.now() > until) { e.message = `${what}: ${e.message}`; throw e; }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

let key = "";
let keyId = "";
try {
  await check("a page without a session is the login page", async () => {
    await page.goto(`${base}/ui/keys`);
    assert.match(new URL(page.url()).pathname, /^\/ui\/login$/);
    await page.locator("input[name=master_key][type=password]").waitFor();
    await shot("login");
  });

  await check("a wrong key is refused with the reason", async () => {
    await page.fill("input[name=master_key]", "not-the-master-key");
    await page.click("button[type=submit]");
    await page.getByText("not the master key").waitFor();
    assert.equal((await context.cookies()).filter((c) => c.name === "tollgate_console").length, 0);
  });

  await check("the master key logs in to an HttpOnly, SameSite=Strict session", async () => {
    await page.fill("input[name=master_key]", master);
    await page.click("button[type=submit]");
    await page.waitForURL(`${base}/ui/keys`);
    const cookie = (await context.cookies()).find((c) => c.name === "tollgate_console");
    assert.ok(cookie, "no session cookie");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(cookie.path, "/ui");
    assert.equal(await page.evaluate(() => document.cookie), "", "the cookie is readable by scripts");
  });

  await check("a key created in the form is shown once, then listed", async () => {
    const form = page.locator("form#new-key-form");
    await form.locator("[name=key_alias]").fill("browser-key");
    await form.locator("[name=models]").fill("gpt-4o-mini, flaky");
    await form.getByRole("button", { name: "Create key" }).click();
    key = (await page.locator("#new-key").textContent()).trim();
    assert.ok(key.length > 20, `not a key: ${key}`);
    assert.ok(!page.url().includes(key), "the new key is in the URL");
    const copy = page.locator("button[data-copy=new-key]");
    assert.equal(await copy.isVisible(), true, "the copy button is hidden");
    await page.goto(`${base}/ui/keys`);
    const row = page.locator('tr[data-alias="browser-key"]');
    await row.waitFor();
    keyId = await row.getAttribute("data-key-id");
    assert.ok(keyId, "the row has no key id");
    assert.equal((await page.content()).includes(key), false, "the whole key is on the list");
    await shot("keys");
  });

  await check("a search by alias finds the key", async () => {
    await page.goto(`${base}/ui/keys?q=browser`);
    await page.locator(`tr[data-key-id="${keyId}"]`).waitFor();
    await page.goto(`${base}/ui/keys?q=no-such-alias-at-all`);
    assert.equal(await page.locator(`tr[data-key-id="${keyId}"]`).count(), 0);
  });

  await check("requests with the key are answered", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await chat(key, "gpt-4o-mini");
      assert.equal(r.status, 200, r.body);
    }
  });

  await check("the key's spend appears in the chart", async () => {
    await eventually("spend in the chart", async () => {
      await page.goto(`${base}/ui/spend?key_id=${encodeURIComponent(keyId)}&bucket=hour`);
      const svg = page.locator(".chart svg");
      assert.ok((await svg.count()) > 0, "no chart");
      assert.ok((await svg.locator("path, polyline, rect").count()) > 0, "an empty chart");
      assert.match(await page.locator("main").textContent(), /gpt-4o-mini/);
    });
    await shot("spend");
  });

  await check("the key's requests appear in the request log", async () => {
    await eventually("records in the log", async () => {
      await page.goto(`${base}/ui/logs?key_id=${encodeURIComponent(keyId)}`);
      const rows = page.locator("tr[data-request-id]");
      assert.ok((await rows.count()) >= 3, `only ${await rows.count()} rows`);
    });
    await shot("logs");
  });

  await check("a budget set on the key page holds, and shows on the budgets page", async () => {
    await page.goto(`${base}/ui/keys/${encodeURIComponent(keyId)}`);
    const form = page.locator("form#edit-key");
    // More than one request's worst case at these prices (the budget
    // reserves a request's most before it runs).
    await form.locator("[name=max_budget]").fill("50");
    await form.getByRole("button", { name: "Save" }).click();
    const info = await admin(`/key/info?key=${encodeURIComponent(keyId)}`);
    assert.equal(info.info.max_budget, 50, JSON.stringify(info.info));
    // Spend charged on the budget from now on shows on the budgets page.
    for (let i = 0; i < 2; i++) {
      const r = await chat(key, "gpt-4o-mini");
      assert.equal(r.status, 200, r.body);
    }
    await eventually("spend on the budget", async () => {
      await page.goto(`${base}/ui/budgets`);
      const row = page.locator(`tr[data-holder="key:${keyId}"]`);
      await row.waitFor();
      const used = (await row.textContent()).match(/(\d+(?:\.\d+)?)%/);
      assert.ok(used && Number(used[1]) > 0, `no spend on the budget: ${await row.textContent()}`);
    });
    await shot("budgets");
  });

  await check("a budget removed on the key page is gone", async () => {
    await page.goto(`${base}/ui/keys/${encodeURIComponent(keyId)}`);
    await shot("key");
    const form = page.locator("form#edit-key");
    await form.locator("[name=max_budget]").fill("");
    await form.getByRole("button", { name: "Save" }).click();
    const info = await admin(`/key/info?key=${encodeURIComponent(keyId)}`);
    assert.equal(info.info.max_budget ?? null, null, JSON.stringify(info.info));
    await page.goto(`${base}/ui/budgets`);
    assert.equal(await page.locator(`tr[data-holder="key:${keyId}"]`).count(), 0);
  });

  await check("a form error is the admin API's message next to its field", async () => {
    await page.goto(`${base}/ui/keys/${encodeURIComponent(keyId)}`);
    const form = page.locator("form#edit-key");
    await form.locator("[name=max_budget]").fill("-3");
    await form.getByRole("button", { name: "Save" }).click();
    const error = page.locator('[data-field="max_budget"]');
    await error.waitFor();
    assert.match(await error.textContent(), /max_budget/);
  });

  await check("a deployment enters and leaves its cooldown on the live page", async () => {
    await page.goto(`${base}/ui/deployments`);
    const row = page.locator('[data-deployment="flaky/flaky-a"]');
    await row.waitFor();
    assert.equal(await row.getAttribute("data-state"), "ok");
    const r = await chat(key, "flaky");
    assert.equal(r.status, 429, r.body);
    // No reload: the page refreshes itself.
    await page.locator('[data-deployment="flaky/flaky-a"][data-state="cooldown"]').waitFor({ timeout: 10000 });
    assert.match(await page.locator('[data-deployment="flaky/flaky-a"]').textContent(), /rate/i);
    await shot("deployments");
    await page.locator('[data-deployment="flaky/flaky-a"][data-state="ok"]').waitFor({ timeout: 20000 });
  });

  await check("a blocked key's next request is refused", async () => {
    await page.goto(`${base}/ui/keys/${encodeURIComponent(keyId)}`);
    await page.getByRole("button", { name: "Block", exact: true }).click();
    const info = await admin(`/key/info?key=${encodeURIComponent(keyId)}`);
    assert.equal(info.info.blocked, true);
    const r = await chat(key, "gpt-4o-mini");
    assert.ok(r.status === 401 || r.status === 403, `${r.status}: ${r.body}`);
    await page.goto(`${base}/ui/keys`);
    assert.match(await page.locator(`tr[data-key-id="${keyId}"]`).textContent(), /blocked/);
  });

  await check("a team created in the form is listed", async () => {
    await page.goto(`${base}/ui/teams`);
    await page.locator("[name=team_alias]").first().fill("browser-team");
    await page.getByRole("button", { name: /create team/i }).click();
    await page.goto(`${base}/ui/teams`);
    await page.locator("tr[data-team-id]").filter({ hasText: "browser-team" }).waitFor();
    await shot("teams");
  });

  await check("a cross-site form post is refused and changes nothing", async () => {
    // Another origin on this machine posts a form to the console, as a
    // malicious page would: once from another site (localhost, so the
    // SameSite=Strict cookie is not sent), once from a same-site origin
    // (another port on this IP, so the cookie is sent) with a guessed token.
    const target = `${base}/ui/keys/${encodeURIComponent(keyId)}/unblock`;
    const evil = http.createServer((_, res) => {
      res.setHeader("content-type", "text/html");
      res.end(`<form method="post" action="${target}"><input name="csrf" value="guess">` +
        `<button id="go" type="submit">go</button></form>`);
    });
    await new Promise((r) => evil.listen(0, "127.0.0.1", r));
    const port = evil.address().port;
    try {
      for (const origin of [`http://localhost:${port}`, `http://127.0.0.1:${port}`]) {
        const other = await context.newPage();
        await other.goto(`${origin}/`);
        const [response] = await Promise.all([
          other.waitForNavigation(),
          other.click("#go"),
        ]);
        assert.equal(response.status(), 403, `${origin}: ${response.status()}`);
        await other.close();
        const info = await admin(`/key/info?key=${encodeURIComponent(keyId)}`);
        assert.equal(info.info.blocked, true, `${origin} unblocked the key`);
      }
    } finally {
      evil.close();
    }
  });

  await check("logging out ends the session", async () => {
    await page.goto(`${base}/ui/keys`);
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(`${base}/ui/login`);
    await page.goto(`${base}/ui/keys`);
    assert.match(new URL(page.url()).pathname, /^\/ui\/login$/);
  });

  await check("the master key was in no URL and no page", async () => {
    for (const u of urls) assert.ok(!u.includes(master), `in a URL: ${u}`);
    for (const b of bodies) assert.ok(!b.includes(master), "in a page");
    assert.ok(bodies.length > 10, `only ${bodies.length} answers seen`);
  });
} catch (_) {
  // Reported by check(); the summary below says it failed.
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
