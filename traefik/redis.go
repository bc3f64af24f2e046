package edgelimit

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// redisStore is the Caddy module's Redis store (storage/redis.go there) on
// the hand-written client: the same Lua scripts (redis_script.go, checked
// against storage's by TestLuaMatchesStorage), the same keys and argument
// encoding (storage/redis_codec.go), so that Traefik and Caddy instances on
// one Redis share their counts exactly. One script per request, however
// many limits apply; Redis's clock unless clock is local; onError when
// Redis does not answer in time. Redis Cluster and Sentinel are not
// supported.
type redisStore struct {
	pool    *respPool
	opts    *redisOptions
	local   *memoryStore // onError local
	denials *denials     // nil with disableLocalDenials
	epoch   time.Time
	down    int64 // atomic: monotonic nanoseconds since epoch until which Redis is left alone; 0 while it answers
	probing int32 // atomic: one request is trying Redis again
	log     *logger
}

func newRedisStore(o *redisOptions) *redisStore {
	s := &redisStore{pool: newRespPool(o), opts: o, epoch: time.Now(), log: newLogger("redis " + o.addr)}
	if o.onError == onErrorLocal {
		s.local = newMemoryStore(0)
	}
	if !o.noLocalDenials {
		s.denials = newDenials()
	}
	return s
}

// script is a Lua script and its SHA-1, for EVALSHA.
type script struct {
	src string
	sha string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:])}
}

// The plugin runs storage's take script one decision at a time, and its
// refund script; storage's undo script serves Cluster requests across
// slots, which the plugin does not support.
var (
	takeScript   = newScript(luaTake)
	refundScript = newScript(luaRefund)
)

func (s *redisStore) mono() int64 { return int64(time.Since(s.epoch)) }

// Take implements store.
func (s *redisStore) Take(ctx context.Context, now time.Time, reqs []request, results []limiter.Result) error {
	if len(reqs) == 0 {
		return nil
	}
	// The limits were validated when the middleware was built: validating
	// them again here, as the Caddy module's store does, would cost each
	// request some 13 µs per limit under Yaegi.
	if s.denials != nil && s.denials.check(now, reqs, results) {
		return nil
	}
	probe := false
	if until := atomic.LoadInt64(&s.down); until != 0 {
		if s.mono() < until || !atomic.CompareAndSwapInt32(&s.probing, 0, 1) {
			return s.fallback(ctx, now, reqs, results, nil)
		}
		probe = true
	}
	err := s.decide(ctx, now, reqs, results)
	switch {
	case err == nil:
		s.up(now)
		if s.denials != nil && denies(reqs, results) {
			s.denials.record(now, reqs, results)
		}
	case ctx.Err() != nil:
		// The client went away: Redis is not to blame.
	default:
		s.markDown(now, err)
	}
	if probe {
		atomic.StoreInt32(&s.probing, 0)
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return s.fallback(ctx, now, reqs, results, err)
	}
	return nil
}

// Refund implements store: limiter.Limit.Refund's arithmetic in one script.
func (s *redisStore) Refund(ctx context.Context, now time.Time, reqs []request) error {
	if len(reqs) == 0 {
		return nil
	}
	if s.denials != nil {
		s.denials.forget(reqs)
	}
	if until := atomic.LoadInt64(&s.down); until != 0 && s.mono() < until {
		if s.local != nil {
			return s.local.Refund(ctx, now, reqs)
		}
		return errors.New("redis rate-limit storage unavailable, nothing given back")
	}
	deadline := s.deadline(ctx)
	keys, idx := s.keys(reqs)
	err := atServerTime(now.UnixMicro(), func(at int64) (int64, error) {
		argv, _ := s.args(reqs, idx, now, at, false)
		reply, err := s.eval(ctx, deadline, refundScript, keys, argv)
		if err != nil {
			return 0, err
		}
		if t, ok := boundsReply(reply); ok {
			return t, nil
		}
		if reply != "R" {
			return 0, errBadReply
		}
		return 0, nil
	})
	if err != nil && ctx.Err() == nil {
		s.markDown(now, err)
		if s.local != nil {
			return s.local.Refund(ctx, now, reqs)
		}
	}
	return err
}

