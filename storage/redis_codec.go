package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"time"
	"unsafe"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/redis/go-redis/v9"
)

// The wire form of the Redis store: key names, the scripts' arguments (the
// numbers of each limit as 8-byte little-endian integers) and their
// replies. The Lua side of the same encoding is in redis_script.go.

// redisScratch holds one decision's working memory, pooled.
type redisScratch struct {
	keys   []string   // per request: its client's hash key
	slots  []uint16   // per request: the key's Cluster slot
	bounds [][2]int64 // calendar bounds passed to the script, per request
	buf    []byte
	idx    []int    // request indexes, grouped by slot
	runKey []string // a script's KEYS
	argv   []string // a script's ARGV
}

// maxScratch keeps the pool from holding on to the buffers of a request
// with hostile, huge counters.
const maxScratch = 64 << 10

func (s *Redis) putScratch(sc *redisScratch) {
	if cap(sc.buf) > maxScratch {
		return
	}
	clear(sc.keys)
	clear(sc.runKey)
	clear(sc.argv)
	s.scratch.Put(sc)
}

// hashLen is the bytes of SHA-256 kept in keys: 128 bits, so that nobody
// can make a key collide with another client's.
const hashLen = 16

// prepare builds the Redis key of each request's client, prefix{32 hex
// digits of the SHA-256 of the client's key} (a hash whose fields are the
// client's counters), and its Cluster slot, in one allocation.
func (s *Redis) prepare(sc *redisScratch, reqs []Request) {
	n := len(reqs)
	sc.keys = grow(sc.keys, n)
	sc.slots = grow(sc.slots, n)
	sc.bounds = grow(sc.bounds, n)
	keyLen := len(s.prefix) + 2*hashLen + 2
	buf := sc.buf[:0]
	if cap(buf) < n*keyLen {
		buf = make([]byte, 0, n*keyLen)
	}
	// first[i] is the first request with request i's client key.
	var firstBuf [maxBatch]int
	first := firstBuf[:0]
	if n > maxBatch {
		first = make([]int, 0, n)
	}
	for i := range reqs {
		j := 0
		for j < i && reqs[j].Key != reqs[i].Key {
			j++
		}
		first = append(first, j)
		if j < i {
			sc.slots[i] = sc.slots[j]
			continue
		}
		buf = append(buf, s.prefix...)
		buf = append(buf, '{')
		// The client's key may be a credential and of any size: only its
		// hash goes to Redis. unsafe: hashing reads the bytes, and copying a
		// megabyte-long hostile header first would cost more than hashing it.
		sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(reqs[i].Key), len(reqs[i].Key)))
		tag := len(buf)
		buf = hex.AppendEncode(buf, sum[:hashLen])
		sc.slots[i] = keySlot(buf[tag:])
		buf = append(buf, '}')
	}
	all := string(buf)
	off := 0
	for i := range reqs {
		if j := first[i]; j < i {
			sc.keys[i] = sc.keys[j]
			continue
		}
		sc.keys[i] = all[off : off+keyLen]
		off += keyLen
	}
	sc.buf = buf[:0]
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// requests writes the requests at idx (all when idx is nil) as the
// scripts read them: the distinct client keys (their indexes from 1), five
// numbers per request (see luaCommon), and each request's field, its
// counter. It records the calendar bounds it passes. The slices are the
// scratch's: the pipe copies them into its call.
func (s *Redis) requests(sc *redisScratch, reqs []Request, idx []int, at int64) (keys []string, spec []byte, fields []string) {
	keys, fields, spec = sc.runKey[:0], sc.argv[:0], sc.buf[:0]
	n := len(reqs)
	if idx != nil {
		n = len(idx)
	}
	for j := range n {
		i := j
		if idx != nil {
			i = idx[j]
		}
		k := 0
		for k < len(keys) && keys[k] != sc.keys[i] {
			k++
		}
		if k == len(keys) {
			keys = append(keys, sc.keys[i])
		}
		r := &reqs[i]
		var start, end int64
		if r.Limit.Calendar != nil {
			start, end = r.Limit.Calendar.Bounds(at)
		}
		sc.bounds[i] = [2]int64{start, end}
		spec = appendLimit(spec, k+1, &r.Limit, r.Cost, r.DryRun, start, end)
		fields = append(fields, r.Counter)
	}
	sc.buf, sc.runKey, sc.argv = spec[:0], keys, fields
	return keys, spec, fields
}

// script is the KEYS and ARGV of a refund or an undo script for the
// requests at idx: ARGV[1] the time and the requests' numbers, then their
// fields. Copies, for a command of its own.
func (s *Redis) script(sc *redisScratch, reqs []Request, idx []int, now time.Time, at int64) (keys, argv []string) {
	k, spec, fields := s.requests(sc, reqs, idx, at)
	head := appendInt(make([]byte, 0, 8+len(spec)), s.scriptNow(now))
	return slices.Clone(k), append([]string{string(append(head, spec...))}, fields...)
}

