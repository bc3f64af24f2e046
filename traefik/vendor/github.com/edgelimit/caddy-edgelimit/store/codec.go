package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// The wire form of a Redis store: key names, the scripts' arguments (the
// numbers of each limit as 8-byte little-endian integers), their replies,
// and the stored states. The Lua side of the same encoding is in lua.go.

// HashLen is the bytes of the SHA-256 of a client's key kept in its Redis
// key: 128 bits, so that nobody can make a key collide with another
// client's.
const HashLen = 16

// ClientKeyLen is the length of a client's Redis key with prefix.
func ClientKeyLen(prefix string) int { return len(prefix) + 2*HashLen + 2 }

// AppendClientKey writes the Redis key of the client whose key has the
// SHA-256 sum: prefix + "{" + 32 hex digits + "}", a hash whose fields are
// the client's counters. The client's key may be a credential: only its
// hash goes to Redis. The braces are a Cluster hash tag: a client's limits
// share a slot.
func AppendClientKey(b []byte, prefix string, sum *[32]byte) []byte {
	b = append(b, prefix...)
	b = append(b, '{')
	b = hex.AppendEncode(b, sum[:HashLen])
	return append(b, '}')
}

// InvalidateChannel is the channel on which an operator's reset or credit
// is announced, so that every store drops its local denials.
func InvalidateChannel(prefix string) string { return prefix + "invalidate" }

// CalendarCode is the scripts' algorithm number of a calendar quota.
const CalendarCode = 6

// AppendInt writes v as the scripts read it (struct '<i8'). With
// encoding/binary: under Yaegi a call of the standard library costs less
// than the eight bytes' shifts and conversions written out.
func AppendInt(b []byte, v int64) []byte {
	return binary.LittleEndian.AppendUint64(b, uint64(v))
}

// readInt reads the 8-byte little-endian integer at s[o:] (with
// encoding/binary, as AppendInt).
func readInt(s string, o int) int64 {
	return int64(binary.LittleEndian.Uint64([]byte(s[o : o+8])))
}

// AppendTakeHead starts the take script's ARGV[1]: its flags (1: keep each
// state before and after, to undo the take) and its number of decisions.
// Each decision follows: AppendInt of its time (0 for the server's clock)
// and of its number of requests, then its requests (AppendLimit).
func AppendTakeHead(b []byte, flags, decisions int64) []byte {
	return AppendInt(AppendInt(b, flags), decisions)
}

// AppendLimit writes the five numbers the scripts read for one request on
// the key at index key (1-based): code (key*256 + algorithm*2 + dry run;
// AppendRequests adds the request's mode*16),
// quota, cost, and the algorithm's two numbers (the code carries a ban's
// seconds above its 32nd bit, a bucket's rate a wait's milliseconds above
// its 40th): (window, offset) for an
// aligned or sliding window, (window, 0) for an anchored one, (window,
// rate) for buckets, the (start, end) computed by the caller for a calendar
// quota.
func AppendLimit(b []byte, key int, l *limiter.Limit, cost int64, dryRun bool, start, end int64) []byte {
	alg := int64(l.Algorithm)
	a, c := int64(l.Window/time.Microsecond), int64(l.Offset/time.Microsecond)
	switch {
	case l.Calendar != nil:
		alg = CalendarCode
		a = start
		c = end
	case l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA:
		// A wait's milliseconds above the rate (at most 2^40).
		c = l.Rate + int64(l.Wait/time.Millisecond)<<40
	case l.Algorithm == limiter.AnchoredWindow:
		c = 0
	}
	// A ban's length, in whole seconds, in bits 32 to 52 (a Lua double
	// holds 53 bits exactly).
	code := int64(l.Ban/time.Second)<<32 + int64(key)*256 + alg*2
	if dryRun {
		code++
	}
	b = AppendInt(b, code)
	b = AppendInt(b, l.Quota)
	b = AppendInt(b, cost)
	b = AppendInt(b, a)
	return AppendInt(b, c)
}

