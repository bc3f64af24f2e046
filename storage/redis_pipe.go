package storage

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// pipe sends the scripts of concurrent decisions to Redis together. Each
// decision is still one EVALSHA and waits for one network round trip, but
// the decisions that queue up while a batch is on the wire leave together,
// as one pipeline: one write and one read for all of them, instead of a
// pooled connection, a health check, a write and a read each. Under load
// this divides the system calls of both Caddy and Redis by the batch size;
// when requests come one at a time, a batch is one script and nothing
// waits.
//
// A few workers each send one batch at a time, so that Redis has the next
// batch to run while the previous one's replies travel back.
type pipe struct {
	client redis.UniversalClient
	queue  chan *pipeCall
	quit   chan struct{}
	wg     sync.WaitGroup
	calls  sync.Pool
}

// pipeCall is one script waiting for its batch.
type pipeCall struct {
	script   *script
	cmd      onceCmd
	deadline time.Time
	done     chan struct{} // receives once the reply (or error) is in cmd
}

const (
	// pipeWorkers is how many batches may be on the wire at once.
	pipeWorkers = 4
	// pipeBatch bounds one batch (and the buffers of one pipeline).
	pipeBatch = 256
)

func newPipe(client redis.UniversalClient) *pipe {
	p := &pipe{
		client: client,
		queue:  make(chan *pipeCall, pipeWorkers*pipeBatch),
		quit:   make(chan struct{}),
	}
	p.calls.New = func() any { return &pipeCall{done: make(chan struct{}, 1)} }
	p.wg.Add(pipeWorkers)
	for range pipeWorkers {
		go p.work()
	}
	return p
}

// stop makes waiting and new callers give up (redis.ErrClosed); the
// workers end once their batch is done, which closing the client hastens.
func (p *pipe) stop() { close(p.quit) }

// wait waits for the workers to end, after stop.
func (p *pipe) wait() { p.wg.Wait() }

// eval runs a script in the next batch and waits for its reply, until the
// batch's deadline (no later than this call's) or until ctx ends. No timer
// is set for the call: a worker sends it by its deadline, or fails it at
// once when the deadline passed in the queue.
func (p *pipe) eval(ctx context.Context, deadline time.Time, sc *script, keys []string, argv []string) (string, error) {
	c := p.calls.Get().(*pipeCall)
	// The command holds copies of keys and argv: the caller may reuse its
	// slices once it gives up waiting, while the command is still queued.
	c.script, c.cmd = sc, scriptCmd(ctx, sc, false, keys, argv...)
	c.deadline = deadline
	select {
	case p.queue <- c:
	case <-ctx.Done():
		p.calls.Put(c)
		return "", ctx.Err()
	case <-p.quit:
		p.calls.Put(c)
		return "", redis.ErrClosed
	}
	select {
	case <-c.done:
		reply, err := c.cmd.Text()
		c.cmd = onceCmd{}
		p.calls.Put(c)
		return reply, err
	case <-ctx.Done():
		// A worker may still send the script: c is left to it (and then
		// to the garbage collector), never reused.
		return "", ctx.Err()
	case <-p.quit:
		return "", redis.ErrClosed
	}
}

func (p *pipe) work() {
	defer p.wg.Done()
	w := &pipeWorker{
		pl:    p.client.Pipeline(),
		batch: make([]*pipeCall, 0, pipeBatch),
		live:  make([]*pipeCall, 0, pipeBatch),
	}
	for {
		select {
		case c := <-p.queue:
			w.batch = append(w.batch, c)
		case <-p.quit:
			return
		}
	drain:
		for len(w.batch) < pipeBatch {
			select {
			case c := <-p.queue:
				w.batch = append(w.batch, c)
			default:
				break drain
			}
		}
		p.run(w)
		clear(w.batch)
		clear(w.live)
		w.batch, w.live = w.batch[:0], w.live[:0]
	}
}

// pipeWorker is one worker's pipeline and buffers.
type pipeWorker struct {
	pl    redis.Pipeliner
	batch []*pipeCall // the calls taken from the queue
	live  []*pipeCall // those to send
}

// run sends one batch, within the earliest deadline of its callers, and
// then hands each caller its reply. After a call's done signal its caller
// may reuse it at once: run signals each call once, last.
func (p *pipe) run(w *pipeWorker) {
	now := time.Now()
	var deadline time.Time
	for _, c := range w.batch {
		if !c.deadline.IsZero() && !c.deadline.After(now) {
			// Its caller has given up: sending it could count a request
			// that the caller decided without Redis.
			c.cmd.SetErr(context.DeadlineExceeded)
			continue
		}
		if deadline.IsZero() || !c.deadline.IsZero() && c.deadline.Before(deadline) {
			deadline = c.deadline
		}
		w.live = append(w.live, c)
	}
	if len(w.live) > 0 {
		ctx := context.Background()
		if !deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		p.send(ctx, w.pl, w.live, false)
		// A Redis that restarted or ran SCRIPT FLUSH lost the scripts: EVAL
		// runs them and caches them again.
		again := w.live[:0]
		for _, c := range w.live {
			if err := c.cmd.Err(); err != nil && isNoScript(err) {
				again = append(again, c)
			}
		}
		if len(again) > 0 {
			p.send(ctx, w.pl, again, true)
		}
	}
	for _, c := range w.batch {
		c.done <- struct{}{}
	}
}

// send runs the scripts of batch, with EVAL instead of EVALSHA when eval is
// set.
func (p *pipe) send(ctx context.Context, pl redis.Pipeliner, batch []*pipeCall, eval bool) {
	for _, c := range batch {
		if eval {
			args := append([]any(nil), c.cmd.Args()...)
			args[0], args[1] = "eval", c.script.src
			c.cmd = onceCmd{redis.NewCmd(ctx, args...)}
		}
	}
	if len(batch) == 1 {
		_ = p.client.Process(ctx, batch[0].cmd)
		return
	}
	for _, c := range batch {
		_ = pl.Process(ctx, c.cmd)
	}
	_, _ = pl.Exec(ctx)
}