// takeArgs is the KEYS and ARGV of a take script of one decision of a
// Cluster slot: the script keeps each state before and after (flag 1), to
// undo the take when another slot denies.
func (s *Redis) takeArgs(sc *redisScratch, reqs []Request, idx []int, now time.Time, at int64) (keys, argv []string) {
	k, spec, fields := s.requests(sc, reqs, idx, at)
	head := appendInt(make([]byte, 0, 32+len(spec)), 1)
	head = appendInt(head, 1)
	head = appendInt(head, s.scriptNow(now))
	head = appendInt(head, int64(len(fields)))
	return slices.Clone(k), append([]string{string(append(head, spec...))}, fields...)
}

// scriptNow is the time the scripts decide at: 0 asks for the server's.
func (s *Redis) scriptNow(now time.Time) int64 {
	if s.serverTS {
		return 0
	}
	return now.UnixMicro()
}

// calendarCode is the scripts' algorithm number of a calendar quota.
const calendarCode = 6

// appendLimit writes the five numbers the scripts read for one request on
// the key at index key (1-based): code (key*256 + algorithm*2 + dry run),
// quota, cost, and the algorithm's two numbers (see luaCommon).
func appendLimit(b []byte, key int, l *limiter.Limit, cost int64, dryRun bool, start, end int64) []byte {
	alg := int64(l.Algorithm)
	a, c := l.Window.Microseconds(), l.Offset.Microseconds()
	switch {
	case l.Calendar != nil:
		alg, a, c = calendarCode, start, end
	case l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA:
		c = l.Rate
	case l.Algorithm == limiter.AnchoredWindow:
		c = 0
	}
	code := int64(key)*256 + alg*2
	if dryRun {
		code++
	}
	b = appendInt(b, code)
	b = appendInt(b, l.Quota)
	b = appendInt(b, cost)
	b = appendInt(b, a)
	return appendInt(b, c)
}

// appendInt writes v as the scripts read it (struct '<i8').
func appendInt(b []byte, v int64) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

// onceCmd is a command go-redis must not send twice: a script whose reply
// was lost may have counted, and running it again would count twice.
type onceCmd struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (onceCmd) NoRetry() bool { return true }

func scriptCmd(ctx context.Context, sc *script, eval bool, keys []string, argv ...string) onceCmd {
	args := make([]any, 0, 3+len(keys)+len(argv))
	if eval {
		args = append(args, "eval", sc.src)
	} else {
		args = append(args, "evalsha", sc.sha)
	}
	args = append(args, len(keys))
	for _, k := range keys {
		args = append(args, k)
	}
	for _, a := range argv {
		args = append(args, a)
	}
	return onceCmd{redis.NewCmd(ctx, args...)}
}

func isNoScript(err error) bool {
	return errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")
}

// boundsReply recognizes "B" and the server's time: it is outside a
// calendar window that was passed.
func boundsReply(reply string) (int64, bool) {
	if len(reply) != 9 || reply[0] != 'B' {
		return 0, false
	}
	n := int64(binary.LittleEndian.Uint64([]byte(reply[1:])))
	return n, n > 0
}

var errBadReply = errors.New("redis storage: malformed script reply")

// parseResults reads the time decided at and the five numbers per request
// of a take reply into the results of the requests at idx (all when idx is
// nil), and returns what follows them (the states, when asked for).
func parseResults(reply string, reqs []Request, idx []int, results []limiter.Result, bounds [][2]int64) (string, error) {
	n := len(reqs)
	if idx != nil {
		n = len(idx)
	}
	const head = 9 // "R" and the time
	if len(reply) < head+40*n || reply[0] != 'R' {
		return "", errBadReply
	}
	at := int64(binary.LittleEndian.Uint64([]byte(reply[1:head])))
	for j := range n {
		i := j
		if idx != nil {
			i = idx[j]
		}
		var v [5]int64
		for k := range v {
			o := head + 40*j + 8*k
			v[k] = int64(binary.LittleEndian.Uint64([]byte(reply[o : o+8])))
		}
		l := &reqs[i].Limit
		r := &results[i]
		*r = limiter.Result{
			Allowed:     v[0] == 1,
			FirstDenial: v[1] == 1,
			Limit:       l.Quota,
			Remaining:   v[2],
			Reset:       time.Duration(v[3]) * time.Microsecond,
			ResetAt:     at + v[3],
			RetryAfter:  time.Duration(v[4]) * time.Microsecond,
			Window:      l.ResultWindow(bounds[i][0], bounds[i][1]),
		}
	}
	return reply[head+40*n:], nil
}
