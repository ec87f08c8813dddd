-- The web console's server side (docs/contracts.md, The web console): its files with a strict
-- Content-Security-Policy, nothing else readable; the sign-in link's token
-- exchanged once for a session; what a role may do; and the blueprint
-- editor end to end against the emulator: files, the dry-run and fixtures
-- of an unsaved edit (the running version untouched), saves checked like
-- hot reload that become revisions, rollback.  Run under ThreadSanitizer
-- with the other #serve specs.
local S = require("support")
local core = S.core

local EDITOR = "/v1/admin/blueprints/activecampaign"
local INSTALL = "/v1/admin/integration-catalog/activecampaign/install"
local CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
  .. "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

-- GET path as it is written (no ".." folded by curl): status, headers (lower-case names), body.
local function fetch(srv, path)
  local hf, bf = os.tmpname(), os.tmpname()
  local p = io.popen("curl -s --path-as-is -D " .. hf .. " -o " .. bf .. " -w '%{http_code}' '" .. srv.url .. path .. "'")
  local status = tonumber(p:read("a"))
  p:close()
  local headers = {}
  for line in io.lines(hf) do
    local k, v = line:match("^([^:]+):%s*(.-)\r?$")
    if k then headers[k:lower()] = v end
  end
  local f = io.open(bf)
  local body = f:read("a")
  f:close()
  os.remove(hf)
  os.remove(bf)
  return status, headers, body
end

-- A console folder of its own: the spec does not depend on the real console's files.
local function console_dir()
  local dir = S.tmpdir()
  S.write(dir .. "/index.html", "<!doctype html><title>console</title><script type=module src=/console/js/app.js></script>\n")
  os.execute("mkdir -p " .. dir .. "/js")
  S.write(dir .. "/js/app.js", "export const ready = true;\n")
  S.write(dir .. "/.secret.js", "not for the web\n")
  S.write(dir .. "/notes.txt", "a type the console is not made of\n")
  S.write(dir .. "/../outside-" .. dir:match("[^/]+$") .. ".js", "content from outside the folder\n")
  return dir
end

local function page_event(id)
  return '{"type":"page","messageId":"' .. id .. '","context":{"traits":{"email":"ed@example.com"},'
    .. '"consent":{"marketing":true}}}'
end

-- The Event Tracking name of a dry-run line's request (decoded form field "event").
local function tracked_name(line)
  for _, r in ipairs(line.requests) do
    if r.decoded and type(r.decoded) == "table" and r.decoded.event then return r.decoded.event end
  end
end

