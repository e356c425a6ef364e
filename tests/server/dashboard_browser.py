"""Drives dsv3d's web dashboard in headless Chromium and prints one JSON report.

Chromium is controlled over the DevTools protocol on a pipe (--remote-debugging-pipe: commands
on its fd 3, replies on its fd 4), so no port and no extra Python package are needed. The test
(controller_e2e.DashboardInHeadlessChromium) starts dsv3d with two users and their jobs and
asserts on the report; one screenshot per page is written to --out.
"""
import argparse
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time


class Browser:
    def __init__(self, chromium, profile):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-extensions", "--disable-sync", "--mute-audio", "--window-size=1400,1000",
                 "--user-data-dir=" + profile, "--remote-debugging-pipe", "about:blank"]
        cmd = "exec %s %s 3<&%d 4>&%d" % (chromium, " ".join(flags), to_browser_r, from_browser_w)
        self.proc = subprocess.Popen(["bash", "-c", cmd], pass_fds=(to_browser_r, from_browser_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies = {}
        self._cv = threading.Condition()
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                with self._cv:
                    self._replies["closed"] = True
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()
                else:
                    self.events.put(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        with self._cv:
            while self._next_id not in self._replies:
                if "closed" in self._replies or time.time() > deadline:
                    raise RuntimeError("no reply to " + method)
                self._cv.wait(0.1)
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError("%s: %s" % (method, reply["error"]))
        return reply["result"]

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except RuntimeError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Page:
    def __init__(self, browser):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.s = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")

    def call(self, method, params=None):
        return self.b.call(method, params, self.s)

    def go(self, url):
        self.call("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'")

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError("%s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait(self, expression, timeout=30):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.eval(expression)
                if last:
                    return last
            except RuntimeError as e:  # a navigation in flight destroys the context: try again
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for %s (last: %r) on %s" % (expression, last, self.eval("location.href")))

    def screenshot(self, path):
        # Right after a navigation Chromium can report a page of 0 width ("Cannot take
        # screenshot with 0 width") until it has laid the page out: wait for it, then retry.
        for attempt in range(50):
            try:
                data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
                break
            except RuntimeError as e:
                if "0 width" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.1)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def errors(self):
        """Script errors, console errors and CSP refusals seen so far."""
        out = []
        while True:
            try:
                e = self.b.events.get_nowait()
            except queue.Empty:
                return out
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("exception", {}).get("description", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                # The API's own 401/403 answers are expected (they are what the test provokes).
                text = p["entry"].get("text", "")
                if "status of 401" not in text and "status of 403" not in text:
                    out.append(text)


ROWS = "document.querySelectorAll('#%s tbody tr').length"
# Points per chart, by canvas id (Chart.js keeps every chart in Chart.instances).
POINTS = ("Object.fromEntries(Object.values(typeof Chart === 'undefined' ? {} : Chart.instances).map(c => "
          "[c.canvas.id, c.data.datasets.reduce((n, d) => n + d.data.length, 0)]))")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="http://HOST:PORT of dsv3d's HTTP port")
    ap.add_argument("--token", required=True, help="the user's token (the login form takes it)")
    ap.add_argument("--done", required=True, help="the user's completed job")
    ap.add_argument("--running", required=True, help="the user's running job (its cancel button is pressed)")
    ap.add_argument("--foreign", required=True, help="another user's job")
    ap.add_argument("--out", required=True, help="folder for the screenshots")
    ap.add_argument("--chromium", default="chromium")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="dsv3-chromium-")
    browser = Browser(args.chromium, profile)
    report = {"errors": []}
    try:
        page = Page(browser)
        url = args.url

        # Not logged in: the jobs page sends the browser to the login form.
        page.go(url + "/")
        report["redirected_to"] = page.wait("location.pathname === '/login' && location.pathname")
        page.wait("document.getElementById('token') !== null")
        page.screenshot(os.path.join(args.out, "login.png"))
        # A wrong token is refused with the server's words.
        page.eval("document.getElementById('token').value = 'dsv3u_not_a_token'; "
                  "document.getElementById('login').click(); true")
        report["wrong_token_error"] = page.wait("!document.getElementById('error').hidden && "
                                                "document.getElementById('error').textContent")
        page.eval("document.getElementById('token').value = %s; document.getElementById('login').click(); true"
                  % json.dumps(args.token))
        page.wait("location.pathname === '/' && %s > 0" % (ROWS % "jobs"))
        report["cookie_visible_to_scripts"] = page.eval("document.cookie.includes('dsv3_token')")
        report["who"] = page.wait("document.getElementById('who').textContent")
        report["jobs_listed"] = page.eval("[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.jobId)")
        report["jobs_columns"] = page.eval("[...document.querySelectorAll('#jobs thead th')].map(t => t.textContent)")
        page.screenshot(os.path.join(args.out, "jobs.png"))
        page.eval("const s = document.getElementById('filter-state'); s.value = 'COMPLETED'; "
                  "s.dispatchEvent(new Event('input', {bubbles: true})); true")
        page.wait("location.search === '?state=COMPLETED' && [...document.querySelectorAll('#jobs tbody tr')]"
                  ".every(r => r.textContent.includes('COMPLETED'))")
        report["completed_filter"] = page.eval(
            "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.jobId)")

        # The completed job: every curve has points, and logs, checkpoints and evaluations are there.
        page.go("%s/jobs/%s" % (url, args.done))
        page.wait("(() => { const p = %s; return p['chart-loss'] > 0 && p['chart-lr'] > 0 && "
                  "p['chart-throughput'] > 0 && p['chart-mfu'] > 0 && p['chart-experts'] > 0; })()" % POINTS)
        page.wait("document.getElementById('logs').textContent.length > 0 && %s > 0 && %s > 0"
                  % (ROWS % "checkpoints", ROWS % "evaluations"))
        report["done_points"] = page.eval(POINTS)
        report["done_val_loss_points"] = page.eval(
            "Chart.getChart('chart-loss').data.datasets[1].data.length")
        report["done_state"] = page.eval("document.querySelector('#summary .state').textContent")
        report["done_log_lines"] = page.eval("document.getElementById('logs').textContent.split('\\n').length")
        report["done_checkpoints"] = page.eval(ROWS % "checkpoints")
        report["done_evaluations"] = page.eval(ROWS % "evaluations")
        report["done_history"] = page.eval(ROWS % "history")
        report["done_ranks"] = page.eval(ROWS % "ranks")
        report["done_config_has_model"] = page.eval("document.getElementById('config').textContent.includes('\"model\"')")
        report["done_cancel_hidden"] = page.eval("document.getElementById('cancel').hidden")
        page.screenshot(os.path.join(args.out, "job.png"))

        # The running job: its loss curve grows while the page is open; then the cancel button.
        page.go("%s/jobs/%s" % (url, args.running))
        first = page.wait("(%s)['chart-loss']" % POINTS, timeout=60)
        later = page.wait("(() => { const n = (%s)['chart-loss']; return n > %d && n; })()" % (POINTS, first),
                          timeout=60)
        report["live_points"] = [first, later]
        page.eval("document.getElementById('cancel').click(); true")
        report["cancel_armed"] = page.eval("document.getElementById('cancel').textContent")
        page.eval("document.getElementById('cancel').click(); true")
        report["cancel_status"] = page.wait("document.getElementById('cancel-status').textContent"
                                            ".startsWith('cancel requested') && "
                                            "document.getElementById('cancel-status').textContent")
        report["running_state_after_cancel"] = page.wait(
            "(() => { const s = document.querySelector('#summary .state').textContent; "
            "return s === 'CANCELED' && s; })()", timeout=90)

        # Another user's job: refused, nothing of it shown.
        page.go("%s/jobs/%s" % (url, args.foreign))
        report["foreign_error"] = page.wait("!document.getElementById('error').hidden && "
                                            "document.getElementById('error').textContent")
        report["foreign_content_hidden"] = page.eval("document.getElementById('content').hidden")

        page.go(url + "/nodes")
        page.wait("%s > 0" % (ROWS % "nodes"))
        report["nodes"] = page.eval("[...document.querySelectorAll('#nodes tbody tr')].map(r => "
                                    "[...r.cells].map(c => c.textContent))")
        report["allocator"] = page.eval("document.getElementById('allocator').textContent")
        page.screenshot(os.path.join(args.out, "nodes.png"))

        report["errors"] = page.errors()
        # Log out: the cookie is gone and the API refuses the browser again.
        page.eval("document.getElementById('logout').click(); true")
        page.wait("location.pathname === '/login'")
        report["after_logout_status"] = page.eval("fetch('/api/v1/jobs').then(r => r.status)")
    except Exception as e:  # the report says how far it got
        report["failure"] = str(e)
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