// AppendRequests writes the requests at idx (all when idx is nil) as the
// scripts read them: keys gets each distinct client key once (clientKeys[i]
// is request i's), spec the five numbers of each request (AppendLimit), and
// fields each request's counter, its field in the client's hash. bounds[i]
// gets the calendar window passed for request i, computed at at.
func AppendRequests(keys []string, spec []byte, fields []string, reqs []Request, clientKeys []string, idx []int, at int64, bounds [][2]int64) ([]string, []byte, []string) {
	n := len(reqs)
	if idx != nil {
		n = len(idx)
	}
	for j := 0; j < n; j++ {
		i := j
		if idx != nil {
			i = idx[j]
		}
		k := 0
		for k < len(keys) && keys[k] != clientKeys[i] {
			k++
		}
		if k == len(keys) {
			keys = append(keys, clientKeys[i])
		}
		r := &reqs[i]
		var start, end int64
		if r.Limit.Calendar != nil {
			start, end = r.Limit.Calendar.Bounds(at)
		}
		bounds[i] = [2]int64{start, end}
		spec = AppendLimit(spec, k+1, &r.Limit, r.Cost, r.DryRun, start, end)
		// The mode in bits 4 and 5 of the code's low byte (the algorithm
		// and the dry run take bits 0 to 3).
		spec[len(spec)-40] |= byte(r.Mode) << 4
		fields = append(fields, r.Counter)
	}
	return keys, spec, fields
}

// ErrBadReply is a script reply that is not what the scripts write.
var ErrBadReply = errors.New("redis storage: malformed script reply")

// BoundsReply recognizes "B" and the server's time: it is outside a
// calendar window that was passed (see AtServerTime).
func BoundsReply(reply string) (int64, bool) {
	if len(reply) != 9 || reply[0] != 'B' {
		return 0, false
	}
	n := readInt(reply, 1)
	return n, n > 0
}

// ReplyLen is the length of one decision's reply of n requests: "R", the
// time, and the state each request was decided from.
func ReplyLen(n int) int { return 9 + StateLen*n }

// ParseResults reads a take reply, "R", the time decided at and, per
// request, the state the script decided it from (StateLen bytes, all zeros
// for none), into the results of the requests at idx (all when idx is nil),
// and returns what follows them (the states, when asked for). The script
// sends states, not results: packing five numbers per request cost Redis
// more than deciding, and Go decides again from the same states, as
// store.Memory does (the script mirrors package limiter), for the results.
// bounds are those AppendRequests passed (a calendar quota's result is of
// the window the script decided in: the script answers "B" outside it).
func ParseResults(reply string, reqs []Request, idx []int, results []limiter.Result, bounds [][2]int64) (string, error) {
	n := len(reqs)
	if idx != nil {
		n = len(idx)
	}
	if len(reply) < ReplyLen(n) || reply[0] != 'R' {
		return "", ErrBadReply
	}
	at := readInt(reply, 1)
	for j := 0; j < n; j++ {
		i := j
		if idx != nil {
			i = idx[j]
		}
		o := 9 + StateLen*j
		st := DecodeState(reply[o:o+StateLen], at)
		r := &reqs[i]
		// As takeAll decides: a fixed window aligned to the clock is
		// Decide's, the others DecideAny's.
		if l := &r.Limit; r.Mode != ModeTake || l.Ban != 0 {
			decideMode(r, &st, &results[i], at)
		} else if l.Algorithm == limiter.FixedWindow && l.Calendar == nil {
			limiter.Decide(l, &st, &results[i], at, r.Cost)
		} else {
			limiter.DecideAny(l, &st, &results[i], at, r.Cost)
		}
	}
	return reply[ReplyLen(n):], nil
}

// StateLen is the length of a stored state: '<i8i8i8di8B' (start count
// prev debt expires denied).
const StateLen = 41

