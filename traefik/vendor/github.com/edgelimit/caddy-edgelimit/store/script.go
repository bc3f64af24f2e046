package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Scripts runs the take and refund scripts of one decision at a time, for a
// client without batching (the Traefik plugin's): the keys and arguments
// of package store's encoding, the server's clock unless LocalClock, and
// the calendar windows of the server's time when its clock is on the
// other side of a boundary (AtServerTime).
type Scripts struct {
	Doer       Doer
	Prefix     string
	LocalClock bool
}

// Take decides reqs, all or nothing, with the take script. (AtServerTime's
// loop written out: a closure costs the interpreted plugin more than the
// loop.)
func (s *Scripts) Take(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	return TakeScripts(s, ctx, now, reqs, results)
}

// TakeScripts is s.Take as a function: the plugin calls it on every
// request, and under Yaegi a method call costs about four function calls.
func TakeScripts(s *Scripts, ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(reqs) == 1 {
		return takeOne(s, ctx, now, reqs, results)
	}
	return takeMany(s, ctx, now, reqs, results)
}

// takeMany is Take of several requests. (Apart from Take: under Yaegi a
// call costs for every value of its function, run or not.)
func takeMany(s *Scripts, ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	if len(reqs) > MaxTakeFields {
		return ErrTooManyFields
	}
	keys, clients := s.keys(reqs)
	bounds := make([][2]int64, len(reqs))
	at := now.UnixMicro()
	for i := 0; i < 3; i++ {
		argv := s.argv(reqs, clients, now, at, bounds, true)
		reply, err := ScriptText(ctx, s.Doer, TakeScript, keys, argv)
		if err != nil {
			return err
		}
		reply, full := FullReply(reply)
		if t, ok := BoundsReply(reply); ok {
			at = t
			continue
		}
		if _, err := ParseResults(reply, reqs, nil, results, bounds); err != nil {
			return err
		}
		AllOrNothing(reqs, results[:len(reqs)])
		if full {
			Unwritten(results[:len(reqs)])
			return ErrFull
		}
		return nil
	}
	return ErrCalendarMoving
}

// takeOne is Take of one request (the plugin's usual case) written out:
// under Yaegi every call, append and conversion allocates, and a general
// plan (AppendRequests, PlanTake) of one request costs its every slot.
// Its keys, ARGV and reply are those of the general path
// (TestTakeOneScript): the client's key; ARGV[1] the take head (flags 0,
// one decision), the time, one request, its five numbers (AppendLimit),
// its code naming field 1, or 2 after TTLField, of key 1 (PlanTake), then
// key 1's word (its entries at ARGV[2], TTLField's mark, one field);
// ARGV[2...] TTLField for a bucket, and the counter. A calendar window
// (which the server's clock may put in another window, asked again) takes
// the general path: kept out of this function, whose every value costs
// each call under Yaegi.
func takeOne(s *Scripts, ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	r := &reqs[0]
	l := &r.Limit
	if l.Calendar != nil {
		return takeMany(s, ctx, now, reqs, results)
	}
	t := int64(0)
	if s.LocalClock {
		t = now.UnixMicro()
	}
	a, c := int64(l.Window/time.Microsecond), int64(l.Offset/time.Microsecond)
	mark := int64(0)
	if l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA {
		c = l.Rate + int64(l.Wait/time.Millisecond)<<40
		mark = 1
	} else if l.Algorithm == limiter.AnchoredWindow {
		c = 0
	}
	low := int64(l.Algorithm)*2 + int64(r.Mode)<<4
	if r.DryRun {
		low++
	}
	ban := int64(l.Ban / time.Second)
	if (low == 2 || low == 12) && ban&0xffffff == 0 {
		low |= 64
	}
	// The numbers in one call, and the reply's in another: under Yaegi
	// each expression of a function costs its every call, and each call
	// into the standard library more.
	nums := [10]int64{0, 1, t, 1, ban<<32 | 1<<20 | (mark+1)<<8 | low, l.Quota, r.Cost, a, c, 2<<21 | mark<<20 | 1}
	var spec strings.Builder
	_ = binary.Write(&spec, binary.LittleEndian, nums[:])
	sum := sha256.Sum256([]byte(r.Key))
	// RunScript's command, KEYS and ARGV, written out.
	args := []string{"EVALSHA", TakeScript.SHA, "1", s.Prefix + "{" + hex.EncodeToString(sum[:HashLen]) + "}", spec.String(), TTLField, r.Counter}
	if mark == 0 {
		args[5] = r.Counter
		args = args[:6]
	}
	// doScript written out.
	got, err := s.Doer.Do(ctx, args)
	if err != nil && IsNoScript(err) {
		args[0] = "EVAL"
		args[1] = TakeScript.Src
		got, err = s.Doer.Do(ctx, args)
	}
	if err != nil {
		return err
	}
	reply, ok := got.(string)
	if !ok {
		return ErrBadReply
	}
	full := len(reply) > 0 && reply[0] == 'F'
	if full {
		reply = reply[1:]
	}
	// ParseResults of one request (AllOrNothing has nothing to undo),
	// readInt and DecodeState written out.
	var w wireState
	if len(reply) < 9+StateLen || reply[0] != 'R' || binary.Read(strings.NewReader(reply[1:9+StateLen]), binary.LittleEndian, &w) != nil {
		return ErrBadReply
	}
	st := zeroState
	// Not NaN nor infinite, as math's IsNaN and IsInf test (each call
	// into the standard library costs the plugin more).
	if w.Expires > w.At && w.Debt == w.Debt && w.Debt <= math.MaxFloat64 && w.Debt >= -math.MaxFloat64 {
		st = limiter.State{Start: w.Start, Count: w.Count, Prev: w.Prev, Debt: w.Debt, Expires: w.Expires, Denied: w.Denied == 1}
	}
	if r.Mode == ModeTake && l.Ban == 0 {
		limiter.Decide(l, &st, &results[0], w.At, r.Cost)
	} else {
		decideMode(r, &st, &results[0], w.At)
	}
	if full {
		results[0].FirstDenial = false
		return ErrFull
	}
	return nil
}

