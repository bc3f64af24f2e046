package store

import (
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// recordRunner records what a script was run with (EVALSHA's keys and
// arguments) and answers replies in turn (the last one again once they
// run out).
type recordRunner struct {
	keys, argv [][]string
	replies    []string
}

func (f *recordRunner) Do(_ context.Context, args []string) (interface{}, error) {
	n, _ := strconv.Atoi(args[2])
	f.keys = append(f.keys, slices.Clone(args[3:3+n]))
	f.argv = append(f.argv, slices.Clone(args[3+n:]))
	reply := f.replies[0]
	if len(f.replies) > 1 {
		f.replies = f.replies[1:]
	}
	return reply, nil
}

// TestTakeOneScript: the take of one request written out (takeOne) sends
// the keys and ARGV the general plan sends (keys, argv), and reads its
// reply as Take does, for every algorithm, mode, dry run, ban, wait,
// calendar and clock; a reply of another window ("B") is asked again at
// the server's time, a full Redis's ("F") is ErrFull.
func TestTakeOneScript(t *testing.T) {
	day := limiter.CalendarWindow{Period: limiter.Day}.Cached()
	limits := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute},
		{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Hour, Offset: 5 * time.Minute},
		{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute, Ban: 30 * time.Second},
		{Algorithm: limiter.FixedWindow, Quota: 10, Calendar: day},
		{Algorithm: limiter.AnchoredWindow, Quota: 3, Window: time.Minute, Offset: time.Second},
		{Algorithm: limiter.SlidingWindow, Quota: 7, Window: time.Minute, Offset: time.Second},
		{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 2, Window: time.Second},
		{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 2, Window: time.Second, Wait: 250 * time.Millisecond, Ban: time.Minute},
		{Algorithm: limiter.GCRA, Quota: 5, Rate: 100, Window: time.Minute, Wait: time.Second},
	}
	now := time.Date(2026, 12, 7, 23, 59, 59, 0, time.UTC)
	at := now.UnixMicro()
	// A live state, an expired one, one whose debt is not a number.
	states := []string{EncodeState(limiter.State{Start: at - 1000, Count: 4, Prev: 3, Debt: 1.5, Expires: at + 60e6, Denied: true}),
		EncodeState(limiter.State{Start: at - 1000, Count: 4, Expires: at}),
		EncodeState(limiter.State{Start: at - 1000, Count: 4, Debt: math.NaN(), Expires: at + 60e6})}
	for _, state := range states {
		for _, local := range []bool{false, true} {
			for li := range limits {
				for _, mode := range []Mode{ModeTake, ModeCheck, ModeCharge} {
					for _, dry := range []bool{false, true} {
						req := Request{Counter: "route:limit", Key: "client", Limit: limits[li], Cost: 2, Mode: mode, DryRun: dry}
						reqs := []Request{req}
						s := Scripts{Prefix: "edgelimit:", LocalClock: local}
						// The general plan.
						wantKeys, clients := s.keys(reqs)
						wantArgv := s.argv(reqs, clients, now, at, make([][2]int64, 1), true)
						// "R", the time, the state.
						reply := "R" + string(AppendInt(nil, at)) + state
						want := make([]limiter.Result, 1)
						if _, err := ParseResults(reply, reqs, nil, want, [][2]int64{boundsOf(&req, at)}); err != nil {
							t.Fatal(err)
						}
						f := &recordRunner{replies: []string{reply}}
						s.Doer = f
						got := make([]limiter.Result, 1)
						if err := s.Take(context.Background(), now, reqs, got); err != nil {
							t.Fatal(err)
						}
						name := limits[li].Algorithm.String()
						if len(f.keys) != 1 || !slices.Equal(f.keys[0], wantKeys) || !slices.Equal(f.argv[0], wantArgv) {
							t.Errorf("limit %d (%s) mode %d dry %v local %v: sent %q %q, the plan %q %q", li, name, mode, dry, local, f.keys, f.argv, wantKeys, wantArgv)
						}
						if got[0] != want[0] {
							t.Errorf("limit %d (%s) mode %d dry %v state %x: %+v, want %+v", li, name, mode, dry, state, got[0], want[0])
						}
					}
				}
			}
		}
	}
	// Another window at the server's time: asked again at that time.
	req := Request{Counter: "c", Key: "k", Limit: limits[3], Cost: 1}
	later := at + 3600e6
	f := &recordRunner{replies: []string{"B" + string(AppendInt(nil, later)), "R" + string(AppendInt(nil, later)) + strings.Repeat("\x00", StateLen)}}
	s := Scripts{Doer: f}
	got := make([]limiter.Result, 1)
	if err := s.Take(context.Background(), now, []Request{req}, got); err != nil || len(f.argv) != 2 {
		t.Fatalf("%v after %d runs", err, len(f.argv))
	}
	keys, clients := s.keys([]Request{req})
	if want := s.argv([]Request{req}, clients, now, later, make([][2]int64, 1), true); !slices.Equal(f.argv[1], want) || !slices.Equal(f.keys[1], keys) {
		t.Errorf("asked again with %q, want %q", f.argv[1], want)
	}
	// A full Redis: decided from what it holds, and ErrFull.
	f = &recordRunner{replies: []string{"FR" + string(AppendInt(nil, at)) + strings.Repeat("\x00", StateLen)}}
	s.Doer = f
	if err := s.Take(context.Background(), now, []Request{req}, got); err != ErrFull || !got[0].Allowed || got[0].FirstDenial {
		t.Errorf("full: %v %+v", err, got[0])
	}
	// A calendar that keeps moving, and a malformed reply.
	s.Doer = &recordRunner{replies: []string{"B" + string(AppendInt(nil, later))}}
	if err := s.Take(context.Background(), now, []Request{req}, got); err != ErrCalendarMoving {
		t.Errorf("a moving calendar: %v", err)
	}
	s.Doer = &recordRunner{replies: []string{"X"}}
	if err := s.Take(context.Background(), now, []Request{req}, got); err != ErrBadReply {
		t.Errorf("a malformed reply: %v", err)
	}
}

func boundsOf(r *Request, at int64) [2]int64 {
	if r.Limit.Calendar == nil {
		return [2]int64{}
	}
	a, b := r.Limit.Calendar.Bounds(at)
	return [2]int64{a, b}
}
