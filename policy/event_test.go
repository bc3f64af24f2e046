package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewWebhook(t *testing.T) {
	for _, raw := range []string{"", "ftp://example.com/x", "http://", "/alerts", "http://[::1"} {
		if _, err := NewWebhook(raw, nil, 0); err == nil {
			t.Errorf("%q is a webhook", raw)
		}
	}
	w, err := NewWebhook("https://hooks.example.com/a", map[string]string{"authorization": "Bearer x"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if w.Client.Timeout != 5*time.Second || w.Headers.Get("Authorization") != "Bearer x" || len(w.Headers["Authorization"]) != 1 {
		t.Fatalf("%+v", w)
	}
	if w, _ = NewWebhook("http://127.0.0.1:1/", nil, time.Second); w.Client.Timeout != time.Second {
		t.Fatal(w.Client.Timeout)
	}
}

// TestNotifier: the notifier posts the CloudEvent of a first denial to
// its webhook with its headers, outliving the caller's context; a refusal
// is logged.
func TestNotifier(t *testing.T) {
	var mu sync.Mutex
	got := make(chan map[string]any, 4)
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		v["auth"] = r.Header.Get("Authorization")
		v["content-type"] = r.Header.Get("Content-Type")
		mu.Lock()
		w.WriteHeader(status)
		mu.Unlock()
		got <- v
	}))
	defer srv.Close()
	hook, err := NewWebhook(srv.URL, map[string]string{"Authorization": "Bearer s"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := hook.Post(ctx, map[string]any{"type": "x"}); err != nil {
		t.Fatalf("a canceled context: %v", err)
	}
	if v := <-got; v["type"] != "x" || v["auth"] != "Bearer s" || v["content-type"] != "application/cloudevents+json" {
		t.Fatalf("%v", v)
	}
	var logged bytes.Buffer
	var logMu sync.Mutex
	n := &Notifier{Hook: hook, Source: "traefik/m", Log: printer{log.New(&lockedWriter{w: &logged, mu: &logMu}, "", 0)}}
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	n.Exceeded(at, map[string]any{"limit": "l"})
	v := <-got
	data, _ := v["data"].(map[string]any)
	if v["type"] != EventExceeded || v["source"] != "traefik/m" || v["time"] != "2026-12-07T10:00:00Z" || data["limit"] != "l" {
		t.Fatalf("%v", v)
	}
	mu.Lock()
	status = http.StatusInternalServerError
	mu.Unlock()
	n.Exceeded(at, map[string]any{"limit": "l"})
	<-got
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		logMu.Lock()
		s := logged.String()
		logMu.Unlock()
		if strings.Contains(s, "the webhook refused the event: status 500") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %q", s)
		}
	}
}

type printer struct{ l *log.Logger }

func (p printer) Print(msg string) { p.l.Print(msg) }

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestPendingDrops: past MaxPendingEvents deliveries under way, events are
// dropped, and the count is reported on the first drop and every
// hundredth after it.
func TestPendingDrops(t *testing.T) {
	var p Pending
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(MaxPendingEvents)
	for i := 0; i < MaxPendingEvents; i++ {
		if p.Go(func() { defer wg.Done(); <-release }) != 0 {
			t.Fatal("a delivery within the bound dropped")
		}
	}
	var reported []uint64
	for i := 0; i < 201; i++ {
		if n := p.Go(func() { t.Error("a delivery past the bound ran") }); n != 0 {
			reported = append(reported, n)
		}
	}
	close(release)
	wg.Wait()
	if len(reported) != 3 || reported[0] != 1 || reported[1] != 101 || reported[2] != 201 {
		t.Fatalf("reported %v", reported)
	}
}

// A webhook's URL often holds its secret (Slack's path, a token in the
// query, a password): no error shows it, neither a bad URL's nor a failed
// delivery's; a receiver that hangs is given up at the timeout.
func TestWebhookErrorsHideURL(t *testing.T) {
	for _, raw := range []string{"ftp://u:s3cret@example.com/x", "http://[::1/s3cret", "https:///s3cret"} {
		if _, err := NewWebhook(raw, nil, 0); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: %v", raw, err)
		}
	}
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	hook, err := NewWebhook(srv.URL+"/services/T0/B0/s3cret?token=s3cret", nil, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = hook.Post(context.Background(), map[string]any{"type": "x"})
	if err == nil || strings.Contains(err.Error(), "s3cret") || time.Since(start) > 2*time.Second {
		t.Fatalf("after %s: %v", time.Since(start), err)
	}
}
