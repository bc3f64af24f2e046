package storage

import (
	"context"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// In a Cluster, a script may only touch the keys of one hash slot. The
// limits of one client share a slot (their keys have the same hash tag), so
// most requests are one script; a request whose limits key on different
// clients (an API key for one limit, the IP for another) is decided slot by
// slot, all scripts pipelined in one round trip. Each script is all or
// nothing for its slot. When every slot allows, the request is counted
// everywhere, exactly. When one denies (or fails), the slots that allowed
// have counted the request, and a second round trip takes those units back
// (undo): a key nobody touched meanwhile is restored as it was; otherwise
// its count (or token bucket backlog) is reduced by what the request added,
// if still in the same window. Until the undo lands, other requests see the
// units taken: the limit may deny a little early, never admit too much.

// slotRun is one slot's script in a pipeline.
type slotRun struct {
	idx    []int // the requests decided by this script
	keys   []string
	argv   []string
	cmd    onceCmd
	reply  string
	err    error
	states string // the states before and after each request, for undo
}

// decideSlots runs one script per hash slot, by deadline; it returns the server's time
// when a calendar window must be computed again.
func (s *Redis) decideSlots(ctx context.Context, deadline, now time.Time, at int64, reqs []store.Request, results []limiter.Result, sc *redisScratch) (int64, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	runs := s.groupBySlot(sc, len(reqs))
	for g := range runs {
		r := &runs[g]
		r.keys, r.argv = s.takeArgs(sc, reqs, r.idx, now, at)
	}
	s.pipeline(ctx, runs, takeScript)

	var (
		failure   error
		serverNow int64
		committed []int // slots whose script counted
		pass      = true
		full      bool // a slot's node refused to count (OOM)
	)
	for g := range runs {
		r := &runs[g]
		if r.err != nil {
			failure = r.err
			continue
		}
		if t, ok := store.BoundsReply(r.reply); ok {
			serverNow = t
			continue
		}
		reply, slotFull := store.FullReply(r.reply)
		rest, err := store.ParseResults(reply, reqs, r.idx, results, sc.bounds)
		if err != nil {
			failure = err
			continue
		}
		r.states = rest
		switch {
		case !store.Passes(reqs, results, r.idx):
			pass = false
		case slotFull:
			full = true
		default:
			committed = append(committed, g)
		}
	}
	if failure == nil && serverNow == 0 && pass && !full {
		return 0, nil
	}
	s.undo(ctx, now, reqs, results, sc, runs, committed)
	if failure != nil {
		return 0, failure
	}
	if serverNow != 0 {
		return serverNow, nil
	}
	store.AllOrNothing(reqs, results[:len(reqs)])
	if full {
		// Decided from what the full node holds: a denial stands, a pass
		// counted nothing there (and the other slots were undone).
		store.Unwritten(results[:len(reqs)])
		if pass {
			return 0, store.ErrFull
		}
	}
	return 0, nil
}

// groupBySlot splits the request indexes by slot, in order of first
// appearance (requests are few: quadratic is cheaper than a map).
func (s *Redis) groupBySlot(sc *redisScratch, n int) []slotRun {
	sc.idx = sc.idx[:0]
	var runs []slotRun
	for i := range n {
		seen := false
		for k := range i {
			if sc.slots[k] == sc.slots[i] {
				seen = true
				break
			}
		}
		if seen {
			continue
		}
		start := len(sc.idx)
		for j := i; j < n; j++ {
			if sc.slots[j] == sc.slots[i] {
				sc.idx = append(sc.idx, j)
			}
		}
		runs = append(runs, slotRun{idx: sc.idx[start:len(sc.idx):len(sc.idx)]})
	}
	return runs
}

// undo takes back what the committed slots counted. It has a timeout of
// its own: the decision's may be spent, and an undo that does not land
// leaves units taken until the window ends.
func (s *Redis) undo(ctx context.Context, now time.Time, reqs []store.Request, results []limiter.Result, sc *redisScratch, runs []slotRun, committed []int) {
	if len(committed) == 0 {
		return
	}
	var undos []slotRun
	for _, g := range committed {
		r := &runs[g]
		if len(r.states) != 2*store.StateLen*len(r.idx) {
			s.undoFailed(store.ErrBadReply)
			continue
		}
		state := func(j int) string { return r.states[j*store.StateLen : (j+1)*store.StateLen] }
		var (
			out    slotRun
			fields []string // the fields undone, with their keys' index
			keyOf  []int
			states []string
		)
		head := store.AppendInt(nil, s.scriptNow(now))
		for j, i := range r.idx {
			// A check counted nothing: there is nothing of it to take back.
			if !results[i].Allowed || reqs[i].Mode == store.ModeCheck {
				continue
			}
			key, field := sc.keys[i], reqs[i].Counter
			done := false
			for f := range fields {
				done = done || fields[f] == field && out.keys[keyOf[f]] == key
			}
			if done {
				continue
			}
			// All the requests on this counter in this slot: from the state
			// before the first to the state after the last, giving back
			// the units of those that were allowed.
			first, last, cost := j, j, int64(0)
			for jj := j; jj < len(r.idx); jj++ {
				ii := r.idx[jj]
				if sc.keys[ii] != key || reqs[ii].Counter != field {
					continue
				}
				last = jj
				if results[ii].Allowed && reqs[ii].Mode != store.ModeCheck {
					cost += reqs[ii].Cost
				}
			}
			k := slices.Index(out.keys, key)
			if k < 0 {
				out.keys = append(out.keys, key)
				k = len(out.keys) - 1
			}
			li := r.idx[last]
			head = store.AppendLimit(head, k+1, &reqs[li].Limit, cost, false, sc.bounds[li][0], sc.bounds[li][1])
			fields, keyOf = append(fields, field), append(keyOf, k)
			states = append(states, state(2*first), state(2*last+1))
		}
		if len(fields) > 0 {
			out.argv = append(append([]string{string(head)}, fields...), states...)
			undos = append(undos, out)
		}
	}
	if len(undos) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	s.pipeline(ctx, undos, undoScript)
	for i := range undos {
		if undos[i].err != nil {
			s.undoFailed(undos[i].err)
			return
		}
	}
}

func (s *Redis) undoFailed(err error) {
	if !s.undoWarn.Allow(time.Now(), store.WarnInterval) {
		return
	}
	s.logger.Load().Warn("redis rate-limit storage could not take back the units of a request denied in another Cluster slot; they count until their window ends",
		zap.Error(err))
}

// pipeline runs the scripts of runs in one round trip (go-redis sends each
// node its share concurrently), then with EVAL those a node did not have.
func (s *Redis) pipeline(ctx context.Context, runs []slotRun, sc *script) {
	if len(runs) == 1 {
		r := &runs[0]
		r.reply, r.err = s.eval(ctx, sc, r.keys, r.argv...)
		return
	}
	pipe := s.client.Pipeline()
	for i := range runs {
		runs[i].cmd = scriptCmd(ctx, sc, false, runs[i].keys, runs[i].argv...)
		_ = pipe.Process(ctx, runs[i].cmd)
	}
	_, _ = pipe.Exec(ctx)
	var again []int
	for i := range runs {
		if err := runs[i].cmd.Err(); err != nil && isNoScript(err) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		pipe = s.client.Pipeline()
		for _, i := range again {
			runs[i].cmd = scriptCmd(ctx, sc, true, runs[i].keys, runs[i].argv...)
			_ = pipe.Process(ctx, runs[i].cmd)
		}
		_, _ = pipe.Exec(ctx)
	}
	for i := range runs {
		runs[i].reply, runs[i].err = runs[i].cmd.Text()
	}
}

// keySlot is the Cluster hash slot of a key whose hash tag is tag: CRC-16
// (XMODEM) modulo 16384, as Redis computes it.
func keySlot(tag []byte) uint16 {
	var crc uint16
	for _, b := range tag {
		crc = crc<<8 ^ crc16tab[byte(crc>>8)^b]
	}
	return crc & 16383
}

var crc16tab = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()
