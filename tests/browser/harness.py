"""The browser suite's fixtures: the ActiveCampaign emulator, `blueprint serve`
with the console (a temporary state directory and a COPY of blueprints/, since
the editor writes files), headless Chromium through selenium, and helpers
that wait explicitly (WebDriverWait with a message; no fixed sleeps)."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BIN = os.path.join(REPO, 'build', 'blueprint')
EMULATOR = os.path.join(REPO, 'build', 'ac-emulator')
SHOTS = os.path.join(REPO, 'build', 'screenshots')
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver')

LAPTOP = (1366, 768)
NARROW = (420, 860)
WAIT = 20          # seconds an explicit wait may take before it fails with its message


def _read_listening(proc, log_path, what, timeout=15):
    """Wait for 'listening on http://…' on a child's stdout file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with open(log_path) as f:
                for line in f:
                    if line.startswith('listening on '):
                        return line.split('listening on ', 1)[1].strip()
        except FileNotFoundError:
            pass
        time.sleep(0.02)   # polling a child's output file, not a wait in a test
    raise RuntimeError('%s did not start (exit %s): %s' % (what, proc.poll(), _tail(log_path)))


def _tail(path, n=30):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''


class Env:
    """Processes and files of one run."""

    def __init__(self, serve_args=(), emulator_args=()):
        """serve_args, emulator_args: extra options (a scenario that needs
        `serve --batch` starts an Env of its own)."""
        self.tmp = tempfile.mkdtemp(prefix='bp-browser-')
        self.blueprints = os.path.join(self.tmp, 'blueprints')
        shutil.copytree(os.path.join(REPO, 'blueprints'), self.blueprints)
        self.state = os.path.join(self.tmp, 'state')
        self.procs = []
        self.emu = self._start([EMULATOR, '--port', '0'] + list(emulator_args), 'emulator')
        self.base = self._start([BIN, 'serve', '--listen', '127.0.0.1:0', '--state', self.state,
                                 '--blueprints', self.blueprints, '--console', os.path.join(REPO, 'console')]
                                + list(serve_args), 'serve')

    def _start(self, argv, name):
        out = os.path.join(self.tmp, name + '.out')
        err = os.path.join(self.tmp, name + '.log')
        p = subprocess.Popen(argv, stdout=open(out, 'w'), stderr=open(err, 'w'), cwd=REPO)
        self.procs.append((name, p, err))
        try:
            return _read_listening(p, out, name)
        except RuntimeError as e:
            raise RuntimeError('%s\n%s' % (e, _tail(err)))

    def serve_log(self):
        return _tail(os.path.join(self.tmp, 'serve.log'), 40)

    def close(self):
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- tokens and the API ----

    def token(self, role, sign_in=False, subject=None, ttl='10m'):
        argv = [BIN, 'token', '--role', role, '--ttl', ttl, '--state', self.state]
        if sign_in:
            argv.append('--sign-in')
        if subject:
            argv += ['--subject', subject]
        return subprocess.check_output(argv, cwd=REPO).decode().strip()

    def api(self, method, path, body=None, token=None, raw=False):
        """(status, parsed JSON or text) of a Management API call."""
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            data = data.encode() if isinstance(data, str) else data
            headers['Content-Type'] = 'application/json'
        if token:
            headers['Authorization'] = 'Bearer ' + token
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        if raw:
            return status, text
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def emulator(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.emu + path, data=data, method='POST' if data else 'GET')
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())

    def contact(self, email):
        for c in self.emulator('/_emulator/contacts'):
            if c.get('email') == email:
                return c
        return None


def poll(fn, message, timeout=WAIT, interval=0.1):
    """Wait until fn() returns something truthy (for checks outside the
    browser: the emulator, the API); fails with message."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:      # a check that cannot run yet is retried
            last = e
        time.sleep(interval)
    raise AssertionError('%s (last: %r)' % (message, last))


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              '--window-size=%d,%d' % LAPTOP, '--force-device-scale-factor=1', '--hide-scrollbars=false',
              '--disable-extensions', '--no-first-run', '--lang=en-US'):
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
