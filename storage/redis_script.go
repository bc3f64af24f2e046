package storage

import (
	"crypto/sha1"
	"encoding/hex"
)

// The Lua below mirrors limiter.Limit.Take line for line: the same integer
// microseconds, the same float operations in the same order (Lua numbers are
// IEEE doubles, as Go's float64), so that Redis decides exactly as the memory
// store does. A key's state is one 41-byte string, as struct.pack writes
// '<i8i8i8di8B': start count prev as 8-byte little-endian integers, the
// debt as a double (bit for bit), expires, and denied as one byte. Packing
// costs Redis a third of what formatting and matching the same numbers as
// text did. Change limiter/limiter.go and this together.
const luaCommon = `
local function parse(v)
  if type(v) ~= 'string' or #v ~= 41 then return nil end
  local st, c, p, d, e, x = struct.unpack('<i8i8i8di8B', v)
  -- A foreign value that happens to be 41 bytes long: no NaN or infinite
  -- debt that would never drain.
  if d ~= d or d == math.huge or d == -math.huge then return nil end
  return {start = st, count = c, prev = p, debt = d, expires = e, denied = x == 1}
end

local function blank(s, start)
  s.start, s.count, s.prev, s.debt, s.expires, s.denied = start, 0, 0, 0, 0, false
end

-- live returns the state stored as v, or a fresh one once it has expired
-- (as storage.Memory forgets a key at its Expires, not at Redis's TTL).
local function live(v, now)
  local s = parse(v)
  if s and s.expires > now then return s end
  s = {}
  blank(s, 0)
  return s
end

local function enc(s)
  return struct.pack('<i8i8i8di8B', s.start, s.count, s.prev, s.debt, s.expires, s.denied and 1 or 0)
end

-- ttl is the key's time to live in milliseconds, relative so that it holds
-- whichever clock decided.
local function ttl(s, now)
  return math.max(math.ceil((s.expires - now) / 1000), 1)
end

-- args reads ARGV[1]: little-endian 8-byte integers (struct.unpack is
-- twenty times faster than matching the same numbers as text): head
-- numbers, then nine per key: algorithm quota window rate offset cost
-- dry_run calendar_start calendar_end.
local function args(head, n)
  local a, pos = {}, 1
  for i = 1, head do
    a[i], pos = struct.unpack('<i8', ARGV[1], pos)
  end
  for i = 1, n do
    local b = head + (i - 1) * 9
    a[b + 1], a[b + 2], a[b + 3], a[b + 4], a[b + 5], a[b + 6], a[b + 7], a[b + 8], a[b + 9], pos =
      struct.unpack('<i8i8i8i8i8i8i8i8i8', ARGV[1], pos)
  end
  return a
end

local function floormod(a, b)
  local m = math.fmod(a, b)
  if m < 0 then m = m + b end
  return m
end

-- bounds is limiter.Limit.Bounds for the key at b in a: the calendar
-- window Go computed, or the aligned window that holds now.
local function bounds(a, b, now)
  if a[b + 9] > 0 then return a[b + 8], a[b + 9] end
  local start = now - floormod(now - a[b + 5], a[b + 3])
  return start, start + a[b + 3]
end

-- offCalendar tells whether now is outside a calendar window Go computed
-- (its clock and Redis's disagree across a boundary).
local function offCalendar(a, head, n, now)
  for i = 1, n do
    local b = head + (i - 1) * 9
    if a[b + 9] > 0 and (now < a[b + 8] or now >= a[b + 9]) then return true end
  end
  return false
end

local function clock(now)
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end
`

