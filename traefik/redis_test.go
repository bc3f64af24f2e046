package edgelimit

import (
	"bufio"
	"context"
	"fmt"
	"github.com/edgelimit/caddy-edgelimit/store"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startRedis starts a private redis-server on a free loopback port for one
// test (extra arguments go to redis-server), skipped without redis-server
// unless CI is set.
func startRedis(t testing.TB, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("Redis is required under CI: redis-server not found")
		}
		t.Skip("redis-server not found")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	args := append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return addr
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("redis-server on %s did not start", addr)
	return ""
}

// TestRedisCompiled: the compiled plugin on a real Redis with a password
// and a database number: counts, denials, and the refund of a request a
// later middleware denies.
func TestRedisCompiled(t *testing.T) {
	addr := startRedis(t, "--requirepass", "s3cret")
	clk := newClock()
	storage := &Storage{Redis: &RedisConfig{URL: "redis://:s3cret@" + addr + "/2", Clock: "local", OnError: "deny"}}
	inner := mustNew(t, &Config{Now: clk.Now, Storage: storage, Limits: map[string]*Limit{
		"route": {Key: []string{"header:X-Route"}, Limit: 1, Window: "1m"},
	}}, okHandler())
	outer := mustNew(t, &Config{Now: clk.Now, Storage: storage, Limits: map[string]*Limit{
		"wide": {Limit: 3, Window: "1m"},
	}}, inner)
	codes := []int{send(outer, "X-Route", "r").Code, send(outer, "X-Route", "r").Code, send(outer).Code}
	if codes[0] != 200 || codes[1] != 429 || codes[2] != 200 {
		t.Fatalf("codes %v, want 200 429 200", codes)
	}
	// wide: 1 (first) + 0 (second, given back) + 1 (third) = 2 counted.
	if w := send(outer); w.Header().Get("X-Ratelimit-Remaining") != "0" || w.Code != 200 {
		t.Errorf("fourth: %d remaining %s, want 200 and 0", w.Code, w.Header().Get("X-Ratelimit-Remaining"))
	}
	if w := send(outer); w.Code != 429 {
		t.Errorf("fifth: %d", w.Code)
	}
	// A password with a character that a URL percent-encodes: decoded, as
	// go-redis decodes it (the same URL works at both edges).
	addr2 := startRedis(t, "--requirepass", "p@ss:/?#")
	enc := mustNew(t, &Config{Now: clk.Now, Storage: &Storage{Redis: &RedisConfig{URL: "redis://:p%40ss%3A%2F%3F%23@" + addr2, OnError: "deny"}},
		Limits: map[string]*Limit{"x": {Limit: 3, Window: "1m"}}}, okHandler())
	if w := send(enc); w.Code != 200 {
		t.Errorf("a percent-encoded password: %d", w.Code)
	}
	// A wrong password: onError deny answers 503.
	bad := mustNew(t, &Config{Now: clk.Now, Storage: &Storage{Redis: &RedisConfig{Address: addr, Password: "wrong", OnError: "deny"}},
		Limits: map[string]*Limit{"x": {Limit: 3, Window: "1m"}}}, okHandler())
	if w := send(bad); w.Code != 503 || w.Header().Get("Retry-After") != "1" {
		t.Errorf("wrong password: %d %v", w.Code, w.Header())
	}
}

// fakeRedis answers each command with what reply returns ("" closes the
// connection without answering, "hang" never answers).
type fakeRedis struct {
	l         net.Listener
	mu        sync.Mutex
	reply     func(cmd []string) string
	replyConn func(c net.Conn, cmd []string) string // instead of reply, when set
	conns     int
	live      map[net.Conn]bool
}

func newFakeRedis(t *testing.T, reply func(cmd []string) string) *fakeRedis {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRedis{l: l, reply: reply, live: map[net.Conn]bool{}}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns++
			f.live[c] = true
			f.mu.Unlock()
			go f.send(c)
		}
	}()
	return f
}

func (f *fakeRedis) send(c net.Conn) {
	defer func() {
		c.Close()
		f.mu.Lock()
		delete(f.live, c)
		f.mu.Unlock()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		cmd := make([]string, n)
		for i := range cmd {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			arg, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd[i] = strings.TrimSuffix(arg, "\r\n")
		}
		var out string
		if f.replyConn != nil {
			out = f.replyConn(c, cmd)
		} else {
			out = f.reply(cmd)
		}
		switch out {
		case "":
			return
		case "hang":
			time.Sleep(time.Second)
			return
		default:
			if _, err := c.Write([]byte(out)); err != nil {
				return
			}
		}
	}
}

func (f *fakeRedis) addr() string { return f.l.Addr().String() }

// closeAll closes the server side of every open connection.
func (f *fakeRedis) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.live {
		c.Close()
	}
}

