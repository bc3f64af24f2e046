package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCoalescing: many concurrent misses for one key make one upstream
// request; every waiter gets the leader's entry.
func TestCoalescing(t *testing.T) {
	var g Group
	id := KeyOf(req("GET", "http://a/hot"), "z", nil).ID
	const n = 64
	var upstream atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	bodies := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, leader := g.Join(id)
			if leader {
				upstream.Add(1)
				<-release
				e := entryFor(req("GET", "http://a/hot"), "fresh", time.Minute, 0, t0)
				g.Land(id, f, Stored, e)
				bodies[i] = string(e.Body)
				return
			}
			outcome, e, err := f.Wait(context.Background())
			if err != nil || outcome != Stored {
				t.Errorf("waiter: %v %v", outcome, err)
				return
			}
			bodies[i] = string(e.Body)
		}()
	}
	// Release the leader once every other request waits on it.
	deadline := time.Now().Add(10 * time.Second)
	for g.Waiting(id) < n-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := g.Waiting(id); w != n-1 {
		t.Fatalf("%d waiters", w)
	}
	close(release)
	wg.Wait()
	if c := upstream.Load(); c != 1 {
		t.Fatalf("%d upstream requests", c)
	}
	for i, b := range bodies {
		if b != "fresh" {
			t.Fatalf("request %d got %q", i, b)
		}
	}
	// Landed: the next request leads a new flight.
	if _, leader := g.Join(id); !leader {
		t.Fatal("flight not landed")
	}
}

func TestFlightWaitGivesUp(t *testing.T) {
	var g Group
	id := Hash{1}
	_, leader := g.Join(id)
	f, second := g.Join(id)
	if !leader || second {
		t.Fatal("roles")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := f.Wait(ctx); err == nil {
		t.Fatal("a cancelled waiter keeps waiting")
	}
	g.Land(id, f, Unreachable, nil)
	if o, e, err := f.Wait(context.Background()); o != Unreachable || e != nil || err != nil {
		t.Fatalf("outcome %v %v %v", o, e, err)
	}
}

// TestFlightRelief: of the waiters that give up on a flight, the first
// leads one relief; the others, and the requests that come later, wait on
// it; whichever of the two lands first serves them.
func TestFlightRelief(t *testing.T) {
	var g Group
	id := Hash{2}
	f, _ := g.Join(id)
	w1, _ := g.Join(id)
	w2, _ := g.Join(id)
	if w1 != f || w2 != f {
		t.Fatal("waiters on another flight")
	}
	r, lead := g.Relieve(id, f)
	r2, lead2 := g.Relieve(id, f)
	if !lead || lead2 || r2 != r {
		t.Fatalf("relief: %v %v, same flight %v", lead, lead2, r2 == r)
	}
	late, leader := g.Join(id)
	if leader || late != r {
		t.Fatal("a later request does not join the relief")
	}
	// The first flight lands first: it serves the relief's waiters.
	e := entryFor(req("GET", "http://a/x"), "first", time.Minute, 0, t0)
	g.Land(id, f, Stored, e)
	if o, got, err := r.Wait(context.Background()); o != Stored || got != e || err != nil {
		t.Fatalf("relief waiter: %v %v %v", o, got, err)
	}
	// A waiter that gives up after f landed takes f's outcome.
	if again, lead := g.Relieve(id, f); lead || again != r {
		t.Fatal("a second relief")
	}
	g.Land(id, r, Uncacheable, nil)
	if _, leader := g.Join(id); !leader {
		t.Fatal("the relief did not land")
	}
	// Giving up on a landed flight with no relief returns it.
	var g2 Group
	f2, _ := g2.Join(id)
	g2.Land(id, f2, Unreachable, nil)
	if back, lead := g2.Relieve(id, f2); lead || back != f2 {
		t.Fatal("a relief for a landed flight")
	}
}
