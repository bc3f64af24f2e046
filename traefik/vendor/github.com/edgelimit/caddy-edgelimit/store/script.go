package store

import (
	"context"
	"crypto/sha256"
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
	if len(reqs) > MaxTakeFields {
		return ErrTooManyFields
	}
	keys, clients := s.keys(reqs)
	bounds := make([][2]int64, len(reqs))
	at := now.UnixMicro()
	for i := 0; i < 3; i++ {
		argv := s.argv(reqs, clients, now, at, bounds, true)
		got, err := RunScript(ctx, s.Doer, TakeScript, keys, argv)
		if err != nil {
			return err
		}
		reply, ok := got.(string)
		if !ok {
			return ErrBadReply
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

// Refund gives back what a take of reqs counted, with the refund script.
func (s *Scripts) Refund(ctx context.Context, now time.Time, reqs []Request) error {
	keys, clients := s.keys(reqs)
	bounds := make([][2]int64, len(reqs))
	at := now.UnixMicro()
	for i := 0; i < 3; i++ {
		got, err := RunScript(ctx, s.Doer, RefundScript, keys, s.argv(reqs, clients, now, at, bounds, false))
		if err != nil {
			return err
		}
		reply, ok := got.(string)
		if !ok {
			return ErrBadReply
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
