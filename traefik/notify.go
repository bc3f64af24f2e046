package edgelimit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// Notify posts the first denial of a client in a window to a URL, as the
// Caddy module's edge_limit_webhook does: a CloudEvent (JSON) of type
// edge_limit.exceeded whose data has the Caddy module's fields, so that one
// receiver serves both edges.
type Notify struct {
	// URL receives the POST (http or https).
	URL string `json:"url,omitempty"`
	// Headers are added to the POST (an Authorization for the receiver).
	Headers map[string]string `json:"headers,omitempty"`
	// Timeout bounds each delivery. Default 5s.
	Timeout string `json:"timeout,omitempty"`

	Unknown map[string]interface{} `json:"-" mapstructure:",remain"`
}

// maxPendingEvents bounds the deliveries under way: a slow receiver costs
// dropped notifications, never slower requests.
const maxPendingEvents = 64

// notifier delivers events off the request path.
type notifier struct {
	url     string
	headers http.Header
	client  *http.Client
	source  string
	pending int32 // atomic
	dropped uint64
}

func compileNotify(n *Notify, middleware string) (*notifier, error) {
	if n == nil || n.URL == "" {
		return nil, nil
	}
	u, err := url.Parse(n.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url %q: want an http or https URL", n.URL)
	}
	timeout := 5 * time.Second
	if n.Timeout != "" {
		if timeout, err = parseDuration("timeout", n.Timeout); err != nil || timeout <= 0 {
			return nil, fmt.Errorf("timeout %q: want a duration such as 5s", n.Timeout)
		}
	}
	nt := &notifier{url: u.String(), headers: http.Header{}, client: &http.Client{Timeout: timeout}, source: "traefik/" + middleware}
	for k, v := range n.Headers {
		nt.headers.Set(k, v)
	}
	return nt, nil
}

// exceeded sends one edge_limit.exceeded event of data (policy.EventData),
// in the background.
func (n *notifier) exceeded(now time.Time, data map[string]interface{}) {
	if atomic.AddInt32(&n.pending, 1) > maxPendingEvents {
		atomic.AddInt32(&n.pending, -1)
		if atomic.AddUint64(&n.dropped, 1)%100 == 1 {
			log.Printf("edgelimit %s: events dropped: the receiver is too slow (%d so far)", n.source, atomic.LoadUint64(&n.dropped))
		}
		return
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	event := map[string]interface{}{
		"id":              hex.EncodeToString(id),
		"source":          n.source,
		"specversion":     "1.0",
		"type":            "edge_limit.exceeded",
		"time":            now.UTC().Format(time.RFC3339Nano),
		"datacontenttype": "application/json",
		"data":            data,
	}
	go func() {
		defer atomic.AddInt32(&n.pending, -1)
		n.deliver(event)
	}()
}

func (n *notifier) deliver(event map[string]interface{}) {
	body, err := json.Marshal(event)
	if err != nil {
		log.Printf("edgelimit %s: encoding an event: %v", n.source, err)
		return
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		log.Printf("edgelimit %s: building the webhook request: %v", n.source, err)
		return
	}
	for k, v := range n.headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err := n.client.Do(req)
	if err != nil {
		log.Printf("edgelimit %s: webhook delivery failed: %v", n.source, err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		log.Printf("edgelimit %s: the webhook refused the event: status %d", n.source, resp.StatusCode)
	}
}
