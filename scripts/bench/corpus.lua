-- Deterministic corpus of realistic Signal events (~1 KB each) for the
-- benchmarks:  lua5.4 scripts/bench/corpus.lua COUNT [SEED] > corpus.ndjson
-- Mix: 40% page, 25% Product Viewed, 10% Order Completed (64-bit order ids),
-- 15% identify (mixed-case, padded emails), 10% custom events; about 3% of
-- events deny marketing consent.  Consent uses all three shapes.
local count = tonumber(arg[1] or "200000")
local seed = tonumber(arg[2] or "42")

-- 64-bit LCG (Knuth MMIX): same sequence on every machine
local state = seed
local function rnd(n)
  state = (state * 6364136223846793005 + 1442695040888963407)
  return ((state >> 33) % n) + 1
end
local function pick(t) return t[rnd(#t)] end

local first = { "Ada", "Grace", "Alan", "Zoë", "Linus", "Margaret", "José", "Ærin", "Chidi", "Yuki" }
local last = { "Lovelace", "Hopper", "Turing", "Hamilton", "Torvalds", "Müller", "García", "O'Brien", "山田", "Nakamura" }
local domains = { "example.com", "Example.org", "mail.test", "shop.example.net" }
local paths = { "/", "/pricing", "/products/engine", "/blog/why-events", "/checkout", "/account", "/docs/setup" }
local titles = { "Home", "Pricing — Plans & Prices", "The Analytical Engine", "Why events matter", "Checkout", "Your account", "Setup guide" }
local agents = {
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
  "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
}
local campaigns = { "spring_sale", "newsletter_2026_11", "retargeting", "brand", "launch" }
local sources = { "google", "newsletter", "facebook", "linkedin", "direct" }
local products = { { "sku-1001", "Analytical Engine", 1999.99 }, { "sku-2002", "Difference Engine", 249.5 },
                   { "sku-3003", "Punch Cards (100)", 19.99 }, { "sku-4004", "Brass Gear", 0.1 } }
local custom = { "Webinar Registered", "Trial Started", "Coupon Applied", "Newsletter Subscribed" }

local function q(s) return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"' end

local function email(i)
  local u = pick(first):gsub("[^%w]", "x") .. "." .. pick(last):gsub("[^%w]", "x") .. (i % 5000)
  return u .. "@" .. pick(domains)
end

local function consent(denied)
  local v = denied and "false" or "true"
  local shape = rnd(3)
  local cats = '"categories":{"C0001":true,"C0002":true,"C0004":' .. v .. '}'
  if shape == 1 then
    return '"consent":{"canonical":{"essential":true,"functional":true,"analytics":true,"marketing":' .. v
      .. ',"personalization":false},' .. cats .. '}'
  elseif shape == 2 then
    return '"consent":{"categories":{"marketing":' .. (denied and '"denied"' or '"granted"') .. ',"analytics":"granted"}}'
  end
  return '"consent":{"marketing":' .. v .. ',"analytics":true}'
end

local function context(i, page, addr, denied)
  return '"context":{"ip":"203.0.113.' .. (i % 250) .. '","locale":"en-GB","userAgent":' .. q(pick(agents))
    .. ',"page":{"url":' .. q("https://shop.example.com" .. page .. "?utm_source=" .. pick(sources) .. "&utm_campaign=" .. pick(campaigns))
    .. ',"path":' .. q(page) .. ',"referrer":"https://www.google.com/","title":' .. q(pick(titles)) .. '}'
    .. ',"campaign":{"name":' .. q(pick(campaigns)) .. ',"source":' .. q(pick(sources)) .. ',"medium":"email","term":"engines","content":"hero"}'
    .. ',"library":{"name":"signal.js","version":"2.14.0"},"timezone":"Europe/London","screen":{"width":1920,"height":1080}'
    .. (addr and (',"traits":{"email":' .. q(addr) .. '}') or "")
    .. ',' .. consent(denied) .. '}'
end

local out = {}
for i = 1, count do
  local r = rnd(100)
  local denied = rnd(100) <= 3
  local id = string.format("msg-%08d", i)
  local anon = string.format("anon-%06d", rnd(999999))
  local addr = email(i)
  local ts = string.format("2026-11-%02dT%02d:%02d:%02d.%03dZ", 1 + i % 28, i % 24, i % 60, (i * 7) % 60, i % 1000)
  local head = '{"type":%s,"messageId":"' .. id .. '","anonymousId":"' .. anon .. '","timestamp":"' .. ts .. '",'
  local line
  if r <= 40 then
    local p = pick(paths)
    line = head:format('"page"') .. '"name":' .. q(pick(titles)) .. ',"properties":{"path":' .. q(p) .. ',"search":""},'
      .. context(i, p, addr, denied) .. '}'
  elseif r <= 65 then
    local pr = pick(products)
    line = head:format('"track"') .. '"event":"Product Viewed","userId":"u' .. (i % 9973) .. '","properties":{"product_id":' .. q(pr[1])
      .. ',"name":' .. q(pr[2]) .. ',"price":' .. pr[3] .. ',"currency":"EUR","category":"Engines","brand":"Babbage & Co",'
      .. '"variant":"brass","position":' .. rnd(20) .. '},' .. context(i, "/products/engine", addr, denied) .. '}'
  elseif r <= 75 then
    local pr = pick(products)
    local qty = rnd(3)
    local order = 1000000000000000000 + rnd(999999999) * 1000 + i   -- 19 digits: beyond double precision
    line = head:format('"track"') .. '"event":"Order Completed","userId":"u' .. (i % 9973) .. '","properties":{"order_id":' .. order
      .. ',"revenue":' .. string.format("%.2f", pr[3] * qty) .. ',"currency":"EUR","tax":0,"coupon":"","products":[{"product_id":'
      .. q(pr[1]) .. ',"quantity":' .. qty .. ',"price":' .. pr[3] .. '}]},' .. context(i, "/checkout", addr, denied) .. '}'
  elseif r <= 90 then
    local fn, ln = pick(first), pick(last)
    local padded = "  " .. addr:upper():sub(1, 3) .. addr:sub(4) .. " "
    line = head:format('"identify"') .. '"userId":"u' .. (i % 9973) .. '","traits":{"email":' .. q(padded) .. ',"first_name":'
      .. q(fn) .. ',"last_name":' .. q(ln) .. ',"phone":"+44 20 7946 ' .. string.format("%04d", i % 10000)
      .. '","plan":"pro","created_at":"2024-03-01T10:00:00Z"},' .. context(i, "/account", nil, denied) .. '}'
  else
    local name = pick(custom)
    line = head:format('"track"') .. '"event":' .. q(name) .. ',"properties":{"source":"web","value":' .. rnd(100)
      .. ',"tags":[],"meta":{}},' .. context(i, "/", addr, denied) .. '}'
  end
  out[#out + 1] = line
  if #out == 1000 then io.write(table.concat(out, "\n"), "\n"); out = {} end
end
if #out > 0 then io.write(table.concat(out, "\n"), "\n") end
