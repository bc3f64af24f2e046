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
// and five numbers per request (see luaCommon), whose code names, instead
// of a key, the request's client k and its field's place s among the
// client's entries (bits 8 to 31: k * 4096 + s; bit 6 marks the takes
// the script decides in fewer steps), and after the decisions, per
// client, the index in ARGV of its first entry times 2^21, plus 2^20 when
// it is "~", plus its number of fields; ARGV[2...] are the
// clients' entries, each client's a run: "~" for a client with a token
// bucket or GCRA, then each field once, a run shared by the clients
// whose entries are the same (store.PlanTake).
//
// The reply is, per decision, "R", the time decided at, and per request
// the stored value it was decided from (41 bytes, as stored: expired or
// foreign ones too, which Go reads as the script does; all zeros for none):
// Go decides again from those for the results (ParseResults), as
// store.Memory would, so that the script packs no results. With flags 1
// the state before and the state after each request follow (41 bytes
// each, all zeros for none). Or "B" and the server's time when it falls outside a calendar
// window Go computed for that decision: it counted nothing, and is asked
// again with bounds for that time. When Redis refuses the script's writes
// (OOM: at its maxmemory, with noeviction), the whole reply is "F"
// followed by the same decisions, none of them counted (FullReply).
//
// The take script has a prelude of its own, and no functions (each would
// be a closure made at every call).
const luaTake = `
local sunpack, spack, max, min, ceil, floor, huge = struct.unpack, struct.pack, math.max, math.min, math.ceil, math.floor, math.huge
local rcall, rpcall = redis.call, redis.pcall
-- Constants, not string.rep (a call at every script).
local zero41 = '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0'
local A, K = ARGV, KEYS
local spec = A[1]
-- struct's 'l' (a C long) reads and writes the same 8 bytes as 'i8', for
-- less (no size to parse in the format), where a long has 8 bytes: where
-- it has 4, '<ll' reads the flags' two halves, and the second (0) is not
-- the number of decisions (never 0).
local F2, F5, FS, FR = '<ll', '<lllll', '<llldlB', '<c1l'
local flags, ndec = sunpack(F2, spec)
if ndec == 0 then
  F2, F5, FS, FR = '<i8i8', '<i8i8i8i8i8', '<i8i8i8di8B', '<c1i8'
  flags, ndec = sunpack(F2, spec)
end
local keep = flags == 1
local nk = #K

-- Tables cost Redis more than the arithmetic (each one is an allocation
-- the collector sweeps, and one that grows a value at a time is rehashed
-- at every power of two): the script keeps a few, with room made by their
-- constructors (of nils: one instruction, where each false is one), and
-- the per-key and per-request values in strides.
--
-- The plan, which Go made (store.PlanTake): ARGV[2...] are the clients'
-- fields, each client's in a run (a run shared by the clients whose
-- fields are the same: each argument costs a table slot), each field once,
-- and a request's code names its client and its field's place among the
-- client's, so that a client is one HMGET and one HSET however many
-- decisions of the batch it is in. got[k] is what HMGET read of client k's
-- entries. KS holds per key the
-- latest expiry of the states a decision changed (counted when the state
-- is decided: a decision that denies may leave it later than what is
-- written, which costs at most a look at the mark), the time of the last write
-- (0: none), the latest expiry of the states read from Redis (the hash's
-- TTL covers them: a state no later needs no look at the mark "~") and
-- its word in Go's plan: the index in ARGV of its first entry * 2^21,
-- plus 2^20 when the first is the mark "~", plus its number of fields
-- (a token bucket's or GCRA's state outlives the last at every take: Go
-- asks for the mark with the states; without it, the mark is read when
-- needed, once a window).
local KS = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil,
  nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
-- Each key's word (Go's plan) read with one call, into got (one table
-- less), where what HMGET read then takes its place.
local gf = nk == 1 and '<i8' or nk == 2 and '<i8i8' or nk == 3 and '<i8i8i8' or nk == 4 and '<i8i8i8i8'
  or nk == 5 and '<i8i8i8i8i8' or nk == 6 and '<i8i8i8i8i8i8' or '<' .. string.rep('i8', nk)
local got = {sunpack(gf, spec, #spec - 8 * nk + 1)}
for k = 1, nk do
  local w0 = got[k]
  local x = w0 % 2097152
  local j0 = (w0 - x) / 2097152
  KS[4 * k - 3], KS[4 * k - 2], KS[4 * k - 1], KS[4 * k] = 0, 0, 0, w0
  -- Most clients have one to three fields and no mark: named (no unpack).
  local g
  if x == 3 then
    g = rpcall('HMGET', K[k], A[j0], A[j0 + 1], A[j0 + 2])
  elseif x == 2 then
    g = rpcall('HMGET', K[k], A[j0], A[j0 + 1])
  elseif x == 1 then
    g = rpcall('HMGET', K[k], A[j0])
  else
    -- x is 2^20 with the mark, plus the number of fields.
    local m = x >= 1048576 and 1 or 0
    g = rpcall('HMGET', K[k], unpack(A, j0, j0 + x - m * 1048575 - 1))
  end
  if g.err then
    rcall('DEL', K[k])
    g = {}
  end
  got[k] = g
end

-- A charge (below) is limiter.Charge: cost units counted whatever is
-- left, a window at most MAXQ units (limiter.MaxQuota), a backlog at most
-- MAXDEBT microseconds (limiter.MaxDebt).
local MAXQ, MAXDEBT = 1099511627776, 3153600000000000

-- The reply of a decision is "R", its time and, per request, the state it
-- was decided from (41 bytes, all zeros for none): Go decides again from
-- those, as store.Memory would, for the results (ParseResults). The script
-- decides only what it must write: whether each request passes, and its
-- state after. Its time is packed once per batch on the server's clock.
local out, nout = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}, 0
-- D holds per request of a decision its state after, (unused), outcome
-- and field (k * 4096 + s).
local D = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil,
  nil, nil, nil, nil}
local states = keep and {} or nil
local server, serverR
local pos = 17
for _ = 1, ndec do
  local now, n = sunpack(F2, spec, pos)
  pos = pos + 16
  local head
  if now == 0 then
    if not server then
      -- Strings in arithmetic are numbers (no tonumber calls).
      local t = rcall('TIME')
      server = t[1] * 1000000 + t[2]
      serverR = spack(FR, 'R', server)
    end
    now, head = server, serverR
  else
    head = spack(FR, 'R', now)
  end
  local pass, bad, nst, o = true, false, 0, nout + 1
  nout = o
  for i = 1, n do
    local code, q, cost, a, b = sunpack(F5, spec, pos)
    pos = pos + 40
    local low = code % 256
    -- f = k * 4096 + s: the client, the field's place among its.
    local f = (code % 4294967296 - low) / 256
    local s = f % 4096
    local k = (f - s) / 4096
    local v = got[k][s]
    if low >= 64 then
      -- A take of an aligned or calendar window, with no ban, no dry run,
      -- no states kept, on a counter no earlier request of the decision
      -- named (store.PlanTake's bit 6): takeFixed (with Bounds), as below,
      -- in fewer steps (most requests are these).
      local start, stop = a, b
      if low < 72 then
        start = now - (now - b) % a
        stop = start + a
      elseif now < a or now >= b then
        bad = true
      end
      local c, p, d, x, vst, vc, vp, vd, ve, vx = 0, 0, 0, 0
      if v and #v == 41 then
        vst, vc, vp, vd, ve, vx = sunpack(FS, v)
        if ve > now and (vd == 0 or vd == vd and vd ~= huge and vd ~= -huge) then
          if ve > KS[4 * k - 1] and KS[4 * k - 2] == 0 then KS[4 * k - 1] = ve end
          if vst == start then c, p, d, x = vc, vp, vd, vx end
        end
        out[o + i] = v
      else
        out[o + i] = zero41
      end
      local ok = 1
      if c + cost <= q then
        c, x = c + cost, 0
      else
        ok, x, pass = 0, 1, false
      end
      local nv = v
      if c ~= vc or start ~= vst or stop ~= ve or x ~= vx or d ~= vd or p ~= vp then
        nv = spack(FS, start, c, p, d, stop, x)
        if stop > KS[4 * k - 3] then KS[4 * k - 3] = stop end
      end
      local di = 4 * i
      D[di - 3], D[di - 1], D[di] = nv, ok, f
    else
      -- The same counter twice in one decision: the later sees the
      -- earlier's result.
      local read = true
      for j = 4 * i - 4, 4, -4 do
        if D[j] == f then
          v, read = D[j - 3], false
          break
        end
      end
      local dry = low % 2
      local alg = (low % 16 - dry) / 2
      local mode = (low - low % 16) / 16
      local ban, wait = 0, 0
      if code >= 4294967296 then ban = (code - code % 4294967296) / 4294967296 * 1000000 end
      if alg == 4 or alg == 5 then
        -- A wait's milliseconds above the rate.
        local rate = b % 1099511627776
        wait, b = (b - rate) / 1099511627776 * 1000, rate
      end
      if alg == 6 and (now < a or now >= b) then
        -- A calendar window Go computed for another time: this decision
        -- counts nothing, and is asked again.
        bad = true
      end
      local st, c, p, d, e, x
      if v and #v == 41 then
        local xx
        st, c, p, d, e, xx = sunpack(FS, v)
        if e > now and (d == 0 or d == d and d ~= huge and d ~= -huge) then
          x = xx == 1
          -- As read from Redis (no decision of the batch wrote the client
          -- yet): under the hash's TTL.
          if e > KS[4 * k - 1] and read and KS[4 * k - 2] == 0 then KS[4 * k - 1] = e end
        else
          st, c, p, d, e, x = 0, 0, 0, 0, 0, false
        end
        out[o + i] = v
      else
        st, c, p, d, e, x = 0, 0, 0, 0, 0, false
        out[o + i] = zero41
      end
      if keep then
        nst = nst + 1
        states[nst] = e > 0 and spack(FS, st, c, p, d, e, x and 1 or 0) or zero41
      end
      local ok, reset, retry = 1, 0, 0
      local o1, o2, o3, o4, o5, ox = st, c, p, d, e, x
      -- limiter.DecideBan: a banned key (count -1, start 0, until its
      -- expiry) is denied; a charge counts nothing and passes.
      local banned = ban > 0 and c == -1 and st == 0
      if banned then
        if mode ~= 2 then ok = 0 end
      elseif mode == 2 then
        -- limiter.Charge, written here (a function would be a closure made
        -- at every call of the script).
        local cc = cost
        if cc > MAXQ then cc = MAXQ end
        if alg == 1 or alg == 6 or alg == 3 then
          -- limiter.Limit.Bounds
          local start, stop = a, b
          if alg ~= 6 then
            local m = math.fmod(now - b, a)
            if m < 0 then m = m + a end
            start, stop = now - m, now - m + a
          end
          if alg == 3 then
            if st == start then
            elseif st == start - a then
              st, p, c, d, e = start, c, 0, 0, 0
            else
              st, c, p, d, e, x = start, 0, 0, 0, 0, false
            end
            c, e = min(c + cc, MAXQ), stop + a
          else
            if st ~= start then st, c, p, d, x = start, 0, 0, 0, false end
            c, e = min(c + cc, MAXQ), stop
          end
        elseif alg == 2 then
          if c == 0 or now >= st + a or now < st then
            local dd = x and c == 0
            st, c, p, d, e, x = now, 0, 0, 0, 0, dd
          end
          c, e = min(c + cc, MAXQ), st + a
        else
          local interval = a / b
          local debt = now - st
          if debt < 0 then debt = 0 end
          debt = d - debt
          if st == 0 or debt < 0 then debt = 0 end
          local nxt = debt + cc * interval
          if nxt > MAXDEBT then nxt = MAXDEBT end
          st, d, e = now, nxt, now + ceil(nxt)
        end
      elseif alg == 1 or alg == 6 then
        -- takeFixed (with Bounds)
        local start, stop = a, b
        if alg == 1 then
          start = now - (now - b) % a
          stop = start + a
        end
        if st ~= start then st, c, p, d, x = start, 0, 0, 0, false end
        e = stop
        if c + cost <= q then
          c = c + cost
          x = false
        else
          ok, x = 0, true
          reset, retry = stop - now, stop - now
        end
      elseif alg == 4 or alg == 5 then
        -- takeTAT, takeShaped with a wait
        local interval = a / b
        local tau = interval * q
        local debt = now - st
        if debt < 0 then debt = 0 end
        debt = d - debt
        if st == 0 or debt < 0 then debt = 0 end
        local nxt = debt + cost * interval
        if nxt <= tau + wait + 1e-3 then
          st, d = now, nxt
          e = now + ceil(nxt)
          x = false
        else
          -- A cost the bucket never holds waits at most MAXDEBT (takeTAT).
          local late = nxt - tau - wait
          if late > MAXDEBT then late = MAXDEBT end
          ok, x = 0, true
          e = max(e, now + ceil(late))
          reset, retry = ceil(debt), ceil(late)
        end
      elseif alg == 2 then
        -- takeAnchored
        local w = a
        if c == 0 or now >= st + w or now < st then
          local dd = x and c == 0
          st, c, p, d, e, x = now, 0, 0, 0, 0, dd
        end
        local stop = st + w
        if c + cost <= q then
          c = c + cost
          x = false
        else
          ok, x = 0, true
          reset, retry = stop - now, stop - now
        end
        if c == 0 then
          st, e = 0, now + w
        else
          e = stop
        end
      else
        -- takeSliding
        local start = now - (now - b) % a
        local stop = start + a
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
        else
          ok, x = 0, true
          if ban > 0 then
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
            -- slidingReset
            if c > 0 then reset = stop + w - now elseif p > 0 then reset = stop - now end
          end
        end
      end
      if ban > 0 and ok == 0 and not banned then
        -- A denial bans the key for ban, or until the quota is whole again.
        st, c, p, d, e, x = 0, -1, 0, 0, now + max(ban, reset, retry), true
      end
      local nv = v
      if mode == 1 and ok == 1 then
        -- check (limiter.Check): nothing counted; the state as it was, its
        -- denial mark cleared.
        if ox then nv = spack(FS, o1, o2, o3, o4, o5, 0) end
      elseif st ~= o1 or c ~= o2 or e ~= o5 or x ~= ox or d ~= o4 or p ~= o3 then
        nv = spack(FS, st, c, p, d, e, x and 1 or 0)
      end
      local di = 4 * i
      D[di - 3], D[di - 1], D[di] = nv, ok, f
      if nv ~= v and e > KS[4 * k - 3] then KS[4 * k - 3] = e end
      if ok == 0 and dry == 0 then pass = false end
      if keep then
        nst = nst + 1
        states[nst] = type(nv) == 'string' and #nv == 41 and nv or zero41
      end
    end
  end
  if bad then
    out[o] = 'B' .. spack('<i8', now)
    nout = o
  else
    -- All or nothing: when a limit that is not a dry run denies, only the
    -- denials are kept (their mark reports the first denial once). In
    -- order, so that the last state of a counter is the one kept.
    for di = 4, 4 * n, 4 do
      if pass or D[di - 1] == 0 then
        local f, nv = D[di], D[di - 3]
        local s = f % 4096
        local k = (f - s) / 4096
        local g = got[k]
        if g[s] ~= nv then
          g[s] = nv
          KS[4 * k - 2] = now
        end
      end
    end
    out[o] = head
    nout = o + n
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
local wrote, w = false, nil
for k = 1, nk do
  if KS[4 * k - 2] > 0 then
    local g, w0 = got[k], KS[4 * k]
    local x = w0 % 2097152
    local j0, m = (w0 - x) / 2097152, x >= 1048576 and 1 or 0
    local nf = x - m * 1048575
    local e, mark, ttl = KS[4 * k - 3], false, false
    -- A state outlives those read: the mark says whether the TTL covers
    -- it (read with the states, or now; written as an integer:
    -- string.format costs less than tostring, and tonumber reads both).
    if e > KS[4 * k - 1] and e > (tonumber(m == 1 and (g[1] or 0) or rcall('HGET', K[k], '~')) or 0) then
      local now = KS[4 * k - 2]
      e = e + min(max((e - now) / 4, 1000000), 3600000000)
      mark = string.format('%d', e)
      ttl = max(ceil((e - now) / 1000), 1)
    end
    local hset, res = wrote and rcall or rpcall, nil
    -- Most writes are of one to three fields, all set, and no mark: named
    -- as they are (no table to fill, no unpack).
    if mark or m == 1 or nf > 3 then
    elseif nf == 3 then
      if g[1] and g[2] and g[3] then res = hset('HSET', K[k], A[j0], g[1], A[j0 + 1], g[2], A[j0 + 2], g[3]) end
    elseif nf == 2 then
      if g[1] and g[2] then res = hset('HSET', K[k], A[j0], g[1], A[j0 + 1], g[2]) end
    elseif g[1] then
      res = hset('HSET', K[k], A[j0], g[1])
    end
    if res == nil then
      local nw = 0
      if not w then w = {nil, nil, nil, nil, nil, nil, nil, nil} end
      for s = 1 + m, nf do
        if g[s] then
          w[nw + 1], w[nw + 2] = A[j0 + s - 1], g[s]
          nw = nw + 2
        end
      end
      if mark then
        w[nw + 1], w[nw + 2] = '~', mark
        nw = nw + 2
      end
      res = hset('HSET', K[k], unpack(w, 1, nw))
    end
    if not wrote then
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