// luaTake decides the limits of one request: KEYS[i] holds the state of
// request i; ARGV[1] holds, as 8-byte little-endian integers, now (in
// microseconds, 0 for the server's clock), flags (1 to return each state
// before and after, to undo the take), then nine numbers per request:
// algorithm quota window rate offset cost dry_run calendar_start
// calendar_end (window and offset in microseconds; the calendar bounds 0
// unless the limit has a calendar).
//
// The reply is "R", the time decided at, and five integers per request (the
// same encoding), allowed first_denial remaining reset retry_after
// (durations in microseconds), followed with flags 1 by the state before and the state
// after each request (41 bytes each, all zeros for none); or "B" and the
// server's time
// when it falls outside a calendar window Go computed, to be asked again
// with bounds for that time.
const luaTake = luaCommon + `
local function count(s, q, cost, now, stop)
  if s.count + cost <= q then
    s.count = s.count + cost
    s.denied = false
    return 1, 0, q - s.count, stop - now, 0
  end
  local first = s.denied and 0 or 1
  s.denied = true
  return 0, first, math.max(q - s.count, 0), stop - now, stop - now
end

local function whole(x)
  return math.max(math.floor(x + 1e-6), 0)
end

local function fixed(s, q, cost, now, start, stop)
  if s.start ~= start then blank(s, start) end
  s.expires = stop
  return count(s, q, cost, now, stop)
end

local function anchored(s, q, w, cost, now)
  if s.count == 0 or now >= s.start + w or now < s.start then
    local d = s.denied and s.count == 0
    blank(s, now)
    s.denied = d
  end
  local stop = s.start + w
  local ok, first, rem, reset, retry = count(s, q, cost, now, stop)
  if s.count == 0 then
    s.start, s.expires = 0, now + w
  else
    s.expires = stop
  end
  return ok, first, rem, reset, retry
end

local function slidingReset(s, stop, now, w)
  if s.count > 0 then return stop + w - now end
  if s.prev > 0 then return stop - now end
  return 0
end

local function slidingRetry(prev, curr, cost, q, elapsed, w)
  if cost > q then return w - elapsed + w end
  local room = q - cost - curr
  if room >= 0 and prev > 0 then
    local e = w - math.floor(room * w / prev)
    if e > elapsed then return e - elapsed end
    return 1
  end
  if room >= 0 then return 1 end
  local e = w - math.floor((q - cost) * w / curr)
  return w - elapsed + math.max(e, 0)
end

local function sliding(s, q, cost, now, start, stop)
  local w = stop - start
  if s.start == start then
  elseif s.start == start - w then
    local c, d = s.count, s.denied
    blank(s, start)
    s.prev, s.denied = c, d
  else
    blank(s, start)
  end
  local elapsed = now - start
  local used = s.prev * (w - elapsed) / w + s.count
  s.expires = stop + w
  if used + cost <= q then
    s.count = s.count + cost
    s.denied = false
    return 1, 0, whole(q - used - cost), slidingReset(s, stop, now, w), 0
  end
  local retry = slidingRetry(s.prev, s.count, cost, q, elapsed, w)
  local first = s.denied and 0 or 1
  s.denied = true
  return 0, first, whole(q - used), slidingReset(s, stop, now, w), retry
end

local function tat(s, q, w, rate, cost, now)
  local interval = w / rate
  local tau = interval * q
  local debt = s.debt - math.max(now - s.start, 0)
  if s.start == 0 or debt < 0 then debt = 0 end
  local nxt = debt + cost * interval
  if nxt <= tau + 1e-3 then
    s.start, s.debt = now, nxt
    s.expires = now + math.ceil(nxt)
    s.denied = false
    return 1, 0, whole((tau - nxt) / interval), math.ceil(nxt), 0
  end
  local first = s.denied and 0 or 1
  s.denied = true
  s.expires = math.max(s.expires, now + math.ceil(nxt - tau))
  return 0, first, whole((tau - debt) / interval), math.ceil(debt), math.ceil(nxt - tau)
end

local n = #KEYS
local a = args(2, n)
local now = clock(a[1])
local keep = a[2] == 1
if offCalendar(a, 2, n, now) then
  return 'B' .. struct.pack('<i8', now)
end

-- One read for every key (a foreign value of another type reads as nil,
-- a fresh state).
local vals = redis.call('MGET', unpack(KEYS))
local cur, raw, after, before, allowed, out = {}, {}, {}, {}, {}, {}
local pass = true
for i = 1, n do
  local k = KEYS[i]
  local s = cur[k]
  if s then
    -- The same key twice in one request: the later sees the earlier's result.
    s = {start = s.start, count = s.count, prev = s.prev, debt = s.debt, expires = s.expires, denied = s.denied}
  else
    local v = vals[i]
    if type(v) ~= 'string' then v = false end
    raw[k] = v
    s = live(v, now)
  end
  if keep then
    before[i] = s.expires > 0 and enc(s) or string.rep('\0', 41)
  end
  local b = 2 + (i - 1) * 9
  local alg, q, w, cost = a[b + 1], a[b + 2], a[b + 3], a[b + 6]
  local ok, first, rem, reset, retry
  if alg == 2 then
    ok, first, rem, reset, retry = anchored(s, q, w, cost, now)
  elseif alg == 4 or alg == 5 then
    ok, first, rem, reset, retry = tat(s, q, w, a[b + 4], cost, now)
  else
    local start, stop = bounds(a, b, now)
    if alg == 3 then
      ok, first, rem, reset, retry = sliding(s, q, cost, now, start, stop)
    else
      ok, first, rem, reset, retry = fixed(s, q, cost, now, start, stop)
    end
  end
  cur[k], after[i], allowed[i] = s, s, ok
  if ok == 0 and a[b + 7] == 0 then pass = false end
  out[i] = struct.pack('<i8i8i8i8i8', ok, first, rem, reset, retry)
end

-- All or nothing: when a limit that is not a dry run denies, only the
-- denials are stored (their mark reports the first denial once).
local last = {}
for i = 1, n do
  if pass or allowed[i] == 0 then last[KEYS[i]] = i end
end
for i = 1, n do
  local k = KEYS[i]
  if last[k] == i then
    local v = enc(after[i])
    if v ~= raw[k] then
      redis.call('SET', k, v, 'PX', ttl(after[i], now))
    end
  end
end

if keep then
  for i = 1, n do
    out[#out + 1] = before[i]
    out[#out + 1] = enc(after[i])
  end
end
return 'R' .. struct.pack('<i8', now) .. table.concat(out)
`

