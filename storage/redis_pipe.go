package storage

import (
	"context"
	"encoding/binary"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// pipe sends the decisions that queue up concurrently to Redis together:
// one take script decides a whole batch, one after the other, as separate
// scripts would. The script's fixed cost (the call, the server's clock,
// reading its arguments) and the client's per-command work (a command, a
// write, a reply to parse) are paid once per batch instead of once per
// decision. When requests come one at a time, a batch is one decision and
// nothing waits.
//
// A few workers each send one batch at a time, so that Redis has the next
// batch to run while the previous one's replies travel back. In a Cluster,
// a batch is one script per hash slot, pipelined.
type pipe struct {
	client  redis.UniversalClient
	cluster bool
	queue   chan *pipeCall
	quit    chan struct{}
	wg      sync.WaitGroup
	calls   sync.Pool
}

// pipeCall is one decision waiting for its batch.
type pipeCall struct {
	keys     []string // the decision's clients
	spec     []byte   // five numbers per request, key indexes into keys
	fields   []string // per request: its counter
	now      int64    // the decision's time, 0 for the server's
	slot     uint16   // the decision's Cluster slot (all its keys share it)
	deadline time.Time
	reply    string // the decision's part of the batch's reply
	err      error
	done     chan struct{} // receives once reply (or err) is set
}

const (
	// pipeWorkers is how many batches may be on the wire at once: two, so
	// that Redis has the next batch while a reply travels back, and a
	// connection that stalls holds up one batch, not every decision. More
	// idle workers take decisions one or two at a time and batch less:
	// counted under callgrind (redis-3, 8 connections), 4 workers made
	// 0.66 EVALSHA per request, 143,200 Caddy instructions and 167,300 of
	// Redis per request; 2 make 0.41, 139,200 and 148,800; 1 makes 0.25,
	// 137,200 and 138,300.
	pipeWorkers = 2
	// pipeBatch bounds what one worker takes from the queue at once.
	pipeBatch = 256
	// scriptBatch bounds the decisions of one script: Redis runs a script
	// without interruption, and 64 decisions of a few limits each keep
	// that well under a millisecond.
	scriptBatch = 64
)

func newPipe(client redis.UniversalClient, cluster bool) *pipe {
	p := &pipe{
		client:  client,
		cluster: cluster,
		queue:   make(chan *pipeCall, pipeWorkers*pipeBatch),
		quit:    make(chan struct{}),
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

// decide runs one decision in the next batch and waits for its part of the
// reply, until the batch's deadline (no later than this call's) or until
// ctx ends. No timer is set for the call: a worker sends it by its
// deadline, or fails it at once when the deadline passed in the queue.
func (p *pipe) decide(ctx context.Context, deadline time.Time, now int64, slot uint16, keys, fields []string, spec []byte) (string, error) {
	c := p.calls.Get().(*pipeCall)
	// The call holds copies: the caller may reuse its slices once it gives
	// up waiting, while the call is still queued.
	c.keys = append(c.keys[:0], keys...)
	c.fields = append(c.fields[:0], fields...)
	c.spec = append(c.spec[:0], spec...)
	c.now, c.slot, c.deadline = now, slot, deadline
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
		reply, err := c.reply, c.err
		c.reply, c.err = "", nil
		p.calls.Put(c)
		return reply, err
	case <-ctx.Done():
		// A worker may still send the decision: c is left to it (and then
		// to the garbage collector), never reused.
		return "", ctx.Err()
	case <-p.quit:
		return "", redis.ErrClosed
	}
}

func (p *pipe) work() {
	defer p.wg.Done()
	w := &pipeWorker{
		batch: make([]*pipeCall, 0, pipeBatch),
		live:  make([]*pipeCall, 0, pipeBatch),
		index: make(map[string]int),
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

// pipeWorker is one worker's buffers. A batch's commands point into
// them (their arguments are pointers, which go-redis writes as it writes
// the values, and which cost no allocation to pass as an any): they are
// reused once the batch is done.
type pipeWorker struct {
	batch   []*pipeCall // the calls taken from the queue
	live    []*pipeCall // those to send
	scripts []batchScript
	index   map[string]int    // key -> index in the script being built
	keys    []string          // the scripts' keys, one after the other
	specs   []*specArg        // each script's spec
	cmds    []redis.StringCmd // each script's command
	nspecs  int               // of specs and cmds, in use
	args    []any             // the scripts' arguments, one after the other
	fields  []string          // the scripts' fields (store.PlanTake), one after the other
	flat    []string          // the fields of the script being built, per request
	plan    store.TakePlan
	ctx     deadlineContext
}

// deadlineContext is a batch's context: its deadline, the earliest of its
// callers', bounds writing the batch and reading its reply (go-redis sets
// the connection's deadlines from it, as from any context's), without the
// timer, channel and cancel function of context.WithDeadline. Nothing
// cancels it: waiting for a pooled connection and dialling are bounded
// by the client's own PoolTimeout and DialTimeout (the store's timeout,
// NewRedisClient).
type deadlineContext struct {
	deadline time.Time
}

func (c *deadlineContext) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }
func (c *deadlineContext) Done() <-chan struct{}       { return nil }
func (c *deadlineContext) Err() error                  { return nil }
func (c *deadlineContext) Value(any) any               { return nil }

// batchScript is one take script of a batch: the calls it decides, and
// its command.
type batchScript struct {
	calls []*pipeCall
	cmd   onceStringCmd
}

// onceStringCmd is a script whose reply is a string, which go-redis must
// not send twice (see onceCmd). Its reply is read as a string, not as an
// any holding one: an allocation less.
type onceStringCmd struct{ *redis.StringCmd }

// NoRetry implements redis.Cmder.
func (onceStringCmd) NoRetry() bool { return true }

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
			c.err = context.DeadlineExceeded
			continue
		}
		if deadline.IsZero() || !c.deadline.IsZero() && c.deadline.Before(deadline) {
			deadline = c.deadline
		}
		w.live = append(w.live, c)
	}
	if len(w.live) > 0 {
		w.ctx.deadline = deadline
		ctx := context.Context(&w.ctx)
		w.scripts = p.group(w, ctx)
		p.send(ctx, w.scripts)
		// A Redis that restarted or ran SCRIPT FLUSH lost the script: EVAL
		// runs it and caches it again.
		var again []batchScript
		for i := range w.scripts {
			if err := w.scripts[i].cmd.Err(); err != nil && isNoScript(err) {
				w.scripts[i].cmd = evalCmd(ctx, w.scripts[i].cmd.Args())
				again = append(again, w.scripts[i])
			}
		}
		if len(again) > 0 {
			p.send(ctx, again)
		}
		for _, s := range w.scripts {
			split(s)
		}
		clear(w.scripts)
		clear(w.keys)
		clear(w.args)
		clear(w.fields)
		clear(w.flat)
		w.scripts, w.keys, w.args, w.nspecs = w.scripts[:0], w.keys[:0], w.args[:0], 0
		w.fields, w.flat = w.fields[:0], w.flat[:0]
	}
	for _, c := range w.batch {
		c.done <- struct{}{}
	}
}