func (s *redisStore) deadline(ctx context.Context) time.Time {
	deadline := time.Now().Add(s.opts.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadline
}

// decide runs the take script, with the calendar windows of the server's
// time when its clock is on the other side of a boundary.
func (s *redisStore) decide(ctx context.Context, now time.Time, reqs []request, results []limiter.Result) error {
	deadline := s.deadline(ctx)
	keys, idx := s.keys(reqs)
	return atServerTime(now.UnixMicro(), func(at int64) (int64, error) {
		argv, bounds := s.args(reqs, idx, now, at, true)
		reply, err := s.eval(ctx, deadline, takeScript, keys, argv)
		if err != nil {
			return 0, err
		}
		if t, ok := boundsReply(reply); ok {
			return t, nil
		}
		if err := parseResults(reply, reqs, results, bounds); err != nil {
			return 0, err
		}
		allOrNothing(reqs, results[:len(reqs)])
		return 0, nil
	})
}

// eval runs a script with EVALSHA, or EVAL when Redis does not have it
// (after a restart or SCRIPT FLUSH; EVAL caches it again).
func (s *redisStore) eval(ctx context.Context, deadline time.Time, sc *script, keys, argv []string) (string, error) {
	args := make([]string, 0, 3+len(keys)+len(argv))
	args = append(args, "EVALSHA", sc.sha, strconv.Itoa(len(keys)))
	args = append(args, keys...)
	args = append(args, argv...)
	reply, err := s.pool.do(ctx, deadline, args...)
	if e, ok := err.(respError); ok && strings.HasPrefix(string(e), "NOSCRIPT") {
		args[0], args[1] = "EVAL", sc.src
		reply, err = s.pool.do(ctx, deadline, args...)
	}
	if err != nil {
		return "", err
	}
	text, ok := reply.(string)
	if !ok {
		return "", errBadReply
	}
	return text, nil
}

var errBadReply = errors.New("redis storage: malformed script reply")

// keys returns the scripts' KEYS, one Redis hash per client (its fields
// are the client's counters): prefix + "{" + 32 hex digits of
// SHA-256(client key) + "}", as storage/redis_codec.go names them. The
// client's key, which may be a credential, never goes to Redis as it is;
// the braces are a Cluster hash tag. idx[i] is the index (from 1) of
// request i's client in KEYS.
func (s *redisStore) keys(reqs []request) (keys []string, idx []int) {
	keys = make([]string, 0, len(reqs))
	idx = make([]int, len(reqs))
	for i := range reqs {
		j := 0
		for j < i && reqs[j].Key != reqs[i].Key {
			j++
		}
		if j < i {
			idx[i] = idx[j]
			continue
		}
		sum := sha256.Sum256([]byte(reqs[i].Key))
		keys = append(keys, s.opts.prefix+"{"+hex.EncodeToString(sum[:16])+"}")
		idx[i] = len(keys)
	}
	return keys, idx
}

// calendarCode is the scripts' algorithm number of a calendar quota.
const calendarCode = 6

// args writes a script's ARGV as storage's requests and takeArgs do:
// ARGV[1] holds 8-byte little-endian integers, a head, then five per
// request: code (client index * 256 + algorithm * 2 + dry run), quota,
// cost, and the algorithm's two numbers: (window, offset) for aligned and
// sliding windows, (window, 0) for an anchored one, (window, rate) for
// buckets, the (start, end) computed here for a calendar quota. The take
// script's head is flags 0 (no states back), one decision, its time (0 for
// the server's clock) and its number of requests; the refund script's is
// the time. ARGV[2...] are the requests' counters, their fields in the
// clients' hashes. It returns the calendar bounds it passed.
func (s *redisStore) args(reqs []request, idx []int, now time.Time, at int64, take bool) ([]string, [][2]int64) {
	b := make([]byte, 0, 8*(4+5*len(reqs)))
	t := now.UnixMicro()
	if !s.opts.localTime {
		t = 0
	}
	if take {
		b = appendInt(b, 0)
		b = appendInt(b, 1)
		b = appendInt(b, t)
		b = appendInt(b, int64(len(reqs)))
	} else {
		b = appendInt(b, t)
	}
	argv := make([]string, 1, 1+len(reqs))
	bounds := make([][2]int64, len(reqs))
	var nums [5]int64
	for i := range reqs {
		l := &reqs[i].Limit
		alg, a, c := int64(l.Algorithm), int64(l.Window/time.Microsecond), int64(l.Offset/time.Microsecond)
		if l.Calendar != nil {
			start, end := l.Calendar.Bounds(at)
			bounds[i] = [2]int64{start, end}
			alg, a, c = calendarCode, start, end
		} else if l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA {
			c = l.Rate
		} else if l.Algorithm == limiter.AnchoredWindow {
			c = 0
		}
		code := int64(idx[i])*256 + alg*2
		if reqs[i].DryRun {
			code++
		}
		nums = [5]int64{code, l.Quota, reqs[i].Cost, a, c}
		for _, v := range nums {
			// Written out rather than appendInt(b, v): under Yaegi a call
			// costs more than the eight bytes.
			b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
		}
		argv = append(argv, reqs[i].Counter)
	}
	argv[0] = string(b)
	return argv, bounds
}

// appendInt writes v as the scripts read it (struct '<i8').
func appendInt(b []byte, v int64) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
}