describe("web console: files and sign-in #serve", function()
  local srv, dir
  before_each(function()
    dir = console_dir()
    srv = S.start_server({ args = "--console " .. dir })
  end)
  after_each(function()
    srv.stop()
    os.remove(dir .. "/../outside-" .. dir:match("[^/]+$") .. ".js")
  end)

  it("serves index.html at / and the console's files with the security headers", function()
    local st, h, body = fetch(srv, "/")
    assert.are.equal(200, st)
    assert.matches("<title>console</title>", body, 1, true)
    assert.are.equal("text/html; charset=utf-8", h["content-type"])
    assert.are.equal(CSP, h["content-security-policy"])
    assert.are.equal("nosniff", h["x-content-type-options"])
    assert.are.equal("no-referrer", h["referrer-policy"])
    assert.are.equal("no-cache", h["cache-control"])
    st, h, body = fetch(srv, "/console/js/app.js")
    assert.are.equal(200, st)
    assert.are.equal("text/javascript; charset=utf-8", h["content-type"])
    assert.are.equal("export const ready = true;\n", body)
    assert.are.equal(CSP, h["content-security-policy"])
  end)

  it("refuses paths that climb out, dotfiles and other types", function()
    local outside = "outside-" .. dir:match("[^/]+$") .. ".js"
    for _, path in ipairs({ "/console/../" .. outside, "/console/%2e%2e/" .. outside, "/console/js/../../" .. outside,
                            "/console/.secret.js", "/console/notes.txt", "/console/js//app.js", "/console/nope.js",
                            "/console/vendor/codemirror/../../../../etc/passwd",
                            "/console/vendor/codemirror/%2e%2e/%2e%2e/%2e%2e/etc/hostname.js" }) do
      local st, _, body = fetch(srv, path)
      assert.are_not.equal(200, st, path)
      assert.is_nil(body:find("content from outside", 1, true), path)
      assert.is_nil(body:find("not for the web", 1, true), path)
    end
    local st, h = fetch(srv, "/console/.secret.js")
    assert.are.equal(404, st)
    assert.are.equal(CSP, h["content-security-policy"])   -- a console answer, also when it is an error
  end)

  it("serves Debian's CodeMirror under /console/vendor/codemirror/", function()
    local st, h, body = fetch(srv, "/console/vendor/codemirror/mode/lua/lua.js")
    assert.are.equal(200, st)
    assert.are.equal("text/javascript; charset=utf-8", h["content-type"])
    assert.matches("defineMode(\"lua\"", body, 1, true)
    st, h = fetch(srv, "/console/vendor/codemirror/lib/codemirror.css")
    assert.are.equal(200, st)
    assert.are.equal("text/css; charset=utf-8", h["content-type"])
    assert.are.equal(CSP, h["content-security-policy"])
  end)

  it("exchanges a sign-in token once for an 8-hour session; refuses expired, API and bearer uses", function()
    local signin = srv.token("editor", "10m", "--sign-in --subject ada")
    -- a sign-in token is not an API token
    local st, body = srv.call("GET", "/v1/console/me", nil, signin)
    assert.are.equal(401, st)
    assert.are.equal("INVALID_TOKEN", body.error.code)
    local now = os.time()
    st, body = srv.call("POST", "/v1/console/session", core.json_encode({ token = signin }), false)
    assert.are.equal(200, st)
    assert.are.equal("editor", body.role)
    assert.are.equal("ada", body.subject)
    assert.is_true(math.abs(body.expires_at - (now + 8 * 3600)) < 60)
    local session = body.token
    st, body = srv.call("GET", "/v1/console/me", nil, session)
    assert.are.equal(200, st)
    assert.are.equal("ada", body.subject)
    -- good once
    st, body = srv.call("POST", "/v1/console/session", core.json_encode({ token = signin }), false)
    assert.are.equal(401, st)
    assert.are.equal("INVALID_TOKEN", body.error.code)
    assert.matches("used already", body.error.message, 1, true)
    -- an API token is not a sign-in token
    st, body = srv.call("POST", "/v1/console/session", core.json_encode({ token = srv.token("admin") }), false)
    assert.are.equal(401, st)
    assert.are.equal("INVALID_TOKEN", body.error.code)
    -- expired
    local short = srv.token("admin", "1s", "--sign-in")
    S.sleep(1.2)
    st, body = srv.call("POST", "/v1/console/session", core.json_encode({ token = short }), false)
    assert.are.equal(401, st)
    assert.matches("expired", body.error.message, 1, true)
    -- at most 15 minutes
    local _, err, code = S.sh(S.bin .. " token --role admin --sign-in --ttl 16m --state " .. srv.state)
    assert.are.equal(1, code)
    assert.matches("at most 15m", err, 1, true)
    local _, audit = srv.call("GET", "/v1/admin/audit-log?action=console.sign_in")
    assert.are.equal(1, #audit.entries)
    assert.are.equal("ada", audit.entries[1].actor)
  end)

  -- before, an 8-hour session could not be ended: sign-out only forgot the
  -- token in the browser, and a copy of it went on working
  it("signs a session out on the server: its token refused from then on, after a restart too", function()
    local function session(subject)
      local st, body = srv.call("POST", "/v1/console/session",
        core.json_encode({ token = srv.token("viewer", "10m", "--sign-in --subject " .. subject) }), false)
      assert.are.equal(200, st)
      return body.token
    end
    local a, b = session("ada"), session("bob")
    assert.are.equal(200, (srv.call("GET", "/v1/console/me", nil, a)))
    -- a Live Events stream the session opened ends with it (before: it went on until the client left)
    local _, it = srv.call("POST", INSTALL, core.json_encode({ name = "Streamed",
      config = { api_url = "http://127.0.0.1:9", api_key = "k" } }))
    local out = os.tmpname()
    os.execute("(curl -sN --max-time 20 -H 'Authorization: Bearer " .. a .. "' '" .. srv.url
      .. "/v1/admin/integrations/" .. it.id .. "/live-events/stream' > " .. out .. " 2>/dev/null; echo ended >> "
      .. out .. ") &")
    assert(S.eventually(function() return io.open(out):read("a"):find("live events", 1, true) end), "the stream did not open")
    local st, body = srv.call("DELETE", "/v1/console/session", nil, a)
    assert.are.equal(204, st, body)
    assert(S.eventually(function() return io.open(out):read("a"):find("ended", 1, true) end, 5),
      "the signed-out session's stream is still open: " .. io.open(out):read("a"))
    os.remove(out)
    st, body = srv.call("GET", "/v1/console/me", nil, a)
    assert.are.equal(401, st)
    assert.are.equal("INVALID_TOKEN", body.error.code)
    assert.are.equal("this session was signed out: sign in again", body.error.message)
    assert.are.equal(401, (srv.call("DELETE", "/v1/console/session", nil, a)))
    -- another session is untouched; an API token has no session to end
    assert.are.equal(200, (srv.call("GET", "/v1/console/me", nil, b)))
    st, body = srv.call("DELETE", "/v1/console/session", nil, srv.token("admin"))
    assert.are.equal(400, st)
    assert.matches("not a console session token", body.error.message, 1, true)
    assert.are.equal(401, (srv.call("DELETE", "/v1/console/session", nil, false)))
    local _, audit = srv.call("GET", "/v1/admin/audit-log?action=console.sign_out")
    assert.are.equal(1, #audit.entries)
    assert.are.equal("ada", audit.entries[1].actor)
    -- the revocation is durable: kept in the state store until the token expires
    srv.stop()
    srv = S.start_server({ args = "--console " .. dir, state = srv.state })
    assert.are.equal(401, (srv.call("GET", "/v1/console/me", nil, a)))
    assert.are.equal(200, (srv.call("GET", "/v1/console/me", nil, b)))
  end)

  -- before, nbf and iat were not read: a token made for later worked now
  it("refuses a token not valid yet, or issued in the future beyond a minute, saying which", function()
    local secret = io.open(srv.state .. "/jwt.secret"):read("l")
    local function b64url(s)
      local f = os.tmpname()
      S.write(f, s)
      local out = S.sh("basenc --base64url -w0 < " .. f .. " | tr -d '='")
      os.remove(f)
      return out
    end
    local function signed(claims)
      local si = b64url('{"alg":"HS256","typ":"JWT"}') .. "." .. b64url(core.json_encode(claims))
      local f = os.tmpname()
      S.write(f, si)
      local sig = S.sh("openssl dgst -sha256 -hmac '" .. secret .. "' -binary < " .. f .. " | basenc --base64url -w0 | tr -d '='")
      os.remove(f)
      return si .. "." .. sig
    end
    local now = os.time()
    local cases = {
      { { sub = "ada", role = "admin", iat = now, nbf = now + 600, exp = now + 3600 }, 401,
        "token not valid yet (nbf is in the future)" },
      { { sub = "ada", role = "admin", iat = now + 600, exp = now + 3600 }, 401,
        "token issued in the future (iat; are the clocks apart?)" },
      { { sub = "ada", role = "admin", iat = now + 20, nbf = now + 20, exp = now + 3600 }, 200 },   -- within the skew
      { { sub = "ada", role = "admin", iat = now - 60, nbf = now - 60, exp = now + 3600 }, 200 },
    }
    for _, c in ipairs(cases) do
      local st, body = srv.call("GET", "/v1/console/me", nil, signed(c[1]))
      assert.are.equal(c[2], st, core.json_encode(c[1]))
      if c[3] then assert.are.equal(c[3], body.error.message) end
    end
  end)

  it("says who the token is and what the console may offer, per role", function()
    for role, can in pairs({ owner = true, admin = true, editor = true, viewer = false }) do
      local st, me = srv.call("GET", "/v1/console/me", nil, srv.token(role, nil, "--subject " .. role .. "-1"))
      assert.are.equal(200, st)
      assert.are.equal(role, me.role)
      assert.are.equal(role .. "-1", me.subject)
      assert.are.same({ install = can, edit = can, replay = can }, me.can)
    end
    assert.are.equal(401, (srv.call("GET", "/v1/console/me", nil, false)))
  end)

  it("names the config field of an install's 422, for the form to show it there", function()
    local st, body = srv.call("POST", INSTALL, core.json_encode({ name = "Bad", config = {
      api_url = "ftp://example.com", api_key = "k" } }))
    assert.are.equal(422, st)
    assert.are.equal("INVALID_CONFIG", body.error.code)
    assert.are.equal("config.api_url", body.error.field)
  end)

  it("names the name field of an install's 409, for the form to mark and focus it", function()
    local cfg = { api_url = "http://127.0.0.1:9", api_key = "k" }   -- its checks fail: installed all the same
    local st = srv.call("POST", INSTALL, core.json_encode({ name = "Taken", config = cfg }))
    assert.are.equal(201, st)
    local body
    st, body = srv.call("POST", INSTALL, core.json_encode({ name = "Taken", config = cfg }))
    assert.are.equal(409, st)
    assert.are.equal("CONFLICT", body.error.code)
    assert.are.equal("name", body.error.field)
  end)
end)

describe("web console: the blueprint editor #serve", function()
  local emu, srv, dir, page, original, integration
  before_each(function()
    emu = S.start_emulator("--rate-limit 0")
    dir = S.tmpdir()
    os.execute("cp -r blueprints/activecampaign " .. dir .. "/")
    page = dir .. "/activecampaign/page.lua"
    original = io.open(page):read("a")
    srv = S.start_server({ blueprints = dir })
    local st
    st, integration = srv.call("POST", INSTALL, S.install_body("Edited", S.emulator_account(emu, 0)))
    assert.are.equal(201, st)
  end)
  after_each(function()
    srv.stop()
    emu.stop()
  end)

  -- Send a page event; the Event Tracking name the emulator received for it.
  local sent = 0
  local function delivered_name(id)
    sent = sent + 1
    srv.call("POST", "/v1/integrations/" .. integration.id .. "/events", page_event(id))
    local logs = S.eventually(function()
      local c = emu.contacts()
      return #c == 1 and #c[1].trackingLogs == sent and c[1].trackingLogs
    end, 10)
    assert.is_truthy(logs, "event " .. id .. " was not delivered")
    return logs[sent].type
  end

  local function edited(name) return (original:gsub('"page_view"', '"' .. name .. '"')) end

  it("lists the files, runs an unsaved edit and its fixtures without touching the running version", function()
    sent = 0
    local st, files = srv.call("GET", EDITOR .. "/files", nil, srv.token("viewer"))
    assert.are.equal(200, st)
    assert.are.equal("activecampaign", files.vendor)
    assert.are.equal("blueprint.yaml", files.files[1].name)
    assert.are.equal("yaml", files.files[1].kind)
    assert.are.equal("helpers.lua", files.files[#files.files].name)
    local names = {}
    for _, f in ipairs(files.files) do names[f.name] = f end
    assert.are.equal(original, names["page.lua"].content)
    assert.are.equal("lua", names["page.lua"].kind)
    assert.is_true(#files.examples > 0)
    assert.are.equal("all-rows", files.tests[1])
    assert.are.equal(12, #files.revision)

    -- the edit's output, with the integration's config (its secrets redacted)
    local body = '{"files":' .. core.json_encode({ ["page.lua"] = edited("page_view_v2") }) .. ',"events":['
      .. page_event("dry-1") .. '],"integration_id":"' .. integration.id .. '"}'
    local raw
    st, body, raw = srv.call("POST", EDITOR .. "/dry-run", body)
    assert.are.equal(200, st)
    assert.is_true(body.ok)
    assert.are.equal("deliver", body.results[1].outcome)
    assert.are.equal("page_view_v2", tracked_name(body.results[1]))
    assert.is_nil(raw:find(S.EMU_TOKEN, 1, true), "a secret in the dry-run")
    assert.is_nil(raw:find(S.EMU_EVENT_KEY, 1, true), "a secret in the dry-run")

    -- an edit that does not load: its file and line
    st, body = srv.call("POST", EDITOR .. "/dry-run", '{"files":{"page.lua":"return function(event, ctx)\\n  this is not lua\\nend\\n"},"events":['
      .. page_event("dry-2") .. ']}')
    assert.are.equal(200, st)
    assert.is_false(body.ok)
    assert.are.equal("page.lua", body.errors[1].file)
    assert.are.equal(2, body.errors[1].line)
    assert.matches("syntax error", body.errors[1].message, 1, true)
    -- a runtime error is an ordinary result line
    st, body = srv.call("POST", EDITOR .. "/dry-run", '{"files":{"page.lua":"return function(event, ctx)\\n  error(\\"boom\\")\\nend\\n"},"events":['
      .. page_event("dry-3") .. ']}')
    assert.is_true(body.ok)
    assert.are.equal("error", body.results[1].outcome)
    assert.matches("page.lua:2: boom", body.results[1].reason, 1, true)

    -- the running version is the one on disk
    assert.are.equal(original, io.open(page):read("a"))
    assert.are.equal("page_view", delivered_name("live-1"))

    -- the fixtures against the edit, with the field that differs
    st, body = srv.call("POST", EDITOR .. "/test", '{"files":' .. core.json_encode({ ["page.lua"] = edited("page_view_v2") }) .. '}')
    assert.are.equal(200, st)
    assert.is_false(body.ok)
    local cases = {}
    for _, c in ipairs(body.cases) do cases[c.name] = c end
    assert.is_false(cases["all-rows"].ok)
    local diff = table.concat(cases["all-rows"].diff, "\n")
    assert.matches('decoded.event: expected "page_view", got "page_view_v2"', diff, 1, true)
    assert.is_true(cases["install-body"].ok)
    st, body = srv.call("POST", EDITOR .. "/test", "{}")
    assert.is_true(body.ok, "the committed blueprint fails its own fixtures")
  end)

  it("saves a checked edit as a revision that the next event uses; rolls back", function()
    sent = 0
    local ada = srv.token("editor", nil, "--subject ada")
    -- a broken edit: 422 naming file and line, nothing written
    local st, body = srv.call("PUT", EDITOR .. "/files",
      '{"files":{"page.lua":"return function(event, ctx)\\n  this is not lua\\nend\\n"},"message":"broken"}', ada)
    assert.are.equal(422, st)
    assert.are.equal("INVALID_BLUEPRINT", body.error.code)
    assert.are.equal("page.lua", body.error.file)
    assert.are.equal(2, body.error.line)
    assert.are.equal(original, io.open(page):read("a"))
    -- an edit an installed integration's config would not validate against
    -- (a field it does not set made required; moving a URL a secret is sent to
    -- is refused before, by the secrets' own check: secrets_spec)
    local yaml = dir .. "/activecampaign/blueprint.yaml"
    local yaml_text = io.open(yaml):read("a")
    local stricter, n = yaml_text:gsub("key: consent_field_id\n", "key: consent_field_id\n    required: true\n")
    assert.are.equal(1, n)
    st, body = srv.call("PUT", EDITOR .. "/files", '{"files":' .. core.json_encode({ ["blueprint.yaml"] = stricter }) .. '}', ada)
    assert.are.equal(422, st)
    assert.are.equal("INVALID_BLUEPRINT", body.error.code)
    assert.matches("the installed integration 'Edited'", body.error.message, 1, true)
    assert.matches("consent_field_id", body.error.message, 1, true)
    assert.are.equal(yaml_text, io.open(yaml):read("a"))
    -- a name that is not a blueprint file
    st, body = srv.call("PUT", EDITOR .. "/files", '{"files":{"../evil.lua":"return 1"}}', ada)
    assert.are.equal(400, st)

    -- a good one: written, recorded, running at once
    st, body = srv.call("PUT", EDITOR .. "/files", '{"files":' .. core.json_encode({ ["page.lua"] = edited("page_view_v2") })
      .. ',"message":"rename the page event"}', ada)
    assert.are.equal(200, st)
    assert.are.equal(2, body.number)   -- 1 keeps the files as they were found
    assert.are.equal("ada", body.actor)
    assert.are.equal(edited("page_view_v2"), io.open(page):read("a"))
    local _, files = srv.call("GET", EDITOR .. "/files")
    assert.are.equal(body.revision, files.revision)
    assert.are.equal("page_view_v2", delivered_name("saved-1"))

    -- the history, newest first, with the diff
    local revs
    st, revs = srv.call("GET", EDITOR .. "/revisions", nil, srv.token("viewer"))
    assert.are.equal(200, st)
    assert.are.equal(2, #revs.revisions)
    local r2, r1 = revs.revisions[1], revs.revisions[2]
    assert.are.equal(2, r2.number)
    assert.are.equal("ada", r2.actor)
    assert.are.equal("rename the page event", r2.message)
    assert.are.same({ "page.lua" }, r2.files)
    assert.matches('--- a/page.lua\n+++ b/page.lua\n@@ ', r2.diff, 1, true)
    assert.matches('\n-  return helpers.track_event(event, ctx, "page_view", {\n', r2.diff, 1, true)
    assert.matches('\n+  return helpers.track_event(event, ctx, "page_view_v2", {\n', r2.diff, 1, true)
    assert.is_true(r2.created_at >= r1.created_at)
    assert.are.equal(1, r1.number)
    assert.are.equal("as found on disk", r1.message)

    -- back to 1
    st, body = srv.call("POST", EDITOR .. "/rollback", '{"number":1}', ada)
    assert.are.equal(200, st)
    assert.are.equal(3, body.number)
    assert.are.equal(r1.revision, body.revision)
    assert.are.equal(original, io.open(page):read("a"))
    assert.are.equal("page_view", delivered_name("rolled-back-1"))
    _, revs = srv.call("GET", EDITOR .. "/revisions")
    assert.are.equal("rollback to 1", revs.revisions[1].message)
    assert.are.equal(404, (srv.call("POST", EDITOR .. "/rollback", '{"number":42}', ada)))

    local _, audit = srv.call("GET", "/v1/admin/audit-log?actor=ada")
    local actions = {}
    for _, e in ipairs(audit.entries) do actions[e.action] = (actions[e.action] or 0) + 1 end
    assert.are.equal(1, actions["blueprint.save"])
    assert.are.equal(1, actions["blueprint.rollback"])
    for _, text in ipairs(srv.bodies) do assert.is_nil(text:find(S.EMU_TOKEN, 1, true), "a secret in a response") end
  end)

  it("refuses viewers every change: dry-run, save, rollback, install, replay", function()
    local viewer = srv.token("viewer")
    local calls = {
      { "POST", EDITOR .. "/dry-run", '{"events":[' .. page_event("v-1") .. ']}' },
      { "POST", EDITOR .. "/test", "{}" },
      { "PUT", EDITOR .. "/files", '{"files":{"page.lua":"return nil"}}' },
      { "POST", EDITOR .. "/rollback", '{"number":1}' },
      { "POST", INSTALL, S.install_body("Viewer's", S.emulator_account(emu, 0)) },
      { "POST", "/v1/admin/integrations/" .. integration.id .. "/dead-letters/replay", '{"all":true}' },
    }
    for _, c in ipairs(calls) do
      local st, body = srv.call(c[1], c[2], c[3], viewer)
      assert.are.equal(403, st, c[1] .. " " .. c[2])
      assert.are.equal("FORBIDDEN", body.error.code)
    end
    assert.are.equal(original, io.open(page):read("a"))
    assert.are.equal(200, (srv.call("GET", EDITOR .. "/files", nil, viewer)))
    assert.are.equal(200, (srv.call("GET", EDITOR .. "/revisions", nil, viewer)))
  end)
end)
