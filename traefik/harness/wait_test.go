package harness

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestWaitUnderYaegi: the plugin under Yaegi holds a request over a
// bucket's limit until its turn (on a timer: the decisions are on a fixed
// clock, so each request is held its place in the queue), denies one past
// the wait, and a client that leaves while held gives its place back.
func TestWaitUnderYaegi(t *testing.T) {
	p := loadPlugin(t)
	base := clockBase().Add(time.Hour)
	h := p.middleware(t, "limits:\n  hooks: {key: [header:X-Customer], algorithm: gcra, limit: 1, refill: 10, window: 1s, wait: 300ms}\n",
		func() time.Time { return base }, &upstream{})
	send := func(ctx context.Context) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
		req.Header.Set("X-Customer", "acme")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	expectReply(t, send(context.Background()), 200)
	// A client gone before its turn: nothing served, its place back.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if w := send(gone); w.Body.Len() != 0 || len(w.Header()) != 0 {
		t.Fatalf("a request whose client left was answered: %d %v %q", w.Code, w.Header(), w.Body.String())
	}
	for range 3 {
		expectReply(t, send(context.Background()), 200, "X-Ratelimit-Remaining", "0")
	}
	expectReply(t, send(context.Background()), 429, "Retry-After", "1")
}

// TestWaitConfigErrors: a bad wait is refused, naming the field.
func TestWaitConfigErrors(t *testing.T) {
	p := loadPlugin(t)
	bucket := "limits:\n  l:\n    algorithm: gcra\n    limit: 5\n    window: 1s\n"
	for conf, want := range map[string]string{
		bucket + "    wait: 0":                                       `limit "l": wait must be more than 0, got 0s`,
		bucket + "    wait: soon":                                    `limit "l": wait "soon"`,
		bucket + "    wait: 9s":                                      `limit "l": wait must be whole milliseconds from 1ms to 8s`,
		bucket + "    wait: 1s\n    waitMax: 2000":                   `limit "l": wait max must be from 1 to 1024`,
		bucket + "    waitMax: 2":                                    `limit "l": wait max needs a wait`,
		bucket + "    waits: 1s":                                     "unknown option limits.l.waits (did you mean wait?)",
		"limits:\n  l:\n    limit: 5\n    window: 1m\n    wait: 1s":  `limit "l": wait needs token_bucket or gcra, not fixed_window`,
		bucket + "    wait: 1s\n    countResponses: {status: [401]}": `limit "l": wait goes with limits that count requests`,
	} {
		var m map[string]interface{}
		if err := yamlUnmarshal(conf, &m); err != nil {
			t.Fatal(err)
		}
		cfg, err := p.decode(m)
		if err == nil {
			_, err = p.newHandler(cfg, &upstream{}, "bad")
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one that says %q", conf, err, want)
		}
	}
}
