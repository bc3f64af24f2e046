package store

// The Lua below mirrors limiter.Limit.Take line for line: the same integer
// microseconds, the same float operations in the same order (Lua numbers are
// IEEE doubles, as Go's float64), so that Redis decides exactly as the memory
// store does. Change limiter/limiter.go and this together.
//
// Layout: one Redis hash per client (KEYS: prefix{sha256 of the client's
// key}), one field per counter (the counter's name), so that the limits of a
// request on one client are one HMGET and one HSET. A field's value is the
// state, 41 bytes as struct.pack writes '<i8i8i8di8B': start count prev as
// 8-byte little-endian integers, the debt as a double (bit for bit),
// expires, and denied as one byte. The field "~" holds the time (script
// clock, microseconds) until which the hash's TTL is set: the TTL is raised
// (PEXPIRE) only when a state would outlive it, with a quarter of its
// lifetime to spare, so most decisions cost no PEXPIRE. States are decoded into locals, never
// tables: a decision allocates no Lua table per limit.
//
// ARGV[1] holds 8-byte little-endian integers: a head (now, 0 for the
// server's clock; flags), then five per request: code, quota, cost, a, b,
// where code = ban * 2^32 + key index * 256 + mode * 16 + algorithm * 2 +
// dry run (mode: 0 take, 1 check, 2 charge, as store.Mode; ban: a ban's
// length in whole seconds, limiter.Limit.Ban), and (a, b) is
// (window, offset) for an aligned fixed window (algorithm 1) or a sliding
// window (3), (window, 0) for an anchored window (2), (window, rate + wait *
// 2^40) for a token bucket (4) or GCRA (5) (wait: limiter.Limit.Wait in
// whole milliseconds), and (start, end) of the calendar window Go
// computed for a calendar quota (6). ARGV[1 + i] is request i's field.
const luaCommon = `
local sunpack, spack, max, min, ceil, floor, fmod, huge = struct.unpack, struct.pack, math.max, math.min, math.ceil, math.floor, math.fmod, math.huge
local rcall, rpcall = redis.call, redis.pcall
local zero41 = string.rep('\0', 41)

-- state decodes a stored value: start count prev debt expires denied, a
-- fresh state for nothing, a foreign value (it may be any 41 bytes: no NaN
-- or infinite debt that would never drain) or an expired state (as
-- store.Memory forgets a key at its Expires, not at Redis's TTL).
local function state(v, now)
  if type(v) == 'string' and #v == 41 then
    local st, c, p, d, e, x = sunpack('<i8i8i8di8B', v)
    if e > now and d == d and d ~= math.huge and d ~= -math.huge then
      return st, c, p, d, e, x == 1
    end
  end
  return 0, 0, 0, 0, 0, false
end

local function enc(st, c, p, d, e, x)
  return spack('<i8i8i8di8B', st, c, p, d, e, x and 1 or 0)
end

local function clock(now)
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end

-- spec reads request i's five numbers from ARGV[1], after head numbers
-- (the key index is below a ban's seconds, in bits 8 to 31 of the code).
local function spec(i, head)
  local code, q, cost, a, b = sunpack('<i8i8i8i8i8', ARGV[1], 1 + 8 * head + 40 * (i - 1))
  local alg = floor(code % 16 / 2)
  if alg == 4 or alg == 5 then b = b % 1099511627776 end
  return floor(code % 4294967296 / 256), alg, code % 2, q, cost, a, b
end

-- bounds is limiter.Limit.Bounds: the calendar window Go computed, or the
-- aligned window that holds now.
local function bounds(alg, a, b, now)
  if alg == 6 then return a, b end
  local m = math.fmod(now - b, a)
  if m < 0 then m = m + a end
  return now - m, now - m + a
end

`

