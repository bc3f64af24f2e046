package edgelimit

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// Adversarial tests of the plugin's Redis pool (resp.go): a server or a
// network that answers late, in pieces, twice, or closes at any moment.
// The pool must never give a command another command's reply, never send
// a command twice, bound every wait, and leave no reader behind.

// probePool is a pool of size connections on addr, closed (its idle
// connections discarded) when the test ends.
func probePool(t *testing.T, addr string, timeout time.Duration, size int) *respPool {
	p := newRespPool(&redisOptions{RedisURL: store.RedisURL{Addr: addr}, RedisPolicy: store.RedisPolicy{Timeout: timeout}, poolSize: size})
	t.Cleanup(func() { closeIdle(p) })
	return p
}

// closeIdle discards the pool's idle connections.
func closeIdle(p *respPool) {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		discard(c)
	}
}

// waitFor waits for cond, at most 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// idleSeen tells whether every idle connection's reader has read
// something (the end of the stream, or data nobody asked for).
func idleSeen(p *respPool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.idle {
		if len(c.replies) == 0 {
			return false
		}
	}
	return true
}

// goroutinesBack waits for the goroutine count to fall to base.
func goroutinesBack(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines, %d before: left behind:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// echoID is the reply of a command carrying an id: the id.
func echoID(cmd []string) string { return "+" + cmd[len(cmd)-1] + "\r\n" }

// TestRespLateReply: a reply written after the command's timeout, before or
// after the next command, on a pool of one connection, is never the next
// command's reply: the connection it came on was closed.
func TestRespLateReply(t *testing.T) {
	for _, before := range []bool{true, false} {
		t.Run(map[bool]string{true: "before", false: "after"}[before], func(t *testing.T) {
			late := make(chan struct{})  // the test lets the late reply go
			wrote := make(chan error, 1) // the fake wrote it (or could not)
			f := newFakeRedis(t, nil)
			f.replyConn = func(c net.Conn, cmd []string) string {
				if cmd[0] == "SLOW" {
					<-late
					_, err := c.Write([]byte(echoID(cmd)))
					wrote <- err
					return "hang"
				}
				return echoID(cmd)
			}
			p := probePool(t, f.addr(), 50*time.Millisecond, 1)
			ctx := context.Background()
			if got, err := p.Do(ctx, []string{"SLOW", "1"}); err == nil {
				t.Fatalf("a reply after the timeout was taken: %v", got)
			}
			if before {
				close(late)
				<-wrote
			}
			for i := 2; i < 5; i++ {
				id := strconv.Itoa(i)
				if got, err := p.Do(ctx, []string{"ECHO", id}); err != nil || got != id {
					t.Fatalf("command %s after a late reply: %v %v", id, got, err)
				}
				if i == 2 && !before {
					close(late)
					<-wrote
				}
			}
		})
	}
}

// TestRespSplitReply: replies written in pieces, with pauses within the
// timeout, are read whole; a pause past the timeout is an error, and the
// connection is not reused (its rest would be the next reply).
func TestRespSplitReply(t *testing.T) {
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		id := cmd[len(cmd)-1]
		var parts []string
		switch cmd[0] {
		case "BULK":
			body := "R" + id + strings.Repeat("x", 5000)
			parts = []string{"$", strconv.Itoa(len(body)), "\r", "\n" + body[:3], body[3:4000], body[4000:], "\r", "\n"}
		case "ARR":
			parts = []string{"*2\r\n+", id, "\r\n:", "7", "\r\n"}
		default:
			parts = []string{"+", id, "\r", "\n"}
		}
		pause, _ := time.ParseDuration(cmd[1])
		for _, s := range parts[:len(parts)-1] {
			if _, err := c.Write([]byte(s)); err != nil {
				return ""
			}
			time.Sleep(pause)
		}
		return parts[len(parts)-1]
	}
	p := probePool(t, f.addr(), 300*time.Millisecond, 1)
	ctx := context.Background()
	n := 0
	for _, kind := range []string{"SIMPLE", "BULK", "ARR"} {
		n++
		id := strconv.Itoa(n)
		got, err := p.Do(ctx, []string{kind, "5ms", id})
		want := map[string]string{"SIMPLE": id, "BULK": "R" + id + strings.Repeat("x", 5000), "ARR": "[" + id + " 7]"}[kind]
		if err != nil || fmt.Sprint(got) != want {
			t.Errorf("%s in pieces: %.40q %v, want %.40q", kind, fmt.Sprint(got), err, want)
		}
		// A reply whose pieces take longer than the timeout: an error,
		// and the next command gets its own reply.
		n++
		if got, err := p.Do(ctx, []string{kind, "200ms", strconv.Itoa(n)}); err == nil {
			t.Errorf("%s in pieces past the timeout: %.40q", kind, fmt.Sprint(got))
		}
		n++
		id = strconv.Itoa(n)
		if got, err := p.Do(ctx, []string{"SIMPLE", "0s", id}); err != nil || got != id {
			t.Errorf("after a reply past the timeout: %v %v, want %s", got, err, id)
		}
	}
}

