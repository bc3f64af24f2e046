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