// luaTake decides the requests of a batch of decisions, one after the
// other, as separate scripts would (each decision is all or nothing; a
// later one sees what the earlier counted), for the cost of one script:
// the pipe sends what queued concurrently as one batch. KEYS are the
// clients of the whole batch; ARGV[1] holds a head (flags: 1 asks for each
// state before and after, to undo a take; the number of decisions), then
// per decision its time (0 for the server's) and its number of requests,
// and five numbers per request (see luaCommon; the key index is into the
// batch's KEYS); ARGV[2...] are the requests' fields, in order.
//
// The reply is, per decision, "R", the time decided at, and five integers
// per request (the same encoding), allowed first_denial remaining reset
// retry_after (durations in microseconds), followed with flags 1 by the
// state before and the state after each request (41 bytes each, all zeros
// for none); or "B" and the server's time when it falls outside a calendar
// window Go computed for that decision: it counted nothing, and is asked
// again with bounds for that time. When Redis refuses the script's writes
// (OOM: at its maxmemory, with noeviction), the whole reply is "F"
// followed by the same decisions, none of them counted (FullReply).
const luaTake = luaCommon + `
local A, K = ARGV, KEYS
local spec = A[1]
local flags, ndec = sunpack('<i8i8', spec)
local keep = flags == 1
local nk = #K
local byte = string.byte

-- arr is a table with room for eight values: Lua grows a table by
-- rehashing it, and tables that grow one value at a time cost more than
-- the decisions.
local function arr() return {false, false, false, false, false, false, false, false} end

-- The plan: each client's fields ("~" first, then each field once) and
-- each request's slot among them, so that a client is one HMGET and one
-- HSET however many decisions of the batch it is in. The numbers read here
-- are small and positive: their low bytes are enough.
local fl, nf, got, chg, need, at, slot, rk = arr(), arr(), arr(), arr(), arr(), arr(), arr(), arr()
for k = 1, nk do
  fl[k], nf[k], chg[k], need[k] = {'~', false, false, false, false, false, false, false}, 1, false, 0
end
local pos, r = 17, 0
for _ = 1, ndec do
  local n1, n2 = byte(spec, pos + 8, pos + 9)
  pos = pos + 16
  for _ = 1, n1 + 256 * n2 do
    local k1, k2, k3 = byte(spec, pos + 1, pos + 3)
    local k = k1 + 256 * (k2 + 256 * k3)
    pos = pos + 40
    r = r + 1
    local field, l, j = A[1 + r], fl[k], nf[k]
    while j > 1 and l[j] ~= field do j = j - 1 end
    if j == 1 then
      j = nf[k] + 1
      nf[k], l[j] = j, field
    end
    slot[r], rk[r] = j, k
  end
end
for k = 1, nk do
  local g = rpcall('HMGET', K[k], unpack(fl[k], 1, nf[k]))
  if type(g) ~= 'table' or g.err then
    rcall('DEL', K[k])
    g = {}
  end
  got[k] = g
end

-- charge is limiter.Charge: cost units counted whatever is left, a window
-- at most MAXQ units (limiter.MaxQuota), a backlog at most MAXDEBT
-- microseconds (limiter.MaxDebt). It returns the state, what remains and
-- the reset.
local MAXQ, MAXDEBT = 1099511627776, 3153600000000000
local function charge(alg, q, cost, a, b, now, st, c, p, d, e, x)
  if cost > MAXQ then cost = MAXQ end
  if alg == 1 or alg == 6 then
    local start, stop = bounds(alg, a, b, now)
    if st ~= start then st, c, p, d, x = start, 0, 0, 0, false end
    c = min(c + cost, MAXQ)
    return st, c, p, d, stop, x, max(q - c, 0), stop - now
  elseif alg == 2 then
    if c == 0 or now >= st + a or now < st then
      local dd = x and c == 0
      st, c, p, d, e, x = now, 0, 0, 0, 0, dd
    end
    local stop = st + a
    c = min(c + cost, MAXQ)
    return st, c, p, d, stop, x, max(q - c, 0), stop - now
  elseif alg == 3 then
    local start, stop = bounds(3, a, b, now)
    local w = a
    if st == start then
    elseif st == start - w then
      st, p, c, d, e = start, c, 0, 0, 0
    else
      st, c, p, d, e, x = start, 0, 0, 0, 0, false
    end
    local used = p * (w - (now - start)) / w + c
    c = min(c + cost, MAXQ)
    local reset = 0
    if c > 0 then reset = stop + w - now elseif p > 0 then reset = stop - now end
    return st, c, p, d, stop + w, x, max(floor(q - used - cost + 1e-6), 0), reset
  end
  local interval = a / b
  local tau = interval * q
  local debt = now - st
  if debt < 0 then debt = 0 end
  debt = d - debt
  if st == 0 or debt < 0 then debt = 0 end
  local nxt = debt + cost * interval
  if nxt > MAXDEBT then nxt = MAXDEBT end
  return now, c, p, nxt, now + ceil(nxt), x, max(floor((tau - nxt) / interval + 1e-6), 0), ceil(nxt)
end

-- FMT[n] packs a decision's reply of n requests: its time and five
-- numbers per request.
local FMT = {'<i8i8i8i8i8i8', '<i8i8i8i8i8i8i8i8i8i8i8', '<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8',
  '<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8'}
local out, nout = arr(), 0
local ks, ss, after, expires, allowed, states = arr(), arr(), arr(), arr(), arr(), {}
local nums = {false, false, false, false, false, false, false, false, false, false, false, false, false, false, false, false}
local server
pos, r = 17, 0
for _ = 1, ndec do
  local now, n = sunpack('<i8i8', spec, pos)
  pos = pos + 16
  if now == 0 then
    if not server then server = clock(0) end
    now = server
  end
  local pass, bad, nst = true, false, 0
  for i = 1, n do
    local code, q, cost, a, b = sunpack('<i8i8i8i8i8', spec, pos)
    pos = pos + 40
    r = r + 1
    local dry = code % 2
    local k, alg, s = rk[r], (code % 16 - dry) / 2, slot[r]
    local mode = floor(code % 256 / 16)
    local ban = floor(code / 4294967296) * 1000000
    local wait = 0
    if alg == 4 or alg == 5 then
      wait = floor(b / 1099511627776) * 1000
      b = b % 1099511627776
    end
    ks[i], ss[i] = k, s
    if alg == 6 and (now < a or now >= b) then
      -- A calendar window Go computed for another time: this decision
      -- counts nothing, and is asked again.
      bad = true
    end
    -- The same counter twice in one decision: the later sees the
    -- earlier's result.
    local v = got[k][s]
    for j = i - 1, 1, -1 do
      if ks[j] == k and ss[j] == s then
        v = after[j]
        break
      end
    end
    local st, c, p, d, e, x = 0, 0, 0, 0, 0, false
    if v and #v == 41 then
      local xx
      st, c, p, d, e, xx = sunpack('<i8i8i8di8B', v)
      if e > now and d == d and d ~= huge and d ~= -huge then
        x = xx == 1
      else
        st, c, p, d, e = 0, 0, 0, 0, 0
      end
    end
    if keep then
      nst = nst + 1
      states[nst] = e > 0 and spack('<i8i8i8di8B', st, c, p, d, e, x and 1 or 0) or zero41
    end
    local ok, first, rem, reset, retry
    local o1, o2, o3, o4, o5, ox = st, c, p, d, e, x
    -- limiter.DecideBan: a banned key (count -1, start 0, until its
    -- expiry) is denied; a charge counts nothing and passes. first is 2
    -- (+1 for a first denial) in a ban's results.
    local banned = ban > 0 and c == -1 and st == 0
    if banned then
      ok, first, rem, reset, retry = 0, 2, 0, e - now, e - now
      if mode == 2 then ok, retry = 1, 0 end
    elseif mode == 2 then
      st, c, p, d, e, x, rem, reset = charge(alg, q, cost, a, b, now, st, c, p, d, e, x)
      ok, first, retry = 1, 0, 0
    elseif alg == 1 or alg == 6 then
      -- takeFixed (with Bounds)
      local start, stop = a, b
      if alg == 1 then
        local m = fmod(now - b, a)
        if m < 0 then m = m + a end
        start, stop = now - m, now - m + a
      end
      if st ~= start then st, c, p, d, x = start, 0, 0, 0, false end
      e = stop
      reset = stop - now
      if c + cost <= q then
        c = c + cost
        x = false
        ok, first, rem, retry = 1, 0, q - c, 0
      else
        ok, first, retry = 0, x and 0 or 1, stop - now
        rem = q - c
        if rem < 0 then rem = 0 end
        x = true
      end
    elseif alg == 4 or alg == 5 then
      -- takeTAT
      local interval = a / b
      local tau = interval * q
      local debt = now - st
      if debt < 0 then debt = 0 end
      debt = d - debt
      if st == 0 or debt < 0 then debt = 0 end
      local nxt = debt + cost * interval
      -- takeShaped with a wait: allowed within it, retry the time to hold.
      if nxt <= tau + wait + 1e-3 then
        st, d = now, nxt
        e = now + ceil(nxt)
        x = false
        ok, first, rem, reset, retry = 1, 0, max(floor((tau - nxt) / interval + 1e-6), 0), ceil(nxt), 0
        if nxt > tau + 1e-3 then retry = ceil(nxt - tau) end
      else
        ok, first = 0, x and 0 or 1
        x = true
        e = max(e, now + ceil(nxt - tau - wait))
        rem, reset, retry = max(floor((tau - debt) / interval + 1e-6), 0), ceil(debt), ceil(nxt - tau - wait)
      end
    elseif alg == 2 then
      -- takeAnchored
      local w = a
      if c == 0 or now >= st + w or now < st then
        local dd = x and c == 0
        st, c, p, d, e, x = now, 0, 0, 0, 0, dd
      end
      local stop = st + w
      reset = stop - now
      if c + cost <= q then
        c = c + cost
        x = false
        ok, first, rem, retry = 1, 0, q - c, 0
      else
        ok, first, rem, retry = 0, x and 0 or 1, max(q - c, 0), stop - now
        x = true
      end
      if c == 0 then
        st, e = 0, now + w
      else
        e = stop
      end
    else
      -- takeSliding
      local m = fmod(now - b, a)
      if m < 0 then m = m + a end
      local start, stop = now - m, now - m + a
      local w = a
      if st == start then
      elseif st == start - w then
        st, p, c, d, e = start, c, 0, 0, 0
      else
        st, c, p, d, e, x = start, 0, 0, 0, 0, false
      end
      local elapsed = now - start
      local used = p * (w - elapsed) / w + c
      e = stop + w
      if used + cost <= q then
        c = c + cost
        x = false
        ok, first, rem, retry = 1, 0, max(floor(q - used - cost + 1e-6), 0), 0
      else
        -- slidingRetry
        if cost > q then
          retry = w - elapsed + w
        else
          local room = q - cost - c
          if room >= 0 and p > 0 then
            local ee = w - floor(room * w / p)
            retry = ee > elapsed and ee - elapsed or 1
          elseif room >= 0 then
            retry = 1
          else
            retry = w - elapsed + max(w - floor((q - cost) * w / c), 0)
          end
        end
        ok, first, rem = 0, x and 0 or 1, max(floor(q - used + 1e-6), 0)
        x = true
      end
      -- slidingReset
      if c > 0 then reset = stop + w - now elseif p > 0 then reset = stop - now else reset = 0 end
    end
    if ban > 0 and ok == 0 and not banned then
      -- A denial bans the key for ban, or until the quota is whole again.
      local stop = now + max(ban, reset, retry)
      st, c, p, d, e, x = 0, -1, 0, 0, stop, true
      first, rem, reset, retry = first + 2, 0, stop - now, stop - now
    end
    local put = true
    if mode == 1 and ok == 1 then
      -- check (limiter.Check): nothing counted; the state as it was, its
      -- denial mark cleared, and what remained before the request.
      st, c, p, d, e, x = o1, o2, o3, o4, o5, false
      rem = min(rem + cost, q)
      put = ox
    end
    local nv = spack('<i8i8i8di8B', st, c, p, d, e, x and 1 or 0)
    after[i], expires[i], allowed[i] = put and nv or v, e, ok
    if ok == 0 and dry == 0 then pass = false end
    if keep then
      nst = nst + 1
      states[nst] = nv
    end
    local o = 5 * i
    nums[o - 3], nums[o - 2], nums[o - 1], nums[o], nums[o + 1] = ok, first, rem, reset, retry
  end
  nout = nout + 1
  if bad then
    out[nout] = 'B' .. spack('<i8', now)
  else
    -- All or nothing: when a limit that is not a dry run denies, only the
    -- denials are kept (their mark reports the first denial once). In
    -- order, so that the last state of a counter is the one kept.
    for i = 1, n do
      if pass or allowed[i] == 0 then
        local k, g = ks[i], got[ks[i]]
        if g[ss[i]] ~= after[i] then
          g[ss[i]] = after[i]
          chg[k], at[k] = true, now
          if expires[i] > need[k] then need[k] = expires[i] end
        end
      end
    end
    nums[1] = now
    out[nout] = 'R' .. spack(FMT[n] or '<' .. string.rep('i8', 1 + 5 * n), unpack(nums, 1, 1 + 5 * n))
    if keep then
      nout = nout + 1
      out[nout] = table.concat(states, '', 1, nst)
    end
  end
end

-- One HSET per changed client, of its fields (those unchanged are written
-- as they were); its TTL is raised only when a state would outlive it,
-- with a quarter of the lifetime to spare (a second to an hour), so that a
-- state that keeps growing (a busy token bucket) raises it now and then,
-- not on every request.
--
-- Redis at its maxmemory with noeviction refuses a script's first write
-- (and only the first: then it lets the script finish): the first HSET is
-- a pcall, and when Redis refuses it, the reply is "F" and the decisions,
-- made from what Redis holds but counted nowhere. (Redis 7 writes the
-- error as "OOM command ...", Redis 6 with the script's line before it.)
local wrote = false
for k = 1, nk do
  if chg[k] then
    local l, g = fl[k], got[k]
    local w, nw = arr(), 0
    for j = 2, nf[k] do
      if g[j] then
        w[nw + 1], w[nw + 2] = l[j], g[j]
        nw = nw + 2
      end
    end
    local e, ttl = need[k], false
    if e > (tonumber(g[1]) or 0) then
      local now = at[k]
      e = e + min(max((e - now) / 4, 1000000), 3600000000)
      w[nw + 1], w[nw + 2] = '~', tostring(e)
      nw = nw + 2
      ttl = max(ceil((e - now) / 1000), 1)
    end
    if wrote then
      rcall('HSET', K[k], unpack(w, 1, nw))
    else
      local res = rpcall('HSET', K[k], unpack(w, 1, nw))
      if type(res) == 'table' and res.err then
        if string.find(res.err, 'OOM command not allowed', 1, true) then
          return 'F' .. table.concat(out, '', 1, nout)
        end
        return res
      end
      wrote = true
    end
    if ttl then rcall('PEXPIRE', K[k], ttl) end
  end
end

return table.concat(out, '', 1, nout)
`

// luaUndo takes back what luaTake counted for a request whose other
// limits, in other Cluster slots, denied it. KEYS and ARGV[1] are as for
// luaTake, one entry per field to undo (the cost being the total to give
// back); ARGV[1+n+2i-1] and ARGV[1+n+2i] are entry i's state before and
// after the take. A field nobody touched since is put back as it was;
// otherwise the units are taken out of the current state, if it is still
// the same window.