// DecodeState reads a stored state as the scripts do: a fresh state for
// nothing, a foreign value or an expired state.
func DecodeState(v string, now int64) limiter.State {
	if len(v) != StateLen {
		return limiter.State{}
	}
	d := math.Float64frombits(uint64(readInt(v, 24)))
	e := readInt(v, 32)
	if e <= now || math.IsNaN(d) || math.IsInf(d, 0) {
		return limiter.State{}
	}
	return limiter.State{Start: readInt(v, 0), Count: readInt(v, 8), Prev: readInt(v, 16), Debt: d, Expires: e, Denied: v[40] == 1}
}

// EncodeState writes a state as the scripts do.
func EncodeState(st limiter.State) string {
	b := make([]byte, 0, StateLen)
	b = AppendInt(b, st.Start)
	b = AppendInt(b, st.Count)
	b = AppendInt(b, st.Prev)
	b = AppendInt(b, int64(math.Float64bits(st.Debt)))
	b = AppendInt(b, st.Expires)
	d := byte(0)
	if st.Denied {
		d = 1
	}
	return string(append(b, d))
}

// TTLField is the field of a client's hash that holds the time (script
// clock, microseconds) until which its TTL is set (see luaCommon).
const TTLField = "~"

// MaxTakeFields bounds the requests of one take script: a request's code
// names its client and its field's place among the client's in 12 bits
// each (PlanTake).
const MaxTakeFields = 4095

// ErrTooManyFields is a take of more than MaxTakeFields requests.
var ErrTooManyFields = errors.New("redis storage: more than 4095 limits in one script")

// TakePlan is the scratch of PlanTake, to reuse.
type TakePlan struct {
	key   []int    // per distinct field: its key (1-based)
	name  []string // per distinct field: its counter
	place []int    // per distinct field: its place among its key's
	req   []int    // per request: its distinct field, plus planDup when an earlier request of its decision names it
	count []int    // per key: its distinct fields, plus planMark when its HMGET reads TTLField first
	start []int    // the index in argv of each distinct run of entries
}

// share looks for an earlier run of entries of the script that begins
// with the entries of key k (k > 1), at the end of argv, at index at in
// ARGV: when there is one, the key's are those (argv is cut back). It
// returns argv and the index in ARGV of the key's first entry. Called from the second
// key on of a batch of several decisions: a plan of one decision (the
// plugin's) does no more work than before, and its keys rarely have the
// same fields.
func (p *TakePlan) share(argv []string, k, at int) ([]string, int) {
	nf := p.count[k]/planMark + p.count[k]%planMark
	// ARGV[2] is argv[first].
	end := len(argv) - nf
	first := end - at + 2
	if k == 2 {
		// The first key's run, not shared.
		p.start = append(p.start[:0], first)
	}
	for _, j := range p.start {
		x := 0
		for j+nf <= end && x < nf && argv[j+x] == argv[end+x] {
			x++
		}
		if x == nf {
			return argv[:end], j - first + 2
		}
	}
	p.start = append(p.start, end)
	return argv, at
}

// planMark and planDup are flags PlanTake keeps above the numbers it
// counts (fewer slices and steps: the plugin runs PlanTake interpreted).
const (
	planMark = 1 << 20
	planDup  = 1 << 30
)