// TestRespExtraReply: a server that answers a command twice. The second
// reply, once it came, makes the connection unusable: the next command goes
// on a new connection and gets its own reply.
func TestRespExtraReply(t *testing.T) {
	f := newFakeRedis(t, nil)
	extra := make(chan struct{}, 1)
	f.replyConn = func(c net.Conn, cmd []string) string {
		if cmd[0] == "TWICE" {
			if _, err := c.Write([]byte(echoID(cmd))); err != nil {
				return ""
			}
			<-extra // after the client took the first reply
			return "+EXTRA" + cmd[1] + "\r\n"
		}
		return echoID(cmd)
	}
	p := probePool(t, f.addr(), time.Second, 1)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		id := strconv.Itoa(i)
		if got, err := p.Do(ctx, []string{"TWICE", id}); err != nil || got != id {
			t.Fatalf("TWICE %s: %v %v", id, got, err)
		}
		extra <- struct{}{}
		waitFor(t, "the extra reply read", func() bool { return idleSeen(p) })
		id = "n" + id
		if got, err := p.Do(ctx, []string{"ECHO", id}); err != nil || got != id {
			t.Fatalf("after an extra reply: %v %v, want %s", got, err, id)
		}
	}
	if n := f.connections(); n != 6 {
		t.Errorf("%d connections, want 6 (one per extra reply, and the last)", n)
	}
}

