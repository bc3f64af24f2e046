package policy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// EventExceeded is the type of the event of a first denial.
const EventExceeded = "edge_limit.exceeded"

// MaxPendingEvents bounds the deliveries of events under way: a slow
// receiver costs dropped notifications, never slower requests.
const MaxPendingEvents = 64

// Pending counts the event deliveries under way.
type Pending struct {
	n       int32
	dropped uint64
}

// Go runs deliver in the background, unless MaxPendingEvents are under way
// already: then it counts a drop and returns the count so far (else 0),
// for the edge to report now and then.
func (p *Pending) Go(deliver func()) (dropped uint64) {
	if atomic.AddInt32(&p.n, 1) > MaxPendingEvents {
		atomic.AddInt32(&p.n, -1)
		return atomic.AddUint64(&p.dropped, 1)
	}
	go func() {
		defer atomic.AddInt32(&p.n, -1)
		deliver()
	}()
	return 0
}

// CloudEvent is an event of type typ from source, with data, as the
// CloudEvents JSON format has it (the fields Caddy's events app writes).
func CloudEvent(source, typ string, now time.Time, data map[string]any) map[string]any {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	return map[string]any{
		"id":              hex.EncodeToString(id),
		"source":          source,
		"specversion":     "1.0",
		"type":            typ,
		"time":            now.UTC().Format(time.RFC3339Nano),
		"datacontenttype": "application/json",
		"data":            data,
	}
}

// CheckWebhookURL checks the URL of a webhook: http or https, with a host.
func CheckWebhookURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("url %q: want an http or https URL", raw)
	}
	return u.String(), nil
}

// PostEvent delivers an event (any JSON value) to a webhook: a POST of
// application/cloudevents+json with headers, by client's timeout; a
// status of 300 or more is an error.
func PostEvent(ctx context.Context, client *http.Client, target string, headers http.Header, event any) error {
	body, err := json.Marshal(event)
	if err != nil {
		return fmt.Errorf("encoding the event: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the webhook request: %w", err)
	}
	for k, v := range headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook delivery failed: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("the webhook refused the event: status %d", resp.StatusCode)
	}
	return nil
}