// luaUndo takes back what luaTake counted for a request whose other
// limits, in other Cluster slots, denied it. KEYS[i] is a key to undo;
// ARGV[1] holds now then nine numbers per key as for luaTake (the cost
// being the total to give back); ARGV[2i] and ARGV[2i+1] are the key's state
// before and after the take. A key nobody touched since is put back as it
// was; otherwise the units are taken out of the current state, if it is
// still the same window.
const luaUndo = luaCommon + `
local function giveBack(c, w, alg, win, rate, cost, now)
  if alg == 1 or alg == 2 then
    if c.start == w.start then c.count = math.max(c.count - cost, 0) end
  elseif alg == 3 then
    if c.start == w.start then
      c.count = math.max(c.count - cost, 0)
    elseif c.start == w.start + win then
      c.prev = math.max(c.prev - cost, 0)
    end
  elseif c.start ~= 0 then
    -- The backlog drains first in, first out: what is left of ours is
    -- what is left of the backlog we wrote, up to what we added.
    local interval = win / rate
    local mine = math.min(math.max(w.debt - (now - w.start), 0), cost * interval)
    local debt = c.debt - math.max(now - c.start, 0)
    if debt < 0 then debt = 0 end
    c.start, c.debt = now, math.max(debt - mine, 0)
  end
end

local a = args(1, #KEYS)
local now = clock(a[1])
for i = 1, #KEYS do
  local k = KEYS[i]
  local before, after = ARGV[2 * i], ARGV[2 * i + 1]
  local v = redis.pcall('GET', k)
  if type(v) == 'string' then
    if v == after then
      local p = live(before, now)
      if p.expires > 0 then
        redis.call('SET', k, enc(p), 'PX', ttl(p, now))
      else
        redis.call('DEL', k)
      end
    else
      local c, w = live(v, now), parse(after)
      if c.expires > 0 and w then
        local b = 1 + (i - 1) * 9
        giveBack(c, w, a[b + 1], a[b + 3], a[b + 4], a[b + 6], now)
        redis.call('SET', k, enc(c), 'PX', ttl(c, now))
      end
    end
  end
end
return 'OK'
`

// script is a Lua script and its SHA-1, for EVALSHA.
type script struct {
	src string
	sha any // boxed once: the hot path passes it to go-redis as is
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:])}
}

// luaRefund is limiter.Limit.Refund, as storage.Memory applies it: it gives
// back what a Take counted for a request that a later handler denied, to
// the live state of each key, in the window that is still current. KEYS and
// ARGV[1] are as for luaUndo (now, then nine numbers per key, the cost
// being what to give back); the reply is "R", or "B" and the server's time
// as from luaTake.
const luaRefund = luaCommon + `
local n = #KEYS
local a = args(1, n)
local now = clock(a[1])
if offCalendar(a, 1, n, now) then
  return 'B' .. struct.pack('<i8', now)
end
for i = 1, n do
  local k = KEYS[i]
  local v = redis.pcall('GET', k)
  local s = parse(v)
  if s and s.expires > now then
    local b = 1 + (i - 1) * 9
    local alg, w, cost = a[b + 1], a[b + 3], a[b + 6]
    if alg == 4 or alg == 5 then
      if s.start ~= 0 then
        local interval = w / a[b + 4]
        local debt = s.debt - math.max(now - s.start, 0)
        s.start, s.debt = now, math.max(debt - cost * interval, 0)
      end
    elseif alg == 2 then
      if now < s.start + w then s.count = math.max(s.count - cost, 0) end
    else
      local start, stop = bounds(a, b, now)
      if s.start == start or alg == 3 and s.start == start - (stop - start) then
        s.count = math.max(s.count - cost, 0)
      end
    end
    local e = enc(s)
    if e ~= v then
      redis.call('SET', k, e, 'PX', ttl(s, now))
    end
  end
end
return 'R'
`

var (
	takeScript   = newScript(luaTake)
	undoScript   = newScript(luaUndo)
	refundScript = newScript(luaRefund)
)