// TestRespExtraInOneWrite: a server that answers each command twice in
// one write (a reply, and bytes nobody asked for, in one segment). No
// command may get the extra as its reply, however soon the connection is
// reused. The extra is in the reader's buffer when the first reply is
// handed over: between the hand-over and the reader's parse of the extra
// the channel is empty, and a command sent then took the extra as its
// reply (the reader now fails a reply followed by buffered bytes).
func TestRespExtraInOneWrite(t *testing.T) {
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		return echoID(cmd) + "+EXTRA" + cmd[len(cmd)-1] + "\r\n"
	}
	p := probePool(t, f.addr(), time.Second, 2)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := 0
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				id := fmt.Sprintf("%d-%d", g, i)
				if got, err := p.Do(ctx, []string{"ECHO", id}); err == nil && got != id {
					mu.Lock()
					wrong++
					if wrong == 1 {
						t.Errorf("command %s got %v", id, got)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if wrong > 0 {
		t.Errorf("%d of 1200 commands got another's reply", wrong)
	}
}

// TestRespCloseAfterReply: a server that closes each connection right
// after its reply. Every command gets its own reply or an error, is
// received once, and once the close is seen the next command goes on a
// new connection.
func TestRespCloseAfterReply(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		mu.Lock()
		got[cmd[1]]++
		mu.Unlock()
		_, _ = c.Write([]byte(echoID(cmd)))
		return ""
	}
	p := probePool(t, f.addr(), time.Second, 1)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		id := strconv.Itoa(i)
		if reply, err := p.Do(ctx, []string{"ECHO", id}); err != nil || reply != id {
			t.Fatalf("command %s: %v %v", id, reply, err)
		}
		waitFor(t, "the close seen", func() bool { return idleSeen(p) })
	}
	// Without waiting: each command its own reply, or an error.
	for i := 20; i < 200; i++ {
		id := strconv.Itoa(i)
		if reply, err := p.Do(ctx, []string{"ECHO", id}); err == nil && reply != id {
			t.Fatalf("command %s: %v", id, reply)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range got {
		if n != 1 {
			t.Errorf("command %s received %d times", id, n)
		}
	}
}

// TestRespClientKill: a real Redis kills the pool's idle connections
// (CLIENT KILL): once their readers saw it, every command goes on a new
// connection and succeeds; right after the kill, a command may fail but is
// never run twice nor given another's reply (INCR counts every run).
func TestRespClientKill(t *testing.T) {
	addr := startRedis(t)
	admin := probePool(t, addr, 2*time.Second, 1)
	p := probePool(t, addr, 2*time.Second, 4)
	ctx := context.Background()
	fill := func() {
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = p.Do(ctx, []string{"PING"})
			}()
		}
		wg.Wait()
	}
	kill := func() {
		// The admin connection survives: SKIPME yes (the default).
		if _, err := admin.Do(ctx, []string{"CLIENT", "KILL", "TYPE", "normal"}); err != nil {
			t.Fatal(err)
		}
	}
	runs, oks := 0, 0
	incr := func(strict bool) {
		runs++
		reply, err := p.Do(ctx, []string{"INCR", "k"})
		if err != nil {
			if strict {
				t.Fatalf("INCR %d after the kill was seen: %v", runs, err)
			}
			return
		}
		oks++
		if n, ok := reply.(int64); !ok || n < int64(oks) {
			t.Fatalf("INCR %d: %v, %d succeeded", runs, reply, oks)
		}
	}
	for round := 0; round < 10; round++ {
		fill()
		kill()
		waitFor(t, "the kill seen", func() bool { return idleSeen(p) })
		for i := 0; i < 10; i++ {
			incr(true)
		}
		// Connections idle for pingIdle or more: not asked PING, the kill
		// seen already.
		fill()
		kill()
		waitFor(t, "the kill seen", func() bool { return idleSeen(p) })
		ageIdle(p, 2*pingIdle)
		incr(true)
		// Right after the kill.
		fill()
		kill()
		for i := 0; i < 10; i++ {
			incr(false)
		}
	}
	reply, err := admin.Do(ctx, []string{"GET", "k"})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(fmt.Sprint(reply)); n > runs || n < oks {
		t.Errorf("k is %v: %d INCRs sent, %d answered", reply, runs, oks)
	}
}

// chaosServer answers ECHO id with id, but with probability: late (up to
// twice the timeout), in pieces, not at all (closing), or closing right
// after. It counts how many times it received each id.
type chaosServer struct {
	*fakeRedis
	mu   sync.Mutex
	seen map[string]int
}

