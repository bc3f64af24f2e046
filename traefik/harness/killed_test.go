package harness

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestPoolKilledUnderYaegi: the plugin under Yaegi, its Redis pool's
// connections killed again and again (CLIENT KILL of its ACL user) while
// 8 clients send requests: no request hangs, and no decision is another
// request's or counted twice. Each client has its own limit (100,000 times
// its number, so that remainders of two clients never meet): the remainder
// a client is told falls by exactly one per request Redis allowed, plus at
// most one per request that failed in between (a script whose reply was
// lost may have counted).
func TestPoolKilledUnderYaegi(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Redis")
	}
	p := loadPlugin(t)
	r := startRedis(t)
	stamp := time.Now().UnixNano()
	user := fmt.Sprintf("killed%d", stamp)
	if out, err := r.command("ACL", "SETUSER", user, "on", ">pw", "allkeys", "allchannels", "allcommands"); err != nil || out != "+OK" {
		t.Fatalf("ACL SETUSER: %q %v", out, err)
	}
	const clients = 8
	var hs [clients]http.Handler
	for i := range hs {
		conf := fmt.Sprintf("limits:\n  l%d:\n    key: [header:X-Api-Key]\n    limit: %d\n    window: 1h\nstorage:\n  redis:\n    address: %s\n    username: %s\n    password: pw\n    keyPrefix: \"killed-%d:\"\n    timeout: 500ms\n    poolSize: 4\n    onError: deny\n    disableLocalDenials: true\n",
			i, 100000*(i+1), r.Addr, user, stamp)
		hs[i] = p.middleware(t, conf, nil, &upstream{})
	}
	stop := make(chan struct{})
	killerDone := make(chan int)
	go func() { // kills the pool's connections, paced, until stop
		kills := 0
		for {
			select {
			case <-stop:
				killerDone <- kills
				return
			default:
			}
			if out, err := r.command("CLIENT", "KILL", "USER", user); err == nil && len(out) > 1 {
				n, _ := strconv.Atoi(out[1:]) // ":n", the connections killed
				kills += n
			}
			time.Sleep(3 * time.Millisecond)
		}
	}()
	type result struct {
		code      int
		remaining int
	}
	results := make([][]result, clients)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for g := 0; g < clients; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 100; i++ {
					w := send(hs[g], "GET", "/", "X-Api-Key", "c"+strconv.Itoa(g))
					n, _ := strconv.Atoi(w.Header().Get("X-Ratelimit-Remaining"))
					results[g] = append(results[g], result{w.Code, n})
				}
			}()
		}
		wg.Wait()
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("requests still running after 2 minutes: a request hung in the Redis pool")
	}
	close(stop)
	kills := <-killerDone
	allowed := 0
	for g, rs := range results {
		limit := 100000 * (g + 1)
		last, failed := limit, 0
		for i, res := range rs {
			switch res.code {
			case http.StatusOK:
				allowed++
				if drop := last - res.remaining; res.remaining >= limit || drop < 1 || drop > 1+failed {
					t.Errorf("client %d, request %d: remaining %d after %d, %d failed in between: another's decision, or counted twice", g, i, res.remaining, last, failed)
				}
				last, failed = res.remaining, 0
			case http.StatusServiceUnavailable:
				failed++
			default:
				t.Errorf("client %d, request %d: %d", g, i, res.code)
			}
		}
	}
	t.Logf("%d of %d requests allowed, %d connections killed", allowed, clients*100, kills)
	if allowed == 0 {
		t.Error("no request allowed")
	}
}
