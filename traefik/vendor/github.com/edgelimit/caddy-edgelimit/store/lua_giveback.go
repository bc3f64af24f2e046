// The scripts that give back: undo (a decision across Cluster slots that
// one slot refused) and refund (a request a later limit denied), and the
// scripts' table.

package store

import (
	"crypto/sha1"
	"encoding/hex"
)

const luaUndo = luaCommon + `
local n = (#ARGV - 1) / 3
local now = clock(sunpack('<i8', ARGV[1]))
for i = 1, n do
  local k, alg, dry, q, cost, a, b = spec(i, 1)
  local key, field = KEYS[k], ARGV[1 + i]
  local before, after = ARGV[1 + n + 2 * i - 1], ARGV[1 + n + 2 * i]
  local v = redis.pcall('HGET', key, field)
  if type(v) == 'string' then
    if v == after then
      local st, c, p, d, e, x = state(before, now)
      if e > 0 then
        redis.call('HSET', key, field, enc(st, c, p, d, e, x))
      else
        redis.call('HDEL', key, field)
      end
    else
      local st, c, p, d, e, x = state(v, now)
      if e > 0 and #after == 41 then
        local wst, wc, wp, wd = sunpack('<i8i8i8d', after)
        if alg == 1 or alg == 2 or alg == 6 then
          if st == wst then c = max(c - cost, 0) end
        elseif alg == 3 then
          if st == wst then
            c = max(c - cost, 0)
          elseif st == wst + a then
            p = max(p - cost, 0)
          end
        elseif st ~= 0 then
          -- The backlog drains first in, first out: what is left of ours is
          -- what is left of the backlog we wrote, up to what we added.
          local interval = a / b
          local mine = math.min(max(wd - (now - wst), 0), cost * interval)
          local debt = d - max(now - st, 0)
          if debt < 0 then debt = 0 end
          st, d = now, max(debt - mine, 0)
        end
        redis.call('HSET', key, field, enc(st, c, p, d, e, x))
      end
    end
  end
end
return 'OK'
`

// Script is a Lua script and its SHA-1, for EVALSHA.
type Script struct {
	Src string
	SHA string
}

func newScript(src string) *Script {
	sum := sha1.Sum([]byte(src))
	return &Script{Src: src, SHA: hex.EncodeToString(sum[:])}
}

// luaRefund is limiter.Limit.Refund, as store.Memory applies it: it gives
// back what a Take counted for a request that a later handler denied, to
// the live state of each field, in the window that is still current. KEYS
// and ARGV are as for luaTake (the cost being what to give back); the reply
// is "R", or "B" and the server's time as from luaTake.
const luaRefund = luaCommon + `
local n = #ARGV - 1
local now = clock(sunpack('<i8', ARGV[1]))
for i = 1, n do
  local k, alg, dry, q, cost, a, b = spec(i, 1)
  if alg == 6 and (now < a or now >= b) then
    return 'B' .. spack('<i8', now)
  end
end
for i = 1, n do
  local k, alg, dry, q, cost, a, b = spec(i, 1)
  local key, field = KEYS[k], ARGV[1 + i]
  local v = redis.pcall('HGET', key, field)
  local st, c, p, d, e, x = state(v, now)
  if e > 0 then
    if alg == 4 or alg == 5 then
      if st ~= 0 then
        local debt = d - max(now - st, 0)
        st, d = now, max(debt - cost * (a / b), 0)
      end
    elseif alg == 2 then
      if now < st + a then c = max(c - cost, 0) end
    else
      local start, stop = bounds(alg, a, b, now)
      if st == start or alg == 3 and st == start - (stop - start) then
        c = max(c - cost, 0)
      end
    end
    local nv = enc(st, c, p, d, e, x)
    if nv ~= v then
      redis.call('HSET', key, field, nv)
    end
  end
end
return 'R'
`

// The scripts. TakeScript decides (luaTake), RefundScript gives back what
// a take counted (luaRefund), UndoScript takes back a take of one Cluster
// slot when another slot denied (luaUndo).
var (
	TakeScript   = newScript(luaTake)
	UndoScript   = newScript(luaUndo)
	RefundScript = newScript(luaRefund)
)
