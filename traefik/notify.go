package edgelimit

import (
	"fmt"
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

// compileNotify makes the notifier that delivers the events off the
// request path; nil without a URL.
func compileNotify(n *Notify, middleware string) (*policy.Notifier, error) {
	if n == nil || n.URL == "" {
		return nil, nil
	}
	timeout := 5 * time.Second
	if n.Timeout != "" {
		var err error
		if timeout, err = parseDuration("timeout", n.Timeout); err != nil || timeout <= 0 {
			return nil, fmt.Errorf("timeout %q: want a duration such as 5s", n.Timeout)
		}
	}
	hook, err := policy.NewWebhook(n.URL, n.Headers, timeout)
	if err != nil {
		return nil, err
	}
	return &policy.Notifier{Hook: hook, Source: "traefik/" + middleware, Log: newLogger(middleware)}, nil
}
