package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// fakeDoer is a Redis as a Doer reaches it: the replies of its commands by
// name, and the commands it was sent.
type fakeDoer struct {
	replies map[string]interface{}
	errs    map[string]error
	sent    [][]string
	ctxs    []context.Context
}

func (d *fakeDoer) Do(ctx context.Context, args []string) (interface{}, error) {
	d.sent = append(d.sent, append([]string(nil), args...))
	d.ctxs = append(d.ctxs, ctx)
	return d.replies[args[0]], d.errs[args[0]]
}

// fakeLog records what a store wrote.
type fakeLog struct{ warns, infos []string }

func (l *fakeLog) Warn(msg string, err error) {
	if err != nil {
		msg += ": " + err.Error()
	}
	l.warns = append(l.warns, msg)
}

func (l *fakeLog) Failure(msg string, err error) { l.Warn("failure: "+msg, err) }

func (l *fakeLog) Info(msg string) { l.infos = append(l.infos, msg) }

// TestRunScript: EVALSHA, then EVAL only when Redis does not have the
// script; any other error is not run again (the script may have counted).
func TestRunScript(t *testing.T) {
	ctx := context.Background()
	d := &fakeDoer{replies: map[string]interface{}{"EVALSHA": "A", "EVAL": "B"}}
	reply, err := RunScript(ctx, d, RefundScript, []string{"k1", "k2"}, []string{"x"})
	if err != nil || reply != "A" || len(d.sent) != 1 ||
		strings.Join(d.sent[0], " ") != "EVALSHA "+RefundScript.SHA+" 2 k1 k2 x" {
		t.Fatalf("EVALSHA: %v %v, sent %q", reply, err, d.sent)
	}
	d.sent = nil
	d.errs = map[string]error{"EVALSHA": errors.New("redis: NOSCRIPT No matching script. Please use EVAL.")}
	reply, err = RunScript(ctx, d, RefundScript, []string{"k1"}, nil)
	if err != nil || reply != "B" || len(d.sent) != 2 || d.sent[1][0] != "EVAL" || d.sent[1][1] != RefundScript.Src || d.sent[1][3] != "k1" {
		t.Fatalf("NOSCRIPT: %v %v, sent %d", reply, err, len(d.sent))
	}
	d.sent = nil
	d.errs = map[string]error{"EVALSHA": errors.New("i/o timeout")}
	if _, err := RunScript(ctx, d, RefundScript, []string{"k1"}, nil); err == nil || len(d.sent) != 1 {
		t.Fatalf("a lost reply was run again: %v, sent %d", err, len(d.sent))
	}
	// Scripts refuses a reply that is not the scripts' string.
	d.errs = nil
	d.replies["EVALSHA"] = int64(1)
	s := Scripts{Doer: d, Prefix: DefaultRedisPrefix}
	if err := s.Refund(ctx, time.Unix(1e9, 0), []Request{{Key: "c", Counter: "n"}}); err != ErrBadReply {
		t.Fatalf("Refund of an integer reply: %v", err)
	}
}

// TestRedisServer: the failure policy's hooks as both edges' Redis stores
// have them: a warning when the policy says so, a note when Redis is back,
// a probe bounded by the timeout that advises once about eviction.
func TestRedisServer(t *testing.T) {
	d := &fakeDoer{
		replies: map[string]interface{}{"PING": "PONG", "INFO": "maxmemory:1048576\r\nmaxmemory_policy:allkeys-lru\r\n"},
		errs:    map[string]error{"PING": errors.New("dial tcp: refused")},
	}
	log := &fakeLog{}
	s := &RedisServer{Remote: NewRemote(Allow, 0, false, 0), Doer: d, Log: log, Timeout: time.Second}
	s.Failed(errors.New("dial tcp: refused"), false)
	s.Failed(errors.New("dial tcp: refused"), true)
	s.Failed(ErrFull, true)
	if len(log.warns) != 2 || !strings.HasPrefix(log.warns[0], "failure: "+UnavailableWarning+": dial tcp") || !strings.HasPrefix(log.warns[1], "failure: "+FullWarning) {
		t.Fatalf("Failed wrote %q", log.warns)
	}
	log.warns = nil
	if err := s.Probe(context.Background()); err == nil || len(d.sent) != 1 {
		t.Fatalf("probe of a Redis down: %v, sent %q", err, d.sent)
	}
	if dl, ok := d.ctxs[0].Deadline(); !ok || time.Until(dl) > time.Second {
		t.Fatalf("a probe without the timeout: %v %t", dl, ok)
	}
	d.errs = nil
	for i := 0; i < 2; i++ {
		if err := s.Probe(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if len(log.warns) != 1 || !strings.Contains(log.warns[0], "allkeys-lru") || len(d.sent) != 4 {
		t.Fatalf("eviction advice: %q, sent %q", log.warns, d.sent)
	}
	s.Answered()
	if len(log.infos) != 1 || log.infos[0] != AnsweredNote {
		t.Fatalf("Answered wrote %q", log.infos)
	}
	d.replies["INFO"] = int64(1)
	if _, err := s.MemoryInfo(context.Background()); err != ErrBadReply {
		t.Fatalf("INFO's reply not a string: %v", err)
	}
}

// subscriber is a client whose subscriptions are refused; it says which
// channel it was asked for.
type subscriber chan string

func (c subscriber) Subscribe(channel string) (Subscription, error) {
	select {
	case c <- channel:
	default:
	}
	return nil, errors.New("NOPERM")
}

// warnLog is a store's log that hands each warning to the test.
type warnLog chan string

func (l warnLog) Warn(msg string, err error) {
	if err != nil {
		msg += ": " + err.Error()
	}
	l <- msg
}

func (l warnLog) Failure(msg string, err error) { l.Warn("failure: "+msg, err) }

func (l warnLog) Info(string) {}

// TestWatchInvalidations: the subscription to the store's channel, its
// failures warned with the channel. The test waits for the warning before
// it stops the watch: a watch stopped while its subscription fails ends
// without warning.
func TestWatchInvalidations(t *testing.T) {
	log := make(warnLog, 4)
	s := &RedisServer{Remote: NewRemote(Allow, time.Millisecond, true, 0), Log: log}
	stop := make(chan struct{})
	asked := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WatchInvalidations("p:", subscriber(asked), stop)
	}()
	if got := <-asked; got != InvalidateChannel("p:") {
		t.Fatalf("subscribed to %q", got)
	}
	select {
	case w := <-log:
		if want := NoSubscriptionWarning + " (channel " + InvalidateChannel("p:") + "): NOPERM"; w != want {
			t.Errorf("warned %q, want %q", w, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no warning within 10s of a refused subscription")
	}
	close(stop)
	<-done
}