// PlanTake plans the fields of a take script, so that the script reads
// each client with one HMGET and writes it with one HSET without working
// out which fields are whose. spec is the script's ARGV[1]
// (AppendTakeHead, then per decision its time, its number of requests and
// its requests, each code naming its client's key, 1-based, as
// AppendRequests writes it) and fields[i] the counter of request i, in
// order, at most MaxTakeFields. PlanTake appends to argv the script's
// ARGV[2...] (per key, in order, TTLField when a request on the key is a
// token bucket or GCRA, and then each of its counters once; a key whose
// entries an earlier key's begin with shares those, not sent again),
// rewrites each request's code to name its key k and its counter's place
// s among the key's entries (k*4096 + s, 1-based), and appends to spec,
// per key, a word: the index in ARGV of its first entry times 2^21, plus
// 2^20 when the first is TTLField, plus its number of fields (without
// TTLField).
//
// A bucket's state outlives the last at every take (its expiry is when it
// is full again), so that the script needs the TTL's mark each time: it
// reads it with the states. A window's expiry is its end: the mark is
// needed once a window, and read then alone.
//
// Bit 6 of a code marks a take (mode 0, bits 4 and 5) of an aligned or a
// calendar window (algorithm 1 or 6, bits 1 to 3), no dry run (bit 0), no
// ban (bits 32 to 52), no states kept (flags 0), on a counter no earlier
// request of the decision names: the script's shorter path.
func PlanTake(p *TakePlan, argv []string, spec []byte, nkeys int, fields []string) ([]string, []byte) {
	p.key, p.name, p.place, p.req = p.key[:0], p.name[:0], p.place[:0], p.req[:0]
	p.count = p.count[:0]
	for k := 0; k <= nkeys; k++ {
		p.count = append(p.count, 0)
	}
	ndec := int(binary.LittleEndian.Uint32(spec[8:]))
	pos, r := 16, 0
	for d := 0; d < ndec; d++ {
		n := int(binary.LittleEndian.Uint32(spec[pos+8:]))
		pos += 16
		r0 := r
		for q := 0; q < n; q++ {
			k := int(binary.LittleEndian.Uint32(spec[pos:]) >> 8)
			// limiter.TokenBucket (4) or GCRA (5): bits 1 to 3 are 10x.
			if spec[pos]&12 == 8 {
				p.count[k] |= planMark
			}
			f := fields[r]
			e := len(p.key) - 1
			for e >= 0 && (p.key[e] != k || p.name[e] != f) {
				e--
			}
			if e < 0 {
				e = len(p.key)
				p.key = append(p.key, k)
				p.name = append(p.name, f)
				p.place = append(p.place, p.count[k]%planMark)
				p.count[k]++
			} else {
				for x := r0; x < r; x++ {
					if p.req[x]%planDup == e {
						e += planDup
						break
					}
				}
			}
			p.req = append(p.req, e)
			pos += 40
			r++
		}
	}
	// Appended in order, each key's fields in their places (entries of a
	// key come in the order of their places), unless an earlier key's
	// entries begin with the same: then the key's are those, sent once
	// (clients of one route have the same counters, and each argument
	// costs the script a table slot). ARGV[1] is the spec: the first
	// key's entries start at 2.
	base := len(argv) - 2
	for k := 1; k <= nkeys; k++ {
		m := p.count[k] / planMark
		at := len(argv) - base
		if m == 1 {
			argv = append(argv, TTLField)
		}
		for e := range p.key {
			if p.key[e] == k {
				argv = append(argv, p.name[e])
			}
		}
		if ndec > 1 && k > 1 {
			argv, at = p.share(argv, k, at)
		}
		spec = AppendInt(spec, int64(at<<21|p.count[k]))
	}
	keep := spec[0]
	pos, r = 16, 0
	for d := 0; d < ndec; d++ {
		n := int(binary.LittleEndian.Uint32(spec[pos+8:]))
		pos += 16
		for q := 0; q < n; q++ {
			e, low := p.req[r], spec[pos]
			if e >= planDup {
				e -= planDup
			} else if (low == 2 || low == 12) && keep == 0 && spec[pos+4]|spec[pos+5]|spec[pos+6] == 0 {
				low |= 64
			}
			// The code's low 32 bits: its low byte, then k*4096 + s.
			k := p.key[e]
			binary.LittleEndian.PutUint32(spec[pos:], uint32(k<<20|(p.count[k]/planMark+p.place[e]+1)<<8|int(low)))
			pos += 40
			r++
		}
	}
	return argv, spec
}