// group makes the take scripts of the live calls: up to scriptBatch
// decisions and store.MaxTakeFields requests each, and in a Cluster, one
// slot each.
func (p *pipe) group(w *pipeWorker, ctx context.Context) []batchScript {
	scripts := w.scripts[:0]
	live := w.live
	for len(live) > 0 {
		var calls []*pipeCall
		if p.cluster {
			// The calls of the first call's slot; the others wait for a
			// script of their own.
			slot := live[0].slot
			rest := live[:0]
			nf := 0
			for _, c := range live {
				if c.slot == slot && len(calls) < scriptBatch && nf+len(c.fields) <= store.MaxTakeFields {
					nf += len(c.fields)
					calls = append(calls, c)
				} else {
					rest = append(rest, c)
				}
			}
			live = rest
		} else {
			// w.live stays as it is until the batch is done.
			n, nf := 0, 0
			for n < len(live) && n < scriptBatch && nf+len(live[n].fields) <= store.MaxTakeFields {
				nf += len(live[n].fields)
				n++
			}
			calls, live = live[:n:n], live[n:]
		}
		scripts = append(scripts, batchScript{calls: calls, cmd: w.build(ctx, calls)})
	}
	return scripts
}

// build writes the take script of calls (see luaTake): the batch's
// distinct keys, the head, each decision's time and number of requests,
// and its requests with their key indexes into the batch's keys.
func (w *pipeWorker) build(ctx context.Context, calls []*pipeCall) onceStringCmd {
	clear(w.index)
	first := len(w.keys)
	for _, c := range calls {
		for _, k := range c.keys {
			if _, ok := w.index[k]; !ok {
				w.keys = append(w.keys, k)
				w.index[k] = len(w.keys) - first
			}
		}
	}
	keys := w.keys[first:]
	if w.nspecs == len(w.specs) {
		w.specs = append(w.specs, new(specArg))
		w.cmds = append(w.cmds, redis.StringCmd{})
	}
	spec := w.specs[w.nspecs]
	w.nspecs++
	b := store.AppendInt(spec.b[:0], 0)
	b = store.AppendInt(b, int64(len(calls)))
	for _, c := range calls {
		b = store.AppendInt(b, c.now)
		b = store.AppendInt(b, int64(len(c.fields)))
		for r := 0; r+40 <= len(c.spec); r += 40 {
			code := int64(binary.LittleEndian.Uint64(c.spec[r:]))
			// The key index is in bits 8 to 31 (a ban's seconds above).
			k := w.index[c.keys[code%(1<<32)/256-1]]
			b = store.AppendInt(b, code>>32<<32+int64(k)*256+code%256)
			b = append(b, c.spec[r+8:r+40]...)
		}
	}
	w.flat = w.flat[:0]
	for _, c := range calls {
		w.flat = append(w.flat, c.fields...)
	}
	firstField := len(w.fields)
	w.fields, b = store.PlanTake(&w.plan, w.fields, b, len(keys), w.flat)
	spec.b = b
	start := len(w.args)
	w.args = append(w.args, "evalsha", takeScript.sha, len(keys))
	for i := range keys {
		w.args = append(w.args, &keys[i])
	}
	w.args = append(w.args, spec)
	for i := firstField; i < len(w.fields); i++ {
		w.args = append(w.args, &w.fields[i])
	}
	// The command is the worker's too: a new one, written over the last
	// batch's. (An earlier batch's script whose cmds grew since points
	// into the array before; that is done with.)
	cmd := &w.cmds[w.nspecs-1]
	*cmd = *redis.NewStringCmd(ctx, w.args[start:len(w.args):len(w.args)]...)
	return onceStringCmd{cmd}
}