// wireState is a take script's time and stored state (StateLen), as
// takeOne reads them.
type wireState struct {
	At, Start, Count, Prev int64
	Debt                   float64
	Expires                int64
	Denied                 uint8
}

// Refund gives back what a take of reqs counted, with the refund script.
func (s *Scripts) Refund(ctx context.Context, now time.Time, reqs []Request) error {
	keys, clients := s.keys(reqs)
	bounds := make([][2]int64, len(reqs))
	at := now.UnixMicro()
	for i := 0; i < 3; i++ {
		reply, err := ScriptText(ctx, s.Doer, RefundScript, keys, s.argv(reqs, clients, now, at, bounds, false))
		if err != nil {
			return err
		}
		if t, ok := BoundsReply(reply); ok {
			at = t
			continue
		}
		if reply != "R" {
			return ErrBadReply
		}
		return nil
	}
	return ErrCalendarMoving
}

// keys returns the scripts' KEYS, one Redis hash per client, and each
// request's client key.
func (s *Scripts) keys(reqs []Request) (keys, clients []string) {
	clients = make([]string, len(reqs))
	for i := range reqs {
		j := 0
		for j < i && reqs[j].Key != reqs[i].Key {
			j++
		}
		if j < i {
			clients[i] = clients[j]
			continue
		}
		sum := sha256.Sum256([]byte(reqs[i].Key))
		clients[i] = string(AppendClientKey(make([]byte, 0, ClientKeyLen(s.Prefix)), s.Prefix, &sum))
		keys = append(keys, clients[i])
	}
	return keys, clients
}

// argv is a script's ARGV: the take script's head (no states back, one
// decision, its time, its number of requests) or the refund script's (the
// time), the requests' numbers, then their counters (as PlanTake lays them
// out for the take script).
func (s *Scripts) argv(reqs []Request, clients []string, now time.Time, at int64, bounds [][2]int64, take bool) []string {
	t := int64(0)
	if s.LocalClock {
		t = now.UnixMicro()
	}
	b := make([]byte, 0, 8*(5+6*len(reqs)))
	if take {
		b = AppendTakeHead(b, 0, 1)
		b = AppendInt(b, t)
		b = AppendInt(b, int64(len(reqs)))
	} else {
		b = AppendInt(b, t)
	}
	argv := make([]string, 1, 2+2*len(reqs))
	if take {
		keys, spec, fields := AppendRequests(nil, b, nil, reqs, clients, nil, at, bounds)
		argv, spec = PlanTake(new(TakePlan), argv, spec, len(keys), fields)
		argv[0] = string(spec)
		return argv
	}
	_, b, argv = AppendRequests(nil, b, argv, reqs, clients, nil, at, bounds)
	argv[0] = string(b)
	return argv
}
