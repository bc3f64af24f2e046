package store

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// A Subscription is an edge's subscription to the channel of an
// operator's resets and credits (InvalidateChannel), on its Redis client.
type Subscription interface {
	// Receive waits at most timeout for what the server sends: Confirmed
	// once the subscription is confirmed, Message for a message on the
	// channel, Other for anything else (a PING's answer); a wait that
	// times out is an error whose Timeout method says so.
	Receive(timeout time.Duration) (Received, error)
	// Ping asks the server for an answer on the subscription's connection.
	Ping() error
	// Close ends the subscription; a Receive under way returns.
	Close() error
}

// Received is what a Subscription received.
type Received uint8

// What a Subscription receives.
const (
	Other Received = iota
	Confirmed
	Message
)

// ReceivedOf classifies what a subscription to channel received, at both
// edges: kind and ch are the first two parts of a pushed message (go-redis
// parses them; the plugin's client reads them as a RESP array), "" when
// absent.
func ReceivedOf(kind, ch, channel string) Received {
	switch {
	case kind == "subscribe" && ch == channel:
		return Confirmed
	case kind == "message":
		return Message
	}
	return Other
}

// WatchPing is how often a subscription is checked when no message
// arrives: a PING that gets no answer within the next interval marks it
// unhealthy (local denials off) and it is made again.
const WatchPing = time.Second

// Watch keeps p's local denials honest, until stop is closed: it keeps a
// subscription (made by subscribe) to the invalidations, drops the local
// denials on every message, and keeps them in use only while the
// subscription is confirmed: not yet subscribed, a connection lost, a PING
// unanswered, and every denial asks the server until it is again. warn is
// told why a subscription failed, at most once per WarnInterval. It
// returns when stop is closed.
func (p *Remote) Watch(subscribe func() (Subscription, error), stop <-chan struct{}, warn func(error)) {
	var (
		mu     sync.Mutex
		cur    Subscription
		closed bool
	)
	// stopped is done once stop is closed: a context, not a channel in a
	// select (Sleep says why).
	stopped, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
		mu.Lock()
		closed = true
		if cur != nil {
			_ = cur.Close() // a Receive under way returns
		}
		mu.Unlock()
	}()
	open := func() (Subscription, error) {
		sub, err := subscribe()
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			cur = sub
			if closed {
				_ = sub.Close()
			}
		}
		return sub, err
	}
	var warned Throttle
	defer p.SetLive(false)
	for {
		err := p.watchOne(open, stopped)
		if stopped.Err() != nil {
			return // Close ended the subscription: no warning
		}
		p.SetLive(false)
		if warned.Allow(time.Now(), WarnInterval) {
			warn(err)
		}
		if Sleep(stopped, p.Retry) != nil {
			return
		}
	}
}

// watchOne subscribes once, and reads the subscription until it fails.
func (p *Remote) watchOne(open func() (Subscription, error), stopped context.Context) error {
	sub, err := open()
	if err != nil {
		return err
	}
	defer sub.Close()
	subscribed, pinged := false, false
	for {
		got, err := sub.Receive(WatchPing)
		if stopped.Err() != nil {
			return errors.New("closed")
		}
		if err != nil {
			// net.Error, not an interface of this package: under Yaegi,
			// errors.As takes only the standard library's.
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !subscribed || pinged {
				// Lost, refused (a Redis user without the channel's
				// permission), or a PING unanswered.
				return err
			}
			// Quiet: make sure the connection is alive.
			if err := sub.Ping(); err != nil {
				return err
			}
			pinged = true
			continue
		}
		// Anything received shows the connection alive.
		pinged = false
		switch got {
		case Confirmed:
			subscribed = true
			p.SetLive(true)
		case Message:
			p.Denials.ClearAll()
		}
	}
}