// specArg is a script's spec, written as an argument by go-redis as an
// encoding.BinaryMarshaler: a pointer, which a []byte or a string made of
// it would not be, so passing it allocates nothing.
type specArg struct{ b []byte }

// MarshalBinary implements encoding.BinaryMarshaler.
func (s *specArg) MarshalBinary() ([]byte, error) { return s.b, nil }

// evalCmd is the command of an EVALSHA's args with EVAL of the take
// script's source instead.
func evalCmd(ctx context.Context, args []any) onceStringCmd {
	args = append([]any(nil), args...)
	args[0], args[1] = "eval", takeScript.Src
	return onceStringCmd{redis.NewStringCmd(ctx, args...)}
}

// send runs the scripts, pipelined when there are several.
func (p *pipe) send(ctx context.Context, scripts []batchScript) {
	if len(scripts) == 1 {
		_ = p.client.Process(ctx, scripts[0].cmd)
		return
	}
	pl := p.client.Pipeline()
	for _, s := range scripts {
		_ = pl.Process(ctx, s.cmd)
	}
	_, _ = pl.Exec(ctx)
}

// split hands each call of a script its part of the reply: "R", the time
// and a state per request, or "B" and the time; with store.ErrFull when
// Redis refused the script's writes (a reply "F" and the decisions).
func split(s batchScript) {
	reply, err := s.cmd.Result()
	reply, full := store.FullReply(reply)
	for _, c := range s.calls {
		if err != nil {
			c.err = err
			continue
		}
		if full {
			c.err = store.ErrFull
		}
		n := 9
		if len(reply) > 0 && reply[0] == 'R' {
			n += store.StateLen * len(c.fields)
		}
		if len(reply) < n {
			c.err = store.ErrBadReply
			reply = ""
			continue
		}
		c.reply, reply = reply[:n], reply[n:]
	}
}