func (f *fakeRedis) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

func testPool(addr string, timeout time.Duration) *respPool {
	return newRespPool(&redisOptions{RedisURL: store.RedisURL{Addr: addr}, RedisPolicy: store.RedisPolicy{Timeout: timeout}, poolSize: 2})
}

// TestRespIdleClose: a Redis that closes idle connections (its timeout
// setting) closed a pooled connection just as a script was sent on it: the
// request fell to onError, and Redis was left alone for a second. A
// connection idle for pingIdle or more is asked PING first, which may be
// lost: the script goes on a connection that answered. The fake closes,
// unanswered, the first command on a connection it was told is idle; the
// pool's connections are aged rather than waited for.
func TestRespIdleClose(t *testing.T) {
	var mu sync.Mutex
	idle := map[net.Conn]bool{}
	scripts := 0
	f := newFakeRedis(t, nil)
	f.replyConn = func(c net.Conn, cmd []string) string {
		mu.Lock()
		defer mu.Unlock()
		if idle[c] {
			return "" // the server's idle timeout: closed, the command unread
		}
		if cmd[0] == "PING" {
			return "+PONG\r\n"
		}
		scripts++
		return "+OK\r\n"
	}
	p := testPool(f.addr(), time.Second)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := p.Do(ctx, []string{"EVALSHA"}); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		// Every connection has been quiet for longer than the server
		// keeps idle ones, and than pingIdle.
		mu.Lock()
		f.mu.Lock()
		for c := range f.live {
			idle[c] = true
		}
		f.mu.Unlock()
		mu.Unlock()
		ageIdle(p, p.pingIdle)
	}
	if scripts != 3 {
		t.Errorf("%d scripts ran, want 3", scripts)
	}
}

// ageIdle makes the pool's idle connections look unused for d.
func ageIdle(p *respPool, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.idle {
		c.lastUsed = c.lastUsed.Add(-d)
	}
}

func TestRespReplies(t *testing.T) {
	f := newFakeRedis(t, func(cmd []string) string {
		switch cmd[0] {
		case "BULK":
			return "$5\r\nR\x00\r\n1\r\n"
		case "NIL":
			return "$-1\r\n"
		case "INT":
			return ":42\r\n"
		case "ARR":
			return "*3\r\n+OK\r\n:1\r\n-ERR inner\r\n"
		case "ERR":
			return "-NOSCRIPT No matching script\r\n"
		case "ECHO":
			return "$" + strconv.Itoa(len(cmd[1])) + "\r\n" + cmd[1] + "\r\n"
		}
		return "+OK\r\n"
	})
	p := testPool(f.addr(), time.Second)
	ctx := context.Background()
	for cmd, want := range map[string]string{"BULK": "R\x00\r\n1", "NIL": "<nil>", "INT": "42", "ARR": "[OK 1 redis: ERR inner]", "PING": "OK"} {
		got, err := p.Do(ctx, []string{cmd})
		if err != nil || fmt.Sprint(got) != want {
			t.Errorf("%s: %q %v, want %q", cmd, fmt.Sprint(got), err, want)
		}
	}
	// Arguments of every size the command's encoding writes apart, each
	// sent and answered whole.
	for _, n := range []int{0, 9, 10, 99, 100, 255, 256, 5000} {
		arg := strings.Repeat("x", n)
		if got, err := p.Do(ctx, []string{"ECHO", arg}); err != nil || got != arg {
			t.Errorf("ECHO of %d bytes: %d bytes back, %v", n, len(fmt.Sprint(got)), err)
		}
	}
	if _, err := p.Do(ctx, []string{"ERR"}); err == nil || !strings.Contains(err.Error(), "NOSCRIPT") {
		t.Errorf("error reply: %v", err)
	}
}

// TestRespTimeout: a Redis that does not answer holds a request for the
// timeout, not longer.
func TestRespTimeout(t *testing.T) {
	f := newFakeRedis(t, func([]string) string { return "hang" })
	p := testPool(f.addr(), 50*time.Millisecond)
	start := time.Now()
	if _, err := p.Do(context.Background(), []string{"PING"}); err == nil {
		t.Fatal("no error")
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("took %s", d)
	}
}

