package edgelimit

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/edgelimit/caddy-edgelimit/policy"
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

// notifier delivers events off the request path.
type notifier struct {
	url     string
	headers http.Header
	client  *http.Client
	source  string
	pending policy.Pending
}

func compileNotify(n *Notify, middleware string) (*notifier, error) {
	if n == nil || n.URL == "" {
		return nil, nil
	}
	u, err := policy.CheckWebhookURL(n.URL)
	if err != nil {
		return nil, err
	}
	timeout := 5 * time.Second
	if n.Timeout != "" {
		if timeout, err = parseDuration("timeout", n.Timeout); err != nil || timeout <= 0 {
			return nil, fmt.Errorf("timeout %q: want a duration such as 5s", n.Timeout)
		}
	}
	nt := &notifier{url: u, headers: http.Header{}, client: &http.Client{Timeout: timeout}, source: "traefik/" + middleware}
	for k, v := range n.Headers {
		nt.headers.Set(k, v)
	}
	return nt, nil
}

// exceeded sends one edge_limit.exceeded event of data (policy.EventData),
// in the background.
func (n *notifier) exceeded(now time.Time, data map[string]interface{}) {
	event := policy.CloudEvent(n.source, policy.EventExceeded, now, data)
	if dropped := n.pending.Go(func() {
		if err := policy.PostEvent(context.Background(), n.client, n.url, n.headers, event); err != nil {
			log.Printf("edgelimit %s: %v", n.source, err)
		}
	}); dropped%100 == 1 {
		log.Printf("edgelimit %s: events dropped: the receiver is too slow (%d so far)", n.source, dropped)
	}
}
