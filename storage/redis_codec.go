package storage

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/store"
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

// prepare builds the Redis key of each request's client, prefix{32 hex
// digits of the SHA-256 of the client's key} (a hash whose fields are the
// client's counters), and its Cluster slot, in one allocation.
func (s *Redis) prepare(sc *redisScratch, reqs []store.Request) {
	n := len(reqs)
	sc.keys = grow(sc.keys, n)
	sc.slots = grow(sc.slots, n)
	sc.bounds = grow(sc.bounds, n)
	keyLen := store.ClientKeyLen(s.prefix)
	buf := sc.buf[:0]
	if cap(buf) < n*keyLen {
		buf = make([]byte, 0, n*keyLen)
	}
	// first[i] is the first request with request i's client key.
	var firstBuf [16]int
	first := firstBuf[:0]
	if n > len(firstBuf) {
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
		// The client's key may be a credential and of any size: only its
		// hash goes to Redis. unsafe: hashing reads the bytes, and copying a
		// megabyte-long hostile header first would cost more than hashing it.
		sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(reqs[i].Key), len(reqs[i].Key)))
		tag := len(buf) + len(s.prefix) + 1
		buf = store.AppendClientKey(buf, s.prefix, &sum)
		sc.slots[i] = keySlot(buf[tag : len(buf)-1])
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
// scripts read them (store.AppendRequests), and records the calendar
// bounds it passes. The slices are the scratch's: the pipe copies them
// into its call.
func (s *Redis) requests(sc *redisScratch, reqs []store.Request, idx []int, at int64) (keys []string, spec []byte, fields []string) {
	keys, spec, fields = store.AppendRequests(sc.runKey[:0], sc.buf[:0], sc.argv[:0], reqs, sc.keys, idx, at, sc.bounds)
	sc.buf, sc.runKey, sc.argv = spec[:0], keys, fields
	return keys, spec, fields
}

// script is the KEYS and ARGV of a refund or an undo script for the
// requests at idx: ARGV[1] the time and the requests' numbers, then their
// fields. Copies, for a command of its own.
func (s *Redis) script(sc *redisScratch, reqs []store.Request, idx []int, now time.Time, at int64) (keys, argv []string) {
	k, spec, fields := s.requests(sc, reqs, idx, at)
	head := store.AppendInt(make([]byte, 0, 8+len(spec)), s.scriptNow(now))
	return slices.Clone(k), append([]string{string(append(head, spec...))}, fields...)
}

// takeArgs is the KEYS and ARGV of a take script of one decision of a
// Cluster slot: the script keeps each state before and after (flag 1), to
// undo the take when another slot denies.
func (s *Redis) takeArgs(sc *redisScratch, reqs []store.Request, idx []int, now time.Time, at int64) (keys, argv []string) {
	k, spec, fields := s.requests(sc, reqs, idx, at)
	head := store.AppendTakeHead(make([]byte, 0, 40+len(spec)+8*len(k)), 1, 1)
	head = store.AppendInt(head, s.scriptNow(now))
	head = store.AppendInt(head, int64(len(fields)))
	head = append(head, spec...)
	argv, head = store.PlanTake(new(store.TakePlan), make([]string, 1, 1+len(fields)), head, len(k), fields)
	argv[0] = string(head)
	return slices.Clone(k), argv
}

// scriptNow is the time the scripts decide at: 0 asks for the server's.
func (s *Redis) scriptNow(now time.Time) int64 {
	if s.serverTS {
		return 0
	}
	return now.UnixMicro()
}

// script is a script for go-redis: its SHA boxed once, since the hot path
// passes it to go-redis as is.
type script struct {
	*store.Script
	sha any
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	sc := &store.Script{Src: src, SHA: hex.EncodeToString(sum[:])}
	return &script{Script: sc, sha: sc.SHA}
}

var (
	takeScript   = newScript(store.TakeScript.Src)
	undoScript   = newScript(store.UndoScript.Src)
	refundScript = newScript(store.RefundScript.Src)
)

// onceCmd is a command go-redis must not send twice: a script whose reply
// was lost may have counted, and running it again would count twice.
type onceCmd struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (onceCmd) NoRetry() bool { return true }

func scriptCmd(ctx context.Context, sc *script, eval bool, keys []string, argv ...string) onceCmd {
	args := make([]any, 0, 3+len(keys)+len(argv))
	if eval {
		args = append(args, "eval", sc.Src)
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
	return errors.Is(err, redis.ErrNoScript) || store.IsNoScript(err)
}