// TestRespStale: a pooled connection the server closed is found before a
// command is sent on it, and replaced; a connection that closes after the
// command was sent is an error, never a second sending.
func TestRespStale(t *testing.T) {
	var mu sync.Mutex
	seen := 0
	f := newFakeRedis(t, func(cmd []string) string {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen == 2 {
			return "" // closes without answering
		}
		return "+OK" + strconv.Itoa(seen) + "\r\n"
	})
	p := testPool(f.addr(), time.Second)
	ctx := context.Background()
	if got, err := p.Do(ctx, []string{"PING"}); err != nil || got != "OK1" {
		t.Fatal(got, err)
	}
	if _, err := p.Do(ctx, []string{"PING"}); err == nil {
		t.Fatal("a connection closed after the command was read must fail, not send it again")
	}
	if got, err := p.Do(ctx, []string{"PING"}); err != nil || got != "OK3" {
		t.Fatalf("%v %v", got, err)
	}
	// Close the server side of the pooled connection: the next command
	// goes on a new one.
	f.closeAll()
	waitReaderEnded(t, p)
	if got, err := p.Do(ctx, []string{"PING"}); err != nil || got != "OK4" {
		t.Fatalf("after the server closed the pooled connection: %v %v", got, err)
	}
	if n := f.connections(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// waitReaderEnded waits until the reader of the pool's one idle
// connection has read the end of the stream that the server's close
// sent. The client's runtime sees it soon after the server closed the
// connection, not at once: a command sent in between goes out on the
// closed connection and fails, as one does on a connection the server
// closes while it is taken; what the pool promises is that it never uses
// a connection whose end its reader has read.
func waitReaderEnded(t *testing.T, p *respPool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		ended := len(p.idle) == 1 && len(p.idle[0].replies) != 0
		p.mu.Unlock()
		if ended {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the pooled connection's reader did not see the server's close within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRespReaders: each pooled connection has one reader, which ends
// with it: connections the server closes, again and again, leave no
// goroutine behind, and each next command goes on a new connection.
func TestRespReaders(t *testing.T) {
	f := newFakeRedis(t, func([]string) string { return "+OK\r\n" })
	p := testPool(f.addr(), time.Second)
	ctx := context.Background()
	if _, err := p.Do(ctx, []string{"PING"}); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		f.closeAll()
		waitReaderEnded(t, p)
		if _, err := p.Do(ctx, []string{"PING"}); err != nil {
			t.Fatalf("command %d after the server closed the pooled connection: %v", i, err)
		}
	}
	if n := f.connections(); n != 21 {
		t.Errorf("%d connections, want 21", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines, %d after the first command: readers left behind", n, base)
	}
}

// scriptCalls is how many scripts Redis has run (EVALSHA and EVAL).
func scriptCalls(t *testing.T, addr string) int {
	t.Helper()
	p := testPool(addr, time.Second)
	reply, err := p.Do(context.Background(), []string{"INFO", "commandstats"})
	if err != nil {
		t.Fatal(err)
	}
	text, _ := reply.(string)
	n := 0
	for _, line := range strings.Split(text, "\r\n") {
		for _, cmd := range []string{"cmdstat_evalsha:calls=", "cmdstat_eval:calls="} {
			if rest, ok := strings.CutPrefix(line, cmd); ok {
				calls, _, _ := strings.Cut(rest, ",")
				v, err := strconv.Atoi(calls)
				if err != nil {
					t.Fatalf("INFO commandstats: %q", line)
				}
				n += v
			}
		}
	}
	return n
}

// TestLocalDenials: a client Redis denied until T is denied here until T
// without a script, with the headers Redis's denial had (the wait counted
// down); other clients and the end of the window go to Redis again. With
// disableLocalDenials every request is a script.
func TestLocalDenials(t *testing.T) {
	addr := startRedis(t)
	for _, off := range []bool{false, true} {
		t.Run(map[bool]string{false: "on", true: "off"}[off], func(t *testing.T) {
			clk := newClock()
			h := mustNew(t, &Config{Now: clk.Now, Storage: &Storage{Redis: &RedisConfig{Address: addr, Clock: "local",
				OnError: "deny", KeyPrefix: "denials-" + strconv.FormatBool(off) + ":", DisableLocalDenials: off}},
				Limits: map[string]*Limit{
					"l":     {Key: []string{"header:X-Api-Key"}, Limit: 2, Window: "1m"},
					"quota": {Key: []string{"header:X-Api-Key"}, Limit: 100, Calendar: &Calendar{Period: "day"}},
				}}, okHandler())
			for i := 0; i < 2; i++ {
				if w := send(h, "X-Api-Key", "k"); w.Code != 200 {
					t.Fatalf("request %d: %d", i, w.Code)
				}
			}
			first := send(h, "X-Api-Key", "k")
			if first.Code != 429 || first.Header().Get("Retry-After") != "60" {
				t.Fatalf("third: %d Retry-After %s, want 429 and 60", first.Code, first.Header().Get("Retry-After"))
			}
			if !off {
				// Local denials are used once the store's subscription to
				// their invalidations is confirmed, in the background.
				deadline := time.Now().Add(10 * time.Second)
				for n := scriptCalls(t, addr); ; n = scriptCalls(t, addr) {
					send(h, "X-Api-Key", "k")
					if scriptCalls(t, addr) == n {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("local denials never answered")
					}
				}
			}
			calls := scriptCalls(t, addr)
			perRequest := 0
			if off {
				perRequest = 1
			}
			for i := 0; i < 5; i++ {
				w := send(h, "X-Api-Key", "k")
				if w.Code != 429 {
					t.Fatalf("denied client, request %d: %d", i, w.Code)
				}
				for _, name := range []string{"Retry-After", "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
					if w.Header().Get(name) != first.Header().Get(name) {
						t.Errorf("%s: %q, Redis's denial said %q", name, w.Header().Get(name), first.Header().Get(name))
					}
				}
				if w.Body.String() != first.Body.String() {
					t.Errorf("body %q, Redis's denial's %q", w.Body.String(), first.Body.String())
				}
			}
			if got := scriptCalls(t, addr) - calls; got != 5*perRequest {
				t.Errorf("five requests of a denied client ran %d scripts, want %d", got, 5*perRequest)
			}
			clk.Add(30 * time.Second)
			if w := send(h, "X-Api-Key", "k"); w.Code != 429 || w.Header().Get("Retry-After") != "30" {
				t.Errorf("30s later: %d Retry-After %s, want 429 and 30", w.Code, w.Header().Get("Retry-After"))
			}
			calls = scriptCalls(t, addr)
			if w := send(h, "X-Api-Key", "other"); w.Code != 200 {
				t.Errorf("another client: %d", w.Code)
			}
			clk.Add(30 * time.Second)
			if w := send(h, "X-Api-Key", "k"); w.Code != 200 || w.Header().Get("X-Ratelimit-Remaining") != "1" {
				t.Errorf("next window: %d remaining %s, want 200 and 1", w.Code, w.Header().Get("X-Ratelimit-Remaining"))
			}
			if got := scriptCalls(t, addr) - calls; got != 2 {
				t.Errorf("another client and the next window ran %d scripts, want 2", got)
			}
		})
	}
}

// TestWarningsThrottledUnderConcurrency: with Redis down, concurrent
// requests each reported the failure: a request that read the clock
// before another had logged saw a negative interval and logged again (2
// to 5 lines in a 3-second outage). One line per store.WarnInterval,
// whatever the concurrency.
func TestWarningsThrottledUnderConcurrency(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	var out lockedLog
	log.SetOutput(&out)
	defer log.SetOutput(os.Stderr)
	h := mustNew(t, &Config{Storage: &Storage{Redis: &RedisConfig{Address: dead, KeyPrefix: "warn:", DisableLocalDenials: true}},
		Limits: map[string]*Limit{"l": {Limit: 5, Window: "1m"}}}, okHandler())
	start := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				send(h)
			}
		}()
	}
	wg.Wait()
	allowed := 1 + int(time.Since(start)/store.WarnInterval)
	for _, what := range []string{"rate-limit storage failed", "redis rate-limit storage unavailable"} {
		if n := out.count(what); n < 1 || n > allowed {
			t.Errorf("%d lines of %q in %s, want 1 to %d:\n%s", n, what, time.Since(start), allowed, out.String())
		}
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedLog) count(s string) int { return strings.Count(l.String(), s) }

// returnsWithin fails the test when f has not returned within d.
func returnsWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
}

// TestReleaseWithoutSlot: a release without its slot (which acquire
// cannot make) neither hangs nor frees a slot it did not take.
func TestReleaseWithoutSlot(t *testing.T) {
	p := newRespPool(&redisOptions{RedisURL: store.RedisURL{Addr: "127.0.0.1:1"}, poolSize: 1})
	returnsWithin(t, 30*time.Second, "release without a slot", p.release)
	if !p.take() || p.take() {
		t.Error("a pool of one gave no slot, or two")
	}
}

// A limit that counts responses on a Redis that cannot be reached, with
// onError allow (the default): the request goes on, unlimited and charged
// nothing, as Caddy's handler lets it through (the plugin dereferenced the
// request state it had not made: a panic per request while Redis was down).
func TestRedisDownChargedAllow(t *testing.T) {
	clk := newClock()
	h := mustNew(t, &Config{Now: clk.Now, Storage: &Storage{Redis: &RedisConfig{Address: "127.0.0.1:1", Timeout: "50ms"}},
		Limits: map[string]*Limit{"tokens": {Limit: 100, Window: "1m", Key: []string{"header:X-Key"}, CostHeader: "X-Cost"}}},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Cost", "5")
			w.WriteHeader(http.StatusOK)
		}))
	for i := 0; i < 2; i++ {
		if w := send(h, "X-Key", "a"); w.Code != http.StatusOK || w.Header().Get("X-Cost") != "" {
			t.Fatalf("request %d: %d %v", i, w.Code, w.Header())
		}
	}
}