func newChaosServer(t *testing.T, timeout time.Duration) *chaosServer {
	s := &chaosServer{seen: map[string]int{}}
	s.fakeRedis = newFakeRedis(t, nil)
	var seed sync.Mutex
	rng := rand.New(rand.NewSource(1))
	s.replyConn = func(c net.Conn, cmd []string) string {
		id := cmd[len(cmd)-1]
		if cmd[0] == "ECHO" {
			s.mu.Lock()
			s.seen[id]++
			s.mu.Unlock()
		}
		seed.Lock()
		r := rng.Intn(100)
		d := time.Duration(rng.Int63n(int64(2 * timeout)))
		seed.Unlock()
		reply := echoID(cmd)
		switch {
		case r < 80:
			return reply
		case r < 88:
			time.Sleep(d)
			return reply
		case r < 94:
			for _, s := range []string{reply[:1], reply[1:3]} {
				if _, err := c.Write([]byte(s)); err != nil {
					return ""
				}
				time.Sleep(d / 8)
			}
			return reply[3:]
		case r < 97:
			return ""
		default:
			_, _ = c.Write([]byte(reply))
			return ""
		}
	}
	t.Cleanup(s.closeAll)
	return s
}

// TestRespChaos: 64 clients × 200 commands on a pool of 8, against a
// server that answers late, in pieces, or closes at random: every answered
// command got its own id back, no command was received twice, no command
// took more than the waits it is allowed, the pool never held more than
// its size, and no goroutine was left behind.
func TestRespChaos(t *testing.T) {
	const timeout = 20 * time.Millisecond
	base := runtime.NumGoroutine()
	s := newChaosServer(t, timeout)
	p := probePool(t, s.addr(), timeout, 8)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var wrong, oks, errs int
	var slowest time.Duration
	stop := make(chan struct{})
	over := make(chan string, 1)
	go func() { // the pool's bound, watched
		for {
			select {
			case <-stop:
				return
			default:
			}
			p.mu.Lock()
			used, idle := p.used, len(p.idle)
			p.mu.Unlock()
			if used > p.size || idle > p.size {
				select {
				case over <- fmt.Sprintf("used %d idle %d", used, idle):
				default:
				}
			}
			runtime.Gosched()
		}
	}()
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				id := fmt.Sprintf("%d-%d", g, i)
				start := time.Now()
				got, err := p.Do(ctx, []string{"ECHO", id})
				d := time.Since(start)
				mu.Lock()
				if d > slowest {
					slowest = d
				}
				switch {
				case err != nil:
					errs++
				case got != id:
					wrong++
					if wrong == 1 {
						t.Errorf("command %s got %v", id, got)
					}
				default:
					oks++
				}
				mu.Unlock()
			}
		}()
	}
	returnsWithin(t, 2*time.Minute, "64 clients × 200 commands", wg.Wait)
	close(stop)
	select {
	case s := <-over:
		t.Errorf("pool over its size: %s", s)
	default:
	}
	if wrong > 0 {
		t.Errorf("%d commands got another's reply", wrong)
	}
	s.mu.Lock()
	for id, n := range s.seen {
		if n > 1 {
			t.Errorf("command %s received %d times", id, n)
		}
	}
	s.mu.Unlock()
	// A slot (at most the timeout), a connection (a dial, or PINGs), the
	// reply (at most the timeout): a generous bound for a loaded machine.
	if slowest > 20*timeout+time.Second {
		t.Errorf("a command took %s (timeout %s)", slowest, timeout)
	}
	t.Logf("%d answered, %d errors, slowest %s, %d connections", oks, errs, slowest, s.connections())
	closeIdle(p)
	s.closeAll()
	goroutinesBack(t, base+2) // the fake's accept loop and its listener's cleanup
}

