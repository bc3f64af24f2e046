package policy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
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

// EventsDropped is the warning of events dropped: the count so far goes
// with it.
const EventsDropped = "edge_limit events dropped: the receivers are too slow"

// Go runs deliver in the background, unless MaxPendingEvents are under way
// already: then it counts a drop, and returns the count so far on the
// first drop and every hundredth after it (else 0), for the edge to log
// with EventsDropped.
func (p *Pending) Go(deliver func()) (dropped uint64) {
	if atomic.AddInt32(&p.n, 1) > MaxPendingEvents {
		atomic.AddInt32(&p.n, -1)
		if n := atomic.AddUint64(&p.dropped, 1); n%100 == 1 {
			return n
		}
		return 0
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

// Webhook posts events to a URL: the delivery of the Caddy module's
// edge_limit_webhook and of the Traefik plugin's notify.
type Webhook struct {
	URL     string
	Headers http.Header
	Client  *http.Client
}

// NewWebhook checks the URL of a webhook (http or https, with a host) and
// prepares its headers and its client, whose timeout (5s when not
// positive) bounds each delivery.
func NewWebhook(rawURL string, headers map[string]string, timeout time.Duration) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not shown: a webhook's URL often holds its secret (a password,
		// a token in the path or the query).
		return nil, errors.New("url (not shown: it may hold a secret): want an http or https URL with a host")
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	w := &Webhook{URL: u.String(), Headers: make(http.Header, len(headers)), Client: &http.Client{Timeout: timeout}}
	for k, v := range headers {
		w.Headers.Set(k, v)
	}
	return w, nil
}

// Post delivers an event (any JSON value): a POST of
// application/cloudevents+json with the headers; a status of 300 or more
// is an error. It outlives ctx's cancellation (a configuration unloaded
// meanwhile), not the client's timeout.
func (w *Webhook) Post(ctx context.Context, event any) error {
	body, err := json.Marshal(event)
	if err != nil {
		return fmt.Errorf("encoding the event: %w", err)
	}
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the webhook request: %w", err)
	}
	for k, v := range w.Headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err := w.Client.Do(req)
	if err != nil {
		// Without the URL, which url.Error quotes (its password only
		// redacted): its path or query may be the hook's secret.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webhook delivery failed: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("the webhook refused the event: status %d", resp.StatusCode)
	}
	return nil
}

// Notifier posts the events of first denials to a webhook off the request
// path, at most MaxPendingEvents at once, as the Caddy module's events app
// hands them to its edge_limit_webhook (a slow receiver costs dropped
// notifications, never slower requests).
type Notifier struct {
	Hook *Webhook
	// Source is the CloudEvents source of the events.
	Source string
	// Log gets a failed delivery and, now and then, the events dropped.
	Log     EventLog
	pending Pending
}

// EventLog is where an edge logs what delivering its events met. (Not a
// function value, nor a *log.Logger: Yaegi v0.16.1 fails on a call of a
// compiled function through a field, and takes a *log.Logger for a type
// of its own.)
type EventLog interface {
	Print(msg string)
}

// Exceeded sends one edge_limit.exceeded event of data (EventData) at
// now, in the background.
func (n *Notifier) Exceeded(now time.Time, data map[string]any) {
	event := CloudEvent(n.Source, EventExceeded, now, data)
	if dropped := n.pending.Go(func() {
		if err := n.Hook.Post(context.Background(), event); err != nil {
			n.Log.Print(err.Error())
		}
	}); dropped != 0 {
		n.Log.Print(EventsDropped + " (" + strconv.FormatUint(dropped, 10) + " so far)")
	}
}