// le64 reads the 8-byte little-endian integer at s[o:].
func le64(s string, o int) int64 {
	return int64(uint64(s[o]) | uint64(s[o+1])<<8 | uint64(s[o+2])<<16 | uint64(s[o+3])<<24 |
		uint64(s[o+4])<<32 | uint64(s[o+5])<<40 | uint64(s[o+6])<<48 | uint64(s[o+7])<<56)
}

// boundsReply recognizes "B" and the server's time: it is outside a
// calendar window that was passed.
func boundsReply(reply string) (int64, bool) {
	if len(reply) != 9 || reply[0] != 'B' {
		return 0, false
	}
	n := le64(reply, 1)
	return n, n > 0
}

// parseResults reads "R", the time decided at, and five numbers per
// request: allowed first_denial remaining reset retry_after.
func parseResults(reply string, reqs []request, results []limiter.Result, bounds [][2]int64) error {
	const head = 9
	n := len(reqs)
	if len(reply) < head+40*n || reply[0] != 'R' {
		return errBadReply
	}
	at := le64(reply, 1)
	for i := 0; i < n; i++ {
		o := head + 40*i
		v := [5]int64{le64(reply, o), le64(reply, o+8), le64(reply, o+16), le64(reply, o+24), le64(reply, o+32)}
		l := &reqs[i].Limit
		results[i] = limiter.Result{
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
	return nil
}

var errCalendarMoving = errors.New("redis storage: calendar windows keep moving under the server's clock")

// atServerTime runs try with the time calendar windows are computed for:
// the caller's, then the server's when it answers from another calendar
// window, three times at most.
func atServerTime(at int64, try func(at int64) (int64, error)) error {
	for i := 0; i < 3; i++ {
		serverNow, err := try(at)
		if err != nil || serverNow == 0 {
			return err
		}
		at = serverNow
	}
	return errCalendarMoving
}

// markDown makes onError decide until the retry interval has passed; then
// one request tries Redis again.
func (s *redisStore) markDown(now time.Time, err error) {
	atomic.StoreInt64(&s.down, s.mono()+int64(defaultRetryInterval))
	s.log.warnf(time.Now(), "redis rate-limit storage unavailable; onError %s applies until it answers: %v",
		[3]string{"allow", "deny", "local"}[s.opts.onError], err)
}

func (s *redisStore) up(now time.Time) {
	if atomic.LoadInt64(&s.down) != 0 {
		atomic.StoreInt64(&s.down, 0)
		fmt.Printf("edgelimit %s: redis rate-limit storage answers again\n", s.log.name)
	}
}

// fallback applies onError; cause is nil when Redis was not even tried.
func (s *redisStore) fallback(ctx context.Context, now time.Time, reqs []request, results []limiter.Result, cause error) error {
	if cause == nil {
		cause = errors.New("redis did not answer recently; waiting before trying again")
	}
	switch s.opts.onError {
	case onErrorLocal:
		return s.local.Take(ctx, now, reqs, results)
	case onErrorDeny:
		return fmt.Errorf("%w (onError deny): %v", errUnavailable, cause)
	}
	return fmt.Errorf("redis rate-limit storage unavailable, not limiting (onError allow): %w", cause)
}
