package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// fakeServer fails while broken is set, and counts what it is asked.
type fakeServer struct {
	broken   atomic.Bool
	decides  atomic.Int64
	probes   atomic.Int64
	answered chan struct{}
	mu       sync.Mutex
	warnings int
}

var errFake = errors.New("fake server down")

func (f *fakeServer) Decide(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error {
	f.decides.Add(1)
	if f.broken.Load() {
		return errFake
	}
	for i := range results {
		results[i] = limiter.Result{Allowed: true}
	}
	return nil
}

func (f *fakeServer) GiveBack(ctx context.Context, now time.Time, reqs []Request) error { return nil }

func (f *fakeServer) Failed(err error, warn bool) {
	if warn {
		f.mu.Lock()
		f.warnings++
		f.mu.Unlock()
	}
}

func (f *fakeServer) Answered() { f.answered <- struct{}{} }

func (f *fakeServer) Probe(ctx context.Context) error {
	f.probes.Add(1)
	if f.broken.Load() {
		return errFake
	}
	return nil
}

// TestRemoteProbesUntilTheServerAnswers: after a failure, requests are
// decided by OnError at once (none asks the server, none waits), and say
// why; a goroutine probes the server, and the first answer puts it back in
// use: the next request is decided by the server. Before, the server was
// left alone for a second, and a request that came after it answered again
// in that second was denied (on_error deny) for nothing.
func TestRemoteProbesUntilTheServerAnswers(t *testing.T) {
	for _, onError := range []OnError{Deny, Allow} {
		t.Run(onError.String(), func(t *testing.T) {
			srv := &fakeServer{answered: make(chan struct{}, 1)}
			p := NewRemote(onError, time.Millisecond, false, 0)
			defer p.Stop()
			reqs := []Request{{Counter: "c", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Hour}, Cost: 1}}
			res := make([]limiter.Result, 1)
			ctx := context.Background()
			srv.broken.Store(true)
			if err := p.Take(ctx, time.Now(), reqs, res, srv); err == nil || !strings.Contains(err.Error(), errFake.Error()) {
				t.Fatalf("the failure: %v", err)
			}
			for range 50 {
				err := p.Take(ctx, time.Now(), reqs, res, srv)
				if onError == Deny != errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), errFake.Error()) {
					t.Fatalf("while down: %v, want %s saying why", err, onError)
				}
			}
			if n := srv.decides.Load(); n != 1 {
				t.Fatalf("%d decisions asked of a server known down, want the first only", n)
			}
			// Probed while down.
			deadline := time.Now().Add(30 * time.Second)
			for srv.probes.Load() < 3 {
				if time.Now().After(deadline) {
					t.Fatal("not probed")
				}
				time.Sleep(time.Millisecond)
			}
			srv.broken.Store(false)
			select {
			case <-srv.answered:
			case <-time.After(30 * time.Second):
				t.Fatal("the server answers, and the store did not notice")
			}
			if err := p.Take(ctx, time.Now(), reqs, res, srv); err != nil || !res[0].Allowed || srv.decides.Load() != 2 {
				t.Fatalf("after the server answered: %v %+v, %d decisions", err, res[0], srv.decides.Load())
			}
			// Probes stop once it answers.
			n := srv.probes.Load()
			if p.IsDown() {
				t.Fatal("still down")
			}
			p.Stop()
			if m := srv.probes.Load(); m != n {
				t.Fatalf("probes went on: %d, then %d", n, m)
			}
		})
	}
}

// TestRemoteStopEndsProbes: a store closed while its server is down stops
// probing it, and Stop waits for that.
func TestRemoteStopEndsProbes(t *testing.T) {
	srv := &fakeServer{answered: make(chan struct{}, 1)}
	srv.broken.Store(true)
	p := NewRemote(Allow, time.Millisecond, false, 0)
	res := make([]limiter.Result, 1)
	reqs := []Request{{Counter: "c", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Hour}, Cost: 1}}
	_ = p.Take(context.Background(), time.Now(), reqs, res, srv)
	p.Stop()
	n := srv.probes.Load()
	p.Down(errFake, srv) // after Stop: starts nothing
	p.Stop()
	if m := srv.probes.Load(); m != n {
		t.Fatalf("probes after Stop: %d, then %d", n, m)
	}
}
