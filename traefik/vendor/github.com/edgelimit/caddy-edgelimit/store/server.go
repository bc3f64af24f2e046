package store

import (
	"context"
	"strconv"
	"time"
)

// What a Redis store does at both edges besides deciding, over the edge's
// client: the Caddy module's go-redis client (whose request path batches
// its scripts by itself, storage/redis_pipe.go), the Traefik plugin's RESP
// pool (traefik/resp.go).

// A Doer sends one command to a Redis server and returns its reply as
// RESP2 reads it: a string (simple or bulk), an int64, a []interface{} of
// replies, nil for a null; an error reply is the error. It sends a command
// once and never again: a script whose reply was lost may have counted.
type Doer interface {
	Do(ctx context.Context, args []string) (interface{}, error)
}

// RunScript runs sc on d with EVALSHA, and with EVAL when the server does
// not have it (IsNoScript: after a restart or a SCRIPT FLUSH; EVAL caches
// it again). No other error runs it again.
func RunScript(ctx context.Context, d Doer, sc *Script, keys, argv []string) (interface{}, error) {
	args := make([]string, 0, 3+len(keys)+len(argv))
	args = append(args, "EVALSHA", sc.SHA, strconv.Itoa(len(keys)))
	args = append(args, keys...)
	args = append(args, argv...)
	return doScript(ctx, d, sc, args)
}

// ScriptText is RunScript of a script that replies with a string (the
// take and refund scripts): any other reply is ErrBadReply.
func ScriptText(ctx context.Context, d Doer, sc *Script, keys, argv []string) (string, error) {
	reply, err := RunScript(ctx, d, sc, keys, argv)
	if err != nil {
		return "", err
	}
	if text, ok := reply.(string); ok {
		return text, nil
	}
	return "", ErrBadReply
}

// doScript runs RunScript's command args: EVALSHA of sc, then EVAL when
// the server does not hold the script.
func doScript(ctx context.Context, d Doer, sc *Script, args []string) (interface{}, error) {
	reply, err := d.Do(ctx, args)
	if err != nil && IsNoScript(err) {
		args[0] = "EVAL"
		args[1] = sc.Src
		reply, err = d.Do(ctx, args)
	}
	return reply, err
}

// A RedisLog is an edge's log as a Redis store writes to it (a zap logger,
// the plugin's throttled log): each edge adds the store's context (the
// server, the failure policy) in its own way.
type RedisLog interface {
	// Failure writes the warning of a failure of Redis (FailureWarning),
	// with the failure policy.
	Failure(msg string, err error)
	// Warn writes a warning; err is its cause, nil for none.
	Warn(msg string, err error)
	// Info writes a note.
	Info(msg string)
}

// RedisServer is the part of Server that a Redis store has alike at both
// edges, on its Doer: the failure policy's hooks (Failed, Answered, Probe)
// with the checks of Redis's health and their advice (Health), and the
// watch of the invalidations of local denials. Deciding (Server.Decide and
// GiveBack) is each edge's: Scripts for a client that runs one script at
// a time.
type RedisServer struct {
	// Remote is the store's failure policy and local denials.
	Remote *Remote
	// Doer is the store's client.
	Doer Doer
	// Log receives the warnings and notes.
	Log RedisLog
	// Timeout bounds a probe; 0 leaves it to the Doer's own bound.
	Timeout time.Duration

	health Health
}

// Ping implements Conn: a PING.
func (s *RedisServer) Ping(ctx context.Context) error {
	_, err := s.Doer.Do(ctx, []string{"PING"})
	return err
}

// MemoryInfo implements Conn: INFO memory.
func (s *RedisServer) MemoryInfo(ctx context.Context) (string, error) {
	reply, err := s.Doer.Do(ctx, []string{"INFO", "memory"})
	if text, ok := reply.(string); ok || err != nil {
		return text, err
	}
	return "", ErrBadReply
}

// Failed implements Server.Failed: the warning, when warn says it is time
// for one.
func (s *RedisServer) Failed(err error, warn bool) {
	if warn {
		s.Log.Failure(FailureWarning(err), err)
	}
}

// Answered implements Server.Answered.
func (s *RedisServer) Answered() { s.Log.Info(AnsweredNote) }

// Probe implements Server.Probe: a PING within the timeout, then Redis's
// memory policy once (Health), its advice written to Log.
func (s *RedisServer) Probe(ctx context.Context) error {
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	advice, err := s.health.Probe(ctx, s)
	s.advise(advice)
	return err
}

// CheckEviction reads Redis's memory policy, for a store that starts
// without a probe, and warns when it can forget counts (Health).
func (s *RedisServer) CheckEviction(ctx context.Context) {
	s.advise(s.health.CheckEviction(ctx, s))
}

func (s *RedisServer) advise(advice string) {
	if advice != "" {
		s.Log.Warn(advice, nil)
	}
}

// A Subscriber subscribes to a channel on an edge's client.
type Subscriber interface {
	Subscribe(channel string) (Subscription, error)
}

// WatchInvalidations keeps the subscription to the invalidations of the
// local denials of the keys under prefix (Remote.Watch), made by sub,
// until stop is closed (nil: for good), with a warning to Log when it
// fails.
func (s *RedisServer) WatchInvalidations(prefix string, sub Subscriber, stop <-chan struct{}) {
	channel := InvalidateChannel(prefix)
	s.Remote.Watch(func() (Subscription, error) { return sub.Subscribe(channel) }, stop, func(err error) {
		s.Log.Warn(NoSubscriptionWarning+" (channel "+channel+")", err)
	})
}