// TestRespStalled: a server that accepts, reads and never answers. 64
// clients × 5 commands on a pool of 4: each command fails within its
// waits, the server never sees more than 4 connections at once, and the
// readers all end.
func TestRespStalled(t *testing.T) {
	const timeout = 20 * time.Millisecond
	base := runtime.NumGoroutine()
	f := newFakeRedis(t, nil)
	var mu sync.Mutex
	live, most := 0, 0
	f.replyConn = func(c net.Conn, cmd []string) string {
		mu.Lock()
		live++
		if live > most {
			most = live
		}
		mu.Unlock()
		_, _ = io.Copy(io.Discard, c) // until the client closes
		mu.Lock()
		live--
		mu.Unlock()
		return ""
	}
	p := probePool(t, f.addr(), timeout, 4)
	ctx := context.Background()
	var wg sync.WaitGroup
	var slowest time.Duration
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				start := time.Now()
				if got, err := p.Do(ctx, []string{"ECHO", "x"}); err == nil {
					t.Errorf("a stalled server answered %v", got)
				}
				mu.Lock()
				if d := time.Since(start); d > slowest {
					slowest = d
				}
				mu.Unlock()
			}
		}()
	}
	returnsWithin(t, 2*time.Minute, "64 clients × 5 commands", wg.Wait)
	mu.Lock()
	most1, slowest1 := most, slowest
	mu.Unlock()
	// The server sees a close a little after the client made it, and a
	// request may dial between the release of a failed command's slot and
	// the close of its connection: new connections may come in between.
	// The pool's own count is watched in TestRespChaos.
	if most1 > 2*4 {
		t.Errorf("%d connections at once, pool of 4", most1)
	}
	if slowest1 > 2*timeout+time.Second {
		t.Errorf("a command took %s (timeout %s)", slowest1, timeout)
	}
	goroutinesBack(t, base+2)
}

// TestRespExtraAfterSetup: a server that answers AUTH twice in one write.
// The extra was in the buffer when the connection's reader started, and
// was the first command's reply; a dial whose setup left bytes unread now
// fails.
func TestRespExtraAfterSetup(t *testing.T) {
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		if cmd[0] == "AUTH" {
			return "+OK\r\n+EXTRA\r\n"
		}
		return echoID(cmd)
	}
	p := newRespPool(&redisOptions{RedisURL: store.RedisURL{Addr: f.addr(), Password: "pw"}, RedisPolicy: store.RedisPolicy{Timeout: time.Second}, poolSize: 1})
	t.Cleanup(func() { closeIdle(p) })
	for i := 0; i < 3; i++ {
		id := strconv.Itoa(i)
		if got, err := p.Do(context.Background(), []string{"ECHO", id}); err == nil && got != id {
			t.Fatalf("command %s got %v", id, got)
		}
	}
}

// TestRespStalledIdle: a Redis that stops answering (a long-running
// script, a paused process) while the pool holds size connections idle
// for pingIdle or more. A command asks one of them PING, which times out,
// and then each of the others in turn: size times the timeout, before a
// dial and the command's own wait.
func TestRespStalledIdle(t *testing.T) {
	// Long enough that the bound below keeps a second of slack on a
	// loaded machine and the bug (8 PINGs: 4s) still fails it.
	const timeout = 500 * time.Millisecond
	var mu sync.Mutex
	stalled := false
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		mu.Lock()
		s := stalled
		mu.Unlock()
		if s {
			_, _ = io.Copy(io.Discard, c)
			return ""
		}
		return echoID(cmd)
	}
	t.Cleanup(f.closeAll)
	p := probePool(t, f.addr(), timeout, 8)
	ctx := context.Background()
	// The pool full of idle connections, each with its reader, as eight
	// commands at once leave it (made here: commands at once may share).
	for i := 0; i < 8; i++ {
		c, err := p.dial(time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		go readLoop(c)
		c.lastUsed = time.Now()
		p.mu.Lock()
		p.idle = append(p.idle, c)
		p.mu.Unlock()
	}
	mu.Lock()
	stalled = true
	mu.Unlock()
	ageIdle(p, 2*pingIdle)
	t0 := time.Now()
	_, err := p.Do(ctx, []string{"ECHO", "y"})
	d := time.Since(t0)
	if err == nil {
		t.Fatal("a stalled server answered")
	}
	// The connection (PINGs, a dial) within the timeout, then the reply
	// within the timeout: generous slack for a loaded machine.
	if d > 2*timeout+time.Second {
		t.Errorf("a command on a stalled server took %s (timeout %s)", d, timeout)
	}
}
